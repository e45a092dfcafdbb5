//! Reading a KEDA ScaledObject (the YAML applied to a cluster) into [`ScaledObjectSpec`]:
//! the one kafka trigger, the replica bounds and timings, and the HPA behavior, with the
//! Kubernetes API defaults filled in where fields are absent. Fields that KEDA or
//! Kubernetes do not know, and values they would reject, are errors naming the field.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use crate::hpa::{Behavior, PolicyType, RatePolicy, ScalingRules, SelectPolicy};
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

struct Reader<'a> {
    origin: &'a str,
}

impl Reader<'_> {
    fn error(&self, path: &str, reason: impl Into<String>) -> ScaledObjectError {
        ScaledObjectError {
            origin: self.origin.to_string(),
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn mapping<'v>(
        &self,
        value: &'v Value,
        path: &str,
        known: &[&str],
    ) -> Result<&'v Mapping, ScaledObjectError> {
        let map = value
            .as_mapping()
            .ok_or_else(|| self.error(path, "must be a mapping"))?;
        for key in map.keys() {
            let key = key
                .as_str()
                .ok_or_else(|| self.error(path, "keys must be strings"))?;
            if !known.contains(&key) {
                return Err(self.error(
                    &join(path, key),
                    format!("unknown field; known here: {}", known.join(", ")),
                ));
            }
        }
        Ok(map)
    }

    fn seconds(
        &self,
        map: &Mapping,
        path: &str,
        key: &str,
    ) -> Result<Option<Duration>, ScaledObjectError> {
        match map.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(Duration::from_secs(n)))
                .ok_or_else(|| {
                    self.error(&join(path, key), "must be a whole number of seconds ≥ 0")
                }),
        }
    }

    fn count(
        &self,
        map: &Mapping,
        path: &str,
        key: &str,
    ) -> Result<Option<u32>, ScaledObjectError> {
        match map.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.error(&join(path, key), "must be a whole number ≥ 0")),
        }
    }
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
    let reader = Reader { origin };
    let document: Value =
        serde_yaml::from_str(text).map_err(|e| reader.error("(document)", e.to_string()))?;
    from_value(&document, origin)
}

/// Like [`parse_scaled_object`], for a document already parsed (a scenario's inline one).
pub fn from_value(document: &Value, origin: &str) -> Result<ScaledObjectSpec, ScaledObjectError> {
    let r = Reader { origin };
    let top = r.mapping(
        document,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    )?;
    if let Some(kind) = top.get("kind").and_then(Value::as_str)
        && kind != "ScaledObject"
    {
        return Err(r.error("kind", format!("is {kind}; expected ScaledObject")));
    }
    let spec_value = top.get("spec").ok_or_else(|| r.error("spec", "missing"))?;
    let spec = r.mapping(
        spec_value,
        "spec",
        &[
            "scaleTargetRef",
            "pollingInterval",
            "cooldownPeriod",
            "initialCooldownPeriod",
            "idleReplicaCount",
            "minReplicaCount",
            "maxReplicaCount",
            "advanced",
            "triggers",
            "fallback",
        ],
    )?;
    let defaults = ScaledObjectSpec::default();
    let mut out = ScaledObjectSpec {
        polling_interval: r
            .seconds(spec, "spec", "pollingInterval")?
            .unwrap_or(defaults.polling_interval),
        cooldown_period: r
            .seconds(spec, "spec", "cooldownPeriod")?
            .unwrap_or(defaults.cooldown_period),
        min_replica_count: r
            .count(spec, "spec", "minReplicaCount")?
            .unwrap_or(defaults.min_replica_count),
        max_replica_count: r
            .count(spec, "spec", "maxReplicaCount")?
            .unwrap_or(defaults.max_replica_count),
        ..defaults
    };
    if out.polling_interval.is_zero() {
        return Err(r.error("spec.pollingInterval", "must be at least 1"));
    }
    if out.max_replica_count == 0 || out.max_replica_count < out.min_replica_count {
        return Err(r.error("spec.maxReplicaCount", "must be ≥ 1 and ≥ minReplicaCount"));
    }
    if let Some(advanced) = spec.get("advanced") {
        let advanced = r.mapping(
            advanced,
            "spec.advanced",
            &[
                "horizontalPodAutoscalerConfig",
                "restoreToOriginalReplicaCount",
                "scalingModifiers",
            ],
        )?;
        if let Some(hpa) = advanced.get("horizontalPodAutoscalerConfig") {
            let path = "spec.advanced.horizontalPodAutoscalerConfig";
            let hpa = r.mapping(hpa, path, &["name", "behavior"])?;
            if let Some(behavior) = hpa.get("behavior") {
                out.behavior = behavior_from(&r, behavior, &format!("{path}.behavior"))?;
            }
        }
    }
    let triggers = spec
        .get("triggers")
        .and_then(Value::as_sequence)
        .ok_or_else(|| r.error("spec.triggers", "missing; give one trigger of type kafka"))?;
    let kafka: Vec<(usize, &Value)> = triggers
        .iter()
        .enumerate()
        .filter(|(_, t)| t.get("type").and_then(Value::as_str) == Some("kafka"))
        .collect();
    match kafka.as_slice() {
        [(i, trigger)] => out.trigger = kafka_trigger(&r, trigger, &format!("spec.triggers[{i}]"))?,
        [] => return Err(r.error("spec.triggers", "no trigger of type kafka")),
        _ => {
            return Err(r.error(
                "spec.triggers",
                "more than one kafka trigger; ebb models one",
            ));
        }
    }
    Ok(out)
}

fn behavior_from(r: &Reader<'_>, value: &Value, path: &str) -> Result<Behavior, ScaledObjectError> {
    let map = r.mapping(value, path, &["scaleUp", "scaleDown"])?;
    let mut behavior = Behavior::default();
    if let Some(up) = map.get("scaleUp") {
        behavior.scale_up = rules_from(
            r,
            up,
            &format!("{path}.scaleUp"),
            ScalingRules::default_scale_up(),
        )?;
    }
    if let Some(down) = map.get("scaleDown") {
        behavior.scale_down = rules_from(
            r,
            down,
            &format!("{path}.scaleDown"),
            ScalingRules::default_scale_down(),
        )?;
    }
    Ok(behavior)
}

/// One direction's rules; absent fields take that direction's API default.
fn rules_from(
    r: &Reader<'_>,
    value: &Value,
    path: &str,
    default: ScalingRules,
) -> Result<ScalingRules, ScaledObjectError> {
    let map = r.mapping(
        value,
        path,
        &[
            "stabilizationWindowSeconds",
            "selectPolicy",
            "policies",
            "tolerance",
        ],
    )?;
    let mut rules = default;
    if let Some(window) = r.seconds(map, path, "stabilizationWindowSeconds")? {
        if window > Duration::from_secs(3600) {
            return Err(r.error(&join(path, "stabilizationWindowSeconds"), "must be ≤ 3600"));
        }
        rules.stabilization_window = window;
    }
    if let Some(select) = map.get("selectPolicy") {
        rules.select_policy = match select.as_str() {
            Some("Max") => SelectPolicy::Max,
            Some("Min") => SelectPolicy::Min,
            Some("Disabled") => SelectPolicy::Disabled,
            _ => return Err(r.error(&join(path, "selectPolicy"), "must be Max, Min or Disabled")),
        };
    }
    if let Some(tolerance) = map.get("tolerance") {
        let t = tolerance
            .as_f64()
            .or_else(|| tolerance.as_str().and_then(|s| s.parse().ok()))
            .filter(|t| *t >= 0.0)
            .ok_or_else(|| r.error(&join(path, "tolerance"), "must be a number ≥ 0"))?;
        rules.tolerance = Some(t);
    }
    if let Some(policies) = map.get("policies") {
        let list = policies
            .as_sequence()
            .ok_or_else(|| r.error(&join(path, "policies"), "must be a list"))?;
        if list.is_empty() {
            return Err(r.error(&join(path, "policies"), "must not be empty"));
        }
        rules.policies = list
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let at = format!("{path}.policies[{i}]");
                let m = r.mapping(p, &at, &["type", "value", "periodSeconds"])?;
                let kind = match m.get("type").and_then(Value::as_str) {
                    Some("Pods") => PolicyType::Pods,
                    Some("Percent") => PolicyType::Percent,
                    _ => return Err(r.error(&join(&at, "type"), "must be Pods or Percent")),
                };
                let value = r
                    .count(m, &at, "value")?
                    .filter(|v| *v > 0)
                    .ok_or_else(|| r.error(&join(&at, "value"), "must be > 0"))?;
                let period = r
                    .seconds(m, &at, "periodSeconds")?
                    .filter(|p| !p.is_zero() && *p <= Duration::from_secs(1800))
                    .ok_or_else(|| r.error(&join(&at, "periodSeconds"), "must be 1..=1800"))?;
                Ok(RatePolicy {
                    kind,
                    value,
                    period,
                })
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(rules)
}

fn kafka_trigger(
    r: &Reader<'_>,
    value: &Value,
    path: &str,
) -> Result<KafkaTrigger, ScaledObjectError> {
    let map = r.mapping(
        value,
        path,
        &[
            "type",
            "name",
            "metadata",
            "authenticationRef",
            "metricType",
            "useCachedMetrics",
        ],
    )?;
    if let Some(kind) = map.get("metricType").and_then(Value::as_str)
        && kind != "AverageValue"
    {
        return Err(r.error(
            &join(path, "metricType"),
            "ebb models the kafka trigger's AverageValue target only",
        ));
    }
    let metadata_path = join(path, "metadata");
    let metadata = r.mapping(
        map.get("metadata")
            .ok_or_else(|| r.error(&metadata_path, "missing"))?,
        &metadata_path,
        &[
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
        ],
    )?;
    // Kubernetes keeps trigger metadata as strings; accept plain numbers and booleans too.
    let text = |key: &str| -> Option<String> {
        metadata.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => String::new(),
        })
    };
    // KEDA's own reading and checks; the connection keys are not required because ebb
    // simulates the trigger without connecting.
    parse_metadata(&text, false).map_err(|e| {
        let at = match e.key {
            Some(key) => join(&metadata_path, key),
            None => metadata_path.clone(),
        };
        r.error(&at, e.message)
    })
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
