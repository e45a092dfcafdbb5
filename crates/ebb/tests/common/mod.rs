//! Helpers for tests that drive the `ebb` binary against the local broker.
#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod pipeline;

pub use ebb_testkit::{
    RawRecord, committed_offsets, free_port, kafka, local_service, postgres, produce_raw, psql,
    read_topic, unique, watermarks,
};

/// `ebb` with a clean environment for its settings, pointed at the test broker.
pub fn ebb() -> Command {
    let mut command = ebb_unconfigured();
    command.env("KAFKA_BOOTSTRAP_SERVERS", kafka());
    command
}

/// `ebb` with none of the caller's settings in its environment, not even the broker (for
/// tests that give every setting as a flag).
pub fn ebb_unconfigured() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ebb"));
    for (key, _) in std::env::vars() {
        if key.starts_with("KAFKA_")
            || key.starts_with("EBB_")
            || key.starts_with("BATCH_")
            || key == "CONSUMER_GROUP"
            || key == "MESSAGES_PER_SECOND"
            || key == "MESSAGE_PROCESSING_TIME"
            || key == "DATABASE_URL"
            || key == "DATABASE_URL_FILE"
        {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `ebb` to completion.
pub fn run(args: &[&str]) -> Output {
    ebb().args(args).output().expect("run ebb")
}

/// Creates a topic through `ebb topic create`.
pub fn create_topic(prefix: &str, partitions: u32) -> String {
    let name = unique(prefix);
    let out = run(&[
        "topic",
        "create",
        &name,
        "--partitions",
        &partitions.to_string(),
    ]);
    assert!(
        out.status.success(),
        "topic create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    name
}

/// Produces exactly `count` trades through `ebb produce`.
pub fn produce(topic: &str, count: u64, rate: &str) {
    let out = run(&[
        "produce",
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--rate",
        rate,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    assert!(
        out.status.success(),
        "produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `ebb produce` in the background.
pub fn spawn_producer(topic: &str, rate: &str) -> Process {
    Process::spawn(
        ebb()
            .args([
                "produce",
                "--topic",
                topic,
                "--rate",
                rate,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// `ebb consume --topic TOPIC --group GROUP`, for the caller to add its sink and settings.
pub fn consume_command(topic: &str, group: &str) -> Command {
    let mut command = ebb();
    command.args(["consume", "--topic", topic, "--group", group]);
    command
}

/// `ebb consume` as a member of a group under churn: the file sink writing to `file`
/// after `sink_delay` per batch of `batch_size`, commits every 200 ms, heartbeats every
/// 300 ms, no dead-letter topic, metrics on a port of its own; the caller adds the rest.
pub fn churn_member_command(
    topic: &str,
    group: &str,
    file: &Path,
    sink_delay: &str,
    batch_size: &str,
) -> Command {
    let mut command = consume_command(topic, group);
    command
        .args(["--sink", "file", "--sink-file"])
        .arg(file)
        .args(["--sink-delay", sink_delay, "--batch-size", batch_size])
        .args([
            "--commit-interval",
            "200ms",
            "--heartbeat-interval",
            "300ms",
        ])
        .args([
            "--dead-letter-topic",
            "none",
            "--metrics-addr",
            "127.0.0.1:0",
        ]);
    command
}

/// Starts `ebb consume` with the file sink writing to `file`.
pub fn spawn_consumer(topic: &str, group: &str, file: &Path, extra: &[&str]) -> Process {
    Process::spawn(
        consume_command(topic, group)
            .args(["--sink", "file", "--sink-file"])
            .arg(file)
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// Starts `ebb consume` with the sim sink, no dead-letter topic and its metrics on a port
/// of its own; returns it and the metrics address.
pub fn spawn_consumer_with_metrics(topic: &str, group: &str, extra: &[&str]) -> (Running, String) {
    let mut command = consume_command(topic, group);
    command
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--dead-letter-topic",
            "none",
        ])
        .args(extra);
    let mut consumer = Running::spawn(command);
    let addr = consumer.address("--metrics-addr");
    (consumer, addr)
}

/// Held for the whole run of a test that keeps the machine's two cores busy (a dozen
/// members and a spinning thread, the demo's workers and a browser) or whose checks need
/// the broker to answer promptly: such tests take turns, while the tests that mostly wait
/// run beside them.
pub fn one_busy_test_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static BUSY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    BUSY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process killed when dropped, so a failing test leaves nothing running behind
/// it: the real tier's tests share one process and one machine.
pub struct Process(Option<Child>);

impl Process {
    /// Starts `command`; panics naming it if it cannot.
    pub fn spawn(command: &mut Command) -> Process {
        match command.spawn() {
            Ok(child) => Process(Some(child)),
            Err(e) => panic!("cannot start {command:?}: {e}"),
        }
    }
}

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("a process is taken only by into()")
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("a process is taken only by into()")
    }
}

/// The child, no longer killed on drop (for `finish`, which waits for it).
impl From<Process> for Child {
    fn from(mut process: Process) -> Child {
        process.0.take().expect("a process is taken only once")
    }
}

/// SIGTERM first, so an `ebb scale` or `ebb demo` stops the workers it started (a kill
/// would leave them running); SIGKILL after 10 s.
impl Drop for Process {
    fn drop(&mut self) {
        let Some(child) = &mut self.0 else { return };
        if matches!(child.try_wait(), Ok(None)) {
            signal(child, libc::SIGTERM);
            let asked = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && asked.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A running `ebb` whose standard error goes to a file, so that the addresses it logs
/// (`Listening on http://ADDR (SETTING)`) can be read while it runs: servers are started
/// on port 0 and tell which port they got, so no two tests race for one.
pub struct Running {
    pub child: Process,
    stderr: PathBuf,
}

impl Running {
    /// Starts `command` with stdout piped and stderr to a fresh file.
    pub fn spawn(mut command: Command) -> Running {
        let stderr = temp_file("stderr.log");
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let child = Process::spawn(command.stdout(Stdio::piped()).stderr(file));
        Running { child, stderr }
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The `host:port` it listens on for `setting` (as in `--metrics-addr`), once it says
    /// so; panics with its stderr if it exits first or takes over 30 s.
    pub fn address(&mut self, setting: &str) -> String {
        let started = Instant::now();
        loop {
            let log = self.stderr();
            if let Some(addr) = listening_address(&log, setting) {
                return addr;
            }
            let exited = self.child.try_wait().expect("try_wait").is_some();
            assert!(
                !exited && started.elapsed() < Duration::from_secs(30),
                "no \"Listening on ... ({setting}\" line; stderr:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal_number: i32) {
        signal(&self.child, signal_number);
    }

    /// Waits for it to exit (killing it after `limit`); its output, stderr included. If it
    /// has to be killed, the panic shows the end of its log (its stderr goes to a file).
    pub fn finish(self, limit: Duration) -> Output {
        let log = self.stderr.clone();
        let waited =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(self.child, limit)));
        let stderr = std::fs::read(&log).unwrap_or_default();
        match waited {
            Ok(mut out) => {
                out.stderr = stderr;
                out
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&stderr);
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                panic!("process did not exit within {limit:?}; the end of its log:\n{tail}")
            }
        }
    }
}

/// The `host:port` of the first `Listening on SCHEME://ADDR (SETTING ...)` line of an ebb
/// log whose setting starts with `setting` (as `--metrics-addr`).
pub fn listening_address(log: &str, setting: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let rest = line.split("Listening on ").nth(1)?;
        let (url, named) = rest.split_once(" (")?;
        let addr = url.split_once("://").map_or(url, |(_, addr)| addr);
        named.starts_with(setting).then(|| addr.to_string())
    })
}

/// A running `ebb keda-scaler`, gRPC and HTTP on ports of its own, ready; stopped on drop
/// (its last log lines printed if the test is failing).
pub struct ScalerProcess {
    pub process: Running,
    /// gRPC `host:port`.
    pub grpc: String,
    /// `/metrics`, `/readyz` `host:port`.
    pub http: String,
}

impl ScalerProcess {
    pub fn start(extra: &[&str]) -> Self {
        let mut command = ebb();
        command
            .args(["keda-scaler", "--addr", "127.0.0.1:0"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra);
        let mut process = Running::spawn(command);
        let grpc = process.address("--addr");
        let http = process.address("--metrics-addr");
        wait_until(
            "ebb keda-scaler to be ready",
            Duration::from_secs(20),
            || http_get(&format!("http://{http}/readyz")).is_some_and(|(status, _)| status == 200),
        );
        ScalerProcess {
            process,
            grpc,
            http,
        }
    }

    /// Its `/metrics` text (empty if it does not answer).
    pub fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.http)).map_or_else(String::new, |(_, b)| b)
    }

    /// The sample of `series` (name and labels, exactly as exported), 0 when absent.
    pub fn sample(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for ScalerProcess {
    fn drop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        if std::thread::panicking() {
            let text = self.process.stderr();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- ebb keda-scaler's last lines:\n{}",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
    }
}

/// A GET of one of ebb's endpoints: status and body, `None` if it does not answer in 2 s.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    ebb_core::http::get(url, None, Duration::from_secs(2)).ok()
}

/// `ebb audit --json` of `group` on `topic` against `table` (plus `extra` flags); its
/// report, after asserting that the audit passed.
pub fn audit_passes(
    topic: &str,
    group: &str,
    url: &str,
    table: &str,
    extra: &[&str],
) -> serde_json::Value {
    let mut command = ebb();
    command
        .args(["audit", "--topic", topic, "--group", group, "--json"])
        .args(["--database-url", url, "--database-table", table])
        .args(extra);
    let out = command.output().expect("run ebb audit");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit printed no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success() && report["ok"] == true,
        "audit failed: {report:#}"
    );
    report
}

/// A base for `ebb scale`'s worker ports, ending in 0, with the ten ports from it free
/// now (the supervisor gives worker N port base + N - 1 itself, so this stays a chosen
/// range rather than port 0; pgrep finds the workers by it).
pub fn worker_port_base() -> u16 {
    free_port_base(10, 0..10)
}

/// A port base, a multiple of `round` and at least 20,000, with every port at the
/// `offsets` from it free now: for commands that take a range of ports rather than port 0.
pub fn free_port_base(round: u16, offsets: impl Iterator<Item = u16> + Clone) -> u16 {
    loop {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let base = (probe.local_addr().expect("port").port() / round).max(20_000 / round) * round;
        drop(probe);
        let free = offsets.clone().all(|offset| {
            base.checked_add(offset)
                .is_some_and(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        });
        if free {
            return base;
        }
    }
}

/// Sends `signal` to a child.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) with a pid we own; no memory is involved.
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0, "kill({}, {signal})", child.id());
}

/// Waits for a child to exit, killing it after `limit`; returns its output.
pub fn finish(child: impl Into<Child>, limit: Duration) -> Output {
    let mut child = child.into();
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "process did not exit within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fresh path in a fresh temporary directory.
pub fn temp_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("ebb-test"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// A short scenario `ebb tune` searches in seconds: 20 minutes of traffic, 20 partitions.
pub const SMALL_SCENARIO: &str = r#"
name: small
traffic: "200@5m,800@10m,0@5m"
partitions: 20
sla: 120s
service: {capacity: 100, podStartDelay: 10s, rebalancePause: 5s}
scaledObject:
  spec:
    maxReplicaCount: 20
    triggers: [{type: kafka, metadata: {lagThreshold: "1000"}}]
"#;

/// (partition, offset) of every line of a file-sink output, in file order.
pub fn sink_lines(path: &Path) -> Vec<(i32, i64)> {
    sink_records(path)
        .into_iter()
        .map(|(partition, offset, _)| (partition, offset))
        .collect()
}

/// `(partition, offset, key)` of every whole line of a file sink's output, in file order.
pub fn sink_records(path: &Path) -> Vec<(i32, i64, Option<String>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    // A writer may be in the middle of a line (or was killed there): only whole lines count.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("sink line is JSON");
            (
                v["partition"].as_i64().unwrap() as i32,
                v["offset"].as_i64().unwrap(),
                v["key"].as_str().map(String::from),
            )
        })
        .collect()
}

/// Places in a file sink's output where a key's record is written for the first time after
/// a later record of the same key (and partition) was: a key whose order was broken.
/// Records written again (replayed after a crash or a move) are not first writes, so they
/// break nothing.
pub fn key_order_violations(path: &Path) -> Vec<String> {
    let mut written: std::collections::HashSet<(i32, i64)> = Default::default();
    let mut highest: HashMap<(i32, String), i64> = HashMap::new();
    let mut violations = Vec::new();
    for (partition, offset, key) in sink_records(path) {
        if !written.insert((partition, offset)) {
            continue;
        }
        let key = key.unwrap_or_default();
        let highest = highest.entry((partition, key.clone())).or_insert(-1);
        if offset < *highest {
            violations.push(format!(
                "key {key}: {partition}:{offset} first written after {partition}:{highest}"
            ));
        }
        *highest = (*highest).max(offset);
    }
    violations
}

/// Waits until `cond` holds, polling; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a set of sink outputs says about delivery, per partition.
#[derive(Debug, Default)]
pub struct Audit {
    /// Offsets missing below each partition's highest seen offset.
    pub gaps: usize,
    /// Records seen more than once.
    pub duplicates: usize,
    /// Places where one file shows a partition's offsets going backwards (or repeating).
    pub out_of_order: usize,
    /// Distinct records seen.
    pub distinct: usize,
}

/// Checks sink outputs against the topic's end offsets (`ends[p]` = records in p).
pub fn audit(files: &[&Path], ends: &HashMap<i32, i64>) -> Audit {
    let mut seen: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    let mut audit = Audit::default();
    for file in files {
        let mut last: HashMap<i32, i64> = HashMap::new();
        for (p, o) in sink_lines(file) {
            *seen.entry((p, o)).or_default() += 1;
            if let Some(prev) = last.insert(p, o)
                && o <= prev
            {
                audit.out_of_order += 1;
            }
        }
    }
    for (&p, &end) in ends {
        for o in 0..end {
            match seen.get(&(p, o)) {
                None => audit.gaps += 1,
                Some(&n) => audit.duplicates += n - 1,
            }
        }
    }
    audit.distinct = seen.len();
    audit
}

/// Record count per partition of a topic, read back from the broker.
pub fn end_offsets(topic: &str) -> HashMap<i32, i64> {
    let mut ends = HashMap::new();
    for r in read_topic(
        &kafka(),
        topic,
        Duration::from_secs(1),
        Duration::from_secs(60),
    ) {
        let e = ends.entry(r.partition).or_insert(0);
        *e = (*e).max(r.offset + 1);
    }
    ends
}

/// One sample's value from a Prometheus endpoint (the line whose name matches exactly).
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    let (_, body) = ebb_core::http::get(
        &format!("http://{addr}/metrics"),
        None,
        Duration::from_secs(5),
    )
    .ok()?;
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// The flags of a SCRAM login to the secured node (`scripts/kafka-local --secure`) as
/// `user` with `password` on the command line, the broker verified against the node's CA.
pub fn scram_login(
    kafka: &ebb_testkit::SecureKafka,
    mechanism: &str,
    user: &str,
    password: &str,
) -> Vec<String> {
    [
        "--bootstrap-servers",
        &kafka.sasl_ssl,
        "--security-protocol",
        "sasl_ssl",
        "--sasl-mechanism",
        mechanism,
        "--sasl-username",
        user,
        "--sasl-password",
        password,
        "--ssl-ca-location",
        &kafka.ca.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}
