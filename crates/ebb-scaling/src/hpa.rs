//! The Kubernetes Horizontal Pod Autoscaler (autoscaling/v2) for one external metric with
//! an `AverageValue` target, the way KEDA drives it: replica proposal with tolerance,
//! stabilization windows, rate policies per direction, min/max.
//!
//! Behaviour follows kubernetes `pkg/controller/podautoscaler` (horizontal.go,
//! replica_calculator.go) and the API defaults in `pkg/apis/autoscaling/v2/defaults.go`;
//! the tests name the rule each pins down. Time is simulated: callers pass `now`.

use std::time::Duration;

/// How a direction picks among its policies (`selectPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectPolicy {
    /// The policy allowing the biggest change (the default).
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// What a rate policy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    /// A number of pods.
    Pods,
    /// A percentage of the replicas at the start of the period.
    Percent,
}

/// One rate policy: at most `value` pods (or percent) of change per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RatePolicy {
    /// Pods or Percent.
    pub kind: PolicyType,
    /// How many pods, or what percentage.
    pub value: u32,
    /// The look-back period (`periodSeconds`).
    pub period: Duration,
}

/// The scaling rules of one direction (`behavior.scaleUp` or `behavior.scaleDown`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingRules {
    /// `stabilizationWindowSeconds`.
    pub stabilization_window: Duration,
    /// `selectPolicy`.
    pub select_policy: SelectPolicy,
    /// `policies`.
    pub policies: Vec<RatePolicy>,
    /// Per-direction `tolerance` (KEP-4951); the controller-wide tolerance when `None`.
    pub tolerance: Option<f64>,
}

/// `spec.behavior`.
#[derive(Debug, Clone, PartialEq)]
pub struct Behavior {
    /// `scaleUp`.
    pub scale_up: ScalingRules,
    /// `scaleDown`.
    pub scale_down: ScalingRules,
}

impl ScalingRules {
    /// The API server's default for `scaleUp`: no window, max of 100 %/15 s and 4 pods/15 s.
    pub fn default_scale_up() -> Self {
        ScalingRules {
            stabilization_window: Duration::ZERO,
            select_policy: SelectPolicy::Max,
            policies: vec![
                RatePolicy {
                    kind: PolicyType::Percent,
                    value: 100,
                    period: Duration::from_secs(15),
                },
                RatePolicy {
                    kind: PolicyType::Pods,
                    value: 4,
                    period: Duration::from_secs(15),
                },
            ],
            tolerance: None,
        }
    }

    /// The API server's default for `scaleDown`: a 300 s window, 100 %/15 s.
    pub fn default_scale_down() -> Self {
        ScalingRules {
            stabilization_window: Duration::from_secs(300),
            select_policy: SelectPolicy::Max,
            policies: vec![RatePolicy {
                kind: PolicyType::Percent,
                value: 100,
                period: Duration::from_secs(15),
            }],
            tolerance: None,
        }
    }

    fn longest_period(&self) -> Duration {
        self.policies
            .iter()
            .map(|p| p.period)
            .max()
            .unwrap_or_default()
    }
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            scale_up: ScalingRules::default_scale_up(),
            scale_down: ScalingRules::default_scale_down(),
        }
    }
}

/// The HPA's spec as far as scaling on one external metric goes.
#[derive(Debug, Clone, PartialEq)]
pub struct HpaSpec {
    /// `minReplicas` (KEDA sets max(1, minReplicaCount)).
    pub min_replicas: u32,
    /// `maxReplicas`.
    pub max_replicas: u32,
    /// The metric's `AverageValue` target (KEDA: the trigger's `lagThreshold`).
    pub target_average_value: f64,
    /// The controller's `--horizontal-pod-autoscaler-tolerance` (0.1).
    pub tolerance: f64,
    /// `spec.behavior`, with API defaults filled in.
    pub behavior: Behavior,
    /// The controller's `--horizontal-pod-autoscaler-sync-period` (15 s).
    pub sync_period: Duration,
}

impl HpaSpec {
    /// A spec with the controller and API defaults.
    pub fn new(min_replicas: u32, max_replicas: u32, target_average_value: f64) -> Self {
        HpaSpec {
            min_replicas,
            max_replicas,
            target_average_value,
            tolerance: 0.1,
            behavior: Behavior::default(),
            sync_period: Duration::from_secs(15),
        }
    }
}

/// Why the HPA chose what it chose, for logs and decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpaReason {
    /// The target has 0 replicas: the HPA does not act (KEDA scales from zero).
    ScalingDisabled,
    /// Within tolerance, stabilized and within limits: the proposal stands.
    DesiredWithinRange,
    /// Held back by the stabilization window.
    Stabilized,
    /// Held back by a rate policy.
    RateLimited,
    /// Clamped to `minReplicas` or `maxReplicas`.
    Clamped,
}

/// The HPA controller's state for one HPA: past recommendations and scale events.
#[derive(Debug, Clone)]
pub struct Hpa {
    spec: HpaSpec,
    recommendations: Vec<(Duration, u32)>,
    scale_up_events: Vec<(Duration, u32)>,
    scale_down_events: Vec<(Duration, u32)>,
}

impl Hpa {
    /// A controller with no history.
    pub fn new(spec: HpaSpec) -> Self {
        Hpa {
            spec,
            recommendations: Vec::new(),
            scale_up_events: Vec::new(),
            scale_down_events: Vec::new(),
        }
    }

    /// The spec.
    pub fn spec(&self) -> &HpaSpec {
        &self.spec
    }

    /// The metric-only proposal (replica_calculator's external per-pod path): keep
    /// `current` when `metric / (target × current)` is within tolerance of 1, else
    /// `ceil(metric / target)`.
    pub fn proposal(&self, current: u32, metric_total: f64) -> u32 {
        let target = self.spec.target_average_value;
        if current == 0 || target <= 0.0 {
            return current;
        }
        let ratio = metric_total / (target * current as f64);
        let behavior = &self.spec.behavior;
        let tolerance = if ratio > 1.0 {
            behavior.scale_up.tolerance.unwrap_or(self.spec.tolerance)
        } else {
            behavior.scale_down.tolerance.unwrap_or(self.spec.tolerance)
        };
        if (1.0 - ratio).abs() <= tolerance {
            current
        } else {
            (metric_total / target).ceil().max(0.0) as u32
        }
    }

    /// One reconcile at simulated time `now`: `current` is the target's replica count,
    /// `metric_total` the external metric summed (KEDA's Kafka scaler: the total lag).
    /// Returns the replica count to set and why.
    pub fn reconcile(
        &mut self,
        now: Duration,
        current: u32,
        metric_total: f64,
    ) -> (u32, HpaReason) {
        if current == 0 && self.spec.min_replicas != 0 {
            return (0, HpaReason::ScalingDisabled);
        }
        if current > self.spec.max_replicas {
            self.record(now, current, self.spec.max_replicas);
            return (self.spec.max_replicas, HpaReason::Clamped);
        }
        if current < self.spec.min_replicas {
            self.record(now, current, self.spec.min_replicas);
            return (self.spec.min_replicas, HpaReason::Clamped);
        }
        let proposal = self.proposal(current, metric_total);
        let stabilized = self.stabilize(now, current, proposal);
        let (desired, limited) = self.limit_rate(now, current, stabilized);
        let reason = if limited {
            if desired == self.spec.min_replicas || desired == self.spec.max_replicas {
                HpaReason::Clamped
            } else {
                HpaReason::RateLimited
            }
        } else if stabilized != proposal {
            HpaReason::Stabilized
        } else {
            HpaReason::DesiredWithinRange
        };
        self.record(now, current, desired);
        (desired, reason)
    }

    /// Upstream's stabilizeRecommendationWithBehaviors: the lowest recommendation within
    /// the scale-up window bounds an increase, the highest within the scale-down window
    /// bounds a decrease; the unstabilized proposal is remembered.
    fn stabilize(&mut self, now: Duration, current: u32, proposal: u32) -> u32 {
        let up_window = self.spec.behavior.scale_up.stabilization_window;
        let down_window = self.spec.behavior.scale_down.stabilization_window;
        let mut up = proposal;
        let mut down = proposal;
        for &(at, recommendation) in &self.recommendations {
            if now.saturating_sub(at) < up_window {
                up = up.min(recommendation);
            }
            if now.saturating_sub(at) < down_window {
                down = down.max(recommendation);
            }
        }
        let keep = up_window.max(down_window);
        self.recommendations
            .retain(|&(at, _)| now.saturating_sub(at) < keep);
        self.recommendations.push((now, proposal));
        current.max(up).min(down)
    }

    /// Upstream's convertDesiredReplicasWithBehaviorRate: limits relative to the replica
    /// count at the start of each policy's period, picked by `selectPolicy`, then
    /// `minReplicas`/`maxReplicas`. Returns the count and whether anything limited it.
    fn limit_rate(&self, now: Duration, current: u32, desired: u32) -> (u32, bool) {
        let (min, max) = (self.spec.min_replicas, self.spec.max_replicas);
        if desired > current {
            let limit = rate_limit(
                &self.spec.behavior.scale_up,
                now,
                current,
                &self.scale_up_events,
                &self.scale_down_events,
                true,
            )
            .max(current);
            let allowed = max.min(limit);
            if desired > allowed {
                (allowed, true)
            } else {
                (desired, false)
            }
        } else if desired < current {
            let limit = rate_limit(
                &self.spec.behavior.scale_down,
                now,
                current,
                &self.scale_up_events,
                &self.scale_down_events,
                false,
            )
            .min(current);
            let allowed = min.max(limit);
            if desired < allowed {
                (allowed, true)
            } else {
                (desired, false)
            }
        } else {
            (desired, false)
        }
    }

    fn record(&mut self, now: Duration, from: u32, to: u32) {
        let up_keep = self.spec.behavior.scale_up.longest_period();
        let down_keep = self.spec.behavior.scale_down.longest_period();
        self.scale_up_events
            .retain(|&(at, _)| now.saturating_sub(at) < up_keep);
        self.scale_down_events
            .retain(|&(at, _)| now.saturating_sub(at) < down_keep);
        if to > from {
            self.scale_up_events.push((now, to - from));
        } else if to < from {
            self.scale_down_events.push((now, from - to));
        }
    }
}

/// Replicas changed by events within `period` before `now` (upstream's
/// getReplicasChangePerPeriod).
fn change_in_period(events: &[(Duration, u32)], now: Duration, period: Duration) -> i64 {
    events
        .iter()
        .filter(|&&(at, _)| now.saturating_sub(at) < period)
        .map(|&(_, n)| n as i64)
        .sum()
}

/// The most (scaling up) or the fewest (scaling down) replicas the rate policies allow
/// now: upstream's calculateScaleUpLimitWithScalingRules and
/// calculateScaleDownLimitWithBehaviors. Each policy counts from the replica count at the
/// start of its period; `selectPolicy` Max takes the biggest change, Min the smallest.
fn rate_limit(
    rules: &ScalingRules,
    now: Duration,
    current: u32,
    ups: &[(Duration, u32)],
    downs: &[(Duration, u32)],
    up: bool,
) -> u32 {
    let pick: fn(i64, i64) -> i64 = match (rules.select_policy, up) {
        (SelectPolicy::Disabled, _) => return current,
        (SelectPolicy::Max, true) | (SelectPolicy::Min, false) => i64::max,
        (SelectPolicy::Min, true) | (SelectPolicy::Max, false) => i64::min,
    };
    let mut result: Option<i64> = None;
    for policy in &rules.policies {
        let start = current as i64 - change_in_period(ups, now, policy.period)
            + change_in_period(downs, now, policy.period);
        let fraction = policy.value as f64 / 100.0;
        let proposed = match (policy.kind, up) {
            (PolicyType::Pods, true) => start + policy.value as i64,
            (PolicyType::Pods, false) => start - policy.value as i64,
            // Rounded up, or a small deployment could never grow.
            (PolicyType::Percent, true) => (start as f64 * (1.0 + fraction)).ceil() as i64,
            // Truncated, as upstream's int32 conversion does.
            (PolicyType::Percent, false) => (start as f64 * (1.0 - fraction)) as i64,
        };
        result = Some(result.map_or(proposed, |r| pick(r, proposed)));
    }
    result.unwrap_or(current as i64).max(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn hpa(min: u32, max: u32, target: f64, behavior: Behavior) -> Hpa {
        Hpa::new(HpaSpec {
            behavior,
            ..HpaSpec::new(min, max, target)
        })
    }

    fn no_limits() -> Behavior {
        let open = ScalingRules {
            stabilization_window: Duration::ZERO,
            select_policy: SelectPolicy::Max,
            policies: vec![RatePolicy {
                kind: PolicyType::Percent,
                value: 10_000,
                period: s(15),
            }],
            tolerance: None,
        };
        Behavior {
            scale_up: open.clone(),
            scale_down: open,
        }
    }

    #[test]
    fn average_value_proposal_is_ceil_of_metric_over_target() {
        // replica_calculator: GetExternalPerPodMetricReplicas.
        let h = hpa(1, 100, 10_000.0, no_limits());
        assert_eq!(h.proposal(1, 35_000.0), 4);
        assert_eq!(h.proposal(10, 1.0), 1);
        assert_eq!(
            h.proposal(3, 0.0),
            0,
            "the proposal may be 0; minReplicas clamps it later"
        );
    }

    #[test]
    fn within_tolerance_keeps_the_current_count() {
        // |1 - ratio| <= 0.1 → no change.
        let h = hpa(1, 100, 100.0, no_limits());
        assert_eq!(h.proposal(10, 1090.0), 10);
        assert_eq!(h.proposal(10, 910.0), 10);
        assert_eq!(h.proposal(10, 1110.0), 12);
        assert_eq!(h.proposal(10, 890.0), 9);
    }

    #[test]
    fn per_direction_tolerance_overrides_the_global_one() {
        // KEP-4951: behavior.scaleUp.tolerance / scaleDown.tolerance.
        let mut behavior = no_limits();
        behavior.scale_up.tolerance = Some(0.0);
        behavior.scale_down.tolerance = Some(0.5);
        let h = hpa(1, 100, 100.0, behavior);
        assert_eq!(h.proposal(10, 1010.0), 11);
        assert_eq!(h.proposal(10, 600.0), 10);
    }

    #[test]
    fn zero_replicas_disables_the_hpa() {
        // horizontal.go: scale.Spec.Replicas == 0 && minReplicas != 0 → autoscaling disabled.
        let mut h = hpa(1, 10, 1.0, no_limits());
        assert_eq!(h.reconcile(s(0), 0, 1e6), (0, HpaReason::ScalingDisabled));
    }

    #[test]
    fn min_and_max_clamp() {
        let mut h = hpa(2, 5, 10.0, no_limits());
        assert_eq!(h.reconcile(s(0), 3, 1000.0).0, 5);
        assert_eq!(h.reconcile(s(15), 5, 0.0).0, 2);
        assert_eq!(
            h.reconcile(s(30), 9, 50.0).0,
            5,
            "above max is brought to max first"
        );
    }

    #[test]
    fn scale_down_uses_the_highest_recommendation_in_the_window() {
        // stabilizeRecommendationWithBehaviors: max over the scale-down window.
        let mut behavior = no_limits();
        behavior.scale_down.stabilization_window = s(60);
        let mut h = hpa(1, 100, 10.0, behavior);
        assert_eq!(h.reconcile(s(0), 10, 100.0).0, 10);
        assert_eq!(
            h.reconcile(s(15), 10, 30.0).0,
            10,
            "10 was recommended 15 s ago"
        );
        assert_eq!(h.reconcile(s(45), 10, 30.0).0, 10);
        assert_eq!(h.reconcile(s(61), 10, 30.0).0, 3, "the 10 left the window");
    }

    #[test]
    fn scale_up_uses_the_lowest_recommendation_in_the_window() {
        let mut behavior = no_limits();
        behavior.scale_up.stabilization_window = s(60);
        let mut h = hpa(1, 100, 10.0, behavior);
        assert_eq!(h.reconcile(s(0), 2, 20.0).0, 2);
        assert_eq!(
            h.reconcile(s(15), 2, 100.0).0,
            2,
            "2 was recommended 15 s ago"
        );
        assert_eq!(h.reconcile(s(30), 2, 80.0).0, 2);
        assert_eq!(
            h.reconcile(s(61), 2, 100.0).0,
            8,
            "lowest left in the window is 8"
        );
    }

    #[test]
    fn default_scale_up_is_the_larger_of_double_and_four_pods_per_15s() {
        // defaults.go: scaleUp {100 %/15 s, 4 pods/15 s, Max}.
        let mut h = hpa(1, 1000, 1.0, Behavior::default());
        assert_eq!(h.reconcile(s(0), 1, 1000.0).0, 5, "max(1 + 4, ceil(1 × 2))");
        assert_eq!(h.reconcile(s(15), 5, 1000.0).0, 10, "max(5 + 4, 5 × 2)");
        assert_eq!(h.reconcile(s(30), 10, 1000.0).0, 20);
    }

    #[test]
    fn rate_limit_counts_from_the_start_of_the_period() {
        // getReplicasChangePerPeriod: changes within periodSeconds are subtracted.
        let mut behavior = no_limits();
        behavior.scale_up.policies = vec![RatePolicy {
            kind: PolicyType::Pods,
            value: 10,
            period: s(60),
        }];
        let mut h = hpa(1, 1000, 1.0, behavior);
        assert_eq!(h.reconcile(s(0), 1, 1000.0), (11, HpaReason::RateLimited));
        assert_eq!(
            h.reconcile(s(15), 11, 1000.0).0,
            11,
            "the 10 pods of this minute are used"
        );
        assert_eq!(h.reconcile(s(60), 11, 1000.0).0, 21, "a new period");
    }

    #[test]
    fn select_policy_min_takes_the_smallest_change() {
        // The reference: scaleUp {10 pods/60 s, 500 %/60 s}, selectPolicy Min.
        let mut behavior = no_limits();
        behavior.scale_up.select_policy = SelectPolicy::Min;
        behavior.scale_up.policies = vec![
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
        ];
        let mut h = hpa(1, 100, 1.0, behavior);
        assert_eq!(h.reconcile(s(0), 1, 1000.0).0, 6, "min(1 + 10, 1 × 6)");
        assert_eq!(h.reconcile(s(60), 6, 1000.0).0, 16, "min(6 + 10, 6 × 6)");
    }

    #[test]
    fn percent_scale_down_truncates() {
        // calculateScaleDownLimitWithBehaviors: int32(start × (1 - v/100)).
        let mut behavior = no_limits();
        behavior.scale_down.policies = vec![RatePolicy {
            kind: PolicyType::Percent,
            value: 50,
            period: s(120),
        }];
        let mut h = hpa(1, 100, 1.0, behavior);
        assert_eq!(h.reconcile(s(0), 7, 0.0).0, 3, "7 × 0.5 = 3.5 → 3");
        assert_eq!(
            h.reconcile(s(60), 3, 0.0).0,
            3,
            "the period's budget is used"
        );
        assert_eq!(
            h.reconcile(s(120), 3, 0.0).0,
            1,
            "3 × 0.5 → 1, then minReplicas 1"
        );
    }

    #[test]
    fn disabled_direction_never_moves() {
        let mut behavior = no_limits();
        behavior.scale_down.select_policy = SelectPolicy::Disabled;
        let mut h = hpa(1, 100, 1.0, behavior);
        assert_eq!(h.reconcile(s(0), 8, 0.0).0, 8);
        assert_eq!(h.reconcile(s(15), 8, 100.0).0, 100);
    }
}
