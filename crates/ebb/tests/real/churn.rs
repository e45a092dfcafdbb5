//! Liveness under churn: a group scaled 12 → 1 → 12 members again and again under load
//! (members as `ebb consume` processes, a short heartbeat, one core kept busy to widen
//! races). After every step, once the group is stable, every partition with lag must
//! advance; after the last step (a scale-down) and the producer stopping, every committed
//! offset must reach the log end while the members still run, and the sink must hold every
//! record. This is the test that catches a partition left unfetched or a commit that never
//! follows the work.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use ebb_testkit::GroupWatch;

const PARTITIONS: i32 = 12;
/// Scale steps after the first 12 members start: down, up, down, ... ending down (20
/// round trips and a last scale-down, during which the producer stops).
const STEPS: usize = 41;

struct Group {
    topic: String,
    group: String,
    file: std::path::PathBuf,
    /// (process, its log file): logs go to files, as a pipe nobody reads would fill up and
    /// block a long-lived member.
    members: Vec<(Child, std::path::PathBuf)>,
    spawned: usize,
}

/// Members still running when the test ends early (a failed step) are killed, so they do
/// not load the machine under the tests that run after it.
impl Drop for Group {
    fn drop(&mut self) {
        for (member, _) in &mut self.members {
            let _ = member.kill();
            let _ = member.wait();
        }
    }
}

/// A thread keeping one core busy until dropped (also when the test fails).
struct Spinner {
    spinning: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start() -> Spinner {
        let spinning = Arc::new(AtomicBool::new(true));
        let thread = {
            let spinning = spinning.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while spinning.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        };
        Spinner {
            spinning,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.spinning.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Group {
    fn spawn_member(&mut self) {
        self.spawned += 1;
        let log = self
            .file
            .with_file_name(format!("member-{}.log", self.spawned));
        let child = ebb()
            .args(["consume", "--topic", &self.topic, "--group", &self.group])
            .args(["--sink", "file", "--sink-file"])
            .arg(&self.file)
            .args([
                "--metrics-addr",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "300ms",
            ])
            .args(["--dead-letter-topic", "none", "--batch-size", "50"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("member log"),
            ))
            .spawn()
            .expect("spawn member");
        self.members.push((child, log));
    }

    /// Stops members (SIGTERM) until `n` remain, and waits for them to exit cleanly.
    fn scale_down(&mut self, n: usize) {
        let leaving: Vec<(Child, std::path::PathBuf)> = self.members.drain(n..).collect();
        for (child, _) in &leaving {
            signal(child, libc::SIGTERM);
        }
        for (child, log) in leaving {
            let out = finish(child, Duration::from_secs(40));
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            // Warnings tell what a failure below was about (and show what churn costs).
            for line in stderr.lines() {
                if line.contains("WARN") || line.contains("ERROR") {
                    eprintln!("  member: {line}");
                }
            }
            assert!(
                out.status.success(),
                "a member stopped with {}: {stderr}",
                out.status
            );
        }
    }

    /// Every running member is still running (none gave up on a stall, say).
    fn assert_alive(&mut self) {
        for (child, log) in &mut self.members {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let stderr = std::fs::read_to_string(log).unwrap_or_default();
                panic!("a member exited on its own with {status}: {stderr}");
            }
        }
    }
}

/// Waits until the coordinator reports the group stable with `members` members (and every
/// member still runs).
fn wait_stable(group: &mut Group, watch: &GroupWatch, members: usize, step: usize) {
    wait_until(
        &format!("step {step}: the group to be stable with {members} member(s)"),
        Duration::from_secs(30),
        || {
            group.assert_alive();
            let (state, count) = watch.state();
            state == "Stable" && count == members
        },
    );
}

/// Every partition that has lag now commits up to at least its current log end within
/// `limit`: what was waiting was fetched, handled and committed (a commit of work already
/// handled before a fetch stopped would not be enough).
fn assert_lagging_partitions_advance(watch: &GroupWatch, step: usize, limit: Duration) {
    let before = watch.offsets();
    let lagging: Vec<i32> = before
        .iter()
        .filter(|(_, (committed, end))| end > committed)
        .map(|(p, _)| *p)
        .collect();
    assert!(
        !lagging.is_empty(),
        "step {step}: no partition has lag, so the producer has stopped: {before:?}"
    );
    let started = Instant::now();
    let mut now = before.clone();
    loop {
        let stuck: Vec<(i32, (i64, i64))> = lagging
            .iter()
            .filter(|p| now[p].0 < before[p].1)
            .map(|p| (*p, now[p]))
            .collect();
        if stuck.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "step {step}: partition(s) with lag did not advance within {limit:?}: \
             (partition, (committed, log end)) {stuck:?}; before: {before:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
        now = watch.offsets();
    }
}

fn drained(offsets: &BTreeMap<i32, (i64, i64)>) -> bool {
    offsets.values().all(|(committed, end)| committed == end)
}

#[test]
fn a_group_scaled_12_to_1_to_12_twenty_times_under_load_never_stalls_or_loses_a_record() {
    let _busy = one_busy_test_at_a_time();
    let started = Instant::now();
    // One core kept busy, so rebalance callbacks, broker threads and fetchers interleave
    // in more ways than on an idle machine.
    let spinner = Spinner::start();

    let topic = create_topic("churn", PARTITIONS as u32);
    let mut group = Group {
        group: unique("churn"),
        file: temp_file("out.jsonl"),
        topic,
        members: Vec::new(),
        spawned: 0,
    };
    let watch = GroupWatch::new(&kafka(), &group.group, &group.topic, PARTITIONS);
    let producer = spawn_producer(&group.topic, "300");
    for _ in 0..12 {
        group.spawn_member();
    }
    wait_stable(&mut group, &watch, 12, 0);
    assert_lagging_partitions_advance(&watch, 0, Duration::from_secs(5));

    for step in 1..STEPS {
        let members = if step % 2 == 1 { 1 } else { 12 };
        if members < group.members.len() {
            group.scale_down(members);
        } else {
            while group.members.len() < members {
                group.spawn_member();
            }
        }
        wait_stable(&mut group, &watch, members, step);
        assert_lagging_partitions_advance(&watch, step, Duration::from_secs(5));
        eprintln!(
            "step {step}: {members} member(s), every lagging partition advanced ({:.0?} in)",
            started.elapsed()
        );
    }

    // The last step: the traffic stops as the group scales down, so the last commits of
    // every partition are sent while the group rebalances. A commit refused then, and never
    // sent again, is lag that stays while the member runs: phantom lag KEDA would see.
    signal(&producer, libc::SIGTERM);
    group.scale_down(1);
    finish(producer, Duration::from_secs(30));
    wait_stable(&mut group, &watch, 1, STEPS);
    let last = std::cell::RefCell::new(BTreeMap::new());
    let drained_at = Instant::now();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(
            "every committed offset to reach the log end after the producer stopped",
            Duration::from_secs(10),
            || {
                *last.borrow_mut() = watch.offsets();
                drained(&last.borrow())
            },
        )
    }));
    assert!(
        outcome.is_ok(),
        "after {:.0?}, (partition, (committed, log end)): {:?}",
        drained_at.elapsed(),
        last.borrow()
    );
    group.assert_alive();
    let ends = last
        .into_inner()
        .into_iter()
        .map(|(p, (_, end))| (p, end))
        .collect();
    group.scale_down(0);
    drop(spinner);

    let audit = audit(&[Path::new(&group.file)], &ends);
    eprintln!("{audit:?} after {:.0?}", started.elapsed());
    assert_eq!(audit.gaps, 0, "{audit:?}");
}
