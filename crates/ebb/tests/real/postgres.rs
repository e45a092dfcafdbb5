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

#[test]
fn tls_is_verified_against_the_given_ca_and_refused_against_another() {
    let url = format!("{}?sslmode=require", postgres());
    let table = table_name("tls");
    let ok = run(&[
        "db",
        "init",
        "--database-url",
        &url,
        "--database-ssl-root-cert",
        &cert(),
        "--database-table",
        &table,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(count(&postgres(), &table), 0, "the table exists, empty");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("PRIMARY KEY"));

    let wrong = run(&[
        "db",
        "init",
        "--database-url",
        &url,
        "--database-ssl-root-cert",
        "/etc/ssl/certs/ca-certificates.crt",
        "--database-table",
        &table,
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    let text = String::from_utf8_lossy(&wrong.stderr);
    assert!(text.contains("certificate verify failed"), "{text}");
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
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
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
