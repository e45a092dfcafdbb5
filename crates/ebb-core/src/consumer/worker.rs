//! The worker of one sub-lane (in partition order, the partition's only one): a tokio
//! task that takes the sub-lane's closed batches in order and, for each, decodes the records, sends the ones the decoder rejects to the
//! dead-letter topic, hands the rest to the sink (retrying with backoff while the partition
//! is held), and then marks the batch's end offset handled, for the committer.
//!
//! The worker is the only part of the runtime that knows the [`Decoder`]'s type: a
//! [`Pipeline`] (decoder and sink) is kept behind the object-safe [`Work`], which starts
//! each partition's worker, so the rest of the runtime is not generic and decoding is
//! statically dispatched, once per record, as trade validation always was.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;

use super::batch::{Batch, Record};
use super::decode::Decoder;
use super::metrics::StatusLabel;
use super::sink::{BoxFuture, Sink, SinkError};
use super::{PartitionState, Shared};

/// A consumer's decoder and sink.
pub(super) struct Pipeline<D: Decoder> {
    pub(super) decoder: D,
    pub(super) sink: Arc<dyn Sink<D>>,
}

/// A [`Pipeline`] of any decoder: what the runtime's shared state holds.
pub(super) trait Work: Send + Sync + 'static {
    /// The worker task of sub-lane `lane` of a newly assigned partition (see [`run`]).
    fn worker(
        self: Arc<Self>,
        shared: Arc<Shared>,
        state: Arc<PartitionState>,
        lane: usize,
        rx: mpsc::UnboundedReceiver<Batch>,
    ) -> BoxFuture<'static, ()>;
}

impl<D: Decoder> Work for Pipeline<D> {
    fn worker(
        self: Arc<Self>,
        shared: Arc<Shared>,
        state: Arc<PartitionState>,
        lane: usize,
        rx: mpsc::UnboundedReceiver<Batch>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(run(self, shared, state, lane, rx))
    }
}

/// Runs until the partition is released (its sender dropped, or `released` set): each
/// batch of sub-lane `lane` handled in turn, the buffer counters settled after each, the
/// poll thread woken since the partition has room again.
async fn run<D: Decoder>(
    pipeline: Arc<Pipeline<D>>,
    shared: Arc<Shared>,
    state: Arc<PartitionState>,
    lane: usize,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    while let Some(batch) = rx.recv().await {
        if state.released.load(Ordering::SeqCst) {
            // What is left is dropped unprocessed; the release settles the counters.
            break;
        }
        let records = batch.len();
        shared.busy_batches.fetch_add(1, Ordering::SeqCst);
        // Settled even if a release's timeout aborts this task mid-batch.
        let busy = OnDrop(|| {
            shared.busy_batches.fetch_sub(1, Ordering::SeqCst);
        });
        handle_batch(&pipeline, &shared, &state, batch).await;
        drop(busy);
        state.queued_records.fetch_sub(records, Ordering::SeqCst);
        state.lane_queued[lane].fetch_sub(records, Ordering::SeqCst);
        shared.unbuffer(records);
        if let Some(poller) = shared.poller.get() {
            poller.unpark();
        }
    }
}

/// Runs its closure when dropped: counters that must be settled however a task ends.
struct OnDrop<F: FnMut()>(F);

impl<F: FnMut()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Decodes, dead-letters and sinks one batch, then marks it committable. Returns early
/// (nothing committed) if the partition is released while the batch is being retried.
async fn handle_batch<D: Decoder>(
    pipeline: &Pipeline<D>,
    shared: &Shared,
    state: &PartitionState,
    batch: Batch,
) {
    let Ok(_permit) = shared.in_flight.acquire().await else {
        return;
    };
    // Released while waiting for a slot (in key order a partition may have a batch waiting
    // in each sub-lane): not begun, so dropped, and the revoke does not wait for it.
    if state.released.load(Ordering::SeqCst) {
        return;
    }
    let metrics = &shared.metrics;
    metrics.in_flight.inc();
    let in_flight = OnDrop(|| {
        metrics.in_flight.dec();
    });
    let started = Instant::now();
    let since_created = started.duration_since(shared.created).as_nanos() as u64;
    shared
        .first_batch_ns
        .fetch_min(since_created, Ordering::Relaxed);
    let count = batch.len();
    let (first_offset, next_offset) = (batch.first_offset(), batch.next_offset());
    tracing::debug!("Processing batch of {count} messages");

    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let (accepted, rejected) = decode(&pipeline.decoder, batch.records(), |record| {
        if let Some(ts) = record.timestamp_ms {
            metrics.message_age.observe(age_seconds(now_ms, ts));
        }
    });

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
                pipeline
                    .sink
                    .write(&batch.topic, batch.partition, &accepted)
            })
            .await?;
        }
        Some(())
    }
    .await;
    drop(in_flight);
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
    state.handled(first_offset, next_offset);
}

/// A batch's records as `decoder` decodes them, and the records it rejected with the
/// reason for each, both in offset order; `each` sees every record first. Pure, and one
/// allocation per batch for the accepted records (none per record).
fn decode<'a, D: Decoder>(
    decoder: &D,
    records: impl ExactSizeIterator<Item = Record<'a>>,
    mut each: impl FnMut(&Record<'a>),
) -> (Vec<D::Output<'a>>, Vec<(Record<'a>, String)>) {
    let mut accepted = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    for record in records {
        each(&record);
        match decoder.decode(record) {
            Ok(decoded) => accepted.push(decoded),
            Err(reason) => rejected.push((record, reason.to_string())),
        }
    }
    (accepted, rejected)
}

/// A record's age in seconds at `now_ms` (0 for a timestamp in the future).
fn age_seconds(now_ms: i64, timestamp_ms: i64) -> f64 {
    (now_ms - timestamp_ms).max(0) as f64 / 1000.0
}

/// Runs `attempt` until it succeeds, backing off exponentially; gives up (returning `None`)
/// only when the partition is released, so the batch is never skipped by this owner.
/// While a partition is held the process is not ready (`/readyz`); releasing a held
/// partition settles that.
async fn retry<F, Fut>(shared: &Shared, state: &PartitionState, mut attempt: F) -> Option<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SinkError>>,
{
    let mut backoff = shared.settings.retry.initial_backoff;
    let mut failing = false;
    loop {
        match attempt().await {
            Ok(()) => {
                if failing && state.failing_lanes.fetch_sub(1, Ordering::SeqCst) == 1 {
                    shared.probes.recovered();
                }
                return Some(());
            }
            Err(e) => {
                // The partition is held while any of its sub-lanes is failing; a release
                // settles the count of those that give up.
                if !failing {
                    failing = true;
                    if state.failing_lanes.fetch_add(1, Ordering::SeqCst) == 0 {
                        shared.probes.failed();
                    }
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
                backoff = shared.settings.retry.next_backoff(backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime};

    use tokio::sync::mpsc;

    use super::{Decoder, Pipeline, age_seconds, decode, handle_batch, retry, run};
    use crate::consumer::batch::{Batch, BatchBuilder, BatchLimits, Record};
    use crate::consumer::fixtures::{own, shared};
    use crate::consumer::sink::{BoxFuture, Sink, SinkError};
    use crate::consumer::{ConsumerSettings, PartitionState, Shared};
    use crate::trade::{TradeDecoder, TradeGenerator};

    /// A sink that fails its first `failures` writes, then records each batch's offsets.
    #[derive(Default)]
    struct Recording {
        failures: AtomicUsize,
        writes: Mutex<Vec<(i32, Vec<i64>)>>,
    }

    impl Recording {
        fn failing(failures: usize) -> Arc<Self> {
            Arc::new(Recording {
                failures: AtomicUsize::new(failures),
                ..Recording::default()
            })
        }

        fn writes(&self) -> Vec<(i32, Vec<i64>)> {
            self.writes.lock().unwrap().clone()
        }
    }

    impl Sink for Recording {
        fn write<'a, 'r>(
            &'a self,
            _topic: &'a str,
            partition: i32,
            records: &'a [Record<'r>],
        ) -> BoxFuture<'a, Result<(), SinkError>> {
            Box::pin(async move {
                let failing = self
                    .failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    return Err(SinkError("the database is down".into()));
                }
                let offsets = records.iter().map(|r| r.offset).collect();
                self.writes.lock().unwrap().push((partition, offsets));
                Ok(())
            })
        }
    }

    /// Trades into `sink`, as `ebb consume` runs them.
    fn trades(sink: &Arc<Recording>) -> Arc<Pipeline<TradeDecoder>> {
        Arc::new(Pipeline {
            decoder: TradeDecoder,
            sink: sink.clone(),
        })
    }

    fn trade() -> Vec<u8> {
        let (mut key, mut value) = (String::new(), Vec::new());
        TradeGenerator::new(Some(3)).next_record(SystemTime::now(), &mut key, &mut value);
        value
    }

    /// A closed batch of partition 0 with one record per value, from `first` on.
    fn batch(first: i64, values: &[&[u8]]) -> Batch {
        let limits = BatchLimits {
            max_records: 1000,
            max_bytes: 1 << 20,
            timeout: Duration::from_secs(1),
        };
        let mut builder = BatchBuilder::new("t".into(), 0, limits);
        for (offset, value) in (first..).zip(values) {
            let record = Record {
                offset,
                key: None,
                value: Some(value),
                timestamp_ms: Some(0),
            };
            assert!(builder.push(record, Instant::now()).is_none());
        }
        builder.take().expect("records")
    }

    fn settings() -> ConsumerSettings {
        ConsumerSettings {
            dead_letter_topic: None,
            ..ConsumerSettings::new("t", "g")
        }
    }

    fn processed(shared: &Shared) -> (u64, u64, u64) {
        (
            shared.processed.load(Ordering::SeqCst),
            shared.dead_lettered.load(Ordering::SeqCst),
            shared.batches.load(Ordering::SeqCst),
        )
    }

    #[test]
    fn decoding_keeps_order_and_gives_each_rejected_record_its_reason() {
        let good = trade();
        let batch = batch(5, &[&good, b"", b"{not json", &good]);
        let mut seen = Vec::new();
        let (accepted, rejected) = decode(&TradeDecoder, batch.records(), |r| seen.push(r.offset));
        assert_eq!(seen, [5, 6, 7, 8]);
        assert_eq!(
            accepted.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [5, 8]
        );
        assert_eq!(
            rejected.iter().map(|(r, _)| r.offset).collect::<Vec<_>>(),
            [6, 7]
        );
        assert!(rejected.iter().all(|(_, reason)| !reason.is_empty()));
    }

    /// Values that are UTF-8, as text borrowed from the batch.
    struct Text;

    impl Decoder for Text {
        type Output<'a> = (i64, &'a str);
        type Error = &'static str;

        fn decode<'a>(&self, record: Record<'a>) -> Result<(i64, &'a str), &'static str> {
            let text = std::str::from_utf8(record.value.unwrap_or_default());
            text.map(|t| (record.offset, t)).map_err(|_| "not UTF-8")
        }
    }

    /// Collects the texts it is given.
    #[derive(Default)]
    struct Texts(Mutex<Vec<(i64, String)>>);

    impl Sink<Text> for Texts {
        fn write<'a>(
            &'a self,
            _topic: &'a str,
            _partition: i32,
            records: &'a [(i64, &str)],
        ) -> BoxFuture<'a, Result<(), SinkError>> {
            let mut texts = self.0.lock().unwrap();
            texts.extend(records.iter().map(|(o, t)| (*o, t.to_string())));
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn any_decoder_feeds_its_own_records_to_its_sink() {
        let shared = shared(settings(), Recording::failing(0));
        let state = own(&shared, 0);
        let texts = Arc::new(Texts::default());
        let pipeline = Pipeline {
            decoder: Text,
            sink: texts.clone(),
        };
        handle_batch(&pipeline, &shared, &state, batch(3, &[b"a", b"\xff", b"c"])).await;
        let got = texts.0.lock().unwrap().clone();
        assert_eq!(got, [(3, "a".to_string()), (5, "c".to_string())]);
        assert_eq!(state.commit.handled_offset(), 6);
        assert_eq!(processed(&shared), (2, 1, 1));
    }

    #[test]
    fn ages_are_never_negative() {
        assert_eq!(age_seconds(10_500, 10_000), 0.5);
        assert_eq!(age_seconds(10_000, 12_000), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_sunk_then_marked_handled_and_invalid_records_counted() {
        let sink = Recording::failing(0);
        let shared = shared(settings(), sink.clone());
        let state = own(&shared, 0);
        let good = trade();
        handle_batch(
            &trades(&sink),
            &shared,
            &state,
            batch(5, &[&good, b"oops", &good]),
        )
        .await;
        assert_eq!(sink.writes(), [(0, vec![5, 7])]);
        assert_eq!(state.commit.handled_offset(), 8);
        assert_eq!(processed(&shared), (2, 1, 1));
        assert_eq!(shared.metrics.dead_lettered.get(), 1);
        assert_eq!(shared.metrics.batches.get(), 1);
        assert_eq!(shared.metrics.in_flight.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_sink_holds_the_partition_and_backs_off_until_it_succeeds() {
        let sink = Recording::failing(3);
        let shared = shared(settings(), sink.clone());
        shared.probes.set_ready(true);
        let state = own(&shared, 0);
        let good = trade();
        let started = tokio::time::Instant::now();
        handle_batch(&trades(&sink), &shared, &state, batch(0, &[&good])).await;
        // 100 + 200 + 400 ms of backoff, on tokio's paused clock.
        assert_eq!(started.elapsed(), Duration::from_millis(700));
        assert_eq!(shared.metrics.retries.get(), 3);
        assert_eq!(sink.writes(), [(0, vec![0])]);
        assert_eq!(state.commit.handled_offset(), 1);
        assert!(!state.is_held());
        assert!(shared.probes.is_ready());
    }

    /// A task handling one batch of one trade of partition 0 into `sink`.
    fn spawn_one_batch(
        sink: &Arc<Recording>,
        shared: &Arc<Shared>,
        state: &Arc<PartitionState>,
    ) -> tokio::task::JoinHandle<()> {
        let (shared, state) = (shared.clone(), state.clone());
        let pipeline = trades(sink);
        let good = trade();
        tokio::spawn(
            async move { handle_batch(&pipeline, &shared, &state, batch(0, &[&good])).await },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_released_while_held_gives_its_batch_up_unhandled() {
        let sink = Recording::failing(usize::MAX);
        let shared = shared(settings(), sink.clone());
        shared.probes.set_ready(true);
        let state = own(&shared, 0);
        let task = spawn_one_batch(&sink, &shared, &state);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(state.is_held());
        assert!(!shared.probes.is_ready(), "not ready while held");
        state.released.store(true, Ordering::SeqCst);
        task.await.unwrap();
        assert!(sink.writes().is_empty());
        assert_eq!(state.commit.handled_offset(), -1);
        assert_eq!(processed(&shared), (0, 0, 0));
        assert_eq!(shared.metrics.in_flight.get(), 0);
    }

    /// An attempt that fails `failures` times, then succeeds.
    fn failing_attempts(
        failures: usize,
    ) -> impl FnMut() -> BoxFuture<'static, Result<(), SinkError>> {
        let left = Arc::new(AtomicUsize::new(failures));
        move || {
            let left = left.clone();
            Box::pin(async move {
                match left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
                    Ok(_) => Err(SinkError("the database is down".into())),
                    Err(_) => Ok(()),
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_stays_held_while_any_of_its_sub_lanes_is_failing() {
        let shared = shared(settings(), Recording::failing(0));
        shared.probes.set_ready(true);
        let state = own(&shared, 0);
        let retrying = |failures| {
            let (shared, state) = (shared.clone(), state.clone());
            tokio::spawn(async move { retry(&shared, &state, failing_attempts(failures)).await })
        };
        // Two sub-lanes' writes: one fails once (back at 100 ms), one four times.
        let (short, long) = (retrying(1), retrying(4));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(short.is_finished());
        assert!(state.is_held(), "the other sub-lane still fails");
        assert!(!shared.probes.is_ready());
        assert_eq!(long.await.unwrap(), Some(()));
        assert!(!state.is_held());
        assert!(shared.probes.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_released_while_waiting_for_a_slot_is_dropped_unbegun() {
        let sink = Recording::failing(0);
        let shared = shared(settings(), sink.clone());
        let state = own(&shared, 0);
        // Every slot taken, as by other partitions' (or sub-lanes') batches.
        let slots = shared.in_flight.available_permits() as u32;
        let taken = shared
            .in_flight
            .clone()
            .acquire_many_owned(slots)
            .await
            .unwrap();
        let task = spawn_one_batch(&sink, &shared, &state);
        tokio::time::sleep(Duration::from_millis(10)).await;
        state.released.store(true, Ordering::SeqCst);
        drop(taken);
        task.await.unwrap();
        assert!(sink.writes().is_empty(), "a revoke does not wait for it");
        assert_eq!(state.commit.handled_offset(), -1);
        assert_eq!(shared.metrics.in_flight.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_handles_batches_in_order_and_settles_the_buffer_counters() {
        let sink = Recording::failing(0);
        let shared = shared(settings(), sink.clone());
        let state = own(&shared, 0);
        let good = trade();
        let (tx, rx) = mpsc::unbounded_channel();
        for first in [0, 2, 4] {
            let batch = batch(first, &[&good, &good]);
            // As the poll thread's dispatch counts them.
            state
                .queued_records
                .fetch_add(batch.len(), Ordering::SeqCst);
            state.lane_queued[0].fetch_add(batch.len(), Ordering::SeqCst);
            shared.buffer(batch.len());
            tx.send(batch).unwrap();
        }
        drop(tx);
        run(trades(&sink), shared.clone(), state.clone(), 0, rx).await;
        assert_eq!(
            sink.writes(),
            [(0, vec![0, 1]), (0, vec![2, 3]), (0, vec![4, 5])]
        );
        assert_eq!(state.commit.handled_offset(), 6);
        assert_eq!(state.queued_records.load(Ordering::SeqCst), 0);
        assert_eq!(shared.buffered_records.load(Ordering::SeqCst), 0);
        assert_eq!(shared.metrics.buffered_records.get(), 0);
        assert_eq!(shared.busy_batches.load(Ordering::SeqCst), 0);
        assert_eq!(processed(&shared), (6, 0, 3));
    }
}
