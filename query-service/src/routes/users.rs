//! `GET /v1/users/{id}`, `GET /v1/users?email=`, `GET /v1/users/{id}/profile` and
//! `GET /v1/users/{id}/profile/image`.

use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use meridian_domain::user::Role;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{require_access_to, Authenticated};
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
    #[sqlx(try_from = "String")]
    #[schema(schema_with = role_schema)]
    pub role: Role,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Sequence of the last `User` event folded into this view.
    pub last_sequence: i64,
    /// Global position of that event.
    pub last_position: i64,
}

/// Describes `role` as a string limited to the names of [`Role::ALL`].
fn role_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(Role::ALL.map(Role::as_str)))
        .description(Some(
            "What the user may do: `user` reads and changes only their own data, `admin` acts \
             on any user, `analyst` reads analytics and history and changes nothing.",
        ))
        .examples([Role::Admin.as_str()])
        .build()
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
    /// `{"id", "size_bytes", "media_type", "key_mode", "uploaded_at"}` of the encrypted image
    /// that `GET /v1/users/{id}/profile/image` returns, or null when none was uploaded.
    #[schema(value_type = Option<Object>)]
    pub encrypted_image: Option<Value>,
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
        (status = 403, description = "The caller is neither this user nor an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
) -> Result<Json<UserView>, ApiError> {
    require_access_to(&caller, user_id, false)?;
    let user = sqlx::query_as::<_, UserView>(
        "SELECT user_id, email, name, active, role, registered_at, updated_at,
                last_sequence, last_position
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
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 422, description = "The email parameter is missing or empty", body = ErrorBody),
    )
)]
pub async fn find_users_by_email(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    Query(query): Query<EmailQuery>,
) -> Result<Json<UserList>, ApiError> {
    // Only admins, so that other callers cannot learn whether an address is registered.
    caller.require_role(&[Role::Admin])?;
    let email = normalize_email(query.email.as_deref())?;
    let users = sqlx::query_as::<_, UserView>(
        "SELECT user_id, email, name, active, role, registered_at, updated_at,
                last_sequence, last_position
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
        (status = 403, description = "The caller is neither this user nor an admin", body = ErrorBody),
        (status = 404, description = "No profile stored for this user", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    )
)]
pub async fn get_profile(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
) -> Result<Json<ProfileView>, ApiError> {
    require_access_to(&caller, user_id, false)?;
    let profile = sqlx::query_as::<_, ProfileView>(
        "SELECT user_id, settings, image, encrypted_image, updated_at, last_sequence
         FROM rm_profiles WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    profile
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no profile stored for user {user_id}")))
}

/// Media type of an encrypted image envelope.
pub const ENVELOPE_CONTENT_TYPE: &str = "application/vnd.meridian.encrypted-image";
/// Response header that names the media type of the image inside the envelope.
pub const MEDIA_TYPE_HEADER: HeaderName = HeaderName::from_static("x-meridian-media-type");

/// The bytes of an image envelope, as a binary OpenAPI schema.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct EnvelopeBytes(pub Vec<u8>);

/// The current encrypted image of a user, joined from `rm_profiles` and `profile_images`.
#[derive(Debug, sqlx::FromRow)]
struct StoredImage {
    image_id: Option<String>,
    bytes: Option<Vec<u8>>,
    media_type: Option<String>,
}

/// Return the user's current encrypted profile image: the envelope exactly as the client
/// uploaded it. Only a client with the passphrase or key file can decrypt it.
#[utoipa::path(
    get,
    path = "/v1/users/{id}/profile/image",
    tag = "users",
    params(
        ("id" = Uuid, Path, description = "User id"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier response; 304 while it is still the current image"),
    ),
    responses(
        (status = 200, description = "The envelope", content_type = "application/vnd.meridian.encrypted-image", body = EnvelopeBytes,
            headers(
                ("ETag" = String, description = "The image id, the hex SHA-256 of the envelope, in quotes"),
                ("X-Meridian-Media-Type" = String, description = "Media type of the image inside the envelope, such as image/png"),
            )),
        (status = 304, description = "The image named by If-None-Match is still the current one"),
        (status = 403, description = "The caller is neither this user nor an admin", body = ErrorBody),
        (status = 404, description = "No encrypted image uploaded for this user, or the user was erased", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    )
)]
pub async fn get_profile_image(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_access_to(&caller, user_id, false)?;
    let stored = sqlx::query_as::<_, StoredImage>(
        "SELECT p.encrypted_image ->> 'id' AS image_id, i.bytes, i.media_type
         FROM rm_profiles p
         LEFT JOIN profile_images i
                ON i.user_id = p.user_id::text AND i.image_id = p.encrypted_image ->> 'id'
         WHERE p.user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    let Some(StoredImage {
        image_id: Some(image_id),
        bytes,
        media_type,
    }) = stored
    else {
        return Err(ApiError::not_found(format!(
            "user {user_id} has no uploaded profile image"
        )));
    };
    let (Some(bytes), Some(media_type)) = (bytes, media_type) else {
        return Err(ApiError::not_found(format!(
            "profile image {image_id} of user {user_id} is not stored; the user may have been erased"
        )));
    };

    let etag = format!("\"{image_id}\"");
    let etag_value = HeaderValue::from_str(&etag).map_err(|_| {
        anyhow::anyhow!("image id {image_id:?} of user {user_id} is not a valid ETag")
    })?;
    let media_type_value = HeaderValue::from_str(&media_type).map_err(|_| {
        anyhow::anyhow!("media type {media_type:?} of image {image_id} is not a valid header")
    })?;
    let headers_out = [(ETAG, etag_value), (MEDIA_TYPE_HEADER, media_type_value)];
    if matches_etag(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, headers_out).into_response());
    }
    let content_type = [(
        CONTENT_TYPE,
        HeaderValue::from_static(ENVELOPE_CONTENT_TYPE),
    )];
    Ok((headers_out, content_type, bytes).into_response())
}

/// Returns whether `If-None-Match` lists `etag` or is `*`.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
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
    fn if_none_match_with_current_etag_matches() {
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"b\", W/\"a\""));
        assert!(matches_etag(&headers, "\"a\""));
    }

    #[test]
    fn if_none_match_with_old_etag_does_not_match() {
        let mut headers = HeaderMap::new();
        headers.insert(IF_NONE_MATCH, HeaderValue::from_static("\"b\""));
        assert!(!matches_etag(&headers, "\"a\""));
    }

    #[test]
    fn blank_email_is_rejected() {
        assert!(normalize_email(Some("   ")).is_err());
    }
}
