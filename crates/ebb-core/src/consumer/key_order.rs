//! Key-ordered concurrency, its pure parts: which sub-lane a record goes to, and what a
//! partition may commit when its records complete out of offset order.
//!
//! In key mode a partition's records are spread over several sub-lanes by a stable hash of
//! their key, so records of one key stay in one lane, in order, while different keys of
//! the same partition are handled concurrently. Sub-lanes finish in any order, so a
//! partition's committable offset is no longer "one past the last batch": it is the lowest
//! offset taken from Kafka and not yet handled ([`PendingBatches`]). Records handled above
//! it are read again after a crash (at least once, as before; the postgres sink is
//! idempotent per record).

use std::collections::BTreeMap;

/// The sub-lane, of `lanes`, for a record with `key` at `offset`: a stable hash of the key
/// (FNV-1a, the same in every process and release, so a key's lane does not move between
/// consumers), or the offset for a record without a key, which spreads them evenly and
/// keeps no order among them (they have no key to be ordered by).
pub fn lane_of(key: Option<&[u8]>, offset: i64, lanes: usize) -> usize {
    let lanes = lanes.max(1) as u64;
    match key {
        Some(key) => (fnv1a(key) % lanes) as usize,
        None => (offset.unsigned_abs() % lanes) as usize,
    }
}

/// FNV-1a, 64 bits: tiny, stable and good enough to spread account ids over a few lanes.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// A partition's batches opened and not yet handled, and so the offset it may commit.
///
/// Every record taken from Kafka goes into the open batch of one sub-lane, and that batch
/// stays pending from its first record until the sink (or the dead-letter topic) has it.
/// So the lowest first offset among pending batches is the lowest record not yet handled:
/// everything below it was handled, and it may be committed. With nothing pending, every
/// record taken was handled and the committable offset is one past the last of them.
/// Offsets Kafka never delivered (compacted away, transaction markers) block nothing,
/// because only delivered ones are ever in a batch. Bookkeeping is per batch, not per
/// record: two small updates for every hundred records or so.
#[derive(Debug, Default, Clone)]
pub struct PendingBatches {
    /// First offsets of the batches opened and not yet handled, with how many start
    /// there (more than one only if the client went back in the log, e.g. after an offset
    /// reset, and two sub-lanes opened batches at the same offset).
    pending: BTreeMap<i64, usize>,
    /// One past the last record of the handled batches (-1: none yet).
    next: i64,
}

impl PendingBatches {
    /// Nothing taken yet.
    pub fn new() -> Self {
        PendingBatches {
            pending: BTreeMap::new(),
            next: -1,
        }
    }

    /// A sub-lane opened a batch with the record at `first_offset`. Records are taken in
    /// offset order, so this is above every offset taken before.
    pub fn opened(&mut self, first_offset: i64) {
        *self.pending.entry(first_offset).or_default() += 1;
    }

    /// The batch from `first_offset` to just before `next_offset` was handled.
    pub fn handled(&mut self, first_offset: i64, next_offset: i64) {
        if let Some(count) = self.pending.get_mut(&first_offset) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(&first_offset);
            }
        }
        self.next = self.next.max(next_offset);
    }

    /// The offset that may be committed: every record taken below it was handled. `None`
    /// before the first batch was handled.
    pub fn committable(&self) -> Option<i64> {
        let handled_up_to = (self.next >= 0).then_some(self.next);
        match self.pending.first_key_value() {
            Some((lowest, _)) => handled_up_to.map(|next| next.min(*lowest)),
            None => handled_up_to,
        }
    }

    /// Batches opened and not yet handled.
    pub fn len(&self) -> usize {
        self.pending.values().sum()
    }

    /// Whether every batch opened was handled.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn a_key_always_goes_to_the_same_lane_and_keys_spread_over_all_lanes() {
        assert_eq!(
            lane_of(Some(b"ACC1001"), 5, 16),
            lane_of(Some(b"ACC1001"), 99, 16)
        );
        // Pinned: the lane must not change between releases or processes.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut used = [0usize; 16];
        for account in 1000..3000 {
            used[lane_of(Some(format!("ACC{account}").as_bytes()), 0, 16)] += 1;
        }
        assert!(
            used.iter().all(|n| (60..=190).contains(n)),
            "2,000 accounts over 16 lanes: {used:?}"
        );
        assert_eq!(lane_of(None, 17, 4), 1, "keyless records by offset");
        assert_eq!(lane_of(Some(b"x"), 0, 0), 0, "at least one lane");
    }

    #[test]
    fn the_committable_offset_is_the_lowest_pending_one() {
        let mut batches = PendingBatches::new();
        assert_eq!(batches.committable(), None);
        // Two sub-lanes: 10, 12 in one batch; 11, 14 in the other (13 never delivered).
        batches.opened(10);
        batches.opened(11);
        assert_eq!(batches.committable(), None, "nothing handled yet");
        batches.handled(11, 15);
        assert_eq!(batches.committable(), Some(10), "10 still pending");
        batches.opened(20);
        batches.handled(10, 13);
        assert_eq!(batches.committable(), Some(15));
        batches.handled(20, 21);
        assert_eq!(batches.committable(), Some(21));
        assert!(batches.is_empty());
    }

    #[test]
    fn two_batches_opened_at_one_offset_both_hold_the_commit() {
        // The client went back in the log: two sub-lanes opened batches at offset 7.
        let mut batches = PendingBatches::new();
        batches.opened(5);
        batches.handled(5, 9);
        batches.opened(7);
        batches.opened(7);
        assert_eq!(batches.len(), 2);
        batches.handled(7, 8);
        assert_eq!(
            batches.committable(),
            Some(7),
            "the other batch at 7 is pending"
        );
        batches.handled(7, 10);
        assert_eq!(batches.committable(), Some(10));
    }

    /// Random keys over random sub-lanes, batches closed at random sizes, and sub-lanes
    /// finishing in random interleavings (each in its own order, as its worker runs): the
    /// committable offset never passes a record not yet handled, never goes back, and
    /// reaches the end once all are done.
    #[test]
    fn random_completion_orders_never_commit_past_an_unhandled_record() {
        let mut rng = StdRng::seed_from_u64(18);
        for _ in 0..200 {
            let lanes = rng.random_range(1..8);
            let mut batches = PendingBatches::new();
            // Each sub-lane's closed batches (first offset, offsets), oldest first, and
            // its open batch.
            let mut closed: Vec<std::collections::VecDeque<Vec<i64>>> =
                vec![Default::default(); lanes];
            let mut open: Vec<Vec<i64>> = vec![Vec::new(); lanes];
            let mut taken: Vec<i64> = Vec::new();
            let mut handled = BTreeSet::new();
            let mut last = -1;
            let mut next = rng.random_range(0..1000);
            let records = rng.random_range(1..400);
            let check = |batches: &PendingBatches,
                         handled: &BTreeSet<i64>,
                         taken: &[i64],
                         last: &mut i64| {
                if let Some(committable) = batches.committable() {
                    assert!(
                        committable >= *last,
                        "went back from {last} to {committable}"
                    );
                    assert!(
                        taken
                            .iter()
                            .filter(|o| **o < committable)
                            .all(|o| handled.contains(o)),
                        "{committable} passes an unhandled record"
                    );
                    *last = committable;
                }
            };
            let finish_one = |batches: &mut PendingBatches,
                              closed: &mut Vec<std::collections::VecDeque<Vec<i64>>>,
                              handled: &mut BTreeSet<i64>,
                              rng: &mut StdRng| {
                let busy: Vec<usize> = (0..lanes).filter(|l| !closed[*l].is_empty()).collect();
                if let Some(lane) = busy.get(rng.random_range(0..busy.len().max(1))) {
                    let batch = closed[*lane].pop_front().expect("busy");
                    handled.extend(&batch);
                    batches.handled(batch[0], batch[batch.len() - 1] + 1);
                }
            };
            for _ in 0..records {
                // Gaps in the offsets now and then.
                next += if rng.random_ratio(1, 10) { 2 } else { 1 };
                let key = rng.random_range(0..50u32).to_string();
                let lane = lane_of(Some(key.as_bytes()), next, lanes);
                if open[lane].is_empty() {
                    batches.opened(next);
                }
                open[lane].push(next);
                taken.push(next);
                if rng.random_ratio(1, 5) {
                    closed[lane].push_back(std::mem::take(&mut open[lane]));
                }
                if rng.random_ratio(1, 3) {
                    finish_one(&mut batches, &mut closed, &mut handled, &mut rng);
                    check(&batches, &handled, &taken, &mut last);
                }
            }
            for lane in 0..lanes {
                if !open[lane].is_empty() {
                    closed[lane].push_back(std::mem::take(&mut open[lane]));
                }
            }
            while closed.iter().any(|c| !c.is_empty()) {
                finish_one(&mut batches, &mut closed, &mut handled, &mut rng);
                check(&batches, &handled, &taken, &mut last);
            }
            assert_eq!(batches.committable(), Some(next + 1));
            assert!(batches.is_empty());
        }
    }
}
