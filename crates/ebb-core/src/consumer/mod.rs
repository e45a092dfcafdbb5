//! The micro-batch consumer runtime: [`start`] and its handle, and the state its threads
//! and tasks share.
//!
//! Data flow: one poll thread owns the Kafka consumer. Each assigned partition's records
//! arrive on a queue of its own (librdkafka's per-partition queues); the poll thread reads
//! a partition's queue into that partition's [`BatchBuilder`](batch::BatchBuilder) while
//! the partition has room, and sends each closed batch down the partition's channel to its
//! worker task. Workers run concurrently (bounded by a semaphore, the in-flight limit) but
//! each handles its own batches strictly in order (in key order a partition has several
//! sub-lanes, each with its own open batch and worker; see [`key_order`]): decode each
//! record with the [`Decoder`], send the records it rejects to the dead-letter topic, hand
//! the decoded rest to the [`Sink`] (retrying with backoff; the partition is held
//! meanwhile), then mark the batch's end offset committable. A committer task commits those offsets asynchronously
//! every `commit_interval` (committing after every batch would send thousands of commits a
//! second at high rates, and a synchronous commit queued behind them times out).
//!
//! The contracts (docs/DESIGN.md §3): an offset is committed only after every record before it
//! was handled; on revoke the revoked partitions' in-flight batches finish (bounded) and
//! are committed synchronously before the partitions are released; on stop the same
//! happens for every partition and the consumer leaves the group at once.
//!
//! Backpressure without pausing: memory is bounded by `max_buffered_records`, the records
//! held in closed batches, of which each owned partition gets an equal share. A partition
//! holding its share, or whose sink writes are failing, is simply not read; its records
//! wait in its librdkafka queue, which stops fetching once it holds
//! `queued.max.messages.kbytes`. (librdkafka's pause would drop what was fetched and fetch
//! it again on resume, which at every small backlog costs most of the throughput.) What
//! bounds librdkafka's side when many partitions have a backlog is [`rotation`]: only
//! `max_fetching_partitions` of them fetch at once, and the others are paused in turn, each
//! for a turn much longer than a fetch.
//!
//! Where each piece lives:
//! - [`settings`]: the settings and the pure librdkafka configuration builder;
//! - `poll`: the poll thread, one `Poller::run_once` step at a time, its lanes (one open
//!   batch per partition) and its shutdown;
//! - `rebalance`: the librdkafka context: assign, revoke drain, unassign;
//! - [`decode`]: the [`Decoder`] trait, the pipeline's first step (trades:
//!   [`TradeDecoder`](crate::trade::TradeDecoder)); [`sink`]: the [`Sink`] trait, its last;
//! - `worker`: one task per sub-lane (per partition in partition order): decode,
//!   dead-letter, sink, retry; the only part generic over the decoder;
//! - [`key_order`]: the sub-lane of a key, and what a partition may commit when its
//!   sub-lanes finish out of order;
//! - `committer`: the periodic asynchronous commit and the commit results;
//! - [`commit`]: per-partition commit accounting (pure); `commit_request`: the FFI call
//!   that gets asynchronous commit results back;
//! - [`rotation`]: which partitions with a backlog fetch now and which wait their turn
//!   (pure), so that memory does not grow with the partitions owned;
//! - [`batch`], [`fetch_queue`], [`dead_letter`], [`metrics`], [`watchdog`].
//!
//! Any record type: [`start`] takes a [`Decoder`] and a [`Sink`] over its output;
//! `crates/ebb-core/examples/word_count.rs` is a complete consumer of lines of text.

pub mod batch;
pub mod commit;
mod commit_request;
mod committer;
pub mod dead_letter;
pub mod decode;
pub mod fetch_queue;
pub mod key_order;
pub mod metrics;
mod poll;
mod rebalance;
pub mod rotation;
pub mod settings;
pub mod sink;
pub mod watchdog;
mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore};

use self::commit::CommitState;
use self::dead_letter::DeadLetters;
pub use self::decode::Decoder;
use self::key_order::PendingBatches;
use self::metrics::ConsumerMetrics;
use self::rebalance::Context;
pub use self::settings::{ConsumerSettings, GroupProtocol, OrderBy, RetryPolicy};
pub use self::sink::Sink;
use self::worker::{Pipeline, Work};
use crate::admin::{Admin, AdminError};
use crate::http::Probes;
use crate::kafka::{AuthContext, KafkaOptions};
use crate::lag::LagProbe;

/// Why the consumer could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The cluster could not be reached or refused a request.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// librdkafka rejected the configuration.
    #[error("the Kafka consumer rejected its settings: {0}")]
    Config(rdkafka::error::KafkaError),
    /// A thread could not be started.
    #[error("cannot start the consumer's {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// Totals at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerReport {
    /// Records the sink handled.
    pub processed: u64,
    /// Records sent to the dead-letter topic (or dropped, without one).
    pub dead_lettered: u64,
    /// Batches handled.
    pub batches: u64,
    /// From the start of the first batch to the end of the last one.
    pub active: Duration,
    /// Why the consumer stopped by itself with work left (a stall it could not heal, a
    /// rebalance call librdkafka refused); `None` after a requested or idle stop. The
    /// caller should exit non-zero so that a supervisor restarts it.
    pub failure: Option<String>,
    /// The failure is a refusal a restart does not change (an ACL): the caller should not
    /// advise one.
    pub refused: bool,
}

impl ConsumerReport {
    /// Records processed per second of [`ConsumerReport::active`] time.
    pub fn rate(&self) -> f64 {
        let seconds = self.active.as_secs_f64();
        if seconds > 0.0 {
            self.processed as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Ownership of one partition, shared by the poll thread, its worker, the committer and
/// the watchdog.
struct PartitionState {
    partition: i32,
    /// What was handled, sent and acknowledged.
    commit: CommitState,
    /// Set on revoke and stop: the worker finishes its current batch and drops the rest.
    released: AtomicBool,
    /// Log-end minus committed offset, from the client's statistics (-1 unknown).
    lag: AtomicI64,
    /// The next offset librdkafka's fetcher will ask for, from the client's statistics
    /// (-1 unknown). Past a transaction's commit marker, unlike the application position.
    fetch_next: AtomicI64,
    /// Records in librdkafka's queue for this partition, from the same statistics.
    fetch_queued: AtomicI64,
    /// Records in closed batches sent to the workers and not yet finished.
    queued_records: AtomicUsize,
    /// The same, per sub-lane (one in partition order): a sub-lane whose worker has
    /// nothing queued may close its open batch on a timeout.
    lane_queued: Box<[AtomicUsize]>,
    /// In key order, the batches not yet handled ([`PendingBatches`]), from which the
    /// committable offset follows; `None` in partition order, where a batch's end is it.
    pending: Option<Mutex<PendingBatches>>,
    /// Sub-lanes whose worker is retrying a failed write: the partition is not read while
    /// any is ([`PartitionState::is_held`]).
    failing_lanes: AtomicUsize,
    /// Paused in librdkafka, waiting its turn to fetch ([`rotation`]).
    parked: AtomicBool,
}

impl PartitionState {
    /// A newly assigned partition in `order_by`: nothing handled, nothing known yet.
    fn new(partition: i32, order_by: OrderBy) -> Self {
        PartitionState {
            partition,
            commit: CommitState::default(),
            released: AtomicBool::new(false),
            lag: AtomicI64::new(-1),
            fetch_next: AtomicI64::new(-1),
            fetch_queued: AtomicI64::new(-1),
            queued_records: AtomicUsize::new(0),
            lane_queued: (0..order_by.lanes()).map(|_| AtomicUsize::new(0)).collect(),
            pending: order_by.is_key().then(|| Mutex::new(PendingBatches::new())),
            failing_lanes: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
        }
    }

    /// A write of this partition is failing and being retried: it is not read meanwhile.
    fn is_held(&self) -> bool {
        self.failing_lanes.load(Ordering::SeqCst) > 0
    }

    /// A sub-lane opened a batch at `first_offset` (counted only in key order).
    fn opened(&self, first_offset: i64) {
        if let Some(pending) = &self.pending {
            lock(pending).opened(first_offset);
        }
    }

    /// The batch from `first_offset` to before `next_offset` was handled: advance what may
    /// be committed. In partition order batches finish in offset order, so that is the
    /// batch's end; in key order, the lowest record still pending in any sub-lane.
    fn handled(&self, first_offset: i64, next_offset: i64) {
        let committable = match &self.pending {
            None => Some(next_offset),
            Some(pending) => {
                let mut pending = lock(pending);
                pending.handled(first_offset, next_offset);
                pending.committable()
            }
        };
        if let Some(offset) = committable {
            self.commit.handled(offset);
        }
    }
}

/// State shared by the poll thread (through the context), workers and the committer.
struct Shared {
    topic: Arc<str>,
    settings: ConsumerSettings,
    /// The decoder and the sink, behind a face that starts workers.
    pipeline: Arc<dyn Work>,
    dead_letters: Option<DeadLetters>,
    in_flight: Arc<Semaphore>,
    metrics: ConsumerMetrics,
    probes: Arc<Probes>,
    runtime: Handle,
    commit_wanted: Notify,
    owned: Mutex<HashMap<i32, Arc<PartitionState>>>,
    processed: AtomicU64,
    dead_lettered: AtomicU64,
    batches: AtomicU64,
    busy_batches: AtomicI64,
    /// Records in closed batches not yet finished, across partitions.
    buffered_records: AtomicUsize,
    /// The poll thread, woken when a partition queue gets records or a worker frees room.
    poller: OnceLock<std::thread::Thread>,
    /// Reference point for the two timestamps below.
    created: Instant,
    /// Nanoseconds after `created` when the first batch started (`u64::MAX`: none yet).
    first_batch_ns: AtomicU64,
    /// Nanoseconds after `created` when the latest batch finished.
    last_batch_ns: AtomicU64,
    /// Bumped when a rebalance callback starts and when it ends (the watchdog restarts its
    /// clocks).
    rebalances: AtomicU64,
    /// A rebalance callback is running (a revoke may drain for `--revoke-timeout`).
    in_rebalance: AtomicBool,
    /// Set to stop the consumer (a request, a signal, or a failure below).
    stop: Arc<AtomicBool>,
    /// Why the consumer stopped by itself, if it did.
    failure: Mutex<Option<String>>,
    /// Who the cluster sees this consumer as ([`KafkaOptions::principal`]), for ACL
    /// refusals; set by [`start`].
    principal: OnceLock<String>,
    /// The failure is an ACL refusal ([`Shared::refuse`]).
    refused: AtomicBool,
}

impl Shared {
    /// The state of a consumer that owns nothing yet; its tasks run on `runtime`.
    fn new(
        settings: ConsumerSettings,
        pipeline: Arc<dyn Work>,
        dead_letters: Option<DeadLetters>,
        metrics: ConsumerMetrics,
        probes: Arc<Probes>,
        runtime: Handle,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Shared {
            topic: settings.topic.as_str().into(),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
            settings,
            pipeline,
            dead_letters,
            metrics,
            probes,
            runtime,
            commit_wanted: Notify::new(),
            owned: Mutex::new(HashMap::new()),
            processed: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            busy_batches: AtomicI64::new(0),
            buffered_records: AtomicUsize::new(0),
            poller: OnceLock::new(),
            created: Instant::now(),
            first_batch_ns: AtomicU64::new(u64::MAX),
            last_batch_ns: AtomicU64::new(0),
            rebalances: AtomicU64::new(0),
            in_rebalance: AtomicBool::new(false),
            stop,
            failure: Mutex::new(None),
            principal: OnceLock::new(),
            refused: AtomicBool::new(false),
        }
    }

    /// Stops the consumer because the cluster refused it something retrying cannot change
    /// (an ACL): like [`Shared::fail`], but the reason alone is the report, for the caller
    /// to print once.
    fn refuse(&self, reason: String) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            *failure = Some(reason);
            self.refused.store(true, Ordering::SeqCst);
        }
        drop(failure);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(poller) = self.poller.get() {
            poller.unpark();
        }
    }

    /// Who the cluster sees this consumer as.
    fn principal(&self) -> &str {
        self.principal
            .get()
            .map_or("the configured identity", String::as_str)
    }

    /// Stops the consumer because it cannot go on healthily: it drains, commits and leaves
    /// the group as on a requested stop, and reports `reason` so its caller exits non-zero
    /// (and a supervisor, `ebb scale` or Kubernetes, starts a fresh one).
    fn fail(&self, reason: String) {
        tracing::error!("{reason}; stopping so that a fresh consumer takes over");
        lock(&self.failure).get_or_insert(reason);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(poller) = self.poller.get() {
            poller.unpark();
        }
    }

    /// Counts `records` more in closed batches (dispatched to a worker).
    fn buffer(&self, records: usize) {
        self.buffered_records.fetch_add(records, Ordering::SeqCst);
        self.metrics.buffered_records.inc_by(records as i64);
    }

    /// Counts `records` fewer in closed batches (handled, or dropped on a release).
    fn unbuffer(&self, records: usize) {
        self.buffered_records.fetch_sub(records, Ordering::SeqCst);
        self.metrics.buffered_records.dec_by(records as i64);
    }

    /// Nanoseconds since the consumer was created (the committer's clock).
    fn now_ns(&self) -> u64 {
        self.created.elapsed().as_nanos() as u64
    }

    /// The totals so far, and the failure if there was one.
    fn report(&self) -> ConsumerReport {
        ConsumerReport {
            processed: self.processed.load(Ordering::SeqCst),
            dead_lettered: self.dead_lettered.load(Ordering::SeqCst),
            batches: self.batches.load(Ordering::SeqCst),
            active: Duration::from_nanos(
                self.last_batch_ns
                    .load(Ordering::SeqCst)
                    .saturating_sub(self.first_batch_ns.load(Ordering::SeqCst)),
            ),
            failure: lock(&self.failure).clone(),
            refused: self.refused.load(Ordering::SeqCst),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A consumer that is running; stop it with [`RunningConsumer::stop`] or a signal handler
/// holding [`RunningConsumer::stop_flag`], then [`RunningConsumer::wait`].
pub struct RunningConsumer {
    stop: Arc<AtomicBool>,
    poll_thread: std::thread::JoinHandle<ConsumerReport>,
}

impl RunningConsumer {
    /// Asks the consumer to stop: finish in-flight batches, commit, leave the group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The flag [`RunningConsumer::stop`] sets, for signal handlers.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits until the consumer has stopped and left the group.
    pub async fn wait(self) -> ConsumerReport {
        let thread = self.poll_thread;
        let failed = |what: &str| ConsumerReport {
            failure: Some(format!("the consumer's {what} failed unexpectedly")),
            ..ConsumerReport::default()
        };
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(report)) => report,
            Ok(Err(_)) => failed("poll thread"),
            Err(_) => failed("waiting task"),
        }
    }
}

/// Starts consuming: checks the topic (and the dead-letter topic, creating it if absent),
/// joins the group and spawns the poll thread. Call from within a multi-threaded runtime.
///
/// Each record is decoded by `decoder`; the records it accepts go to `sink` as its
/// output, a batch (of one partition, in order) at a time, and the ones it rejects go to
/// `settings.dead_letter_topic`. `ebb consume` passes
/// [`TradeDecoder`](crate::trade::TradeDecoder) and one of the built-in sinks; metrics are
/// registered by the caller ([`ConsumerMetrics::register`]) and served as it likes, and
/// `probes` answers `/livez` and `/readyz` (see [`crate::http`]).
pub async fn start<D: Decoder>(
    kafka: &KafkaOptions,
    settings: ConsumerSettings,
    decoder: D,
    sink: Arc<dyn Sink<D>>,
    metrics: ConsumerMetrics,
    probes: Arc<Probes>,
) -> Result<RunningConsumer, ConsumerError> {
    let admin = Admin::new(kafka)?;
    let topic_info = admin.topic(&settings.topic).await?;
    let dead_letters = match &settings.dead_letter_topic {
        Some(name) => {
            match admin.topic(name).await {
                Ok(_) => {}
                Err(AdminError::UnknownTopic(_)) => {
                    let config = [(
                        "max.message.bytes".to_string(),
                        (16 * 1024 * 1024).to_string(),
                    )];
                    match admin
                        .create_topic(name, topic_info.partitions as i32, 1, &config)
                        .await
                    {
                        Ok(()) | Err(AdminError::TopicExists(_)) => {
                            tracing::info!("Created dead-letter topic {name}")
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
            Some(DeadLetters::new(kafka, name.clone()).map_err(ConsumerError::Config)?)
        }
        None => None,
    };

    let config = settings::client_config(&settings, kafka, topic_info.partitions as usize);

    let stop = Arc::new(AtomicBool::new(false));
    // The watchdog's own client, so its offset requests never queue behind the consumer's.
    let probe = match settings.stall_timeout {
        Some(_) => Some(LagProbe::new(
            kafka,
            &settings.group,
            &settings.topic,
            topic_info.partitions,
        )?),
        None => None,
    };
    let shared = Arc::new(Shared::new(
        settings,
        Arc::new(Pipeline { decoder, sink }),
        dead_letters,
        metrics,
        probes,
        Handle::current(),
        stop.clone(),
    ));
    let _ = shared.principal.set(kafka.principal());
    let context = Context::new(AuthContext::new(kafka), shared.clone());
    let consumer: BaseConsumer<Context> = config
        .create_with_context(context)
        .map_err(ConsumerError::Config)?;
    consumer
        .subscribe(&[&shared.settings.topic])
        .map_err(ConsumerError::Config)?;
    let consumer = Arc::new(consumer);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    tracing::info!(
        "Consuming {} ({} partitions) as group {}; batch size: {}, batch timeout: {:?}, max in flight: {}, order: {}",
        shared.topic,
        topic_info.partitions,
        shared.settings.group,
        shared.settings.limits.max_records,
        shared.settings.limits.timeout,
        shared.settings.max_in_flight,
        match shared.settings.order_by {
            OrderBy::Partition => "by partition".to_string(),
            OrderBy::Key { lanes } => format!("by key, {lanes} lanes per partition"),
        }
    );

    let committer_stop = Arc::new(AtomicBool::new(false));
    let committer = tokio::spawn(committer::run(
        shared.clone(),
        consumer.clone(),
        committer_stop.clone(),
    ));
    let watchdog = match (probe, shared.settings.stall_timeout) {
        (Some(probe), Some(timeout)) => {
            let (shared, consumer) = (shared.clone(), Arc::downgrade(&consumer));
            Some(
                std::thread::Builder::new()
                    .name("ebb-watchdog".into())
                    .spawn(move || watchdog::runner::run(shared, consumer, probe, timeout))
                    .map_err(|e| ConsumerError::Thread("watchdog", e))?,
            )
        }
        _ => None,
    };
    let poll_thread = std::thread::Builder::new()
        .name("ebb-poll".into())
        .spawn(move || {
            poll::run(
                consumer,
                shared,
                poll::Tasks {
                    watchdog,
                    committer,
                    committer_stop,
                },
            )
        })
        .map_err(|e| ConsumerError::Thread("poll", e))?;
    Ok(RunningConsumer { stop, poll_thread })
}

#[cfg(test)]
mod runtime_tests;

/// In-process fixtures for the unit tests of the runtime's pieces: a [`Shared`] with no
/// Kafka client behind it.
#[cfg(test)]
mod fixtures {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use prometheus_client::registry::Registry;

    use super::metrics::ConsumerMetrics;
    use super::sink::Sink;
    use super::worker::Pipeline;
    use super::{ConsumerSettings, PartitionState, Shared, lock};
    use crate::http::Probes;
    use crate::trade::TradeDecoder;

    /// A consumer's shared state for topic `t`, with trades into `sink` and no
    /// dead-letter topic, on the current tokio runtime.
    pub(super) fn shared(settings: ConsumerSettings, sink: Arc<dyn Sink>) -> Arc<Shared> {
        Arc::new(Shared::new(
            settings,
            Arc::new(Pipeline {
                decoder: TradeDecoder,
                sink,
            }),
            None,
            ConsumerMetrics::register(&mut Registry::default()),
            Arc::new(Probes::default()),
            tokio::runtime::Handle::current(),
            Arc::new(AtomicBool::new(false)),
        ))
    }

    /// Makes `shared` own `partition`, as an assignment does.
    pub(super) fn own(shared: &Shared, partition: i32) -> Arc<PartitionState> {
        let state = Arc::new(PartitionState::new(partition, shared.settings.order_by));
        lock(&shared.owned).insert(partition, state.clone());
        state
    }
}
