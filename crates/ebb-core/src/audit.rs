//! `ebb audit`: did every record a group committed land where the contract says?
//!
//! For each partition, every record below the group's committed offset must be either a
//! row of the trades table (a valid trade) or a record of the dead-letter topic (anything
//! else), and the table must hold each record once, with the trade the record carried,
//! and one account's rows written in offset order. Rows beyond the committed offset are
//! fine (written, not yet committed: at-least-once), and so are repeated dead letters
//! (the dead-letter topic is at-least-once too); both are counted, not failed.
//!
//! [`compare`] is the pure part; [`run`] reads the topic, the dead-letter topic and the
//! table and calls it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::admin::{Admin, AdminError};
use crate::consumer::dead_letter::{HEADER_OFFSET, HEADER_PARTITION, HEADER_TOPIC};
use crate::kafka::KafkaOptions;
use crate::lag::{LagProbe, list_offsets, reader};
use crate::postgres::{Database, DatabaseError, StoredRow};
use crate::trade::TradeRef;

/// One source record as the audit needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    /// Offset within its partition.
    pub offset: i64,
    /// The trade id if the record is a valid trade; `None` if it belongs in the
    /// dead-letter topic.
    pub trade_id: Option<String>,
}

/// One partition's findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionAudit {
    /// Partition number (`-1` in the totals).
    pub partition: i32,
    /// The group's committed offset (`None`: it never committed here).
    pub committed: Option<i64>,
    /// Source records below the committed offset, all checked.
    pub checked: u64,
    /// Of those, found in the table.
    pub stored: u64,
    /// Of those, found in the dead-letter topic.
    pub dead_lettered: u64,
    /// Records below the committed offset in neither place.
    pub missing: u64,
    /// Table rows beyond the first for one record.
    pub duplicated: u64,
    /// Rows of one account written after a row with a higher offset.
    pub out_of_order: u64,
    /// Rows whose trade is not the one their record carried.
    pub mismatched: u64,
    /// Rows at or beyond the committed offset (written, not yet committed).
    pub beyond_commit: u64,
    /// Dead letters beyond the first for one record (allowed: at-least-once).
    pub repeated_dead_letters: u64,
}

impl PartitionAudit {
    fn problems(&self) -> u64 {
        self.missing + self.duplicated + self.out_of_order + self.mismatched
    }

    fn add(&mut self, other: &PartitionAudit) {
        self.checked += other.checked;
        self.stored += other.stored;
        self.dead_lettered += other.dead_lettered;
        self.missing += other.missing;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
        self.mismatched += other.mismatched;
        self.beyond_commit += other.beyond_commit;
        self.repeated_dead_letters += other.repeated_dead_letters;
    }
}

/// The whole audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Per partition, in order.
    pub partitions: Vec<PartitionAudit>,
    /// Sums over partitions.
    pub totals: PartitionAudit,
    /// The first few problems, in words.
    pub examples: Vec<String>,
    /// No record missing, duplicated, out of order or mismatched.
    pub ok: bool,
}

/// Most problems described in [`AuditReport::examples`].
const EXAMPLES: usize = 10;

/// Compares one topic's records (per partition, in offset order) with its dead letters
/// (source partition and offset of each) and the table's rows.
pub fn compare(
    committed: &BTreeMap<i32, Option<i64>>,
    source: &BTreeMap<i32, Vec<SourceRecord>>,
    dead_letters: &[(i32, i64)],
    rows: &[StoredRow],
) -> AuditReport {
    let mut letters: HashMap<(i32, i64), u64> = HashMap::new();
    for &origin in dead_letters {
        *letters.entry(origin).or_default() += 1;
    }
    let mut stored: HashMap<(i32, i64), Vec<&StoredRow>> = HashMap::new();
    for row in rows {
        stored
            .entry((row.partition, row.offset))
            .or_default()
            .push(row);
    }
    let mut examples = Vec::new();
    let mut note = |text: String| {
        if examples.len() < EXAMPLES {
            examples.push(text);
        }
    };

    let mut partitions = Vec::new();
    for (&partition, &commit) in committed {
        let mut audit = PartitionAudit {
            partition,
            committed: commit,
            ..Default::default()
        };
        let end = commit.unwrap_or(0);
        for record in source.get(&partition).into_iter().flatten() {
            if record.offset >= end {
                break;
            }
            audit.checked += 1;
            let here = stored.get(&(partition, record.offset));
            let letters = letters
                .get(&(partition, record.offset))
                .copied()
                .unwrap_or(0);
            match (&record.trade_id, here) {
                (Some(id), Some(found)) => {
                    audit.stored += 1;
                    audit.duplicated += found.len() as u64 - 1;
                    if found.len() > 1 {
                        note(format!(
                            "{partition}:{} is in the table {} times",
                            record.offset,
                            found.len()
                        ));
                    }
                    if let Some(other) = found.iter().find(|r| &r.trade_id != id) {
                        audit.mismatched += 1;
                        note(format!(
                            "{partition}:{} carries {id} but its row holds {}",
                            record.offset, other.trade_id
                        ));
                    }
                }
                (None, _) if letters > 0 => {
                    audit.dead_lettered += 1;
                    audit.repeated_dead_letters += letters - 1;
                }
                (Some(_), None) => {
                    audit.missing += 1;
                    note(format!(
                        "{partition}:{} (a trade) is not in the table, though committed",
                        record.offset
                    ));
                }
                (None, _) => {
                    audit.missing += 1;
                    note(format!(
                        "{partition}:{} (not a trade) is not in the dead-letter topic, though committed",
                        record.offset
                    ));
                }
            }
        }
        audit.beyond_commit = rows
            .iter()
            .filter(|r| r.partition == partition && r.offset >= end)
            .count() as u64;
        partitions.push(audit);
    }

    // Write order per account: within a partition, a later write must not carry an
    // earlier offset.
    let mut by_account: HashMap<(i32, &str), Vec<&StoredRow>> = HashMap::new();
    for row in rows {
        by_account
            .entry((row.partition, row.account_id.as_str()))
            .or_default()
            .push(row);
    }
    for ((partition, account), mut writes) in by_account {
        writes.sort_by_key(|r| r.write_seq);
        for pair in writes.windows(2) {
            if pair[1].offset < pair[0].offset {
                if let Some(audit) = partitions.iter_mut().find(|a| a.partition == partition) {
                    audit.out_of_order += 1;
                }
                note(format!(
                    "account {account}: {partition}:{} was written after {partition}:{}",
                    pair[1].offset, pair[0].offset
                ));
            }
        }
    }

    let mut totals = PartitionAudit {
        partition: -1,
        ..Default::default()
    };
    for audit in &partitions {
        totals.add(audit);
    }
    let ok = totals.problems() == 0;
    AuditReport {
        partitions,
        totals,
        examples,
        ok,
    }
}

/// What the audit reads.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The source topic.
    pub topic: String,
    /// The consumer group whose committed offsets bound the audit.
    pub group: String,
    /// Where invalid records should be; `None` if the group drops them.
    pub dead_letter_topic: Option<String>,
}

/// Why an audit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Kafka could not be read.
    #[error(transparent)]
    Kafka(#[from] AdminError),
    /// The table could not be read.
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

/// Reads the topic (up to the committed offsets), its dead letters and the table, and
/// compares them. `progress` gets a line per step.
pub async fn run(
    kafka: &KafkaOptions,
    database: &Database,
    settings: &AuditSettings,
    progress: impl Fn(String) + Send + 'static,
) -> Result<AuditReport, AuditError> {
    let admin = Admin::new(kafka)?;
    let info = admin.topic(&settings.topic).await?;
    let dead_letter_partitions = match &settings.dead_letter_topic {
        Some(name) => match admin.topic(name).await {
            Ok(info) => Some((name.clone(), info.partitions)),
            Err(AdminError::UnknownTopic(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    // Committed offsets first, the table after: a running group may commit and write
    // between the two reads, and only this order never shows a committed record the
    // table (read later) does not have yet.
    let committed: BTreeMap<i32, Option<i64>> = {
        let (kafka, group, topic) = (
            kafka.clone(),
            settings.group.clone(),
            settings.topic.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let probe = LagProbe::new(&kafka, &group, &topic, info.partitions)?;
            Ok::<_, AdminError>(
                probe
                    .offsets()?
                    .into_iter()
                    .map(|p| (p.partition, p.committed))
                    .collect(),
            )
        })
        .await
        .map_err(|e| AdminError::Unreachable(format!("audit aborted: {e}")))??
    };
    let rows = database.rows(&settings.topic).await?;
    let (kafka, settings) = (kafka.clone(), settings.clone());
    let report = tokio::task::spawn_blocking(move || {
        let ends: BTreeMap<i32, i64> = committed
            .iter()
            .map(|(&p, &c)| (p, c.unwrap_or(0)))
            .collect();
        progress(format!(
            "reading {} records of {} below the committed offsets",
            ends.values().sum::<i64>(),
            settings.topic
        ));
        let mut source: BTreeMap<i32, Vec<SourceRecord>> = BTreeMap::new();
        read(
            &kafka,
            &settings.group,
            &settings.topic,
            &ends,
            |partition, message| {
                let trade_id = TradeRef::parse(message.payload())
                    .ok()
                    .map(|t| t.trade_id.into_owned());
                source.entry(partition).or_default().push(SourceRecord {
                    offset: message.offset(),
                    trade_id,
                });
            },
        )?;
        let mut letters = Vec::new();
        if let Some((name, partitions)) = dead_letter_partitions {
            let consumer = reader(&kafka, &settings.group)?;
            let ends: BTreeMap<i32, i64> = list_offsets(
                &consumer,
                &name,
                0..partitions as i32,
                Offset::End,
                kafka.request_timeout,
            )?
            .into_iter()
            .collect();
            progress(format!(
                "reading {} records of {name}",
                ends.values().sum::<i64>()
            ));
            read(&kafka, &settings.group, &name, &ends, |_, message| {
                if let Some(origin) = origin(&settings.topic, message) {
                    letters.push(origin);
                }
            })?;
        }
        progress(format!("comparing with {} table rows", rows.len()));
        Ok::<_, AdminError>(compare(&committed, &source, &letters, &rows))
    })
    .await
    .map_err(|e| AdminError::Unreachable(format!("audit aborted: {e}")))??;
    Ok(report)
}

/// The source partition and offset a dead letter of `topic` names in its headers.
fn origin(topic: &str, message: &rdkafka::message::BorrowedMessage<'_>) -> Option<(i32, i64)> {
    let headers = message.headers()?;
    let mut from_topic = None;
    let (mut partition, mut offset) = (None, None);
    for header in headers.iter() {
        let text = header.value.and_then(|v| std::str::from_utf8(v).ok());
        match header.key {
            HEADER_TOPIC => from_topic = text,
            HEADER_PARTITION => partition = text.and_then(|t| t.parse().ok()),
            HEADER_OFFSET => offset = text.and_then(|t| t.parse().ok()),
            _ => {}
        }
    }
    (from_topic == Some(topic)).then_some((partition?, offset?))
}

/// Reads each partition of `topic` from its start up to (not including) its entry in
/// `ends`, handing every record to `each`. Blocking. The reader carries the audited
/// `group`'s name, the one group a principal limited by ACLs is sure to be allowed; it
/// never joins the group or commits.
fn read(
    kafka: &KafkaOptions,
    group: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    mut each: impl FnMut(i32, &rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), AdminError> {
    let consumer = reader(kafka, group)?;
    let starts = list_offsets(
        &consumer,
        topic,
        ends.keys().copied(),
        Offset::Beginning,
        kafka.request_timeout,
    )?;
    let mut assignment = TopicPartitionList::new();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    for (&partition, &end) in ends {
        let low = starts.get(&partition).copied().unwrap_or(0);
        if end > low {
            open.insert(partition, end);
            let _ = assignment.add_partition_offset(topic, partition, Offset::Offset(low));
        }
    }
    if open.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .map_err(|source| AdminError::Kafka {
            context: format!("cannot read {topic}"),
            source,
        })?;
    let mut last_record = Instant::now();
    while !open.is_empty() {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_record = Instant::now();
                let partition = message.partition();
                let Some(&end) = open.get(&partition) else {
                    continue;
                };
                if message.offset() < end {
                    each(partition, &message);
                }
                if message.offset() + 1 >= end {
                    open.remove(&partition);
                }
            }
            Some(Err(source)) => {
                return Err(AdminError::Kafka {
                    context: format!("cannot read {topic}"),
                    source,
                });
            }
            None if last_record.elapsed() > kafka.request_timeout => {
                // Compacted or transactional logs can end short of the offsets asked for.
                tracing::warn!(
                    "{topic}: no more records after {:?}; partitions {:?} end early",
                    kafka.request_timeout,
                    open.keys().collect::<Vec<_>>()
                );
                break;
            }
            None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ids: &[Option<&str>]) -> Vec<SourceRecord> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| SourceRecord {
                offset: i as i64,
                trade_id: id.map(str::to_string),
            })
            .collect()
    }

    fn row(partition: i32, offset: i64, trade: &str, account: &str, seq: i64) -> StoredRow {
        StoredRow {
            partition,
            offset,
            trade_id: trade.into(),
            account_id: account.into(),
            write_seq: seq,
        }
    }

    fn one_partition(commit: i64) -> BTreeMap<i32, Option<i64>> {
        BTreeMap::from([(0, Some(commit))])
    }

    #[test]
    fn a_clean_run_passes() {
        let src = BTreeMap::from([(0, source(&[Some("T0"), None, Some("T2"), Some("T3")]))]);
        let rows = [
            row(0, 0, "T0", "A", 1),
            row(0, 2, "T2", "A", 2),
            row(0, 3, "T3", "B", 3),
        ];
        let report = compare(&one_partition(3), &src, &[(0, 1), (0, 1)], &rows);
        assert!(report.ok, "{report:?}");
        let t = &report.totals;
        assert_eq!((t.checked, t.stored, t.dead_lettered), (3, 2, 1));
        assert_eq!((t.beyond_commit, t.repeated_dead_letters), (1, 1));
    }

    #[test]
    fn finds_missing_duplicated_mismatched_and_reordered_rows() {
        let src = BTreeMap::from([(
            0,
            source(&[Some("T0"), Some("T1"), None, Some("T3"), Some("T4")]),
        )]);
        let rows = [
            row(0, 0, "T0", "A", 1),
            row(0, 0, "T0", "A", 2),
            row(0, 4, "T4", "B", 3),
            row(0, 3, "TX", "B", 4),
        ];
        let report = compare(&one_partition(5), &src, &[], &rows);
        assert!(!report.ok);
        let t = &report.totals;
        assert_eq!(t.missing, 2, "offset 1 (a trade) and 2 (no dead letter)");
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.mismatched, 1);
        assert_eq!(t.out_of_order, 1, "B's offset 3 written after its offset 4");
        assert!(
            report.examples.iter().any(|e| e.contains("0:1")),
            "{report:?}"
        );
    }

    #[test]
    fn nothing_committed_checks_nothing() {
        let src = BTreeMap::from([(0, source(&[Some("T0")]))]);
        let report = compare(&BTreeMap::from([(0, None)]), &src, &[], &[]);
        assert!(report.ok);
        assert_eq!(report.totals.checked, 0);
    }
}
