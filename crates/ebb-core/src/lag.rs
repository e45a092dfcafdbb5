//! A consumer group's lag on a topic, per partition: committed offset, log-end offset,
//! lag in records and in time (how long the oldest unconsumed record has waited, from its
//! timestamp). What `ebb lag` shows and what the local supervisor measures.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::admin::{Admin, AdminError};
use crate::kafka::{AuthContext, KafkaOptions};

/// One partition's lag.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PartitionLag {
    /// Partition number.
    pub partition: i32,
    /// The group's committed offset; `None` if it never committed on this partition.
    pub committed: Option<i64>,
    /// Log-start offset (the oldest record retention kept). Read, for every partition in
    /// one request, only when some partition has no committed offset: only there does the
    /// lag count from it (KEDA's `earliest` policy likewise reads it only then). `None`
    /// when not read.
    pub log_start: Option<i64>,
    /// Log-end offset (high watermark).
    pub log_end: i64,
    /// Records not yet consumed (from the log start when nothing is committed).
    pub lag: i64,
    /// How long the oldest unconsumed record has been in the topic, in seconds.
    pub time_lag_s: Option<f64>,
}

/// A group's lag on one topic.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GroupLag {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The group's state as the coordinator reports it (Stable, Empty, ...).
    pub state: String,
    /// Per partition, in order.
    pub partitions: Vec<PartitionLag>,
    /// Sum of the partitions' lag.
    pub total_lag: i64,
    /// The largest time lag.
    pub max_time_lag_s: Option<f64>,
}

/// Measures `group`'s lag on `topic`. Fails with a clear message for an unknown topic
/// or a group that has no committed offset on it and no members.
pub async fn group_lag(
    kafka: &KafkaOptions,
    group: &str,
    topic: &str,
) -> Result<GroupLag, AdminError> {
    let admin = Admin::new(kafka)?;
    let info = admin.topic(topic).await?;
    let kafka = kafka.clone();
    let (group, topic) = (group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || measure(&kafka, &group, &topic, info.partitions))
        .await
        .map_err(|e| AdminError::Unreachable(format!("lag measurement aborted: {e}")))?
}

fn measure(
    kafka: &KafkaOptions,
    group: &str,
    topic: &str,
    partitions: usize,
) -> Result<GroupLag, AdminError> {
    let probe = LagProbe::new(kafka, group, topic, partitions)?;
    let state = probe.group_state()?;
    let mut rows = probe.offsets()?;
    if rows.iter().all(|r| r.committed.is_none()) && state == "Dead" {
        return Err(AdminError::UnknownGroup {
            group: group.into(),
            topic: topic.into(),
        });
    }
    time_lags(&probe.consumer, topic, &mut rows, kafka.request_timeout);
    let total_lag = rows.iter().map(|r| r.lag).sum();
    let max_time_lag_s = rows.iter().filter_map(|r| r.time_lag_s).reduce(f64::max);
    Ok(GroupLag {
        group: group.into(),
        topic: topic.into(),
        state,
        partitions: rows,
        total_lag,
        max_time_lag_s,
    })
}

/// Reads a group's committed offsets and a topic's log-end offsets, again and again,
/// over one connection (the supervisor does so every second). Blocking.
pub struct LagProbe {
    consumer: BaseConsumer<AuthContext>,
    group: String,
    topic: String,
    partitions: usize,
    timeout: Duration,
    /// Who the cluster sees the probe as, for ACL refusals.
    principal: String,
}

impl LagProbe {
    /// A probe for `group` on `topic`, which has `partitions` partitions.
    pub fn new(
        kafka: &KafkaOptions,
        group: &str,
        topic: &str,
        partitions: usize,
    ) -> Result<Self, AdminError> {
        Ok(LagProbe {
            consumer: reader(kafka, group)?,
            group: group.into(),
            topic: topic.into(),
            partitions,
            timeout: kafka.request_timeout,
            principal: kafka.principal(),
        })
    }

    /// `source` as an ACL refusal of `action` when it is one, else as `context`'s failure.
    fn refused(
        &self,
        source: rdkafka::error::KafkaError,
        action: String,
        context: String,
    ) -> AdminError {
        match denial(&self.consumer, &source) {
            None => AdminError::Kafka { context, source },
            Some(code) => AdminError::Denied {
                action: denied_action(code, &self.group, &self.topic, action),
                principal: self.principal.clone(),
            },
        }
    }

    /// The group's state as its coordinator reports it ("Dead" when unknown).
    pub fn group_state(&self) -> Result<String, AdminError> {
        Ok(self
            .consumer
            .fetch_group_list(Some(&self.group), self.timeout)
            .map_err(|source| {
                self.refused(
                    source,
                    format!("describe group {}", self.group),
                    format!("cannot describe group {}", self.group),
                )
            })?
            .groups()
            .first()
            .map_or("Dead".to_string(), |g| g.state().to_string()))
    }

    /// Committed, log-end and (when some partition has no committed offset) log-start
    /// offsets of every partition (time lag not measured).
    pub fn offsets(&self) -> Result<Vec<PartitionLag>, AdminError> {
        let all = |offset: Offset| all_partitions(&self.topic, self.partitions, offset);
        let committed = self
            .consumer
            .committed_offsets(all(Offset::Invalid), self.timeout)
            .map_err(|source| {
                self.refused(
                    source,
                    format!("read group {}'s committed offsets", self.group),
                    format!("cannot read group {}'s committed offsets", self.group),
                )
            })?;
        // One ListOffsets request for every partition (the supervisor asks every second),
        // rather than a watermark request per partition.
        let partitions = 0..self.partitions as i32;
        let ends = list_offsets(
            &self.consumer,
            &self.topic,
            partitions.clone(),
            Offset::End,
            self.timeout,
        )?;
        let never_committed = committed
            .elements_for_topic(&self.topic)
            .iter()
            .any(|e| !matches!(e.offset(), Offset::Offset(_)));
        let starts = if never_committed {
            list_offsets(
                &self.consumer,
                &self.topic,
                partitions,
                Offset::Beginning,
                self.timeout,
            )?
        } else {
            Default::default()
        };
        let mut rows: Vec<PartitionLag> = committed
            .elements_for_topic(&self.topic)
            .iter()
            .map(|element| {
                let p = element.partition();
                let committed = match element.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                let log_end = ends.get(&p).copied().unwrap_or(0);
                let log_start = starts.get(&p).copied();
                let from = committed.unwrap_or(log_start.unwrap_or(0));
                PartitionLag {
                    partition: p,
                    committed,
                    log_start,
                    log_end,
                    lag: (log_end - from).max(0),
                    time_lag_s: None,
                }
            })
            .collect();
        rows.sort_by_key(|r| r.partition);
        Ok(rows)
    }
}

/// The ACL refusal behind `source`, if it is one: in the error itself, or reported by
/// librdkafka on its own to `client`'s context. A refusal of the group's coordinator
/// lookup comes that way and leaves the request to time out; the context kept it.
pub(crate) fn denial(
    client: &BaseConsumer<AuthContext>,
    source: &rdkafka::error::KafkaError,
) -> Option<rdkafka::types::RDKafkaErrorCode> {
    // The refusal waits in the client's queue until a poll hands it to the context.
    let _ = client.poll(Duration::ZERO);
    source
        .rdkafka_error_code()
        .filter(|code| crate::admin::is_denial(*code))
        .or_else(|| client.context().denial())
}

/// What a refusal with `code` refused, for [`AdminError::Denied`]: using `group`, reading
/// `topic`, or `other` for any other refusal.
pub(crate) fn denied_action(
    code: rdkafka::types::RDKafkaErrorCode,
    group: &str,
    topic: &str,
    other: String,
) -> String {
    use rdkafka::types::RDKafkaErrorCode::*;
    match code {
        GroupAuthorizationFailed => format!("use group {group}"),
        TopicAuthorizationFailed => format!("read topic {topic}"),
        _ => other,
    }
}

/// A client that reads offsets and records for `group` (it never commits).
pub(crate) fn reader(
    kafka: &KafkaOptions,
    group: &str,
) -> Result<BaseConsumer<AuthContext>, AdminError> {
    let mut config = kafka.client_config();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    config
        .create_with_context(AuthContext::new(kafka))
        .map_err(|source| AdminError::Kafka {
            context: "cannot create a client to read offsets".into(),
            source,
        })
}

/// Log-start (`Offset::Beginning`) or log-end (`Offset::End`) offsets of `partitions` of
/// `topic`, in one ListOffsets request rather than a watermark request per partition.
pub(crate) fn list_offsets(
    consumer: &BaseConsumer<AuthContext>,
    topic: &str,
    partitions: impl IntoIterator<Item = i32>,
    which: Offset,
    timeout: Duration,
) -> Result<std::collections::HashMap<i32, i64>, AdminError> {
    let mut asked = TopicPartitionList::new();
    for p in partitions {
        let _ = asked.add_partition_offset(topic, p, which);
    }
    let listed = consumer
        .offsets_for_times(asked, timeout)
        .map_err(|source| AdminError::Kafka {
            context: format!("cannot read the offsets of {topic}"),
            source,
        })?;
    Ok(partition_offsets(&listed, topic))
}

/// Each partition of `topic` in `list` that has an offset (not `Invalid`, `End`, ...),
/// with it: how committed offsets, positions and ListOffsets answers are read.
pub(crate) fn partition_offsets(
    list: &TopicPartitionList,
    topic: &str,
) -> std::collections::HashMap<i32, i64> {
    list.elements_for_topic(topic)
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Partitions `0..partitions` of `topic`, each with `offset`: the question a
/// committed-offsets or ListOffsets request asks.
pub(crate) fn all_partitions(topic: &str, partitions: usize, offset: Offset) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        let _ = list.add_partition_offset(topic, partition, offset);
    }
    list
}

/// Reads the oldest unconsumed record of each lagging partition for its timestamp.
fn time_lags(
    consumer: &BaseConsumer<AuthContext>,
    topic: &str,
    rows: &mut [PartitionLag],
    timeout: Duration,
) {
    let mut tpl = TopicPartitionList::new();
    for row in rows.iter_mut() {
        if row.lag == 0 {
            row.time_lag_s = Some(0.0);
            continue;
        }
        let start = row.committed.map_or(Offset::Beginning, Offset::Offset);
        let _ = tpl.add_partition_offset(topic, row.partition, start);
    }
    if tpl.count() == 0 || consumer.assign(&tpl).is_err() {
        return;
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let deadline = std::time::Instant::now() + timeout;
    let mut missing = tpl.count();
    while missing > 0 && std::time::Instant::now() < deadline {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        if let Some(row) = rows.iter_mut().find(|r| r.partition == message.partition())
            && row.time_lag_s.is_none()
        {
            row.time_lag_s = message
                .timestamp()
                .to_millis()
                .map(|ts| (now_ms - ts).max(0) as f64 / 1000.0);
            missing -= 1;
            let mut one = TopicPartitionList::new();
            one.add_partition(topic, message.partition());
            let _ = consumer.pause(&one);
        }
    }
    let _ = consumer.unassign();
}
