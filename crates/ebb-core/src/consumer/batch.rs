//! Micro-batches: records of one partition gathered until a count, a byte size or a
//! timeout closes them. Pure logic; the caller supplies the clock.
//!
//! A batch owns one buffer holding all its keys and values; records are views into it.
//! Copying a record out of the Kafka client is then an append, not two allocations (and
//! two frees on another thread), which at a million records a second is most of what
//! copying costs.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One record: what the consumer reads from Kafka and hands to sinks, borrowed from the
/// batch (or from the Kafka client, before it is copied into one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset within the partition.
    pub offset: i64,
    /// Key bytes, if any.
    pub key: Option<&'a [u8]>,
    /// Value bytes, if any.
    pub value: Option<&'a [u8]>,
    /// Record timestamp in milliseconds since the epoch (the producer's send time).
    pub timestamp_ms: Option<i64>,
}

impl Record<'_> {
    /// Key and value bytes: what the record costs in memory, roughly.
    pub fn size(&self) -> usize {
        self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len)
    }
}

/// Where a record's parts sit in its batch's buffer.
#[derive(Debug, Clone)]
struct Entry {
    offset: i64,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    timestamp_ms: Option<i64>,
}

/// A closed batch: consecutive polled records of one partition, in offset order.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    entries: Vec<Entry>,
    data: Vec<u8>,
}

impl Batch {
    /// The records, in the order they were polled.
    pub fn records(&self) -> impl ExactSizeIterator<Item = Record<'_>> + '_ {
        self.entries.iter().map(|e| Record {
            offset: e.offset,
            key: e.key.clone().map(|r| &self.data[r]),
            value: e.value.clone().map(|r| &self.data[r]),
            timestamp_ms: e.timestamp_ms,
        })
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no records (a closed batch never does).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Key and value bytes of all its records.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The offset of its first record (-1 for an empty batch, which is never closed).
    pub fn first_offset(&self) -> i64 {
        self.entries.first().map_or(-1, |e| e.offset)
    }

    /// The offset to commit once this batch is handled: one past its last record.
    pub fn next_offset(&self) -> i64 {
        self.entries.last().map_or(-1, |e| e.offset + 1)
    }
}

/// When a batch closes. Mirrors `BATCH_SIZE`, the byte limit and `BATCH_TIMEOUT_SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Close at this many records.
    pub max_records: usize,
    /// Close once the records hold at least this many bytes.
    pub max_bytes: usize,
    /// Close this long after the first record arrived, however small the batch.
    pub timeout: Duration,
}

/// Gathers one partition's records into batches.
#[derive(Debug)]
pub struct BatchBuilder {
    topic: Arc<str>,
    partition: i32,
    limits: BatchLimits,
    entries: Vec<Entry>,
    data: Vec<u8>,
    opened_at: Option<Instant>,
}

impl BatchBuilder {
    /// An empty builder for one partition.
    pub fn new(topic: Arc<str>, partition: i32, limits: BatchLimits) -> Self {
        BatchBuilder {
            topic,
            partition,
            limits,
            entries: Vec::new(),
            data: Vec::new(),
            opened_at: None,
        }
    }

    /// Copies a record polled at `now` into the open batch; returns the batch if this
    /// record closed it.
    pub fn push(&mut self, record: Record<'_>, now: Instant) -> Option<Batch> {
        self.opened_at.get_or_insert(now);
        let entry = Entry {
            offset: record.offset,
            key: record.key.map(|k| append(&mut self.data, k)),
            value: record.value.map(|v| append(&mut self.data, v)),
            timestamp_ms: record.timestamp_ms,
        };
        self.entries.push(entry);
        if self.entries.len() >= self.limits.max_records || self.data.len() >= self.limits.max_bytes
        {
            self.take()
        } else {
            None
        }
    }

    /// When the open batch times out, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened_at.map(|t| t + self.limits.timeout)
    }

    /// Closes the open batch if its timeout has passed at `now`.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Batch> {
        match self.deadline() {
            Some(deadline) if now >= deadline => self.take(),
            _ => None,
        }
    }

    /// When this builder closes a batch.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Records held, not yet in a closed batch.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No records held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Closes whatever is open (nothing if empty).
    pub fn take(&mut self) -> Option<Batch> {
        if self.entries.is_empty() {
            return None;
        }
        self.opened_at = None;
        // The next batch likely looks like this one: size its buffers alike.
        let entries = std::mem::replace(
            &mut self.entries,
            Vec::with_capacity(self.limits.max_records.min(4096)),
        );
        let next_capacity = self.data.len().min(self.limits.max_bytes) + 1024;
        let data = std::mem::replace(&mut self.data, Vec::with_capacity(next_capacity));
        Some(Batch {
            topic: self.topic.clone(),
            partition: self.partition,
            entries,
            data,
        })
    }

    /// Drops whatever is open (a revoked partition's unprocessed records).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.data.clear();
        self.opened_at = None;
    }
}

/// Appends `bytes` to `data`, returning where they went.
fn append(data: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = data.len();
    data.extend_from_slice(bytes);
    start..data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: [u8; 100] = [b'x'; 100];

    fn record(offset: i64, bytes: usize) -> Record<'static> {
        Record {
            offset,
            key: None,
            value: Some(&X[..bytes]),
            timestamp_ms: None,
        }
    }

    fn builder(max_records: usize, max_bytes: usize, timeout_ms: u64) -> BatchBuilder {
        let limits = BatchLimits {
            max_records,
            max_bytes,
            timeout: Duration::from_millis(timeout_ms),
        };
        BatchBuilder::new("t".into(), 3, limits)
    }

    #[test]
    fn closes_at_the_record_count() {
        let mut b = builder(3, usize::MAX, 1000);
        let now = Instant::now();
        assert!(b.push(record(10, 1), now).is_none());
        assert!(b.push(record(11, 1), now).is_none());
        let batch = b.push(record(12, 1), now).expect("third record closes it");
        assert_eq!(
            batch.records().map(|r| r.offset).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert_eq!(batch.next_offset(), 13);
        assert_eq!(batch.partition, 3);
        assert!(b.is_empty() && b.deadline().is_none());
    }

    #[test]
    fn closes_at_the_byte_size() {
        let mut b = builder(100, 250, 1000);
        let now = Instant::now();
        assert!(b.push(record(0, 100), now).is_none());
        assert!(b.push(record(1, 100), now).is_none());
        let batch = b.push(record(2, 100), now).expect("300 bytes ≥ 250");
        assert_eq!(batch.bytes(), 300);
    }

    #[test]
    fn closes_on_timeout_from_the_first_record() {
        let mut b = builder(100, usize::MAX, 100);
        let t0 = Instant::now();
        b.push(record(0, 1), t0);
        b.push(record(1, 1), t0 + Duration::from_millis(90));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(100)));
        assert!(b.poll_timeout(t0 + Duration::from_millis(99)).is_none());
        let batch = b
            .poll_timeout(t0 + Duration::from_millis(100))
            .expect("timed out");
        assert_eq!(batch.len(), 2);
        // The next batch's clock starts at its own first record.
        b.push(record(2, 1), t0 + Duration::from_millis(500));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(600)));
    }

    #[test]
    fn records_read_back_as_pushed() {
        let mut b = builder(3, usize::MAX, 1000);
        let now = Instant::now();
        let pushed = [
            Record {
                offset: 7,
                key: Some(b"k1"),
                value: Some(b"v1"),
                timestamp_ms: Some(1),
            },
            Record {
                offset: 8,
                key: None,
                value: Some(b""),
                timestamp_ms: None,
            },
            Record {
                offset: 9,
                key: Some(b""),
                value: None,
                timestamp_ms: Some(3),
            },
        ];
        b.push(pushed[0], now);
        b.push(pushed[1], now);
        let batch = b.push(pushed[2], now).expect("closed at 3");
        assert_eq!(batch.records().collect::<Vec<_>>(), pushed);
        assert_eq!(batch.bytes(), 4);
    }

    #[test]
    fn clear_drops_the_open_batch() {
        let mut b = builder(10, usize::MAX, 100);
        b.push(record(0, 5), Instant::now());
        b.clear();
        assert!(b.take().is_none());
        assert_eq!(b.len(), 0);
    }
}
