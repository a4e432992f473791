//! Publishes the outbox of the Meridian event store to Kafka.

use meridian_command_service::run_relay;
use meridian_command_service::shutdown::shutdown_signal;
use meridian_event_log::{telemetry, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings = Settings::from_env()?;
    run_relay(settings, shutdown_signal()).await
}
