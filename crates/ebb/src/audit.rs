//! `ebb audit`: compare a topic, its dead letters and the trades table (see
//! `ebb_core::audit`) and print what is missing, duplicated or out of order.

use std::process::ExitCode;

use clap::Args;
use ebb_core::audit::{AuditError, AuditReport, AuditSettings, PartitionAudit, run as audit};

use crate::args::{DatabaseArgs, KafkaArgs, dead_letter_topic};

/// Check that every record a consumer group committed landed exactly once: valid trades
/// in the table (once each, one account's in offset order), the rest in the dead-letter
/// topic. Exit 0 when all is well, 1 when a record is missing, duplicated, out of order
/// or holds the wrong trade.
#[derive(Args)]
pub struct AuditArgs {
    /// The consumer group whose committed offsets bound the check.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "tx-trade-workers")]
    group: String,

    /// The source topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "trade-tx")]
    topic: String,

    /// Where the group sends records that are not trades (`none` if it drops them).
    /// Default: <topic>.dlq.
    #[arg(long, env = "EBB_DEAD_LETTER_TOPIC")]
    dead_letter_topic: Option<String>,

    /// Print JSON (one object, for scripts) instead of a table.
    #[arg(long, env = "EBB_JSON")]
    json: bool,

    #[command(flatten)]
    kafka: KafkaArgs,

    #[command(flatten)]
    database: DatabaseArgs,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let dead_letter_topic = dead_letter_topic(args.dead_letter_topic.as_deref(), &args.topic)?;
    let database = args.database.database()?;
    let settings = AuditSettings {
        topic: args.topic.clone(),
        group: args.group.clone(),
        dead_letter_topic,
    };
    let report = audit(&args.kafka.options()?, &database, &settings, |line| {
        eprintln!("audit: {line}")
    })
    .await
    // Unwrapped, so that main adds the flags that deal with each.
    .map_err(|e| match e {
        AuditError::Kafka(e) => anyhow::Error::from(e),
        AuditError::Database(e) => anyhow::Error::from(e),
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&args.topic, database.table().as_str(), &report);
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_table(topic: &str, table: &str, report: &AuditReport) {
    println!("audit of {topic} against table {table}");
    println!(
        "{:>9} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "partition",
        "committed",
        "checked",
        "stored",
        "dlq",
        "missing",
        "dupes",
        "order",
        "mismatch",
        "beyond"
    );
    let line = |name: String, a: &PartitionAudit| {
        println!(
            "{:>9} {:>10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>8}",
            name,
            a.committed.map_or("-".to_string(), |c| c.to_string()),
            a.checked,
            a.stored,
            a.dead_lettered,
            a.missing,
            a.duplicated,
            a.out_of_order,
            a.mismatched,
            a.beyond_commit
        );
    };
    for partition in &report.partitions {
        line(partition.partition.to_string(), partition);
    }
    line("total".into(), &report.totals);
    for example in &report.examples {
        println!("  {example}");
    }
    println!(
        "{}",
        if report.ok {
            "OK: every committed record is where it belongs, once, in order"
        } else {
            "FAILED: see the counts above"
        }
    );
}
