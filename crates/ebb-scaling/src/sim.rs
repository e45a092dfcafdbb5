//! The discrete-time simulator: traffic arrives on a topic, replicas start, join the group,
//! ramp up and process, a policy decides the replica count, and every step is recorded.
//! Deterministic: the same inputs give the same series, with no clock and no I/O.
//!
//! A run's figures come from its series alone ([`Summary::from_series`]), so that `ebb demo`,
//! which records the same [`Sample`]s from a live run, computes them exactly as `ebb sim`
//! does.

use std::time::Duration;

use crate::keda::PartitionOffsets;
use crate::offset_rate::OffsetRate;
use crate::policy::{Observation, Policy};
use crate::profile::RateProfile;

/// `ebb consume --key-lanes`'s default: sub-lanes per partition in key order.
pub const DEFAULT_KEY_LANES: u32 = 16;

/// How a consumer orders a partition's records, which bounds how many of that
/// partition's batches it can have in flight (`ebb consume --ordering`, `--key-lanes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrderBy {
    /// Each partition's batches one at a time, in offset order: one lane per partition.
    #[default]
    Partition,
    /// Each partition's records spread over `lanes` sub-lanes by a hash of the record key,
    /// each sub-lane running its batches one at a time.
    Key {
        /// Sub-lanes per partition (`--key-lanes`), at least 1.
        lanes: u32,
    },
}

impl OrderBy {
    /// Batches one partition can have in flight at once.
    pub fn lanes_per_partition(self) -> f64 {
        match self {
            OrderBy::Partition => 1.0,
            OrderBy::Key { lanes } => f64::from(lanes.max(1)),
        }
    }
}

/// How much one replica processes.
#[derive(Debug, Clone, PartialEq)]
pub enum Capacity {
    /// A fixed rate in messages per second at full speed.
    PerReplica(f64),
    /// Derived from the consumer's settings: `min(max_in_flight, partitions owned × lanes
    /// per partition)` batches of `batch_size` every `batch_time`, with one lane per
    /// partition in partition order and `OrderBy::Key`'s `lanes` in key order. So in key
    /// order a replica's capacity is not capped by the partitions it owns (only by
    /// `max_in_flight`), while the replica count still is: a replica beyond the partitions
    /// owns none. Key order assumes the keys spread evenly over the lanes; a partition
    /// whose records share one key keeps to one lane whatever the setting.
    Batches {
        /// `BATCH_SIZE`.
        batch_size: f64,
        /// `BATCH_PROCESSING_TIME`.
        batch_time: Duration,
        /// Batches in flight at once (1 = the reference's blocking loop).
        max_in_flight: f64,
        /// Partition or key order (`EBB_ORDERING`, `EBB_KEY_LANES`).
        order_by: OrderBy,
    },
}

impl Capacity {
    /// Messages per second of one replica that owns `partitions_owned` partitions.
    pub fn per_replica(&self, partitions_owned: f64) -> f64 {
        match *self {
            Capacity::PerReplica(rate) => rate,
            Capacity::Batches {
                batch_size,
                batch_time,
                max_in_flight,
                order_by,
            } => {
                let lanes = partitions_owned.max(0.0) * order_by.lanes_per_partition();
                max_in_flight.min(lanes) * batch_size / batch_time.as_secs_f64().max(1e-3)
            }
        }
    }
}

/// Eager: every member stops on a membership change. Cooperative: only moved partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceKind {
    /// `range`/`roundrobin`: all partitions pause.
    Eager,
    /// `cooperative-sticky` or KIP-848: the moved share of partitions pauses.
    Cooperative,
}

/// How replicas behave: capacity, start-up, rebalances, nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceModel {
    /// Processing capacity per replica.
    pub capacity: Capacity,
    /// From creation to joining the group.
    pub pod_start_delay: Duration,
    /// From joining to full capacity, linearly.
    pub ramp_up: Duration,
    /// Rebalance protocol.
    pub rebalance: RebalanceKind,
    /// How long the affected partitions process nothing after a membership change.
    pub rebalance_pause: Duration,
    /// Pods per node; 0 means nodes are always there.
    pub pods_per_node: u32,
    /// Extra delay for a pod that needs a new node.
    pub node_start_delay: Duration,
}

/// Everything but the traffic and the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Simulated time.
    pub duration: Duration,
    /// Step length (1 s or finer).
    pub step: Duration,
    /// Partitions of the topic.
    pub partitions: u32,
    /// Replicas.
    pub service: ServiceModel,
    /// Service level: a message should wait no longer than this in Kafka.
    pub sla: Duration,
    /// Backlog already in the topic at the start.
    pub initial_lag: f64,
    /// Replicas running at the start (already joined and at full speed).
    pub initial_replicas: u32,
    /// Two opposite scale events closer than this count as a reversal.
    pub reversal_window: Duration,
}

/// One row of the series.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub t_s: f64,
    /// Messages per second arriving.
    pub arrival_rate: f64,
    /// Messages per second processed.
    pub processed_rate: f64,
    /// Messages waiting.
    pub lag: f64,
    /// The lag the policy aims at with the current replicas.
    pub lag_target: f64,
    /// What the policy last asked for.
    pub desired_replicas: u32,
    /// Replicas that exist.
    pub current_replicas: u32,
    /// Replicas in the group and processing.
    pub ready_replicas: u32,
    /// How long the oldest waiting message has waited (0 when nothing waits).
    pub message_time_s: f64,
}

/// What a summary needs besides the series: the service level, what counts as flapping,
/// and the state before the first sample (the series starts at t = 0).
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySettings {
    /// A message should wait no longer than this in Kafka.
    pub sla: Duration,
    /// Two opposite scale events closer than this count as a reversal.
    pub reversal_window: Duration,
    /// Replicas at t = 0, until the first sample.
    pub initial_replicas: u32,
    /// Lag at t = 0.
    pub initial_lag: f64,
}

impl SimConfig {
    /// The settings a summary of this configuration's runs uses.
    pub fn summary_settings(&self) -> SummarySettings {
        SummarySettings {
            sla: self.sla,
            reversal_window: self.reversal_window,
            initial_replicas: self.initial_replicas,
            initial_lag: self.initial_lag,
        }
    }
}

/// The run's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    /// The policy's name.
    pub policy: String,
    /// Highest lag.
    pub max_lag: f64,
    /// Median time a message waited in Kafka (weighted by messages: the processed rate
    /// times the time between samples).
    pub message_time_p50_s: f64,
    /// 99th percentile of the same.
    pub message_time_p99_s: f64,
    /// Longest wait.
    pub message_time_max_s: f64,
    /// Sum over time of replicas that exist: what the run costs. A sample's count holds
    /// until the next sample.
    pub replica_seconds: f64,
    /// Most replicas at once.
    pub max_replicas: u32,
    /// Replica-count changes.
    pub scale_events: u32,
    /// Changes of direction within the reversal window (flapping).
    pub reversals: u32,
    /// Seconds during which the oldest waiting message was older than the SLA (a sample
    /// over it counts the time since the previous sample).
    pub sla_violation_s: f64,
    /// Messages that arrived (the arrival rate over time).
    pub arrived: f64,
    /// Messages processed (the processed rate over time).
    pub processed: f64,
    /// Lag at the end.
    pub final_lag: f64,
}

/// A run: every step and the summary.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// One sample per step.
    pub series: Vec<Sample>,
    /// The figures.
    pub summary: Summary,
    /// Each scale decision: time, replicas, reason.
    pub decisions: Vec<(f64, u32, String)>,
}

#[derive(Debug, Clone)]
struct Pod {
    ready_at: f64,
    joined_at: Option<f64>,
}

/// Runs `policy` against `traffic` under `config`.
pub fn simulate(config: &SimConfig, traffic: &RateProfile, policy: &mut dyn Policy) -> SimResult {
    let dt = config.step.as_secs_f64().max(1e-3);
    let steps = (config.duration.as_secs_f64() / dt).ceil() as usize;
    let partitions = config.partitions.max(1);
    let service = &config.service;
    let ramp = service.ramp_up.as_secs_f64();
    let pause = service.rebalance_pause.as_secs_f64();

    let mut pods: Vec<Pod> = (0..config.initial_replicas)
        .map(|_| Pod {
            ready_at: 0.0,
            joined_at: Some(-ramp - 1.0),
        })
        .collect();
    let mut nodes_ready: Vec<f64> = Vec::new();
    if service.pods_per_node > 0 {
        let needed = config.initial_replicas.div_ceil(service.pods_per_node);
        nodes_ready.extend((0..needed).map(|_| 0.0));
    }
    // Rebalance pauses: (until, share of partitions not processing).
    let mut pauses: Vec<(f64, f64)> = Vec::new();
    let mut members = pods.len() as u32;

    let mut lag = config.initial_lag;
    let mut log_end = config.initial_lag;
    let mut committed = 0.0;
    // Cumulative arrivals at each step end, to find when the oldest waiting message came.
    let mut arrivals_at: Vec<(f64, f64)> = vec![(0.0, config.initial_lag)];
    let mut desired = pods.len() as u32;
    let mut series = Vec::with_capacity(steps);
    let mut decisions = Vec::new();
    // The policy sees the arrival rate as a live reader of the offsets would.
    let mut arrival_rate = OffsetRate::starting_at(0.0, log_end);

    for step in 0..steps {
        let t = step as f64 * dt;
        let end = t + dt;
        // Pods that finished starting join the group.
        let mut joined_now = false;
        for pod in pods.iter_mut() {
            if pod.joined_at.is_none() && pod.ready_at <= t {
                pod.joined_at = Some(t);
                joined_now = true;
            }
        }
        let ready = pods.iter().filter(|p| p.joined_at.is_some()).count() as u32;
        if joined_now {
            rebalance(
                &mut pauses,
                service.rebalance,
                members,
                ready,
                partitions,
                end + pause - dt,
            );
            members = ready;
        }
        pauses.retain(|&(until, _)| until > t);
        let paused_share: f64 = pauses.iter().map(|&(_, share)| share).sum::<f64>().min(1.0);

        // Capacity of the members that own partitions (the rest idle). Kafka gives each
        // partition to one member, so this cap holds in key order too; what key order
        // changes is only how much a member does with the partitions it owns.
        let active = ready.min(partitions);
        let owned = if active > 0 {
            partitions as f64 / active as f64
        } else {
            0.0
        };
        let per_replica = service.capacity.per_replica(owned);
        let capacity: f64 = pods
            .iter()
            .filter_map(|p| p.joined_at)
            .take(active as usize)
            .map(|joined| {
                per_replica
                    * if ramp > 0.0 {
                        ((t - joined) / ramp).clamp(0.0, 1.0)
                    } else {
                        1.0
                    }
            })
            .sum::<f64>()
            * (1.0 - paused_share);

        let arriving = traffic.due_by(Duration::from_secs_f64(end))
            - traffic.due_by(Duration::from_secs_f64(t));
        let processed = (lag + arriving).min(capacity * dt).max(0.0);
        lag = (lag + arriving - processed).max(0.0);
        log_end += arriving;
        committed += processed;
        arrivals_at.push((end, log_end));

        let message_time = if lag < 0.5 {
            0.0
        } else {
            oldest_waiting(&arrivals_at, committed, end)
        };

        // The policy looks at the end of the step.
        let offsets = spread(partitions, log_end, committed);
        let observation = Observation {
            now: Duration::from_secs_f64(end),
            partitions: &offsets,
            arrival_rate: arrival_rate.update(end, log_end),
            current_replicas: pods.len() as u32,
            ready_replicas: ready,
        };
        if let Some(decision) = policy.decide(&observation) {
            desired = decision.replicas;
            let current = pods.len() as u32;
            if desired != current {
                decisions.push((end, desired, decision.reason));
            }
            if desired > current {
                for _ in current..desired {
                    let mut ready_at = end + service.pod_start_delay.as_secs_f64();
                    if service.pods_per_node > 0 {
                        let capacity = nodes_ready.len() as u32 * service.pods_per_node;
                        if pods.len() as u32 >= capacity {
                            nodes_ready.push(end + service.node_start_delay.as_secs_f64());
                        }
                        let node = pods.len() / service.pods_per_node as usize;
                        ready_at = ready_at.max(nodes_ready[node.min(nodes_ready.len() - 1)]);
                    }
                    pods.push(Pod {
                        ready_at,
                        joined_at: None,
                    });
                }
            } else if desired < current {
                // Pods still starting go first, then the newest members.
                pods.sort_by(|a, b| {
                    a.joined_at
                        .is_some()
                        .cmp(&b.joined_at.is_some())
                        .then(b.ready_at.total_cmp(&a.ready_at))
                });
                let removed = pods
                    .drain(..(current - desired) as usize)
                    .filter(|p| p.joined_at.is_some())
                    .count();
                if removed > 0 {
                    let remaining = pods.iter().filter(|p| p.joined_at.is_some()).count() as u32;
                    rebalance(
                        &mut pauses,
                        service.rebalance,
                        members,
                        remaining,
                        partitions,
                        end + pause,
                    );
                    members = remaining;
                }
            }
        }

        series.push(Sample {
            t_s: end,
            arrival_rate: arriving / dt,
            processed_rate: processed / dt,
            lag,
            lag_target: policy.lag_target(pods.len() as u32),
            desired_replicas: desired,
            current_replicas: pods.len() as u32,
            ready_replicas: ready,
            message_time_s: message_time,
        });
    }

    SimResult {
        summary: Summary::from_series(policy.name(), &series, &config.summary_settings()),
        series,
        decisions,
    }
}

impl Summary {
    /// The figures of a run recorded as `series` (samples in time order, the first after
    /// t = 0). Each sample stands for the time since the previous one (since 0 for the
    /// first): messages arrived and processed are its rates times that time, the message
    /// time percentiles weigh its message time by the messages it processed, and that time
    /// counts against the SLA when its message time is over it. Its replica count holds
    /// until the next sample (the settings' initial count until the first).
    pub fn from_series(policy: &str, series: &[Sample], settings: &SummarySettings) -> Summary {
        let mut summary = Summary {
            policy: policy.to_string(),
            max_lag: settings.initial_lag,
            message_time_p50_s: 0.0,
            message_time_p99_s: 0.0,
            message_time_max_s: 0.0,
            replica_seconds: 0.0,
            max_replicas: settings.initial_replicas,
            scale_events: 0,
            reversals: 0,
            sla_violation_s: 0.0,
            arrived: 0.0,
            processed: 0.0,
            final_lag: series.last().map_or(settings.initial_lag, |s| s.lag),
        };
        let sla = settings.sla.as_secs_f64();
        let mut waits: Vec<(f64, f64)> = Vec::with_capacity(series.len());
        let (mut before_t, mut before_replicas) = (0.0, settings.initial_replicas);
        for s in series {
            let dt = (s.t_s - before_t).max(0.0);
            let processed = s.processed_rate * dt;
            summary.arrived += s.arrival_rate * dt;
            summary.processed += processed;
            if processed > 0.0 {
                waits.push((s.message_time_s, processed));
            }
            if s.message_time_s > sla {
                summary.sla_violation_s += dt;
            }
            summary.replica_seconds += before_replicas as f64 * dt;
            summary.max_lag = summary.max_lag.max(s.lag);
            summary.message_time_max_s = summary.message_time_max_s.max(s.message_time_s);
            summary.max_replicas = summary.max_replicas.max(s.current_replicas);
            (before_t, before_replicas) = (s.t_s, s.current_replicas);
        }
        (summary.scale_events, summary.reversals) =
            scale_changes(settings.initial_replicas, series, settings.reversal_window);
        (summary.message_time_p50_s, summary.message_time_p99_s) = weighted_percentiles(&mut waits);
        summary
    }
}

/// Scale events (changes of the desired replica count, from `initial`) and reversals
/// among them: a change opposite to the previous one within `window` (flapping).
fn scale_changes(initial: u32, series: &[Sample], window: Duration) -> (u32, u32) {
    let (mut events, mut reversals) = (0, 0);
    let mut previous = initial;
    let mut last: Option<(f64, bool)> = None;
    for sample in series {
        if sample.desired_replicas == previous {
            continue;
        }
        let up = sample.desired_replicas > previous;
        if let Some((at, was_up)) = last
            && was_up != up
            && sample.t_s - at < window.as_secs_f64()
        {
            reversals += 1;
        }
        events += 1;
        last = Some((sample.t_s, up));
        previous = sample.desired_replicas;
    }
    (events, reversals)
}

/// How long the oldest waiting message has waited at `now`, given `arrivals` — (time,
/// messages arrived so far) in time order — and `consumed` messages already handled: it is
/// the one that arrived when the count passed `consumed` (interpolated between samples).
pub fn oldest_waiting(arrivals: &[(f64, f64)], consumed: f64, now: f64) -> f64 {
    let i = arrivals.partition_point(|&(_, cumulative)| cumulative <= consumed);
    let came = match (i.checked_sub(1).map(|j| arrivals[j]), arrivals.get(i)) {
        (Some((t0, a0)), Some(&(t1, a1))) if a1 > a0 => {
            t0 + (t1 - t0) * (consumed - a0) / (a1 - a0)
        }
        (_, Some(&(t1, _))) => t1,
        _ => now,
    };
    (now - came).max(0.0)
}

/// Records the pause a membership change from `before` to `after` members causes.
fn rebalance(
    pauses: &mut Vec<(f64, f64)>,
    kind: RebalanceKind,
    before: u32,
    after: u32,
    partitions: u32,
    until: f64,
) {
    if before == after {
        return;
    }
    let (b, a) = (before.min(partitions) as f64, after.min(partitions) as f64);
    let share = match kind {
        RebalanceKind::Eager => 1.0,
        // Partitions that change owner: the difference in members over the larger group.
        RebalanceKind::Cooperative => ((a - b).abs() / a.max(b)).min(1.0),
    };
    if share > 0.0 {
        pauses.push((until, share));
    }
}

/// Spreads totals evenly over the partitions, as the scaler would read them.
fn spread(partitions: u32, log_end: f64, committed: f64) -> Vec<PartitionOffsets> {
    let n = partitions as f64;
    (0..partitions)
        .map(|_| PartitionOffsets {
            // The simulated topic keeps everything (no retention), so its log starts at 0.
            log_start: 0.0,
            log_end: log_end / n,
            committed: Some(committed / n),
        })
        .collect()
}

/// The 50th and 99th percentiles of values weighted by message counts.
fn weighted_percentiles(samples: &mut [(f64, f64)]) -> (f64, f64) {
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = samples.iter().map(|&(_, w)| w).sum();
    if total <= 0.0 {
        return (0.0, 0.0);
    }
    let at = |q: f64| {
        let mut seen = 0.0;
        for &(value, weight) in samples.iter() {
            seen += weight;
            if seen >= q * total {
                return value;
            }
        }
        samples.last().map_or(0.0, |&(v, _)| v)
    };
    (at(0.50), at(0.99))
}

/// The series as CSV, with a header row.
pub fn series_csv(series: &[Sample]) -> String {
    let mut out = String::from(
        "t_s,arrival_rate,processed_rate,lag,lag_target,desired_replicas,current_replicas,ready_replicas,message_time_s\n",
    );
    for s in series {
        out.push_str(&format!(
            "{},{:.3},{:.3},{:.1},{:.1},{},{},{},{:.3}\n",
            s.t_s,
            s.arrival_rate,
            s.processed_rate,
            s.lag,
            s.lag_target,
            s.desired_replicas,
            s.current_replicas,
            s.ready_replicas,
            s.message_time_s
        ));
    }
    out
}

impl Summary {
    /// The summary as a JSON object (no dependency needed for flat numbers).
    pub fn to_json(&self) -> String {
        format!(
            concat!(
                "{{\n  \"policy\": \"{}\",\n  \"max_lag\": {:.1},\n  \"message_time_p50_s\": {:.3},\n",
                "  \"message_time_p99_s\": {:.3},\n  \"message_time_max_s\": {:.3},\n  \"replica_seconds\": {:.1},\n",
                "  \"max_replicas\": {},\n  \"scale_events\": {},\n  \"reversals\": {},\n  \"sla_violation_s\": {:.1},\n",
                "  \"arrived\": {:.1},\n  \"processed\": {:.1},\n  \"final_lag\": {:.1}\n}}\n"
            ),
            self.policy,
            self.max_lag,
            self.message_time_p50_s,
            self.message_time_p99_s,
            self.message_time_max_s,
            self.replica_seconds,
            self.max_replicas,
            self.scale_events,
            self.reversals,
            self.sla_violation_s,
            self.arrived,
            self.processed,
            self.final_lag
        )
    }

    /// Rows of (name, value) for a table.
    pub fn rows(&self) -> Vec<(&'static str, String)> {
        vec![
            ("max_lag", format!("{:.0}", self.max_lag)),
            (
                "message_time_p50_s",
                format!("{:.1}", self.message_time_p50_s),
            ),
            (
                "message_time_p99_s",
                format!("{:.1}", self.message_time_p99_s),
            ),
            (
                "message_time_max_s",
                format!("{:.1}", self.message_time_max_s),
            ),
            ("replica_seconds", format!("{:.0}", self.replica_seconds)),
            ("max_replicas", self.max_replicas.to_string()),
            ("scale_events", self.scale_events.to_string()),
            ("reversals", self.reversals.to_string()),
            ("sla_violation_s", format!("{:.0}", self.sla_violation_s)),
            ("arrived", format!("{:.0}", self.arrived)),
            ("processed", format!("{:.0}", self.processed)),
            ("final_lag", format!("{:.0}", self.final_lag)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Decision;

    /// A policy that asks for a fixed count from the start.
    struct Fixed(u32);
    impl Policy for Fixed {
        fn name(&self) -> &'static str {
            "fixed"
        }
        fn decide(&mut self, o: &Observation<'_>) -> Option<Decision> {
            (o.current_replicas != self.0).then(|| Decision {
                replicas: self.0,
                reason: "fixed".into(),
            })
        }
        fn lag_target(&self, _: u32) -> f64 {
            0.0
        }
    }

    fn config() -> SimConfig {
        SimConfig {
            duration: Duration::from_secs(600),
            step: Duration::from_secs(1),
            partitions: 10,
            service: ServiceModel {
                capacity: Capacity::PerReplica(100.0),
                pod_start_delay: Duration::ZERO,
                ramp_up: Duration::ZERO,
                rebalance: RebalanceKind::Cooperative,
                rebalance_pause: Duration::ZERO,
                pods_per_node: 0,
                node_start_delay: Duration::ZERO,
            },
            sla: Duration::from_secs(30),
            initial_lag: 0.0,
            initial_replicas: 0,
            reversal_window: Duration::from_secs(300),
        }
    }

    #[test]
    fn enough_capacity_keeps_lag_at_zero_and_conserves_messages() {
        let r = simulate(&config(), &"500".parse().unwrap(), &mut Fixed(6));
        assert!(
            r.summary.max_lag <= 500.0,
            "only the first second waits: {}",
            r.summary.max_lag
        );
        assert!((r.summary.arrived - 300_000.0).abs() < 1e-6);
        assert!((r.summary.arrived - r.summary.processed - r.summary.final_lag).abs() < 1e-6);
        assert_eq!(r.summary.sla_violation_s, 0.0);
        // The pods exist from the end of the first step.
        assert_eq!(r.summary.replica_seconds, 6.0 * 599.0);
    }

    #[test]
    fn too_little_capacity_builds_lag_and_message_time() {
        let r = simulate(&config(), &"500".parse().unwrap(), &mut Fixed(4));
        // Nothing runs in the first second, then 100 msg/s short for 599 s.
        assert!(
            (r.summary.final_lag - (500.0 + 100.0 * 599.0)).abs() < 1e-6,
            "{}",
            r.summary.final_lag
        );
        // The oldest waiting message at the end came in at 4/5 of the run.
        let last = r.series.last().unwrap();
        assert!(
            (last.message_time_s - 120.0).abs() < 5.0,
            "{}",
            last.message_time_s
        );
        assert!(r.summary.sla_violation_s > 400.0);
    }

    #[test]
    fn replicas_beyond_partitions_idle() {
        let mut c = config();
        c.partitions = 3;
        let r = simulate(&c, &"1000".parse().unwrap(), &mut Fixed(10));
        let last = r.series.last().unwrap();
        assert!(
            (last.processed_rate - 300.0).abs() < 1e-6,
            "{}",
            last.processed_rate
        );
    }

    #[test]
    fn start_delay_and_ramp_up_delay_processing() {
        let mut c = config();
        c.service.pod_start_delay = Duration::from_secs(20);
        c.service.ramp_up = Duration::from_secs(60);
        let r = simulate(&c, &"100".parse().unwrap(), &mut Fixed(1));
        assert_eq!(r.series[10].processed_rate, 0.0, "still starting");
        let joined = r.series.iter().position(|s| s.ready_replicas == 1).unwrap();
        assert!((20..=22).contains(&joined), "joined at step {joined}");
        assert!(
            r.series[joined + 30].processed_rate < 60.0,
            "half-way up the ramp"
        );
    }

    #[test]
    fn derived_capacity_follows_in_flight_and_partitions() {
        let reference = Capacity::Batches {
            batch_size: 100.0,
            batch_time: Duration::from_secs(1),
            max_in_flight: 1.0,
            order_by: OrderBy::Partition,
        };
        assert_eq!(reference.per_replica(24.0), 100.0);
        let ebb = Capacity::Batches {
            batch_size: 100.0,
            batch_time: Duration::from_secs(1),
            max_in_flight: 64.0,
            order_by: OrderBy::Partition,
        };
        assert_eq!(ebb.per_replica(24.0), 2400.0);
        assert_eq!(ebb.per_replica(100.0), 6400.0);
    }

    /// Batches of 100 taking 1 s, `max_in_flight` at once, in `order_by`.
    fn batches(max_in_flight: f64, order_by: OrderBy) -> Capacity {
        Capacity::Batches {
            batch_size: 100.0,
            batch_time: Duration::from_secs(1),
            max_in_flight,
            order_by,
        }
    }

    #[test]
    fn key_order_gives_each_owned_partition_its_lanes_up_to_max_in_flight() {
        let partition = batches(64.0, OrderBy::Partition);
        let key = batches(64.0, OrderBy::Key { lanes: 16 });
        // Owning 6 partitions: 6 lanes in partition order; 96 in key order, 64 in flight.
        assert_eq!(partition.per_replica(6.0), 600.0);
        assert_eq!(key.per_replica(6.0), 6400.0);
        // Owning 2: 32 lanes, under the in-flight limit.
        assert_eq!(key.per_replica(2.0), 3200.0);
        assert_eq!(key.per_replica(0.0), 0.0);
        // One lane per partition is partition order's capacity.
        assert_eq!(
            batches(64.0, OrderBy::Key { lanes: 1 }).per_replica(6.0),
            600.0
        );
    }

    /// A 6-partition topic with far more traffic than anything here can take.
    fn six_partitions(capacity: Capacity) -> SimConfig {
        let mut c = config();
        c.duration = Duration::from_secs(60);
        c.partitions = 6;
        c.service.capacity = capacity;
        c
    }

    /// The last sample of `c` run at `replicas` replicas under 20,000 msg/s, with that many
    /// ready by then.
    fn saturated(c: &SimConfig, replicas: u32) -> Sample {
        let r = simulate(c, &"20000".parse().unwrap(), &mut Fixed(replicas));
        let last = r.series.last().unwrap().clone();
        assert_eq!(last.ready_replicas, replicas);
        last
    }

    #[test]
    fn one_replica_processes_what_its_lanes_allow() {
        for (order_by, expected) in [
            (OrderBy::Partition, 600.0),
            (OrderBy::Key { lanes: 16 }, 6400.0),
        ] {
            let last = saturated(&six_partitions(batches(64.0, order_by)), 1);
            assert!(
                (last.processed_rate - expected).abs() < 1e-6,
                "{order_by:?}: {}",
                last.processed_rate
            );
        }
    }

    #[test]
    fn replicas_beyond_partitions_idle_in_both_orders() {
        // 8 in flight: in key order a replica owning one partition (16 lanes) is at its
        // limit, so the four replicas beyond the partitions would add capacity if they were
        // counted. In partition order they could not (6 partitions are 6 lanes whoever owns
        // them); the figure is checked there all the same.
        for (order_by, per_owner) in [
            (OrderBy::Partition, 100.0),
            (OrderBy::Key { lanes: 16 }, 800.0),
        ] {
            let c = six_partitions(batches(8.0, order_by));
            for replicas in [6, 10] {
                let last = saturated(&c, replicas);
                assert!(
                    (last.processed_rate - 6.0 * per_owner).abs() < 1e-6,
                    "{order_by:?} with {replicas} replicas: {}",
                    last.processed_rate
                );
            }
        }
    }

    #[test]
    fn eager_rebalances_pause_everyone_cooperative_only_the_moved_share() {
        let mut c = config();
        c.service.rebalance_pause = Duration::from_secs(30);
        c.initial_replicas = 2;
        let mut eager = c.clone();
        eager.service.rebalance = RebalanceKind::Eager;
        let coop = simulate(&c, &"150".parse().unwrap(), &mut Fixed(4));
        let all = simulate(&eager, &"150".parse().unwrap(), &mut Fixed(4));
        // 2 → 4 members: cooperative moves half the partitions; eager stops all.
        assert!(coop.series[10].processed_rate > 0.0);
        assert_eq!(all.series[10].processed_rate, 0.0);
        assert!(all.summary.max_lag > coop.summary.max_lag);
    }

    #[test]
    fn reversals_count_quick_changes_of_direction() {
        struct Flapping;
        impl Policy for Flapping {
            fn name(&self) -> &'static str {
                "flapping"
            }
            fn decide(&mut self, o: &Observation<'_>) -> Option<Decision> {
                let want = if (o.now.as_secs() / 60).is_multiple_of(2) {
                    2
                } else {
                    3
                };
                (o.current_replicas != want).then(|| Decision {
                    replicas: want,
                    reason: String::new(),
                })
            }
            fn lag_target(&self, _: u32) -> f64 {
                0.0
            }
        }
        let r = simulate(&config(), &"100".parse().unwrap(), &mut Flapping);
        // Changes at 1 s (up), 60 s (up), then every minute alternating down and up.
        assert_eq!(r.summary.scale_events, 11);
        assert_eq!(r.summary.reversals, 9);
    }

    fn sample(t_s: f64, rates: (f64, f64), lag: f64, replicas: u32, message_time_s: f64) -> Sample {
        Sample {
            t_s,
            arrival_rate: rates.0,
            processed_rate: rates.1,
            lag,
            lag_target: 0.0,
            desired_replicas: replicas,
            current_replicas: replicas,
            ready_replicas: replicas,
            message_time_s,
        }
    }

    fn settings() -> SummarySettings {
        SummarySettings {
            sla: Duration::from_secs(30),
            reversal_window: Duration::from_secs(60),
            initial_replicas: 0,
            initial_lag: 0.0,
        }
    }

    #[test]
    fn a_summary_weighs_each_sample_by_the_time_since_the_previous_one() {
        let series = [
            sample(1.0, (100.0, 50.0), 50.0, 2, 1.0),
            // Two seconds over the SLA, processing 200 messages that waited 40 s.
            sample(3.0, (100.0, 100.0), 50.0, 2, 40.0),
            sample(3.5, (0.0, 100.0), 0.0, 3, 5.0),
            sample(10.0, (0.0, 0.0), 0.0, 1, 0.0),
        ];
        let s = Summary::from_series("live", &series, &settings());
        assert_eq!(s.policy, "live");
        // Messages waited 1 s (50 of them), 5 s (50) and 40 s (200): the median message
        // waited 40 s, where the median sample says 5 s.
        assert_eq!((s.message_time_p50_s, s.message_time_p99_s), (40.0, 40.0));
        assert_eq!(s.message_time_max_s, 40.0);
        assert_eq!(s.sla_violation_s, 2.0, "seconds, not samples");
        // 0 replicas until 1 s, 2 until 3.5 s, 3 until 10 s.
        assert_eq!(s.replica_seconds, 2.0 * 2.5 + 3.0 * 6.5);
        assert_eq!((s.arrived, s.processed), (300.0, 300.0));
        assert_eq!((s.max_lag, s.final_lag, s.max_replicas), (50.0, 0.0, 3));
        // 0 → 2, 2 → 3, then 3 → 1 within the 60 s window: a reversal.
        assert_eq!((s.scale_events, s.reversals), (3, 1));
    }

    #[test]
    fn a_summary_of_no_samples_is_the_initial_state() {
        let mut at_start = settings();
        at_start.initial_lag = 700.0;
        at_start.initial_replicas = 2;
        let s = Summary::from_series("none", &[], &at_start);
        assert_eq!((s.max_lag, s.final_lag, s.max_replicas), (700.0, 700.0, 2));
        assert_eq!(
            (s.replica_seconds, s.sla_violation_s, s.scale_events),
            (0.0, 0.0, 0)
        );
        assert_eq!((s.message_time_p50_s, s.message_time_p99_s), (0.0, 0.0));
    }

    #[test]
    fn the_simulators_summary_is_the_summary_of_its_series() {
        let mut c = config();
        c.step = Duration::from_millis(250);
        c.initial_replicas = 2;
        c.initial_lag = 5_000.0;
        let r = simulate(&c, &"20@60s,900@120s,0".parse().unwrap(), &mut Fixed(5));
        assert_eq!(
            r.summary,
            Summary::from_series("fixed", &r.series, &c.summary_settings())
        );
        assert!((r.summary.arrived - (20.0 * 60.0 + 900.0 * 120.0)).abs() < 1e-6);
        assert!(
            (r.summary.arrived + c.initial_lag - r.summary.processed - r.summary.final_lag).abs()
                < 1e-6,
            "{:?}",
            r.summary
        );
        // Two replicas for the first step, five after.
        assert!((r.summary.replica_seconds - (2.0 * 0.25 + 5.0 * 599.75)).abs() < 1e-6);
    }

    #[test]
    fn csv_has_the_documented_columns() {
        let r = simulate(&config(), &"10".parse().unwrap(), &mut Fixed(1));
        let csv = series_csv(&r.series);
        assert!(csv.starts_with("t_s,arrival_rate,processed_rate,lag,lag_target,desired_replicas,current_replicas,ready_replicas,message_time_s\n"));
        assert_eq!(csv.lines().count(), 601);
        assert!(r.summary.to_json().contains("\"sla_violation_s\": 0.0"));
    }
}
