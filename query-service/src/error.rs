//! The error every handler returns, its JSON body, and the middleware that completes
//! each error response with the request id.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_auth::AuthError;
use serde::Serialize;
use utoipa::ToSchema;

/// Body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code: `invalid_request`, `validation_failed`, `not_found`,
    /// `not_yet_consistent`, `internal`, or one of the authentication codes
    /// `unauthenticated`, `invalid_token`, `token_expired`, `forbidden` and `rate_limited`.
    #[schema(example = "validation_failed")]
    pub error: String,
    /// Human-readable sentence.
    pub message: String,
    /// Name of the rejected path segment, query parameter or header, for
    /// `validation_failed`, for an `invalid_request` caused by one field, and for a
    /// `forbidden` caused by one field, such as the `id` of another user.
    pub field: Option<String>,
    /// Reason the field was rejected, whenever `field` is set.
    pub reason: Option<String>,
    /// Value of the `x-request-id` response header, to quote when reporting a problem.
    pub request_id: String,
    /// Position the request waited for, for `not_yet_consistent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_position: Option<i64>,
    /// How far the read models had come when the wait ended, for `not_yet_consistent`
    /// when an event has that position.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ReadProgress>,
}

/// How far the read-models projection has processed the aggregate of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReadProgress {
    /// Aggregate type of the event, such as `LocationTrack`.
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Sequence of the event within its aggregate.
    pub sequence: i64,
    /// Last sequence of that aggregate the projection has processed, or null when it has
    /// processed none.
    pub processed_sequence: Option<i64>,
}

/// Failure of a request, mapped to one HTTP status each.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be read at all.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400: one query parameter or header is malformed or contradicts another.
    #[error("{field}: {reason}")]
    InvalidField { field: String, reason: String },
    /// 422: one field of the request is invalid.
    #[error("{field}: {reason}")]
    Validation { field: String, reason: String },
    /// 404: the requested resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 503 with `Retry-After: 1`: the read models did not reach `min_position` within the
    /// wait bound.
    #[error("read models have not reached position {min_position}")]
    NotYetConsistent {
        min_position: i64,
        /// Maximum wait in milliseconds, quoted in the message.
        max_wait_ms: u128,
        progress: Option<ReadProgress>,
    },
    /// 401, 403 or 429: the caller is not authenticated, may not read this, or sent too
    /// many requests. The `From` conversion turns [`AuthError::Internal`] into
    /// [`ApiError::Internal`] instead, so that its cause is logged.
    #[error(transparent)]
    Auth(AuthError),
    /// 503: a dependency such as PostgreSQL does not respond. The cause is logged, not
    /// returned.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 500: any other failure. The cause is logged, not returned.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Internal(cause) => Self::Internal(cause),
            other => Self::Auth(other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(anyhow::Error::new(error).context("database query failed"))
    }
}

/// Cause of a 500 or 503 response, carried to [`complete_error_response`] so that it is
/// logged once, together with the request id.
#[derive(Debug, Clone)]
struct ErrorCause(String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, field, reason) = match &self {
            Self::InvalidRequest(message) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                message.clone(),
                None,
                None,
            ),
            Self::InvalidField { field, reason } => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{field} is invalid: {reason}"),
                Some(field.clone()),
                Some(reason.clone()),
            ),
            Self::Validation { field, reason } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                format!("{field} is invalid: {reason}"),
                Some(field.clone()),
                Some(reason.clone()),
            ),
            Self::NotFound(message) => (
                StatusCode::NOT_FOUND,
                "not_found",
                message.clone(),
                None,
                None,
            ),
            Self::NotYetConsistent {
                min_position,
                max_wait_ms,
                ..
            } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_yet_consistent",
                format!(
                    "the read models did not reach position {min_position} within \
                     {max_wait_ms} ms; retry later"
                ),
                None,
                None,
            ),
            Self::Auth(error) => {
                let field = match error {
                    AuthError::Forbidden { field, .. } => field.clone(),
                    _ => None,
                };
                let reason = field.as_ref().map(|_| error.to_string());
                (
                    error.status(),
                    error.code(),
                    error.to_string(),
                    field,
                    reason,
                )
            }
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "internal",
                "the service is temporarily unavailable; retry later".to_owned(),
                None,
                None,
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "an internal error occurred; quote the request id when reporting it".to_owned(),
                None,
                None,
            ),
        };
        let mut body = ErrorBody {
            error: code.to_owned(),
            message,
            field,
            reason,
            request_id: String::new(),
            min_position: None,
            progress: None,
        };
        if let Self::NotYetConsistent {
            min_position,
            progress,
            ..
        } = &self
        {
            body.min_position = Some(*min_position);
            body.progress = progress.clone();
        }
        let mut response = (status, Json(body.clone())).into_response();
        response.extensions_mut().insert(body);
        if matches!(self, Self::NotYetConsistent { .. }) {
            // The wait bound is a few seconds at most, so one second is a fair first retry.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::Auth(error) = &self {
            add_auth_headers(response.headers_mut(), error);
        }
        if let Self::Unavailable(cause) | Self::Internal(cause) = self {
            response
                .extensions_mut()
                .insert(ErrorCause(format!("{cause:#}")));
        }
        response
    }
}

/// Adds `WWW-Authenticate` to a 401 and `Retry-After` to a 429.
fn add_auth_headers(headers: &mut HeaderMap, error: &AuthError) {
    if let Some(challenge) = error.www_authenticate() {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    if let Some(seconds) = error.retry_after_secs() {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
}

/// Middleware that writes the request id into every error body, logs the cause of server
/// errors once, and gives error responses produced outside the handlers (unknown route,
/// wrong method, timeout) the same JSON shape.
pub async fn complete_error_response(request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();

    let mut response = next.run(request).await;
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }

    if let Some(ErrorCause(cause)) = response.extensions_mut().remove::<ErrorCause>() {
        tracing::error!(%request_id, %method, %path, status = status.as_u16(), error = %cause, "request failed");
    }
    let mut body = match response.extensions_mut().remove::<ErrorBody>() {
        Some(body) => body,
        None => body_for_status(status),
    };
    body.request_id = request_id;

    let mut completed = (status, Json(body)).into_response();
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            completed.headers_mut().insert(name.clone(), value.clone());
        }
    }
    completed
}

/// Error body for a response that did not come from an [`ApiError`].
fn body_for_status(status: StatusCode) -> ErrorBody {
    let (code, message) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no route matches this path".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "invalid_request",
            "this method is not allowed on this path".to_owned(),
        ),
        StatusCode::SERVICE_UNAVAILABLE => {
            ("internal", "the request timed out; retry later".to_owned())
        }
        status if status.is_server_error() => (
            "internal",
            "an internal error occurred; quote the request id when reporting it".to_owned(),
        ),
        status => (
            "invalid_request",
            status
                .canonical_reason()
                .unwrap_or("the request is invalid")
                .to_owned(),
        ),
    };
    ErrorBody {
        error: code.to_owned(),
        message,
        field: None,
        reason: None,
        request_id: String::new(),
        min_position: None,
        progress: None,
    }
}
