//! The committer: a task that sends handled offsets asynchronously every
//! `commit_interval` (and again when the broker did not answer), the handling of the
//! commit results that come back through the poll, and the synchronous commit a stop
//! makes before it drains. The per-partition accounting it relies on is [`super::commit`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaResult, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

use super::rebalance::Context;
use super::{Shared, commit_request, lock};

/// How long a sent commit may go unanswered before it is sent again: long enough for a
/// commit's answer under a rebalance or a slow coordinator, short enough that a lost
/// request costs little lag (5 × the commit interval, at least 2 s).
pub(super) fn resend_after(commit_interval: Duration) -> Duration {
    (commit_interval * 5).max(Duration::from_secs(2))
}

/// Commits handled offsets asynchronously every `commit_interval`, and sends again those
/// the broker has not acknowledged (see [`super::commit`]).
pub(super) async fn run(
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Context>>,
    stop: Arc<AtomicBool>,
) {
    let resend_after = resend_after(shared.settings.commit_interval);
    loop {
        tokio::select! {
            // Notified only to stop.
            _ = shared.commit_wanted.notified() => {}
            _ = tokio::time::sleep(shared.settings.commit_interval) => {}
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let now = shared.now_ns();
        let mut tpl = TopicPartitionList::new();
        // Held until the request is queued (which does not wait for the broker): a
        // partition released meanwhile must not see this older offset land after its final
        // commit.
        let owned = lock(&shared.owned);
        let mut sent = Vec::new();
        for state in owned.values() {
            if let Some(due) = state.commit.take_due(now, resend_after) {
                if due.resent {
                    shared.metrics.commits_resent.inc();
                    tracing::debug!(
                        "Partition {}: no answer to the commit of offset {} within {resend_after:?}; sending it again",
                        state.partition,
                        due.offset
                    );
                }
                let _ = tpl.add_partition_offset(
                    &shared.topic,
                    state.partition,
                    Offset::Offset(due.offset),
                );
                sent.push((state.clone(), due.offset));
            }
        }
        if tpl.count() == 0 {
            continue;
        }
        if let Err(e) = commit_request::commit_async(&consumer, &tpl) {
            shared.metrics.commit_failures.inc();
            tracing::warn!("Cannot commit offsets: {e}; will send again");
            sent.iter().for_each(|(s, o)| s.commit.failed(*o));
        }
        drop(owned);
    }
}

/// Records the result of a commit (the consumer's `commit_callback`): each owned
/// partition's offset acknowledged, or failed and so sent again at the next tick.
pub(super) fn record_results(
    shared: &Shared,
    result: KafkaResult<()>,
    offsets: &TopicPartitionList,
) {
    let owned = lock(&shared.owned);
    let mut failed = 0;
    let mut first_error = None;
    for element in offsets.elements_for_topic(&shared.topic) {
        let Offset::Offset(offset) = element.offset() else {
            continue;
        };
        // librdkafka sets each partition's own error, and a request-level error applies
        // to every partition.
        let error = element
            .error()
            .err()
            .or_else(|| result.as_ref().err().cloned())
            .map(|e| e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail));
        let Some(state) = owned.get(&element.partition()) else {
            continue;
        };
        match error {
            None => state.commit.acknowledged(offset),
            Some(code) => {
                failed += 1;
                first_error.get_or_insert(code);
                // Sent again at the next tick: a commit refused during a rebalance
                // must not be taken for done.
                state.commit.failed(offset);
            }
        }
    }
    drop(owned);
    match first_error {
        None if result.is_ok() => {
            shared.metrics.commits.inc();
        }
        None => {}
        Some(code) => {
            shared.metrics.commit_failures.inc();
            let message = format!(
                "Commit of {failed} of {} offset(s) refused: {code}; sending again",
                offsets.count()
            );
            if refused_by_rebalance(code) {
                // Expected while the group changes; the next tick sends it again.
                tracing::debug!("{message}");
            } else {
                tracing::warn!("{message}");
            }
        }
    }
}

/// Commit errors that a group change explains (the member's generation moved on).
fn refused_by_rebalance(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::UnknownMemberId
            | RDKafkaErrorCode::StaleMemberEpoch
    )
}

/// Commits, synchronously, every owned partition's handled offset not yet
/// acknowledged.
pub(super) fn commit_due(shared: &Shared, consumer: &BaseConsumer<Context>) {
    let mut tpl = TopicPartitionList::new();
    let mut due = Vec::new();
    for state in lock(&shared.owned).values() {
        if state.commit.is_due() {
            let offset = state.commit.handled_offset();
            let _ =
                tpl.add_partition_offset(&shared.topic, state.partition, Offset::Offset(offset));
            due.push((state.clone(), offset));
        }
    }
    if tpl.count() == 0 {
        return;
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            shared.metrics.commits.inc();
            due.iter().for_each(|(s, o)| s.commit.acknowledged(*o));
        }
        Err(e) => {
            shared.metrics.commit_failures.inc();
            tracing::debug!("Commit before draining failed: {e}; committing after it");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::types::RDKafkaRespErr;
    use rdkafka::{Offset, TopicPartitionList};

    use super::{record_results, refused_by_rebalance, resend_after};
    use crate::consumer::ConsumerSettings;
    use crate::consumer::fixtures::{own, shared};
    use crate::consumer::sink::StdoutSink;

    #[test]
    fn unanswered_commits_are_sent_again_after_5_intervals_or_2_s() {
        assert_eq!(resend_after(Duration::from_secs(1)), Duration::from_secs(5));
        assert_eq!(
            resend_after(Duration::from_secs(3)),
            Duration::from_secs(15)
        );
        assert_eq!(
            resend_after(Duration::from_millis(100)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn generation_errors_are_explained_by_a_rebalance() {
        for code in [
            RDKafkaErrorCode::IllegalGeneration,
            RDKafkaErrorCode::RebalanceInProgress,
            RDKafkaErrorCode::UnknownMemberId,
            RDKafkaErrorCode::StaleMemberEpoch,
        ] {
            assert!(refused_by_rebalance(code), "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::Fail,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::GroupAuthorizationFailed,
        ] {
            assert!(!refused_by_rebalance(code), "{code:?}");
        }
    }

    fn offsets(topic: &str, partitions: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &(partition, offset) in partitions {
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
                .unwrap();
        }
        tpl
    }

    /// Sets one partition's error, as librdkafka does in a commit result.
    fn set_partition_error(tpl: &mut TopicPartitionList, partition: i32, err: RDKafkaRespErr) {
        // SAFETY: `tpl` owns its list, whose `elems` holds `cnt` initialized elements.
        let elems = unsafe {
            let list = &mut *tpl.ptr();
            std::slice::from_raw_parts_mut(list.elems, list.cnt as usize)
        };
        let element = elems.iter_mut().find(|e| e.partition == partition);
        element.expect("partition in the list").err = err;
    }

    #[tokio::test]
    async fn results_acknowledge_each_partition_or_clear_its_request() {
        let shared = shared(
            ConsumerSettings::new("t", "g"),
            std::sync::Arc::new(StdoutSink),
        );
        let (p0, p1) = (own(&shared, 0), own(&shared, 1));
        let resend = Duration::from_secs(5);
        for state in [&p0, &p1] {
            state.commit.handled(10);
            assert_eq!(state.commit.take_due(0, resend).unwrap().offset, 10);
        }

        // Partition 1 refused, partition 0 acknowledged; another topic and an unowned
        // partition are ignored.
        let mut tpl = offsets("t", &[(0, 10), (1, 10), (7, 3)]);
        tpl.add_partition_offset("other", 0, Offset::Offset(99))
            .unwrap();
        set_partition_error(
            &mut tpl,
            1,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION,
        );
        record_results(&shared, Ok(()), &tpl);
        assert_eq!(p0.commit.acked_offset(), 10);
        assert_eq!(p1.commit.acked_offset(), -1);
        // Failed: sent again at the next tick, without waiting for `resend_after`.
        assert!(p0.commit.take_due(1, resend).is_none());
        assert_eq!(p1.commit.take_due(1, resend).unwrap().offset, 10);
        assert_eq!(shared.metrics.commits.get(), 0);
        assert_eq!(shared.metrics.commit_failures.get(), 1);

        // A request-level error fails every partition in it.
        p0.commit.handled(20);
        assert_eq!(p0.commit.take_due(2, resend).unwrap().offset, 20);
        record_results(
            &shared,
            Err(KafkaError::ConsumerCommit(
                RDKafkaErrorCode::RequestTimedOut,
            )),
            &offsets("t", &[(0, 20), (1, 10)]),
        );
        assert_eq!(p0.commit.acked_offset(), 10);
        assert_eq!(p0.commit.take_due(3, resend).unwrap().offset, 20);
        assert_eq!(shared.metrics.commit_failures.get(), 2);

        // A clean answer counts one commit.
        record_results(&shared, Ok(()), &offsets("t", &[(0, 20), (1, 10)]));
        assert_eq!(
            (p0.commit.acked_offset(), p1.commit.acked_offset()),
            (20, 10)
        );
        assert!(!p0.commit.is_due() && !p1.commit.is_due());
        assert_eq!(shared.metrics.commits.get(), 1);
    }
}
