//! HTTP calls to Meridian: log in, upload an envelope to the command service and download the
//! current one from the query service. Neither call sends a key or a plaintext image.
//!
//! Both calls go through a [`Session`] of the importer's library, which sends the access
//! token, renews it when it expires and waits after 429 responses as `Retry-After` requests.

use std::sync::Arc;
use std::time::Duration;

use meridian_domain::profile::envelope::ENVELOPE_CONTENT_TYPE;
use meridian_importer::session::{Credentials, RateLimitPolicy, Reply, Session, SessionError};
use reqwest::header::{CONTENT_TYPE, ETAG};
use reqwest::StatusCode;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Default base URL of the command service.
pub const DEFAULT_COMMAND_URL: &str = "http://127.0.0.1:8080";
/// Default base URL of the query service.
pub const DEFAULT_QUERY_URL: &str = "http://127.0.0.1:8081";
/// Response header of the query service that names the plaintext's media type.
pub const MEDIA_TYPE_HEADER: &str = "x-meridian-media-type";
/// Time limit of one HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A failed HTTP call.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    #[error("failed to build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("request to {url} failed: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("logging in or renewing the access token failed: {0}")]
    Session(#[source] SessionError),
    #[error("{url} responded {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url} returned an invalid response: {reason}")]
    InvalidResponse { url: String, reason: String },
}

/// Metadata of a stored image, as the command service returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageMetadata {
    pub id: String,
    pub size_bytes: u64,
    pub media_type: String,
    pub key_mode: String,
    pub uploaded_at: String,
}

/// The command service's response to an upload.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadedImage {
    pub user_id: String,
    pub image: ImageMetadata,
    /// Null when the image already was the current one, so no event was stored.
    pub sequence: Option<i64>,
    pub position: Option<i64>,
    pub stored_events: usize,
}

/// An envelope as the query service returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedEnvelope {
    pub image_id: String,
    /// Value of the `X-Meridian-Media-Type` header.
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// The error body of both Meridian APIs.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    message: String,
    field: Option<String>,
    reason: Option<String>,
    request_id: Option<String>,
}

/// Builds the HTTP client for [`login`], with a 30-second timeout per request.
pub fn http_client() -> Result<reqwest::Client, HttpFailure> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(HttpFailure::Client)
}

/// Logs in to the command service at `command_url`. Waits after 429 responses are reported
/// on stderr.
pub async fn login(command_url: &str, credentials: Credentials) -> Result<Session, HttpFailure> {
    let notify = Arc::new(|line: &str| eprintln!("{line}"));
    Session::login(
        http_client()?,
        command_url,
        credentials,
        RateLimitPolicy::default(),
        Some(notify),
    )
    .await
    .map_err(HttpFailure::Session)
}

/// Sends `envelope` to the command service at `command_url` with
/// `PUT /v1/users/{id}/profile/image`.
pub async fn upload(
    session: &Session,
    command_url: &str,
    user_id: Uuid,
    envelope: Vec<u8>,
) -> Result<UploadedImage, HttpFailure> {
    let base = command_url.trim_end_matches('/');
    let url = format!("{base}/v1/users/{user_id}/profile/image");
    let reply = session
        .execute(|| {
            session
                .http()
                .put(&url)
                .header(CONTENT_TYPE, ENVELOPE_CONTENT_TYPE)
                .body(envelope.clone())
        })
        .await
        .map_err(|error| session_failure(&url, error))?;
    let reply = require_success(&url, reply)?;
    serde_json::from_slice(&reply.body).map_err(|error| invalid_response(&url, error.to_string()))
}

/// Fetches the current envelope from the query service at `query_url` with
/// `GET /v1/users/{id}/profile/image`, and checks that its `ETag` is the SHA-256 of the
/// bytes received.
pub async fn download(
    session: &Session,
    query_url: &str,
    user_id: Uuid,
) -> Result<DownloadedEnvelope, HttpFailure> {
    let base = query_url.trim_end_matches('/');
    let url = format!("{base}/v1/users/{user_id}/profile/image");
    let reply = session
        .execute(|| session.http().get(&url))
        .await
        .map_err(|error| session_failure(&url, error))?;
    let reply = require_success(&url, reply)?;

    let header = |name| {
        reply
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(CONTENT_TYPE.as_str()).unwrap_or_default();
    if content_type != ENVELOPE_CONTENT_TYPE {
        let reason = format!("Content-Type is {content_type:?}, not {ENVELOPE_CONTENT_TYPE}");
        return Err(invalid_response(&url, reason));
    }
    let etag = header(ETAG.as_str()).unwrap_or_default();
    let media_type = header(MEDIA_TYPE_HEADER).unwrap_or_default();
    let bytes = reply.body;

    let image_id = hex_sha256(&bytes);
    if etag.trim_matches('"') != image_id {
        let reason = format!("ETag {etag} is not the SHA-256 {image_id} of the body");
        return Err(invalid_response(&url, reason));
    }
    Ok(DownloadedEnvelope {
        image_id,
        media_type,
        bytes,
    })
}

/// Returns the response when its status is 2xx, and otherwise the API's error message.
fn require_success(url: &str, reply: Reply) -> Result<Reply, HttpFailure> {
    let status = reply.status;
    if status.is_success() {
        return Ok(reply);
    }
    let message = match serde_json::from_slice::<ErrorBody>(&reply.body) {
        Ok(body) => describe_error(body),
        Err(_) => String::from_utf8_lossy(&reply.body).into_owned(),
    };
    Err(HttpFailure::Status {
        url: url.to_owned(),
        status,
        message,
    })
}

fn describe_error(body: ErrorBody) -> String {
    let mut message = body.message;
    if let (Some(field), Some(reason)) = (body.field, body.reason) {
        message.push_str(&format!(" ({field}: {reason})"));
    }
    if let Some(request_id) = body.request_id.filter(|id| !id.is_empty()) {
        message.push_str(&format!("; request id {request_id}"));
    }
    message
}

fn session_failure(url: &str, error: SessionError) -> HttpFailure {
    match error {
        SessionError::Request(source) => HttpFailure::Request {
            url: url.to_owned(),
            source,
        },
        other => HttpFailure::Session(other),
    }
}

fn invalid_response(url: &str, reason: String) -> HttpFailure {
    HttpFailure::InvalidResponse {
        url: url.to_owned(),
        reason,
    }
}

/// Returns the lower-case hex SHA-256 of `bytes`, the image id the server assigns.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
