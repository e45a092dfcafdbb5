//! ebb against a secured Kafka: the separate local node of `scripts/kafka-local start
//! --secure` (SASL_SSL with SCRAM-SHA-256 and SCRAM-SHA-512, mutual TLS with the
//! certificate's CN as principal, a throwaway CA, StandardAuthorizer with per-tenant
//! prefixed ACLs).
//!
//! Which command runs over which way in, here:
//! - SCRAM-SHA-256, SCRAM-SHA-512 and mTLS each: `topic create`, `produce`, `consume` (file
//!   sink over SCRAM-SHA-256, postgres over SCRAM-SHA-512, stdout over mTLS), `lag`,
//!   `audit`, `replay --dry-run` and `keda-scaler` (answering KEDA's own client);
//! - `scale` over mTLS here; `tests/secrets.rs` runs it (and every command above) over
//!   SCRAM-SHA-512 with `--sasl-password` and SCRAM-SHA-256 with `--sasl-password-file`.
//!
//! A wrong CA, bad credentials, a wrong mechanism or a plaintext port end with one line
//! naming the cause within --kafka-timeout; one tenant cannot touch the other's topics or
//! groups (create, produce, consume, lag, scale, audit, replay: each one line naming the
//! resource and the principal).
//!
//! Also here, on the plaintext broker: the producer's rate control on a listener beyond
//! loopback, reached from this machine's non-loopback address.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{
    Running, ebb_unconfigured as ebb, http_get, postgres, psql, scram_login, temp_file, unique,
    wait_until, worker_port_base,
};
use ebb_testkit::{SecureKafka, Tenant, secure_kafka};
use serde_json::Value;

/// The request timeout given to every command here; error cases must end within it (and
/// process start-up).
const TIMEOUT_S: u64 = 4;

/// How a client reaches the secure node.
#[derive(Clone, Copy)]
enum Way {
    Scram256,
    Scram512,
    Mtls,
}

/// The flags for `tenant` over `way`, the SASL password given on the command line.
fn flags(kafka: &SecureKafka, tenant: &Tenant, way: Way) -> Vec<String> {
    let mut flags: Vec<String> = vec!["--kafka-timeout".into(), format!("{TIMEOUT_S}s")];
    match way {
        Way::Scram256 | Way::Scram512 => {
            let mechanism = if matches!(way, Way::Scram256) {
                "SCRAM-SHA-256"
            } else {
                "SCRAM-SHA-512"
            };
            flags.extend(scram_login(
                kafka,
                mechanism,
                &tenant.user,
                &tenant.password,
            ));
        }
        Way::Mtls => {
            flags.extend(
                [
                    "--bootstrap-servers",
                    &kafka.mtls,
                    "--security-protocol",
                    "ssl",
                    "--ssl-ca-location",
                    &kafka.ca.display().to_string(),
                    // Last: a test drops them to connect without a client certificate.
                    "--ssl-certificate-location",
                    &tenant.certificate.display().to_string(),
                    "--ssl-key-location",
                    &tenant.key.display().to_string(),
                ]
                .map(String::from),
            );
        }
    }
    flags
}

fn run(args: &[&str], flags: &[String]) -> Output {
    ebb().args(args).args(flags).output().expect("run ebb")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A fresh topic of `tenant` holding `records` trades, made over `flags`.
fn topic_with_trades(
    tenant: &Tenant,
    name: &str,
    partitions: u32,
    records: u64,
    flags: &[String],
) -> String {
    let topic = create_topic(tenant, name, partitions, flags);
    produce(&topic, records, flags);
    topic
}

/// Asserts that a command's stderr mentions `needle`.
fn assert_stderr_has(out: &Output, needle: &str) {
    let stderr = text(&out.stderr);
    assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
}

/// A fresh topic `<tenant>.<name>-...` made with `ebb topic create` over `flags`.
fn create_topic(tenant: &Tenant, name: &str, partitions: u32, flags: &[String]) -> String {
    let topic = unique(&format!("{}{name}", tenant.prefix()));
    let out = run(
        &[
            "topic",
            "create",
            &topic,
            "--partitions",
            &partitions.to_string(),
        ],
        flags,
    );
    assert_ok("topic create", &out);
    topic
}

/// Exactly `count` trades into `topic` with `ebb produce` over `flags`.
fn produce(topic: &str, count: u64, flags: &[String]) {
    let out = run(
        &[
            "produce",
            "--topic",
            topic,
            "--count",
            &count.to_string(),
            "--rate",
            "5000",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        flags,
    );
    assert_ok("produce", &out);
}

/// `ebb lag --json` over `flags`: the group's total lag and committed offsets' sum (-1
/// when the command fails).
fn lag(topic: &str, group: &str, flags: &[String]) -> (i64, i64) {
    let out = run(
        &["lag", "--topic", topic, "--group", group, "--json"],
        flags,
    );
    if !out.status.success() {
        return (-1, -1);
    }
    let lag: Value = serde_json::from_slice(&out.stdout).expect("lag JSON");
    let committed = lag["partitions"].as_array().map_or(0, |p| {
        p.iter().filter_map(|r| r["committed"].as_i64()).sum()
    });
    (lag["total_lag"].as_i64().unwrap_or(-1), committed)
}

/// Starts `ebb consume` over `flags` with `extra` settings.
fn consume(topic: &str, group: &str, flags: &[String], extra: &[&str]) -> Running {
    let mut command = ebb();
    command
        .args(["consume", "--topic", topic, "--group", group])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .args(flags);
    Running::spawn(command)
}

/// Waits until `group` has committed all of `topic` (lag 0, `count` committed).
fn wait_committed(topic: &str, group: &str, count: i64, flags: &[String]) {
    wait_until(
        &format!("{group} to commit {count} records of {topic}"),
        Duration::from_secs(60),
        || lag(topic, group, flags) == (0, count),
    );
}

/// A failed command: exit 1, one line on stderr, within the timeout, naming `causes`
/// (each a piece of text the line must hold), and never advising to start the local
/// broker. Returns the line.
fn one_line_failure(args: &[&str], flags: &[String], causes: &[&str]) -> String {
    let started = Instant::now();
    let out = run(args, flags);
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    // ebb's own progress log ("[time] INFO: Listening on ...") aside.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("] INFO: "))
        .collect();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should exit 1: {stderr}"
    );
    assert_eq!(lines.len(), 1, "{args:?}: one line, got:\n{stderr}");
    for cause in causes {
        assert!(
            lines[0].contains(cause),
            "{args:?}: no {cause:?} in: {stderr}"
        );
    }
    assert!(
        !lines[0].contains("kafka-local start"),
        "{args:?}: wrong advice: {stderr}"
    );
    assert!(
        took < Duration::from_secs(TIMEOUT_S + 3),
        "{args:?} took {took:?}, timeout {TIMEOUT_S}s"
    );
    lines[0].to_string()
}

/// Stops a consumer with SIGTERM; its output.
fn stop(consumer: Running) -> Output {
    consumer.signal(libc::SIGTERM);
    consumer.finish(Duration::from_secs(30))
}

#[test]
fn scram_sha_256_file_sink_and_lag_with_the_password_from_a_file() {
    let kafka = secure_kafka();
    let a = &kafka.tenant_a;
    // The password from a file, as a Kubernetes Secret is mounted, with its newline.
    let password_file = temp_file("password");
    std::fs::write(&password_file, format!("{}\n", a.password)).unwrap();
    let mut flags = flags(&kafka, a, Way::Scram256);
    let at = flags.iter().position(|f| f == "--sasl-password").unwrap();
    flags.splice(
        at..at + 2,
        [
            "--sasl-password-file".to_string(),
            password_file.display().to_string(),
        ],
    );

    let topic = topic_with_trades(a, "scram256", 3, 300, &flags);
    let group = unique(&format!("{}file", a.prefix()));
    let sink = temp_file("out.jsonl");
    let consumer = consume(
        &topic,
        &group,
        &flags,
        &["--sink", "file", "--sink-file", sink.to_str().unwrap()],
    );
    wait_committed(&topic, &group, 300, &flags);
    let out = stop(consumer);
    assert!(out.status.success(), "consumer: {}", text(&out.stderr));
    assert_eq!(count_lines(&sink), 300, "one line per trade");
    assert!(
        !text(&out.stderr).contains(&a.password),
        "the password is never logged"
    );
    let lag_text = text(&run(&["lag", "--topic", &topic, "--group", &group], &flags).stdout);
    assert!(lag_text.contains("TOTAL"), "{lag_text}");

    // A missing password file: a usage error naming it.
    let mut missing = flags.clone();
    missing[at + 1] = "/nonexistent/ebb-password".into();
    let out = run(&["topic", "list"], &missing);
    assert_eq!(out.status.code(), Some(2));
    assert_stderr_has(&out, "/nonexistent/ebb-password");
}

#[test]
fn scram_sha_512_postgres_sink_and_audit() {
    let kafka = secure_kafka();
    let b = &kafka.tenant_b;
    let flags = flags(&kafka, b, Way::Scram512);
    let url = postgres();
    let table = unique("secure_trades").replace('-', "_");
    let topic = topic_with_trades(b, "scram512", 2, 200, &flags);
    let group = unique(&format!("{}pg", b.prefix()));
    let consumer = consume(
        &topic,
        &group,
        &flags,
        &[
            "--sink",
            "postgres",
            "--database-url",
            &url,
            "--database-table",
            &table,
        ],
    );
    wait_committed(&topic, &group, 200, &flags);
    let out = stop(consumer);
    assert!(out.status.success(), "consumer: {}", text(&out.stderr));
    assert_eq!(psql(&url, &format!("SELECT count(*) FROM {table}")), "200");

    // The audit, the lag and a replay's plan over each way in.
    for way in [Way::Scram256, Way::Scram512, Way::Mtls] {
        let flags = self::flags(&kafka, b, way);
        let out = run(
            &[
                "audit",
                "--topic",
                &topic,
                "--group",
                &group,
                "--database-url",
                &url,
                "--database-table",
                &table,
                "--json",
            ],
            &flags,
        );
        assert_ok("audit", &out);
        let report: Value = serde_json::from_slice(&out.stdout).expect("audit JSON");
        assert_eq!(report["totals"]["stored"], 200, "{report}");
        assert_eq!(lag(&topic, &group, &flags), (0, 200));
        let out = run(
            &[
                "replay",
                "--topic",
                &topic,
                "--group",
                &group,
                "--to-offset",
                "earliest",
                "--dry-run",
                "--json",
            ],
            &flags,
        );
        assert_ok("replay --dry-run", &out);
        let plan: Value = serde_json::from_slice(&out.stdout).expect("replay JSON");
        assert_eq!(plan["total_reprocess"], 200, "{plan}");
        assert_eq!(plan["applied"], false, "{plan}");
    }
}

#[test]
fn mutual_tls_stdout_sink_and_scale() {
    let kafka = secure_kafka();
    let a = &kafka.tenant_a;
    let flags = flags(&kafka, a, Way::Mtls);
    let topic = topic_with_trades(a, "mtls", 2, 100, &flags);

    let group = unique(&format!("{}stdout", a.prefix()));
    let consumer = consume(&topic, &group, &flags, &["--sink", "stdout"]);
    wait_committed(&topic, &group, 100, &flags);
    let out = stop(consumer);
    assert!(out.status.success(), "consumer: {}", text(&out.stderr));
    let lines = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .count();
    assert_eq!(lines, 100, "a JSON line per trade on stdout");

    // ebb scale passes the certificate to its workers.
    let group = unique(&format!("{}scale", a.prefix()));
    let mut command = ebb();
    command
        .args(["scale", "--topic", &topic, "--group", &group])
        .args(["--policy", "ebb-rate", "--capacity", "1000"])
        .args(["--metrics-addr", "127.0.0.1:0", "--interval", "1s"])
        .args(["--worker-port-base", &worker_port_base().to_string()])
        .args(&flags)
        .args(["--", "--sink", "sim"]);
    let mut scale = Running::spawn(command);
    let addr = scale.address("--metrics-addr");
    wait_committed(&topic, &group, 100, &flags);
    assert!(http_get(&format!("http://{addr}/metrics")).is_some());
    scale.signal(libc::SIGTERM);
    let out = scale.finish(Duration::from_secs(60));
    assert!(out.status.success(), "scale: {}", text(&out.stderr));
}

#[test]
fn keda_scaler_over_each_way_in() {
    use ebb_testkit::kube::tool;
    let kafka = secure_kafka();
    let b = &kafka.tenant_b;
    let topic = topic_with_trades(b, "keda", 2, 1_000, &flags(&kafka, b, Way::Scram512));
    for way in [Way::Scram256, Way::Scram512, Way::Mtls] {
        let mut command = ebb();
        command
            .args(["keda-scaler", "--addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(flags(&kafka, b, way));
        let mut scaler = Running::spawn(command);
        let grpc = scaler.address("--addr");
        let metadata = serde_json::json!({
            "topic": topic,
            "group": unique(&format!("{}keda", b.prefix())),
            "capacityPerReplica": "100",
            "targetDrainSeconds": "60",
            "intervalSeconds": "0",
            "upSettleSeconds": "0",
            "scalerAddress": "ignored-by-ebb:9090",
        });
        let out = Command::new(tool("keda-extscaler-client"))
            .args(["--addr", &grpc, "--name", "secure", "--namespace", "tests"])
            .args(["--metadata", &metadata.to_string()])
            .output()
            .expect("run keda-extscaler-client");
        let _ = scaler.child.kill();
        let _ = scaler.child.wait();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let answer: Value = serde_json::from_slice(&out.stdout).expect("KEDA client JSON");
        assert!(
            answer["error"].is_null(),
            "KEDA's client got an error: {answer}\nscaler: {}",
            scaler.stderr()
        );
        assert_eq!(answer["isActive"], Value::Bool(true), "{answer}");
        // 1,000 records to drain in 60 s at 100 msg/s per replica: 1,000 / 60 / 100 -> 1.
        assert_eq!(
            answer["metricValues"][0]["metricValueFloat"].as_f64(),
            Some(1.0),
            "{answer}"
        );
    }
}

#[test]
fn a_wrong_ca_or_an_unaccepted_client_certificate_is_one_line() {
    let kafka = secure_kafka();
    let a = &kafka.tenant_a;
    let ca = kafka.ca.display().to_string();
    let other_ca = kafka.other_ca.display().to_string();

    let mut sasl = flags(&kafka, a, Way::Scram256);
    let at = sasl.iter().position(|f| *f == ca).unwrap();
    sasl[at] = other_ca.clone();
    one_line_failure(&["topic", "list"], &sasl, &["certificate verify failed"]);
    one_line_failure(
        &["lag", "--topic", "tenant-a.x", "--group", "tenant-a.g"],
        &sasl,
        &["certificate verify failed"],
    );

    // The broker's CA is right, the client certificate is from the other CA, or missing.
    let mut foreign = flags(&kafka, a, Way::Mtls);
    let (certificate, key) = &kafka.other_ca_client;
    let at = foreign
        .iter()
        .position(|f| f == "--ssl-certificate-location")
        .unwrap();
    foreign[at + 1] = certificate.display().to_string();
    foreign[at + 3] = key.display().to_string();
    one_line_failure(
        &["topic", "list"],
        &foreign,
        &["did not accept this client's certificate"],
    );
    let none: Vec<String> = foreign[..at].to_vec();
    one_line_failure(
        &["topic", "list"],
        &none,
        &["did not accept this client's certificate"],
    );
}

#[test]
fn bad_password_wrong_mechanism_and_a_plaintext_port_name_the_cause() {
    let kafka = secure_kafka();
    let a = &kafka.tenant_a;
    let good = flags(&kafka, a, Way::Scram256);
    let topic = topic_with_trades(a, "auth", 1, 10, &good);

    let mut bad = good.clone();
    let at = bad.iter().position(|f| f == "--sasl-password").unwrap();
    bad[at + 1] = "not-the-password".into();
    let group = unique(&format!("{}badpw", a.prefix()));
    let line = one_line_failure(
        &[
            "consume",
            "--topic",
            &topic,
            "--group",
            &group,
            "--sink",
            "sim",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &bad,
        &["127.0.0.1", "Authentication failed", "SCRAM-SHA-256"],
    );
    assert!(!line.contains("not-the-password"), "{line}");
    // Nothing was committed: the group is unknown to the broker.
    let out = run(&["lag", "--topic", &topic, "--group", &group], &good);
    assert_stderr_has(&out, "is unknown");
    one_line_failure(
        &[
            "produce",
            "--topic",
            &topic,
            "--count",
            "1",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &bad,
        &["Authentication failed"],
    );

    let mut plain = good.clone();
    let at = plain.iter().position(|f| f == "SCRAM-SHA-256").unwrap();
    plain[at] = "PLAIN".into();
    one_line_failure(&["topic", "list"], &plain, &["Unsupported SASL mechanism"]);

    // SASL against the plaintext local broker's port.
    let plaintext = ebb_testkit::kafka();
    let mut sasl_plain = good.clone();
    let at = sasl_plain
        .iter()
        .position(|f| *f == kafka.sasl_ssl)
        .unwrap();
    sasl_plain[at] = plaintext.clone();
    // OpenSSL's "SSL handshake failed", or "SSL connection closed by peer" when the
    // broker's close comes first: either way the line asks about a PLAINTEXT listener.
    one_line_failure(&["topic", "list"], &sasl_plain, &["SSL ", "PLAINTEXT"]);
    let at = sasl_plain.iter().position(|f| f == "sasl_ssl").unwrap();
    sasl_plain[at] = "sasl_plaintext".into();
    one_line_failure(
        &["topic", "list"],
        &sasl_plain,
        &["SASL", "handshake failed"],
    );

    // Nothing listening at a local plaintext address: then, and only then, the advice.
    let port = ebb_testkit::free_port();
    let out = run(
        &[
            "topic",
            "list",
            "--bootstrap-servers",
            &format!("127.0.0.1:{port}"),
        ],
        &["--kafka-timeout".into(), "2s".into()],
    );
    assert_stderr_has(&out, "scripts/kafka-local start");
}

#[test]
fn tenants_are_isolated_and_dead_letters_stay_in_the_prefix() {
    let kafka = secure_kafka();
    let (a, b) = (&kafka.tenant_a, &kafka.tenant_b);
    let as_a = flags(&kafka, a, Way::Scram512);
    let as_b = flags(&kafka, b, Way::Scram256);
    let theirs = topic_with_trades(b, "orders", 1, 5, &as_b);

    one_line_failure(
        &["topic", "create", "tenant-b.not-yours", "--partitions", "1"],
        &as_a,
        &["not authorized to create topic tenant-b.not-yours as User:tenant-a"],
    );
    one_line_failure(
        &[
            "produce",
            "--topic",
            &theirs,
            "--count",
            "1",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &as_a,
        &[&format!(
            "not authorized to describe topic {theirs} as User:tenant-a"
        )],
    );
    let group = unique(&format!("{}reader", a.prefix()));
    one_line_failure(
        &[
            "consume",
            "--topic",
            &theirs,
            "--group",
            &group,
            "--sink",
            "sim",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &as_a,
        &[&format!("not authorized to describe topic {theirs}")],
    );
    // The same principal through its certificate.
    one_line_failure(
        &["lag", "--topic", &theirs, "--group", &group],
        &flags(&kafka, a, Way::Mtls),
        &[
            &format!("not authorized to describe topic {theirs}"),
            "CN=tenant-a",
        ],
    );

    // Its own topic, with the other tenant's group: joining (and so committing) refused.
    let mine = create_topic(a, "mine", 1, &as_a);
    let bad_record: &[u8] = b"not a trade";
    ebb_testkit::produce_raw_with(
        kafka.sasl_config(a, "SCRAM-SHA-512"),
        &mine,
        &[(None, Some(bad_record))],
    );
    produce(&mine, 10, &as_a);
    let their_group = unique(&format!("{}group", b.prefix()));
    let out =
        consume(&mine, &their_group, &as_a, &["--sink", "sim"]).finish(Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(
        errors[0].contains(&format!(
            "not authorized to use group {their_group} as User:tenant-a"
        )),
        "{stderr}"
    );
    one_line_failure(
        &["lag", "--topic", &mine, "--group", &their_group],
        &as_a,
        &[&format!("not authorized to use group {their_group}")],
    );
    // The supervisor stops at once rather than warning every interval.
    one_line_failure(
        &[
            "scale",
            "--topic",
            &mine,
            "--group",
            &their_group,
            "--interval",
            "1s",
            "--policy",
            "ebb-rate",
            "--capacity",
            "100",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &as_a,
        &[&format!("not authorized to use group {their_group}")],
    );

    // Moving the other tenant's offsets (planned or applied), or auditing its group: each
    // refused in one line naming the group and the principal (side by side: each waits out
    // the request the refused coordinator lookup leaves unanswered).
    let denied = format!("not authorized to use group {their_group} as User:tenant-a");
    let replay = [
        "replay",
        "--topic",
        &mine,
        "--group",
        &their_group,
        "--to-offset",
        "earliest",
    ];
    let dry_run = [&replay[..], &["--dry-run"]].concat();
    let url = postgres();
    let audit = [
        "audit",
        "--topic",
        &mine,
        "--group",
        &their_group,
        "--database-url",
        &url,
        "--database-table",
        "tenant_isolation",
    ];
    std::thread::scope(|threads| {
        for args in [&replay[..], &dry_run, &audit] {
            let (as_a, denied) = (&as_a, &denied);
            threads.spawn(move || {
                let line = one_line_failure(args, as_a, &[denied]);
                assert!(line.contains("ask the cluster's operator"), "{line}");
            });
        }
    });
    // Nothing was committed for the other tenant's group, as the superuser sees it.
    let admin = Tenant {
        user: kafka.admin.0.clone(),
        password: kafka.admin.1.clone(),
        ..a.clone()
    };
    let out = run(
        &["lag", "--topic", &mine, "--group", &their_group],
        &flags(&kafka, &admin, Way::Scram512),
    );
    assert_stderr_has(&out, "is unknown");

    // Its own group: the malformed record goes to <topic>.dlq, inside tenant-a's prefix.
    let group = unique(&format!("{}dlq", a.prefix()));
    let consumer = consume(&mine, &group, &as_a, &["--sink", "sim"]);
    wait_committed(&mine, &group, 11, &as_a);
    let out = stop(consumer);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&run(&["topic", "list"], &as_a).stdout);
    assert!(listed.contains(&format!("{mine}.dlq")), "{listed}");
    assert!(
        !listed.contains("tenant-b."),
        "tenant-a sees only its topics: {listed}"
    );
}

/// The number of lines in a file (0 if absent).
fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// This machine's address beyond loopback: the source address of its route out (a UDP
/// socket's connect sends nothing), else the first of `hostname -I`.
fn non_loopback_ip() -> std::net::IpAddr {
    let routed = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|socket| {
            socket.connect("192.0.2.1:9")?;
            socket.local_addr()
        })
        .map(|addr| addr.ip());
    if let Ok(ip) = routed
        && !ip.is_loopback()
        && !ip.is_unspecified()
    {
        return ip;
    }
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("run hostname -I");
    text(&out.stdout)
        .split_whitespace()
        .filter_map(|word| word.parse::<std::net::IpAddr>().ok())
        .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        .expect(
            "this test needs an IPv4 address beyond loopback (none routed, none in `hostname -I`)",
        )
}

/// One request to `/rate` at `addr`, one of this machine's own addresses beyond loopback,
/// over a fresh connection (the kernel gives it that address as its source): the status
/// and body, after asserting that the connection's source is that address.
fn rate_request(
    addr: std::net::SocketAddr,
    method: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let source = stream.local_addr().expect("local address").ip();
    assert!(
        source == addr.ip() && !source.is_loopback(),
        "the request comes from {source}, not from beyond loopback"
    );
    let authorization = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} /rate HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// `ebb produce` on the plaintext broker at 20 msg/s, its server on `bind`, with the
/// control token file `token_file` if given; it and the port it got.
fn rate_controlled_producer(bind: &str, token_file: Option<&Path>) -> (Running, u16) {
    let topic = crate::common::create_topic("control", 1);
    let mut command = crate::common::ebb();
    command
        .args(["produce", "--topic", &topic, "--rate", "20"])
        .args(["--metrics-addr", bind]);
    if let Some(file) = token_file {
        command.arg("--control-token-file").arg(file);
    }
    let mut producer = Running::spawn(command);
    let addr = producer.address("--metrics-addr");
    let port = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"));
    (producer, port)
}

/// The producer's rate control from beyond loopback (`ebb_core::control`): on a listener
/// beyond loopback without a token every rate change is refused (403), token or not; with `--control-token-file`, only the right
/// bearer token changes the rate (200, and /metrics shows the producer sending at the new
/// rate); a wrong or missing one gets 401. Reading the rate never needs the token. Every
/// request comes from this machine's address beyond loopback.
#[test]
fn rate_changes_from_beyond_loopback_need_the_control_token() {
    let ip = non_loopback_ip();
    let at = |port: u16| std::net::SocketAddr::new(ip, port);
    let target =
        |port: u16| crate::common::metric(&format!("127.0.0.1:{port}"), "ebb_producer_target_rate");

    // Bound to the machine's address, no token: rate changes are off.
    let (producer, port) = rate_controlled_producer(&format!("{ip}:0"), None);
    let (status, body) = rate_request(at(port), "PUT", None, "900");
    assert_eq!(status, 403, "{body}");
    // What to configure (the producer's log at start names the flag, --control-token-file).
    assert!(body.contains("control token"), "{body}");
    let (status, body) = rate_request(at(port), "POST", Some("anything"), "900");
    assert_eq!(status, 403, "{body}");
    let (status, body) = rate_request(at(port), "GET", None, "");
    assert_eq!((status, body.trim()), (200, "20"));
    assert_eq!(
        crate::common::metric(&at(port).to_string(), "ebb_producer_target_rate"),
        Some(20.0)
    );
    stop(producer);

    // Bound to every address (as the Helm chart does), with a token.
    let token_file = temp_file("control-token");
    std::fs::write(&token_file, "the-right-token\n").unwrap();
    let (producer, port) = rate_controlled_producer("0.0.0.0:0", Some(&token_file));
    for token in [
        None,
        Some("the-wrong-token"),
        Some("the-right-token-and-more"),
    ] {
        let (status, body) = rate_request(at(port), "PUT", token, "900");
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    assert_eq!(target(port), Some(20.0), "refused changes changed nothing");
    let (status, body) = rate_request(at(port), "PUT", Some("the-right-token"), "900");
    assert_eq!((status, body.trim()), (200, "900"));
    wait_until(
        "the producer to send at the new rate",
        Duration::from_secs(20),
        || {
            let achieved =
                crate::common::metric(&format!("127.0.0.1:{port}"), "ebb_producer_achieved_rate");
            target(port) == Some(900.0) && achieved.is_some_and(|rate| rate > 300.0)
        },
    );
    let out = stop(producer);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
