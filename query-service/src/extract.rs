//! Extractors whose rejections are [`ApiError`]s, so that a bad path segment or query
//! string gets the usual JSON error body naming the field.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use uuid::Uuid;

use crate::error::ApiError;

/// The `{id}` path segment, parsed as a user id.
#[derive(Debug, Clone, Copy)]
pub struct UserId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::validation("id", rejection.body_text()))?;
        parse_user_id(&raw).map(Self)
    }
}

/// Parses a user id given as a path segment.
pub fn parse_user_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::validation(
            "id",
            format!("{raw:?} is not a UUID such as 0b5cbd6e-4c3e-4a43-9d1e-2f6b0e1f4a7c"),
        )
    })
}

/// Query string deserialized into `T`, rejected with a 422 naming the parameter when
/// serde names it, and a 400 otherwise.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        match quoted_field(&text) {
            Some(field) => ApiError::validation(field, text),
            None => ApiError::InvalidRequest(text),
        }
    }
}

/// Turns a query-string rejection into a 400, naming the parameter when serde names it.
pub fn invalid_query(rejection: QueryRejection) -> ApiError {
    match ApiError::from(rejection) {
        ApiError::Validation { field, reason } => ApiError::InvalidField { field, reason },
        other => other,
    }
}

/// Returns the first name quoted in backticks in a serde message such as
/// "duplicate field `limit`".
fn quoted_field(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let length = message[start..].find('`')?;
    let name = &message[start..start + length];
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_field_finds_name_in_serde_message() {
        let message = "Failed to deserialize query string: duplicate field `limit`";
        assert_eq!(quoted_field(message).as_deref(), Some("limit"));
    }

    #[test]
    fn quoted_field_is_none_without_backticks() {
        assert_eq!(quoted_field("invalid percent-encoding"), None);
    }

    #[test]
    fn user_id_rejects_non_uuid() {
        let error = parse_user_id("42").unwrap_err();
        assert!(matches!(error, ApiError::Validation { ref field, .. } if field == "id"));
    }
}
