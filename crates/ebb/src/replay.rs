//! `ebb replay`: move a consumer group's committed offsets to a time, back by a duration,
//! or to offsets (see `ebb_core::replay`), after showing the plan; `--dry-run` only shows it.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{ArgGroup, Args};
use ebb_core::replay::{Actor, OffsetSpec, ReplayError, ReplayMode, ReplayPlan, ReplaySettings};

use crate::args::{KafkaArgs, UsageError, parse_duration};

/// Reset a consumer group's committed offsets on a topic so that its records are read
/// again (or skipped): to a time, back by a duration, or to offsets. Prints the plan per
/// partition (committed offset, target, records to reprocess or skip) and applies it,
/// unless --dry-run. Refused (exit 1) while the group has members: stop its consumers
/// first. Each applied change is logged with the OS user and host and the Kafka principal
/// (User:<SASL user>, the client certificate's subject, or User:ANONYMOUS). Give exactly
/// one of --to-time, --by-duration, --to-offset, on the command line or in the
/// environment (for a Kubernetes Job, say); one in each is refused as two.
#[derive(Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["to_time", "by_duration", "to_offset"])))]
pub struct ReplayArgs {
    /// The consumer group whose offsets move.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "tx-trade-workers")]
    group: String,

    /// The topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "trade-tx")]
    topic: String,

    /// Move each partition to its first record at or after this time: RFC 3339 with a zone
    /// (2026-01-31T09:00:00Z, 2026-01-31T10:00:00.5+01:00) or a duration back from now
    /// ("10m ago", "1h 30m ago"). A partition with no record that recent goes to its log
    /// end. Default: none.
    #[arg(long, env = "EBB_REPLAY_TO_TIME", value_name = "TIME", value_parser = parse_time)]
    to_time: Option<SystemTime>,

    /// Move each partition back by this much time from now (10m, 2h, 1d): to its first
    /// record at or after now minus DURATION. Default: none.
    #[arg(long, env = "EBB_REPLAY_BY_DURATION", value_name = "DURATION",
          value_parser = parse_duration)]
    by_duration: Option<Duration>,

    /// Move to offsets: earliest (the log start), latest (the log end), N (every
    /// partition), or P=N,P=N (those partitions only; the others stay). Offsets outside a
    /// partition's log are moved to its start or end. Default: none.
    #[arg(long, env = "EBB_REPLAY_TO_OFFSET", value_name = "OFFSETS", value_parser = parse_offsets)]
    to_offset: Option<OffsetSpec>,

    /// Only print the plan; change nothing (allowed while the group has members).
    /// EBB_REPLAY_DRY_RUN=true makes every replay in that environment a dry run.
    /// Default: false (the plan is applied).
    #[arg(long, env = "EBB_REPLAY_DRY_RUN")]
    dry_run: bool,

    /// Print JSON (one object, for scripts) instead of a table.
    #[arg(long, env = "EBB_JSON")]
    json: bool,

    #[command(flatten)]
    kafka: KafkaArgs,
}

fn parse_time(text: &str) -> Result<SystemTime, String> {
    ebb_core::replay::parse_time(text, SystemTime::now()).map_err(|e| e.to_string())
}

fn parse_offsets(text: &str) -> Result<OffsetSpec, String> {
    text.parse::<OffsetSpec>().map_err(|e| e.to_string())
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let mode = match (args.to_time, args.by_duration, args.to_offset) {
        (Some(time), None, None) => ReplayMode::ToTime(time),
        (None, Some(back), None) => ReplayMode::ByDuration(back),
        (None, None, Some(offsets)) => ReplayMode::ToOffset(offsets),
        // clap's group already refuses this; kept as a usage error, not a panic.
        _ => {
            return Err(UsageError(
                "give exactly one of --to-time, --by-duration, --to-offset".into(),
            )
            .into());
        }
    };
    let settings = ReplaySettings {
        topic: args.topic.clone(),
        group: args.group.clone(),
        mode,
        dry_run: args.dry_run,
    };
    let kafka = args.kafka.options()?;
    let plan = match ebb_core::replay::run(&kafka, &settings, &actor(&kafka)).await {
        Ok(plan) => plan,
        // main words Kafka's admin errors with the flags that fix them.
        Err(ReplayError::Admin(e)) => return Err(e.into()),
        Err(e @ ReplayError::UnknownPartition { .. }) => {
            return Err(UsageError(format!("--to-offset: {e}")).into());
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        out!("{}", serde_json::to_string_pretty(&plan)?)?;
    } else {
        print_table(&plan)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Who runs this, for the audit trail: the OS user, the host and the Kafka principal.
fn actor(kafka: &ebb_core::KafkaOptions) -> Actor {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
        // SAFETY: getuid cannot fail and touches no memory of ours.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }));
    Actor {
        user,
        host: host_name().unwrap_or_else(|| "unknown".into()),
        principal: kafka.principal(),
    }
}

fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

fn print_table(plan: &ReplayPlan) -> std::io::Result<()> {
    // --by-duration's time is worked out now: show it (--to-time's is in the mode already).
    let time = match &plan.time {
        Some(t) if !plan.mode.contains(t.as_str()) => format!(" (from {t})"),
        _ => String::new(),
    };
    let group = match (plan.group_state.as_str(), plan.members) {
        ("Dead", 0) => "unknown to Kafka until now".to_string(),
        (state, 1) => format!("{state}, 1 member"),
        (state, n) => format!("{state}, {n} members"),
    };
    out!(
        "replay of group {} on {}: {}{time}; the group is {group}",
        plan.group,
        plan.topic,
        plan.mode
    )?;
    out!(
        "{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}  NOTE",
        "PARTITION",
        "COMMITTED",
        "LOG-END",
        "TARGET",
        "REPROCESS",
        "SKIP"
    )?;
    for p in &plan.partitions {
        let line = format!(
            "{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}  {}",
            p.partition,
            p.committed.map_or("-".to_string(), |c| c.to_string()),
            p.log_end,
            p.target,
            p.reprocess,
            p.skip,
            p.note.as_deref().unwrap_or("")
        );
        out!("{}", line.trim_end())?;
    }
    out!(
        "{:>9}  {:>12}  {:>12}  {:>12}  {:>12}  {:>10}",
        "TOTAL",
        "",
        "",
        "",
        plan.total_reprocess,
        plan.total_skip
    )?;
    if plan.applied {
        out!(
            "applied: group {} reads {} from the targets above",
            plan.group,
            plan.topic
        )?;
    } else if plan.members > 0 {
        out!(
            "dry run: nothing changed; applying needs the group's {} member(s) stopped first",
            plan.members
        )?;
    } else {
        out!("dry run: nothing changed; run again without --dry-run to apply")?;
    }
    Ok(())
}
