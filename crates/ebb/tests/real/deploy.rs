//! Deploying ebb on Kubernetes, checked with the field's own tools: the Helm chart
//! (deploy/helm/ebb) passes `helm lint --strict`; every mode renders manifests that
//! kubeconform accepts strictly against Kubernetes' and the CRDs' schemas and that checkov
//! passes; and a real kube-apiserver, with KEDA's and the Prometheus operator's CRDs,
//! stores them, rejects a wrong field, and takes what `ebb tune` prints as is.
//!
//! The tools come from `scripts/k8s-tools install` (run on first use; ~15 minutes once on
//! a new machine, then cached). No Pod runs: there is no kubelet or container runtime here.

use std::path::PathBuf;
use std::process::Command;

use ebb_testkit::kube::{KubeApiServer, run, run_ok, tool, tools};
use ebb_testkit::{repo_root, unique};

/// The chart's variants: (what it is, `helm template` arguments).
const VARIANTS: &[(&str, &[&str])] = &[
    ("keda-lag, defaults", &[]),
    (
        "keda-lag with MSK IAM, producer, PodMonitor, PrometheusRule and Grafana dashboard",
        &[
            "--set",
            "kafka.auth.type=msk-iam",
            "--set",
            "kafka.auth.awsRegion=eu-west-1",
            "--set",
            "producer.enabled=true",
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.grafanaDashboard.enabled=true",
        ],
    ),
    (
        "keda-lag with SASL/SCRAM from a Secret, the postgres sink with a root certificate, \
         and a ServiceMonitor",
        SECRETS_AS_FILES,
    ),
    // scaling.mode stays last: the API server test tells the modes apart by it.
    (
        "ebb-rate, consumers in key order",
        &[
            "--set",
            "consumer.ordering=key",
            "--set",
            "scaling.mode=ebb-rate",
        ],
    ),
    ("no autoscaling", &["--set", "scaling.mode=none"]),
];

/// The variant with every Secret the chart mounts: SASL credentials, the database URL and
/// the database's CA certificates (namespace ebb-2 in the API server test).
const SECRETS_AS_FILES: &[&str] = &[
    "--set",
    "kafka.auth.type=scram-sha-512",
    "--set",
    "kafka.auth.existingSecret=kafka-credentials",
    "--set",
    "consumer.sink.type=postgres",
    "--set",
    "consumer.sink.postgres.existingSecret=database-url",
    "--set",
    "consumer.sink.postgres.rootCert.secretName=database-ca",
    "--set",
    "monitoring.serviceMonitor.enabled=true",
];

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/ebb")
}

/// `helm template` of the chart with `args`, as release `ebb` in `namespace`.
fn render(namespace: &str, args: &[&str]) -> String {
    run_ok(
        Command::new(tool("helm"))
            .args(["template", "ebb"])
            .arg(chart())
            .args(["--namespace", namespace])
            .args(args),
    )
}

/// Writes `text` to a new file under the temp dir and returns its path.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(unique("ebb-deploy")).join(name);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("temp dir");
    std::fs::write(&path, text).expect("temp file");
    path
}

#[test]
fn the_chart_passes_helm_lint_strict_in_every_mode() {
    for (variant, args) in VARIANTS {
        let out = run(Command::new(tool("helm"))
            .args(["lint", "--strict"])
            .arg(chart())
            .args(*args));
        assert!(
            out.status.success(),
            "helm lint --strict ({variant}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bad_values_are_refused_with_the_setting_named() {
    for (args, expected) in [
        (&["--set", "scaling.mode=fastest"][..], "mode"),
        (
            &["--set", "consumer.terminationGracePeriodSeconds=5"][..],
            "terminationGracePeriodSeconds",
        ),
        (&["--set", "consumer.ordering=keys"][..], "ordering"),
        (&["--set", "consumer.keyLanes=0"][..], "keyLanes"),
    ] {
        let out = run(Command::new(tool("helm"))
            .args(["template", "ebb"])
            .arg(chart())
            .args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected),
            "helm template {args:?} should fail naming {expected}; it said ({}):\n{stderr}",
            out.status
        );
    }
}

/// The value of the first env entry `name` in rendered manifests (the consumer's, for
/// the variables only the consumer has), unquoted.
fn env_value(manifests: &str, name: &str) -> Option<String> {
    let entry = format!("- name: {name}");
    let mut lines = manifests.lines();
    lines.find(|l| l.trim() == entry)?;
    let value = lines.next()?.trim().strip_prefix("value: ")?;
    Some(value.trim_matches('"').to_string())
}

#[test]
fn the_consumer_gets_its_ordering_and_key_lanes_from_the_values() {
    let default = render("ebb", &[]);
    assert_eq!(
        env_value(&default, "EBB_ORDERING").as_deref(),
        Some("partition")
    );
    assert_eq!(
        env_value(&default, "EBB_KEY_LANES"),
        None,
        "no lanes in partition order"
    );
    let key = render("ebb", &["--set", "consumer.ordering=key"]);
    assert_eq!(env_value(&key, "EBB_ORDERING").as_deref(), Some("key"));
    assert_eq!(env_value(&key, "EBB_KEY_LANES").as_deref(), Some("16"));
    let lanes = render(
        "ebb",
        &[
            "--set",
            "consumer.ordering=key",
            "--set",
            "consumer.keyLanes=32",
        ],
    );
    assert_eq!(env_value(&lanes, "EBB_KEY_LANES").as_deref(), Some("32"));
}

#[test]
fn secrets_reach_ebb_as_files_never_as_env_values() {
    let manifests = render("ebb", SECRETS_AS_FILES);
    assert!(
        !manifests.contains("secretKeyRef"),
        "a Secret in an env value:\n{manifests}"
    );
    for (name, value) in [
        ("DATABASE_URL_FILE", Some("/etc/ebb/database/url")),
        ("DATABASE_URL", None),
        (
            "EBB_DATABASE_SSL_ROOT_CERT",
            Some("/etc/ebb/database-ca/ca.crt"),
        ),
        (
            "KAFKA_SASL_USERNAME_FILE",
            Some("/etc/ebb/kafka-sasl/username"),
        ),
        (
            "KAFKA_SASL_PASSWORD_FILE",
            Some("/etc/ebb/kafka-sasl/password"),
        ),
        ("KAFKA_SASL_PASSWORD", None),
    ] {
        assert_eq!(env_value(&manifests, name).as_deref(), value, "{name}");
    }
    // The CA may come from a ConfigMap instead; both at once is refused.
    let config_map = [
        SECRETS_AS_FILES,
        &[
            "--set",
            "consumer.sink.postgres.rootCert.configMapName=rds-ca",
        ],
    ]
    .concat();
    let out = run(Command::new(tool("helm"))
        .args(["template", "ebb"])
        .arg(chart())
        .args(&config_map));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rootCert: set secretName or configMapName"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kubeconform -strict -summary` of `manifests` against Kubernetes' JSON schemas (the one
/// version `scripts/k8s-tools` prepared) and the CRDs' (KEDA's, the Prometheus operator's).
fn kubeconform(manifests: &std::path::Path) -> std::process::Output {
    let dir = tools();
    let kubernetes = dir.join("schemas/kubernetes");
    let version = std::fs::read_dir(&kubernetes)
        .expect("kubernetes schemas")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("one kubernetes schema version");
    run(Command::new(tool("kubeconform"))
        .args(["-strict", "-summary", "-output", "text"])
        .arg("-schema-location")
        .arg(format!(
            "{}/{version}/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
            kubernetes.display()
        ))
        .arg("-schema-location")
        .arg(format!(
            "{}/schemas/crds/{{{{.ResourceKind}}}}-{{{{.Group}}}}-{{{{.ResourceAPIVersion}}}}.json",
            dir.display()
        ))
        .arg(manifests))
}

#[test]
fn every_mode_renders_manifests_kubeconform_accepts_strictly() {
    for (variant, args) in VARIANTS {
        let out = kubeconform(&temp_file("rendered.yaml", &render("ebb", args)));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("Invalid: 0, Errors: 0, Skipped: 0"),
            "kubeconform ({variant}):\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The same check fails on a wrong field, so a pass above means something.
    let bad = render("ebb", &[]).replacen("pollingInterval:", "pollingIntervall:", 1);
    let out = kubeconform(&temp_file("bad.yaml", &bad));
    assert!(
        !out.status.success(),
        "kubeconform accepted a misspelt field:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn checkov_passes_the_rendered_chart_with_every_skip_explained() {
    for (variant, args) in VARIANTS {
        let manifests = temp_file("rendered.yaml", &render("ebb", args));
        let out = run(Command::new(tool("checkov"))
            .args([
                "--skip-download",
                "--quiet",
                "--compact",
                "--framework",
                "kubernetes",
            ])
            .arg("-f")
            .arg(&manifests));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "checkov ({variant}) failed checks:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_chart_and_what_ebb_tune_prints_apply_to_a_real_api_server() {
    let server = KubeApiServer::start();
    let crds = tools().join("crds");
    run_ok(
        server
            .kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(&crds),
    );
    run_ok(server.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/scaledobjects.keda.sh",
        "crd/triggerauthentications.keda.sh",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]));

    for (i, (variant, args)) in VARIANTS.iter().enumerate() {
        let namespace = format!("ebb-{i}");
        run_ok(server.kubectl().args(["create", "namespace", &namespace]));
        server.apply(
            &namespace,
            &render(&namespace, args),
            &format!("the chart ({variant})"),
        );
        let deployments = server.get(&namespace, &["deployments"], "{.items[*].metadata.name}");
        assert!(!deployments.is_empty(), "{variant}: no Deployment stored");
        let scaled = server.get(
            &namespace,
            &["scaledobjects.keda.sh"],
            "{.items[*].spec.triggers[0].type}",
        );
        let expected = match *args {
            [.., "scaling.mode=none"] => "",
            [.., "scaling.mode=ebb-rate"] => "external",
            _ => "kafka",
        };
        assert_eq!(
            scaled, expected,
            "{variant}: the stored ScaledObject's trigger"
        );
    }

    // The variant with the monitoring objects (namespace ebb-1) has its alerts and the
    // dashboard's ConfigMap, labelled for Grafana's sidecar, stored.
    let alerts = server.get(
        "ebb-1",
        &["prometheusrules.monitoring.coreos.com"],
        "{.items[*].spec.groups[*].rules[*].alert}",
    );
    assert_eq!(
        alerts,
        "EbbConsumerLagGrowingAtMaxReplicas EbbMessageTimeAboveSla EbbPartitionStalled \
         EbbDeadLetters EbbConsumerNotReady EbbProducerBehindTarget",
        "the stored PrometheusRule's alerts"
    );
    // The variant with Secrets (namespace ebb-2): the consumer stored reads the database
    // URL from the Secret mounted read-only, the file DATABASE_URL_FILE names.
    let consumer = |path: &str| {
        server.get(
            "ebb-2",
            &["deployment", "ebb-consumer"],
            &format!("{{.spec.template.spec.{path}}}"),
        )
    };
    assert_eq!(
        consumer("containers[0].env[?(@.name==\"DATABASE_URL_FILE\")].value"),
        "/etc/ebb/database/url"
    );
    assert_eq!(
        consumer("containers[0].env[?(@.name==\"DATABASE_URL\")].name"),
        ""
    );
    assert_eq!(
        consumer("containers[0]..secretKeyRef"),
        "",
        "no secretKeyRef"
    );
    assert_eq!(
        consumer("containers[0].volumeMounts[?(@.name==\"database-url\")]['mountPath','readOnly']"),
        "/etc/ebb/database true"
    );
    assert_eq!(
        consumer("volumes[?(@.name==\"database-url\")].secret['secretName','items']"),
        "database-url [{\"key\":\"url\",\"path\":\"url\"}]"
    );
    let dashboards = server.get(
        "ebb-1",
        &["configmaps", "-l", "grafana_dashboard=1"],
        "{.items[*].metadata.name}",
    );
    assert_eq!(dashboards, "ebb-grafana-dashboard");

    // The API server refuses a misspelt field instead of dropping it.
    let so = render("ebb-0", &[]);
    let bad = so.replacen("pollingInterval:", "pollingIntervall:", 1);
    assert_ne!(
        bad, so,
        "the rendered chart has a pollingInterval to misspell"
    );
    let out = server.kubectl_stdin(
        &["apply", "--server-side", "--dry-run=server", "-n", "ebb-0"],
        &bad,
    );
    // Server-side apply names it "field not declared in schema"; a plain create says
    // "unknown field".
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(".spec.pollingIntervall: field not declared in schema"),
        "a misspelt ScaledObject field must be rejected; kubectl said ({}):\n{stderr}",
        out.status
    );

    // What `ebb tune` prints goes straight into a deploy: the ScaledObject as is, and the
    // chart values through helm.
    // A short scenario: what matters here is the output's shape, not the tuning.
    let scenario = temp_file("scenario.yaml", crate::common::SMALL_SCENARIO);
    let so_path = temp_file("tuned-scaledobject.yaml", "");
    let values_path = temp_file("tuned-values.yaml", "");
    for (format, path) in [("scaled-object", &so_path), ("helm-values", &values_path)] {
        let out = crate::common::ebb()
            .args(["tune", "--scenario"])
            .arg(&scenario)
            .args(["--format", format, "--deployment", "ebb-consumer", "--out"])
            .arg(path)
            .output()
            .expect("ebb tune");
        assert!(
            out.status.success(),
            "ebb tune --format {format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run_ok(server.kubectl().args(["create", "namespace", "tuned"]));
    let tuned = std::fs::read_to_string(&so_path).expect("tuned ScaledObject");
    server.apply("tuned", &tuned, "ebb tune's ScaledObject");
    let bootstrap = server.get(
        "tuned",
        &["scaledobjects.keda.sh"],
        "{.items[0].spec.triggers[0].metadata.bootstrapServersFromEnv}",
    );
    assert_eq!(bootstrap, "KAFKA_BOOTSTRAP_SERVERS");
    let values = values_path.to_string_lossy().into_owned();
    server.apply(
        "tuned",
        &render("tuned", &["-f", &values]),
        "the chart with ebb tune's values",
    );
    let polling = server.get(
        "tuned",
        &[
            "scaledobjects.keda.sh",
            "-l",
            "app.kubernetes.io/instance=ebb",
        ],
        "{.items[0].spec.pollingInterval}",
    );
    let tuned_polling = std::fs::read_to_string(&values_path)
        .expect("tuned values")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("pollingInterval: ")
                .map(str::to_owned)
        })
        .expect("pollingInterval in the tuned values");
    assert_eq!(
        polling, tuned_polling,
        "the chart uses the tuned pollingInterval"
    );
}
