//! The poll thread: it owns the consumer and, one [`Poller::run_once`] step at a time,
//! serves the main queue (rebalances, commit results, statistics), reads each partition's
//! queue into that partition's lane while the partition has room (into the open batch of
//! its one sub-lane, or in key order of the sub-lane its key maps to), hands closed
//! batches to the workers, and sleeps until records or room arrive. When asked to
//! stop (or idle long enough), [`Poller::shutdown`] drains, commits and closes the
//! consumer. It never blocks on the sink.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::batch::{Batch, BatchBuilder, Record};
use super::fetch_queue::FetchQueue;
use super::key_order::lane_of;
use super::rebalance::Context;
use super::{ConsumerReport, PartitionState, Shared, committer, lock};

/// The longest the lanes go without a sweep (batch timeouts, the idle check, the summary).
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// While a partition's worker is busy, its open batch's timeout is looked at again no
/// sooner than this (the worker wakes the poll thread when it finishes a batch).
const BUSY_RECHECK: Duration = Duration::from_millis(20);
/// How often the fetch rotation is stepped while it has partitions to rotate.
const ROTATE_EVERY: Duration = Duration::from_millis(5);
/// The longest the poll thread sleeps with nothing taken (a partition queue getting
/// records or a worker finishing a batch wakes it earlier).
const MAX_PARK: Duration = Duration::from_millis(10);

/// The poll thread's view of one owned partition.
pub(super) struct Lane {
    /// Its sub-lanes: one in partition order, `--key-lanes` in key order.
    pub(super) subs: Vec<SubLane>,
    /// The partition's own librdkafka queue (absent only if it could not be split off;
    /// its records then arrive on the consumer's main queue).
    pub(super) queue: Option<FetchQueue<Context>>,
    pub(super) state: Arc<PartitionState>,
}

/// One ordered strand of a partition: an open batch, and the worker that handles its
/// closed batches one at a time, in order.
pub(super) struct SubLane {
    pub(super) builder: BatchBuilder,
    pub(super) tx: mpsc::UnboundedSender<Batch>,
    pub(super) worker: JoinHandle<()>,
}

/// What the poll thread stops along with itself.
pub(super) struct Tasks {
    /// The watchdog thread, if there is one.
    pub(super) watchdog: Option<std::thread::JoinHandle<()>>,
    /// The committer task, and the flag that stops it.
    pub(super) committer: JoinHandle<()>,
    pub(super) committer_stop: Arc<AtomicBool>,
}

/// The poll thread's body: steps until the consumer is asked to stop (or idles long
/// enough), then shuts it down. Run it on the thread that is to own the consumer.
pub(super) fn run(
    consumer: Arc<BaseConsumer<Context>>,
    shared: Arc<Shared>,
    tasks: Tasks,
) -> ConsumerReport {
    let stop = shared.stop.clone();
    let mut poller = Poller::new(consumer, shared);
    while !stop.load(Ordering::SeqCst) {
        if let Step::Idle(idle) = poller.run_once() {
            tracing::info!("Nothing to do for {idle:?}; stopping");
            break;
        }
    }
    poller.shutdown(tasks)
}

/// What an ACL refusal of the consumer refused, in words.
fn denied_action(error: &rdkafka::error::KafkaError, group: &str, topic: &str) -> String {
    use rdkafka::types::RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(GroupAuthorizationFailed) => format!("use group {group}"),
        Some(TopicAuthorizationFailed) => format!("read topic {topic}"),
        _ => format!("consume topic {topic} as group {group}"),
    }
}

/// What one step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Go on.
    Continue,
    /// Nothing happened for this long (`stop_after_idle`): stop.
    Idle(Duration),
}

/// The poll loop's state between steps.
pub(super) struct Poller {
    consumer: Arc<BaseConsumer<Context>>,
    shared: Arc<Shared>,
    summary: Summary,
    /// When records were last taken or a batch was last in flight.
    last_activity: Instant,
    /// When the lanes next need a sweep.
    next_sweep: Instant,
    /// When the fetch rotation is next stepped.
    next_rotation: Instant,
    /// The rebalance count last seen: a rebalance counts as activity, so that an idle stop
    /// never comes right after a slow join, before the first fetch.
    seen_rebalances: u64,
}

impl Poller {
    /// The poller of the calling thread, which workers and partition queues wake.
    pub(super) fn new(consumer: Arc<BaseConsumer<Context>>, shared: Arc<Shared>) -> Self {
        let _ = shared.poller.set(std::thread::current());
        let summary = Summary::new(shared.settings.report_interval);
        Poller {
            consumer,
            shared,
            summary,
            last_activity: Instant::now(),
            next_sweep: Instant::now(),
            next_rotation: Instant::now(),
            seen_rebalances: 0,
        }
    }

    /// One iteration: sweep the lanes when due, serve the main queue once, read each
    /// partition with room (a slice at a time), and sleep briefly if nothing was taken.
    pub(super) fn run_once(&mut self) -> Step {
        let shared = &*self.shared;
        let context = self.consumer.context();
        let now = Instant::now();
        if now >= self.next_sweep {
            self.next_sweep = context.sweep(now);
            self.summary.maybe_log(shared, &context.lanes);
            let rebalances = shared.rebalances.load(Ordering::SeqCst);
            if shared.busy_batches.load(Ordering::SeqCst) > 0 || rebalances != self.seen_rebalances
            {
                self.seen_rebalances = rebalances;
                self.last_activity = now;
            }
            if let Some(idle) = shared.settings.stop_after_idle
                && now.duration_since(self.last_activity) >= idle
                && shared.buffered_records.load(Ordering::SeqCst) == 0
                && lock(&context.lanes).values().all(|l| l.open_records() == 0)
                && shared.probes.is_ready()
            {
                return Step::Idle(idle);
            }
        }

        // Events (rebalances, commit results, statistics), and records of any partition
        // whose queue could not be split off.
        let mut taken = 0usize;
        match self.consumer.poll(Duration::ZERO) {
            Some(Ok(message)) => {
                let mut lanes = lock(&context.lanes);
                if let Some(lane) = lanes.get_mut(&message.partition())
                    && let Some(deadline) = lane.take(context, &message, now)
                {
                    self.next_sweep = self.next_sweep.min(deadline);
                }
                taken += 1;
            }
            // An ACL refusal (joining or committing for a group, reading a topic) does not
            // heal by retrying: stop, saying what was refused.
            Some(Err(e)) if e.rdkafka_error_code().is_some_and(crate::admin::is_denial) => {
                let denied = crate::admin::AdminError::Denied {
                    action: denied_action(&e, &shared.settings.group, &shared.settings.topic),
                    principal: shared.principal().to_string(),
                };
                shared.refuse(denied.to_string());
            }
            Some(Err(e)) => tracing::warn!("Kafka: {e}"),
            None => {}
        }

        // Each partition with room, a slice at a time so all of them move; parked ones
        // wait their turn. The rotation is told what each read took and left.
        {
            let mut lanes = lock(&context.lanes);
            let mut rotation = lock(&context.rotation);
            let share = context.share(lanes.len());
            let slice = 2 * shared.settings.limits.max_records;
            let batch_size = shared.settings.limits.max_records;
            for (&partition, lane) in lanes.iter_mut() {
                if lane.state.parked.load(Ordering::Relaxed) {
                    continue;
                }
                let mut from_lane = 0;
                let mut drained = false;
                while from_lane < slice && lane.has_room(share) {
                    let Some(queue) = &mut lane.queue else { break };
                    // In key order the records go to many open batches: room is checked
                    // a batch's worth at a time.
                    let open = match lane.subs.as_slice() {
                        [only] => only.builder.len(),
                        _ => 0,
                    };
                    let want = take_size(batch_size, open, slice - from_lane);
                    let next_sweep = &mut self.next_sweep;
                    let got = queue.take(want, |record| {
                        if let Some(deadline) =
                            add(context, &mut lane.subs, &lane.state, record, now)
                        {
                            *next_sweep = (*next_sweep).min(deadline);
                        }
                    });
                    from_lane += got;
                    if got < want {
                        drained = true;
                        break;
                    }
                }
                taken += from_lane;
                if let Some(queue) = &lane.queue {
                    rotation.observe(partition, from_lane, !drained && !queue.is_empty());
                }
                // In key order a partition can run out of room on its open batches alone;
                // closed now, they go to their workers instead of waiting out their clocks.
                if lane.subs.len() > 1 && !lane.has_room(share) {
                    context.close_idle_open_batches(lane);
                }
            }
        }

        if now >= self.next_rotation {
            self.next_rotation = now + ROTATE_EVERY;
            self.rotate(now);
        }

        if taken > 0 {
            self.last_activity = now;
        } else {
            // Woken early by a partition queue getting records or a worker finishing a batch.
            let wait = self
                .next_sweep
                .saturating_duration_since(Instant::now())
                .min(MAX_PARK);
            std::thread::park_timeout(wait);
        }
        Step::Continue
    }

    /// Ends the fetch turns that are over and starts waiting partitions that can use a
    /// slot (not held, with room in their share), pausing and resuming them in librdkafka.
    fn rotate(&mut self, now: Instant) {
        let context = self.consumer.context();
        let changes = {
            let lanes = lock(&context.lanes);
            let mut rotation = lock(&context.rotation);
            let share = context.share(lanes.len());
            rotation.step(now, |p| lanes.get(&p).is_some_and(|l| l.has_room(share)))
        };
        context.apply(&self.consumer, &changes, now);
    }

    /// Stops: commits what was handled, releases (drains and commits) every partition,
    /// stops the committer and the watchdog, and closes the consumer, which leaves the
    /// group at once. Returns the run's totals.
    pub(super) fn shutdown(self, tasks: Tasks) -> ConsumerReport {
        let Poller {
            consumer, shared, ..
        } = self;
        let Tasks {
            watchdog,
            committer,
            committer_stop,
        } = tasks;
        let stop = &shared.stop;
        let context = consumer.context();
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
        committer::commit_due(&shared, &consumer);
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
        let report = shared.report();
        tracing::info!(
            "Stopped: processed {} records in {} batches, dead-lettered {}",
            report.processed,
            report.batches,
            report.dead_lettered
        );
        report
    }
}

impl Context {
    /// Closes timed-out batches and counts the partitions held back; returns when the
    /// lanes next need a look.
    fn sweep(&self, now: Instant) -> Instant {
        let mut next = now + SWEEP_EVERY;
        let mut lanes = lock(&self.lanes);
        let share = self.share(lanes.len());
        let mut held_back = 0;
        for lane in lanes.values_mut() {
            if lane.subs.len() > 1 && !lane.has_room(share) {
                self.close_idle_open_batches(lane);
            }
            for (index, sub) in lane.subs.iter_mut().enumerate() {
                // A timeout closes the open batch only when the sub-lane's worker is free.
                // While it is busy the batch keeps growing (up to its size), as the
                // reference's blocking loop lets it: closing small batches on a clock while
                // they queue up behind a slow sink would cut throughput to a few records
                // per batch.
                let worker_free = lane.state.lane_queued[index].load(Ordering::SeqCst) == 0;
                let closed = if worker_free {
                    sub.builder.poll_timeout(now)
                } else {
                    None
                };
                if let Some(batch) = closed {
                    self.dispatch(&lane.state, index, &sub.tx, batch);
                }
                if let Some(deadline) = sub.builder.deadline() {
                    next = next.min(timeout_check(deadline, now, worker_free));
                }
            }
            if !lane.has_room(share) {
                held_back += 1;
            }
        }
        self.shared.metrics.paused_partitions.set(held_back);
        next
    }

    /// Closes the open batches of a partition's sub-lanes whose workers have nothing to do.
    /// In key order the open batches count against the partition's share of the buffer, so
    /// a partition can run out of room on them alone; they then go to their workers at once
    /// rather than on their clocks, and the room comes back as the workers finish.
    fn close_idle_open_batches(&self, lane: &mut Lane) {
        for (index, sub) in lane.subs.iter_mut().enumerate() {
            if lane.state.lane_queued[index].load(Ordering::SeqCst) == 0
                && let Some(batch) = sub.builder.take()
            {
                self.dispatch(&lane.state, index, &sub.tx, batch);
            }
        }
    }

    /// Hands a closed batch to the worker of sub-lane `index` of a partition.
    fn dispatch(
        &self,
        state: &PartitionState,
        index: usize,
        tx: &mpsc::UnboundedSender<Batch>,
        batch: Batch,
    ) {
        let records = batch.len();
        state.queued_records.fetch_add(records, Ordering::SeqCst);
        state.lane_queued[index].fetch_add(records, Ordering::SeqCst);
        self.shared.buffer(records);
        // A closed channel means the partition is being released; the release settles the
        // counters.
        let _ = tx.send(batch);
    }

    /// Each owned partition's share of the buffer budget.
    fn share(&self, owned: usize) -> usize {
        let settings = &self.shared.settings;
        share(
            settings.max_buffered_records,
            settings.limits.max_records,
            owned,
        )
    }
}

/// Each of `owned` partitions' share of `max_buffered_records`, at least two batches.
fn share(max_buffered_records: usize, batch_size: usize, owned: usize) -> usize {
    (max_buffered_records / owned.max(1)).max(2 * batch_size)
}

/// How many records to take from a partition's queue in one call: up to the end of the
/// open batch (so room is checked between batches), within what is left of the lane's
/// slice, and at least one.
fn take_size(batch_size: usize, open: usize, left_in_slice: usize) -> usize {
    (batch_size - open).min(left_in_slice).max(1)
}

/// When to look again at an open batch whose timeout is `deadline`: at the deadline when
/// its worker is free, otherwise no sooner than [`BUSY_RECHECK`] from `now` (a busy worker
/// wakes the poll thread when it finishes a batch).
fn timeout_check(deadline: Instant, now: Instant, worker_free: bool) -> Instant {
    if worker_free {
        deadline
    } else {
        deadline.max(now + BUSY_RECHECK)
    }
}

impl Lane {
    /// Whether the poll thread should read more of this partition now. In partition order
    /// the open batch does not count, so it always fills up (memory: a share plus one
    /// batch); in key order the open batches count, since there are many of them (memory:
    /// a share plus one read).
    fn has_room(&self, share: usize) -> bool {
        let open = match self.subs.len() {
            1 => 0,
            _ => self.open_records(),
        };
        !self.state.is_held() && self.state.queued_records.load(Ordering::SeqCst) + open < share
    }

    /// Records in the sub-lanes' open batches.
    pub(super) fn open_records(&self) -> usize {
        self.subs.iter().map(|s| s.builder.len()).sum()
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
        add(context, &mut self.subs, &self.state, record, now)
    }
}

/// Adds a record to the open batch of its sub-lane (the only one, or by its key),
/// dispatching the batch if it closed; returns that sub-lane's open batch's deadline, if
/// one is open. Takes the lane's parts because its queue is borrowed while records are
/// read from it.
fn add(
    context: &Context,
    subs: &mut [SubLane],
    state: &PartitionState,
    record: Record<'_>,
    now: Instant,
) -> Option<Instant> {
    let index = match subs.len() {
        1 => 0,
        lanes => lane_of(record.key, record.offset, lanes),
    };
    let sub = &mut subs[index];
    if sub.builder.is_empty() {
        // Before the record can be handled by anyone, so a sub-lane that finishes ahead of
        // this one never commits past it.
        state.opened(record.offset);
    }
    if let Some(batch) = sub.builder.push(record, now) {
        context.dispatch(state, index, &sub.tx, batch);
    }
    // While the sub-lane's worker is busy its batch may outgrow its clock (see the sweep);
    // a past deadline would otherwise pull every sweep forward.
    let worker_free = state.lane_queued[index].load(Ordering::SeqCst) == 0;
    sub.builder
        .deadline()
        .map(|deadline| timeout_check(deadline, now, worker_free))
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
        let parked = shared.metrics.parked_partitions.get();

        let lag: i64 = lock(&shared.owned)
            .values()
            .map(|s| s.lag.load(Ordering::Relaxed).max(0))
            .sum();
        tracing::info!(
            "Processed: {processed} messages, Rate: {rate:.1} msg/s, Lag: {lag}, In flight: {}, Partitions: {partitions}, Held back: {paused}, Waiting to fetch: {parked}",
            shared.busy_batches.load(Ordering::Relaxed)
        );
        self.last_log = Instant::now();
        self.last_logged_processed = processed;
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{BUSY_RECHECK, share, take_size, timeout_check};

    #[test]
    fn partitions_share_the_buffer_but_keep_two_batches_each() {
        // The defaults: 12,800 records, batches of 100.
        assert_eq!(share(12_800, 100, 0), 12_800);
        assert_eq!(share(12_800, 100, 1), 12_800);
        assert_eq!(share(12_800, 100, 8), 1_600);
        assert_eq!(share(12_800, 100, 64), 200);
        assert_eq!(share(12_800, 100, 100), 200);
        assert_eq!(share(5_000, 1_000, 3), 2_000);
    }

    #[test]
    fn reads_stop_at_the_end_of_the_open_batch_and_of_the_slice() {
        // An empty batch of 100 in a slice of 200.
        assert_eq!(take_size(100, 0, 200), 100);
        // 30 already open: the 70 that close it.
        assert_eq!(take_size(100, 30, 200), 70);
        // 20 left of the slice.
        assert_eq!(take_size(100, 0, 20), 20);
        // Never nothing.
        assert_eq!(take_size(100, 100, 200), 1);
        assert_eq!(take_size(1, 0, 2), 1);
    }

    #[test]
    fn a_busy_workers_batch_timeout_is_looked_at_again_no_sooner_than_20_ms() {
        let now = Instant::now();
        let past = now - Duration::from_millis(5);
        let soon = now + Duration::from_millis(50);
        assert_eq!(timeout_check(past, now, true), past);
        assert_eq!(timeout_check(soon, now, true), soon);
        assert_eq!(timeout_check(past, now, false), now + BUSY_RECHECK);
        assert_eq!(timeout_check(soon, now, false), soon);
        assert_eq!(BUSY_RECHECK, Duration::from_millis(20));
    }
}
