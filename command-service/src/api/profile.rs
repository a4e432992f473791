//! `PUT /v1/users/{id}/profile` and `PUT /v1/users/{id}/profile/image`.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use meridian_domain::profile::envelope::{
    EnvelopeError, EnvelopeHeader, ENVELOPE_CONTENT_TYPE, MAX_ENVELOPE_BYTES,
};
use meridian_domain::profile::{EncryptedImage, ImageReference, ProfileCommand, Settings};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tracing::{debug, warn};
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::error::{current_request_id, ApiError, ErrorBody};
use super::extract::{JsonBody, RequestOrigin, UserId};
use super::idempotency::IdempotencyKey;
use super::users::StoredEventsResponse;
use super::{event_metadata, require_active_user, AppState};
use crate::commands::{with_retries, Committed, EventMetadata};

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
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
    origin: RequestOrigin,
    idempotency_key: Option<Extension<IdempotencyKey>>,
    JsonBody(request): JsonBody<PutProfileRequest>,
) -> Result<Json<StoredEventsResponse>, ApiError> {
    caller.require_write_access_to(&user_id)?;
    let received_at = Utc::now();
    let settings = Settings::parse("settings", request.settings)?;
    let image = request
        .image
        .map(|image| ImageReference::parse("image", &image.uri, &image.content_type))
        .transpose()?;
    let command = ProfileCommand::Update { settings, image };
    let metadata = event_metadata(origin, idempotency_key, received_at);

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

/// The bytes of an image envelope, as a binary OpenAPI schema.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct EnvelopeBytes(pub Vec<u8>);

/// Metadata of a stored encrypted profile image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EncryptedImageView {
    /// Lower-case hex SHA-256 of the envelope, which is also its `ETag` on the query service.
    #[schema(example = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")]
    pub id: String,
    /// Size of the envelope in bytes.
    pub size_bytes: u64,
    /// Media type of the plaintext image, as the envelope header declares it.
    #[schema(example = "image/png")]
    pub media_type: String,
    /// `passphrase` or `key-file`.
    #[schema(example = "passphrase")]
    pub key_mode: String,
    pub uploaded_at: DateTime<Utc>,
}

impl From<EncryptedImage> for EncryptedImageView {
    fn from(image: EncryptedImage) -> Self {
        Self {
            id: image.id,
            size_bytes: image.size_bytes,
            media_type: image.media_type.as_str().to_owned(),
            key_mode: image.key_mode.as_str().to_owned(),
            uploaded_at: image.uploaded_at,
        }
    }
}

/// The result of an image upload: the current image and the event that made it current.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PutProfileImageResponse {
    #[schema(format = Uuid)]
    pub user_id: String,
    /// The current image. After a repeated upload of the current image, its first upload.
    pub image: EncryptedImageView,
    /// Sequence of the stored event; null when the image already was the current one.
    pub sequence: Option<i64>,
    /// Global position of the stored event; null when the image already was the current one.
    pub position: Option<i64>,
    pub stored_events: usize,
}

/// Every way an image upload can fail: the API's errors plus the two that only a binary
/// body has.
#[derive(Debug, thiserror::Error)]
pub enum ImageUploadError {
    /// 415: the body is not declared as an image envelope.
    #[error("Content-Type must be {ENVELOPE_CONTENT_TYPE}, got {0:?}")]
    UnsupportedMediaType(String),
    /// 413: the envelope exceeds [`MAX_ENVELOPE_BYTES`].
    #[error("request body is larger than {MAX_ENVELOPE_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IntoResponse for ImageUploadError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, code, field, reason) = match self {
            Self::Api(error) => return error.into_response(),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Content-Type",
                format!("must be {ENVELOPE_CONTENT_TYPE}"),
            ),
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "body",
                format!("must be at most {MAX_ENVELOPE_BYTES} bytes"),
            ),
        };
        let body = ErrorBody {
            error: code.to_owned(),
            message,
            field: Some(field.to_owned()),
            reason: Some(reason),
            request_id: current_request_id(),
        };
        (status, Json(body)).into_response()
    }
}

/// Store a profile image that the client encrypted, and make it the user's current image.
///
/// The body is an envelope of the `meridian-image` client: a header naming the key mode and
/// the plaintext's media type, then AES-256-GCM-SIV ciphertext. The server checks the header
/// and the size but has no key, so it never receives the plaintext image. The image id is the SHA-256 of
/// the envelope, so sending the same envelope again while it is the current image stores no
/// event. This route ignores `Idempotency-Key`.
#[utoipa::path(
    put,
    path = "/v1/users/{id}/profile/image",
    tag = "users",
    params(("id" = String, Path, format = Uuid, description = "User id")),
    request_body(
        content = EnvelopeBytes,
        content_type = "application/vnd.meridian.encrypted-image",
        description = "The envelope, at most 2 MiB: magic MRDIMG, version 1, key mode, key parameters, media type, nonce, ciphertext and tag"
    ),
    responses(
        (status = 200, description = "Image stored and current; a repeat of the current image stores no event", body = PutProfileImageResponse),
        (status = 404, description = "Unknown user", body = ErrorBody),
        (status = 409, description = "User deactivated", body = ErrorBody),
        (status = 413, description = "Envelope larger than 2 MiB; `field` is `body`", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/vnd.meridian.encrypted-image", body = ErrorBody),
        (status = 422, description = "The envelope header is invalid; `field` names the header field, such as `body.magic`", body = ErrorBody),
    )
)]
pub async fn put_profile_image(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
    origin: RequestOrigin,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PutProfileImageResponse>, ImageUploadError> {
    caller
        .require_write_access_to(&user_id)
        .map_err(ApiError::from)?;
    let received_at = Utc::now();
    require_envelope_content_type(&headers)?;
    let envelope = read_envelope(&headers, body).await?;
    let header = EnvelopeHeader::parse(&envelope).map_err(envelope_error)?;
    require_active_user(&state, &user_id).await?;

    let image = EncryptedImage {
        id: hex_sha256(&envelope),
        size_bytes: u64::try_from(envelope.len()).unwrap_or(u64::MAX),
        media_type: header.media_type,
        key_mode: header.key.mode(),
        uploaded_at: received_at,
    };
    let stored = store_envelope(&state.pool, &user_id, &image, &envelope).await?;
    let metadata = event_metadata(origin, None, received_at);
    let committed = match upload_image(&state, &user_id, &image, &metadata).await {
        Ok(committed) => committed,
        Err(error) => {
            if let StoredEnvelope::Inserted { at } = stored {
                discard_envelope(&state.pool, &user_id, &image.id, at).await;
            }
            return Err(error.into());
        }
    };
    debug!(
        user_id,
        image_id = image.id,
        size_bytes = image.size_bytes,
        "profile image uploaded"
    );

    let current = if committed.stored == 0 {
        current_image(&state, &user_id).await?.unwrap_or(image)
    } else {
        image
    };
    Ok(Json(PutProfileImageResponse {
        user_id,
        image: current.into(),
        sequence: committed.last_sequence,
        position: committed.position,
        stored_events: committed.stored,
    }))
}

/// Runs `UploadImage` with retries, checking on each attempt that the user is active.
async fn upload_image(
    state: &AppState,
    user_id: &str,
    image: &EncryptedImage,
    metadata: &EventMetadata,
) -> Result<Committed, ApiError> {
    let command = ProfileCommand::UploadImage {
        image: image.clone(),
    };
    let command = &command;
    with_retries(&state.retry, move || async move {
        require_active_user(state, user_id).await?;
        state
            .profiles
            .execute(user_id, vec![command.clone()], metadata)
            .await
            .map_err(ApiError::from)
    })
    .await
}

async fn current_image(
    state: &AppState,
    user_id: &str,
) -> Result<Option<EncryptedImage>, ApiError> {
    let profile = state.profiles.load(user_id).await.map_err(ApiError::from)?;
    Ok(profile.encrypted_image)
}

fn require_envelope_content_type(headers: &HeaderMap) -> Result<(), ImageUploadError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case(ENVELOPE_CONTENT_TYPE) {
        Ok(())
    } else {
        Err(ImageUploadError::UnsupportedMediaType(
            content_type.to_owned(),
        ))
    }
}

/// Reads the body, failing with 413 as soon as it exceeds [`MAX_ENVELOPE_BYTES`].
async fn read_envelope(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ImageUploadError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_ENVELOPE_BYTES) {
        return Err(ImageUploadError::TooLarge);
    }

    let mut envelope = Vec::new();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|error| ApiError::InvalidRequest {
            message: format!("failed to read the request body: {error}"),
        })?;
        if envelope.len() + chunk.len() > MAX_ENVELOPE_BYTES {
            return Err(ImageUploadError::TooLarge);
        }
        envelope.extend_from_slice(&chunk);
    }
    Ok(envelope)
}

/// Maps a rejected header to a 422 on `body.<header field>`, or on `body` when the envelope
/// is too short.
fn envelope_error(error: EnvelopeError) -> ImageUploadError {
    let field = match error {
        EnvelopeError::TooShort { .. } => "body".to_owned(),
        _ => format!("body.{}", error.field()),
    };
    ApiError::field(field, error.to_string()).into()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// How this request stored its envelope, which decides what a failed command undoes.
#[derive(Debug, Clone, Copy)]
enum StoredEnvelope {
    /// This request inserted the row, with `created_at` = `at`.
    Inserted { at: DateTime<Utc> },
    /// The row already existed, for example because the image is the current one, and this
    /// request only set its `created_at` to now.
    Existing,
}

/// Stores the envelope in `profile_images` before the event that names it is committed.
///
/// NOTE: an image that a later upload replaced stays in `profile_images`, unserved, until
/// the user is erased.
///
/// Setting `created_at` of an existing row marks it as in use by this request, so that a
/// concurrent failed upload of the same bytes, which deletes only a row with its own
/// timestamp, leaves it in place.
async fn store_envelope(
    pool: &PgPool,
    user_id: &str,
    image: &EncryptedImage,
    envelope: &[u8],
) -> Result<StoredEnvelope, ApiError> {
    let storage_error =
        |error: sqlx::Error| anyhow::Error::new(error).context("failed to store a profile image");
    // A failed upload of the same bytes may delete the row between the two statements, so
    // the pair runs up to 3 times.
    for _ in 0..3 {
        let inserted: Option<DateTime<Utc>> = sqlx::query_scalar(
            "INSERT INTO profile_images (user_id, image_id, bytes, media_type, created_at)
             VALUES ($1, $2, $3, $4, clock_timestamp())
             ON CONFLICT (user_id, image_id) DO NOTHING
             RETURNING created_at",
        )
        .bind(user_id)
        .bind(&image.id)
        .bind(envelope)
        .bind(image.media_type.as_str())
        .fetch_optional(pool)
        .await
        .map_err(storage_error)?;
        if let Some(at) = inserted {
            return Ok(StoredEnvelope::Inserted { at });
        }

        let touched = sqlx::query(
            "UPDATE profile_images SET created_at = clock_timestamp()
             WHERE user_id = $1 AND image_id = $2",
        )
        .bind(user_id)
        .bind(&image.id)
        .execute(pool)
        .await
        .map_err(storage_error)?;
        if touched.rows_affected() == 1 {
            return Ok(StoredEnvelope::Existing);
        }
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "failed to store profile image {} of user {user_id}: failed uploads deleted it 3 times",
        image.id
    )))
}

/// Deletes the envelope that this request inserted, unless another upload of the same bytes
/// has set a newer `created_at` since.
///
/// NOTE: when this delete fails, the row stays. The query service never serves it, because no
/// event names it, but it takes space until the user is erased.
async fn discard_envelope(pool: &PgPool, user_id: &str, image_id: &str, at: DateTime<Utc>) {
    let result = sqlx::query(
        "DELETE FROM profile_images WHERE user_id = $1 AND image_id = $2 AND created_at = $3",
    )
    .bind(user_id)
    .bind(image_id)
    .bind(at)
    .execute(pool)
    .await;
    if let Err(error) = result {
        warn!(%error, user_id, image_id, "failed to delete the profile image of a failed upload");
    }
}
