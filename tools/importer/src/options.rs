//! Settings of an import: the file, where Meridian runs, and how hard to push it.

use std::path::PathBuf;
use std::time::Duration;

use meridian_domain::location::MAX_BATCH;
use rand::Rng;
use reqwest::Url;

use crate::session::{Credentials, RateLimitPolicy};
use crate::ImportError;

/// Default base URL of the command service.
pub const DEFAULT_COMMAND_URL: &str = "http://127.0.0.1:8080";
/// Default base URL of the query service.
pub const DEFAULT_QUERY_URL: &str = "http://127.0.0.1:8081";
/// Default number of reports per request.
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Default number of vessels imported at the same time.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Maximum number of vessels imported at the same time.
pub const MAX_CONCURRENCY: usize = 256;
/// Default time to wait for the query service to show every vessel's last report.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// How often and how long a failed request is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// Delay before the second attempt; it doubles for each further attempt.
    pub initial_delay: Duration,
    /// Upper bound of the delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Eight attempts over about 11 seconds.
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Returns the delay after failed attempt number `attempt` (1-based): exponential, capped
    /// at `max_delay`, with random jitter between half and all of it so that clients that
    /// failed together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(16);
        let delay = self
            .initial_delay
            .saturating_mul(1 << exponent)
            .min(self.max_delay);
        delay.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// Everything an import needs. [`ImportOptions::new`] fills in the documented defaults.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// The AIS CSV file.
    pub file: PathBuf,
    /// The account the importer logs in as: an admin, because it registers users and
    /// records locations for each of them.
    pub credentials: Credentials,
    /// Base URL of the command service, such as `http://127.0.0.1:8080`.
    pub command_url: String,
    /// Base URL of the query service, such as `http://127.0.0.1:8081`.
    pub query_url: String,
    /// Reports per request, 1 to 1000.
    pub batch_size: usize,
    /// Vessels imported at the same time, 1 to [`MAX_CONCURRENCY`].
    pub concurrency: usize,
    /// How long to wait for the query service to show every vessel's last report.
    pub wait_timeout: Duration,
    /// Shows progress bars on stderr when it is a terminal.
    pub show_progress: bool,
    /// Retries of requests that failed for a transient reason.
    pub retry: RetryPolicy,
    /// Waits after 429 responses.
    pub rate_limit: RateLimitPolicy,
    /// Time limit of one HTTP request.
    pub request_timeout: Duration,
    /// How long to look for a user in the query service after the command service reported
    /// the vessel's email address as taken.
    pub lookup_timeout: Duration,
}

impl ImportOptions {
    /// Returns options for importing `file` into a Meridian at the default addresses,
    /// logging in with `credentials`.
    pub fn new(file: impl Into<PathBuf>, credentials: Credentials) -> Self {
        Self {
            file: file.into(),
            credentials,
            command_url: DEFAULT_COMMAND_URL.to_owned(),
            query_url: DEFAULT_QUERY_URL.to_owned(),
            batch_size: DEFAULT_BATCH_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            show_progress: true,
            retry: RetryPolicy::default(),
            rate_limit: RateLimitPolicy::default(),
            request_timeout: Duration::from_secs(60),
            lookup_timeout: Duration::from_secs(30),
        }
    }

    /// Checks every option, naming the first invalid one.
    pub fn validate(&self) -> Result<(), ImportError> {
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(invalid(
                "batch size",
                format!("{} is outside 1 to {MAX_BATCH}", self.batch_size),
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(invalid(
                "concurrency",
                format!("{} is outside 1 to {MAX_CONCURRENCY}", self.concurrency),
            ));
        }
        if self.credentials.email.trim().is_empty() {
            return Err(invalid(
                "email",
                "is empty; pass the service account's address with --email".to_owned(),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid("retry attempts", "must be at least 1".to_owned()));
        }
        check_base_url("command URL", &self.command_url)?;
        check_base_url("query URL", &self.query_url)?;
        Ok(())
    }
}

fn invalid(option: &'static str, reason: String) -> ImportError {
    ImportError::InvalidOption { option, reason }
}

fn check_base_url(option: &'static str, raw: &str) -> Result<(), ImportError> {
    let url = Url::parse(raw).map_err(|error| invalid(option, format!("{raw:?}: {error}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            option,
            format!("{raw:?} must start with http:// or https://"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            option,
            format!("{raw:?} must not have a query or fragment"),
        ));
    }
    Ok(())
}

/// Returns `base` without trailing slashes, ready to have a path appended.
pub(crate) fn trim_base(base: &str) -> &str {
    base.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Secret;

    fn options() -> ImportOptions {
        let credentials = Credentials::new("admin@example.com", Secret::new("password"));
        ImportOptions::new("file.csv", credentials)
    }

    #[test]
    fn defaults_are_valid() {
        assert!(options().validate().is_ok());
    }

    #[test]
    fn batch_size_zero_is_invalid() {
        let error = ImportOptions {
            batch_size: 0,
            ..options()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("batch size"), "{error}");
    }

    #[test]
    fn batch_size_above_1000_is_invalid() {
        let options = ImportOptions {
            batch_size: 1001,
            ..options()
        };
        assert!(options.validate().is_err());
    }

    #[test]
    fn batch_size_1000_is_valid() {
        let options = ImportOptions {
            batch_size: 1000,
            ..options()
        };
        assert!(options.validate().is_ok());
    }

    #[test]
    fn concurrency_zero_is_invalid() {
        let options = ImportOptions {
            concurrency: 0,
            ..options()
        };
        assert!(options.validate().is_err());
    }

    #[test]
    fn empty_email_is_invalid() {
        let mut options = options();
        options.credentials.email = " ".to_owned();
        let error = options.validate().unwrap_err();
        assert!(error.to_string().contains("invalid email"), "{error}");
    }

    #[test]
    fn url_without_scheme_is_invalid() {
        let error = ImportOptions {
            query_url: "127.0.0.1:8081".into(),
            ..options()
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("query URL"), "{error}");
    }

    #[test]
    fn url_with_query_is_invalid() {
        let options = ImportOptions {
            command_url: "http://127.0.0.1:8080/?x=1".into(),
            ..options()
        };
        assert!(options.validate().is_err());
    }

    #[test]
    fn url_with_path_prefix_is_valid() {
        let options = ImportOptions {
            command_url: "http://127.0.0.1:8080/meridian/".into(),
            ..options()
        };
        assert!(options.validate().is_ok());
        assert_eq!(
            trim_base(&options.command_url),
            "http://127.0.0.1:8080/meridian"
        );
    }

    #[test]
    fn retry_delay_doubles_up_to_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
        };
        let first = policy.delay(1);
        assert!(first >= Duration::from_millis(50), "{first:?}");
        assert!(first <= Duration::from_millis(100), "{first:?}");
        let third = policy.delay(3);
        assert!(third >= Duration::from_millis(200), "{third:?}");
        assert!(third <= Duration::from_millis(400), "{third:?}");
        let late = policy.delay(40);
        assert!(late <= Duration::from_millis(1000), "{late:?}");
        assert!(late >= Duration::from_millis(500), "{late:?}");
    }
}
