//! Logging in to Meridian's command service and keeping the access token fresh.
//!
//! A [`Session`] logs in with `POST /v1/auth/login` and sends `Authorization: Bearer` on
//! every request made through [`Session::execute`]. It renews the access token with
//! `POST /v1/auth/refresh` once three quarters of its lifetime (`expires_in`) have passed,
//! or 60 s before it expires, whichever comes first. When a response is a 401 with the error
//! `token_expired` anyway, it renews the token once and repeats the request. When the refresh
//! token is rejected or has expired, it logs in again with the password.
//!
//! A request that receives a 429 response is repeated after the delay in its `Retry-After`
//! header, within the bounds of a [`RateLimitPolicy`], and counted in [`SessionStats`].
//!
//! Passwords and tokens are kept in [`Secret`] values, whose `Debug` output is redacted, and
//! no error or message of this module contains one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Maximum time before expiry at which an access token is renewed.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Wait after a 429 response that has no `Retry-After` header in seconds.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// A password or token. Its `Debug` output is redacted and it has no `Display`, so it cannot
/// end up in a message by accident, and its memory is zeroed when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// Returns the secret text, for a request body or header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

/// The email address and password of the account a client logs in as.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub email: String,
    pub password: Secret,
}

/// A password file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the password file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the password file {} is empty; write the password into it", path.display())]
    Empty { path: PathBuf },
}

impl Credentials {
    pub fn new(email: impl Into<String>, password: Secret) -> Self {
        Self {
            email: email.into(),
            password,
        }
    }

    /// Reads the password from `path`: the whole file without the line breaks at its end,
    /// as the command service reads `MERIDIAN_ADMIN_PASSWORD_FILE`.
    pub fn from_password_file(
        email: impl Into<String>,
        path: &Path,
    ) -> Result<Self, CredentialsError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            CredentialsError::Read {
                path: path.to_owned(),
                source,
            }
        })?);
        let password = text.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(CredentialsError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self::new(email, Secret::new(password)))
    }
}

/// How long and how often a request is repeated after 429 responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// Waits per request; the 429 after the last one is returned to the caller.
    pub max_waits: u32,
    /// Maximum length of one wait, whatever `Retry-After` requests.
    pub max_wait: Duration,
}

impl Default for RateLimitPolicy {
    /// Ten waits of at most 120 s each, enough for the command service's default window of
    /// 60 s to pass several times.
    fn default() -> Self {
        Self {
            max_waits: 10,
            max_wait: Duration::from_secs(120),
        }
    }
}

/// Counts of a session's logins, refreshes and 429 responses so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Successful logins, the first one included.
    pub logins: u64,
    /// Access tokens renewed with a refresh token.
    pub refreshes: u64,
    /// 429 responses received, including those returned to the caller.
    pub rate_limited: u64,
    /// Time spent waiting after 429 responses.
    pub rate_limited_wait: Duration,
}

/// A failed login or token renewal.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(
        "the command service rejected the login of {email} ({status}, {code}); check the email \
         address and the password file"
    )]
    Rejected {
        email: String,
        status: StatusCode,
        code: String,
    },
    #[error(
        "the command service rate-limited the login of {email} and asks to wait {} s; \
         try again later",
        retry_after.map_or_else(|| "an unknown number of".to_owned(), |wait| wait.as_secs().to_string())
    )]
    RateLimited {
        email: String,
        retry_after: Option<Duration>,
    },
    #[error("{url} returned {status}: {message}")]
    Status {
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{url} returned a body that is not the expected JSON: {reason}")]
    InvalidResponse { url: String, reason: String },
    #[error("request failed: {0}")]
    Request(#[source] reqwest::Error),
}

impl SessionError {
    /// Returns whether repeating the request may succeed: a connection error, a time-out or
    /// a 5xx response.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Request(_) => true,
            Self::Status { status, .. } => status.is_server_error(),
            Self::Rejected { .. } | Self::RateLimited { .. } | Self::InvalidResponse { .. } => {
                false
            }
        }
    }
}

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// The body of `POST /v1/auth/login` and `POST /v1/auth/refresh` responses.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Secret,
    expires_in: u64,
    refresh_token: Secret,
    #[serde(default)]
    refresh_expires_at: Option<DateTime<Utc>>,
    user_id: Uuid,
    role: String,
}

#[derive(Serialize)]
struct LoginRequest<'a> {
    email: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct RefreshRequest<'a> {
    refresh_token: &'a str,
}

#[derive(Deserialize)]
struct ErrorCode {
    error: String,
    #[serde(default)]
    message: String,
}

/// The current tokens and when to renew them.
struct Tokens {
    access: Secret,
    refresh: Secret,
    renew_at: Instant,
    refresh_expires_at: Option<DateTime<Utc>>,
    /// Counts renewals, so that tasks that saw the same expired token renew it only once.
    generation: u64,
}

/// Called with a line for the user, such as a wait after a 429 response.
pub type Notify = Arc<dyn Fn(&str) + Send + Sync>;

/// A logged-in account of the command service.
pub struct Session {
    http: reqwest::Client,
    login_url: String,
    refresh_url: String,
    credentials: Credentials,
    rate_limit: RateLimitPolicy,
    user_id: Uuid,
    role: String,
    tokens: Mutex<Tokens>,
    logins: AtomicU64,
    refreshes: AtomicU64,
    rate_limited: AtomicU64,
    rate_limited_wait_ms: AtomicU64,
    notify: Option<Notify>,
}

impl fmt::Debug for Session {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Session")
            .field("email", &self.credentials.email)
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Logs in to the command service at `command_url` (without a trailing slash).
    /// `notify`, when given, receives a line for each wait after a 429 response.
    pub async fn login(
        http: reqwest::Client,
        command_url: &str,
        credentials: Credentials,
        rate_limit: RateLimitPolicy,
        notify: Option<Notify>,
    ) -> Result<Self, SessionError> {
        let base = command_url.trim_end_matches('/');
        let login_url = format!("{base}/v1/auth/login");
        let refresh_url = format!("{base}/v1/auth/refresh");
        let mut session = Self {
            http,
            login_url,
            refresh_url,
            credentials,
            rate_limit,
            user_id: Uuid::nil(),
            role: String::new(),
            // Replaced below, before anyone can read it.
            tokens: Mutex::new(Tokens {
                access: Secret::new(""),
                refresh: Secret::new(""),
                renew_at: Instant::now(),
                refresh_expires_at: None,
                generation: 0,
            }),
            logins: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            rate_limited_wait_ms: AtomicU64::new(0),
            notify,
        };
        let response = session.request_login().await?;
        session.user_id = response.user_id;
        session.role = response.role.clone();
        session
            .tokens
            .get_mut()
            .replace_with(response, Instant::now());
        Ok(session)
    }

    /// Returns the logged-in user's id.
    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    /// Returns the logged-in user's role, such as `admin`.
    pub fn role(&self) -> &str {
        &self.role
    }

    pub fn email(&self) -> &str {
        &self.credentials.email
    }

    /// Returns the HTTP client the session logs in with, for building requests to send with
    /// [`Session::execute`].
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            logins: self.logins.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            rate_limited_wait: Duration::from_millis(
                self.rate_limited_wait_ms.load(Ordering::Relaxed),
            ),
        }
    }

    /// Returns the current access token, renewed first when it is due.
    pub async fn access_token(&self) -> Result<Secret, SessionError> {
        self.current_token().await.map(|(token, _)| token)
    }

    /// Sends the request that `build` returns with the access token, renewing the token once
    /// on a 401 `token_expired` and waiting after 429 responses, and reads the whole
    /// response. Any other status, including a 429 after the last wait, is returned as a
    /// [`Reply`].
    pub async fn execute(&self, build: impl Fn() -> RequestBuilder) -> Result<Reply, SessionError> {
        let mut renewed = false;
        let mut waits = 0;
        loop {
            let (token, generation) = self.current_token().await?;
            let reply = read_reply(build().bearer_auth(token.expose())).await?;

            if reply.status == StatusCode::UNAUTHORIZED
                && !renewed
                && error_code(&reply.body).as_deref() == Some("token_expired")
            {
                renewed = true;
                self.renew(generation).await?;
                continue;
            }
            if reply.status == StatusCode::TOO_MANY_REQUESTS {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                if waits < self.rate_limit.max_waits {
                    waits += 1;
                    let wait = self.rate_limit_wait(&reply.headers);
                    self.wait_after_rate_limit(wait, waits).await;
                    continue;
                }
            }
            return Ok(reply);
        }
    }

    /// Returns the access token and its generation, renewing it first when it is due.
    async fn current_token(&self) -> Result<(Secret, u64), SessionError> {
        let mut tokens = self.tokens.lock().await;
        if Instant::now() >= tokens.renew_at {
            self.renew_locked(&mut tokens).await?;
        }
        Ok((tokens.access.clone(), tokens.generation))
    }

    /// Renews the access token unless another task has renewed it since `generation`.
    async fn renew(&self, generation: u64) -> Result<(), SessionError> {
        let mut tokens = self.tokens.lock().await;
        if tokens.generation == generation {
            self.renew_locked(&mut tokens).await?;
        }
        Ok(())
    }

    /// Renews the tokens with the refresh token, or by logging in again when the refresh
    /// token has expired or is rejected. Callers hold the lock, so that one refresh token is
    /// never sent twice: the command service treats a second use as theft and revokes the
    /// session.
    async fn renew_locked(&self, tokens: &mut Tokens) -> Result<(), SessionError> {
        let refresh_usable = tokens
            .refresh_expires_at
            .is_none_or(|expires_at| expires_at > Utc::now());
        let response = if refresh_usable {
            match self.request_refresh(&tokens.refresh).await {
                Ok(response) => response,
                Err(SessionError::Status { status, .. }) if status == StatusCode::UNAUTHORIZED => {
                    self.request_login().await?
                }
                Err(error) => return Err(error),
            }
        } else {
            self.request_login().await?
        };
        tokens.replace_with(response, Instant::now());
        Ok(())
    }

    async fn request_login(&self) -> Result<TokenResponse, SessionError> {
        let body = LoginRequest {
            email: &self.credentials.email,
            password: self.credentials.password.expose(),
        };
        let mut waits = 0;
        loop {
            let reply = read_reply(self.http.post(&self.login_url).json(&body)).await?;
            match reply.status {
                status if status.is_success() => {
                    let response = decode_tokens(&self.login_url, &reply.body)?;
                    self.logins.fetch_add(1, Ordering::Relaxed);
                    return Ok(response);
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(SessionError::Rejected {
                        email: self.credentials.email.clone(),
                        status: reply.status,
                        code: error_code(&reply.body).unwrap_or_default(),
                    });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                    let retry_after = retry_after(reply.headers.get(RETRY_AFTER));
                    // A wait longer than the policy allows means the account or address is
                    // locked out after failed logins; waiting would only hide that.
                    let bounded = retry_after.is_none_or(|wait| wait <= self.rate_limit.max_wait);
                    if waits >= self.rate_limit.max_waits || !bounded {
                        return Err(SessionError::RateLimited {
                            email: self.credentials.email.clone(),
                            retry_after,
                        });
                    }
                    waits += 1;
                    let wait = self.rate_limit_wait(&reply.headers);
                    self.wait_after_rate_limit(wait, waits).await;
                }
                status => return Err(status_error(&self.login_url, status, &reply.body)),
            }
        }
    }

    async fn request_refresh(&self, refresh_token: &Secret) -> Result<TokenResponse, SessionError> {
        let body = RefreshRequest {
            refresh_token: refresh_token.expose(),
        };
        let reply = read_reply(self.http.post(&self.refresh_url).json(&body)).await?;
        if !reply.status.is_success() {
            return Err(status_error(&self.refresh_url, reply.status, &reply.body));
        }
        let response = decode_tokens(&self.refresh_url, &reply.body)?;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        Ok(response)
    }

    fn rate_limit_wait(&self, headers: &HeaderMap) -> Duration {
        retry_after(headers.get(RETRY_AFTER))
            .unwrap_or(DEFAULT_RATE_LIMIT_WAIT)
            .min(self.rate_limit.max_wait)
    }

    async fn wait_after_rate_limit(&self, wait: Duration, waits: u32) {
        if let Some(notify) = &self.notify {
            notify(&format!(
                "rate limited (429): waiting {:.1} s as Retry-After requests (wait {waits} of at most {})",
                wait.as_secs_f64(),
                self.rate_limit.max_waits
            ));
        }
        let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        self.rate_limited_wait_ms
            .fetch_add(millis, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
}

impl Tokens {
    /// Takes the tokens of `response`, received at `received`, and schedules their renewal.
    fn replace_with(&mut self, response: TokenResponse, received: Instant) {
        let lifetime = Duration::from_secs(response.expires_in);
        let margin = (lifetime / 4).min(MAX_REFRESH_MARGIN);
        self.access = response.access_token;
        self.refresh = response.refresh_token;
        self.renew_at = received + lifetime - margin;
        self.refresh_expires_at = response.refresh_expires_at;
        self.generation += 1;
    }
}

/// Sends a request and reads its whole response.
async fn read_reply(request: RequestBuilder) -> Result<Reply, SessionError> {
    let response = request.send().await.map_err(SessionError::Request)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(SessionError::Request)?;
    Ok(Reply {
        status,
        headers,
        body: body.to_vec(),
    })
}

/// Decodes a token response. The error names the position of the problem but never quotes
/// the body, which contains tokens.
fn decode_tokens(url: &str, body: &[u8]) -> Result<TokenResponse, SessionError> {
    serde_json::from_slice(body).map_err(|error| SessionError::InvalidResponse {
        url: url.to_owned(),
        reason: format!(
            "{:?} error at line {} column {}",
            error.classify(),
            error.line(),
            error.column()
        ),
    })
}

fn status_error(url: &str, status: StatusCode, body: &[u8]) -> SessionError {
    let message = match serde_json::from_slice::<ErrorCode>(body) {
        Ok(body) => format!("{}: {}", body.error, body.message),
        Err(_) => String::from_utf8_lossy(body).chars().take(200).collect(),
    };
    SessionError::Status {
        url: url.to_owned(),
        status,
        message,
    }
}

/// Reads the `error` field of a JSON error body.
pub fn error_code(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorCode>(body)
        .ok()
        .map(|body| body.error)
}

/// Reads a `Retry-After` header given in seconds; an HTTP date is ignored.
pub fn retry_after(value: Option<&HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("hunter2-password");
        let printed = format!("{secret:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }

    #[test]
    fn credentials_debug_hides_password() {
        let credentials = Credentials::new("admin@example.com", Secret::new("hunter2-password"));
        let printed = format!("{credentials:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("admin@example.com"), "{printed}");
    }

    #[test]
    fn password_file_drops_final_line_breaks() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("password");
        std::fs::write(&path, " two words \r\n\n").unwrap();
        let credentials = Credentials::from_password_file("a@example.com", &path).unwrap();
        assert_eq!(credentials.password.expose(), " two words ");
    }

    #[test]
    fn empty_password_file_is_an_error() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("password");
        std::fs::write(&path, "\n").unwrap();
        let error = Credentials::from_password_file("a@example.com", &path).unwrap_err();
        assert!(error.to_string().contains("is empty"), "{error}");
    }

    #[test]
    fn missing_password_file_names_path() {
        let error =
            Credentials::from_password_file("a@example.com", Path::new("/nonexistent/password"))
                .unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/password"),
            "{error}"
        );
    }

    fn empty_tokens() -> Tokens {
        Tokens {
            access: Secret::new(""),
            refresh: Secret::new(""),
            renew_at: Instant::now(),
            refresh_expires_at: None,
            generation: 0,
        }
    }

    #[test]
    fn short_lifetime_renews_at_three_quarters() {
        let mut tokens = empty_tokens();
        let received = Instant::now();
        tokens.replace_with(token_response(40), received);
        assert_eq!(tokens.renew_at - received, Duration::from_secs(30));
        assert_eq!(tokens.generation, 1);
    }

    #[test]
    fn long_lifetime_renews_a_minute_early() {
        let mut tokens = empty_tokens();
        let received = Instant::now();
        tokens.replace_with(token_response(900), received);
        assert_eq!(tokens.renew_at - received, Duration::from_secs(840));
    }

    #[test]
    fn invalid_token_body_is_not_quoted() {
        let body = br#"{"access_token": 12345678, "refresh_token": "refresh-secret-value"}"#;
        let error = decode_tokens("http://127.0.0.1:1/v1/auth/login", body)
            .err()
            .unwrap();
        let message = error.to_string();
        assert!(!message.contains("refresh-secret-value"), "{message}");
        assert!(!message.contains("12345678"), "{message}");
    }

    #[test]
    fn retry_after_reads_seconds() {
        let value = HeaderValue::from_static(" 3 ");
        assert_eq!(retry_after(Some(&value)), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_ignores_dates() {
        let value = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(retry_after(Some(&value)), None);
    }

    fn token_response(expires_in: u64) -> TokenResponse {
        TokenResponse {
            access_token: Secret::new("a"),
            expires_in,
            refresh_token: Secret::new("r"),
            refresh_expires_at: None,
            user_id: Uuid::nil(),
            role: "admin".to_owned(),
        }
    }
}
