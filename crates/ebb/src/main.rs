//! `ebb`: elastic micro-batch processing for Kafka. This file parses the command line,
//! sets up logging and hands over to one module per subcommand.

/// `println!` for a command's results that returns the write error instead of panicking,
/// so that a reader closing the pipe early (`ebb topic list | head -1`) ends the command
/// quietly (see `main`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod args;
mod audit;
mod consume;
mod db;
mod demo;
mod keda_scaler;
mod lag;
mod logging;
mod produce;
mod replay;
mod scale;
mod signals;
mod sim;
mod topic;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::UsageError;

/// Elastic micro-batch processing for Kafka.
///
/// Every option can also be set through the environment variable shown with it; the
/// reference system's variable names (KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, ...) work as is.
#[derive(Parser)]
#[command(name = "ebb", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log filter: a level (error, warn, info, debug, trace) or tracing directives.
    #[arg(long, env = "EBB_LOG", default_value = "info", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the variants would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create and list topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Send trades at a rate that follows a profile, changeable while running.
    Produce(produce::ProduceArgs),
    /// Consume trades in micro-batches into a sink, with lag-safe rebalancing.
    Consume(consume::ConsumeArgs),
    /// The whole elastic pipeline on this machine, with a live dashboard.
    Demo(demo::DemoArgs),
    /// Show a consumer group's lag per partition, in records and in time.
    Lag(lag::LagArgs),
    /// Run consumer workers and scale them on lag, like KEDA + HPA, on this machine.
    Scale(scale::ScaleArgs),
    /// Serve ebb-rate to KEDA as an external scaler (gRPC), per ScaledObject.
    KedaScaler(keda_scaler::KedaScalerArgs),
    /// Simulate a scaling policy on a scenario: lag, message time, replicas, cost.
    Sim(sim::SimArgs),
    /// Search ScaledObject parameters for the cheapest config that meets an SLA.
    Tune(sim::TuneArgs),
    /// Check that a group's committed records landed in the table exactly once, in order.
    Audit(audit::AuditArgs),
    /// Move a group's committed offsets to a time or offset, to read records again.
    Replay(replay::ReplayArgs),
    /// The PostgreSQL table of the postgres sink.
    #[command(subcommand)]
    Db(db::DbCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log) {
        eprintln!("ebb: bad --log / EBB_LOG: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ebb: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Topic(command) => topic::run(command).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Lag(args) => lag::run(args).await,
            Command::Scale(args) => scale::run(args).await,
            Command::KedaScaler(args) => keda_scaler::run(args).await,
            Command::Sim(args) => sim::run_sim(args),
            Command::Tune(args) => sim::run_tune(args),
            Command::Audit(args) => audit::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::Db(command) => db::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): nothing is wrong with ebb.
        Err(e)
            if e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let usage = e.downcast_ref::<UsageError>().is_some();
            // The library words its errors by concept; name the flags here.
            let hint = e
                .chain()
                .find_map(|cause| {
                    use ebb_core::audit::AuditError;
                    // The audit's errors are transparent: their inner error is not in the chain.
                    let admin = cause.downcast_ref::<ebb_core::admin::AdminError>().or(
                        match cause.downcast_ref::<AuditError>() {
                            Some(AuditError::Kafka(e)) => Some(e),
                            _ => None,
                        },
                    );
                    if let Some(admin) = admin {
                        return args::admin_error_hint(admin);
                    }
                    cause
                        .downcast_ref::<ebb_core::postgres::DatabaseError>()
                        .or(match cause.downcast_ref::<AuditError>() {
                            Some(AuditError::Database(e)) => Some(e),
                            _ => None,
                        })
                        .and_then(args::database_error_hint)
                })
                .map_or(String::new(), |hint| format!(" ({hint})"));
            eprintln!("ebb: error: {e:#}{hint}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}
