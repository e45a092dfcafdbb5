//! Key-ordered concurrency, its pure parts: which sub-lane a record goes to, and what a
//! partition may commit when its records complete out of offset order.
//!
//! In key mode a partition's records are spread over several sub-lanes by a stable hash of
//! their key, so records of one key stay in one lane, in order, while different keys of
//! the same partition are handled concurrently. Sub-lanes finish in any order, so a
//! partition's committable offset is no longer "one past the last batch": it is the lowest
//! offset taken from Kafka and not yet handled ([`PendingOffsets`]). Records handled above
//! it are read again after a crash (at least once, as before; the postgres sink is
//! idempotent per record).

use std::collections::BTreeSet;

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

/// A partition's offsets taken from Kafka and not yet handled, and so the offset it may
/// commit: the lowest of them, or one past the last taken when none is pending. Offsets
/// Kafka never delivered (compacted away, transaction markers) block nothing, because
/// only delivered ones are ever pending.
#[derive(Debug, Default, Clone)]
pub struct PendingOffsets {
    pending: BTreeSet<i64>,
    /// One past the highest offset taken (-1: nothing taken yet).
    next: i64,
}

impl PendingOffsets {
    /// Nothing taken yet.
    pub fn new() -> Self {
        PendingOffsets {
            pending: BTreeSet::new(),
            next: -1,
        }
    }

    /// `offset` was taken from Kafka and handed to a sub-lane. Offsets arrive in
    /// increasing order per partition.
    pub fn taken(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.next = self.next.max(offset + 1);
    }

    /// `offset` was handled (written by the sink, or dead-lettered).
    pub fn handled(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// The offset that may be committed: every record below it was handled. `None` before
    /// anything was taken.
    pub fn committable(&self) -> Option<i64> {
        match self.pending.first() {
            Some(lowest) => Some(*lowest),
            None => (self.next >= 0).then_some(self.next),
        }
    }

    /// Records taken and not yet handled.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every record taken was handled.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
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
        let mut offsets = PendingOffsets::new();
        assert_eq!(offsets.committable(), None);
        for offset in [10, 11, 12, 14] {
            offsets.taken(offset);
        }
        assert_eq!(offsets.committable(), Some(10));
        offsets.handled(11);
        offsets.handled(14);
        assert_eq!(offsets.committable(), Some(10), "10 still pending");
        offsets.handled(10);
        assert_eq!(offsets.committable(), Some(12));
        offsets.handled(12);
        // 13 was never delivered (compacted, a transaction marker): it blocks nothing.
        assert_eq!(offsets.committable(), Some(15));
        assert!(offsets.is_empty());
    }

    /// Random completion orders, as sub-lanes finish: the committable offset never passes
    /// a record not yet handled, never goes back, and reaches the end once all are done.
    #[test]
    fn random_completion_orders_never_commit_past_an_unhandled_record() {
        let mut rng = StdRng::seed_from_u64(18);
        for _ in 0..200 {
            let mut offsets = PendingOffsets::new();
            let mut taken: Vec<i64> = Vec::new();
            let mut next = rng.random_range(0..1000);
            for _ in 0..rng.random_range(1..300) {
                // Gaps in the offsets now and then.
                next += if rng.random_ratio(1, 10) { 2 } else { 1 };
                offsets.taken(next);
                taken.push(next);
            }
            let end = next + 1;
            let mut order = taken.clone();
            order.shuffle(&mut rng);
            let mut handled = BTreeSet::new();
            let mut last = offsets.committable().expect("taken");
            for offset in order {
                offsets.handled(offset);
                handled.insert(offset);
                let committable = offsets.committable().expect("taken");
                assert!(
                    committable >= last,
                    "went back from {last} to {committable}"
                );
                assert!(
                    taken
                        .iter()
                        .filter(|o| **o < committable)
                        .all(|o| handled.contains(o)),
                    "{committable} passes an unhandled record"
                );
                last = committable;
            }
            assert_eq!(offsets.committable(), Some(end));
        }
    }
}
