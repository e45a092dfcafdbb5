//! Commit accounting for one partition: what was handled, what was sent, and what the
//! broker acknowledged.
//!
//! An asynchronous commit that librdkafka accepted is only a request in a queue: it can be
//! refused (during a rebalance, say), superseded or lost with a connection. So an offset
//! counts as committed only when the commit callback reports the broker's acknowledgement
//! for that partition; until then the committer sends it again: at once after a reported
//! failure, and after `resend_after` when no answer came at all. The lag KEDA reads is the
//! broker's committed offset, so handled work that never gets acknowledged would be lag
//! that never goes away.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// No offset (nothing handled, sent or acknowledged yet).
pub const NONE: i64 = -1;

/// One partition's commit state, shared by its worker (which advances `handled`), the
/// committer (which sends) and the commit callback (which records acknowledgements).
#[derive(Debug)]
pub struct CommitState {
    /// One past the last handled record: the offset to commit.
    handled: AtomicI64,
    /// The offset in the latest commit request, [`NONE`] when it must be sent again.
    sent: AtomicI64,
    /// When that request was sent, in the caller's clock (nanoseconds).
    sent_at_ns: AtomicU64,
    /// The highest offset the broker acknowledged.
    acked: AtomicI64,
}

impl Default for CommitState {
    fn default() -> Self {
        CommitState {
            handled: AtomicI64::new(NONE),
            sent: AtomicI64::new(NONE),
            sent_at_ns: AtomicU64::new(0),
            acked: AtomicI64::new(NONE),
        }
    }
}

impl CommitState {
    /// Everything before `next_offset` was handled.
    pub fn handled(&self, next_offset: i64) {
        self.handled.fetch_max(next_offset, Ordering::SeqCst);
    }

    /// The offset to commit, [`NONE`] if nothing was handled.
    pub fn handled_offset(&self) -> i64 {
        self.handled.load(Ordering::SeqCst)
    }

    /// The highest offset the broker acknowledged, [`NONE`] if none.
    pub fn acked_offset(&self) -> i64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Handled but not yet acknowledged.
    pub fn is_due(&self) -> bool {
        self.handled_offset() > self.acked_offset()
    }

    /// The offset to send now, if any, and records it as sent at `now_ns`. `resent` tells
    /// whether the same offset had been sent before without an answer.
    pub fn take_due(&self, now_ns: u64, resend_after: Duration) -> Option<Due> {
        let handled = self.handled.load(Ordering::SeqCst);
        let sent = self.sent.load(Ordering::SeqCst);
        let due = due(
            handled,
            sent,
            self.sent_at_ns.load(Ordering::SeqCst),
            self.acked.load(Ordering::SeqCst),
            now_ns,
            resend_after,
        )?;
        // Recorded before the request goes out, so that a failure reported before the
        // caller returns still clears it (and the offset is sent again).
        self.sent.store(due, Ordering::SeqCst);
        self.sent_at_ns.store(now_ns, Ordering::SeqCst);
        Some(Due {
            offset: due,
            resent: sent == due,
        })
    }

    /// The broker acknowledged `offset`.
    pub fn acknowledged(&self, offset: i64) {
        self.acked.fetch_max(offset, Ordering::SeqCst);
    }

    /// A commit of `offset` failed: send again at the next tick (unless a newer offset has
    /// been sent since, whose own answer will tell).
    pub fn failed(&self, offset: i64) {
        let _ = self
            .sent
            .compare_exchange(offset, NONE, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Forget the outstanding request and what was acknowledged, so the next tick sends
    /// the handled offset again (the stall watchdog's remedy when the broker's committed
    /// offset stays behind it, e.g. after an older request landed after a newer one).
    pub fn resend(&self) {
        self.acked.store(NONE, Ordering::SeqCst);
        self.sent.store(NONE, Ordering::SeqCst);
    }
}

/// An offset the committer should send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The offset.
    pub offset: i64,
    /// It was sent before and no acknowledgement came within `resend_after`.
    pub resent: bool,
}

/// What to send, if anything: the handled offset when it is ahead of the acknowledged one
/// and either differs from the outstanding request or that request has had `resend_after`
/// to be answered. Pure, for tests.
pub fn due(
    handled: i64,
    sent: i64,
    sent_at_ns: u64,
    acked: i64,
    now_ns: u64,
    resend_after: Duration,
) -> Option<i64> {
    if handled <= acked || handled < 0 {
        return None;
    }
    let unanswered_for = Duration::from_nanos(now_ns.saturating_sub(sent_at_ns));
    (handled != sent || unanswered_for >= resend_after).then_some(handled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn nothing_handled_or_all_acknowledged_is_not_due() {
        let wait = Duration::from_secs(5);
        assert_eq!(due(NONE, NONE, 0, NONE, 0, wait), None);
        assert_eq!(due(10, 10, 0, 10, 100 * S, wait), None);
        assert_eq!(due(10, NONE, 0, 12, 0, wait), None);
    }

    #[test]
    fn a_new_offset_is_sent_at_once() {
        let wait = Duration::from_secs(5);
        assert_eq!(due(10, NONE, 0, NONE, 0, wait), Some(10));
        assert_eq!(due(20, 10, S, 10, S, wait), Some(20));
        // Sent, not yet answered, not yet overdue: wait.
        assert_eq!(due(20, 20, S, 10, 2 * S, wait), None);
    }

    #[test]
    fn an_unanswered_request_is_sent_again_after_the_wait() {
        let wait = Duration::from_secs(5);
        assert_eq!(due(20, 20, S, 10, 6 * S, wait), Some(20));
        let state = CommitState::default();
        state.handled(20);
        assert_eq!(
            state.take_due(0, wait),
            Some(Due {
                offset: 20,
                resent: false
            })
        );
        assert_eq!(state.take_due(S, wait), None);
        assert_eq!(
            state.take_due(5 * S, wait),
            Some(Due {
                offset: 20,
                resent: true
            })
        );
    }

    #[test]
    fn a_failure_reported_before_the_send_returns_still_causes_a_resend() {
        let wait = Duration::from_secs(5);
        let state = CommitState::default();
        state.handled(7);
        let due = state.take_due(0, wait).map(|d| d.offset);
        assert_eq!(due, Some(7));
        state.failed(7);
        assert_eq!(state.take_due(1, wait).map(|d| d.offset), Some(7));
    }

    #[test]
    fn an_old_failure_does_not_cancel_a_newer_request() {
        let wait = Duration::from_secs(5);
        let state = CommitState::default();
        state.handled(7);
        state.take_due(0, wait);
        state.handled(9);
        state.take_due(1, wait);
        state.failed(7);
        assert_eq!(state.take_due(2, wait), None, "9 is outstanding");
        state.acknowledged(9);
        assert!(!state.is_due());
    }

    #[test]
    fn a_resend_sends_even_an_acknowledged_offset() {
        let wait = Duration::from_secs(5);
        let state = CommitState::default();
        state.handled(40);
        state.take_due(0, wait);
        state.acknowledged(40);
        assert_eq!(state.take_due(S, wait), None);
        state.resend();
        assert_eq!(state.take_due(2 * S, wait).map(|d| d.offset), Some(40));
    }

    #[test]
    fn acknowledgements_only_move_forward() {
        let state = CommitState::default();
        state.handled(30);
        state.acknowledged(30);
        state.acknowledged(10);
        assert_eq!(state.acked_offset(), 30);
        state.handled(20);
        assert_eq!(state.handled_offset(), 30, "handled never goes back");
    }
}
