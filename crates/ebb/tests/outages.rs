//! Fault injection that stops a server every other test uses: the broker restarted mid
//! stream, the database down for 10 s under load and under an idle consumer. Each scenario
//! ends with `ebb audit` (every produced trade in the table exactly once, committed offsets
//! never ahead of the table).
//!
//! A test binary of their own, apart from the rest of the real tier (`tests/real`): cargo
//! runs test binaries one after another, so no other test sees the outage, and within
//! this binary the scenarios take turns.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::pipeline::*;
use common::*;

/// A local server stopped for an outage, started again when dropped: also when the
/// scenario fails half-way, so the next scenario finds it running.
struct Stopped(&'static str);

impl Stopped {
    fn stop(script: &'static str) -> Stopped {
        local_service(script, "stop");
        Stopped(script)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Not local_service: a second panic here would abort the whole binary.
            let script = ebb_testkit::repo_root().join("scripts").join(self.0);
            let _ = std::process::Command::new(script).arg("start").output();
        } else {
            local_service(self.0, "start");
        }
    }
}

/// Held by each scenario for its whole run: one outage at a time.
fn alone() -> MutexGuard<'static, ()> {
    static OUTAGE: Mutex<()> = Mutex::new(());
    OUTAGE.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn broker_restart_mid_stream_loses_and_duplicates_nothing() {
    let _alone = alone();
    let mut pipeline = Pipeline::start("fault-broker", 6, "300");
    for _ in 0..2 {
        pipeline.add_consumer();
    }
    pipeline.progress("the group to commit", 1000);
    let broker = Stopped::stop("kafka-local");
    // The outage: the broker stays down 3 s.
    std::thread::sleep(Duration::from_secs(3));
    drop(broker);
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
    let _alone = alone();
    let mut pipeline = Pipeline::start_in(order, prefix, 6, "300");
    for _ in 0..2 {
        pipeline.add_consumer();
    }
    let metrics = pipeline.consumers[0].metrics.clone();
    wait_until("the consumer to be ready", Duration::from_secs(30), || {
        ready(&metrics) == Some(true)
    });
    pipeline.progress("the group to commit", 600);
    let database = Stopped::stop("postgres-local");
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
    drop(database);
    wait_until("/readyz to recover", Duration::from_secs(30), || {
        ready(&metrics) == Some(true)
    });
    pipeline.audit();
    pipeline.drain_and_audit(0);
}

#[test]
fn an_idle_consumer_is_not_ready_while_the_database_is_down() {
    let _alone = alone();
    let mut pipeline = Pipeline::start("fault-idle-db", 2, "0");
    pipeline.add_consumer_with(&["--database-check-interval", "500ms"]);
    let metrics = pipeline.consumers[0].metrics.clone();
    wait_until("the consumer to be ready", Duration::from_secs(30), || {
        ready(&metrics) == Some(true)
    });
    let database = Stopped::stop("postgres-local");
    wait_until(
        "/readyz to report the outage",
        Duration::from_secs(10),
        || ready(&metrics) == Some(false),
    );
    drop(database);
    wait_until("/readyz to recover", Duration::from_secs(15), || {
        ready(&metrics) == Some(true)
    });
    pipeline.drain_and_audit(0);
}
