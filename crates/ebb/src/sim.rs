//! `ebb sim` and `ebb tune`: replay a scenario against a scaling policy in simulated time,
//! and search ScaledObject parameters. Files in and out happen here; the model is pure.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use ebb_scaling::chart;
use ebb_scaling::policy::{EbbRate, KedaLag, Policy};
use ebb_scaling::scaledobject::parse_scaled_object;
use ebb_scaling::scenario::{Scenario, parse_scenario};
use ebb_scaling::sim::{Capacity, OrderBy, SimResult, Summary, series_csv, simulate};
use ebb_scaling::tune::{grid, helm_values_yaml, scaled_object_yaml, tune};

use crate::args::{UsageError, parse_duration};

/// Replay a scenario (traffic, service model, ScaledObject) in simulated time and see how
/// a scaling policy behaves: lag, message time in Kafka, replicas, cost. Deterministic;
/// a 70-minute scenario takes well under a second.
#[derive(Args)]
pub struct SimArgs {
    /// Scenario YAML (see scenarios/).
    #[arg(long, env = "EBB_SCENARIO")]
    scenario: PathBuf,
    /// keda-lag (KEDA + HPA on the scenario's ScaledObject), ebb-rate (ebb's policy), or both.
    #[arg(long, value_enum, default_value_t = PolicyChoice::Both)]
    policy: PolicyChoice,
    /// Directory for series.csv, summary.json and chart.svg (one subdirectory per policy
    /// with `both`). Default: sim-out/<scenario name>.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Search ScaledObject parameters (lagThreshold, pollingInterval, cooldown, stabilization
/// windows, rate policies) for the fewest replica-seconds that keep message time in Kafka
/// within the SLA without reversals; print the winner as a ScaledObject ready to apply.
#[derive(Args)]
pub struct TuneArgs {
    /// Scenario YAML; its ScaledObject is the starting point (replica bounds, trigger).
    #[arg(long, env = "EBB_SCENARIO")]
    scenario: PathBuf,
    /// Longest acceptable message time in Kafka; default: the scenario's `sla`.
    #[arg(long, value_parser = parse_duration)]
    sla: Option<Duration>,
    /// Threads to simulate on; default: the machine's cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Also write the winner (in `--format`) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// How to print the winner: a KEDA ScaledObject to apply as is, or values for the Helm
    /// chart deploy/helm/ebb (`helm install -f tuned.yaml`).
    #[arg(long, value_enum, default_value_t = TuneFormat::ScaledObject)]
    format: TuneFormat,
    /// The consumer Deployment the ScaledObject scales (and its name).
    #[arg(long, default_value = "trade-tx-consumer")]
    deployment: String,
    /// Topic whose lag the kafka trigger reads.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "trade-tx")]
    topic: String,
    /// Consumer group whose lag the kafka trigger reads.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "tx-trade-workers")]
    group: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TuneFormat {
    ScaledObject,
    HelmValues,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyChoice {
    KedaLag,
    EbbRate,
    Both,
}

fn load(path: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read scenario {}: {e}", path.display())))?;
    let mut scenario = parse_scenario(&text, &path.display().to_string())
        .map_err(|e| UsageError(e.to_string()))?;
    if let Some(file) = scenario.scaled_object_file.clone() {
        let so_path = path.parent().unwrap_or(Path::new(".")).join(&file);
        let text = std::fs::read_to_string(&so_path).map_err(|e| {
            UsageError(format!(
                "{}: scaledObjectFile: cannot read {}: {e}",
                path.display(),
                so_path.display()
            ))
        })?;
        let spec = parse_scaled_object(&text, &so_path.display().to_string())
            .map_err(|e| UsageError(e.to_string()))?;
        scenario.ebb_rate.max_replicas = spec.max_replica_count;
        scenario.scaled_object = Some(spec);
    }
    Ok(scenario)
}

fn policies(scenario: &Scenario, choice: PolicyChoice) -> anyhow::Result<Vec<Box<dyn Policy>>> {
    let mut out: Vec<Box<dyn Policy>> = Vec::new();
    if choice != PolicyChoice::EbbRate {
        let spec = scenario.scaled_object.clone().ok_or_else(|| {
            UsageError(format!(
                "scenario {}: keda-lag needs a scaledObject or scaledObjectFile (or use --policy ebb-rate)",
                scenario.name
            ))
        })?;
        out.push(Box::new(KedaLag::new(spec)));
    }
    if choice != PolicyChoice::KedaLag {
        out.push(Box::new(EbbRate::new(scenario.ebb_rate.clone())));
    }
    Ok(out)
}

fn write_outputs(dir: &Path, scenario: &Scenario, result: &SimResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let title = format!("{} — {}", scenario.name, result.summary.policy);
    for (name, body) in [
        ("series.csv", series_csv(&result.series)),
        ("summary.json", result.summary.to_json()),
        ("chart.svg", chart::render(&title, &result.series)),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Prints summaries side by side.
pub fn print_table(summaries: &[&Summary]) {
    print!("{:<22}", "");
    for s in summaries {
        print!("{:>16}", s.policy);
    }
    println!();
    let rows: Vec<Vec<(&str, String)>> = summaries.iter().map(|s| s.rows()).collect();
    for (i, (name, _)) in rows[0].iter().enumerate() {
        print!("{name:<22}");
        for r in &rows {
            print!("{:>16}", r[i].1);
        }
        println!();
    }
}

pub fn run_sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    let scenario = load(&args.scenario)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("sim-out").join(&scenario.name));
    let mut results = Vec::new();
    for mut policy in policies(&scenario, args.policy)? {
        let started = Instant::now();
        let result = simulate(&scenario.config, &scenario.traffic, policy.as_mut());
        let dir = if args.policy == PolicyChoice::Both {
            out.join(policy.name())
        } else {
            out.clone()
        };
        write_outputs(&dir, &scenario, &result)?;
        eprintln!(
            "{}: simulated {:?} in {:.0?}; wrote {}/{{series.csv,summary.json,chart.svg}}",
            policy.name(),
            scenario.config.duration,
            started.elapsed(),
            dir.display()
        );
        results.push(result);
    }
    println!(
        "scenario {} (SLA {:?} on message time in Kafka)",
        scenario.name, scenario.config.sla
    );
    print_table(&results.iter().map(|r| &r.summary).collect::<Vec<_>>());
    Ok(ExitCode::SUCCESS)
}

pub fn run_tune(args: TuneArgs) -> anyhow::Result<ExitCode> {
    let mut scenario = load(&args.scenario)?;
    if let Some(sla) = args.sla {
        scenario.config.sla = sla;
    }
    let base = scenario.scaled_object.clone().unwrap_or_default();
    let candidates = grid(&base);
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    eprintln!(
        "tuning: simulating {} ScaledObject candidates of {:?} each on {threads} threads...",
        candidates.len(),
        scenario.config.duration
    );
    let started = Instant::now();
    let result = tune(&scenario.config, &scenario.traffic, candidates, threads)
        .ok_or_else(|| anyhow::anyhow!("no candidates to try"))?;
    eprintln!(
        "tried {} in {:.1?}; {} met the SLA ({:?}) without reversals",
        result.tried,
        started.elapsed(),
        result.acceptable,
        scenario.config.sla
    );
    let yaml = match args.format {
        TuneFormat::ScaledObject => scaled_object_yaml(
            &result.best.spec,
            &args.deployment,
            &args.topic,
            &args.group,
        ),
        TuneFormat::HelmValues => helm_values_yaml(
            &result.best.spec,
            &args.topic,
            &args.group,
            match scenario.config.service.capacity {
                Capacity::Batches { order_by, .. } => order_by,
                Capacity::PerReplica(_) => OrderBy::Partition,
            },
        ),
    };
    if !result.best.acceptable() {
        println!("# No candidate met the SLA without reversals; this one comes closest.");
    }
    println!("{yaml}");
    if let Some(path) = &args.out {
        std::fs::write(path, &yaml).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let mut ebb_rate = EbbRate::new(scenario.ebb_rate.clone());
    let ebb = simulate(&scenario.config, &scenario.traffic, &mut ebb_rate).summary;
    let mut reference = None;
    if let Some(spec) = &scenario.scaled_object {
        reference = Some(
            simulate(
                &scenario.config,
                &scenario.traffic,
                &mut KedaLag::new(spec.clone()),
            )
            .summary,
        );
    }
    let mut tuned = result.best.summary.clone();
    tuned.policy = "keda-tuned".into();
    let mut rows: Vec<&Summary> = Vec::new();
    let renamed;
    if let Some(r) = &reference {
        let mut r = r.clone();
        r.policy = "keda-scenario".into();
        renamed = r;
        rows.push(&renamed);
    }
    rows.push(&tuned);
    rows.push(&ebb);
    println!(
        "predicted (scenario {}, SLA {:?}):",
        scenario.name, scenario.config.sla
    );
    print_table(&rows);
    Ok(ExitCode::SUCCESS)
}
