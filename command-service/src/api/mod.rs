//! The HTTP command API.
//!
//! Every response carries an `x-request-id` header (generated when the request has none), and
//! every error has the JSON body [`error::ErrorBody`]. Command routes accept an
//! `Idempotency-Key` header ([`idempotency`]). `GET /v1/audit` ([`audit`]) lists the stored
//! events with who caused them.

pub mod audit;
pub mod auth;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod locations;
pub mod profile;
pub mod users;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, Method};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, patch, post, put};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use meridian_auth::{Auth, AuthSettings};
use meridian_crypto::{EventCipher, KeySettings};
use meridian_domain::location::{LocationServices, LocationTrack};
use meridian_domain::profile::Profile;
use meridian_domain::user::User;
use meridian_event_log::Settings;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::cors::{Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::info;
use utoipa::{OpenApi, ToSchema};

use self::error::{current_request_id, with_request_id, ApiError, ErrorBody};
use self::extract::{RequestOrigin, MAX_BODY_BYTES};
use self::idempotency::IdempotencyKey;
use crate::commands::history::PgReportHistory;
use crate::commands::{CommandError, EventMetadata, Executor, RetryPolicy};
use crate::settings::CommandSettings;

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The state every handler shares: the pool, the event cipher, authentication and one
/// executor per aggregate type.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub cipher: EventCipher,
    pub auth: Auth,
    pub users: Arc<Executor<User>>,
    pub profiles: Arc<Executor<Profile>>,
    pub locations: Arc<Executor<LocationTrack>>,
    pub retry: RetryPolicy,
}

impl AppState {
    /// Builds the state over a pool whose database has the Meridian migrations applied.
    pub fn new(pool: PgPool, cipher: EventCipher, auth: Auth) -> Self {
        let history = Arc::new(PgReportHistory::new(pool.clone(), cipher.clone()));
        Self {
            users: Arc::new(Executor::with_event_store(pool.clone(), cipher.clone(), ())),
            profiles: Arc::new(Executor::with_event_store(pool.clone(), cipher.clone(), ())),
            locations: Arc::new(Executor::with_snapshot_store(
                pool.clone(),
                cipher.clone(),
                LocationServices { history },
            )),
            retry: RetryPolicy::default(),
            cipher,
            auth,
            pool,
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Meridian command API",
        description = "Commands that change users, profiles and locations. Each accepted command \
                       returns the global position of the events it stored. The audit \
                       lists who stored which event, when and from where."
    ),
    paths(
        auth::login,
        auth::refresh,
        auth::logout,
        users::register_user,
        users::update_user,
        users::erase_user,
        profile::put_profile,
        profile::put_profile_image,
        locations::record_locations,
        audit::list_audit_entries,
        healthz,
        openapi_json,
    ),
    components(schemas(ErrorBody, HealthResponse))
)]
pub struct ApiDoc;

/// Builds the router with every route and layer that production runs.
pub fn router(state: AppState) -> Router {
    let commands = Router::new()
        .route("/v1/users", post(users::register_user))
        .route(
            "/v1/users/{id}",
            patch(users::update_user).delete(users::erase_user),
        )
        .route("/v1/users/{id}/profile", put(profile::put_profile))
        .route(
            "/v1/users/{id}/profile/image",
            put(profile::put_profile_image),
        )
        .route(
            "/v1/users/{id}/locations",
            post(locations::record_locations),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            idempotency::guard,
        ));
    // The live map on the query service logs in from the browser, so the auth routes accept
    // cross-origin requests. They take no cookies, so any origin may call them. Each route
    // has an OPTIONS method for the CORS layer to handle; without it the preflight would
    // reach the 405 fallback.
    let sessions = Router::new()
        .route("/v1/auth/login", post(auth::login).options(preflight))
        .route("/v1/auth/refresh", post(auth::refresh).options(preflight))
        .route("/v1/auth/logout", post(auth::logout).options(preflight))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::POST])
                .allow_headers([CONTENT_TYPE])
                .expose_headers([RETRY_AFTER]),
        );
    // Authentication runs before the idempotency guard, so a stored response is only
    // replayed to the caller who sent the first request.
    let commands = commands
        .route("/v1/audit", get(audit::list_audit_entries))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    let v1 = Router::new().merge(commands).merge(sessions);
    Router::new()
        .merge(v1)
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(scope_request_id))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID_HEADER))
        // `ApiError` logs the cause of each 5xx once, so the trace layer logs no failures.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID_HEADER, MakeRequestUuid))
        .with_state(state)
}

fn request_span(request: &Request) -> tracing::Span {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), route, request_id)
}

async fn scope_request_id(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    with_request_id(request_id, next.run(request)).await
}

/// Serves the API on `listener` until `shutdown` completes, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener
        .local_addr()
        .context("listener has no local address")?;
    info!(%address, "command service listening");
    // ConnectInfo gives handlers the peer address that event metadata records.
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
        .context("command service failed")?;
    info!("command service stopped");
    Ok(())
}

/// Connects to PostgreSQL and the key provider, creates the configured administrator, binds
/// the listen address and serves until SIGTERM or Ctrl-C.
pub async fn run(
    settings: Settings,
    keys: KeySettings,
    auth_settings: AuthSettings,
    command: CommandSettings,
) -> anyhow::Result<()> {
    let pool =
        meridian_event_log::database::connect(&settings.database_url, command.max_connections)
            .await?;
    let cipher = keys.event_cipher(pool.clone()).await?;
    let auth = Auth::new(
        &auth_settings,
        pool.clone(),
        &settings.redis_url,
        &settings.topic_prefix,
    )?;
    let state = AppState::new(pool, cipher, auth);
    if let Some(admin) = &auth_settings.bootstrap_admin {
        auth::bootstrap_admin(&state, admin)
            .await
            .context("failed to set up the administrator of MERIDIAN_ADMIN_EMAIL")?;
    }
    let listener = TcpListener::bind(command.addr)
        .await
        .with_context(|| format!("failed to listen on {}", command.addr))?;
    serve(listener, state, crate::shutdown::shutdown_signal()).await
}

/// Builds the metadata of the events a request stores.
fn event_metadata(
    origin: RequestOrigin,
    idempotency_key: Option<Extension<IdempotencyKey>>,
    received_at: DateTime<Utc>,
) -> EventMetadata {
    EventMetadata {
        request_id: current_request_id(),
        idempotency_key: idempotency_key.map(|Extension(IdempotencyKey(key))| key),
        received_at,
        actor: origin.actor,
        client_addr: origin.client_addr,
        user_agent: origin.user_agent,
    }
}

/// Fails with 404 when the user does not exist and 409 when it is deactivated.
///
/// NOTE: a deactivation committed after this check but before the caller's commit does not
/// stop that commit; the two aggregates share no transaction.
async fn require_active_user(state: &AppState, user_id: &str) -> Result<(), ApiError> {
    let user = state
        .users
        .load(user_id)
        .await
        .map_err(|error: CommandError<_>| ApiError::from(error))?;
    if !user.registered {
        return Err(ApiError::user_not_found(user_id));
    }
    if !user.active {
        return Err(ApiError::user_deactivated());
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    #[schema(example = "ok")]
    pub status: String,
}

/// Report whether the service and its database respond.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "PostgreSQL responds", body = HealthResponse),
        (status = 503, description = "PostgreSQL does not respond within 2 seconds", body = ErrorBody),
    )
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<HealthResponse>, ApiError> {
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(Json(HealthResponse {
            status: "ok".to_owned(),
        })),
        Ok(Err(error)) => Err(ApiError::Unavailable(
            anyhow::Error::new(error).context("health check query failed"),
        )),
        Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "health check query timed out after 2 s"
        ))),
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json"))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn route_not_found(request: Request) -> ApiError {
    ApiError::NotFound {
        message: format!("no route for {} {}", request.method(), request.uri().path()),
    }
}

/// Responds to an OPTIONS request that is not a CORS preflight, which the CORS layer passes on.
async fn preflight() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
