//! `GET /v1/users/{id}`, `GET /v1/users?email=` and `GET /v1/users/{id}/profile`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{Query, UserId};
use crate::AppState;

/// Maximum length of an email address, in bytes, as the command service enforces it.
const MAX_EMAIL_LEN: usize = 254;

/// A user as the `rm_users` read model stores it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct UserView {
    pub user_id: Uuid,
    /// Normalized (trimmed, lower-cased) email address.
    pub email: String,
    pub name: String,
    /// False once the user is deactivated.
    pub active: bool,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Sequence of the last `User` event folded into this view.
    pub last_sequence: i64,
    /// Global position of that event.
    pub last_position: i64,
}

/// Users whose email matches the query.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
}

/// A user's profile as the `rm_profiles` read model stores it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct ProfileView {
    pub user_id: Uuid,
    /// The user's settings object.
    #[schema(value_type = Object)]
    pub settings: Value,
    /// `{"uri", "content_type"}` of the profile image, or null when there is none.
    #[schema(value_type = Option<Object>)]
    pub image: Option<Value>,
    pub updated_at: DateTime<Utc>,
    /// Sequence of the last `Profile` event folded into this view.
    pub last_sequence: i64,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EmailQuery {
    /// Email address; matched after trimming and lower-casing.
    #[param(required = true)]
    pub email: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    UserId(user_id): UserId,
) -> Result<Json<UserView>, ApiError> {
    let user = sqlx::query_as::<_, UserView>(
        "SELECT user_id, email, name, active, registered_at, updated_at, last_sequence,
                last_position
         FROM rm_users WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    user.map(Json)
        .ok_or_else(|| ApiError::not_found(format!("user {user_id} not found")))
}

#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "users",
    params(EmailQuery),
    responses(
        (status = 200, description = "Users with this email; empty when none", body = UserList),
        (status = 422, description = "The email parameter is missing or empty", body = ErrorBody),
    )
)]
pub async fn find_users_by_email(
    State(state): State<AppState>,
    Query(query): Query<EmailQuery>,
) -> Result<Json<UserList>, ApiError> {
    let email = normalize_email(query.email.as_deref())?;
    let users = sqlx::query_as::<_, UserView>(
        "SELECT user_id, email, name, active, registered_at, updated_at, last_sequence,
                last_position
         FROM rm_users WHERE email = $1
         ORDER BY registered_at, user_id",
    )
    .bind(&email)
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(UserList { users }))
}

/// Trims and lower-cases the `email` parameter, the normalization the domain applies
/// before storing an address.
fn normalize_email(raw: Option<&str>) -> Result<String, ApiError> {
    let Some(raw) = raw else {
        return Err(ApiError::validation("email", "is required"));
    };
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(ApiError::validation("email", "must not be empty"));
    }
    if email.len() > MAX_EMAIL_LEN {
        return Err(ApiError::validation(
            "email",
            format!("must be at most {MAX_EMAIL_LEN} bytes"),
        ));
    }
    Ok(email)
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/profile",
    tag = "users",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user's profile", body = ProfileView),
        (status = 404, description = "No profile stored for this user", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    )
)]
pub async fn get_profile(
    State(state): State<AppState>,
    UserId(user_id): UserId,
) -> Result<Json<ProfileView>, ApiError> {
    let profile = sqlx::query_as::<_, ProfileView>(
        "SELECT user_id, settings, image, updated_at, last_sequence
         FROM rm_profiles WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    profile
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no profile stored for user {user_id}")))
}

/// Returns whether `rm_users` has a row for `user_id`.
pub async fn user_exists(pool: &PgPool, user_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM rm_users WHERE user_id = $1)")
        .bind(user_id)
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lowercased() {
        let email = normalize_email(Some("  Vessel-1@AIS.Example ")).unwrap();
        assert_eq!(email, "vessel-1@ais.example");
    }

    #[test]
    fn missing_email_names_the_parameter() {
        let error = normalize_email(None).unwrap_err();
        assert!(matches!(error, ApiError::Validation { ref field, .. } if field == "email"));
    }

    #[test]
    fn blank_email_is_rejected() {
        assert!(normalize_email(Some("   ")).is_err());
    }
}
