//! ebb's observability, checked with the real tools against ebb's real output: the Grafana
//! dashboard (deploy/grafana/ebb.json, which the chart ships from its dashboards/ebb.json)
//! and the alerts (deploy/prometheus/ebb-rules.yaml, the chart's PrometheusRule rendered
//! with its default values).
//!
//! - promtool (Debian's `prometheus` package) checks the plain rules and those the chart
//!   renders, runs their unit tests (deploy/prometheus/tests), and parses every query of
//!   the dashboard, wrapped as a recording rule with Grafana's variables filled in;
//! - a real `ebb produce`, two `ebb consume` (file and postgres sinks) and `ebb keda-scaler`
//!   run against the local broker; every metric and label that the dashboard or the alerts
//!   name must be in what they export on /metrics, or come from a source allowed by name
//!   (kube-state-metrics, `up`, the target labels Prometheus and the chart's monitors add);
//! - a real Prometheus scrapes them every second, answers every dashboard query (the
//!   throughput, lag and message-time ones with data), evaluates every rule without error
//!   and fires EbbDeadLetters for a record that is not a trade;
//! - the dashboard type-checks against Grafana's published schema types (npm's
//!   `@grafana/schema` with `tsc --noEmit`, installed once into ~/.cache/ebb) and passes
//!   structural checks (unique ids and titles, no overlapping panels, a datasource and
//!   targets on every panel, only defined variables).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::*;
use ebb_testkit::kube::{run, run_ok, tool};
use ebb_testkit::{ensure_debian_packages, repo_root};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Files and tools

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/ebb")
}

fn plain_rules_path() -> PathBuf {
    repo_root().join("deploy/prometheus/ebb-rules.yaml")
}

fn dashboard_path() -> PathBuf {
    repo_root().join("deploy/grafana/ebb.json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&dashboard_path())).expect("deploy/grafana/ebb.json is JSON")
}

/// A fresh directory under the temp dir.
fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Debian's Prometheus (`prometheus` package: /usr/bin/prometheus and /usr/bin/promtool),
/// installed when missing. The tests never start its service (on these machines apt's
/// policy-rc.d keeps it from starting at install, too): they run their own prometheus as a
/// child process, with its own config and data directory on a free loopback port.
fn prometheus_tools() -> (&'static Path, &'static Path) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| ensure_debian_packages(&["prometheus"]));
    let (promtool, prometheus) = (
        Path::new("/usr/bin/promtool"),
        Path::new("/usr/bin/prometheus"),
    );
    for bin in [promtool, prometheus] {
        assert!(
            bin.exists(),
            "{} is missing although Debian's prometheus package is installed",
            bin.display()
        );
    }
    (promtool, prometheus)
}

fn promtool() -> &'static Path {
    prometheus_tools().0
}

/// `helm template ebb <chart> <args>`.
fn helm_template(args: &[&str]) -> String {
    run_ok(
        Command::new(tool("helm"))
            .args(["template", "ebb"])
            .arg(chart())
            .args(args),
    )
}

/// The rules of the chart's PrometheusRule rendered with `args`: its `spec`, de-indented,
/// which is a plain Prometheus rules file.
fn chart_rules(args: &[&str]) -> String {
    let rendered = helm_template(
        &[
            &[
                "--show-only",
                "templates/prometheusrule.yaml",
                "--set",
                "monitoring.prometheusRule.enabled=true",
            ][..],
            args,
        ]
        .concat(),
    );
    let mut lines = rendered.lines().skip_while(|l| *l != "spec:");
    assert!(
        lines.next().is_some(),
        "the PrometheusRule has no spec:\n{rendered}"
    );
    let mut spec = String::new();
    for line in lines {
        if line.trim().is_empty() {
            spec.push('\n');
            continue;
        }
        let body = line.strip_prefix("  ").unwrap_or_else(|| {
            panic!("a line of the PrometheusRule's spec is not indented: {line:?}")
        });
        spec.push_str(body);
        spec.push('\n');
    }
    spec
}

/// Runs promtool with `args`; returns (success, stdout + stderr).
fn promtool_run(args: &[&str], files: &[&Path]) -> (bool, String) {
    let out = run(Command::new(promtool()).args(args).args(files));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn promtool_ok(args: &[&str], files: &[&Path]) -> String {
    let (ok, output) = promtool_run(args, files);
    assert!(
        ok,
        "promtool {} {files:?} failed:\n{output}",
        args.join(" ")
    );
    output
}

// ---------------------------------------------------------------------------------------
// Queries of the dashboard and of the rules

/// One PromQL expression and where it comes from.
#[derive(Clone, Debug)]
struct Query {
    /// `panel 5 "Consumer lag (records)" A`, `variable topic`, `rule EbbDeadLetters`.
    source: String,
    /// Panel title and refId for panel targets.
    panel: Option<(String, String)>,
    expr: String,
    /// For a `label_values(selector, label)` variable: the label it lists.
    lists_label: Option<String>,
}

/// Every query of the dashboard: each panel target's `expr` and each query variable's
/// `label_values(selector, label)` (as the selector, listing `label`).
fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let ref_id = target["refId"].as_str().unwrap_or_default();
            queries.push(Query {
                source: format!("panel {} {title:?} {ref_id}", panel["id"]),
                panel: Some((title.to_string(), ref_id.to_string())),
                expr: target["expr"].as_str().expect("target expr").to_string(),
                lists_label: None,
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]
            .as_str()
            .or_else(|| variable["query"]["query"].as_str())
            .expect("variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!(
                    "variable {}: not label_values(...): {query}",
                    variable["name"]
                )
            });
        let (selector, label) = split_last_top_level_comma(inner);
        queries.push(Query {
            source: format!("variable {}", variable["name"]),
            panel: None,
            expr: selector.trim().to_string(),
            lists_label: Some(label.trim().to_string()),
        });
    }
    queries
}

fn split_last_top_level_comma(s: &str) -> (&str, &str) {
    let (mut depth, mut quoted, mut last) = (0i32, false, None);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' | '{' | '[' if !quoted => depth += 1,
            ')' | '}' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => last = Some(i),
            _ => {}
        }
    }
    let i = last.unwrap_or_else(|| panic!("no top-level comma in {s}"));
    (&s[..i], &s[i + 1..])
}

/// The `expr` of every rule of a rules file written as ours are (`- alert:`/`- record:`,
/// then `expr: |` and an indented block, or `expr: <one line>`).
fn rule_queries(rules: &str) -> Vec<Query> {
    let lines: Vec<&str> = rules.lines().collect();
    let mut queries = Vec::new();
    let mut name = String::from("?");
    for (i, line) in lines.iter().enumerate() {
        let text = line.trim_start();
        if let Some(n) = text
            .strip_prefix("- alert:")
            .or_else(|| text.strip_prefix("- record:"))
        {
            name = n.trim().to_string();
        } else if let Some(rest) = text.strip_prefix("expr:") {
            let indent = line.len() - text.len();
            let rest = rest.trim();
            let expr = if rest.starts_with('|') || rest.starts_with('>') {
                lines[i + 1..]
                    .iter()
                    .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            } else {
                rest.to_string()
            };
            queries.push(Query {
                source: format!("rule {name}"),
                panel: None,
                expr,
                lists_label: None,
            });
        }
    }
    queries
}

/// Values for Grafana's variables: the dashboard's own and Grafana's built-ins.
fn grafana_values(namespace: &str, topic: &str, group: &str, hpa: &str) -> Vec<(String, String)> {
    [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
        ("datasource", "prometheus"),
        ("namespace", namespace),
        ("topic", topic),
        ("group", group),
        ("hpa", hpa),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// `expr` with `$name` and `${name}` replaced by `values`; panics naming a variable it has
/// no value for.
fn substitute(expr: &str, values: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').expect("closing } of ${...}");
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        if name.is_empty() || name.chars().all(|c| c.is_ascii_digit()) {
            // "$1" in label_replace's replacement: not a variable.
            out.push('$');
            rest = after;
            continue;
        }
        let value = values
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no value for Grafana variable ${name} in {expr}"));
        out.push_str(&value.1);
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------
// What a PromQL expression names: a small lexer, enough for metric and label names.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    Op(String),
    Open(char),
    Close(char),
    Comma,
}

fn lex(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && c != '`' && i + 1 < chars.len() {
                    i += 1;
                }
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            toks.push(Tok::Str(s));
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations (5m, 1.5, 1e3, 0x1f, 1h30m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            toks.push(Tok::Num);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if matches!(c, '(' | '{' | '[') {
            toks.push(Tok::Open(c));
            i += 1;
        } else if matches!(c, ')' | '}' | ']') {
            toks.push(Tok::Close(c));
            i += 1;
        } else if c == ',' {
            toks.push(Tok::Comma);
            i += 1;
        } else {
            let start = i;
            while i < chars.len() && "+-*/%^=!<>~@$".contains(chars[i]) {
                i += 1;
            }
            if i == start {
                i += 1;
            }
            toks.push(Tok::Op(chars[start..i].iter().collect()));
        }
    }
    toks
}

/// The names an expression uses.
#[derive(Debug, Default)]
struct Names {
    /// Metric names, each with the labels its selector matches on.
    metrics: Vec<(String, Vec<String>)>,
    /// Labels named outside selectors: by, without, on, ignoring, group_left/right, and
    /// label_replace/label_join sources.
    labels: Vec<String>,
    /// Labels the expression makes itself (label_replace/label_join destinations).
    made: Vec<String>,
    /// Anything that is not PromQL (a `$` left over from Grafana).
    junk: Vec<String>,
}

const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn names(expr: &str) -> Names {
    let toks = lex(expr);
    let mut names = Names::default();
    let mut i = 0;
    while i < toks.len() {
        let next = toks.get(i + 1);
        match &toks[i] {
            Tok::Open('[') => {
                while i < toks.len() && toks[i] != Tok::Close(']') {
                    i += 1;
                }
            }
            Tok::Op(op) if op.contains('$') => names.junk.push(op.clone()),
            Tok::Ident(word)
                if LABEL_LIST_KEYWORDS.contains(&word.as_str())
                    && next == Some(&Tok::Open('(')) =>
            {
                i += 2;
                while i < toks.len() && toks[i] != Tok::Close(')') {
                    if let Tok::Ident(label) = &toks[i] {
                        names.labels.push(label.clone());
                    }
                    i += 1;
                }
            }
            Tok::Ident(function)
                if (function == "label_replace" || function == "label_join")
                    && next == Some(&Tok::Open('(')) =>
            {
                // The string arguments at the call's own depth: label_replace(v, dst,
                // replacement, src, regex), label_join(v, dst, separator, src...).
                let (mut depth, mut arg) = (0, 0);
                for tok in &toks[i + 1..] {
                    match tok {
                        Tok::Open(_) => depth += 1,
                        Tok::Close(_) => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        Tok::Comma if depth == 1 => arg += 1,
                        Tok::Str(s) if depth == 1 => match (function.as_str(), arg) {
                            (_, 1) => names.made.push(s.clone()),
                            ("label_replace", 3) => names.labels.push(s.clone()),
                            ("label_join", a) if a >= 3 => names.labels.push(s.clone()),
                            _ => {}
                        },
                        _ => {}
                    }
                }
            }
            // Any other function or aggregation call.
            Tok::Ident(_) if next == Some(&Tok::Open('(')) => {}
            Tok::Ident(word)
                if AGGREGATIONS.contains(&word.as_str())
                    || KEYWORDS.contains(&word.as_str())
                    || LABEL_LIST_KEYWORDS.contains(&word.as_str()) => {}
            Tok::Ident(metric) => {
                let mut labels = Vec::new();
                if next == Some(&Tok::Open('{')) {
                    i += 2;
                    while i < toks.len() && toks[i] != Tok::Close('}') {
                        if let (Tok::Ident(label), Some(Tok::Op(_))) = (&toks[i], toks.get(i + 1)) {
                            labels.push(label.clone());
                        }
                        i += 1;
                    }
                }
                names.metrics.push((metric.clone(), labels));
            }
            Tok::Open('{') => {
                // A selector without a metric name: {__name__="x", ...}.
                let mut metric = None;
                let mut labels = Vec::new();
                i += 1;
                while i < toks.len() && toks[i] != Tok::Close('}') {
                    if let (Tok::Ident(label), Some(Tok::Op(op))) = (&toks[i], toks.get(i + 1)) {
                        if label == "__name__" && op == "=" {
                            if let Some(Tok::Str(name)) = toks.get(i + 2) {
                                metric = Some(name.clone());
                            }
                        } else {
                            labels.push(label.clone());
                        }
                    }
                    i += 1;
                }
                match metric {
                    Some(m) => names.metrics.push((m, labels)),
                    None => names.labels.extend(labels),
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

// ---------------------------------------------------------------------------------------
// What ebb exports, and what else a query may name

/// Series names (as Prometheus stores them) and the label names seen on each, from
/// Prometheus/OpenMetrics text exposition. A family declared by `# TYPE` with no sample
/// yet (a labelled counter nothing has incremented) is known by name, with no labels.
#[derive(Debug, Default)]
struct Exported {
    series: BTreeMap<String, BTreeSet<String>>,
    /// Which process exported what, for messages.
    from: BTreeMap<String, String>,
}

impl Exported {
    fn add(&mut self, process: &str, text: &str) {
        let mut families: BTreeMap<String, String> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (family, kind) = (parts.next().unwrap(), parts.next().unwrap());
                families.insert(family.to_string(), kind.to_string());
                for name in sample_names(family, kind) {
                    self.series.entry(name.clone()).or_default();
                    self.from.entry(name).or_insert_with(|| process.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..end];
                let family = families
                    .iter()
                    .find(|(f, kind)| sample_names(f, kind).iter().any(|n| n == name))
                    .map(|(f, _)| f.clone());
                assert!(
                    family.is_some(),
                    "{process} exports sample {name} under no # TYPE family whose OpenMetrics \
                     sample names include it (counters end in _total, histograms in \
                     _bucket/_sum/_count)"
                );
                let labels = self.series.entry(name.to_string()).or_default();
                if line[end..].starts_with('{') {
                    labels.extend(label_names(&line[end + 1..]));
                }
            }
        }
    }

    fn labels(&self, metric: &str) -> Option<&BTreeSet<String>> {
        self.series.get(metric)
    }
}

/// The sample names of an OpenMetrics family (as Prometheus stores them).
fn sample_names(family: &str, kind: &str) -> Vec<String> {
    let suffixed = |suffixes: &[&str]| suffixes.iter().map(|s| format!("{family}{s}")).collect();
    match kind {
        "counter" => suffixed(&["_total"]),
        "histogram" | "gaugehistogram" => suffixed(&["_bucket", "_sum", "_count"]),
        "summary" => suffixed(&["", "_sum", "_count"]),
        "info" => suffixed(&["_info"]),
        _ => suffixed(&[""]),
    }
}

/// Label names of a sample's `{a="x",b="y"} value` part (after the `{`).
fn label_names(s: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let name = name.trim_start_matches([',', ' ']).to_string();
        if name.is_empty() || name.starts_with('}') {
            break;
        }
        names.push(name);
        // The quoted value, with escapes.
        assert_eq!(chars.next(), Some('"'), "a label value is quoted: {s}");
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => break,
                _ => {}
            }
        }
        if chars.peek() == Some(&'}') {
            break;
        }
    }
    names
}

/// Metrics a query may name that ebb does not export, each with its labels: kube-state-
/// metrics' (KEDA's HPA, pod readiness; its docs, v2.x) and Prometheus' own `up`.
const OTHER_SOURCES: &[(&str, &[&str])] = &[
    (
        "kube_horizontalpodautoscaler_info",
        &[
            "namespace",
            "horizontalpodautoscaler",
            "scaletargetref_api_version",
            "scaletargetref_kind",
            "scaletargetref_name",
        ],
    ),
    (
        "kube_horizontalpodautoscaler_spec_max_replicas",
        &["namespace", "horizontalpodautoscaler"],
    ),
    (
        "kube_horizontalpodautoscaler_spec_min_replicas",
        &["namespace", "horizontalpodautoscaler"],
    ),
    (
        "kube_horizontalpodautoscaler_spec_target_metric",
        &[
            "namespace",
            "horizontalpodautoscaler",
            "metric_name",
            "metric_target_type",
        ],
    ),
    (
        "kube_horizontalpodautoscaler_status_current_metric",
        &[
            "namespace",
            "horizontalpodautoscaler",
            "metric_name",
            "metric_target_type",
        ],
    ),
    (
        "kube_horizontalpodautoscaler_status_current_replicas",
        &["namespace", "horizontalpodautoscaler"],
    ),
    (
        "kube_horizontalpodautoscaler_status_desired_replicas",
        &["namespace", "horizontalpodautoscaler"],
    ),
    (
        "kube_pod_container_status_ready",
        &["namespace", "pod", "uid", "container"],
    ),
    ("up", &[]),
];

/// ebb metrics that show on /metrics only after their first event (a counter family with a
/// label and no child yet), which a short healthy run cannot provoke: (series name, the
/// source file that registers it, its registered name, its labels). Each must still be
/// registered there under that name.
const EVENT_ONLY: &[(&str, &str, &str, &[&str])] = &[
    (
        "ebb_consumer_stalls_total",
        "crates/ebb-core/src/consumer/metrics.rs",
        "\"ebb_consumer_stalls\"",
        &["kind"],
    ),
    (
        "ebb_consumer_rebalance_call_errors_total",
        "crates/ebb-core/src/consumer/metrics.rs",
        "\"ebb_consumer_rebalance_call_errors\"",
        &["call"],
    ),
];

/// Labels every scraped series carries: Prometheus' own (`job`, `instance`) and what the
/// Prometheus operator adds to a PodMonitor's or ServiceMonitor's targets.
const PROMETHEUS_TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "container",
    "endpoint",
    "service",
];

/// The target labels the chart's PodMonitor and ServiceMonitor add (`targetLabel:` of their
/// relabelings); both must add the same.
fn chart_target_labels() -> BTreeSet<String> {
    let target_labels = |template: &str, value: &str| -> BTreeSet<String> {
        helm_template(&["--show-only", template, "--set", value])
            .lines()
            .filter_map(|l| l.trim().strip_prefix("targetLabel:"))
            .map(|l| l.trim().trim_matches('"').to_string())
            .collect()
    };
    let pod = target_labels(
        "templates/podmonitor.yaml",
        "monitoring.podMonitor.enabled=true",
    );
    let service = target_labels(
        "templates/servicemonitor.yaml",
        "monitoring.serviceMonitor.enabled=true",
    );
    assert_eq!(
        pod, service,
        "the PodMonitor and the ServiceMonitor add different target labels"
    );
    assert!(
        pod.contains("topic") && pod.contains("consumer_group"),
        "the chart's monitors must add the topic and consumer_group target labels: {pod:?}"
    );
    pod
}

/// Every metric or label in `queries` that neither ebb (`exported`) nor an allowed other
/// source provides, one line each.
fn unknown_names(
    queries: &[Query],
    exported: &Exported,
    targets: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for query in queries {
        let names = names(&query.expr);
        for junk in &names.junk {
            problems.push(format!(
                "{}: {junk:?} is not PromQL (a Grafana variable left?)",
                query.source
            ));
        }
        let mut known_here: BTreeSet<String> = targets.clone();
        known_here.extend(names.made.iter().cloned());
        for (metric, labels) in &names.metrics {
            let known: Option<BTreeSet<String>> = exported
                .labels(metric)
                .cloned()
                .or_else(|| {
                    OTHER_SOURCES
                        .iter()
                        .find(|(m, _)| m == metric)
                        .map(|(_, ls)| ls.iter().map(|l| l.to_string()).collect())
                })
                .or_else(|| {
                    EVENT_ONLY
                        .iter()
                        .find(|(m, ..)| m == metric)
                        .map(|(_, _, _, ls)| ls.iter().map(|l| l.to_string()).collect())
                });
            let Some(known) = known else {
                let stem: String = metric.split('_').take(2).collect::<Vec<_>>().join("_");
                let near: Vec<&String> = exported
                    .series
                    .keys()
                    .filter(|n| n.starts_with(&stem))
                    .collect();
                problems.push(format!(
                    "{}: metric {metric} is exported by no ebb process and is not one of the \
                     allowed other sources (kube-state-metrics' HPA and pod readiness, up); \
                     ebb exports {near:?}",
                    query.source
                ));
                continue;
            };
            for label in labels {
                if !known.contains(label) && !targets.contains(label) && label != "__name__" {
                    problems.push(format!(
                        "{}: {metric} has no label {label:?} (it has {known:?}; target labels {targets:?})",
                        query.source
                    ));
                }
            }
            known_here.extend(known);
        }
        for label in names.labels.iter().chain(&query.lists_label) {
            if !known_here.contains(label) {
                problems.push(format!(
                    "{}: label {label:?} is on none of the metrics the query names \
                     ({:?}) nor a target label",
                    query.source,
                    names.metrics.iter().map(|(m, _)| m).collect::<Vec<_>>()
                ));
            }
        }
    }
    problems
}

/// A rules file with one recording rule per query (Grafana's variables filled in), so
/// that promtool and Prometheus parse and evaluate each.
fn queries_as_recording_rules(queries: &[Query], values: &[(String, String)]) -> String {
    let mut file = String::from("groups:\n  - name: ebb-dashboard\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        file.push_str(&format!(
            "      # {}\n      - record: ebb_dashboard_query:{i}\n        expr: |\n",
            query.source.replace('\n', " ")
        ));
        for line in substitute(&query.expr, values).lines() {
            file.push_str(&format!("          {line}\n"));
        }
    }
    file
}

// ---------------------------------------------------------------------------------------
// promtool

#[test]
fn the_rules_and_every_dashboard_query_pass_promtool() {
    let started = Instant::now();
    let plain = plain_rules_path();
    let out = promtool_ok(&["check", "rules"], &[&plain]);
    assert!(
        out.contains("SUCCESS: 6 rules found"),
        "promtool check rules:\n{out}"
    );

    // One source: the chart's template. The plain file is it rendered with the defaults.
    let rendered = chart_rules(&[]);
    if std::env::var_os("EBB_UPDATE_RULES").is_some() {
        std::fs::write(&plain, &rendered).expect("write deploy/prometheus/ebb-rules.yaml");
    }
    assert!(
        read(&plain) == rendered,
        "deploy/prometheus/ebb-rules.yaml differs from the chart's PrometheusRule rendered with \
         the default values (deploy/helm/ebb/templates/_prometheus-rules.tpl is the source): run \
         this test with EBB_UPDATE_RULES=1 to write it again"
    );
    let dir = temp_dir("ebb-observability-rules");
    let rendered_path = dir.join("chart-rules.yaml");
    std::fs::write(&rendered_path, &rendered).unwrap();
    promtool_ok(&["check", "rules"], &[&rendered_path]);

    // The unit tests: every alert fires in one case and not in another.
    let tests_dir = repo_root().join("deploy/prometheus/tests");
    let mut tests: Vec<PathBuf> = std::fs::read_dir(&tests_dir)
        .expect("deploy/prometheus/tests")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    tests.sort();
    assert!(
        !tests.is_empty(),
        "no unit tests in {}",
        tests_dir.display()
    );
    let test_refs: Vec<&Path> = tests.iter().map(PathBuf::as_path).collect();
    let out = promtool_ok(&["test", "rules"], &test_refs);
    assert!(out.contains("SUCCESS"), "promtool test rules:\n{out}");
    let tested: BTreeSet<String> = tests
        .iter()
        .flat_map(|t| {
            read(t)
                .lines()
                .filter_map(|l| {
                    l.trim()
                        .strip_prefix("alertname:")
                        .map(|a| a.trim().to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for query in rule_queries(&rendered) {
        let alert = query.source.trim_start_matches("rule ");
        assert!(
            tested.contains(alert),
            "alert {alert} has no promtool unit test"
        );
    }

    // The chart's values reach the rules: a 60 s SLA (past the histogram's last finite
    // bucket, where the mean decides) and extra alert labels.
    let custom = chart_rules(&[
        "--set",
        "monitoring.prometheusRule.messageTimeSlaSeconds=60",
        "--set",
        "monitoring.prometheusRule.alertLabels.team=payments",
    ]);
    std::fs::write(dir.join("custom-rules.yaml"), &custom).unwrap();
    std::fs::write(dir.join("custom.test.yaml"), CUSTOM_VALUES_TEST).unwrap();
    promtool_ok(&["check", "rules"], &[&dir.join("custom-rules.yaml")]);
    promtool_ok(&["test", "rules"], &[&dir.join("custom.test.yaml")]);

    // Every dashboard query parses, with Grafana's variables as concrete values.
    let queries = dashboard_queries(&dashboard());
    let values = grafana_values(
        "ebb",
        "trade-tx",
        "tx-trade-workers",
        "keda-hpa-ebb-consumer",
    );
    let recorded = dir.join("dashboard-queries.yaml");
    std::fs::write(&recorded, queries_as_recording_rules(&queries, &values)).unwrap();
    let out = promtool_ok(&["check", "rules"], &[&recorded]);
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "promtool check rules of the dashboard's queries:\n{out}"
    );
    // ...and the same check refuses a broken one, so the pass above means something.
    let mut broken = queries.clone();
    broken[0].expr = broken[0].expr.replacen(')', "", 1);
    std::fs::write(&recorded, queries_as_recording_rules(&broken, &values)).unwrap();
    let (ok, out) = promtool_run(&["check", "rules"], &[&recorded]);
    assert!(!ok, "promtool accepted an unbalanced query:\n{out}");

    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "promtool: 6 rules, their unit tests and {} dashboard queries in {:.1} s",
        queries.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A unit test of the rules rendered with messageTimeSlaSeconds=60 and an alert label:
/// records wait 75 s on average, past the histogram's last finite bucket (32.768 s), so the
/// p99 reads 32.768 and only the mean sees the SLA broken; then 30 s, within it.
const CUSTOM_VALUES_TEST: &str = r#"
rule_files: [custom-rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'kafka_message_age_seconds_bucket{namespace="ebb", topic="trade-tx", consumer_group="g", le="32.768"}'
        values: '0x20'
      - series: 'kafka_message_age_seconds_bucket{namespace="ebb", topic="trade-tx", consumer_group="g", le="+Inf"}'
        values: '0+600x20'
      - series: 'kafka_message_age_seconds_sum{namespace="ebb", topic="trade-tx", consumer_group="g"}'
        values: '0+45000x20'
      - series: 'kafka_message_age_seconds_count{namespace="ebb", topic="trade-tx", consumer_group="g"}'
        values: '0+600x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: EbbMessageTimeAboveSla
        exp_alerts:
          - exp_labels: {severity: warning, team: payments, namespace: ebb, topic: trade-tx, consumer_group: g}
            exp_annotations:
              summary: "Records of trade-tx wait in Kafka longer than the 60 s SLA"
              description: "Group g on topic trade-tx (namespace ebb) processes records 1m 15s after they were produced (p99, or the mean when longer than the histogram's 32.768 s), above the SLA of 60 s, for 5 minutes."
  - interval: 1m
    input_series:
      - series: 'kafka_message_age_seconds_bucket{namespace="ebb", topic="trade-tx", consumer_group="g", le="32.768"}'
        values: '0+600x20'
      - series: 'kafka_message_age_seconds_bucket{namespace="ebb", topic="trade-tx", consumer_group="g", le="+Inf"}'
        values: '0+600x20'
      - series: 'kafka_message_age_seconds_sum{namespace="ebb", topic="trade-tx", consumer_group="g"}'
        values: '0+18000x20'
      - series: 'kafka_message_age_seconds_count{namespace="ebb", topic="trade-tx", consumer_group="g"}'
        values: '0+600x20'
    alert_rule_test:
      - eval_time: 15m
        alertname: EbbMessageTimeAboveSla
        exp_alerts: []
"#;

// ---------------------------------------------------------------------------------------
// The chart ships the same dashboard

#[test]
fn the_chart_ships_the_same_dashboard_and_renders_monitoring_only_when_asked() {
    // deploy/grafana/ebb.json is the chart's dashboards/ebb.json (a symlink): one file.
    let chart_copy = read(&chart().join("dashboards/ebb.json"));
    assert_eq!(
        read(&dashboard_path()),
        chart_copy,
        "deploy/grafana/ebb.json and deploy/helm/ebb/dashboards/ebb.json differ"
    );
    let rendered = helm_template(&[
        "--show-only",
        "templates/grafana-dashboard.yaml",
        "--set",
        "monitoring.grafanaDashboard.enabled=true",
    ]);
    assert!(
        rendered.contains("\n    grafana_dashboard: \"1\"\n"),
        "the dashboard ConfigMap carries the sidecar's label grafana_dashboard: \"1\":\n{}",
        &rendered[..rendered.len().min(800)]
    );
    let (_, body) = rendered
        .split_once("  ebb.json: |-\n")
        .expect("the ConfigMap's ebb.json key");
    let embedded: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        embedded.trim_end(),
        chart_copy.trim_end(),
        "the ConfigMap holds the dashboard as is"
    );
    // Off by default, like every monitoring object of the chart.
    let defaults = helm_template(&[]);
    assert!(!defaults.contains("kind: PrometheusRule") && !defaults.contains("grafana_dashboard"));
}

// ---------------------------------------------------------------------------------------
// The dashboard, for Grafana

/// Pinned versions of Grafana's schema types and the TypeScript compiler that checks the
/// dashboard against them (npm packages).
const GRAFANA_SCHEMA: &str = "13.2.3";
const TYPESCRIPT: &str = "5.9.3";

/// `@grafana/schema` and `typescript` from npm, installed once into the cache directory.
fn grafana_schema_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME")
        .join("ebb");
    let dir = cache.join(format!(
        "grafana-schema-{GRAFANA_SCHEMA}-typescript-{TYPESCRIPT}"
    ));
    if dir.join("node_modules/.bin/tsc").exists()
        && dir
            .join("node_modules/@grafana/schema/package.json")
            .exists()
    {
        return dir;
    }
    let npm_found = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        npm_found,
        "the dashboard's schema check needs npm (Node.js); install it (Debian: apt-get install -y npm)"
    );
    let staging = cache.join(unique("grafana-schema-staging"));
    std::fs::create_dir_all(&staging).expect("staging dir");
    std::fs::write(
        staging.join("package.json"),
        format!(
            "{{\"private\": true, \"dependencies\": {{\"@grafana/schema\": \"{GRAFANA_SCHEMA}\", \"typescript\": \"{TYPESCRIPT}\"}}}}\n"
        ),
    )
    .unwrap();
    eprintln!(
        "installing @grafana/schema {GRAFANA_SCHEMA} and typescript {TYPESCRIPT} with npm into {}",
        dir.display()
    );
    let out = run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
        ])
        .current_dir(&staging));
    assert!(
        out.status.success(),
        "npm install @grafana/schema@{GRAFANA_SCHEMA} typescript@{TYPESCRIPT} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test process may have finished first; either copy is complete.
    if std::fs::rename(&staging, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    dir
}

/// A TypeScript module that assigns the dashboard, each panel, each panel's options and
/// custom field config (by panel type) and each target to Grafana's types. Object literals
/// get TypeScript's excess-property check, so a misspelt or unknown field fails like a
/// wrong type or a missing required one. `Json<T>` turns the schema's string enums into
/// their string literals, which is what JSON holds.
fn dashboard_typescript(dashboard: &Value) -> String {
    let mut ts = String::from(
        "import type { Dashboard, Panel, RowPanel } from '@grafana/schema';\n\
         import type { Options as TimeSeriesOptions, FieldConfig as TimeSeriesFieldConfig } from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';\n\
         import type { Options as StatOptions } from '@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen';\n\
         type Json<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T : T extends Array<infer U> ? Array<Json<U>> : T extends object ? { [K in keyof T]: Json<T[K]> } : T;\n\
         // A Prometheus query as Grafana stores it (the Prometheus plugin's fields ebb uses).\n\
         interface PrometheusTarget { refId: string; expr: string; legendFormat?: string; range?: boolean; instant?: boolean; editorMode?: 'code' | 'builder'; datasource: { type: 'prometheus'; uid: string }; interval?: string; format?: 'time_series' | 'table' | 'heatmap' }\n",
    );
    for panel in dashboard["panels"].as_array().expect("panels") {
        let id = &panel["id"];
        ts.push_str(&format!("\n// panel {id}: {}\n", panel["title"]));
        if panel["type"] == "row" {
            ts.push_str(&format!("const panel_{id}: Json<RowPanel> = {panel};\n"));
            continue;
        }
        ts.push_str(&format!("const panel_{id}: Json<Panel> = {panel};\n"));
        let (options, custom) = match panel["type"].as_str() {
            Some("timeseries") => ("TimeSeriesOptions", Some("TimeSeriesFieldConfig")),
            Some("stat") => ("StatOptions", None),
            other => panic!(
                "panel {id}: type {other:?} has no schema check here (timeseries, stat, row)"
            ),
        };
        ts.push_str(&format!(
            "const panel_{id}_options: Json<{options}> = {};\n",
            panel["options"]
        ));
        if let Some(custom) = custom {
            ts.push_str(&format!(
                "const panel_{id}_custom: Json<{custom}> = {};\n",
                panel["fieldConfig"]["defaults"]["custom"]
            ));
        }
        for (i, target) in panel["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .enumerate()
        {
            ts.push_str(&format!(
                "const panel_{id}_target_{i}: PrometheusTarget = {target};\n"
            ));
        }
    }
    ts.push_str(&format!(
        "\nexport const dashboard: Json<Dashboard> = {dashboard};\n"
    ));
    ts
}

/// `tsc --noEmit --strict` of the dashboard against `@grafana/schema`; returns tsc's output
/// on failure.
fn typecheck(dashboard: &Value) -> Result<(), String> {
    let schema = grafana_schema_dir();
    // Inside the cache directory, so that `@grafana/schema` resolves from its node_modules.
    let dir = schema.join(unique("check"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.ts"), dashboard_typescript(dashboard)).unwrap();
    std::fs::write(
        dir.join("tsconfig.json"),
        r#"{"compilerOptions": {"strict": true, "noEmit": true, "module": "esnext", "moduleResolution": "bundler", "target": "es2022", "skipLibCheck": true, "types": []}, "files": ["dashboard.ts"]}"#,
    )
    .unwrap();
    let out = run(Command::new(schema.join("node_modules/.bin/tsc"))
        .arg("-p")
        .arg(dir.join("tsconfig.json")));
    let _ = std::fs::remove_dir_all(&dir);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Structural checks of the dashboard JSON that its types cannot express; every broken
/// one is listed.
fn structure_problems(dashboard: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut fail = |p: String| problems.push(p);
    let schema_version = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    if schema_version < 36 {
        fail(format!(
            "schemaVersion {schema_version}: 36 (Grafana 9) or later, with datasource references as objects"
        ));
    }
    for key in ["uid", "title"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            fail(format!("no {key}"));
        }
    }
    if dashboard["uid"].as_str().is_some_and(|u| u.len() > 40) {
        fail("uid longer than Grafana's 40 characters".into());
    }
    let variables: Vec<&Value> = dashboard["templating"]["list"]
        .as_array()
        .map_or(vec![], |l| l.iter().collect());
    let defined: Vec<String> = variables
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    if defined.iter().collect::<BTreeSet<_>>().len() != defined.len() {
        fail(format!("variable names repeat: {defined:?}"));
    }
    let builtins = [
        "__rate_interval",
        "__interval",
        "__range",
        "__all",
        "__interval_ms",
        "__range_s",
    ];
    // Where each variable is used; a query variable may only use those defined before it.
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut uses_in = |text: &str, allowed: &[String], what: &str, problems: &mut Vec<String>| {
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            let after = rest[at + 1..].trim_start_matches('{');
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + 1..];
            if name.is_empty()
                || name.chars().all(|c| c.is_ascii_digit())
                || builtins.contains(&name.as_str())
            {
                continue;
            }
            if !allowed.contains(&name) {
                problems.push(format!(
                    "{what} uses ${name}, which is not a variable defined before it"
                ));
            }
            used.insert(name);
        }
    };
    let mut var_problems = Vec::new();
    for (i, variable) in variables.iter().enumerate() {
        let name = variable["name"].as_str().unwrap_or("?");
        let before = &defined[..i];
        if variable["type"] == "query" {
            uses_in(
                &variable["query"].to_string(),
                before,
                &format!("variable {name}"),
                &mut var_problems,
            );
            uses_in(
                &variable["datasource"].to_string(),
                before,
                &format!("variable {name}'s datasource"),
                &mut var_problems,
            );
            if variable["includeAll"] == true && variable["allValue"] != ".*" {
                var_problems.push(format!("variable {name}: with All, allValue \".*\" also matches series without the label"));
            }
        }
    }
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut boxes: Vec<(String, i64, i64, i64, i64)> = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default().to_string();
        let what = format!("panel {} {title:?}", panel["id"]);
        match panel["id"].as_u64() {
            Some(id) if id > 0 => {
                if !ids.insert(id) {
                    var_problems.push(format!("{what}: id repeats"));
                }
            }
            _ => var_problems.push(format!("{what}: no positive integer id")),
        }
        if title.is_empty() || !titles.insert(title.clone()) {
            var_problems.push(format!("{what}: title empty or repeated"));
        }
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_i64(),
            grid["y"].as_i64(),
            grid["w"].as_i64(),
            grid["h"].as_i64(),
        );
        let (Some(x), Some(y), Some(w), Some(h)) = (x, y, w, h) else {
            var_problems.push(format!("{what}: gridPos needs integer x, y, w, h"));
            continue;
        };
        if x < 0 || y < 0 || w < 1 || h < 1 || x + w > 24 {
            var_problems.push(format!(
                "{what}: gridPos {grid} is outside the 24-column grid"
            ));
        }
        for (other, ox, oy, ow, oh) in &boxes {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                var_problems.push(format!("{what} overlaps {other}"));
            }
        }
        boxes.push((what.clone(), x, y, w, h));
        if panel["type"] == "row" {
            if w != 24
                || h != 1
                || panel["collapsed"] != false
                || panel["panels"] != serde_json::json!([])
            {
                var_problems.push(format!(
                    "{what}: an open row is 24 × 1, with its panels after it"
                ));
            }
            continue;
        }
        if panel["description"].as_str().is_none_or(str::is_empty) {
            var_problems.push(format!("{what}: no description"));
        }
        let datasource = &panel["datasource"];
        if datasource["type"] != "prometheus" || datasource["uid"] != "${datasource}" {
            var_problems.push(format!(
                "{what}: datasource {datasource} is not the $datasource variable"
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            var_problems.push(format!("{what}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in &targets {
            let ref_id = target["refId"].as_str().unwrap_or_default();
            if ref_id.is_empty() || !ref_ids.insert(ref_id.to_string()) {
                var_problems.push(format!("{what}: refId {ref_id:?} empty or repeated"));
            }
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                var_problems.push(format!("{what} {ref_id}: no expr"));
            }
            if target["datasource"] != *datasource {
                var_problems.push(format!(
                    "{what} {ref_id}: its datasource is not the panel's"
                ));
            }
            uses_in(
                &target.to_string(),
                &defined,
                &format!("{what} {ref_id}"),
                &mut var_problems,
            );
        }
        uses_in(&datasource.to_string(), &defined, &what, &mut var_problems);
        uses_in(&title, &defined, &what, &mut var_problems);
    }
    for name in &defined {
        if !used.contains(name) {
            var_problems.push(format!("variable {name} is used nowhere"));
        }
    }
    problems.extend(var_problems);
    problems
}

#[test]
fn the_dashboard_is_valid_for_grafana() {
    let started = Instant::now();
    let dashboard = dashboard();
    let problems = structure_problems(&dashboard);
    assert!(
        problems.is_empty(),
        "deploy/grafana/ebb.json:\n{}",
        problems.join("\n")
    );

    if let Err(tsc) = typecheck(&dashboard) {
        panic!(
            "deploy/grafana/ebb.json does not fit Grafana's schema types (@grafana/schema {GRAFANA_SCHEMA}):\n{tsc}"
        );
    }
    // The same checks fail on a misspelt field, a bad enum value and an overlap.
    let mut bad = dashboard.clone();
    bad["panels"][1]["options"]["legend"] =
        serde_json::json!({"displayMode": "list", "placement": "bottom"});
    bad["panels"][2]["titel"] = "x".into();
    let tsc = typecheck(&bad).expect_err("tsc accepted a dashboard with a misspelt field");
    assert!(
        tsc.contains("'\"titel\"' does not exist") || tsc.contains("'titel' does not exist"),
        "tsc names the misspelt field:\n{tsc}"
    );
    let mut overlapping = dashboard.clone();
    overlapping["panels"][3]["gridPos"] = overlapping["panels"][2]["gridPos"].clone();
    assert!(
        structure_problems(&overlapping)
            .iter()
            .any(|p| p.contains("overlaps"))
    );
    eprintln!(
        "dashboard: {} panels checked against @grafana/schema {GRAFANA_SCHEMA} in {:.1} s",
        dashboard["panels"].as_array().map_or(0, Vec::len),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// ebb's real output and a real Prometheus

/// A child process stopped (SIGTERM, then kill) when dropped; its output goes to a log file.
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &str, mut command: Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }

    /// The address it logged for `setting` (an ebb process started on port 0).
    fn address(&mut self, setting: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(addr) = listening_address(&log, setting) {
                return addr;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} logged no address for {setting} in 30 s; its log:\n{}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on a child we own and have not reaped; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_http_ok(process: &mut Process, url: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while http_get(url).map(|(s, _)| s) != Some(200) {
        process.assert_running();
        assert!(
            Instant::now() < deadline,
            "{} does not answer {url} within {limit:?}; its log:\n{}",
            process.name,
            process.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus on a loopback port with its own config and data directory.
struct Prometheus {
    process: Process,
    addr: String,
}

impl Prometheus {
    /// The API's `data` for GET `path`; panics on an error answer.
    fn api(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.addr);
        let (status, body) =
            http_get(&url).unwrap_or_else(|| panic!("Prometheus does not answer {url}"));
        let answer: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
        assert!(
            status == 200 && answer["status"] == "success",
            "{url} answered {status}: {body}"
        );
        answer["data"].clone()
    }

    /// The instant query's result (series), or the error Prometheus gives.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = format!(
            "http://{}/api/v1/query?query={}",
            self.addr,
            percent_encode(expr)
        );
        let (_, body) =
            http_get(&url).ok_or_else(|| format!("Prometheus does not answer {url}"))?;
        let answer: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Panels (title, refId) whose query must return data from a consumer, a producer and
/// ebb keda-scaler running for seconds: the throughput, lag and message-time panels, and
/// those of ebb's own that a healthy run fills.
const MUST_HAVE_DATA: &[(&str, &str)] = &[
    ("Processing rate", "A"),
    ("Lag", "A"),
    ("Message time p99", "A"),
    ("Consumers", "A"),
    ("Inbound vs processed (msg/s)", "A"),
    ("Inbound vs processed (msg/s)", "B"),
    ("Inbound vs processed (msg/s)", "C"),
    ("Inbound vs processed (msg/s)", "D"),
    ("Consumer lag (records)", "A"),
    ("Message time in Kafka (s)", "A"),
    ("Message time in Kafka (s)", "B"),
    ("Message time in Kafka (s)", "C"),
    ("Batch processing time (s)", "A"),
    ("Lag per partition (records)", "A"),
    ("Time lag (s)", "A"),
    ("Time lag (s)", "B"),
    ("Batches in flight", "A"),
    ("Dead-letter queue (msg/s)", "A"),
    ("PostgreSQL rows: written vs replayed (per second)", "A"),
    ("ebb keda-scaler: desired vs uncapped replicas", "A"),
    ("ebb keda-scaler: needed vs arrival rate (msg/s)", "A"),
    ("Producer: target vs actual rate (msg/s)", "A"),
    ("Producer: target vs actual rate (msg/s)", "B"),
    ("Producer: target vs actual rate (msg/s)", "C"),
];

#[test]
fn dashboard_and_alerts_use_what_ebb_exports_and_prometheus_answers_them() {
    let started = Instant::now();
    let (_, prometheus_bin) = prometheus_tools();
    let bootstrap = kafka();
    let database = postgres();
    let dir = temp_dir("ebb-observability");
    let namespace = "ebb-observability";
    let topic = create_topic("obs", 3);
    let group = unique("obs-file");
    let pg_group = unique("obs-pg");
    let table = unique("obs_trades").replace('-', "_");

    // ebb's processes, each with its /metrics on a port of its own (port 0: each says which).
    let mut producer = ebb();
    producer.args([
        "produce",
        "--topic",
        &topic,
        "--rate",
        "200",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let mut consumer = consume_command(&topic, &group);
    consumer
        .args(["--sink", "file", "--sink-file"])
        .arg(dir.join("trades.jsonl"))
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--batch-processing-time",
            "0",
        ]);
    let mut pg_consumer = consume_command(&topic, &pg_group);
    pg_consumer.args([
        "--sink",
        "postgres",
        "--database-url",
        &database,
        "--database-table",
        &table,
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let mut scaler = ebb();
    scaler.args([
        "keda-scaler",
        "--addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ]);
    let mut processes = vec![
        Process::start("ebb-produce", producer, &dir),
        Process::start("ebb-consume-file", consumer, &dir),
        Process::start("ebb-consume-postgres", pg_consumer, &dir),
        Process::start("ebb-keda-scaler", scaler, &dir),
    ];
    let mut addrs: BTreeMap<&str, String> = BTreeMap::new();
    for (process, name) in processes.iter_mut().zip([
        "producer",
        "consumer-file",
        "consumer-postgres",
        "keda-scaler",
    ]) {
        addrs.insert(name, process.address("--metrics-addr"));
    }
    addrs.insert("keda-scaler-grpc", processes[3].address("--addr"));
    // Prometheus is not ebb and does not report a port it was given as 0: probe one.
    addrs.insert("prometheus", format!("127.0.0.1:{}", free_port()));
    let addr = |name: &str| addrs[name].clone();
    let metrics_url = |name: &str| format!("http://{}/metrics", addrs[name]);
    for (process, name) in processes.iter_mut().zip([
        "producer",
        "consumer-file",
        "consumer-postgres",
        "keda-scaler",
    ]) {
        wait_http_ok(
            process,
            &metrics_url(name).replace("/metrics", "/healthz"),
            Duration::from_secs(30),
        );
    }
    // KEDA's own client asks ebb keda-scaler about the consumer's ScaledObject, so that it
    // exports its per-ScaledObject series, and about one whose topic does not exist, which
    // it counts as a Kafka error.
    let keda_client = |name: &str, topic: &str| -> Value {
        let metadata =
            serde_json::json!({"topic": topic, "group": group, "capacityPerReplica": "100"});
        let out = run(Command::new(tool("keda-extscaler-client"))
            .args([
                "--addr",
                &addr("keda-scaler-grpc"),
                "--name",
                name,
                "--namespace",
                namespace,
            ])
            .args(["--metadata", &metadata.to_string()]));
        assert!(
            out.status.success(),
            "keda-extscaler-client: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("keda-extscaler-client prints JSON")
    };
    let answer = keda_client("ebb-consumer", &topic);
    assert!(
        answer["error"].is_null(),
        "ebb keda-scaler answered {answer}"
    );
    let answer = keda_client("ebb-missing-topic", &unique("obs-no-such-topic"));
    assert_eq!(
        answer["error"]["code"], "NotFound",
        "ebb keda-scaler answered {answer}"
    );

    // A real Prometheus scrapes them every second, as the chart's monitors would: with the
    // namespace, pod and container labels Kubernetes gives and the topic and
    // consumer_group labels the chart adds. It loads ebb's rules and every dashboard query
    // as a recording rule.
    let hpa = "keda-hpa-ebb-consumer";
    let values = grafana_values(namespace, &topic, &format!("({group}|{pg_group})"), hpa);
    let queries = dashboard_queries(&dashboard());
    std::fs::write(
        dir.join("dashboard-queries.yaml"),
        queries_as_recording_rules(&queries, &values),
    )
    .unwrap();
    let target = |job: &str, pod: &str, container: &str, group: &str| {
        format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{}']\n        labels:\n          namespace: {namespace}\n          pod: {pod}\n          container: {container}\n          topic: '{topic}'\n          consumer_group: '{group}'\n",
            addr(job)
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n  - {}\nscrape_configs:\n{}{}{}{}",
        plain_rules_path().display(),
        dir.join("dashboard-queries.yaml").display(),
        target(
            "producer",
            "ebb-producer-6b5c4d3e2-a1b2c",
            "producer",
            &group
        ),
        target(
            "consumer-file",
            "ebb-consumer-7f9c8d6b5-x2k4q",
            "consumer",
            &group
        ),
        target(
            "consumer-postgres",
            "ebb-pg-consumer-5d4c3b2a1-p9q8r",
            "consumer",
            &pg_group
        ),
        target(
            "keda-scaler",
            "ebb-keda-scaler-58f7d6c5b-k7l6m",
            "keda-scaler",
            &group
        ),
    );
    std::fs::write(dir.join("prometheus.yml"), &config).unwrap();
    let mut command = Command::new(prometheus_bin);
    command
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={}", addr("prometheus")))
        .arg("--log.level=warn");
    let mut prometheus = Prometheus {
        process: Process::start("prometheus", command, &dir),
        addr: addr("prometheus"),
    };
    wait_http_ok(
        &mut prometheus.process,
        &format!("http://{}/-/ready", prometheus.addr),
        Duration::from_secs(30),
    );

    // Once Prometheus has scraped every target, a record that is not a trade: both groups
    // dead-letter it, which EbbDeadLetters must see as a rate above zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = prometheus.query("sum(up)").unwrap_or_default();
        if up.first().and_then(|s| s["value"][1].as_str()) == Some("4") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has not scraped all 4 ebb targets in 30 s: {:?}",
            prometheus.api("/api/v1/targets")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A rate needs a sample from before the record: both consumers' counters scraped at 0.
    wait_until(
        "Prometheus to hold both consumers' dead-letter counters at 0",
        Duration::from_secs(30),
        || {
            let zeros = prometheus
                .query("count(ebb_consumer_dead_lettered_total == 0)")
                .unwrap_or_default();
            zeros.first().and_then(|s| s["value"][1].as_str()) == Some("2")
        },
    );
    produce_raw(
        &bootstrap,
        &topic,
        &[(
            Some(b"ACC1000".as_slice()),
            Some(b"this is not a trade".as_slice()),
        )],
    );

    // Every metric and label the dashboard and the alerts name is one ebb exports (or an
    // allowed other source's), checked against what the processes serve on /metrics.
    wait_until(
        "the dead-lettered record counted by both consumers",
        Duration::from_secs(30),
        || {
            ["consumer-file", "consumer-postgres"].iter().all(|c| {
                http_get(&metrics_url(c)).is_some_and(|(_, m)| {
                    m.lines().any(|l| l == "ebb_consumer_dead_lettered_total 1")
                })
            })
        },
    );
    let mut exported = Exported::default();
    for name in [
        "producer",
        "consumer-file",
        "consumer-postgres",
        "keda-scaler",
    ] {
        let (status, text) = http_get(&metrics_url(name)).expect("GET /metrics");
        assert_eq!(status, 200, "{name} /metrics");
        exported.add(name, &text);
    }
    for (series, file, registered, _) in EVENT_ONLY {
        assert!(
            read(&repo_root().join(file)).contains(registered),
            "{series} is allowed as an ebb metric that appears with its first event, but {file} \
             no longer registers {registered}"
        );
    }
    let mut targets: BTreeSet<String> = PROMETHEUS_TARGET_LABELS
        .iter()
        .map(|l| l.to_string())
        .collect();
    targets.extend(chart_target_labels());
    let rules = rule_queries(&read(&plain_rules_path()));
    assert_eq!(rules.len(), 6, "the rules file's expressions");
    let all: Vec<Query> = queries.iter().chain(&rules).cloned().collect();
    let problems = unknown_names(&all, &exported, &targets);
    assert!(
        problems.is_empty(),
        "the dashboard or the alerts name what ebb does not export:\n{}",
        problems.join("\n")
    );
    // The check bites: a misspelt metric, a label ebb does not have.
    let mut wrong = all[1].clone();
    wrong.expr = wrong
        .expr
        .replace("ebb_consumer_partition_lag", "ebb_consumer_partition_lags");
    let mut wrong_label = all[1].clone();
    wrong_label.expr = wrong_label.expr.replace("partition)", "partitions)");
    let found = unknown_names(&[wrong, wrong_label], &exported, &targets);
    assert!(
        found
            .iter()
            .any(|p| p.contains("ebb_consumer_partition_lags"))
            && found.iter().any(|p| p.contains("\"partitions\"")),
        "the name check must catch a wrong metric and a wrong label: {found:?}"
    );

    // Prometheus answers every dashboard query; those of MUST_HAVE_DATA with data.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answers: BTreeMap<String, Result<usize, String>> = BTreeMap::new();
    loop {
        for process in processes.iter_mut() {
            process.assert_running();
        }
        prometheus.process.assert_running();
        answers.clear();
        for query in &queries {
            let expr = substitute(&query.expr, &values);
            answers.insert(
                query.source.clone(),
                prometheus.query(&expr).map(|r| r.len()),
            );
        }
        let missing: Vec<&(&str, &str)> = MUST_HAVE_DATA
            .iter()
            .filter(|(title, ref_id)| {
                let query = queries
                    .iter()
                    .find(|q| q.panel.as_ref().is_some_and(|(t, r)| t == title && r == ref_id))
                    .unwrap_or_else(|| panic!("MUST_HAVE_DATA names panel {title:?} {ref_id}, which the dashboard lacks"));
                !matches!(answers[&query.source], Ok(n) if n > 0)
            })
            .collect();
        let errors: Vec<String> = answers
            .iter()
            .filter_map(|(source, a)| a.as_ref().err().map(|e| format!("{source}: {e}")))
            .collect();
        assert!(
            errors.is_empty(),
            "Prometheus refused dashboard queries:\n{}",
            errors.join("\n")
        );
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within 60 s Prometheus has no data for {missing:?}; every answer (series):\n{answers:#?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Every rule (the alerts and the dashboard's queries) evaluates without error on real
    // data, and EbbDeadLetters fires for the dead-lettered record.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = prometheus.api("/api/v1/rules");
        let rules: Vec<&Value> = groups["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        assert_eq!(rules.len(), 6 + queries.len(), "rules Prometheus loaded");
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(
            bad.is_empty(),
            "rules that fail on ebb's real data:\n{}",
            bad.join("\n")
        );
        let evaluated = rules.iter().all(|r| r["health"] == "ok");
        let alerts = prometheus.api("/api/v1/alerts");
        let firing = alerts["alerts"].as_array().into_iter().flatten().any(|a| {
            a["labels"]["alertname"] == "EbbDeadLetters"
                && a["labels"]["topic"] == topic.as_str()
                && a["labels"]["consumer_group"] == group.as_str()
                && a["state"] == "firing"
        });
        if evaluated && firing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within 30 s: every rule evaluated ({evaluated}), EbbDeadLetters firing for {topic} ({firing}); alerts: {alerts}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // What had no data: kube-state-metrics' HPA series (no cluster here) and counters of
    // events a healthy run does not have.
    let without_data: Vec<&String> = answers
        .iter()
        .filter(|(_, a)| !matches!(a, Ok(n) if *n > 0))
        .map(|(source, _)| source)
        .collect();

    drop(prometheus);
    drop(processes);
    psql(&database, &format!("DROP TABLE IF EXISTS {table}"));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{} dashboard queries and 6 rules name only what ebb exports ({} series names from 4 \
         processes); Prometheus answered all, {} with data, in {:.1} s; without data: {without_data:#?}",
        queries.len(),
        exported.series.len(),
        queries.len() - without_data.len(),
        started.elapsed().as_secs_f64()
    );
}
