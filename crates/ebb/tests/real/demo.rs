//! `ebb demo` end to end, shortened: the pipeline scales out and back to zero, nothing is
//! lost, no process is left behind, the counts come from the producer's and workers' exit
//! summaries, and the dashboard page explains itself: every panel with data, time and unit
//! axes, scale events with the policy's reason, the workers, and the summary once the run
//! has ended.

use std::time::Duration;

use crate::common::*;

#[test]
fn a_short_demo_loses_nothing_and_leaves_no_process() {
    let _busy = one_busy_test_at_a_time();
    let out = temp_file("demo");
    // The demo's own ports: the supervisor's and the producer's metrics at the base, the
    // workers' from base + 100 (12 partitions: at most 12 workers). It derives them from
    // one base, so they cannot be port 0; the dashboard's can.
    let base = free_port_base(100, (0..2).chain(100..112));
    let mut command = ebb();
    command
        .args([
            "demo",
            "--profile",
            "20@5s,600@20s,0@10s",
            "--drain-timeout",
            "120s",
            "--sla",
            "20s",
            // Long enough to load the finished page; the test ends the linger itself.
            "--linger",
            "120s",
        ])
        .args(["--dashboard-addr", "127.0.0.1:0"])
        .args(["--port-base", &base.to_string()])
        .arg("--out")
        .arg(&out);
    let mut demo = Running::spawn(command);
    let dashboard = demo.address("--dashboard-addr");
    let page = wait_for_page(&dashboard);
    assert!(
        page.contains("Messages per second") && page.contains("Replicas"),
        "{page}"
    );
    let chromium = Chromium::new();
    check_dashboard_in_chromium(&chromium, &dashboard);
    if wait_for_summary(&mut demo.child, &dashboard) {
        check_summary_in_chromium(&chromium, &dashboard);
        // The page has shown the summary: end the linger.
        demo.signal(libc::SIGTERM);
    }
    let result = demo.finish(Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let field = |name: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert!(field("produced") > 10_000, "{stdout}");
    assert_eq!(field("lost"), 0, "{stdout}");
    assert_eq!(field("duplicates"), 0, "{stdout}");
    assert!(field("max_replicas") >= 2, "scaled out: {stdout}");
    for file in ["series.csv", "summary.json", "chart.svg"] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    // summary.json has what the text summary says, and the run's settings, for scripts.
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
            .expect("summary.json is JSON");
    assert_eq!(summary["produced"].as_u64(), Some(field("produced")));
    assert_eq!(summary["lost"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["duplicates"].as_u64(), Some(0), "{summary}");
    assert_eq!(
        summary["settings"]["profile"].as_str(),
        Some("20@5s,600@20s,0@10s"),
        "{summary}"
    );
    assert_eq!(summary["settings"]["policy"].as_str(), Some("ebb-rate"));
    assert!(summary["message_time_p99_s"].is_number(), "{summary}");
    assert_eq!(
        summary["settings"]["sla_s"].as_f64(),
        Some(20.0),
        "{summary}"
    );
    // The counts come from the exit summaries: the producer's, and one per worker.
    let producer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("producer.summary.json")).unwrap())
            .expect("the producer's summary is JSON");
    assert_eq!(producer["delivered"], summary["produced"], "{producer}");
    assert_eq!(producer["failed"].as_u64(), Some(0), "{producer}");
    assert_eq!(
        summary["workers_without_summary"].as_u64(),
        Some(0),
        "every worker stopped cleanly: {summary}"
    );
    let workers: Vec<serde_json::Value> = std::fs::read_dir(out.join("workers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".summary.json"))
        .map(|e| serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap())
        .collect();
    assert!(workers.len() >= 2, "a summary per worker: {workers:?}");
    let processed: u64 = workers.iter().filter_map(|w| w["processed"].as_u64()).sum();
    assert_eq!(
        Some(processed),
        summary["processed_total"].as_u64(),
        "{workers:?}"
    );
    assert!(
        workers.iter().all(|w| w["failure"].is_null()),
        "{workers:?}"
    );
    // The supervisor's and producer's ports, and the workers' (base + 100 on).
    let ports: Vec<String> = (0..2)
        .chain(100..112)
        .map(|offset| (base + offset).to_string())
        .collect();
    let leftovers = std::process::Command::new("pgrep")
        .args(["-f", &format!("127\\.0\\.0\\.1:({})( |$)", ports.join("|"))])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&leftovers.stdout).trim().is_empty(),
        "no worker, producer or supervisor left"
    );
}

/// The body of the dashboard's `path` when it answers 200, else empty.
fn dashboard_get(addr: &str, path: &str) -> String {
    match http_get(&format!("http://{addr}{path}")) {
        Some((200, body)) => body,
        _ => String::new(),
    }
}

fn wait_for_page(addr: &str) -> String {
    let mut page = String::new();
    wait_until("the dashboard", Duration::from_secs(60), || {
        page = dashboard_get(addr, "/");
        !page.is_empty()
    });
    page
}

/// Waits until the demo serves its summary (the run has ended and it lingers); false if
/// the demo exited first, for the caller's checks of its output to say why.
fn wait_for_summary(demo: &mut std::process::Child, addr: &str) -> bool {
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(300) {
        if demo.try_wait().expect("try_wait").is_some() {
            return false;
        }
        let run = dashboard_get(addr, "/run.json");
        if run.contains("\"summary\":{") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("the demo served no summary within 300 s");
}

/// Headless Chromium with a profile of its own.
struct Chromium {
    binary: &'static str,
    profile: std::path::PathBuf,
}

impl Chromium {
    fn new() -> Self {
        // Debian's Chromium is not on a new machine: install it (once) when it is missing.
        let found = |c: &str| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !found("chromium") && !found("chromium-browser") {
            ebb_testkit::ensure_debian_packages(&["chromium"]);
        }
        let binary = ["chromium", "chromium-browser"]
            .into_iter()
            .find(|c| {
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {c}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("the dashboard test needs Chromium: apt-get install -y chromium");
        Chromium {
            binary,
            profile: temp_file("chromium-profile"),
        }
    }

    /// Loads the page at `addr`, lets its scripts run, and returns what it printed
    /// (with `--dump-dom`: the rendered DOM).
    fn load(&self, addr: &str, extra: &[&str]) -> String {
        let out = std::process::Command::new(self.binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
            ])
            .args([
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--window-size=960,1000",
            ])
            .arg(format!("--user-data-dir={}", self.profile.display()))
            .args(["--virtual-time-budget=3000"])
            .args(extra)
            .arg(format!("http://{addr}/"))
            .output()
            .expect("run chromium");
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

/// The text of the first element whose tag has `attribute` (e.g. `id="status"`), up to
/// the next tag.
fn text_after<'a>(dom: &'a str, attribute: &str) -> &'a str {
    dom.find(attribute)
        .and_then(|at| dom[at..].split_once('>'))
        .map_or("", |(_, text)| text.split('<').next().unwrap_or(""))
}

/// Loads the dashboard in headless Chromium twice during the run: every panel has lines
/// with data points, time and unit axes, at least one scale-event marker with the
/// policy's reason, a worker table with rows; and what it shows changes over time. Keeps
/// a screenshot in the target directory.
fn check_dashboard_in_chromium(chromium: &Chromium, addr: &str) {
    let run = |extra: &[&str]| chromium.load(addr, extra);
    // What the checks below look for exists: a few samples (three points per line) and
    // the first scale event. Under load (other suites running beside it) the demo takes
    // longer to get there than on an idle machine.
    wait_until(
        "the demo to serve samples and a scale event",
        Duration::from_secs(60),
        || {
            let body = |path| {
                serde_json::from_str::<serde_json::Value>(&dashboard_get(addr, path))
                    .unwrap_or_default()
            };
            let samples = body("/series.json").as_array().map_or(0, Vec::len);
            let events = body("/run.json")["events"].as_array().map_or(0, Vec::len);
            samples >= 4 && events >= 1
        },
    );
    let first = run(&["--dump-dom"]);
    // The rendered panels, not the script that draws them.
    let panels = first
        .split("<div id=\"panels\">")
        .nth(1)
        .and_then(|p| p.split("<script").next())
        .unwrap_or("");
    let lines: Vec<&str> = panels.split("<polyline").skip(1).collect();
    assert_eq!(lines.len(), 8, "eight lines over four panels:\n{first}");
    for line in &lines {
        let points = line
            .split("points=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap_or("");
        assert!(
            points.split_whitespace().count() >= 3,
            "a line with data points: {line}"
        );
    }
    let status = |dom: &str| {
        dom.split("id=\"status\">")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap_or("")
            .to_string()
    };
    std::thread::sleep(Duration::from_secs(3));
    let second = run(&["--dump-dom"]);
    assert!(
        status(&first).starts_with("t="),
        "status shows data: {first}"
    );
    assert_ne!(status(&first), status(&second), "the page updates");
    check_explanations(&second);
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-dashboard.png");
    run(&[&format!("--screenshot={}", shot.display())]);
    assert!(shot.is_file(), "screenshot kept at {}", shot.display());
}

/// What makes the page explain itself, in a DOM dumped during the run.
fn check_explanations(dom: &str) {
    // The rendered page, not the script that renders it.
    let dom = dom.split("<script").next().unwrap_or("");
    // Time ticks on every panel, from 0 s on.
    let time_ticks = dom.matches("class=\"tick-x\"").count();
    assert!(time_ticks >= 8, "time ticks on four panels: {dom}");
    assert_eq!(text_after(dom, "class=\"tick-x\""), "0 s", "{dom}");
    assert!(
        dom.matches("class=\"tick-y\"").count() >= 8,
        "value ticks: {dom}"
    );
    // Each panel's value axis names its unit.
    let units: Vec<&str> = dom
        .split("class=\"unit\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('>').map(|(_, text)| text))
        .map(|text| text.split('<').next().unwrap_or(""))
        .collect();
    assert_eq!(units, ["msg/s", "records", "s", "replicas"], "{dom}");
    // Scale events: a marker with the policy's arithmetic, and the same in the list.
    let marker = dom
        .split("<g class=\"event\"")
        .nth(1)
        .unwrap_or_else(|| panic!("a scale-event marker: {dom}"));
    let reason = marker
        .split("<title>")
        .nth(1)
        .and_then(|t| t.split("</title>").next())
        .unwrap_or("");
    assert!(
        reason.contains("→") && reason.contains("msg/s per worker"),
        "the marker's tooltip has ebb-rate's reason: {reason}"
    );
    let listed = dom
        .split("<li class=\"event-row\"><b>")
        .nth(1)
        .and_then(|item| item.split('<').next())
        .unwrap_or("");
    assert!(listed.contains("s: 0 → "), "the first event, listed: {dom}");
    // The workers, one row each, with their partitions and state.
    let rows: Vec<&str> = dom.split("<tr class=\"worker\">").skip(1).collect();
    assert!(!rows.is_empty(), "a row per worker: {dom}");
    assert!(
        rows.iter().any(|r| ["starting", "ready", "stopping"]
            .iter()
            .any(|s| r.contains(s))),
        "a worker's state: {dom}"
    );
}

/// Loads the dashboard after the run has ended (while the demo lingers): the summary box
/// shows the run's figures, nothing lost.
fn check_summary_in_chromium(chromium: &Chromium, addr: &str) {
    let dom = chromium.load(addr, &["--dump-dom"]);
    let summary = dom
        .split("id=\"summary\"")
        .nth(1)
        .and_then(|s| s.split("id=\"panels\"").next())
        .unwrap_or("");
    assert!(
        !summary.contains("hidden") && summary.contains("Run finished"),
        "a visible summary box: {dom}"
    );
    assert_eq!(text_after(summary, "data-field=\"lost\""), "0", "{summary}");
    let produced = text_after(summary, "data-field=\"produced\"").replace(',', "");
    assert!(
        produced.parse::<u64>().is_ok_and(|n| n > 10_000),
        "produced: {summary}"
    );
    assert!(
        text_after(&dom, "id=\"status\"").contains("run finished"),
        "{dom}"
    );
}
