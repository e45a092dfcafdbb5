//! Fault injection with real Kafka and real PostgreSQL: consumers killed, the broker and
//! the database restarted, the group churned, malformed records mixed in. Each scenario
//! ends with `ebb audit`: every produced trade in the table exactly once, one account's
//! rows in offset order, committed offsets never ahead of the table, and every malformed
//! record in the dead-letter topic.
//!
//! The consumer-side scenarios run twice: in partition order and in key order
//! (`--ordering key`), where one partition's keys finish out of offset order and a
//! partition commits only up to its lowest record not yet written.
//!
//! Scenarios that restart a shared server (the broker, the database) run alone; the others
//! run side by side.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::*;

/// Held shared by scenarios that only use the servers, exclusively by those that stop one.
static SERVERS: RwLock<()> = RwLock::new(());

/// For a scenario that stops the broker or the database every test uses.
fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVERS.write().unwrap_or_else(|e| e.into_inner())
}

/// For a scenario that leaves the servers running.
fn shared() -> RwLockReadGuard<'static, ()> {
    SERVERS.read().unwrap_or_else(|e| e.into_inner())
}

/// A topic with a producer, consumers writing to a table of their own, and the checks.
struct Pipeline {
    topic: String,
    group: String,
    table: String,
    url: String,
    producer: Option<Child>,
    consumers: Vec<Consumer>,
    /// The order the consumers keep: [`PARTITION_ORDER`] or [`KEY_ORDER`].
    order: &'static [&'static str],
}

/// `ebb consume`'s default order.
const PARTITION_ORDER: &[&str] = &[];
/// Key order over 8 sub-lanes per partition.
const KEY_ORDER: &[&str] = &["--ordering", "key", "--key-lanes", "8"];

struct Consumer {
    process: Running,
    metrics: String,
}

impl Pipeline {
    fn start(prefix: &str, partitions: u32, rate: &str) -> Pipeline {
        Pipeline::start_in(PARTITION_ORDER, prefix, partitions, rate)
    }

    /// A pipeline whose consumers keep `order`.
    fn start_in(
        order: &'static [&'static str],
        prefix: &str,
        partitions: u32,
        rate: &str,
    ) -> Pipeline {
        let url = postgres();
        let topic = create_topic(prefix, partitions);
        let table = format!("t_{}", unique(prefix).replace('-', "_"));
        let producer = Some(spawn_producer(&topic, rate));
        Pipeline {
            group: unique(&format!("{prefix}-group")),
            topic,
            table,
            url,
            producer,
            consumers: Vec::new(),
            order,
        }
    }

    fn add_consumer(&mut self) {
        self.add_consumer_with(&[]);
    }

    fn add_consumer_with(&mut self, extra: &[&str]) {
        let mut command = ebb();
        command
            .args(["consume", "--topic", &self.topic, "--group", &self.group])
            .args(["--sink", "postgres", "--database-url", &self.url])
            .args(["--database-table", &self.table])
            .args(["--batch-size", "100", "--batch-timeout", "0.05"])
            .args(["--retry-max-backoff", "1s", "--commit-interval", "500ms"])
            .args(["--session-timeout", "6s"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(self.order)
            .args(extra);
        let mut process = Running::spawn(command);
        let metrics = process.address("--metrics-addr");
        self.consumers.push(Consumer { process, metrics });
    }

    /// Records the group has committed, over all partitions.
    fn committed(&self) -> i64 {
        committed_offsets(&kafka(), &self.group, &self.topic)
            .values()
            .sum()
    }

    /// Waits until the group has committed `more` records past what it had committed.
    fn progress(&self, what: &str, more: i64) {
        let from = self.committed();
        wait_until(what, Duration::from_secs(60), || {
            self.committed() >= from + more
        });
    }

    /// Stops the producer and returns how many records the topic holds per partition.
    fn stop_producing(&mut self) -> HashMap<i32, i64> {
        if let Some(producer) = self.producer.take() {
            signal(&producer, libc::SIGTERM);
            let out = finish(producer, Duration::from_secs(60));
            assert!(
                out.status.success(),
                "producer: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        end_offsets(&self.topic)
    }

    /// Waits until the group committed everything in `ends`.
    fn drain(&self, ends: &HashMap<i32, i64>, limit: Duration) {
        wait_until("the group to commit every record", limit, || {
            let committed = committed_offsets(&kafka(), &self.group, &self.topic);
            ends.iter()
                .all(|(p, end)| committed.get(p).copied().unwrap_or(0) >= *end)
        });
    }

    /// Stops every consumer gracefully.
    fn stop_consumers(&mut self) {
        for consumer in &self.consumers {
            consumer.process.signal(libc::SIGTERM);
        }
        for consumer in self.consumers.drain(..) {
            consumer.process.finish(Duration::from_secs(60));
        }
    }

    /// `ebb audit` as JSON; asserts it passes. Valid at any moment, with consumers
    /// running, not only after a drain.
    fn audit(&self) -> serde_json::Value {
        audit_passes(&self.topic, &self.group, &self.url, &self.table, &[])
    }

    /// Stops producing, waits until the group committed everything, stops the consumers
    /// and audits: everything checked, and the table holds exactly the valid trades (all
    /// but `malformed`). Returns the topic and the records per partition.
    fn drain_and_audit(mut self, malformed: u64) -> (String, HashMap<i32, i64>) {
        let ends = self.stop_producing();
        self.drain(&ends, Duration::from_secs(120));
        self.stop_consumers();
        self.audit_all(&ends, malformed);
        (self.topic.clone(), ends)
    }

    fn audit_all(&self, ends: &HashMap<i32, i64>, malformed: u64) {
        let report = self.audit();
        let total: i64 = ends.values().sum();
        let totals = &report["totals"];
        assert_eq!(totals["checked"], total, "{report:#}");
        assert_eq!(totals["dead_lettered"], malformed, "{report:#}");
        assert_eq!(totals["stored"], total as u64 - malformed, "{report:#}");
        for key in [
            "missing",
            "duplicated",
            "out_of_order",
            "mismatched",
            "beyond_commit",
        ] {
            assert_eq!(totals[key], 0, "{key}: {report:#}");
        }
        if total > malformed as i64 {
            let rows: i64 = psql(&self.url, &format!("SELECT count(*) FROM {}", self.table))
                .parse()
                .expect("count");
            assert_eq!(rows, total - malformed as i64, "rows in {}", self.table);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(mut producer) = self.producer.take() {
            let _ = producer.kill();
            let _ = producer.wait();
        }
        for consumer in &mut self.consumers {
            let _ = consumer.process.child.kill();
            let _ = consumer.process.child.wait();
        }
    }
}

#[test]
fn consumers_killed_20_times_lose_and_duplicate_nothing() {
    consumers_killed_20_times(PARTITION_ORDER, "fault-kill");
}

#[test]
fn in_key_order_consumers_killed_20_times_lose_and_duplicate_nothing() {
    consumers_killed_20_times(KEY_ORDER, "fault-kill-keys");
}

fn consumers_killed_20_times(order: &'static [&'static str], prefix: &str) {
    let _servers = shared();
    let mut pipeline = Pipeline::start_in(order, prefix, 6, "400");
    for _ in 0..3 {
        pipeline.add_consumer();
    }
    pipeline.progress("the group to commit", 1000);
    for round in 0..20 {
        let victim = pipeline.consumers.remove(round % 3);
        victim.process.signal(libc::SIGKILL);
        let _ = victim.process.finish(Duration::from_secs(10));
        pipeline.add_consumer();
        // Keep the new one in the same slot so the next kill hits the next oldest.
        let replacement = pipeline.consumers.pop().expect("just added");
        pipeline.consumers.insert(round % 3, replacement);
        // The scenario's pace: a kill every 2.5 s, faster than the group settles.
        std::thread::sleep(Duration::from_millis(2500));
    }
    // The contract holds at any moment, not only after a drain.
    pipeline.audit();
    pipeline.drain_and_audit(0);
}

#[test]
fn broker_restart_mid_stream_loses_and_duplicates_nothing() {
    let _servers = exclusive();
    let mut pipeline = Pipeline::start("fault-broker", 6, "300");
    for _ in 0..2 {
        pipeline.add_consumer();
    }
    pipeline.progress("the group to commit", 1000);
    local_service("kafka-local", "stop");
    // The outage: the broker stays down 3 s.
    std::thread::sleep(Duration::from_secs(3));
    local_service("kafka-local", "start");
    pipeline.progress("commits to resume after the restart", 1000);
    pipeline.audit();
    pipeline.drain_and_audit(0);
}

#[test]
fn database_down_for_10_s_holds_partitions_and_loses_nothing() {
    database_down_for_10_s(PARTITION_ORDER, "fault-db");
}

#[test]
fn in_key_order_database_down_for_10_s_holds_partitions_and_loses_nothing() {
    database_down_for_10_s(KEY_ORDER, "fault-db-keys");
}

fn database_down_for_10_s(order: &'static [&'static str], prefix: &str) {
    let _servers = exclusive();
    let mut pipeline = Pipeline::start_in(order, prefix, 6, "300");
    for _ in 0..2 {
        pipeline.add_consumer();
    }
    let metrics = pipeline.consumers[0].metrics.clone();
    wait_until("the consumer to be ready", Duration::from_secs(30), || {
        ready(&metrics) == Some(true)
    });
    pipeline.progress("the group to commit", 600);
    local_service("postgres-local", "stop");
    let down = Instant::now();
    // Not ready while its writes fail.
    wait_until(
        "/readyz to report the outage",
        Duration::from_secs(8),
        || ready(&metrics) == Some(false),
    );
    // Batches written just before the stop are committed within a commit interval
    // (500 ms); after that, nothing may move while the table cannot be written.
    std::thread::sleep(Duration::from_secs(2));
    let committed_during = committed_offsets(&kafka(), &pipeline.group, &pipeline.topic);
    // The outage lasts 10 s; nothing may be committed in the rest of it.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    assert_eq!(
        committed_offsets(&kafka(), &pipeline.group, &pipeline.topic),
        committed_during,
        "offsets moved while the database was down"
    );
    local_service("postgres-local", "start");
    wait_until("/readyz to recover", Duration::from_secs(30), || {
        ready(&metrics) == Some(true)
    });
    pipeline.audit();
    pipeline.drain_and_audit(0);
}

#[test]
fn an_idle_consumer_is_not_ready_while_the_database_is_down() {
    let _servers = exclusive();
    let mut pipeline = Pipeline::start("fault-idle-db", 2, "0");
    pipeline.add_consumer_with(&["--database-check-interval", "500ms"]);
    let metrics = pipeline.consumers[0].metrics.clone();
    wait_until("the consumer to be ready", Duration::from_secs(30), || {
        ready(&metrics) == Some(true)
    });
    local_service("postgres-local", "stop");
    let outage = std::panic::catch_unwind(|| {
        wait_until(
            "/readyz to report the outage",
            Duration::from_secs(10),
            || ready(&metrics) == Some(false),
        )
    });
    local_service("postgres-local", "start");
    if let Err(panic) = outage {
        std::panic::resume_unwind(panic);
    }
    wait_until("/readyz to recover", Duration::from_secs(15), || {
        ready(&metrics) == Some(true)
    });
    pipeline.drain_and_audit(0);
}

#[test]
fn consumers_joining_and_leaving_every_2_s_for_a_minute_lose_nothing() {
    consumers_joining_and_leaving(PARTITION_ORDER, "fault-churn");
}

#[test]
fn in_key_order_consumers_joining_and_leaving_every_2_s_for_a_minute_lose_nothing() {
    consumers_joining_and_leaving(KEY_ORDER, "fault-churn-keys");
}

fn consumers_joining_and_leaving(order: &'static [&'static str], prefix: &str) {
    let _servers = shared();
    let mut pipeline = Pipeline::start_in(order, prefix, 8, "400");
    pipeline.add_consumer();
    pipeline.add_consumer();
    let started = Instant::now();
    let mut step = 0u32;
    while started.elapsed() < Duration::from_secs(60) {
        // The scenario's pace: a member joins or leaves every 2 s.
        std::thread::sleep(Duration::from_secs(2));
        step += 1;
        // Between 1 and 4 consumers: grow on odd steps, shrink on even ones, with a
        // drift up then down.
        let grow = match pipeline.consumers.len() {
            1 => true,
            4 => false,
            _ => !step.is_multiple_of(3),
        };
        if grow {
            pipeline.add_consumer();
        } else {
            let leaving = pipeline.consumers.remove(0);
            leaving.process.signal(libc::SIGTERM);
            let _ = leaving.process.finish(Duration::from_secs(40));
        }
    }
    pipeline.audit();
    pipeline.drain_and_audit(0);
}

#[test]
fn a_thousand_malformed_records_go_to_the_dead_letter_topic_and_the_rest_to_the_table() {
    let _servers = shared();
    let mut pipeline = Pipeline::start("fault-malformed", 6, "300");
    pipeline.add_consumer();
    pipeline.add_consumer();
    let bad: Vec<Vec<u8>> = (0..1000)
        .map(|i| match i % 4 {
            0 => format!("not json {i}").into_bytes(),
            1 => format!("{{\"account_id\":\"ACC{i}\"}}").into_bytes(),
            2 => Vec::new(),
            _ => format!("{{\"account_id\":\"ACC1\",\"trade_id\":\"T{i}\",\"symbol\":\"X\",\"trade_type\":\"HOLD\",\"quantity\":1,\"price\":1,\"timestamp\":\"2025-01-01T00:00:00Z\"}}").into_bytes(),
        })
        .collect();
    // Mixed into the live stream in small bursts, keyed and not.
    for (n, chunk) in bad.chunks(50).enumerate() {
        let keys: Vec<String> = (0..chunk.len()).map(|i| format!("BAD{n}-{i}")).collect();
        let records: Vec<RawRecord<'_>> = chunk
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (value, key))| {
                let key = (i % 2 == 0).then_some(key.as_bytes());
                let value = (!value.is_empty()).then_some(value.as_slice());
                (key, value)
            })
            .collect();
        produce_raw(&kafka(), &pipeline.topic, &records);
        // Bursts spread over 4 s of the live stream.
        std::thread::sleep(Duration::from_millis(200));
    }
    let (topic, _) = pipeline.drain_and_audit(1000);
    let letters = read_topic(
        &kafka(),
        &format!("{topic}.dlq"),
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert!(letters.len() >= 1000, "{} dead letters", letters.len());
}

/// `/readyz` of a consumer: `Some(true)` for 200, `Some(false)` for 503, `None` when it
/// does not answer.
fn ready(addr: &str) -> Option<bool> {
    ebb_core::http::get(
        &format!("http://{addr}/readyz"),
        None,
        Duration::from_secs(2),
    )
    .ok()
    .map(|(status, _)| status == 200)
}
