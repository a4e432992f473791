//! Runs the read-models and analytics projections until SIGTERM or Ctrl-C, or, with
//! `rebuild-read-models`, rebuilds the read models from the event store and exits.

use clap::{Parser, Subcommand};
use meridian_crypto::KeySettings;
use meridian_event_log::Settings;
use meridian_projection_workers::read_models::publisher::LiveSettings;
use meridian_projection_workers::read_models::rebuild::RebuildOptions;
use meridian_projection_workers::{rebuild_read_models, run, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "projection-workers",
    about = "Fold Meridian's events into the PostgreSQL read models and MongoDB analytics"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Replace the PostgreSQL read models with a replay of every stored event, in one
    /// transaction, then print a JSON summary on standard output. Logs go to standard error.
    RebuildReadModels {
        /// Keep the secondary indexes of rm_location_history during the load instead of
        /// building them again after it.
        #[arg(long)]
        keep_indexes: bool,
        /// Keep the primary key of rm_location_history during the load instead of adding it
        /// again after it.
        #[arg(long)]
        keep_primary_key: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = Settings::from_env()?;
    let keys = KeySettings::from_env()?;
    match cli.command {
        None => {
            meridian_event_log::telemetry::init();
            let live_settings = LiveSettings::from_env()?;
            run(settings, keys, live_settings, shutdown_signal()).await
        }
        Some(Command::RebuildReadModels {
            keep_indexes,
            keep_primary_key,
        }) => {
            meridian_event_log::telemetry::init_to_stderr();
            let options = RebuildOptions {
                keep_indexes,
                keep_primary_key,
            };
            let summary = rebuild_read_models(settings, keys, options, shutdown_signal()).await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
    }
}
