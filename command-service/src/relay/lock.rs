//! The relay lock: a session-level PostgreSQL advisory lock on a dedicated connection.
//!
//! PostgreSQL releases the lock when that connection ends, so a relay killed with SIGKILL
//! frees it for the next one.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use tracing::info;

use super::{wait_or_stop, Stop};

/// The two-key form of the advisory lock; it never collides with the one-key (bigint) locks
/// the command service takes on idempotency keys.
pub const RELAY_LOCK_KEYS: (i32, i32) = (0x4d52_4c59, 1);
/// How often a waiting relay tries the lock again.
const RETRY_INTERVAL: Duration = Duration::from_millis(500);

/// Proof that this process is the one relay of its database.
pub struct RelayLock {
    connection: PgConnection,
}

impl RelayLock {
    /// Waits until the lock is free and takes it. Returns `None` when the stop signal arrives
    /// first.
    pub async fn acquire(database_url: &str, stop: &mut Stop) -> anyhow::Result<Option<Self>> {
        let mut connection = PgConnection::connect(database_url)
            .await
            .context("failed to open the relay lock connection")?;
        let mut logged_wait = false;
        loop {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(RELAY_LOCK_KEYS.0)
                .bind(RELAY_LOCK_KEYS.1)
                .fetch_one(&mut connection)
                .await
                .context("failed to try the relay lock")?;
            if locked {
                info!("took the relay lock");
                return Ok(Some(Self { connection }));
            }
            if !logged_wait {
                info!("relay lock is taken by another outbox relay; waiting for it");
                logged_wait = true;
            }
            if wait_or_stop(stop, RETRY_INTERVAL).await {
                return Ok(None);
            }
        }
    }

    /// Fails when the lock connection is gone, since PostgreSQL then released the lock.
    pub async fn ensure_held(&mut self) -> anyhow::Result<()> {
        self.connection
            .ping()
            .await
            .context("lost the relay lock connection")
    }
}
