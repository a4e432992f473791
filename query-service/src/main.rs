//! Runs the query service on `MERIDIAN_QUERY_ADDR` (default 127.0.0.1:8081).

use anyhow::Context;
use meridian_query_service::{serve, shutdown_signal, AppState, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    meridian_event_log::telemetry::init();
    let config = Config::from_env()?;
    let state = AppState::connect(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("failed to listen on {}", config.addr))?;
    serve(listener, state, shutdown_signal()).await
}
