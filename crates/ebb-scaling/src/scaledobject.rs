//! Reading a KEDA ScaledObject (the YAML applied to a cluster) into [`ScaledObjectSpec`]:
//! the one kafka trigger, the replica bounds and timings, and the HPA behavior, with the
//! Kubernetes API defaults filled in where fields are absent. Fields that KEDA or
//! Kubernetes do not know, and values they would reject, are errors naming the field.
//!
//! This file also holds the crate's one YAML reader (`read_yaml`), which scenarios use
//! too: serde-saphyr parses, `serde_path_to_error` names the offending field, and the
//! documents are typed structs that refuse unknown fields.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, Unexpected, Visitor};

use crate::hpa::{PolicyType, RatePolicy, ScalingRules, SelectPolicy};
use crate::keda::{KafkaTrigger, ScaledObjectSpec, parse_metadata};

/// A field of a ScaledObject that is unknown, missing or invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {path}: {reason}")]
pub struct ScaledObjectError {
    /// The file (or "scaledObject") it came from.
    pub origin: String,
    /// The field, e.g. `spec.triggers[0].metadata.lagThreshold`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// Why a YAML document could not be read into its type.
#[derive(Debug)]
pub(crate) enum YamlError {
    /// Not YAML at all (or not one document): the parser's message, with line and column.
    Syntax(String),
    /// A field has the wrong type or value, is unknown or missing. `path` is empty when the
    /// document as a whole has the wrong shape (e.g. a list where a mapping belongs).
    Field {
        /// Where, e.g. `spec.triggers[0].metadata`.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    // One-line messages: ebb puts them after the file name and the field's path.
    options.with_snippet = false;
    // YAML 1.2 booleans only, as Kubernetes' trigger metadata are strings: `yes` stays
    // the text "yes", and KEDA's own boolean check then refuses it.
    options.strict_booleans = true;
    options
}

/// Reads one YAML document into `T`; errors name the offending field's path.
pub(crate) fn read_yaml<T: DeserializeOwned>(text: &str) -> Result<T, YamlError> {
    // The parser streams, so a syntax error could otherwise surface as a field's error;
    // a first pass over the whole document tells the two apart.
    serde_saphyr::from_str_with_options::<IgnoredAny>(text, yaml_options())
        .map_err(|e| YamlError::Syntax(e.to_string()))?;
    // The path is kept aside: after a field's error the reader still checks the rest of
    // the stream and reports that instead, which would lose it.
    let mut failed_at = None;
    serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |deserializer| {
        serde_path_to_error::deserialize::<_, T>(deserializer).map_err(|e| {
            failed_at = Some(e.path().to_string());
            e.into_inner()
        })
    })
    .map_err(|e| match failed_at {
        Some(path) => YamlError::Field {
            path: if path == "." { String::new() } else { path },
            reason: e.to_string(),
        },
        None => YamlError::Syntax(e.to_string()),
    })
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Parses a ScaledObject document; `origin` names it in errors.
pub fn parse_scaled_object(
    text: &str,
    origin: &str,
) -> Result<ScaledObjectSpec, ScaledObjectError> {
    let error = |path: &str, reason: String| ScaledObjectError {
        origin: origin.to_string(),
        path: path.to_string(),
        reason,
    };
    match read_yaml::<ScaledObjectDocument>(text) {
        Ok(document) => document
            .into_spec()
            .map_err(|(path, reason)| error(&path, reason)),
        Err(YamlError::Syntax(reason)) => Err(error("(document)", reason)),
        Err(YamlError::Field { path, reason }) if path.is_empty() => {
            Err(error("(document)", reason))
        }
        Err(YamlError::Field { path, reason }) => Err(error(&path, reason)),
    }
}

/// A ScaledObject as written (`keda.sh/v1alpha1`); what ebb does not model is checked for
/// its name only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScaledObjectDocument {
    #[serde(rename = "apiVersion")]
    _api_version: Option<IgnoredAny>,
    kind: Option<String>,
    #[serde(rename = "metadata")]
    _metadata: Option<IgnoredAny>,
    spec: Option<SpecDocument>,
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecDocument {
    #[serde(rename = "scaleTargetRef")]
    _scale_target_ref: Option<IgnoredAny>,
    polling_interval: Option<Seconds>,
    cooldown_period: Option<Seconds>,
    #[serde(rename = "initialCooldownPeriod")]
    _initial_cooldown_period: Option<IgnoredAny>,
    #[serde(rename = "idleReplicaCount")]
    _idle_replica_count: Option<IgnoredAny>,
    min_replica_count: Option<Count>,
    max_replica_count: Option<Count>,
    advanced: Option<AdvancedDocument>,
    triggers: Option<Vec<TriggerDocument>>,
    #[serde(rename = "fallback")]
    _fallback: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct AdvancedDocument {
    horizontal_pod_autoscaler_config: Option<HpaConfigDocument>,
    #[serde(rename = "restoreToOriginalReplicaCount")]
    _restore_to_original_replica_count: Option<IgnoredAny>,
    #[serde(rename = "scalingModifiers")]
    _scaling_modifiers: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HpaConfigDocument {
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    behavior: Option<BehaviorDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BehaviorDocument {
    scale_up: Option<RulesDocument>,
    scale_down: Option<RulesDocument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RulesDocument {
    stabilization_window_seconds: Option<Seconds>,
    select_policy: Option<Select>,
    policies: Option<Vec<PolicyDocument>>,
    tolerance: Option<Tolerance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicyDocument {
    #[serde(rename = "type")]
    kind: Kind,
    value: Count,
    period_seconds: Seconds,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TriggerDocument {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "name")]
    _name: Option<IgnoredAny>,
    metadata: Option<BTreeMap<String, Text>>,
    #[serde(rename = "authenticationRef")]
    _authentication_ref: Option<IgnoredAny>,
    metric_type: Option<String>,
    #[serde(rename = "useCachedMetrics")]
    _use_cached_metrics: Option<IgnoredAny>,
}

/// The kafka trigger's metadata keys KEDA v2.21 knows.
const KAFKA_METADATA: &[&str] = &[
    "bootstrapServers",
    "bootstrapServersFromEnv",
    "consumerGroup",
    "consumerGroupFromEnv",
    "topic",
    "topicFromEnv",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "partitionLimitation",
    "fullMetadata",
    "version",
    "sasl",
    "saslTokenProvider",
    "tls",
    "unsafeSsl",
    "awsRegion",
    "awsEndpoint",
];

/// A field's path and what is wrong with it.
type Problem = (String, String);

impl ScaledObjectDocument {
    /// The model of this ScaledObject; an error is the field's path and the reason.
    pub(crate) fn into_spec(self) -> Result<ScaledObjectSpec, Problem> {
        let problem = |path: &str, reason: &str| (path.to_string(), reason.to_string());
        if let Some(kind) = &self.kind
            && kind != "ScaledObject"
        {
            return Err(problem(
                "kind",
                &format!("is {kind}; expected ScaledObject"),
            ));
        }
        let spec = self.spec.ok_or_else(|| problem("spec", "missing"))?;
        let defaults = ScaledObjectSpec::default();
        let mut out = ScaledObjectSpec {
            polling_interval: spec
                .polling_interval
                .map_or(defaults.polling_interval, |s| s.0),
            cooldown_period: spec
                .cooldown_period
                .map_or(defaults.cooldown_period, |s| s.0),
            min_replica_count: spec
                .min_replica_count
                .map_or(defaults.min_replica_count, |c| c.0),
            max_replica_count: spec
                .max_replica_count
                .map_or(defaults.max_replica_count, |c| c.0),
            ..defaults
        };
        if out.polling_interval.is_zero() {
            return Err(problem("spec.pollingInterval", "must be at least 1"));
        }
        if out.max_replica_count == 0 || out.max_replica_count < out.min_replica_count {
            return Err(problem(
                "spec.maxReplicaCount",
                "must be ≥ 1 and ≥ minReplicaCount",
            ));
        }
        if let Some(behavior) = spec
            .advanced
            .and_then(|a| a.horizontal_pod_autoscaler_config)
            .and_then(|h| h.behavior)
        {
            let path = "spec.advanced.horizontalPodAutoscalerConfig.behavior";
            if let Some(up) = behavior.scale_up {
                out.behavior.scale_up =
                    up.into_rules(&format!("{path}.scaleUp"), ScalingRules::default_scale_up())?;
            }
            if let Some(down) = behavior.scale_down {
                out.behavior.scale_down = down.into_rules(
                    &format!("{path}.scaleDown"),
                    ScalingRules::default_scale_down(),
                )?;
            }
        }
        let triggers = spec
            .triggers
            .ok_or_else(|| problem("spec.triggers", "missing; give one trigger of type kafka"))?;
        let mut kafka = triggers
            .into_iter()
            .enumerate()
            .filter(|(_, t)| t.kind == "kafka");
        match (kafka.next(), kafka.next()) {
            (Some((i, trigger)), None) => {
                out.trigger = trigger.into_kafka(&format!("spec.triggers[{i}]"))?
            }
            (None, _) => return Err(problem("spec.triggers", "no trigger of type kafka")),
            (Some(_), Some(_)) => {
                return Err(problem(
                    "spec.triggers",
                    "more than one kafka trigger; ebb models one",
                ));
            }
        }
        Ok(out)
    }
}

impl RulesDocument {
    /// One direction's rules; absent fields take that direction's API default.
    fn into_rules(self, path: &str, default: ScalingRules) -> Result<ScalingRules, Problem> {
        let mut rules = default;
        if let Some(Seconds(window)) = self.stabilization_window_seconds {
            if window > Duration::from_secs(3600) {
                return Err((
                    join(path, "stabilizationWindowSeconds"),
                    "must be ≤ 3600".into(),
                ));
            }
            rules.stabilization_window = window;
        }
        if let Some(Select(select)) = self.select_policy {
            rules.select_policy = select;
        }
        if let Some(Tolerance(t)) = self.tolerance {
            rules.tolerance = Some(t);
        }
        if let Some(policies) = self.policies {
            if policies.is_empty() {
                return Err((join(path, "policies"), "must not be empty".into()));
            }
            rules.policies = policies
                .into_iter()
                .enumerate()
                .map(|(i, p)| {
                    let at = format!("{path}.policies[{i}]");
                    if p.value.0 == 0 {
                        return Err((join(&at, "value"), "must be > 0".into()));
                    }
                    let period = p.period_seconds.0;
                    if period.is_zero() || period > Duration::from_secs(1800) {
                        return Err((join(&at, "periodSeconds"), "must be 1..=1800".into()));
                    }
                    Ok(RatePolicy {
                        kind: p.kind.0,
                        value: p.value.0,
                        period,
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(rules)
    }
}

impl TriggerDocument {
    fn into_kafka(self, path: &str) -> Result<KafkaTrigger, Problem> {
        if let Some(kind) = &self.metric_type
            && kind != "AverageValue"
        {
            return Err((
                join(path, "metricType"),
                "ebb models the kafka trigger's AverageValue target only".into(),
            ));
        }
        let metadata_path = join(path, "metadata");
        let metadata = self
            .metadata
            .ok_or_else(|| (metadata_path.clone(), "missing".to_string()))?;
        if let Some(key) = metadata
            .keys()
            .find(|k| !KAFKA_METADATA.contains(&k.as_str()))
        {
            return Err((
                join(&metadata_path, key),
                format!("unknown field; known here: {}", KAFKA_METADATA.join(", ")),
            ));
        }
        // KEDA's own reading and checks; the connection keys are not required because ebb
        // simulates the trigger without connecting.
        parse_metadata(&|key: &str| metadata.get(key).map(|t| t.0.clone()), false).map_err(|e| {
            let at = match e.key {
                Some(key) => join(&metadata_path, key),
                None => metadata_path.clone(),
            };
            (at, e.message)
        })
    }
}

/// A whole number of seconds ≥ 0, as Kubernetes' `*Seconds` and KEDA's intervals are.
#[derive(Debug)]
struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = deserializer.deserialize_any(Whole("a whole number of seconds ≥ 0"))?;
        Ok(Seconds(Duration::from_secs(n)))
    }
}

/// A whole number ≥ 0 that fits 32 bits (replica counts, policy values).
#[derive(Debug)]
struct Count(u32);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const EXPECTED: &str = "a whole number ≥ 0";
        let n = deserializer.deserialize_any(Whole(EXPECTED))?;
        u32::try_from(n)
            .map(Count)
            .map_err(|_| de::Error::invalid_value(Unexpected::Unsigned(n), &EXPECTED))
    }
}

/// Visits a whole number ≥ 0; the text says what the field expects.
struct Whole(&'static str);

impl Visitor<'_> for Whole {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
        Ok(n)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
        u64::try_from(n).map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
    }
}

/// The HPA's tolerance: a number ≥ 0, also as a string (Kubernetes' `Quantity`).
#[derive(Debug)]
struct Tolerance(f64);

impl<'de> Deserialize<'de> for Tolerance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number ≥ 0")
            }
            fn visit_f64<E: de::Error>(self, t: f64) -> Result<f64, E> {
                if t >= 0.0 {
                    Ok(t)
                } else {
                    Err(E::invalid_value(Unexpected::Float(t), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<f64, E> {
                Ok(n as f64)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<f64, E> {
                self.visit_f64(n as f64)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<f64, E> {
                match s.trim().parse::<f64>() {
                    Ok(t) => self.visit_f64(t),
                    Err(_) => Err(E::invalid_value(Unexpected::Str(s), &self)),
                }
            }
        }
        deserializer.deserialize_any(V).map(Tolerance)
    }
}

/// A YAML scalar taken as its text: strings, and plain numbers and booleans as written
/// (Kubernetes' string maps such as trigger metadata; a scenario's traffic segments).
#[derive(Debug)]
pub(crate) struct Text(pub(crate) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
                Ok(s.to_string())
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<String, E> {
                Ok(b.to_string())
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
            fn visit_unit<E: de::Error>(self) -> Result<String, E> {
                Ok(String::new())
            }
            fn visit_none<E: de::Error>(self) -> Result<String, E> {
                Ok(String::new())
            }
        }
        deserializer.deserialize_any(V).map(Text)
    }
}

/// An HPA policy's `type`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Kind(PolicyType);

impl TryFrom<String> for Kind {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "Pods" => Ok(Kind(PolicyType::Pods)),
            "Percent" => Ok(Kind(PolicyType::Percent)),
            _ => Err(format!("\"{text}\" must be Pods or Percent")),
        }
    }
}

/// An HPA direction's `selectPolicy`.
#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Select(SelectPolicy);

impl TryFrom<String> for Select {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "Max" => Ok(Select(SelectPolicy::Max)),
            "Min" => Ok(Select(SelectPolicy::Min)),
            "Disabled" => Ok(Select(SelectPolicy::Disabled)),
            _ => Err(format!("\"{text}\" must be Max, Min or Disabled")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference system's ScaledObject (its KEDA values, as the README lists them).
    pub const REFERENCE: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: trade-tx-consumer
spec:
  scaleTargetRef:
    name: trade-tx-consumer
  pollingInterval: 30
  cooldownPeriod: 300
  minReplicaCount: 0
  maxReplicaCount: 100
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleUp:
          stabilizationWindowSeconds: 60
          selectPolicy: Min
          policies:
            - type: Pods
              value: 10
              periodSeconds: 60
            - type: Percent
              value: 500
              periodSeconds: 60
        scaleDown:
          stabilizationWindowSeconds: 120
          selectPolicy: Max
          policies:
            - type: Percent
              value: 50
              periodSeconds: 120
  triggers:
    - type: kafka
      metadata:
        bootstrapServers: b-1.example:9098
        consumerGroup: tx-trade-workers
        topic: trade-tx
        lagThreshold: "10000"
        offsetResetPolicy: latest
"#;

    #[test]
    fn reads_the_reference_scaled_object() {
        let spec = parse_scaled_object(REFERENCE, "reference.yaml").unwrap();
        assert_eq!(spec.polling_interval, Duration::from_secs(30));
        assert_eq!(spec.cooldown_period, Duration::from_secs(300));
        assert_eq!((spec.min_replica_count, spec.max_replica_count), (0, 100));
        assert_eq!(spec.trigger.lag_threshold, 10_000.0);
        assert_eq!(spec.behavior.scale_up.select_policy, SelectPolicy::Min);
        assert_eq!(spec.behavior.scale_up.policies.len(), 2);
        assert_eq!(
            spec.behavior.scale_up.stabilization_window,
            Duration::from_secs(60)
        );
        assert_eq!(spec.behavior.scale_down.policies[0].value, 50);
        assert_eq!(
            spec.hpa_spec().min_replicas,
            1,
            "KEDA's HPA has minReplicas max(1, min)"
        );
    }

    #[test]
    fn absent_fields_take_keda_and_kubernetes_defaults() {
        let minimal = "kind: ScaledObject\nspec:\n  triggers:\n    - type: kafka\n      metadata: {topic: t}\n";
        let spec = parse_scaled_object(minimal, "m.yaml").unwrap();
        assert_eq!(spec, ScaledObjectSpec::default());
        let only_up = "spec:\n  advanced:\n    horizontalPodAutoscalerConfig:\n      behavior:\n        scaleUp:\n          selectPolicy: Min\n  triggers:\n    - type: kafka\n      metadata: {lagThreshold: '5'}\n";
        let spec = parse_scaled_object(only_up, "u.yaml").unwrap();
        assert_eq!(
            spec.behavior.scale_up.policies,
            ScalingRules::default_scale_up().policies,
            "defaulted per field"
        );
        assert_eq!(spec.behavior.scale_down, ScalingRules::default_scale_down());
    }

    #[test]
    fn trigger_metadata_is_read_and_checked_as_keda_does() {
        // kafkaMetadata.Validate refuses these combinations; the error names both keys.
        let so = |metadata: &str| {
            format!("spec:\n  triggers:\n    - type: kafka\n      metadata: {metadata}\n")
        };
        for (metadata, keys) in [
            (
                "{topic: t, allowIdleConsumers: 'true', limitToPartitionsWithLag: 'true'}",
                "allowIdleConsumers and limitToPartitionsWithLag",
            ),
            (
                "{topic: t, limitToPartitionsWithLag: 'true', ensureEvenDistributionOfPartitions: 'true'}",
                "limitToPartitionsWithLag and ensureEvenDistributionOfPartitions",
            ),
        ] {
            let err = parse_scaled_object(&so(metadata), "so.yaml").expect_err(metadata);
            assert_eq!(err.path, "spec.triggers[0].metadata", "{metadata}");
            assert!(err.reason.contains(keys), "{}", err.reason);
        }
        // lagThreshold is an int64 in KEDA: a fraction is refused, not rounded.
        let err = parse_scaled_object(&so("{lagThreshold: '4500.5'}"), "so.yaml").unwrap_err();
        assert_eq!(err.path, "spec.triggers[0].metadata.lagThreshold");
        // Booleans as Go's ParseBool reads them; the partition list as KEDA parses it.
        let spec = parse_scaled_object(
            &so("{topic: t, excludePersistentLag: 'True', partitionLimitation: '0-2,5'}"),
            "so.yaml",
        )
        .unwrap();
        assert!(spec.trigger.exclude_persistent_lag);
        assert_eq!(spec.trigger.partition_limitation, Some(vec![0..=2, 5..=5]));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "spec:\n  pollingIntervall: 5\n",
                "spec.pollingIntervall",
                "unknown field",
            ),
            (
                "spec:\n  triggers: []\n",
                "spec.triggers",
                "no trigger of type kafka",
            ),
            (
                "spec:\n  triggers:\n    - type: kafka\n      metadata: {lagThreshold: '0'}\n",
                "spec.triggers[0].metadata.lagThreshold",
                "must be positive number",
            ),
            (
                "spec:\n  triggers:\n    - type: kafka\n      metadata: {lagThreshold: lots}\n",
                "spec.triggers[0].metadata.lagThreshold",
                "not a whole number",
            ),
            (
                "spec:\n  triggers:\n    - type: kafka\n      metadata: {allowIdleConsumers: yes}\n",
                "spec.triggers[0].metadata.allowIdleConsumers",
                "not a boolean",
            ),
            (
                "spec:\n  triggers:\n    - type: kafka\n      metadata: {lagTreshold: '5'}\n",
                "spec.triggers[0].metadata.lagTreshold",
                "unknown field",
            ),
            (
                "spec:\n  advanced:\n    horizontalPodAutoscalerConfig:\n      behavior:\n        scaleUp:\n          policies:\n            - {type: Pod, value: 1, periodSeconds: 15}\n  triggers: [{type: kafka, metadata: {}}]\n",
                "spec.advanced.horizontalPodAutoscalerConfig.behavior.scaleUp.policies[0].type",
                "Pods or Percent",
            ),
            (
                "spec:\n  maxReplicaCount: 0\n  triggers: [{type: kafka, metadata: {}}]\n",
                "spec.maxReplicaCount",
                "≥ 1",
            ),
            (
                "kind: Deployment\nspec: {}\n",
                "kind",
                "expected ScaledObject",
            ),
        ];
        for (text, path, reason) in cases {
            let err = parse_scaled_object(text, "so.yaml").expect_err(text);
            assert_eq!(err.path, path, "{text}");
            assert!(err.reason.contains(reason), "{text}: {}", err.reason);
            assert!(err.to_string().starts_with("so.yaml: "));
        }
    }
}
