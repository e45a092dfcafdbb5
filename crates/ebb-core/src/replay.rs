//! `ebb replay`: move a consumer group's committed offsets on one topic back (or forward),
//! so that its records are read again, for an audit or after a fix, as the reference system
//! keeps its topics for.
//!
//! Three ways to say where: a time (the first record at or after it, from ListOffsets), a
//! duration back from now (the same, at now − duration), or offsets (`earliest`, `latest`,
//! one offset for every partition, or one per partition). The plan is computed first, by
//! [`plan_partitions`], a pure function of each partition's committed, log-start and
//! log-end offsets and what was asked; [`run`] reads those from the cluster, computes the
//! plan and, unless it is a dry run, commits it.
//!
//! A reset is only safe while the group has no members: a live consumer commits its own
//! position on its next commit and the reset is lost (and the broker refuses a commit
//! from outside the group then anyway). So [`run`] refuses while the group has members,
//! and commits as a "simple" client: `group.id` set, no subscription, explicit offsets,
//! which Kafka accepts for an empty group. Every applied change is logged at info level
//! with who asked, from which host: the audit trail of a replay.
//!
//! A replay into the `postgres` sink changes no row: the sink's insert is idempotent per
//! record (see [`crate::postgres`]), so records read again are counted as replayed and
//! left as they are.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::admin::{Admin, AdminError};
use crate::kafka::{AuthContext, KafkaOptions};
use crate::lag::{all_partitions, list_offsets, partition_offsets, reader};

/// What went wrong planning or applying a replay. The CLI maps each to its flag.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The cluster could not be reached, the topic does not exist, or Kafka refused a
    /// request (what ebb was doing is in [`AdminError::Kafka`]'s context).
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A partition named in per-partition offsets is not in the topic.
    #[error(
        "partition {partition} is not in topic {topic}, which has {partitions} (0 to {last})",
        last = *partitions as i64 - 1
    )]
    UnknownPartition {
        /// The partition asked for.
        partition: i32,
        /// The topic.
        topic: String,
        /// How many partitions it has.
        partitions: usize,
    },
    /// Offsets text that is not `earliest`, `latest`, `N` or `P=N,P=N`.
    #[error("{0}")]
    BadOffsets(String),
    /// A time that is not RFC 3339 with a zone or `DURATION ago`.
    #[error("{0}")]
    BadTime(String),
    /// The group has members: their next commit would overwrite the reset.
    #[error(
        "group {group} has {members} active member{plural} (state {state}); stop its consumers \
         first: a reset under a live consumer is overwritten by its next commit",
        plural = if *members == 1 { "" } else { "s" }
    )]
    GroupActive {
        /// The group.
        group: String,
        /// How many members it has.
        members: usize,
        /// The coordinator's word for its state.
        state: String,
    },
    /// The broker refused the commit because the group has (or just got) members.
    #[error(
        "the broker refused the new offsets of group {group} ({source}): a consumer joined it \
         meanwhile; stop its consumers and run the replay again"
    )]
    JoinedMeanwhile {
        /// The group.
        group: String,
        /// Kafka's reason.
        #[source]
        source: KafkaError,
    },
    /// The commit was acknowledged but reading back shows other offsets.
    #[error(
        "group {group}'s committed offset on {topic} partition {partition} is {found} after \
         the replay committed {wanted}: something else committed meanwhile; check that no \
         consumer of the group runs and replay again"
    )]
    NotApplied {
        /// The group.
        group: String,
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// What the replay committed.
        wanted: i64,
        /// What the group holds now (`-1`: nothing).
        found: i64,
    },
}

/// Offsets as given to `--to-offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetSpec {
    /// Each partition's log start (the oldest record retention kept).
    Earliest,
    /// Each partition's log end (skip everything not yet read).
    Latest,
    /// The same offset on every partition.
    All(i64),
    /// One offset per listed partition; the others are left as they are.
    PerPartition(BTreeMap<i32, i64>),
}

impl std::str::FromStr for OffsetSpec {
    type Err = ReplayError;

    /// `earliest`, `latest`, `N`, or `P=N,P=N`.
    fn from_str(text: &str) -> Result<Self, ReplayError> {
        let text = text.trim();
        let bad = |why: String| {
            ReplayError::BadOffsets(format!(
                "\"{text}\" {why}; give earliest, latest, an offset N for every partition, or \
                 P=N,P=N per partition"
            ))
        };
        let offset = |n: &str| -> Result<i64, ReplayError> {
            match n.trim().parse::<i64>() {
                Ok(o) if o >= 0 => Ok(o),
                _ => Err(bad(format!("has \"{}\", not an offset ≥ 0", n.trim()))),
            }
        };
        match text {
            "earliest" => return Ok(OffsetSpec::Earliest),
            "latest" => return Ok(OffsetSpec::Latest),
            "" => return Err(bad("is empty".into())),
            _ => {}
        }
        if !text.contains('=') {
            return offset(text).map(OffsetSpec::All);
        }
        let mut offsets = BTreeMap::new();
        for pair in text.split(',') {
            let (partition, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("has \"{}\", not P=N", pair.trim())))?;
            let partition: i32 = partition
                .trim()
                .parse()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| bad(format!("has \"{}\", not a partition", partition.trim())))?;
            if offsets.insert(partition, offset(value)?).is_some() {
                return Err(bad(format!("names partition {partition} twice")));
            }
        }
        Ok(OffsetSpec::PerPartition(offsets))
    }
}

impl std::fmt::Display for OffsetSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OffsetSpec::Earliest => write!(f, "earliest"),
            OffsetSpec::Latest => write!(f, "latest"),
            OffsetSpec::All(n) => write!(f, "{n}"),
            OffsetSpec::PerPartition(offsets) => {
                let pairs: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}={o}")).collect();
                write!(f, "{}", pairs.join(","))
            }
        }
    }
}

/// Parses a `--to-time`: RFC 3339 with a zone (`2026-01-31T09:00:00Z`,
/// `2026-01-31 10:00:00.250+01:00`) or a duration back from `now` (`10m ago`, `1h 30m ago`).
/// A time without a zone is refused rather than guessed.
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, ReplayError> {
    let text = text.trim();
    let hint = "give RFC 3339 with a zone (2026-01-31T09:00:00Z, 2026-01-31T10:00:00+01:00) \
                or a duration back from now (10m ago, 1h 30m ago)";
    if let Some(ago) = text.strip_suffix(" ago") {
        let back = humantime::parse_duration(ago.trim())
            .map_err(|e| ReplayError::BadTime(format!("\"{text}\": {e}; {hint}")))?;
        return now
            .checked_sub(back)
            .filter(|t| *t >= UNIX_EPOCH)
            .ok_or_else(|| ReplayError::BadTime(format!("\"{text}\" is before 1970; {hint}")));
    }
    // humantime reads UTC only: take a numeric zone off, read the rest as UTC, then shift.
    let (local, shift) = match text.len().checked_sub(6).map(|at| text.split_at(at)) {
        Some((local, zone))
            if local.len() >= 19
                && zone.len() == 6
                && matches!(zone.as_bytes()[0], b'+' | b'-')
                && zone.as_bytes()[3] == b':' =>
        {
            let number = |s: &str| s.parse::<u64>().ok().filter(|_| s.len() == 2);
            let (Some(hours), Some(minutes)) = (number(&zone[1..3]), number(&zone[4..6])) else {
                return Err(ReplayError::BadTime(format!(
                    "\"{text}\": the zone {zone} is not ±hh:mm; {hint}"
                )));
            };
            let seconds = Duration::from_secs(hours * 3600 + minutes * 60);
            (
                local.to_string(),
                Some((zone.as_bytes()[0] == b'+', seconds)),
            )
        }
        _ if text.ends_with(['Z', 'z']) => (text[..text.len() - 1].to_string(), None),
        _ => {
            return Err(ReplayError::BadTime(format!(
                "\"{text}\" has no zone (Z or ±hh:mm) or is no time; {hint}"
            )));
        }
    };
    let utc = humantime::parse_rfc3339_weak(&format!("{local}Z"))
        .map_err(|e| ReplayError::BadTime(format!("\"{text}\": {e}; {hint}")))?;
    // Local time = UTC + zone offset, so UTC = local − offset.
    let time = match shift {
        None => Some(utc),
        Some((true, by)) => utc.checked_sub(by),
        Some((false, by)) => utc.checked_add(by),
    };
    time.filter(|t| *t >= UNIX_EPOCH)
        .ok_or_else(|| ReplayError::BadTime(format!("\"{text}\" is before 1970; {hint}")))
}

/// Where to move the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayMode {
    /// To the first record at or after this time (`--to-time`).
    ToTime(SystemTime),
    /// To the first record at or after now − this (`--by-duration`).
    ByDuration(Duration),
    /// To these offsets (`--to-offset`).
    ToOffset(OffsetSpec),
}

impl std::fmt::Display for ReplayMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayMode::ToTime(t) => write!(f, "to-time {}", humantime::format_rfc3339_millis(*t)),
            ReplayMode::ByDuration(d) => {
                write!(f, "by-duration {}", humantime::format_duration(*d))
            }
            ReplayMode::ToOffset(spec) => write!(f, "to-offset {spec}"),
        }
    }
}

/// What a replay is asked to do.
#[derive(Debug, Clone)]
pub struct ReplaySettings {
    /// The topic.
    pub topic: String,
    /// The consumer group whose offsets move.
    pub group: String,
    /// Where to.
    pub mode: ReplayMode,
    /// Only compute and return the plan.
    pub dry_run: bool,
}

/// Who asked, for the audit trail in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// The OS user (`USER`/`LOGNAME`), or `unknown`.
    pub user: String,
    /// The host name, or `unknown`.
    pub host: String,
    /// Who Kafka sees the change made by ([`KafkaOptions::principal`]): `User:<name>` for
    /// SASL, the client certificate's subject for mutual TLS, `User:ANONYMOUS` otherwise.
    pub principal: String,
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} as Kafka principal {}",
            self.user, self.host, self.principal
        )
    }
}

/// One partition's offsets as read from the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset; `None` if it never committed here.
    pub committed: Option<i64>,
    /// The oldest offset retention kept.
    pub log_start: i64,
    /// The offset the next record will get.
    pub log_end: i64,
}

/// Where one partition should go, before it is checked against its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// Its log start.
    Earliest,
    /// Its log end.
    Latest,
    /// This offset.
    Offset(i64),
    /// What ListOffsets answered for a time: the first record at or after it, or `None`
    /// when no record is that recent.
    AtTime(Option<i64>),
}

/// One partition's change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset now (`None`: never committed).
    pub committed: Option<i64>,
    /// Log start now.
    pub log_start: i64,
    /// Log end now.
    pub log_end: i64,
    /// The offset the group will read from next.
    pub target: i64,
    /// Records the group will read again (the move back).
    pub reprocess: i64,
    /// Records the group will not read (the move forward).
    pub skip: i64,
    /// Why the target is not what was asked, if it is not.
    pub note: Option<String>,
}

/// The whole plan, and whether it was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayPlan {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// What was asked, as words (`to-offset earliest`, `by-duration 10m`, ...).
    pub mode: String,
    /// For `to-time` and `by-duration`: the time looked up, RFC 3339 UTC.
    pub time: Option<String>,
    /// The group's state when planned, as its coordinator said (`Empty`, `Stable`, `Dead`
    /// for a group Kafka does not know, ...).
    pub group_state: String,
    /// Its members when planned (a dry run plans with members; applying refuses them).
    pub members: usize,
    /// Per partition moved, in order.
    pub partitions: Vec<PartitionPlan>,
    /// Records read again, over all partitions.
    pub total_reprocess: i64,
    /// Records skipped, over all partitions.
    pub total_skip: i64,
    /// Whether the offsets were committed (false for a dry run).
    pub applied: bool,
}

/// Which partitions move and where, from `--to-offset` (time modes are resolved through
/// ListOffsets instead). Per-partition offsets must name partitions of the topic.
pub fn wanted_offsets(
    spec: &OffsetSpec,
    topic: &str,
    partitions: usize,
) -> Result<BTreeMap<i32, Wanted>, ReplayError> {
    let all = |wanted: Wanted| (0..partitions as i32).map(|p| (p, wanted)).collect();
    Ok(match spec {
        OffsetSpec::Earliest => all(Wanted::Earliest),
        OffsetSpec::Latest => all(Wanted::Latest),
        OffsetSpec::All(n) => all(Wanted::Offset(*n)),
        OffsetSpec::PerPartition(offsets) => {
            let mut wanted = BTreeMap::new();
            for (&partition, &offset) in offsets {
                if partition < 0 || partition as usize >= partitions {
                    return Err(ReplayError::UnknownPartition {
                        partition,
                        topic: topic.into(),
                        partitions,
                    });
                }
                wanted.insert(partition, Wanted::Offset(offset));
            }
            wanted
        }
    })
}

/// The plan: for each partition in `wanted`, its target within its log (an offset below
/// the log start or above the log end is moved there, with a note) and how many records
/// the group reads again or skips. The group now reads from its committed offset, or
/// from the log start when it has none (ebb's consumers start new groups at `earliest`,
/// and an offset retention removed resets there too), so counts are from that point.
pub fn plan_partitions(
    states: &[PartitionState],
    wanted: &BTreeMap<i32, Wanted>,
) -> Vec<PartitionPlan> {
    states
        .iter()
        .filter_map(|state| {
            let wanted = *wanted.get(&state.partition)?;
            let (start, end) = (state.log_start, state.log_end.max(state.log_start));
            let (target, note) = match wanted {
                Wanted::Earliest => (start, None),
                Wanted::Latest => (end, None),
                Wanted::AtTime(None) => (end, Some("no record that recent: the log end".into())),
                Wanted::Offset(o) | Wanted::AtTime(Some(o)) if o < start => (
                    start,
                    Some(format!(
                        "{o} is below the log start (retention): the log start"
                    )),
                ),
                Wanted::Offset(o) | Wanted::AtTime(Some(o)) if o > end => {
                    (end, Some(format!("{o} is past the log end: the log end")))
                }
                Wanted::Offset(o) | Wanted::AtTime(Some(o)) => (o, None),
            };
            let now = state.committed.unwrap_or(start).clamp(start, end);
            Some(PartitionPlan {
                partition: state.partition,
                committed: state.committed,
                log_start: state.log_start,
                log_end: state.log_end,
                target,
                reprocess: (now - target).max(0),
                skip: (target - now).max(0),
                note,
            })
        })
        .collect()
}

/// Plans the replay `settings` asks for and, unless it is a dry run, applies it: refused
/// while the group has members; every change logged with `actor`.
pub async fn run(
    kafka: &KafkaOptions,
    settings: &ReplaySettings,
    actor: &Actor,
) -> Result<ReplayPlan, ReplayError> {
    let info = Admin::new(kafka)?.topic(&settings.topic).await?;
    let (kafka, settings, actor) = (kafka.clone(), settings.clone(), actor.clone());
    tokio::task::spawn_blocking(move || run_blocking(&kafka, &settings, &actor, info.partitions))
        .await
        .map_err(|e| AdminError::Unreachable(format!("replay aborted: {e}")))?
}

fn run_blocking(
    kafka: &KafkaOptions,
    settings: &ReplaySettings,
    actor: &Actor,
    partitions: usize,
) -> Result<ReplayPlan, ReplayError> {
    let (topic, group) = (settings.topic.as_str(), settings.group.as_str());
    let timeout = kafka.request_timeout;
    tracing::info!(
        "replay {} requested by {actor}: group {group}, topic {topic}, {}",
        if settings.dry_run { "plan" } else { "apply" },
        settings.mode
    );
    // The client carries the group's id so that its commit is the group's; it never
    // subscribes, so it never joins.
    let client = reader(kafka, group)?;
    plan_and_apply(&client, settings, actor, partitions, timeout).map_err(|e| match e {
        // An ACL refusal (the group's coordinator lookup is refused and the request times
        // out) as one line naming the group or topic and the principal, as `ebb lag` says it.
        ReplayError::Admin(AdminError::Kafka { context, source }) => {
            match crate::lag::denial(&client, &source) {
                Some(code) => ReplayError::Admin(AdminError::Denied {
                    action: crate::lag::denied_action(
                        code,
                        group,
                        topic,
                        format!("replay group {group} on topic {topic}"),
                    ),
                    principal: kafka.principal(),
                }),
                None => ReplayError::Admin(AdminError::Kafka { context, source }),
            }
        }
        other => other,
    })
}

/// The plan, and unless it is a dry run, its commit, its check and its audit trail.
fn plan_and_apply(
    client: &BaseConsumer<AuthContext>,
    settings: &ReplaySettings,
    actor: &Actor,
    partitions: usize,
    timeout: Duration,
) -> Result<ReplayPlan, ReplayError> {
    let (topic, group) = (settings.topic.as_str(), settings.group.as_str());
    let (state, members) = describe(client, group, timeout)?;
    let states = read_states(client, group, topic, partitions, timeout)?;
    let (wanted, time) = match &settings.mode {
        ReplayMode::ToOffset(spec) => (wanted_offsets(spec, topic, partitions)?, None),
        ReplayMode::ToTime(time) => (
            at_time(client, topic, partitions, *time, timeout)?,
            Some(*time),
        ),
        ReplayMode::ByDuration(back) => {
            let time = SystemTime::now().checked_sub(*back).unwrap_or(UNIX_EPOCH);
            (
                at_time(client, topic, partitions, time, timeout)?,
                Some(time),
            )
        }
    };
    let moves = plan_partitions(&states, &wanted);
    let mut plan = ReplayPlan {
        group: group.into(),
        topic: topic.into(),
        mode: settings.mode.to_string(),
        time: time.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        group_state: state.clone(),
        members,
        total_reprocess: moves.iter().map(|p| p.reprocess).sum(),
        total_skip: moves.iter().map(|p| p.skip).sum(),
        partitions: moves,
        applied: false,
    };
    if settings.dry_run {
        return Ok(plan);
    }
    if members > 0 {
        return Err(ReplayError::GroupActive {
            group: group.into(),
            members,
            state,
        });
    }
    commit(client, &plan, timeout)?;
    verify(client, &plan, timeout)?;
    for p in &plan.partitions {
        tracing::info!(
            "replay by {actor}: group {group}, topic {topic}, partition {}: committed {} -> {} \
             ({} records to reprocess, {} skipped){}",
            p.partition,
            p.committed.map_or("none".to_string(), |c| c.to_string()),
            p.target,
            p.reprocess,
            p.skip,
            p.note.as_ref().map_or(String::new(), |n| format!("; {n}"))
        );
    }
    tracing::info!(
        "replay by {actor} applied: group {group}, topic {topic}, {}: {} records to reprocess, \
         {} skipped, partitions moved: {}",
        settings.mode,
        plan.total_reprocess,
        plan.total_skip,
        plan.partitions.len()
    );
    plan.applied = true;
    Ok(plan)
}

/// Kafka's refusal of what ebb was doing (`context`), as an [`AdminError::Kafka`].
fn kafka_error(context: String) -> impl FnOnce(KafkaError) -> ReplayError {
    move |source| ReplayError::Admin(AdminError::Kafka { context, source })
}

/// Retries `request` while the group's coordinator is still loading (a new group, or the
/// broker just started), up to `timeout`.
fn while_coordinator_loads<T>(
    timeout: Duration,
    mut request: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match request() {
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::CoordinatorLoadInProgress
                                | RDKafkaErrorCode::CoordinatorNotAvailable
                                | RDKafkaErrorCode::NotCoordinator
                        )
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// The group's state and member count, from DescribeGroups ("Dead", 0 for a group Kafka
/// does not know).
fn describe(
    client: &BaseConsumer<AuthContext>,
    group: &str,
    timeout: Duration,
) -> Result<(String, usize), ReplayError> {
    let list = while_coordinator_loads(timeout, || client.fetch_group_list(Some(group), timeout))
        .map_err(kafka_error(format!("cannot describe group {group}")))?;
    Ok(list.groups().first().map_or(("Dead".into(), 0), |g| {
        (g.state().to_string(), g.members().len())
    }))
}

/// Committed, log-start and log-end offsets of every partition.
fn read_states(
    client: &BaseConsumer<AuthContext>,
    group: &str,
    topic: &str,
    partitions: usize,
    timeout: Duration,
) -> Result<Vec<PartitionState>, ReplayError> {
    let committed = committed(client, group, topic, partitions, timeout)?;
    let starts = list_offsets(
        client,
        topic,
        0..partitions as i32,
        Offset::Beginning,
        timeout,
    )?;
    let ends = list_offsets(client, topic, 0..partitions as i32, Offset::End, timeout)?;
    (0..partitions as i32)
        .map(|p| {
            let missing = |what: &str| {
                kafka_error(format!(
                    "no {what} offset of {topic} partition {p} in Kafka's answer"
                ))(KafkaError::OffsetFetch(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))
            };
            Ok(PartitionState {
                partition: p,
                committed: committed.get(&p).copied(),
                log_start: *starts.get(&p).ok_or_else(|| missing("log-start"))?,
                log_end: *ends.get(&p).ok_or_else(|| missing("log-end"))?,
            })
        })
        .collect()
}

/// The group's committed offsets on `topic` (partitions it never committed on are absent).
fn committed(
    client: &BaseConsumer<AuthContext>,
    group: &str,
    topic: &str,
    partitions: usize,
    timeout: Duration,
) -> Result<HashMap<i32, i64>, ReplayError> {
    let asked = all_partitions(topic, partitions, Offset::Invalid);
    let answer =
        while_coordinator_loads(timeout, || client.committed_offsets(asked.clone(), timeout))
            .map_err(kafka_error(format!(
                "cannot read group {group}'s committed offsets on {topic}"
            )))?;
    Ok(partition_offsets(&answer, topic))
}

/// Each partition's first offset whose record time is at or after `time` (ListOffsets).
fn at_time(
    client: &BaseConsumer<AuthContext>,
    topic: &str,
    partitions: usize,
    time: SystemTime,
    timeout: Duration,
) -> Result<BTreeMap<i32, Wanted>, ReplayError> {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let asked = all_partitions(topic, partitions, Offset::Offset(millis));
    let answer = client
        .offsets_for_times(asked, timeout)
        .map_err(kafka_error(format!(
            "cannot look up the offsets of {topic} by time"
        )))?;
    let mut wanted = BTreeMap::new();
    for e in answer.elements_for_topic(topic) {
        e.error().map_err(kafka_error(format!(
            "cannot look up {topic} partition {} by time",
            e.partition()
        )))?;
        let found = match e.offset() {
            Offset::Offset(o) if o >= 0 => Some(o),
            // -1 (End): no record at or after the time.
            _ => None,
        };
        wanted.insert(e.partition(), Wanted::AtTime(found));
    }
    Ok(wanted)
}

/// Commits the plan's targets as the group, outside it (a simple commit).
fn commit(
    client: &BaseConsumer<AuthContext>,
    plan: &ReplayPlan,
    timeout: Duration,
) -> Result<(), ReplayError> {
    if plan.partitions.is_empty() {
        return Ok(());
    }
    let mut offsets = TopicPartitionList::new();
    for p in &plan.partitions {
        offsets
            .add_partition_offset(&plan.topic, p.partition, Offset::Offset(p.target))
            .map_err(kafka_error(format!(
                "cannot set the offset of partition {}",
                p.partition
            )))?;
    }
    while_coordinator_loads(timeout, || client.commit(&offsets, CommitMode::Sync)).map_err(
        |source| match source.rdkafka_error_code() {
            // Kafka takes a commit from outside the group only while it is empty.
            Some(
                RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::StaleMemberEpoch,
            ) => ReplayError::JoinedMeanwhile {
                group: plan.group.clone(),
                source,
            },
            _ => kafka_error(format!("cannot commit group {}'s new offsets", plan.group))(source),
        },
    )
}

/// Reads the committed offsets back: an acknowledged commit per request is not a
/// per-partition promise in every librdkafka path, and the audit trail must be true.
fn verify(
    client: &BaseConsumer<AuthContext>,
    plan: &ReplayPlan,
    timeout: Duration,
) -> Result<(), ReplayError> {
    let partitions = plan
        .partitions
        .iter()
        .map(|p| p.partition)
        .max()
        .map_or(0, |m| m + 1);
    let now = committed(
        client,
        &plan.group,
        &plan.topic,
        partitions as usize,
        timeout,
    )?;
    for p in &plan.partitions {
        let found = now.get(&p.partition).copied().unwrap_or(-1);
        if found != p.target {
            return Err(ReplayError::NotApplied {
                group: plan.group.clone(),
                topic: plan.topic.clone(),
                partition: p.partition,
                wanted: p.target,
                found,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_trail_names_os_user_host_and_kafka_principal() {
        let actor = Actor {
            user: "alice".into(),
            host: "ops-1".into(),
            principal: "User:tenant-a".into(),
        };
        assert_eq!(
            actor.to_string(),
            "alice@ops-1 as Kafka principal User:tenant-a"
        );
    }

    fn state(
        partition: i32,
        committed: Option<i64>,
        log_start: i64,
        log_end: i64,
    ) -> PartitionState {
        PartitionState {
            partition,
            committed,
            log_start,
            log_end,
        }
    }

    fn all(wanted: Wanted, partitions: i32) -> BTreeMap<i32, Wanted> {
        (0..partitions).map(|p| (p, wanted)).collect()
    }

    #[test]
    fn earliest_reprocesses_what_was_committed_and_latest_skips_the_rest() {
        let states = [state(0, Some(100), 0, 100), state(1, Some(40), 10, 90)];
        let back = plan_partitions(&states, &all(Wanted::Earliest, 2));
        assert_eq!(
            (back[0].target, back[0].reprocess, back[0].skip),
            (0, 100, 0)
        );
        assert_eq!(
            (back[1].target, back[1].reprocess, back[1].skip),
            (10, 30, 0)
        );
        let forward = plan_partitions(&states, &all(Wanted::Latest, 2));
        assert_eq!(
            (forward[0].target, forward[0].reprocess, forward[0].skip),
            (100, 0, 0)
        );
        assert_eq!(
            (forward[1].target, forward[1].reprocess, forward[1].skip),
            (90, 0, 50)
        );
        assert!(back.iter().chain(&forward).all(|p| p.note.is_none()));
    }

    #[test]
    fn offsets_outside_the_log_are_moved_to_its_ends_with_a_note() {
        let states = [state(0, Some(50), 20, 80)];
        let low = plan_partitions(&states, &all(Wanted::Offset(5), 1));
        assert_eq!((low[0].target, low[0].reprocess), (20, 30));
        assert!(low[0].note.as_deref().unwrap().contains("log start"));
        let high = plan_partitions(&states, &all(Wanted::Offset(500), 1));
        assert_eq!((high[0].target, high[0].skip), (80, 30));
        assert!(
            high[0]
                .note
                .as_deref()
                .unwrap()
                .contains("past the log end")
        );
        let exact = plan_partitions(&states, &all(Wanted::Offset(60), 1));
        assert_eq!(
            (exact[0].target, exact[0].skip, exact[0].note.clone()),
            (60, 10, None)
        );
    }

    #[test]
    fn a_time_with_no_record_that_recent_goes_to_the_log_end() {
        let states = [state(0, Some(10), 0, 30), state(1, Some(30), 0, 30)];
        let wanted = BTreeMap::from([(0, Wanted::AtTime(None)), (1, Wanted::AtTime(Some(12)))]);
        let plan = plan_partitions(&states, &wanted);
        assert_eq!((plan[0].target, plan[0].skip), (30, 20));
        assert!(plan[0].note.as_deref().unwrap().contains("no record"));
        assert_eq!(
            (plan[1].target, plan[1].reprocess, plan[1].note.clone()),
            (12, 18, None)
        );
    }

    #[test]
    fn a_group_that_never_committed_counts_from_the_log_start() {
        // New groups start at earliest: moving one to latest skips the whole log; moving a
        // committed offset that retention removed counts from the log start.
        let states = [state(0, None, 5, 25), state(1, Some(2), 5, 25)];
        let plan = plan_partitions(&states, &all(Wanted::Latest, 2));
        assert_eq!(
            (plan[0].committed, plan[0].target, plan[0].skip),
            (None, 25, 20)
        );
        assert_eq!(plan[1].skip, 20);
    }

    #[test]
    fn only_the_partitions_named_move() {
        let states = [
            state(0, Some(9), 0, 9),
            state(1, Some(9), 0, 9),
            state(2, Some(9), 0, 9),
        ];
        let spec: OffsetSpec = "0=3, 2=7".parse().unwrap();
        let wanted = wanted_offsets(&spec, "t", 3).unwrap();
        let plan = plan_partitions(&states, &wanted);
        let moved: Vec<(i32, i64, i64)> = plan
            .iter()
            .map(|p| (p.partition, p.target, p.reprocess))
            .collect();
        assert_eq!(moved, [(0, 3, 6), (2, 7, 2)]);
        match wanted_offsets(&"3=1".parse().unwrap(), "t", 3) {
            Err(ReplayError::UnknownPartition {
                partition: 3,
                partitions: 3,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn offset_specs_are_parsed_and_bad_ones_say_what_is_accepted() {
        assert_eq!(
            "earliest".parse::<OffsetSpec>().unwrap(),
            OffsetSpec::Earliest
        );
        assert_eq!(
            " latest ".parse::<OffsetSpec>().unwrap(),
            OffsetSpec::Latest
        );
        assert_eq!("42".parse::<OffsetSpec>().unwrap(), OffsetSpec::All(42));
        assert_eq!(
            "0=1,5=0".parse::<OffsetSpec>().unwrap(),
            OffsetSpec::PerPartition(BTreeMap::from([(0, 1), (5, 0)]))
        );
        assert_eq!(
            "0=1,5=0".parse::<OffsetSpec>().unwrap().to_string(),
            "0=1,5=0"
        );
        for bad in [
            "", "-1", "first", "0=", "x=1", "0=1,0=2", "0=1,2", "-1=3", "1=-3",
        ] {
            let error = bad.parse::<OffsetSpec>().unwrap_err().to_string();
            assert!(error.contains("P=N,P=N"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn times_are_rfc_3339_with_a_zone_or_a_duration_ago() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        let now = at(1_800_000_000, 0);
        for (text, seconds, millis) in [
            // 2026-01-31T09:00:00Z = 1769850000.
            ("2026-01-31T09:00:00Z", 1_769_850_000, 0),
            ("2026-01-31 09:00:00.250z", 1_769_850_000, 250),
            ("2026-01-31T10:30:00+01:30", 1_769_850_000, 0),
            ("2026-01-31T04:00:00.5-05:00", 1_769_850_000, 500),
            ("10m ago", 1_800_000_000 - 600, 0),
            ("1h 30m ago", 1_800_000_000 - 5400, 0),
        ] {
            assert_eq!(
                parse_time(text, now).unwrap(),
                at(seconds, millis),
                "{text}"
            );
        }
        for bad in [
            "2026-01-31T09:00:00",
            "2026-01-31T09:00:00+0100",
            "2026-01-31T09:00:00+1x:00",
            "2026-13-31T09:00:00Z",
            "yesterday",
            "soon ago",
            "",
        ] {
            let error = parse_time(bad, now).unwrap_err().to_string();
            assert!(error.contains("10m ago"), "{bad:?}: {error}");
        }
        assert!(parse_time("100000000h ago", now).is_err(), "before 1970");
    }
}
