//! The postgres sink against the local PostgreSQL server: TLS, replays that change nothing,
//! and settings errors.

use crate::common::*;

/// The local server's self-signed certificate (asked of the script once).
fn cert() -> String {
    static CERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CERT.get_or_init(|| {
        postgres();
        let script = ebb_testkit::repo_root().join("scripts/postgres-local");
        let out = std::process::Command::new(script)
            .arg("cert")
            .output()
            .expect("postgres-local cert");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
    .clone()
}

fn table_name(prefix: &str) -> String {
    format!("t_{}", unique(prefix).replace('-', "_"))
}

fn count(url: &str, table: &str) -> i64 {
    psql(url, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .expect("count")
}

/// A CA of its own, made with openssl: one that did not sign the local server's certificate.
fn other_ca() -> std::path::PathBuf {
    let cert = temp_file("other-ca.pem");
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=ebb test: another CA", "-keyout"])
        .arg(cert.with_file_name("other-ca.key"))
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

/// `ebb db init` with `url` (and `extra` arguments) and `env`; the system's CA store is
/// the default one unless `env` says otherwise.
fn db_init(url: &str, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = ebb();
    command
        .args(["db", "init", "--database-url", url])
        .args(["--database-table", &table_name("tls")])
        .args(extra)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .envs(env.iter().copied());
    command.output().expect("run ebb")
}

/// libpq's sslmodes against the local server's self-signed certificate (for 127.0.0.1 and
/// localhost): what each verifies, and one line naming the settings when it refuses. The
/// URL carries a password (the server trusts loopback), which no error may show.
#[test]
fn each_sslmode_verifies_what_libpq_says() {
    const PASSWORD: &str = "pg-tls-password-x7";
    let base = postgres().replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let port = base
        .rsplit(':')
        .next()
        .and_then(|tail| tail.split('/').next())
        .expect("port")
        .to_string();
    let url = |mode: &str| format!("{base}?sslmode={mode}");
    // Connects to 127.0.0.1 but names a host the certificate does not hold.
    let other_host = |mode: &str| {
        format!(
            "postgres://postgres@not-in-cert.invalid:{port}/ebb?hostaddr=127.0.0.1&sslmode={mode}"
        )
    };
    let (ca, other) = (cert(), other_ca());
    let other = other.to_str().expect("path");
    let passes = |what: &str, out: std::process::Output| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {stderr}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("PRIMARY KEY"),
            "{what}"
        );
    };
    let refused = |what: &str, out: std::process::Output, reason: &str, policy: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        for needle in [
            "the server's TLS certificate was refused at ",
            reason,
            policy,
            "--database-ssl-root-cert / EBB_DATABASE_SSL_ROOT_CERT",
        ] {
            assert!(
                stderr.contains(needle),
                "{what}: no {needle:?} in: {stderr}"
            );
        }
        assert!(!stderr.contains(PASSWORD), "{what}: {stderr}");
    };
    let root = ["--database-ssl-root-cert", ca.as_str()];

    passes(
        "verify-full, the right CA",
        db_init(&url("verify-full"), &root, &[]),
    );
    let key_value = format!(
        "host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=ebb sslmode=verify-full"
    );
    passes("verify-full, key=value", db_init(&key_value, &root, &[]));
    refused(
        "verify-full, another CA",
        db_init(
            &url("verify-full"),
            &["--database-ssl-root-cert", other],
            &[],
        ),
        "self-signed certificate",
        &format!(
            "sslmode=verify-full: TLS, the server's certificate must chain to the CA certificates in {other} and name the host"
        ),
    );
    refused(
        "verify-full, a host name the certificate lacks",
        db_init(&other_host("verify-full"), &root, &[]),
        // The host connected to, named, and OpenSSL's reason.
        &format!("at not-in-cert.invalid:{port} (hostname mismatch)"),
        "sslmode=verify-full",
    );
    passes(
        "verify-ca checks no host name",
        db_init(&other_host("verify-ca"), &root, &[]),
    );
    refused(
        "verify-ca, the system's CAs",
        db_init(&url("verify-ca"), &[], &[]),
        "self-signed certificate",
        "sslmode=verify-ca: TLS, the server's certificate must chain to the system's CA certificates",
    );
    // The system's store is OpenSSL's default one, which SSL_CERT_FILE replaces.
    passes(
        "verify-ca, SSL_CERT_FILE",
        db_init(&url("verify-ca"), &[], &[("SSL_CERT_FILE", &ca)]),
    );
    // libpq's rule: a root certificate makes require (and prefer) check the chain.
    refused(
        "require, another CA",
        db_init(&url("require"), &["--database-ssl-root-cert", other], &[]),
        "self-signed certificate",
        "sslmode=require",
    );
    refused(
        "prefer, another CA",
        db_init(&url("prefer"), &["--database-ssl-root-cert", other], &[]),
        "self-signed certificate",
        "sslmode=prefer",
    );
    passes(
        "require, the right CA",
        db_init(&url("require"), &root, &[]),
    );
    // Without one they encrypt and check nothing, as libpq's do.
    passes("require, no CA", db_init(&url("require"), &[], &[]));
    passes(
        "require, another host",
        db_init(&other_host("require"), &[], &[]),
    );
}

#[test]
fn a_replayed_topic_changes_nothing_in_the_table() {
    let url = format!("{}?sslmode=require", postgres());
    let topic = create_topic("pg-replay", 4);
    produce(&topic, 3000, "20000");
    let table = table_name("replay");
    // Runs a consumer to its idle stop; returns its rows written and replayed, as its
    // metrics last said.
    let consume = |group: &str| {
        let mut command = ebb();
        command
            .args(["consume", "--topic", &topic, "--group", group])
            .args(["--sink", "postgres", "--database-url", &url])
            .args([
                "--database-ssl-root-cert",
                &cert(),
                "--database-table",
                &table,
            ])
            .args(["--stop-after-idle", "3s", "--metrics-addr", "127.0.0.1:0"]);
        let mut consumer = Running::spawn(command);
        let addr = consumer.address("--metrics-addr");
        let mut seen = (0.0, 0.0);
        let started = std::time::Instant::now();
        while consumer.child.try_wait().expect("try_wait").is_none() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "no idle stop"
            );
            if let (Some(written), Some(replayed)) = (
                metric(&addr, "ebb_postgres_rows_written_total"),
                metric(&addr, "ebb_postgres_rows_replayed_total"),
            ) {
                seen = (written, replayed);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let out = consumer.finish(std::time::Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        // It says what TLS checks: require with a root certificate, the chain only.
        assert!(
            stderr.contains(&format!(
                "(sslmode=require: TLS, the server's certificate must chain to the CA \
                 certificates in {} (its host name is not checked))",
                cert()
            )),
            "{stderr}"
        );
        seen
    };
    let first = unique("pg-replay-a");
    assert_eq!(consume(&first), (3000.0, 0.0), "first pass: every row new");
    assert_eq!(count(&postgres(), &table), 3000);
    let last_write: i64 = psql(&postgres(), &format!("SELECT max(write_seq) FROM {table}"))
        .parse()
        .expect("write_seq");

    // A second group reads the same records again: what a crash before a commit does.
    let second = unique("pg-replay-b");
    assert_eq!(
        consume(&second),
        (0.0, 3000.0),
        "second pass: every row a replay"
    );
    assert_eq!(count(&postgres(), &table), 3000, "replayed rows were added");
    let unchanged: i64 = psql(
        &postgres(),
        &format!("SELECT count(*) FROM {table} WHERE write_seq <= {last_write}"),
    )
    .parse()
    .expect("count");
    assert_eq!(unchanged, 3000, "replayed rows were rewritten");

    for group in [&first, &second] {
        let report = audit_passes(
            &topic,
            group,
            &url,
            &table,
            &["--database-ssl-root-cert", &cert()],
        );
        assert_eq!(report["totals"]["checked"], 3000);
        assert_eq!(report["totals"]["stored"], 3000);
    }
}

#[test]
fn database_settings_errors_exit_2_and_name_the_setting() {
    let topic = unique("pg-config");
    for (args, setting) in [
        (vec!["--sink", "postgres"], "DATABASE_URL"),
        (
            vec!["--sink", "postgres", "--database-url", "nonsense://x"],
            "DATABASE_URL",
        ),
        (
            vec![
                "--sink",
                "postgres",
                "--database-url",
                "postgres://u@127.0.0.1/db?sslmode=allow",
            ],
            "--database-url / DATABASE_URL: sslmode=allow",
        ),
        (
            vec![
                "--sink",
                "postgres",
                "--database-url",
                "postgres://u@127.0.0.1/db?sslrootcert=/ca.pem",
            ],
            "sslrootcert is not read from the URL; give the CA certificates with --database-ssl-root-cert",
        ),
        (
            vec![
                "--sink",
                "postgres",
                "--database-url",
                "postgres://u@127.0.0.1/db",
                "--database-table",
                "no such table",
            ],
            "EBB_DATABASE_TABLE",
        ),
        (
            vec![
                "--sink",
                "postgres",
                "--database-url",
                "postgres://u@127.0.0.1/db",
                "--database-ssl-root-cert",
                "/nonexistent.pem",
            ],
            "EBB_DATABASE_SSL_ROOT_CERT",
        ),
    ] {
        let out = ebb()
            .args([
                "consume",
                "--topic",
                &topic,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(&args)
            .output()
            .expect("run ebb");
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(setting), "{args:?}: {text}");
    }
    // Reaching for a server that is not there is a runtime failure, not a usage error.
    let out = run(&[
        "db",
        "init",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/ebb",
        "--database-connect-timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
