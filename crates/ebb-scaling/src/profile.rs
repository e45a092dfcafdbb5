//! Rate profiles: how many messages per second to send at each moment.
//!
//! One syntax serves the producer (`ebb produce --rate`), the simulator's traffic and the
//! demo's scenarios. A profile is a comma-separated list of segments, each `SHAPE@DURATION`;
//! the last segment may leave out its duration and then lasts forever:
//!
//! | form                          | meaning                                                     |
//! |-------------------------------|-------------------------------------------------------------|
//! | `1000`, `2.5k`                | constant rate (`k` = ×1,000, `m` is not a suffix)           |
//! | `0..5000`, `ramp(0,5000)`     | linear ramp across the segment                              |
//! | `spike(100,5000,60s,30s)`     | base 100, peak 5000 from 60 s into the segment for 30 s     |
//! | `sine(1000,500,60s)`          | 1000 ± 500 with a 60 s period (never below 0)               |
//!
//! Example: `10@60s,1000@5m,5000@10m,0` is 10 msg/s for a minute, 1,000 for five, 5,000 for
//! ten, then paused for good. A profile whose segments all have durations ends after the last.
//!
//! Besides the rate at an instant, a profile gives the exact number of messages due by an
//! instant ([`RateProfile::due_by`]), so a pacer can schedule on absolute time without drift.

use std::fmt;
use std::time::Duration;

/// A parsed rate profile. See the module documentation for the syntax.
#[derive(Debug, Clone, PartialEq)]
pub struct RateProfile {
    segments: Vec<Segment>,
}

/// One piece of a profile: a shape held for a duration (or forever, for the last one).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// What the rate does during the segment.
    pub shape: Shape,
    /// How long the segment lasts; `None` only for the last segment, which never ends.
    pub duration: Option<Duration>,
}

/// The rate within one segment, as a function of the time since the segment began.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A fixed rate.
    Constant(f64),
    /// From `from` at the segment's start to `to` at its end, linearly.
    Ramp { from: f64, to: f64 },
    /// `base`, except `peak` during `[start, start + width)`.
    Spike {
        base: f64,
        peak: f64,
        start: Duration,
        width: Duration,
    },
    /// `mean + amplitude × sin(2πt / period)`, clamped at 0.
    Sine {
        mean: f64,
        amplitude: f64,
        period: Duration,
    },
}

/// Why a profile could not be parsed: the whole input, the offending part and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad rate profile \"{input}\": {part}: {reason}")]
pub struct ProfileError {
    /// The profile text as given.
    pub input: String,
    /// The segment or value the problem is in, quoted, e.g. `segment 2 "abc@5m"`.
    pub part: String,
    /// What is wrong and, where it helps, what would be right.
    pub reason: String,
}

impl RateProfile {
    /// A profile that sends `rate` messages per second forever.
    pub fn constant(rate: f64) -> Self {
        RateProfile {
            segments: vec![Segment {
                shape: Shape::Constant(rate.max(0.0)),
                duration: None,
            }],
        }
    }

    /// The segments, in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Total length, or `None` when the profile runs forever.
    pub fn duration(&self) -> Option<Duration> {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// The target rate (msg/s) at `t` since the profile started; `None` once it has ended.
    pub fn rate_at(&self, t: Duration) -> Option<f64> {
        let (segment, offset) = self.locate(t)?;
        Some(segment.shape.rate_at(offset, segment.duration))
    }

    /// How many messages are due in `[0, t)`: the integral of the rate. After the end of a
    /// finite profile this stays at the total.
    pub fn due_by(&self, t: Duration) -> f64 {
        let mut due = 0.0;
        let mut begin = Duration::ZERO;
        for segment in &self.segments {
            let length = segment.duration.unwrap_or(Duration::MAX);
            let within = t.saturating_sub(begin).min(length);
            due += segment.shape.integral(within, segment.duration);
            match begin.checked_add(length) {
                Some(end) if t > end => begin = end,
                _ => break,
            }
        }
        due
    }

    /// The highest rate the profile ever asks for (for sizing and chart scales).
    pub fn peak_rate(&self) -> f64 {
        self.segments
            .iter()
            .map(|s| match s.shape {
                Shape::Constant(r) => r,
                Shape::Ramp { from, to } => from.max(to),
                Shape::Spike { base, peak, .. } => base.max(peak),
                Shape::Sine {
                    mean, amplitude, ..
                } => mean + amplitude.abs(),
            })
            .fold(0.0, f64::max)
    }

    fn locate(&self, t: Duration) -> Option<(&Segment, Duration)> {
        let mut begin = Duration::ZERO;
        for segment in &self.segments {
            match segment.duration {
                None => return Some((segment, t - begin)),
                Some(length) if t < begin + length => return Some((segment, t - begin)),
                Some(length) => begin += length,
            }
        }
        None
    }
}

impl Shape {
    fn rate_at(&self, offset: Duration, segment_length: Option<Duration>) -> f64 {
        let x = offset.as_secs_f64();
        match *self {
            Shape::Constant(r) => r,
            Shape::Ramp { from, to } => match segment_length {
                Some(length) if !length.is_zero() => {
                    from + (to - from) * (x / length.as_secs_f64()).min(1.0)
                }
                _ => from,
            },
            Shape::Spike {
                base,
                peak,
                start,
                width,
            } => {
                if offset >= start && offset < start + width {
                    peak
                } else {
                    base
                }
            }
            Shape::Sine {
                mean,
                amplitude,
                period,
            } => {
                let phase = std::f64::consts::TAU * x / period.as_secs_f64();
                (mean + amplitude * phase.sin()).max(0.0)
            }
        }
    }

    /// Messages due in the first `within` of the segment.
    fn integral(&self, within: Duration, segment_length: Option<Duration>) -> f64 {
        let x = within.as_secs_f64();
        match *self {
            Shape::Constant(r) => r * x,
            Shape::Ramp { from, to } => match segment_length {
                Some(length) if !length.is_zero() => {
                    let slope = (to - from) / length.as_secs_f64();
                    from * x + slope * x * x / 2.0
                }
                _ => from * x,
            },
            Shape::Spike {
                base,
                peak,
                start,
                width,
            } => {
                let s = start.as_secs_f64();
                let in_peak = (x.min(s + width.as_secs_f64()) - s).max(0.0);
                base * (x - in_peak) + peak * in_peak
            }
            Shape::Sine {
                mean,
                amplitude,
                period,
            } => {
                if amplitude.abs() <= mean {
                    // Never clamped: the closed form is exact.
                    let w = std::f64::consts::TAU / period.as_secs_f64();
                    mean * x + amplitude * (1.0 - (w * x).cos()) / w
                } else {
                    clamped_sine_integral(mean, amplitude, period.as_secs_f64(), x)
                }
            }
        }
    }
}

/// A sine that dips below zero is clamped there; integrate it numerically (fine steps keep
/// the pacing error far below one message per period for any sensible rate).
fn clamped_sine_integral(mean: f64, amplitude: f64, period: f64, x: f64) -> f64 {
    const STEPS_PER_PERIOD: f64 = 10_000.0;
    let steps = ((x / period) * STEPS_PER_PERIOD).ceil().max(1.0) as u64;
    let h = x / steps as f64;
    let w = std::f64::consts::TAU / period;
    (0..steps)
        .map(|i| {
            let mid = (i as f64 + 0.5) * h;
            (mean + amplitude * (w * mid).sin()).max(0.0) * h
        })
        .sum()
}

impl std::str::FromStr for RateProfile {
    type Err = ProfileError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |part: String, reason: String| ProfileError {
            input: input.to_string(),
            part,
            reason,
        };
        let parts = split_top_level(input);
        if parts.iter().all(|p| p.trim().is_empty()) {
            return Err(fail(
                "the profile".into(),
                "is empty; give a rate such as 1000".into(),
            ));
        }
        let count = parts.len();
        let mut segments = Vec::with_capacity(count);
        for (i, raw) in parts.iter().enumerate() {
            let text = raw.trim();
            let part = format!("segment {} \"{text}\"", i + 1);
            let segment = parse_segment(text).map_err(|reason| fail(part.clone(), reason))?;
            if segment.duration.is_none() && i + 1 < count {
                return Err(fail(
                    part,
                    "only the last segment may run forever; give it a duration, e.g. 1000@60s"
                        .into(),
                ));
            }
            segments.push(segment);
        }
        Ok(RateProfile { segments })
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

fn parse_segment(text: &str) -> Result<Segment, String> {
    if text.is_empty() {
        return Err("is empty (two commas in a row, or a trailing comma?)".into());
    }
    // The duration follows the last '@' outside parentheses.
    let (shape_text, duration) = match text.rfind('@') {
        Some(at) if !text[at..].contains(')') => {
            let duration = parse_duration(text[at + 1..].trim())?;
            if duration.is_zero() {
                return Err("a segment must last longer than 0s".into());
            }
            (text[..at].trim(), Some(duration))
        }
        _ => (text, None),
    };
    Ok(Segment {
        shape: parse_shape(shape_text)?,
        duration,
    })
}

fn parse_shape(text: &str) -> Result<Shape, String> {
    if let Some(open) = text.find('(') {
        let name = text[..open].trim();
        let Some(body) = text[open + 1..].strip_suffix(')') else {
            return Err(format!("\"{text}\" has no closing parenthesis"));
        };
        let args: Vec<&str> = body.split(',').map(str::trim).collect();
        let want = |n: usize, usage: &str| {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("{name} takes {n} arguments: {usage}"))
            }
        };
        return match name {
            "ramp" => {
                want(2, "ramp(FROM,TO)")?;
                Ok(Shape::Ramp {
                    from: parse_rate(args[0])?,
                    to: parse_rate(args[1])?,
                })
            }
            "spike" => {
                want(
                    4,
                    "spike(BASE,PEAK,START,WIDTH), e.g. spike(100,5000,60s,30s)",
                )?;
                Ok(Shape::Spike {
                    base: parse_rate(args[0])?,
                    peak: parse_rate(args[1])?,
                    start: parse_duration(args[2])?,
                    width: parse_duration(args[3])?,
                })
            }
            "sine" => {
                want(3, "sine(MEAN,AMPLITUDE,PERIOD), e.g. sine(1000,500,60s)")?;
                let period = parse_duration(args[2])?;
                if period.is_zero() {
                    return Err("a sine's period must be longer than 0s".into());
                }
                Ok(Shape::Sine {
                    mean: parse_rate(args[0])?,
                    amplitude: parse_rate(args[1])?,
                    period,
                })
            }
            other => Err(format!(
                "unknown shape \"{other}\"; use ramp(..), spike(..) or sine(..)"
            )),
        };
    }
    if let Some((from, to)) = text.split_once("..") {
        return Ok(Shape::Ramp {
            from: parse_rate(from.trim())?,
            to: parse_rate(to.trim())?,
        });
    }
    Ok(Shape::Constant(parse_rate(text)?))
}

/// A non-negative rate in messages per second; `k` multiplies by 1,000.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1_000.0),
        None => (text, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v * scale),
        Ok(_) => Err(format!("rate \"{text}\" must be a finite number ≥ 0")),
        Err(_) => Err(format!(
            "rate \"{text}\" is not a number (msg/s, e.g. 1000 or 2.5k)"
        )),
    }
}

/// A duration with a unit, as `humantime` reads it: `500ms`, `60s`, `5m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("duration \"{text}\" needs a unit, e.g. {text}s"));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("duration \"{text}\" is not valid ({e}); use e.g. 30s, 5m, 1h"))
}

impl fmt::Display for RateProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: Duration| humantime::format_duration(d).to_string().replace(' ', "");
        for (i, segment) in self.segments.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &segment.shape {
                Shape::Constant(r) => write!(f, "{r}")?,
                Shape::Ramp { from, to } => write!(f, "{from}..{to}")?,
                Shape::Spike {
                    base,
                    peak,
                    start,
                    width,
                } => write!(f, "spike({base},{peak},{},{})", d(*start), d(*width))?,
                Shape::Sine {
                    mean,
                    amplitude,
                    period,
                } => write!(f, "sine({mean},{amplitude},{})", d(*period))?,
            }
            if let Some(duration) = segment.duration {
                write!(f, "@{}", d(duration))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RateProfile {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn constant_runs_forever() {
        let profile = p("1000");
        assert_eq!(profile.rate_at(secs(0.0)), Some(1000.0));
        assert_eq!(profile.rate_at(secs(1e6)), Some(1000.0));
        assert_eq!(profile.duration(), None);
        assert!((profile.due_by(secs(2.5)) - 2500.0).abs() < 1e-9);
        assert_eq!(p("2.5k").rate_at(Duration::ZERO), Some(2500.0));
    }

    #[test]
    fn schedule_of_steps() {
        let profile = p("10@60s,1000@5m,5000@10m,0");
        assert_eq!(profile.rate_at(secs(59.9)), Some(10.0));
        assert_eq!(profile.rate_at(secs(60.0)), Some(1000.0));
        assert_eq!(profile.rate_at(secs(360.0)), Some(5000.0));
        assert_eq!(profile.rate_at(secs(960.0)), Some(0.0));
        assert_eq!(profile.rate_at(secs(1e5)), Some(0.0));
        let expected = 10.0 * 60.0 + 1000.0 * 300.0 + 5000.0 * 30.0;
        assert!((profile.due_by(secs(390.0)) - expected).abs() < 1e-6);
    }

    #[test]
    fn finite_profile_ends() {
        let profile = p("100@10s,200@10s");
        assert_eq!(profile.duration(), Some(secs(20.0)));
        assert_eq!(profile.rate_at(secs(19.99)), Some(200.0));
        assert_eq!(profile.rate_at(secs(20.0)), None);
        assert!((profile.due_by(secs(100.0)) - 3000.0).abs() < 1e-9);
    }

    #[test]
    fn linear_ramp_both_spellings() {
        for text in ["0..1000@10s", "ramp(0,1000)@10s"] {
            let profile = p(text);
            assert_eq!(profile.rate_at(secs(5.0)), Some(500.0), "{text}");
            // Area of the triangle: 1000 × 10 / 2.
            assert!((profile.due_by(secs(10.0)) - 5000.0).abs() < 1e-6, "{text}");
            assert!((profile.due_by(secs(5.0)) - 1250.0).abs() < 1e-6, "{text}");
        }
    }

    #[test]
    fn spike_inside_segment() {
        let profile = p("spike(100,5000,60s,30s)@5m,0");
        assert_eq!(profile.rate_at(secs(59.0)), Some(100.0));
        assert_eq!(profile.rate_at(secs(60.0)), Some(5000.0));
        assert_eq!(profile.rate_at(secs(89.9)), Some(5000.0));
        assert_eq!(profile.rate_at(secs(90.0)), Some(100.0));
        assert!((profile.due_by(secs(120.0)) - (100.0 * 90.0 + 5000.0 * 30.0)).abs() < 1e-6);
    }

    #[test]
    fn sine_and_its_integral() {
        let profile = p("sine(1000,500,60s)");
        assert!((profile.rate_at(secs(15.0)).unwrap() - 1500.0).abs() < 1e-9);
        assert!((profile.rate_at(secs(45.0)).unwrap() - 500.0).abs() < 1e-9);
        // Over whole periods the sine averages out to the mean.
        assert!((profile.due_by(secs(120.0)) - 120_000.0).abs() < 1e-6);
        assert_eq!(profile.peak_rate(), 1500.0);
    }

    #[test]
    fn sine_clamped_at_zero() {
        let profile = p("sine(100,300,10s)");
        assert_eq!(profile.rate_at(secs(7.5)), Some(0.0));
        let due = profile.due_by(secs(10.0));
        // Positive lobe: ∫max(0, 100 + 300 sin) over a period, computed independently.
        let mut reference = 0.0;
        let n = 1_000_000;
        for i in 0..n {
            let t = (i as f64 + 0.5) * 10.0 / n as f64;
            reference += (100.0 + 300.0 * (std::f64::consts::TAU * t / 10.0).sin()).max(0.0);
        }
        reference *= 10.0 / n as f64;
        assert!((due - reference).abs() < 0.5, "{due} vs {reference}");
        assert!(
            due > 1000.0,
            "clamping adds messages compared with the mean alone"
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "10@1m,1000@5m,0",
            "0..5000@2m",
            "spike(1,2,3s,4s)@10s,7",
            "sine(5,2,1m)",
        ] {
            let once = p(text);
            assert_eq!(p(&once.to_string()), once, "{text} -> {once}");
        }
    }

    #[test]
    fn bad_profiles_name_the_offending_part() {
        let cases = [
            ("", "the profile", "empty"),
            ("10@60s,abc@5m", "segment 2 \"abc@5m\"", "not a number"),
            ("10,20@5s", "segment 1 \"10\"", "only the last segment"),
            ("10@60", "segment 1 \"10@60\"", "needs a unit"),
            ("10@fast", "segment 1 \"10@fast\"", "not valid"),
            ("-5", "segment 1 \"-5\"", "≥ 0"),
            ("10@0s", "segment 1", "longer than 0s"),
            ("10@5s,,0", "segment 2", "empty"),
            ("spike(1,2,3s)", "segment 1", "4 arguments"),
            ("sine(1,2,0s)", "segment 1", "period"),
            ("wave(1,2)", "segment 1", "unknown shape \"wave\""),
            ("ramp(1,2", "segment 1", "closing parenthesis"),
            ("inf", "segment 1", "finite"),
        ];
        for (input, part, reason) in cases {
            let err = input.parse::<RateProfile>().expect_err(input);
            assert!(
                err.part.starts_with(part),
                "{input}: part was {:?}",
                err.part
            );
            assert!(
                err.reason.contains(reason),
                "{input}: reason was {:?}",
                err.reason
            );
            assert!(err.to_string().contains(input), "{err}");
        }
    }
}
