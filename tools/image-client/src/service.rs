//! HTTP calls to Meridian: upload an envelope to the command service and download the
//! current one from the query service. Neither call sends a key or a plaintext image.

use std::time::Duration;

use meridian_domain::profile::envelope::ENVELOPE_CONTENT_TYPE;
use reqwest::header::{CONTENT_TYPE, ETAG};
use reqwest::{Response, StatusCode};
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

/// Builds the HTTP client for [`upload`] and [`download`], with a 30-second timeout per
/// request.
pub fn http_client() -> Result<reqwest::Client, HttpFailure> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(HttpFailure::Client)
}

/// Sends `envelope` to the command service at `command_url` with
/// `PUT /v1/users/{id}/profile/image`.
pub async fn upload(
    http: &reqwest::Client,
    command_url: &str,
    user_id: Uuid,
    envelope: Vec<u8>,
) -> Result<UploadedImage, HttpFailure> {
    let base = command_url.trim_end_matches('/');
    let url = format!("{base}/v1/users/{user_id}/profile/image");
    let response = http
        .put(&url)
        .header(CONTENT_TYPE, ENVELOPE_CONTENT_TYPE)
        .body(envelope)
        .send()
        .await
        .map_err(|source| request_failure(&url, source))?;
    let response = require_success(&url, response).await?;
    response
        .json()
        .await
        .map_err(|error| invalid_response(&url, error.to_string()))
}

/// Fetches the current envelope from the query service at `query_url` with
/// `GET /v1/users/{id}/profile/image`, and checks that its `ETag` is the SHA-256 of the
/// bytes received.
pub async fn download(
    http: &reqwest::Client,
    query_url: &str,
    user_id: Uuid,
) -> Result<DownloadedEnvelope, HttpFailure> {
    let base = query_url.trim_end_matches('/');
    let url = format!("{base}/v1/users/{user_id}/profile/image");
    let response = http
        .get(&url)
        .send()
        .await
        .map_err(|source| request_failure(&url, source))?;
    let response = require_success(&url, response).await?;

    let header = |name| {
        response
            .headers()
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
    let bytes = response
        .bytes()
        .await
        .map_err(|source| request_failure(&url, source))?
        .to_vec();

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
async fn require_success(url: &str, response: Response) -> Result<Response, HttpFailure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let message = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => describe_error(body),
        Err(_) => text,
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

fn request_failure(url: &str, source: reqwest::Error) -> HttpFailure {
    HttpFailure::Request {
        url: url.to_owned(),
        source,
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
