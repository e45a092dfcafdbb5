//! `ebb produce`: the trade producer, with its HTTP endpoints and signal handling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ebb_core::admin::Admin;
use ebb_core::control::{RateChanges, rate_routes};
use ebb_core::http::{Probes, serve, standard_routes};
use ebb_core::producer::{ProducerMetrics, ProducerSettings, RateControl, TradeProducer};
use ebb_scaling::RateProfile;
use prometheus_client::registry::Registry;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::{KafkaArgs, UsageError, parse_duration, parse_summary_file, write_summary_file};
use crate::signals::StopSignals;

/// Send trades to a topic at a rate that follows a profile.
///
/// Rate profiles: `1000` (constant), `10@60s,1000@5m,5000@10m,0` (steps; the last may run
/// forever), `0..5000@2m` or `ramp(0,5000)@2m` (linear), `spike(100,5000,60s,30s)@5m`,
/// `sine(1000,500,60s)`. A rate of 0 pauses and stays connected. Change the rate while it
/// runs with `curl -X PUT --data 5000 http://127.0.0.1:8001/rate`, or edit the scenario
/// file and send SIGHUP.
#[derive(Args)]
pub struct ProduceArgs {
    /// Topic to send to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "trade-tx")]
    topic: String,

    /// Messages per second, or a rate profile (see above).
    #[arg(
        long,
        env = "MESSAGES_PER_SECOND",
        default_value = "10",
        conflicts_with = "scenario"
    )]
    rate: String,

    /// Scenario YAML whose `traffic` key holds the profile; re-read on SIGHUP.
    #[arg(long, env = "EBB_SCENARIO")]
    scenario: Option<PathBuf>,

    /// Send as fast as the broker accepts, ignoring the rate.
    #[arg(long)]
    max: bool,

    /// Send exactly N records, then exit.
    #[arg(long, env = "EBB_COUNT")]
    count: Option<u64>,

    /// Seed for the trade generator: the same trades every run (timestamps aside).
    #[arg(long, env = "EBB_SEED")]
    seed: Option<u64>,

    /// Compression: none, gzip, snappy or lz4.
    #[arg(long, env = "EBB_COMPRESSION", default_value = "lz4",
          value_parser = ["none", "gzip", "snappy", "lz4"])]
    compression: String,

    /// How long to wait to fill a batch (linger.ms).
    #[arg(long, env = "EBB_LINGER", default_value = "5ms", value_parser = parse_duration)]
    linger: Duration,

    /// Most bytes per batch to one partition (batch.size).
    #[arg(long, env = "EBB_BATCH_BYTES", default_value_t = 1_000_000)]
    batch_bytes: usize,

    /// Acknowledgements: all (with the idempotent producer), 1 or 0.
    #[arg(long, env = "EBB_ACKS", default_value = "all", value_parser = ["all", "1", "0"])]
    acks: String,

    /// After a stall, send at most this much time's worth of the backlog; skip the rest.
    #[arg(long, env = "EBB_CATCH_UP", default_value = "1s", value_parser = parse_duration)]
    catch_up: Duration,

    /// How long to wait for outstanding deliveries when stopping.
    #[arg(long, env = "EBB_FLUSH_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    flush_timeout: Duration,

    /// Address for /metrics, /healthz, /readyz and /rate. Loopback by default; the Helm
    /// chart sets 0.0.0.0 (or [::]).
    #[arg(
        long,
        env = "EBB_PRODUCER_METRICS_ADDR",
        default_value = "127.0.0.1:8001"
    )]
    metrics_addr: SocketAddr,

    /// File holding the token that `PUT`/`POST /rate` must carry as `Authorization: Bearer
    /// <token>` (surrounding whitespace ignored; a Kubernetes Secret mounted as a file).
    /// Default: none, and then rate changes are accepted only on a loopback
    /// --metrics-addr and refused (403) on any other. `GET /rate` and the probes never
    /// need it.
    #[arg(long, env = "EBB_CONTROL_TOKEN_FILE")]
    control_token_file: Option<PathBuf>,

    /// At exit, write what the run did (sent, delivered, failed, undelivered, skipped,
    /// elapsed_s, first_error) as a JSON object to this file, atomically (a temporary file
    /// beside it, then renamed). Default: none.
    #[arg(long, env = "EBB_PRODUCER_SUMMARY_FILE", value_parser = parse_summary_file)]
    summary_file: Option<PathBuf>,

    #[command(flatten)]
    kafka: KafkaArgs,
}

/// The control token in `path`, trimmed; a usage error naming the file if it cannot be
/// read or is empty. The token itself never appears in an error.
fn read_control_token(path: &std::path::Path) -> Result<String, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "--control-token-file / EBB_CONTROL_TOKEN_FILE: cannot read {}: {e}",
            path.display()
        ))
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(UsageError(format!(
            "--control-token-file / EBB_CONTROL_TOKEN_FILE: {} is empty; put the token in it",
            path.display()
        )));
    }
    Ok(token.to_string())
}

fn read_scenario(path: &PathBuf) -> anyhow::Result<RateProfile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read scenario file {}", path.display()))?;
    Ok(ebb_scaling::scenario::traffic_from_yaml(
        &text,
        &path.display().to_string(),
    )?)
}

pub async fn run(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let profile = match &args.scenario {
        Some(path) => read_scenario(path).map_err(|e| UsageError(format!("{e:#}")))?,
        None => args
            .rate
            .parse::<RateProfile>()
            .map_err(|e| UsageError(format!("--rate / MESSAGES_PER_SECOND: {e}")))?,
    };
    let kafka = args.kafka.options()?;
    Admin::new(&kafka)?.topic(&args.topic).await?;

    let mut registry = Registry::default();
    let metrics = ProducerMetrics::register(&mut registry);
    let control = Arc::new(RateControl::new(profile.clone()));
    let probes = Arc::new(Probes::default());
    let token = args
        .control_token_file
        .as_deref()
        .map(read_control_token)
        .transpose()?;
    let changes = RateChanges::for_listener(args.metrics_addr, token.as_deref());
    if matches!(changes, RateChanges::Refused) {
        tracing::info!(
            "PUT /rate is off: {} is not loopback and no --control-token-file was given",
            args.metrics_addr
        );
    }
    let routes = standard_routes(Arc::new(registry), probes.clone())
        .merge(rate_routes(control.clone(), changes));
    let bound = serve(
        args.metrics_addr,
        routes,
        "--metrics-addr / EBB_PRODUCER_METRICS_ADDR",
    )
    .await?;

    let settings = ProducerSettings {
        topic: args.topic.clone(),
        compression: args.compression,
        linger: args.linger,
        batch_size: args.batch_bytes,
        acks: args.acks,
        count: args.count,
        seed: args.seed,
        max_speed: args.max,
        catch_up: args.catch_up,
        flush_timeout: args.flush_timeout,
        ..ProducerSettings::default()
    };
    let producer = TradeProducer::new(&kafka, settings, control.clone(), metrics)
        .map_err(|e| UsageError(format!("the Kafka producer rejected its settings: {e}")))?;
    let target = if args.max {
        "as fast as possible".to_string()
    } else {
        profile.to_string()
    };
    tracing::info!(
        "Producing to {} at {} ({}); HTTP on {bound}",
        args.topic,
        target,
        args.count
            .map_or("until stopped".to_string(), |n| format!("{n} records"))
    );
    probes.set_ready(true);

    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || producer.run(&stop))
    };
    let mut stop_signals = StopSignals::new()?;
    let mut hangup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    tokio::pin!(run);
    let report = loop {
        tokio::select! {
            report = &mut run => break report?,
            signal = stop_signals.recv() => { tracing::info!("{signal}: flushing and stopping"); stop.store(true, Ordering::Relaxed); probes.set_stopping(); }
            _ = hangup.recv() => match &args.scenario {
                Some(path) => match read_scenario(path) {
                    Ok(profile) => { tracing::info!("SIGHUP: re-read {}", path.display()); control.set(profile); }
                    Err(e) => tracing::error!("SIGHUP: keeping the current profile: {e:#}"),
                },
                None => tracing::warn!("SIGHUP ignored: no --scenario file to re-read"),
            },
        }
    };

    let seconds = report.elapsed.as_secs_f64();
    println!(
        "Done: sent {} delivered {} failed {} undelivered {} skipped {} in {:.1}s ({:.0} msg/s)",
        report.sent,
        report.delivered,
        report.failed,
        report.undelivered,
        report.skipped,
        seconds,
        report.delivered as f64 / seconds.max(1e-9)
    );
    if let Some(path) = &args.summary_file {
        write_summary_file(
            path,
            &serde_json::json!({
                "sent": report.sent,
                "delivered": report.delivered,
                "failed": report.failed,
                "undelivered": report.undelivered,
                "skipped": report.skipped,
                "elapsed_s": seconds,
                "first_error": report.first_error,
            }),
        )?;
    }
    if report.all_delivered() {
        Ok(ExitCode::SUCCESS)
    } else {
        if let Some(error) = &report.first_error {
            eprintln!("ebb: first delivery error: {error}");
        }
        Ok(ExitCode::from(1))
    }
}
