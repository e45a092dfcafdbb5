//! ebb-rate behind KEDA's external scaler protocol: what a ScaledObject's `scalerMetadata`
//! asks for, and the per-ScaledObject state that turns successive readings of Kafka into the
//! replica count `ebb keda-scaler` serves. Pure: the gRPC server and the Kafka reads live in
//! the `ebb` binary; times come from the caller.
//!
//! KEDA hands the count to the HPA as an `AverageValue` metric. The scaler reports the
//! desired count as the metric's value with a target of 1 per replica, so the HPA's
//! arithmetic, ceil(value ÷ target), gives exactly that count (within the HPA's tolerance,
//! 10 % by default: a change of one replica at ten or more is within it).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::keda::PartitionOffsets;
use crate::offset_rate::OffsetRate;
use crate::policy::{Decision, EbbRate, EbbRateConfig, Explanation, Observation, Policy};

/// The metric the scaler serves (KEDA names it `s<trigger index>-ebb-rate-replicas`).
pub const METRIC_NAME: &str = "ebb-rate-replicas";

/// The HPA target per replica: the metric is the replica count itself.
pub const TARGET_PER_REPLICA: f64 = 1.0;

/// Keys KEDA itself reads from an `external` trigger's metadata; the scaler ignores them.
pub const KEDA_KEYS: &[&str] = &[
    "scalerAddress",
    "enableTLS",
    "unsafeSsl",
    "caCert",
    "tlsClientCert",
    "tlsClientKey",
];

/// A bad `scalerMetadata` entry: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError {
    /// The key, as written in the ScaledObject's trigger metadata.
    pub key: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scalerMetadata.{}: {}", self.key, self.message)
    }
}

impl std::error::Error for MetadataError {}

/// One ScaledObject's request, from its trigger metadata (string values, KEDA's camelCase
/// keys). Mirrors the keys one to one; unknown keys are refused.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalerMetadata {
    /// `topic` (required): the topic the Deployment consumes.
    pub topic: String,
    /// `group` (required): the Deployment's consumer group.
    pub group: String,
    /// `capacityPerReplica` (required): messages per second one replica handles, taken as
    /// given: nothing here derives it from or caps it by the partitions a replica owns.
    /// With `ebb consume --ordering partition` a replica runs one batch per owned partition,
    /// so measure it at the partitions per replica you expect; with `--ordering key` it runs
    /// `--key-lanes` per owned partition up to `--max-in-flight`, so it can exceed
    /// partitions owned × batch size ÷ batch time. Only the replica count is capped by the
    /// partitions (`maxReplicas` defaults to them, and ebb-rate never asks for more).
    pub capacity_per_replica: f64,
    /// `targetDrainSeconds` (300): drain the backlog within this time.
    pub target_drain: Duration,
    /// `headroom` (1.1): size for this many times the arrival rate.
    pub headroom: f64,
    /// `intervalSeconds` (10): how often ebb-rate re-decides.
    pub interval: Duration,
    /// `smoothingSeconds` (0): half-life of the arrival-rate average.
    pub smoothing: Duration,
    /// `scaleDownWindowSeconds` (300): scale down only to the highest need in this window.
    pub scale_down_window: Duration,
    /// `upSettleSeconds` (60): after a scale-up, wait this long before the next.
    pub up_settle: Duration,
    /// `maxDownStep` (0.25): remove at most this share of the replicas per decision.
    pub max_down_step: f64,
    /// `idleCooldownSeconds` (60): inactive after no arrivals and no lag for this long.
    pub idle_cooldown: Duration,
    /// `minReplicas` (0): the fewest replicas ebb-rate asks for.
    pub min_replicas: u32,
    /// `maxReplicas` (the topic's partitions): the most replicas ebb-rate asks for.
    pub max_replicas: Option<u32>,
}

const KEYS: &[&str] = &[
    "topic",
    "group",
    "capacityPerReplica",
    "targetDrainSeconds",
    "headroom",
    "intervalSeconds",
    "smoothingSeconds",
    "scaleDownWindowSeconds",
    "upSettleSeconds",
    "maxDownStep",
    "idleCooldownSeconds",
    "minReplicas",
    "maxReplicas",
];

impl ScalerMetadata {
    /// Reads the trigger metadata, naming the key of the first bad entry.
    pub fn parse(metadata: &BTreeMap<String, String>) -> Result<Self, MetadataError> {
        if let Some(key) = metadata
            .keys()
            .find(|k| !KEYS.contains(&k.as_str()) && !KEDA_KEYS.contains(&k.as_str()))
        {
            return Err(error(
                key,
                format!("unknown key; ebb keda-scaler reads {}", KEYS.join(", ")),
            ));
        }
        let text = |key: &str| -> Result<String, MetadataError> {
            match metadata.get(key).map(|v| v.trim()) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(error(key, "required, and missing or empty".into())),
            }
        };
        let number = |key: &str, default: f64, valid: fn(f64) -> bool, what: &str| match metadata
            .get(key)
            .map(|v| v.trim())
        {
            None | Some("") => Ok(default),
            Some(v) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() && valid(x) => Ok(x),
                _ => Err(error(key, format!("'{v}' is not {what}"))),
            },
        };
        let seconds = |key: &str, default: u64, positive: bool| {
            let what = if positive {
                "a number of seconds above 0"
            } else {
                "a number of seconds, 0 or more"
            };
            let valid: fn(f64) -> bool = if positive { |x| x > 0.0 } else { |x| x >= 0.0 };
            number(key, default as f64, valid, what).map(Duration::from_secs_f64)
        };
        let count = |key: &str| -> Result<Option<u32>, MetadataError> {
            match metadata.get(key).map(|v| v.trim()) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| error(key, format!("'{v}' is not a whole number, 0 or more"))),
            }
        };
        let capacity_per_replica = match metadata.get("capacityPerReplica") {
            None => {
                return Err(error(
                    "capacityPerReplica",
                    "required: messages per second one replica handles (measure it)".into(),
                ));
            }
            Some(_) => number(
                "capacityPerReplica",
                0.0,
                |x| x > 0.0,
                "a rate above 0 (messages per second)",
            )?,
        };
        let parsed = ScalerMetadata {
            topic: text("topic")?,
            group: text("group")?,
            capacity_per_replica,
            target_drain: seconds("targetDrainSeconds", 300, true)?,
            headroom: number("headroom", 1.1, |x| x > 0.0, "a multiplier above 0")?,
            interval: seconds("intervalSeconds", 10, false)?,
            smoothing: seconds("smoothingSeconds", 0, false)?,
            scale_down_window: seconds("scaleDownWindowSeconds", 300, false)?,
            up_settle: seconds("upSettleSeconds", 60, false)?,
            max_down_step: number(
                "maxDownStep",
                0.25,
                |x| x > 0.0 && x <= 1.0,
                "a share above 0 and at most 1",
            )?,
            idle_cooldown: seconds("idleCooldownSeconds", 60, false)?,
            min_replicas: count("minReplicas")?.unwrap_or(0),
            max_replicas: count("maxReplicas")?,
        };
        if let Some(max) = parsed.max_replicas
            && max < parsed.min_replicas.max(1)
        {
            return Err(error(
                "maxReplicas",
                format!("{max} is below minReplicas ({}) or 1", parsed.min_replicas),
            ));
        }
        Ok(parsed)
    }

    /// ebb-rate's configuration for a topic of `partitions` partitions.
    pub fn policy_config(&self, partitions: u32) -> EbbRateConfig {
        let max_replicas = self.max_replicas.unwrap_or(partitions.max(1));
        EbbRateConfig {
            target_drain: self.target_drain,
            interval: self.interval,
            smoothing: self.smoothing,
            headroom: self.headroom,
            scale_down_window: self.scale_down_window,
            up_settle: self.up_settle,
            max_down_step: self.max_down_step,
            idle_cooldown: self.idle_cooldown,
            min_replicas: self.min_replicas,
            ..EbbRateConfig::new(self.capacity_per_replica, max_replicas, partitions)
        }
    }
}

fn error(key: &str, message: String) -> MetadataError {
    MetadataError {
        key: key.to_string(),
        message,
    }
}

/// What the scaler answers at one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The replica count ebb-rate wants now (the metric's value).
    pub replicas: u32,
    /// IsActive: ebb-rate wants at least one replica (it goes to zero only after its idle
    /// cooldown with no arrivals and no lag).
    pub active: bool,
    /// Messages per second arriving, measured since the previous reading.
    pub arrival_rate: f64,
    /// The group's total lag.
    pub lag: f64,
    /// Set when this evaluation changed the count.
    pub decision: Option<Decision>,
    /// ebb-rate's arithmetic at this evaluation.
    pub explanation: Option<Explanation>,
}

/// One ScaledObject's ebb-rate, fed with successive readings of its topic and group.
#[derive(Debug, Clone)]
pub struct Tracker {
    metadata: ScalerMetadata,
    policy: EbbRate,
    /// The arrival rate from the sum of the log-end offsets, reading to reading.
    arrivals: OffsetRate,
    replicas: u32,
}

impl Tracker {
    /// A tracker for `metadata` on a topic of `partitions` partitions. It starts from zero
    /// replicas: its first answer is the need at that moment, later answers apply ebb-rate's
    /// settle time and scale-down window to its own previous answers.
    pub fn new(metadata: ScalerMetadata, partitions: u32) -> Self {
        let policy = EbbRate::new(metadata.policy_config(partitions));
        Tracker {
            metadata,
            policy,
            arrivals: OffsetRate::new(),
            replicas: 0,
        }
    }

    /// The metadata it was built from.
    pub fn metadata(&self) -> &ScalerMetadata {
        &self.metadata
    }

    /// The count it answered last.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// True until a first reading gave the arrival rate a starting point; the caller
    /// should then take one with [`Tracker::baseline`] and read again a moment later.
    pub fn needs_baseline(&self) -> bool {
        !self.arrivals.has_start()
    }

    /// Records the sum of the log-end offsets at `now` (time since any fixed start).
    pub fn baseline(&mut self, now: Duration, log_end_sum: f64) {
        self.arrivals.update(now.as_secs_f64(), log_end_sum);
    }

    /// One evaluation with the partitions read at `now`.
    pub fn observe(&mut self, now: Duration, partitions: &[PartitionOffsets]) -> Answer {
        let log_end_sum: f64 = partitions.iter().map(|p| p.log_end).sum();
        let arrival_rate = self.arrivals.update(now.as_secs_f64(), log_end_sum);
        let observation = Observation {
            now,
            partitions,
            arrival_rate,
            current_replicas: self.replicas,
            ready_replicas: self.replicas,
        };
        let decision = self.policy.decide(&observation);
        if let Some(d) = &decision {
            self.replicas = d.replicas;
        }
        Answer {
            replicas: self.replicas,
            active: self.replicas > 0,
            arrival_rate,
            lag: observation.total_lag(),
            decision,
            explanation: self.policy.explain(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn minimal() -> BTreeMap<String, String> {
        metadata(&[
            ("topic", "trades"),
            ("group", "workers"),
            ("capacityPerReplica", "100"),
        ])
    }

    fn partitions(lags: &[(f64, f64)]) -> Vec<PartitionOffsets> {
        lags.iter()
            .map(|&(log_end, committed)| PartitionOffsets {
                log_start: 0.0,
                log_end,
                committed: Some(committed),
            })
            .collect()
    }

    #[test]
    fn defaults_follow_ebb_rate() {
        let m = ScalerMetadata::parse(&minimal()).unwrap();
        let c = m.policy_config(12);
        let d = EbbRateConfig::new(100.0, 12, 12);
        assert_eq!(c, d);
        assert_eq!(m.max_replicas, None);
    }

    #[test]
    fn every_key_is_read() {
        let mut map = minimal();
        for (k, v) in [
            ("targetDrainSeconds", "30"),
            ("headroom", "1.5"),
            ("intervalSeconds", "0"),
            ("smoothingSeconds", "20"),
            ("scaleDownWindowSeconds", "60"),
            ("upSettleSeconds", "5"),
            ("maxDownStep", "0.5"),
            ("idleCooldownSeconds", "0"),
            ("minReplicas", "1"),
            ("maxReplicas", "4"),
            ("scalerAddress", "ebb-keda-scaler:9090"),
        ] {
            map.insert(k.into(), v.into());
        }
        let c = ScalerMetadata::parse(&map).unwrap().policy_config(12);
        assert_eq!(c.target_drain, Duration::from_secs(30));
        assert_eq!(c.headroom, 1.5);
        assert_eq!(c.interval, Duration::ZERO);
        assert_eq!(c.smoothing, Duration::from_secs(20));
        assert_eq!(c.scale_down_window, Duration::from_secs(60));
        assert_eq!(c.up_settle, Duration::from_secs(5));
        assert_eq!(c.max_down_step, 0.5);
        assert_eq!(c.idle_cooldown, Duration::ZERO);
        assert_eq!((c.min_replicas, c.max_replicas, c.partitions), (1, 4, 12));
    }

    #[test]
    fn bad_metadata_names_the_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("capacityPerReplica", "0")], "capacityPerReplica"),
            (&[("capacityPerReplica", "fast")], "capacityPerReplica"),
            (&[("headroom", "-1")], "headroom"),
            (&[("targetDrainSeconds", "0")], "targetDrainSeconds"),
            (&[("maxDownStep", "1.5")], "maxDownStep"),
            (&[("maxReplicas", "2.5")], "maxReplicas"),
            (&[("maxReplicas", "0")], "maxReplicas"),
            (&[("lagThreshold", "10")], "lagThreshold"),
            (&[("topic", " ")], "topic"),
        ];
        for (pairs, key) in cases {
            let mut map = minimal();
            for (k, v) in *pairs {
                map.insert(k.to_string(), v.to_string());
            }
            let e = ScalerMetadata::parse(&map).unwrap_err();
            assert_eq!(e.key, *key, "{pairs:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("scalerMetadata.{key}: "))
            );
        }
        for missing in ["topic", "group", "capacityPerReplica"] {
            let mut map = minimal();
            map.remove(missing);
            assert_eq!(ScalerMetadata::parse(&map).unwrap_err().key, missing);
        }
    }

    fn tracker(extra: &[(&str, &str)]) -> Tracker {
        let mut map = minimal();
        for (k, v) in extra {
            map.insert(k.to_string(), v.to_string());
        }
        Tracker::new(ScalerMetadata::parse(&map).unwrap(), 4)
    }

    #[test]
    fn backlog_alone_sizes_for_the_drain_time() {
        // 12,000 records to drain in 60 s at 100 msg/s per replica: 200 msg/s → 2.
        let mut t = tracker(&[("targetDrainSeconds", "60"), ("intervalSeconds", "0")]);
        let p = partitions(&[(6_000.0, 0.0), (6_000.0, 0.0), (0.0, 0.0), (0.0, 0.0)]);
        t.baseline(Duration::ZERO, 12_000.0);
        let a = t.observe(Duration::from_secs(1), &p);
        assert_eq!((a.replicas, a.active), (2, true));
        assert_eq!((a.lag, a.arrival_rate), (12_000.0, 0.0));
        assert!(a.decision.is_some());
    }

    #[test]
    fn arrivals_are_measured_between_readings_and_the_partitions_cap() {
        let mut t = tracker(&[("intervalSeconds", "0")]);
        t.baseline(Duration::ZERO, 0.0);
        // 1,000 records in 2 s, all consumed: 500 msg/s × 1.1 / 100 = 5.5 → 6 → 4 partitions.
        let p = partitions(&[(250.0, 250.0); 4]);
        let a = t.observe(Duration::from_secs(2), &p);
        assert_eq!(a.arrival_rate, 500.0);
        assert_eq!(a.replicas, 4);
        assert_eq!(a.explanation.unwrap().uncapped_replicas, 6);
    }

    #[test]
    fn goes_inactive_only_after_the_idle_cooldown() {
        let mut t = tracker(&[("intervalSeconds", "0"), ("idleCooldownSeconds", "30")]);
        t.baseline(Duration::ZERO, 100.0);
        let busy = partitions(&[(100.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]);
        assert!(t.observe(Duration::from_secs(1), &busy).active);
        let idle = partitions(&[(100.0, 100.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]);
        let a = t.observe(Duration::from_secs(2), &idle);
        assert_eq!(
            (a.replicas, a.active),
            (1, true),
            "idle, but not for 30 s yet"
        );
        assert!(t.observe(Duration::from_secs(20), &idle).active);
        let a = t.observe(Duration::from_secs(33), &idle);
        assert_eq!((a.replicas, a.active), (0, false));
    }

    #[test]
    fn an_idle_topic_is_inactive_from_the_first_answer() {
        let mut t = tracker(&[]);
        t.baseline(Duration::ZERO, 0.0);
        let a = t.observe(Duration::from_secs(1), &partitions(&[(0.0, 0.0); 4]));
        assert_eq!((a.replicas, a.active), (0, false));
    }

    #[test]
    fn readings_between_decisions_keep_the_count() {
        let mut t = tracker(&[("targetDrainSeconds", "60"), ("upSettleSeconds", "0")]);
        t.baseline(Duration::ZERO, 12_000.0);
        let p = partitions(&[(12_000.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]);
        assert_eq!(t.observe(Duration::from_secs(1), &p).replicas, 2);
        // Within the 10 s interval the policy does not re-decide: same answer.
        let more = partitions(&[(60_000.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]);
        let a = t.observe(Duration::from_secs(5), &more);
        assert_eq!((a.replicas, a.decision), (2, None));
        assert_eq!(t.observe(Duration::from_secs(12), &more).replicas, 4);
    }
}
