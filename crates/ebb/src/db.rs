//! `ebb db`: the PostgreSQL side of the `postgres` sink.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::args::DatabaseArgs;

/// Manage the trades table.
#[derive(Subcommand)]
pub enum DbCommand {
    /// Create the trades table (if it does not exist) and print its schema. The postgres
    /// sink also creates it on its first batch; run this to create it ahead, or to see it.
    Init(InitArgs),
}

#[derive(Args)]
pub struct InitArgs {
    #[command(flatten)]
    database: DatabaseArgs,
}

pub async fn run(command: DbCommand) -> anyhow::Result<ExitCode> {
    match command {
        DbCommand::Init(args) => {
            let database = args.database.database()?;
            database.init().await?;
            println!("{}", database.create_sql());
            eprintln!("table {} is ready", database.table().as_str());
            Ok(ExitCode::SUCCESS)
        }
    }
}
