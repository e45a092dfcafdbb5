//! `ebb replay` against the local broker and PostgreSQL: a dry run changes nothing and
//! counts right; each mode moves the committed offsets where it says; a group with a
//! running consumer is refused; bad usage exits 2 naming the flag; and a replay into the
//! postgres sink changes no row (`ebb audit` passes after it).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use crate::common::*;

/// `ebb replay --topic TOPIC --group GROUP ARGS...`.
fn replay(topic: &str, group: &str, args: &[&str]) -> std::process::Output {
    ebb()
        .args(["replay", "--topic", topic, "--group", group])
        .args(args)
        .env("USER", "replay-tester")
        .output()
        .expect("run ebb replay")
}

/// `ebb replay ... --json`, which must succeed; its plan.
fn replay_json(topic: &str, group: &str, args: &[&str]) -> serde_json::Value {
    let out = replay(topic, group, &[args, &["--json"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay {args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "replay {args:?} printed no JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Log-end offset per partition.
fn ends(topic: &str) -> HashMap<i32, i64> {
    watermarks(&kafka(), topic)
        .into_iter()
        .enumerate()
        .map(|(p, (_, end))| (p as i32, end))
        .collect()
}

fn committed(group: &str, topic: &str) -> HashMap<i32, i64> {
    committed_offsets(&kafka(), group, topic)
}

/// Commits `offsets` for `group` as a client outside it (the group has no members).
fn commit(group: &str, topic: &str, offsets: &HashMap<i32, i64>) {
    let offsets: Vec<(i32, i64)> = offsets.iter().map(|(&p, &o)| (p, o)).collect();
    ebb_testkit::commit_offsets(&kafka(), group, topic, &offsets);
}

#[test]
fn a_dry_run_changes_nothing_and_counts_what_would_be_read_again_or_skipped() {
    let topic = create_topic("replay-dry", 3);
    produce(&topic, 600, "20000");
    let ends = ends(&topic);
    assert_eq!(ends.values().sum::<i64>(), 600);
    let group = unique("replay-dry-group");
    commit(&group, &topic, &ends);

    let plan = replay_json(&topic, &group, &["--to-offset", "earliest", "--dry-run"]);
    assert_eq!(plan["applied"], false, "{plan:#}");
    assert_eq!(plan["total_reprocess"], 600, "{plan:#}");
    assert_eq!(plan["total_skip"], 0, "{plan:#}");
    assert_eq!(plan["members"], 0, "{plan:#}");
    for row in plan["partitions"].as_array().expect("partitions") {
        let p = row["partition"].as_i64().expect("partition") as i32;
        assert_eq!(row["committed"], ends[&p], "{row}");
        assert_eq!(row["target"], 0, "{row}");
        assert_eq!(row["reprocess"], ends[&p], "{row}");
    }
    assert_eq!(committed(&group, &topic), ends, "a dry run committed");

    // The table says the same, and that nothing changed.
    let out = replay(&topic, &group, &["--to-offset", "earliest", "--dry-run"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total = table
        .lines()
        .find(|l| l.trim_start().starts_with("TOTAL"))
        .unwrap_or_else(|| panic!("no TOTAL line:\n{table}"));
    assert_eq!(
        total.split_whitespace().collect::<Vec<_>>(),
        ["TOTAL", "600", "0"]
    );
    assert!(table.contains("dry run: nothing changed"), "{table}");

    // A group that never committed starts at the log start: moving it to the end skips all.
    let fresh = unique("replay-dry-fresh");
    let plan = replay_json(&topic, &fresh, &["--to-offset", "latest", "--dry-run"]);
    assert_eq!(plan["total_skip"], 600, "{plan:#}");
    assert_eq!(plan["group_state"], "Dead", "{plan:#}");
    assert!(
        plan["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["committed"].is_null())
    );
    assert!(committed(&fresh, &topic).is_empty(), "a dry run committed");
}

#[test]
fn each_mode_moves_the_committed_offsets_where_it_says() {
    let topic = create_topic("replay-modes", 3);
    produce(&topic, 300, "20000");
    let before = ends(&topic);
    // A gap between two bursts, with a time in its middle that every mode can aim at.
    std::thread::sleep(Duration::from_millis(1500));
    let between = SystemTime::now();
    std::thread::sleep(Duration::from_millis(1500));
    produce(&topic, 300, "20000");
    let after = ends(&topic);
    let group = unique("replay-modes-group");
    commit(&group, &topic, &after);

    // --to-time, RFC 3339: the first record of the second burst.
    let rfc3339 = humantime::format_rfc3339_millis(between).to_string();
    let plan = replay_json(&topic, &group, &["--to-time", &rfc3339]);
    assert_eq!(plan["applied"], true, "{plan:#}");
    assert_eq!(plan["total_reprocess"], 300, "{plan:#}");
    assert_eq!(committed(&group, &topic), before, "--to-time {rfc3339}");

    // --to-offset latest: back to the end, the second burst skipped.
    let plan = replay_json(&topic, &group, &["--to-offset", "latest"]);
    assert_eq!(plan["total_skip"], 300, "{plan:#}");
    assert_eq!(committed(&group, &topic), after, "--to-offset latest");

    // --by-duration: now minus the time since `between` lands in the gap again.
    let back = format!("{}ms", between.elapsed().expect("clock").as_millis());
    replay_json(&topic, &group, &["--by-duration", &back]);
    assert_eq!(committed(&group, &topic), before, "--by-duration {back}");

    // --to-time "... ago" is the same, written relative to now.
    commit(&group, &topic, &after);
    let ago = format!("{}ms ago", between.elapsed().expect("clock").as_millis());
    replay_json(&topic, &group, &["--to-time", &ago]);
    assert_eq!(committed(&group, &topic), before, "--to-time {ago}");

    // --to-offset N: every partition (within its log).
    replay_json(&topic, &group, &["--to-offset", "5"]);
    let fives: HashMap<i32, i64> = after.iter().map(|(&p, &e)| (p, e.min(5))).collect();
    assert_eq!(committed(&group, &topic), fives, "--to-offset 5");

    // --to-offset P=N,P=N: those partitions only.
    let plan = replay_json(&topic, &group, &["--to-offset", "0=7,2=1"]);
    assert_eq!(plan["partitions"].as_array().unwrap().len(), 2, "{plan:#}");
    let mut expected = fives.clone();
    expected.insert(0, after[&0].min(7));
    expected.insert(2, after[&2].min(1));
    assert_eq!(committed(&group, &topic), expected, "--to-offset 0=7,2=1");

    // Past the log end: the log end, with a note.
    let plan = replay_json(&topic, &group, &["--to-offset", "999999"]);
    assert!(
        plan["partitions"][0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("past the log end")),
        "{plan:#}"
    );
    assert_eq!(committed(&group, &topic), after, "--to-offset 999999");

    // earliest: everything again.
    let plan = replay_json(&topic, &group, &["--to-offset", "earliest"]);
    assert_eq!(plan["total_reprocess"], 600, "{plan:#}");
    let zeros: HashMap<i32, i64> = after.keys().map(|&p| (p, 0)).collect();
    assert_eq!(committed(&group, &topic), zeros, "--to-offset earliest");
}

#[test]
fn a_group_with_a_running_consumer_is_refused_and_replayed_once_it_stops() {
    let topic = create_topic("replay-live", 2);
    produce(&topic, 200, "20000");
    let group = unique("replay-live-group");
    let (consumer, _metrics) = spawn_consumer_with_metrics(&topic, &group, &[]);
    wait_until(
        "the consumer to commit every record",
        Duration::from_secs(60),
        || committed(&group, &topic).values().sum::<i64>() == 200,
    );
    let before = committed(&group, &topic);

    let out = replay(&topic, &group, &["--to-offset", "earliest"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ebb: error"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains(&group) && errors[0].contains("1 active member"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no plan printed when refused");
    assert_eq!(
        committed(&group, &topic),
        before,
        "a refused replay committed"
    );

    // A dry run is allowed and says who is there.
    let plan = replay_json(&topic, &group, &["--to-offset", "earliest", "--dry-run"]);
    assert_eq!(plan["members"], 1, "{plan:#}");
    assert_eq!(plan["total_reprocess"], 200, "{plan:#}");
    // The same from the environment, as a Kubernetes Job would give it: a plan, not a
    // refusal, so EBB_REPLAY_DRY_RUN counted.
    let out = ebb()
        .args(["replay", "--topic", &topic, "--group", &group, "--json"])
        .env("EBB_REPLAY_TO_OFFSET", "earliest")
        .env("EBB_REPLAY_DRY_RUN", "true")
        .output()
        .expect("run ebb replay");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON plan");
    assert_eq!(plan["mode"], "to-offset earliest", "{plan:#}");
    assert_eq!(plan["applied"], false, "{plan:#}");

    consumer.signal(libc::SIGTERM);
    let out = consumer.finish(Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let watch = ebb_testkit::GroupWatch::new(&kafka(), &group, &topic, 2);
    wait_until("the group to be empty", Duration::from_secs(30), || {
        watch.state().1 == 0
    });

    let out = replay(&topic, &group, &["--to-offset", "earliest"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let zeros: HashMap<i32, i64> = before.keys().map(|&p| (p, 0)).collect();
    assert_eq!(committed(&group, &topic), zeros);
    // The audit trail: who, from where, which group and topic, what moved.
    assert!(
        stderr.contains("replay apply requested by replay-tester@")
            && stderr.contains(" as Kafka principal User:ANONYMOUS: ")
            && stderr.contains(&format!("group {group}, topic {topic}, to-offset earliest")),
        "{stderr}"
    );
    for (p, o) in &before {
        assert!(
            stderr.contains(&format!(
                "partition {p}: committed {o} -> 0 ({o} records to reprocess"
            )),
            "partition {p}: {stderr}"
        );
    }
}

#[test]
fn bad_usage_exits_2_with_a_line_naming_the_flag() {
    let topic = create_topic("replay-usage", 2);
    let group = unique("replay-usage-group");
    for (args, flag) in [
        (vec![], "--to-time"),
        (
            vec!["--to-offset", "earliest", "--by-duration", "1m"],
            "--by-duration",
        ),
        (vec!["--to-time", "yesterday"], "--to-time"),
        (vec!["--to-time", "2026-01-31T09:00:00"], "--to-time"),
        (vec!["--by-duration", "soon"], "--by-duration"),
        (vec!["--to-offset", "first"], "--to-offset"),
        (vec!["--to-offset", "0=1,0=2"], "--to-offset"),
        (vec!["--to-offset", "7=1"], "--to-offset"),
    ] {
        let out = replay(&topic, &group, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        // The flag is on the error line, or (clap's list of missing modes) on the next.
        let lines: Vec<&str> = stderr.lines().collect();
        let error = lines.iter().position(|l| l.contains("error"));
        assert!(
            error.is_some_and(|at| lines[at..(at + 2).min(lines.len())]
                .iter()
                .any(|l| l.contains(flag))),
            "{args:?}: no error naming {flag}: {stderr}"
        );
    }
    assert!(committed(&group, &topic).is_empty(), "bad usage committed");
    // A topic that is not there is a runtime failure, with the fix.
    let out = replay(
        &unique("replay-no-topic"),
        &group,
        &["--to-offset", "earliest"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not exist") && stderr.contains("ebb topic create"),
        "{stderr}"
    );
}

/// The rows of `table` as one fingerprint: count, and a digest of every row's key, trade,
/// write_seq and written_at in key order.
fn rows_fingerprint(url: &str, table: &str) -> String {
    psql(
        url,
        &format!(
            "SELECT count(*) || ' ' || max(write_seq) || ' ' || md5(string_agg(\
             kafka_partition || ':' || kafka_offset || ':' || trade_id || ':' || write_seq \
             || ':' || written_at::text, ',' ORDER BY kafka_partition, kafka_offset)) FROM {table}"
        ),
    )
}

#[test]
fn a_replay_into_the_postgres_sink_changes_no_row_and_the_audit_passes() {
    let url = postgres();
    let topic = create_topic("replay-pg", 4);
    produce(&topic, 2000, "20000");
    let table = format!("t_{}", unique("replay").replace('-', "_"));
    let group = unique("replay-pg-group");
    // Runs a consumer until it has been idle for 3 s; returns what it processed.
    let consume = || {
        let summary = temp_file("consume.json");
        let mut command = consume_command(&topic, &group);
        command
            .args(["--sink", "postgres", "--database-url", &url])
            .args(["--database-table", &table])
            .args(["--stop-after-idle", "3s", "--metrics-addr", "127.0.0.1:0"])
            .arg("--summary-file")
            .arg(&summary);
        let out = Running::spawn(command).finish(Duration::from_secs(120));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary file"))
                .expect("summary JSON");
        summary["processed"].as_u64().expect("processed")
    };
    assert_eq!(consume(), 2000, "first pass");
    assert_eq!(
        committed(&group, &topic),
        ends(&topic),
        "first pass committed all"
    );
    let rows = rows_fingerprint(&url, &table);
    assert!(rows.starts_with("2000 "), "{rows}");

    let plan = replay_json(&topic, &group, &["--to-offset", "earliest"]);
    assert_eq!(plan["total_reprocess"], 2000, "{plan:#}");
    assert_eq!(consume(), 2000, "the replay read every record again");
    assert_eq!(
        committed(&group, &topic),
        ends(&topic),
        "second pass committed all"
    );
    assert_eq!(
        rows_fingerprint(&url, &table),
        rows,
        "the replay changed rows or their write_seq"
    );

    let report = audit_passes(&topic, &group, &url, &table, &[]);
    assert_eq!(report["totals"]["checked"], 2000, "{report:#}");
    assert_eq!(report["totals"]["stored"], 2000, "{report:#}");
    assert_eq!(report["totals"]["duplicated"], 0, "{report:#}");
}
