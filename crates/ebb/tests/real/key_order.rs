//! Key order with a real broker: members in `--ordering key` killed (SIGKILL), stopped and
//! started under load, writing through a slow file sink so that sub-lanes finish out of
//! offset order. Every account's records are first written in offset order (records
//! written again after a kill or a move are replays, which the contract allows), no record
//! below the log end is missing once the group has committed everything, and it does.

use std::path::PathBuf;
use std::time::Duration;

use crate::common::*;

const PARTITIONS: u32 = 6;

/// One member in key order, writing to a file of its own (a member killed mid-write
/// leaves at most a partial last line there, which the readers skip).
fn spawn_member(topic: &str, group: &str, n: usize) -> (Running, PathBuf) {
    let file = temp_file(&format!("member-{n}.jsonl"));
    let mut command = churn_member_command(topic, group, &file, "50ms", "20");
    command.args(["--ordering", "key", "--key-lanes", "8"]);
    (Running::spawn(command), file)
}

#[test]
fn members_in_key_order_killed_stopped_and_started_keep_every_accounts_order_and_lose_nothing() {
    let topic = create_topic("keys-churn", PARTITIONS);
    let group = unique("keys-churn");
    let producer = spawn_producer(&topic, "400");
    let mut spawned = 0;
    let mut files = Vec::new();
    let mut members: Vec<Running> = Vec::new();
    for _ in 0..3 {
        let (member, file) = spawn_member(&topic, &group, spawned);
        spawned += 1;
        members.push(member);
        files.push(file);
    }
    wait_until("the group to commit", Duration::from_secs(60), || {
        committed_offsets(&kafka(), &group, &topic)
            .values()
            .sum::<i64>()
            > 500
    });
    for round in 0..10 {
        let leaving = members.remove(0);
        if round % 2 == 0 {
            leaving.signal(libc::SIGKILL);
            let _ = leaving.finish(Duration::from_secs(10));
        } else {
            leaving.signal(libc::SIGTERM);
            let out = leaving.finish(Duration::from_secs(40));
            assert!(
                out.status.success(),
                "a member stopped with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let (member, file) = spawn_member(&topic, &group, spawned);
        spawned += 1;
        members.push(member);
        files.push(file);
        // The scenario's pace: a member replaced every 2 s, faster than the group settles.
        std::thread::sleep(Duration::from_secs(2));
    }

    signal(&producer, libc::SIGTERM);
    finish(producer, Duration::from_secs(30));
    let ends = end_offsets(&topic);
    wait_until(
        "the group to commit every record",
        Duration::from_secs(120),
        || {
            let committed = committed_offsets(&kafka(), &group, &topic);
            ends.iter()
                .all(|(p, end)| committed.get(p).copied().unwrap_or(0) >= *end)
        },
    );
    for member in &members {
        member.signal(libc::SIGTERM);
    }
    for member in members {
        let out = member.finish(Duration::from_secs(40));
        assert!(out.status.success(), "a member stopped with {}", out.status);
    }

    let paths: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
    let audit = audit(&paths, &ends);
    assert_eq!(audit.gaps, 0, "{audit:?}");
    assert!(ends.values().sum::<i64>() > 3000, "{ends:?}");
    let mut keyed = 0;
    for file in &files {
        let violations = key_order_violations(file);
        assert!(
            violations.is_empty(),
            "{}: {} violation(s), first: {:?}",
            file.display(),
            violations.len(),
            violations.first()
        );
        keyed += sink_records(file).iter().filter(|r| r.2.is_some()).count();
    }
    assert!(
        keyed >= audit.distinct,
        "every record has its account as key"
    );
}
