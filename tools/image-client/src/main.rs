//! `meridian-image`: encrypts, uploads, downloads and decrypts profile images.

use std::process::ExitCode;

use clap::Parser;
use meridian_image_client::cli::{run, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
