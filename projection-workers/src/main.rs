//! Runs the read-models and analytics projections until SIGTERM or Ctrl-C.

use meridian_event_log::Settings;
use meridian_projection_workers::{run, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    meridian_event_log::telemetry::init();
    let settings = Settings::from_env()?;
    run(settings, shutdown_signal()).await
}
