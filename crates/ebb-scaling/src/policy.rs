//! Scaling policies behind one trait, called with what can be measured from Kafka: by the
//! simulator with simulated numbers and by the local supervisor with live ones.
//!
//! - [`KedaLag`]: KEDA's kafka scaler and the HPA it drives ([`crate::keda`]).
//! - [`EbbRate`]: ebb's own: size for the arrival rate plus draining the backlog in a target
//!   time, from a known per-replica capacity; up at once, down only after a quiet window.

use std::collections::VecDeque;
use std::time::Duration;

use crate::keda::{Keda, PartitionOffsets, ScaledObjectSpec};

/// What a policy sees at one instant.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// Time since the start.
    pub now: Duration,
    /// Every partition's log-end and committed offsets.
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
}

/// KEDA + HPA on a ScaledObject.
#[derive(Debug, Clone)]
pub struct KedaLag {
    keda: Keda,
}

impl KedaLag {
    /// The policy for `spec`.
    pub fn new(spec: ScaledObjectSpec) -> Self {
        KedaLag {
            keda: Keda::new(spec),
        }
    }
}

impl Policy for KedaLag {
    fn name(&self) -> &'static str {
        "keda-lag"
    }

    fn decide(&mut self, o: &Observation<'_>) -> Option<Decision> {
        self.keda
            .step(o.now, o.current_replicas, || o.partitions.to_vec())
            .map(|d| Decision {
                replicas: d.replicas,
                reason: d.reason,
            })
    }

    fn lag_target(&self, replicas: u32) -> f64 {
        self.keda.spec().trigger.lag_threshold * replicas.max(1) as f64
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
        let need_rate = rate * c.headroom + lag / c.target_drain.as_secs_f64().max(1.0);
        let mut need = (need_rate / c.capacity_per_replica).ceil().max(0.0) as u32;
        if lag >= 1.0 || o.arrival_rate > 0.0 {
            need = need.max(1);
        }
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
}
