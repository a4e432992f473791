//! Request extractors whose rejections use the API's error body.

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{CONTENT_TYPE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use uuid::Uuid;

use super::error::ApiError;
use crate::commands::Actor;

/// Maximum size of a request body: a full batch of location reports fits with room to spare.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Maximum length of a stored `User-Agent`, in characters.
pub const MAX_USER_AGENT_CHARS: usize = 256;

/// A JSON request body. Malformed JSON and a wrong content type are 400 `invalid_request`;
/// a missing, unknown or mistyped field is 422 `validation_failed` naming that field.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        require_json_content_type(request.headers())?;
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge {
                        limit: MAX_BODY_BYTES,
                    }
                } else {
                    ApiError::InvalidRequest {
                        message: format!("failed to read the request body: {rejection}"),
                    }
                }
            })?;
        parse_json(&bytes).map(JsonBody)
    }
}

fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::InvalidRequest {
            message: format!(
                "Content-Type must be application/json, got {:?}",
                content_type
            ),
        })
    }
}

/// Parses a JSON document into `T`, naming the offending field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(json_error)?;
    deserializer
        .end()
        .map_err(|error| ApiError::InvalidRequest {
            message: format!("request body is not valid JSON: {error}"),
        })?;
    Ok(value)
}

/// Converts an already parsed JSON value into `T`, naming the offending field on failure.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(json_error)
}

fn json_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    match inner.classify() {
        Category::Data => ApiError::Validation(field_error(&path, &inner)),
        Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidRequest {
            message: format!("request body is not valid JSON: {inner}"),
        },
    }
}

/// Builds the field error for a serde data error at `path` (`.` is the document root).
fn field_error(path: &str, error: &serde_json::Error) -> meridian_domain::FieldError {
    let message = message_without_position(error);
    let join = |name: &str| {
        if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(name) = quoted_name(&message, "missing field `") {
        return meridian_domain::FieldError::new(join(name), "is required");
    }
    if let Some(name) = quoted_name(&message, "unknown field `") {
        let expected = message
            .split_once("`, ")
            .map_or(String::new(), |(_, rest)| format!("; {rest}"));
        // serde_path_to_error already ends the path with the unknown key.
        let field = if path == name || path.ends_with(&format!(".{name}")) {
            path.to_owned()
        } else {
            join(name)
        };
        return meridian_domain::FieldError::new(field, format!("is not a known field{expected}"));
    }
    let field = if path == "." { "body" } else { path };
    meridian_domain::FieldError::new(field, message)
}

/// Returns the name between `prefix` and the next backtick, if `message` starts with `prefix`.
fn quoted_name<'a>(message: &'a str, prefix: &str) -> Option<&'a str> {
    message
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name)
}

/// serde_json appends " at line L column C" to its messages; the field name says more.
fn message_without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) => stripped.to_owned(),
        None => message,
    }
}

/// The `{id}` path segment: a user id, which is a UUID.
#[derive(Debug, Clone)]
pub struct UserId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::InvalidRequest {
                message: format!("invalid path: {rejection}"),
            })?;
        let id = Uuid::parse_str(&raw)
            .map_err(|_| ApiError::field("id", format!("{raw:?} is not a UUID")))?;
        // The hyphenated lower-case form is the aggregate id, whatever form the client sent.
        Ok(Self(id.to_string()))
    }
}

/// The caller and network origin of a request, for the metadata of the events it stores.
#[derive(Debug, Clone, Default)]
pub struct RequestOrigin {
    /// The [`Actor`] that the authentication layer put in the request extensions. None for
    /// an anonymous request.
    pub actor: Option<Actor>,
    /// The peer IP address of the connection. It is None when the router runs without
    /// `ConnectInfo`, as under `Router::oneshot` in tests. `X-Forwarded-For` is ignored,
    /// because any client can set it.
    pub client_addr: Option<String>,
    /// The `User-Agent` header, cut to [`MAX_USER_AGENT_CHARS`] characters.
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestOrigin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let client_addr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            // An IPv4 client of a dual-stack listener shows up as ::ffff:a.b.c.d.
            .map(|ConnectInfo(address)| address.ip().to_canonical().to_string());
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .map(|value| truncate_chars(&String::from_utf8_lossy(value.as_bytes())));
        Ok(Self {
            actor: parts.extensions.get::<Actor>().cloned(),
            client_addr,
            user_agent,
        })
    }
}

/// Returns the first [`MAX_USER_AGENT_CHARS`] characters of `text`.
fn truncate_chars(text: &str) -> String {
    match text.char_indices().nth(MAX_USER_AGENT_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Report {
        latitude: f64,
        longitude: f64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Batch {
        reports: Vec<Report>,
    }

    fn field_of(body: &str) -> (String, String) {
        match parse_json::<Batch>(body.as_bytes()) {
            Err(ApiError::Validation(error)) => (error.field, error.reason),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn wrong_type_names_nested_field() {
        let (field, _) = field_of(
            r#"{"reports":[{"latitude":1,"longitude":2},{"latitude":"x","longitude":2}]}"#,
        );
        assert_eq!(field, "reports[1].latitude");
    }

    #[test]
    fn missing_nested_field_is_named() {
        let (field, reason) = field_of(r#"{"reports":[{"latitude":1}]}"#);
        assert_eq!(field, "reports[0].longitude");
        assert_eq!(reason, "is required");
    }

    #[test]
    fn missing_top_level_field_is_named() {
        let (field, _) = field_of("{}");
        assert_eq!(field, "reports");
    }

    #[test]
    fn unknown_field_is_named() {
        let (field, reason) = field_of(r#"{"reports":[],"extra":1}"#);
        assert_eq!(field, "extra");
        assert!(reason.starts_with("is not a known field"), "{reason}");
    }

    #[test]
    fn unknown_nested_field_is_named() {
        let (field, _) = field_of(r#"{"reports":[{"latitude":1,"longitude":2,"speed":3}]}"#);
        assert_eq!(field, "reports[0].speed");
    }

    #[test]
    fn reason_has_no_line_and_column() {
        let (_, reason) = field_of(r#"{"reports":[{"latitude":"x","longitude":2}]}"#);
        assert!(!reason.contains("line"), "{reason}");
    }

    #[test]
    fn malformed_json_is_invalid_request() {
        let result = parse_json::<Batch>(b"{\"reports\": [");
        assert!(matches!(result, Err(ApiError::InvalidRequest { .. })));
    }

    #[test]
    fn trailing_garbage_is_invalid_request() {
        let result = parse_json::<Batch>(b"{\"reports\": []} x");
        assert!(matches!(result, Err(ApiError::InvalidRequest { .. })));
    }

    #[test]
    fn json_suffix_content_type_is_accepted() {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(require_json_content_type(&headers).is_ok());
    }

    #[test]
    fn long_user_agent_is_cut_to_max_chars() {
        let agent = "é".repeat(MAX_USER_AGENT_CHARS + 10);
        let cut = truncate_chars(&agent);
        assert_eq!(cut.chars().count(), MAX_USER_AGENT_CHARS);
    }

    #[test]
    fn short_user_agent_is_kept_whole() {
        assert_eq!(truncate_chars("curl/8.5.0"), "curl/8.5.0");
    }

    #[test]
    fn text_content_type_is_rejected() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(require_json_content_type(&headers).is_err());
    }
}
