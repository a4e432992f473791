//! `meridian-import`: imports an AIS CSV file into a running Meridian.

use std::process::ExitCode;

use clap::Parser;
use meridian_importer::cli::Cli;
use meridian_importer::{import, EXIT_FAILURE};

#[tokio::main]
async fn main() -> ExitCode {
    let options = match Cli::parse().into_options() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(error.exit_code());
        }
    };
    match import(options).await {
        Ok(report) => {
            println!("{}", report.summary());
            if report.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
