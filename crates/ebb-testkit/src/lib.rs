//! Support for ebb's integration tests: a real Kafka broker and a real PostgreSQL server,
//! started on demand, and names no other test uses.
//!
//! Tests call [`kafka`] first. It starts the local broker through `scripts/kafka-local`
//! (or reuses one already answering) once per test process, and panics with the fix when
//! Java or Maven is missing. [`postgres`] does the same for the local PostgreSQL server
//! through `scripts/postgres-local`. Tests never skip: without them they fail.
//! [`secure_kafka`] starts the separate secured node (`scripts/kafka-local start --secure`:
//! SASL_SSL with SCRAM, mutual TLS, ACLs) and returns its addresses, CA and credentials.
//! [`kube`] has the Kubernetes tools and a real API server for the deploy tests.

pub mod kube;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The port of the test broker: `EBB_KAFKA_PORT`, or 9092.
pub fn kafka_port() -> u16 {
    std::env::var("EBB_KAFKA_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9092)
}

/// Makes sure the local broker runs and returns its bootstrap address.
pub fn kafka() -> String {
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED.get_or_init(start_kafka).clone()
}

fn start_kafka() -> String {
    need_broker_tools();
    local_service("kafka-local", "start");
    format!("127.0.0.1:{}", kafka_port())
}

/// Runs `scripts/<script> <command>` and panics with its output if it fails.
pub fn local_service(script: &str, command: &str) {
    script_output(script, &[command]);
}

/// Runs `scripts/<script> <args...>`; its standard output, or a panic with all its output.
fn script_output(script: &str, args: &[&str]) -> String {
    let path = repo_root().join("scripts").join(script);
    let output = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "`scripts/{script} {}` failed.\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// One tenant of the secure node: a SCRAM user and a client certificate with the same
/// principal (`User:<name>`), allowed everything on topics and groups prefixed `<name>.`.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The SCRAM user name, also the certificate's CN.
    pub user: String,
    /// The SCRAM password (throwaway).
    pub password: String,
    /// Client certificate (PEM) for mutual TLS.
    pub certificate: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl Tenant {
    /// The prefix of the topics and groups it may use: `<user>.`.
    pub fn prefix(&self) -> String {
        format!("{}.", self.user)
    }
}

/// The secure local node, as `scripts/kafka-local env --secure` describes it.
#[derive(Debug, Clone)]
pub struct SecureKafka {
    /// SASL_SSL bootstrap address (SCRAM-SHA-256 and SCRAM-SHA-512).
    pub sasl_ssl: String,
    /// SSL bootstrap address that requires a client certificate.
    pub mtls: String,
    /// The CA (PEM) that signed the broker's and the tenants' certificates.
    pub ca: PathBuf,
    /// An unrelated CA (PEM): verifying the broker with it must fail.
    pub other_ca: PathBuf,
    /// A client certificate and key with CN tenant-a signed by the unrelated CA.
    pub other_ca_client: (PathBuf, PathBuf),
    /// The superuser's SCRAM user and password.
    pub admin: (String, String),
    /// tenant-a.
    pub tenant_a: Tenant,
    /// tenant-b.
    pub tenant_b: Tenant,
}

impl SecureKafka {
    /// A librdkafka configuration for `tenant` over SASL_SSL with `mechanism`.
    pub fn sasl_config(&self, tenant: &Tenant, mechanism: &str) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config
            .set("bootstrap.servers", &self.sasl_ssl)
            .set("security.protocol", "sasl_ssl")
            .set("sasl.mechanism", mechanism)
            .set("sasl.username", &tenant.user)
            .set("sasl.password", &tenant.password)
            .set("ssl.ca.location", self.ca.display().to_string());
        config
    }
}

/// Makes sure the secure local node runs (`scripts/kafka-local start --secure`, port
/// `EBB_KAFKA_SECURE_PORT`, default 9192, and the next two) and returns its settings.
/// Panics with the fix when Java, Maven or openssl is missing.
pub fn secure_kafka() -> SecureKafka {
    static STARTED: OnceLock<SecureKafka> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            need_broker_tools();
            ensure_debian_packages(&["openssl"]);
            script_output("kafka-local", &["start", "--secure"]);
            let text = script_output("kafka-local", &["env", "--secure"]);
            let settings: std::collections::HashMap<&str, &str> =
                text.lines().filter_map(|l| l.split_once('=')).collect();
            let get = |key: &str| -> String {
                settings
                    .get(key)
                    .unwrap_or_else(|| {
                        panic!("`scripts/kafka-local env --secure` has no {key}:\n{text}")
                    })
                    .to_string()
            };
            let tenant = |name: &str| {
                let upper = name.to_uppercase().replace('-', "_");
                Tenant {
                    user: get(&format!("EBB_SECURE_{upper}_USER")),
                    password: get(&format!("EBB_SECURE_{upper}_PASSWORD")),
                    certificate: get(&format!("EBB_SECURE_{upper}_CERT")).into(),
                    key: get(&format!("EBB_SECURE_{upper}_KEY")).into(),
                }
            };
            SecureKafka {
                sasl_ssl: get("EBB_SECURE_SASL_SSL_BOOTSTRAP"),
                mtls: get("EBB_SECURE_MTLS_BOOTSTRAP"),
                ca: get("EBB_SECURE_CA").into(),
                other_ca: get("EBB_SECURE_OTHER_CA").into(),
                other_ca_client: (
                    get("EBB_SECURE_OTHER_CA_CLIENT_CERT").into(),
                    get("EBB_SECURE_OTHER_CA_CLIENT_KEY").into(),
                ),
                admin: (
                    get("EBB_SECURE_ADMIN_USER"),
                    get("EBB_SECURE_ADMIN_PASSWORD"),
                ),
                tenant_a: tenant("tenant-a"),
                tenant_b: tenant("tenant-b"),
            }
        })
        .clone()
}

/// Panics with the fix when a tool the local brokers need is missing.
fn need_broker_tools() {
    for (tool, fix) in [
        (
            "java",
            "install a JDK 17+ (Debian: apt-get install -y openjdk-17-jre-headless)",
        ),
        ("mvn", "install Maven (Debian: apt-get install -y maven)"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "integration tests need a local Kafka broker, which needs `{tool}`: {fix}"
        );
    }
}

/// Makes sure the local PostgreSQL server runs and returns its URL. Panics with the fix
/// when PostgreSQL is not installed.
pub fn postgres() -> String {
    static STARTED: OnceLock<String> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            ensure_debian_packages(&["postgresql", "openssl"]);
            local_service("postgres-local", "start");
            postgres_url()
        })
        .clone()
}

/// The local PostgreSQL server's URL (it may not be running).
pub fn postgres_url() -> String {
    let port = std::env::var("EBB_PG_PORT").unwrap_or_else(|_| "55432".into());
    format!("postgres://postgres@127.0.0.1:{port}/ebb")
}

/// Runs one SQL statement through `psql` and returns its unaligned output, trimmed.
pub fn psql(url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([url, "-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run psql ({e}); install it with: apt-get install -y postgresql-client")
        });
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A name no other test (in this run or an earlier one) uses: `prefix-<pid>-<n>-<time>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!(
        "{prefix}-{}-{n}-{}",
        std::process::id(),
        micros % 1_000_000_000
    )
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    /// Partition it was in.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value, if any.
    pub value: Option<Vec<u8>>,
    /// Its timestamp in milliseconds (create or log-append time, as the topic says).
    pub timestamp_ms: Option<i64>,
    /// Its headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReadRecord {
    /// The value of header `name` as text, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads every partition of `topic` from the beginning, with no consumer group, until
/// `idle` passes without a new record (or `limit` passes in all). Sorted by partition,
/// then offset.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    idle: std::time::Duration,
    limit: std::time::Duration,
) -> Vec<ReadRecord> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
    use std::time::{Duration, Instant};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("testkit-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("test reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let started = Instant::now();
    let mut last = Instant::now();
    let mut records = Vec::new();
    while last.elapsed() < idle && started.elapsed() < limit {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records.push(ReadRecord {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: m.timestamp().to_millis(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                last = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

/// A record to produce as is: key and value, either may be absent.
pub type RawRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Produces raw records (key, value; either may be absent) with another client than
/// ebb's, and waits for every acknowledgement.
pub fn produce_raw(bootstrap: &str, topic: &str, records: &[RawRecord<'_>]) {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    produce_raw_with(config, topic, records);
}

/// [`produce_raw`] with a client made from `config` (a secured cluster's settings).
pub fn produce_raw_with(mut config: rdkafka::ClientConfig, topic: &str, records: &[RawRecord<'_>]) {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::time::Duration;

    let producer: ThreadedProducer<DefaultProducerContext> = config
        .set("message.max.bytes", (8 * 1024 * 1024).to_string())
        .set("acks", "all")
        .create()
        .expect("raw producer");
    for (key, value) in records {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(key) = key {
            record = record.key(*key);
        }
        if let Some(value) = value {
            record = record.payload(*value);
        }
        producer
            .send(record)
            .map_err(|(e, _)| e)
            .expect("send raw record");
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush raw records");
}

/// Committed offsets of `group` for every partition of `topic` (absent: never committed).
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
) -> std::collections::HashMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use std::time::Duration;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in 0..metadata.topics()[0].partitions().len() as i32 {
        tpl.add_partition(topic, p);
    }
    let committed = retry_while_coordinator_loads("committed offsets", || {
        consumer.committed_offsets(tpl.clone(), Duration::from_secs(10))
    });
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Installs the Debian packages among `packages` that are missing, with apt-get (as root, or
/// through `sudo -n`), printing what it installs; panics with the command to run when it
/// cannot. A new machine has neither Chromium nor (on some) PostgreSQL.
pub fn ensure_debian_packages(packages: &[&str]) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let fix = format!("apt-get install -y {}", missing.join(" "));
    eprintln!(
        "testkit: installing missing Debian packages: {}",
        missing.join(" ")
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "apt-get"]);
            sudo
        };
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = apt(&["update", "-qq"])
        && apt(&[
            &["install", "-y", "-qq", "--no-install-recommends"][..],
            &missing[..],
        ]
        .concat());
    assert!(
        installed,
        "the tests need the Debian packages {missing:?} and could not install them; run: {fix}"
    );
}

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago: for a port that must be
/// closed, or for a server that cannot report the port it got (ebb's own servers are
/// started on port 0 and log theirs; see `Running::address` in the ebb tests). Another
/// process may take it in between.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A group as its coordinator describes it, and a topic's offsets, read over one client.
pub struct GroupWatch {
    consumer: rdkafka::consumer::BaseConsumer,
    group: String,
    topic: String,
    partitions: i32,
}

impl GroupWatch {
    /// Watches `group` on `topic` (which has `partitions` partitions); never joins it.
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Self {
        let consumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .create()
            .expect("group watcher");
        GroupWatch {
            consumer,
            group: group.into(),
            topic: topic.into(),
            partitions,
        }
    }

    /// The group's state ("Stable", "PreparingRebalance", ...) and member count.
    ///
    pub fn state(&self) -> (String, usize) {
        use rdkafka::consumer::Consumer;
        let list = retry_while_coordinator_loads(&format!("describe group {}", self.group), || {
            self.consumer
                .fetch_group_list(Some(&self.group), std::time::Duration::from_secs(10))
        });
        list.groups().first().map_or(("Dead".into(), 0), |g| {
            (g.state().into(), g.members().len())
        })
    }

    /// (committed, log end) per partition; committed is -1 where never committed.
    pub fn offsets(&self) -> std::collections::BTreeMap<i32, (i64, i64)> {
        use rdkafka::consumer::Consumer;
        use rdkafka::{Offset, TopicPartitionList};
        let timeout = std::time::Duration::from_secs(10);
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let committed = retry_while_coordinator_loads("committed offsets", || {
            self.consumer.committed_offsets(tpl.clone(), timeout)
        });
        committed
            .elements()
            .iter()
            .map(|e| {
                let c = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                };
                let (_, end) = self
                    .consumer
                    .fetch_watermarks(&self.topic, e.partition(), timeout)
                    .expect("watermarks");
                (e.partition(), (c, end))
            })
            .collect()
    }
}

/// Runs a group-coordinator request, trying again for up to 30 s while the coordinator
/// answers that it is loading or moving (as it does right after the broker starts); any
/// other error, or one that outlasts that, fails the test naming `what`.
fn retry_while_coordinator_loads<T>(
    what: &str,
    mut request: impl FnMut() -> rdkafka::error::KafkaResult<T>,
) -> T {
    use rdkafka::types::RDKafkaErrorCode::*;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match request() {
            Ok(answer) => return answer,
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(CoordinatorLoadInProgress | CoordinatorNotAvailable | NotCoordinator)
                    ) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Produces `count` small records into each listed partition of `topic` (`(partition,
/// count)`), with another client than ebb's, and waits for every acknowledgement: a topic
/// whose log-end offsets are known exactly.
pub fn produce_to_partitions(bootstrap: &str, topic: &str, counts: &[(i32, usize)]) {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::time::Duration;

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("partition producer");
    for &(partition, count) in counts {
        for n in 0..count {
            let payload = n.to_string();
            let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
                .partition(partition)
                .payload(payload.as_bytes());
            producer
                .send(record)
                .map_err(|(e, _)| e)
                .expect("send record");
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("flush records");
}

/// Commits `offsets` (`(partition, offset)`) on `topic` for `group` as a simple consumer
/// (no membership; the group must have no members), at any position, past the log end
/// included.
pub fn commit_offsets(bootstrap: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("offset committer");
    let mut tpl = TopicPartitionList::new();
    for &(partition, offset) in offsets {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("offset to commit");
    }
    retry_while_coordinator_loads(&format!("commit offsets of {group}"), || {
        consumer.commit(&tpl, CommitMode::Sync)
    });
}

/// Deletes the records of `topic` below the given offsets (`(partition, offset)`) with the
/// admin API (DeleteRecords), so each partition's log start moves there.
pub fn delete_records(bootstrap: &str, topic: &str, before: &[(i32, i64)]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    use std::time::Duration;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut tpl = TopicPartitionList::new();
    for &(partition, offset) in before {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
            .expect("offset to delete before");
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let result = block_on(admin.delete_records(&tpl, &options))
        .unwrap_or_else(|e| panic!("delete records of {topic}: {e}"));
    for e in result.elements() {
        if let Err(err) = e.error() {
            panic!(
                "delete records of {topic} partition {}: {err}",
                e.partition()
            );
        }
    }
}

/// (log start, log end) of every partition of `topic`, in partition order: the offsets
/// ListOffsets gives for earliest and latest.
pub fn watermarks(bootstrap: &str, topic: &str) -> Vec<(i64, i64)> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use std::time::Duration;

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("watermark reader");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, timeout)
                .unwrap_or_else(|e| panic!("watermarks of {topic} partition {p}: {e}"))
        })
        .collect()
}

/// Runs a future to completion on this thread (rdkafka's admin futures are completed by
/// its own polling thread, so no runtime is needed).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
