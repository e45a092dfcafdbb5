//! No secret in any output. Known secrets are put where ebb reads them (a SASL password,
//! AWS keys and session token, a Pod Identity token, a database password, the producer's
//! control token, and the secured node's SCRAM passwords), every command runs at `--log
//! trace` (`EBB_LOG`, which child processes inherit) with librdkafka's `-X debug=all`, and
//! every stdout, stderr, `--help`, log file and HTTP answer is searched for each secret as
//! is, percent-encoded, and base64 and base64url encoded at each of the three alignments a
//! secret can have inside a longer encoded text (so a secret inside an MSK IAM token, a
//! base64url signed URL, is found), and for the MSK IAM tokens ebb signs with the known
//! AWS keys in the seconds the command ran.
//!
//! What runs:
//! - every `--help`, with every secret in the environment;
//! - failures on the plaintext broker: SCRAM (the handshake fails), MSK IAM with keys and a
//!   session token (the token is signed and handed to librdkafka, the connection fails),
//!   Pod Identity (its authorization token sent to an endpoint that is down), a refused
//!   `-X` key and value; `ebb db init` with a refused and an unparsable URL;
//! - successful logins on the secured node (`scripts/kafka-local start --secure`), once
//!   with SCRAM-SHA-512 and `--sasl-password`, once with SCRAM-SHA-256 and
//!   `--sasl-password-file`: `topic create`, `produce` (with a control token), `consume`
//!   into PostgreSQL (a `DATABASE_URL` with a password), `lag`, `audit` (the URL from
//!   `DATABASE_URL_FILE`), `replay --dry-run` and an applied `replay`, `scale` (and its
//!   workers' logs) and `keda-scaler` (answering KEDA's own client), each server's
//!   `/metrics`;
//! - the same pipeline on the plaintext broker with the fake SASL password around;
//! - `ebb demo` on the secured node as its superuser with the password given as a flag
//!   (the demo takes no database URL: its workers use the sim sink; Kafka's settings are
//!   its only secret): its stdout, stderr, its supervisor's, producer's and workers' logs
//!   and files, and its dashboard's page, `/series.json` and `/run.json`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use ebb_core::msk_iam::{AwsCredentials, MskIam};
use ebb_testkit::{SecureKafka, secure_kafka};

const SASL_PASSWORD: &str = "kafka-pw-7f3a9c";
const AWS_ACCESS_KEY_ID: &str = "AKIAEXAMPLE0000";
const AWS_SECRET: &str = "aws-secret-91bd0e";
const AWS_SESSION: &str = "aws-session-c44e2b";
const AWS_REGION: &str = "eu-west-1";
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

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `bytes` in base64 with `alphabet`, unpadded (a last partial character's missing bits
/// are zero).
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let bit = |i: usize| bytes.get(i / 8).map_or(0, |b| (b >> (7 - i % 8)) & 1) as usize;
    (0..(8 * bytes.len()).div_ceil(6))
        .map(|c| alphabet[(0..6).fold(0, |acc, b| acc << 1 | bit(6 * c + b))] as char)
        .collect()
}

/// The base64 characters that `secret` alone decides when it starts `shift` bytes (0, 1 or
/// 2) after a 3-byte boundary of a longer text: whatever surrounds it, that text's
/// encoding holds them.
fn base64_core(secret: &[u8], shift: usize, alphabet: &[u8; 64]) -> String {
    let shifted: Vec<u8> = std::iter::repeat_n(0, shift)
        .chain(secret.iter().copied())
        .collect();
    let first = (8 * shift).div_ceil(6);
    let last = 8 * shifted.len() / 6;
    base64(&shifted, alphabet)[first..last].to_string()
}

/// The secrets a test searches for, each in every form it could take in an output.
#[derive(Clone)]
struct Secrets {
    /// (the secret, one form of it).
    forms: Vec<(String, String)>,
}

impl Secrets {
    /// `secrets` as is, percent-encoded (every byte but letters and digits, upper and
    /// lower case hex), and base64/base64url at each alignment.
    fn of<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let mut found = Secrets { forms: Vec::new() };
        for secret in secrets {
            let secret = secret.as_ref();
            let escaped = |upper: bool| -> String {
                secret
                    .bytes()
                    .map(|b| match (b.is_ascii_alphanumeric(), upper) {
                        (true, _) => (b as char).to_string(),
                        (false, true) => format!("%{b:02X}"),
                        (false, false) => format!("%{b:02x}"),
                    })
                    .collect()
            };
            let mut forms = vec![secret.to_string(), escaped(true), escaped(false)];
            for alphabet in [STANDARD, URL_SAFE] {
                for shift in 0..3 {
                    forms.push(base64_core(secret.as_bytes(), shift, alphabet));
                }
            }
            forms.sort();
            forms.dedup();
            found
                .forms
                .extend(forms.into_iter().map(|form| (secret.to_string(), form)));
        }
        found
    }

    /// The fixed secrets of this file.
    fn fixed() -> Self {
        Self::of(SECRETS)
    }

    /// These and the secured node's passwords (its tenants' and its superuser's).
    fn with_secure(mut self, kafka: &SecureKafka) -> Self {
        let more = Self::of([
            &kafka.tenant_a.password,
            &kafka.tenant_b.password,
            &kafka.admin.1,
        ]);
        self.forms.extend(more.forms);
        self
    }

    /// These and the MSK IAM tokens ebb signs with the known AWS keys and session token
    /// at any second from `from` to `to` (a second either side), as they are.
    fn with_msk_tokens(mut self, from: SystemTime, to: SystemTime) -> Self {
        let second = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let credentials = AwsCredentials {
            access_key_id: AWS_ACCESS_KEY_ID.into(),
            secret_access_key: AWS_SECRET.into(),
            session_token: Some(AWS_SESSION.into()),
        };
        let iam = MskIam::new(AWS_REGION);
        for s in second(from) - 1..=second(to) + 1 {
            let token = iam.token_with(&credentials, UNIX_EPOCH + Duration::from_secs(s));
            self.forms
                .push((format!("the MSK IAM token of second {s}"), token.token));
        }
        self
    }

    /// The first secret found in `text`, with the form it was found in.
    fn find(&self, text: &str) -> Option<&(String, String)> {
        self.forms.iter().find(|(_, form)| text.contains(form))
    }

    /// Panics naming the secret, its form, the place and the line if `text` holds one.
    fn assert_absent(&self, place: &str, text: &str) {
        if let Some((secret, form)) = self.find(text) {
            let line = text.lines().find(|l| l.contains(form)).unwrap_or_default();
            let line: String = line.chars().take(600).collect();
            panic!("{place} shows the secret {secret:?} (as {form:?}) in:\n{line}");
        }
    }

    /// Asserts that neither stream of `out` holds a secret.
    fn assert_output_clean(&self, place: &str, out: &Output) {
        self.assert_absent(
            &format!("{place} stdout"),
            &String::from_utf8_lossy(&out.stdout),
        );
        self.assert_absent(
            &format!("{place} stderr"),
            &String::from_utf8_lossy(&out.stderr),
        );
    }

    /// Asserts that no file under `dir` (logs, summaries, charts) holds a secret; how many
    /// files it read.
    fn assert_files_clean(&self, place: &str, dir: &Path) -> usize {
        let mut read = 0;
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                read += self.assert_files_clean(place, &path);
            } else {
                let bytes = std::fs::read(&path).expect("read a file");
                self.assert_absent(
                    &format!("{place} {}", path.display()),
                    &String::from_utf8_lossy(&bytes),
                );
                read += 1;
            }
        }
        read
    }
}

/// Panics naming the secret and the place if `text` holds any of the fixed secrets in any
/// form.
fn assert_no_secret(place: &str, text: &str) {
    Secrets::fixed().assert_absent(place, text);
}

fn assert_output_clean(place: &str, out: &Output) {
    Secrets::fixed().assert_output_clean(place, out);
}

#[test]
fn the_search_finds_a_secret_in_each_form() {
    let secrets = Secrets::of([AWS_SESSION]);
    assert!(secrets.find("token aws-session-c44e2b.").is_some());
    assert!(
        secrets
            .find("X-Amz-Security-Token=aws%2Dsession%2Dc44e2b&")
            .is_some()
    );
    assert!(secrets.find("aws%2dsession%2dc44e2b").is_some());
    // Encoded inside longer texts, at every alignment, with either alphabet.
    for prefix in ["", "a", "ab", "abc", "user:"] {
        let text = format!("{prefix}{AWS_SESSION}?>?>");
        for alphabet in [STANDARD, URL_SAFE] {
            let encoded = base64(text.as_bytes(), alphabet);
            assert!(
                secrets.find(&format!("Basic {encoded}=")).is_some(),
                "{prefix:?} {encoded}"
            );
        }
    }
    // The MSK IAM token ebb signs carries the session token in its base64url URL.
    let credentials = AwsCredentials {
        access_key_id: AWS_ACCESS_KEY_ID.into(),
        secret_access_key: AWS_SECRET.into(),
        session_token: Some(AWS_SESSION.into()),
    };
    let token = MskIam::new(AWS_REGION).token_with(&credentials, SystemTime::now());
    assert!(secrets.find(&token.token).is_some(), "{}", token.token);
    // The whole token too, when its second is searched for.
    let now = SystemTime::now();
    let token = MskIam::new(AWS_REGION).token_with(&credentials, now);
    let tokens = Secrets::of::<&str>([]).with_msk_tokens(now, now);
    assert!(tokens.find(&format!("token={}", token.token)).is_some());
    // Pieces are not the secret.
    assert!(secrets.find("aws-session c44e2b aws-sessio").is_none());
}

/// `ebb` at trace level with librdkafka's debug contexts all on and every secret in its
/// environment.
fn noisy() -> std::process::Command {
    let mut command = ebb();
    command
        .env("EBB_LOG", "trace")
        .env("KAFKA_SASL_PASSWORD", SASL_PASSWORD)
        .env("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY_ID)
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
/// secret (nor an MSK IAM token signed while it ran); its output.
fn fails_cleanly(place: &str, code: i32, command: &mut std::process::Command) -> Output {
    let started = SystemTime::now();
    let out = command.output().expect("run ebb");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{place}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Secrets::fixed()
        .with_msk_tokens(started, SystemTime::now())
        .assert_output_clean(place, &out);
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
    let msk_iam = ["AWS_MSK_IAM", "--aws-region", AWS_REGION];
    // SCRAM against the plaintext broker: the handshake fails.
    fails_cleanly("SCRAM", 1, &mut topic_list("sasl_plaintext", &scram));
    // MSK IAM: a token signed with the AWS keys and session token (searched for whole, and
    // the session token inside it), for a broker that does not speak TLS.
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

/// The flags of a successful SCRAM login to the secured node as `user`, with its password
/// on the command line or, with `password_file`, from that file.
fn scram_flags(
    kafka: &SecureKafka,
    mechanism: &str,
    (user, password): (&str, &str),
    password_file: Option<&Path>,
) -> Vec<String> {
    let mut flags = scram_login(kafka, mechanism, user, password);
    if let Some(file) = password_file {
        std::fs::write(file, format!("{password}\n")).expect("password file");
        let at = flags
            .iter()
            .position(|f| f == "--sasl-password")
            .expect("a password flag");
        flags.splice(
            at..at + 2,
            ["--sasl-password-file".into(), file.display().to_string()],
        );
    }
    flags.extend(["--kafka-timeout", "10s", "-X", "debug=all"].map(String::from));
    flags
}

/// `noisy()` for the secured node: its password comes from the flags (the fake one in the
/// environment would conflict with a password file).
fn noisy_secure() -> Command {
    let mut command = noisy();
    command.env_remove("KAFKA_SASL_PASSWORD");
    command
}

/// Runs `ebb ARGS FLAGS` to success and checks its output.
fn run_clean(secrets: &Secrets, args: &[&str], flags: &[String]) -> Output {
    let out = noisy_secure()
        .args(args)
        .args(flags)
        .output()
        .expect("run ebb");
    let place = format!("ebb {}", args[..2.min(args.len())].join(" "));
    assert!(
        out.status.success(),
        "{place} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secrets.assert_output_clean(&place, &out);
    out
}

/// A server's `/metrics`, checked; its text.
fn metrics_clean(secrets: &Secrets, name: &str, addr: &str) -> String {
    let (status, body) = http_get(&format!("http://{addr}/metrics")).expect("GET /metrics");
    assert_eq!(status, 200, "{name} /metrics");
    secrets.assert_absent(&format!("{name} /metrics"), &body);
    body
}

/// Stops a server with SIGTERM, asserts it exits 0, and checks its output.
fn stop_clean(secrets: &Secrets, name: &str, process: Running) {
    process.signal(libc::SIGTERM);
    let out = process.finish(Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    secrets.assert_output_clean(name, &out);
}

/// Every command that talks to Kafka, logged in successfully to the secured node as
/// tenant-b over `mechanism`, the password from a file or not, at trace level with
/// `debug=all`: no secret in any output.
fn secure_commands_show_no_secret(mechanism: &str, password_file: bool) {
    let kafka = secure_kafka();
    let tenant = &kafka.tenant_b;
    let secrets = Secrets::fixed().with_secure(&kafka);
    let file = password_file.then(|| temp_file("sasl-password"));
    let flags = scram_flags(
        &kafka,
        mechanism,
        (&tenant.user, &tenant.password),
        file.as_deref(),
    );
    let run = |args: &[&str]| run_clean(&secrets, args, &flags);
    // The flags right after the command's name (`ebb scale` passes what follows `--` to
    // its workers).
    let spawn = |args: &[&str]| {
        let mut command = noisy_secure();
        command.arg(args[0]).args(&flags).args(&args[1..]);
        Running::spawn(command)
    };
    let topic = unique(&format!("{}secrets", tenant.prefix()));
    let group = unique(&format!("{}secrets", tenant.prefix()));
    let table = unique("secure_secrets").replace('-', "_");
    run(&["topic", "create", &topic, "--partitions", "2"]);

    // The producer with a control token, the consumer into PostgreSQL through a URL with
    // a password (DATABASE_URL).
    let token_file = temp_file("control-token");
    std::fs::write(&token_file, format!("{CONTROL_TOKEN}\n")).expect("token file");
    let token = token_file.display().to_string();
    let mut producer = spawn(&[
        "produce",
        "--topic",
        &topic,
        "--rate",
        "300",
        "--metrics-addr",
        "127.0.0.1:0",
        "--control-token-file",
        &token,
    ]);
    let producer_addr = producer.address("--metrics-addr");
    let mut consumer = spawn(&[
        "consume",
        "--topic",
        &topic,
        "--group",
        &group,
        "--sink",
        "postgres",
        "--database-table",
        &table,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let consumer_addr = consumer.address("--metrics-addr");
    wait_until("rows written", Duration::from_secs(60), || {
        metric(&consumer_addr, "ebb_postgres_rows_written_total").is_some_and(|n| n >= 150.0)
    });
    metrics_clean(&secrets, "ebb produce", &producer_addr);
    metrics_clean(&secrets, "ebb consume", &consumer_addr);
    stop_clean(&secrets, "ebb produce", producer);
    stop_clean(&secrets, "ebb consume", consumer);

    // The audit with the URL from a file, the lag, and replays: planned, then applied.
    let url_file = temp_file("database-url");
    std::fs::write(&url_file, format!("{}\n", database_url())).expect("URL file");
    let audit = noisy_secure()
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL_FILE", &url_file)
        .args(["audit", "--topic", &topic, "--group", &group])
        .args(["--database-table", &table])
        .args(&flags)
        .output()
        .expect("run ebb audit");
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    secrets.assert_output_clean("ebb audit", &audit);
    run(&["lag", "--topic", &topic, "--group", &group]);
    let replay = ["replay", "--topic", &topic, "--group", &group];
    run(&[&replay[..], &["--to-offset", "earliest", "--dry-run"]].concat());
    run(&[&replay[..], &["--to-offset", "latest"]].concat());

    // The supervisor and its workers (the password reaches them through their
    // environment, or as the file), with a group of its own.
    let scale_group = unique(&format!("{}scale", tenant.prefix()));
    let worker_logs = temp_file("workers");
    let port_base = worker_port_base().to_string();
    let mut scale = spawn(&[
        "scale",
        "--topic",
        &topic,
        "--group",
        &scale_group,
        "--policy",
        "ebb-rate",
        "--capacity",
        "1000",
        "--interval",
        "1s",
        "--metrics-addr",
        "127.0.0.1:0",
        "--worker-port-base",
        &port_base,
        "--worker-log-dir",
        worker_logs.to_str().unwrap(),
        "--",
        "--sink",
        "sim",
    ]);
    let scale_addr = scale.address("--metrics-addr");
    wait_until(
        "the scaled workers to commit the whole topic",
        Duration::from_secs(60),
        || {
            let committed = metric(&scale_addr, "ebb_scale_committed_offsets");
            let end = metric(&scale_addr, "ebb_scale_log_end_offsets");
            matches!((committed, end), (Some(c), Some(e)) if e > 0.0 && c >= e)
        },
    );
    metrics_clean(&secrets, "ebb scale", &scale_addr);
    metrics_clean(
        &secrets,
        "ebb scale's first worker",
        &format!("127.0.0.1:{port_base}"),
    );
    stop_clean(&secrets, "ebb scale", scale);
    let logs = secrets.assert_files_clean("ebb scale's worker logs", &worker_logs);
    assert!(logs >= 1, "no worker log in {}", worker_logs.display());

    // ebb keda-scaler answering KEDA's own client.
    let mut scaler = spawn(&[
        "keda-scaler",
        "--addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let grpc = scaler.address("--addr");
    let http = scaler.address("--metrics-addr");
    let metadata = serde_json::json!({
        "topic": topic,
        "group": group,
        "capacityPerReplica": "100",
        "targetDrainSeconds": "60",
    });
    let out = Command::new(ebb_testkit::kube::tool("keda-extscaler-client"))
        .args(["--addr", &grpc, "--name", "secrets", "--namespace", "tests"])
        .args(["--metadata", &metadata.to_string()])
        .output()
        .expect("run keda-extscaler-client");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "KEDA's client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(answer["error"].is_null(), "KEDA's client: {answer}");
    let scraped = metrics_clean(&secrets, "ebb keda-scaler", &http);
    assert!(
        scraped.contains("method=\"GetMetrics\",code=\"Ok\""),
        "{scraped}"
    );
    stop_clean(&secrets, "ebb keda-scaler", scaler);
}

#[test]
fn secure_commands_with_scram_sha_512_and_the_password_as_a_flag_show_no_secret() {
    secure_commands_show_no_secret("SCRAM-SHA-512", false);
}

#[test]
fn secure_commands_with_scram_sha_256_and_a_password_file_show_no_secret() {
    secure_commands_show_no_secret("SCRAM-SHA-256", true);
}

/// The last 15 lines of a log that is not a known secret's.
fn last_lines(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    match Secrets::fixed().find(&tail) {
        Some((secret, _)) => format!("(not shown: it holds {secret:?})"),
        None => tail,
    }
}

/// `ebb demo` takes no database URL; it takes Kafka's settings, the password among them,
/// and hands them to its supervisor, producer and workers. On the secured node as its
/// superuser (the demo makes its own topic), at trace level with `debug=all`: no secret in
/// its output, its children's logs and files, or its dashboard's answers.
#[test]
fn the_demo_on_the_secured_node_shows_no_secret() {
    let _busy = one_busy_test_at_a_time();
    let kafka = secure_kafka();
    let secrets = Secrets::fixed().with_secure(&kafka);
    let flags = scram_flags(
        &kafka,
        "SCRAM-SHA-512",
        (&kafka.admin.0, &kafka.admin.1),
        None,
    );
    let out_dir = temp_file("demo");
    let base = free_port_base(100, (0..2).chain(100..112));
    let mut command = noisy_secure();
    command
        .args(["demo", "--profile", "100@3s", "--partitions", "2"])
        .args(["--drain-timeout", "15s", "--linger", "60s"])
        .args(["--dashboard-addr", "127.0.0.1:0"])
        .args(["--port-base", &base.to_string()])
        .arg("--out")
        .arg(&out_dir)
        .args(&flags);
    let mut demo = Running::spawn(command);
    let dashboard = demo.address("--dashboard-addr");
    // Its dashboard's answers once the run's summary is there (the demo lingers then).
    let get = |path: &str| -> Option<String> {
        http_get(&format!("http://{dashboard}{path}"))
            .filter(|(status, _)| *status == 200)
            .map(|(_, body)| body)
    };
    let started = Instant::now();
    let mut run = String::new();
    while !run.contains("\"produced\"") {
        let exited = demo.child.try_wait().expect("try_wait").is_some();
        assert!(
            !exited && started.elapsed() < Duration::from_secs(90),
            "no summary on the dashboard's /run.json; the demo's last lines:\n{}\nits supervisor's:\n{}",
            last_lines(&demo.stderr()),
            last_lines(&std::fs::read_to_string(out_dir.join("scale.log")).unwrap_or_default())
        );
        std::thread::sleep(Duration::from_millis(500));
        run = get("/run.json").unwrap_or_default();
    }
    for path in ["/", "/series.json", "/run.json"] {
        let body = get(path).unwrap_or_else(|| panic!("GET {path}"));
        secrets.assert_absent(&format!("the dashboard's {path}"), &body);
    }
    let summary: serde_json::Value = serde_json::from_str(&run).expect("/run.json is JSON");
    assert_eq!(summary["summary"]["lost"], 0, "{summary}");
    assert!(
        summary["summary"]["produced"].as_u64() > Some(0),
        "{summary}"
    );
    stop_clean(&secrets, "ebb demo", demo);
    let files = secrets.assert_files_clean("ebb demo's files", &out_dir);
    assert!(files >= 3, "the demo's logs in {}", out_dir.display());
}
