//! HTTP calls to Meridian's command and query services, with bounded retries.
//!
//! Every call to a `/v1` route goes through the [`Session`], which adds the access token,
//! renews it on a 401 `token_expired`, and waits after 429 responses as `Retry-After`
//! requests. On top of that, a request is retried after a connection error or time-out,
//! and after the statuses that describe a passing condition: 408, 409 (a concurrency
//! conflict or an idempotency key still in use), 425 and 5xx except 501 and 505. The delay
//! grows exponentially; a `Retry-After` header in seconds replaces it, up to the policy's maximum
//! delay.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_domain::location::LocationReport;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::console::Console;
use crate::options::{trim_base, ImportOptions, RetryPolicy};
use crate::session::{retry_after, Session, SessionError};

/// Header that makes a command safe to repeat.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
/// Response header that marks the stored result of an earlier request with the same key.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// The JSON error body both services send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub request_id: Option<String>,
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.error, self.message)?;
        if let Some(field) = &self.field {
            write!(formatter, " (field {field}")?;
            if let Some(reason) = &self.reason {
                write!(formatter, ": {reason}")?;
            }
            write!(formatter, ")")?;
        }
        if let Some(request_id) = &self.request_id {
            write!(formatter, " [request id {request_id}]")?;
        }
        Ok(())
    }
}

/// A request that failed for good, after any retries.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {url} failed after {attempts} attempt(s): {source}")]
    Transport {
        method: Method,
        url: String,
        attempts: u32,
        source: reqwest::Error,
    },
    #[error("{method} {url} returned {status} after {attempts} attempt(s): {}", describe_body(body.as_deref(), text))]
    Status {
        method: Method,
        url: String,
        attempts: u32,
        status: StatusCode,
        body: Option<Box<ErrorBody>>,
        /// The raw body, kept when it is not the JSON error shape.
        text: String,
    },
    #[error("{method} {url} returned an unexpected body: {reason}")]
    UnexpectedBody {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("{method} {url} failed after {attempts} attempt(s), because renewing the access token failed: {source}")]
    Session {
        method: Method,
        url: String,
        attempts: u32,
        source: Box<SessionError>,
    },
}

fn describe_body(body: Option<&ErrorBody>, text: &str) -> String {
    match body {
        Some(body) => body.to_string(),
        None if text.is_empty() => "empty body".to_owned(),
        None => text.chars().take(200).collect(),
    }
}

impl ApiError {
    /// Returns the HTTP status, when the server sent one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Returns the error body, when the server sent the JSON error shape.
    pub fn body(&self) -> Option<&ErrorBody> {
        match self {
            Self::Status { body, .. } => body.as_deref(),
            _ => None,
        }
    }
}

/// Returns whether a request that failed with `status` is worth repeating. A 429 is not:
/// the session has already waited as long as its policy allows.
fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 425)
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// Outcome of a registration request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registration {
    /// The command service stored the user, now or for an earlier request with the same key.
    Registered(Uuid),
    /// Another user has the email address (409, field `email`).
    EmailTaken,
    /// The idempotency key was used before with a different body (422, field
    /// `Idempotency-Key`), as when an earlier import registered the vessel with another
    /// random password.
    KeyReused,
}

#[derive(Serialize)]
struct RegisterRequest<'a> {
    email: &'a str,
    name: &'a str,
    password: &'a str,
}

#[derive(Deserialize)]
struct RegisterResponse {
    user_id: Uuid,
}

#[derive(Serialize)]
struct LocationBatch<'a> {
    reports: &'a [LocationReport],
}

/// The command service's response to a batch of reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Recorded {
    /// Reports in the request.
    pub accepted: u64,
    /// Events stored; repeats of stored reports store nothing.
    pub stored: u64,
    /// Sequence of the first stored event, or none when nothing was stored.
    #[serde(default)]
    pub first_sequence: Option<i64>,
    /// Sequence of the last stored event, or none when nothing was stored.
    #[serde(default)]
    pub last_sequence: Option<i64>,
    /// Whether this is the stored response to an earlier request with the same idempotency
    /// key, so that `stored` counts events that request stored, not this one.
    #[serde(skip)]
    pub replayed: bool,
}

#[derive(Deserialize)]
struct UserList {
    users: Vec<UserSummary>,
}

#[derive(Deserialize)]
struct UserSummary {
    user_id: Uuid,
    email: String,
}

/// A user's latest location as the query service shows it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct LatestLocation {
    pub latitude: f64,
    pub longitude: f64,
    pub recorded_at: DateTime<Utc>,
    pub sequence: i64,
}

/// A successful response: its status and body.
struct Reply {
    status: StatusCode,
    bytes: Vec<u8>,
    /// Whether the `Idempotent-Replayed` header was `true`.
    replayed: bool,
}

/// One request to send, possibly several times.
struct Call<'a> {
    method: Method,
    url: String,
    idempotency_key: Option<&'a str>,
    body: Option<Vec<u8>>,
    query: Option<(&'a str, &'a str)>,
    /// Whether the request carries the session's access token.
    authenticated: bool,
}

impl<'a> Call<'a> {
    fn new(method: Method, url: String) -> Self {
        Self {
            method,
            url,
            idempotency_key: None,
            body: None,
            query: None,
            authenticated: true,
        }
    }

    fn anonymous(mut self) -> Self {
        self.authenticated = false;
        self
    }

    fn idempotency_key(mut self, key: &'a str) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    fn json(mut self, body: &impl Serialize) -> Self {
        // serde_json fails only on maps with non-string keys and on failing Serialize impls,
        // and the request bodies here contain neither.
        self.body = Some(serde_json::to_vec(body).unwrap_or_default());
        self
    }

    fn query(mut self, name: &'a str, value: &'a str) -> Self {
        self.query = Some((name, value));
        self
    }
}

/// A client of one Meridian: its command and query services.
#[derive(Clone)]
pub struct Meridian {
    http: reqwest::Client,
    session: Arc<Session>,
    command_url: String,
    query_url: String,
    retry: RetryPolicy,
    console: Console,
}

impl Meridian {
    /// Builds the HTTP client that the session and every call share.
    pub fn http_client(options: &ImportOptions) -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .user_agent(concat!("meridian-import/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .timeout(options.request_timeout)
            .pool_max_idle_per_host(options.concurrency)
            .build()
    }

    /// Returns a client that sends its calls to the services of `options` as `session`.
    pub fn new(
        http: reqwest::Client,
        options: &ImportOptions,
        session: Arc<Session>,
        console: Console,
    ) -> Self {
        Self {
            http,
            session,
            command_url: trim_base(&options.command_url).to_owned(),
            query_url: trim_base(&options.query_url).to_owned(),
            retry: options.retry.clone(),
            console,
        }
    }

    pub fn command_url(&self) -> &str {
        &self.command_url
    }

    pub fn query_url(&self) -> &str {
        &self.query_url
    }

    /// Checks that `GET {base}/healthz` succeeds, retrying as for any request. It needs no
    /// token, so it runs before the login.
    pub async fn check_health(
        http: &reqwest::Client,
        base: &str,
        retry: &RetryPolicy,
        console: &Console,
    ) -> Result<(), ApiError> {
        let call = Call::new(Method::GET, format!("{}/healthz", trim_base(base))).anonymous();
        send_with_retries(http, None, console, call, retry, |_, _| false)
            .await
            .map(drop)
    }

    /// Registers a user with `POST /v1/users`, sending `key` as the idempotency key.
    pub async fn register_user(
        &self,
        email: &str,
        name: &str,
        password: &str,
        key: &str,
    ) -> Result<Registration, ApiError> {
        let body = RegisterRequest {
            email,
            name,
            password,
        };
        let call = Call::new(Method::POST, format!("{}/v1/users", self.command_url))
            .idempotency_key(key)
            .json(&body);
        let email_taken = |status: StatusCode, body: Option<&ErrorBody>| {
            status == StatusCode::CONFLICT && field_is(body, "email")
        };

        match self.send(call, &self.retry, email_taken).await {
            Ok(reply) => {
                let url = format!("{}/v1/users", self.command_url);
                let response: RegisterResponse = decode(&reply, Method::POST, url)?;
                Ok(Registration::Registered(response.user_id))
            }
            Err(error) if error.status() == Some(StatusCode::CONFLICT) => {
                if field_is(error.body(), "email") {
                    Ok(Registration::EmailTaken)
                } else {
                    Err(error)
                }
            }
            Err(error) if error.status() == Some(StatusCode::UNPROCESSABLE_ENTITY) => {
                if field_is(error.body(), IDEMPOTENCY_KEY) {
                    Ok(Registration::KeyReused)
                } else {
                    Err(error)
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Looks a user up by email with `GET /v1/users?email=`. Returns none while the read
    /// model does not show the user yet.
    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<Uuid>, ApiError> {
        let url = format!("{}/v1/users", self.query_url);
        let call = Call::new(Method::GET, url.clone()).query("email", email);
        let reply = self.send(call, &self.retry, |_, _| false).await?;
        let list: UserList = decode(&reply, Method::GET, url)?;
        let found = list
            .users
            .into_iter()
            .find(|user| user.email.eq_ignore_ascii_case(email))
            .map(|user| user.user_id);
        Ok(found)
    }

    /// Sends a batch with `POST /v1/users/{id}/locations`.
    pub async fn record_locations(
        &self,
        user_id: Uuid,
        reports: &[LocationReport],
        key: &str,
    ) -> Result<Recorded, ApiError> {
        let url = format!("{}/v1/users/{user_id}/locations", self.command_url);
        let call = Call::new(Method::POST, url.clone())
            .idempotency_key(key)
            .json(&LocationBatch { reports });
        let reply = self.send(call, &self.retry, |_, _| false).await?;
        let recorded: Recorded = decode(&reply, Method::POST, url)?;
        Ok(Recorded {
            replayed: reply.replayed,
            ..recorded
        })
    }

    /// Reads `GET /v1/users/{id}/location` once, without retries; none when the user has no
    /// location yet (404).
    pub async fn latest_location(&self, user_id: Uuid) -> Result<Option<LatestLocation>, ApiError> {
        let url = format!("{}/v1/users/{user_id}/location", self.query_url);
        let once = RetryPolicy {
            max_attempts: 1,
            ..self.retry.clone()
        };
        match self
            .send(Call::new(Method::GET, url.clone()), &once, |_, _| false)
            .await
        {
            Ok(reply) => decode(&reply, Method::GET, url).map(Some),
            Err(error) if error.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Sends `call` until it succeeds, fails for good, or `policy` runs out of attempts.
    /// `is_final` marks a transient-looking status as final for this call.
    async fn send(
        &self,
        call: Call<'_>,
        policy: &RetryPolicy,
        is_final: impl Fn(StatusCode, Option<&ErrorBody>) -> bool,
    ) -> Result<Reply, ApiError> {
        send_with_retries(
            &self.http,
            Some(&self.session),
            &self.console,
            call,
            policy,
            is_final,
        )
        .await
    }
}

/// Sends `call`, through `session` when it is authenticated, until it succeeds, fails for
/// good, or `policy` runs out of attempts.
async fn send_with_retries(
    http: &reqwest::Client,
    session: Option<&Session>,
    console: &Console,
    call: Call<'_>,
    policy: &RetryPolicy,
    is_final: impl Fn(StatusCode, Option<&ErrorBody>) -> bool,
) -> Result<Reply, ApiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let last_attempt = attempt >= policy.max_attempts;

        let (error, server_delay) = match send_once(http, session, &call).await {
            Ok((status, headers, bytes)) if status.is_success() => {
                let replayed = headers
                    .get(IDEMPOTENT_REPLAYED)
                    .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"true"));
                return Ok(Reply {
                    status,
                    bytes,
                    replayed,
                });
            }
            Ok((status, headers, bytes)) => {
                let body: Option<Box<ErrorBody>> = serde_json::from_slice(&bytes).ok();
                let retryable = is_transient(status) && !is_final(status, body.as_deref());
                let error = ApiError::Status {
                    method: call.method.clone(),
                    url: call.url.clone(),
                    attempts: attempt,
                    status,
                    body,
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                };
                if !retryable || last_attempt {
                    return Err(error);
                }
                (error, retry_after(headers.get(RETRY_AFTER)))
            }
            Err(SessionError::Request(source)) => {
                let error = ApiError::Transport {
                    method: call.method.clone(),
                    url: call.url.clone(),
                    attempts: attempt,
                    source,
                };
                if last_attempt {
                    return Err(error);
                }
                (error, None)
            }
            Err(source) => {
                let retryable = source.is_transient();
                let error = ApiError::Session {
                    method: call.method.clone(),
                    url: call.url.clone(),
                    attempts: attempt,
                    source: Box::new(source),
                };
                if !retryable || last_attempt {
                    return Err(error);
                }
                (error, None)
            }
        };

        let delay = server_delay.map_or_else(
            || policy.delay(attempt),
            |delay| delay.min(policy.max_delay),
        );
        console.message(format_args!(
            "retrying in {:.1} s (attempt {} of {}): {error}",
            delay.as_secs_f64(),
            attempt + 1,
            policy.max_attempts
        ));
        tokio::time::sleep(delay).await;
    }
}

/// Sends `call` once, with the session's access token when it is authenticated.
async fn send_once(
    http: &reqwest::Client,
    session: Option<&Session>,
    call: &Call<'_>,
) -> Result<(StatusCode, HeaderMap, Vec<u8>), SessionError> {
    let build = || {
        let mut request = http.request(call.method.clone(), &call.url);
        if let Some(key) = call.idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        if let Some((name, value)) = call.query {
            request = request.query(&[(name, value)]);
        }
        if let Some(body) = &call.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        request
    };
    let reply = match session {
        Some(session) if call.authenticated => session.execute(build).await?,
        _ => {
            let response = build().send().await.map_err(SessionError::Request)?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.map_err(SessionError::Request)?;
            return Ok((status, headers, bytes.to_vec()));
        }
    };
    Ok((reply.status, reply.headers, reply.body))
}

fn field_is(body: Option<&ErrorBody>, name: &str) -> bool {
    body.and_then(|body| body.field.as_deref())
        .is_some_and(|field| field.eq_ignore_ascii_case(name))
}

fn decode<T: serde::de::DeserializeOwned>(
    reply: &Reply,
    method: Method,
    url: String,
) -> Result<T, ApiError> {
    serde_json::from_slice(&reply.bytes).map_err(|error| ApiError::UnexpectedBody {
        method,
        url,
        reason: format!("{error} in a {} response", reply.status),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_and_server_errors_are_transient() {
        for status in [408, 409, 425, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(is_transient(status), "{status}");
        }
    }

    #[test]
    fn client_errors_are_final() {
        for status in [400, 401, 403, 404, 413, 422, 429, 501, 505] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(!is_transient(status), "{status}");
        }
    }

    #[test]
    fn error_body_names_field_and_reason() {
        let body = ErrorBody {
            error: "validation_failed".into(),
            message: "a field is invalid".into(),
            field: Some("reports[3].latitude".into()),
            reason: Some("95 is outside [-90, 90]".into()),
            request_id: Some("r-1".into()),
        };
        assert_eq!(
            body.to_string(),
            "validation_failed: a field is invalid (field reports[3].latitude: 95 is outside [-90, 90]) [request id r-1]"
        );
    }

    #[test]
    fn location_batch_serializes_as_the_api_expects() {
        let reports = [LocationReport {
            latitude: 40.64409,
            longitude: -74.07157,
            recorded_at: "2020-06-30T00:00:00Z".parse().unwrap(),
        }];
        let body = serde_json::to_value(LocationBatch { reports: &reports }).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"reports": [{
                "latitude": 40.64409,
                "longitude": -74.07157,
                "recorded_at": "2020-06-30T00:00:00Z"
            }]})
        );
    }
}
