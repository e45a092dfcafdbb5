//! Fetch rotation: how many of a consumer's partitions librdkafka fetches at once.
//!
//! A partition with a backlog keeps a full fetch queue in librdkafka: its records, an op
//! of about 300 bytes each, and the decompressed record batches they point into. Kafka
//! returns at least one whole record batch per partition whatever the fetch limits say,
//! so a consumer owning 100 partitions with a backlog holds 100 full queues, however small
//! each queue's limit (`docs/BENCHMARKS.md`, consume-rss-100). Rotation bounds the number
//! instead: at most `slots` partitions with a backlog fetch at once, and the others are
//! paused in librdkafka (*parked*) and wait their turn, first come first served. A
//! partition with a backlog gives up its slot when its turn is over and another partition
//! waits. Pausing drops what librdkafka had prefetched for the partition (on resume it
//! fetches again from the first record the consumer has not taken), so a turn is long
//! compared with a fetch.
//!
//! A partition without a backlog (a read takes its records and leaves its queue empty:
//! live traffic the consumer keeps up with) holds next to nothing, takes no slot and is
//! never parked, so live traffic on many partitions is never delayed by rotation. A newly
//! assigned or resumed partition counts as having a backlog until a read takes records
//! and leaves none (an empty queue before its first fetch has arrived says nothing), or
//! until a whole turn brings it nothing.
//!
//! A partition whose sink is slower than its fetches (it took records and has no room)
//! gives its fetch up however few partitions there are, and fetches again once it has
//! room: its queue would otherwise hold a fetched batch until the sink catches up. With no
//! more partitions than slots, that is the only parking. This module is pure
//! (time is passed in): the poll thread reports what it sees and applies the pauses and
//! resumes it is given.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use std::time::Instant;

/// How long a partition with a backlog fetches before it gives up its slot to a waiting
/// one. A parked partition waits about (waiting ÷ slots) turns, far below the stall
/// watchdog's timeout; each turn's end drops at most one fetch queue's worth of prefetch.
pub const TURN: Duration = Duration::from_millis(500);

/// A partition that started to fetch with a backlog while every slot was taken (live
/// traffic turning into a backlog on many partitions at once) is parked only after this
/// long: long enough to show whether its backlog lasts.
const FIRST_LOOK: Duration = Duration::from_millis(100);

/// A partition that took records this turn and has had no room since a step at least this
/// long ago (in practice: at two steps in a row) gives its slot up: its sink is slower than
/// its fetches, and what is left in its queue would only hold memory. (A single step
/// without room is how a fast sink's batches come and go; parking then would only fetch the
/// same records again. Waiting longer costs memory: at 20 ms an IO-bound consumer of 100
/// partitions peaked 13 MiB higher, `bench/consume-rss-100`.)
const FULL_FOR: Duration = Duration::from_millis(1);

/// A pause or resume for the poll thread to make in librdkafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Stop fetching the partition; its turn is over.
    Park(i32),
    /// Fetch the partition.
    Resume(i32),
}

#[derive(Debug, Clone, Copy)]
struct Fetching {
    /// Since when it has fetched (its turn's start).
    since: Instant,
    /// Its queue held records after the last read (or it has not been read since it
    /// started to fetch): it takes a slot.
    backlogged: bool,
    /// A read took records from it during this turn.
    took: bool,
    /// Since when it has had no room (from the steps), after taking records this turn.
    full_since: Option<Instant>,
}

/// Which partitions fetch and which wait.
#[derive(Debug)]
pub struct Rotation {
    slots: usize,
    turn: Duration,
    fetching: HashMap<i32, Fetching>,
    waiting: VecDeque<i32>,
}

impl Rotation {
    /// At most `slots` (at least 1) partitions with a backlog fetch at once, each for
    /// `turn` while others wait.
    pub fn new(slots: usize, turn: Duration) -> Self {
        Rotation {
            slots: slots.max(1),
            turn,
            fetching: HashMap::new(),
            waiting: VecDeque::new(),
        }
    }

    /// A newly assigned partition: it fetches if a slot is free, else it waits. The
    /// change is always made, since librdkafka keeps a partition's pause across an
    /// unassignment and this member may have parked it before.
    pub fn assign(&mut self, partition: i32, now: Instant) -> Change {
        self.release(partition);
        if self.taken() < self.slots {
            self.start(partition, now);
            Change::Resume(partition)
        } else {
            self.waiting.push_back(partition);
            Change::Park(partition)
        }
    }

    /// The partition is no longer owned.
    pub fn release(&mut self, partition: i32) {
        self.fetching.remove(&partition);
        self.waiting.retain(|&p| p != partition);
    }

    /// After a read of a fetching partition: how many records it gave, and whether
    /// records were left in its queue. A partition is caught up once a read took records
    /// and left none; a read that found nothing says nothing new (a resumed partition's
    /// first fetch may still be on its way).
    pub fn observe(&mut self, partition: i32, took: usize, left: bool) {
        if let Some(f) = self.fetching.get_mut(&partition) {
            f.took |= took > 0;
            if left {
                f.backlogged = true;
            } else if took > 0 {
                f.backlogged = false;
            }
        }
    }

    /// Whether the partition waits its turn (paused in librdkafka).
    pub fn is_parked(&self, partition: i32) -> bool {
        self.waiting.contains(&partition)
    }

    /// How many partitions wait their turn.
    pub fn parked(&self) -> usize {
        self.waiting.len()
    }

    /// Ends the turns that are over (when another partition may take the slot) and any
    /// beyond the slots, then gives free slots to waiting partitions, in the order they
    /// began to wait. `may_fetch` says whether a waiting partition can use a slot now (not
    /// while its sink writes are failing, or while its buffered batches fill its share); one
    /// that cannot keeps its place.
    pub fn step(&mut self, now: Instant, mut may_fetch: impl FnMut(i32) -> bool) -> Vec<Change> {
        let mut changes = Vec::new();
        let someone_waits = self.waiting.iter().any(|&p| may_fetch(p));
        for (&partition, f) in self.fetching.iter_mut() {
            f.full_since = if f.took && !may_fetch(partition) {
                f.full_since.or(Some(now))
            } else {
                None
            };
        }
        let mut busy: Vec<(Instant, i32, bool, Option<Instant>)> = self
            .fetching
            .iter()
            .filter(|(_, f)| f.backlogged)
            .map(|(&p, f)| (f.since, p, f.took, f.full_since))
            .collect();
        busy.sort_unstable();
        let mut taken = busy.len();
        for (since, partition, took, full_since) in busy {
            let fetched = now.saturating_duration_since(since);
            if !took && fetched >= self.turn && may_fetch(partition) {
                // Nothing came in a whole turn with room to take it: it is caught up, not
                // waiting for a fetch.
                if let Some(f) = self.fetching.get_mut(&partition) {
                    f.backlogged = false;
                }
                taken -= 1;
                continue;
            }
            let over_slots = taken > self.slots && fetched >= FIRST_LOOK;
            // Full: it took what it could this turn and has not been able to take more
            // for a while (its share of the buffer is full, or its writes fail). What is
            // left in its queue would only hold memory until the sink catches up, waiting
            // or not: it is fetched again on its next turn.
            let full = full_since.is_some_and(|t| now.saturating_duration_since(t) >= FULL_FOR);
            if over_slots || full || (someone_waits && fetched >= self.turn) {
                self.fetching.remove(&partition);
                self.waiting.push_back(partition);
                changes.push(Change::Park(partition));
                taken -= 1;
            }
        }
        while taken < self.slots {
            let Some(index) = self.waiting.iter().position(|&p| may_fetch(p)) else {
                break;
            };
            let Some(partition) = self.waiting.remove(index) else {
                break;
            };
            self.start(partition, now);
            changes.push(Change::Resume(partition));
            taken += 1;
        }
        changes
    }

    /// librdkafka refused a change: the partition is back where it was, so that the next
    /// step tries again (a refused resume) or the partition goes on fetching (a refused
    /// pause).
    pub fn refused(&mut self, change: Change, now: Instant) {
        match change {
            Change::Park(partition) => {
                self.waiting.retain(|&p| p != partition);
                self.start(partition, now);
            }
            Change::Resume(partition) => {
                self.fetching.remove(&partition);
                self.waiting.push_front(partition);
            }
        }
    }

    fn start(&mut self, partition: i32, now: Instant) {
        self.fetching.insert(
            partition,
            Fetching {
                since: now,
                backlogged: true,
                took: false,
                full_since: None,
            },
        );
    }

    fn taken(&self) -> usize {
        self.fetching.values().filter(|f| f.backlogged).count()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const STEP: Duration = Duration::from_millis(10);

    fn apply(changes: &[Change], fetching: &mut HashSet<i32>) {
        for change in changes {
            match *change {
                Change::Park(p) => assert!(fetching.remove(&p), "parked {p}, not fetching"),
                Change::Resume(p) => assert!(fetching.insert(p), "resumed {p}, fetching"),
            }
        }
    }

    #[test]
    fn no_more_partitions_than_slots_with_room_are_never_parked() {
        let now = Instant::now();
        let mut rotation = Rotation::new(4, TURN);
        for p in 0..4 {
            assert_eq!(rotation.assign(p, now), Change::Resume(p));
        }
        for i in 1..1000 {
            assert!(rotation.step(now + STEP * i, |_| true).is_empty());
        }
    }

    #[test]
    fn beyond_the_slots_partitions_wait_and_take_turns_in_order() {
        let t0 = Instant::now();
        let mut rotation = Rotation::new(2, TURN);
        let assigned: Vec<Change> = (0..5).map(|p| rotation.assign(p, t0)).collect();
        use Change::*;
        assert_eq!(assigned, [Resume(0), Resume(1), Park(2), Park(3), Park(4)]);
        assert_eq!(rotation.parked(), 3);
        // Within the turn nothing changes.
        rotation.observe(0, 100, true);
        rotation.observe(1, 100, true);
        assert!(rotation.step(t0 + TURN / 2, |_| true).is_empty());
        // At its end both fetching partitions give their slots to the first two waiting.
        let mut changes = rotation.step(t0 + TURN, |_| true);
        changes.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(changes, [Park(0), Park(1), Resume(2), Resume(3)]);
        // Next turn: 4 waited longest, then 0.
        rotation.observe(2, 100, true);
        rotation.observe(3, 100, true);
        let changes = rotation.step(t0 + 2 * TURN, |_| true);
        assert!(changes.contains(&Resume(4)) && changes.contains(&Resume(0)));
        assert!(rotation.is_parked(1) && rotation.is_parked(2) && rotation.is_parked(3));
    }

    #[test]
    fn a_partition_without_a_backlog_takes_no_slot_and_keeps_fetching() {
        let t0 = Instant::now();
        let mut rotation = Rotation::new(1, TURN);
        assert_eq!(rotation.assign(0, t0), Change::Resume(0));
        assert_eq!(rotation.assign(1, t0), Change::Park(1));
        // 0 is caught up: its slot goes to 1 at once, and 0 goes on fetching.
        rotation.observe(0, 0, false);
        assert!(
            rotation.step(t0 + STEP, |_| true).is_empty(),
            "no fetch arrived yet"
        );
        rotation.observe(0, 10, false);
        assert_eq!(rotation.step(t0 + STEP, |_| true), [Change::Resume(1)]);
        assert!(rotation.step(t0 + 10 * TURN, |_| true).is_empty());
        assert!(!rotation.is_parked(0) && !rotation.is_parked(1));
        // A backlog on 0 as well: one slot for two, so the one that began to fetch first
        // is parked; a turn later the two swap.
        rotation.observe(0, 10, true);
        rotation.observe(1, 10, true);
        assert_eq!(rotation.step(t0 + 10 * TURN, |_| true), [Change::Park(0)]);
        assert_eq!(
            rotation.step(t0 + 11 * TURN, |_| true),
            [Change::Park(1), Change::Resume(0)]
        );
    }

    #[test]
    fn a_waiting_partition_that_cannot_fetch_keeps_its_place_and_takes_no_slot() {
        let t0 = Instant::now();
        let mut rotation = Rotation::new(1, TURN);
        rotation.assign(0, t0);
        rotation.assign(1, t0);
        rotation.assign(2, t0);
        rotation.observe(0, 100, true);
        // 1 is held (its sink writes fail): 0 is not parked for it, and 2 goes first.
        assert_eq!(
            rotation.step(t0 + TURN, |p| p != 1),
            [Change::Park(0), Change::Resume(2)]
        );
        // Nobody but 0 could take 2's slot: 2 goes on.
        rotation.observe(2, 100, true);
        assert!(rotation.step(t0 + 2 * TURN, |p| p == 2).is_empty());
        // 1 recovers and is first in line.
        assert_eq!(
            rotation.step(t0 + 3 * TURN, |_| true),
            [Change::Park(2), Change::Resume(1)]
        );
    }

    #[test]
    fn a_partition_that_took_what_it_could_gives_its_slot_up_before_its_turn_ends() {
        let t0 = Instant::now();
        let mut rotation = Rotation::new(1, TURN);
        rotation.assign(0, t0);
        rotation.assign(1, t0);
        // Its buffer is full but nothing was read this turn (the fetch is on its way):
        // it keeps the slot.
        assert!(rotation.step(t0 + STEP, |p| p == 1).is_empty());
        // A read took records and left some: once it has no room, the slot goes to 1.
        rotation.observe(0, 200, true);
        assert!(
            rotation.step(t0 + 2 * STEP, |_| true).is_empty(),
            "room left"
        );
        // Without room for a moment (a fast sink's batches come and go): it keeps it.
        assert!(rotation.step(t0 + 3 * STEP, |p| p == 1).is_empty());
        assert!(rotation.step(t0 + 4 * STEP, |_| true).is_empty());
        assert!(rotation.step(t0 + 5 * STEP, |p| p == 1).is_empty());
        // Without room for FULL_FOR: the slot goes to 1.
        assert_eq!(
            rotation.step(t0 + 5 * STEP + FULL_FOR, |p| p == 1),
            [Change::Park(0), Change::Resume(1)]
        );
        // Nobody else may fetch: a full partition still gives its slot (and its queue) up.
        let t1 = t0 + 6 * STEP + FULL_FOR;
        rotation.observe(1, 200, true);
        assert!(rotation.step(t1, |_| false).is_empty());
        assert_eq!(rotation.step(t1 + FULL_FOR, |_| false), [Change::Park(1)]);
        // It fetches again once it has room.
        assert_eq!(
            rotation.step(t1 + FULL_FOR + STEP, |_| true),
            [Change::Resume(0)]
        );
    }

    #[test]
    fn a_partition_whose_turn_brings_nothing_is_caught_up_and_nothing_stays_parked() {
        let t0 = Instant::now();
        let mut rotation = Rotation::new(1, TURN);
        for p in 0..3 {
            rotation.assign(p, t0);
        }
        // Nothing arrives anywhere (the partitions are at their ends): each turn frees its
        // slot for the next one without parking anybody again.
        assert_eq!(rotation.step(t0 + TURN, |_| true), [Change::Resume(1)]);
        assert_eq!(rotation.step(t0 + 2 * TURN, |_| true), [Change::Resume(2)]);
        assert!(rotation.step(t0 + 3 * TURN, |_| true).is_empty());
        assert_eq!(rotation.parked(), 0);
    }

    #[test]
    fn a_refused_change_is_undone() {
        let t0 = Instant::now();
        let mut rotation = Rotation::new(1, TURN);
        rotation.assign(0, t0);
        rotation.assign(1, t0);
        rotation.observe(0, 100, true);
        let changes = rotation.step(t0 + TURN, |_| true);
        assert_eq!(changes, [Change::Park(0), Change::Resume(1)]);
        rotation.refused(Change::Resume(1), t0 + TURN);
        assert!(rotation.is_parked(1));
        // The slot is free again: 1 is first in line.
        assert_eq!(
            rotation.step(t0 + TURN + STEP, |_| true),
            [Change::Resume(1)]
        );
        rotation.refused(Change::Park(0), t0 + TURN);
        assert!(!rotation.is_parked(0));
    }

    #[test]
    fn a_released_partition_is_forgotten_and_a_reassigned_one_starts_afresh() {
        let t0 = Instant::now();
        let mut rotation = Rotation::new(1, TURN);
        rotation.assign(0, t0);
        rotation.assign(1, t0);
        rotation.release(1);
        assert_eq!(rotation.parked(), 0);
        rotation.release(0);
        assert_eq!(rotation.assign(1, t0), Change::Resume(1));
        assert_eq!(rotation.assign(1, t0), Change::Resume(1), "idempotent");
        assert_eq!(rotation.assign(0, t0), Change::Park(0));
    }

    /// Random owners, backlogs, holds and rebalances, stepped every 10 ms: the backlogged
    /// partitions fetching never exceed the slots for longer than a first look, and every
    /// partition that may fetch waits no longer than its place in the line allows.
    #[test]
    fn random_rotations_keep_the_slots_and_let_every_partition_fetch_in_bounded_time() {
        for seed in 0..24 {
            let mut rng = StdRng::seed_from_u64(seed);
            let slots = rng.random_range(1..=8);
            let owned_count: i32 = rng.random_range(1..=40);
            let t0 = Instant::now();
            let mut rotation = Rotation::new(slots, TURN);
            let mut fetching = HashSet::new();
            let mut owned: HashSet<i32> = HashSet::new();
            let mut backlog: HashMap<i32, bool> = HashMap::new();
            let mut held: HashSet<i32> = HashSet::new();
            let mut waiting_since: HashMap<i32, Instant> = HashMap::new();
            let mut over_since: Option<Instant> = None;
            for p in 0..owned_count {
                if rotation.assign(p, t0) == Change::Resume(p) {
                    fetching.insert(p);
                }
                owned.insert(p);
                backlog.insert(p, true);
            }
            for i in 1..1500u32 {
                let now = t0 + STEP * i;
                // Now and then a partition's backlog ends or begins, a sink write starts
                // or stops failing, or a partition is revoked or (re)assigned.
                if rng.random_bool(0.05) {
                    let p = rng.random_range(0..owned_count);
                    backlog.insert(p, rng.random_bool(0.7));
                }
                if rng.random_bool(0.01) {
                    let p = rng.random_range(0..owned_count);
                    if !held.remove(&p) {
                        held.insert(p);
                    }
                }
                if rng.random_bool(0.002) {
                    let p = rng.random_range(0..owned_count);
                    if owned.remove(&p) {
                        rotation.release(p);
                        fetching.remove(&p);
                    } else {
                        owned.insert(p);
                        let change = rotation.assign(p, now);
                        if change == Change::Resume(p) {
                            fetching.insert(p);
                        }
                    }
                    waiting_since.remove(&p);
                }
                for &p in &fetching {
                    rotation.observe(p, rng.random_range(1..100), backlog[&p]);
                }
                let changes = rotation.step(now, |p| !held.contains(&p));
                apply(&changes, &mut fetching);

                // Everything owned is either fetching or parked, never both.
                for &p in &owned {
                    assert_ne!(fetching.contains(&p), rotation.is_parked(p), "seed {seed}");
                }
                assert_eq!(fetching.len() + rotation.parked(), owned.len());
                // Backlogged and fetching within the slots, but for a first look.
                let busy = fetching.iter().filter(|p| backlog[p]).count();
                if busy > slots {
                    let since = *over_since.get_or_insert(now);
                    assert!(
                        now - since <= FIRST_LOOK + 2 * STEP,
                        "seed {seed}: {busy} backlogged partitions fetch with {slots} slots"
                    );
                } else {
                    over_since = None;
                }
                // A partition that may fetch waits at most its place in the line's turns.
                let bound = TURN * (owned.len().div_ceil(slots) as u32 + 1) + FIRST_LOOK;
                for &p in &owned {
                    if rotation.is_parked(p) && !held.contains(&p) {
                        let since = *waiting_since.entry(p).or_insert(now);
                        assert!(
                            now - since <= bound,
                            "seed {seed}: partition {p} waited {:?} (bound {bound:?})",
                            now - since
                        );
                    } else {
                        waiting_since.remove(&p);
                    }
                }
            }
        }
    }
}
