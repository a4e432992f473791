//! `POST /v1/users`, `PATCH /v1/users/{id}` and `DELETE /v1/users/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use meridian_auth::password;
use meridian_auth::refresh::RevokeReason;
use meridian_auth::{AuthError, Caller};
use meridian_domain::field::{check_password, Email, UserName};
use meridian_domain::user::{Role, UserCommand, UserError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::{Authenticated, MaybeCaller};
use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, RequestOrigin, UserId};
use super::idempotency::IdempotencyKey;
use super::{event_metadata, AppState};
use crate::commands::{with_retries, CommandError, Committed};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterUserRequest {
    /// Compared without regard to case; stored lower-cased.
    #[schema(example = "vessel-366952890@ais.example")]
    pub email: String,
    #[schema(example = "SAMUEL I NEWHOUSE")]
    pub name: String,
    /// 8 to 1024 characters; stored only as an argon2id hash.
    pub password: String,
    /// `user` (the default), `admin` or `analyst`. Only an admin may register anything but
    /// `user`; anyone else gets 403.
    #[schema(example = "user")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterUserResponse {
    #[schema(format = Uuid)]
    pub user_id: String,
    /// Sequence of the last stored event: 1, or 2 when an admin gave a role other than `user`.
    pub sequence: i64,
    /// Global position of the stored event in the event store.
    pub position: i64,
}

impl RegisterUserResponse {
    pub fn from_committed(committed: Committed) -> Result<Self, ApiError> {
        match (committed.last_sequence, committed.position) {
            (Some(sequence), Some(position)) => Ok(Self {
                user_id: committed.aggregate_id,
                sequence,
                position,
            }),
            _ => Err(ApiError::Internal(anyhow::anyhow!(
                "registering user {} stored no event",
                committed.aggregate_id
            ))),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    pub name: Option<String>,
    pub email: Option<String>,
    pub password: Option<String>,
    /// Only `false` is accepted: it deactivates the user.
    pub active: Option<bool>,
    /// `user`, `admin` or `analyst`. Only an admin may change a role.
    pub role: Option<String>,
}

/// The result of a command that may store several events, or none when nothing changed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StoredEventsResponse {
    #[schema(format = Uuid)]
    pub user_id: String,
    /// Sequence of the last stored event; null when nothing changed.
    pub sequence: Option<i64>,
    /// Greatest global position of the stored events; null when nothing changed.
    pub position: Option<i64>,
    pub stored_events: usize,
}

impl From<Committed> for StoredEventsResponse {
    fn from(committed: Committed) -> Self {
        Self {
            user_id: committed.aggregate_id,
            sequence: committed.last_sequence,
            position: committed.position,
            stored_events: committed.stored,
        }
    }
}

/// Register a user.
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 200 visible ASCII characters; a repeat returns the first result")),
    request_body = RegisterUserRequest,
    responses(
        (status = 201, description = "User registered", body = RegisterUserResponse),
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "A token was sent and is not valid", body = ErrorBody),
        (status = 403, description = "A role other than user was asked for by a non-admin", body = ErrorBody),
        (status = 409, description = "Email taken, or idempotency key in use", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    )
)]
pub async fn register_user(
    State(state): State<AppState>,
    MaybeCaller(caller): MaybeCaller,
    origin: RequestOrigin,
    idempotency_key: Option<Extension<IdempotencyKey>>,
    JsonBody(request): JsonBody<RegisterUserRequest>,
) -> Result<(StatusCode, Json<RegisterUserResponse>), ApiError> {
    let received_at = Utc::now();
    let role = parse_role(request.role.as_deref())?.unwrap_or_default();
    if role != Role::User {
        require_admin_for_role(caller.as_ref(), role)?;
    }
    let email = Email::parse("email", &request.email)?;
    let name = UserName::parse("name", &request.name)?;
    check_password("password", &request.password)?;

    let user_id = Uuid::new_v4().to_string();
    let password_hash = password::hash(request.password).await?;
    let metadata = event_metadata(origin, idempotency_key, received_at);
    let command = UserCommand::Register {
        email: email.clone(),
        name,
        password_hash,
        role,
        at: received_at,
    };

    let (state, user_id, email, command, metadata) =
        (&state, &user_id, &email, &command, &metadata);
    let committed = with_retries(&state.retry, move || async move {
        ensure_email_available(state, email, user_id).await?;
        state
            .users
            .execute(user_id, vec![command.clone()], metadata)
            .await
            .map_err(ApiError::from)
    })
    .await?;
    let response = RegisterUserResponse::from_committed(committed)?;
    Ok((StatusCode::CREATED, Json(response)))
}

/// Change a user's name, email or password, or deactivate the user.
///
/// The changes are applied in the order name, email, password, deactivation, and are stored
/// together in one transaction: when one is rejected, none is stored.
#[utoipa::path(
    patch,
    path = "/v1/users/{id}",
    tag = "users",
    params(
        ("id" = String, Path, format = Uuid, description = "User id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 200 visible ASCII characters; a repeat returns the first result"),
    ),
    request_body = UpdateUserRequest,
    responses(
        (status = 200, description = "Changes stored; unchanged values store nothing", body = StoredEventsResponse),
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "Another user's account, a role change by a non-admin, or an analyst", body = ErrorBody),
        (status = 404, description = "Unknown user", body = ErrorBody),
        (status = 409, description = "Email taken, user deactivated, or idempotency key in use", body = ErrorBody),
        (status = 422, description = "A field is invalid, or no field is set", body = ErrorBody),
    )
)]
pub async fn update_user(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
    origin: RequestOrigin,
    idempotency_key: Option<Extension<IdempotencyKey>>,
    JsonBody(request): JsonBody<UpdateUserRequest>,
) -> Result<Json<StoredEventsResponse>, ApiError> {
    caller.require_write_access_to(&user_id)?;
    let received_at = Utc::now();
    let changes = UserChanges::parse(request)?;
    if let Some(role) = changes.role {
        require_admin_for_role(Some(&caller), role)?;
    }
    let metadata = event_metadata(origin, idempotency_key, received_at);

    let mut commands = Vec::with_capacity(4);
    if let Some(name) = changes.name {
        commands.push(UserCommand::ChangeName { name });
    }
    if let Some(email) = changes.email.clone() {
        commands.push(UserCommand::ChangeEmail { email });
    }
    if let Some(password) = changes.password {
        let password_hash = password::hash(password).await?;
        commands.push(UserCommand::ChangePassword { password_hash });
    }
    if let Some(role) = changes.role {
        commands.push(UserCommand::ChangeRole { role });
    }
    if changes.deactivate {
        commands.push(UserCommand::Deactivate { at: received_at });
    }
    let ends_sessions = changes.deactivate
        || commands
            .iter()
            .any(|command| matches!(command, UserCommand::ChangePassword { .. }));

    let (state, id, email, commands, metadata) =
        (&state, &user_id, &changes.email, &commands, &metadata);
    let committed = with_retries(&state.retry, move || async move {
        if let Some(email) = email {
            let user = state.users.load(id).await.map_err(|e| user_error(e, id))?;
            if !user.registered {
                return Err(ApiError::user_not_found(id));
            }
            ensure_email_available(state, email, id).await?;
        }
        state
            .users
            .execute(id, commands.clone(), metadata)
            .await
            .map_err(|error| user_error(error, id))
    })
    .await?;
    // A new password or a deactivation ends every session, so a stolen refresh token stops
    // working. Access tokens already issued expire on their own.
    if ends_sessions && committed.stored > 0 {
        let reason = if changes.deactivate {
            RevokeReason::AccountDisabled
        } else {
            RevokeReason::PasswordChanged
        };
        state
            .auth
            .refresh_store()
            .revoke_user(&user_id, reason)
            .await
            .map_err(|error| anyhow::anyhow!(error).context("failed to end the user's sessions"))?;
    }
    Ok(Json(StoredEventsResponse::from(committed)))
}

/// Erase a user: destroy their data key and everything derived from it.
///
/// The `UserErased` event and the destruction of the key commit in one transaction. From then
/// on no earlier event of the user can be opened, in PostgreSQL or on Kafka, and every
/// command for the user answers 410. The projections delete the user's read-model rows and
/// analytics documents when they reach the returned position.
#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    tag = "users",
    params(
        ("id" = String, Path, format = Uuid, description = "User id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 200 visible ASCII characters; a repeat returns the first result"),
    ),
    responses(
        (status = 200, description = "User erased", body = StoredEventsResponse),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "Another user's account, or an analyst", body = ErrorBody),
        (status = 404, description = "Unknown user", body = ErrorBody),
        (status = 410, description = "User already erased", body = ErrorBody),
    )
)]
pub async fn erase_user(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
    origin: RequestOrigin,
    idempotency_key: Option<Extension<IdempotencyKey>>,
) -> Result<Json<StoredEventsResponse>, ApiError> {
    caller.require_write_access_to(&user_id)?;
    let received_at = Utc::now();
    let metadata = event_metadata(origin, idempotency_key, received_at);
    let command = UserCommand::Erase { at: received_at };
    let (state, id, command, metadata) = (&state, &user_id, &command, &metadata);
    let committed = with_retries(&state.retry, move || async move {
        state
            .users
            .execute(id, vec![command.clone()], metadata)
            .await
            .map_err(|error| user_error(error, id))
    })
    .await;
    // Whatever the outcome, a key this process still caches must not outlive the erase.
    state.cipher.keyring().forget(&user_id);
    let committed = committed?;
    tracing::info!(user_id, position = committed.position, "erased user");
    Ok(Json(StoredEventsResponse::from(committed)))
}

/// The validated fields of a `PATCH /v1/users/{id}` body.
struct UserChanges {
    name: Option<UserName>,
    email: Option<Email>,
    password: Option<String>,
    role: Option<Role>,
    deactivate: bool,
}

impl UserChanges {
    fn parse(request: UpdateUserRequest) -> Result<Self, ApiError> {
        let nothing_set = request.name.is_none()
            && request.email.is_none()
            && request.password.is_none()
            && request.active.is_none()
            && request.role.is_none();
        if nothing_set {
            return Err(ApiError::field(
                "body",
                "must set at least one of name, email, password, active, role",
            ));
        }
        let role = parse_role(request.role.as_deref())?;
        let name = request
            .name
            .map(|name| UserName::parse("name", &name))
            .transpose()?;
        let email = request
            .email
            .map(|email| Email::parse("email", &email))
            .transpose()?;
        if let Some(password) = &request.password {
            check_password("password", password)?;
        }
        if request.active == Some(true) {
            return Err(ApiError::field(
                "active",
                "only false is accepted; a deactivated user cannot be reactivated",
            ));
        }
        Ok(Self {
            name,
            email,
            password: request.password,
            role,
            deactivate: request.active == Some(false),
        })
    }
}

/// Parses the `role` field of a request body.
fn parse_role(raw: Option<&str>) -> Result<Option<Role>, ApiError> {
    raw.map(str::parse::<Role>)
        .transpose()
        .map_err(ApiError::from)
}

/// Fails with 403 on field `role` unless the caller is an admin.
fn require_admin_for_role(caller: Option<&Caller>, role: Role) -> Result<(), ApiError> {
    if caller.is_some_and(Caller::is_admin) {
        return Ok(());
    }
    Err(AuthError::forbidden_field(
        "role",
        format!("only an admin may give a user the role {role}"),
    )
    .into())
}

/// Maps a user command error, naming the user in a 404.
fn user_error(error: CommandError<UserError>, user_id: &str) -> ApiError {
    match error {
        CommandError::Rejected(UserError::NotFound) => ApiError::user_not_found(user_id),
        CommandError::Rejected(UserError::Erased) => ApiError::user_erased(user_id),
        other => ApiError::from(other),
    }
}

/// Fails with 409 on field `email` when the address belongs to another user. Addresses are
/// looked up by their blind index, because the table contains no address.
async fn ensure_email_available(
    state: &AppState,
    email: &Email,
    user_id: &str,
) -> Result<(), ApiError> {
    let index = state
        .cipher
        .email_index(email.as_str())
        .await
        .map_err(|error| anyhow::anyhow!(error).context("failed to index an email address"))?;
    let holder: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM user_emails WHERE email_index = $1")
            .bind(index)
            .fetch_optional(&state.pool)
            .await
            .map_err(|error| {
                anyhow::anyhow!(error).context("failed to look up an email address")
            })?;
    match holder {
        Some(holder) if holder != user_id => Err(ApiError::email_taken()),
        _ => Ok(()),
    }
}
