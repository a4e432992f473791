//! Runs the read-models and analytics projections until SIGTERM or Ctrl-C.

use meridian_crypto::KeySettings;
use meridian_event_log::Settings;
use meridian_projection_workers::read_models::publisher::LiveSettings;
use meridian_projection_workers::{run, shutdown_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    meridian_event_log::telemetry::init();
    let settings = Settings::from_env()?;
    let keys = KeySettings::from_env()?;
    let live_settings = LiveSettings::from_env()?;
    run(settings, keys, live_settings, shutdown_signal()).await
}
