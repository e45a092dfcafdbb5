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
    /// Where the consumer starts without a position: the committed offset, else the log
    /// start.
    pub start: i64,
    /// The client's fetcher is at the log end with nothing left in its queue (from its
    /// statistics): what remains between the position and the log end is a transaction
    /// marker, not records.
    pub fetched_to_end: bool,
    /// The next offset the client hands this consumer (its application position); `None`
    /// before the first record.
    pub position: Option<i64>,
    /// What the partition may commit: one past the last handled record (in key order,
    /// its lowest record not yet handled); `None` before the first batch.
    pub handled: Option<i64>,
    /// Records in batches queued for or in the worker, the sink is being retried (the
    /// partition is held), or the partition waits its turn to fetch (parked, see
    /// [`super::rotation`]): slow, not stalled.
    pub busy: bool,
}

impl Snapshot {
    /// Records wait beyond where this consumer stands (its position, else where it starts).
    fn waiting(&self) -> bool {
        self.log_end > self.at() && !self.fetched_to_end
    }

    fn at(&self) -> i64 {
        self.position.unwrap_or(self.start)
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
                stalls.push(Stall {
                    partition: s.partition,
                    kind: StallKind::Fetch,
                    for_: now.duration_since(since),
                    records: s.log_end - s.at(),
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

    use super::{Snapshot, Stall, StallDetector, StallKind, check_interval};
    use crate::consumer::metrics::StallLabel;
    use crate::consumer::{Context, Shared, lock};
    use crate::lag::LagProbe;

    /// Failed looks in a row before the watchdog says it cannot see.
    const BLIND_AFTER: u32 = 3;

    /// Runs until the consumer stops: every [`check_interval`], reads the group's state,
    /// its committed and the topic's log-end offsets, and the client's positions, and
    /// reports stalls.
    ///
    /// It only judges a stable group: while this member is in a rebalance callback (a
    /// revoke drain can take `--revoke-timeout`), while the coordinator reports the group
    /// rebalancing, or when the broker cannot be asked, the clocks start again.
    ///
    /// Remedies: a stall is logged, counted (`ebb_consumer_stalls_total`), shown in
    /// `ebb_consumer_stalled_partitions` and makes `/readyz` answer 503; a commit stall has
    /// its offset sent again at once. A partition still stalled after another timeout
    /// makes the consumer stop (draining and committing what it can) and report a failure,
    /// so that its supervisor starts a fresh member, which fetches from the committed
    /// offsets. (No fetch remedy short of that: a seek does not lift a pause librdkafka
    /// itself holds, and seeking past records still in its queue would skip them.)
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
        let mut failed_looks = 0u32;
        let mut next = Instant::now() + interval;
        while !shared.stop.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now < next {
                std::thread::sleep((next - now).min(Duration::from_millis(100)));
                continue;
            }
            next = now + interval;
            let rebalances = shared.rebalances.load(Ordering::SeqCst);
            if rebalances != seen_rebalances || shared.in_rebalance.load(Ordering::SeqCst) {
                seen_rebalances = rebalances;
                detector.rebalanced();
                continue;
            }
            let Some(consumer) = consumer.upgrade() else {
                return;
            };
            let look = look(&shared, &consumer, &probe);
            drop(consumer);
            let snapshots = match look {
                Ok(Some(snapshots)) => {
                    failed_looks = 0;
                    snapshots
                }
                Ok(None) => {
                    // The group is rebalancing (another member's change).
                    detector.rebalanced();
                    continue;
                }
                Err(e) => {
                    failed_looks += 1;
                    if failed_looks == BLIND_AFTER {
                        tracing::warn!(
                            "Stall watchdog: cannot read the offsets of {} ({e}); it judges nothing until it can",
                            shared.topic
                        );
                    }
                    // An outage is not a partition's stall: start the clocks again.
                    detector.rebalanced();
                    continue;
                }
            };
            if shared.rebalances.load(Ordering::SeqCst) != seen_rebalances
                || shared.in_rebalance.load(Ordering::SeqCst)
            {
                continue; // Taken across a rebalance: look again next time.
            }
            let stalls = detector.observe(Instant::now(), &snapshots);

            let current: HashSet<(i32, StallKind)> =
                stalls.iter().map(|s| (s.partition, s.kind)).collect();
            for stall in &stalls {
                if reported.insert((stall.partition, stall.kind)) {
                    first_remedy(&shared, stall);
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

    /// Every owned partition's snapshot; `Ok(None)` while the coordinator reports the group
    /// rebalancing; an error when the broker could not be asked.
    fn look(
        shared: &Shared,
        consumer: &BaseConsumer<Context>,
        probe: &LagProbe,
    ) -> Result<Option<Vec<Snapshot>>, String> {
        let state = probe.group_state().map_err(|e| e.to_string())?;
        if state != "Stable" {
            return Ok(None);
        }
        let offsets = probe.offsets().map_err(|e| e.to_string())?;
        let positions: HashMap<i32, i64> = crate::lag::partition_offsets(
            &consumer.position().map_err(|e| e.to_string())?,
            &shared.topic,
        );
        let owned = lock(&shared.owned);
        Ok(Some(
            offsets
                .iter()
                .filter_map(|row| {
                    let state = owned.get(&row.partition)?;
                    let handled = state.commit.handled_offset();
                    let fetch_next = state.fetch_next.load(Ordering::Relaxed);
                    let fetch_queued = state.fetch_queued.load(Ordering::Relaxed);
                    Some(Snapshot {
                        partition: row.partition,
                        log_end: row.log_end,
                        committed: row.committed,
                        start: row.log_end - row.lag,
                        fetched_to_end: fetch_queued == 0 && fetch_next >= row.log_end,
                        position: positions.get(&row.partition).copied(),
                        handled: (handled >= 0).then_some(handled),
                        // A parked partition waits its turn, a few turns at most.
                        busy: state.queued_records.load(Ordering::SeqCst) > 0
                            || state.is_held()
                            || state.parked.load(Ordering::SeqCst),
                    })
                })
                .collect(),
        ))
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

    /// Reports a new stall and, for a commit stall, sends the commit again.
    fn first_remedy(shared: &Shared, stall: &Stall) {
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
                tracing::warn!("{what}; the consumer stops if this lasts as long again");
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
            start: 100,
            fetched_to_end: false,
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

    /// The one stall expected after the timeout.
    fn stalled(partition: i32, kind: StallKind, records: i64) -> Vec<Stall> {
        vec![Stall {
            partition,
            kind,
            for_: TIMEOUT,
            records,
        }]
    }

    /// Observes one snapshot a second, `snapshot(i)` at second i, and checks that none
    /// stalls.
    fn never_stalls(seconds: u64, snapshot: impl Fn(i64) -> Snapshot) {
        let mut d = StallDetector::new(TIMEOUT);
        let start = Instant::now();
        for i in 0..seconds {
            let s = snapshot(i as i64);
            let stalls = d.observe(start + Duration::from_secs(i), &[s]);
            assert!(stalls.is_empty(), "second {i}: {stalls:?}");
        }
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
        assert_eq!(stalls, stalled(3, StallKind::Fetch, 281));
    }

    #[test]
    fn a_moving_position_or_a_busy_worker_is_not_a_stall() {
        never_stalls(20, |i| Snapshot {
            log_end: 1000 + i * 10,
            position: Some(900 + i * 10),
            committed: Some(900 + i * 10),
            handled: Some(900 + i * 10),
            ..snap(0)
        });
        let busy = Snapshot {
            log_end: 5000,
            busy: true,
            ..snap(1)
        };
        let mut d = StallDetector::new(TIMEOUT);
        assert!(run(&mut d, Instant::now(), 60.0, busy).is_empty());
    }

    #[test]
    fn a_never_fetched_partition_with_records_stalls() {
        let mut d = StallDetector::new(TIMEOUT);
        let s = Snapshot {
            log_end: 53,
            committed: None,
            start: 0,
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
    fn a_transaction_marker_at_the_log_end_is_not_waiting_records() {
        let mut d = StallDetector::new(TIMEOUT);
        let s = Snapshot {
            log_end: 101,
            fetched_to_end: true,
            ..snap(4)
        };
        assert!(run(&mut d, Instant::now(), 60.0, s).is_empty());
    }

    #[test]
    fn a_never_committed_partition_is_measured_from_the_log_start() {
        let mut d = StallDetector::new(TIMEOUT);
        let s = Snapshot {
            log_end: 500,
            committed: None,
            start: 500,
            position: None,
            handled: None,
            ..snap(6)
        };
        assert!(run(&mut d, Instant::now(), 60.0, s).is_empty());
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
        assert_eq!(stalls, stalled(7, StallKind::Commit, 53));
    }

    #[test]
    fn commits_that_keep_moving_are_not_a_stall_even_when_behind() {
        never_stalls(30, |i| Snapshot {
            log_end: 2000 + i * 100,
            committed: Some(1000 + i * 100),
            position: Some(2000 + i * 100),
            handled: Some(1900 + i * 100),
            ..snap(0)
        });
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
