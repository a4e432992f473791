//! Who is calling, and may they: authentication, authorization and rate limits shared by
//! the command and query services.
//!
//! - [`keys`]: the rotatable HMAC keys that sign access tokens, in a key file.
//! - [`token`]: access tokens, HS256 JWTs with the user id, role and key id.
//! - [`refresh`]: refresh tokens in PostgreSQL, rotated on each use, with reuse detection.
//! - [`rate_limit`]: request counters in Redis, shared by every replica.
//! - [`Auth`]: the login, refresh and logout flows and the per-request checks, which each
//!   service's HTTP layer calls.
//!
//! Roles ([`Role`]) are part of the user aggregate. A token carries the role the user had
//! when it was issued, so a change of role takes effect at the next refresh.

pub mod keys;
pub mod password;
pub mod rate_limit;
pub mod refresh;
pub mod settings;
pub mod token;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use http::header::AUTHORIZATION;
use http::HeaderMap;
pub use meridian_domain::user::Role;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tracing::{info, warn};

use crate::keys::KeyStore;
use crate::rate_limit::{Decision, Limit, RateLimiter};
use crate::refresh::{RefreshError, RefreshStore, RevokeReason};
pub use crate::settings::{AuthSettings, BootstrapAdmin, Limits, Secret};
use crate::token::{TokenError, TokenService};

/// How often each service checks the key file for a rotation.
const KEY_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Passes when the caller is `user_id` or an admin. Analysts pass only when
    /// `analysts_may` is true, which read routes open to analysts set.
    pub fn require_access_to(&self, user_id: &str, analysts_may: bool) -> Result<(), AuthError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Analyst if analysts_may => Ok(()),
            _ if self.user_id == user_id => Ok(()),
            _ => Err(AuthError::forbidden(format!(
                "only user {user_id} or an admin may access this user; the caller is user {}",
                self.user_id
            ))),
        }
    }

    /// Passes for a caller who may change `user_id`: the user themselves or an admin.
    /// Analysts change nothing.
    pub fn require_write_access_to(&self, user_id: &str) -> Result<(), AuthError> {
        if self.role == Role::Analyst {
            return Err(AuthError::forbidden(
                "analysts read analytics and history but change nothing",
            ));
        }
        self.require_access_to(user_id, false)
    }

    /// Passes when the caller has one of `roles`.
    pub fn require_role(&self, roles: &[Role]) -> Result<(), AuthError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let allowed: Vec<&str> = roles.iter().map(|role| role.as_str()).collect();
        Err(AuthError::forbidden(format!(
            "this needs the role {}; the caller is a {}",
            allowed.join(" or "),
            self.role
        )))
    }
}

/// The reason a request was rejected. Each service turns it into its error body. The
/// messages are safe to send because they never repeat a token or password.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// 401: no `Authorization: Bearer` header on a route that needs one.
    #[error("this request needs an access token: send Authorization: Bearer <token>")]
    MissingToken,
    /// 401: the access token was refused.
    #[error("the access token is not valid: {0}")]
    InvalidToken(#[from] TokenError),
    /// 401: unknown email, wrong password or disabled account; the three look the same.
    #[error("the email address or the password is wrong")]
    InvalidCredentials,
    /// 401: the refresh token was refused.
    #[error("{0}")]
    InvalidRefreshToken(String),
    /// 403
    #[error("{message}")]
    Forbidden {
        message: String,
        field: Option<String>,
    },
    /// 429
    #[error("too many {what}; retry after {} s", rate_limit::retry_after_secs(*.retry_after))]
    RateLimited {
        what: &'static str,
        retry_after: Duration,
    },
    /// 500
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl AuthError {
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden {
            message: message.into(),
            field: None,
        }
    }

    pub fn forbidden_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Forbidden {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// Returns the HTTP status of the error.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::MissingToken
            | Self::InvalidToken(_)
            | Self::InvalidCredentials
            | Self::InvalidRefreshToken(_) => http::StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => http::StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => http::StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => http::StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingToken => "unauthenticated",
            Self::InvalidToken(TokenError::Expired) => "token_expired",
            Self::InvalidToken(_) => "invalid_token",
            Self::InvalidCredentials => "invalid_credentials",
            Self::InvalidRefreshToken(_) => "invalid_refresh_token",
            Self::Forbidden { .. } => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }

    /// Returns the `WWW-Authenticate` value of a 401, as RFC 6750 section 3 defines it.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Self::MissingToken => Some("Bearer realm=\"meridian\""),
            Self::InvalidToken(_) => Some("Bearer realm=\"meridian\", error=\"invalid_token\""),
            _ => None,
        }
    }

    /// Returns the seconds to send in `Retry-After`.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::RateLimited { retry_after, .. } => {
                Some(rate_limit::retry_after_secs(*retry_after))
            }
            _ => None,
        }
    }
}

/// A user as login needs to see them. The command service reads it from the user aggregate.
#[derive(Clone)]
pub struct Account {
    pub user_id: String,
    pub role: Role,
    /// An argon2 PHC string.
    pub password_hash: String,
    /// False for deactivated and erased users, who cannot log in or refresh.
    pub active: bool,
}

/// The source of accounts that [`Auth`] logs in.
pub trait Accounts: Send + Sync {
    fn by_email(&self, email: &str)
        -> impl Future<Output = anyhow::Result<Option<Account>>> + Send;
    fn by_id(&self, user_id: &str) -> impl Future<Output = anyhow::Result<Option<Account>>> + Send;
}

/// Tokens handed to a client after a login or a refresh.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Session {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: u64,
    pub refresh_token: String,
    pub refresh_expires_at: DateTime<Utc>,
    pub user_id: String,
    pub role: Role,
}

/// The authentication state of one service process.
#[derive(Clone)]
pub struct Auth {
    tokens: TokenService,
    refresh: RefreshStore,
    limiter: RateLimiter,
    limits: Limits,
}

impl Auth {
    /// Opens the key file, watches it for rotations, and prepares the refresh store on
    /// `pool` and the limiter on the Redis server at `redis_url`, whose keys start with
    /// `redis_prefix`.
    pub fn new(
        settings: &AuthSettings,
        pool: PgPool,
        redis_url: &str,
        redis_prefix: &str,
    ) -> anyhow::Result<Self> {
        let keys = Arc::new(KeyStore::open(&settings.key_file).with_context(|| {
            "create the token key file with `meridian-token-keys init` (make up does)"
        })?);
        keys.watch(KEY_FILE_CHECK_INTERVAL);
        Self::with_keys(settings, keys, pool, redis_url, redis_prefix)
    }

    /// Like [`Auth::new`] with keys that are already loaded.
    pub fn with_keys(
        settings: &AuthSettings,
        keys: Arc<KeyStore>,
        pool: PgPool,
        redis_url: &str,
        redis_prefix: &str,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            tokens: TokenService::new(keys, settings.access_ttl),
            refresh: RefreshStore::new(pool, settings.refresh_ttl),
            limiter: RateLimiter::new(redis_url, redis_prefix)?,
            limits: settings.limits,
        })
    }

    pub fn tokens(&self) -> &TokenService {
        &self.tokens
    }

    pub fn refresh_store(&self) -> &RefreshStore {
        &self.refresh
    }

    /// Returns the caller named by the `Authorization` header: None without the header, an
    /// error when the header or its token is not valid.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Caller>, AuthError> {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Ok(None);
        };
        let token = bearer_token(value.as_bytes()).ok_or(TokenError::Malformed)?;
        self.verify(token).map(Some)
    }

    /// Verifies an access token and returns its caller.
    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let claims = self.tokens.verify(token)?;
        Ok(Caller {
            user_id: claims.sub,
            role: claims.role,
        })
    }

    /// Counts a request against the limits of its client address and of its user.
    pub async fn admit(
        &self,
        address: Option<IpAddr>,
        caller: Option<&Caller>,
    ) -> Result<(), AuthError> {
        if let Some(address) = address {
            self.count(
                &self.limits.per_address,
                &address.to_string(),
                "requests from this address",
            )
            .await?;
        }
        if let Some(caller) = caller {
            self.count(
                &self.limits.per_user,
                &caller.user_id,
                "requests by this user",
            )
            .await?;
        }
        Ok(())
    }

    async fn count(
        &self,
        limit: &Limit,
        subject: &str,
        what: &'static str,
    ) -> Result<(), AuthError> {
        match self.limiter.hit(limit, subject).await {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => Err(AuthError::RateLimited { what, retry_after }),
        }
    }

    /// Checks `password` for the account of `email` and starts a session.
    pub async fn login(
        &self,
        accounts: &impl Accounts,
        email: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<Session, AuthError> {
        let address_key = address.map(|address| address.to_string());
        let account_key = email_key(email);
        let failures = &self.limits;
        if let Some(address) = &address_key {
            self.reject_if_limited(&failures.login_failures_per_address, address)
                .await?;
        }
        self.reject_if_limited(&failures.login_failures_per_account, &account_key)
            .await?;

        let account = accounts.by_email(email).await?;
        let verified = password::verify(
            account
                .as_ref()
                .map(|account| account.password_hash.clone()),
            password.to_owned(),
        )
        .await?;
        let account = match account {
            Some(account) if verified && account.active => account,
            _ => {
                if let Some(address) = &address_key {
                    self.limiter
                        .hit(&failures.login_failures_per_address, address)
                        .await;
                }
                self.limiter
                    .hit(&failures.login_failures_per_account, &account_key)
                    .await;
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.limiter
            .reset(&failures.login_failures_per_account, &account_key)
            .await;
        let refresh = self
            .refresh
            .start(&account.user_id)
            .await
            .map_err(internal)?;
        info!(user_id = %account.user_id, family_id = %refresh.family_id, "login");
        self.session(&account, refresh)
    }

    /// Rotates `refresh_token` and issues a new access token with the user's current role.
    pub async fn refresh(
        &self,
        accounts: &impl Accounts,
        refresh_token: &str,
    ) -> Result<Session, AuthError> {
        let rotated = match self.refresh.rotate(refresh_token).await {
            Ok(rotated) => rotated,
            Err(RefreshError::Database(error)) => return Err(internal(error)),
            Err(RefreshError::Reused) => {
                warn!("a used refresh token was presented again; its session is revoked");
                return Err(AuthError::InvalidRefreshToken(
                    RefreshError::Reused.to_string(),
                ));
            }
            Err(error) => return Err(AuthError::InvalidRefreshToken(error.to_string())),
        };
        match accounts.by_id(&rotated.user_id).await? {
            Some(account) if account.active => self.session(&account, rotated.next),
            _ => {
                self.refresh
                    .revoke_family(rotated.next.family_id, RevokeReason::AccountDisabled)
                    .await
                    .map_err(internal)?;
                Err(AuthError::InvalidRefreshToken(
                    "the account is deactivated or erased".to_owned(),
                ))
            }
        }
    }

    /// Ends the session of `refresh_token`. Unknown tokens are ignored, so logging out
    /// twice is not an error.
    pub async fn logout(&self, refresh_token: &str) -> Result<(), AuthError> {
        self.refresh
            .revoke(refresh_token, RevokeReason::Logout)
            .await
            .map_err(internal)?;
        Ok(())
    }

    async fn reject_if_limited(&self, limit: &Limit, subject: &str) -> Result<(), AuthError> {
        match self.limiter.check(limit, subject).await {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => Err(AuthError::RateLimited {
                what: "failed logins",
                retry_after,
            }),
        }
    }

    fn session(
        &self,
        account: &Account,
        refresh: refresh::RefreshToken,
    ) -> Result<Session, AuthError> {
        let access = self.tokens.issue(&account.user_id, account.role)?;
        Ok(Session {
            access_token: access.token,
            token_type: "Bearer".to_owned(),
            expires_in: access.expires_in.as_secs(),
            refresh_token: refresh.token,
            refresh_expires_at: refresh.expires_at,
            user_id: account.user_id.clone(),
            role: account.role,
        })
    }
}

fn internal(error: impl Into<anyhow::Error>) -> AuthError {
    AuthError::Internal(error.into())
}

/// Returns the token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive.
fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Returns the Redis subject of an account's failed logins: a hash, so Redis stores no email
/// address.
fn email_key(email: &str) -> String {
    let digest = Sha256::digest(email.trim().to_lowercase().as_bytes());
    digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
