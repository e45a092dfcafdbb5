//! The PostgreSQL table trades land in: its schema, the connection pool, the idempotent
//! batch insert the `postgres` sink uses, and the reads `ebb audit` makes.
//!
//! A row's identity is its record's (topic, partition, offset), the table's primary key.
//! A batch goes in as one statement (`INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT
//! DO NOTHING`): one round trip, and a batch replayed after a crash or a rebalance changes
//! nothing. Kafka delivers at least once; this makes the effect exactly once.
//!
//! TLS follows libpq's `sslmode` and root certificate ([`TlsPolicy`]): the connection
//! string's `verify-ca` and `verify-full`, which tokio-postgres does not parse, are handed
//! to it as `require`, and the OpenSSL connector does the verifying.
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS trades (
//!     kafka_topic     text             NOT NULL,
//!     kafka_partition integer          NOT NULL,
//!     kafka_offset    bigint           NOT NULL,
//!     account_id      text             NOT NULL,  -- also the record key
//!     trade_id        text             NOT NULL,
//!     symbol          text             NOT NULL,
//!     trade_type      text             NOT NULL,  -- BUY or SELL
//!     quantity        integer          NOT NULL,
//!     price           double precision NOT NULL,
//!     traded_at       text             NOT NULL,  -- the trade's timestamp, as sent
//!     record_time_ms  bigint,                     -- the Kafka record's timestamp
//!     write_seq       bigint GENERATED ALWAYS AS IDENTITY,  -- order rows were written in
//!     written_at      timestamptz      NOT NULL DEFAULT now(),
//!     PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)
//! );
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::NoTls;

use crate::trade::TradeRef;

/// What can go wrong with the database settings (bad usage) or the database itself. The
/// texts are worded by concept (the database URL, the root certificate, the table); a
/// command line names its own flags for them. None quotes the connection string, which may
/// hold a password.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The connection string does not parse, or asks for something ebb does not do.
    #[error("database URL: {0}")]
    Url(String),
    /// The connection string carries libpq's `sslrootcert`, which ebb takes separately
    /// ([`DatabaseOptions::ssl_root_cert`]).
    #[error(
        "database URL: sslrootcert is not read from the URL; give the CA certificates (PEM) as the root certificate setting"
    )]
    RootCertInUrl,
    /// The root certificate file cannot be read or holds no PEM certificate.
    #[error("cannot load the CA certificates in {}: {reason}; give a PEM file of CA certificates", path.display())]
    RootCert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not a table name.
    #[error("{0:?} is not a table name; use letters, digits and _ (optionally schema.table)")]
    Table(String),
    /// A pool of no connections.
    #[error("the connection pool size must be at least 1, not {0}")]
    PoolSize(usize),
    /// OpenSSL could not set up TLS, or the pool could not be built.
    #[error("PostgreSQL client setup: {0}")]
    Setup(String),
    /// The server's TLS certificate failed the checks `policy` asks for.
    #[error(
        "PostgreSQL: the server's TLS certificate was refused at {server} ({reason}); {policy}"
    )]
    Untrusted {
        /// The host(s) and port(s) connected to, as the URL names them (no user or password).
        server: String,
        /// What was checked.
        policy: TlsPolicy,
        /// OpenSSL's verification result: `self-signed certificate`, `hostname mismatch`...
        reason: String,
    },
    /// The database could not be reached or refused a statement.
    #[error("PostgreSQL: {0}")]
    Unavailable(String),
}

impl From<deadpool_postgres::PoolError> for DatabaseError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            deadpool_postgres::PoolError::Timeout(_) => {
                DatabaseError::Unavailable("timed out connecting".into())
            }
            other => DatabaseError::Unavailable(other.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for DatabaseError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own message says more than the client's summary; for connection
        // failures the cause (refused, timed out, ...) is in the source chain.
        if let Some(db) = e.as_db_error() {
            return DatabaseError::Unavailable(db.message().to_string());
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // OpenSSL's errors repeat their whole stack at each level.
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        DatabaseError::Unavailable(text)
    }
}

/// Connection settings, as the user gives them.
#[derive(Clone)]
pub struct DatabaseOptions {
    /// `postgres://user:password@host:port/database` (or a key=value string); its
    /// `sslmode` is libpq's (see [`TlsMode`]).
    pub url: String,
    /// Table name, optionally schema-qualified (`schema.table`).
    pub table: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// CA certificates (PEM) to verify the server's certificate with (Amazon RDS's bundle,
    /// say), as libpq's `sslrootcert`; what is checked follows the sslmode ([`TlsPolicy`]).
    pub ssl_root_cert: Option<PathBuf>,
}

impl fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("DatabaseOptions")
            .field("url", &"<redacted>")
            .field("table", &self.table)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// libpq's `sslmode`, as ebb implements it (libpq's `allow` is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it (the default).
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate chains to a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl TlsMode {
    fn parse(value: &str) -> Result<TlsMode, DatabaseError> {
        match value {
            "disable" => Ok(TlsMode::Disable),
            "prefer" => Ok(TlsMode::Prefer),
            "require" => Ok(TlsMode::Require),
            "verify-ca" => Ok(TlsMode::VerifyCa),
            "verify-full" => Ok(TlsMode::VerifyFull),
            "allow" => Err(DatabaseError::Url(
                "sslmode=allow (no TLS unless the server insists) is not supported; use \
                 disable, prefer, require, verify-ca or verify-full"
                    .into(),
            )),
            _ => Err(DatabaseError::Url(
                "sslmode has a value ebb does not know; use disable, prefer, require, \
                 verify-ca or verify-full"
                    .into(),
            )),
        }
    }

    /// The value tokio-postgres understands: it knows nothing past `require`, and the
    /// verification is the TLS connector's.
    fn for_client(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => "require",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        })
    }
}

/// The CA certificates a server's certificate must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Those in this PEM file, and no others.
    File(PathBuf),
    /// OpenSSL's default store: `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the
    /// system's (`/etc/ssl/certs` on Debian).
    System,
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::File(path) => write!(f, "the CA certificates in {}", path.display()),
            Trust::System => f.write_str(
                "the system's CA certificates (SSL_CERT_FILE / SSL_CERT_DIR, else OpenSSL's default store)",
            ),
        }
    }
}

/// What TLS does with the server: libpq's rules for an sslmode and a root certificate.
///
/// | sslmode | no root certificate | root certificate |
/// |---|---|---|
/// | disable | no TLS | no TLS |
/// | prefer | TLS if offered, unverified | TLS if offered, chain checked |
/// | require | TLS, unverified | TLS, chain checked |
/// | verify-ca | TLS, chain checked against the system's CAs | TLS, chain checked |
/// | verify-full | TLS, chain and host name checked against the system's CAs | TLS, chain and host name checked |
///
/// Unlike libpq, `prefer` does not retry without TLS when the certificate is refused; it
/// connects without TLS only to a server that offers none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// The sslmode asked for.
    pub mode: TlsMode,
    /// What the server's certificate must chain to; `None`: not verified.
    pub trust: Option<Trust>,
    /// Whether the certificate must also name the host connected to.
    pub verify_host: bool,
}

impl TlsPolicy {
    /// libpq's rules (the table above).
    pub fn new(mode: TlsMode, root_cert: Option<&Path>) -> TlsPolicy {
        let file = root_cert.map(|path| Trust::File(path.to_path_buf()));
        let (trust, verify_host) = match mode {
            TlsMode::Disable => (None, false),
            TlsMode::Prefer | TlsMode::Require => (file, false),
            TlsMode::VerifyCa => (Some(file.unwrap_or(Trust::System)), false),
            TlsMode::VerifyFull => (Some(file.unwrap_or(Trust::System)), true),
        };
        TlsPolicy {
            mode,
            trust,
            verify_host,
        }
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tls = match self.mode {
            TlsMode::Disable => return f.write_str("sslmode=disable: no TLS"),
            TlsMode::Prefer => "TLS when the server offers it",
            _ => "TLS",
        };
        write!(f, "sslmode={}: {tls}", self.mode)?;
        match (&self.trust, self.verify_host) {
            (None, _) => f.write_str(", the server's certificate not verified"),
            (Some(trust), false) => write!(
                f,
                ", the server's certificate must chain to {trust} (its host name is not checked)"
            ),
            (Some(trust), true) => write!(
                f,
                ", the server's certificate must chain to {trust} and name the host connected to"
            ),
        }
    }
}

/// The options tokio-postgres 0.7 parses; another key in a connection string is refused
/// by name only when it is one of libpq's (an unknown word might be part of a password
/// that lost its quoting).
const CLIENT_KEYS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// libpq's connection parameters that ebb does not take from a connection string.
const LIBPQ_ONLY_KEYS: &[&str] = &[
    "passfile",
    "require_auth",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "requiressl",
    "gssencmode",
    "gsslib",
    "gssdelegation",
    "krbsrvname",
    "service",
    "client_encoding",
    "fallback_application_name",
    "replication",
];

/// Checks one key of a connection string.
fn check_key(key: &str) -> Result<(), DatabaseError> {
    if CLIENT_KEYS.contains(&key) {
        Ok(())
    } else if key == "sslrootcert" {
        Err(DatabaseError::RootCertInUrl)
    } else if LIBPQ_ONLY_KEYS.contains(&key) {
        Err(DatabaseError::Url(format!(
            "libpq's {key} is not supported by ebb's PostgreSQL client"
        )))
    } else {
        Err(DatabaseError::Url(
            "an option ebb does not know (not shown: it may be part of a password); \
             check the URL's query or key=value pairs"
                .into(),
        ))
    }
}

/// A connection string as tokio-postgres takes it, and the sslmode asked for: libpq's
/// `verify-ca` and `verify-full` become `require` (the TLS connector does the verifying),
/// the other values stay. The last sslmode wins, as in libpq; `prefer` when there is none.
/// Both forms are read: `postgres://...?sslmode=...` and `key=value ...`.
pub fn client_connection_string(url: &str) -> Result<(String, TlsMode), DatabaseError> {
    let rest = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| url.strip_prefix(prefix));
    match rest {
        Some(rest) => url_form(url, url.len() - rest.len()),
        None => key_value_form(url),
    }
}

/// The URL form: the query starts at the first `?` after the credentials (which end at the
/// first `@`, as tokio-postgres reads them).
fn url_form(url: &str, after_scheme: usize) -> Result<(String, TlsMode), DatabaseError> {
    let rest = &url[after_scheme..];
    let host_start = rest.find('@').map_or(0, |at| at + 1);
    let Some(question) = rest[host_start..].find('?') else {
        return Ok((url.to_string(), TlsMode::Prefer));
    };
    let query_start = after_scheme + host_start + question + 1;
    let mut out = url[..query_start].to_string();
    let mut mode = TlsMode::Prefer;
    for (i, param) in url[query_start..].split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let Some((key, value)) = param.split_once('=') else {
            // tokio-postgres refuses it ("unterminated parameter").
            out.push_str(param);
            continue;
        };
        let key = percent_encoding::percent_decode_str(key)
            .decode_utf8()
            .map_err(|_| DatabaseError::Url("a query key is not UTF-8".into()))?;
        check_key(&key)?;
        if key == "sslmode" {
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| DatabaseError::Url("sslmode is not UTF-8".into()))?;
            mode = TlsMode::parse(&value)?;
            out.push_str("sslmode=");
            out.push_str(mode.for_client());
        } else {
            out.push_str(param);
        }
    }
    Ok((out, mode))
}

/// The key=value form, read as tokio-postgres (and libpq) read it: keys and `=` with
/// optional spaces around it, values plain (backslash escapes) or in single quotes.
fn key_value_form(text: &str) -> Result<(String, TlsMode), DatabaseError> {
    let mut chars = text.char_indices().peekable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut mode = TlsMode::Prefer;
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(key_start, _)) = chars.peek() else {
            break;
        };
        while chars
            .next_if(|(_, c)| !c.is_whitespace() && *c != '=')
            .is_some()
        {}
        let key_end = chars.peek().map_or(text.len(), |&(i, _)| i);
        let key = &text[key_start..key_end];
        skip_ws(&mut chars);
        if key.is_empty() || chars.next_if(|(_, c)| *c == '=').is_none() {
            // Never quoted: a word out of place may be part of a password.
            return Err(DatabaseError::Url(format!(
                "expected key=value at byte {key_start} of the key=value connection string, \
                 or a postgres:// URL"
            )));
        }
        check_key(key)?;
        skip_ws(&mut chars);
        let value_start = chars.peek().map_or(text.len(), |&(i, _)| i);
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => value.extend(chars.next().map(|(_, c)| c)),
                    Some((_, c)) => value.push(c),
                    None => {
                        return Err(DatabaseError::Url(format!(
                            "the value of {key} has no closing quote"
                        )));
                    }
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next().map(|(_, c)| c));
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return Err(DatabaseError::Url(format!(
                    "{key} has no value; quote an empty one: {key}=''"
                )));
            }
        }
        if key == "sslmode" {
            let value_end = chars.peek().map_or(text.len(), |&(i, _)| i);
            mode = TlsMode::parse(&value)?;
            out.push_str(&text[copied..value_start]);
            out.push_str(mode.for_client());
            copied = value_end;
        }
    }
    out.push_str(&text[copied..]);
    Ok((out, mode))
}

/// The TLS connector for `policy`: no verification, OpenSSL's default store, or only the
/// CA certificates of the root certificate file; the host name checked or not.
fn tls_connector(policy: &TlsPolicy) -> Result<MakeTlsConnector, DatabaseError> {
    let failed = |e: openssl::error::ErrorStack| DatabaseError::Setup(format!("TLS: {e}"));
    // Verifies peers against OpenSSL's default paths, unless told otherwise below.
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(failed)?;
    match &policy.trust {
        None => builder.set_verify(SslVerifyMode::NONE),
        Some(Trust::System) => {}
        Some(Trust::File(path)) => builder.set_cert_store(ca_store(path)?),
    }
    let verify_host = policy.verify_host;
    let mut connector = MakeTlsConnector::new(builder.build());
    connector.set_callback(move |config, _| {
        config.set_verify_hostname(verify_host);
        Ok(())
    });
    Ok(connector)
}

/// A store of the CA certificates in the PEM file `path`, and no others.
fn ca_store(path: &Path) -> Result<openssl::x509::store::X509Store, DatabaseError> {
    let failed = |reason: String| DatabaseError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let certificates = X509::stack_from_pem(&pem).map_err(|e| failed(e.to_string()))?;
    if certificates.is_empty() {
        return Err(failed("it holds no PEM certificate".into()));
    }
    let mut store = X509StoreBuilder::new().map_err(|e| failed(e.to_string()))?;
    for certificate in certificates {
        store
            .add_cert(certificate)
            .map_err(|e| failed(e.to_string()))?;
    }
    Ok(store.build())
}

/// OpenSSL's reason when `error` is the server's certificate failing verification
/// (`self-signed certificate`, `hostname mismatch`, `certificate has expired`...).
fn certificate_refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    // postgres-openssl words its handshake error as "<OpenSSL's error>: <verify result>",
    // with OpenSSL's error as its source.
    let mut outer: Option<String> = None;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(ssl) = e.downcast_ref::<openssl::ssl::Error>() {
            let verify_failed = ssl.ssl_error().is_some_and(|stack| {
                stack
                    .errors()
                    .iter()
                    .any(|e| e.reason() == Some("certificate verify failed"))
            });
            if !verify_failed {
                return None;
            }
            let own = ssl.to_string();
            let detail = outer
                .as_deref()
                .and_then(|text| text.strip_prefix(own.as_str()))
                .map(|rest| rest.trim_start_matches(": ").trim().to_string())
                .filter(|rest| !rest.is_empty());
            return Some(detail.unwrap_or_else(|| "certificate verify failed".into()));
        }
        outer = Some(e.to_string());
        current = e.source();
    }
    None
}

/// A validated table name, quoted for use in SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    quoted: String,
    plain: String,
}

impl TableName {
    /// Accepts `name` or `schema.name`, each part letters, digits and `_`, not starting
    /// with a digit.
    pub fn parse(name: &str) -> Result<TableName, DatabaseError> {
        let parts: Vec<&str> = name.split('.').collect();
        let valid = |p: &&str| {
            !p.is_empty()
                && p.len() <= 63
                && !p.starts_with(|c: char| c.is_ascii_digit())
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if parts.len() > 2 || !parts.iter().all(valid) {
            return Err(DatabaseError::Table(name.to_string()));
        }
        Ok(TableName {
            quoted: parts
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join("."),
            plain: name.to_string(),
        })
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.plain
    }
}

/// One row as `ebb audit` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// The trade's id.
    pub trade_id: String,
    /// The account (and record key).
    pub account_id: String,
    /// Position in write order.
    pub write_seq: i64,
}

/// A trade to insert: a valid record and where it came from.
#[derive(Debug)]
pub struct TradeRow<'a> {
    /// Source offset.
    pub offset: i64,
    /// The record's timestamp, if it has one.
    pub record_time_ms: Option<i64>,
    /// The trade itself.
    pub trade: TradeRef<'a>,
}

/// `host:port` of each server a parsed configuration names, comma-separated (a port
/// given once applies to every host, as in libpq; 5432 when none is given).
fn server_names(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let host = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The trades table and a pool of connections to its database.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    table: TableName,
    insert_sql: String,
    tls: TlsPolicy,
    /// Where it connects, for errors: `host:port`, comma-separated when the URL has several.
    server: String,
}

impl Database {
    /// Checks the settings and builds the pool; connections open when first needed, so
    /// an unreachable database is not an error here.
    pub fn new(options: &DatabaseOptions) -> Result<Database, DatabaseError> {
        let table = TableName::parse(&options.table)?;
        let (url, mode) = client_connection_string(&options.url)?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            // tokio-postgres names options, not values; the one exception is a character
            // it did not expect, which might be a password's.
            let text = e.to_string();
            let text = text.split(" but got").next().unwrap_or(&text);
            DatabaseError::Url(text.to_string())
        })?;
        if config.get_hosts().is_empty() {
            return Err(DatabaseError::Url(
                "no host; expected postgres://user@host:port/database".into(),
            ));
        }
        let server = server_names(&config);
        config.connect_timeout(options.connect_timeout);
        if options.pool_size == 0 {
            return Err(DatabaseError::PoolSize(options.pool_size));
        }
        let tls = TlsPolicy::new(mode, options.ssl_root_cert.as_deref());
        let manager_config = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if mode == TlsMode::Disable {
            Manager::from_config(config, NoTls, manager_config())
        } else {
            Manager::from_config(config, tls_connector(&tls)?, manager_config())
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| DatabaseError::Setup(format!("connection pool: {e}")))?;
        let insert_sql = format!(
            "INSERT INTO {t} (kafka_topic, kafka_partition, kafka_offset, account_id, trade_id, \
             symbol, trade_type, quantity, price, traded_at, record_time_ms) \
             SELECT $1, $2, r.* FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], \
             $7::text[], $8::integer[], $9::float8[], $10::text[], $11::bigint[]) AS r \
             ORDER BY 3 \
             ON CONFLICT (kafka_topic, kafka_partition, kafka_offset) DO NOTHING",
            t = table.quoted
        );
        Ok(Database {
            pool,
            table,
            insert_sql,
            tls,
            server,
        })
    }

    /// What TLS does with the server.
    pub fn tls(&self) -> &TlsPolicy {
        &self.tls
    }

    /// A connection from the pool; a server certificate that fails verification is
    /// [`DatabaseError::Untrusted`].
    async fn client(&self) -> Result<deadpool_postgres::Object, DatabaseError> {
        self.pool.get().await.map_err(|e| {
            if let deadpool_postgres::PoolError::Backend(error) = &e
                && let Some(reason) = certificate_refusal(error)
            {
                return DatabaseError::Untrusted {
                    server: self.server.clone(),
                    policy: self.tls.clone(),
                    reason,
                };
            }
            e.into()
        })
    }

    /// The table's name.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Creates the table if it does not exist.
    pub async fn init(&self) -> Result<(), DatabaseError> {
        let client = self.client().await?;
        client.batch_execute(&self.create_sql()).await?;
        Ok(())
    }

    /// The `CREATE TABLE IF NOT EXISTS` statement for this table.
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (\n\
             \x20   kafka_topic     text             NOT NULL,\n\
             \x20   kafka_partition integer          NOT NULL,\n\
             \x20   kafka_offset    bigint           NOT NULL,\n\
             \x20   account_id      text             NOT NULL,\n\
             \x20   trade_id        text             NOT NULL,\n\
             \x20   symbol          text             NOT NULL,\n\
             \x20   trade_type      text             NOT NULL,\n\
             \x20   quantity        integer          NOT NULL,\n\
             \x20   price           double precision NOT NULL,\n\
             \x20   traded_at       text             NOT NULL,\n\
             \x20   record_time_ms  bigint,\n\
             \x20   write_seq       bigint GENERATED ALWAYS AS IDENTITY,\n\
             \x20   written_at      timestamptz      NOT NULL DEFAULT now(),\n\
             \x20   PRIMARY KEY (kafka_topic, kafka_partition, kafka_offset)\n\
             );",
            t = self.table.quoted
        )
    }

    /// Inserts one partition's batch in one statement; rows already there (a replayed
    /// batch) are left as they are. Returns how many rows were new.
    pub async fn insert(
        &self,
        topic: &str,
        partition: i32,
        rows: &[TradeRow<'_>],
    ) -> Result<u64, DatabaseError> {
        let offsets: Vec<i64> = rows.iter().map(|r| r.offset).collect();
        let accounts: Vec<&str> = rows.iter().map(|r| r.trade.account_id.as_ref()).collect();
        let trade_ids: Vec<&str> = rows.iter().map(|r| r.trade.trade_id.as_ref()).collect();
        let symbols: Vec<&str> = rows.iter().map(|r| r.trade.symbol.as_ref()).collect();
        let types: Vec<&str> = rows.iter().map(|r| r.trade.trade_type.as_ref()).collect();
        let quantities: Vec<i32> = rows
            .iter()
            .map(|r| i32::try_from(r.trade.quantity).unwrap_or(i32::MAX))
            .collect();
        let prices: Vec<f64> = rows.iter().map(|r| r.trade.price).collect();
        let times: Vec<&str> = rows.iter().map(|r| r.trade.timestamp.as_ref()).collect();
        let record_times: Vec<Option<i64>> = rows.iter().map(|r| r.record_time_ms).collect();
        let client = self.client().await?;
        let statement = client.prepare_cached(&self.insert_sql).await?;
        let inserted = client
            .execute(
                &statement,
                &[
                    &topic,
                    &partition,
                    &offsets,
                    &accounts,
                    &trade_ids,
                    &symbols,
                    &types,
                    &quantities,
                    &prices,
                    &times,
                    &record_times,
                ],
            )
            .await?;
        Ok(inserted)
    }

    /// Every row of `topic`, by partition and offset; none if the table does not exist
    /// (the sink creates it with its first batch).
    pub async fn rows(&self, topic: &str) -> Result<Vec<StoredRow>, DatabaseError> {
        let client = self.client().await?;
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.table.quoted])
            .await?
            .try_get(0)?;
        if !exists {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT kafka_partition, kafka_offset, trade_id, account_id, write_seq FROM {t} \
             WHERE kafka_topic = $1 ORDER BY kafka_partition, kafka_offset, write_seq",
            t = self.table.quoted
        );
        let rows = client.query(&sql, &[&topic]).await?;
        rows.iter()
            .map(|row| {
                Ok(StoredRow {
                    partition: row.try_get(0)?,
                    offset: row.try_get(1)?,
                    trade_id: row.try_get(2)?,
                    account_id: row.try_get(3)?,
                    write_seq: row.try_get(4)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(DatabaseError::from)
    }

    /// Whether a connection can be had and answers.
    pub async fn ping(&self) -> Result<(), DatabaseError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Pings the database every `every`, forever, and keeps `probes` not ready while it
    /// does not answer: a consumer with nothing to write still says its database is gone.
    pub async fn watch(self, probes: std::sync::Arc<crate::http::Probes>, every: Duration) {
        let mut down = false;
        loop {
            match tokio::time::timeout(every.max(Duration::from_secs(1)), self.ping()).await {
                Ok(Ok(())) if down => {
                    down = false;
                    probes.recovered();
                    tracing::info!("PostgreSQL answers again");
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) if !down => {
                    down = true;
                    probes.failed();
                    tracing::warn!("{e}; not ready until it answers");
                }
                Err(_) if !down => {
                    down = true;
                    probes.failed();
                    tracing::warn!("PostgreSQL does not answer; not ready until it does");
                }
                _ => {}
            }
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_server_without_the_credentials() {
        let names = |text: &str| server_names(&tokio_postgres::Config::from_str(text).unwrap());
        assert_eq!(
            names("postgres://u:pw@db.example:6000/ebb"),
            "db.example:6000"
        );
        assert_eq!(names("postgres://u:pw@db.example/ebb"), "db.example:5432");
        assert_eq!(names("host=a,b port=1,2 user=u password=pw"), "a:1,b:2");
        assert_eq!(names("host=a,b port=7 user=u"), "a:7,b:7");
    }

    #[test]
    fn table_names_are_checked_and_quoted() {
        assert_eq!(TableName::parse("trades").unwrap().quoted, "\"trades\"");
        assert_eq!(
            TableName::parse("ebb.trades_2").unwrap().quoted,
            "\"ebb\".\"trades_2\""
        );
        for bad in ["", "a.b.c", "1x", "tr ades", "x;drop", "t\"", "a."] {
            assert!(TableName::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn options(url: &str) -> DatabaseOptions {
        DatabaseOptions {
            url: url.into(),
            table: "trades".into(),
            pool_size: 2,
            connect_timeout: Duration::from_secs(1),
            ssl_root_cert: None,
        }
    }

    #[tokio::test]
    async fn bad_urls_are_url_errors_that_never_quote_the_password() {
        for url in [
            "nonsense://",
            "postgres://u:hunter2@h/db?sslmode=sometimes",
            "postgres://u:hunter2@h/db?sslmode=allow",
            "postgres://u@h/db?hunter2=x",
            "postgres://u@h/db?sslrootcert=/ca.pem",
            "postgres://u@h/db?sslcert=/c.pem",
            "user=x",
            "user=x password=hunter2 hunter2",
            "user=x password=hunter2 hunter2=x",
            "user=x password='hunter2",
            "host=h password=",
            "postgres://u:hunter2@[bad/db",
        ] {
            match Database::new(&options(url)) {
                Err(e @ (DatabaseError::Url(_) | DatabaseError::RootCertInUrl)) => {
                    let text = e.to_string();
                    assert!(text.starts_with("database URL: "), "{url}: {text}");
                    assert!(!text.contains("hunter2"), "{url}: {text}");
                }
                Err(e) => panic!("{url}: {e}"),
                Ok(_) => panic!("{url} accepted"),
            }
        }
        for url in [
            "postgres://u@127.0.0.1:5/db",
            "postgres://u@127.0.0.1:5/db?sslmode=require",
            "postgres://u@127.0.0.1:5/db?sslmode=verify-ca",
            "postgresql://u@127.0.0.1:5/db?connect_timeout=3&sslmode=verify-full",
            "host=127.0.0.1 port=5 user=u sslmode=verify-full",
        ] {
            assert!(Database::new(&options(url)).is_ok(), "{url}");
        }
    }

    #[test]
    fn verify_modes_become_require_for_the_client_and_are_remembered() {
        for (url, client, mode) in [
            ("postgres://h/db", "postgres://h/db", TlsMode::Prefer),
            (
                "postgres://u:p@h/db?sslmode=verify-full",
                "postgres://u:p@h/db?sslmode=require",
                TlsMode::VerifyFull,
            ),
            (
                "postgresql://h:5/db?application_name=x&sslmode=verify-ca&port=6",
                "postgresql://h:5/db?application_name=x&sslmode=require&port=6",
                TlsMode::VerifyCa,
            ),
            // Percent-encoded, and the last one wins as in libpq.
            (
                "postgres://h/db?sslmode=disable&ssl%6Dode=verify%2Dfull",
                "postgres://h/db?sslmode=disable&sslmode=require",
                TlsMode::VerifyFull,
            ),
            // A ? or & in the password is not the query.
            (
                "postgres://u:a?sslmode=x&b@h/db?sslmode=verify-full",
                "postgres://u:a?sslmode=x&b@h/db?sslmode=require",
                TlsMode::VerifyFull,
            ),
            (
                "postgres://h/db?sslmode=require",
                "postgres://h/db?sslmode=require",
                TlsMode::Require,
            ),
            (
                "host=h sslmode=verify-full user=u",
                "host=h sslmode=require user=u",
                TlsMode::VerifyFull,
            ),
            (
                "host=h  sslmode = 'verify-ca'  password='a b\\' sslmode=disable'",
                "host=h  sslmode = require  password='a b\\' sslmode=disable'",
                TlsMode::VerifyCa,
            ),
            (
                "sslmode=disable host=h",
                "sslmode=disable host=h",
                TlsMode::Disable,
            ),
            ("host=h", "host=h", TlsMode::Prefer),
        ] {
            let (translated, got) = client_connection_string(url).unwrap();
            assert_eq!((translated.as_str(), got), (client, mode), "{url}");
            assert!(
                tokio_postgres::Config::from_str(&translated).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn what_is_verified_follows_libpq() {
        let ca = Path::new("/ca.pem");
        let file = || Some(Trust::File(ca.into()));
        for (mode, root, trust, host) in [
            (TlsMode::Disable, Some(ca), None, false),
            (TlsMode::Prefer, None, None, false),
            (TlsMode::Require, None, None, false),
            (TlsMode::Prefer, Some(ca), file(), false),
            (TlsMode::Require, Some(ca), file(), false),
            (TlsMode::VerifyCa, None, Some(Trust::System), false),
            (TlsMode::VerifyCa, Some(ca), file(), false),
            (TlsMode::VerifyFull, None, Some(Trust::System), true),
            (TlsMode::VerifyFull, Some(ca), file(), true),
        ] {
            let policy = TlsPolicy::new(mode, root);
            assert_eq!(
                (policy.trust.clone(), policy.verify_host),
                (trust, host),
                "{mode} {root:?}"
            );
        }
        assert_eq!(
            TlsPolicy::new(TlsMode::VerifyFull, Some(ca)).to_string(),
            "sslmode=verify-full: TLS, the server's certificate must chain to the CA \
             certificates in /ca.pem and name the host connected to"
        );
        assert_eq!(
            TlsPolicy::new(TlsMode::Require, None).to_string(),
            "sslmode=require: TLS, the server's certificate not verified"
        );
    }

    #[test]
    fn the_url_never_shows_in_debug_output() {
        let shown = format!("{:?}", options("postgres://u:hunter2@h/db"));
        assert!(
            !shown.contains("hunter2") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn typed_settings_errors() {
        let mut bad = options("postgres://u@127.0.0.1:5/db");
        bad.table = "no such".into();
        assert!(matches!(Database::new(&bad), Err(DatabaseError::Table(t)) if t == "no such"));
        let mut bad = options("postgres://u@127.0.0.1:5/db");
        bad.pool_size = 0;
        assert!(matches!(
            Database::new(&bad),
            Err(DatabaseError::PoolSize(0))
        ));
    }

    #[tokio::test]
    async fn an_unusable_root_certificate_names_the_file() {
        let dir = std::env::temp_dir().join(format!("ebb-pg-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        for path in [PathBuf::from("/nonexistent/ca.pem"), not_pem.clone()] {
            let mut options = options("postgres://u@127.0.0.1:5/db?sslmode=verify-full");
            options.ssl_root_cert = Some(path.clone());
            match Database::new(&options) {
                Err(DatabaseError::RootCert { path: p, reason }) => {
                    assert_eq!(p, path);
                    assert!(!reason.is_empty());
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("{} accepted", path.display()),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
