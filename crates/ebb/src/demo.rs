//! `ebb demo`: the whole elastic pipeline on one machine. It makes sure the local Kafka
//! runs, creates a fresh topic, runs `ebb scale` (which runs the consumer workers) and
//! `ebb produce` with a spike, serves a live dashboard, prints progress, and ends with a
//! summary — lost records must be 0 — plus series.csv, summary.json and chart.svg in the
//! same format as `ebb sim`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use clap::{Args, ValueEnum};
use ebb_core::admin::{Admin, AdminError};
use ebb_core::http::serve;
use ebb_scaling::chart;
use ebb_scaling::sim::{Sample, Summary, oldest_waiting, scale_changes, series_csv};
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{KafkaArgs, UsageError, parse_duration};
use crate::scale::{signal_child, spawn_ebb};

/// Run the whole elastic pipeline on this machine: a traffic spike, lag, scale-out, drain,
/// scale to zero, with a live dashboard at --dashboard-addr. Ends with a summary (lost
/// must be 0) and the run's chart and series, comparable with `ebb sim`.
#[derive(Args)]
pub struct DemoArgs {
    /// Traffic, as a rate profile (see `ebb produce --help`); it must end.
    #[arg(
        long,
        env = "EBB_DEMO_PROFILE",
        default_value = "20@20s,1500@100s,0@100s"
    )]
    profile: String,
    /// Scaling policy.
    #[arg(long, value_enum, default_value_t = DemoPolicy::EbbRate)]
    policy: DemoPolicy,
    /// Partitions of the demo topic (the most workers that can share the work).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Where the dashboard is served.
    #[arg(long, env = "EBB_DASHBOARD_ADDR", default_value = "127.0.0.1:8080")]
    dashboard_addr: SocketAddr,
    /// Directory for the chart, series, summary and logs.
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// After the traffic ends, how long to wait for the lag to drain and workers to stop.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// First of the local ports for the supervisor, the producer and the workers.
    #[arg(long, default_value_t = 9400)]
    port_base: u16,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DemoPolicy {
    EbbRate,
    KedaLag,
}

impl DemoPolicy {
    fn name(self) -> &'static str {
        match self {
            DemoPolicy::EbbRate => "ebb-rate",
            DemoPolicy::KedaLag => "keda-lag",
        }
    }
}

/// Each worker: batches of 100 taking 0.5 s (a simulated database write), two in flight:
/// 400 msg/s on two or more partitions, 200 msg/s on one (a partition's batches run in
/// order). So the spike needs several workers, uses little CPU on a two-core machine, and
/// 12 partitions carry up to 2,400 msg/s.
const WORKER_ARGS: [&str; 8] = [
    "--batch-size",
    "100",
    "--batch-processing-time",
    "0.5",
    "--max-in-flight",
    "2",
    "--dead-letter-topic",
    "none",
];
const WORKER_CAPACITY: f64 = 400.0;

/// A ScaledObject for the demo's scale: quick polling, a short cooldown.
const DEMO_SCALED_OBJECT: &str = "apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: ebb-demo
spec:
  scaleTargetRef:
    name: ebb-demo
  pollingInterval: 2
  cooldownPeriod: 20
  minReplicaCount: 0
  maxReplicaCount: 12
  triggers:
    - type: kafka
      metadata:
        lagThreshold: \"400\"
";

type Series = Arc<Mutex<Vec<Sample>>>;

fn find_script(name: &str) -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("scripts").join(name)];
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("scripts").join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

async fn ensure_kafka(kafka: &ebb_core::KafkaOptions) -> anyhow::Result<()> {
    match Admin::new(kafka)?.metadata(None).await {
        Ok(_) => return Ok(()),
        Err(AdminError::Unreachable(_)) if kafka.unreachable_hint().contains("kafka-local") => {}
        Err(e) => return Err(e.into()),
    }
    let script = find_script("kafka-local")
        .context("no local Kafka answers and scripts/kafka-local is not found; run ebb demo from the repository")?;
    eprintln!(
        "no Kafka answers at {}; starting the local one",
        kafka.bootstrap_servers
    );
    let port = kafka
        .bootstrap_servers
        .rsplit(':')
        .next()
        .unwrap_or("9092")
        .to_string();
    let status = Command::new(&script)
        .arg("start")
        .env("EBB_KAFKA_PORT", port)
        .status()?;
    anyhow::ensure!(status.success(), "{} start failed", script.display());
    Ok(())
}

fn scrape(port: u16) -> Option<std::collections::HashMap<String, f64>> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let (_, body) = ebb_core::http::get(&url, None, Duration::from_secs(2)).ok()?;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut parts = l.split_whitespace();
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect(),
    )
}

fn routes(series: Series) -> Router {
    async fn page() -> impl IntoResponse {
        Html(include_str!("dashboard.html"))
    }
    async fn data(State(series): State<Series>) -> impl IntoResponse {
        Json(
            series
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default()
                .iter()
                .map(to_json)
                .collect::<Vec<_>>(),
        )
    }
    Router::new()
        .route("/", get(page))
        .route("/series.json", get(data))
        .with_state(series)
}

fn to_json(s: &Sample) -> serde_json::Value {
    serde_json::json!({
        "t_s": s.t_s, "arrival_rate": s.arrival_rate, "processed_rate": s.processed_rate,
        "lag": s.lag, "lag_target": s.lag_target, "desired_replicas": s.desired_replicas,
        "current_replicas": s.current_replicas, "ready_replicas": s.ready_replicas,
        "message_time_s": s.message_time_s,
    })
}

/// Records processed per worker, from the `Stopped: processed N records` lines of their logs.
fn processed_by_workers(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| {
                    l.split("Stopped: processed ")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum()
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let profile: ebb_scaling::RateProfile = args
        .profile
        .parse()
        .map_err(|e| UsageError(format!("--profile / EBB_DEMO_PROFILE: {e}")))?;
    let Some(traffic_length) = profile.duration() else {
        return Err(UsageError("--profile must end (give every segment a duration)".into()).into());
    };
    let kafka = args.kafka.options()?;
    ensure_kafka(&kafka).await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = args.out.canonicalize()?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let topic = format!("ebb-demo-{stamp}");
    let group = format!("ebb-demo-{stamp}");
    Admin::new(&kafka)?
        .create_topic(&topic, args.partitions, 1, &[])
        .await?;

    let series: Series = Arc::new(Mutex::new(Vec::new()));
    let dashboard = serve(
        args.dashboard_addr,
        routes(series.clone()),
        "--dashboard-addr / EBB_DASHBOARD_ADDR",
    )
    .await?;
    let scale_port = args.port_base;
    let producer_port = args.port_base + 1;
    let workers_dir = out.join("workers");
    let _ = std::fs::remove_dir_all(&workers_dir);
    std::fs::create_dir_all(&workers_dir)?;

    let kafka_flags = vec![
        "--bootstrap-servers".to_string(),
        kafka.bootstrap_servers.clone(),
    ];
    let mut scale_args: Vec<String> = vec![
        "scale".into(),
        "--topic".into(),
        topic.clone(),
        "--group".into(),
        group.clone(),
    ];
    scale_args.extend(kafka_flags.clone());
    scale_args.extend([
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{scale_port}"),
        "--worker-port-base".into(),
        (args.port_base + 100).to_string(),
        "--worker-log-dir".into(),
        workers_dir.display().to_string(),
        "--interval".into(),
        "1s".into(),
        "--stop-timeout".into(),
        "20s".into(),
    ]);
    match args.policy {
        DemoPolicy::EbbRate => {
            scale_args.extend(["--policy", "ebb-rate", "--capacity"].map(String::from));
            scale_args.push(WORKER_CAPACITY.to_string());
            scale_args.extend(
                [
                    "--max-replicas",
                    "12",
                    "--target-drain",
                    "30s",
                    "--idle-cooldown",
                    "20s",
                    "--up-settle",
                    "10s",
                    "--scale-down-window",
                    "30s",
                ]
                .map(String::from),
            );
        }
        DemoPolicy::KedaLag => {
            let so = out.join("scaledobject.yaml");
            std::fs::write(&so, DEMO_SCALED_OBJECT)?;
            scale_args.extend(
                [
                    "--policy",
                    "keda-lag",
                    "--hpa-sync-period",
                    "2s",
                    "--scaled-object",
                ]
                .map(String::from),
            );
            scale_args.push(so.display().to_string());
        }
    }
    scale_args.push("--".into());
    scale_args.extend(WORKER_ARGS.map(String::from));
    let mut scale = spawn_ebb(&scale_args, &[], &out.join("scale.log"))?;

    let mut produce_args: Vec<String> = vec![
        "produce".into(),
        "--topic".into(),
        topic.clone(),
        "--rate".into(),
        profile.to_string(),
    ];
    produce_args.extend(kafka_flags);
    produce_args.extend([
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{producer_port}"),
    ]);
    let mut producer = spawn_ebb(&produce_args, &[], &out.join("producer.log"))?;
    println!(
        "ebb demo: topic {topic}, traffic {profile} ({traffic_length:?}), policy {}; dashboard on http://{dashboard}/; logs in {}",
        args.policy.name(),
        out.display()
    );

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut arrivals: Vec<(f64, f64)> = vec![(0.0, 0.0)];
    let mut previous: Option<(f64, f64, f64)> = None;
    let mut traffic_done: Option<Instant> = None;
    let mut replica_seconds = 0.0;
    let mut last_report = Instant::now();
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = interrupt.recv() => { interrupted = true; break }
            _ = term.recv() => { interrupted = true; break }
        }
        let t = started.elapsed().as_secs_f64();
        if traffic_done.is_none() && producer.try_wait()?.is_some() {
            traffic_done = Some(Instant::now());
            println!(
                "traffic ended at {t:.0} s; waiting for the lag to drain and the workers to stop"
            );
        }
        let Some(m) = scrape(scale_port) else {
            continue;
        };
        let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
        let (log_end, committed, lag) = (
            get("ebb_scale_log_end_offsets"),
            get("ebb_scale_committed_offsets"),
            get("ebb_scale_lag"),
        );
        let (arrival_rate, processed_rate) = match previous {
            Some((t0, l0, c0)) if t > t0 => (
                (log_end - l0).max(0.0) / (t - t0),
                (committed - c0).max(0.0) / (t - t0),
            ),
            _ => (0.0, 0.0),
        };
        previous = Some((t, log_end, committed));
        arrivals.push((t, log_end));
        let message_time = if lag < 1.0 {
            0.0
        } else {
            oldest_waiting(&arrivals, committed, t)
        };
        let current = get("ebb_scale_current_replicas") as u32;
        replica_seconds += current as f64;
        let sample = Sample {
            t_s: t,
            arrival_rate,
            processed_rate,
            lag,
            lag_target: get("ebb_scale_lag_target"),
            desired_replicas: get("ebb_scale_desired_replicas") as u32,
            current_replicas: current,
            ready_replicas: get("ebb_scale_ready_replicas") as u32,
            message_time_s: message_time,
        };
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "[{t:>4.0} s] in {arrival_rate:>6.0} msg/s, out {processed_rate:>6.0} msg/s, lag {lag:>7.0}, replicas {} (ready {}), message time {message_time:.1} s",
                sample.current_replicas, sample.ready_replicas
            );
            last_report = Instant::now();
        }
        if let Ok(mut s) = series.lock() {
            s.push(sample);
        }
        if let Some(done) = traffic_done
            && ((lag == 0.0 && current == 0) || done.elapsed() > args.drain_timeout)
        {
            break;
        }
    }

    signal_child(&producer, libc::SIGTERM);
    let _ = producer.wait();
    signal_child(&scale, libc::SIGTERM);
    let stopped = tokio::task::spawn_blocking(move || scale.wait()).await??;
    let producer_log = std::fs::read_to_string(out.join("producer.log")).unwrap_or_default();
    let delivered: u64 = producer_log
        .lines()
        .find_map(|l| {
            l.split(" delivered ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let final_offsets = scrape(scale_port);
    let (last_committed, last_lag) = {
        let s = series.lock().map(|s| s.clone()).unwrap_or_default();
        let lag = s.last().map_or(0.0, |x| x.lag);
        (
            final_offsets.and_then(|m| m.get("ebb_scale_committed_offsets").copied()),
            lag,
        )
    };
    let samples = series.lock().map(|s| s.clone()).unwrap_or_default();
    let processed_unique = previous
        .map_or(0.0, |(_, _, c)| c)
        .max(last_committed.unwrap_or(0.0)) as u64;
    let processed_total = processed_by_workers(&workers_dir);
    let lost = delivered.saturating_sub(processed_unique);
    let duplicates = processed_total.saturating_sub(processed_unique);
    let mut waits: Vec<f64> = samples
        .iter()
        .filter(|s| s.processed_rate > 0.0)
        .map(|s| s.message_time_s)
        .collect();
    waits.sort_by(f64::total_cmp);
    let p99 = waits
        .get((waits.len() as f64 * 0.99) as usize)
        .copied()
        .unwrap_or(0.0);
    let (scale_events, reversals) = scale_changes(0, &samples, Duration::from_secs(300));
    let summary = Summary {
        policy: format!("demo-{}", args.policy.name()),
        max_lag: samples.iter().map(|s| s.lag).fold(0.0, f64::max),
        message_time_p50_s: waits.get(waits.len() / 2).copied().unwrap_or(0.0),
        message_time_p99_s: p99,
        message_time_max_s: samples.iter().map(|s| s.message_time_s).fold(0.0, f64::max),
        replica_seconds,
        max_replicas: samples
            .iter()
            .map(|s| s.current_replicas)
            .max()
            .unwrap_or(0),
        scale_events,
        reversals,
        sla_violation_s: samples.iter().filter(|s| s.message_time_s > 30.0).count() as f64,
        arrived: delivered as f64,
        processed: processed_unique as f64,
        final_lag: last_lag,
    };
    std::fs::write(out.join("series.csv"), series_csv(&samples))?;
    let policy_flags: Vec<&String> = scale_args
        .iter()
        .skip_while(|a| *a != "--policy")
        .take_while(|a| *a != "--")
        .collect();
    let mut report = serde_json::to_value(&summary)?;
    if let Some(fields) = report.as_object_mut() {
        fields.insert("produced".into(), delivered.into());
        fields.insert("processed_unique".into(), processed_unique.into());
        fields.insert("processed_total".into(), processed_total.into());
        fields.insert("lost".into(), lost.into());
        fields.insert("duplicates".into(), duplicates.into());
        fields.insert("interrupted".into(), interrupted.into());
        fields.insert(
            "settings".into(),
            serde_json::json!({
                "profile": profile.to_string(),
                "policy": args.policy.name(),
                "policy_flags": policy_flags,
                "partitions": args.partitions,
                "topic": topic,
                "group": group,
                "worker_args": WORKER_ARGS,
                "worker_capacity_msg_s": WORKER_CAPACITY,
                "drain_timeout_s": args.drain_timeout.as_secs_f64(),
            }),
        );
    }
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    std::fs::write(
        out.join("chart.svg"),
        chart::render(&format!("ebb demo — {}", summary.policy), &samples),
    )?;
    crate::sim::print_table(&[&summary]);
    println!("{:<22}{:>16}", "produced", delivered);
    println!("{:<22}{:>16}", "processed (unique)", processed_unique);
    println!("{:<22}{:>16}", "lost", lost);
    println!("{:<22}{:>16}", "duplicates", duplicates);
    println!(
        "chart: {}\nseries: {}",
        out.join("chart.svg").display(),
        out.join("series.csv").display()
    );
    if !stopped.success() {
        eprintln!(
            "ebb demo: the supervisor exited with {stopped}; see {}",
            out.join("scale.log").display()
        );
    }
    Ok(if lost == 0 && !interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
