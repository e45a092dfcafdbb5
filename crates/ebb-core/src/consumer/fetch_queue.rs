//! A partition's librdkafka fetch queue, read many records per call.
//!
//! rdkafka reads a queue one event at a time, and each read costs librdkafka three clock
//! reads, a lock and a telemetry update; at a million records a second that is a fifth of
//! the poll thread's time. `rd_kafka_consume_batch_queue` pays for those once per call.
//! The rdkafka [`PartitionQueue`] stays alongside: it detaches the queue from the
//! consumer's main queue and carries the callback that wakes the poll thread.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::RDKafkaErrorCode;

use super::batch::Record;

/// Most records taken from librdkafka in one call.
const MAX_PER_CALL: usize = 256;

/// One partition's fetch queue, split off the consumer's main queue.
pub struct FetchQueue<C: ConsumerContext + 'static> {
    /// Keeps the queue detached and the wake-up callback alive.
    _split: PartitionQueue<C>,
    handle: NonNull<rd::rd_kafka_queue_t>,
    partition: i32,
    slots: Vec<*mut rd::rd_kafka_message_t>,
}

// SAFETY: the librdkafka queue handle is thread-safe (librdkafka locks the queue in every
// call); the slot pointers are only used within `take`, which needs `&mut self`.
unsafe impl<C: ConsumerContext + 'static> Send for FetchQueue<C> {}

impl<C: ConsumerContext + 'static> FetchQueue<C> {
    /// Splits `partition`'s queue off the consumer's main queue; `wake` runs whenever the
    /// queue turns non-empty. `None` if librdkafka does not know the partition.
    pub fn split(
        consumer: &Arc<BaseConsumer<C>>,
        topic: &str,
        partition: i32,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> Option<Self> {
        let mut split = consumer.split_partition_queue(topic, partition)?;
        split.set_nonempty_callback(wake);
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client handle is alive (we hold the consumer); the topic name is a
        // NUL-terminated string that outlives the call. The returned handle is our own
        // reference to the partition's queue, released in `drop`.
        let raw = unsafe {
            rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            )
        };
        Some(FetchQueue {
            _split: split,
            handle: NonNull::new(raw)?,
            partition,
            slots: vec![std::ptr::null_mut(); MAX_PER_CALL],
        })
    }

    /// Whether records (or errors) wait in the queue.
    pub fn is_empty(&self) -> bool {
        // SAFETY: `handle` is a live queue reference; librdkafka reads its length under
        // the queue's lock.
        unsafe { rd::rd_kafka_queue_length(self.handle.as_ptr()) == 0 }
    }

    /// Hands up to `max` waiting records to `each`, in offset order, without waiting, and
    /// returns how many it handed over. Errors librdkafka puts on the queue (fetch
    /// failures; it retries them itself) are logged.
    pub fn take(&mut self, max: usize, mut each: impl FnMut(Record<'_>)) -> usize {
        let want = max.min(self.slots.len());
        if want == 0 {
            return 0;
        }
        // SAFETY: `handle` is a live queue reference; `slots` has room for `want`
        // message pointers, which librdkafka fills and hands to us to destroy.
        let got = unsafe {
            rd::rd_kafka_consume_batch_queue(self.handle.as_ptr(), 0, self.slots.as_mut_ptr(), want)
        };
        let mut handed = 0;
        for &message in &self.slots[..got.max(0) as usize] {
            // SAFETY: librdkafka returned `got` valid messages; each is read here and
            // destroyed right after, never used again.
            unsafe {
                let m = &*message;
                if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
                    let timestamp = rd::rd_kafka_message_timestamp(message, &mut kind);
                    each(Record {
                        offset: m.offset,
                        key: lent(m.key, m.key_len),
                        value: lent(m.payload, m.len),
                        timestamp_ms: (kind
                            != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE)
                            .then_some(timestamp),
                    });
                    handed += 1;
                } else {
                    let code: RDKafkaErrorCode = m.err.into();
                    tracing::warn!("Kafka, partition {}: {code}", self.partition);
                }
                rd::rd_kafka_message_destroy(message);
            }
        }
        handed
    }
}

impl<C: ConsumerContext + 'static> Drop for FetchQueue<C> {
    fn drop(&mut self) {
        // SAFETY: our own reference from `rd_kafka_queue_get_partition`, released once.
        unsafe { rd::rd_kafka_queue_destroy(self.handle.as_ptr()) }
    }
}

/// A byte slice librdkafka lends, `None` for a null pointer.
///
/// # Safety
/// `ptr` must be null or point at `len` bytes alive for `'a`.
unsafe fn lent<'a>(ptr: *mut std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: as the caller promises.
        Some(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
    }
}
