//! The micro-batch consumer runtime.
//!
//! Data flow: one poll thread owns the Kafka consumer. Each assigned partition's records
//! arrive on a queue of its own (librdkafka's per-partition queues); the poll thread reads
//! a partition's queue into that partition's [`BatchBuilder`] while the partition has room,
//! and sends each closed batch down the partition's channel to its worker task. Workers
//! run concurrently (bounded by a semaphore, the in-flight limit) but each handles its own
//! partition's batches strictly in order: validate, send invalid records to the
//! dead-letter topic, hand the rest to the [`Sink`] (retrying with backoff; the partition
//! is held meanwhile), then mark the batch's end offset committable. A committer task
//! commits those offsets asynchronously every `commit_interval` (committing after every
//! batch would send thousands of commits a second at high rates, and a synchronous commit
//! queued behind them times out).
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
//! it again on resume, which at every small backlog costs most of the throughput.)

pub mod batch;
pub mod commit;
mod commit_request;
pub mod dead_letter;
pub mod fetch_queue;
pub mod metrics;
pub mod sink;
pub mod watchdog;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use self::batch::{Batch, BatchBuilder, BatchLimits, Record};
use self::commit::CommitState;
use self::dead_letter::DeadLetters;
use self::fetch_queue::FetchQueue;
use self::metrics::{CallLabel, ConsumerMetrics, KindLabel, PartitionLabel, StatusLabel};
use self::sink::Sink;
use crate::admin::{Admin, AdminError};
use crate::http::Probes;
use crate::kafka::{AuthContext, KafkaOptions};
use crate::lag::LagProbe;
use crate::trade::TradeRef;

/// How the group assigns partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupProtocol {
    /// The classic protocol with a client-side assignor: `cooperative-sticky` (incremental,
    /// the default), `range` or `roundrobin` (eager: every member stops on each change).
    Classic {
        /// `partition.assignment.strategy`.
        assignment_strategy: String,
    },
    /// KIP-848 (`group.protocol=consumer`): the broker assigns, incrementally; session
    /// and heartbeat settings are the broker's.
    Consumer,
}

/// Retry policy for a failing sink or dead-letter write: exponential backoff, forever
/// (the partition is held, never skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First wait after a failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

/// Everything `ebb consume` can be told, one field per option.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Topic to consume (`KAFKA_TOPIC`).
    pub topic: String,
    /// Consumer group (`CONSUMER_GROUP`).
    pub group: String,
    /// When batches close (`BATCH_SIZE`, max bytes, `BATCH_TIMEOUT_SECONDS`).
    pub limits: BatchLimits,
    /// Most batches in the sink at once, across partitions.
    pub max_in_flight: usize,
    /// Most records held in closed batches, across partitions, before the poll thread
    /// waits for workers to catch up. See [`ConsumerSettings::default_max_buffered_records`].
    pub max_buffered_records: usize,
    /// Where a group without a committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Group protocol and assignor.
    pub group_protocol: GroupProtocol,
    /// `session.timeout.ms` (classic protocol only).
    pub session_timeout: Duration,
    /// `heartbeat.interval.ms` (classic protocol only).
    pub heartbeat_interval: Duration,
    /// How long a revoke waits for the revoked partitions' in-flight batches.
    pub revoke_timeout: Duration,
    /// How long a stop waits for in-flight batches.
    pub shutdown_timeout: Duration,
    /// How long an owned partition may go without progress, records waiting or handled
    /// offsets unacknowledged, with the group stable, before the watchdog calls it stalled
    /// (see [`watchdog`]); `None` turns the watchdog off.
    pub stall_timeout: Option<Duration>,
    /// How often handled offsets are committed (asynchronously) while running; revokes
    /// and stops commit synchronously whatever this is. After a crash, up to this much
    /// processing is replayed.
    pub commit_interval: Duration,
    /// Retry policy for sink and dead-letter failures.
    pub retry: RetryPolicy,
    /// Dead-letter topic; `None` drops invalid records (counted as errors).
    pub dead_letter_topic: Option<String>,
    /// Stop by itself after this long with nothing polled and nothing in flight.
    pub stop_after_idle: Option<Duration>,
    /// How often the summary line is logged.
    pub report_interval: Duration,
}

impl ConsumerSettings {
    /// Enough buffered records to keep every in-flight slot busy with one batch queued
    /// behind it (2 × in-flight × batch size), within 5,000..=100,000.
    pub fn default_max_buffered_records(max_in_flight: usize, batch_size: usize) -> usize {
        (2 * max_in_flight * batch_size).clamp(5_000, 100_000)
    }

    /// The reference consumer's defaults for `topic` and `group`.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        let topic = topic.into();
        ConsumerSettings {
            dead_letter_topic: Some(format!("{topic}.dlq")),
            topic,
            group: group.into(),
            limits: BatchLimits {
                max_records: 100,
                max_bytes: 1024 * 1024,
                timeout: Duration::from_millis(100),
            },
            max_in_flight: 64,
            max_buffered_records: Self::default_max_buffered_records(64, 100),
            auto_offset_reset: "earliest".into(),
            group_protocol: GroupProtocol::Classic {
                assignment_strategy: "cooperative-sticky".into(),
            },
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            stall_timeout: Some(Duration::from_secs(10)),
            commit_interval: Duration::from_secs(1),
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(10),
            },
            stop_after_idle: None,
            report_interval: Duration::from_secs(5),
        }
    }
}

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
    /// Records in closed batches sent to the worker and not yet finished.
    queued_records: AtomicUsize,
    /// The worker is retrying a failed write: pause the partition until it succeeds.
    held: AtomicBool,
}

/// The poll thread's view of one owned partition.
struct Lane {
    builder: BatchBuilder,
    tx: mpsc::UnboundedSender<Batch>,
    /// The partition's own librdkafka queue (absent only if it could not be split off;
    /// its records then arrive on the consumer's main queue).
    queue: Option<FetchQueue<Context>>,
    state: Arc<PartitionState>,
    worker: JoinHandle<()>,
}

/// State shared by the poll thread (through the context), workers and the committer.
struct Shared {
    topic: Arc<str>,
    settings: ConsumerSettings,
    sink: Arc<dyn Sink>,
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
}

impl Shared {
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

    /// Nanoseconds since the consumer was created (the committer's clock).
    fn now_ns(&self) -> u64 {
        self.created.elapsed().as_nanos() as u64
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The librdkafka context: rebalance callbacks, commit results and statistics.
struct Context {
    auth: AuthContext,
    shared: Arc<Shared>,
    lanes: Mutex<HashMap<i32, Lane>>,
    /// The consumer itself, to split off partition queues on assignment.
    consumer: OnceLock<Weak<BaseConsumer<Context>>>,
}

impl ClientContext for Context {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        self.auth.token()
    }

    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&*self.shared.topic) else {
            return;
        };
        let owned = lock(&self.shared.owned);
        for (partition, stats) in &topic.partitions {
            if let Some(state) = owned.get(partition) {
                state.lag.store(stats.consumer_lag, Ordering::Relaxed);
                state.fetch_next.store(stats.next_offset, Ordering::Relaxed);
                state
                    .fetch_queued
                    .store(stats.fetchq_cnt, Ordering::Relaxed);
                if stats.consumer_lag >= 0 {
                    self.shared
                        .metrics
                        .partition_lag
                        .get_or_create(&PartitionLabel {
                            partition: *partition,
                        })
                        .set(stats.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    /// Owns the whole rebalance rather than librdkafka's default: lanes and partition
    /// queues exist before a partition is assigned (so no record of it reaches the main
    /// queue), revoked partitions are drained and committed before they are given up, and
    /// every error of the assign calls is counted and acted on instead of discarded.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let _rebalancing = Rebalancing::start(&self.shared);
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.shared.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.count_rebalance("assign");
                self.assign(&partitions);
                let (call, result) = if cooperative {
                    ("incremental_assign", consumer.incremental_assign(tpl))
                } else {
                    ("assign", consumer.assign(tpl))
                };
                if let Err(e) = result {
                    // The partitions are not ours after all: drop their lanes (nothing was
                    // read, so nothing to commit), then start afresh.
                    self.call_failed(call);
                    self.release(consumer, &partitions, Duration::ZERO, false);
                    self.shared.fail(format!(
                        "librdkafka refused {call} of partition(s) {partitions:?} of {}: {e}",
                        self.shared.topic
                    ));
                    return;
                }
                let total = lock(&self.lanes).len();
                tracing::info!(
                    "Rebalance: assigned {} partition(s) {partitions:?}; now owning {total}",
                    partitions.len(),
                );
                self.shared.probes.set_ready(true);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                self.count_rebalance(if lost { "lost" } else { "revoke" });
                let started = Instant::now();
                let timeout = self.shared.settings.revoke_timeout;
                // A lost assignment is no longer ours to commit.
                if self.release(consumer, &partitions, timeout, !lost) > 0 {
                    let drained = started.elapsed();
                    self.shared
                        .metrics
                        .revoke_drain_seconds
                        .observe(drained.as_secs_f64());
                    tracing::info!(
                        "Rebalance: {} {} partition(s) {partitions:?}; drained and committed in {drained:.0?}",
                        if lost { "lost" } else { "revoked" },
                        partitions.len(),
                    );
                }
                let (call, result) = if cooperative {
                    ("incremental_unassign", consumer.incremental_unassign(tpl))
                } else {
                    ("unassign", consumer.unassign())
                };
                if let Err(e) = result {
                    // librdkafka waits for this call to complete the rebalance; without it
                    // the member would hold its place in the group and fetch nothing.
                    self.call_failed(call);
                    self.shared.fail(format!(
                        "librdkafka refused {call} of partition(s) {partitions:?} of {}: {e}",
                        self.shared.topic
                    ));
                }
            }
            other => {
                // As rdkafka's default handler does: give everything up, then start afresh.
                let code: RDKafkaErrorCode = other.into();
                self.count_rebalance("error");
                let owned: Vec<i32> = lock(&self.lanes).keys().copied().collect();
                self.release(consumer, &owned, Duration::ZERO, false);
                if let Err(e) = consumer.unassign() {
                    self.call_failed("unassign");
                    tracing::warn!("librdkafka refused unassign after a rebalance error: {e}");
                }
                self.shared
                    .fail(format!("rebalance of {} failed: {code}", self.shared.topic));
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let owned = lock(&self.shared.owned);
        let mut failed = 0;
        let mut first_error = None;
        for element in offsets.elements_for_topic(&self.shared.topic) {
            let Offset::Offset(offset) = element.offset() else {
                continue;
            };
            // librdkafka sets each partition's own error, and a request-level error applies
            // to every partition.
            let error = element
                .error()
                .err()
                .or_else(|| result.as_ref().err().cloned())
                .map(|e| e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail));
            let Some(state) = owned.get(&element.partition()) else {
                continue;
            };
            match error {
                None => state.commit.acknowledged(offset),
                Some(code) => {
                    failed += 1;
                    first_error.get_or_insert(code);
                    // Sent again at the next tick: a commit refused during a rebalance
                    // must not be taken for done.
                    state.commit.failed(offset);
                }
            }
        }
        drop(owned);
        match first_error {
            None if result.is_ok() => {
                self.shared.metrics.commits.inc();
            }
            None => {}
            Some(code) => {
                self.shared.metrics.commit_failures.inc();
                let message = format!(
                    "Commit of {failed} of {} offset(s) refused: {code}; sending again",
                    offsets.count()
                );
                if refused_by_rebalance(code) {
                    // Expected while the group changes; the next tick sends it again.
                    tracing::debug!("{message}");
                } else {
                    tracing::warn!("{message}");
                }
            }
        }
    }
}

/// Commit errors that a group change explains (the member's generation moved on).
fn refused_by_rebalance(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::StaleMemberEpoch
    )
}

/// Marks a rebalance callback as running, for the watchdog, until dropped.
struct Rebalancing<'a>(&'a Shared);

impl<'a> Rebalancing<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.in_rebalance.store(true, Ordering::SeqCst);
        shared.rebalances.fetch_add(1, Ordering::SeqCst);
        Rebalancing(shared)
    }
}

impl Drop for Rebalancing<'_> {
    fn drop(&mut self) {
        self.0.rebalances.fetch_add(1, Ordering::SeqCst);
        self.0.in_rebalance.store(false, Ordering::SeqCst);
    }
}

impl Context {
    fn count_rebalance(&self, kind: &'static str) {
        self.shared
            .metrics
            .rebalances
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    fn call_failed(&self, call: &'static str) {
        self.shared
            .metrics
            .rebalance_call_errors
            .get_or_create(&CallLabel { call })
            .inc();
    }

    fn assign(&self, partitions: &[i32]) {
        let shared = &self.shared;
        let mut lanes = lock(&self.lanes);
        for &partition in partitions {
            if lanes.contains_key(&partition) {
                continue;
            }
            let state = Arc::new(PartitionState {
                partition,
                commit: CommitState::default(),
                released: AtomicBool::new(false),
                lag: AtomicI64::new(-1),
                fetch_next: AtomicI64::new(-1),
                fetch_queued: AtomicI64::new(-1),
                queued_records: AtomicUsize::new(0),
                held: AtomicBool::new(false),
            });
            // Unbounded, because the poll thread bounds what it sends (see the module docs).
            let (tx, rx) = mpsc::unbounded_channel();
            let worker = shared
                .runtime
                .spawn(run_worker(shared.clone(), state.clone(), rx));
            lock(&shared.owned).insert(partition, state.clone());
            let limits = shared.settings.limits;
            let queue = self.split_queue(partition);
            lanes.insert(
                partition,
                Lane {
                    builder: BatchBuilder::new(shared.topic.clone(), partition, limits),
                    tx,
                    queue,
                    state,
                    worker,
                },
            );
        }
        shared.metrics.assigned_partitions.set(lanes.len() as i64);
    }

    /// Stops owning `partitions`: drops their unprocessed records, lets in-flight batches
    /// finish (up to `timeout`), then commits what was handled, synchronously. Returns how
    /// many of them were owned.
    fn release(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
        timeout: Duration,
        commit: bool,
    ) -> usize {
        let shared = &self.shared;
        let mut released = Vec::new();
        {
            let mut lanes = lock(&self.lanes);
            let mut owned = lock(&shared.owned);
            for partition in partitions {
                owned.remove(partition);
                if let Some(lane) = lanes.remove(partition) {
                    lane.state.released.store(true, Ordering::SeqCst);
                    shared.metrics.partition_lag.remove(&PartitionLabel {
                        partition: *partition,
                    });
                    // Dropping the sender ends the worker once its current batch is done.
                    released.push((lane.state, lane.worker));
                }
            }
            shared.metrics.assigned_partitions.set(lanes.len() as i64);
        }
        if released.is_empty() {
            return 0;
        }
        let count = released.len();
        let (states, workers): (Vec<_>, Vec<_>) = released.into_iter().unzip();
        shared.runtime.block_on(async {
            let aborts: Vec<_> = workers.iter().map(JoinHandle::abort_handle).collect();
            let mut workers = workers.into_iter();
            let finished = tokio::time::timeout(timeout, async {
                for worker in workers.by_ref() {
                    let _ = worker.await;
                }
            })
            .await;
            if finished.is_err() {
                tracing::warn!(
                    "In-flight batches of {} partition(s) did not finish within {timeout:?}; abandoning them (they will be processed again by the next owner)",
                    states.len()
                );
                aborts.iter().for_each(|a| a.abort());
                // Aborted tasks end at their next await point; wait for that, so nothing
                // below races with them.
                for worker in workers {
                    let _ = worker.await;
                }
            }
        });
        for state in &states {
            let left = state.queued_records.swap(0, Ordering::SeqCst);
            shared.buffered_records.fetch_sub(left, Ordering::SeqCst);
            // Its worker may have been retrying a failing sink when it was released.
            if state.held.swap(false, Ordering::SeqCst) {
                shared.probes.recovered();
            }
        }
        if commit {
            let mut tpl = TopicPartitionList::new();
            for state in &states {
                // Commit what was handled even if it was acknowledged: the broker's offset
                // can be behind it when an older request landed after a newer one.
                if state.commit.handled_offset() >= 0 {
                    let _ = tpl.add_partition_offset(
                        &shared.topic,
                        state.partition,
                        Offset::Offset(state.commit.handled_offset()),
                    );
                }
            }
            if tpl.count() > 0 {
                match consumer.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => {
                        shared.metrics.commits.inc();
                    }
                    Err(e) => {
                        shared.metrics.commit_failures.inc();
                        tracing::warn!(
                            "Final commit of released partitions {:?} failed: {e} (their last batches will be processed again by the next owner)",
                            states.iter().map(|s| s.partition).collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
        count
    }

    /// Commits, synchronously, every owned partition's handled offset not yet
    /// acknowledged.
    fn commit_due(&self, consumer: &BaseConsumer<Self>) {
        let shared = &self.shared;
        let mut tpl = TopicPartitionList::new();
        let mut due = Vec::new();
        for state in lock(&shared.owned).values() {
            if state.commit.is_due() {
                let offset = state.commit.handled_offset();
                let _ = tpl.add_partition_offset(
                    &shared.topic,
                    state.partition,
                    Offset::Offset(offset),
                );
                due.push((state.clone(), offset));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                shared.metrics.commits.inc();
                due.iter().for_each(|(s, o)| s.commit.acknowledged(*o));
            }
            Err(e) => {
                shared.metrics.commit_failures.inc();
                tracing::debug!("Commit before draining failed: {e}; committing after it");
            }
        }
    }

    /// Gives `partition` a librdkafka queue of its own, which wakes the poll thread when
    /// records arrive on it.
    fn split_queue(&self, partition: i32) -> Option<FetchQueue<Context>> {
        let consumer = self.consumer.get()?.upgrade()?;
        let poller = self.shared.poller.get().cloned();
        FetchQueue::split(&consumer, &self.shared.topic, partition, move || {
            if let Some(poller) = &poller {
                poller.unpark();
            }
        })
    }

    /// Closes timed-out batches and counts the partitions held back; returns when the
    /// lanes next need a look.
    fn sweep(&self, now: Instant) -> Instant {
        let mut next = now + Duration::from_millis(100);
        let mut lanes = lock(&self.lanes);
        let share = self.share(lanes.len());
        let mut held_back = 0;
        for lane in lanes.values_mut() {
            // A timeout closes the open batch only when the partition's worker is free. While
            // it is busy the batch keeps growing (up to its size), as the reference's
            // blocking loop lets it: closing small batches on a clock while they queue up
            // behind a slow sink would cut throughput to a few records per batch.
            let worker_free = lane.state.queued_records.load(Ordering::SeqCst) == 0;
            if worker_free && let Some(batch) = lane.builder.poll_timeout(now) {
                self.dispatch(&lane.state, &lane.tx, batch);
            }
            if let Some(deadline) = lane.builder.deadline() {
                // A busy worker wakes the poll thread when it finishes a batch.
                let due = if worker_free {
                    deadline
                } else {
                    deadline.max(now + Duration::from_millis(20))
                };
                next = next.min(due);
            }
            if !lane.has_room(share) {
                held_back += 1;
            }
        }
        self.shared.metrics.paused_partitions.set(held_back);
        next
    }

    /// Hands a closed batch to the partition's worker.
    fn dispatch(&self, state: &PartitionState, tx: &mpsc::UnboundedSender<Batch>, batch: Batch) {
        let records = batch.len();
        state.queued_records.fetch_add(records, Ordering::SeqCst);
        self.shared
            .buffered_records
            .fetch_add(records, Ordering::SeqCst);
        // A closed channel means the partition is being released; the release settles the
        // counters.
        let _ = tx.send(batch);
    }

    /// Each owned partition's share of the buffer budget (at least two batches).
    fn share(&self, owned: usize) -> usize {
        let settings = &self.shared.settings;
        (settings.max_buffered_records / owned.max(1)).max(2 * settings.limits.max_records)
    }
}

impl Lane {
    /// Whether the poll thread should read more of this partition now. The open batch
    /// does not count, so it always fills up (memory: a share plus one batch).
    fn has_room(&self, share: usize) -> bool {
        !self.state.held.load(Ordering::SeqCst)
            && self.state.queued_records.load(Ordering::SeqCst) < share
    }

    /// Adds a message from the consumer's main queue (see [`Lane::queue`]).
    fn take(
        &mut self,
        context: &Context,
        message: &BorrowedMessage<'_>,
        now: Instant,
    ) -> Option<Instant> {
        let record = Record {
            offset: message.offset(),
            key: message.key(),
            value: message.payload(),
            timestamp_ms: message.timestamp().to_millis(),
        };
        add(
            context,
            &mut self.builder,
            &self.state,
            &self.tx,
            record,
            now,
        )
    }
}

/// Adds a record to a lane's open batch, dispatching the batch if it closed; returns the
/// open batch's deadline, if one is open. Takes the lane's parts because its queue is
/// borrowed while records are read from it.
fn add(
    context: &Context,
    builder: &mut BatchBuilder,
    state: &PartitionState,
    tx: &mpsc::UnboundedSender<Batch>,
    record: Record<'_>,
    now: Instant,
) -> Option<Instant> {
    if let Some(batch) = builder.push(record, now) {
        context.dispatch(state, tx, batch);
    }
    builder.deadline()
}

async fn run_worker(
    shared: Arc<Shared>,
    state: Arc<PartitionState>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    while let Some(batch) = rx.recv().await {
        if state.released.load(Ordering::SeqCst) {
            // What is left is dropped unprocessed; the release settles the counters.
            break;
        }
        let records = batch.len();
        shared.busy_batches.fetch_add(1, Ordering::SeqCst);
        handle_batch(&shared, &state, batch).await;
        shared.busy_batches.fetch_sub(1, Ordering::SeqCst);
        state.queued_records.fetch_sub(records, Ordering::SeqCst);
        shared.buffered_records.fetch_sub(records, Ordering::SeqCst);
        if let Some(poller) = shared.poller.get() {
            poller.unpark();
        }
    }
}

/// Validates, dead-letters and sinks one batch, then marks it committable. Returns early
/// (nothing committed) if the partition is released while the batch is being retried.
async fn handle_batch(shared: &Shared, state: &PartitionState, batch: Batch) {
    let Ok(_permit) = shared.in_flight.acquire().await else {
        return;
    };
    let metrics = &shared.metrics;
    metrics.in_flight.inc();
    let started = Instant::now();
    let since_created = started.duration_since(shared.created).as_nanos() as u64;
    shared
        .first_batch_ns
        .fetch_min(since_created, Ordering::Relaxed);
    let count = batch.len();
    let next_offset = batch.next_offset();
    tracing::debug!("Processing batch of {count} messages");

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut accepted = Vec::with_capacity(count);
    let mut rejected = Vec::new();
    for record in batch.records() {
        if let Some(ts) = record.timestamp_ms {
            metrics
                .message_age
                .observe((now_ms - ts).max(0) as f64 / 1000.0);
        }
        match TradeRef::parse(record.value).map(|_| ()) {
            Ok(()) => accepted.push(record),
            Err(reason) => rejected.push((record, reason.to_string())),
        }
    }

    let done = async {
        for (record, reason) in &rejected {
            match &shared.dead_letters {
                Some(dlq) => {
                    retry(shared, state, || {
                        dlq.send(&batch.topic, batch.partition, record, reason)
                    })
                    .await?
                }
                None => tracing::warn!(
                    "Dropping invalid record {}:{} ({reason}); no dead-letter topic is set",
                    batch.partition,
                    record.offset
                ),
            }
        }
        if !accepted.is_empty() {
            retry(shared, state, || {
                shared.sink.write(&batch.topic, batch.partition, &accepted)
            })
            .await?;
        }
        Some(())
    }
    .await;
    metrics.in_flight.dec();
    if done.is_none() {
        return;
    }

    metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.batches.inc();
    metrics.batch_size.observe(count as f64);
    metrics
        .processed
        .get_or_create(&StatusLabel { status: "success" })
        .inc_by(accepted.len() as u64);
    if !rejected.is_empty() {
        metrics
            .processed
            .get_or_create(&StatusLabel { status: "error" })
            .inc_by(rejected.len() as u64);
        metrics.dead_lettered.inc_by(rejected.len() as u64);
    }
    shared
        .processed
        .fetch_add(accepted.len() as u64, Ordering::Relaxed);
    shared
        .dead_lettered
        .fetch_add(rejected.len() as u64, Ordering::Relaxed);
    shared.batches.fetch_add(1, Ordering::Relaxed);
    let finished = shared.created.elapsed().as_nanos() as u64;
    shared.last_batch_ns.fetch_max(finished, Ordering::Relaxed);
    state.commit.handled(next_offset);
}

/// Runs `attempt` until it succeeds, backing off exponentially; gives up (returning `None`)
/// only when the partition is released, so the batch is never skipped by this owner.
/// While a partition is held the process is not ready (`/readyz`); releasing a held
/// partition settles that.
async fn retry<F, Fut>(shared: &Shared, state: &PartitionState, mut attempt: F) -> Option<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), sink::SinkError>>,
{
    let mut backoff = shared.settings.retry.initial_backoff;
    loop {
        match attempt().await {
            Ok(()) => {
                if state.held.swap(false, Ordering::SeqCst) {
                    shared.probes.recovered();
                }
                return Some(());
            }
            Err(e) => {
                if !state.held.swap(true, Ordering::SeqCst) {
                    shared.probes.failed();
                }
                if state.released.load(Ordering::SeqCst) {
                    return None;
                }
                shared.metrics.retries.inc();
                tracing::warn!(
                    "Partition {} held: {e}; retrying in {backoff:?}",
                    state.partition
                );
                tokio::time::sleep(backoff).await;
                if state.released.load(Ordering::SeqCst) {
                    return None;
                }
                backoff = (backoff * 2).min(shared.settings.retry.max_backoff);
            }
        }
    }
}

/// Commits handled offsets asynchronously every `commit_interval`, and sends again those
/// the broker has not acknowledged (see [`commit`]).
async fn run_committer(
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Context>>,
    stop: Arc<AtomicBool>,
) {
    // Long enough for a commit's answer under a rebalance or a slow coordinator, short
    // enough that a lost request costs little lag.
    let resend_after = (shared.settings.commit_interval * 5).max(Duration::from_secs(2));
    loop {
        tokio::select! {
            // Notified only to stop.
            _ = shared.commit_wanted.notified() => {}
            _ = tokio::time::sleep(shared.settings.commit_interval) => {}
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let now = shared.now_ns();
        let mut tpl = TopicPartitionList::new();
        // Held until the request is queued (which does not wait for the broker): a
        // partition released meanwhile must not see this older offset land after its final
        // commit.
        let owned = lock(&shared.owned);
        let mut sent = Vec::new();
        for state in owned.values() {
            if let Some(due) = state.commit.take_due(now, resend_after) {
                if due.resent {
                    shared.metrics.commits_resent.inc();
                    tracing::debug!(
                        "Partition {}: no answer to the commit of offset {} within {resend_after:?}; sending it again",
                        state.partition,
                        due.offset
                    );
                }
                let _ = tpl.add_partition_offset(
                    &shared.topic,
                    state.partition,
                    Offset::Offset(due.offset),
                );
                sent.push((state.clone(), due.offset));
            }
        }
        if tpl.count() == 0 {
            continue;
        }
        if let Err(e) = commit_request::commit_async(&consumer, &tpl) {
            shared.metrics.commit_failures.inc();
            tracing::warn!("Cannot commit offsets: {e}; will send again");
            sent.iter().for_each(|(s, o)| s.commit.failed(*o));
        }
        drop(owned);
    }
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
pub async fn start(
    kafka: &KafkaOptions,
    settings: ConsumerSettings,
    sink: Arc<dyn Sink>,
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

    let mut config = kafka.client_config();
    config
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &settings.auto_offset_reset)
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        // Bounded prefetch: the fetch queues (one per partition, as each is split off) and
        // the fetch responses (which live as long as any record in them) are the
        // consumer's largest memory users.
        .set("queued.max.messages.kbytes", "1024")
        .set("max.partition.fetch.bytes", "262144")
        // librdkafka waits this long before fetching again once that queue is full; its
        // default (1 s) starves a consumer that drains the queue in milliseconds.
        .set("fetch.queue.backoff.ms", "10")
        // With a queue per partition, fetch requests often carry few partitions; a shorter
        // broker-side wait keeps them cycling (about 20 requests a second when idle).
        .set("fetch.wait.max.ms", "50");
    match &settings.group_protocol {
        GroupProtocol::Classic {
            assignment_strategy,
        } => {
            config
                .set("partition.assignment.strategy", assignment_strategy)
                .set(
                    "session.timeout.ms",
                    settings.session_timeout.as_millis().to_string(),
                )
                .set(
                    "heartbeat.interval.ms",
                    settings.heartbeat_interval.as_millis().to_string(),
                );
        }
        GroupProtocol::Consumer => {
            config.set("group.protocol", "consumer");
        }
    }
    for (key, value) in &kafka.extra {
        config.set(key, value);
    }

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
    let shared = Arc::new(Shared {
        topic: settings.topic.as_str().into(),
        in_flight: Arc::new(Semaphore::new(settings.max_in_flight.max(1))),
        settings,
        sink,
        dead_letters,
        metrics,
        probes,
        runtime: Handle::current(),
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
        stop: stop.clone(),
        failure: Mutex::new(None),
    });
    let context = Context {
        auth: AuthContext::new(kafka),
        shared: shared.clone(),
        lanes: Mutex::new(HashMap::new()),
        consumer: OnceLock::new(),
    };
    let consumer: BaseConsumer<Context> = config
        .create_with_context(context)
        .map_err(ConsumerError::Config)?;
    consumer
        .subscribe(&[&shared.settings.topic])
        .map_err(ConsumerError::Config)?;
    let consumer = Arc::new(consumer);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    tracing::info!(
        "Consuming {} ({} partitions) as group {}; batch size: {}, batch timeout: {:?}, max in flight: {}",
        shared.topic,
        topic_info.partitions,
        shared.settings.group,
        shared.settings.limits.max_records,
        shared.settings.limits.timeout,
        shared.settings.max_in_flight
    );

    let committer_stop = Arc::new(AtomicBool::new(false));
    let committer = tokio::spawn(run_committer(
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
        .spawn(move || poll_loop(consumer, shared, watchdog, committer, committer_stop))
        .map_err(|e| ConsumerError::Thread("poll", e))?;
    Ok(RunningConsumer { stop, poll_thread })
}

fn poll_loop(
    consumer: Arc<BaseConsumer<Context>>,
    shared: Arc<Shared>,
    watchdog: Option<std::thread::JoinHandle<()>>,
    committer: JoinHandle<()>,
    committer_stop: Arc<AtomicBool>,
) -> ConsumerReport {
    let stop = shared.stop.clone();
    let context = consumer.context();
    let _ = shared.poller.set(std::thread::current());
    let mut summary = Summary::new(shared.settings.report_interval);
    let mut last_activity = Instant::now();
    let mut next_sweep = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= next_sweep {
            next_sweep = context.sweep(now);
            summary.maybe_log(&shared, &context.lanes);
            if shared.busy_batches.load(Ordering::SeqCst) > 0 {
                last_activity = now;
            }
            if let Some(idle) = shared.settings.stop_after_idle
                && now.duration_since(last_activity) >= idle
                && shared.buffered_records.load(Ordering::SeqCst) == 0
                && lock(&context.lanes).values().all(|l| l.builder.is_empty())
                && shared.probes.is_ready()
            {
                tracing::info!("Nothing to do for {idle:?}; stopping");
                break;
            }
        }

        // Events (rebalances, commit results, statistics), and records of any partition
        // whose queue could not be split off.
        let mut taken = 0usize;
        match consumer.poll(Duration::ZERO) {
            Some(Ok(message)) => {
                let mut lanes = lock(&context.lanes);
                if let Some(lane) = lanes.get_mut(&message.partition())
                    && let Some(deadline) = lane.take(context, &message, now)
                {
                    next_sweep = next_sweep.min(deadline);
                }
                taken += 1;
            }
            Some(Err(e)) => tracing::warn!("Kafka: {e}"),
            None => {}
        }

        // Each partition with room, a slice at a time so all of them move.
        {
            let mut lanes = lock(&context.lanes);
            let share = context.share(lanes.len());
            let slice = 2 * shared.settings.limits.max_records;
            for lane in lanes.values_mut() {
                let mut from_lane = 0;
                while from_lane < slice && lane.has_room(share) {
                    let Some(queue) = &mut lane.queue else { break };
                    // Up to the end of the open batch, so room is checked between batches.
                    let want = (lane.builder.limits().max_records - lane.builder.len())
                        .min(slice - from_lane)
                        .max(1);
                    let got = queue.take(want, |record| {
                        if let Some(deadline) = add(
                            context,
                            &mut lane.builder,
                            &lane.state,
                            &lane.tx,
                            record,
                            now,
                        ) {
                            next_sweep = next_sweep.min(deadline);
                        }
                    });
                    from_lane += got;
                    if got < want {
                        break;
                    }
                }
                taken += from_lane;
            }
        }

        if taken > 0 {
            last_activity = now;
        } else {
            // Woken early by a partition queue getting records or a worker finishing a batch.
            let wait = next_sweep
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(10));
            std::thread::park_timeout(wait);
        }
    }

    tracing::info!(
        "Stopping: finishing in-flight batches (up to {:?})",
        shared.settings.shutdown_timeout
    );
    shared.probes.set_stopping();
    // Released (drained and committed) first: the sooner the commit, the likelier it
    // still carries the group's current generation while other members leave too.
    // What was handled before the stop is committed at once, before the drain: when
    // several members stop together, each leave moves the group's generation on, and a
    // commit made only after the drain can be refused (its batches then run again).
    context.commit_due(&consumer);
    let owned: Vec<i32> = lock(&context.lanes).keys().copied().collect();
    context.release(&consumer, &owned, shared.settings.shutdown_timeout, true);
    committer_stop.store(true, Ordering::SeqCst);
    shared.commit_wanted.notify_one();
    let _ = shared.runtime.block_on(committer);
    // The watchdog holds the consumer only while it looks; once it has ended, the drop
    // below is the consumer's last reference.
    stop.store(true, Ordering::SeqCst);
    if let Some(watchdog) = watchdog {
        // It ends within 100 ms unless a request of its own is under way; do not keep the
        // group waiting on that for long.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !watchdog.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if watchdog.is_finished() {
            let _ = watchdog.join();
        }
    }
    // The last reference: dropping it closes the consumer, which leaves the group now
    // rather than after the session timeout.
    drop(consumer);
    let report = ConsumerReport {
        processed: shared.processed.load(Ordering::SeqCst),
        dead_lettered: shared.dead_lettered.load(Ordering::SeqCst),
        batches: shared.batches.load(Ordering::SeqCst),
        active: Duration::from_nanos(
            shared
                .last_batch_ns
                .load(Ordering::SeqCst)
                .saturating_sub(shared.first_batch_ns.load(Ordering::SeqCst)),
        ),
        failure: lock(&shared.failure).clone(),
    };
    tracing::info!(
        "Stopped: processed {} records in {} batches, dead-lettered {}",
        report.processed,
        report.batches,
        report.dead_lettered
    );
    report
}

/// The periodic summary line and the processing-rate gauge.
struct Summary {
    interval: Duration,
    last_log: Instant,
    last_rate_at: Instant,
    last_processed: u64,
    last_logged_processed: u64,
}

impl Summary {
    fn new(interval: Duration) -> Self {
        let now = Instant::now();
        Summary {
            interval,
            last_log: now,
            last_rate_at: now,
            last_processed: 0,
            last_logged_processed: 0,
        }
    }

    fn maybe_log(&mut self, shared: &Shared, lanes: &Mutex<HashMap<i32, Lane>>) {
        let since_rate = self.last_rate_at.elapsed();
        if since_rate >= Duration::from_secs(1) {
            let processed = shared.processed.load(Ordering::Relaxed);
            let rate = (processed - self.last_processed) as f64 / since_rate.as_secs_f64();
            shared.metrics.messages_per_second.set(rate);
            self.last_processed = processed;
            self.last_rate_at = Instant::now();
        }
        let since_log = self.last_log.elapsed();
        if since_log < self.interval {
            return;
        }
        let processed = shared.processed.load(Ordering::Relaxed);
        let rate = (processed - self.last_logged_processed) as f64 / since_log.as_secs_f64();
        let partitions = lock(lanes).len();
        let paused = shared.metrics.paused_partitions.get();
        let lag: i64 = lock(&shared.owned)
            .values()
            .map(|s| s.lag.load(Ordering::Relaxed).max(0))
            .sum();
        tracing::info!(
            "Processed: {processed} messages, Rate: {rate:.1} msg/s, Lag: {lag}, In flight: {}, Partitions: {partitions}, Held back: {paused}",
            shared.busy_batches.load(Ordering::Relaxed)
        );
        self.last_log = Instant::now();
        self.last_logged_processed = processed;
    }
}
