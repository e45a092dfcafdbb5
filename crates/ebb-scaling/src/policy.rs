//! Scaling policies behind one trait, called with what can be measured from Kafka: by the
//! simulator with simulated numbers and by the local supervisor with live ones.
//!
//! - [`KedaLag`]: KEDA's kafka scaler and the HPA it drives ([`crate::keda`]).
//! - [`EbbRate`]: ebb's own: size for the arrival rate plus draining the backlog in a target
//!   time, from a known per-replica capacity; up at once, down only after a quiet window.
//!
//! Each policy also explains its count ([`Explanation`]): the inputs and arithmetic of its
//! last evaluation and the cap that bound it, so a supervisor can export them and a
//! dashboard can say why it scaled.

use std::collections::VecDeque;
use std::time::Duration;

use crate::hpa::Hpa;
use crate::keda::{Keda, PartitionOffsets, ScaledObjectSpec};

/// What a policy sees at one instant.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// Time since the start.
    pub now: Duration,
    /// Every partition's offsets, element `i` being partition `i`.
    pub partitions: &'a [PartitionOffsets],
    /// Messages per second arriving, from log-end offsets since the previous observation.
    pub arrival_rate: f64,
    /// Replicas that exist (the Deployment's spec.replicas).
    pub current_replicas: u32,
    /// Replicas in the group and processing.
    pub ready_replicas: u32,
}

impl Observation<'_> {
    /// Total lag (log-end minus committed, uncommitted partitions counting from 0).
    pub fn total_lag(&self) -> f64 {
        self.partitions
            .iter()
            .map(|p| (p.log_end - p.committed.unwrap_or(0.0)).max(0.0))
            .sum()
    }
}

/// A decision to set the replica count, with the reason to log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The replica count to set.
    pub replicas: u32,
    /// Why, in words.
    pub reason: String,
}

/// A scaling policy.
pub trait Policy {
    /// Its name, as `--policy` spells it.
    fn name(&self) -> &'static str;
    /// Called as often as the caller likes (the simulator: every step); keeps its own
    /// timing and returns a decision only when the replica count should change.
    fn decide(&mut self, observation: &Observation<'_>) -> Option<Decision>;
    /// The lag this policy aims at with `replicas` running, for charts.
    fn lag_target(&self, replicas: u32) -> f64;
    /// Why it asks for what it asks for, as of its last evaluation; `None` before the first
    /// (or for a policy that does not explain itself).
    fn explain(&self) -> Option<Explanation> {
        None
    }
}

/// A cap on the replica count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The topic's partitions: a replica beyond them would own none and idle.
    Partitions(u32),
    /// The policy's most replicas (`--max-replicas`, or the ScaledObject's `maxReplicaCount`).
    MaxReplicas(u32),
}

impl Limit {
    /// The most replicas it allows.
    pub fn replicas(self) -> u32 {
        match self {
            Limit::Partitions(n) | Limit::MaxReplicas(n) => n,
        }
    }

    /// Its name in metrics' `limit` label.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Partitions(_) => "partitions",
            Limit::MaxReplicas(_) => "max_replicas",
        }
    }

    /// In words, e.g. "12 partitions: at most 12 workers".
    pub fn describe(self) -> String {
        let plural =
            |n: u32, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let workers = plural(self.replicas(), "worker", "workers");
        match self {
            Limit::Partitions(n) => {
                format!(
                    "{}: at most {workers}",
                    plural(n, "partition", "partitions")
                )
            }
            Limit::MaxReplicas(n) => format!("max replicas {n}: at most {workers}"),
        }
    }

    /// The cap that holds `uncapped` down, if any: the lower of the partitions (when they
    /// cap the count at all) and the maximum; partitions win a tie, being the reason no
    /// maximum could help.
    pub fn binding(uncapped: u32, partitions: Option<u32>, max_replicas: u32) -> Option<Limit> {
        let lowest = match partitions {
            Some(p) if p <= max_replicas => Limit::Partitions(p),
            _ => Limit::MaxReplicas(max_replicas),
        };
        (uncapped > lowest.replicas()).then_some(lowest)
    }
}

/// ebb-rate's inputs: desired = ceil((arrival rate × headroom + backlog ÷ target drain) ÷
/// capacity per replica).
#[derive(Debug, Clone, PartialEq)]
pub struct EbbRateInputs {
    /// The (smoothed) arrival rate it sizes for, msg/s.
    pub arrival_rate: f64,
    /// The multiplier on the arrival rate (room for bursts).
    pub headroom: f64,
    /// The lag to drain, records.
    pub backlog: f64,
    /// Drain the backlog within this time.
    pub target_drain: Duration,
    /// Messages per second one replica handles.
    pub capacity_per_replica: f64,
}

impl EbbRateInputs {
    /// The rate to handle: arrivals with headroom plus the backlog over the drain time.
    pub fn needed_rate(&self) -> f64 {
        self.arrival_rate * self.headroom + self.backlog / self.target_drain.as_secs_f64().max(1.0)
    }
}

/// keda-lag's inputs: the kafka scaler's metric, the HPA's target per replica and what the
/// HPA made of them.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaLagInputs {
    /// The metric the HPA reads: the total lag after KEDA's partition cap.
    pub lag_metric: f64,
    /// `lagThreshold`: the HPA's `AverageValue` target per replica.
    pub lag_threshold: f64,
    /// The HPA's raw recommendation: ceil(metric ÷ target), or the current count within
    /// the tolerance.
    pub recommended_replicas: u32,
    /// The count KEDA and the HPA set: the recommendation after the stabilization windows,
    /// rate policies and min/max.
    pub stabilized_replicas: u32,
}

/// A policy's inputs, by policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// [`EbbRate`]'s.
    EbbRate(EbbRateInputs),
    /// [`KedaLag`]'s.
    KedaLag(KedaLagInputs),
}

/// Why a policy asks for its count: its inputs at the last evaluation, the count they call
/// for and the cap that holds it down.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The replicas the inputs call for before the partition and maximum caps.
    pub uncapped_replicas: u32,
    /// The topic's partitions when they cap the count (keda-lag with
    /// `allowIdleConsumers` lets the lag ask for more).
    pub partitions: Option<u32>,
    /// The policy's most replicas.
    pub max_replicas: u32,
    /// The policy's inputs.
    pub inputs: Inputs,
}

impl Explanation {
    /// The cap that holds the count below what the inputs call for, if any.
    pub fn binding_limit(&self) -> Option<Limit> {
        Limit::binding(self.uncapped_replicas, self.partitions, self.max_replicas)
    }

    /// The arithmetic in words, e.g. "620 msg/s × 1.1 + backlog 1,200 ÷ 30 s = 722 msg/s
    /// ÷ 400 msg/s per worker → 2", with the binding cap when one holds it down.
    pub fn describe(&self) -> String {
        let mut text = match &self.inputs {
            Inputs::EbbRate(i) => format!(
                "{} msg/s × {:.1} + backlog {} ÷ {} s = {} msg/s ÷ {} msg/s per worker → {}",
                rate(i.arrival_rate),
                i.headroom,
                thousands(i.backlog),
                thousands(i.target_drain.as_secs_f64()),
                rate(i.needed_rate()),
                thousands(i.capacity_per_replica),
                self.uncapped_replicas
            ),
            Inputs::KedaLag(i) => {
                let mut text = format!(
                    "lag metric {} ÷ lagThreshold {} per worker → HPA recommends {}",
                    thousands(i.lag_metric),
                    thousands(i.lag_threshold),
                    i.recommended_replicas,
                );
                if i.stabilized_replicas != i.recommended_replicas {
                    text += &format!(
                        ", its stabilization and rate limits give {}",
                        i.stabilized_replicas
                    );
                }
                text
            }
        };
        if let Some(limit) = self.binding_limit() {
            text += &format!(
                " (the inputs call for {}; {})",
                self.uncapped_replicas,
                limit.describe()
            );
        }
        text
    }

    /// Why the count went from `from` to `to`, given this explanation of the evaluation
    /// that changed it.
    pub fn reason(&self, from: u32, to: u32) -> String {
        match &self.inputs {
            Inputs::EbbRate(_) if to == 0 => {
                "ebb-rate: idle (no arrivals, no lag) for the idle cooldown".into()
            }
            Inputs::EbbRate(_) if to < from => format!(
                "ebb-rate: {}; down in steps, to the highest need over the scale-down window",
                self.describe()
            ),
            Inputs::EbbRate(_) => format!("ebb-rate: {}", self.describe()),
            Inputs::KedaLag(_) if from == 0 => format!(
                "KEDA activates (lag above activationLagThreshold); {}",
                self.describe()
            ),
            Inputs::KedaLag(_) if to == 0 => "KEDA: no lag for the cooldown period, to zero".into(),
            Inputs::KedaLag(_) => format!("keda-lag: {}", self.describe()),
        }
    }
}

/// A rate in msg/s, with decimals below 10 so that a trickle (which still needs a worker)
/// does not read as 0.
fn rate(x: f64) -> String {
    match x.abs() {
        0.0 => "0".into(),
        small if small < 1.0 => format!("{x:.2}"),
        small if small < 10.0 => format!("{x:.1}"),
        _ => thousands(x),
    }
}

/// `x` rounded, with thousands separated by commas.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if x < -0.5 { format!("-{out}") } else { out }
}

/// KEDA + HPA on a ScaledObject.
#[derive(Debug, Clone)]
pub struct KedaLag {
    keda: Keda,
    /// An HPA with the same spec, only for its raw proposal (which keeps no state): KEDA's
    /// own HPA does not show its intermediate steps.
    proposer: Hpa,
    explanation: Option<Explanation>,
}

impl KedaLag {
    /// The policy for `spec`.
    pub fn new(spec: ScaledObjectSpec) -> Self {
        KedaLag {
            proposer: Hpa::new(spec.hpa_spec()),
            keda: Keda::new(spec),
            explanation: None,
        }
    }
}

impl Policy for KedaLag {
    fn name(&self) -> &'static str {
        "keda-lag"
    }

    fn decide(&mut self, o: &Observation<'_>) -> Option<Decision> {
        let decision = self
            .keda
            .step(o.now, o.current_replicas, || o.partitions.to_vec())
            .map(|d| Decision {
                replicas: d.replicas,
                reason: d.reason,
            });
        if let Some(metric) = self.keda.last_metric {
            let spec = self.keda.spec();
            let threshold = spec.trigger.lag_threshold;
            let per_threshold = |lag: f64| {
                if threshold > 0.0 {
                    (lag / threshold).ceil().max(0.0) as u32
                } else {
                    0
                }
            };
            // At zero replicas the HPA is off and KEDA activates; the raw ratio says what
            // the HPA will ask for once it runs.
            let recommended = if o.current_replicas == 0 {
                per_threshold(metric.value)
            } else {
                self.proposer.proposal(o.current_replicas, metric.value)
            };
            self.explanation = Some(Explanation {
                uncapped_replicas: per_threshold(metric.total_lag),
                // KEDA caps unless idle consumers are allowed, and with even distribution
                // even then; `partitionLimitation` leaves the other partitions uncounted.
                partitions: (!spec.trigger.allow_idle_consumers
                    || spec.trigger.ensure_even_distribution_of_partitions)
                    .then(|| {
                        (0..o.partitions.len())
                            .filter(|&i| {
                                i32::try_from(i).is_ok_and(|id| spec.trigger.counts_partition(id))
                            })
                            .count() as u32
                    }),
                max_replicas: spec.max_replica_count,
                inputs: Inputs::KedaLag(KedaLagInputs {
                    lag_metric: metric.value,
                    lag_threshold: threshold,
                    recommended_replicas: recommended,
                    stabilized_replicas: decision
                        .as_ref()
                        .map_or(o.current_replicas, |d| d.replicas),
                }),
            });
        }
        decision
    }

    fn lag_target(&self, replicas: u32) -> f64 {
        self.keda.spec().trigger.lag_threshold * replicas.max(1) as f64
    }

    fn explain(&self) -> Option<Explanation> {
        self.explanation.clone()
    }
}

/// The knobs of [`EbbRate`].
#[derive(Debug, Clone, PartialEq)]
pub struct EbbRateConfig {
    /// Messages per second one replica handles at full speed.
    pub capacity_per_replica: f64,
    /// Drain the backlog within this time, on top of keeping up with arrivals.
    pub target_drain: Duration,
    /// How often to decide.
    pub interval: Duration,
    /// Half-life of the arrival-rate average (smooths noise; 0 = no smoothing).
    pub smoothing: Duration,
    /// Size for this many times the smoothed arrival rate (room for bursts).
    pub headroom: f64,
    /// Scale down only to the highest need seen over this window (hysteresis).
    pub scale_down_window: Duration,
    /// After a scale-up, wait this long before the next one, so the new replicas (starting,
    /// joining, ramping up) show what they add before more are asked for.
    pub up_settle: Duration,
    /// Remove at most this share of the replicas per decision, so each step's rebalance
    /// moves few partitions.
    pub max_down_step: f64,
    /// Go to the minimum (zero by default) after no arrivals and no lag for this long,
    /// without waiting for the scale-down window.
    pub idle_cooldown: Duration,
    /// Fewest replicas (0 allows scaling to zero).
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Partitions of the topic: replicas beyond it would idle.
    pub partitions: u32,
}

impl EbbRateConfig {
    /// Defaults for a replica capacity, a replica cap and a partition count.
    pub fn new(capacity_per_replica: f64, max_replicas: u32, partitions: u32) -> Self {
        EbbRateConfig {
            capacity_per_replica,
            target_drain: Duration::from_secs(300),
            interval: Duration::from_secs(10),
            smoothing: Duration::ZERO,
            headroom: 1.1,
            scale_down_window: Duration::from_secs(300),
            up_settle: Duration::from_secs(60),
            max_down_step: 0.25,
            idle_cooldown: Duration::from_secs(60),
            min_replicas: 0,
            max_replicas,
            partitions,
        }
    }
}

/// ebb's rate-aware policy: desired = ceil((smoothed arrival rate × headroom + backlog ÷
/// target drain time) ÷ per-replica capacity), bounded by partitions and the maximum;
/// increases apply at once, decreases only to the highest need of the scale-down window.
#[derive(Debug, Clone)]
pub struct EbbRate {
    config: EbbRateConfig,
    smoothed_rate: Option<f64>,
    last_decided: Option<Duration>,
    needs: VecDeque<(Duration, u32)>,
    idle_since: Option<Duration>,
    last_up: Option<Duration>,
    explanation: Option<Explanation>,
}

impl EbbRate {
    /// The policy with `config`.
    pub fn new(config: EbbRateConfig) -> Self {
        EbbRate {
            config,
            smoothed_rate: None,
            last_decided: None,
            needs: VecDeque::new(),
            idle_since: None,
            last_up: None,
            explanation: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EbbRateConfig {
        &self.config
    }
}

impl Policy for EbbRate {
    fn name(&self) -> &'static str {
        "ebb-rate"
    }

    fn decide(&mut self, o: &Observation<'_>) -> Option<Decision> {
        let c = &self.config;
        if let Some(last) = self.last_decided
            && o.now < last + c.interval
        {
            return None;
        }
        let elapsed = self.last_decided.map_or(c.interval, |last| o.now - last);
        self.last_decided = Some(o.now);
        let rate = match (self.smoothed_rate, c.smoothing.is_zero()) {
            (Some(previous), false) => {
                let keep = 0.5f64.powf(elapsed.as_secs_f64() / c.smoothing.as_secs_f64());
                previous * keep + o.arrival_rate * (1.0 - keep)
            }
            _ => o.arrival_rate,
        };
        self.smoothed_rate = Some(rate);
        let lag = o.total_lag();

        let ceiling = c.max_replicas.min(c.partitions.max(1));
        let inputs = EbbRateInputs {
            arrival_rate: rate,
            headroom: c.headroom,
            backlog: lag,
            target_drain: c.target_drain,
            capacity_per_replica: c.capacity_per_replica,
        };
        let mut need = (inputs.needed_rate() / c.capacity_per_replica)
            .ceil()
            .max(0.0) as u32;
        if lag >= 1.0 || o.arrival_rate > 0.0 {
            need = need.max(1);
        }
        self.explanation = Some(Explanation {
            uncapped_replicas: need,
            partitions: Some(c.partitions.max(1)),
            max_replicas: c.max_replicas,
            inputs: Inputs::EbbRate(inputs),
        });
        let need = need.clamp(c.min_replicas.min(ceiling), ceiling);

        // Hysteresis: a decrease goes only as low as the highest need in the window.
        self.needs.push_back((o.now, need));
        while self
            .needs
            .front()
            .is_some_and(|&(at, _)| o.now.saturating_sub(at) > c.scale_down_window)
        {
            self.needs.pop_front();
        }
        let current = o.current_replicas;
        let idle = lag < 1.0 && rate < 0.5 && o.arrival_rate == 0.0;
        self.idle_since = if idle {
            self.idle_since.or(Some(o.now))
        } else {
            None
        };

        let settling = self
            .last_up
            .is_some_and(|at| o.now.saturating_sub(at) < c.up_settle);
        let quiet = self
            .idle_since
            .is_some_and(|since| o.now.saturating_sub(since) >= c.idle_cooldown);
        let (target, reason) = if quiet && current > c.min_replicas {
            // Nothing arrives and nothing waits: no window to sit out, there is no noise
            // to smooth when the stream has stopped.
            (c.min_replicas, format!("idle for {:?}", c.idle_cooldown))
        } else if need > current {
            if settling && current > 0 {
                return None;
            }
            (
                need,
                format!(
                    "need {need}: {rate:.0} msg/s × {:.1} + lag {lag:.0} / {:?}",
                    c.headroom, c.target_drain
                ),
            )
        } else if need < current {
            let floor = self.needs.iter().map(|&(_, n)| n).max().unwrap_or(need);
            if floor == 0 {
                // Not idle long enough for the minimum: keep one.
                (
                    current.min(c.min_replicas.max(1)),
                    format!("need 0 over the last {:?}", c.scale_down_window),
                )
            } else {
                let step_floor = ((current as f64) * (1.0 - c.max_down_step)).ceil() as u32;
                (
                    floor.max(step_floor).min(current),
                    format!("need {floor} over the last {:?}", c.scale_down_window),
                )
            }
        } else {
            (current, String::new())
        };
        if target > current {
            self.last_up = Some(o.now);
        }
        (target != current).then_some(Decision {
            replicas: target,
            reason: format!("ebb-rate: {reason}"),
        })
    }

    fn lag_target(&self, replicas: u32) -> f64 {
        let c = &self.config;
        let spare = replicas as f64 * c.capacity_per_replica
            - self.smoothed_rate.unwrap_or(0.0) * c.headroom;
        (spare * c.target_drain.as_secs_f64()).max(0.0)
    }

    fn explain(&self) -> Option<Explanation> {
        self.explanation.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(
        now: u64,
        lag: f64,
        rate: f64,
        current: u32,
    ) -> (Vec<PartitionOffsets>, f64, Duration, u32) {
        (
            vec![PartitionOffsets {
                log_start: 0.0,
                log_end: lag,
                committed: Some(0.0),
            }],
            rate,
            Duration::from_secs(now),
            current,
        )
    }

    fn run(policy: &mut EbbRate, now: u64, lag: f64, rate: f64, current: u32) -> Option<u32> {
        let (partitions, arrival_rate, now, current_replicas) = observe(now, lag, rate, current);
        let o = Observation {
            now,
            partitions: &partitions,
            arrival_rate,
            current_replicas,
            ready_replicas: current_replicas,
        };
        policy.decide(&o).map(|d| d.replicas)
    }

    fn policy() -> EbbRate {
        let mut config = EbbRateConfig::new(100.0, 50, 100);
        config.smoothing = Duration::ZERO;
        config.headroom = 1.0;
        config.scale_down_window = Duration::from_secs(180);
        config.target_drain = Duration::from_secs(60);
        config.idle_cooldown = Duration::from_secs(120);
        config.up_settle = Duration::ZERO;
        config.max_down_step = 1.0;
        EbbRate::new(config)
    }

    #[test]
    fn waits_for_new_replicas_to_settle_before_adding_more() {
        let mut p = policy();
        p.config.up_settle = Duration::from_secs(60);
        assert_eq!(run(&mut p, 0, 0.0, 1000.0, 0), Some(10));
        // Lag builds while they start; no more until 60 s have passed.
        assert_eq!(run(&mut p, 30, 60_000.0, 1000.0, 10), None);
        assert_eq!(run(&mut p, 60, 60_000.0, 1000.0, 10), Some(20));
    }

    #[test]
    fn scales_down_in_bounded_steps() {
        let mut p = policy();
        p.config.max_down_step = 0.25;
        p.config.scale_down_window = Duration::from_secs(10);
        assert_eq!(run(&mut p, 0, 0.0, 4000.0, 0), Some(40));
        assert_eq!(
            run(&mut p, 30, 0.0, 500.0, 40),
            Some(30),
            "at most a quarter at a time"
        );
        assert_eq!(run(&mut p, 50, 0.0, 500.0, 30), Some(23));
    }

    #[test]
    fn sizes_for_the_rate_plus_draining_the_backlog() {
        let mut p = policy();
        // 1000 msg/s needs 10; 60,000 lag over 60 s needs 10 more.
        assert_eq!(run(&mut p, 0, 60_000.0, 1000.0, 0), Some(20));
    }

    #[test]
    fn bounded_by_partitions_and_max() {
        let mut config = EbbRateConfig::new(100.0, 50, 8);
        config.smoothing = Duration::ZERO;
        let mut p = EbbRate::new(config);
        assert_eq!(run(&mut p, 0, 1e9, 1e6, 1), Some(8));
    }

    #[test]
    fn decreases_wait_for_the_window_and_noise_does_not_reverse() {
        let mut p = policy();
        assert_eq!(run(&mut p, 0, 0.0, 1000.0, 0), Some(10));
        // Noise around 900-1000 msg/s: never below the window's highest need.
        assert_eq!(run(&mut p, 10, 0.0, 900.0, 10), None);
        assert_eq!(run(&mut p, 20, 0.0, 950.0, 10), None);
        // Traffic really drops: the decrease waits for the 180 s window.
        assert_eq!(run(&mut p, 30, 0.0, 200.0, 10), None);
        assert_eq!(run(&mut p, 170, 0.0, 200.0, 10), None);
        assert_eq!(
            run(&mut p, 200, 0.0, 200.0, 10),
            None,
            "the need of 10 at 20 s is in the window"
        );
        assert_eq!(run(&mut p, 210, 0.0, 200.0, 10), Some(2));
    }

    #[test]
    fn scales_to_zero_after_the_idle_cooldown_without_waiting_for_the_window() {
        let mut p = policy();
        assert_eq!(run(&mut p, 0, 0.0, 1000.0, 0), Some(10));
        // Idle from 10 s on (cooldown 120 s); the 180 s window does not hold it up.
        for t in (10..130).step_by(10) {
            assert_eq!(run(&mut p, t, 0.0, 0.0, 10), None, "at {t}s");
        }
        assert_eq!(run(&mut p, 130, 0.0, 0.0, 10), Some(0));
        // Any arrival resets the idle clock.
        assert_eq!(run(&mut p, 140, 0.0, 50.0, 0), Some(1));
    }

    #[test]
    fn explains_the_arithmetic_behind_the_count() {
        let mut p = policy();
        assert_eq!(p.explain(), None, "nothing before the first evaluation");
        assert_eq!(run(&mut p, 0, 60_000.0, 1000.0, 0), Some(20));
        let e = p.explain().expect("explained");
        assert_eq!(e.uncapped_replicas, 20);
        assert_eq!(e.binding_limit(), None);
        let Inputs::EbbRate(i) = &e.inputs else {
            panic!("ebb-rate inputs: {e:?}")
        };
        assert_eq!(
            (i.arrival_rate, i.backlog, i.needed_rate()),
            (1000.0, 60_000.0, 2000.0)
        );
        assert_eq!(
            e.reason(0, 20),
            "ebb-rate: 1,000 msg/s × 1.0 + backlog 60,000 ÷ 60 s = 2,000 msg/s ÷ 100 msg/s \
             per worker → 20"
        );
        assert!(
            e.reason(20, 15)
                .contains("highest need over the scale-down window")
        );
        assert!(e.reason(20, 0).contains("idle"));
    }

    #[test]
    fn names_the_cap_that_binds() {
        let mut p = EbbRate::new(EbbRateConfig::new(100.0, 50, 8));
        assert_eq!(run(&mut p, 0, 0.0, 2000.0, 1), Some(8));
        let e = p.explain().expect("explained");
        assert_eq!(e.uncapped_replicas, 22, "2,000 msg/s × 1.1 ÷ 100");
        assert_eq!(e.binding_limit(), Some(Limit::Partitions(8)));
        assert!(
            e.describe()
                .ends_with("(the inputs call for 22; 8 partitions: at most 8 workers)"),
            "{}",
            e.describe()
        );
    }

    #[test]
    fn the_lower_cap_binds_and_partitions_win_a_tie() {
        assert_eq!(
            Limit::binding(15, Some(12), 12),
            Some(Limit::Partitions(12))
        );
        assert_eq!(
            Limit::binding(15, Some(20), 10),
            Some(Limit::MaxReplicas(10))
        );
        assert_eq!(Limit::binding(30, None, 20), Some(Limit::MaxReplicas(20)));
        assert_eq!(
            Limit::binding(12, Some(12), 12),
            None,
            "at the cap, not held by it"
        );
        assert_eq!(
            Limit::Partitions(1).describe(),
            "1 partition: at most 1 worker"
        );
        assert_eq!(
            Limit::MaxReplicas(10).describe(),
            "max replicas 10: at most 10 workers"
        );
        assert_eq!(Limit::MaxReplicas(10).name(), "max_replicas");
    }

    #[test]
    fn keda_lag_explains_the_metric_the_target_and_the_hpa() {
        let mut spec = ScaledObjectSpec {
            max_replica_count: 12,
            ..ScaledObjectSpec::default()
        };
        spec.trigger.lag_threshold = 400.0;
        let mut p = KedaLag::new(spec);
        // 12 partitions with 8,000 records waiting: KEDA caps the metric at 12 × 400.
        let partitions: Vec<PartitionOffsets> = (0..12)
            .map(|i| PartitionOffsets {
                log_start: 0.0,
                log_end: if i < 8 { 1000.0 } else { 0.0 },
                committed: Some(0.0),
            })
            .collect();
        let o = Observation {
            now: Duration::ZERO,
            partitions: &partitions,
            arrival_rate: 0.0,
            current_replicas: 0,
            ready_replicas: 0,
        };
        let to = p.decide(&o).expect("activates").replicas;
        let e = p.explain().expect("explained");
        let Inputs::KedaLag(i) = &e.inputs else {
            panic!("keda-lag inputs: {e:?}")
        };
        assert_eq!((i.lag_metric, i.lag_threshold), (4800.0, 400.0));
        assert_eq!(i.recommended_replicas, 12);
        assert_eq!(i.stabilized_replicas, to);
        assert_eq!(e.uncapped_replicas, 20);
        assert_eq!(e.binding_limit(), Some(Limit::Partitions(12)));
        let reason = e.reason(0, to);
        assert!(reason.starts_with("KEDA activates"), "{reason}");
        assert!(
            reason.contains("lag metric 4,800 ÷ lagThreshold 400 per worker → HPA recommends 12"),
            "{reason}"
        );
    }

    #[test]
    fn a_trickle_does_not_read_as_zero() {
        let mut p = policy();
        assert_eq!(run(&mut p, 0, 1.0, 0.0, 0), Some(1));
        assert_eq!(
            p.explain().expect("explained").describe(),
            "0 msg/s × 1.0 + backlog 1 ÷ 60 s = 0.02 msg/s ÷ 100 msg/s per worker → 1"
        );
        assert_eq!(rate(2.345), "2.3");
        assert_eq!(rate(1234.0), "1,234");
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(0.2), "0");
        assert_eq!(thousands(-1500.0), "-1,500");
    }
}
