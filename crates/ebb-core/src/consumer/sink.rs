//! Where decoded records go: the last step of the pipeline. A [`Sink`] gets batches of one
//! partition's records that its [`Decoder`] accepted, as the decoder's output, in order,
//! and answers once they are durably handled (or with an error, and then the runtime
//! retries the same batch).
//!
//! The built-in sinks take trades ([`TradeDecoder`], whose output is the raw record):
//!
//! - `sim`: the reference's simulated database write, a sleep per batch and per record;
//! - `file`: JSON lines (topic, partition, offset, key, timestamp, value, and
//!   `processed_ms`, when the line was written), opened for append on each batch so the
//!   file can be rotated or replaced under a running consumer;
//! - `stdout`: the same lines on standard output;
//! - `postgres`: a row per trade in a PostgreSQL table, one idempotent statement per batch
//!   (see [`crate::postgres`]).
//!
//! [`Delayed`] slows any sink down.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use super::batch::Record;
use super::decode::Decoder;
use crate::postgres::{Database, TradeRow};
use crate::trade::{TradeDecoder, TradeRef};

/// A boxed future, so sinks can be chosen at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A sink could not handle a batch; the runtime retries it with backoff.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Destination of the records decoder `D` accepted; trades by default.
///
/// `records` are [`Decoder::Output`]s that may borrow the batch (lifetime `'r`); the
/// returned future may hold them (lifetime `'a`) but not keep them past its end. A sink
/// used by several partitions' workers at once must be shareable (`Sync`).
pub trait Sink<D: Decoder = TradeDecoder>: Send + Sync + 'static {
    /// Handles one batch of one partition, in offset order. In partition order a
    /// partition's batches come one at a time, in order; in key order several batches of
    /// one partition (of different keys) may be written at once, each key's in order. Must
    /// be idempotent per record: a batch is retried after an error, and records are
    /// replayed after a crash or a rebalance (at-least-once delivery; in key order that can
    /// be records handled above a batch still pending). An error holds the partition and the batch is retried
    /// with backoff until it succeeds or the partition is released.
    fn write<'a, 'r>(
        &'a self,
        topic: &'a str,
        partition: i32,
        records: &'a [D::Output<'r>],
    ) -> BoxFuture<'a, Result<(), SinkError>>;
}

/// Another sink made slower by a fixed time per batch, taken before each write: a real
/// output (a file, say) with the timing of a slow database, for benchmarks and tests.
pub struct Delayed<D: Decoder = TradeDecoder> {
    /// The sink written after the delay.
    pub inner: Arc<dyn Sink<D>>,
    /// Sleep per batch.
    pub delay: Duration,
}

impl<D: Decoder> Sink<D> for Delayed<D> {
    fn write<'a, 'r>(
        &'a self,
        topic: &'a str,
        partition: i32,
        records: &'a [D::Output<'r>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            self.inner.write(topic, partition, records).await
        })
    }
}

/// The reference consumer's behaviour: a simulated database write.
#[derive(Debug, Clone, Copy)]
pub struct SimSink {
    /// Sleep per batch (`BATCH_PROCESSING_TIME`).
    pub batch_time: Duration,
    /// Sleep per record (`MESSAGE_PROCESSING_TIME`).
    pub message_time: Duration,
}

impl Sink for SimSink {
    fn write<'a, 'r>(
        &'a self,
        _: &'a str,
        _: i32,
        records: &'a [Record<'r>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let pause = self.batch_time + self.message_time * records.len() as u32;
        Box::pin(async move {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            Ok(())
        })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    partition: i32,
    offset: i64,
    key: Option<std::borrow::Cow<'a, str>>,
    timestamp: Option<i64>,
    value: Option<std::borrow::Cow<'a, str>>,
    processed_ms: i64,
}

fn render(topic: &str, partition: i32, records: &[Record<'_>]) -> Vec<u8> {
    let processed_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut out = Vec::with_capacity(records.len() * 320);
    for r in records {
        let line = Line {
            topic,
            partition,
            offset: r.offset,
            key: r.key.map(String::from_utf8_lossy),
            timestamp: r.timestamp_ms,
            value: r.value.map(String::from_utf8_lossy),
            processed_ms,
        };
        // A struct of strings and integers always serializes.
        serde_json::to_writer(&mut out, &line).expect("line serializes");
        out.push(b'\n');
    }
    out
}

/// JSON lines appended to a file.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl FileSink {
    /// A sink appending to `path` (created on the first batch).
    pub fn new(path: PathBuf) -> Self {
        FileSink {
            path,
            lock: std::sync::Mutex::new(()),
        }
    }
}

impl Sink for FileSink {
    fn write<'a, 'r>(
        &'a self,
        topic: &'a str,
        partition: i32,
        records: &'a [Record<'r>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let lines = render(topic, partition, records);
            // One write per batch, under a lock, so lines of different batches never interleave.
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&self.path)
                .map_err(|e| SinkError(format!("cannot open {}: {e}", self.path.display())))?;
            // Other processes may append to the same file (several consumers, one audit
            // file): the check below and the write must be one step for all of them.
            file.lock()
                .map_err(|e| SinkError(format!("cannot lock {}: {e}", self.path.display())))?;
            // A process killed mid-write leaves a partial line; start on a fresh one.
            let lines = if ends_mid_line(&mut file) {
                [b"\n".as_slice(), &lines].concat()
            } else {
                lines
            };
            file.write_all(&lines)
                .map_err(|e| SinkError(format!("cannot write {}: {e}", self.path.display())))
        })
    }
}

fn ends_mid_line(file: &mut std::fs::File) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut last = [0u8; 1];
    file.seek(SeekFrom::End(-1)).is_ok() && file.read_exact(&mut last).is_ok() && last[0] != b'\n'
}

/// JSON lines on standard output.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn write<'a, 'r>(
        &'a self,
        topic: &'a str,
        partition: i32,
        records: &'a [Record<'r>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let lines = render(topic, partition, records);
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&lines)
                .and_then(|()| stdout.flush())
                .map_err(|e| SinkError(format!("cannot write to standard output: {e}")))
        })
    }
}

/// A row per trade in a PostgreSQL table; the table is created on the first batch if it
/// does not exist.
pub struct PostgresSink {
    database: Database,
    table_ready: tokio::sync::OnceCell<()>,
    rows_written: Counter,
    rows_replayed: Counter,
}

impl PostgresSink {
    /// A sink writing through `database`, its metrics in `registry`:
    /// `ebb_postgres_rows_written_total` (new rows) and `ebb_postgres_rows_replayed_total`
    /// (records whose row was already there: a batch replayed after a crash or a
    /// rebalance, which changed nothing).
    pub fn new(database: Database, registry: &mut Registry) -> Self {
        let rows_written = Counter::default();
        let rows_replayed = Counter::default();
        registry.register(
            "ebb_postgres_rows_written",
            "Rows the postgres sink added to its table",
            rows_written.clone(),
        );
        registry.register(
            "ebb_postgres_rows_replayed",
            "Records the postgres sink found already in its table (replays; nothing changed)",
            rows_replayed.clone(),
        );
        PostgresSink {
            database,
            table_ready: tokio::sync::OnceCell::new(),
            rows_written,
            rows_replayed,
        }
    }
}

impl Sink for PostgresSink {
    fn write<'a, 'r>(
        &'a self,
        topic: &'a str,
        partition: i32,
        records: &'a [Record<'r>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let failed = |e: crate::postgres::DatabaseError| SinkError(e.to_string());
            self.table_ready
                .get_or_try_init(|| self.database.init())
                .await
                .map_err(failed)?;
            let rows = records
                .iter()
                .map(|r| {
                    // The trade decoder passes only records that pass this same check.
                    let trade = TradeRef::parse(r.value).map_err(|e| {
                        SinkError(format!("offset {} is not a trade: {e}", r.offset))
                    })?;
                    Ok(TradeRow {
                        offset: r.offset,
                        record_time_ms: r.timestamp_ms,
                        trade,
                    })
                })
                .collect::<Result<Vec<_>, SinkError>>()?;
            let written = self
                .database
                .insert(topic, partition, &rows)
                .await
                .map_err(failed)?;
            self.rows_written.inc_by(written);
            self.rows_replayed
                .inc_by((rows.len() as u64).saturating_sub(written));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trade::{Trade, TradeGenerator};
    use std::time::SystemTime;

    /// A valid trade at `offset`, owning the bytes its [`Record`] borrows.
    struct Accepted {
        offset: i64,
        key: String,
        value: Vec<u8>,
    }

    impl Accepted {
        fn record(&self) -> Record<'_> {
            Record {
                offset: self.offset,
                key: Some(self.key.as_bytes()),
                value: Some(&self.value),
                timestamp_ms: Some(1),
            }
        }
    }

    fn accepted(offset: i64) -> Accepted {
        let mut generator = TradeGenerator::new(Some(offset as u64));
        let (mut key, mut value) = (String::new(), Vec::new());
        generator.next_record(SystemTime::now(), &mut key, &mut value);
        Accepted { offset, key, value }
    }

    #[tokio::test]
    async fn file_sink_appends_one_json_line_per_record() {
        let dir = std::env::temp_dir().join(format!("ebb-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.jsonl");
        let _ = std::fs::remove_file(&path);
        let sink = FileSink::new(path.clone());
        let (five, six, seven) = (accepted(5), accepted(6), accepted(7));
        sink.write("t", 2, &[five.record(), six.record()])
            .await
            .unwrap();
        sink.write("t", 2, &[seven.record()]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["offset"], 7);
        assert_eq!(lines[0]["partition"], 2);
        assert!(lines[0]["processed_ms"].as_i64().unwrap() > 1_700_000_000_000);
        let value: Trade = serde_json::from_str(lines[0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(lines[0]["key"].as_str().unwrap(), value.account_id);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn file_sink_starts_a_new_line_after_a_partial_one() {
        let path =
            std::env::temp_dir().join(format!("ebb-sink-partial-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"partial\":").unwrap();
        FileSink::new(path.clone())
            .write("t", 0, &[accepted(1).record()])
            .await
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            serde_json::from_str::<serde_json::Value>(lines[1]).is_ok(),
            "{text}"
        );
        std::fs::remove_file(path).unwrap();
    }

    /// Several writers (processes, in real use) append to one file that a killed writer
    /// left mid-line: exactly one of them repairs the line, none leaves a blank one.
    #[test]
    fn writers_sharing_a_file_leave_no_blank_lines() {
        let path =
            std::env::temp_dir().join(format!("ebb-sink-shared-{}.jsonl", std::process::id()));
        std::fs::write(&path, "{\"partial\":").unwrap();
        std::thread::scope(|scope| {
            for writer in 0..8 {
                let path = path.clone();
                scope.spawn(move || {
                    // A sink and a runtime of its own: only the file lock keeps them apart.
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    let sink = FileSink::new(path);
                    for batch in 0..25 {
                        let record = accepted(writer * 100 + batch);
                        runtime
                            .block_on(sink.write("t", writer as i32, &[record.record()]))
                            .unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 8 * 25, "{text}");
        assert!(lines.iter().all(|l| !l.is_empty()), "a blank line:\n{text}");
        std::fs::remove_file(path).unwrap();
    }

    #[tokio::test]
    async fn file_sink_reports_an_unwritable_path() {
        let sink = FileSink::new(std::env::temp_dir());
        let one = accepted(1);
        let err = sink.write("t", 0, &[one.record()]).await.unwrap_err();
        assert!(err.0.contains("cannot open"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn sim_sink_sleeps_per_batch_and_per_record() {
        let sink = SimSink {
            batch_time: Duration::from_secs(1),
            message_time: Duration::from_millis(10),
        };
        let started = tokio::time::Instant::now();
        let (one, two) = (accepted(1), accepted(2));
        sink.write("t", 0, &[one.record(), two.record()])
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(1020));
    }
}
