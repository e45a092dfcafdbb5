//! No secret in any output: every command run with known secrets (a SASL password, AWS
//! keys and session token, a Pod Identity token, a database password, the producer's
//! control token) at `--log trace` with librdkafka's `debug=all`, on success and failure
//! paths, and every stdout, stderr, `--help` and `/metrics` searched for them.

use std::process::Output;
use std::time::Duration;

use crate::common::*;

const SASL_PASSWORD: &str = "kafka-pw-7f3a9c";
const AWS_SECRET: &str = "aws-secret-91bd0e";
const AWS_SESSION: &str = "aws-session-c44e2b";
const POD_IDENTITY_TOKEN: &str = "pod-identity-token-5d8e";
const DB_PASSWORD: &str = "db-pw-5e21ab";
const CONTROL_TOKEN: &str = "control-token-aa01cd";

const SECRETS: [&str; 6] = [
    SASL_PASSWORD,
    AWS_SECRET,
    AWS_SESSION,
    POD_IDENTITY_TOKEN,
    DB_PASSWORD,
    CONTROL_TOKEN,
];

/// Panics naming the secret and the place if `text` holds any secret (as is, or
/// percent-encoded, as in a signed URL).
fn assert_no_secret(place: &str, text: &str) {
    for secret in SECRETS {
        let encoded: String = secret.replace('-', "%2D");
        assert!(
            !text.contains(secret) && !text.contains(&encoded),
            "{place} shows the secret {secret:?}:\n{text}"
        );
    }
}

fn assert_output_clean(place: &str, out: &Output) {
    assert_no_secret(
        &format!("{place} stdout"),
        &String::from_utf8_lossy(&out.stdout),
    );
    assert_no_secret(
        &format!("{place} stderr"),
        &String::from_utf8_lossy(&out.stderr),
    );
}

/// `ebb` at trace level with librdkafka's debug contexts all on and every secret in its
/// environment.
fn noisy() -> std::process::Command {
    let mut command = ebb();
    command
        .env("EBB_LOG", "trace")
        .env("KAFKA_SASL_PASSWORD", SASL_PASSWORD)
        .env("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE0000")
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .env("AWS_SESSION_TOKEN", AWS_SESSION)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN", POD_IDENTITY_TOKEN)
        .env("DATABASE_URL", database_url());
    command
}

/// The test database's URL with a password in it (the local server trusts loopback, so
/// the password is carried everywhere and checked nowhere).
fn database_url() -> String {
    postgres().replacen("postgres@", &format!("postgres:{DB_PASSWORD}@"), 1)
}

#[test]
fn help_shows_no_secret_from_the_environment() {
    for command in [
        &["topic", "list"][..],
        &["produce"],
        &["consume"],
        &["lag"],
        &["scale"],
        &["keda-scaler"],
        &["audit"],
        &["replay"],
        &["db", "init"],
        &["demo"],
    ] {
        let out = noisy()
            .args(command)
            .arg("--help")
            .output()
            .expect("run ebb");
        assert!(out.status.success(), "{command:?} --help");
        assert_output_clean(&format!("ebb {} --help", command.join(" ")), &out);
    }
}

/// Runs `command` (an `ebb topic list`); asserts it exits with `code` and shows no
/// secret; its output.
fn fails_cleanly(place: &str, code: i32, command: &mut std::process::Command) -> Output {
    let out = command.output().expect("run ebb");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{place}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_output_clean(place, &out);
    out
}

#[test]
fn kafka_authentication_failures_show_no_password_or_aws_secret() {
    let topic_list = |protocol: &str, mechanism: &[&str]| {
        let mut command = noisy();
        command
            .args(["topic", "list", "--security-protocol", protocol])
            .args(["--sasl-mechanism"])
            .args(mechanism)
            .args(["-X", "debug=all", "--kafka-timeout", "3s", "--log", "trace"]);
        command
    };
    let scram = ["SCRAM-SHA-512", "--sasl-username", "someone"];
    let msk_iam = ["AWS_MSK_IAM", "--aws-region", "eu-west-1"];
    // SCRAM against the plaintext broker: the handshake fails.
    fails_cleanly("SCRAM", 1, &mut topic_list("sasl_plaintext", &scram));
    // MSK IAM: a token signed with the AWS keys and session token, for a broker that
    // does not speak TLS.
    fails_cleanly("MSK IAM", 1, &mut topic_list("sasl_ssl", &msk_iam));
    // Pod Identity: the authorization token sent to a credentials endpoint that is down.
    let credentials = format!("http://127.0.0.1:{}/creds", free_port());
    fails_cleanly(
        "Pod Identity",
        1,
        topic_list("sasl_ssl", &msk_iam)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", credentials),
    );
    // A secret given as a librdkafka property beside one librdkafka refuses: bad usage,
    // named by the refused key.
    let secret_property = format!("sasl.password={SASL_PASSWORD}");
    let out = fails_cleanly(
        "a refused -X property",
        2,
        noisy()
            .args(["topic", "list", "-X", &secret_property])
            .args(["-X", "no.such.property=1"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no.such.property"), "{stderr}");
    // A bad value is named by its property, never quoted.
    let bad_value = format!("fetch.wait.max.ms={SASL_PASSWORD}");
    fails_cleanly(
        "a refused -X value",
        2,
        noisy().args(["topic", "list", "-X", &bad_value]),
    );
}

#[test]
fn a_pipeline_at_trace_level_shows_no_secret_in_logs_or_metrics() {
    let topic = create_topic("secrets", 2);
    let group = unique("g");
    let table = unique("secrets").replace('-', "_");
    let token_file = temp_file("control-token");
    std::fs::write(&token_file, format!("{CONTROL_TOKEN}\n")).expect("token file");

    // The producer with a control token, on a port of its own.
    let mut command = noisy();
    command
        .args([
            "produce",
            "--topic",
            &topic,
            "--rate",
            "200",
            "-X",
            "debug=all",
        ])
        .args(["--metrics-addr", "127.0.0.1:0", "--control-token-file"])
        .arg(&token_file);
    let mut producer = Running::spawn(command);
    let producer_addr = producer.address("--metrics-addr");

    // The consumer into PostgreSQL through a URL with a password.
    let mut command = noisy();
    command
        .args([
            "consume",
            "--topic",
            &topic,
            "--group",
            &group,
            "-X",
            "debug=all",
        ])
        .args(["--sink", "postgres", "--database-table", &table])
        .args(["--metrics-addr", "127.0.0.1:0"]);
    let mut consumer = Running::spawn(command);
    let consumer_addr = consumer.address("--metrics-addr");
    wait_until("rows written", Duration::from_secs(60), || {
        metric(&consumer_addr, "ebb_postgres_rows_written_total").is_some_and(|n| n >= 200.0)
    });
    for (name, addr) in [("producer", &producer_addr), ("consumer", &consumer_addr)] {
        let (_, body) = http_get(&format!("http://{addr}/metrics")).expect("GET /metrics");
        assert_no_secret(&format!("{name} /metrics"), &body);
    }

    producer.signal(libc::SIGTERM);
    consumer.signal(libc::SIGTERM);
    let produced = producer.finish(Duration::from_secs(30));
    let consumed = consumer.finish(Duration::from_secs(60));
    assert!(produced.status.success() && consumed.status.success());
    assert_output_clean("ebb produce", &produced);
    assert_output_clean("ebb consume", &consumed);

    // The audit, with the URL from a file (a mounted Secret), and the lag, with the same
    // secrets around.
    let url_file = temp_file("database-url");
    std::fs::write(&url_file, format!("{}\n", database_url())).expect("URL file");
    let out = noisy()
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &url_file)
        .args(["audit", "--topic", &topic, "--group", &group])
        .args(["--database-table", &table])
        .output()
        .expect("run ebb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_output_clean("ebb audit", &out);
    let out = noisy()
        .args(["lag", "--topic", &topic, "--group", &group])
        .output()
        .expect("run ebb");
    assert!(out.status.success());
    assert_output_clean("ebb lag", &out);
}

#[test]
fn database_failures_show_no_password() {
    // Nothing listens there: the connection is refused.
    let url = format!(
        "postgres://postgres:{DB_PASSWORD}@127.0.0.1:{}/ebb",
        free_port()
    );
    let out = noisy()
        .args(["db", "init", "--database-url", &url])
        .output()
        .expect("run ebb");
    assert_eq!(out.status.code(), Some(1));
    assert_output_clean("db init, refused", &out);
    // A URL that does not parse.
    let out = noisy()
        .args(["db", "init", "--database-url"])
        .arg(format!("postgres://postgres:{DB_PASSWORD}@[bad/ebb"))
        .output()
        .expect("run ebb");
    assert_ne!(out.status.code(), Some(0));
    assert_output_clean("db init, bad URL", &out);
}
