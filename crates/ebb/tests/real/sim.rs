//! `ebb sim` and `ebb tune` as a user runs them (no Kafka needed).

use crate::common::{SMALL_SCENARIO, run, temp_file};

fn repo_file(path: &str) -> String {
    ebb_testkit::repo_root().join(path).display().to_string()
}

fn summary(dir: &std::path::Path, policy: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(policy).join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn sim_writes_series_summary_and_chart_and_ebb_rate_beats_the_reference_config() {
    let out = temp_file("sim");
    let result = run(&[
        "sim",
        "--scenario",
        &repo_file("scenarios/reference-spike.yaml"),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(
        stdout.contains("sla_violation_s")
            && stdout.contains("keda-lag")
            && stdout.contains("ebb-rate"),
        "{stdout}"
    );
    for policy in ["keda-lag", "ebb-rate"] {
        let csv = std::fs::read_to_string(out.join(policy).join("series.csv")).unwrap();
        assert!(csv.starts_with("t_s,arrival_rate,processed_rate,lag,lag_target,desired_replicas,current_replicas,ready_replicas,message_time_s"));
        assert_eq!(
            csv.lines().count(),
            70 * 60 + 1,
            "one row per second of the 70 minutes"
        );
        let svg = std::fs::read_to_string(out.join(policy).join("chart.svg")).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 8);
    }
    let keda = summary(&out, "keda-lag");
    let ebb = summary(&out, "ebb-rate");
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    // The goal on reference-spike with a 30 s SLA.
    assert!(
        f(&ebb, "sla_violation_s") < f(&keda, "sla_violation_s"),
        "{ebb} vs {keda}"
    );
    assert!(
        f(&ebb, "replica_seconds") <= f(&keda, "replica_seconds"),
        "{ebb} vs {keda}"
    );
    assert_eq!(f(&ebb, "reversals"), 0.0, "{ebb}");
    // Nothing is lost in the model.
    assert_eq!(
        f(&ebb, "arrived"),
        f(&ebb, "processed") + f(&ebb, "final_lag")
    );
}

#[test]
fn a_bad_scenario_exits_2_naming_the_setting() {
    let path = temp_file("bad.yaml");
    std::fs::write(
        &path,
        "traffic: \"100@1m\"\nservice:\n  capacity: 10\n  rampUpp: 5s\n",
    )
    .unwrap();
    let result = run(&["sim", "--scenario", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("service.rampUpp"), "{stderr}");
    let result = run(&["sim", "--scenario", "/nonexistent/scenario.yaml"]);
    assert_eq!(result.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&result.stderr).contains("/nonexistent/scenario.yaml"));
}

#[test]
fn tune_prints_a_scaled_object_that_parses_and_its_prediction() {
    let path = temp_file("small.yaml");
    std::fs::write(&path, SMALL_SCENARIO).unwrap();
    let yaml_out = temp_file("tuned.yaml");
    let result = run(&[
        "tune",
        "--scenario",
        path.to_str().unwrap(),
        "--out",
        yaml_out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    assert!(stderr.contains("tried 5184"), "{stderr}");
    assert!(
        stdout.contains("kind: ScaledObject")
            && stdout.contains("keda-tuned")
            && stdout.contains("ebb-rate"),
        "{stdout}"
    );
    assert!(!stdout.contains("No candidate met the SLA"), "{stdout}");
    let yaml = std::fs::read_to_string(&yaml_out).unwrap();
    ebb_scaling::scaledobject::parse_scaled_object(&yaml, "tuned.yaml")
        .expect("the printed ScaledObject parses");
}

/// The highest processed rate in a run's series.csv.
fn peak_processed_rate(dir: &std::path::Path) -> f64 {
    let csv = std::fs::read_to_string(dir.join("series.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = header.iter().position(|c| *c == "processed_rate").unwrap();
    lines
        .map(|l| l.split(',').nth(column).unwrap().parse::<f64>().unwrap())
        .fold(0.0, f64::max)
}

#[test]
fn sim_runs_a_key_order_scenario_whose_replicas_do_more_than_one_batch_per_partition() {
    let key_path = repo_file("scenarios/key-order.yaml");
    let key_text = std::fs::read_to_string(&key_path).unwrap();
    // The same scenario in partition order: the two lines that select key order removed.
    let partition_text = key_text.replace("  ordering: key\n  keyLanes: 16\n", "");
    assert_ne!(partition_text, key_text, "the scenario selects key order");
    let partition_path = temp_file("partition-order.yaml");
    std::fs::write(&partition_path, partition_text).unwrap();

    let mut runs = Vec::new();
    for (order, path) in [
        ("key", key_path.clone()),
        ("partition", partition_path.display().to_string()),
    ] {
        let out = temp_file(&format!("sim-{order}"));
        let result = run(&[
            "sim",
            "--scenario",
            &path,
            "--policy",
            "ebb-rate",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            result.status.success(),
            "{order}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        runs.push((summary, peak_processed_rate(&out)));
    }
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    let (key, key_peak) = &runs[0];
    let (partition, partition_peak) = &runs[1];

    // 6 partitions of batches of 100 per second: partition order never passes 600 msg/s
    // and falls behind 3,000 msg/s for good, even at the 6 replicas the partitions allow.
    assert!(*partition_peak <= 600.0 + 1e-6, "{partition_peak}");
    assert!(f(partition, "final_lag") > 1_000_000.0, "{partition}");
    assert_eq!(f(partition, "max_replicas"), 6.0, "{partition}");
    // Key order: 16 lanes per partition keep up, and the replicas stay within the
    // partitions.
    assert!(*key_peak > 600.0, "{key_peak}");
    assert_eq!(f(key, "final_lag"), 0.0, "{key}");
    assert_eq!(f(key, "sla_violation_s"), 0.0, "{key}");
    assert!(f(key, "max_replicas") <= 6.0, "{key}");
}
