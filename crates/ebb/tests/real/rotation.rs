//! Fetch rotation with a real broker: members owning more partitions with a backlog than
//! `--max-fetching-partitions` pause them in turn. Each partition's records are still
//! written once and in offset order, nothing is missing, and parked partitions that are
//! revoked and handed back (librdkafka keeps a partition's pause across an unassignment)
//! fetch again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;

const PARTITIONS: u32 = 12;

/// One member fetching at most 2 partitions at once, writing to a file of its own.
/// Returns it, its sink file and its metrics address.
fn spawn_member(
    topic: &str,
    group: &str,
    n: usize,
    sink_delay: &str,
) -> (Running, PathBuf, String) {
    let file = temp_file(&format!("rotation-{n}.jsonl"));
    let mut command = churn_member_command(topic, group, &file, sink_delay, "50");
    command.args(["--max-fetching-partitions", "2"]);
    let mut member = Running::spawn(command);
    let metrics = member.address("--metrics-addr");
    (member, file, metrics)
}

/// Waits for the group to commit every record and for no partition of `member` to wait its
/// turn (each one left finds nothing in a turn), then stops it.
fn finish_caught_up(
    member: Running,
    metrics: &str,
    group: &str,
    topic: &str,
    ends: &HashMap<i32, i64>,
) {
    wait_until(
        "the group to commit every record",
        Duration::from_secs(180),
        || {
            let committed = committed_offsets(&kafka(), group, topic);
            ends.iter()
                .all(|(p, end)| committed.get(p).copied().unwrap_or(0) >= *end)
        },
    );
    wait_until(
        "no partition to wait its turn",
        Duration::from_secs(10),
        || metric(metrics, "ebb_consumer_parked_partitions") == Some(0.0),
    );
    member.signal(libc::SIGTERM);
    let out = member.finish(Duration::from_secs(40));
    assert!(out.status.success(), "a member stopped with {}", out.status);
}

#[test]
fn partitions_beyond_the_fetching_limit_take_turns_through_rebalances_losing_and_reordering_nothing()
 {
    let topic = create_topic("rotation", PARTITIONS);
    let group = unique("rotation");
    produce(&topic, 12_000, "100000");
    let ends = end_offsets(&topic);

    // One member owns all 12 partitions with a backlog, 2 fetching at a time through a slow
    // sink: its buffer share fills at every turn, so partitions are parked and resumed
    // over and over.
    let (first, first_file, first_metrics) = spawn_member(&topic, &group, 0, "20ms");
    wait_until(
        "partitions to wait their turn",
        Duration::from_secs(60),
        || metric(&first_metrics, "ebb_consumer_parked_partitions").unwrap_or(0.0) >= 5.0,
    );
    wait_until("the group to commit", Duration::from_secs(60), || {
        committed_offsets(&kafka(), &group, &topic)
            .values()
            .sum::<i64>()
            > 1000
    });

    // A second member takes half of them (parked ones among them) and leaves again: they
    // come back to the first, which paused some of them before, and must fetch again.
    let (second, second_file, second_metrics) = spawn_member(&topic, &group, 1, "20ms");
    wait_until(
        "the second member to own partitions",
        Duration::from_secs(60),
        || metric(&second_metrics, "ebb_consumer_assigned_partitions").unwrap_or(0.0) >= 1.0,
    );
    std::thread::sleep(Duration::from_secs(2));
    second.signal(libc::SIGTERM);
    let out = second.finish(Duration::from_secs(40));
    assert!(
        out.status.success(),
        "the second member stopped with {}",
        out.status
    );
    wait_until(
        "the first member to own every partition again",
        Duration::from_secs(60),
        || {
            metric(&first_metrics, "ebb_consumer_assigned_partitions").unwrap_or(0.0)
                == f64::from(PARTITIONS)
        },
    );

    finish_caught_up(first, &first_metrics, &group, &topic, &ends);

    let audit = audit(&[first_file.as_path(), second_file.as_path()], &ends);
    assert_eq!(audit.gaps, 0, "{audit:?}");
    assert_eq!(audit.out_of_order, 0, "{audit:?}");
    assert_eq!(
        audit.duplicates, 0,
        "a clean handover writes nothing twice: {audit:?}"
    );
    assert_eq!(audit.distinct, 12_000, "{audit:?}");
}

#[test]
fn partitions_parked_at_assignment_fetch_as_the_others_catch_up() {
    let topic = create_topic("rotation-fast", PARTITIONS);
    let group = unique("rotation-fast");
    produce(&topic, 60_000, "200000");
    let ends = end_offsets(&topic);
    // No sink time: 10 of the 12 partitions start parked, and each slot passes on as the
    // partition holding it catches up (or its turn ends).
    let (member, file, addr) = spawn_member(&topic, &group, 2, "0ms");
    finish_caught_up(member, &addr, &group, &topic, &ends);
    let audit = audit(&[file.as_path()], &ends);
    assert_eq!(
        (
            audit.gaps,
            audit.out_of_order,
            audit.duplicates,
            audit.distinct
        ),
        (0, 0, 0, 60_000),
        "{audit:?}"
    );
}
