//! Scenario files: YAML documents that describe a run: traffic, topic, service model,
//! ScaledObject and ebb-rate's knobs ([`parse_scenario`]). The producer reads only the
//! traffic ([`traffic_from_yaml`]), a rate profile written either as one string or as a
//! list of segments:
//!
//! ```yaml
//! traffic: "10@60s,1000@5m,5000@10m,0"
//! # or
//! traffic:
//!   - 10@60s
//!   - 1000@5m
//!   - 0
//! ```

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Unexpected, Visitor};

use crate::keda::ScaledObjectSpec;
use crate::policy::EbbRateConfig;
use crate::profile::RateProfile;
use crate::scaledobject::{ScaledObjectDocument, Text, YamlError, join, read_yaml};
use crate::sim::{Capacity, DEFAULT_KEY_LANES, OrderBy, RebalanceKind, ServiceModel, SimConfig};

/// The service level of a scenario without `sla`: a message waits at most this long in
/// Kafka. Also the default of `ebb demo --sla`.
pub const DEFAULT_SLA: Duration = Duration::from_secs(30);

/// Why a scenario could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Not YAML, or not a mapping at the top.
    #[error("{origin}: not a valid scenario: {reason}")]
    Syntax {
        /// The file name (or "scenario") the text came from.
        origin: String,
        /// The YAML parser's message.
        reason: String,
    },
    /// A setting is missing or has the wrong type or value.
    #[error("{origin}: {setting}: {reason}")]
    Setting {
        /// The file name (or "scenario") the text came from.
        origin: String,
        /// The offending key.
        setting: String,
        /// What is wrong and what would be right.
        reason: String,
    },
}

impl ScenarioError {
    fn setting(origin: &str, setting: &str, reason: impl Into<String>) -> Self {
        ScenarioError::Setting {
            origin: origin.into(),
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    fn from_yaml(origin: &str, error: YamlError) -> Self {
        match error {
            YamlError::Syntax(reason) => ScenarioError::Syntax {
                origin: origin.into(),
                reason,
            },
            YamlError::Field { path, reason } if path.is_empty() => ScenarioError::Syntax {
                origin: origin.into(),
                reason,
            },
            YamlError::Field { path, reason } => ScenarioError::setting(origin, &path, reason),
        }
    }
}

/// What the producer reads of a scenario: its traffic, whatever else the file holds.
#[derive(Deserialize)]
struct TrafficDocument {
    traffic: Option<Traffic>,
}

/// Reads the `traffic` key of a scenario's YAML text; `origin` names the file in errors.
pub fn traffic_from_yaml(text: &str, origin: &str) -> Result<RateProfile, ScenarioError> {
    let document: TrafficDocument =
        read_yaml(text).map_err(|e| ScenarioError::from_yaml(origin, e))?;
    traffic_profile(document.traffic, origin)
}

fn traffic_profile(traffic: Option<Traffic>, origin: &str) -> Result<RateProfile, ScenarioError> {
    let traffic = traffic.ok_or_else(|| {
        ScenarioError::setting(
            origin,
            "traffic",
            "missing; give a rate profile such as \"1000@5m,0\"",
        )
    })?;
    traffic
        .0
        .parse()
        .map_err(|e: crate::ProfileError| ScenarioError::setting(origin, "traffic", e.to_string()))
}

/// A rate profile written as one string (or number), or as a list of segments; held as
/// the one string the profile parser reads.
struct Traffic(String);

impl<'de> Deserialize<'de> for Traffic {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate profile string or a list of segments like 1000@5m")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
                Ok(s.to_string())
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<String, E> {
                Ok(n.to_string())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<String, A::Error> {
                let mut segments = Vec::new();
                while let Some(Text(segment)) = items.next_element()? {
                    segments.push(segment);
                }
                Ok(segments.join(","))
            }
        }
        deserializer.deserialize_any(V).map(Traffic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn traffic_as_string_or_list() {
        let a = traffic_from_yaml("traffic: \"10@60s,0\"\n", "a.yaml").unwrap();
        let b = traffic_from_yaml("traffic:\n  - 10@60s\n  - 0\n", "b.yaml").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.rate_at(Duration::from_secs(61)), Some(0.0));
        let c = traffic_from_yaml("traffic: 250\n", "c.yaml").unwrap();
        assert_eq!(c.rate_at(Duration::ZERO), Some(250.0));
    }

    #[test]
    fn errors_name_the_file_and_setting() {
        let missing = traffic_from_yaml("partitions: 3\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("s.yaml: traffic: missing"), "{missing}");
        let bad = traffic_from_yaml("traffic: \"10@x\"\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("s.yaml: traffic:") && bad.contains("10@x"),
            "{bad}"
        );
        let syntax = traffic_from_yaml("traffic: [\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            syntax.starts_with("s.yaml: not a valid scenario"),
            "{syntax}"
        );
    }
}

/// A whole scenario: traffic, topic, service model, the ScaledObject and ebb-rate's knobs.
///
/// ```yaml
/// name: reference-spike
/// traffic: "1000@30m,5000@25m,0@15m"   # a rate profile (see `profile`)
/// duration: 70m          # default: the traffic's length
/// step: 1s
/// partitions: 100
/// sla: 30s               # message time in Kafka
/// initialLag: 0
/// initialReplicas: 0
/// service:
///   capacity: 100        # msg/s per replica; or batchSize, batchTime, maxInFlight
///   # With batchSize: how the consumer orders records (ebb consume --ordering,
///   # --key-lanes). partition (default): one batch in flight per owned partition;
///   # key: keyLanes (default 16) per owned partition, so a replica's capacity is
///   # min(maxInFlight, owned × keyLanes) × batchSize / batchTime, not capped by the
///   # partitions it owns. keyLanes is refused without ordering: key.
///   ordering: partition
///   keyLanes: 16
///   podStartDelay: 20s
///   rampUp: 60s
///   rebalance: cooperative   # or eager
///   rebalancePause: 60s
///   podsPerNode: 0       # 0: nodes are always there
///   nodeStartDelay: 0s
/// scaledObject: { ... }  # a ScaledObject document, or:
/// scaledObjectFile: ../deploy/keda/scaledobject.yaml   # relative to the scenario
/// ebbRate: { targetDrain: 60s, interval: 10s, smoothing: 20s, headroom: 1.2,
///            scaleDownWindow: 300s, idleCooldown: 120s, upSettle: 60s, maxDownStep: 0.25,
///            minReplicas: 0, maxReplicas: 100, capacityPerReplica: 100 }
/// ```
/// Durations are written with a unit (`20s`, `5m`) or as plain seconds.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// A name for titles.
    pub name: String,
    /// The traffic.
    pub traffic: RateProfile,
    /// Everything the simulator needs besides traffic and policy.
    pub config: SimConfig,
    /// The inline ScaledObject, if any.
    pub scaled_object: Option<ScaledObjectSpec>,
    /// A ScaledObject file to read instead (relative to the scenario file).
    pub scaled_object_file: Option<String>,
    /// ebb-rate's knobs.
    pub ebb_rate: EbbRateConfig,
}

/// A scenario file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ScenarioDocument {
    name: Option<String>,
    #[serde(rename = "description")]
    _description: Option<IgnoredAny>,
    traffic: Option<Traffic>,
    duration: Option<Span>,
    step: Option<Span>,
    partitions: Option<Number>,
    sla: Option<Span>,
    initial_lag: Option<Number>,
    initial_replicas: Option<Number>,
    service: Option<ServiceDocument>,
    scaled_object: Option<ScaledObjectDocument>,
    scaled_object_file: Option<String>,
    ebb_rate: Option<EbbRateDocument>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceDocument {
    capacity: Option<Number>,
    batch_size: Option<Number>,
    batch_time: Option<Span>,
    max_in_flight: Option<Number>,
    ordering: Option<Ordering>,
    key_lanes: Option<Number>,
    pod_start_delay: Option<Span>,
    ramp_up: Option<Span>,
    rebalance: Option<Rebalance>,
    rebalance_pause: Option<Span>,
    pods_per_node: Option<Number>,
    node_start_delay: Option<Span>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EbbRateDocument {
    target_drain: Option<Span>,
    interval: Option<Span>,
    smoothing: Option<Span>,
    headroom: Option<Number>,
    scale_down_window: Option<Span>,
    idle_cooldown: Option<Span>,
    up_settle: Option<Span>,
    max_down_step: Option<Number>,
    min_replicas: Option<Number>,
    max_replicas: Option<Number>,
    capacity_per_replica: Option<Number>,
}

/// A duration with a unit (`20s`, `5m`) or a plain number of seconds.
#[derive(Clone, Copy)]
struct Span(Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30s or 5m, or a number of seconds ≥ 0")
            }
            fn visit_f64<E: de::Error>(self, s: f64) -> Result<Duration, E> {
                Duration::try_from_secs_f64(s)
                    .map_err(|_| E::invalid_value(Unexpected::Float(s), &self))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
                u64::try_from(n)
                    .map(Duration::from_secs)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                crate::profile::parse_duration(s).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(V).map(Span)
    }
}

/// A finite number ≥ 0.
#[derive(Clone, Copy)]
struct Number(f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number ≥ 0")
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<f64, E> {
                if x.is_finite() && x >= 0.0 {
                    Ok(x)
                } else {
                    Err(E::invalid_value(Unexpected::Float(x), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<f64, E> {
                Ok(n as f64)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<f64, E> {
                self.visit_f64(n as f64)
            }
        }
        deserializer.deserialize_any(V).map(Number)
    }
}

/// `service.rebalance`.
#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Rebalance(RebalanceKind);

impl TryFrom<String> for Rebalance {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "cooperative" => Ok(Rebalance(RebalanceKind::Cooperative)),
            "eager" => Ok(Rebalance(RebalanceKind::Eager)),
            _ => Err(format!("\"{text}\" is not cooperative or eager")),
        }
    }
}

/// `service.ordering`, named as `ebb consume --ordering` takes it; the lanes come from
/// `service.keyLanes` ([`order_by`]).
#[derive(Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
enum Ordering {
    Partition,
    Key,
}

impl TryFrom<String> for Ordering {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "partition" => Ok(Ordering::Partition),
            "key" => Ok(Ordering::Key),
            _ => Err(format!("\"{text}\" is not partition or key")),
        }
    }
}

/// The order `service.ordering` and `service.keyLanes` describe, or the setting at fault
/// and why. keyLanes without `ordering: key` is refused rather than ignored: it would say
/// the consumer runs sub-lanes when, in partition order, it does not.
fn order_by(
    ordering: Option<Ordering>,
    key_lanes: Option<f64>,
) -> Result<OrderBy, (&'static str, String)> {
    match (ordering, key_lanes) {
        (None | Some(Ordering::Partition), None) => Ok(OrderBy::Partition),
        (None | Some(Ordering::Partition), Some(_)) => Err((
            "service.keyLanes",
            "applies only with ordering: key (partition order runs one lane per partition)".into(),
        )),
        (Some(Ordering::Key), None) => Ok(OrderBy::Key {
            lanes: DEFAULT_KEY_LANES,
        }),
        (Some(Ordering::Key), Some(lanes))
            if lanes >= 1.0 && lanes.fract() == 0.0 && lanes <= f64::from(u32::MAX) =>
        {
            Ok(OrderBy::Key {
                lanes: lanes as u32,
            })
        }
        (Some(Ordering::Key), Some(lanes)) => Err((
            "service.keyLanes",
            format!("{lanes} is not a whole number of sub-lanes per partition, at least 1"),
        )),
    }
}

fn span(value: Option<Span>) -> Option<Duration> {
    value.map(|s| s.0)
}

fn number(value: Option<Number>) -> Option<f64> {
    value.map(|n| n.0)
}

/// Parses a scenario file's text; `origin` names it in errors.
pub fn parse_scenario(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    let err = |setting: &str, reason: &str| ScenarioError::setting(origin, setting, reason);
    let top: ScenarioDocument = read_yaml(text).map_err(|e| ScenarioError::from_yaml(origin, e))?;
    let traffic = traffic_profile(top.traffic, origin)?;
    let duration = match span(top.duration) {
        Some(d) => d,
        None => traffic.duration().ok_or_else(|| {
            err(
                "duration",
                "missing, and the traffic runs forever; give a duration such as 70m",
            )
        })?,
    };
    let step = span(top.step).unwrap_or(Duration::from_secs(1));
    if step.is_zero() || step > Duration::from_secs(60) {
        return Err(err("step", "must be between 1ms and 60s"));
    }
    let partitions = number(top.partitions).unwrap_or(24.0) as u32;
    if partitions == 0 {
        return Err(err("partitions", "must be at least 1"));
    }

    let sm = top
        .service
        .ok_or_else(|| err("service", "missing; give at least capacity"))?;
    let capacity = match (number(sm.capacity), number(sm.batch_size)) {
        (Some(rate), None) if rate > 0.0 => {
            // A measured rate already includes whatever order the consumer ran in; an
            // ordering beside it would be ignored, so it is refused instead.
            let ordered = [
                ("service.ordering", sm.ordering.is_some()),
                ("service.keyLanes", sm.key_lanes.is_some()),
            ];
            if let Some((setting, _)) = ordered.iter().find(|(_, given)| *given) {
                return Err(err(
                    setting,
                    "applies to a capacity derived from batchSize, batchTime and maxInFlight; \
                     capacity is a replica's measured rate, whatever its order",
                ));
            }
            Capacity::PerReplica(rate)
        }
        (None, Some(batch_size)) if batch_size > 0.0 => Capacity::Batches {
            batch_size,
            batch_time: span(sm.batch_time).unwrap_or(Duration::from_secs(1)),
            max_in_flight: number(sm.max_in_flight).unwrap_or(1.0).max(1.0),
            order_by: order_by(sm.ordering, number(sm.key_lanes))
                .map_err(|(setting, reason)| ScenarioError::setting(origin, setting, reason))?,
        },
        (Some(_), Some(_)) => return Err(err("service", "give capacity or batchSize, not both")),
        _ => {
            return Err(err(
                "service.capacity",
                "missing or 0; give msg/s per replica, or batchSize/batchTime/maxInFlight",
            ));
        }
    };
    let service = ServiceModel {
        capacity,
        pod_start_delay: span(sm.pod_start_delay).unwrap_or_default(),
        ramp_up: span(sm.ramp_up).unwrap_or_default(),
        rebalance: sm.rebalance.map_or(RebalanceKind::Cooperative, |r| r.0),
        rebalance_pause: span(sm.rebalance_pause).unwrap_or_default(),
        pods_per_node: number(sm.pods_per_node).unwrap_or(0.0) as u32,
        node_start_delay: span(sm.node_start_delay).unwrap_or_default(),
    };

    let scaled_object = match top.scaled_object {
        Some(document) => Some(document.into_spec().map_err(|(path, reason)| {
            ScenarioError::setting(origin, &join("scaledObject", &path), reason)
        })?),
        None => None,
    };
    let scaled_object_file = top.scaled_object_file;
    if scaled_object.is_some() && scaled_object_file.is_some() {
        return Err(err(
            "scaledObjectFile",
            "give scaledObject or scaledObjectFile, not both",
        ));
    }

    let max_replicas = scaled_object.as_ref().map_or(100, |s| s.max_replica_count);
    let mut ebb_rate = EbbRateConfig::new(
        capacity_for_policy(&service.capacity, partitions),
        max_replicas,
        partitions,
    );
    if let Some(em) = top.ebb_rate {
        let set = |field: &mut Duration, value: Option<Span>| {
            if let Some(Span(d)) = value {
                *field = d;
            }
        };
        set(&mut ebb_rate.target_drain, em.target_drain);
        set(&mut ebb_rate.interval, em.interval);
        set(&mut ebb_rate.smoothing, em.smoothing);
        set(&mut ebb_rate.scale_down_window, em.scale_down_window);
        set(&mut ebb_rate.idle_cooldown, em.idle_cooldown);
        set(&mut ebb_rate.up_settle, em.up_settle);
        if let Some(step) = number(em.max_down_step) {
            if step <= 0.0 || step > 1.0 {
                return Err(err("ebbRate.maxDownStep", "must be in (0, 1]"));
            }
            ebb_rate.max_down_step = step;
        }
        if let Some(h) = number(em.headroom) {
            ebb_rate.headroom = h.max(1.0);
        }
        if let Some(n) = number(em.min_replicas) {
            ebb_rate.min_replicas = n as u32;
        }
        if let Some(n) = number(em.max_replicas) {
            ebb_rate.max_replicas = (n as u32).max(1);
        }
        if let Some(c) = number(em.capacity_per_replica) {
            if c <= 0.0 {
                return Err(err("ebbRate.capacityPerReplica", "must be > 0"));
            }
            ebb_rate.capacity_per_replica = c;
        }
    }

    Ok(Scenario {
        name: top.name.unwrap_or_else(|| origin.to_string()),
        traffic,
        config: SimConfig {
            duration,
            step,
            partitions,
            service,
            sla: span(top.sla).unwrap_or(DEFAULT_SLA),
            initial_lag: number(top.initial_lag).unwrap_or(0.0),
            initial_replicas: number(top.initial_replicas).unwrap_or(0.0) as u32,
            reversal_window: Duration::from_secs(300),
        },
        scaled_object,
        scaled_object_file,
        ebb_rate,
    })
}

/// The per-replica capacity ebb-rate plans with: what one replica does when it owns its
/// share of the partitions at a typical scale (a quarter of them, at least one). In key
/// order that share runs `keyLanes` lanes per partition up to `maxInFlight`, so the figure
/// is not capped by the partitions owned; the replica count ebb-rate asks for still is
/// (`EbbRateConfig::partitions`).
fn capacity_for_policy(capacity: &Capacity, partitions: u32) -> f64 {
    capacity.per_replica((partitions as f64 / 4.0).max(1.0))
}

#[cfg(test)]
mod scenario_tests {
    use super::*;

    const SCENARIO: &str = r#"
name: small
traffic: "100@5m,0@5m"
partitions: 12
sla: 20s
service:
  batchSize: 100
  batchTime: 1s
  maxInFlight: 1
  podStartDelay: 20s
  rampUp: 30s
  rebalance: eager
  rebalancePause: 10
scaledObject:
  spec:
    pollingInterval: 15
    maxReplicaCount: 12
    triggers:
      - type: kafka
        metadata: {lagThreshold: "500"}
ebbRate:
  targetDrain: 2m
"#;

    #[test]
    fn reads_a_whole_scenario() {
        let s = parse_scenario(SCENARIO, "small.yaml").unwrap();
        assert_eq!(s.name, "small");
        assert_eq!(
            s.config.duration,
            Duration::from_secs(600),
            "from the traffic"
        );
        assert_eq!(s.config.partitions, 12);
        assert_eq!(s.config.service.rebalance, RebalanceKind::Eager);
        assert_eq!(s.config.service.rebalance_pause, Duration::from_secs(10));
        assert_eq!(s.config.service.capacity.per_replica(3.0), 100.0);
        let so = s.scaled_object.unwrap();
        assert_eq!(
            (so.polling_interval.as_secs(), so.max_replica_count),
            (15, 12)
        );
        assert_eq!(s.ebb_rate.max_replicas, 12);
        assert_eq!(s.ebb_rate.target_drain, Duration::from_secs(120));
    }

    #[test]
    fn scenario_errors_name_the_setting() {
        let cases = [
            (
                SCENARIO.replace("rebalance: eager", "rebalance: lazy"),
                "service.rebalance",
            ),
            (
                SCENARIO.replace("podStartDelay", "podStartDelai"),
                "service.podStartDelai",
            ),
            (
                SCENARIO.replace("lagThreshold: \"500\"", "lagThreshold: \"0\""),
                "scaledObject.spec.triggers[0].metadata.lagThreshold",
            ),
            (
                SCENARIO.replace("partitions: 12", "partitions: 0"),
                "partitions",
            ),
            (
                SCENARIO.replace("targetDrain: 2m", "targetDrain: soon"),
                "ebbRate.targetDrain",
            ),
            (SCENARIO.replace("\"100@5m,0@5m\"", "\"100\""), "duration"),
        ];
        for (text, setting) in cases {
            match parse_scenario(&text, "s.yaml") {
                Err(ScenarioError::Setting { setting: got, .. }) => assert_eq!(got, setting),
                other => panic!("{setting}: {other:?}"),
            }
        }
    }

    /// One replica on 6 partitions, batches of 100 taking 1 s, 64 in flight, key order
    /// over 16 lanes, held at one replica, with more traffic than it can take.
    const KEY_SCENARIO: &str = r#"
name: key
traffic: "20000@2m"
partitions: 6
initialReplicas: 1
service:
  batchSize: 100
  batchTime: 1s
  maxInFlight: 64
  ordering: key
  keyLanes: 16
ebbRate: {minReplicas: 1, maxReplicas: 1}
"#;

    /// The steady processed rate of `scenario` under its ebb-rate.
    fn processed_rate(scenario: &Scenario) -> f64 {
        let mut policy = crate::policy::EbbRate::new(scenario.ebb_rate.clone());
        let r = crate::sim::simulate(&scenario.config, &scenario.traffic, &mut policy);
        let last = r.series.last().expect("a series");
        assert_eq!(last.ready_replicas, 1);
        last.processed_rate
    }

    #[test]
    fn key_order_derives_capacity_from_the_lanes_not_the_partitions() {
        let key = parse_scenario(KEY_SCENARIO, "key.yaml").unwrap();
        assert_eq!(
            key.config.service.capacity,
            Capacity::Batches {
                batch_size: 100.0,
                batch_time: Duration::from_secs(1),
                max_in_flight: 64.0,
                order_by: OrderBy::Key { lanes: 16 },
            }
        );
        assert!((processed_rate(&key) - 6400.0).abs() < 1e-6);
        // ebb-rate plans with a quarter of the partitions owned: 1.5 × 16 lanes.
        assert_eq!(key.ebb_rate.capacity_per_replica, 2400.0);
        // Replicas stay capped by the partitions.
        assert_eq!(key.ebb_rate.partitions, 6);

        let text = KEY_SCENARIO.replace("  ordering: key\n  keyLanes: 16\n", "");
        let partition = parse_scenario(&text, "partition.yaml").unwrap();
        assert!((processed_rate(&partition) - 600.0).abs() < 1e-6);
        assert_eq!(partition.ebb_rate.capacity_per_replica, 150.0);

        let text = KEY_SCENARIO.replace("ordering: key", "ordering: partition");
        let text = text.replace("  keyLanes: 16\n", "");
        let explicit = parse_scenario(&text, "partition.yaml").unwrap();
        assert_eq!(explicit.config.service, partition.config.service);

        // keyLanes defaults to ebb consume's 16.
        let text = KEY_SCENARIO.replace("  keyLanes: 16\n", "");
        assert_ne!(text, KEY_SCENARIO, "keyLanes left out");
        let default_lanes = parse_scenario(&text, "key.yaml").unwrap();
        assert_eq!(default_lanes.config.service, key.config.service);
    }

    #[test]
    fn bad_ordering_settings_are_refused_naming_the_setting() {
        let key_lanes = |value: &str| KEY_SCENARIO.replace("keyLanes: 16", value);
        let cases = [
            (key_lanes("keyLanes: 0"), "service.keyLanes", "at least 1"),
            (
                key_lanes("keyLanes: 1.5"),
                "service.keyLanes",
                "whole number",
            ),
            (key_lanes("keyLanes: -2"), "service.keyLanes", "≥ 0"),
            (key_lanes("keyLanes: many"), "service.keyLanes", "many"),
            (key_lanes("keyLane: 16"), "service.keyLane", "unknown field"),
            (
                KEY_SCENARIO.replace("ordering: key", "ordering: keys"),
                "service.ordering",
                "not partition or key",
            ),
            (
                KEY_SCENARIO.replace("  ordering: key\n", ""),
                "service.keyLanes",
                "only with ordering: key",
            ),
            (
                KEY_SCENARIO.replace("ordering: key", "ordering: partition"),
                "service.keyLanes",
                "only with ordering: key",
            ),
            (
                KEY_SCENARIO.replace(
                    "  batchSize: 100\n  batchTime: 1s\n  maxInFlight: 64\n",
                    "  capacity: 500\n",
                ),
                "service.ordering",
                "measured rate",
            ),
            (
                KEY_SCENARIO.replace(
                    "  batchSize: 100\n  batchTime: 1s\n  maxInFlight: 64\n  ordering: key\n",
                    "  capacity: 500\n",
                ),
                "service.keyLanes",
                "measured rate",
            ),
        ];
        for (text, setting, reason) in cases {
            match parse_scenario(&text, "s.yaml") {
                Err(ScenarioError::Setting {
                    setting: got,
                    reason: why,
                    ..
                }) => {
                    assert_eq!(got, setting, "{why}");
                    assert!(why.contains(reason), "{setting}: {why}");
                }
                other => panic!("{setting}: {other:?}"),
            }
        }
    }
}
