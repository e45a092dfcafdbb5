//! `ebb keda-scaler` called by KEDA's own generated Go client (`keda-extscaler-client`, built
//! by scripts/k8s-tools from `pkg/scalers/externalscaler` of KEDA v2.21.0) against topics on
//! the local broker in several states. Its answers must be what ebb-rate decides for the
//! same lag and rate (ebb_scaling's policy, the code `ebb sim` runs).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use ebb_scaling::external::{METRIC_NAME, ScalerMetadata, Tracker};
use ebb_scaling::keda::PartitionOffsets;
use ebb_scaling::policy::{EbbRate, Observation, Policy};
use ebb_testkit::kube::tool;
use serde_json::Value;

/// Runs KEDA's client (IsActive, GetMetricSpec, GetMetrics) for one ScaledObject.
fn run_keda_client(
    addr: &str,
    name: &str,
    metadata: &BTreeMap<String, String>,
    extra: &[&str],
) -> std::process::Output {
    Command::new(tool("keda-extscaler-client"))
        .args(["--addr", addr, "--name", name, "--namespace", "tests"])
        .args(["--metadata", &serde_json::to_string(metadata).unwrap()])
        .args(extra)
        .output()
        .expect("run keda-extscaler-client")
}

/// KEDA's client's answers, which must come (its errors are inside the JSON).
fn keda_client(
    addr: &str,
    name: &str,
    metadata: &BTreeMap<String, String>,
    extra: &[&str],
) -> Value {
    let out = run_keda_client(addr, name, metadata, extra);
    assert!(
        out.status.success(),
        "keda-extscaler-client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "keda-extscaler-client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn metadata(topic: &str, group: &str, pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("topic", topic),
        ("group", group),
        ("capacityPerReplica", "100"),
        ("targetDrainSeconds", "60"),
        ("intervalSeconds", "0"),
        ("upSettleSeconds", "0"),
        ("scalerAddress", "ignored-by-ebb:9090"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in pairs {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

/// What ebb-rate answers at its first evaluation for `lag` records spread over the topic
/// (nothing committed) and `rate` msg/s, with `metadata`.
fn ebb_rate_first_answer(
    metadata: &BTreeMap<String, String>,
    partitions: u32,
    lag: f64,
    rate: f64,
) -> u32 {
    let m = ScalerMetadata::parse(metadata).unwrap();
    let mut policy = EbbRate::new(m.policy_config(partitions));
    let offsets: Vec<PartitionOffsets> = (0..partitions)
        .map(|p| PartitionOffsets {
            log_start: 0.0,
            log_end: if p == 0 { lag } else { 0.0 },
            committed: None,
        })
        .collect();
    let observation = Observation {
        now: Duration::from_secs(1),
        partitions: &offsets,
        arrival_rate: rate,
        current_replicas: 0,
        ready_replicas: 0,
    };
    policy.decide(&observation).map_or(0, |d| d.replicas)
}

fn value(answer: &Value) -> f64 {
    answer["metricValues"][0]["metricValueFloat"]
        .as_f64()
        .unwrap_or_else(|| panic!("no metric value in {answer}"))
}

fn assert_no_error(answer: &Value) {
    assert!(
        answer["error"].is_null(),
        "KEDA's client got an error: {answer}"
    );
}

#[test]
fn keda_client_gets_ebb_rates_answers() {
    let scaler = ScalerProcess::start(&[]);

    // A backlog and no arrivals: 12,000 records to drain in 60 s at 100 msg/s per replica.
    let backlog = create_topic("keda-scaler-backlog", 4);
    produce(&backlog, 12_000, "20000");
    let m = metadata(&backlog, &unique("never-committed"), &[]);
    let answer = keda_client(&scaler.grpc, "backlog", &m, &[]);
    assert_no_error(&answer);
    assert_eq!(answer["isActive"], Value::Bool(true), "{answer}");
    let spec = &answer["metricSpecs"][0];
    assert_eq!(spec["metricName"], METRIC_NAME, "{answer}");
    assert_eq!(spec["targetSizeFloat"].as_f64(), Some(1.0), "{answer}");
    assert_eq!(spec["targetSize"].as_i64(), Some(1), "{answer}");
    let expected = ebb_rate_first_answer(&m, 4, 12_000.0, 0.0);
    assert_eq!(expected, 2);
    assert_eq!(value(&answer), expected as f64, "{answer}");
    assert_eq!(
        answer["metricValues"][0]["metricValue"].as_i64(),
        Some(expected as i64)
    );
    // The HPA's AverageValue arithmetic: ceil(value / target) is the count.
    assert_eq!((value(&answer) / 1.0).ceil() as u32, expected);

    // More backlog than the partitions can take: capped at 4 (the partition count).
    let m = metadata(&backlog, &unique("capped"), &[("targetDrainSeconds", "10")]);
    let answer = keda_client(&scaler.grpc, "capped", &m, &[]);
    assert_no_error(&answer);
    assert_eq!(ebb_rate_first_answer(&m, 4, 12_000.0, 0.0), 4);
    assert_eq!(value(&answer), 4.0, "{answer}");
    // ... and by maxReplicas.
    let m = metadata(
        &backlog,
        &unique("max"),
        &[("targetDrainSeconds", "10"), ("maxReplicas", "3")],
    );
    let answer = keda_client(&scaler.grpc, "max", &m, &[]);
    assert_eq!(ebb_rate_first_answer(&m, 4, 12_000.0, 0.0), 3);
    assert_eq!(value(&answer), 3.0, "{answer}");

    // Nothing waiting, nothing arriving: inactive, 0.
    let idle = create_topic("keda-scaler-idle", 4);
    let m = metadata(&idle, &unique("idle"), &[]);
    let answer = keda_client(&scaler.grpc, "idle", &m, &[]);
    assert_no_error(&answer);
    assert_eq!(answer["isActive"], Value::Bool(false), "{answer}");
    assert_eq!(ebb_rate_first_answer(&m, 4, 0.0, 0.0), 0);
    assert_eq!(value(&answer), 0.0, "{answer}");

    // Arrivals: the scaler measures the rate; its count is ebb-rate's for the rate and lag
    // it exported (read back from /metrics).
    let flowing = create_topic("keda-scaler-flowing", 4);
    let mut producer = spawn_producer(&flowing, "500");
    // Producing at its rate: a second's worth of records in the topic.
    wait_until(
        "the producer's first 500 records",
        Duration::from_secs(30),
        || end_offsets(&flowing).values().sum::<i64>() >= 500,
    );
    let m = metadata(
        &flowing,
        &unique("flowing"),
        &[
            ("capacityPerReplica", "400"),
            ("targetDrainSeconds", "3600"),
        ],
    );
    let answer = keda_client(&scaler.grpc, "flowing", &m, &[]);
    let _ = producer.kill();
    let _ = producer.wait();
    assert_no_error(&answer);
    let metrics = scaler.metrics();
    let sample = |name: &str| -> f64 {
        let prefix = format!("{name}{{scaled_object=\"tests/flowing\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{metrics}"))
    };
    let rate = sample("ebb_keda_scaler_arrival_rate");
    let lag = sample("ebb_keda_scaler_lag_records");
    assert!(
        (300.0..800.0).contains(&rate),
        "arrival rate {rate} msg/s, producing 500"
    );
    let expected = ebb_rate_first_answer(&m, 4, lag, rate);
    assert!(expected >= 1);
    assert_eq!(
        value(&answer),
        expected as f64,
        "{answer}; rate {rate}, lag {lag}"
    );
    assert_eq!(sample("ebb_keda_scaler_desired_replicas"), expected as f64);
    assert!(
        metrics.contains("ebb_keda_scaler_calls_total{method=\"GetMetrics\",code=\"Ok\"}"),
        "{metrics}"
    );
}

#[test]
fn a_scaled_object_is_followed_between_calls() {
    // The same ScaledObject asked again: the tracker keeps its state (scale-down window).
    let scaler = ScalerProcess::start(&["--min-read-interval", "0s"]);
    let topic = create_topic("keda-scaler-follow", 4);
    produce(&topic, 12_000, "20000");
    let m = metadata(
        &topic,
        &unique("follow"),
        &[("scaleDownWindowSeconds", "600")],
    );
    let first = keda_client(&scaler.grpc, "follow", &m, &[]);
    assert_eq!(value(&first), 2.0, "{first}");
    // The same lag again: still 2 (and the pure tracker agrees on the sequence).
    let second = keda_client(&scaler.grpc, "follow", &m, &[]);
    assert_eq!(value(&second), 2.0, "{second}");
    let mut tracker = Tracker::new(ScalerMetadata::parse(&m).unwrap(), 4);
    let p = |lag: f64| {
        (0..4)
            .map(|i| PartitionOffsets {
                log_start: 0.0,
                log_end: if i == 0 { lag } else { 0.0 },
                committed: None,
            })
            .collect::<Vec<_>>()
    };
    tracker.baseline(Duration::ZERO, 12_000.0);
    assert_eq!(
        tracker
            .observe(Duration::from_secs(1), &p(12_000.0))
            .replicas,
        2
    );
    assert_eq!(
        tracker
            .observe(Duration::from_secs(5), &p(12_000.0))
            .replicas,
        2
    );
}

#[test]
fn bad_metadata_and_unknown_topics_are_refused_by_name() {
    let scaler = ScalerProcess::start(&[]);
    let topic = create_topic("keda-scaler-bad", 1);
    let m = metadata(&topic, "g", &[("capacityPerReplica", "fast")]);
    let answer = keda_client(&scaler.grpc, "bad", &m, &[]);
    assert_eq!(answer["error"]["code"], "InvalidArgument", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("scalerMetadata.capacityPerReplica") && message.contains("tests/bad"),
        "{answer}"
    );

    let m = metadata(&topic, "g", &[("lagThreshold", "10")]);
    let answer = keda_client(&scaler.grpc, "keda-lag-keys", &m, &[]);
    assert_eq!(answer["error"]["code"], "InvalidArgument", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("lagThreshold")
    );

    let missing = unique("no-such-topic");
    let m = metadata(&missing, "g", &[]);
    let answer = keda_client(&scaler.grpc, "missing", &m, &[]);
    assert_eq!(answer["error"]["code"], "NotFound", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&missing)
    );
    assert!(
        scaler
            .metrics()
            .contains("ebb_keda_scaler_calls_total{method=\"IsActive\",code=\"InvalidArgument\"}")
    );
}

#[test]
fn serves_over_tls() {
    ebb_testkit::ensure_debian_packages(&["openssl"]);
    let dir = std::env::temp_dir().join(unique("keda-scaler-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scaler = ScalerProcess::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let topic = create_topic("keda-scaler-tls", 2);
    let m = metadata(&topic, &unique("tls"), &[]);
    let answer = keda_client(
        &scaler.grpc,
        "tls",
        &m,
        &["--tls-ca", cert.to_str().unwrap()],
    );
    assert_no_error(&answer);
    assert_eq!(answer["isActive"], Value::Bool(false), "{answer}");
    // Plaintext against the TLS port does not get an answer.
    let out = run_keda_client(&scaler.grpc, "plain", &m, &["--timeout", "3s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() || !text.contains("\"error\":null"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stream_is_active_pushes_a_change() {
    // KEDA's external-push trigger: the first answer at once, the next when it changes.
    let scaler = ScalerProcess::start(&["--stream-interval", "1s", "--min-read-interval", "0s"]);
    let topic = create_topic("keda-scaler-stream", 2);
    let m = metadata(&topic, &unique("stream"), &[]);
    let client = Command::new(tool("keda-extscaler-client"))
        .args([
            "--addr",
            &scaler.grpc,
            "--name",
            "stream",
            "--namespace",
            "tests",
        ])
        .args(["--metadata", &serde_json::to_string(&m).unwrap()])
        .args(["--stream", "2", "--timeout", "30s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keda-extscaler-client");
    // The idle topic's first answer (false) comes before anything is produced; then records
    // arrive and the stream must push true.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !scaler
        .metrics()
        .contains("ebb_keda_scaler_active{scaled_object=\"tests/stream\"} 0")
    {
        assert!(Instant::now() < deadline, "no first evaluation in 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    produce(&topic, 500, "5000");
    let out = client.wait_with_output().expect("keda-extscaler-client");
    assert!(
        out.status.success(),
        "keda-extscaler-client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_no_error(&answer);
    assert_eq!(
        answer["stream"],
        serde_json::json!([false, true]),
        "{answer}"
    );
    assert!(
        scaler
            .metrics()
            .contains("ebb_keda_scaler_calls_total{method=\"StreamIsActive\",code=\"Ok\"}"),
        "{}",
        scaler.metrics()
    );
}
