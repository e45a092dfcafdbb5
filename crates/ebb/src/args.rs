//! Options shared by several subcommands, and the parsers for their values.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use ebb_core::KafkaOptions;
use ebb_core::admin::AdminError;
use ebb_core::kafka::{SecurityProtocol, SettingError, parse_property};
use ebb_core::postgres::DatabaseError;

/// A mistake in the command line or configuration: ebb exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// How to reach Kafka. Its `Debug` output never shows the SASL password.
#[derive(Args, Clone)]
#[command(next_help_heading = "Kafka connection")]
pub struct KafkaArgs {
    /// Brokers to bootstrap from, host:port[,host:port...].
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,

    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", default_value = "plaintext",
          value_parser = parse_security_protocol)]
    pub security_protocol: SecurityProtocol,

    /// SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, or AWS_MSK_IAM (Amazon MSK's IAM
    /// authentication: a SigV4-signed OAUTHBEARER token from AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or EKS Pod Identity; needs sasl_ssl and
    /// --aws-region).
    #[arg(long, env = "KAFKA_SASL_MECHANISM")]
    pub sasl_mechanism: Option<String>,

    /// AWS region of the MSK cluster, for AWS_MSK_IAM.
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// SASL user name.
    #[arg(
        long,
        env = "KAFKA_SASL_USERNAME",
        conflicts_with = "sasl_username_file"
    )]
    pub sasl_username: Option<String>,

    /// File holding the SASL user name (a key of the Kubernetes Secret that holds the
    /// password, mounted as a file), instead of --sasl-username; a trailing newline is
    /// ignored. Default: none.
    #[arg(long, env = "KAFKA_SASL_USERNAME_FILE")]
    pub sasl_username_file: Option<PathBuf>,

    /// SASL password. Prefer --sasl-password-file: a value on the command line shows in
    /// the process list.
    #[arg(
        long,
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true,
        conflicts_with = "sasl_password_file"
    )]
    pub sasl_password: Option<String>,

    /// File holding the SASL password (a Kubernetes Secret mounted as a file); a trailing
    /// newline is ignored. Default: none.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub sasl_password_file: Option<PathBuf>,

    /// CA certificates (PEM) to verify the brokers with; the system store when unset. The
    /// brokers' certificates are always verified, host name included (librdkafka's
    /// defaults; -X enable.ssl.certificate.verification=false turns that off).
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,

    /// Client certificate (PEM) for mutual TLS (security protocol ssl or sasl_ssl).
    /// Default: none, no client certificate.
    #[arg(
        long,
        env = "KAFKA_SSL_CERTIFICATE_LOCATION",
        requires = "ssl_key_location"
    )]
    pub ssl_certificate_location: Option<String>,

    /// Private key (PEM) of --ssl-certificate-location. Default: none.
    #[arg(
        long,
        env = "KAFKA_SSL_KEY_LOCATION",
        requires = "ssl_certificate_location"
    )]
    pub ssl_key_location: Option<String>,

    /// How long a request to Kafka (metadata, admin) may take before ebb gives up.
    #[arg(long, env = "KAFKA_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kafka_timeout: Duration,

    /// Extra librdkafka property, key=value; repeatable; applied last. In the environment,
    /// one property per line (how `ebb scale` and `ebb demo` hand theirs to their children,
    /// so no value shows on a command line). Default: none.
    #[arg(short = 'X', long = "kafka-property", value_name = "KEY=VALUE",
          env = "EBB_KAFKA_PROPERTIES", hide_env_values = true, value_delimiter = '\n',
          value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The library's Debug, which leaves the password (and -X values) out.
        let mut options = self.unchecked_options();
        options.sasl_password = self.sasl_password.as_ref().map(|_| String::new());
        f.debug_struct("KafkaArgs")
            .field("options", &options)
            .field("sasl_username_file", &self.sasl_username_file)
            .field("sasl_password_file", &self.sasl_password_file)
            .finish()
    }
}

impl KafkaArgs {
    /// The library's view of these options, checked: a bad combination is a usage error,
    /// and so is a password file that cannot be read.
    pub fn options(&self) -> Result<KafkaOptions, UsageError> {
        let mut options = self.unchecked_options();
        if let Some(path) = &self.sasl_username_file {
            options.sasl_username = Some(read_secret_file(
                path,
                "the SASL user name",
                "--sasl-username-file / KAFKA_SASL_USERNAME_FILE",
            )?);
        }
        if let Some(path) = &self.sasl_password_file {
            options.sasl_password = Some(read_password_file(path)?);
        }
        options
            .validate()
            .map_err(|e| UsageError(kafka_setting_message(&e)))?;
        Ok(options)
    }

    fn unchecked_options(&self) -> KafkaOptions {
        KafkaOptions {
            bootstrap_servers: self.bootstrap_servers.clone(),
            security_protocol: self.security_protocol,
            sasl_mechanism: self.sasl_mechanism.clone(),
            aws_region: self.aws_region.clone(),
            sasl_username: self.sasl_username.clone(),
            sasl_password: self.sasl_password.clone(),
            ssl_ca_location: self.ssl_ca_location.clone(),
            ssl_certificate_location: self.ssl_certificate_location.clone(),
            ssl_key_location: self.ssl_key_location.clone(),
            request_timeout: self.kafka_timeout,
            extra: self.kafka_properties.clone(),
        }
    }
}

/// The SASL password in `path`, without the trailing newline an editor or `echo` leaves;
/// the error names the file and the flag, never the content.
fn read_password_file(path: &Path) -> Result<String, UsageError> {
    read_secret_file(
        path,
        "the SASL password",
        "--sasl-password-file / KAFKA_SASL_PASSWORD_FILE",
    )
}

/// A secret kept in a file (a Kubernetes Secret mounted as one), without one trailing
/// newline; errors name the file and the setting, never the content.
fn read_secret_file(path: &Path, what: &str, setting: &str) -> Result<String, UsageError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read {what} from {} ({setting}): {e}",
            path.display()
        ))
    })?;
    let secret = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if secret.is_empty() {
        return Err(UsageError(format!(
            "{what} file {} ({setting}) is empty",
            path.display()
        )));
    }
    Ok(secret.to_string())
}

fn parse_security_protocol(text: &str) -> Result<SecurityProtocol, SettingError> {
    text.parse()
}

/// A Kafka setting's error worded with the flags and variables that set it.
fn kafka_setting_message(error: &SettingError) -> String {
    match error {
        SettingError::MskIamWithoutRegion => {
            "--sasl-mechanism AWS_MSK_IAM needs --aws-region (AWS_REGION)".into()
        }
        SettingError::MskIamWithoutSaslSsl(protocol) => format!(
            "--sasl-mechanism AWS_MSK_IAM needs --security-protocol sasl_ssl \
             (KAFKA_SECURITY_PROTOCOL), not {protocol}"
        ),
        SettingError::BadProperty(key, reason) => {
            format!("-X / --kafka-property {key}: {reason}")
        }
        other => other.to_string(),
    }
}

/// What the command line adds to a Kafka error: the flag or command that deals with it.
pub fn admin_error_hint(error: &AdminError) -> Option<String> {
    match error {
        AdminError::Unreachable(_) => Some(
            "the brokers are set with --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS, the \
             security with --security-protocol, --sasl-mechanism and -X"
                .into(),
        ),
        AdminError::TopicExists(_) => Some("pass --if-not-exists to accept that".into()),
        AdminError::UnknownTopic(topic) => Some(format!(
            "create it with: ebb topic create {topic} --partitions N"
        )),
        AdminError::Rejected { .. } => Some(
            "the security is set with --security-protocol, --sasl-mechanism, \
             --sasl-username, --sasl-password-file, --ssl-ca-location, \
             --ssl-certificate-location and --ssl-key-location"
                .into(),
        ),
        AdminError::Denied { .. } => Some(
            "ask the cluster's operator for an ACL, or use a resource this principal may use"
                .into(),
        ),
        AdminError::Auth(_) => {
            Some("MSK IAM is chosen with --sasl-mechanism AWS_MSK_IAM and --aws-region".into())
        }
        _ => None,
    }
}

/// The dead-letter topic from `--dead-letter-topic`: `none` for none, `<topic>.dlq` when
/// unset.
pub fn dead_letter_topic(given: Option<&str>, topic: &str) -> Result<Option<String>, UsageError> {
    match given {
        Some("none") => Ok(None),
        Some("") => Err(UsageError(
            "--dead-letter-topic / EBB_DEAD_LETTER_TOPIC is empty; give a topic or `none`".into(),
        )),
        Some(name) => Ok(Some(name.to_string())),
        None => Ok(Some(format!("{topic}.dlq"))),
    }
}

/// A duration with a unit (`100ms`, `30s`, `5m`) or a plain number of seconds (`0.1`), so
/// the reference's `*_SECONDS` variables keep working.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds)
            .map_err(|_| format!("\"{text}\" is not a duration ≥ 0"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("\"{text}\" is not a duration ({e}); use e.g. 0.1, 100ms, 30s, 5m"))
}

/// A `--summary-file` path, checked when the command starts rather than when it exits
/// (after a run that may have lasted hours): it names a file, in a directory that exists.
pub fn parse_summary_file(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if path.file_name().is_none() {
        return Err(format!(
            "\"{text}\" names no file; give a path such as out/summary.json"
        ));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "directory {} does not exist; create it or choose another path",
            dir.display()
        ));
    }
    Ok(path)
}

/// Writes what a command did, as one JSON object, to `path` (its `--summary-file`)
/// atomically: into a temporary file beside it, then renamed over it, so that a reader sees
/// the whole object or none, never half of one.
pub fn write_summary_file(path: &Path, summary: &serde_json::Value) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("--summary-file {} names no file", path.display()))?;
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = path.with_file_name(temporary);
    let text = serde_json::to_string_pretty(summary)? + "\n";
    std::fs::write(&temporary, text).with_context(|| {
        format!(
            "cannot write the summary file {} (through {})",
            path.display(),
            temporary.display()
        )
    })?;
    if let Err(e) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(e).with_context(|| {
            format!(
                "cannot write the summary file {} (renaming {} over it)",
                path.display(),
                temporary.display()
            )
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_files_are_checked_up_front_and_written_whole() {
        let dir = std::env::temp_dir().join(format!("ebb-args-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.json");
        assert_eq!(parse_summary_file(path.to_str().unwrap()), Ok(path.clone()));
        assert!(
            parse_summary_file("here.json").is_ok(),
            "the working directory"
        );
        let missing = parse_summary_file(dir.join("no/run.json").to_str().unwrap()).unwrap_err();
        assert!(
            missing.contains("no") && missing.contains("does not exist"),
            "{missing}"
        );
        assert!(
            parse_summary_file("/")
                .unwrap_err()
                .contains("names no file")
        );

        write_summary_file(&path, &serde_json::json!({"processed": 3})).unwrap();
        write_summary_file(&path, &serde_json::json!({"processed": 5})).unwrap();
        let read: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(read["processed"], 5);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        let error = write_summary_file(&dir.join("gone/run.json"), &read).unwrap_err();
        assert!(
            format!("{error:#}").contains("gone/run.json"),
            "names the file: {error:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn password_files_lose_one_trailing_newline_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("ebb-password-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        for (content, expected) in [
            ("s3cret\n", "s3cret"),
            ("s3cret\r\n", "s3cret"),
            ("a b", "a b"),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_password_file(&path).unwrap(), expected);
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(
            read_password_file(&path)
                .unwrap_err()
                .0
                .contains("is empty")
        );
        let missing = read_password_file(&dir.join("absent")).unwrap_err().0;
        assert!(
            missing.contains("absent") && missing.contains("--sasl-password-file"),
            "{missing}"
        );

        // The user name, from a file the same way (the chart mounts both keys).
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            kafka: KafkaArgs,
        }
        let user = dir.join("username");
        std::fs::write(&user, "tenant-a\n").unwrap();
        let cli =
            Cli::try_parse_from(["ebb", "--sasl-username-file", user.to_str().unwrap()]).unwrap();
        let options = cli.kafka.options().unwrap();
        assert_eq!(options.sasl_username.as_deref(), Some("tenant-a"));
        let absent = dir.join("no-user");
        let cli =
            Cli::try_parse_from(["ebb", "--sasl-username-file", absent.to_str().unwrap()]).unwrap();
        let error = cli.kafka.options().unwrap_err().0;
        assert!(
            error.contains("no-user") && error.contains("KAFKA_SASL_USERNAME_FILE"),
            "{error}"
        );
        assert!(
            Cli::try_parse_from(["ebb", "--sasl-username", "a", "--sasl-username-file", "/f"])
                .is_err(),
            "both refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            kafka: KafkaArgs,
        }
        let cli = Cli::try_parse_from([
            "ebb",
            "--sasl-password",
            "hunter2-secret",
            "-X",
            "ssl.key.password=other-secret",
        ])
        .unwrap();
        let shown = format!("{cli:?} {:?}", cli.kafka.options().unwrap());
        assert!(
            !shown.contains("hunter2") && !shown.contains("other-secret"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn database_errors_name_their_flag_and_variable() {
        let url = "--database-url-file / DATABASE_URL_FILE";
        for (error, flag) in [
            (DatabaseError::Url("no host".into()), url),
            (DatabaseError::RootCertInUrl, "--database-ssl-root-cert"),
            (
                DatabaseError::RootCert {
                    path: "/x.pem".into(),
                    reason: "absent".into(),
                },
                "--database-ssl-root-cert / EBB_DATABASE_SSL_ROOT_CERT: cannot load /x.pem",
            ),
            (
                DatabaseError::Table("a b".into()),
                "--database-table / EBB_DATABASE_TABLE",
            ),
            (
                DatabaseError::PoolSize(0),
                "--database-pool-size / EBB_DATABASE_POOL_SIZE",
            ),
        ] {
            let text = database_setting_message(&error, url);
            assert!(text.contains(flag), "{text}");
        }
        let untrusted = DatabaseError::Untrusted {
            server: "db.example:5432".into(),
            policy: ebb_core::postgres::TlsPolicy::new(
                ebb_core::postgres::TlsMode::VerifyFull,
                None,
            ),
            reason: "self-signed certificate".into(),
        };
        assert!(
            database_error_hint(&untrusted)
                .is_some_and(|hint| hint.contains("EBB_DATABASE_SSL_ROOT_CERT"))
        );
    }

    #[test]
    fn durations_in_seconds_or_with_units() {
        assert_eq!(parse_duration("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("100ms"));
    }
}

/// How to reach the PostgreSQL database of the `postgres` sink and of `ebb audit`. No
/// `Debug`: the URL may hold a password.
#[derive(Args, Clone)]
#[command(next_help_heading = "PostgreSQL")]
pub struct DatabaseArgs {
    /// Connection URL, postgres://user:password@host:port/database[?sslmode=MODE], or
    /// libpq's key=value form. TLS follows libpq's sslmode: disable; prefer (the default:
    /// TLS when the server offers it); require (TLS); verify-ca (TLS, and the server's
    /// certificate must chain to --database-ssl-root-cert, or to the system's CAs without
    /// it); verify-full (as verify-ca, and the certificate must name the host).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// A file holding the connection URL (a Kubernetes Secret mounted as a file; one
    /// trailing newline ignored), instead of --database-url. Default: none.
    #[arg(long, env = "DATABASE_URL_FILE", conflicts_with = "database_url")]
    pub database_url_file: Option<std::path::PathBuf>,

    /// CA certificates (PEM) the server's TLS certificate must chain to, e.g. Amazon RDS's
    /// bundle (libpq's sslrootcert); only these are trusted. Given, sslmode prefer and
    /// require check the chain too (as libpq does); the host name is checked only with
    /// verify-full. Default: none: prefer and require encrypt without checking the server,
    /// verify-ca and verify-full use the system's CAs (SSL_CERT_FILE / SSL_CERT_DIR). For a
    /// database reached over a network, use sslmode=verify-full.
    #[arg(long, env = "EBB_DATABASE_SSL_ROOT_CERT")]
    pub database_ssl_root_cert: Option<std::path::PathBuf>,

    /// Table the trades go in, optionally schema.table; created if it does not exist.
    #[arg(long, env = "EBB_DATABASE_TABLE", default_value = "trades")]
    pub database_table: String,

    /// Most connections open at once.
    #[arg(long, env = "EBB_DATABASE_POOL_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub database_pool_size: u32,

    /// How long opening a connection may take.
    #[arg(long, env = "EBB_DATABASE_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub database_connect_timeout: Duration,

    /// How often the postgres sink checks that the database answers; /readyz is 503 while
    /// it does not.
    #[arg(long, env = "EBB_DATABASE_CHECK_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub database_check_interval: Duration,
}

impl DatabaseArgs {
    /// The database, or a usage error naming the setting.
    pub fn database(&self) -> Result<ebb_core::postgres::Database, UsageError> {
        if self.database_check_interval.is_zero() {
            return Err(UsageError(
                "--database-check-interval / EBB_DATABASE_CHECK_INTERVAL must be > 0".into(),
            ));
        }
        let url = match (&self.database_url, &self.database_url_file) {
            (Some(url), _) => url.clone(),
            (None, Some(path)) => read_secret_file(
                path,
                "the database URL",
                "--database-url-file / DATABASE_URL_FILE",
            )?
            .trim()
            .to_string(),
            (None, None) => {
                return Err(UsageError(
                    "--database-url / DATABASE_URL (or --database-url-file / DATABASE_URL_FILE) is required (postgres://user:password@host:port/database)"
                        .into(),
                ));
            }
        };
        let url_setting = if self.database_url.is_some() {
            "--database-url / DATABASE_URL"
        } else {
            "--database-url-file / DATABASE_URL_FILE"
        };
        ebb_core::postgres::Database::new(&ebb_core::postgres::DatabaseOptions {
            url,
            table: self.database_table.clone(),
            pool_size: self.database_pool_size as usize,
            connect_timeout: self.database_connect_timeout,
            ssl_root_cert: self.database_ssl_root_cert.clone(),
        })
        .map_err(|e| UsageError(database_setting_message(&e, url_setting)))
    }
}

/// A database settings error worded with the flags and variables that set it; the URL
/// itself is never quoted (it may hold a password).
fn database_setting_message(error: &DatabaseError, url_setting: &str) -> String {
    match error {
        DatabaseError::Url(reason) => format!(
            "{url_setting}: {reason}; expected postgres://user:password@host:port/database[?sslmode=...]"
        ),
        DatabaseError::RootCertInUrl => format!(
            "{url_setting}: sslrootcert is not read from the URL; give the CA certificates \
             with --database-ssl-root-cert / EBB_DATABASE_SSL_ROOT_CERT"
        ),
        DatabaseError::RootCert { path, reason } => format!(
            "--database-ssl-root-cert / EBB_DATABASE_SSL_ROOT_CERT: cannot load {}: {reason}; \
             give a PEM file of CA certificates",
            path.display()
        ),
        DatabaseError::Table(name) => format!(
            "--database-table / EBB_DATABASE_TABLE: {name:?} is not a table name; use \
             letters, digits and _ (optionally schema.table)"
        ),
        DatabaseError::PoolSize(size) => {
            format!("--database-pool-size / EBB_DATABASE_POOL_SIZE must be at least 1, not {size}")
        }
        other => other.to_string(),
    }
}

/// What the command line adds to a database error: the settings that decide it.
pub fn database_error_hint(error: &DatabaseError) -> Option<String> {
    match error {
        DatabaseError::Untrusted { .. } => Some(
            "the CA certificates are set with --database-ssl-root-cert / \
             EBB_DATABASE_SSL_ROOT_CERT, the checks with the sslmode of the database URL: \
             verify-full checks chain and host name, verify-ca the chain only"
                .into(),
        ),
        _ => None,
    }
}
