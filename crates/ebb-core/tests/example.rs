//! `examples/word_count.rs` against a real broker: its own record type and sink on ebb's
//! runtime count the good lines, the malformed ones go to the dead-letter topic, and the
//! group's offsets are committed to the end of the topic.
//!
//! The example is built by `cargo test -p ebb-core` (examples are built with the tests)
//! or `cargo build -p ebb-core --examples`; this test runs the binary next to its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ebb_core::KafkaOptions;
use ebb_core::admin::Admin;
use ebb_core::consumer::dead_letter::{HEADER_ERROR, HEADER_OFFSET, HEADER_PARTITION};
use ebb_testkit::{
    RawRecord, committed_offsets, kafka, produce_raw, read_topic, unique, watermarks,
};

/// `target/<profile>/examples/word_count`: this test is `target/<profile>/deps/example-*`.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let binary = profile.join("examples").join("word_count");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build -p ebb-core --examples` (or run `cargo test -p ebb-core`, which builds it)",
        binary.display()
    );
    binary
}

#[test]
fn help_says_how_to_run_it() {
    let output = Command::new(example_binary())
        .arg("--help")
        .output()
        .expect("run word_count");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("--topic") && text.contains("--idle"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn word_count_counts_good_lines_dead_letters_bad_ones_and_commits() {
    let brokers = kafka();
    let topic = unique("words");
    let group = unique("words-group");
    Admin::new(&KafkaOptions::new(brokers.clone()))
        .unwrap()
        .create_topic(&topic, 2, 1, &[])
        .await
        .unwrap();
    let records: &[RawRecord<'_>] = &[
        (Some(b"alice"), Some(b"the cat saw the dog")),
        (Some(b"bob"), Some(b"Hello world")),
        (Some(b"alice"), Some(b"\xff\xfe not text")),
        (Some(b"alice"), Some(b"cat")),
        (Some(b"bob"), None),
        (Some(b"bob"), Some(b"  \t ")),
        (None, Some(b"keyless words")),
        (Some(b"bob"), Some(b"hello again")),
    ];
    produce_raw(&brokers, &topic, records);

    let out = std::env::temp_dir().join(format!("{topic}.jsonl"));
    let started = Instant::now();
    let mut child = Command::new(example_binary())
        .args(["--brokers", &brokers, "--topic", &topic, "--group", &group])
        .args(["--idle", "3s", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run word_count");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(90) {
            child.kill().unwrap();
            panic!("word_count did not stop by itself within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "word_count failed: {stderr}");
    assert!(
        stderr.contains("Counted 5 lines") && stderr.contains("dead-lettered 3"),
        "{stderr}"
    );

    // The counts, per key and word (lowercased), sorted.
    let text = std::fs::read_to_string(&out).unwrap();
    let counts: Vec<(String, String, u64)> = text
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                v["key"].as_str().unwrap().to_string(),
                v["word"].as_str().unwrap().to_string(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("", "keyless", 1),
        ("", "words", 1),
        ("alice", "cat", 2),
        ("alice", "dog", 1),
        ("alice", "saw", 1),
        ("alice", "the", 2),
        ("bob", "again", 1),
        ("bob", "hello", 2),
        ("bob", "world", 1),
    ]
    .map(|(k, w, c)| (k.to_string(), w.to_string(), c));
    assert_eq!(counts, expected, "{text}");
    std::fs::remove_file(&out).unwrap();

    // The malformed records, unchanged, with why and where from.
    let dead = read_topic(
        &brokers,
        &format!("{topic}.dlq"),
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|r| r.header(HEADER_ERROR).expect("reason header"))
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["no value", "no words", "the value is not UTF-8"]);
    let source = read_topic(
        &brokers,
        &topic,
        Duration::from_secs(1),
        Duration::from_secs(30),
    );
    for r in &dead {
        let partition: i32 = r.header(HEADER_PARTITION).unwrap().parse().unwrap();
        let offset: i64 = r.header(HEADER_OFFSET).unwrap().parse().unwrap();
        let original = source
            .iter()
            .find(|s| s.partition == partition && s.offset == offset)
            .expect("the dead letter's source record");
        assert_eq!((&r.key, &r.value), (&original.key, &original.value));
    }

    // Every partition's offset committed to its end.
    let committed = committed_offsets(&brokers, &group, &topic);
    let ends: HashMap<i32, i64> = watermarks(&brokers, &topic)
        .into_iter()
        .enumerate()
        .filter(|(_, (_, high))| *high > 0)
        .map(|(p, (_, high))| (p as i32, high))
        .collect();
    assert_eq!(committed, ends);
}
