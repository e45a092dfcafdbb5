//! `ebb consume` end to end against the real broker, checked through the file sink:
//! order, no gaps across SIGTERM, kill -9 and group changes, dead letters, a failing sink,
//! and bad configuration.

use std::time::Duration;

use crate::common::*;

const SIGTERM: i32 = libc::SIGTERM;
const SIGKILL: i32 = libc::SIGKILL;

#[test]
fn order_per_partition_holds_with_many_partitions_in_flight() {
    let topic = create_topic("order", 8);
    produce(&topic, 6000, "50000");
    let file = temp_file("out.jsonl");
    let consumer = spawn_consumer(
        &topic,
        &unique("g"),
        &file,
        &[
            "--batch-size",
            "50",
            "--max-in-flight",
            "8",
            "--stop-after-idle",
            "2s",
        ],
    );
    let out = finish(consumer, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = audit(&[&file], &end_offsets(&topic));
    assert_eq!(
        (audit.gaps, audit.duplicates, audit.out_of_order),
        (0, 0, 0),
        "{audit:?}"
    );
    assert_eq!(audit.distinct, 6000);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Stopped: processed 6000 records"),
        "{stderr}"
    );
}

#[test]
fn sigterm_mid_stream_then_restart_gives_no_gaps_and_no_duplicates() {
    let topic = create_topic("sigterm", 6);
    let group = unique("g");
    let file = temp_file("out.jsonl");
    let producer = spawn_producer(&topic, "1500");
    let first = spawn_consumer(&topic, &group, &file, &["--batch-size", "20"]);
    wait_until(
        "the first consumer to process records",
        Duration::from_secs(30),
        || sink_lines(&file).len() > 1500,
    );
    signal(&first, SIGTERM);
    let out = finish(first, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before_restart = sink_lines(&file).len();
    // Records keep arriving while no consumer runs, and while the second one starts.
    let written_at_stop = produced_so_far(&topic);
    wait_until(
        "records to arrive with no consumer running",
        Duration::from_secs(30),
        || produced_so_far(&topic) > written_at_stop + 1000,
    );
    let second = spawn_consumer(&topic, &group, &file, &["--batch-size", "20"]);
    wait_until(
        "the second consumer to process records",
        Duration::from_secs(30),
        || sink_lines(&file).len() > before_restart + 1000,
    );
    signal(&producer, SIGTERM);
    let produced = finish(producer, Duration::from_secs(30));
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let ends = end_offsets(&topic);
    let total: i64 = ends.values().sum();
    wait_until(
        "the second consumer to catch up",
        Duration::from_secs(30),
        || sink_lines(&file).len() as i64 >= total,
    );
    signal(&second, SIGTERM);
    assert!(finish(second, Duration::from_secs(30)).status.success());

    let audit = audit(&[&file], &ends);
    assert!(
        before_restart > 0 && (before_restart as i64) < total,
        "the stop was mid-stream"
    );
    assert_eq!(
        (audit.gaps, audit.duplicates, audit.out_of_order),
        (0, 0, 0),
        "{audit:?}"
    );
    assert_eq!(audit.distinct as i64, total);
}

#[test]
fn kill_9_mid_stream_then_restart_gives_no_gaps() {
    let topic = create_topic("kill9", 6);
    let group = unique("g");
    let (first_file, second_file) = (temp_file("first.jsonl"), temp_file("second.jsonl"));
    let producer = spawn_producer(&topic, "2000");
    let first = spawn_consumer(&topic, &group, &first_file, &["--batch-size", "50"]);
    wait_until(
        "the first consumer to process records",
        Duration::from_secs(30),
        || sink_lines(&first_file).len() > 2000,
    );
    signal(&first, SIGKILL);
    let _ = finish(first, Duration::from_secs(10));
    // A killed member stays in the group until its session times out; the restart joins
    // and takes over its partitions then.
    let written_at_kill = produced_so_far(&topic);
    let second = spawn_consumer(&topic, &group, &second_file, &["--batch-size", "50"]);
    wait_until(
        "records to arrive while the second consumer starts",
        Duration::from_secs(30),
        || produced_so_far(&topic) > written_at_kill + 2000,
    );
    signal(&producer, SIGTERM);
    assert!(finish(producer, Duration::from_secs(30)).status.success());
    let ends = end_offsets(&topic);
    let total: i64 = ends.values().sum();
    wait_until(
        "the second consumer to catch up",
        Duration::from_secs(60),
        || audit(&[&first_file, &second_file], &ends).gaps == 0,
    );
    signal(&second, SIGTERM);
    assert!(finish(second, Duration::from_secs(30)).status.success());

    let audit = audit(&[&first_file, &second_file], &ends);
    assert_eq!(audit.gaps, 0, "{audit:?}");
    assert_eq!(audit.out_of_order, 0, "{audit:?}");
    assert_eq!(audit.distinct as i64, total);
    eprintln!(
        "kill -9: {} duplicates out of {total} records (allowed after a crash)",
        audit.duplicates
    );
}

#[test]
fn one_to_three_to_one_consumers_under_load_keeps_every_record_once_and_in_order() {
    let topic = create_topic("scale", 12);
    let group = unique("g");
    let files: Vec<_> = (0..3).map(|i| temp_file(&format!("c{i}.jsonl"))).collect();
    let producer = spawn_producer(&topic, "1000");
    let args = ["--batch-size", "20", "--batch-processing-time", "0"];
    let a = spawn_consumer(&topic, &group, &files[0], &args);
    wait_until("consumer A to process", Duration::from_secs(30), || {
        sink_lines(&files[0]).len() > 500
    });
    let b = spawn_consumer(&topic, &group, &files[1], &args);
    let c = spawn_consumer(&topic, &group, &files[2], &args);
    wait_until(
        "B and C to take partitions",
        Duration::from_secs(30),
        || sink_lines(&files[1]).len() > 300 && sink_lines(&files[2]).len() > 300,
    );
    wait_until(
        "three consumers to share the load",
        Duration::from_secs(30),
        || files.iter().all(|f| sink_lines(f).len() > 1000),
    );
    signal(&b, SIGTERM);
    signal(&c, SIGTERM);
    assert!(finish(b, Duration::from_secs(30)).status.success());
    assert!(finish(c, Duration::from_secs(30)).status.success());
    let a_before = sink_lines(&files[0]).len();
    wait_until(
        "A to take the partitions back",
        Duration::from_secs(30),
        || sink_lines(&files[0]).len() > a_before + 1000,
    );
    signal(&producer, SIGTERM);
    assert!(finish(producer, Duration::from_secs(30)).status.success());
    let ends = end_offsets(&topic);
    let paths: Vec<&std::path::Path> = files.iter().map(|f| f.as_path()).collect();
    wait_until("A to catch up", Duration::from_secs(30), || {
        audit(&paths, &ends).gaps == 0
    });
    signal(&a, SIGTERM);
    assert!(finish(a, Duration::from_secs(30)).status.success());

    let audit = audit(&paths, &ends);
    assert_eq!(
        (audit.gaps, audit.duplicates, audit.out_of_order),
        (0, 0, 0),
        "{audit:?}"
    );
}

#[test]
fn bad_records_go_to_the_dead_letter_topic_and_the_rest_is_processed() {
    let topic = unique("bad");
    let out = run(&[
        "topic",
        "create",
        &topic,
        "--partitions",
        "2",
        "--config",
        "max.message.bytes=4194304",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    produce(&topic, 200, "10000");
    let big_trade = format!(
        r#"{{"account_id":"ACC1234","trade_id":"TRD123456","symbol":"AAPL","trade_type":"BUY","quantity":5,"price":100.5,"timestamp":"2025-01-01T00:00:00Z","note":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let null_key_trade = br#"{"account_id":"ACC2000","trade_id":"TRD200000","symbol":"MSFT","trade_type":"SELL","quantity":1,"price":60.0,"timestamp":"2025-01-01T00:00:00Z"}"#;
    produce_raw(
        &kafka(),
        &topic,
        &[
            (
                Some(b"ACC1".as_slice()),
                Some(b"this is not json".as_slice()),
            ),
            (None, Some(null_key_trade.as_slice())),
            (Some(b"ACC3".as_slice()), Some(b"".as_slice())),
            (Some(b"ACC1234".as_slice()), Some(big_trade.as_bytes())),
        ],
    );
    produce(&topic, 200, "10000");

    let file = temp_file("out.jsonl");
    let consumer = spawn_consumer(&topic, &unique("g"), &file, &["--stop-after-idle", "2s"]);
    let out = finish(consumer, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ends = end_offsets(&topic);
    let dead = read_topic(
        &kafka(),
        &format!("{topic}.dlq"),
        Duration::from_secs(2),
        Duration::from_secs(30),
    );
    assert_eq!(dead.len(), 2, "the non-JSON record and the empty one");
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|r| r.header("ebb.error").unwrap())
        .collect();
    reasons.sort();
    assert!(reasons[0].starts_with("empty value"), "{reasons:?}");
    assert!(reasons[1].starts_with("not a trade"), "{reasons:?}");
    for r in &dead {
        assert_eq!(
            r.header("ebb.source.topic").as_deref(),
            Some(topic.as_str())
        );
        let (p, o): (i32, i64) = (
            r.header("ebb.source.partition").unwrap().parse().unwrap(),
            r.header("ebb.source.offset").unwrap().parse().unwrap(),
        );
        assert!(o < ends[&p], "source offset points into the topic");
    }
    let processed = sink_lines(&file);
    assert_eq!(
        processed.len(),
        402,
        "400 generated trades, the null-key trade and the 1 MiB trade"
    );
    let dead_places: Vec<(i32, i64)> = dead
        .iter()
        .map(|r| {
            (
                r.header("ebb.source.partition").unwrap().parse().unwrap(),
                r.header("ebb.source.offset").unwrap().parse().unwrap(),
            )
        })
        .collect();
    let mut everything: Vec<(i32, i64)> = processed.into_iter().chain(dead_places).collect();
    everything.sort();
    let expected: Vec<(i32, i64)> = ends
        .iter()
        .flat_map(|(&p, &e)| (0..e).map(move |o| (p, o)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        everything, expected,
        "every record is either processed or dead-lettered, once"
    );
}

#[test]
fn a_failing_sink_holds_the_partition_and_nothing_is_committed_past_it() {
    let topic = create_topic("sinkfail", 3);
    let group = unique("g");
    produce(&topic, 900, "10000");
    let file = temp_file("out.jsonl");
    // A directory where the sink wants its file: every write fails until it is removed.
    std::fs::create_dir_all(&file).unwrap();
    let mut command = ebb();
    command
        .args(["consume", "--topic", &topic, "--group", &group])
        .args(["--sink", "file", "--metrics-addr", "127.0.0.1:0"])
        .args(["--retry-backoff", "100ms", "--retry-max-backoff", "400ms"])
        .args(["--stop-after-idle", "3s", "--sink-file"])
        .arg(&file);
    let mut consumer = Running::spawn(command);
    let addr = consumer.address("--metrics-addr");
    wait_until(
        "retries to show in /metrics",
        Duration::from_secs(30),
        || metric(&addr, "ebb_consumer_sink_retries_total").is_some_and(|v| v >= 6.0),
    );
    assert!(
        committed_offsets(&kafka(), &group, &topic).is_empty(),
        "nothing committed while the sink fails"
    );
    std::fs::remove_dir(&file).unwrap();
    let out = consumer.finish(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ends = end_offsets(&topic);
    let audit = audit(&[&file], &ends);
    assert_eq!(
        (audit.gaps, audit.duplicates, audit.out_of_order),
        (0, 0, 0),
        "{audit:?}"
    );
    assert_eq!(
        committed_offsets(&kafka(), &group, &topic),
        ends,
        "committed up to the end, after recovery"
    );
}

#[test]
fn bad_configuration_exits_2_and_names_the_setting() {
    let cases: [(&[&str], &str); 7] = [
        (&["consume", "--batch-size", "0"], "--batch-size"),
        (&["consume", "--stall-timeout", "2s"], "--stall-timeout"),
        (&["consume", "--sink-delay", "slow"], "--sink-delay"),
        (&["consume", "--batch-timeout", "soon"], "--batch-timeout"),
        (&["consume", "--sink", "file"], "--sink-file"),
        (&["consume", "--retry-backoff", "0s"], "--retry-backoff"),
        (
            &["consume", "--auto-offset-reset", "middle"],
            "--auto-offset-reset",
        ),
    ];
    for (args, setting) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(setting),
            "{args:?} should name {setting}: {stderr}"
        );
    }
    let out = ebb()
        .args(["consume"])
        .env("BATCH_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch-size"));
}

#[test]
fn the_kip_848_consumer_protocol_consumes_everything() {
    let topic = create_topic("kip848", 4);
    produce(&topic, 2000, "20000");
    let file = temp_file("out.jsonl");
    let consumer = spawn_consumer(
        &topic,
        &unique("g"),
        &file,
        &["--group-protocol", "consumer", "--stop-after-idle", "2s"],
    );
    let out = finish(consumer, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = audit(&[&file], &end_offsets(&topic));
    assert_eq!(
        (
            audit.gaps,
            audit.duplicates,
            audit.out_of_order,
            audit.distinct
        ),
        (0, 0, 0, 2000),
        "{audit:?}"
    );
}

#[test]
fn batches_fill_up_while_the_worker_is_busy_instead_of_closing_small_on_the_clock() {
    let topic = create_topic("natural-batching", 12);
    let producer = spawn_producer(&topic, "800");
    let (consumer, addr) = spawn_consumer_with_metrics(
        &topic,
        &unique("g"),
        &[
            "--batch-size",
            "50",
            "--batch-processing-time",
            "0.5",
            "--max-in-flight",
            "2",
        ],
    );
    wait_until("40 batches", Duration::from_secs(60), || {
        metric(&addr, "ebb_consumer_batch_size_records_count").is_some_and(|n| n >= 40.0)
    });
    let sum = metric(&addr, "ebb_consumer_batch_size_records_sum").unwrap();
    let count = metric(&addr, "ebb_consumer_batch_size_records_count").unwrap();
    signal(&producer, libc::SIGTERM);
    consumer.signal(libc::SIGTERM);
    assert!(finish(producer, Duration::from_secs(30)).status.success());
    assert!(consumer.finish(Duration::from_secs(60)).status.success());
    // 800 msg/s over 12 partitions is ~7 records per partition per 100 ms batch timeout;
    // with the sink busy, batches must grow towards 50 instead.
    assert!(
        sum / count >= 35.0,
        "average batch {:.1} records",
        sum / count
    );
}

#[test]
fn commits_are_acknowledged_by_the_broker_and_nothing_is_resent_or_stalled() {
    let _busy = one_busy_test_at_a_time();
    // The result of every asynchronous commit must come back (an unreported refusal was
    // how handled records stayed uncommitted for good), and on a quiet healthy group the
    // watchdog finds nothing.
    let topic = create_topic("acks", 4);
    let group = unique("g");
    let producer = spawn_producer(&topic, "400");
    let (consumer, addr) = spawn_consumer_with_metrics(
        &topic,
        &group,
        &["--batch-processing-time", "0.05", "--stall-timeout", "4s"],
    );
    wait_until("5 acknowledged commits", Duration::from_secs(60), || {
        metric(&addr, "ebb_consumer_commits_total").is_some_and(|n| n >= 5.0)
    });
    // An observation window, not a wait for something to happen: the watchdog (4 s stall
    // timeout, a look every second) must find nothing in it.
    std::thread::sleep(Duration::from_secs(6));
    let resent = metric(&addr, "ebb_consumer_commits_resent_total");
    let stalled = metric(&addr, "ebb_consumer_stalled_partitions");
    let stalls = metric(&addr, "ebb_consumer_stalls_total");
    signal(&producer, libc::SIGTERM);
    assert!(finish(producer, Duration::from_secs(30)).status.success());
    let committed_up_to_the_end = || {
        let ends = end_offsets(&topic);
        let committed = committed_offsets(&kafka(), &group, &topic);
        ends.iter().all(|(p, end)| committed.get(p) == Some(end))
    };
    wait_until(
        "the committed offsets to reach the log end with the consumer running",
        Duration::from_secs(15),
        committed_up_to_the_end,
    );
    consumer.signal(libc::SIGTERM);
    let out = consumer.finish(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        resent,
        Some(0.0),
        "commits sent again for lack of an answer"
    );
    assert_eq!(stalled, Some(0.0));
    assert_eq!(stalls, None, "no stall was ever counted");
}

/// Records written to `topic` so far (the sum of its high watermarks).
fn produced_so_far(topic: &str) -> i64 {
    watermarks(&kafka(), topic)
        .iter()
        .map(|(_, high)| high)
        .sum()
}
