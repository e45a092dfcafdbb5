//! The consumer's metrics: the reference consumer's four under their exact names (so its
//! Grafana dashboard works unchanged), and ebb's own under `ebb_consumer_*`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `status` label of `kafka_messages_processed_total`, as the reference uses it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `success` or `error`.
    pub status: &'static str,
}

/// `kind` label of the rebalance counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `assign`, `revoke` or `lost`.
    pub kind: &'static str,
}

/// `kind` label of the stall counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StallLabel {
    /// `fetch` (records waiting, none taken) or `commit` (handled, not acknowledged).
    pub kind: &'static str,
}

/// `call` label of the rebalance-call error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    /// `assign`, `unassign`, `incremental_assign` or `incremental_unassign`.
    pub call: &'static str,
}

/// `partition` label of per-partition gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Partition number.
    pub partition: i32,
}

/// Every metric the consumer exports.
#[derive(Clone)]
pub struct ConsumerMetrics {
    /// `kafka_messages_processed_total{status}`: records handled by the sink (`success`)
    /// or dead-lettered (`error`).
    pub processed: Family<StatusLabel, Counter>,
    /// `kafka_messages_per_second`: records processed per second over the last interval.
    pub messages_per_second: Gauge<f64, AtomicU64>,
    /// `kafka_batch_processing_seconds`: time the sink took per batch.
    pub batch_seconds: Histogram,
    /// `kafka_message_age_seconds`: record timestamp to processing.
    pub message_age: Histogram,
    /// Batches handled.
    pub batches: Counter,
    /// Records per batch.
    pub batch_size: Histogram,
    /// Batches in the sink now.
    pub in_flight: Gauge,
    /// Records in closed batches, waiting for or in the sink (bounded by
    /// `max_buffered_records`, see [`super::ConsumerSettings`]).
    pub buffered_records: Gauge,
    /// Partitions this member owns.
    pub assigned_partitions: Gauge,
    /// Partitions paused for backpressure.
    pub paused_partitions: Gauge,
    /// Partitions with a backlog paused in librdkafka, waiting their turn to fetch.
    pub parked_partitions: Gauge,
    /// Rebalance callbacks by kind.
    pub rebalances: Family<KindLabel, Counter>,
    /// Time to drain revoked partitions.
    pub revoke_drain_seconds: Histogram,
    /// Offset commit requests the broker acknowledged.
    pub commits: Counter,
    /// Offset commits that failed.
    pub commit_failures: Counter,
    /// Lag per owned partition: log-end offset minus committed offset, from the client's
    /// statistics.
    pub partition_lag: Family<PartitionLabel, Gauge>,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: Counter,
    /// Owned partitions the stall watchdog finds stalled now.
    pub stalled_partitions: Gauge,
    /// Stalls detected, by kind.
    pub stalls: Family<StallLabel, Counter>,
    /// Offsets re-sent because no acknowledgement came for them.
    pub commits_resent: Counter,
    /// librdkafka assign calls that returned an error, by call.
    pub rebalance_call_errors: Family<CallLabel, Counter>,
    /// Sink attempts that failed and were retried.
    pub retries: Counter,
}

impl ConsumerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let metrics = ConsumerMetrics {
            processed: Family::default(),
            messages_per_second: Gauge::default(),
            batch_seconds: seconds(),
            message_age: seconds(),
            batches: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            in_flight: Gauge::default(),
            buffered_records: Gauge::default(),
            assigned_partitions: Gauge::default(),
            paused_partitions: Gauge::default(),
            parked_partitions: Gauge::default(),
            rebalances: Family::default(),
            revoke_drain_seconds: seconds(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            partition_lag: Family::default(),
            dead_lettered: Counter::default(),
            stalled_partitions: Gauge::default(),
            stalls: Family::default(),
            commits_resent: Counter::default(),
            rebalance_call_errors: Family::default(),
            retries: Counter::default(),
        };
        let m = metrics.clone();
        registry.register(
            "kafka_messages_processed",
            "Total messages processed",
            m.processed,
        );
        registry.register(
            "kafka_messages_per_second",
            "Current message processing rate",
            m.messages_per_second,
        );
        registry.register(
            "kafka_batch_processing_seconds",
            "Time to process a batch",
            m.batch_seconds,
        );
        registry.register(
            "kafka_message_age_seconds",
            "Time from message production to consumption",
            m.message_age,
        );
        registry.register(
            "ebb_consumer_batches",
            "Batches handled by the sink",
            m.batches,
        );
        registry.register(
            "ebb_consumer_batch_size_records",
            "Records per batch",
            m.batch_size,
        );
        registry.register(
            "ebb_consumer_in_flight_batches",
            "Batches in the sink now",
            m.in_flight,
        );
        registry.register(
            "ebb_consumer_buffered_records",
            "Records in closed batches, waiting for or in the sink",
            m.buffered_records,
        );
        registry.register(
            "ebb_consumer_assigned_partitions",
            "Partitions this member owns",
            m.assigned_partitions,
        );
        registry.register(
            "ebb_consumer_paused_partitions",
            "Partitions paused for backpressure",
            m.paused_partitions,
        );
        registry.register(
            "ebb_consumer_parked_partitions",
            "Partitions with a backlog paused in librdkafka, waiting their turn to fetch",
            m.parked_partitions,
        );
        registry.register(
            "ebb_consumer_rebalances",
            "Rebalance callbacks by kind",
            m.rebalances,
        );
        registry.register(
            "ebb_consumer_revoke_drain_seconds",
            "Time to drain revoked partitions",
            m.revoke_drain_seconds,
        );
        registry.register(
            "ebb_consumer_commits",
            "Offset commits that succeeded",
            m.commits,
        );
        registry.register(
            "ebb_consumer_commit_failures",
            "Offset commits that failed",
            m.commit_failures,
        );
        registry.register(
            "ebb_consumer_partition_lag",
            "Log-end minus committed offset per owned partition",
            m.partition_lag,
        );
        registry.register(
            "ebb_consumer_dead_lettered",
            "Records sent to the dead-letter topic",
            m.dead_lettered,
        );
        registry.register(
            "ebb_consumer_stalled_partitions",
            "Owned partitions with records waiting or handled offsets unacknowledged and no progress for the stall timeout",
            m.stalled_partitions,
        );
        registry.register(
            "ebb_consumer_stalls",
            "Stalls the watchdog detected, by kind",
            m.stalls,
        );
        registry.register(
            "ebb_consumer_commits_resent",
            "Offset commits sent again because the broker had not acknowledged them",
            m.commits_resent,
        );
        registry.register(
            "ebb_consumer_rebalance_call_errors",
            "librdkafka assign, unassign, incremental_assign and incremental_unassign calls that failed",
            m.rebalance_call_errors,
        );
        registry.register(
            "ebb_consumer_sink_retries",
            "Sink attempts that failed and were retried",
            m.retries,
        );
        metrics
    }
}
