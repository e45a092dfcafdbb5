//! `ebb topic`: create and list topics.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use ebb_core::admin::{Admin, AdminError};
use ebb_core::kafka::parse_property;

use crate::args::KafkaArgs;

#[derive(Subcommand)]
pub enum TopicCommand {
    /// Create a topic (topics are never created implicitly).
    Create(CreateArgs),
    /// List topics with their partition count and replication.
    List(ListArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// Topic name.
    name: String,
    /// Number of partitions: the most consumers that can share the work.
    #[arg(long, short, env = "EBB_PARTITIONS", default_value_t = 24,
          value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Replicas per partition (1 on the local single-node broker).
    #[arg(long, short, env = "EBB_REPLICATION", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    replication: i32,
    /// Topic configuration, key=value (e.g. retention.ms=3600000); repeatable.
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_property)]
    configs: Vec<(String, String)>,
    /// Succeed when the topic already exists.
    #[arg(long)]
    if_not_exists: bool,
    #[command(flatten)]
    kafka: KafkaArgs,
}

#[derive(Args)]
pub struct ListArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
}

pub async fn run(command: TopicCommand) -> anyhow::Result<ExitCode> {
    match command {
        TopicCommand::Create(args) => {
            let admin = Admin::new(&args.kafka.options()?)?;
            match admin
                .create_topic(&args.name, args.partitions, args.replication, &args.configs)
                .await
            {
                Ok(()) => out!(
                    "created topic {} ({} partitions, replication {})",
                    args.name,
                    args.partitions,
                    args.replication
                )?,
                Err(AdminError::TopicExists(name)) if args.if_not_exists => {
                    let info = admin.topic(&name).await?;
                    out!(
                        "topic {name} already exists ({} partitions)",
                        info.partitions
                    )?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        TopicCommand::List(args) => {
            let admin = Admin::new(&args.kafka.options()?)?;
            let topics = admin.list_topics().await?;
            let width = topics
                .iter()
                .map(|t| t.name.len())
                .max()
                .unwrap_or(5)
                .max(5);
            out!("{:width$}  PARTITIONS  REPLICATION", "TOPIC")?;
            for t in topics {
                out!(
                    "{:width$}  {:>10}  {:>11}",
                    t.name,
                    t.partitions,
                    t.replication
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
