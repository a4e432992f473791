//! The `Idempotency-Key` header: a repeated request returns the first result and stores
//! nothing.
//!
//! A key is scoped by method, path and caller. The first request inserts a row into
//! `idempotency_keys`, runs, and stores its status and body when the status is 2xx. Any other
//! status deletes the row, so a corrected or retried request runs again. While it runs it holds a
//! transaction-scoped advisory lock on the key. A repeat that finds the row in progress tries
//! that lock: when it is held, the first request is still running and the repeat gets 409.
//! When it is free, the first request's process or connection ended before storing the result.
//! The repeat then rebuilds the response from the events whose metadata carry the key, or runs
//! the command when there are none.

use axum::body::{to_bytes, Body};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use tracing::{error, info, warn};

use super::auth::caller_of;
use super::error::{ApiError, TransientFailure};
use super::extract::MAX_BODY_BYTES;
use super::locations::{count_reports, RecordLocationsResponse};
use super::users::{RegisterUserResponse, StoredEventsResponse};
use super::AppState;
use crate::commands::{metadata_keys, Committed};

/// Request header that makes a command idempotent.
pub const IDEMPOTENCY_KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// Response header set when a response reports the result of an earlier attempt.
pub const IDEMPOTENT_REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Maximum length of an `Idempotency-Key`, in characters.
pub const MAX_KEY_CHARS: usize = 200;

/// The key of the request being handled, scoped by method and path; handlers write it into
/// event metadata.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(pub String);

/// The commands that accept an idempotency key, named by method and route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommandKind {
    RegisterUser,
    UpdateUser,
    EraseUser,
    PutProfile,
    RecordLocations,
}

impl CommandKind {
    fn of(method: &Method, route: &str) -> Option<Self> {
        match (method.as_str(), route) {
            ("POST", "/v1/users") => Some(Self::RegisterUser),
            ("PATCH", "/v1/users/{id}") => Some(Self::UpdateUser),
            ("DELETE", "/v1/users/{id}") => Some(Self::EraseUser),
            ("PUT", "/v1/users/{id}/profile") => Some(Self::PutProfile),
            ("POST", "/v1/users/{id}/locations") => Some(Self::RecordLocations),
            _ => None,
        }
    }

    fn aggregate_type(self) -> &'static str {
        match self {
            Self::RegisterUser | Self::UpdateUser | Self::EraseUser => "User",
            Self::PutProfile => "Profile",
            Self::RecordLocations => "LocationTrack",
        }
    }
}

/// A row of `idempotency_keys`.
#[derive(Debug, sqlx::FromRow)]
struct StoredKey {
    request_hash: String,
    status_code: Option<i32>,
    response: Option<Value>,
}

/// Middleware for the command routes; requests without the header pass straight through.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(raw_key) = request.headers().get(&IDEMPOTENCY_KEY_HEADER).cloned() else {
        return next.run(request).await;
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_default();
    let Some(kind) = CommandKind::of(request.method(), &route) else {
        return next.run(request).await;
    };
    match run_once(&state.pool, kind, &raw_key, request, next).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn run_once(
    pool: &PgPool,
    kind: CommandKind,
    raw_key: &HeaderValue,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let key = parse_key(raw_key)?;
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        })?;
    // Scoped by caller too, so a stored response is never replayed to someone else.
    let mut scoped_key = format!("{} {} {key}", parts.method, parts.uri.path());
    if let Some(caller) = caller_of(&parts.extensions) {
        scoped_key.push_str(" @");
        scoped_key.push_str(&caller.user_id);
    }
    let request_hash = hex_sha256(&body);

    // The lock lives as long as this transaction: until it commits, rolls back or its
    // connection closes, whichever comes first.
    let mut lock = pool.begin().await.map_err(database_error)?;
    let locked = try_lock(&mut lock, &scoped_key).await?;
    let stored = fetch_key(pool, &scoped_key).await?;
    if stored
        .as_ref()
        .is_some_and(|row| row.request_hash != request_hash)
    {
        return Err(ApiError::field(
            "Idempotency-Key",
            "was already used with a different request body",
        ));
    }
    if let Some(StoredKey {
        status_code: Some(status),
        response,
        ..
    }) = stored
    {
        return Ok(replay(status, response));
    }
    if !locked {
        return Err(in_progress());
    }

    let response = match stored {
        Some(_) => {
            info!(idempotency_key = %scoped_key, "resuming a request whose first attempt ended unfinished");
            match recover(pool, kind, &scoped_key, &body).await? {
                Some(response) => response,
                None => run_handler(next, parts, body, &scoped_key).await,
            }
        }
        None => {
            if !insert_key(pool, &scoped_key, &request_hash).await? {
                return Err(in_progress());
            }
            run_handler(next, parts, body, &scoped_key).await
        }
    };
    let response = finish(pool, &scoped_key, response).await;
    release(lock).await;
    Ok(response)
}

/// Checks the header: 1 to [`MAX_KEY_CHARS`] visible ASCII characters.
fn parse_key(raw: &HeaderValue) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let visible = bytes.iter().all(|byte| byte.is_ascii_graphic());
    if bytes.is_empty() || bytes.len() > MAX_KEY_CHARS || !visible {
        return Err(ApiError::field(
            "Idempotency-Key",
            format!("must be 1 to {MAX_KEY_CHARS} visible ASCII characters"),
        ));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn in_progress() -> ApiError {
    ApiError::Conflict {
        message: "a request with this Idempotency-Key is still in progress; retry later".to_owned(),
        field: Some("Idempotency-Key".to_owned()),
        reason: Some("is in use by a request that has not finished".to_owned()),
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Returns the advisory lock id of a scoped key: the first 8 bytes of its SHA-256.
fn lock_id(scoped_key: &str) -> i64 {
    let digest = Sha256::digest(scoped_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

fn database_error(error: sqlx::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::new(error).context("idempotency key storage failed"))
}

async fn try_lock(
    lock: &mut Transaction<'_, Postgres>,
    scoped_key: &str,
) -> Result<bool, ApiError> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(lock_id(scoped_key))
        .fetch_one(&mut **lock)
        .await
        .map_err(database_error)
}

async fn release(lock: Transaction<'_, Postgres>) {
    if let Err(error) = lock.rollback().await {
        warn!(%error, "failed to release an idempotency key lock; it ends with its connection");
    }
}

async fn fetch_key(pool: &PgPool, scoped_key: &str) -> Result<Option<StoredKey>, ApiError> {
    sqlx::query_as(
        "SELECT request_hash, status_code, response FROM idempotency_keys WHERE key = $1",
    )
    .bind(scoped_key)
    .fetch_optional(pool)
    .await
    .map_err(database_error)
}

/// Inserts the in-progress row; returns false when a row for the key already exists.
async fn insert_key(pool: &PgPool, scoped_key: &str, request_hash: &str) -> Result<bool, ApiError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (key, request_hash) VALUES ($1, $2) \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(scoped_key)
    .bind(request_hash)
    .execute(pool)
    .await
    .map_err(database_error)?;
    Ok(inserted.rows_affected() == 1)
}

async fn run_handler(
    next: Next,
    mut parts: axum::http::request::Parts,
    body: axum::body::Bytes,
    scoped_key: &str,
) -> Response {
    parts
        .extensions
        .insert(IdempotencyKey(scoped_key.to_owned()));
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// Stores a 2xx result under the key, or deletes the key after any other status or a
/// [`TransientFailure`] such as a concurrency conflict that ran out of retries. A rejected
/// request changed nothing, so deleting its key lets the client send a corrected request
/// with the same key. Returns the response unchanged. A failure to store is logged, and the key stays in progress until a
/// repeat resolves it from the stored events.
async fn finish(pool: &PgPool, scoped_key: &str, response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            error!(%error, "failed to buffer a response body");
            return ApiError::Internal(anyhow::anyhow!("failed to buffer a response body"))
                .into_response();
        }
    };
    let transient = parts.extensions.get::<TransientFailure>().is_some();
    let result = if !status.is_success() || transient {
        sqlx::query("DELETE FROM idempotency_keys WHERE key = $1")
            .bind(scoped_key)
            .execute(pool)
            .await
    } else {
        let stored: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        sqlx::query(
            "UPDATE idempotency_keys SET status_code = $2, response = $3, completed_at = now() \
             WHERE key = $1",
        )
        .bind(scoped_key)
        .bind(i32::from(status.as_u16()))
        .bind(stored)
        .execute(pool)
        .await
    };
    if let Err(error) = result {
        error!(%error, idempotency_key = %scoped_key, "failed to store the result of an idempotent request");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(status: i32, body: Option<Value>) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(body.unwrap_or(Value::Null))).into_response();
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Rebuilds the response of an unfinished first attempt from the events it stored, or
/// returns `None` when it stored none.
///
/// NOTE: this scans the events of one aggregate type because `events` has no index on
/// metadata. It runs only after a process or connection ended during an idempotent request.
async fn recover(
    pool: &PgPool,
    kind: CommandKind,
    scoped_key: &str,
    body: &[u8],
) -> Result<Option<Response>, ApiError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_id, sequence, position FROM events \
         WHERE aggregate_type = $1 AND metadata ->> $2 = $3 ORDER BY sequence",
    )
    .bind(kind.aggregate_type())
    .bind(metadata_keys::IDEMPOTENCY_KEY)
    .bind(scoped_key)
    .fetch_all(pool)
    .await
    .map_err(database_error)?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(None);
    };
    let committed = Committed {
        aggregate_id: first.0.clone(),
        stored: rows.len(),
        first_sequence: Some(first.1),
        last_sequence: Some(last.1),
        position: rows.iter().map(|row| row.2).max(),
    };
    let response = match kind {
        CommandKind::RegisterUser => {
            let body = RegisterUserResponse::from_committed(committed)?;
            (StatusCode::CREATED, Json(body)).into_response()
        }
        CommandKind::UpdateUser | CommandKind::EraseUser | CommandKind::PutProfile => {
            Json(StoredEventsResponse::from(committed)).into_response()
        }
        CommandKind::RecordLocations => {
            let accepted = count_reports(body).unwrap_or(committed.stored);
            Json(RecordLocationsResponse::new(committed, accepted)).into_response()
        }
    };
    let mut response = response;
    // The events come from the first attempt, so this request stored nothing.
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED_HEADER, HeaderValue::from_static("true"));
    Ok(Some(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_of_visible_ascii_is_accepted() {
        let key = parse_key(&HeaderValue::from_static("import-user-366952890")).unwrap();
        assert_eq!(key, "import-user-366952890");
    }

    #[test]
    fn key_with_space_is_rejected() {
        assert!(parse_key(&HeaderValue::from_static("two words")).is_err());
    }

    #[test]
    fn empty_key_is_rejected() {
        assert!(parse_key(&HeaderValue::from_static("")).is_err());
    }

    #[test]
    fn key_of_201_characters_is_rejected() {
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        assert!(parse_key(&HeaderValue::from_str(&long).unwrap()).is_err());
    }

    #[test]
    fn key_of_200_characters_is_accepted() {
        let long = "k".repeat(MAX_KEY_CHARS);
        assert!(parse_key(&HeaderValue::from_str(&long).unwrap()).is_ok());
    }

    #[test]
    fn lock_ids_differ_by_scope() {
        assert_ne!(lock_id("POST /v1/users a"), lock_id("PATCH /v1/users/x a"));
    }

    #[test]
    fn routes_map_to_commands() {
        assert_eq!(
            CommandKind::of(&Method::POST, "/v1/users/{id}/locations"),
            Some(CommandKind::RecordLocations)
        );
        assert_eq!(CommandKind::of(&Method::GET, "/v1/users"), None);
    }
}
