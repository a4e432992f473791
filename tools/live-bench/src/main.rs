//! `meridian-live-bench`: measures live-update latency or idle-socket capacity of running
//! Meridian services and prints a table.

use std::process::ExitCode;

use clap::Parser;
use meridian_live_bench::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match meridian_live_bench::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meridian-live-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
