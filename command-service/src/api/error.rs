//! The one error type of the HTTP API and its JSON body.

use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_auth::AuthError;
use meridian_domain::location::LocationError;
use meridian_domain::profile::ProfileError;
use meridian_domain::user::UserError;
use meridian_domain::FieldError;
use serde::{Deserialize, Serialize};
use tracing::error;
use utoipa::ToSchema;

use crate::commands::{CommandError, Retryable};

tokio::task_local! {
    /// The `x-request-id` of the request being handled, for error bodies.
    static REQUEST_ID: String;
}

/// Runs `future` with `request_id` available to [`current_request_id`].
pub async fn with_request_id<F: std::future::Future>(request_id: String, future: F) -> F::Output {
    REQUEST_ID.scope(request_id, future).await
}

/// Returns the request id of the request being handled, or an empty string outside one.
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// One of `invalid_request`, `validation_failed`, `not_found`, `method_not_allowed`,
    /// `conflict`, `payload_too_large`, `unauthenticated`, `invalid_token`, `token_expired`,
    /// `invalid_credentials`, `invalid_refresh_token`, `forbidden`, `rate_limited`,
    /// `unavailable` and `internal`.
    #[schema(example = "validation_failed")]
    pub error: String,
    /// A sentence for people.
    pub message: String,
    /// The rejected field or query parameter, such as `email`, `reports[3].latitude` or `limit`.
    pub field: Option<String>,
    /// The reason the field was rejected.
    pub reason: Option<String>,
    /// The `x-request-id` of the request.
    pub request_id: String,
}

/// Marks a response whose failure may pass on a retry, so the idempotency layer does not
/// store it under the request's key.
#[derive(Debug, Clone, Copy)]
pub struct TransientFailure;

/// Every way a request can fail, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or the content type is not JSON.
    #[error("{message}")]
    InvalidRequest { message: String },
    /// 400: one query parameter is invalid, repeated or unknown.
    #[error("invalid query parameter {}: {}", .0.field, .0.reason)]
    InvalidParameter(FieldError),
    /// 413: the body exceeds the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 422: one field is invalid.
    #[error("invalid {}: {}", .0.field, .0.reason)]
    Validation(FieldError),
    /// 404
    #[error("{message}")]
    NotFound { message: String },
    /// 405
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 410: the user was erased; their data is gone for good.
    #[error("{message}")]
    Gone { message: String },
    /// 409: the request clashes with stored state, such as a taken email address.
    #[error("{message}")]
    Conflict {
        message: String,
        field: Option<String>,
        reason: Option<String>,
    },
    /// 409 after retries: other commands kept changing the same aggregate. Retried by
    /// [`crate::commands::with_retries`] until the attempts run out.
    #[error("{0}")]
    ConcurrencyConflict(String),
    /// 401, 403 or 429: the caller is unknown, may not do this, or sends too much.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// 503: PostgreSQL does not respond.
    #[error("service unavailable")]
    Unavailable(anyhow::Error),
    /// 500: anything else; the cause is logged, never sent.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Validation(FieldError::new(field, reason))
    }

    pub fn parameter(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidParameter(FieldError::new(name, reason))
    }

    pub fn user_not_found(user_id: &str) -> Self {
        Self::NotFound {
            message: format!("user {user_id} not found"),
        }
    }

    pub fn user_erased(user_id: &str) -> Self {
        Self::Gone {
            message: format!(
                "user {user_id} was erased; their data can no longer be read or changed"
            ),
        }
    }

    pub fn user_deactivated() -> Self {
        Self::Conflict {
            message: "user is deactivated".to_owned(),
            field: None,
            reason: Some("user is deactivated".to_owned()),
        }
    }

    pub fn email_taken() -> Self {
        Self::Conflict {
            message: "email is already in use by another user".to_owned(),
            field: Some("email".to_owned()),
            reason: Some("is already in use by another user".to_owned()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Gone { .. } => StatusCode::GONE,
            Self::Conflict { .. } | Self::ConcurrencyConflict(_) => StatusCode::CONFLICT,
            Self::Auth(error) => error.status(),
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } | Self::InvalidParameter(_) => "invalid_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Validation(_) => "validation_failed",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Gone { .. } => "gone",
            Self::Conflict { .. } | Self::ConcurrencyConflict(_) => "conflict",
            Self::Auth(error) => error.code(),
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn body(&self) -> ErrorBody {
        let (field, reason) = match self {
            Self::Validation(error) | Self::InvalidParameter(error) => {
                (Some(error.field.clone()), Some(error.reason.clone()))
            }
            Self::Conflict { field, reason, .. } => (field.clone(), reason.clone()),
            Self::Auth(
                error @ AuthError::Forbidden {
                    field: Some(field), ..
                },
            ) => (Some(field.clone()), Some(error.to_string())),
            _ => (None, None),
        };
        let message = match self {
            Self::Internal(_) | Self::Auth(AuthError::Internal(_)) => {
                "internal error; quote the request id when reporting it".to_owned()
            }
            Self::Unavailable(_) => "the database does not respond; retry later".to_owned(),
            Self::ConcurrencyConflict(_) => {
                "other requests kept changing the same data; retry the request".to_owned()
            }
            other => other.to_string(),
        };
        ErrorBody {
            error: self.code().to_owned(),
            message,
            field,
            reason,
            request_id: current_request_id(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => {
                error!(error = format!("{cause:#}"), "request failed");
            }
            Self::Unavailable(cause) => {
                error!(error = format!("{cause:#}"), "database unavailable");
            }
            Self::Auth(AuthError::Internal(cause)) => {
                error!(error = format!("{cause:#}"), "authentication failed");
            }
            _ => {}
        }
        let transient = matches!(
            self,
            Self::ConcurrencyConflict(_)
                | Self::Unavailable(_)
                | Self::Internal(_)
                | Self::Auth(AuthError::Internal(_) | AuthError::RateLimited { .. })
        );
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Self::Auth(error) = &self {
            if let Some(challenge) = error.www_authenticate() {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            if let Some(seconds) = error.retry_after_secs() {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
        }
        if transient {
            response.extensions_mut().insert(TransientFailure);
        }
        response
    }
}

impl Retryable for ApiError {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::ConcurrencyConflict(_))
    }
}

impl From<FieldError> for ApiError {
    fn from(error: FieldError) -> Self {
        Self::Validation(error)
    }
}

impl<E> From<CommandError<E>> for ApiError
where
    E: std::error::Error + Into<ApiError>,
{
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Rejected(error) => error.into(),
            conflict @ CommandError::Conflict { .. } => {
                Self::ConcurrencyConflict(conflict.to_string())
            }
            CommandError::Erased { user_id } => Self::user_erased(&user_id),
            CommandError::Unexpected(error) => Self::Internal(error),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(error: UserError) -> Self {
        match error {
            UserError::Invalid(error) => Self::Validation(error),
            UserError::AlreadyRegistered => Self::Conflict {
                message: "user is already registered".to_owned(),
                field: None,
                reason: None,
            },
            UserError::NotFound => Self::NotFound {
                message: "user not found".to_owned(),
            },
            UserError::Deactivated => Self::user_deactivated(),
            UserError::Erased => Self::Gone {
                message: "user was erased; their data can no longer be read or changed".to_owned(),
            },
        }
    }
}

impl From<ProfileError> for ApiError {
    fn from(error: ProfileError) -> Self {
        match error {
            ProfileError::Invalid(error) => Self::Validation(error),
        }
    }
}

impl From<LocationError> for ApiError {
    fn from(error: LocationError) -> Self {
        match error {
            LocationError::Invalid(error) => Self::Validation(error),
            LocationError::HistoryUnavailable(cause) => Self::Internal(anyhow::anyhow!(cause)),
        }
    }
}
