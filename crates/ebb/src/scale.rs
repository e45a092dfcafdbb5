//! `ebb scale`: the local supervisor. It runs `ebb consume` workers as child processes
//! and, every interval, measures the group's lag and the arrival rate from Kafka, asks a
//! scaling policy (KEDA + HPA on a ScaledObject, or ebb-rate) for a replica count, and
//! starts or gracefully stops workers to match — what KEDA and the HPA do on Kubernetes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use ebb_core::admin::{Admin, AdminError};
use ebb_core::http::{Probes, serve, standard_routes};
use ebb_core::lag::LagProbe;
use ebb_scaling::keda::PartitionOffsets;
use ebb_scaling::offset_rate::OffsetRate;
use ebb_scaling::policy::{
    EbbRate, EbbRateConfig, Explanation, Inputs, KedaLag, Limit, Observation, Policy,
};
use ebb_scaling::scaledobject::parse_scaled_object;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::args::{KafkaArgs, UsageError, parse_duration};
use crate::signals::StopSignals;

/// Run `ebb consume` workers and scale them on the group's lag, like KEDA + HPA on
/// Kubernetes: `keda-lag` applies a ScaledObject (--scaled-object), `ebb-rate` sizes for the
/// arrival rate plus draining the backlog (--capacity per worker). Arguments after `--` go
/// to every worker (e.g. `-- --batch-processing-time 0.2 --ordering key`); each worker
/// gets its own --metrics-addr and --summary-file from the supervisor. Workers inherit
/// the supervisor's environment, so `ebb consume` settings set there (EBB_ORDERING,
/// EBB_KEY_LANES, EBB_MAX_IN_FLIGHT, BATCH_SIZE, ...) reach every worker too. The worker
/// count is capped by the topic's partitions; --capacity is taken as given: in key order
/// (--ordering key) a worker runs --key-lanes batches per owned partition up to
/// --max-in-flight, so its capacity is not capped by the partitions it owns. Ctrl-C stops
/// every worker cleanly.
#[derive(Args)]
pub struct ScaleArgs {
    /// Topic the workers consume.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "trade-tx")]
    topic: String,
    /// The workers' consumer group.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "tx-trade-workers")]
    group: String,
    /// Scaling policy.
    #[arg(long, value_enum, env = "EBB_POLICY", default_value_t = PolicyChoice::KedaLag)]
    policy: PolicyChoice,
    /// ScaledObject YAML for keda-lag.
    #[arg(long, env = "EBB_SCALED_OBJECT", required_if_eq("policy", "keda-lag"))]
    scaled_object: Option<PathBuf>,
    /// The HPA's sync period for keda-lag (15 s on Kubernetes).
    #[arg(long, env = "EBB_HPA_SYNC_PERIOD", default_value = "15s", value_parser = parse_duration)]
    hpa_sync_period: Duration,
    /// ebb-rate: messages per second one worker handles (measured, or in key order up to
    /// min(max in flight, owned partitions × key lanes) × batch size ÷ batch time).
    #[arg(long, env = "EBB_CAPACITY", required_if_eq("policy", "ebb-rate"))]
    capacity: Option<f64>,
    /// ebb-rate: drain the backlog within this time.
    #[arg(long, env = "EBB_TARGET_DRAIN", default_value = "300s", value_parser = parse_duration)]
    target_drain: Duration,
    /// ebb-rate: to zero workers after no arrivals and no lag for this long.
    #[arg(long, env = "EBB_IDLE_COOLDOWN", default_value = "60s", value_parser = parse_duration)]
    idle_cooldown: Duration,
    /// ebb-rate: after a scale-up, wait this long before the next one.
    #[arg(long, env = "EBB_UP_SETTLE", default_value = "60s", value_parser = parse_duration)]
    up_settle: Duration,
    /// ebb-rate: scale down only to the highest need seen over this window.
    #[arg(long, env = "EBB_SCALE_DOWN_WINDOW", default_value = "300s", value_parser = parse_duration)]
    scale_down_window: Duration,
    /// ebb-rate: most workers (keda-lag takes maxReplicaCount from the ScaledObject).
    #[arg(long, env = "EBB_MAX_REPLICAS", default_value_t = 10)]
    max_replicas: u32,
    /// How often to measure and decide.
    #[arg(long, env = "EBB_SCALE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// How long a stopping worker may take before it is killed.
    #[arg(long, env = "EBB_STOP_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    stop_timeout: Duration,
    /// Address for the supervisor's /metrics, /healthz and /readyz. Loopback by default.
    #[arg(long, env = "EBB_SCALE_METRICS_ADDR", default_value = "127.0.0.1:9100")]
    metrics_addr: SocketAddr,
    /// Workers serve their metrics on 127.0.0.1 from this port up.
    #[arg(long, env = "EBB_WORKER_PORT_BASE", default_value_t = 9200)]
    worker_port_base: u16,
    /// Directory for the workers' logs (worker-N.log) and the summaries they write at exit
    /// (worker-N.summary.json, see `ebb consume --summary-file`); default: a directory under
    /// the system temp dir.
    #[arg(long, env = "EBB_WORKER_LOG_DIR")]
    worker_log_dir: Option<PathBuf>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Arguments for every `ebb consume` worker, e.g. `-- --ordering key --key-lanes 16`.
    /// Workers also inherit this process's environment, so `ebb consume` variables set for
    /// `ebb scale` (EBB_ORDERING, EBB_KEY_LANES, EBB_MAX_IN_FLIGHT, BATCH_SIZE, ...) reach
    /// every worker; an argument here wins over the variable.
    #[arg(last = true)]
    worker_args: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyChoice {
    KedaLag,
    EbbRate,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// `limit` label: which cap on the worker count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

/// One worker of `ebb_scale_workers`: its id, where its metrics are, and its state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: u32,
    port: u16,
    /// `starting` (not ready yet), `ready` (in the group, processing) or `stopping`.
    state: &'static str,
}

/// ebb-rate's decision inputs.
struct EbbRateGauges {
    arrival_rate: Gauge<f64, AtomicU64>,
    headroom: Gauge<f64, AtomicU64>,
    backlog: Gauge<f64, AtomicU64>,
    target_drain_seconds: Gauge<f64, AtomicU64>,
    capacity_per_replica: Gauge<f64, AtomicU64>,
}

/// keda-lag's decision inputs.
struct KedaLagGauges {
    lag_metric: Gauge<f64, AtomicU64>,
    lag_threshold: Gauge<f64, AtomicU64>,
    recommended: Gauge,
    stabilized: Gauge,
}

/// The active policy's inputs, exported so a dashboard can say why it scaled.
enum InputGauges {
    EbbRate(EbbRateGauges),
    KedaLag(KedaLagGauges),
}

struct ScaleMetrics {
    desired: Gauge,
    current: Gauge,
    ready: Gauge,
    lag: Gauge,
    log_end: Gauge,
    committed: Gauge,
    lag_target: Gauge<f64, AtomicU64>,
    arrival_rate: Gauge<f64, AtomicU64>,
    decisions: Family<DirectionLabel, Counter>,
    replaced: Counter,
    uncapped: Gauge,
    limit_replicas: Family<LimitLabel, Gauge>,
    limit_binding: Family<LimitLabel, Gauge>,
    inputs: InputGauges,
    workers: Family<WorkerLabels, Gauge>,
    /// The label sets `workers` has now, to remove those of workers that are gone.
    exported_workers: Vec<WorkerLabels>,
}

impl ScaleMetrics {
    fn register(registry: &mut Registry, policy: PolicyChoice) -> Self {
        let inputs = match policy {
            PolicyChoice::EbbRate => InputGauges::EbbRate(EbbRateGauges {
                arrival_rate: Gauge::default(),
                headroom: Gauge::default(),
                backlog: Gauge::default(),
                target_drain_seconds: Gauge::default(),
                capacity_per_replica: Gauge::default(),
            }),
            PolicyChoice::KedaLag => InputGauges::KedaLag(KedaLagGauges {
                lag_metric: Gauge::default(),
                lag_threshold: Gauge::default(),
                recommended: Gauge::default(),
                stabilized: Gauge::default(),
            }),
        };
        let m = ScaleMetrics {
            desired: Gauge::default(),
            current: Gauge::default(),
            ready: Gauge::default(),
            lag: Gauge::default(),
            log_end: Gauge::default(),
            committed: Gauge::default(),
            lag_target: Gauge::default(),
            arrival_rate: Gauge::default(),
            decisions: Family::default(),
            replaced: Counter::default(),
            uncapped: Gauge::default(),
            limit_replicas: Family::default(),
            limit_binding: Family::default(),
            inputs,
            workers: Family::default(),
            exported_workers: Vec::new(),
        };
        registry.register(
            "ebb_scale_desired_replicas",
            "Workers the policy asks for",
            m.desired.clone(),
        );
        registry.register(
            "ebb_scale_current_replicas",
            "Workers running (not stopping)",
            m.current.clone(),
        );
        registry.register(
            "ebb_scale_ready_replicas",
            "Workers in the group and ready",
            m.ready.clone(),
        );
        registry.register(
            "ebb_scale_lag",
            "The group's total lag on the topic",
            m.lag.clone(),
        );
        registry.register(
            "ebb_scale_log_end_offsets",
            "Sum of the topic's log-end offsets",
            m.log_end.clone(),
        );
        registry.register(
            "ebb_scale_committed_offsets",
            "Sum of the group's committed offsets (log start where none)",
            m.committed.clone(),
        );
        registry.register(
            "ebb_scale_lag_target",
            "The lag the policy aims at with the current workers",
            m.lag_target.clone(),
        );
        registry.register(
            "ebb_scale_arrival_rate",
            "Messages per second arriving on the topic",
            m.arrival_rate.clone(),
        );
        registry.register(
            "ebb_scale_decisions",
            "Scale decisions by direction",
            m.decisions.clone(),
        );
        registry.register(
            "ebb_scale_workers_replaced",
            "Workers that died and were replaced",
            m.replaced.clone(),
        );
        registry.register(
            "ebb_scale_uncapped_replicas",
            "Workers the policy's inputs call for before the partition and maximum caps",
            m.uncapped.clone(),
        );
        registry.register(
            "ebb_scale_limit_replicas",
            "Caps on the worker count: the topic's partitions (workers beyond them idle) and the policy's maximum",
            m.limit_replicas.clone(),
        );
        registry.register(
            "ebb_scale_limit_binding",
            "1 while this cap holds the worker count below what the policy's inputs call for",
            m.limit_binding.clone(),
        );
        registry.register(
            "ebb_scale_workers",
            "Workers the supervisor runs (1 each), by id, metrics port and state (starting, ready, stopping)",
            m.workers.clone(),
        );
        match &m.inputs {
            InputGauges::EbbRate(g) => {
                for (name, help, gauge) in [
                    (
                        "ebb_scale_ebb_rate_arrival_rate",
                        "Messages per second ebb-rate sizes for (the smoothed arrival rate)",
                        &g.arrival_rate,
                    ),
                    (
                        "ebb_scale_ebb_rate_headroom_ratio",
                        "ebb-rate's multiplier on the arrival rate (room for bursts)",
                        &g.headroom,
                    ),
                    (
                        "ebb_scale_ebb_rate_backlog_records",
                        "Records waiting that ebb-rate sizes to drain",
                        &g.backlog,
                    ),
                    (
                        "ebb_scale_ebb_rate_target_drain_seconds",
                        "Time in which ebb-rate sizes to drain the backlog",
                        &g.target_drain_seconds,
                    ),
                    (
                        "ebb_scale_ebb_rate_capacity_per_replica",
                        "Messages per second ebb-rate counts one worker to handle",
                        &g.capacity_per_replica,
                    ),
                ] {
                    registry.register(name, help, gauge.clone());
                }
            }
            InputGauges::KedaLag(g) => {
                registry.register(
                    "ebb_scale_keda_lag_metric",
                    "The lag KEDA's kafka scaler reports to the HPA (total lag after KEDA's partition cap)",
                    g.lag_metric.clone(),
                );
                registry.register(
                    "ebb_scale_keda_lag_threshold",
                    "lagThreshold: the lag per worker the HPA aims at",
                    g.lag_threshold.clone(),
                );
                registry.register(
                    "ebb_scale_hpa_recommended_replicas",
                    "The HPA's raw recommendation from the metric, before stabilization and rate policies",
                    g.recommended.clone(),
                );
                registry.register(
                    "ebb_scale_hpa_stabilized_replicas",
                    "The workers KEDA and the HPA set: the recommendation after the stabilization windows, rate policies and min/max",
                    g.stabilized.clone(),
                );
            }
        }
        m
    }

    /// Exports why the policy asks for its count.
    fn record_explanation(&self, e: &Explanation) {
        self.uncapped.set(e.uncapped_replicas as i64);
        let binding = e.binding_limit();
        let caps = [
            e.partitions.map(Limit::Partitions),
            Some(Limit::MaxReplicas(e.max_replicas)),
        ];
        for cap in caps.into_iter().flatten() {
            let label = LimitLabel { limit: cap.name() };
            self.limit_replicas
                .get_or_create(&label)
                .set(cap.replicas() as i64);
            self.limit_binding
                .get_or_create(&label)
                .set(i64::from(binding == Some(cap)));
        }
        match (&self.inputs, &e.inputs) {
            (InputGauges::EbbRate(g), Inputs::EbbRate(i)) => {
                g.arrival_rate.set(i.arrival_rate);
                g.headroom.set(i.headroom);
                g.backlog.set(i.backlog);
                g.target_drain_seconds.set(i.target_drain.as_secs_f64());
                g.capacity_per_replica.set(i.capacity_per_replica);
            }
            (InputGauges::KedaLag(g), Inputs::KedaLag(i)) => {
                g.lag_metric.set(i.lag_metric);
                g.lag_threshold.set(i.lag_threshold);
                g.recommended.set(i.recommended_replicas as i64);
                g.stabilized.set(i.stabilized_replicas as i64);
            }
            _ => {}
        }
    }

    /// Exports the workers as they are now, dropping the series of those that are gone or
    /// changed state.
    fn record_workers(&mut self, now: Vec<WorkerLabels>) {
        for gone in self.exported_workers.iter().filter(|w| !now.contains(w)) {
            self.workers.remove(gone);
        }
        for worker in &now {
            self.workers.get_or_create(worker).set(1);
        }
        self.exported_workers = now;
    }
}

struct Worker {
    id: u32,
    port: u16,
    child: Child,
    stopping_since: Option<Instant>,
}

struct Pool {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    log_dir: PathBuf,
    port_base: u16,
    next_id: u32,
    workers: Vec<Worker>,
}

impl Pool {
    fn running(&self) -> impl Iterator<Item = &Worker> {
        self.workers.iter().filter(|w| w.stopping_since.is_none())
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let used: Vec<u16> = self.workers.iter().map(|w| w.port).collect();
        let port = (self.port_base..u16::MAX)
            .find(|p| !used.contains(p))
            .context("no free worker port")?;
        let id = self.next_id;
        self.next_id += 1;
        let log = self.log_dir.join(format!("worker-{id}.log"));
        let summary = self.log_dir.join(format!("worker-{id}.summary.json"));
        let mut args = vec![
            "consume".to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{port}"),
            "--summary-file".into(),
            summary.display().to_string(),
        ];
        args.extend(self.args.iter().cloned());
        let child = spawn_ebb(&args, &self.env, &log)?;
        tracing::info!(
            "Started worker {id} (pid {}, metrics 127.0.0.1:{port}, log {})",
            child.id(),
            log.display()
        );
        self.workers.push(Worker {
            id,
            port,
            child,
            stopping_since: None,
        });
        Ok(())
    }

    /// Asks the newest running worker to stop (SIGTERM: finish, commit, leave the group).
    fn stop_one(&mut self) {
        if let Some(w) = self
            .workers
            .iter_mut()
            .rev()
            .find(|w| w.stopping_since.is_none())
        {
            signal_child(&w.child, libc::SIGTERM);
            w.stopping_since = Some(Instant::now());
            tracing::info!("Stopping worker {} (pid {})", w.id, w.child.id());
        }
    }

    /// Reaps exited workers, kills those past the stop timeout; returns how many died
    /// without being asked to stop.
    fn reap(&mut self, stop_timeout: Duration) -> u32 {
        let mut died = 0;
        self.workers.retain_mut(|w| match w.child.try_wait() {
            Ok(Some(status)) => {
                if w.stopping_since.is_none() {
                    tracing::warn!(
                        "Worker {} exited unasked ({status}); it will be replaced",
                        w.id
                    );
                    died += 1;
                }
                false
            }
            Ok(None) => {
                if w.stopping_since
                    .is_some_and(|since| since.elapsed() > stop_timeout)
                {
                    tracing::warn!(
                        "Worker {} did not stop within {stop_timeout:?}; killing it",
                        w.id
                    );
                    let _ = w.child.kill();
                }
                true
            }
            Err(_) => false,
        });
        died
    }
}

/// What a child `ebb` (a worker of `ebb scale`, the supervisor and producer of `ebb demo`)
/// needs to reach Kafka as `kafka` (checked from `args`) does, as environment variables,
/// which replace what the child would inherit: a user name or password from a file
/// reaches the child as that file, not as its content; a password and the `-X`
/// properties (which may hold secrets) reach it only through its environment, never its
/// command line.
pub(crate) fn child_kafka_settings(
    args: &KafkaArgs,
    kafka: &ebb_core::KafkaOptions,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers.clone()),
        (
            "KAFKA_SECURITY_PROTOCOL",
            kafka.security_protocol.as_str().to_string(),
        ),
    ];
    let username = file_or_value(
        args.sasl_username_file.as_deref(),
        ("KAFKA_SASL_USERNAME_FILE", "KAFKA_SASL_USERNAME"),
        &kafka.sasl_username,
    );
    let password = file_or_value(
        args.sasl_password_file.as_deref(),
        ("KAFKA_SASL_PASSWORD_FILE", "KAFKA_SASL_PASSWORD"),
        &kafka.sasl_password,
    );
    for (key, value) in [
        ("KAFKA_SASL_MECHANISM", kafka.sasl_mechanism.clone()),
        username,
        password,
        ("KAFKA_SSL_CA_LOCATION", kafka.ssl_ca_location.clone()),
        (
            "KAFKA_SSL_CERTIFICATE_LOCATION",
            kafka.ssl_certificate_location.clone(),
        ),
        ("KAFKA_SSL_KEY_LOCATION", kafka.ssl_key_location.clone()),
        ("AWS_REGION", kafka.aws_region.clone()),
    ] {
        if let Some(value) = value {
            env.push((key, value));
        }
    }
    if !kafka.extra.is_empty() {
        let properties: Vec<String> = kafka
            .extra
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        env.push(("EBB_KAFKA_PROPERTIES", properties.join("\n")));
    }
    env
}

/// A secret's variable for a child: the file it was read from (`keys.0`), so that the child
/// reads the file itself, else the value (`keys.1`).
fn file_or_value(
    file: Option<&std::path::Path>,
    keys: (&'static str, &'static str),
    value: &Option<String>,
) -> (&'static str, Option<String>) {
    match file {
        Some(path) => (keys.0, Some(path.display().to_string())),
        None => (keys.1, value.clone()),
    }
}

/// Runs this `ebb` executable with `args` and extra `env`, its output going to `log`.
pub(crate) fn spawn_ebb(
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the ebb executable")?;
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    Command::new(&exe)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

pub(crate) fn signal_child(child: &Child, signal: i32) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// Whether a worker answers 200 on /readyz.
async fn ready(http: &ebb_core::http::Client, port: u16) -> bool {
    let url = format!("http://127.0.0.1:{port}/readyz");
    http.get(&url, Duration::from_millis(300))
        .await
        .is_ok_and(|(status, _)| status == 200)
}

fn policy(args: &ScaleArgs, partitions: u32) -> anyhow::Result<Box<dyn Policy + Send>> {
    Ok(match args.policy {
        PolicyChoice::KedaLag => {
            let path = args
                .scaled_object
                .as_ref()
                .ok_or_else(|| UsageError("keda-lag needs --scaled-object".into()))?;
            let text = std::fs::read_to_string(path).map_err(|e| {
                UsageError(format!(
                    "cannot read --scaled-object {}: {e}",
                    path.display()
                ))
            })?;
            let mut spec = parse_scaled_object(&text, &path.display().to_string())
                .map_err(|e| UsageError(e.to_string()))?;
            spec.hpa_sync_period = args.hpa_sync_period;
            Box::new(KedaLag::new(spec))
        }
        PolicyChoice::EbbRate => {
            let capacity = args.capacity.filter(|c| *c > 0.0).ok_or_else(|| {
                UsageError("ebb-rate needs --capacity > 0 (msg/s per worker)".into())
            })?;
            let mut config = EbbRateConfig::new(capacity, args.max_replicas.max(1), partitions);
            config.target_drain = args.target_drain;
            config.idle_cooldown = args.idle_cooldown;
            config.interval = args.interval;
            config.up_settle = args.up_settle;
            config.scale_down_window = args.scale_down_window;
            Box::new(EbbRate::new(config))
        }
    })
}

pub async fn run(args: ScaleArgs) -> anyhow::Result<ExitCode> {
    if args.interval.is_zero() {
        return Err(UsageError("--interval / EBB_SCALE_INTERVAL must be > 0".into()).into());
    }
    let kafka = args.kafka.options()?;
    let topic = Admin::new(&kafka)?.topic(&args.topic).await?;
    let mut policy = policy(&args, topic.partitions as u32)?;

    let mut registry = Registry::default();
    let mut metrics = ScaleMetrics::register(&mut registry, args.policy);
    let probes = Arc::new(Probes::default());
    let bound = serve(
        args.metrics_addr,
        standard_routes(Arc::new(registry), probes.clone()),
        "--metrics-addr / EBB_SCALE_METRICS_ADDR",
    )
    .await?;

    let log_dir = args
        .worker_log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ebb-scale-{}", std::process::id())));
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let mut env = child_kafka_settings(&args.kafka, &kafka);
    env.extend([
        ("KAFKA_TOPIC", args.topic.clone()),
        ("CONSUMER_GROUP", args.group.clone()),
    ]);
    let mut pool = Pool {
        args: args.worker_args.clone(),
        env,
        log_dir: log_dir.clone(),
        port_base: args.worker_port_base,
        next_id: 1,
        workers: Vec::new(),
    };
    let probe = Arc::new(LagProbe::new(
        &kafka,
        &args.group,
        &args.topic,
        topic.partitions,
    )?);
    tracing::info!(
        "Scaling group {} on {} ({} partitions) with {}; HTTP on {bound}; worker logs in {}",
        args.group,
        args.topic,
        topic.partitions,
        policy.name(),
        log_dir.display()
    );
    probes.set_ready(true);

    let mut stop_signals = StopSignals::new()?;
    let http = ebb_core::http::Client::new();
    let started = Instant::now();
    let mut desired = 0u32;
    let mut arrivals = OffsetRate::new();
    let mut last_report = Instant::now();
    // Set when the group or topic turns out to be out of bounds for this principal.
    let mut denied: Option<AdminError> = None;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop_signals.recv() => break,
        }
        let died = pool.reap(args.stop_timeout);
        metrics.replaced.inc_by(died as u64);

        let probe_now = probe.clone();
        let rows = match tokio::task::spawn_blocking(move || probe_now.offsets()).await? {
            Ok(rows) => rows,
            // Waiting will not change the ACLs: stop the workers and say so once.
            Err(e @ AdminError::Denied { .. }) => {
                denied = Some(e);
                break;
            }
            Err(e) => {
                tracing::warn!("Cannot measure lag: {e}; keeping {desired} worker(s)");
                continue;
            }
        };
        let log_end: f64 = rows.iter().map(|r| r.log_end as f64).sum();
        let arrival_rate = arrivals.update(started.elapsed().as_secs_f64(), log_end);
        let offsets: Vec<PartitionOffsets> = rows
            .iter()
            .map(|r| PartitionOffsets {
                // Unread only when every partition has a committed offset, where the
                // scaler does not use it.
                log_start: r.log_start.unwrap_or(0) as f64,
                log_end: r.log_end as f64,
                committed: r.committed.map(|c| c as f64),
            })
            .collect();
        let total_lag: i64 = rows.iter().map(|r| r.lag).sum();
        let mut ready_ids: Vec<u32> = Vec::new();
        for worker in pool.running() {
            if ready(&http, worker.port).await {
                ready_ids.push(worker.id);
            }
        }
        let ready_count = ready_ids.len() as u32;
        let observation = Observation {
            now: started.elapsed(),
            partitions: &offsets,
            arrival_rate,
            current_replicas: desired,
            ready_replicas: ready_count,
        };
        if let Some(decision) = policy.decide(&observation) {
            let direction = if decision.replicas > desired {
                "up"
            } else {
                "down"
            };
            tracing::info!(
                "Scale {direction} {desired} → {}: {}",
                decision.replicas,
                decision.reason
            );
            metrics
                .decisions
                .get_or_create(&DirectionLabel { direction })
                .inc();
            desired = decision.replicas;
        }
        if let Some(explanation) = policy.explain() {
            metrics.record_explanation(&explanation);
        }
        while (pool.running().count() as u32) < desired {
            if let Err(e) = pool.start() {
                tracing::error!("Cannot start a worker: {e:#}");
                break;
            }
        }
        while (pool.running().count() as u32) > desired {
            pool.stop_one();
        }

        metrics.desired.set(desired as i64);
        metrics.current.set(pool.running().count() as i64);
        metrics.ready.set(ready_count as i64);
        metrics.lag.set(total_lag);
        metrics.log_end.set(log_end as i64);
        metrics.committed.set(log_end as i64 - total_lag);
        metrics.lag_target.set(policy.lag_target(desired));
        metrics.arrival_rate.set(arrival_rate);
        metrics.record_workers(
            pool.workers
                .iter()
                .map(|w| WorkerLabels {
                    worker: w.id,
                    port: w.port,
                    state: if w.stopping_since.is_some() {
                        "stopping"
                    } else if ready_ids.contains(&w.id) {
                        "ready"
                    } else {
                        "starting"
                    },
                })
                .collect(),
        );
        if last_report.elapsed() >= Duration::from_secs(5) {
            tracing::info!(
                "Lag: {total_lag}, In: {arrival_rate:.1} msg/s, Replicas: desired {desired}, running {}, ready {ready_count}",
                pool.running().count()
            );
            last_report = Instant::now();
        }
    }

    tracing::info!(
        "Stopping: asking {} worker(s) to finish and leave",
        pool.running().count()
    );
    probes.set_stopping();
    while pool.running().count() > 0 {
        pool.stop_one();
    }
    let deadline = Instant::now() + args.stop_timeout;
    while !pool.workers.is_empty() {
        pool.reap(args.stop_timeout);
        if Instant::now() > deadline + Duration::from_secs(5) {
            for w in &mut pool.workers {
                let _ = w.child.kill();
                let _ = w.child.wait();
            }
            pool.workers.clear();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!("Stopped; no worker left");
    match denied {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebb_scaling::policy::EbbRateInputs;

    fn encoded(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn children_get_the_kafka_settings_through_their_environment_only() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            kafka: KafkaArgs,
        }
        let dir = std::env::temp_dir().join(format!("ebb-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (user, password) = (dir.join("username"), dir.join("password"));
        std::fs::write(&user, "tenant-a\n").unwrap();
        std::fs::write(&password, "s3cret\n").unwrap();
        let cli = Cli::try_parse_from([
            "ebb",
            "--bootstrap-servers",
            "b:9092",
            "--security-protocol",
            "sasl_ssl",
            "--sasl-mechanism",
            "SCRAM-SHA-512",
            "--sasl-username-file",
            user.to_str().unwrap(),
            "--sasl-password-file",
            password.to_str().unwrap(),
            "-X",
            "ssl.key.password=k3y",
            "-X",
            "client.id=ebb,worker",
        ])
        .unwrap();
        let kafka = cli.kafka.options().unwrap();
        let env: std::collections::HashMap<_, _> = child_kafka_settings(&cli.kafka, &kafka)
            .into_iter()
            .collect();
        // Files stay files (the chart's mounted Secret), so a child never meets both a
        // value and a file for one setting.
        assert_eq!(
            env.get("KAFKA_SASL_USERNAME_FILE"),
            Some(&user.display().to_string())
        );
        assert_eq!(
            env.get("KAFKA_SASL_PASSWORD_FILE"),
            Some(&password.display().to_string())
        );
        assert!(
            !env.contains_key("KAFKA_SASL_USERNAME") && !env.contains_key("KAFKA_SASL_PASSWORD")
        );
        // -X properties, one per line, as the child's clap reads them back.
        let properties = env.get("EBB_KAFKA_PROPERTIES").expect("properties");
        assert_eq!(properties, "ssl.key.password=k3y\nclient.id=ebb,worker");
        // The child's clap splits the value at its delimiter, the same from the
        // environment as from a flag (the flag is used here: tests share the environment).
        let child = Cli::try_parse_from(["ebb", "-X", properties]).unwrap();
        assert_eq!(
            child.kafka.kafka_properties,
            vec![
                ("ssl.key.password".to_string(), "k3y".to_string()),
                ("client.id".to_string(), "ebb,worker".to_string())
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exports_the_decision_inputs_the_binding_cap_and_the_workers() {
        let mut registry = Registry::default();
        let mut metrics = ScaleMetrics::register(&mut registry, PolicyChoice::EbbRate);
        metrics.record_explanation(&Explanation {
            uncapped_replicas: 15,
            partitions: Some(12),
            max_replicas: 20,
            inputs: Inputs::EbbRate(EbbRateInputs {
                arrival_rate: 5000.0,
                headroom: 1.1,
                backlog: 15000.0,
                target_drain: Duration::from_secs(30),
                capacity_per_replica: 400.0,
            }),
        });
        let worker = |worker, state| WorkerLabels {
            worker,
            port: 9200 + worker as u16,
            state,
        };
        metrics.record_workers(vec![worker(1, "ready"), worker(2, "starting")]);
        metrics.record_workers(vec![worker(1, "ready"), worker(2, "ready")]);
        let text = encoded(&registry);
        for line in [
            "ebb_scale_uncapped_replicas 15",
            r#"ebb_scale_limit_replicas{limit="partitions"} 12"#,
            r#"ebb_scale_limit_binding{limit="partitions"} 1"#,
            r#"ebb_scale_limit_binding{limit="max_replicas"} 0"#,
            "ebb_scale_ebb_rate_arrival_rate 5000.0",
            "ebb_scale_ebb_rate_backlog_records 15000.0",
            "ebb_scale_ebb_rate_capacity_per_replica 400.0",
            r#"ebb_scale_workers{worker="2",port="9202",state="ready"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(
            !text.contains(r#"state="starting""#),
            "a worker's old state is gone:\n{text}"
        );
        assert!(
            !text.contains("keda"),
            "only the active policy's inputs:\n{text}"
        );
    }
}
