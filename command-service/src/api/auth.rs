//! Login, token refresh and logout, and the layer that names the caller of every request.
//!
//! [`authenticate`] runs before every `/v1` route: it verifies the bearer token when there
//! is one, counts the request against the rate limits of its client address and user, and
//! stores the [`Caller`] for the handlers. Handlers take [`Authenticated`] when the route
//! needs a caller, or [`MaybeCaller`] when it is open (registration).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_auth::password;
use meridian_auth::{Account, Accounts, AuthError, Caller, Role, Session};
use meridian_domain::field::Email;
use meridian_domain::user::{User, UserCommand};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::AppState;
use crate::commands::{with_retries, Actor, EventMetadata};

/// The caller of a request, stored in its extensions by [`authenticate`].
#[derive(Debug, Clone)]
struct RequestCaller(Option<Caller>);

/// The authenticated caller; the request fails with 401 without a valid token.
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match parts.extensions.get::<RequestCaller>() {
            Some(RequestCaller(Some(caller))) => Ok(Self(caller.clone())),
            _ => Err(AuthError::MissingToken.into()),
        }
    }
}

/// The caller when the request carried a token, on routes open to anyone.
pub struct MaybeCaller(pub Option<Caller>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let caller = parts
            .extensions
            .get::<RequestCaller>()
            .and_then(|RequestCaller(caller)| caller.clone());
        Ok(Self(caller))
    }
}

/// The caller that [`authenticate`] stored in a request's extensions.
pub fn caller_of(extensions: &axum::http::Extensions) -> Option<&Caller> {
    extensions
        .get::<RequestCaller>()
        .and_then(|RequestCaller(caller)| caller.as_ref())
}

/// The peer address of the connection, when the server was started with connect info.
pub fn client_address(request: &Parts) -> Option<IpAddr> {
    request
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip().to_canonical())
}

/// Applies the rate limit of the client address, verifies the bearer token, if any, and
/// applies the rate limit of its user. Requests with bad tokens count against the address.
pub async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    if let Err(error) = state.auth.admit(client_address(&parts), None).await {
        return ApiError::from(error).into_response();
    }
    let caller = match state.auth.authenticate(&parts.headers) {
        Ok(caller) => caller,
        Err(error) => return ApiError::from(error).into_response(),
    };
    if let Err(error) = state.auth.admit(None, caller.as_ref()).await {
        return ApiError::from(error).into_response();
    }
    if let Some(caller) = &caller {
        parts.extensions.insert(Actor {
            user_id: caller.user_id.clone(),
            role: caller.role.as_str().to_owned(),
        });
    }
    parts.extensions.insert(RequestCaller(caller));
    next.run(Request::from_parts(parts, body)).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "ada@example.com")]
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh; each works once.
    pub refresh_token: String,
}

/// The tokens of a session.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the access token expires.
    #[schema(example = 900)]
    pub expires_in: u64,
    /// Exchange it at `/v1/auth/refresh` for new tokens. It works once.
    pub refresh_token: String,
    pub refresh_expires_at: chrono::DateTime<chrono::Utc>,
    #[schema(format = Uuid)]
    pub user_id: String,
    #[schema(value_type = String, example = "user")]
    pub role: Role,
}

impl From<Session> for SessionResponse {
    fn from(session: Session) -> Self {
        Self {
            access_token: session.access_token,
            token_type: session.token_type,
            expires_in: session.expires_in,
            refresh_token: session.refresh_token,
            refresh_expires_at: session.refresh_expires_at,
            user_id: session.user_id,
            role: session.role,
        }
    }
}

/// Log in with email and password.
#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = SessionResponse),
        (status = 401, description = "Wrong email or password, or the account is deactivated", body = ErrorBody),
        (status = 422, description = "A field is missing or empty", body = ErrorBody),
        (status = 429, description = "Too many failed logins; see Retry-After", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    parts: Parts,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    if request.email.trim().is_empty() {
        return Err(ApiError::field("email", "must not be empty"));
    }
    if request.password.is_empty() {
        return Err(ApiError::field("password", "must not be empty"));
    }
    let session = state
        .auth
        .login(
            &UserAccounts(&state),
            &request.email,
            &request.password,
            client_address(&parts),
        )
        .await?;
    Ok(Json(session.into()))
}

/// Exchange a refresh token for new tokens. Presenting a used refresh token revokes its
/// session: the newest refresh token of that session stops working too.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "New tokens", body = SessionResponse),
        (status = 401, description = "Unknown, expired, used or revoked refresh token", body = ErrorBody),
    )
)]
pub async fn refresh(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RefreshRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let session = state
        .auth
        .refresh(&UserAccounts(&state), &request.refresh_token)
        .await?;
    Ok(Json(session.into()))
}

/// End the session of a refresh token. Access tokens already issued stay valid until they
/// expire.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    request_body = RefreshRequest,
    responses((status = 204, description = "The session is revoked, or was unknown"))
)]
pub async fn logout(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    state.auth.logout(&request.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accounts read from the user aggregates, found by the blind index of their email.
pub struct UserAccounts<'a>(pub &'a AppState);

impl UserAccounts<'_> {
    async fn user_id_of(&self, email: &str) -> anyhow::Result<Option<String>> {
        let Ok(email) = Email::parse("email", email) else {
            return Ok(None);
        };
        let index = self
            .0
            .cipher
            .email_index(email.as_str())
            .await
            .map_err(|error| anyhow::anyhow!(error).context("failed to index an email address"))?;
        Ok(
            sqlx::query_scalar("SELECT user_id FROM user_emails WHERE email_index = $1")
                .bind(index)
                .fetch_optional(&self.0.pool)
                .await?,
        )
    }

    async fn load(&self, user_id: &str) -> anyhow::Result<Option<User>> {
        let user = self
            .0
            .users
            .load(user_id)
            .await
            .map_err(|error| anyhow::anyhow!("failed to load user {user_id}: {error}"))?;
        Ok(user.registered.then_some(user))
    }
}

impl Accounts for UserAccounts<'_> {
    async fn by_email(&self, email: &str) -> anyhow::Result<Option<Account>> {
        let Some(user_id) = self.user_id_of(email).await? else {
            return Ok(None);
        };
        Ok(self
            .load(&user_id)
            .await?
            .map(|user| account(user_id, &user)))
    }

    async fn by_id(&self, user_id: &str) -> anyhow::Result<Option<Account>> {
        Ok(self
            .load(user_id)
            .await?
            .map(|user| account(user_id.to_owned(), &user)))
    }
}

fn account(user_id: String, user: &User) -> Account {
    Account {
        user_id,
        role: user.role,
        password_hash: user.password_hash.clone(),
        active: user.active && !user.erased,
    }
}

/// Creates the configured administrator when no user has its email, or makes the user
/// with that email an admin. The password is only used when the account is created.
pub async fn bootstrap_admin(
    state: &AppState,
    admin: &meridian_auth::BootstrapAdmin,
) -> anyhow::Result<String> {
    let email = Email::parse("MERIDIAN_ADMIN_EMAIL", &admin.email)
        .map_err(|error| anyhow::anyhow!("{}: {}", error.field, error.reason))?;
    meridian_domain::field::check_password("MERIDIAN_ADMIN_PASSWORD", admin.password.expose())
        .map_err(|error| anyhow::anyhow!("{}: {}", error.field, error.reason))?;
    let accounts = UserAccounts(state);
    let metadata = EventMetadata::system(Uuid::new_v4().to_string());
    let existing = accounts.user_id_of(email.as_str()).await?;
    let user_id = match existing {
        Some(user_id) => user_id,
        None => {
            let user_id = Uuid::new_v4().to_string();
            let password_hash = password::hash(admin.password.expose().to_owned()).await?;
            let command = UserCommand::Register {
                email: email.clone(),
                name: meridian_domain::field::UserName::parse("name", "Administrator")
                    .map_err(|error| anyhow::anyhow!(error.reason))?,
                password_hash,
                role: Role::Admin,
                at: chrono::Utc::now(),
            };
            let registered = with_retries(&state.retry, || async {
                state
                    .users
                    .execute(&user_id, vec![command.clone()], &metadata)
                    .await
                    .map_err(ApiError::from)
            })
            .await;
            match registered {
                Ok(_) => {
                    info!(user_id, "created the configured administrator");
                    return Ok(user_id);
                }
                // Another replica created it at the same moment.
                Err(_) => accounts.user_id_of(email.as_str()).await?.ok_or_else(|| {
                    anyhow::anyhow!("failed to create the configured administrator")
                })?,
            }
        }
    };
    let user = accounts.load(&user_id).await?;
    if user.as_ref().is_some_and(|user| !user.active) {
        warn!(
            user_id,
            "the configured administrator is deactivated and cannot log in; \
             set MERIDIAN_ADMIN_EMAIL to another address"
        );
    }
    if user.is_some_and(|user| user.role != Role::Admin) {
        let command = UserCommand::ChangeRole { role: Role::Admin };
        with_retries(&state.retry, || async {
            state
                .users
                .execute(&user_id, vec![command.clone()], &metadata)
                .await
                .map_err(ApiError::from)
        })
        .await
        .map_err(|error| {
            anyhow::anyhow!("failed to promote the configured administrator: {error}")
        })?;
        info!(user_id, "made the configured administrator's user an admin");
    }
    Ok(user_id)
}
