//! Runs the benchmark, prints the report and writes it as JSON when asked.

use std::process::ExitCode;

use clap::Parser;
use meridian_bench::cli::Options;

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    match meridian_bench::run(options).await {
        Ok(report) if report.problems.is_empty() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("meridian-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
