//! Micro-batches: records of one partition gathered until a count, a byte size or a
//! timeout closes them. Pure logic; the caller supplies the clock.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// One record as the consumer owns it after polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset within the partition.
    pub offset: i64,
    /// Key bytes, if any.
    pub key: Option<Vec<u8>>,
    /// Value bytes, if any.
    pub value: Option<Vec<u8>>,
    /// Record timestamp in milliseconds since the epoch (the producer's send time).
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Key and value bytes: what the record costs in memory, roughly.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len) + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// A closed batch: consecutive polled records of one partition, in offset order.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Source topic.
    pub topic: Arc<str>,
    /// Source partition.
    pub partition: i32,
    /// The records, in the order they were polled.
    pub records: Vec<Record>,
    /// Sum of [`Record::size`].
    pub bytes: usize,
}

impl Batch {
    /// The offset to commit once this batch is handled: one past its last record.
    pub fn next_offset(&self) -> i64 {
        self.records.last().map_or(-1, |r| r.offset + 1)
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
    records: Vec<Record>,
    bytes: usize,
    opened_at: Option<Instant>,
}

impl BatchBuilder {
    /// An empty builder for one partition.
    pub fn new(topic: Arc<str>, partition: i32, limits: BatchLimits) -> Self {
        BatchBuilder {
            topic,
            partition,
            limits,
            records: Vec::new(),
            bytes: 0,
            opened_at: None,
        }
    }

    /// Adds a record polled at `now`; returns the batch if this record closed it.
    pub fn push(&mut self, record: Record, now: Instant) -> Option<Batch> {
        self.opened_at.get_or_insert(now);
        self.bytes += record.size();
        self.records.push(record);
        if self.records.len() >= self.limits.max_records || self.bytes >= self.limits.max_bytes {
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

    /// Records held, not yet in a closed batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// No records held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Closes whatever is open (nothing if empty).
    pub fn take(&mut self) -> Option<Batch> {
        if self.records.is_empty() {
            return None;
        }
        self.opened_at = None;
        let records = std::mem::replace(
            &mut self.records,
            Vec::with_capacity(self.limits.max_records.min(4096)),
        );
        Some(Batch {
            topic: self.topic.clone(),
            partition: self.partition,
            records,
            bytes: std::mem::take(&mut self.bytes),
        })
    }

    /// Drops whatever is open (a revoked partition's unprocessed records).
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
        self.opened_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: i64, bytes: usize) -> Record {
        Record {
            offset,
            key: None,
            value: Some(vec![b'x'; bytes]),
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
            batch.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
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
        assert_eq!(batch.bytes, 300);
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
        assert_eq!(batch.records.len(), 2);
        // The next batch's clock starts at its own first record.
        b.push(record(2, 1), t0 + Duration::from_millis(500));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(600)));
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
