//! The `topic` and `produce` commands as a user runs them: output, exit codes, errors.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn topic_create_then_list_shows_it() {
    let name = unique("listed");
    let out = run(&["topic", "create", &name, "--partitions", "5"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["topic", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&name))
        .expect("listed");
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        [name.as_str(), "5", "1"]
    );

    let again = run(&["topic", "create", &name, "--partitions", "5"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert!(
        run(&["topic", "create", &name, "--if-not-exists"])
            .status
            .success()
    );
}

#[test]
fn unreachable_broker_is_one_clear_line_within_the_timeout() {
    let port = free_port().to_string();
    let started = Instant::now();
    let out = ebb()
        .args(["topic", "list", "--kafka-timeout", "2s"])
        .env("KAFKA_BOOTSTRAP_SERVERS", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        stderr.contains(&format!("EBB_KAFKA_PORT={port} scripts/kafka-local start")),
        "{stderr}"
    );
    assert!(
        elapsed < Duration::from_secs(6),
        "gave up after {elapsed:?}"
    );
}

#[test]
fn malformed_rate_profile_exits_2_and_points_at_the_part() {
    let out = run(&["produce", "--rate", "10@60s,fast@5m"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("segment 2 \"fast@5m\""), "{stderr}");
    let out = run(&["produce", "--topic", &unique("absent"), "--count", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn sigterm_during_a_run_flushes_and_every_record_reported_sent_is_in_the_topic() {
    let topic = create_topic("produce-term", 4);
    let producer = spawn_producer(&topic, "3000");
    wait_until(
        "3,000 records in the topic",
        Duration::from_secs(30),
        || {
            watermarks(&kafka(), &topic)
                .iter()
                .map(|(_, high)| high)
                .sum::<i64>()
                > 3000
        },
    );
    signal(&producer, libc::SIGTERM);
    let out = finish(producer, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sent: usize = stdout
        .split_whitespace()
        .skip_while(|w| *w != "sent")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {stdout}"));
    assert!(
        sent > 3000,
        "stopped after 3,000 records were in the topic: {stdout}"
    );
    assert!(
        stdout.contains(&format!("delivered {sent} failed 0 undelivered 0")),
        "{stdout}"
    );
    let records = read_topic(
        &kafka(),
        &topic,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert_eq!(records.len(), sent);
}

#[test]
fn rate_endpoint_changes_the_rate_and_rejects_bad_profiles() {
    let topic = create_topic("rate-http", 2);
    let mut command = ebb();
    command.args(["produce", "--topic", &topic, "--rate", "100"]);
    command.args(["--metrics-addr", "127.0.0.1:0"]);
    let mut producer = Running::spawn(command);
    let addr = producer.address("--metrics-addr");
    wait_until(
        "the producer's HTTP server",
        Duration::from_secs(20),
        || http(&addr, "GET", "/readyz", "").0 == 200,
    );
    assert_eq!(http(&addr, "GET", "/rate", ""), (200, "100\n".to_string()));
    assert_eq!(http(&addr, "PUT", "/rate", "0..500@10s,500").0, 200);
    assert_eq!(http(&addr, "GET", "/rate", "").1, "0..500@10s,500\n");
    let (status, body) = http(&addr, "POST", "/rate", "lots");
    assert_eq!(status, 400);
    assert!(body.contains("\"lots\""), "{body}");
    assert_eq!(http(&addr, "GET", "/healthz", "").0, 200);
    assert!(
        http(&addr, "GET", "/metrics", "")
            .1
            .contains("ebb_producer_messages_sent_total")
    );
    producer.child.kill().unwrap();
    producer.child.wait().unwrap();
}

/// One request to the producer's HTTP server: (status, body); (0, "") if it does not
/// answer.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let response = match method {
        "GET" => agent.get(&url).call(),
        "PUT" => agent.put(&url).content_type("text/plain").send(body),
        "POST" => agent.post(&url).content_type("text/plain").send(body),
        other => panic!("no {other} in these tests"),
    };
    match response {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

#[test]
fn sighup_rereads_the_scenario_file() {
    let topic = create_topic("sighup", 2);
    let scenario = temp_file("scenario.yaml");
    std::fs::write(&scenario, "traffic: \"50\"\n").unwrap();
    let mut command = ebb();
    command
        .args([
            "produce",
            "--topic",
            &topic,
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .arg("--scenario")
        .arg(&scenario);
    let mut producer = Running::spawn(command);
    let addr = producer.address("--metrics-addr");
    wait_until(
        "the producer's HTTP server",
        Duration::from_secs(20),
        || http(&addr, "GET", "/rate", "").0 == 200,
    );
    assert_eq!(http(&addr, "GET", "/rate", "").1, "50\n");
    std::fs::write(&scenario, "traffic:\n  - 200@1m\n  - 0\n").unwrap();
    producer.signal(libc::SIGHUP);
    wait_until("the new profile", Duration::from_secs(10), || {
        http(&addr, "GET", "/rate", "").1 == "200@1m,0\n"
    });
    // A broken file keeps the running profile.
    std::fs::write(&scenario, "traffic: \"oops@\"\n").unwrap();
    producer.signal(libc::SIGHUP);
    wait_until("the broken file refused", Duration::from_secs(10), || {
        producer
            .stderr()
            .contains("SIGHUP: keeping the current profile")
    });
    assert_eq!(http(&addr, "GET", "/rate", "").1, "200@1m,0\n");
    producer.child.kill().unwrap();
    producer.child.wait().unwrap();
}

#[test]
fn msk_iam_settings_are_checked_before_connecting() {
    let out = ebb()
        .args(["topic", "list", "--sasl-mechanism", "AWS_MSK_IAM"])
        .env_remove("AWS_REGION")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--aws-region"));
    let out = ebb()
        .args([
            "topic",
            "list",
            "--sasl-mechanism",
            "AWS_MSK_IAM",
            "--aws-region",
            "us-east-1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sasl_ssl"));
    // Well configured, but no credentials anywhere: a runtime error that says where they come from.
    let out = ebb()
        .args([
            "topic",
            "list",
            "--security-protocol",
            "sasl_ssl",
            "--sasl-mechanism",
            "AWS_MSK_IAM",
            "--aws-region",
            "us-east-1",
        ])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no AWS credentials") && stderr.contains("AWS_ACCESS_KEY_ID"),
        "{stderr}"
    );
}

#[test]
fn lag_shows_records_and_time_waiting_per_partition() {
    let topic = create_topic("lag", 3);
    let group = unique("g");
    produce(&topic, 300, "10000");
    let drained = run(&[
        "consume",
        "--topic",
        &topic,
        "--group",
        &group,
        "--sink",
        "stdout",
        "--stop-after-idle",
        "2s",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    produce(&topic, 90, "10000");
    // What is measured: the time the new records have waited.
    std::thread::sleep(Duration::from_millis(1500));

    let out = run(&["lag", "--group", &group, "--topic", &topic, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lag: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(lag["total_lag"], 90);
    assert_eq!(lag["partitions"].as_array().unwrap().len(), 3);
    let waited = lag["max_time_lag_s"].as_f64().unwrap();
    assert!(
        (1.0..30.0).contains(&waited),
        "the new records waited about 1.5 s: {waited}"
    );
    let table =
        String::from_utf8_lossy(&run(&["lag", "--group", &group, "--topic", &topic]).stdout)
            .to_string();
    assert!(
        table.contains("TIME-LAG") && table.lines().last().unwrap().contains("90"),
        "{table}"
    );

    let unknown = run(&["lag", "--group", &unique("nobody"), "--topic", &topic]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("is unknown"));
}
