//! Asynchronous offset commits whose results come back.
//!
//! rdkafka's `commit(.., CommitMode::Async)` calls `rd_kafka_commit`, whose result
//! librdkafka hands only to an `offset_commit_cb` set in the configuration; rdkafka uses the
//! event API instead and sets none, so the result of an asynchronous commit is dropped:
//! `ConsumerContext::commit_callback` never hears of it, refused or acknowledged. An
//! asynchronous commit refused during a rebalance then looked like a commit in flight
//! forever. `rd_kafka_commit_queue` posts the result to a queue; given the consumer's own
//! queue, the result arrives through the poll as an offset-commit event, which rdkafka
//! passes to `commit_callback` with each partition's error.

use rdkafka::TopicPartitionList;
use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};

/// Sends `offsets` for commit without waiting; the result reaches the consumer's
/// `commit_callback` through its poll.
pub fn commit_async<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    offsets: &TopicPartitionList,
) -> KafkaResult<()> {
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live client handle of `consumer`, which we borrow. The returned
    // queue is a new reference to the consumer group's queue (the one `poll` serves), or
    // null without a group; it is released below, after librdkafka took its own reference
    // for the reply. `offsets` is a valid list that librdkafka copies.
    unsafe {
        let queue = rd::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            return Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownGroup));
        }
        let err = rd::rd_kafka_commit_queue(rk, offsets.ptr(), queue, None, std::ptr::null_mut());
        rd::rd_kafka_queue_destroy(queue);
        if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            Ok(())
        } else {
            Err(KafkaError::ConsumerCommit(err.into()))
        }
    }
}
