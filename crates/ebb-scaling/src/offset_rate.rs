//! Messages per second from successive readings of a sum of offsets: the arrival rate from
//! a topic's log-end offsets, as `ebb scale`, `ebb keda-scaler` (through
//! [`crate::external::Tracker`]), the simulator and `ebb demo` measure it, and the demo's
//! processed rate from the group's committed offsets. One type, so that every caller means
//! the same thing by "the rate between two readings".

/// The rate of a sum of offsets, fed one reading at a time.
///
/// - The first reading is only a starting point: its rate is 0.
/// - A reading taken no later than the start (the same instant, or a clock that stepped
///   back) says nothing new: the start stays where it was, so that the records counted
///   since are measured over a positive span at the next reading, and the last rate stands.
/// - A sum lower than the start's is a reset (a topic deleted and created again, offsets
///   rewound, a partition read as 0): offsets went backwards, nothing can be said about
///   arrivals, so the rate is 0 and the reading becomes the new start.
/// - Partitions added to the topic start at offset 0, so the sum grows only by the records
///   they receive: those count as arrivals like any others, with no special case.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OffsetRate {
    /// The start of the span the next reading is measured over: (seconds, sum).
    start: Option<(f64, f64)>,
    /// What the last reading returned.
    rate: f64,
}

impl OffsetRate {
    /// No reading yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A rate whose first reading, `sum` at `at_s`, is already known (a topic created at
    /// the start of a run holds 0 records then).
    pub fn starting_at(at_s: f64, sum: f64) -> Self {
        OffsetRate {
            start: Some((at_s, sum)),
            rate: 0.0,
        }
    }

    /// True once a reading has given the rate a starting point.
    pub fn has_start(&self) -> bool {
        self.start.is_some()
    }

    /// Records `sum` read at `at_s` (seconds since any fixed start) and returns the messages
    /// per second since the previous reading (see the type's rules).
    pub fn update(&mut self, at_s: f64, sum: f64) -> f64 {
        self.rate = match self.start {
            None => 0.0,
            Some((at, _)) if at_s <= at => return self.rate,
            Some((_, before)) if sum < before => 0.0,
            Some((at, before)) => (sum - before) / (at_s - at),
        };
        self.start = Some((at_s, sum));
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reading_is_a_starting_point() {
        let mut r = OffsetRate::new();
        assert!(!r.has_start());
        assert_eq!(r.update(5.0, 1_000.0), 0.0);
        assert!(r.has_start());
        assert_eq!(r.update(7.0, 2_000.0), 500.0);
    }

    #[test]
    fn measures_between_successive_readings_over_unequal_spans() {
        let mut r = OffsetRate::starting_at(0.0, 0.0);
        assert_eq!(r.update(0.5, 100.0), 200.0);
        assert_eq!(r.update(2.5, 500.0), 200.0);
        assert_eq!(r.update(2.75, 500.0), 0.0, "nothing arrived");
        assert_eq!(r.update(3.0, 600.0), 400.0);
    }

    #[test]
    fn no_time_passed_keeps_the_start_and_the_last_rate() {
        let mut r = OffsetRate::starting_at(0.0, 0.0);
        assert_eq!(r.update(1.0, 100.0), 100.0);
        assert_eq!(r.update(1.0, 150.0), 100.0, "the same instant");
        assert_eq!(r.update(0.5, 150.0), 100.0, "a clock that stepped back");
        // The 150 records since 1 s are measured from there, not lost.
        assert_eq!(r.update(2.0, 300.0), 200.0);
    }

    #[test]
    fn a_reset_gives_zero_and_starts_again_from_the_new_reading() {
        let mut r = OffsetRate::starting_at(0.0, 10_000.0);
        assert_eq!(r.update(1.0, 10_100.0), 100.0);
        assert_eq!(r.update(2.0, 50.0), 0.0, "offsets went backwards");
        assert_eq!(r.update(3.0, 80.0), 30.0);
    }

    #[test]
    fn records_on_added_partitions_count_as_arrivals() {
        // Two partitions at 100 each; two more are added and get 20 records each in 2 s,
        // while the first two get 30 each.
        let mut r = OffsetRate::starting_at(0.0, 200.0);
        assert_eq!(r.update(2.0, 130.0 + 130.0 + 20.0 + 20.0), 50.0);
    }
}
