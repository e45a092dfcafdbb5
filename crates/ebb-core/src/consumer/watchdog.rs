//! The stall watchdog: a safety net for the liveness contract ("no assigned partition with
//! lag goes unfetched or uncommitted for longer than the stall timeout").
//!
//! Every few seconds the consumer takes a [`Snapshot`] of each owned partition (the broker's
//! committed and log-end offsets, the client's fetch position, what the worker handled and
//! whether anything is queued, in flight or held) and feeds it to a [`StallDetector`]. A
//! partition is stalled when, with the group stable, for the whole stall timeout:
//! - **fetch**: records wait beyond its position, nothing is queued, in flight or held, and
//!   its position does not move; or
//! - **commit**: records were handled beyond the broker's committed offset, and that offset
//!   does not move.
//!
//! The detector is pure (time is passed in), so its rules are unit-tested here; the
//! consumer does the I/O and the remedies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One owned partition as the watchdog sees it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// Partition number.
    pub partition: i32,
    /// The log-end offset (the broker's, read now).
    pub log_end: i64,
    /// The group's committed offset (the broker's, read now); `None` if never committed.
    pub committed: Option<i64>,
    /// The next offset the client hands this consumer (its fetch position); `None` before
    /// the first record.
    pub position: Option<i64>,
    /// One past the last record the worker handled; `None` before the first batch.
    pub handled: Option<i64>,
    /// Records in batches queued for or in the worker, or the sink is being retried
    /// (the partition is held): slow, not stalled.
    pub busy: bool,
}

impl Snapshot {
    /// Records wait beyond where this consumer stands (its position, else the committed
    /// offset). A partition never committed and never fetched is measured from 0, which
    /// over-counts only when retention removed records never consumed.
    fn waiting(&self) -> bool {
        let at = self.position.or(self.committed).unwrap_or(0);
        self.log_end > at
    }

    /// Handled beyond the broker's committed offset.
    fn unacknowledged(&self) -> bool {
        matches!(self.handled, Some(h) if h > self.committed.unwrap_or(-1))
    }
}

/// What kind of stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StallKind {
    /// Records wait, nothing is fetched.
    Fetch,
    /// Handled records are not acknowledged as committed.
    Commit,
}

impl StallKind {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            StallKind::Fetch => "fetch",
            StallKind::Commit => "commit",
        }
    }
}

/// A stalled partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// Partition number.
    pub partition: i32,
    /// Fetch or commit.
    pub kind: StallKind,
    /// How long it has been stalled.
    pub for_: Duration,
    /// Records waiting (fetch) or handled and unacknowledged (commit).
    pub records: i64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Watch {
    /// Observed before (without history, the first look counts as no movement).
    seen: bool,
    /// Since when records have waited with the position unmoved.
    waiting_since: Option<Instant>,
    position: Option<i64>,
    /// Since when handled records have been unacknowledged with the committed offset unmoved.
    unacked_since: Option<Instant>,
    committed: Option<i64>,
}

/// Decides, from successive snapshots, which partitions are stalled.
#[derive(Debug)]
pub struct StallDetector {
    timeout: Duration,
    watches: HashMap<i32, Watch>,
}

impl StallDetector {
    /// A detector that calls a partition stalled after `timeout` without progress.
    pub fn new(timeout: Duration) -> Self {
        StallDetector {
            timeout,
            watches: HashMap::new(),
        }
    }

    /// The group rebalanced: every clock starts again (a partition that moved, or waited
    /// for the rebalance, has not stalled).
    pub fn rebalanced(&mut self) {
        self.watches.clear();
    }

    /// Takes the snapshots of every owned partition at `now` and returns the stalled ones.
    /// Partitions absent from `snapshots` are forgotten.
    pub fn observe(&mut self, now: Instant, snapshots: &[Snapshot]) -> Vec<Stall> {
        self.watches
            .retain(|p, _| snapshots.iter().any(|s| s.partition == *p));
        let mut stalls = Vec::new();
        for s in snapshots {
            let watch = self.watches.entry(s.partition).or_default();

            let seen = std::mem::replace(&mut watch.seen, true);
            let fetch_stuck = s.waiting() && !s.busy && (!seen || watch.position == s.position);
            watch.waiting_since = if fetch_stuck {
                watch.waiting_since.or(Some(now))
            } else {
                None
            };
            watch.position = s.position;

            let commit_stuck = s.unacknowledged() && (!seen || watch.committed == s.committed);
            watch.unacked_since = if commit_stuck {
                watch.unacked_since.or(Some(now))
            } else {
                None
            };
            watch.committed = s.committed;

            if let Some(since) = watch.waiting_since
                && now.duration_since(since) >= self.timeout
            {
                let at = s.position.or(s.committed).unwrap_or(0);
                stalls.push(Stall {
                    partition: s.partition,
                    kind: StallKind::Fetch,
                    for_: now.duration_since(since),
                    records: s.log_end - at,
                });
            }
            if let Some(since) = watch.unacked_since
                && now.duration_since(since) >= self.timeout
            {
                stalls.push(Stall {
                    partition: s.partition,
                    kind: StallKind::Commit,
                    for_: now.duration_since(since),
                    records: s.handled.unwrap_or(0) - s.committed.unwrap_or(0),
                });
            }
        }
        stalls.sort_by_key(|s| (s.partition, s.kind.label()));
        stalls
    }
}

/// How often the watchdog looks: a few times per timeout, within 1..=5 s.
pub fn check_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The consumer's side of the watchdog: snapshots, reports and remedies.
pub(super) mod runner {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Weak};
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    use super::{Snapshot, Stall, StallDetector, StallKind, check_interval};
    use crate::consumer::metrics::StallLabel;
    use crate::consumer::{Context, Shared, lock};
    use crate::lag::LagProbe;

    /// Runs until the consumer stops: every [`check_interval`], reads the broker's
    /// committed and log-end offsets and the client's positions, and reports stalls.
    ///
    /// Remedies: a stall is logged, counted (`ebb_consumer_stalls_total`), shown in
    /// `ebb_consumer_stalled_partitions` and makes `/readyz` answer 503. At once, a commit
    /// stall has its offset sent again and a fetch stall has its partition sought to where
    /// it stands (which restarts librdkafka's fetcher for it). If the partition is still
    /// stalled after another timeout, the consumer stops (draining and committing what it
    /// can) and reports a failure, so that its supervisor starts a fresh member.
    pub fn run(
        shared: Arc<Shared>,
        consumer: Weak<BaseConsumer<Context>>,
        probe: LagProbe,
        timeout: Duration,
    ) {
        let interval = check_interval(timeout);
        let mut detector = StallDetector::new(timeout);
        let mut seen_rebalances = shared.rebalances.load(Ordering::SeqCst);
        let mut reported: HashSet<(i32, StallKind)> = HashSet::new();
        let mut not_ready = false;
        let mut next = Instant::now() + interval;
        while !shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
                continue;
            }
            next = now + interval;
            let rebalances = shared.rebalances.load(Ordering::SeqCst);
            if rebalances != seen_rebalances {
                seen_rebalances = rebalances;
                detector.rebalanced();
            }
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            let Some(snapshots) = snapshots(&shared, &consumer, &probe) else {
                continue;
            };
            if shared.rebalances.load(Ordering::SeqCst) != seen_rebalances {
                continue; // Taken across a rebalance: look again next time.
            }
            let stalls = detector.observe(Instant::now(), &snapshots);

            let current: HashSet<(i32, StallKind)> =
                stalls.iter().map(|s| (s.partition, s.kind)).collect();
            for stall in &stalls {
                if reported.insert((stall.partition, stall.kind)) {
                    first_remedy(&shared, &consumer, stall, &snapshots);
                } else if stall.for_ >= 2 * timeout {
                    shared.fail(describe(&shared, stall));
                }
            }
            reported.retain(|key| {
                let still = current.contains(key);
                if !still {
                    tracing::info!(
                        "Partition {} of {}: the {} stall is over",
                        key.0,
                        shared.topic,
                        key.1.label()
                    );
                }
                still
            });
            let partitions: HashSet<i32> = current.iter().map(|(p, _)| *p).collect();
            shared
                .metrics
                .stalled_partitions
                .set(partitions.len() as i64);
            match (not_ready, partitions.is_empty()) {
                (false, false) => {
                    shared.probes.failed();
                    not_ready = true;
                }
                (true, true) => {
                    shared.probes.recovered();
                    not_ready = false;
                }
                _ => {}
            }
        }
    }

    /// Every owned partition's snapshot, or `None` when the broker could not be asked (an
    /// outage is not a partition's stall; the next look tries again).
    fn snapshots(
        shared: &Shared,
        consumer: &BaseConsumer<Context>,
        probe: &LagProbe,
    ) -> Option<Vec<Snapshot>> {
        let offsets = match probe.offsets() {
            Ok(offsets) => offsets,
            Err(e) => {
                tracing::debug!("Stall watchdog: cannot read offsets: {e}");
                return None;
            }
        };
        let positions: HashMap<i32, i64> = consumer
            .position()
            .ok()?
            .elements_for_topic(&shared.topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect();
        let owned = lock(&shared.owned);
        Some(
            offsets
                .iter()
                .filter_map(|row| {
                    let state = owned.get(&row.partition)?;
                    let handled = state.commit.handled_offset();
                    Some(Snapshot {
                        partition: row.partition,
                        log_end: row.log_end,
                        committed: row.committed,
                        position: positions.get(&row.partition).copied(),
                        handled: (handled >= 0).then_some(handled),
                        busy: state.queued_records.load(Ordering::SeqCst) > 0
                            || state.held.load(Ordering::SeqCst),
                    })
                })
                .collect(),
        )
    }

    fn describe(shared: &Shared, stall: &Stall) -> String {
        match stall.kind {
            StallKind::Fetch => format!(
                "Partition {} of {} is stalled: {} record(s) waiting and none fetched for {:.0?}",
                stall.partition, shared.topic, stall.records, stall.for_
            ),
            StallKind::Commit => format!(
                "Partition {} of {} is stalled: {} handled record(s) not acknowledged as committed for {:.0?}",
                stall.partition, shared.topic, stall.records, stall.for_
            ),
        }
    }

    /// Reports a new stall and tries the cheap remedy.
    fn first_remedy(
        shared: &Shared,
        consumer: &BaseConsumer<Context>,
        stall: &Stall,
        snapshots: &[Snapshot],
    ) {
        shared
            .metrics
            .stalls
            .get_or_create(&StallLabel {
                kind: stall.kind.label(),
            })
            .inc();
        let what = describe(shared, stall);
        match stall.kind {
            StallKind::Commit => {
                tracing::warn!("{what}; sending the commit again");
                if let Some(state) = lock(&shared.owned).get(&stall.partition) {
                    state.commit.resend();
                }
            }
            StallKind::Fetch => {
                let at = snapshots
                    .iter()
                    .find(|s| s.partition == stall.partition)
                    .and_then(|s| s.position.or(s.committed));
                tracing::warn!("{what}; restarting its fetch");
                if let Some(at) = at {
                    let mut tpl = TopicPartitionList::new();
                    let _ = tpl.add_partition_offset(
                        &shared.topic,
                        stall.partition,
                        Offset::Offset(at),
                    );
                    if let Err(e) = consumer.seek_partitions(tpl, Duration::from_secs(5)) {
                        tracing::warn!(
                            "Partition {} of {}: cannot restart its fetch: {e}",
                            stall.partition,
                            shared.topic
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn snap(partition: i32) -> Snapshot {
        Snapshot {
            partition,
            log_end: 100,
            committed: Some(100),
            position: Some(100),
            handled: Some(100),
            busy: false,
        }
    }

    /// Observes `snapshot` every 2.5 s for `seconds` and returns the last answer.
    fn run(detector: &mut StallDetector, start: Instant, seconds: f64, s: Snapshot) -> Vec<Stall> {
        let mut last = Vec::new();
        let mut t = 0.0;
        while t <= seconds {
            last = detector.observe(start + Duration::from_secs_f64(t), &[s]);
            t += 2.5;
        }
        last
    }

    #[test]
    fn a_caught_up_partition_never_stalls() {
        let mut d = StallDetector::new(TIMEOUT);
        assert!(run(&mut d, Instant::now(), 60.0, snap(0)).is_empty());
    }

    #[test]
    fn records_waiting_unfetched_for_the_timeout_are_a_fetch_stall() {
        let mut d = StallDetector::new(TIMEOUT);
        let s = Snapshot {
            log_end: 381,
            ..snap(3)
        };
        let start = Instant::now();
        assert!(run(&mut d, start, 7.5, s).is_empty(), "not yet");
        let stalls = d.observe(start + Duration::from_secs(10), &[s]);
        assert_eq!(
            stalls,
            vec![Stall {
                partition: 3,
                kind: StallKind::Fetch,
                for_: Duration::from_secs(10),
                records: 281
            }]
        );
    }

    #[test]
    fn a_moving_position_or_a_busy_worker_is_not_a_stall() {
        let mut d = StallDetector::new(TIMEOUT);
        let start = Instant::now();
        for i in 0..20 {
            let s = Snapshot {
                log_end: 1000 + i * 10,
                position: Some(900 + i * 10),
                committed: Some(900 + i * 10),
                handled: Some(900 + i * 10),
                ..snap(0)
            };
            assert!(
                d.observe(start + Duration::from_secs(i as u64), &[s])
                    .is_empty()
            );
        }
        let busy = Snapshot {
            log_end: 5000,
            busy: true,
            ..snap(1)
        };
        assert!(run(&mut d, start, 60.0, busy).is_empty());
    }

    #[test]
    fn a_never_fetched_partition_with_records_stalls() {
        let mut d = StallDetector::new(TIMEOUT);
        let s = Snapshot {
            log_end: 53,
            committed: None,
            position: None,
            handled: None,
            ..snap(5)
        };
        let stalls = run(&mut d, Instant::now(), 12.5, s);
        assert_eq!(stalls.len(), 1);
        assert_eq!(stalls[0].kind, StallKind::Fetch);
        assert_eq!(stalls[0].records, 53);
    }

    #[test]
    fn handled_but_unacknowledged_for_the_timeout_is_a_commit_stall() {
        let mut d = StallDetector::new(TIMEOUT);
        let s = Snapshot {
            log_end: 153,
            committed: Some(100),
            position: Some(153),
            handled: Some(153),
            ..snap(7)
        };
        let stalls = run(&mut d, Instant::now(), 10.0, s);
        assert_eq!(
            stalls,
            vec![Stall {
                partition: 7,
                kind: StallKind::Commit,
                for_: Duration::from_secs(10),
                records: 53
            }]
        );
    }

    #[test]
    fn commits_that_keep_moving_are_not_a_stall_even_when_behind() {
        let mut d = StallDetector::new(TIMEOUT);
        let start = Instant::now();
        for i in 0..30 {
            let s = Snapshot {
                log_end: 2000 + i * 100,
                committed: Some(1000 + i * 100),
                position: Some(2000 + i * 100),
                handled: Some(1900 + i * 100),
                ..snap(0)
            };
            assert!(
                d.observe(start + Duration::from_secs(i as u64), &[s])
                    .is_empty()
            );
        }
    }

    #[test]
    fn a_rebalance_restarts_the_clocks() {
        let mut d = StallDetector::new(TIMEOUT);
        let s = Snapshot {
            log_end: 200,
            ..snap(2)
        };
        let start = Instant::now();
        run(&mut d, start, 7.5, s);
        d.rebalanced();
        assert!(d.observe(start + Duration::from_secs(10), &[s]).is_empty());
        assert!(d.observe(start + Duration::from_secs(19), &[s]).is_empty());
        assert_eq!(d.observe(start + Duration::from_secs(20), &[s]).len(), 1);
    }

    #[test]
    fn a_partition_given_up_is_forgotten() {
        let mut d = StallDetector::new(TIMEOUT);
        let start = Instant::now();
        let s = Snapshot {
            log_end: 200,
            ..snap(2)
        };
        run(&mut d, start, 7.5, s);
        assert!(d.observe(start + Duration::from_secs(9), &[]).is_empty());
        assert!(d.observe(start + Duration::from_secs(10), &[s]).is_empty());
    }
}
