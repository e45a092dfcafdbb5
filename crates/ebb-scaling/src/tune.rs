//! `ebb tune`: a grid search over ScaledObject parameters for the fewest replica-seconds
//! that keep message time within the SLA without reversals, by simulating each candidate.

use std::time::Duration;

use crate::hpa::{PolicyType, RatePolicy, ScalingRules, SelectPolicy};
use crate::keda::ScaledObjectSpec;
use crate::policy::KedaLag;
use crate::profile::RateProfile;
use crate::sim::{OrderBy, SimConfig, Summary, simulate};

/// One candidate and how it did.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The ScaledObject tried.
    pub spec: ScaledObjectSpec,
    /// Its simulated summary.
    pub summary: Summary,
}

impl Candidate {
    /// Meets the SLA for the whole run, with no reversals.
    pub fn acceptable(&self) -> bool {
        self.summary.sla_violation_s == 0.0 && self.summary.reversals == 0
    }

    /// Ordering key: acceptable first, then fewest SLA-violation seconds, reversals and
    /// replica-seconds.
    fn key(&self) -> (bool, u64, u32, u64) {
        let s = &self.summary;
        (
            !self.acceptable(),
            s.sla_violation_s as u64,
            s.reversals,
            s.replica_seconds as u64,
        )
    }
}

/// The outcome of a search.
#[derive(Debug, Clone)]
pub struct TuneResult {
    /// The best candidate.
    pub best: Candidate,
    /// How many candidates were simulated.
    pub tried: usize,
    /// How many met the SLA without reversals.
    pub acceptable: usize,
}

/// The candidates: `base` with its tunable fields varied over a grid.
pub fn grid(base: &ScaledObjectSpec) -> Vec<ScaledObjectSpec> {
    let s = Duration::from_secs;
    let up_policies: Vec<(SelectPolicy, Vec<RatePolicy>)> = vec![
        (SelectPolicy::Max, ScalingRules::default_scale_up().policies),
        (
            SelectPolicy::Max,
            vec![RatePolicy {
                kind: PolicyType::Percent,
                value: 300,
                period: s(15),
            }],
        ),
        (
            SelectPolicy::Max,
            vec![RatePolicy {
                kind: PolicyType::Pods,
                value: 10,
                period: s(60),
            }],
        ),
        (
            SelectPolicy::Min,
            vec![
                RatePolicy {
                    kind: PolicyType::Pods,
                    value: 10,
                    period: s(60),
                },
                RatePolicy {
                    kind: PolicyType::Percent,
                    value: 500,
                    period: s(60),
                },
            ],
        ),
    ];
    let down_policies: Vec<Vec<RatePolicy>> = vec![
        vec![RatePolicy {
            kind: PolicyType::Percent,
            value: 100,
            period: s(15),
        }],
        vec![RatePolicy {
            kind: PolicyType::Percent,
            value: 50,
            period: s(120),
        }],
        vec![RatePolicy {
            kind: PolicyType::Pods,
            value: 2,
            period: s(60),
        }],
    ];
    let mut out = Vec::new();
    for lag_threshold in [
        100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    ] {
        for polling in [5, 15, 30] {
            for up_window in [0, 30, 60] {
                for (select, policies) in &up_policies {
                    for down_window in [60, 120, 300] {
                        for down in &down_policies {
                            for cooldown in [60, 300] {
                                let mut spec = base.clone();
                                spec.trigger.lag_threshold = lag_threshold;
                                spec.polling_interval = s(polling);
                                spec.cooldown_period = s(cooldown);
                                spec.behavior.scale_up = ScalingRules {
                                    stabilization_window: s(up_window),
                                    select_policy: *select,
                                    policies: policies.clone(),
                                    tolerance: None,
                                };
                                spec.behavior.scale_down = ScalingRules {
                                    stabilization_window: s(down_window),
                                    select_policy: SelectPolicy::Max,
                                    policies: down.clone(),
                                    tolerance: None,
                                };
                                out.push(spec);
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Simulates every candidate (on `threads` threads) and returns the best.
pub fn tune(
    config: &SimConfig,
    traffic: &RateProfile,
    candidates: Vec<ScaledObjectSpec>,
    threads: usize,
) -> Option<TuneResult> {
    let tried = candidates.len();
    let threads = threads.max(1);
    let chunk = tried.div_ceil(threads).max(1);
    let results: Vec<Candidate> = std::thread::scope(|scope| {
        let handles: Vec<_> = candidates
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|spec| {
                            let summary =
                                simulate(config, traffic, &mut KedaLag::new(spec.clone())).summary;
                            Candidate {
                                spec: spec.clone(),
                                summary,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let acceptable = results.iter().filter(|c| c.acceptable()).count();
    let best = results.into_iter().min_by_key(Candidate::key)?;
    Some(TuneResult {
        best,
        tried,
        acceptable,
    })
}

/// A ready-to-apply ScaledObject for `spec`, scaling the Deployment `name`. KEDA takes the
/// brokers from the Deployment's container env (`bootstrapServersFromEnv`): it expands no
/// `${...}` placeholders, and a literal one fails with "missing port in address".
pub fn scaled_object_yaml(spec: &ScaledObjectSpec, name: &str, topic: &str, group: &str) -> String {
    let t = &spec.trigger;
    format!(
        concat!(
            "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata:\n  name: {name}\nspec:\n",
            "  scaleTargetRef:\n    name: {name}\n  pollingInterval: {polling}\n  cooldownPeriod: {cooldown}\n",
            "  minReplicaCount: {min}\n  maxReplicaCount: {max}\n  advanced:\n    horizontalPodAutoscalerConfig:\n",
            "      behavior:\n{behavior}",
            "  triggers:\n    - type: kafka\n      metadata:\n        bootstrapServersFromEnv: KAFKA_BOOTSTRAP_SERVERS\n",
            "        consumerGroup: {group}\n        topic: {topic}\n        lagThreshold: \"{lag}\"\n",
            "        activationLagThreshold: \"{activation}\"\n        offsetResetPolicy: {reset}\n",
            "        allowIdleConsumers: \"{idle}\"\n{flags}"
        ),
        name = name,
        polling = spec.polling_interval.as_secs(),
        cooldown = spec.cooldown_period.as_secs(),
        min = spec.min_replica_count,
        max = spec.max_replica_count,
        behavior = behavior_yaml(spec, 8),
        group = group,
        topic = topic,
        lag = t.lag_threshold,
        activation = t.activation_lag_threshold,
        reset = offset_reset_policy(spec),
        idle = t.allow_idle_consumers,
        flags = trigger_flags_yaml(t),
    )
}

/// The trigger settings beyond those every ScaledObject prints, when they differ from
/// KEDA's defaults: the candidate was simulated with them, so the output must carry them.
fn trigger_flags_yaml(t: &crate::keda::KafkaTrigger) -> String {
    let mut out = String::new();
    for (key, on) in [
        ("excludePersistentLag", t.exclude_persistent_lag),
        (
            "scaleToZeroOnInvalidOffset",
            t.scale_to_zero_on_invalid_offset,
        ),
        ("limitToPartitionsWithLag", t.limit_to_partitions_with_lag),
        (
            "ensureEvenDistributionOfPartitions",
            t.ensure_even_distribution_of_partitions,
        ),
    ] {
        if on {
            out.push_str(&format!("        {key}: \"true\"\n"));
        }
    }
    if let Some(ranges) = &t.partition_limitation {
        let list: Vec<String> = ranges
            .iter()
            .map(|r| {
                if r.start() == r.end() {
                    r.start().to_string()
                } else {
                    format!("{}-{}", r.start(), r.end())
                }
            })
            .collect();
        out.push_str(&format!(
            "        partitionLimitation: \"{}\"\n",
            list.join(",")
        ));
    }
    out
}

/// The same configuration as values for the Helm chart `deploy/helm/ebb` in its keda-lag
/// mode, to pass with `helm install -f`; with `order_by` (the scenario's service model)
/// in key order, the consumers are set to it too, since the tuning assumed their capacity.
pub fn helm_values_yaml(
    spec: &ScaledObjectSpec,
    topic: &str,
    group: &str,
    order_by: OrderBy,
) -> String {
    let t = &spec.trigger;
    let consumer = match order_by {
        OrderBy::Partition => String::new(),
        OrderBy::Key { lanes } => format!("consumer:\n  ordering: key\n  keyLanes: {lanes}\n"),
    };
    let values = format!(
        concat!(
            "kafka:\n  topic: {topic}\n  consumerGroup: {group}\n",
            "scaling:\n  mode: keda-lag\n  minReplicaCount: {min}\n  maxReplicaCount: {max}\n",
            "  pollingInterval: {polling}\n  cooldownPeriod: {cooldown}\n",
            "  kedaLag:\n    lagThreshold: \"{lag}\"\n    activationLagThreshold: \"{activation}\"\n",
            "    offsetResetPolicy: {reset}\n    allowIdleConsumers: {idle}\n",
            "    excludePersistentLag: {persistent}\n    scaleToZeroOnInvalidOffset: {zero}\n",
            "    limitToPartitionsWithLag: {with_lag}\n",
            "  behavior:\n{behavior}"
        ),
        topic = topic,
        group = group,
        min = spec.min_replica_count,
        max = spec.max_replica_count,
        polling = spec.polling_interval.as_secs(),
        cooldown = spec.cooldown_period.as_secs(),
        lag = t.lag_threshold,
        activation = t.activation_lag_threshold,
        reset = offset_reset_policy(spec),
        idle = t.allow_idle_consumers,
        persistent = t.exclude_persistent_lag,
        zero = t.scale_to_zero_on_invalid_offset,
        with_lag = t.limit_to_partitions_with_lag,
        behavior = behavior_yaml(spec, 4),
    );
    values + &consumer
}

fn offset_reset_policy(spec: &ScaledObjectSpec) -> &'static str {
    match spec.trigger.offset_reset_policy {
        crate::keda::OffsetResetPolicy::Latest => "latest",
        crate::keda::OffsetResetPolicy::Earliest => "earliest",
    }
}

/// An HPA `behavior` block (scaleUp and scaleDown), each line indented by `indent` spaces.
fn behavior_yaml(spec: &ScaledObjectSpec, indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    for (direction, r) in [
        ("scaleUp", &spec.behavior.scale_up),
        ("scaleDown", &spec.behavior.scale_down),
    ] {
        out.push_str(&format!(
            "{pad}{direction}:\n{pad}  stabilizationWindowSeconds: {}\n{pad}  selectPolicy: {:?}\n{pad}  policies:\n",
            r.stabilization_window.as_secs(),
            r.select_policy
        ));
        for p in &r.policies {
            out.push_str(&format!(
                "{pad}    - type: {:?}\n{pad}      value: {}\n{pad}      periodSeconds: {}\n",
                p.kind,
                p.value,
                p.period.as_secs()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaledobject::parse_scaled_object;
    use crate::sim::{Capacity, RebalanceKind, ServiceModel};

    #[test]
    fn the_grid_has_thousands_of_distinct_candidates() {
        let g = grid(&ScaledObjectSpec::default());
        assert!(g.len() >= 1000, "{}", g.len());
        assert_ne!(g[0], g[1]);
    }

    #[test]
    fn the_yaml_round_trips_through_the_parser() {
        let mut spec = grid(&ScaledObjectSpec::default())[1234].clone();
        spec.max_replica_count = 40;
        let yaml = scaled_object_yaml(&spec, "trade-tx-consumer", "trade-tx", "tx-trade-workers");
        let back =
            parse_scaled_object(&yaml, "tuned.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, spec);
        assert!(
            !yaml.contains("${"),
            "KEDA expands no placeholders, so none may be printed:\n{yaml}"
        );
    }

    #[test]
    fn the_yaml_keeps_the_trigger_settings_the_candidate_was_simulated_with() {
        let mut spec = grid(&ScaledObjectSpec::default())[7].clone();
        spec.trigger.exclude_persistent_lag = true;
        spec.trigger.scale_to_zero_on_invalid_offset = true;
        spec.trigger.ensure_even_distribution_of_partitions = true;
        spec.trigger.partition_limitation = Some(vec![0..=3, 6..=6]);
        let yaml = scaled_object_yaml(&spec, "c", "t", "g");
        let back =
            parse_scaled_object(&yaml, "tuned.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, spec);
        spec.trigger.ensure_even_distribution_of_partitions = false;
        spec.trigger.limit_to_partitions_with_lag = true;
        let yaml = scaled_object_yaml(&spec, "c", "t", "g");
        assert_eq!(parse_scaled_object(&yaml, "tuned.yaml").unwrap(), spec);
    }

    #[test]
    fn the_helm_values_carry_the_same_configuration() {
        let spec = grid(&ScaledObjectSpec::default())[1234].clone();
        let values: serde_json::Value = serde_saphyr::from_str(&helm_values_yaml(
            &spec,
            "orders",
            "order-workers",
            OrderBy::Partition,
        ))
        .unwrap();
        let scaling = &values["scaling"];
        assert_eq!(values["kafka"]["topic"].as_str(), Some("orders"));
        assert_eq!(
            values["kafka"]["consumerGroup"].as_str(),
            Some("order-workers")
        );
        assert_eq!(scaling["mode"].as_str(), Some("keda-lag"));
        assert_eq!(
            scaling["pollingInterval"].as_u64(),
            Some(spec.polling_interval.as_secs())
        );
        assert_eq!(
            scaling["kedaLag"]["lagThreshold"].as_str(),
            Some(spec.trigger.lag_threshold.to_string().as_str())
        );
        let up = &scaling["behavior"]["scaleUp"];
        assert_eq!(
            up["stabilizationWindowSeconds"].as_u64(),
            Some(spec.behavior.scale_up.stabilization_window.as_secs())
        );
        assert_eq!(
            up["policies"].as_array().map(Vec::len),
            Some(spec.behavior.scale_up.policies.len())
        );
        assert!(
            values["consumer"].is_null(),
            "partition order is the chart's default"
        );
        // Tuned for consumers in key order: the values set them so.
        let keyed: serde_json::Value = serde_saphyr::from_str(&helm_values_yaml(
            &spec,
            "orders",
            "order-workers",
            OrderBy::Key { lanes: 8 },
        ))
        .unwrap();
        assert_eq!(keyed["consumer"]["ordering"].as_str(), Some("key"));
        assert_eq!(keyed["consumer"]["keyLanes"].as_u64(), Some(8));
        assert_eq!(keyed["scaling"], values["scaling"]);
    }

    #[test]
    fn tuning_finds_a_config_that_meets_the_sla() {
        let config = SimConfig {
            duration: Duration::from_secs(1200),
            step: Duration::from_secs(1),
            partitions: 20,
            service: ServiceModel {
                capacity: Capacity::PerReplica(100.0),
                pod_start_delay: Duration::from_secs(10),
                ramp_up: Duration::ZERO,
                rebalance: RebalanceKind::Cooperative,
                rebalance_pause: Duration::from_secs(5),
                pods_per_node: 0,
                node_start_delay: Duration::ZERO,
            },
            sla: Duration::from_secs(120),
            initial_lag: 0.0,
            initial_replicas: 0,
            reversal_window: Duration::from_secs(300),
        };
        let traffic: RateProfile = "200@5m,800@10m,0@5m".parse().unwrap();
        let candidates: Vec<_> = grid(&ScaledObjectSpec::default())
            .into_iter()
            .step_by(37)
            .collect();
        let result = tune(&config, &traffic, candidates, 2).unwrap();
        assert!(result.best.acceptable(), "{:?}", result.best.summary);
        assert!(result.acceptable >= 1);
    }
}
