//! `ebb scale` against the real broker, with shortened intervals: scaling up under lag,
//! draining, scaling to zero, replacing a killed worker without losing records, and
//! leaving no process behind.

use std::time::Duration;

use crate::common::*;

fn worker_pids(port_base: u16) -> Vec<i32> {
    let out = std::process::Command::new("pgrep")
        // Workers listen on port_base..port_base + 9, which share all digits but the last.
        .args([
            "-f",
            &format!("consume --metrics-addr 127.0.0.1:{}[0-9] ", port_base / 10),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Starts `ebb scale` with its HTTP on port 0 and `env` added to its environment;
/// returns it and that address.
fn spawn_scale(
    topic: &str,
    group: &str,
    port_base: u16,
    extra: &[&str],
    worker: &[&str],
    env: &[(&str, &str)],
) -> (Running, String) {
    let mut command = ebb();
    command
        .envs(env.iter().copied())
        .args(["scale", "--topic", topic, "--group", group])
        .args(["--metrics-addr", "127.0.0.1:0", "--interval", "1s"])
        .args(["--worker-port-base", &port_base.to_string()])
        .args(extra)
        .arg("--")
        .args(worker);
    let mut scale = Running::spawn(command);
    let addr = scale.address("--metrics-addr");
    (scale, addr)
}

#[test]
fn keda_lag_scales_up_under_lag_drains_and_scales_to_zero() {
    let topic = create_topic("scale-keda", 4);
    let group = unique("g");
    produce(&topic, 4000, "20000");
    let so = temp_file("so.yaml");
    std::fs::write(
        &so,
        "spec:\n  pollingInterval: 1\n  cooldownPeriod: 3\n  maxReplicaCount: 4\n  triggers:\n    - type: kafka\n      metadata: {lagThreshold: \"500\"}\n",
    )
    .unwrap();
    let base = worker_port_base();
    let (scale, addr) = spawn_scale(
        &topic,
        &group,
        base,
        &[
            "--policy",
            "keda-lag",
            "--scaled-object",
            so.to_str().unwrap(),
            "--hpa-sync-period",
            "1s",
        ],
        &["--batch-size", "50", "--batch-processing-time", "0.25"],
        &[],
    );
    wait_until(
        "scale-up beyond one worker",
        Duration::from_secs(60),
        || metric(&addr, "ebb_scale_current_replicas").is_some_and(|n| n >= 2.0),
    );
    wait_until("the lag to drain", Duration::from_secs(120), || {
        metric(&addr, "ebb_scale_lag") == Some(0.0)
    });
    wait_until(
        "scale to zero after the cooldown",
        Duration::from_secs(60),
        || metric(&addr, "ebb_scale_current_replicas") == Some(0.0),
    );
    scale.signal(libc::SIGTERM);
    let out = scale.finish(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("KEDA: activated") && stderr.contains("HPA:"),
        "{stderr}"
    );
    assert!(worker_pids(base).is_empty(), "no worker left behind");
}

/// In key order, which reaches the workers both as an argument after `--` and through the
/// supervisor's environment.
#[test]
fn a_killed_worker_in_key_order_is_replaced_and_no_record_is_lost_or_out_of_order() {
    let topic = create_topic("scale-kill", 4);
    let group = unique("g");
    let file = temp_file("out.jsonl");
    let logs = temp_file("workers");
    let producer = spawn_producer(&topic, "300");
    let base = worker_port_base();
    let (scale, addr) = spawn_scale(
        &topic,
        &group,
        base,
        &[
            "--policy",
            "ebb-rate",
            "--capacity",
            "100",
            "--target-drain",
            "10s",
            "--max-replicas",
            "3",
            "--up-settle",
            "2s",
            "--worker-log-dir",
            logs.to_str().unwrap(),
        ],
        &[
            "--sink",
            "file",
            "--sink-file",
            file.to_str().unwrap(),
            "--batch-size",
            "20",
            "--batch-processing-time",
            "0",
            "--ordering",
            "key",
        ],
        &[("EBB_KEY_LANES", "4")],
    );
    wait_until("workers ready", Duration::from_secs(60), || {
        metric(&addr, "ebb_scale_ready_replicas").is_some_and(|n| n >= 2.0)
    });
    let pids = worker_pids(base);
    assert!(!pids.is_empty(), "workers are found by their metrics port");
    // SAFETY: kill(2) on a worker process this test started (through the supervisor).
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    wait_until(
        "the killed worker to be replaced",
        Duration::from_secs(60),
        || {
            metric(&addr, "ebb_scale_workers_replaced_total").is_some_and(|n| n >= 1.0)
                && metric(&addr, "ebb_scale_ready_replicas").is_some_and(|n| n >= 2.0)
        },
    );
    signal(&producer, libc::SIGTERM);
    assert!(finish(producer, Duration::from_secs(30)).status.success());
    let ends = end_offsets(&topic);
    wait_until("every record in the sink", Duration::from_secs(120), || {
        audit(&[&file], &ends).gaps == 0
    });
    scale.signal(libc::SIGTERM);
    let out = scale.finish(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = audit(&[&file], &ends);
    assert_eq!(audit.gaps, 0, "{audit:?}");
    assert_eq!(key_order_violations(&file), Vec::<String>::new());
    let first = std::fs::read_to_string(logs.join("worker-1.log")).unwrap_or_default();
    assert!(
        first.contains("order: by key, 4 lanes per partition"),
        "the worker runs in key order with the supervisor's EBB_KEY_LANES: {first}"
    );
    assert!(worker_pids(base).is_empty(), "no worker left behind");
}
