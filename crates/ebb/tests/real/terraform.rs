//! deploy/terraform (VPC, MSK, EKS Auto Mode, Pod Identity, KEDA, kube-prometheus-stack, the
//! ebb chart) checked with the tools that run on this machine: `tofu fmt -check` (OpenTofu's
//! formatter, the same output as `terraform fmt`), `tflint` with every rule of its bundled
//! terraform ruleset (`.tflint.hcl`: preset "all"), `checkov` with every skip explained, and
//! two checks of our own on the parsed HCL: the MSK policies name their cluster, topic and
//! group ARNs (no `kafka-cluster:*`, no Resource "*"), and the values Terraform hands the
//! ebb chart pass the chart's schema and render.
//!
//! What is NOT checked here, and cannot be: `terraform init`, `validate` and `plan` need the
//! aws, helm, kubernetes and random providers from the Terraform (or OpenTofu) registry,
//! which this machine cannot reach, so argument names and types are only as right as the
//! providers' documentation they were written from; tflint's AWS ruleset (instance types,
//! invalid enums) is a plugin download from GitHub and is not installed; nothing is applied
//! to AWS. The tools come from `scripts/k8s-tools install` (tofu ~9 min and tflint ~3 min
//! to build once from the Go module proxy, then cached).

use std::path::{Path, PathBuf};
use std::process::Command;

use ebb_testkit::kube::{run, run_ok, tool, tools};
use ebb_testkit::{repo_root, unique};

fn terraform_dir() -> PathBuf {
    repo_root().join("deploy/terraform")
}

/// A fresh directory under the temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(unique("ebb-terraform"))
        .join(name);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Copies the .tf and .hcl files of `from` (recursively, without .terraform) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("copy target");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let path = entry.path();
        let name = entry.file_name();
        if path.is_dir() {
            if name != ".terraform" {
                copy_tree(&path, &to.join(&name));
            }
        } else if path
            .extension()
            .is_some_and(|e| e == "tf" || e == "hcl" || e == "tfvars")
        {
            std::fs::copy(&path, to.join(&name)).expect("copy file");
        }
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `script` with the tools' Python (checkov's venv, which has checkov's HCL parser
/// `hcl2` and PyYAML) and `args`; returns its output, which must be a success.
fn python(script: &str, args: &[&str]) -> String {
    let python = tools().join("venv/bin/python");
    run_ok(Command::new(python).arg("-c").arg(script).args(args))
}

#[test]
fn the_terraform_is_formatted_as_terraform_fmt_wants() {
    let out = run(Command::new(tool("tofu"))
        .args(["fmt", "-check", "-recursive", "-diff"])
        .arg(terraform_dir()));
    assert!(
        out.status.success(),
        "tofu fmt -check -recursive deploy/terraform (fix with: tofu fmt -recursive deploy/terraform):\n{}",
        output_text(&out)
    );

    // The same check refuses a misaligned file, so a pass above means something.
    let dir = temp_dir("fmt");
    std::fs::write(
        dir.join("bad.tf"),
        "variable \"x\" {\n  type = string\n  description      = \"misaligned\"\n}\n",
    )
    .expect("bad.tf");
    let out = run(Command::new(tool("tofu"))
        .args(["fmt", "-check", "-recursive"])
        .arg(&dir));
    assert!(
        !out.status.success() && output_text(&out).contains("bad.tf"),
        "tofu fmt -check accepted a misformatted file:\n{}",
        output_text(&out)
    );
}

/// `tflint --recursive` over the root module and each local module, with the repository's
/// `.tflint.hcl` (every rule of the bundled terraform ruleset).
fn tflint(dir: &Path) -> std::process::Output {
    run(Command::new(tool("tflint"))
        .current_dir(dir)
        .args(["--recursive", "--format", "compact", "--config"])
        .arg(dir.join(".tflint.hcl")))
}

#[test]
fn tflint_passes_with_every_rule_of_its_terraform_ruleset() {
    let config = std::fs::read_to_string(terraform_dir().join(".tflint.hcl")).expect(".tflint.hcl");
    assert!(
        config.contains("preset  = \"all\""),
        ".tflint.hcl must enable every rule of the terraform ruleset:\n{config}"
    );
    let out = tflint(&terraform_dir());
    assert!(
        out.status.success(),
        "tflint --recursive in deploy/terraform:\n{}",
        output_text(&out)
    );

    // An undocumented, untyped variable in a module is caught.
    let copy = temp_dir("tflint");
    copy_tree(&terraform_dir(), &copy);
    let variables = copy.join("modules/msk/variables.tf");
    let mut text = std::fs::read_to_string(&variables).expect("variables.tf");
    text.push_str("\nvariable \"undocumented\" {}\n");
    std::fs::write(&variables, text).expect("write variables.tf");
    let out = tflint(&copy);
    let text = output_text(&out);
    assert!(
        !out.status.success()
            && text.contains("terraform_documented_variables")
            && text.contains("terraform_typed_variables"),
        "tflint accepted an undocumented, untyped variable:\n{text}"
    );
}

/// Reads checkov's JSON report on stdin; fails unless nothing failed and every skip has a
/// reason of some substance. Prints the counts and the skips.
const CHECKOV_REPORT: &str = r#"
import json, sys
reports = json.load(sys.stdin)
if isinstance(reports, dict):
    reports = [reports]
problems, passed, skipped = [], 0, []
for report in reports:
    results = report.get("results", {})
    passed += len(results.get("passed_checks", []))
    for c in results.get("failed_checks", []):
        problems.append(f"FAILED {c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}")
    for c in results.get("skipped_checks", []):
        reason = (c.get("check_result", {}).get("suppress_comment") or "").strip()
        skipped.append(f"{c['check_id']} {c['resource']}: {reason}")
        if len(reason) < 30 or reason == "No comment provided":
            problems.append(f"SKIPPED WITHOUT A REASON {c['check_id']} {c['resource']}: {reason!r}")
print(f"passed {passed}, failed {len([p for p in problems if p.startswith('FAILED')])}, skipped {len(skipped)}")
for s in skipped:
    print("  skipped", s)
if passed == 0:
    problems.append("checkov passed no check at all: did it find the files?")
if problems:
    print("\n".join(problems))
    sys.exit(1)
"#;

#[test]
fn checkov_passes_with_every_skip_explained() {
    let out = run(Command::new(tool("checkov"))
        .args([
            "--skip-download",
            "--framework",
            "terraform",
            "--output",
            "json",
            "-d",
        ])
        .arg(terraform_dir()));
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let python = tools().join("venv/bin/python");
    let mut child = Command::new(python)
        .arg("-c")
        .arg(CHECKOV_REPORT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), report.as_bytes())
        .expect("report to python");
    drop(child.stdin.take());
    let summary = child.wait_with_output().expect("python output");
    assert!(
        out.status.success() && summary.status.success(),
        "checkov -d deploy/terraform --framework terraform ({}):\n{}\nits stderr:\n{}",
        out.status,
        output_text(&summary),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses iam.tf with checkov's HCL parser and checks every MSK statement: kafka-cluster
/// actions only, each named (no wildcard), on resources that are the stack's own ARNs
/// (locals), and the split between clients the README and iam.tf describe.
const IAM_CHECK: &str = r#"
import json, re, sys, hcl2
doc = hcl2.load(open(sys.argv[1]))
def attr(block, key):
    # The parser wraps each attribute's value in a list of one.
    value = block.get(key, [[]])
    return value[0] if isinstance(value, list) and len(value) == 1 else value
policies = {}
for block in doc.get("data", []):
    for name, body in block.get("aws_iam_policy_document", {}).items():
        statements = []
        for s in body.get("statement", []):
            statements.append((attr(s, "actions"), attr(s, "resources")))
        for d in body.get("dynamic", []):
            content = d["statement"]["content"]
            content = content[0] if isinstance(content, list) else content
            statements.append((attr(content, "actions"), attr(content, "resources")))
        policies[name] = statements
problems = []
# A resource is the stack's own cluster, topic, dead-letter topic or group ARN (locals), or
# a dynamic statement's value (its for_each, checked the same way); never a wildcard.
arns = {"cluster_arn", "topic_arn", "dead_letter_arn", "group_arn"}
def check_resource(where, r):
    refs = set(re.findall(r"local\.(\w+)", r))
    if "*" in r or not ((refs and refs <= arns) or r == "${statement.value}"):
        problems.append(f"{where}: resource {r!r} is not the cluster, topic or group ARN")
for block in doc.get("data", []):
    for name, body in block.get("aws_iam_policy_document", {}).items():
        for d in body.get("dynamic", []):
            check_resource(name + " (for_each)", attr(d["statement"], "for_each"))
for name, statements in policies.items():
    for actions, resources in statements:
        for a in ([actions] if isinstance(actions, str) else actions):
            if not a.startswith("kafka-cluster:") or "*" in a:
                problems.append(f"{name}: action {a!r} is not one named kafka-cluster action")
        for r in ([resources] if isinstance(resources, str) else resources):
            check_resource(name, r)
def actions_of(name):
    return sorted({a for actions, _ in policies[name] for a in actions})
expected = {
    "consumer": ["kafka-cluster:AlterGroup", "kafka-cluster:Connect", "kafka-cluster:DescribeGroup",
                 "kafka-cluster:DescribeTopic", "kafka-cluster:ReadData", "kafka-cluster:WriteData",
                 "kafka-cluster:WriteDataIdempotently"],
    "producer": ["kafka-cluster:Connect", "kafka-cluster:DescribeTopic", "kafka-cluster:WriteData",
                 "kafka-cluster:WriteDataIdempotently"],
    "lag_reader": ["kafka-cluster:Connect", "kafka-cluster:DescribeGroup", "kafka-cluster:DescribeTopic"],
    "topic_admin": ["kafka-cluster:Connect", "kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"],
}
for name, want in expected.items():
    if name not in policies:
        problems.append(f"no policy document {name}")
    elif actions_of(name) != want:
        problems.append(f"{name}: actions {actions_of(name)}, expected {want}")
# The lag readers never read records, the producer never reads, nobody administers topics but the admin.
for name in ("lag_reader", "producer"):
    if name in policies and "kafka-cluster:ReadData" in actions_of(name):
        problems.append(f"{name} may read records")
for name in ("consumer", "producer", "lag_reader"):
    if name in policies and "kafka-cluster:CreateTopic" in actions_of(name):
        problems.append(f"{name} may create topics")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print("checked", ", ".join(sorted(policies)))
"#;

#[test]
fn msk_policies_name_their_resources_and_each_client_gets_only_its_actions() {
    let iam = terraform_dir().join("iam.tf");
    let out = python(IAM_CHECK, &[iam.to_str().expect("utf-8 path")]);
    assert!(out.contains("consumer"), "{out}");

    // The check refuses a wildcard resource and an action a client does not need.
    let text = std::fs::read_to_string(&iam).expect("iam.tf");
    for (from, to, expected) in [
        (
            "resources = [local.group_arn]",
            "resources = [\"*\"]",
            "is not the cluster, topic or group ARN",
        ),
        (
            "actions   = [\"kafka-cluster:DescribeTopic\"]",
            "actions   = [\"kafka-cluster:DescribeTopic\", \"kafka-cluster:ReadData\"]",
            "lag_reader may read records",
        ),
    ] {
        assert!(text.contains(from), "iam.tf no longer has {from:?}");
        let bad = temp_dir("iam").join("iam.tf");
        std::fs::write(&bad, text.replacen(from, to, 1)).expect("bad iam.tf");
        let out = run(Command::new(tools().join("venv/bin/python"))
            .arg("-c")
            .arg(IAM_CHECK)
            .arg(&bad));
        assert!(
            !out.status.success() && output_text(&out).contains(expected),
            "the policy check accepted {to:?}:\n{}",
            output_text(&out)
        );
    }

    // No kafka-cluster wildcard anywhere in the stack, modules included.
    fn scan(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                scan(&path, found);
            } else if path.extension().is_some_and(|e| e == "tf") {
                let text = std::fs::read_to_string(&path).expect("tf file");
                for (i, line) in text.lines().enumerate() {
                    if line.contains("kafka-cluster:*") && !line.trim_start().starts_with('#') {
                        found.push(format!("{}:{}: {line}", path.display(), i + 1));
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    scan(&terraform_dir(), &mut found);
    assert!(
        found.is_empty(),
        "kafka-cluster:* in:\n{}",
        found.join("\n")
    );
}

/// Reads `local.ebb_values` of kubernetes.tf with checkov's HCL parser, replaces each
/// Terraform expression by the sample value the table (argv[2], JSON) gives for it (an
/// expression missing from the table is an error: add it), and prints the values as JSON.
const EBB_VALUES: &str = r#"
import json, sys, hcl2
doc = hcl2.load(open(sys.argv[1]))
table = json.loads(sys.argv[2])
values = next(l["ebb_values"] for l in doc["locals"] if "ebb_values" in l)
# The parser wraps each attribute's value in a list of one.
values = values[0] if isinstance(values, list) else values
missing = set()
def resolve(node):
    if isinstance(node, dict):
        return {k: resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v) for v in node]
    if isinstance(node, str) and "${" in node:
        if node not in table:
            missing.add(node)
            return None
        return table[node]
    return node
resolved = resolve(values)
if missing:
    sys.exit("expressions without a sample value in the test's table: " + ", ".join(sorted(missing)))
print(json.dumps(resolved))
"#;

#[test]
fn the_values_terraform_gives_the_ebb_chart_pass_its_schema_and_render() {
    let kubernetes_tf = terraform_dir().join("kubernetes.tf");
    for (mode, expected_trigger) in [("keda-lag", "type: kafka"), ("ebb-rate", "type: external")] {
        let table = format!(
            r#"{{
              "${{aws_ecr_repository.ebb.repository_url}}": "registry.example/ebb",
              "${{var.ebb_image_tag}}": "0.1.0",
              "${{module.msk.bootstrap_brokers_sasl_iam}}": "b-1.msk.example:9098,b-2.msk.example:9098,b-3.msk.example:9098",
              "${{var.topic.name}}": "trade-tx",
              "${{var.consumer_group}}": "tx-trade-workers",
              "${{var.region}}": "us-east-1",
              "${{var.ebb_service_account}}": "ebb",
              "${{var.topic.dead_letter_topic}}": "",
              "${{var.ebb_producer_enabled}}": true,
              "${{var.ebb_producer_rate}}": "10",
              "${{var.ebb_scaling_mode}}": "{mode}",
              "${{var.topic.partitions}}": 100,
              "${{local.kafka_protocol_version}}": "4.1.0",
              "${{local.kube_prometheus_stack_release}}": "kube-prometheus-stack",
              "${{var.keda_namespace}}": "keda"
            }}"#
        );
        let values = python(
            EBB_VALUES,
            &[kubernetes_tf.to_str().expect("utf-8 path"), &table],
        );
        let file = temp_dir(mode).join("values.json");
        std::fs::write(&file, values).expect("values.json");
        let rendered = run_ok(
            Command::new(tool("helm"))
                .args(["template", "ebb"])
                .arg(repo_root().join("deploy/helm/ebb"))
                .args(["--namespace", "ebb", "-f"])
                .arg(&file),
        );
        for expected in [
            "image: \"registry.example/ebb:0.1.0\"",
            "serviceAccountName: ebb",
            "value: \"b-1.msk.example:9098,b-2.msk.example:9098,b-3.msk.example:9098\"",
            "name: AWS_REGION",
            "value: \"AWS_MSK_IAM\"",
            expected_trigger,
        ] {
            assert!(
                rendered.contains(expected),
                "{mode}: the chart rendered from Terraform's values lacks {expected:?}:\n{rendered}"
            );
        }
    }
}

#[test]
fn the_keda_chart_is_the_keda_version_ebb_is_checked_against() {
    let script = std::fs::read_to_string(repo_root().join("scripts/k8s-tools")).expect("k8s-tools");
    let keda = script
        .lines()
        .find_map(|l| l.strip_prefix("KEDA_VERSION="))
        .and_then(|v| v.split_whitespace().next())
        .expect("KEDA_VERSION in scripts/k8s-tools");
    let variables =
        std::fs::read_to_string(terraform_dir().join("variables.tf")).expect("variables.tf");
    let block = variables
        .split("variable \"keda_chart_version\"")
        .nth(1)
        .expect("variable keda_chart_version");
    let default = block
        .lines()
        .find_map(|l| l.trim().strip_prefix("default"))
        .map(|l| {
            l.trim_start_matches([' ', '='])
                .trim()
                .trim_matches('"')
                .to_string()
        })
        .expect("keda_chart_version's default");
    assert_eq!(
        format!("v{default}"),
        keda,
        "keda_chart_version's default (the chart's version is KEDA's) must be scripts/k8s-tools' KEDA_VERSION"
    );
}
