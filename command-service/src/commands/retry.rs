//! Bounded retries of attempts that lost an optimistic-concurrency race.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tracing::{debug, warn};

/// An error that may go away when the attempt is repeated.
pub trait Retryable {
    /// Returns whether the attempt failed only because another writer committed first.
    fn is_conflict(&self) -> bool;
}

/// How often and how long to back off between attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included.
    pub max_attempts: u32,
    /// Upper bound of the first backoff; each later bound doubles, up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Up to 16 attempts over at most about 10 s. Four clients sending 100-report batches to
    /// one user at once, on a busy 2-core machine, ran out of 8 attempts capped at 250 ms.
    fn default() -> Self {
        Self {
            max_attempts: 16,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// Returns a random delay between zero and the bound for `retry` (0 for the first retry).
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        let bound = self.base_delay.saturating_mul(factor).min(self.max_delay);
        let micros = u64::try_from(bound.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rand::rng().random_range(0..=micros))
    }
}

/// Runs `attempt` until it returns anything but a conflict, at most `policy.max_attempts`
/// times, sleeping a jittered, growing delay between attempts. Returns the last result.
pub async fn with_retries<T, E, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Result<T, E>
where
    E: Retryable + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempts = 1;
    loop {
        match attempt().await {
            Err(error) if error.is_conflict() && attempts < policy.max_attempts => {
                let delay = policy.backoff(attempts - 1);
                debug!(%error, attempts, ?delay, "retrying after a concurrency conflict");
                tokio::time::sleep(delay).await;
                attempts += 1;
            }
            Err(error) if error.is_conflict() => {
                warn!(%error, attempts, "giving up after repeated concurrency conflicts");
                return Err(error);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Conflict;

    impl Retryable for Conflict {
        fn is_conflict(&self) -> bool {
            true
        }
    }

    impl std::fmt::Display for Conflict {
        fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            formatter.write_str("conflict")
        }
    }

    fn fast_policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_micros(10),
            max_delay: Duration::from_micros(100),
        }
    }

    #[tokio::test]
    async fn conflicts_stop_after_max_attempts() {
        let mut calls = 0;
        let result: Result<(), Conflict> = with_retries(&fast_policy(), || {
            calls += 1;
            async { Err(Conflict) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 4);
    }

    #[tokio::test]
    async fn success_after_conflict_is_returned() {
        let mut calls = 0;
        let result: Result<u32, Conflict> = with_retries(&fast_policy(), || {
            calls += 1;
            let outcome = if calls < 3 { Err(Conflict) } else { Ok(calls) };
            async move { outcome }
        })
        .await;
        assert_eq!(result.ok(), Some(3));
    }

    #[test]
    fn backoff_stays_within_max_delay() {
        let policy = fast_policy();
        for retry in 0..40 {
            assert!(policy.backoff(retry) <= policy.max_delay);
        }
    }
}
