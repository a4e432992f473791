//! Settings of authentication and rate limiting, read from `MERIDIAN_*` variables.

use std::env;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::keys::DEFAULT_KEY_FILE;
use crate::rate_limit::Limit;
use crate::refresh::DEFAULT_REFRESH_TTL;
use crate::token::DEFAULT_ACCESS_TTL;

/// A password from the configuration. It prints as `<redacted>`.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The administrator account that the command service creates, or promotes, at start.
#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    pub email: String,
    pub password: Secret,
}

/// The limits each request and login counts against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests per client address.
    pub per_address: Limit,
    /// Requests per authenticated user.
    pub per_user: Limit,
    /// Failed logins per client address.
    pub login_failures_per_address: Limit,
    /// Failed logins per account (email address).
    pub login_failures_per_account: Limit,
}

impl Default for Limits {
    fn default() -> Self {
        let minute = Duration::from_secs(60);
        let quarter = Duration::from_secs(15 * 60);
        Self {
            per_address: Limit {
                name: "address",
                max: 6_000,
                window: minute,
            },
            per_user: Limit {
                name: "user",
                max: 3_000,
                window: minute,
            },
            login_failures_per_address: Limit {
                name: "login_address",
                max: 20,
                window: quarter,
            },
            login_failures_per_account: Limit {
                name: "login_account",
                max: 5,
                window: quarter,
            },
        }
    }
}

impl Limits {
    /// Request limits no test or benchmark reaches, with the login limits kept; for tests
    /// that are not about rate limits.
    pub fn generous() -> Self {
        let mut limits = Self::default();
        limits.per_address.max = u64::MAX / 2;
        limits.per_user.max = u64::MAX / 2;
        limits
    }
}

/// Everything the services need to authenticate callers.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `MERIDIAN_TOKEN_KEY_FILE`, default [`DEFAULT_KEY_FILE`].
    pub key_file: PathBuf,
    /// `MERIDIAN_ACCESS_TOKEN_TTL_SECS`, default 900.
    pub access_ttl: Duration,
    /// `MERIDIAN_REFRESH_TOKEN_TTL_SECS`, default 30 days.
    pub refresh_ttl: Duration,
    /// `MERIDIAN_RATE_LIMIT_PER_ADDRESS` and `MERIDIAN_RATE_LIMIT_PER_USER` (requests per
    /// `MERIDIAN_RATE_LIMIT_WINDOW_SECS`, default 6000 and 3000 per 60 s);
    /// `MERIDIAN_LOGIN_FAILURES_PER_ADDRESS` and `MERIDIAN_LOGIN_FAILURES_PER_ACCOUNT`
    /// (failed logins per `MERIDIAN_LOGIN_FAILURE_WINDOW_SECS`, default 20 and 5 per 900 s).
    pub limits: Limits,
    /// `MERIDIAN_ADMIN_EMAIL` with `MERIDIAN_ADMIN_PASSWORD` or `MERIDIAN_ADMIN_PASSWORD_FILE`.
    pub bootstrap_admin: Option<BootstrapAdmin>,
}

impl AuthSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| env::var(name).ok())
    }

    /// Reads the settings through `lookup`; an empty value counts as unset.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match var(name) {
                None => Ok(default),
                Some(raw) => match raw.parse::<u64>() {
                    Ok(value) if value > 0 => Ok(value),
                    _ => bail!("{name} must be a positive integer, got {raw:?}"),
                },
            }
        };
        let defaults = Limits::default();
        let window = Duration::from_secs(number("MERIDIAN_RATE_LIMIT_WINDOW_SECS", 60)?);
        let login_window =
            Duration::from_secs(number("MERIDIAN_LOGIN_FAILURE_WINDOW_SECS", 15 * 60)?);
        let limits = Limits {
            per_address: Limit {
                max: number("MERIDIAN_RATE_LIMIT_PER_ADDRESS", defaults.per_address.max)?,
                window,
                ..defaults.per_address
            },
            per_user: Limit {
                max: number("MERIDIAN_RATE_LIMIT_PER_USER", defaults.per_user.max)?,
                window,
                ..defaults.per_user
            },
            login_failures_per_address: Limit {
                max: number(
                    "MERIDIAN_LOGIN_FAILURES_PER_ADDRESS",
                    defaults.login_failures_per_address.max,
                )?,
                window: login_window,
                ..defaults.login_failures_per_address
            },
            login_failures_per_account: Limit {
                max: number(
                    "MERIDIAN_LOGIN_FAILURES_PER_ACCOUNT",
                    defaults.login_failures_per_account.max,
                )?,
                window: login_window,
                ..defaults.login_failures_per_account
            },
        };
        let bootstrap_admin = match var("MERIDIAN_ADMIN_EMAIL") {
            None => None,
            Some(email) => {
                let password = match (
                    var("MERIDIAN_ADMIN_PASSWORD"),
                    var("MERIDIAN_ADMIN_PASSWORD_FILE"),
                ) {
                    (Some(password), None) => password,
                    (None, Some(path)) => std::fs::read_to_string(&path)
                        .with_context(|| {
                            format!("failed to read MERIDIAN_ADMIN_PASSWORD_FILE {path}")
                        })?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                    (Some(_), Some(_)) => bail!(
                        "set MERIDIAN_ADMIN_PASSWORD or MERIDIAN_ADMIN_PASSWORD_FILE, not both"
                    ),
                    (None, None) => bail!(
                        "MERIDIAN_ADMIN_EMAIL is set, so MERIDIAN_ADMIN_PASSWORD or \
                         MERIDIAN_ADMIN_PASSWORD_FILE is needed too"
                    ),
                };
                Some(BootstrapAdmin {
                    email,
                    password: Secret::new(password),
                })
            }
        };
        Ok(Self {
            key_file: var("MERIDIAN_TOKEN_KEY_FILE")
                .unwrap_or_else(|| DEFAULT_KEY_FILE.to_owned())
                .into(),
            access_ttl: Duration::from_secs(number(
                "MERIDIAN_ACCESS_TOKEN_TTL_SECS",
                DEFAULT_ACCESS_TTL.as_secs(),
            )?),
            refresh_ttl: Duration::from_secs(number(
                "MERIDIAN_REFRESH_TOKEN_TTL_SECS",
                DEFAULT_REFRESH_TTL.as_secs(),
            )?),
            limits,
            bootstrap_admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<AuthSettings> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        AuthSettings::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let settings = settings(&[]).unwrap();
        assert_eq!(settings.access_ttl, Duration::from_secs(900));
        assert_eq!(settings.limits.per_address.max, 6_000);
        assert_eq!(settings.limits.login_failures_per_account.max, 5);
        assert!(settings.bootstrap_admin.is_none());
    }

    #[test]
    fn limits_and_admin_are_read() {
        let settings = settings(&[
            ("MERIDIAN_RATE_LIMIT_PER_USER", "7"),
            ("MERIDIAN_RATE_LIMIT_WINDOW_SECS", "5"),
            ("MERIDIAN_ADMIN_EMAIL", "admin@example.com"),
            ("MERIDIAN_ADMIN_PASSWORD", "s3cret-password"),
        ])
        .unwrap();
        assert_eq!(settings.limits.per_user.max, 7);
        assert_eq!(settings.limits.per_user.window, Duration::from_secs(5));
        let admin = settings.bootstrap_admin.unwrap();
        assert_eq!(admin.password.expose(), "s3cret-password");
        assert!(!format!("{admin:?}").contains("s3cret"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let error = settings(&[("MERIDIAN_RATE_LIMIT_PER_USER", "0")]).unwrap_err();
        assert!(error.to_string().contains("MERIDIAN_RATE_LIMIT_PER_USER"));
        let error = settings(&[("MERIDIAN_ADMIN_EMAIL", "a@b.c")]).unwrap_err();
        assert!(error.to_string().contains("MERIDIAN_ADMIN_PASSWORD"));
    }
}
