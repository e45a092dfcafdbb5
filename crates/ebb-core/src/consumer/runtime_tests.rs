//! The whole runtime, in-process, against librdkafka's mock cluster: a Kafka protocol
//! server inside librdkafka (produce, fetch, offsets, the group coordinator, both group
//! protocols), with no JVM, ready in milliseconds. These tests hold [`start`] to its
//! contracts (docs/DESIGN.md, "Contracts") in seconds: batches close on size and time,
//! records reach the sink once and in order, only handled offsets are committed, a stop
//! and a revoke drain and commit, rejected records are dead-lettered, a failing sink is
//! retried with its partition held, and the buffer stays within its bound.
//!
//! The mock has no CreateTopics or DescribeGroups, so dead-letter topics are made up front
//! and the watchdog is off here; the real-broker suites (`crates/ebb/tests`) cover those.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use rdkafka::Offset;
use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::batch::{BatchLimits, Record};
use super::dead_letter::{HEADER_ERROR, HEADER_OFFSET, HEADER_PARTITION};
use super::decode::Decoder;
use super::metrics::{ConsumerMetrics, KindLabel};
use super::sink::{BoxFuture, Sink, SinkError};
use super::{
    ConsumerReport, ConsumerSettings, GroupProtocol, OrderBy, RetryPolicy, RunningConsumer, start,
};
use crate::http::Probes;
use crate::kafka::KafkaOptions;
use crate::lag::{all_partitions, partition_offsets};

/// Records whose value is a decimal number: `(offset, number)`; anything else is rejected.
struct Numbers;

impl Decoder for Numbers {
    type Output<'a> = (i64, u64);
    type Error = &'static str;

    fn decode<'a>(&self, record: Record<'a>) -> Result<(i64, u64), &'static str> {
        std::str::from_utf8(record.value.unwrap_or_default())
            .ok()
            .and_then(|text| text.parse().ok())
            .map(|number| (record.offset, number))
            .ok_or("not a number")
    }
}

/// One handled batch: its partition and its `(offset, number)` records.
type Handled = (i32, Vec<(i64, u64)>);

/// A sink that records each batch it handled; it can be slow, fail its first writes, or
/// keep one partition's writes waiting until it is opened.
#[derive(Default)]
struct Recorder {
    /// `(partition, records)` per handled batch, in the order they were handled.
    batches: Mutex<Vec<Handled>>,
    /// How long each write takes.
    delay: Duration,
    /// Writes still to fail.
    failures: AtomicUsize,
    /// A partition whose writes wait while `gate_closed` is set.
    gated: Option<i32>,
    /// A key (of [`keyed`] records) whose writes wait while `gate_closed` is set.
    gated_key: Option<u64>,
    gate_closed: AtomicBool,
    /// Writes begun (including failed and waiting ones).
    started: AtomicUsize,
    /// Writes under way now, and the most there were at once.
    writing: AtomicUsize,
    most_writing: AtomicUsize,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    fn handled(&self) -> usize {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.len())
            .sum()
    }

    /// Offsets handled per partition, in the order they were handled.
    fn offsets(&self) -> BTreeMap<i32, Vec<i64>> {
        let mut offsets: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (partition, records) in self.batches.lock().unwrap().iter() {
            let partition = offsets.entry(*partition).or_default();
            partition.extend(records.iter().map(|(offset, _)| offset));
        }
        offsets
    }
}

impl Sink<Numbers> for Recorder {
    fn write<'a, 'r>(
        &'a self,
        _topic: &'a str,
        partition: i32,
        records: &'a [(i64, u64)],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.writing.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_writing.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            let gated = self.gated == Some(partition)
                || records
                    .iter()
                    .any(|(_, n)| Some(n % KEYS) == self.gated_key);
            while gated && self.gate_closed.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.writing.fetch_sub(1, Ordering::SeqCst);
            let fail = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(SinkError("the database is down".into()));
            }
            let batch = (partition, records.to_vec());
            self.batches.lock().unwrap().push(batch);
            Ok(())
        })
    }
}

/// A mock cluster of one broker, owned by a producer client that also writes the tests'
/// records.
struct Mock {
    host: BaseProducer,
    kafka: KafkaOptions,
}

impl Mock {
    /// A cluster holding `topics` (name, partitions); groups form at once.
    fn new(topics: &[(&str, i32)]) -> Mock {
        let host: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .set("linger.ms", "0")
            .create()
            .expect("a client with a mock cluster");
        let cluster = host
            .client()
            .mock_cluster()
            .expect("the client's mock cluster");
        for (topic, partitions) in topics {
            cluster
                .create_topic(topic, *partitions, 1)
                .expect("mock topic");
        }
        let kafka = KafkaOptions::new(cluster.bootstrap_servers());
        drop(cluster);
        // SAFETY: the pointer is the mock cluster `host` owns, alive as long as `host`;
        // the call sets one integer under the cluster's lock. A first member then joins
        // without waiting out the broker default of 3 s.
        unsafe {
            let cluster = rd::rd_kafka_handle_mock_cluster(host.client().native_ptr());
            assert!(!cluster.is_null());
            rd::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
        Mock { host, kafka }
    }

    /// Writes `values` round-robin over `partitions` partitions of `topic`.
    fn produce(&self, topic: &str, partitions: i32, values: impl IntoIterator<Item = String>) {
        for (i, value) in values.into_iter().enumerate() {
            let record = BaseRecord::<(), _>::to(topic)
                .partition(i as i32 % partitions)
                .payload(&value);
            self.host.send(record).map_err(|(e, _)| e).expect("send");
        }
        self.host.flush(Duration::from_secs(10)).expect("flush");
    }

    /// Writes `values` to partition 0 of `topic`, each keyed by [`key_of`] its number.
    fn produce_keyed(&self, topic: &str, values: impl IntoIterator<Item = u64>) {
        for value in values {
            let (key, payload) = (key_of(value), value.to_string());
            let record = BaseRecord::to(topic)
                .partition(0)
                .key(&key)
                .payload(&payload);
            self.host.send(record).map_err(|(e, _)| e).expect("send");
        }
        self.host.flush(Duration::from_secs(10)).expect("flush");
    }

    /// The group's committed offset per partition (-1: none).
    fn committed(&self, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", group)
            .create()
            .expect("consumer");
        let list = all_partitions(topic, partitions as usize, Offset::Invalid);
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        let committed = partition_offsets(&committed, topic);
        (0..partitions)
            .map(|p| committed.get(&p).copied().unwrap_or(-1))
            .collect()
    }

    /// Every record of `topic` (from its first partition's start), with its headers.
    fn read(&self, topic: &str, count: usize) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.bootstrap_servers)
            .set("group.id", "reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut records = Vec::new();
        while records.len() < count && Instant::now() < deadline {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.expect("message");
            let headers = message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| {
                            let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                            (h.key.to_string(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push((message.payload().unwrap_or_default().to_vec(), headers));
        }
        records
    }

    /// Starts the runtime on `topic` with `sink`; returns it and its metrics.
    async fn start(
        &self,
        settings: ConsumerSettings,
        sink: Arc<Recorder>,
    ) -> (RunningConsumer, ConsumerMetrics) {
        let metrics = ConsumerMetrics::register(&mut Registry::default());
        let running = start(
            &self.kafka,
            settings,
            Numbers,
            sink,
            metrics.clone(),
            Arc::new(Probes::default()),
        )
        .await
        .expect("the consumer starts");
        (running, metrics)
    }
}

/// Quick settings: batches of 10, commits every 50 ms, fast retries, no watchdog.
fn settings(topic: &str, group: &str) -> ConsumerSettings {
    ConsumerSettings {
        limits: BatchLimits {
            max_records: 10,
            max_bytes: 1 << 20,
            timeout: Duration::from_millis(50),
        },
        dead_letter_topic: None,
        stall_timeout: None,
        commit_interval: Duration::from_millis(50),
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(6),
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
        },
        ..ConsumerSettings::new(topic, group)
    }
}

/// Waits up to 20 s for `done`, failing with `what` and `state()` if it never holds.
async fn eventually(what: &str, done: impl Fn() -> bool, state: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the sink has handled `count` records.
async fn until_handled(sink: &Recorder, count: usize) {
    eventually(
        &format!("{count} handled"),
        || sink.handled() == count,
        || sink.handled().to_string(),
    )
    .await;
}

/// Waits until `group`'s committed offsets on `topic` are `expected`, partition by partition.
async fn until_committed(mock: &Mock, group: &str, topic: &str, expected: &[i64]) {
    let partitions = expected.len() as i32;
    eventually(
        &format!("{group} committed {expected:?} on {topic}"),
        || mock.committed(group, topic, partitions) == expected,
        || format!("{:?}", mock.committed(group, topic, partitions)),
    )
    .await;
}

async fn stop(running: RunningConsumer) -> ConsumerReport {
    running.stop();
    let report = running.wait().await;
    assert_eq!(report.failure, None, "{report:?}");
    report
}

/// Keys of the keyed tests: number n has key `k{n % KEYS}`.
const KEYS: u64 = 10;

fn key_of(number: u64) -> String {
    format!("k{}", number % KEYS)
}

/// Each key's records (number mod [`KEYS`]) were handled in offset order, each once, and
/// together they are offsets `0..count` of partition 0.
fn assert_each_key_in_order(sink: &Recorder, count: i64) {
    let mut by_key: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    let mut all = Vec::new();
    for (partition, records) in sink.batches.lock().unwrap().iter() {
        assert_eq!(*partition, 0);
        for (offset, number) in records {
            assert_eq!(*offset, *number as i64, "keyed records hold their offset");
            by_key.entry(number % KEYS).or_default().push(*offset);
            all.push(*offset);
        }
    }
    for (key, offsets) in &by_key {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {offsets:?}"
        );
    }
    all.sort_unstable();
    assert_eq!(all, (0..count).collect::<Vec<_>>(), "each record once");
}

/// Key order over `lanes` sub-lanes.
fn by_key(mut settings: ConsumerSettings, lanes: usize) -> ConsumerSettings {
    settings.order_by = OrderBy::Key { lanes };
    settings
}

fn numbers(count: u64) -> impl Iterator<Item = String> {
    (0..count).map(|n| n.to_string())
}

/// Each partition's handled offsets are `0..n` for some n: each once, in order, no gap.
fn assert_each_once_in_order(offsets: &BTreeMap<i32, Vec<i64>>) {
    for (partition, offsets) in offsets {
        let expected: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(offsets, &expected, "partition {partition}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_sink_once_in_order_in_bounded_batches_and_are_committed() {
    let mock = Mock::new(&[("numbers", 3)]);
    mock.produce("numbers", 3, numbers(300));
    let sink = Recorder::new();
    let (running, metrics) = mock.start(settings("numbers", "g"), sink.clone()).await;

    until_handled(&sink, 300).await;
    // Periodic commits, while running: the stop commits too, so look before it.
    until_committed(&mock, "g", "numbers", &[100, 100, 100]).await;
    let report = stop(running).await;

    assert_eq!((report.processed, report.dead_lettered), (300, 0));
    let offsets = sink.offsets();
    assert_eq!(offsets.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    assert_each_once_in_order(&offsets);
    for (partition, records) in sink.batches.lock().unwrap().iter() {
        assert!(records.len() <= 10, "a batch of {} records", records.len());
        // Round-robin production: offset o of partition p holds 3o + p.
        for (offset, number) in records {
            assert_eq!(*number as i64, 3 * offset + *partition as i64);
        }
    }
    assert_eq!(report.batches, sink.batches.lock().unwrap().len() as u64);
    assert!(metrics.commits.get() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_fill_closes_at_its_timeout() {
    let mock = Mock::new(&[("numbers", 1)]);
    mock.produce("numbers", 1, numbers(7));
    let sink = Recorder::new();
    let mut settings = settings("numbers", "g");
    settings.limits.max_records = 1000;
    settings.limits.timeout = Duration::from_millis(200);
    let (running, _) = mock.start(settings, sink.clone()).await;

    until_handled(&sink, 7).await;
    stop(running).await;
    let batches = sink.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].1.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_past_a_record_the_sink_has_not_handled() {
    let mock = Mock::new(&[("numbers", 2)]);
    mock.produce("numbers", 2, numbers(40));
    let sink = Arc::new(Recorder {
        gated: Some(1),
        gate_closed: AtomicBool::new(true),
        ..Recorder::default()
    });
    let (running, _) = mock.start(settings("numbers", "g"), sink.clone()).await;

    eventually(
        "partition 0 committed to its end",
        || mock.committed("g", "numbers", 2)[0] == 20,
        || format!("{:?}", mock.committed("g", "numbers", 2)),
    )
    .await;
    // Partition 1's first write is waiting: many commit intervals later, nothing of it
    // is committed.
    eventually(
        "partition 1's write begun",
        || sink.started.load(Ordering::SeqCst) >= 3,
        String::new,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.committed("g", "numbers", 2), [20, -1]);

    sink.gate_closed.store(false, Ordering::SeqCst);
    until_committed(&mock, "g", "numbers", &[20, 20]).await;
    stop(running).await;
    assert_each_once_in_order(&sink.offsets());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_finishes_the_batches_in_the_sink_and_commits_them() {
    let mock = Mock::new(&[("numbers", 2)]);
    mock.produce("numbers", 2, numbers(400));
    let sink = Arc::new(Recorder {
        delay: Duration::from_millis(200),
        ..Recorder::default()
    });
    let mut settings = settings("numbers", "g");
    // Only the stop commits.
    settings.commit_interval = Duration::from_secs(3600);
    let (running, _) = mock.start(settings, sink.clone()).await;

    eventually(
        "writes begun",
        || sink.started.load(Ordering::SeqCst) >= 2,
        String::new,
    )
    .await;
    let report = stop(running).await;

    // The writes in progress at the stop finished; the queued batches were dropped.
    let handled = sink.offsets();
    assert!(report.processed > 0 && report.processed < 400, "{report:?}");
    assert_eq!(report.processed as usize, sink.handled());
    let committed = mock.committed("g", "numbers", 2);
    for partition in 0..2 {
        let ends = handled.get(&partition).map_or(-1, |o| o.len() as i64);
        assert_eq!(
            committed[partition as usize], ends,
            "partition {partition}: {committed:?}"
        );
    }
    assert_each_once_in_order(&handled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_go_to_the_dead_letter_topic_with_their_reason_and_are_committed() {
    let mock = Mock::new(&[("numbers", 1), ("numbers.dlq", 1)]);
    let values = ["1", "2", "three", "4", "", "6"].map(String::from);
    mock.produce("numbers", 1, values);
    let sink = Recorder::new();
    let mut settings = settings("numbers", "g");
    settings.dead_letter_topic = Some("numbers.dlq".into());
    let (running, metrics) = mock.start(settings, sink.clone()).await;

    until_handled(&sink, 4).await;
    until_committed(&mock, "g", "numbers", &[6]).await;
    let report = stop(running).await;

    assert_eq!((report.processed, report.dead_lettered), (4, 2));
    assert_eq!(metrics.dead_lettered.get(), 2);
    let numbers: Vec<u64> = sink
        .batches
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(_, b)| b.iter().map(|(_, n)| *n))
        .collect();
    assert_eq!(numbers, [1, 2, 4, 6]);
    let dead = mock.read("numbers.dlq", 2);
    let summary: Vec<(&[u8], &str, &str, &str)> = dead
        .iter()
        .map(|(value, headers)| {
            (
                value.as_slice(),
                headers[HEADER_ERROR].as_str(),
                headers[HEADER_PARTITION].as_str(),
                headers[HEADER_OFFSET].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (&b"three"[..], "not a number", "0", "2"),
            (&b""[..], "not a number", "0", "4")
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_is_retried_with_its_partition_held_and_nothing_lost() {
    let mock = Mock::new(&[("numbers", 1)]);
    mock.produce("numbers", 1, numbers(50));
    let sink = Arc::new(Recorder {
        failures: AtomicUsize::new(3),
        ..Recorder::default()
    });
    let (running, metrics) = mock.start(settings("numbers", "g"), sink.clone()).await;

    until_handled(&sink, 50).await;
    let report = stop(running).await;

    assert_eq!(report.processed, 50);
    assert_eq!(metrics.retries.get(), 3);
    // The failed batch was written again before any later one: order and no gaps.
    assert_each_once_in_order(&sink.offsets());
    assert_eq!(mock.committed("g", "numbers", 1), [50]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_keeps_the_buffered_records_within_their_bound() {
    slow_sink_within_bound(settings("numbers", "g")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_key_order_a_slow_sink_keeps_the_buffered_records_within_their_bound() {
    slow_sink_within_bound(by_key(settings("numbers", "g"), 4)).await;
}

/// With a slow sink, one batch in flight and room for 40 records, 600 records go through
/// and the buffered records stay within their bound (in key order the open batches count
/// against it too, and a partition out of room closes them).
async fn slow_sink_within_bound(mut settings: ConsumerSettings) {
    let mock = Mock::new(&[("numbers", 2)]);
    mock.produce("numbers", 2, numbers(600));
    let sink = Arc::new(Recorder {
        delay: Duration::from_millis(20),
        ..Recorder::default()
    });
    settings.max_buffered_records = 40;
    settings.max_in_flight = 1;
    let order_by = settings.order_by;
    let (running, metrics) = mock.start(settings, sink.clone()).await;

    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.handled() < 600 {
        assert!(Instant::now() < deadline, "only {} handled", sink.handled());
        most = most.max(metrics.buffered_records.get());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop(running).await;

    // Each of 2 partitions may hold its share (40 / 2 = 20, at least 2 batches = 20) and
    // fill the batch it is reading: 2 × (20 + 10 - 1).
    assert!(most <= 58, "{most} records buffered");
    // The bound was reached, so it is what held the reading back.
    assert!(most >= 20, "{most} records buffered at most");
    assert_eq!(metrics.buffered_records.get(), 0);
    if order_by == OrderBy::Partition {
        assert_each_once_in_order(&sink.offsets());
    } else {
        // Unkeyed records are spread by offset: each once, in any order.
        for (partition, mut offsets) in sink.offsets() {
            offsets.sort_unstable();
            assert_eq!(
                offsets,
                (0..300).collect::<Vec<_>>(),
                "partition {partition}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_is_drained_and_committed_before_it_moves() {
    let mock = Mock::new(&[("numbers", 4)]);
    mock.produce("numbers", 4, numbers(800));
    let slow = |_| {
        Arc::new(Recorder {
            delay: Duration::from_millis(100),
            ..Recorder::default()
        })
    };
    let (first, second) = (slow(()), slow(()));
    let mut settings = settings("numbers", "g");
    settings.limits.max_records = 5;
    settings.commit_interval = Duration::from_secs(3600);
    // The mock coordinator waits up to the session timeout less 1 s for members to rejoin.
    settings.session_timeout = Duration::from_secs(2);
    let (running_first, first_metrics) = mock.start(settings.clone(), first.clone()).await;
    eventually(
        "the first member at work",
        || first.handled() >= 40,
        String::new,
    )
    .await;
    let (running_second, _) = mock.start(settings, second.clone()).await;

    // Distinct records handled by either member (a refused commit can make some twice).
    let distinct = || {
        let mut seen = BTreeSet::new();
        for offsets in [first.offsets(), second.offsets()] {
            for (partition, offsets) in offsets {
                seen.extend(offsets.into_iter().map(|offset| (partition, offset)));
            }
        }
        seen.len()
    };
    eventually(
        "all 800 handled",
        || distinct() == 800,
        || format!("{} distinct", distinct()),
    )
    .await;
    stop(running_second).await;
    // The mock coordinator refuses commits while the group rebalances (a real broker takes
    // them from the current generation), so the first member stops once it owns all again.
    eventually(
        "the first member owns every partition again",
        || first_metrics.assigned_partitions.get() == 4,
        || first_metrics.assigned_partitions.get().to_string(),
    )
    .await;
    stop(running_first).await;

    let revoked = first_metrics
        .rebalances
        .get_or_create(&KindLabel { kind: "revoke" })
        .get();
    assert!(revoked >= 1, "the first member gave nothing up");
    let (a, b) = (first.offsets(), second.offsets());
    assert!(!b.is_empty(), "the second member got no partition");
    // The mock coordinator refuses a commit that arrives while the group is rebalancing
    // (a real broker takes it from the current generation), and a revoke's commit can
    // land in that window. Then the new owner starts again at the last commit that was
    // taken: at least once, never a gap. Otherwise the handover is exact.
    let refused = first_metrics.commit_failures.get();
    for partition in 0..4 {
        let (mine, theirs) = (
            a.get(&partition).cloned().unwrap_or_default(),
            b.get(&partition).cloned().unwrap_or_default(),
        );
        let (mine_once, theirs_from): (Vec<i64>, i64) = (
            (0..mine.len() as i64).collect(),
            theirs.first().copied().unwrap_or(mine.len() as i64),
        );
        assert_eq!(
            mine, mine_once,
            "partition {partition}: the first member's order"
        );
        assert_eq!(
            theirs,
            (theirs_from..theirs_from + theirs.len() as i64).collect::<Vec<_>>(),
            "partition {partition}: the second member's order"
        );
        assert_eq!(
            mine.len() as i64 + theirs.len() as i64 - (mine.len() as i64 - theirs_from),
            200,
            "partition {partition}: every record handled (first {mine:?}, second {theirs:?})"
        );
        if refused == 0 {
            // Drained, committed, then handed over: the new owner starts where the old
            // one stopped, so every record was handled exactly once, in order.
            assert_eq!(
                theirs_from,
                mine.len() as i64,
                "partition {partition}: first {mine:?}, second {theirs:?}"
            );
        } else {
            assert!(
                theirs_from <= mine.len() as i64,
                "partition {partition}: a gap: first {mine:?}, second {theirs:?}"
            );
        }
    }
    let moved: BTreeSet<i32> = b.keys().copied().collect();
    assert!(
        moved
            .iter()
            .all(|p| a.get(p).is_some_and(|o| !o.is_empty())),
        "moved partitions had started on the first member: {moved:?}"
    );
    assert_eq!(mock.committed("g", "numbers", 4), [200, 200, 200, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kip_848_group_protocol_consumes_and_commits() {
    let mock = Mock::new(&[("numbers", 2)]);
    mock.produce("numbers", 2, numbers(100));
    let sink = Recorder::new();
    let mut settings = settings("numbers", "g");
    settings.group_protocol = GroupProtocol::Consumer;
    let (running, _) = mock.start(settings, sink.clone()).await;

    until_handled(&sink, 100).await;
    stop(running).await;
    assert_each_once_in_order(&sink.offsets());
    assert_eq!(mock.committed("g", "numbers", 2), [50, 50]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_keeps_each_keys_order_and_runs_keys_of_one_partition_at_once() {
    let mock = Mock::new(&[("keyed", 1)]);
    mock.produce_keyed("keyed", 0..500);
    let sink = Arc::new(Recorder {
        delay: Duration::from_millis(20),
        ..Recorder::default()
    });
    let (running, _) = mock
        .start(by_key(settings("keyed", "g"), 8), sink.clone())
        .await;

    until_handled(&sink, 500).await;
    until_committed(&mock, "g", "keyed", &[500]).await;
    let report = stop(running).await;

    assert_eq!(report.processed, 500);
    assert_each_key_in_order(&sink, 500);
    let most = sink.most_writing.load(Ordering::SeqCst);
    assert!(most >= 2, "one partition, at most {most} write(s) at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_key_order_nothing_is_committed_past_a_record_still_pending() {
    let mock = Mock::new(&[("keyed", 1)]);
    mock.produce_keyed("keyed", 0..200);
    // Key 3's first record is offset 3: the batch holding it waits.
    let sink = Arc::new(Recorder {
        gated_key: Some(3),
        gate_closed: AtomicBool::new(true),
        ..Recorder::default()
    });
    let (running, _) = mock
        .start(by_key(settings("keyed", "g"), 4), sink.clone())
        .await;

    eventually(
        "the other sub-lanes handled records past offset 3, and 3 is committed",
        || sink.handled() >= 50 && mock.committed("g", "keyed", 1) == [3],
        || {
            format!(
                "{} handled, committed {:?}",
                sink.handled(),
                mock.committed("g", "keyed", 1)
            )
        },
    )
    .await;
    // Many commit intervals later, still nothing past the pending record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.committed("g", "keyed", 1), [3]);

    sink.gate_closed.store(false, Ordering::SeqCst);
    until_committed(&mock, "g", "keyed", &[200]).await;
    stop(running).await;
    assert_each_key_in_order(&sink, 200);
}
