//! An SVG chart of a run with the panels of the reference's Grafana dashboard: inbound vs
//! processed rate, lag vs target, message time in Kafka, and replicas desired, current
//! and ready. Plain SVG text, no dependencies.

use std::fmt::Write;

use crate::sim::Sample;

const WIDTH: f64 = 960.0;
const PANEL: f64 = 170.0;
const GAP: f64 = 46.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;

struct Line<'a> {
    label: &'a str,
    color: &'a str,
    value: fn(&Sample) -> f64,
}

/// Renders `series` as an SVG document titled `title`.
pub fn render(title: &str, series: &[Sample]) -> String {
    let panels: [(&str, Vec<Line<'_>>); 4] = [
        (
            "Messages per second: inbound vs processed",
            vec![
                Line {
                    label: "inbound",
                    color: "#1f77b4",
                    value: |s| s.arrival_rate,
                },
                Line {
                    label: "processed",
                    color: "#2ca02c",
                    value: |s| s.processed_rate,
                },
            ],
        ),
        (
            "Lag vs target",
            vec![
                Line {
                    label: "lag",
                    color: "#d62728",
                    value: |s| s.lag,
                },
                Line {
                    label: "target",
                    color: "#7f7f7f",
                    value: |s| s.lag_target,
                },
            ],
        ),
        (
            "Message time in Kafka (s)",
            vec![Line {
                label: "oldest waiting",
                color: "#9467bd",
                value: |s| s.message_time_s,
            }],
        ),
        (
            "Replicas",
            vec![
                Line {
                    label: "desired",
                    color: "#ff7f0e",
                    value: |s| s.desired_replicas as f64,
                },
                Line {
                    label: "current",
                    color: "#1f77b4",
                    value: |s| s.current_replicas as f64,
                },
                Line {
                    label: "ready",
                    color: "#2ca02c",
                    value: |s| s.ready_replicas as f64,
                },
            ],
        ),
    ];
    let height = 40.0 + panels.len() as f64 * (PANEL + GAP);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let t_max = series.last().map_or(1.0, |s| s.t_s).max(1.0);
    for (i, (name, lines)) in panels.iter().enumerate() {
        let top = 40.0 + i as f64 * (PANEL + GAP) + 18.0;
        // The first line sets the scale; the others may reach twice as high before they
        // are clipped, so a large target cannot flatten the line that matters.
        let line_max = |l: &Line<'_>| {
            series
                .iter()
                .map(|s| (l.value)(s))
                .filter(|v| v.is_finite())
                .fold(0.0f64, f64::max)
        };
        let primary = line_max(&lines[0]);
        let others = lines[1..].iter().map(line_max).fold(0.0f64, f64::max);
        let y_max = primary.max(others.min(2.0 * primary)).max(1.0) * 1.05;
        let plot_w = WIDTH - LEFT - RIGHT;
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{}</text>"#,
            top - 6.0,
            escape(name)
        );
        let _ = writeln!(
            svg,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#ccc"/>"##
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            top + 10.0,
            short(y_max)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">0</text>"#,
            LEFT - 6.0,
            top + PANEL
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            top + PANEL + 14.0,
            minutes(t_max)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="{}">0</text>"#,
            top + PANEL + 14.0
        );
        for (j, line) in lines.iter().enumerate() {
            let mut points = String::new();
            // At most ~2 points per pixel keeps the file small for long runs.
            let stride = (series.len() / (plot_w as usize * 2)).max(1);
            for s in series.iter().step_by(stride) {
                let x = LEFT + s.t_s / t_max * plot_w;
                let y = top + PANEL - ((line.value)(s) / y_max).clamp(0.0, 1.0) * PANEL;
                let _ = write!(points, "{x:.1},{y:.1} ");
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                line.color,
                points.trim_end()
            );
            let lx = LEFT + 330.0 + j as f64 * 110.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{lx}" y="{}" width="12" height="3" fill="{}"/>"#,
                top - 11.0,
                line.color
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">{}</text>"#,
                lx + 16.0,
                top - 6.0,
                line.label
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn minutes(seconds: f64) -> String {
    format!("{:.0} min", seconds / 60.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_panel_has_its_lines() {
        let series: Vec<Sample> = (0..100)
            .map(|i| Sample {
                t_s: i as f64,
                arrival_rate: 10.0,
                processed_rate: 9.0,
                lag: i as f64,
                lag_target: 50.0,
                desired_replicas: 2,
                current_replicas: 2,
                ready_replicas: 1,
                message_time_s: 1.0,
            })
            .collect();
        let svg = render("a <test>", &series);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 8);
        assert!(svg.contains("a &lt;test&gt;"));
        for label in [
            "inbound",
            "processed",
            "lag",
            "target",
            "oldest waiting",
            "desired",
            "current",
            "ready",
        ] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
    }
}
