//! Runs the query service: the HTTP API on `MERIDIAN_QUERY_ADDR` (default 127.0.0.1:8081)
//! and Socket.IO on `MERIDIAN_SOCKET_ADDR` (default 127.0.0.1:8091).

use std::sync::Arc;

use anyhow::Context;
use meridian_event_log::live::updates_channel;
use meridian_query_service::live::hub::{Hub, HubSettings};
use meridian_query_service::live::{self, Live};
use meridian_query_service::{serve, shutdown_signal, AppState, Config};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    meridian_event_log::telemetry::init();
    let config = Config::from_env()?;
    let state = AppState::connect(&config).await?;
    let http = TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("failed to listen on {}", config.addr))?;
    let sockets = TcpListener::bind(config.socket_addr)
        .await
        .with_context(|| format!("failed to listen on {}", config.socket_addr))?;

    let stop = CancellationToken::new();
    let hub = Hub::start(
        state.pool.clone(),
        HubSettings {
            redis_url: config.settings.redis_url.clone(),
            channel: updates_channel(&config.settings.topic_prefix),
            poll_interval: config.live_poll,
        },
        stop.clone(),
    )
    .await?;
    let live = Arc::new(Live::new(hub, state.auth.clone()));

    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let http_stop = stop.clone();
    let result = tokio::try_join!(
        serve(http, state, async move { http_stop.cancelled().await }),
        live::serve(sockets, live, stop.clone()),
    );
    // Whichever server failed, stop the other and the hub.
    stop.cancel();
    result.map(|_| ())
}
