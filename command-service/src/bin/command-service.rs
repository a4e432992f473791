//! The HTTP command API of Meridian.

use meridian_auth::AuthSettings;
use meridian_command_service::CommandSettings;
use meridian_crypto::KeySettings;
use meridian_event_log::{telemetry, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let settings = Settings::from_env()?;
    let keys = KeySettings::from_env()?;
    let auth = AuthSettings::from_env()?;
    let command = CommandSettings::from_env()?;
    meridian_command_service::run(settings, keys, auth, command).await
}
