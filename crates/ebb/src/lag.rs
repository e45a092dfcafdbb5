//! `ebb lag`: a consumer group's lag per partition, as a table or JSON.

use std::process::ExitCode;

use clap::Args;
use ebb_core::lag::group_lag;

use crate::args::KafkaArgs;

/// Show a consumer group's lag per partition: committed offset, log-end offset, lag, and
/// how long the oldest unconsumed record has waited (from its timestamp).
#[derive(Args)]
pub struct LagArgs {
    /// Consumer group.
    #[arg(long, env = "CONSUMER_GROUP", default_value = "tx-trade-workers")]
    group: String,
    /// Topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "trade-tx")]
    topic: String,
    /// Print JSON instead of a table.
    #[arg(long, env = "EBB_JSON")]
    json: bool,
    #[command(flatten)]
    kafka: KafkaArgs,
}

pub async fn run(args: LagArgs) -> anyhow::Result<ExitCode> {
    let lag = group_lag(&args.kafka.options()?, &args.group, &args.topic).await?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&lag)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    out!("group {} on {} ({})", lag.group, lag.topic, lag.state)?;
    out!(
        "{:>9}  {:>12}  {:>12}  {:>10}  {:>10}",
        "PARTITION",
        "COMMITTED",
        "LOG-END",
        "LAG",
        "TIME-LAG"
    )?;
    let seconds = |t: Option<f64>| t.map_or("-".to_string(), |s| format!("{s:.1}s"));
    for p in &lag.partitions {
        let committed = p.committed.map_or("-".to_string(), |c| c.to_string());
        out!(
            "{:>9}  {committed:>12}  {:>12}  {:>10}  {:>10}",
            p.partition,
            p.log_end,
            p.lag,
            seconds(p.time_lag_s)
        )?;
    }
    out!(
        "{:>9}  {:>12}  {:>12}  {:>10}  {:>10}",
        "TOTAL",
        "",
        "",
        lag.total_lag,
        seconds(lag.max_time_lag_s)
    )?;
    Ok(ExitCode::SUCCESS)
}
