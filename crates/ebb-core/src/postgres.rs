//! The PostgreSQL table trades land in: its schema, the connection pool, the idempotent
//! batch insert the `postgres` sink uses, and the reads `ebb audit` makes.
//!
//! A row's identity is its record's (topic, partition, offset), the table's primary key.
//! A batch goes in as one statement (`INSERT ... SELECT FROM UNNEST(arrays) ON CONFLICT
//! DO NOTHING`): one round trip, and a batch replayed after a crash or a rebalance changes
//! nothing. Kafka delivers at least once; this makes the effect exactly once.
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

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;

use crate::trade::TradeRef;

/// What can go wrong with the database settings (bad usage) or the database itself.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// A setting is wrong; the text names it and says what to do.
    #[error("{0}")]
    Config(String),
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
#[derive(Debug, Clone)]
pub struct DatabaseOptions {
    /// `postgres://user:password@host:port/database` (or a key=value string).
    pub url: String,
    /// Table name, optionally schema-qualified (`schema.table`).
    pub table: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// How long opening a connection may take.
    pub connect_timeout: Duration,
    /// CA certificates (PEM) to verify the server's certificate and host name with (Amazon
    /// RDS's bundle, say); `None` encrypts without verifying, as libpq's `require` does.
    pub ssl_root_cert: Option<PathBuf>,
}

/// TLS for `sslmode=prefer` (the default: TLS when the server offers it) and `require`.
/// As with libpq, those modes encrypt without checking who answers; given `root_cert`,
/// the server's certificate must also chain to it and name the host connected to (what
/// libpq calls verify-full).
fn tls_connector(root_cert: Option<&PathBuf>) -> Result<MakeTlsConnector, DatabaseError> {
    let failed =
        |e: openssl::error::ErrorStack| DatabaseError::Config(format!("PostgreSQL TLS setup: {e}"));
    let mut builder = SslConnector::builder(SslMethod::tls()).map_err(failed)?;
    let verify = root_cert.is_some();
    match root_cert {
        Some(path) => builder.set_ca_file(path).map_err(|e| {
            DatabaseError::Config(format!(
                "--database-ssl-root-cert / EBB_DATABASE_SSL_ROOT_CERT: cannot load {}: {e}; \
                 give a PEM file of CA certificates",
                path.display()
            ))
        })?,
        None => builder.set_verify(SslVerifyMode::NONE),
    }
    let mut connector = MakeTlsConnector::new(builder.build());
    connector.set_callback(move |config, _| {
        config.set_verify_hostname(verify);
        Ok(())
    });
    Ok(connector)
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
            return Err(DatabaseError::Config(format!(
                "--database-table / EBB_DATABASE_TABLE: {name:?} is not a table name; use \
                 letters, digits and _ (optionally schema.table)"
            )));
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

/// The trades table and a pool of connections to its database.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    table: TableName,
    insert_sql: String,
}

impl Database {
    /// Checks the settings and builds the pool; connections open when first needed, so
    /// an unreachable database is not an error here.
    pub fn new(options: &DatabaseOptions) -> Result<Database, DatabaseError> {
        let table = TableName::parse(&options.table)?;
        let mut config = tokio_postgres::Config::from_str(&options.url).map_err(|e| {
            DatabaseError::Config(format!(
                "--database-url / DATABASE_URL: {e}; expected postgres://user:password@host:port/database"
            ))
        })?;
        if config.get_hosts().is_empty() {
            return Err(DatabaseError::Config(
                "--database-url / DATABASE_URL: no host; expected postgres://user@host:port/database"
                    .into(),
            ));
        }
        config.connect_timeout(options.connect_timeout);
        if options.pool_size == 0 {
            return Err(DatabaseError::Config(
                "--database-pool-size / EBB_DATABASE_POOL_SIZE must be at least 1".into(),
            ));
        }
        let manager_config = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = if config.get_ssl_mode() == SslMode::Disable {
            Manager::from_config(config, NoTls, manager_config())
        } else {
            let tls = tls_connector(options.ssl_root_cert.as_ref())?;
            Manager::from_config(config, tls, manager_config())
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| DatabaseError::Config(format!("PostgreSQL pool: {e}")))?;
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
        })
    }

    /// The table's name.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// Creates the table if it does not exist.
    pub async fn init(&self) -> Result<(), DatabaseError> {
        let client = self.pool.get().await?;
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
        let client = self.pool.get().await?;
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
        let client = self.pool.get().await?;
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
        let client = self.pool.get().await?;
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
    async fn bad_urls_name_the_setting() {
        for url in [
            "nonsense://",
            "postgres://u@h/db?sslmode=sometimes",
            "user=x",
        ] {
            match Database::new(&options(url)) {
                Err(DatabaseError::Config(text)) => {
                    assert!(text.contains("DATABASE_URL"), "{text}")
                }
                Err(e) => panic!("{url}: {e}"),
                Ok(_) => panic!("{url} accepted"),
            }
        }
        assert!(Database::new(&options("postgres://u@127.0.0.1:5/db")).is_ok());
        assert!(Database::new(&options("postgres://u@127.0.0.1:5/db?sslmode=require")).is_ok());
    }

    #[tokio::test]
    async fn a_missing_root_certificate_names_the_setting() {
        let mut options = options("postgres://u@127.0.0.1:5/db?sslmode=require");
        options.ssl_root_cert = Some("/nonexistent/ca.pem".into());
        match Database::new(&options) {
            Err(DatabaseError::Config(text)) => {
                assert!(text.contains("EBB_DATABASE_SSL_ROOT_CERT"), "{text}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    }
}
