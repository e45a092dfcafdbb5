//! A pipeline of the fault scenarios (`real/faults.rs`, `outages.rs`): a topic with a
//! producer, `ebb consume` members writing to a PostgreSQL table of their own, and the
//! checks that end every scenario (`ebb audit`, the dead-letter topic).

use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;

use super::*;

/// A topic with a producer, consumers writing to a table of their own, and the checks.
pub struct Pipeline {
    pub topic: String,
    pub group: String,
    pub table: String,
    pub url: String,
    pub producer: Option<Process>,
    pub consumers: Vec<Consumer>,
    /// The order the consumers keep: [`PARTITION_ORDER`] or [`KEY_ORDER`].
    pub order: &'static [&'static str],
}

/// `ebb consume`'s default order.
pub const PARTITION_ORDER: &[&str] = &[];
/// Key order over 8 sub-lanes per partition.
pub const KEY_ORDER: &[&str] = &["--ordering", "key", "--key-lanes", "8"];

pub struct Consumer {
    pub process: Running,
    pub metrics: String,
}

impl Pipeline {
    pub fn start(prefix: &str, partitions: u32, rate: &str) -> Pipeline {
        Pipeline::start_in(PARTITION_ORDER, prefix, partitions, rate)
    }

    /// A pipeline whose consumers keep `order`.
    pub fn start_in(
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

    pub fn add_consumer(&mut self) {
        self.add_consumer_with(&[]);
    }

    pub fn add_consumer_with(&mut self, extra: &[&str]) {
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
    pub fn committed(&self) -> i64 {
        committed_offsets(&kafka(), &self.group, &self.topic)
            .values()
            .sum()
    }

    /// Waits until the group has committed `more` records past what it had committed.
    pub fn progress(&self, what: &str, more: i64) {
        let from = self.committed();
        wait_until(what, Duration::from_secs(60), || {
            self.committed() >= from + more
        });
    }

    /// Stops the producer and returns how many records the topic holds per partition.
    pub fn stop_producing(&mut self) -> HashMap<i32, i64> {
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
    pub fn drain(&self, ends: &HashMap<i32, i64>, limit: Duration) {
        wait_until("the group to commit every record", limit, || {
            let committed = committed_offsets(&kafka(), &self.group, &self.topic);
            ends.iter()
                .all(|(p, end)| committed.get(p).copied().unwrap_or(0) >= *end)
        });
    }

    /// Stops every consumer gracefully.
    pub fn stop_consumers(&mut self) {
        for consumer in &self.consumers {
            consumer.process.signal(libc::SIGTERM);
        }
        for consumer in self.consumers.drain(..) {
            consumer.process.finish(Duration::from_secs(60));
        }
    }

    /// `ebb audit` as JSON; asserts it passes. Valid at any moment, with consumers
    /// running, not only after a drain.
    pub fn audit(&self) -> serde_json::Value {
        audit_passes(&self.topic, &self.group, &self.url, &self.table, &[])
    }

    /// Stops producing, waits until the group committed everything, stops the consumers
    /// and audits: everything checked, and the table holds exactly the valid trades (all
    /// but `malformed`). Returns the topic and the records per partition.
    pub fn drain_and_audit(mut self, malformed: u64) -> (String, HashMap<i32, i64>) {
        let ends = self.stop_producing();
        self.drain(&ends, Duration::from_secs(120));
        self.stop_consumers();
        self.audit_all(&ends, malformed);
        (self.topic.clone(), ends)
    }

    pub fn audit_all(&self, ends: &HashMap<i32, i64>, malformed: u64) {
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

/// `/readyz` of a consumer: `Some(true)` for 200, `Some(false)` for 503, `None` when it
/// does not answer.
pub fn ready(addr: &str) -> Option<bool> {
    ebb_core::http::get(
        &format!("http://{addr}/readyz"),
        None,
        Duration::from_secs(2),
    )
    .ok()
    .map(|(status, _)| status == 200)
}
