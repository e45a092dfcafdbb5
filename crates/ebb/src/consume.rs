//! `ebb consume`: the micro-batch consumer, its sink choice, HTTP endpoints and signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use clap::{Args, ValueEnum};
use ebb_core::consumer::batch::BatchLimits;
use ebb_core::consumer::metrics::ConsumerMetrics;
use ebb_core::consumer::sink::{Delayed, FileSink, PostgresSink, SimSink, Sink, StdoutSink};
use ebb_core::consumer::{ConsumerSettings, GroupProtocol, OrderBy, RetryPolicy, start};
use ebb_core::http::{Probes, serve, standard_routes};
use ebb_core::kafka::OffsetReset;
use ebb_core::trade::TradeDecoder;
use prometheus_client::registry::Registry;

use crate::args::{
    DatabaseArgs, KafkaArgs, UsageError, dead_letter_topic, parse_duration, parse_summary_file,
    write_summary_file,
};

/// Consume trades in micro-batches and hand them to a sink, never losing or reordering
/// records while consumers join and leave the group.
///
/// A batch closes at --batch-size records, --batch-max-bytes bytes or --batch-timeout after
/// its first record. Batches of different partitions run concurrently (up to
/// --max-in-flight); one partition's batches run strictly in order, and its offset is
/// committed only after the sink handled them. With --ordering key, a partition's records
/// are spread over --key-lanes sub-lanes by key: each key keeps its order, and different
/// keys of one partition run concurrently. Records that are not valid trades go to
/// the dead-letter topic. SIGTERM or Ctrl-C: finish in-flight batches, commit, leave.
#[derive(Args)]
pub struct ConsumeArgs {
    /// Topic to consume.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "trade-tx")]
    topic: String,

    /// Consumer group.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "tx-trade-workers")]
    group: String,

    /// Records per batch (at most).
    #[arg(long, env = "BATCH_SIZE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch_size: u32,

    /// Close a batch this long after its first record (seconds, or with a unit).
    #[arg(long, env = "BATCH_TIMEOUT_SECONDS", default_value = "0.1", value_parser = parse_duration)]
    batch_timeout: Duration,

    /// Bytes per batch (at most; key plus value).
    #[arg(long, env = "EBB_BATCH_MAX_BYTES", default_value_t = 1_048_576,
          value_parser = clap::value_parser!(u64).range(1..))]
    batch_max_bytes: u64,

    /// Simulated write time per batch, for the sim sink.
    #[arg(long, env = "BATCH_PROCESSING_TIME", default_value = "1", value_parser = parse_duration)]
    batch_processing_time: Duration,

    /// Simulated time per record, for the sim sink.
    #[arg(long, env = "MESSAGE_PROCESSING_TIME", default_value = "0", value_parser = parse_duration)]
    message_processing_time: Duration,

    /// Most batches in the sink at once, across partitions (1 = the reference's blocking loop).
    #[arg(long, env = "EBB_MAX_IN_FLIGHT", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_in_flight: u32,

    /// What order is kept. `partition`: each partition's batches one at a time, in offset
    /// order, so a consumer runs at most one batch per partition it owns. `key`: each
    /// partition's records are spread over --key-lanes sub-lanes by a stable hash of the
    /// record key (records without a key by offset); each sub-lane runs its batches one at a
    /// time in offset order, so every key keeps its order while different keys of one
    /// partition run concurrently. A partition then commits up to its lowest record not yet
    /// handled: after a crash, records handled above it are processed again (the postgres
    /// sink skips rows it already has).
    #[arg(long, env = "EBB_ORDERING", value_enum, default_value_t = Ordering::Partition)]
    ordering: Ordering,

    /// Sub-lanes per partition with --ordering key (ignored otherwise). All sub-lanes of all
    /// partitions share --max-in-flight.
    #[arg(long, env = "EBB_KEY_LANES", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    key_lanes: u32,

    /// Most records held in batches waiting for workers, across partitions; beyond it the
    /// poll thread waits and records stay in the client's bounded fetch queue. In key order
    /// the sub-lanes' open batches count too. Default: 2 × --max-in-flight × --batch-size
    /// (3 × with --ordering key), within 5,000..=100,000.
    #[arg(long, env = "EBB_MAX_BUFFERED_RECORDS", value_parser = clap::value_parser!(u64).range(1..))]
    max_buffered_records: Option<u64>,

    /// Prefetch memory in MiB, shared by the partitions that fetch at once (the topic's, up
    /// to --max-fetching-partitions): each may queue 3/8 and fetch 1/8 of its part per
    /// request (within 32 KiB..1 MiB and 16..256 KiB; librdkafka's own overhead on queued
    /// records makes up the rest). Topics of up to 6 partitions get librdkafka's full
    /// prefetch. `-X queued.max.messages.kbytes=...` / `max.partition.fetch.bytes=...`
    /// override it.
    #[arg(long, env = "EBB_FETCH_BUDGET_MIB", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    fetch_budget_mib: u32,

    /// Most partitions with a backlog fetched at once, so that memory does not grow with
    /// the partitions owned. Beyond it, partitions with a backlog take turns of 500 ms
    /// while others wait; the others wait paused (what the client had prefetched for a
    /// paused partition is dropped and fetched again on its next turn). A partition whose
    /// sink is slower than its fetches gives its turn up once its share of the buffer is
    /// full, however few partitions there are. Partitions that are caught up never wait. Refetching costs a CPU-bound consumer of many partitions with a
    /// backlog about 15 % of its rate: raise it, up to the partitions owned (which turns
    /// rotation off), for that throughput at the cost of memory.
    #[arg(long, env = "EBB_MAX_FETCHING_PARTITIONS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_fetching_partitions: u32,

    /// Where a group with no committed offset starts. `earliest`, because a new group that
    /// starts at `latest` silently skips everything already in the topic.
    #[arg(long, env = "EBB_AUTO_OFFSET_RESET", value_enum,
          default_value_t = AutoOffsetReset::Earliest)]
    auto_offset_reset: AutoOffsetReset,

    /// Group protocol: classic (client-side assignor) or consumer (KIP-848, broker-side).
    #[arg(long, env = "EBB_GROUP_PROTOCOL", value_enum, default_value_t = Protocol::Classic)]
    group_protocol: Protocol,

    /// Assignor for the classic protocol. cooperative-sticky moves only the partitions that
    /// must move; range and roundrobin are eager (every member pauses on each change).
    #[arg(long, env = "EBB_ASSIGNMENT_STRATEGY", default_value = "cooperative-sticky",
          value_parser = ["cooperative-sticky", "range", "roundrobin"])]
    assignment_strategy: String,

    /// Session timeout (classic protocol).
    #[arg(long, env = "EBB_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    session_timeout: Duration,

    /// Heartbeat interval (classic protocol).
    #[arg(long, env = "EBB_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,

    /// On revoke, how long to wait for the revoked partitions' in-flight batches.
    #[arg(long, env = "EBB_REVOKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    revoke_timeout: Duration,

    /// On SIGTERM/SIGINT, how long to wait for in-flight batches.
    #[arg(long, env = "EBB_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    shutdown_timeout: Duration,

    /// How long an owned partition may go without progress (records waiting and none
    /// fetched, or handled offsets not acknowledged as committed) while the group is
    /// stable, before it counts as stalled: logged, counted in
    /// ebb_consumer_stalled_partitions, /readyz 503, then healed (commit re-sent, fetch
    /// restarted) or, still stalled after as long again, the consumer stops and exits 1 so
    /// its supervisor starts a fresh one. 0 turns the watchdog off.
    #[arg(long, env = "EBB_STALL_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    stall_timeout: Duration,

    /// How often handled offsets are committed while running (revokes and stops always
    /// commit at once). After a crash, up to this much processing is replayed.
    #[arg(long, env = "EBB_COMMIT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    commit_interval: Duration,

    /// First wait before retrying a failed sink write (doubles each time).
    #[arg(long, env = "EBB_RETRY_BACKOFF", default_value = "100ms", value_parser = parse_duration)]
    retry_backoff: Duration,

    /// Longest wait between retries.
    #[arg(long, env = "EBB_RETRY_MAX_BACKOFF", default_value = "10s", value_parser = parse_duration)]
    retry_max_backoff: Duration,

    /// Dead-letter topic for records that are not valid trades (created if absent);
    /// `none` drops them. Default: <topic>.dlq.
    #[arg(long, env = "EBB_DEAD_LETTER_TOPIC")]
    dead_letter_topic: Option<String>,

    /// Where processed records go.
    #[arg(long, env = "EBB_SINK", value_enum, default_value_t = SinkKind::Sim)]
    sink: SinkKind,

    /// Extra time per batch before any sink writes (e.g. to give the file sink a slow
    /// database's timing in a benchmark); 0 = none. The sim sink has its own
    /// --batch-processing-time.
    #[arg(long, env = "EBB_SINK_DELAY", default_value = "0", value_parser = parse_duration)]
    sink_delay: Duration,

    /// File for the file sink (JSON lines, appended).
    #[arg(long, env = "EBB_SINK_FILE", required_if_eq("sink", "file"))]
    sink_file: Option<PathBuf>,

    /// Stop by itself after this long with nothing to do (for batch jobs and scripts).
    #[arg(long, env = "EBB_STOP_AFTER_IDLE", value_parser = parse_duration)]
    stop_after_idle: Option<Duration>,

    /// Address for /metrics, /healthz and /readyz. Loopback by default; the Helm chart
    /// sets 0.0.0.0 (or [::]).
    #[arg(long, env = "EBB_METRICS_ADDR", default_value = "127.0.0.1:8000")]
    metrics_addr: SocketAddr,

    /// At exit, write what the run did (processed, dead_lettered, batches, active_s,
    /// failure) as a JSON object to this file, atomically (a temporary file beside it, then
    /// renamed). `ebb scale` gives each worker its own. Default: none.
    #[arg(long, env = "EBB_SUMMARY_FILE", value_parser = parse_summary_file)]
    summary_file: Option<PathBuf>,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    database: DatabaseArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AutoOffsetReset {
    Earliest,
    Latest,
}

impl From<AutoOffsetReset> for OffsetReset {
    fn from(choice: AutoOffsetReset) -> Self {
        match choice {
            AutoOffsetReset::Earliest => OffsetReset::Earliest,
            AutoOffsetReset::Latest => OffsetReset::Latest,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ordering {
    /// Each partition's batches one at a time, in offset order.
    Partition,
    /// Each key's records in offset order, over --key-lanes sub-lanes per partition.
    Key,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    Classic,
    Consumer,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SinkKind {
    /// Sleep BATCH_PROCESSING_TIME per batch and MESSAGE_PROCESSING_TIME per record.
    Sim,
    /// Append JSON lines to --sink-file.
    File,
    /// Write JSON lines to standard output.
    Stdout,
    /// A row per trade in a PostgreSQL table (--database-url), idempotent per record.
    Postgres,
}

pub async fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    if args.retry_backoff.is_zero() || args.retry_max_backoff < args.retry_backoff {
        return Err(UsageError(
            "--retry-backoff / EBB_RETRY_BACKOFF must be > 0 and ≤ --retry-max-backoff".into(),
        )
        .into());
    }
    if !args.stall_timeout.is_zero() && args.stall_timeout < 3 * args.commit_interval {
        return Err(UsageError(format!(
            "--stall-timeout / EBB_STALL_TIMEOUT ({:?}) must be at least 3 × --commit-interval ({:?}), so that commits can move the broker's offset in that time; or 0 to turn the watchdog off",
            args.stall_timeout, args.commit_interval
        ))
        .into());
    }
    if args.commit_interval.is_zero() {
        return Err(
            UsageError("--commit-interval / EBB_COMMIT_INTERVAL must be > 0".into()).into(),
        );
    }
    if args.batch_timeout.is_zero() {
        return Err(
            UsageError("--batch-timeout / BATCH_TIMEOUT_SECONDS must be > 0".into()).into(),
        );
    }
    let mut registry = Registry::default();
    let mut database = None;
    let sink: Arc<dyn Sink> = match args.sink {
        SinkKind::Sim => Arc::new(SimSink {
            batch_time: args.batch_processing_time,
            message_time: args.message_processing_time,
        }),
        SinkKind::File => {
            let path = args
                .sink_file
                .clone()
                .ok_or_else(|| UsageError("--sink file needs --sink-file".into()))?;
            Arc::new(FileSink::new(path))
        }
        SinkKind::Stdout => Arc::new(StdoutSink),
        SinkKind::Postgres => {
            let db = args.database.database()?;
            tracing::info!(
                "Writing trades to PostgreSQL table {} ({})",
                db.table().as_str(),
                db.tls()
            );
            database = Some(db.clone());
            Arc::new(PostgresSink::new(db, &mut registry))
        }
    };
    let sink: Arc<dyn Sink> = if args.sink_delay.is_zero() {
        sink
    } else {
        Arc::new(Delayed {
            inner: sink,
            delay: args.sink_delay,
        })
    };
    let dead_letter_topic = dead_letter_topic(args.dead_letter_topic.as_deref(), &args.topic)?;
    let order_by = match args.ordering {
        Ordering::Partition => OrderBy::Partition,
        Ordering::Key => OrderBy::Key {
            lanes: args.key_lanes as usize,
        },
    };
    let settings = ConsumerSettings {
        limits: BatchLimits {
            max_records: args.batch_size as usize,
            max_bytes: args.batch_max_bytes as usize,
            timeout: args.batch_timeout,
        },
        max_in_flight: args.max_in_flight as usize,
        order_by,
        fetch_budget: args.fetch_budget_mib as usize * 1024 * 1024,
        max_fetching_partitions: args.max_fetching_partitions as usize,
        max_buffered_records: args.max_buffered_records.map_or_else(
            || {
                ConsumerSettings::default_max_buffered_records(
                    args.max_in_flight as usize,
                    args.batch_size as usize,
                    order_by,
                )
            },
            |n| n as usize,
        ),
        auto_offset_reset: args.auto_offset_reset.into(),
        group_protocol: match args.group_protocol {
            Protocol::Classic => GroupProtocol::Classic {
                assignment_strategy: args.assignment_strategy.clone(),
            },
            Protocol::Consumer => GroupProtocol::Consumer,
        },
        session_timeout: args.session_timeout,
        heartbeat_interval: args.heartbeat_interval,
        revoke_timeout: args.revoke_timeout,
        shutdown_timeout: args.shutdown_timeout,
        stall_timeout: (!args.stall_timeout.is_zero()).then_some(args.stall_timeout),
        commit_interval: args.commit_interval,
        retry: RetryPolicy {
            initial_backoff: args.retry_backoff,
            max_backoff: args.retry_max_backoff,
        },
        dead_letter_topic,
        stop_after_idle: args.stop_after_idle,
        ..ConsumerSettings::new(&args.topic, &args.group)
    };

    let metrics = ConsumerMetrics::register(&mut registry);
    let probes = Arc::new(Probes::default());
    if let Some(database) = database {
        tokio::spawn(database.watch(probes.clone(), args.database.database_check_interval));
    }
    serve(
        args.metrics_addr,
        standard_routes(Arc::new(registry), probes.clone()),
        "--metrics-addr / EBB_METRICS_ADDR",
    )
    .await?;

    let running = start(
        &args.kafka.options()?,
        settings,
        TradeDecoder,
        sink,
        metrics,
        probes,
    )
    .await?;
    let stop = running.stop_flag();
    let mut stop_signals = crate::signals::StopSignals::new()?;
    let signals = tokio::spawn(async move {
        let first = stop_signals.recv().await;
        tracing::info!("{first}: finishing in-flight batches, committing, leaving the group");
        stop.store(true, AtomicOrdering::SeqCst);
        stop_signals.recv().await;
        tracing::warn!("Second signal: exiting without waiting");
        std::process::exit(1);
    });
    let report = running.wait().await;
    signals.abort();
    println!(
        "Done: processed {} records in {} batches ({:.0} msg/s over {:.1}s of processing), dead-lettered {}",
        report.processed,
        report.batches,
        report.rate(),
        report.active.as_secs_f64(),
        report.dead_lettered
    );
    if let Some(path) = &args.summary_file {
        write_summary_file(
            path,
            &serde_json::json!({
                "processed": report.processed,
                "dead_lettered": report.dead_lettered,
                "batches": report.batches,
                "active_s": report.active.as_secs_f64(),
                "failure": report.failure,
            }),
        )?;
    }
    if let Some(failure) = report.failure {
        if report.refused {
            // An ACL refusal: a restart changes nothing.
            eprintln!("ebb: error: {failure}");
            return Ok(ExitCode::from(1));
        }
        eprintln!("error: {failure}; restart the consumer (a supervisor does so on its own)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
