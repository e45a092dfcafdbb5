//! What the consumer is told, and the librdkafka configuration that follows from it.
//!
//! [`ConsumerSettings`] has one field per `ebb consume` option. [`client_config`] turns the
//! settings and the [`KafkaOptions`] into the consumer's librdkafka properties: a pure
//! function (no broker, no client), so every key it sets is pinned by the unit tests below.

use std::time::Duration;

use rdkafka::ClientConfig;

use super::batch::BatchLimits;
use crate::kafka::KafkaOptions;

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

impl RetryPolicy {
    /// The wait after `backoff`: twice as long, at most [`RetryPolicy::max_backoff`].
    pub fn next_backoff(&self, backoff: Duration) -> Duration {
        (backoff * 2).min(self.max_backoff)
    }
}

/// What order records are handled in (`--ordering`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderBy {
    /// Each partition's batches one at a time, in offset order (the reference's order):
    /// a consumer handles at most one batch per owned partition at once.
    #[default]
    Partition,
    /// Each partition's records spread over `lanes` sub-lanes by their key
    /// ([`lane_of`](super::key_order::lane_of)); each sub-lane's batches run one at a
    /// time in offset order, so every key keeps its order while different keys of one
    /// partition run concurrently (see [`super::key_order`]).
    Key {
        /// Sub-lanes per partition (`--key-lanes`), at least 1.
        lanes: usize,
    },
}

impl OrderBy {
    /// How many sub-lanes each partition has: 1 in partition order.
    pub fn lanes(self) -> usize {
        match self {
            OrderBy::Partition => 1,
            OrderBy::Key { lanes } => lanes.max(1),
        }
    }

    /// Whether batches of one partition may finish out of offset order.
    pub fn is_key(self) -> bool {
        matches!(self, OrderBy::Key { .. })
    }
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
    /// Most batches in the sink at once, across partitions (and their sub-lanes).
    pub max_in_flight: usize,
    /// Partition order, or key order over sub-lanes.
    pub order_by: OrderBy,
    /// Most records held in closed batches, across partitions, before the poll thread
    /// waits for workers to catch up. See [`ConsumerSettings::default_max_buffered_records`].
    pub max_buffered_records: usize,
    /// Bytes librdkafka may hold prefetched, across the topic's partitions: split into
    /// each partition's fetch queue and fetch size by [`fetch_sizes`]
    /// (`--fetch-budget-mib`).
    pub fetch_budget: usize,
    /// Most partitions with a backlog that librdkafka fetches at once; the others wait
    /// their turn, paused ([`super::rotation`]). The fetch budget is shared by this many
    /// partitions, not by all of the topic's (`--max-fetching-partitions`).
    pub max_fetching_partitions: usize,
    /// Where a group without a committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: crate::kafka::OffsetReset,
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
    /// (see [`super::watchdog`]); `None` turns the watchdog off.
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
    /// behind it (2 × in-flight × batch size), within 5,000..=100,000. In key order the
    /// open batches count too, and every busy sub-lane has one filling behind its batch in
    /// flight: 3 × in-flight × batch size (`bench/consume-keys`: at 2 ×, 6 partitions of 16
    /// sub-lanes ran 5,660 msg/s of a 6,400 ceiling, the open batches taking half the room).
    pub fn default_max_buffered_records(
        max_in_flight: usize,
        batch_size: usize,
        order_by: OrderBy,
    ) -> usize {
        let batches = if order_by.is_key() { 3 } else { 2 };
        (batches * max_in_flight * batch_size).clamp(5_000, 100_000)
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
            order_by: OrderBy::Partition,
            fetch_budget: 16 * 1024 * 1024,
            max_fetching_partitions: 24,
            max_buffered_records: Self::default_max_buffered_records(64, 100, OrderBy::Partition),
            auto_offset_reset: crate::kafka::OffsetReset::Earliest,
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

/// Per-partition prefetch limits that keep a consumer whose `fetching` partitions fetch
/// at once (the topic's, up to `max_fetching_partitions`) within about `budget` bytes: what
/// librdkafka may queue per partition (`queued.max.messages.kbytes`, in KiB) and fetch per
/// partition per request (`max.partition.fetch.bytes`).
///
/// The limits count less than what they cost: the queue limit counts keys and values
/// only, while librdkafka keeps each queued record as an op of about 300 bytes pointing
/// into its decompressed record batch, and the fetch limit counts compressed bytes of which
/// Kafka returns at least one whole record batch. Three eighths of each partition's part of
/// the budget go to its queue limit and an eighth to its fetch size (`bench/consume-rss-100`
/// measures what that comes to), within bounds that keep small topics as fast as ever
/// (1 MiB and 256 KiB up to 6 partitions at the default 16 MiB) and huge ones fetching (32 KiB
/// and 16 KiB, beyond which the budget is exceeded rather than fetching starve).
pub fn fetch_sizes(budget: usize, fetching: usize) -> (usize, usize) {
    let eighth = 8 * fetching.max(1);
    let queue = (budget.saturating_mul(3) / eighth).clamp(32 * 1024, 1024 * 1024);
    let fetch = (budget / eighth).clamp(16 * 1024, 256 * 1024);
    (queue / 1024, fetch)
}

/// The consumer's librdkafka configuration for a topic of `partitions` partitions: the
/// client's (brokers, security, `-X`) from [`KafkaOptions::client_config`], the consumer's
/// own keys over it, and the `-X` properties once more, last, so that they win over the
/// consumer's keys too.
pub fn client_config(
    settings: &ConsumerSettings,
    kafka: &KafkaOptions,
    partitions: usize,
) -> ClientConfig {
    let fetching = partitions.min(settings.max_fetching_partitions.max(1));
    let (queue_kib, partition_fetch_bytes) = fetch_sizes(settings.fetch_budget, fetching);
    let mut config = kafka.client_config();
    config
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            settings.auto_offset_reset.as_librdkafka(),
        )
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        // Bounded prefetch: the fetch queues (one per partition, as each is split off) and
        // the fetch responses (which live as long as any record in them) are the
        // consumer's largest memory users; they share the fetch budget.
        .set("queued.max.messages.kbytes", queue_kib.to_string())
        .set(
            "max.partition.fetch.bytes",
            partition_fetch_bytes.to_string(),
        )
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
        // librdkafka refuses session, heartbeat and assignor settings under KIP-848: the
        // broker owns them.
        GroupProtocol::Consumer => {
            config.set("group.protocol", "consumer");
        }
    }
    for (key, value) in &kafka.extra {
        config.set(key, value);
    }
    config
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rdkafka::consumer::BaseConsumer;

    use super::*;
    use crate::kafka::{MSK_IAM, SecurityProtocol};

    /// Every key the builder sets, with its value (`config_map` hides passwords).
    fn keys(settings: &ConsumerSettings, kafka: &KafkaOptions) -> BTreeMap<String, String> {
        let config = client_config(settings, kafka, 6);
        config
            .config_map()
            .into_keys()
            .map(|k| (k.to_string(), config.get(k).unwrap_or_default().to_string()))
            .collect()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The keys every consumer has, whatever its protocol (plaintext, no `-X`).
    const COMMON: &[(&str, &str)] = &[
        ("bootstrap.servers", "127.0.0.1:9092"),
        ("security.protocol", "plaintext"),
        ("socket.timeout.ms", "10000"),
        ("log.connection.close", "false"),
        ("group.id", "g"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.partition.eof", "false"),
        ("statistics.interval.ms", "5000"),
        ("queued.max.messages.kbytes", "1024"),
        ("max.partition.fetch.bytes", "262144"),
        ("fetch.queue.backoff.ms", "10"),
        ("fetch.wait.max.ms", "50"),
    ];

    #[test]
    fn the_fetch_budget_is_shared_by_the_partitions_fetching_at_once_within_bounds() {
        const MIB: usize = 1024 * 1024;
        // Small topics keep 1 MiB queues and 256 KiB fetches per partition.
        assert_eq!(fetch_sizes(16 * MIB, 4), (1024, 256 * 1024));
        assert_eq!(fetch_sizes(16 * MIB, 6), (1024, 256 * 1024));
        assert_eq!(fetch_sizes(16 * MIB, 0), (1024, 256 * 1024));
        // 24 partitions fetching at once (the default most): 256 KiB + 85 KiB each.
        assert_eq!(fetch_sizes(16 * MIB, 24), (256, 87_381));
        let (queue_kib, fetch) = fetch_sizes(16 * MIB, 24);
        assert!(24 * (queue_kib * 1024 + fetch) <= 16 * MIB / 2);
        // Beyond the floors the budget gives way, not the fetching.
        assert_eq!(fetch_sizes(16 * MIB, 10_000), (32, 16 * 1024));
        // The keys follow the partitions that fetch at once: a topic's up to
        // `max_fetching_partitions`, beyond which the others wait their turn.
        let settings = ConsumerSettings::new("t", "g");
        assert_eq!(settings.max_fetching_partitions, 24);
        for partitions in [24, 100, 1000] {
            let config = client_config(&settings, &KafkaOptions::default(), partitions);
            assert_eq!(config.get("queued.max.messages.kbytes"), Some("256"));
            assert_eq!(config.get("max.partition.fetch.bytes"), Some("87381"));
        }
        let config = client_config(&settings, &KafkaOptions::default(), 12);
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("512"));
    }

    #[test]
    fn defaults_give_todays_classic_configuration_exactly() {
        let mut expected = map(COMMON);
        expected.extend(map(&[
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
        ]));
        assert_eq!(
            keys(&ConsumerSettings::new("t", "g"), &KafkaOptions::default()),
            expected
        );
    }

    #[test]
    fn kip_848_sets_the_protocol_and_none_of_the_classic_group_keys() {
        let settings = ConsumerSettings {
            group_protocol: GroupProtocol::Consumer,
            ..ConsumerSettings::new("t", "g")
        };
        let mut expected = map(COMMON);
        expected.insert("group.protocol".into(), "consumer".into());
        assert_eq!(keys(&settings, &KafkaOptions::default()), expected);
    }

    #[test]
    fn assignor_timeouts_and_offset_reset_follow_the_settings() {
        let settings = ConsumerSettings {
            group_protocol: GroupProtocol::Classic {
                assignment_strategy: "range".into(),
            },
            session_timeout: Duration::from_millis(45_500),
            heartbeat_interval: Duration::from_secs(3),
            auto_offset_reset: crate::kafka::OffsetReset::Latest,
            ..ConsumerSettings::new("t", "workers")
        };
        let config = client_config(&settings, &KafkaOptions::default(), 6);
        assert_eq!(config.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(config.get("session.timeout.ms"), Some("45500"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("3000"));
        assert_eq!(config.get("auto.offset.reset"), Some("latest"));
        assert_eq!(config.get("group.id"), Some("workers"));
        assert_eq!(config.get("group.protocol"), None);
    }

    #[test]
    fn extra_properties_win_over_the_consumers_keys_and_the_clients() {
        let mut kafka = KafkaOptions::new("h:1");
        for (k, v) in [
            ("fetch.wait.max.ms", "500"),
            ("session.timeout.ms", "30000"),
            ("enable.auto.commit", "true"),
            ("bootstrap.servers", "h:2"),
            ("debug", "cgrp"),
        ] {
            kafka.extra.push((k.into(), v.into()));
        }
        let config = client_config(&ConsumerSettings::new("t", "g"), &kafka, 6);
        assert_eq!(config.get("fetch.wait.max.ms"), Some("500"));
        assert_eq!(config.get("session.timeout.ms"), Some("30000"));
        assert_eq!(config.get("enable.auto.commit"), Some("true"));
        assert_eq!(config.get("bootstrap.servers"), Some("h:2"));
        assert_eq!(config.get("debug"), Some("cgrp"));
        // The rest is untouched.
        assert_eq!(config.get("heartbeat.interval.ms"), Some("1000"));
    }

    #[test]
    fn security_settings_pass_through() {
        let scram = KafkaOptions {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("user".into()),
            sasl_password: Some("secret".into()),
            ssl_ca_location: Some("/etc/ca.pem".into()),
            request_timeout: Duration::from_secs(7),
            ..KafkaOptions::new("b-1:9096,b-2:9096")
        };
        let mut expected = map(COMMON);
        expected.extend(map(&[
            ("bootstrap.servers", "b-1:9096,b-2:9096"),
            ("security.protocol", "sasl_ssl"),
            ("socket.timeout.ms", "7000"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "user"),
            ("sasl.password", "secret"),
            ("ssl.ca.location", "/etc/ca.pem"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
        ]));
        assert_eq!(keys(&ConsumerSettings::new("t", "g"), &scram), expected);

        // MSK IAM is OAUTHBEARER with tokens from the client context; no user or password.
        let iam = KafkaOptions {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(MSK_IAM.into()),
            aws_region: Some("eu-west-1".into()),
            ..KafkaOptions::new("b-1:9098")
        };
        let config = client_config(&ConsumerSettings::new("t", "g"), &iam, 6);
        assert_eq!(config.get("sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.username"), None);
        assert_eq!(config.get("sasl.password"), None);
    }

    /// librdkafka itself accepts both configurations (it checks them when the client is
    /// created, which needs no broker), and refuses a classic key under KIP-848.
    #[test]
    fn librdkafka_accepts_both_protocols_and_refuses_classic_keys_under_kip_848() {
        // Nothing listens on port 1; the clients are dropped before they would matter.
        let kafka = KafkaOptions::new("127.0.0.1:1");
        let classic = ConsumerSettings::new("t", "g");
        let kip_848 = ConsumerSettings {
            group_protocol: GroupProtocol::Consumer,
            ..classic.clone()
        };
        for settings in [&classic, &kip_848] {
            if let Err(e) = client_config(settings, &kafka, 6).create::<BaseConsumer>() {
                panic!("{:?}: {e}", settings.group_protocol);
            }
        }
        for key in [
            "session.timeout.ms",
            "heartbeat.interval.ms",
            "partition.assignment.strategy",
        ] {
            let mut config = client_config(&kip_848, &kafka, 6);
            config.set(
                key,
                if key.ends_with("strategy") {
                    "range"
                } else {
                    "3000"
                },
            );
            let refused = config.create::<BaseConsumer>().err().map(|e| e.to_string());
            assert!(
                refused.as_deref().is_some_and(|e| e.contains(key)),
                "{key}: {refused:?}"
            );
        }
    }

    #[test]
    fn defaults_are_the_reference_consumers() {
        let settings = ConsumerSettings::new("trade-tx", "tx-trade-workers");
        assert_eq!(settings.dead_letter_topic.as_deref(), Some("trade-tx.dlq"));
        assert_eq!(settings.limits.max_records, 100);
        assert_eq!(settings.limits.max_bytes, 1_048_576);
        assert_eq!(settings.limits.timeout, Duration::from_millis(100));
        assert_eq!(settings.max_in_flight, 64);
        assert_eq!(settings.max_buffered_records, 12_800);
        assert_eq!(settings.revoke_timeout, Duration::from_secs(10));
        assert_eq!(settings.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(settings.stall_timeout, Some(Duration::from_secs(10)));
        assert_eq!(settings.commit_interval, Duration::from_secs(1));
        assert_eq!(settings.report_interval, Duration::from_secs(5));
        assert_eq!(settings.stop_after_idle, None);
    }

    #[test]
    fn buffered_records_default_to_two_batches_per_slot_within_bounds() {
        assert_eq!(
            ConsumerSettings::default_max_buffered_records(64, 100, OrderBy::Partition),
            12_800
        );
        assert_eq!(
            ConsumerSettings::default_max_buffered_records(1, 100, OrderBy::Partition),
            5_000
        );
        assert_eq!(
            ConsumerSettings::default_max_buffered_records(64, 10_000, OrderBy::Partition),
            100_000
        );
        // Key order: a third more, for the open batch behind each one in flight.
        let key = OrderBy::Key { lanes: 16 };
        assert_eq!(
            ConsumerSettings::default_max_buffered_records(64, 100, key),
            19_200
        );
        assert_eq!(
            ConsumerSettings::default_max_buffered_records(64, 10_000, key),
            100_000
        );
    }

    #[test]
    fn retries_back_off_by_doubling_up_to_the_cap() {
        let retry = ConsumerSettings::new("t", "g").retry;
        let mut backoff = retry.initial_backoff;
        let mut waits = Vec::new();
        for _ in 0..9 {
            waits.push(backoff.as_millis());
            backoff = retry.next_backoff(backoff);
        }
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
    }
}
