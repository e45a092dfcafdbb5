//! ebb's model of KEDA's kafka scaler (`ebb_scaling::keda`: `KafkaTrigger::from_metadata`,
//! `KafkaScaler::try_poll`) against KEDA v2.21.0's own scaler, run by `keda-kafka-fidelity`
//! (built by scripts/k8s-tools from `pkg/scalers`, source in tests/keda-go/kafka-fidelity),
//! on topics and consumer groups of the local broker in many states.
//!
//! For each state the test commits the group's offsets, reads log start, log end and the
//! committed offsets itself, runs KEDA's scaler (one or two polls) and ebb's model on what
//! it read, and requires the same answer: the metric KEDA serves, its activity, a poll
//! error, or a refused trigger. The topics stay quiet while compared (nothing produces);
//! the only change during a run is a commit between two polls, made when KEDA logs that
//! its first poll is done. `cargo test -p ebb --test real -- keda_fidelity:: --nocapture` prints
//! the table docs/BENCHMARKS.md shows.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use ebb_scaling::keda::{KafkaScaler, KafkaTrigger, PartitionOffsets};
use ebb_testkit::kube::tool;
use ebb_testkit::{commit_offsets, delete_records, produce_to_partitions, watermarks};
use serde_json::Value;

/// The line KEDA's scaler logs (at V(1)) at the end of each poll's lag computation.
const POLL_DONE: &str = "Providing metrics based on totalLag";
/// The harness's sleep between two polls when the test commits in between.
const MOVE_INTERVAL: Duration = Duration::from_millis(2000);
/// How long that commit may take, leaving a margin before KEDA's second poll.
const MOVE_BUDGET: Duration = Duration::from_millis(1500);

/// One poll's answer.
#[derive(Debug, Clone, PartialEq)]
enum Poll {
    Metric { value: f64, active: bool },
    Error(String),
}

/// What a scaler made of one trigger over its polls.
#[derive(Debug, Clone)]
struct Outcome {
    /// The constructor (KEDA) or `from_metadata` (ebb) refused the metadata.
    refused: Option<String>,
    /// The `AverageValue` target per replica.
    target: Option<f64>,
    polls: Vec<Poll>,
}

/// One state: a group's committed offsets on a topic and a trigger's metadata.
struct Case {
    state: String,
    topic: usize,
    commits: Vec<(i32, i64)>,
    metadata: Vec<(&'static str, String)>,
    polls: usize,
    /// Offsets committed between the first and the second poll.
    moves: Vec<(i32, i64)>,
}

impl Case {
    fn new(state: &str, topic: usize, commits: &[i64], metadata: &[(&'static str, &str)]) -> Self {
        Case {
            state: state.into(),
            topic,
            commits: at(commits),
            metadata: metadata.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            polls: 1,
            moves: Vec::new(),
        }
    }

    /// Two polls with the committed offsets still.
    fn twice(mut self) -> Self {
        self.polls = 2;
        self
    }

    /// Two polls, committing `moves` in between.
    fn moving(mut self, moves: &[(i32, i64)]) -> Self {
        self.polls = 2;
        self.moves = moves.to_vec();
        self
    }
}

/// Committed offsets for partitions 0, 1, ... in order; `NONE` leaves one uncommitted.
fn at(offsets: &[i64]) -> Vec<(i32, i64)> {
    offsets
        .iter()
        .enumerate()
        .filter(|(_, o)| **o != NONE)
        .map(|(p, o)| (p as i32, *o))
        .collect()
}

const NONE: i64 = i64::MIN;

/// The partitions of `topic` as `group` and the broker see them now.
fn read_offsets(bootstrap: &str, topic: &str, group: &str) -> Vec<PartitionOffsets> {
    let committed = committed_offsets(bootstrap, group, topic);
    watermarks(bootstrap, topic)
        .into_iter()
        .enumerate()
        .map(|(p, (start, end))| PartitionOffsets {
            log_start: start as f64,
            log_end: end as f64,
            committed: committed.get(&(p as i32)).map(|&c| c as f64),
        })
        .collect()
}

/// KEDA's own scaler over `polls` polls; `between` runs once KEDA's first poll is done
/// (and the harness then waits `MOVE_INTERVAL` before the second).
fn run_keda(
    metadata: &BTreeMap<String, String>,
    polls: usize,
    between: Option<&mut dyn FnMut()>,
) -> Outcome {
    let interval = if between.is_some() {
        MOVE_INTERVAL.as_millis() as u64
    } else {
        0
    };
    let input = serde_json::json!({
        "metadata": metadata,
        "polls": polls,
        "pollIntervalMs": interval,
    });
    let mut child = Command::new(tool("keda-kafka-fidelity"))
        .env("KEDA_FIDELITY_VERBOSE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keda-kafka-fidelity");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write the harness's input");
    let mut stderr = String::new();
    let mut log = BufReader::new(child.stderr.take().expect("stderr"));
    if let Some(between) = between {
        loop {
            let mut line = String::new();
            let n = log.read_line(&mut line).expect("read KEDA's log");
            assert!(n > 0, "KEDA's first poll never finished:\n{stderr}");
            stderr.push_str(&line);
            if line.contains(POLL_DONE) {
                break;
            }
        }
        let started = Instant::now();
        between();
        let took = started.elapsed();
        assert!(
            took < MOVE_BUDGET,
            "the commit between KEDA's polls took {took:?}; KEDA polls again {MOVE_INTERVAL:?} \
             after its first poll, so the comparison would be a race"
        );
    }
    log.read_to_string(&mut stderr).expect("read KEDA's log");
    let out = child
        .wait_with_output()
        .expect("keda-kafka-fidelity output");
    assert!(
        out.status.success(),
        "keda-kafka-fidelity failed ({}):\n{stderr}",
        out.status
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "keda-kafka-fidelity printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    Outcome {
        refused: answer["error"].as_str().map(str::to_string),
        target: answer["targetAverageValue"].as_f64(),
        polls: answer["polls"]
            .as_array()
            .expect("polls")
            .iter()
            .map(|p| match p["error"].as_str() {
                Some(e) => Poll::Error(e.to_string()),
                None => Poll::Metric {
                    value: p["metric"].as_f64().expect("metric"),
                    active: p["active"].as_bool().expect("active"),
                },
            })
            .collect(),
    }
}

/// ebb's model of the same trigger over the offsets each poll saw.
fn run_ebb(metadata: &BTreeMap<String, String>, reads: &[Vec<PartitionOffsets>]) -> Outcome {
    match KafkaTrigger::from_metadata(metadata) {
        Err(e) => Outcome {
            refused: Some(e),
            target: None,
            polls: Vec::new(),
        },
        Ok(trigger) => {
            let target = Some(trigger.lag_threshold);
            let mut scaler = KafkaScaler::new(trigger);
            let polls = reads
                .iter()
                .map(|offsets| match scaler.try_poll(offsets) {
                    Ok(m) => Poll::Metric {
                        value: m.value,
                        active: m.active,
                    },
                    Err(e) => Poll::Error(e),
                })
                .collect();
            Outcome {
                refused: None,
                target,
                polls,
            }
        }
    }
}

fn same_poll(a: &Poll, b: &Poll) -> bool {
    match (a, b) {
        (
            Poll::Metric {
                value: x,
                active: p,
            },
            Poll::Metric {
                value: y,
                active: q,
            },
        ) => (x - y).abs() <= 1e-9 * x.abs().max(1.0) && p == q,
        (Poll::Error(_), Poll::Error(_)) => true,
        _ => false,
    }
}

fn show_poll(p: &Poll) -> String {
    match p {
        Poll::Metric { value, active } => {
            format!("{} {}", value, if *active { "active" } else { "inactive" })
        }
        Poll::Error(e) => format!("error: {}", short(e)),
    }
}

/// The part of an error after KEDA's wrapping ("error parsing kafka metadata: ...").
fn short(e: &str) -> String {
    let e = e.lines().next().unwrap_or_default();
    let e = e
        .rsplit("error parsing kafka metadata: ")
        .next()
        .unwrap_or(e);
    let e = e.replace('|', "\\|");
    if e.chars().count() > 90 {
        format!("{}…", e.chars().take(90).collect::<String>())
    } else {
        e
    }
}

/// `committed/end` per partition (`–` never committed, `start..end` when the log start
/// moved), runs of equal partitions as `n×`.
fn show_offsets(offsets: &[PartitionOffsets]) -> String {
    let one = |p: &PartitionOffsets| {
        let committed = p.committed.map_or("–".to_string(), |c| c.to_string());
        if p.log_start > 0.0 {
            format!("{committed}/{}..{}", p.log_start, p.log_end)
        } else {
            format!("{committed}/{}", p.log_end)
        }
    };
    let mut runs: Vec<(String, usize)> = Vec::new();
    for p in offsets {
        let s = one(p);
        match runs.last_mut() {
            Some((last, n)) if *last == s => *n += 1,
            _ => runs.push((s, 1)),
        }
    }
    runs.into_iter()
        .map(|(s, n)| if n > 1 { format!("{n}×{s}") } else { s })
        .collect::<Vec<_>>()
        .join(" ")
}

fn show_metadata(metadata: &[(&'static str, String)]) -> String {
    if metadata.is_empty() {
        return "(defaults)".into();
    }
    metadata
        .iter()
        .map(|(k, v)| format!("{k}={v:?}").replace('|', "\\|"))
        .collect::<Vec<_>>()
        .join(", ")
}

struct Topic {
    name: String,
    /// Records produced per partition.
    ends: Vec<i64>,
    /// Records deleted per partition (the log start).
    starts: Vec<i64>,
}

fn setup_topic(bootstrap: &str, prefix: &str, ends: &[i64], starts: &[i64]) -> Topic {
    let name = create_topic(prefix, ends.len() as u32);
    let counts: Vec<(i32, usize)> = ends
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| (p as i32, *n as usize))
        .collect();
    produce_to_partitions(bootstrap, &name, &counts);
    let deletions: Vec<(i32, i64)> = starts
        .iter()
        .enumerate()
        .filter(|(_, s)| **s > 0)
        .map(|(p, s)| (p as i32, *s))
        .collect();
    if !deletions.is_empty() {
        delete_records(bootstrap, &name, &deletions);
    }
    let expected: Vec<(i64, i64)> = starts.iter().copied().zip(ends.iter().copied()).collect();
    assert_eq!(
        watermarks(bootstrap, &name),
        expected,
        "{name}: (log start, log end) per partition"
    );
    Topic {
        name,
        ends: ends.to_vec(),
        starts: starts.to_vec(),
    }
}

fn cases() -> Vec<Case> {
    // Topics: 0 = three partitions with 100/50/20 records; 1 = six with 5,250 each;
    // 2 = four with 100/100/100/0 records and the first 40/100/0/0 deleted; 3 = twelve
    // with 1,000 each.
    const T3: usize = 0;
    const T6: usize = 1;
    const TD: usize = 2;
    const T12: usize = 3;
    let lag110 = [40, 0, 20];
    let past_end = [150, 50, 20];
    let t = |v: &'static str| ("lagThreshold", v);
    let on = |k: &'static str| (k, "true");
    let earliest = ("offsetResetPolicy", "earliest");
    let to_zero = on("scaleToZeroOnInvalidOffset");
    let idle = on("allowIdleConsumers");
    let even = on("ensureEvenDistributionOfPartitions");
    let with_lag = on("limitToPartitionsWithLag");
    let persistent = on("excludePersistentLag");
    let s6 = [5250; 6];
    vec![
        // Lag and the partition cap.
        Case::new("lag 8 below lagThreshold", T3, &[95, 47, 20], &[t("10")]),
        Case::new(
            "lag 110 above lagThreshold, under partitions × threshold",
            T3,
            &lag110,
            &[t("50")],
        ),
        Case::new(
            "lag 110 above 3 partitions × 10: capped",
            T3,
            &lag110,
            &[t("10")],
        ),
        Case::new("lag 110, every key defaulted", T3, &lag110, &[]),
        Case::new(
            "metadata values with spaces and Go booleans",
            T3,
            &lag110,
            &[("lagThreshold", " 20 "), ("allowIdleConsumers", "True")],
        ),
        Case::new(
            "lag 30,000 / 4,500 on 6 partitions: 6 in integer division, uncapped",
            T6,
            &[250; 6],
            &[t("4500")],
        ),
        Case::new(
            "lag 31,499 / 4,500 = 6 on 6 partitions: uncapped",
            T6,
            &[1, 0, 0, 0, 0, 0],
            &[t("4500")],
        ),
        Case::new(
            "lag 31,500 / 4,500 = 7 on 6 partitions: capped",
            T6,
            &[0; 6],
            &[t("4500")],
        ),
        Case::new(
            "lag 31,500, 6 partitions × 1,000: capped",
            T6,
            &[0; 6],
            &[t("1000")],
        ),
        Case::new(
            "12 partitions, maxReplicaCount would be 4: cap is 12 × threshold",
            T12,
            &[0; 12],
            &[t("100")],
        ),
        // allowIdleConsumers, limitToPartitionsWithLag, ensureEvenDistributionOfPartitions.
        Case::new(
            "allowIdleConsumers: lag 110 uncapped",
            T3,
            &lag110,
            &[t("10"), idle],
        ),
        Case::new(
            "allowIdleConsumers + ensureEvenDistribution: capped again",
            T3,
            &lag110,
            &[t("10"), idle, even],
        ),
        Case::new(
            "limitToPartitionsWithLag: 2 partitions with lag",
            T3,
            &lag110,
            &[t("10"), with_lag],
        ),
        Case::new(
            "limitToPartitionsWithLag: 100 / 51 = 1 partition with lag (integer division)",
            T3,
            &[0, 50, 20],
            &[t("51"), with_lag],
        ),
        Case::new(
            "12 partitions, limitToPartitionsWithLag: 2 with lag",
            T12,
            &[
                0, 0, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000,
            ],
            &[t("100"), with_lag],
        ),
        Case::new(
            "ensureEvenDistribution, 3 partitions: 110 / 50 → 3",
            T3,
            &lag110,
            &[t("50"), even],
        ),
        Case::new(
            "ensureEvenDistribution, 6 partitions: 250 / 100 → 3",
            T6,
            &[5000, 5250, 5250, 5250, 5250, 5250],
            &[t("100"), even],
        ),
        Case::new(
            "ensureEvenDistribution, 6 partitions: 450 / 100 → 6",
            T6,
            &[4800, 5250, 5250, 5250, 5250, 5250],
            &[t("100"), even],
        ),
        Case::new(
            "ensureEvenDistribution, no lag: one factor",
            T6,
            &s6,
            &[t("100"), even],
        ),
        Case::new(
            "12 partitions, ensureEvenDistribution: 500 / 100 → 6",
            T12,
            &[
                500, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000,
            ],
            &[t("100"), even],
        ),
        // activationLagThreshold around the lag (110).
        Case::new(
            "activationLagThreshold 109, lag 110",
            T3,
            &lag110,
            &[t("50"), ("activationLagThreshold", "109")],
        ),
        Case::new(
            "activationLagThreshold 110, lag 110",
            T3,
            &lag110,
            &[t("50"), ("activationLagThreshold", "110")],
        ),
        Case::new(
            "activationLagThreshold 111, lag 110",
            T3,
            &lag110,
            &[t("50"), ("activationLagThreshold", "111")],
        ),
        // Partitions never committed.
        Case::new("never committed, latest", T3, &[], &[t("10")]),
        Case::new(
            "never committed, latest + scaleToZeroOnInvalidOffset",
            T3,
            &[],
            &[t("10"), to_zero],
        ),
        Case::new("never committed, earliest", T3, &[], &[t("100"), earliest]),
        Case::new(
            "never committed, earliest + scaleToZeroOnInvalidOffset",
            T3,
            &[],
            &[t("100"), earliest, to_zero],
        ),
        Case::new("only p0 committed, latest", T3, &[40], &[t("100")]),
        Case::new(
            "only p0 committed, earliest",
            T3,
            &[40],
            &[t("100"), earliest],
        ),
        Case::new(
            "only p0 committed, earliest + scaleToZeroOnInvalidOffset",
            T3,
            &[40],
            &[t("100"), earliest, to_zero],
        ),
        Case::new(
            "log start > 0, never committed, earliest",
            TD,
            &[],
            &[t("100"), earliest],
        ),
        Case::new(
            "log start > 0, never committed, earliest + limitToPartitionsWithLag",
            TD,
            &[],
            &[t("10"), earliest, with_lag],
        ),
        Case::new(
            "log start > 0, never committed, earliest + scaleToZeroOnInvalidOffset",
            TD,
            &[],
            &[t("100"), earliest, to_zero],
        ),
        Case::new(
            "log start > 0, never committed, latest",
            TD,
            &[],
            &[t("100")],
        ),
        Case::new(
            "log start > 0, p0 committed below the log start, earliest",
            TD,
            &[10],
            &[t("100"), earliest],
        ),
        // Committed past the log end.
        Case::new(
            "committed past the log end: lag -50",
            T3,
            &past_end,
            &[t("10")],
        ),
        Case::new(
            "p0 50 past the end, p1 and p2 behind: -50 + 50 + 20",
            T3,
            &[150, 0, 0],
            &[t("10"), idle],
        ),
        Case::new(
            "p0 past the end + limitToPartitionsWithLag",
            T3,
            &[150, 0, 0],
            &[t("5"), with_lag],
        ),
        Case::new(
            "lag -50 + ensureEvenDistribution",
            T3,
            &past_end,
            &[t("10"), even],
        ),
        // excludePersistentLag over two polls.
        Case::new(
            "excludePersistentLag off, offsets still",
            T3,
            &lag110,
            &[t("10"), idle],
        )
        .twice(),
        Case::new(
            "excludePersistentLag on, offsets still",
            T3,
            &lag110,
            &[t("10"), idle, persistent],
        )
        .twice(),
        Case::new(
            "excludePersistentLag on, p0 moves 40 → 60",
            T3,
            &lag110,
            &[t("10"), idle, persistent],
        )
        .moving(&[(0, 60)]),
        Case::new(
            "excludePersistentLag off, p0 moves 40 → 60",
            T3,
            &lag110,
            &[t("10"), idle],
        )
        .moving(&[(0, 60)]),
        Case::new(
            "excludePersistentLag + limitToPartitionsWithLag, offsets still",
            T3,
            &lag110,
            &[t("10"), with_lag, persistent],
        )
        .twice(),
        Case::new(
            "excludePersistentLag + limitToPartitionsWithLag, p0 moves 40 → 60",
            T3,
            &lag110,
            &[t("10"), with_lag, persistent],
        )
        .moving(&[(0, 60)]),
        Case::new(
            "limitToPartitionsWithLag, persistent lag counted, p0 moves 40 → 60",
            T3,
            &lag110,
            &[t("10"), with_lag],
        )
        .moving(&[(0, 60)]),
        Case::new(
            "excludePersistentLag, p0 never committed, offsets still",
            T3,
            &[NONE, 0, 20],
            &[t("10"), idle, persistent],
        )
        .twice(),
        Case::new(
            "excludePersistentLag, p0 past the end, p1 moves 0 → 10",
            T3,
            &[150, 0, 20],
            &[t("10"), idle, persistent],
        )
        .moving(&[(1, 10)]),
        Case::new(
            "excludePersistentLag + activationLagThreshold 109, offsets still",
            T3,
            &lag110,
            &[t("10"), idle, persistent, ("activationLagThreshold", "109")],
        )
        .twice(),
        // partitionLimitation.
        Case::new(
            "partitionLimitation 0,2-3 leaves p1's lag out",
            T6,
            &[5000, 0, 5250, 5250, 5250, 5250],
            &[t("100"), ("partitionLimitation", "0,2-3")],
        ),
        Case::new(
            "the same offsets without partitionLimitation",
            T6,
            &[5000, 0, 5250, 5250, 5250, 5250],
            &[t("100")],
        ),
        Case::new(
            "partitionLimitation 1: capped at one partition",
            T6,
            &[5000, 0, 5250, 5250, 5250, 5250],
            &[t("100"), ("partitionLimitation", "1")],
        ),
        Case::new(
            "partitionLimitation 0-4 + ensureEvenDistribution: factors of 5",
            T6,
            &[5000, 5250, 5250, 5250, 5250, 5250],
            &[t("100"), ("partitionLimitation", "0-4"), even],
        ),
        Case::new(
            "partitionLimitation 1,4 + limitToPartitionsWithLag",
            T6,
            &[5000, 0, 5250, 5250, 5250, 5250],
            &[t("100"), ("partitionLimitation", "1,4"), with_lag],
        ),
        Case::new(
            "partitionLimitation 5-3 selects no partition",
            T6,
            &s6,
            &[t("100"), ("partitionLimitation", "5-3")],
        ),
        Case::new(
            "partitionLimitation 9: no such partition",
            T6,
            &s6,
            &[t("100"), ("partitionLimitation", "9")],
        ),
        // Refused metadata.
        Case::new(
            "refused: allowIdleConsumers + limitToPartitionsWithLag",
            T3,
            &lag110,
            &[t("10"), idle, with_lag],
        ),
        Case::new(
            "refused: ensureEvenDistribution + limitToPartitionsWithLag",
            T3,
            &lag110,
            &[t("10"), even, with_lag],
        ),
        Case::new("refused: lagThreshold 0", T3, &lag110, &[t("0")]),
        Case::new(
            "refused: lagThreshold not whole",
            T3,
            &lag110,
            &[t("4500.5")],
        ),
        Case::new(
            "refused: activationLagThreshold negative",
            T3,
            &lag110,
            &[t("10"), ("activationLagThreshold", "-1")],
        ),
        Case::new(
            "refused: offsetResetPolicy Earliest",
            T3,
            &lag110,
            &[t("10"), ("offsetResetPolicy", "Earliest")],
        ),
        Case::new(
            "refused: partitionLimitation 1-2-3",
            T3,
            &lag110,
            &[t("10"), ("partitionLimitation", "1-2-3")],
        ),
        Case::new(
            "refused: lagThreshold with a leading zero",
            T3,
            &lag110,
            &[t("010")],
        ),
        Case::new(
            "refused: lagThreshold null (KEDA's typed config panics, recovered)",
            T3,
            &lag110,
            &[t("null")],
        ),
        Case::new(
            "refused: version sarama cannot parse",
            T3,
            &lag110,
            &[t("10"), ("version", "3.9")],
        ),
        Case::new(
            "version sarama parses",
            T3,
            &lag110,
            &[t("10"), ("version", "3.9.0")],
        ),
        Case::new(
            "refused: allowIdleConsumers not a Go boolean",
            T3,
            &lag110,
            &[t("10"), ("allowIdleConsumers", "yes")],
        ),
    ]
}

#[test]
fn ebbs_kafka_model_matches_kedas_own_scaler() {
    let started = Instant::now();
    let bootstrap = kafka();
    tool("keda-kafka-fidelity");
    let topics = [
        setup_topic(&bootstrap, "keda-fid-3", &[100, 50, 20], &[0, 0, 0]),
        setup_topic(&bootstrap, "keda-fid-6", &[5250; 6], &[0; 6]),
        setup_topic(
            &bootstrap,
            "keda-fid-del",
            &[100, 100, 100, 0],
            &[40, 100, 0, 0],
        ),
        setup_topic(&bootstrap, "keda-fid-12", &[1000; 12], &[0; 12]),
    ];

    let mut rows = Vec::new();
    let mut differences = Vec::new();
    let cases = cases();
    for case in &cases {
        let topic = &topics[case.topic];
        let group = unique("keda-fid");
        if !case.commits.is_empty() {
            commit_offsets(&bootstrap, &group, &topic.name, &case.commits);
        }
        let mut metadata: BTreeMap<String, String> = [
            ("bootstrapServers", bootstrap.as_str()),
            ("topic", &topic.name),
            ("consumerGroup", &group),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in &case.metadata {
            metadata.insert(k.to_string(), v.clone());
        }

        let before = read_offsets(&bootstrap, &topic.name, &group);
        let keda = if case.moves.is_empty() {
            run_keda(&metadata, case.polls, None)
        } else {
            let mut commit = || commit_offsets(&bootstrap, &group, &topic.name, &case.moves);
            run_keda(&metadata, case.polls, Some(&mut commit))
        };
        let after = read_offsets(&bootstrap, &topic.name, &group);
        if case.moves.is_empty() {
            assert_eq!(
                before, after,
                "{}: the offsets moved during KEDA's polls",
                case.state
            );
        }
        let mut reads = vec![before];
        reads.extend(std::iter::repeat_n(after, case.polls.saturating_sub(1)));
        let ebb = run_ebb(&metadata, &reads);

        let meta = show_metadata(&case.metadata);
        let mut row = |poll: String, offsets: String, k: String, e: String, same: bool| {
            let mark = if same { "" } else { " **≠**" };
            let line = format!(
                "| {} | {offsets} | {meta} | {poll} | {k} | {e}{mark} |",
                case.state
            )
            // KEDA's poll errors name the topic, whose name is unique to the run.
            .replace(&topic.name, "<topic>");
            if !same {
                differences.push(line.clone());
            }
            rows.push(line);
        };
        match (&keda.refused, &ebb.refused) {
            (Some(k), Some(e)) => row(
                "–".into(),
                show_offsets(&reads[0]),
                format!("refused: {}", short(k)),
                format!("refused: {}", short(e)),
                true,
            ),
            (Some(k), None) => row(
                "–".into(),
                show_offsets(&reads[0]),
                format!("refused: {}", short(k)),
                "accepted".into(),
                false,
            ),
            (None, Some(e)) => row(
                "–".into(),
                show_offsets(&reads[0]),
                "accepted".into(),
                format!("refused: {}", short(e)),
                false,
            ),
            (None, None) => {
                assert_eq!(keda.polls.len(), case.polls, "{}: KEDA's polls", case.state);
                for (i, (k, e)) in keda.polls.iter().zip(&ebb.polls).enumerate() {
                    let target_same = keda.target == ebb.target;
                    let mut e_text = show_poll(e);
                    if !target_same {
                        e_text = format!("{e_text} (target {:?} vs {:?})", ebb.target, keda.target);
                    }
                    row(
                        (i + 1).to_string(),
                        show_offsets(&reads[i]),
                        show_poll(k),
                        e_text,
                        target_same && same_poll(k, e),
                    );
                }
            }
        }
    }

    println!();
    println!(
        "Topics: {}",
        topics
            .iter()
            .map(|t| format!("{} (ends {:?}, starts {:?})", t.name, t.ends, t.starts))
            .collect::<Vec<_>>()
            .join("; ")
    );
    println!();
    println!("| state | committed/end per partition | metadata | poll | KEDA v2.21.0 | ebb |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    println!();
    println!(
        "{} states, {} rows, {} differences, in {:.1} s",
        cases.len(),
        rows.len(),
        differences.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        differences.is_empty(),
        "ebb's model differs from KEDA's scaler in {} rows:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
