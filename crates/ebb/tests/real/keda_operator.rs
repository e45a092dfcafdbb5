//! The KEDA operator tier: the chart (deploy/helm/ebb) applied to a real kube-apiserver with
//! KEDA's CRDs, and the real KEDA operator (v2.21.0, built by `scripts/k8s-tools`) running
//! against it as a child process, scaling the chart's consumer Deployment on topics of the
//! local Kafka broker:
//!
//! - ebb-rate mode: the ScaledObject's external trigger calls `ebb keda-scaler`, run on this
//!   host (`kedaScaler.enabled=false`, `scaling.ebbRate.scalerAddress=127.0.0.1:<port>`);
//! - keda-lag mode: KEDA's own kafka scaler reads the group's lag from the local broker,
//!   with the brokers from the Deployment's `KAFKA_BOOTSTRAP_SERVERS` (bootstrapServersFromEnv).
//!
//! Each checks that the ScaledObject goes Ready, the HPA KEDA creates (its metric, target,
//! bounds and behavior), that the Deployment is at 0 while nothing waits (ebb-rate: over
//! three of KEDA's polls; keda-lag: once KEDA's kafka scaler has read a lag of 0), goes
//! 0 → 1 when records arrive, and back to 0 after the group has consumed and committed them
//! and the cooldown has passed. The tools (kube-apiserver, kubectl, helm, keda-operator) come
//! from `scripts/k8s-tools install`, run on first use (~25 minutes once on a new machine).
//!
//! What this tier cannot do: there is no kube-controller-manager and no KEDA metrics
//! adapter (the API aggregator cannot proxy to a loopback endpoint), so no HPA ever acts —
//! nothing scales beyond 0 ↔ 1, which KEDA's operator does by itself — and no Pod runs
//! (no kubelet or container runtime): the Deployment's `spec.replicas` is what is checked,
//! and the consuming is done by an `ebb consume` started by the test on this host.
//!
//! The tests share one API server and one operator (started by whichever test comes first,
//! stopped when the last one ends) and use their own namespaces, topics and groups.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::common::*;
use ebb_testkit::GroupWatch;
use ebb_testkit::kube::{KedaOperator, KubeApiServer, run_ok, tool};
use ebb_testkit::repo_root;
use serde_json::Value;

/// Seconds between KEDA's polls of the trigger (the chart's scaling.pollingInterval).
const POLLING_INTERVAL: u64 = 2;
/// Seconds after the last active poll before KEDA scales to zero (scaling.cooldownPeriod).
const COOLDOWN_PERIOD: u64 = 5;
/// The topics' partitions, and the chart's scaling.maxReplicaCount.
const PARTITIONS: u32 = 4;
const MAX_REPLICAS: u32 = 4;
/// Records produced to make the trigger active.
const RECORDS: u64 = 2000;
/// The deadline of each wait for KEDA.
const DEADLINE: Duration = Duration::from_secs(75);
/// What the chart names the consumer Deployment and its ScaledObject (release `ebb`).
const TARGET: &str = "ebb-consumer";

/// The API server and the operator; the operator stops first.
struct Cluster {
    operator: KedaOperator,
    server: KubeApiServer,
}

/// The running cluster, started by the first test that asks and stopped when the last
/// test holding it ends (a failed one included), so no process outlives the tests.
fn cluster() -> Arc<Cluster> {
    static SHARED: Mutex<Weak<Cluster>> = Mutex::new(Weak::new());
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    let server = KubeApiServer::start();
    server.install_crds();
    let operator = KedaOperator::start(&server);
    let cluster = Arc::new(Cluster { operator, server });
    *shared = Arc::downgrade(&cluster);
    cluster
}

/// One test's namespace on the shared cluster. On a failure its drop prints what the
/// operator logged about the namespace, the operator's last lines, and the ScaledObject.
struct Tier {
    cluster: Arc<Cluster>,
    namespace: String,
}

impl Tier {
    fn new(prefix: &str) -> Self {
        let cluster = cluster();
        let namespace = unique(prefix);
        run_ok(
            cluster
                .server
                .kubectl()
                .args(["create", "namespace", &namespace]),
        );
        Tier { cluster, namespace }
    }

    /// Renders the chart as release `ebb` in this namespace with `values` (`--set`
    /// key=value) and `strings` (`--set-string`), and applies all of it. Every kind the
    /// chart renders with these values (NetworkPolicy, ServiceAccount, Service, Deployment,
    /// ScaledObject) is one the API server stores; nothing needs a missing controller to be
    /// accepted (the ServiceAccount's token would, but nothing asks for one: no Pod runs).
    fn apply_chart(&self, values: &[String], strings: &[String]) {
        let mut helm = std::process::Command::new(tool("helm"));
        helm.args(["template", "ebb"])
            .arg(repo_root().join("deploy/helm/ebb"))
            .args(["--namespace", &self.namespace]);
        for value in values {
            helm.args(["--set", value]);
        }
        for value in strings {
            helm.args(["--set-string", value]);
        }
        let manifests = run_ok(&mut helm);
        for kind in ["Deployment", "ScaledObject"] {
            assert!(
                manifests.contains(&format!("\nkind: {kind}\n")),
                "the chart rendered no {kind}:\n{manifests}"
            );
        }
        self.cluster
            .server
            .apply(&self.namespace, &manifests, "the chart");
    }

    /// `kubectl get <what> -o jsonpath=<path>` in this namespace.
    fn get(&self, what: &[&str], path: &str) -> String {
        self.cluster.server.get(&self.namespace, what, path)
    }

    /// `kubectl get <what> -o json`, parsed.
    fn json(&self, what: &[&str]) -> Value {
        let text = run_ok(self.cluster.server.kubectl().arg("get").args(what).args([
            "-n",
            &self.namespace,
            "-o",
            "json",
        ]));
        serde_json::from_str(&text).expect("kubectl -o json")
    }

    /// The consumer Deployment's spec.replicas (None while it is not stored or unset).
    fn replicas(&self) -> Option<u32> {
        self.get(&["deployment", TARGET], "{.spec.replicas}")
            .trim()
            .parse()
            .ok()
    }

    /// The status of the ScaledObject's condition `kind` (Ready, Active, ...).
    fn condition(&self, kind: &str) -> String {
        self.get(
            &["scaledobject.keda.sh", TARGET],
            &format!("{{.status.conditions[?(@.type==\"{kind}\")].status}}"),
        )
    }

    /// A sample of the operator's Prometheus metric `name` for this namespace and the
    /// trigger metric `metric` (e.g. `keda_scaler_metrics_value`, `s0-kafka-<topic>`).
    fn keda_metric(&self, name: &str, metric: &str) -> Option<f64> {
        let namespace = format!("namespace=\"{}\"", self.namespace);
        let metric = format!("metric=\"{metric}\"");
        self.cluster
            .operator
            .metrics()
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .find(|l| l.contains(&namespace) && l.contains(&metric))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Waits until `cond` holds, polling every 250 ms; fails after [`DEADLINE`] with `what`.
    fn wait(&self, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
        let started = Instant::now();
        while !cond() {
            assert!(
                started.elapsed() < DEADLINE,
                "timed out after {DEADLINE:?} waiting for {what} (namespace {}; Deployment \
                 replicas {:?})",
                self.namespace,
                self.replicas()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        started.elapsed()
    }

    /// The HPA KEDA created for the ScaledObject: waits for it, checks what both modes share
    /// (bounds, target, behavior as the chart set them), prints its spec and returns its one
    /// metric.
    fn hpa_metric(&self) -> Value {
        let hpa_name = format!("keda-hpa-{TARGET}");
        self.wait(&format!("KEDA to create HPA {hpa_name}"), || {
            self.get(&["hpa"], "{.items[*].metadata.name}")
                .split_whitespace()
                .any(|name| name == hpa_name)
        });
        let hpa = self.json(&["hpa", &hpa_name]);
        let spec = &hpa["spec"];
        eprintln!(
            "{}: the HPA KEDA created:\n{}",
            self.namespace,
            serde_json::to_string_pretty(spec).unwrap()
        );
        // KEDA's HPA floor is 1: the chart's minReplicaCount 0 is KEDA's own 0 <-> 1.
        assert_eq!(spec["minReplicas"], 1, "{spec}");
        assert_eq!(spec["maxReplicas"], MAX_REPLICAS, "{spec}");
        assert_eq!(spec["scaleTargetRef"]["kind"], "Deployment", "{spec}");
        assert_eq!(spec["scaleTargetRef"]["name"], TARGET, "{spec}");
        let so = self.json(&["scaledobject.keda.sh", TARGET]);
        assert_eq!(
            spec["behavior"], so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
            "the HPA's behavior is the chart's"
        );
        let metrics = spec["metrics"].as_array().expect("HPA metrics");
        assert_eq!(metrics.len(), 1, "one trigger, one metric: {spec}");
        let metric = metrics[0].clone();
        assert_eq!(metric["type"], "External", "{spec}");
        assert_eq!(
            metric["external"]["metric"]["selector"]["matchLabels"]["scaledobject.keda.sh/name"],
            TARGET,
            "{spec}"
        );
        assert_eq!(
            metric["external"]["target"]["type"], "AverageValue",
            "{spec}"
        );
        metric
    }

    /// Waits for the ScaledObject to be Ready and for KEDA to bring the Deployment to 0:
    /// the chart gives it no replica count, so the API server stores 1 and KEDA, with the
    /// trigger inactive, deactivates it.
    fn wait_ready_at_zero(&self) {
        let took = self.wait("the ScaledObject's Ready condition to be True", || {
            self.condition("Ready") == "True"
        });
        eprintln!("{}: ScaledObject Ready after {took:?}", self.namespace);
        self.wait(
            "KEDA to scale the new Deployment to 0, its trigger inactive",
            || self.replicas() == Some(0) && self.condition("Active") == "False",
        );
    }
}

impl Drop for Tier {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let operator = &self.cluster.operator;
        eprintln!(
            "--- keda-operator's log about namespace {} (last 40 lines):\n{}\n--- its last 15 \
             lines:\n{}",
            self.namespace,
            operator.log_tail_matching(&self.namespace, 40),
            operator.log_tail(15)
        );
        let out = self
            .cluster
            .server
            .kubectl()
            .args(["get", "scaledobject,hpa,deployment", "-n", &self.namespace])
            .args(["-o", "wide"])
            .output();
        if let Ok(out) = out {
            eprintln!("--- {}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

/// ebb keda-scaler's successful IsActive calls so far.
fn is_active_calls(scaler: &ScalerProcess) -> f64 {
    scaler.sample("ebb_keda_scaler_calls_total{method=\"IsActive\",code=\"Ok\"}")
}

/// Chart values shared by both modes.
fn common_values(topic: &str, group: &str) -> Vec<String> {
    vec![
        format!("kafka.topic={topic}"),
        format!("kafka.consumerGroup={group}"),
        format!("kafka.bootstrapServers={}", kafka()),
        format!("scaling.pollingInterval={POLLING_INTERVAL}"),
        format!("scaling.cooldownPeriod={COOLDOWN_PERIOD}"),
        format!("scaling.maxReplicaCount={MAX_REPLICAS}"),
    ]
}

/// Consumes everything on `topic` as `group` with `ebb consume` (file sink) until the
/// Consumes and commits everything for the group, then waits for KEDA to take the
/// Deployment back to 0 (the trigger inactive, then the cooldown).
fn drain_and_expect_zero(tier: &Tier, topic: &str, group: &str) {
    consume_all(topic, group);
    let took = tier.wait("KEDA to scale the Deployment back to 0", || {
        tier.replicas() == Some(0)
    });
    eprintln!(
        "{}: 1 -> 0 {took:?} after the group caught up (cooldown {COOLDOWN_PERIOD} s)",
        tier.namespace
    );
}

/// group's committed offsets reach the log end, then stops it with SIGTERM.
fn consume_all(topic: &str, group: &str) {
    let watch = GroupWatch::new(&kafka(), group, topic, PARTITIONS as i32);
    let sink = temp_file("consumed.jsonl");
    let consumer = spawn_consumer(topic, group, &sink, &[]);
    let started = Instant::now();
    let last = loop {
        let offsets = watch.offsets();
        let ends: i64 = offsets.values().map(|&(_, end)| end).sum();
        if ends == RECORDS as i64 && offsets.values().all(|&(c, end)| c == end) {
            break offsets;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "ebb consume did not commit all {RECORDS} records in {DEADLINE:?}: (committed, end) \
             per partition {offsets:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    signal(&consumer, libc::SIGTERM);
    let out = finish(consumer, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "ebb consume after SIGTERM ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sink_lines(&sink).len(), RECORDS as usize, "{last:?}");
}

#[test]
fn ebb_rate_mode_keda_calls_ebb_keda_scaler_and_scales_zero_one_zero() {
    let tier = Tier::new("keda-op-rate");
    let scaler = ScalerProcess::start(&[]);
    let topic = create_topic("keda-op-rate", PARTITIONS);
    let group = unique("keda-op-rate-group");

    let mut values = common_values(&topic, &group);
    values.extend([
        "scaling.mode=ebb-rate".to_string(),
        "kedaScaler.enabled=false".to_string(),
        format!("scaling.ebbRate.scalerAddress={}", scaler.grpc),
    ]);
    let strings: Vec<String> = [
        "scaling.ebbRate.capacityPerReplica=100",
        "scaling.ebbRate.extraMetadata.idleCooldownSeconds=0",
        "scaling.ebbRate.extraMetadata.intervalSeconds=0",
        "scaling.ebbRate.extraMetadata.upSettleSeconds=0",
    ]
    .map(String::from)
    .to_vec();
    tier.apply_chart(&values, &strings);
    tier.wait_ready_at_zero();

    let metric = tier.hpa_metric();
    assert_eq!(
        metric["external"]["metric"]["name"], "s0-ebb-rate-replicas",
        "{metric}"
    );
    assert_eq!(
        metric["external"]["target"]["averageValue"], "1",
        "{metric}"
    );

    // Nothing waits, nothing arrives: the Deployment stays at 0 over three more of KEDA's
    // polls (each poll calls GetMetricSpec, GetMetrics and IsActive once).
    let calls = is_active_calls(&scaler);
    tier.wait("three more polls of the scaler by KEDA", || {
        assert_eq!(tier.replicas(), Some(0), "scaled up with an empty topic");
        is_active_calls(&scaler) >= calls + 3.0
    });
    assert_eq!(
        scaler.sample(&format!(
            "ebb_keda_scaler_active{{scaled_object=\"{}/{TARGET}\"}}",
            tier.namespace
        )),
        0.0
    );

    produce(&topic, RECORDS, "2000");
    let took = tier.wait("KEDA to scale the Deployment 0 -> 1", || {
        tier.replicas() == Some(1)
    });
    eprintln!("{}: 0 -> 1 {took:?} after producing", tier.namespace);
    assert!(is_active_calls(&scaler) > 0.0);
    tier.wait("the ScaledObject's Active condition", || {
        tier.condition("Active") == "True"
    });
    // KEDA's value for the metric is the count ebb-rate answers (which the HPA would use).
    let desired = format!(
        "ebb_keda_scaler_desired_replicas{{scaled_object=\"{}/{TARGET}\"}}",
        tier.namespace
    );
    tier.wait("KEDA's metric value to be ebb-rate's count", || {
        let keda = tier.keda_metric("keda_scaler_metrics_value", "s0-ebb-rate-replicas");
        let ebb = scaler.sample(&desired);
        ebb >= 1.0 && keda == Some(ebb)
    });
    eprintln!(
        "{}: ebb-rate asks for {} replicas; the Deployment stays at {:?} (no HPA acts here)",
        tier.namespace,
        scaler.sample(&desired),
        tier.replicas()
    );

    drain_and_expect_zero(&tier, &topic, &group);
    let metrics = scaler.metrics();
    for method in ["IsActive", "GetMetricSpec", "GetMetrics"] {
        assert!(
            metrics.contains(&format!(
                "ebb_keda_scaler_calls_total{{method=\"{method}\",code=\"Ok\"}}"
            )),
            "KEDA never called {method} successfully:\n{metrics}"
        );
    }
    let failed: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("ebb_keda_scaler_calls_total{") && !l.contains("code=\"Ok\""))
        .collect();
    assert!(
        failed.is_empty(),
        "the scaler refused some of KEDA's calls: {failed:?}"
    );
    assert_eq!(
        tier.keda_metric("keda_scaler_detail_errors_total", "s0-ebb-rate-replicas"),
        Some(0.0)
    );
}

#[test]
fn keda_lag_mode_kedas_kafka_scaler_scales_zero_one_zero() {
    let tier = Tier::new("keda-op-lag");
    let topic = create_topic("keda-op-lag", PARTITIONS);
    let group = unique("keda-op-lag-group");
    // 500 per replica: the 2000 records are 4 replicas' worth, not above the partitions, so
    // KEDA reports the whole lag (beyond that it caps it at partitions × lagThreshold).
    let mut values = common_values(&topic, &group);
    values.push("scaling.mode=keda-lag".into());
    tier.apply_chart(&values, &["scaling.kedaLag.lagThreshold=500".into()]);
    let kafka_metric = format!("s0-kafka-{topic}");
    // KEDA resolves the brokers from the Deployment's container env, set from the chart.
    assert_eq!(
        tier.get(
            &["deployment", TARGET],
            "{.spec.template.spec.containers[0].env[?(@.name==\"KAFKA_BOOTSTRAP_SERVERS\")].value}"
        ),
        kafka()
    );
    tier.wait_ready_at_zero();

    let metric = tier.hpa_metric();
    assert_eq!(
        metric["external"]["metric"]["name"], kafka_metric,
        "{metric}"
    );
    assert_eq!(
        metric["external"]["target"]["averageValue"], "500",
        "{metric}"
    );

    // KEDA's kafka scaler reads the empty topic: lag 0, inactive, no error; still at 0.
    tier.wait("KEDA's kafka scaler to report lag 0", || {
        tier.keda_metric("keda_scaler_metrics_value", &kafka_metric) == Some(0.0)
    });
    assert_eq!(
        tier.keda_metric("keda_scaler_active", &kafka_metric),
        Some(0.0)
    );
    assert_eq!(tier.replicas(), Some(0));

    produce(&topic, RECORDS, "2000");
    let took = tier.wait("KEDA to scale the Deployment 0 -> 1", || {
        tier.replicas() == Some(1)
    });
    eprintln!("{}: 0 -> 1 {took:?} after producing", tier.namespace);
    // Nothing committed and offsetResetPolicy earliest: the lag is the whole log.
    tier.wait("KEDA's lag to be every record", || {
        tier.keda_metric("keda_scaler_metrics_value", &kafka_metric) == Some(RECORDS as f64)
    });
    tier.wait("the ScaledObject's Active condition", || {
        tier.condition("Active") == "True"
    });

    drain_and_expect_zero(&tier, &topic, &group);
    assert_eq!(
        tier.keda_metric("keda_scaler_metrics_value", &kafka_metric),
        Some(0.0)
    );
    assert_eq!(
        tier.keda_metric("keda_scaler_detail_errors_total", &kafka_metric),
        Some(0.0),
        "KEDA's kafka scaler failed against the local broker; its log says why"
    );
}
