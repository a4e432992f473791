//! Fixed-window request counters in Redis, so one limit applies across all replicas.
//!
//! Each counter is one Redis key, `<prefix>ratelimit:<limit>:<subject>`, incremented and
//! given its expiry by one script call, so the first request of a window starts it. When
//! Redis does not reply within [`REDIS_TIMEOUT`], requests are let through and a warning
//! is logged: an outage of the limiter must not become an outage of the API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tracing::warn;

/// How long a limiter call waits for Redis.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Seconds between two warnings about an unreachable Redis.
const WARN_INTERVAL_SECS: u64 = 10;

/// A limit: at most `max` counted events per `window` and subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Part of the Redis key, such as `address` or `user`.
    pub name: &'static str,
    pub max: u64,
    pub window: Duration,
}

/// The decision of the limiter for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit until the window ends.
    Limited {
        retry_after: Duration,
    },
}

/// Counts requests in Redis.
#[derive(Clone)]
pub struct RateLimiter {
    redis: ConnectionManager,
    prefix: String,
    last_warning: std::sync::Arc<AtomicU64>,
}

// INCR, then set the expiry on the window's first hit. A key left without expiry (which
// only a crash between the two calls could cause, and a script cannot) is repaired too.
const HIT: &str = r"
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
";

// Reads a counter without counting.
const PEEK: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local ttl = redis.call('PTTL', KEYS[1])
return {count, ttl}
";

impl RateLimiter {
    /// A limiter on the Redis server at `url`, with keys under `prefix`. It connects on
    /// first use and reconnects by itself.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            redis,
            prefix: format!("{prefix}ratelimit:"),
            last_warning: Default::default(),
        })
    }

    /// Counts one event of `subject` against `limit`.
    pub async fn hit(&self, limit: &Limit, subject: &str) -> Decision {
        self.run(HIT, limit, subject, true).await
    }

    /// Whether `subject` is over `limit`, without counting.
    pub async fn check(&self, limit: &Limit, subject: &str) -> Decision {
        self.run(PEEK, limit, subject, false).await
    }

    /// Forgets the counter of `subject`, such as the failed logins of an account after a
    /// successful one.
    pub async fn reset(&self, limit: &Limit, subject: &str) {
        let key = self.key(limit, subject);
        let mut redis = self.redis.clone();
        let deleted = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("DEL").arg(&key).query_async::<i64>(&mut redis),
        )
        .await;
        if !matches!(deleted, Ok(Ok(_))) {
            self.warn_unavailable(limit);
        }
    }

    async fn run(&self, script: &str, limit: &Limit, subject: &str, counting: bool) -> Decision {
        let key = self.key(limit, subject);
        let window_ms = u64::try_from(limit.window.as_millis()).unwrap_or(u64::MAX);
        let mut redis = self.redis.clone();
        let script = Script::new(script);
        let mut invocation = script.key(&key);
        invocation.arg(window_ms);
        let reply = tokio::time::timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async::<(u64, i64)>(&mut redis),
        )
        .await;
        let (count, ttl_ms) = match reply {
            Ok(Ok(reply)) => reply,
            _ => {
                self.warn_unavailable(limit);
                return Decision::Allowed;
            }
        };
        // `hit` has counted this request; `check` tells whether one more would pass.
        let over = if counting {
            count > limit.max
        } else {
            count >= limit.max
        };
        if !over {
            return Decision::Allowed;
        }
        let ttl = u64::try_from(ttl_ms).unwrap_or(window_ms);
        Decision::Limited {
            retry_after: Duration::from_millis(ttl),
        }
    }

    fn key(&self, limit: &Limit, subject: &str) -> String {
        format!("{}{}:{}", self.prefix, limit.name, subject)
    }

    fn warn_unavailable(&self, limit: &Limit) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let last = self.last_warning.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_INTERVAL_SECS
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                limit = limit.name,
                "Redis did not reply to the rate limiter; letting requests through"
            );
        }
    }
}

/// Whole seconds to send in `Retry-After`, at least 1.
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    retry_after.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn limiter() -> RateLimiter {
        let url =
            meridian_event_log::settings::var_or("MERIDIAN_REDIS_URL", "redis://127.0.0.1:6379/");
        RateLimiter::new(&url, &format!("test.{}.", Uuid::new_v4().simple())).unwrap()
    }

    const LIMIT: Limit = Limit {
        name: "test",
        max: 3,
        window: Duration::from_secs(30),
    };

    #[tokio::test]
    async fn counts_up_to_the_limit_then_limits_until_the_window_ends() {
        let limiter = limiter();
        for _ in 0..3 {
            assert_eq!(limiter.hit(&LIMIT, "a").await, Decision::Allowed);
        }
        match limiter.hit(&LIMIT, "a").await {
            Decision::Limited { retry_after } => {
                assert!(retry_after <= LIMIT.window);
                assert!(retry_after > Duration::from_secs(25));
                let whole_seconds = retry_after.as_millis().div_ceil(1000) as u64;
                assert_eq!(retry_after_secs(retry_after), whole_seconds);
            }
            Decision::Allowed => panic!("the fourth hit must be limited"),
        }
        // Other subjects have their own counters.
        assert_eq!(limiter.hit(&LIMIT, "b").await, Decision::Allowed);
        limiter.reset(&LIMIT, "a").await;
        assert_eq!(limiter.hit(&LIMIT, "a").await, Decision::Allowed);
    }

    #[tokio::test]
    async fn check_does_not_count() {
        let limiter = limiter();
        for _ in 0..10 {
            assert_eq!(limiter.check(&LIMIT, "a").await, Decision::Allowed);
        }
        for _ in 0..3 {
            limiter.hit(&LIMIT, "a").await;
        }
        assert!(matches!(
            limiter.check(&LIMIT, "a").await,
            Decision::Limited { .. }
        ));
    }

    #[tokio::test]
    async fn windows_expire() {
        let limiter = limiter();
        let short = Limit {
            window: Duration::from_millis(200),
            ..LIMIT
        };
        for _ in 0..4 {
            limiter.hit(&short, "a").await;
        }
        assert!(matches!(
            limiter.check(&short, "a").await,
            Decision::Limited { .. }
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(limiter.hit(&short, "a").await, Decision::Allowed);
    }

    #[tokio::test]
    async fn unreachable_redis_lets_requests_through() {
        // Port 1 has no server on 127.0.0.1.
        let limiter = RateLimiter::new("redis://127.0.0.1:1/", "test.").unwrap();
        for _ in 0..5 {
            assert_eq!(limiter.hit(&LIMIT, "a").await, Decision::Allowed);
        }
    }
}
