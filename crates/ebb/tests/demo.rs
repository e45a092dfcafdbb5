//! `ebb demo` end to end, shortened: the pipeline scales out and back to zero, nothing is
//! lost, no process is left behind, and the dashboard page shows every panel with data.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn a_short_demo_loses_nothing_and_leaves_no_process() {
    let out = temp_file("demo");
    let dashboard = format!("127.0.0.1:{}", free_port());
    let base = (free_port() / 100).max(30) * 100;
    let demo = ebb()
        .args([
            "demo",
            "--profile",
            "20@5s,600@20s,0@10s",
            "--drain-timeout",
            "120s",
        ])
        .args([
            "--dashboard-addr",
            &dashboard,
            "--port-base",
            &base.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let page = wait_for_page(&dashboard);
    assert!(
        page.contains("Messages per second") && page.contains("Replicas"),
        "{page}"
    );
    check_dashboard_in_chromium(&dashboard);
    let result = finish(demo, Duration::from_secs(300));
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
    let leftovers = std::process::Command::new("pgrep")
        .args(["-f", &format!("127.0.0.1:{}[0-9]", base / 10)])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&leftovers.stdout).trim().is_empty(),
        "no worker, producer or supervisor left"
    );
}

fn wait_for_page(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut page = String::new();
    wait_until("the dashboard", Duration::from_secs(60), || {
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = write!(stream, "GET / HTTP/1.0\r\n\r\n");
        page.clear();
        stream.read_to_string(&mut page).is_ok() && page.split_whitespace().nth(1) == Some("200")
    });
    page
}

/// Loads the dashboard in headless Chromium twice: every panel has lines with data points,
/// and what it shows changes over time. Keeps a screenshot in the target directory.
fn check_dashboard_in_chromium(addr: &str) {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("the dashboard test needs Chromium: apt-get install -y chromium");
    let profile = temp_file("chromium-profile");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(chromium)
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
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=3000"])
            .args(extra)
            .arg(format!("http://{addr}/"))
            .output()
            .expect("run chromium");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    std::thread::sleep(Duration::from_secs(8));
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
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-dashboard.png");
    run(&[&format!("--screenshot={}", shot.display())]);
    assert!(shot.is_file(), "screenshot kept at {}", shot.display());
}
