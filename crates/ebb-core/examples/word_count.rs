//! Word counts per record key: ebb's consumer runtime with a record type and a sink of
//! its own, through ebb-core's public API only.
//!
//! Each record's value is a line of UTF-8 text and its key (UTF-8, or none) says whose line
//! it is. [`Lines`], the decoder, borrows key and text from the batch (no copy); a record
//! without a value, with a key or value that is not UTF-8, or with no words is rejected and
//! goes to the dead-letter topic `<topic>.dlq` with the reason in its `ebb.error` header.
//! [`Counts`], the sink, adds each batch's words to per-key counts, skipping records it has
//! already counted (so a retried or replayed batch counts once within the process). The
//! runtime does the rest: batching, per-partition order, drained rebalances, commits after
//! the sink has the records, retries and metrics.
//!
//! When the consumer stops (after `--idle` with nothing to do, or on Ctrl-C), the counts
//! are written as JSON lines, `{"key":"alice","word":"cat","count":2}`, sorted by key and
//! word, to `--out` or standard output; a summary goes to standard error.
//!
//! Run it against a broker (the local one: `scripts/kafka-local start`):
//!
//! ```text
//! cargo run -p ebb-core --example word_count -- --help
//! cargo run -p ebb-core --example word_count -- \
//!     --brokers 127.0.0.1:9092 --topic lines --group word-count --idle 10s
//! ```
//!
//! `crates/ebb-core/tests/example.rs` runs it in CI.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ebb_core::KafkaOptions;
use ebb_core::consumer::batch::Record;
use ebb_core::consumer::metrics::ConsumerMetrics;
use ebb_core::consumer::sink::{BoxFuture, SinkError};
use ebb_core::consumer::{ConsumerSettings, Decoder, Sink, start};
use ebb_core::http::Probes;
use prometheus_client::registry::Registry;

/// One line of text, borrowed from its record.
struct Line<'a> {
    offset: i64,
    key: &'a str,
    text: &'a str,
}

/// Why a record is not a line of text.
#[derive(Debug)]
enum NotALine {
    NoValue,
    NotUtf8(&'static str),
    NoWords,
}

impl fmt::Display for NotALine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotALine::NoValue => f.write_str("no value"),
            NotALine::NotUtf8(part) => write!(f, "the {part} is not UTF-8"),
            NotALine::NoWords => f.write_str("no words"),
        }
    }
}

/// The decoder: records to [`Line`]s.
struct Lines;

impl Decoder for Lines {
    type Output<'a> = Line<'a>;
    type Error = NotALine;

    fn decode<'a>(&self, record: Record<'a>) -> Result<Line<'a>, NotALine> {
        let value = record.value.ok_or(NotALine::NoValue)?;
        let text = std::str::from_utf8(value).map_err(|_| NotALine::NotUtf8("value"))?;
        let key = std::str::from_utf8(record.key.unwrap_or_default())
            .map_err(|_| NotALine::NotUtf8("key"))?;
        if text.split_whitespace().next().is_none() {
            return Err(NotALine::NoWords);
        }
        Ok(Line {
            offset: record.offset,
            key,
            text,
        })
    }
}

/// The sink: counts per key and word, and per partition the next offset to count.
#[derive(Default)]
struct Counts {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    counts: BTreeMap<(String, String), u64>,
    next_offset: HashMap<i32, i64>,
}

impl Sink<Lines> for Counts {
    fn write<'a, 'r>(
        &'a self,
        _topic: &'a str,
        partition: i32,
        records: &'a [Line<'r>],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State {
            counts,
            next_offset,
        } = &mut *state;
        let next = next_offset.entry(partition).or_insert(-1);
        for line in records {
            if line.offset < *next {
                continue;
            }
            for word in line.text.split_whitespace() {
                let word = word.to_lowercase();
                *counts.entry((line.key.to_string(), word)).or_default() += 1;
            }
            *next = line.offset + 1;
        }
        // Counting never fails; a sink that writes somewhere returns its error here.
        Box::pin(async { Ok(()) })
    }
}

const HELP: &str = "\
Counts words per record key with ebb's consumer runtime.

Usage: word_count --topic TOPIC [OPTIONS]

Options:
  --brokers HOST:PORT  bootstrap servers [default: 127.0.0.1:9092]
  --topic TOPIC        topic of text lines (malformed records go to TOPIC.dlq)
  --group GROUP        consumer group [default: word-count]
  --idle DURATION      stop after this long with nothing to do, e.g. 10s [default: never]
  --out FILE           write the counts there instead of standard output
  -h, --help           print this help";

/// The command line.
struct Options {
    brokers: String,
    topic: String,
    group: String,
    idle: Option<Duration>,
    out: Option<String>,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Option<Options>, String> {
    let mut options = Options {
        brokers: "127.0.0.1:9092".into(),
        topic: String::new(),
        group: "word-count".into(),
        idle: None,
        out: None,
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--brokers" => options.brokers = value,
            "--topic" => options.topic = value,
            "--group" => options.group = value,
            "--idle" => {
                let seconds = value.strip_suffix('s').unwrap_or(&value);
                let seconds: f64 = seconds
                    .parse()
                    .map_err(|_| format!("--idle: not a duration: {value}"))?;
                options.idle = Some(Duration::from_secs_f64(seconds));
            }
            "--out" => options.out = Some(value),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.topic.is_empty() {
        return Err("--topic is required".into());
    }
    Ok(Some(options))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(options: Options) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let settings = ConsumerSettings {
        stop_after_idle: options.idle,
        ..ConsumerSettings::new(&options.topic, &options.group)
    };
    // Metrics as `ebb consume` has them; serve `registry` with ebb_core::http::serve to
    // scrape them.
    let mut registry = Registry::default();
    let metrics = ConsumerMetrics::register(&mut registry);
    let counts = Arc::new(Counts::default());
    let running = start(
        &KafkaOptions::new(options.brokers),
        settings,
        Lines,
        counts.clone(),
        metrics,
        Arc::new(Probes::default()),
    )
    .await?;
    let stop = running.stop_flag();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let report = running.wait().await;

    let state = counts.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut text = String::new();
    for ((key, word), count) in &state.counts {
        let line = serde_json::json!({ "key": key, "word": word, "count": count });
        text.push_str(&format!("{line}\n"));
    }
    match &options.out {
        Some(path) => std::fs::write(path, text)?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    eprintln!(
        "Counted {} lines in {} batches; dead-lettered {}",
        report.processed, report.batches, report.dead_lettered
    );
    Ok(match report.failure {
        Some(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(1)
        }
        None => ExitCode::SUCCESS,
    })
}
