//! The librdkafka context of the consumer, above all its rebalance callback: lanes,
//! workers and partition queues set up before a partition is assigned, revoked partitions
//! drained and committed before they are given up, and every error of the assign and
//! unassign calls counted and acted on. The context also receives the client's statistics
//! (lag, fetch positions) and the commit results (handed to the committer).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::batch::BatchBuilder;
use super::fetch_queue::FetchQueue;
use super::metrics::{CallLabel, KindLabel, PartitionLabel};
use super::poll::{Lane, SubLane};
use super::rotation::{Change, Rotation, TURN};
use super::{PartitionState, Shared, committer, lock};
use crate::kafka::AuthContext;

/// The librdkafka context: rebalance callbacks, commit results and statistics.
pub(super) struct Context {
    auth: AuthContext,
    pub(super) shared: Arc<Shared>,
    /// The poll thread's lanes, one per owned partition.
    pub(super) lanes: Mutex<HashMap<i32, Lane>>,
    /// Which owned partitions fetch now and which wait their turn. Locked after `lanes`
    /// when both are.
    pub(super) rotation: Mutex<Rotation>,
    /// The consumer itself, to split off partition queues on assignment.
    pub(super) consumer: OnceLock<Weak<BaseConsumer<Context>>>,
}

impl ClientContext for Context {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    /// ACL refusals also come back from the poll, which stops the consumer and reports
    /// them once (`poll.rs`); everything else is logged as librdkafka's default does.
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !error
            .rdkafka_error_code()
            .is_some_and(crate::admin::is_denial)
        {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

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
                let now = Instant::now();
                let changes: Vec<Change> = {
                    let mut rotation = lock(&self.rotation);
                    partitions
                        .iter()
                        .map(|&p| rotation.assign(p, now))
                        .collect()
                };
                self.apply(consumer, &changes, now);
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
        committer::record_results(&self.shared, result, offsets);
    }
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
    /// The context of a consumer that owns nothing yet.
    pub(super) fn new(auth: AuthContext, shared: Arc<Shared>) -> Self {
        Context {
            auth,
            lanes: Mutex::new(HashMap::new()),
            rotation: Mutex::new(Rotation::new(shared.settings.max_fetching_partitions, TURN)),
            consumer: OnceLock::new(),
            shared,
        }
    }

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
            let order_by = shared.settings.order_by;
            let state = Arc::new(PartitionState::new(partition, order_by));
            let subs = (0..order_by.lanes())
                .map(|index| {
                    // Unbounded, because the poll thread bounds what it sends (see the
                    // module docs).
                    let (tx, rx) = mpsc::unbounded_channel();
                    let worker = shared.runtime.spawn(shared.pipeline.clone().worker(
                        shared.clone(),
                        state.clone(),
                        index,
                        rx,
                    ));
                    let limits = shared.settings.limits;
                    SubLane {
                        builder: BatchBuilder::new(shared.topic.clone(), partition, limits),
                        tx,
                        worker,
                    }
                })
                .collect();
            lock(&shared.owned).insert(partition, state.clone());
            let queue = self.split_queue(partition);
            lanes.insert(partition, Lane { subs, queue, state });
        }
        shared.metrics.assigned_partitions.set(lanes.len() as i64);
    }

    /// Stops owning `partitions`: drops their unprocessed records, lets in-flight batches
    /// finish (up to `timeout`), then commits what was handled, synchronously. Returns how
    /// many of them were owned.
    pub(super) fn release(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
        timeout: Duration,
        commit: bool,
    ) -> usize {
        let shared = &self.shared;
        // Paused first: librdkafka then stops fetching them and drops what it had queued
        // for them, which nobody reads any more (their queues are dropped below and would
        // otherwise be filled to their limits while the in-flight batches finish).
        // librdkafka keeps the pause across the unassignment; an assignment resumes or
        // parks every partition it hands over (`Rotation::assign`).
        let mut paused = TopicPartitionList::new();
        for &partition in partitions {
            paused.add_partition(&shared.topic, partition);
        }
        if let Err(e) = consumer.pause(&paused) {
            tracing::debug!("Pausing released partitions {partitions:?}: {e}");
        }
        let mut released = Vec::new();
        {
            let mut lanes = lock(&self.lanes);
            let mut owned = lock(&shared.owned);
            let mut rotation = lock(&self.rotation);
            for partition in partitions {
                owned.remove(partition);
                rotation.release(*partition);
                if let Some(lane) = lanes.remove(partition) {
                    lane.state.released.store(true, Ordering::SeqCst);
                    shared.metrics.partition_lag.remove(&PartitionLabel {
                        partition: *partition,
                    });
                    // Dropping the senders ends the workers once their current batches are
                    // done.
                    let workers: Vec<_> = lane.subs.into_iter().map(|s| s.worker).collect();
                    released.push((lane.state, workers));
                }
            }
            shared.metrics.assigned_partitions.set(lanes.len() as i64);
        }
        if released.is_empty() {
            return 0;
        }
        let count = released.len();
        let (states, workers): (Vec<_>, Vec<Vec<_>>) = released.into_iter().unzip();
        let workers: Vec<JoinHandle<()>> = workers.into_iter().flatten().collect();
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
            shared.unbuffer(left);
            // Its worker may have been retrying a failing sink when it was released.
            if state.failing_lanes.swap(0, Ordering::SeqCst) > 0 {
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

    /// Makes the pauses and resumes the rotation decided. One librdkafka refuses (a
    /// partition it no longer knows) is undone in the rotation and logged.
    pub(super) fn apply(&self, consumer: &BaseConsumer<Self>, changes: &[Change], now: Instant) {
        for &change in changes {
            let (partition, park) = match change {
                Change::Park(p) => (p, true),
                Change::Resume(p) => (p, false),
            };
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.shared.topic, partition);
            let result = if park {
                consumer.pause(&list)
            } else {
                consumer.resume(&list)
            };
            // librdkafka reports a partition it does not know in the list, not the result.
            let result = result.and_then(|()| {
                list.elements()
                    .first()
                    .map_or(Ok(()), |element| element.error())
            });
            match result {
                Ok(()) => {
                    if let Some(state) = lock(&self.shared.owned).get(&partition) {
                        state.parked.store(park, Ordering::SeqCst);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        "librdkafka refused to {} partition {partition} of {}: {e}",
                        if park { "pause" } else { "resume" },
                        self.shared.topic
                    );
                    lock(&self.rotation).refused(change, now);
                }
            }
        }
        let parked = lock(&self.rotation).parked();
        self.shared.metrics.parked_partitions.set(parked as i64);
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
}
