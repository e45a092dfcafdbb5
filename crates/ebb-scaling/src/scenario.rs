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

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::keda::ScaledObjectSpec;
use crate::policy::EbbRateConfig;
use crate::profile::RateProfile;
use crate::scaledobject::join;
use crate::sim::{Capacity, RebalanceKind, ServiceModel, SimConfig};

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

/// Reads the `traffic` key of a scenario's YAML text; `origin` names the file in errors.
pub fn traffic_from_yaml(text: &str, origin: &str) -> Result<RateProfile, ScenarioError> {
    let document: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ScenarioError::Syntax {
            origin: origin.into(),
            reason: e.to_string(),
        })?;
    let setting = |reason: String| ScenarioError::Setting {
        origin: origin.into(),
        setting: "traffic".into(),
        reason,
    };
    let traffic = document
        .get("traffic")
        .ok_or_else(|| setting("missing; give a rate profile such as \"1000@5m,0\"".into()))?;
    let text = match traffic {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Sequence(items) => items
            .iter()
            .map(|item| match item {
                serde_yaml::Value::String(s) => Ok(s.clone()),
                serde_yaml::Value::Number(n) => Ok(n.to_string()),
                other => Err(setting(format!(
                    "list items must be segments like 1000@5m, not {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        _ => {
            return Err(setting(
                "must be a rate profile string or a list of segments".into(),
            ));
        }
    };
    text.parse()
        .map_err(|e: crate::ProfileError| setting(e.to_string()))
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

struct Keys<'a> {
    origin: &'a str,
}

impl Keys<'_> {
    fn err(&self, setting: &str, reason: impl Into<String>) -> ScenarioError {
        ScenarioError::Setting {
            origin: self.origin.into(),
            setting: setting.into(),
            reason: reason.into(),
        }
    }

    fn mapping<'v>(
        &self,
        v: &'v Value,
        path: &str,
        known: &[&str],
    ) -> Result<&'v Mapping, ScenarioError> {
        let map = v
            .as_mapping()
            .ok_or_else(|| self.err(path, "must be a mapping"))?;
        for key in map.keys() {
            let key = key.as_str().unwrap_or("?");
            if !known.contains(&key) {
                let at = join(path, key);
                return Err(self.err(
                    &at,
                    format!("unknown setting; known here: {}", known.join(", ")),
                ));
            }
        }
        Ok(map)
    }

    fn duration(
        &self,
        map: &Mapping,
        path: &str,
        key: &str,
    ) -> Result<Option<Duration>, ScenarioError> {
        let at = join(path, key);
        match map.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .map(Some)
                .ok_or_else(|| self.err(&at, "must be a duration ≥ 0")),
            Some(Value::String(s)) => crate::profile::parse_duration(s)
                .map(Some)
                .map_err(|e| self.err(&at, e)),
            Some(_) => Err(self.err(&at, "must be a duration such as 30s or 5m")),
        }
    }

    fn number(&self, map: &Mapping, path: &str, key: &str) -> Result<Option<f64>, ScenarioError> {
        let at = join(path, key);
        match map.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x >= 0.0)
                .map(Some)
                .ok_or_else(|| self.err(&at, "must be a number ≥ 0")),
        }
    }
}

/// Parses a scenario file's text; `origin` names it in errors.
pub fn parse_scenario(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
    let k = Keys { origin };
    let document: Value = serde_yaml::from_str(text).map_err(|e| ScenarioError::Syntax {
        origin: origin.into(),
        reason: e.to_string(),
    })?;
    let top = k.mapping(
        &document,
        "",
        &[
            "name",
            "description",
            "traffic",
            "duration",
            "step",
            "partitions",
            "sla",
            "initialLag",
            "initialReplicas",
            "service",
            "scaledObject",
            "scaledObjectFile",
            "ebbRate",
        ],
    )?;
    let traffic = traffic_from_yaml(text, origin)?;
    let duration = match k.duration(top, "", "duration")? {
        Some(d) => d,
        None => traffic.duration().ok_or_else(|| {
            k.err(
                "duration",
                "missing, and the traffic runs forever; give a duration such as 70m",
            )
        })?,
    };
    let step = k
        .duration(top, "", "step")?
        .unwrap_or(Duration::from_secs(1));
    if step.is_zero() || step > Duration::from_secs(60) {
        return Err(k.err("step", "must be between 1ms and 60s"));
    }
    let partitions = k.number(top, "", "partitions")?.unwrap_or(24.0) as u32;
    if partitions == 0 {
        return Err(k.err("partitions", "must be at least 1"));
    }

    let service_value = top
        .get("service")
        .ok_or_else(|| k.err("service", "missing; give at least capacity"))?;
    let sm = k.mapping(
        service_value,
        "service",
        &[
            "capacity",
            "batchSize",
            "batchTime",
            "maxInFlight",
            "podStartDelay",
            "rampUp",
            "rebalance",
            "rebalancePause",
            "podsPerNode",
            "nodeStartDelay",
        ],
    )?;
    let capacity = match (
        k.number(sm, "service", "capacity")?,
        k.number(sm, "service", "batchSize")?,
    ) {
        (Some(rate), None) if rate > 0.0 => Capacity::PerReplica(rate),
        (None, Some(batch_size)) if batch_size > 0.0 => Capacity::Batches {
            batch_size,
            batch_time: k
                .duration(sm, "service", "batchTime")?
                .unwrap_or(Duration::from_secs(1)),
            max_in_flight: k
                .number(sm, "service", "maxInFlight")?
                .unwrap_or(1.0)
                .max(1.0),
        },
        (Some(_), Some(_)) => return Err(k.err("service", "give capacity or batchSize, not both")),
        _ => {
            return Err(k.err(
                "service.capacity",
                "missing or 0; give msg/s per replica, or batchSize/batchTime/maxInFlight",
            ));
        }
    };
    let rebalance = match sm.get("rebalance").and_then(Value::as_str) {
        None | Some("cooperative") => RebalanceKind::Cooperative,
        Some("eager") => RebalanceKind::Eager,
        Some(other) => {
            return Err(k.err(
                "service.rebalance",
                format!("\"{other}\" is not cooperative or eager"),
            ));
        }
    };
    let service = ServiceModel {
        capacity,
        pod_start_delay: k
            .duration(sm, "service", "podStartDelay")?
            .unwrap_or_default(),
        ramp_up: k.duration(sm, "service", "rampUp")?.unwrap_or_default(),
        rebalance,
        rebalance_pause: k
            .duration(sm, "service", "rebalancePause")?
            .unwrap_or_default(),
        pods_per_node: k.number(sm, "service", "podsPerNode")?.unwrap_or(0.0) as u32,
        node_start_delay: k
            .duration(sm, "service", "nodeStartDelay")?
            .unwrap_or_default(),
    };

    let scaled_object = match top.get("scaledObject") {
        Some(v) => Some(
            crate::scaledobject::from_value(v, &format!("{origin}: scaledObject")).map_err(
                |e| ScenarioError::Setting {
                    origin: origin.into(),
                    setting: format!("scaledObject.{}", e.path),
                    reason: e.reason,
                },
            )?,
        ),
        None => None,
    };
    let scaled_object_file = top
        .get("scaledObjectFile")
        .and_then(Value::as_str)
        .map(str::to_string);
    if scaled_object.is_some() && scaled_object_file.is_some() {
        return Err(k.err(
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
    if let Some(v) = top.get("ebbRate") {
        let em = k.mapping(
            v,
            "ebbRate",
            &[
                "targetDrain",
                "interval",
                "smoothing",
                "headroom",
                "scaleDownWindow",
                "idleCooldown",
                "upSettle",
                "maxDownStep",
                "minReplicas",
                "maxReplicas",
                "capacityPerReplica",
            ],
        )?;
        let d = |key: &str, default: Duration| {
            k.duration(em, "ebbRate", key).map(|v| v.unwrap_or(default))
        };
        ebb_rate.target_drain = d("targetDrain", ebb_rate.target_drain)?;
        ebb_rate.interval = d("interval", ebb_rate.interval)?;
        ebb_rate.smoothing = d("smoothing", ebb_rate.smoothing)?;
        ebb_rate.scale_down_window = d("scaleDownWindow", ebb_rate.scale_down_window)?;
        ebb_rate.idle_cooldown = d("idleCooldown", ebb_rate.idle_cooldown)?;
        ebb_rate.up_settle = d("upSettle", ebb_rate.up_settle)?;
        if let Some(step) = k.number(em, "ebbRate", "maxDownStep")? {
            if step <= 0.0 || step > 1.0 {
                return Err(k.err("ebbRate.maxDownStep", "must be in (0, 1]"));
            }
            ebb_rate.max_down_step = step;
        }
        if let Some(h) = k.number(em, "ebbRate", "headroom")? {
            ebb_rate.headroom = h.max(1.0);
        }
        if let Some(n) = k.number(em, "ebbRate", "minReplicas")? {
            ebb_rate.min_replicas = n as u32;
        }
        if let Some(n) = k.number(em, "ebbRate", "maxReplicas")? {
            ebb_rate.max_replicas = (n as u32).max(1);
        }
        if let Some(c) = k.number(em, "ebbRate", "capacityPerReplica")? {
            if c <= 0.0 {
                return Err(k.err("ebbRate.capacityPerReplica", "must be > 0"));
            }
            ebb_rate.capacity_per_replica = c;
        }
    }

    Ok(Scenario {
        name: top
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(origin)
            .to_string(),
        traffic,
        config: SimConfig {
            duration,
            step,
            partitions,
            service,
            sla: k
                .duration(top, "", "sla")?
                .unwrap_or(Duration::from_secs(30)),
            initial_lag: k.number(top, "", "initialLag")?.unwrap_or(0.0),
            initial_replicas: k.number(top, "", "initialReplicas")?.unwrap_or(0.0) as u32,
            reversal_window: Duration::from_secs(300),
        },
        scaled_object,
        scaled_object_file,
        ebb_rate,
    })
}

/// The per-replica capacity ebb-rate plans with: what one replica does when it owns its
/// share of the partitions at a typical scale (a quarter of them, at least one).
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
}
