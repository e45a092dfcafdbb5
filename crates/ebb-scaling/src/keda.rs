//! KEDA on top of the HPA: the `kafka` scaler's metric and activity, and the ScaledObject
//! loop that scales 0 ↔ 1 and hands everything in between to the HPA.
//!
//! Behaviour follows kedacore/keda `pkg/scalers/kafka_scaler.go` and
//! `pkg/scaling/executor/scale_scaledobjects.go`; the tests name the rule each pins down.

use std::time::Duration;

use crate::hpa::{Behavior, Hpa, HpaSpec};

/// `offsetResetPolicy` of the kafka trigger: what a partition with no committed offset
/// counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetResetPolicy {
    /// Lag 1 (0 with `scaleToZeroOnInvalidOffset`): the group would start at the end.
    Latest,
    /// Its whole log-end offset: the group would start at the beginning.
    Earliest,
}

/// The kafka trigger's metadata that shapes the metric (mirrors the YAML keys).
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaTrigger {
    /// `lagThreshold`: the `AverageValue` target per replica (default 10).
    pub lag_threshold: f64,
    /// `activationLagThreshold`: active when the total lag is strictly above it (default 0).
    pub activation_lag_threshold: f64,
    /// `offsetResetPolicy` (default latest).
    pub offset_reset_policy: OffsetResetPolicy,
    /// `allowIdleConsumers`: do not cap the metric at the partition count.
    pub allow_idle_consumers: bool,
    /// `limitToPartitionsWithLag`: cap at the partitions that have lag.
    pub limit_to_partitions_with_lag: bool,
    /// `excludePersistentLag`: a partition whose committed offset did not move since the
    /// previous poll counts 0 for the metric (still counts for activation).
    pub exclude_persistent_lag: bool,
    /// `scaleToZeroOnInvalidOffset`: an uncommitted partition counts 0 under `latest`.
    pub scale_to_zero_on_invalid_offset: bool,
    /// `ensureEvenDistributionOfPartitions`: round up to a factor of the partition count.
    pub ensure_even_distribution_of_partitions: bool,
}

impl Default for KafkaTrigger {
    fn default() -> Self {
        KafkaTrigger {
            lag_threshold: 10.0,
            activation_lag_threshold: 0.0,
            offset_reset_policy: OffsetResetPolicy::Latest,
            allow_idle_consumers: false,
            limit_to_partitions_with_lag: false,
            exclude_persistent_lag: false,
            scale_to_zero_on_invalid_offset: false,
            ensure_even_distribution_of_partitions: false,
        }
    }
}

/// One partition as the scaler reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionOffsets {
    /// Log-end offset (ListOffsets latest).
    pub log_end: f64,
    /// The group's committed offset; `None` when the group never committed.
    pub committed: Option<f64>,
}

/// What the scaler reports at one poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KafkaMetric {
    /// The metric the HPA sees (total lag after the caps).
    pub value: f64,
    /// Total lag including persistent lag, which decides activity.
    pub total_lag: f64,
    /// Total lag > `activationLagThreshold`.
    pub active: bool,
}

/// The kafka scaler: remembers committed offsets between polls for `excludePersistentLag`.
#[derive(Debug, Clone)]
pub struct KafkaScaler {
    trigger: KafkaTrigger,
    previous_committed: Vec<Option<f64>>,
}

impl KafkaScaler {
    /// A scaler with no history.
    pub fn new(trigger: KafkaTrigger) -> Self {
        KafkaScaler {
            trigger,
            previous_committed: Vec::new(),
        }
    }

    /// The trigger.
    pub fn trigger(&self) -> &KafkaTrigger {
        &self.trigger
    }

    /// One poll over every partition of the topic.
    pub fn poll(&mut self, partitions: &[PartitionOffsets]) -> KafkaMetric {
        let t = &self.trigger;
        let mut metric_lag = 0.0;
        let mut total_lag = 0.0;
        let mut with_lag = 0usize;
        for (i, p) in partitions.iter().enumerate() {
            let lag = match p.committed {
                Some(committed) => (p.log_end - committed).max(0.0),
                None => match t.offset_reset_policy {
                    OffsetResetPolicy::Latest if t.scale_to_zero_on_invalid_offset => 0.0,
                    OffsetResetPolicy::Latest => 1.0,
                    OffsetResetPolicy::Earliest => p.log_end,
                },
            };
            total_lag += lag;
            if lag > 0.0 {
                with_lag += 1;
            }
            let persistent = t.exclude_persistent_lag
                && lag > 0.0
                && p.committed.is_some()
                && self.previous_committed.get(i).copied().flatten() == p.committed;
            if !persistent {
                metric_lag += lag;
            }
        }
        self.previous_committed = partitions.iter().map(|p| p.committed).collect();

        let count = partitions.len();
        if !t.allow_idle_consumers
            || t.limit_to_partitions_with_lag
            || t.ensure_even_distribution_of_partitions
        {
            let upper = if t.limit_to_partitions_with_lag {
                with_lag
            } else {
                count
            } as f64;
            if t.lag_threshold > 0.0 && metric_lag / t.lag_threshold > upper {
                metric_lag = upper * t.lag_threshold;
            }
            if t.ensure_even_distribution_of_partitions && count > 0 && t.lag_threshold > 0.0 {
                let needed = (metric_lag / t.lag_threshold).ceil() as usize;
                if let Some(factor) = (1..=count).find(|f| count.is_multiple_of(*f) && *f >= needed)
                {
                    metric_lag = factor as f64 * t.lag_threshold;
                }
            }
        }
        KafkaMetric {
            value: metric_lag,
            total_lag,
            active: total_lag > t.activation_lag_threshold,
        }
    }
}

/// A ScaledObject with one kafka trigger: the parts that decide scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledObjectSpec {
    /// `pollingInterval` (default 30 s).
    pub polling_interval: Duration,
    /// `cooldownPeriod` (default 300 s).
    pub cooldown_period: Duration,
    /// `minReplicaCount` (default 0).
    pub min_replica_count: u32,
    /// `maxReplicaCount` (default 100).
    pub max_replica_count: u32,
    /// The kafka trigger.
    pub trigger: KafkaTrigger,
    /// `advanced.horizontalPodAutoscalerConfig.behavior`, API defaults filled in.
    pub behavior: Behavior,
    /// The HPA controller's sync period (`--horizontal-pod-autoscaler-sync-period`, 15 s);
    /// a cluster setting, not part of the YAML.
    pub hpa_sync_period: Duration,
}

impl Default for ScaledObjectSpec {
    fn default() -> Self {
        ScaledObjectSpec {
            polling_interval: Duration::from_secs(30),
            cooldown_period: Duration::from_secs(300),
            min_replica_count: 0,
            max_replica_count: 100,
            trigger: KafkaTrigger::default(),
            behavior: Behavior::default(),
            hpa_sync_period: Duration::from_secs(15),
        }
    }
}

impl ScaledObjectSpec {
    /// The HPA KEDA generates: `minReplicas = max(1, minReplicaCount)`, the trigger's
    /// threshold as the `AverageValue` target, the behavior passed through.
    pub fn hpa_spec(&self) -> HpaSpec {
        HpaSpec {
            behavior: self.behavior.clone(),
            sync_period: self.hpa_sync_period,
            ..HpaSpec::new(
                self.min_replica_count.max(1),
                self.max_replica_count,
                self.trigger.lag_threshold,
            )
        }
    }
}

/// What KEDA or the HPA decided at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaDecision {
    /// The replica count to set.
    pub replicas: u32,
    /// Who decided and why, for logs.
    pub reason: String,
}

/// KEDA's ScaledObject loop together with the HPA it owns.
#[derive(Debug, Clone)]
pub struct Keda {
    spec: ScaledObjectSpec,
    scaler: KafkaScaler,
    hpa: Hpa,
    last_active: Option<Duration>,
    next_poll: Duration,
    next_sync: Duration,
    /// The metric as of the last read, for charts (the HPA's "current" value).
    pub last_metric: Option<KafkaMetric>,
}

impl Keda {
    /// KEDA and its HPA, both starting their loops at time zero.
    pub fn new(spec: ScaledObjectSpec) -> Self {
        Keda {
            scaler: KafkaScaler::new(spec.trigger.clone()),
            hpa: Hpa::new(spec.hpa_spec()),
            spec,
            last_active: None,
            next_poll: Duration::ZERO,
            next_sync: Duration::ZERO,
            last_metric: None,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &ScaledObjectSpec {
        &self.spec
    }

    /// Advances to `now`. `read` gives the partitions' offsets when a loop needs them (each
    /// loop reads the metric live). Returns a decision when KEDA or the HPA would set a
    /// replica count different from `current`.
    pub fn step(
        &mut self,
        now: Duration,
        current: u32,
        mut read: impl FnMut() -> Vec<PartitionOffsets>,
    ) -> Option<KedaDecision> {
        let mut replicas = current;
        let mut reason = String::new();
        if now >= self.next_poll {
            self.next_poll = now + self.spec.polling_interval;
            let metric = self.scaler.poll(&read());
            self.last_metric = Some(metric);
            if metric.active {
                self.last_active = Some(now);
            }
            let cooled = self
                .last_active
                .is_none_or(|at| now.saturating_sub(at) >= self.spec.cooldown_period);
            if replicas == 0 && metric.active {
                replicas = self.spec.min_replica_count.max(1);
                reason = format!(
                    "KEDA: activated (lag {:.0} > activation threshold {:.0})",
                    metric.total_lag, self.spec.trigger.activation_lag_threshold
                );
            } else if replicas > 0 && !metric.active && self.spec.min_replica_count == 0 && cooled {
                replicas = 0;
                reason = format!(
                    "KEDA: inactive for the cooldown period ({:?})",
                    self.spec.cooldown_period
                );
            } else if replicas < self.spec.min_replica_count {
                replicas = self.spec.min_replica_count;
                reason = "KEDA: below minReplicaCount".into();
            }
        }
        if now >= self.next_sync {
            self.next_sync = now + self.hpa.spec().sync_period;
            if replicas > 0 {
                let metric = self.scaler.poll(&read());
                self.last_metric = Some(metric);
                let (desired, why) = self.hpa.reconcile(now, replicas, metric.value);
                if desired != replicas {
                    reason = format!(
                        "HPA: metric {:.0} / target {:.0} per replica ({why:?})",
                        metric.value, self.spec.trigger.lag_threshold
                    );
                    replicas = desired;
                }
            }
        }
        (replicas != current).then_some(KedaDecision { replicas, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(lags: &[(f64, Option<f64>)]) -> Vec<PartitionOffsets> {
        lags.iter()
            .map(|&(log_end, committed)| PartitionOffsets { log_end, committed })
            .collect()
    }

    #[test]
    fn metric_is_the_total_lag() {
        // kafka_scaler.go: getTotalLag sums log-end minus committed.
        let mut scaler = KafkaScaler::new(KafkaTrigger {
            lag_threshold: 100.0,
            ..Default::default()
        });
        let m = scaler.poll(&parts(&[(150.0, Some(100.0)), (80.0, Some(0.0))]));
        assert_eq!((m.value, m.total_lag, m.active), (130.0, 130.0, true));
    }

    #[test]
    fn no_committed_offset_counts_by_the_reset_policy() {
        // getLagForPartition: latest → 1 (0 with scaleToZeroOnInvalidOffset); earliest → log end.
        let p = parts(&[(500.0, None)]);
        let trigger = KafkaTrigger {
            lag_threshold: 1000.0,
            ..Default::default()
        };
        assert_eq!(KafkaScaler::new(trigger.clone()).poll(&p).total_lag, 1.0);
        let zero = KafkaTrigger {
            scale_to_zero_on_invalid_offset: true,
            ..trigger.clone()
        };
        assert_eq!(KafkaScaler::new(zero).poll(&p).total_lag, 0.0);
        let earliest = KafkaTrigger {
            offset_reset_policy: OffsetResetPolicy::Earliest,
            ..trigger
        };
        assert_eq!(KafkaScaler::new(earliest).poll(&p).total_lag, 500.0);
    }

    #[test]
    fn metric_is_capped_at_partitions_unless_idle_consumers_are_allowed() {
        // Upper bound = partition count × threshold when !allowIdleConsumers.
        let p = parts(&[(10_000.0, Some(0.0)), (0.0, Some(0.0)), (0.0, Some(0.0))]);
        let trigger = KafkaTrigger {
            lag_threshold: 100.0,
            ..Default::default()
        };
        assert_eq!(KafkaScaler::new(trigger.clone()).poll(&p).value, 300.0);
        let with_lag = KafkaTrigger {
            limit_to_partitions_with_lag: true,
            ..trigger.clone()
        };
        assert_eq!(KafkaScaler::new(with_lag).poll(&p).value, 100.0);
        let idle = KafkaTrigger {
            allow_idle_consumers: true,
            ..trigger
        };
        assert_eq!(KafkaScaler::new(idle).poll(&p).value, 10_000.0);
    }

    #[test]
    fn even_distribution_rounds_up_to_a_factor_of_the_partition_count() {
        let p = parts(&[
            (250.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
        ]);
        let trigger = KafkaTrigger {
            lag_threshold: 100.0,
            ensure_even_distribution_of_partitions: true,
            ..Default::default()
        };
        // 250 / 100 → 3 replicas; 3 divides 6.
        assert_eq!(KafkaScaler::new(trigger.clone()).poll(&p).value, 300.0);
        let p5 = &p[..5];
        // 3 does not divide 5; the next factor is 5.
        assert_eq!(KafkaScaler::new(trigger).poll(p5).value, 500.0);
    }

    #[test]
    fn persistent_lag_is_left_out_of_the_metric_but_not_of_activity() {
        // excludePersistentLag: committed offset unchanged since the previous poll.
        let trigger = KafkaTrigger {
            lag_threshold: 10.0,
            exclude_persistent_lag: true,
            allow_idle_consumers: true,
            ..Default::default()
        };
        let mut scaler = KafkaScaler::new(trigger);
        let stuck = parts(&[(100.0, Some(50.0)), (30.0, Some(10.0))]);
        assert_eq!(scaler.poll(&stuck).value, 70.0, "first poll: no history");
        let moved = parts(&[(100.0, Some(50.0)), (40.0, Some(20.0))]);
        let m = scaler.poll(&moved);
        assert_eq!((m.value, m.total_lag, m.active), (20.0, 70.0, true));
    }

    #[test]
    fn activation_is_strictly_above_the_threshold() {
        let trigger = KafkaTrigger {
            activation_lag_threshold: 5.0,
            ..Default::default()
        };
        assert!(
            !KafkaScaler::new(trigger.clone())
                .poll(&parts(&[(5.0, Some(0.0))]))
                .active
        );
        assert!(
            KafkaScaler::new(trigger)
                .poll(&parts(&[(6.0, Some(0.0))]))
                .active
        );
    }

    fn lag(total: f64) -> impl FnMut() -> Vec<PartitionOffsets> {
        move || parts(&[(total, Some(0.0))])
    }

    #[test]
    fn keda_activates_from_zero_and_scales_to_zero_after_the_cooldown() {
        // executor: scale from zero when active; to zero when inactive past cooldownPeriod.
        let spec = ScaledObjectSpec {
            polling_interval: Duration::from_secs(30),
            cooldown_period: Duration::from_secs(300),
            trigger: KafkaTrigger {
                lag_threshold: 100.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut keda = Keda::new(spec);
        let s = Duration::from_secs;
        assert_eq!(keda.step(s(0), 0, lag(0.0)), None);
        let up = keda.step(s(30), 0, lag(50.0)).expect("activates");
        assert_eq!(up.replicas, 1);
        assert!(up.reason.starts_with("KEDA: activated"));
        // Lag gone at 60 s; the last active poll was at 30 s.
        for t in (60..330).step_by(15) {
            assert_eq!(
                keda.step(s(t), 1, lag(0.0)),
                None,
                "at {t}s the HPA keeps minReplicas 1"
            );
        }
        let down = keda.step(s(330), 1, lag(0.0)).expect("cooldown over");
        assert_eq!(down.replicas, 0);
    }

    #[test]
    fn between_one_and_max_the_hpa_decides_at_its_sync_period() {
        let spec = ScaledObjectSpec {
            trigger: KafkaTrigger {
                lag_threshold: 100.0,
                allow_idle_consumers: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut keda = Keda::new(spec);
        let s = Duration::from_secs;
        let d = keda.step(s(0), 1, lag(1000.0)).expect("HPA scales up");
        // Default behavior: max(1 + 4, 1 × 2) = 5.
        assert_eq!(d.replicas, 5);
        assert!(d.reason.starts_with("HPA:"));
        assert_eq!(
            keda.step(s(10), 5, lag(1000.0)),
            None,
            "next HPA sync is at 15 s"
        );
        assert_eq!(keda.step(s(15), 5, lag(1000.0)).unwrap().replicas, 10);
    }
}
