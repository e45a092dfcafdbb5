//! `ebb demo`: the whole elastic pipeline on one machine. It makes sure the local Kafka
//! runs, creates a fresh topic, runs `ebb scale` (which runs the consumer workers) and
//! `ebb produce` with a spike, serves a live dashboard, prints progress, and ends with a
//! summary — lost records must be 0 — plus series.csv, summary.json and chart.svg in the
//! same format as `ebb sim`, the figures computed by the simulator's own
//! [`Summary::from_series`]. What the producer delivered and what each worker processed come
//! from the JSON summaries they write at exit (`--summary-file`), not from their logs.
//!
//! The dashboard explains itself: each second the demo scrapes the supervisor's metrics
//! (which carry the policy's inputs) and every worker's, and serves the series
//! (`/series.json`), the scale events with the policy's reason, the cap that binds, the
//! workers and, once the run ends, the summary (`/run.json`).

use std::collections::HashMap;
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
use ebb_core::http::{Client, serve};
use ebb_scaling::chart;
use ebb_scaling::offset_rate::OffsetRate;
use ebb_scaling::policy::{EbbRateInputs, Explanation, Inputs, KedaLagInputs, Limit};
use ebb_scaling::sim::{Sample, Summary, SummarySettings, oldest_waiting, series_csv};

use crate::args::{KafkaArgs, UsageError, parse_duration};
use crate::scale::{signal_child, spawn_ebb};
use crate::signals::StopSignals;

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
    #[arg(long, env = "EBB_DEMO_POLICY", value_enum, default_value_t = DemoPolicy::EbbRate)]
    policy: DemoPolicy,
    /// Partitions of the demo topic (the most workers that can share the work).
    #[arg(long, env = "EBB_DEMO_PARTITIONS", default_value_t = 12)]
    partitions: i32,
    /// Where the dashboard is served (port 0: any free port, logged as "Listening on").
    #[arg(long, env = "EBB_DASHBOARD_ADDR", default_value = "127.0.0.1:8080")]
    dashboard_addr: SocketAddr,
    /// Directory for the chart, series, summary and logs.
    #[arg(long, env = "EBB_DEMO_OUT", default_value = "demo-out")]
    out: PathBuf,
    /// After the traffic ends, how long to wait for the lag to drain and workers to stop.
    #[arg(long, env = "EBB_DEMO_DRAIN_TIMEOUT", default_value = "180s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// First of the local ports for the supervisor, the producer and the workers.
    #[arg(long, env = "EBB_DEMO_PORT_BASE", default_value_t = 9400)]
    port_base: u16,
    /// The service level the summary holds the run to: the longest a message may wait in
    /// Kafka (the scenario format's `sla`, whose default this is, as in scenarios/demo.yaml).
    #[arg(long, env = "EBB_DEMO_SLA", default_value = "30s", value_parser = parse_duration)]
    sla: Duration,
    /// After the summary, keep serving the dashboard this long so an open page shows it
    /// (Ctrl-C ends it sooner).
    #[arg(long, env = "EBB_DEMO_LINGER", default_value = "3s", value_parser = parse_duration)]
    linger: Duration,
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

/// A change of direction within this long counts as a reversal (flapping). `ebb sim` uses
/// 300 s, the reference's cooldown and HPA's scale-down window; the demo runs on a time
/// scale about ten times shorter (a 20 s cooldown, a 30 s scale-down window, a 100 s
/// spike), so scaling in after the spike has ended is not flapping, and a premature
/// scale-in within a minute is.
const REVERSAL_WINDOW: Duration = Duration::from_secs(60);

/// How the run's figures are computed: as `ebb sim` computes a scenario's, held to `sla`.
/// The run starts with no worker and an empty topic.
fn summary_settings(sla: Duration) -> SummarySettings {
    SummarySettings {
        sla,
        reversal_window: REVERSAL_WINDOW,
        initial_replicas: 0,
        initial_lag: 0.0,
    }
}

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

/// What the dashboard shows, filled by the sampling loop and read by the HTTP handlers.
#[derive(Default)]
struct Board {
    /// The run's settings the page names: policy, partitions, traffic.
    about: serde_json::Value,
    points: Vec<Point>,
    events: Vec<ScaleEvent>,
    workers: Vec<WorkerRow>,
    /// summary.json's content, once the run has ended.
    summary: Option<serde_json::Value>,
}

type SharedBoard = Arc<Mutex<Board>>;

/// One second of the run.
struct Point {
    sample: Sample,
    /// What the policy's inputs called for before the caps.
    uncapped_replicas: Option<u32>,
    /// The cap holding the count down, if one did.
    limit: Option<Limit>,
}

/// A change of the worker count the policy asked for.
struct ScaleEvent {
    t_s: f64,
    from: u32,
    to: u32,
    reason: String,
}

/// One worker as the supervisor and its own metrics show it.
struct WorkerRow {
    id: u32,
    port: u16,
    /// `starting`, `ready` or `stopping`, as the supervisor sees it.
    state: String,
    partitions: Option<f64>,
    messages_per_second: Option<f64>,
    in_flight_batches: Option<f64>,
}

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

/// A Prometheus endpoint's samples, keyed by name with labels as written
/// (`ebb_scale_limit_replicas{limit="partitions"}`).
type Scrape = HashMap<String, f64>;

async fn scrape(http: &Client, port: u16, timeout: Duration) -> Option<Scrape> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let (_, body) = http.get(&url, timeout).await.ok()?;
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

/// The labels of a scraped key: `name{a="1",b="x"}` gives [("a", "1"), ("b", "x")].
fn labels(key: &str) -> Vec<(&str, &str)> {
    key.split_once('{')
        .and_then(|(_, rest)| rest.strip_suffix('}'))
        .map(|inside| {
            inside
                .split(',')
                .filter_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    Some((name, value.trim_matches('"')))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The policy's explanation, rebuilt from the supervisor's `ebb_scale_*` gauges; `None`
/// until the policy has evaluated once.
fn explanation(policy: DemoPolicy, m: &Scrape) -> Option<Explanation> {
    let get = |name: &str| m.get(name).copied();
    let inputs = match policy {
        DemoPolicy::EbbRate => Inputs::EbbRate(EbbRateInputs {
            arrival_rate: get("ebb_scale_ebb_rate_arrival_rate")?,
            headroom: get("ebb_scale_ebb_rate_headroom_ratio")?,
            backlog: get("ebb_scale_ebb_rate_backlog_records")?,
            target_drain: Duration::try_from_secs_f64(get(
                "ebb_scale_ebb_rate_target_drain_seconds",
            )?)
            .ok()?,
            capacity_per_replica: get("ebb_scale_ebb_rate_capacity_per_replica")?,
        }),
        DemoPolicy::KedaLag => Inputs::KedaLag(KedaLagInputs {
            lag_metric: get("ebb_scale_keda_lag_metric")?,
            lag_threshold: get("ebb_scale_keda_lag_threshold")?,
            recommended_replicas: get("ebb_scale_hpa_recommended_replicas")? as u32,
            stabilized_replicas: get("ebb_scale_hpa_stabilized_replicas")? as u32,
        }),
    };
    Some(Explanation {
        uncapped_replicas: get("ebb_scale_uncapped_replicas")? as u32,
        partitions: get(r#"ebb_scale_limit_replicas{limit="partitions"}"#).map(|p| p as u32),
        max_replicas: get(r#"ebb_scale_limit_replicas{limit="max_replicas"}"#)? as u32,
        inputs,
    })
}

/// The supervisor's workers (`ebb_scale_workers`), each with what its own /metrics says
/// (nothing while it starts and serves none yet), by id.
async fn worker_rows(http: &Client, supervisor: &Scrape) -> Vec<WorkerRow> {
    let mut rows: Vec<WorkerRow> = Vec::new();
    for key in supervisor
        .keys()
        .filter(|key| key.starts_with("ebb_scale_workers{"))
    {
        let labels = labels(key);
        let label = |name: &str| labels.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let (Some(id), Some(port), Some(state)) = (
            label("worker").and_then(|w| w.parse().ok()),
            label("port").and_then(|p| p.parse::<u16>().ok()),
            label("state"),
        ) else {
            continue;
        };
        let own = scrape(http, port, Duration::from_millis(500)).await;
        let metric = |name: &str| own.as_ref().and_then(|m| m.get(name).copied());
        rows.push(WorkerRow {
            id,
            port,
            state: state.to_string(),
            partitions: metric("ebb_consumer_assigned_partitions"),
            messages_per_second: metric("kafka_messages_per_second"),
            in_flight_batches: metric("ebb_consumer_in_flight_batches"),
        });
    }
    rows.sort_by_key(|w| w.id);
    rows
}

fn routes(board: SharedBoard) -> Router {
    async fn page() -> impl IntoResponse {
        Html(include_str!("dashboard.html"))
    }
    async fn series(State(board): State<SharedBoard>) -> impl IntoResponse {
        Json(
            board
                .lock()
                .map(|b| b.points.iter().map(point_json).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    }
    async fn run_state(State(board): State<SharedBoard>) -> impl IntoResponse {
        Json(board.lock().map(|b| run_json(&b)).unwrap_or_default())
    }
    Router::new()
        .route("/", get(page))
        .route("/series.json", get(series))
        .route("/run.json", get(run_state))
        .with_state(board)
}

fn point_json(p: &Point) -> serde_json::Value {
    let s = &p.sample;
    serde_json::json!({
        "t_s": s.t_s, "arrival_rate": s.arrival_rate, "processed_rate": s.processed_rate,
        "lag": s.lag, "lag_target": s.lag_target, "desired_replicas": s.desired_replicas,
        "current_replicas": s.current_replicas, "ready_replicas": s.ready_replicas,
        "message_time_s": s.message_time_s, "uncapped_replicas": p.uncapped_replicas,
        "limit": p.limit.map(|l| l.name()), "limit_replicas": p.limit.map(|l| l.replicas()),
        "limit_text": p.limit.map(|l| l.describe()),
    })
}

/// Everything but the series: settings, scale events, workers, and the summary once the
/// run has ended (null before).
fn run_json(b: &Board) -> serde_json::Value {
    serde_json::json!({
        "about": b.about,
        "events": b.events.iter().map(|e| serde_json::json!({
            "t_s": e.t_s, "from": e.from, "to": e.to, "reason": e.reason,
        })).collect::<Vec<_>>(),
        "workers": b.workers.iter().map(|w| serde_json::json!({
            "id": w.id, "port": w.port, "state": w.state, "partitions": w.partitions,
            "messages_per_second": w.messages_per_second,
            "in_flight_batches": w.in_flight_batches, "ready": w.state == "ready",
        })).collect::<Vec<_>>(),
        "summary": b.summary,
    })
}

/// A count from the JSON summary a command wrote at exit (`--summary-file`); the error
/// names the file, the field and the log that says why it is missing.
fn summary_count(path: &Path, field: &str, log: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {} (its summary at exit); see {}",
            path.display(),
            log.display()
        )
    })?;
    let summary: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON; see {}", path.display(), log.display()))?;
    summary[field].as_u64().with_context(|| {
        format!(
            "{} has no count \"{field}\"; see {}",
            path.display(),
            log.display()
        )
    })
}

/// What the workers processed, from the summaries they wrote at exit
/// (`worker-N.summary.json` beside `worker-N.log`, both named by `ebb scale`), and how many
/// workers wrote none (killed after the stop timeout, or crashed).
fn processed_by_workers(dir: &Path) -> anyhow::Result<(u64, u32)> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    let (mut processed, mut without_summary) = (0, 0);
    for entry in entries {
        let log = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        let Some(worker) = log
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
        else {
            continue;
        };
        let summary = dir.join(format!("{worker}.summary.json"));
        if summary.exists() {
            processed += summary_count(&summary, "processed", &log)?;
        } else {
            without_summary += 1;
        }
    }
    Ok((processed, without_summary))
}

/// The run as sampled once a second: turns the supervisor's metrics into the dashboard's
/// points, scale events and progress lines.
struct Watch {
    policy: DemoPolicy,
    board: SharedBoard,
    /// (t, log end) at each sample, for the time the oldest waiting message has waited.
    arrivals: Vec<(f64, f64)>,
    arrival_rate_of: OffsetRate,
    processed_rate_of: OffsetRate,
    /// What the group had committed at the last sample.
    last_committed: f64,
    last_desired: u32,
    last_limit: Option<Limit>,
    last_report: Instant,
}

impl Watch {
    fn new(policy: DemoPolicy, board: SharedBoard) -> Self {
        Watch {
            policy,
            board,
            // The topic and the group are new: nothing has arrived or been committed at 0 s.
            arrivals: vec![(0.0, 0.0)],
            arrival_rate_of: OffsetRate::starting_at(0.0, 0.0),
            processed_rate_of: OffsetRate::starting_at(0.0, 0.0),
            last_committed: 0.0,
            last_desired: 0,
            last_limit: None,
            last_report: Instant::now(),
        }
    }

    /// Records the sample at `t` seconds from the supervisor's metrics `m`; returns the lag
    /// and the current worker count.
    fn record(&mut self, t: f64, m: &Scrape, workers: Vec<WorkerRow>) -> (f64, u32) {
        let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
        let (log_end, committed, lag) = (
            get("ebb_scale_log_end_offsets"),
            get("ebb_scale_committed_offsets"),
            get("ebb_scale_lag"),
        );
        let arrival_rate = self.arrival_rate_of.update(t, log_end);
        let processed_rate = self.processed_rate_of.update(t, committed);
        self.last_committed = committed;
        self.arrivals.push((t, log_end));
        let message_time = if lag < 1.0 {
            0.0
        } else {
            oldest_waiting(&self.arrivals, committed, t)
        };
        let current = get("ebb_scale_current_replicas") as u32;
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
        if self.last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "[{t:>4.0} s] in {arrival_rate:>6.0} msg/s, out {processed_rate:>6.0} msg/s, lag {lag:>7.0}, replicas {} (ready {}), message time {message_time:.1} s",
                sample.current_replicas, sample.ready_replicas
            );
            self.last_report = Instant::now();
        }
        let explained = explanation(self.policy, m);
        let limit = explained.as_ref().and_then(Explanation::binding_limit);
        if limit != self.last_limit {
            match limit {
                Some(l) => println!("[{t:>4.0} s] capped: {}", l.describe()),
                None => println!("[{t:>4.0} s] no longer capped"),
            }
            self.last_limit = limit;
        }
        let event = (sample.desired_replicas != self.last_desired).then(|| {
            let (from, to) = (self.last_desired, sample.desired_replicas);
            let reason = explained.as_ref().map_or_else(
                || "the supervisor exported no explanation".to_string(),
                |e| e.reason(from, to),
            );
            println!("[{t:>4.0} s] scale {from} → {to}: {reason}");
            ScaleEvent {
                t_s: t,
                from,
                to,
                reason,
            }
        });
        self.last_desired = sample.desired_replicas;
        if let Ok(mut b) = self.board.lock() {
            b.points.push(Point {
                sample,
                uncapped_replicas: explained.as_ref().map(|e| e.uncapped_replicas),
                limit,
            });
            b.events.extend(event);
            b.workers = workers;
        }
        (lag, current)
    }
}

/// What the run left behind once it has ended: where its summaries are and what it was.
struct Ended<'a> {
    args: &'a DemoArgs,
    profile: &'a ebb_scaling::RateProfile,
    topic: &'a str,
    group: &'a str,
    scale_args: &'a [String],
    out: &'a Path,
    workers_dir: &'a Path,
    producer_summary: &'a Path,
    producer_log: &'a Path,
    /// What the group had committed at the last sample.
    last_committed: f64,
    interrupted: bool,
}

impl Ended<'_> {
    /// Computes the run's summary as `ebb sim` computes a scenario's, from the samples and
    /// the producer's and workers' exit summaries; writes summary.json, series.csv and
    /// chart.svg and prints the table. Returns summary.json's content and the records lost.
    fn report(&self, samples: &[Sample]) -> anyhow::Result<(serde_json::Value, u64)> {
        let delivered = summary_count(self.producer_summary, "delivered", self.producer_log)?;
        let processed_unique = self.last_committed as u64;
        let (processed_total, workers_without_summary) = processed_by_workers(self.workers_dir)?;
        let lost = delivered.saturating_sub(processed_unique);
        let duplicates = processed_total.saturating_sub(processed_unique);
        let settings = summary_settings(self.args.sla);
        let summary = Summary::from_series(
            &format!("demo-{}", self.args.policy.name()),
            samples,
            &settings,
        );
        std::fs::write(self.out.join("series.csv"), series_csv(samples))?;
        let policy_flags: Vec<&String> = self
            .scale_args
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
            fields.insert(
                "workers_without_summary".into(),
                workers_without_summary.into(),
            );
            fields.insert("interrupted".into(), self.interrupted.into());
            fields.insert(
                "settings".into(),
                serde_json::json!({
                    "profile": self.profile.to_string(),
                    "policy": self.args.policy.name(),
                    "policy_flags": policy_flags,
                    "partitions": self.args.partitions,
                    "topic": self.topic,
                    "group": self.group,
                    "worker_args": WORKER_ARGS,
                    "worker_capacity_msg_s": WORKER_CAPACITY,
                    "drain_timeout_s": self.args.drain_timeout.as_secs_f64(),
                    "sla_s": settings.sla.as_secs_f64(),
                    "reversal_window_s": settings.reversal_window.as_secs_f64(),
                }),
            );
        }
        std::fs::write(
            self.out.join("summary.json"),
            serde_json::to_string_pretty(&report)? + "\n",
        )?;
        std::fs::write(
            self.out.join("chart.svg"),
            chart::render(&format!("ebb demo — {}", summary.policy), samples),
        )?;
        crate::sim::print_table(&[&summary]);
        println!("{:<22}{:>16}", "produced", delivered);
        println!("{:<22}{:>16}", "processed (unique)", processed_unique);
        println!("{:<22}{:>16}", "lost", lost);
        println!("{:<22}{:>16}", "duplicates", duplicates);
        if workers_without_summary > 0 {
            println!(
                "({workers_without_summary} worker(s) wrote no summary at exit, killed or crashed: duplicates counts the others only; see {})",
                self.workers_dir.display()
            );
        }
        println!("SLA {:?} on message time in Kafka (--sla)", settings.sla);
        println!(
            "chart: {}\nseries: {}",
            self.out.join("chart.svg").display(),
            self.out.join("series.csv").display()
        );
        Ok((report, lost))
    }
}

/// `ebb scale`'s arguments for the run: the policy tuned to the demo's time scale, the
/// workers' ports from `port_base + 100`, their logs and exit summaries in `workers_dir`.
fn scale_args(
    args: &DemoArgs,
    topic: &str,
    group: &str,
    workers_dir: &Path,
    out: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut scale_args: Vec<String> = vec![
        "scale".into(),
        "--topic".into(),
        topic.to_string(),
        "--group".into(),
        group.to_string(),
    ];
    scale_args.extend([
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{}", args.port_base),
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
    Ok(scale_args)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let profile: ebb_scaling::RateProfile = args
        .profile
        .parse()
        .map_err(|e| UsageError(format!("--profile / EBB_DEMO_PROFILE: {e}")))?;
    let Some(traffic_length) = profile.duration() else {
        return Err(UsageError("--profile must end (give every segment a duration)".into()).into());
    };
    if args.port_base.checked_add(111).is_none() {
        return Err(UsageError(format!(
            "--port-base / EBB_DEMO_PORT_BASE: {} leaves no room for the workers' ports \
             (up to 111 above it); give at most {}",
            args.port_base,
            u16::MAX - 111
        ))
        .into());
    }
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

    let board: SharedBoard = Arc::new(Mutex::new(Board {
        about: serde_json::json!({
            "policy": args.policy.name(),
            "partitions": args.partitions,
            "profile": profile.to_string(),
            "worker_capacity_msg_s": WORKER_CAPACITY,
        }),
        ..Board::default()
    }));
    let dashboard = serve(
        args.dashboard_addr,
        routes(board.clone()),
        "--dashboard-addr / EBB_DASHBOARD_ADDR",
    )
    .await?;
    let scale_port = args.port_base;
    let producer_port = args.port_base + 1;
    let workers_dir = out.join("workers");
    let _ = std::fs::remove_dir_all(&workers_dir);
    std::fs::create_dir_all(&workers_dir)?;

    // The supervisor (and through it the workers) and the producer reach Kafka as the demo
    // does: its settings, password and -X properties go through their environment.
    let kafka_env = crate::scale::child_kafka_settings(&args.kafka, &kafka);
    let scale_args = scale_args(&args, &topic, &group, &workers_dir, &out)?;
    let mut scale = spawn_ebb(&scale_args, &kafka_env, &out.join("scale.log"))?;

    let mut produce_args: Vec<String> = vec![
        "produce".into(),
        "--topic".into(),
        topic.clone(),
        "--rate".into(),
        profile.to_string(),
    ];
    let producer_summary = out.join("producer.summary.json");
    let _ = std::fs::remove_file(&producer_summary);
    produce_args.extend([
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{producer_port}"),
        "--summary-file".into(),
        producer_summary.display().to_string(),
    ]);
    let producer_log = out.join("producer.log");
    let mut producer = spawn_ebb(&produce_args, &kafka_env, &producer_log)?;
    println!(
        "ebb demo: topic {topic}, traffic {profile} ({traffic_length:?}), policy {}; dashboard on http://{dashboard}/; logs in {}",
        args.policy.name(),
        out.display()
    );

    let mut stop_signals = StopSignals::new()?;
    let http = Client::new();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut watch = Watch::new(args.policy, board.clone());
    let mut traffic_done: Option<Instant> = None;
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop_signals.recv() => { interrupted = true; break }
        }
        let t = started.elapsed().as_secs_f64();
        // Without the supervisor there is nothing to show: say why rather than wait out the
        // traffic with an empty dashboard (a port already in use, say).
        if let Some(status) = scale.try_wait()? {
            signal_child(&producer, libc::SIGTERM);
            let _ = producer.wait();
            let log = out.join("scale.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            anyhow::bail!(
                "the supervisor (ebb scale) exited with {status} at {t:.0} s: {last} (its log: {})",
                log.display()
            );
        }
        if traffic_done.is_none() && producer.try_wait()?.is_some() {
            traffic_done = Some(Instant::now());
            println!(
                "traffic ended at {t:.0} s; waiting for the lag to drain and the workers to stop"
            );
        }
        let Some(m) = scrape(&http, scale_port, Duration::from_secs(2)).await else {
            continue;
        };
        let workers = worker_rows(&http, &m).await;
        let (lag, current) = watch.record(t, &m, workers);
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
    let samples: Vec<Sample> = board
        .lock()
        .map(|mut b| {
            // The supervisor has stopped every worker.
            b.workers.clear();
            b.points.iter().map(|p| p.sample.clone()).collect()
        })
        .unwrap_or_default();
    let (report, lost) = Ended {
        args: &args,
        profile: &profile,
        topic: &topic,
        group: &group,
        scale_args: &scale_args,
        out: &out,
        workers_dir: &workers_dir,
        producer_summary: &producer_summary,
        producer_log: &producer_log,
        // Once the supervisor has stopped, its gauges are gone: what the group committed
        // is what it last reported.
        last_committed: watch.last_committed,
        interrupted,
    }
    .report(&samples)?;
    if !stopped.success() {
        eprintln!(
            "ebb demo: the supervisor exited with {stopped}; see {}",
            out.join("scale.log").display()
        );
    }
    if let Ok(mut b) = board.lock() {
        b.summary = Some(report);
    }
    if !interrupted && !args.linger.is_zero() {
        println!(
            "dashboard on http://{dashboard}/ shows the summary for {:?} more (Ctrl-C ends it)",
            args.linger
        );
        tokio::select! {
            _ = tokio::time::sleep(args.linger) => {}
            _ = stop_signals.recv() => {}
        }
    }
    Ok(if lost == 0 && !interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scraped(text: &str) -> Scrape {
        text.lines()
            .filter_map(|l| {
                let (key, value) = l.rsplit_once(' ')?;
                Some((key.to_string(), value.parse().ok()?))
            })
            .collect()
    }

    #[test]
    fn reads_labels_as_written() {
        assert_eq!(
            labels(r#"ebb_scale_workers{worker="3",port="9503",state="ready"}"#),
            [("worker", "3"), ("port", "9503"), ("state", "ready")]
        );
        assert!(labels("ebb_scale_lag").is_empty());
    }

    #[test]
    fn rebuilds_the_policys_explanation_from_the_supervisors_gauges() {
        let m = scraped(
            r#"ebb_scale_uncapped_replicas 15
ebb_scale_limit_replicas{limit="partitions"} 12
ebb_scale_limit_replicas{limit="max_replicas"} 20
ebb_scale_ebb_rate_arrival_rate 5000.0
ebb_scale_ebb_rate_headroom_ratio 1.1
ebb_scale_ebb_rate_backlog_records 15000.0
ebb_scale_ebb_rate_target_drain_seconds 30.0
ebb_scale_ebb_rate_capacity_per_replica 400.0"#,
        );
        let e = explanation(DemoPolicy::EbbRate, &m).expect("every gauge is there");
        assert_eq!(e.binding_limit(), Some(Limit::Partitions(12)));
        assert!(
            e.reason(4, 12).starts_with(
                "ebb-rate: 5,000 msg/s × 1.1 + backlog 15,000 ÷ 30 s = 6,000 msg/s ÷ 400"
            ),
            "{}",
            e.reason(4, 12)
        );
        assert!(
            explanation(DemoPolicy::KedaLag, &m).is_none(),
            "keda-lag's gauges are missing"
        );
    }
}
