//! HTTP read API of Meridian. It reads only the read models that the projection workers
//! write, so its responses trail the commands by the projections' lag (see `/v1/stats`).
//!
//! - [`routes`]: one module of handlers per resource.
//! - [`auth`]: the middleware that authenticates and rate-limits every `/v1` request, and
//!   the extractor of its caller.
//! - [`error`]: [`ApiError`](error::ApiError), the JSON error body and the middleware that
//!   adds the request id to it.
//! - [`extract`]: path and query extractors that reject with that body.
//! - [`cursor`]: the keyset cursor of the location history.
//! - [`geo`]: the bounding box of area filters.
//! - [`openapi`]: the OpenAPI document.
//! - [`dashboard`]: the live map page at `/` and its assets.
//! - [`live`]: live updates over Socket.IO, served on an address of their own.
//! - [`read_your_writes`]: the middleware that delays a `/v1` request until the read models
//!   have reached the position a command returned.

pub mod auth;
pub mod cursor;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod geo;
pub mod live;
pub mod openapi;
pub mod read_your_writes;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{middleware, Router};
use meridian_auth::{Auth, AuthSettings};
use meridian_event_log::settings::var_or;
use meridian_event_log::Settings;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::routes::{events, health, location_snapshot, locations, stats, users};

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8081";
/// Default listen address of Socket.IO.
pub const DEFAULT_SOCKET_ADDR: &str = "127.0.0.1:8091";
/// Default of `MERIDIAN_COMMAND_PUBLIC_URL`: the command service of the local stack.
pub const DEFAULT_COMMAND_PUBLIC_URL: &str = "http://127.0.0.1:8080";
/// Default of `MERIDIAN_LIVE_POLL_MS`: how often the hub reads PostgreSQL for updates that
/// Redis did not bring.
pub const DEFAULT_LIVE_POLL: Duration = Duration::from_secs(1);
/// Connections of the PostgreSQL pool.
pub const DATABASE_CONNECTIONS: u32 = 16;
/// Time after which a request fails with 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the query service process.
#[derive(Debug, Clone)]
pub struct Config {
    /// `MERIDIAN_QUERY_ADDR`, default [`DEFAULT_ADDR`].
    pub addr: SocketAddr,
    /// `MERIDIAN_SOCKET_ADDR`, default [`DEFAULT_SOCKET_ADDR`].
    pub socket_addr: SocketAddr,
    /// `MERIDIAN_LIVE_POLL_MS`, default [`DEFAULT_LIVE_POLL`].
    pub live_poll: Duration,
    /// `MERIDIAN_READ_WAIT_MAX_MS`, default 2000: how long a request with a minimum
    /// position waits for the read models, at most 9000 ms.
    pub read_wait: Duration,
    /// `MERIDIAN_COMMAND_PUBLIC_URL`, default [`DEFAULT_COMMAND_PUBLIC_URL`]: the command
    /// service as a browser reaches it, where the live map logs in.
    pub command_public_url: String,
    /// The token key file, token lifetime and rate limits (`MERIDIAN_TOKEN_KEY_FILE`,
    /// `MERIDIAN_RATE_LIMIT_*` and the others that [`AuthSettings::from_env`] reads).
    pub auth: AuthSettings,
    pub settings: Settings,
}

impl Config {
    /// Reads `MERIDIAN_QUERY_ADDR`, `MERIDIAN_SOCKET_ADDR`, `MERIDIAN_LIVE_POLL_MS`,
    /// `MERIDIAN_READ_WAIT_MAX_MS`, `MERIDIAN_COMMAND_PUBLIC_URL`, the authentication
    /// settings and the shared `MERIDIAN_*` settings.
    pub fn from_env() -> anyhow::Result<Self> {
        let live_poll = match std::env::var("MERIDIAN_LIVE_POLL_MS") {
            Ok(raw) => raw
                .parse()
                .ok()
                .filter(|millis| *millis > 0)
                .map(Duration::from_millis)
                .with_context(|| {
                    format!("MERIDIAN_LIVE_POLL_MS must be a positive integer, got {raw:?}")
                })?,
            Err(_) => DEFAULT_LIVE_POLL,
        };
        Ok(Self {
            addr: address("MERIDIAN_QUERY_ADDR", DEFAULT_ADDR)?,
            socket_addr: address("MERIDIAN_SOCKET_ADDR", DEFAULT_SOCKET_ADDR)?,
            live_poll,
            read_wait: read_your_writes::read_wait_from_env()?,
            command_public_url: dashboard::parse_public_url(
                "MERIDIAN_COMMAND_PUBLIC_URL",
                &var_or("MERIDIAN_COMMAND_PUBLIC_URL", DEFAULT_COMMAND_PUBLIC_URL),
            )?,
            auth: AuthSettings::from_env()?,
            settings: Settings::from_env()?,
        })
    }
}

fn address(name: &str, default: &str) -> anyhow::Result<SocketAddr> {
    let raw = var_or(name, default);
    raw.parse()
        .with_context(|| format!("{name} must be host:port, got {raw:?}"))
}

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Topic whose offsets `/v1/stats` compares to compute projection lag.
    pub events_topic: String,
    /// Maximum time a request waits for its minimum position.
    pub read_wait: Duration,
    /// Address of this process's Socket.IO server, whose port the dashboard connects to.
    pub socket_addr: SocketAddr,
    /// Base URL of the command service that the dashboard logs in at.
    pub command_public_url: String,
    /// Access-token checks and rate limits.
    pub auth: Auth,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("events_topic", &self.events_topic)
            .field("read_wait", &self.read_wait)
            .field("socket_addr", &self.socket_addr)
            .field("command_public_url", &self.command_public_url)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Connects to PostgreSQL, applying migrations so that the read-model tables exist,
    /// and loads the token keys. The rate-limit counters live in Redis under the topic
    /// prefix, so that they are shared with the command service.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let settings = &config.settings;
        let pool =
            meridian_event_log::database::connect(&settings.database_url, DATABASE_CONNECTIONS)
                .await?;
        let auth = Auth::new(
            &config.auth,
            pool.clone(),
            &settings.redis_url,
            &settings.topic_prefix,
        )?;
        Ok(Self {
            pool,
            events_topic: settings.events_topic(),
            read_wait: config.read_wait,
            socket_addr: config.socket_addr,
            command_public_url: config.command_public_url.clone(),
            auth,
        })
    }
}

/// Builds every route with its middleware: request id, tracing, error bodies, timeout.
pub fn router(state: AppState) -> Router {
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(middleware::from_fn(error::complete_error_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ));

    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(v1_routes(state.clone()))
        .merge(dashboard::router(
            state.socket_addr.port(),
            &state.command_public_url,
        ))
        .with_state(state)
        .layer(middleware)
}

/// Builds the `/v1` routes. Each of them first authenticates the request, then waits for
/// its minimum position, so every route added here needs a token and supports
/// read-your-writes. Authentication comes first, so that a request without a valid token
/// is rejected before it waits for the read models.
fn v1_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/v1/users", get(users::find_users_by_email))
        .route("/v1/users/{id}", get(users::get_user))
        .route("/v1/users/{id}/profile", get(users::get_profile))
        .route(
            "/v1/users/{id}/profile/image",
            get(users::get_profile_image),
        )
        .route(
            "/v1/users/{id}/location",
            get(locations::get_latest_location),
        )
        .route("/v1/users/{id}/locations", get(locations::list_locations))
        .route(
            "/v1/locations/latest",
            get(location_snapshot::get_latest_locations),
        )
        .route("/v1/stats", get(stats::get_stats))
        .route("/v1/events", get(events::list_events))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            read_your_writes::wait_for_min_position,
        ))
        // The layer added last runs first.
        .route_layer(middleware::from_fn_with_state(
            state,
            auth::authenticate_request,
        ))
}

fn request_span(request: &Request) -> tracing::Span {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(request.uri().path(), MatchedPath::as_str);
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), path, request_id)
}

/// Serves [`router`] on `listener` until `shutdown` completes, then lets requests in
/// flight finish. Each request carries its peer address, which the rate limit counts.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("listener has no address")?;
    tracing::info!(%addr, "query service listening");
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server failed")?;
    tracing::info!("query service stopped");
    Ok(())
}

pub use meridian_event_log::shutdown::shutdown_signal;
