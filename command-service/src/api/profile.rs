//! `PUT /v1/users/{id}/profile`.

use axum::extract::State;
use axum::{Extension, Json};
use chrono::Utc;
use meridian_domain::profile::{ImageReference, ProfileCommand, Settings};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{JsonBody, UserId};
use super::idempotency::IdempotencyKey;
use super::users::StoredEventsResponse;
use super::{event_metadata, require_active_user, AppState};
use crate::commands::with_retries;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutProfileRequest {
    /// Any JSON object of at most 16 KiB; it replaces the stored settings.
    #[schema(value_type = Object, example = json!({"units": "metric"}))]
    pub settings: Value,
    /// The profile image; null or absent removes it.
    #[serde(default)]
    pub image: Option<ImageRequest>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    #[schema(example = "s3://meridian-images/366952890.png")]
    pub uri: String,
    #[schema(example = "image/png")]
    pub content_type: String,
}

/// Replace a user's profile: the settings object and the image reference.
#[utoipa::path(
    put,
    path = "/v1/users/{id}/profile",
    tag = "users",
    params(
        ("id" = String, Path, format = Uuid, description = "User id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 200 visible ASCII characters; a repeat returns the first result"),
    ),
    request_body = PutProfileRequest,
    responses(
        (status = 200, description = "Profile stored; an unchanged profile stores nothing", body = StoredEventsResponse),
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 404, description = "Unknown user", body = ErrorBody),
        (status = 409, description = "User deactivated, or idempotency key in use", body = ErrorBody),
        (status = 422, description = "A field is invalid", body = ErrorBody),
    )
)]
pub async fn put_profile(
    State(state): State<AppState>,
    UserId(user_id): UserId,
    idempotency_key: Option<Extension<IdempotencyKey>>,
    JsonBody(request): JsonBody<PutProfileRequest>,
) -> Result<Json<StoredEventsResponse>, ApiError> {
    let received_at = Utc::now();
    let settings = Settings::parse("settings", request.settings)?;
    let image = request
        .image
        .map(|image| ImageReference::parse("image", &image.uri, &image.content_type))
        .transpose()?;
    let command = ProfileCommand::Update { settings, image };
    let metadata = event_metadata(idempotency_key, received_at);

    let (state, id, command, metadata) = (&state, &user_id, &command, &metadata);
    let committed = with_retries(&state.retry, move || async move {
        require_active_user(state, id).await?;
        state
            .profiles
            .execute(id, vec![command.clone()], metadata)
            .await
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(StoredEventsResponse::from(committed)))
}
