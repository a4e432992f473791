//! Sends the live updates of each committed batch to the query services through Redis, and
//! deletes updates older than the retention window.
//!
//! Publishing never holds up the projection: batches go through a bounded queue to one task
//! that owns the Redis connection. When Redis is down or the queue is full, updates are
//! dropped here. Query services then find a gap in `seq`, or time out waiting, and read the
//! rows from `rm_updates`, so subscribers get them later but still get them.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use meridian_event_log::live::{self, LiveUpdate};
use meridian_event_log::Settings;
use redis::AsyncCommands;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Default of `MERIDIAN_UPDATE_RETENTION_SECS`: one hour.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Batches waiting for Redis before new ones are dropped.
const QUEUE_CAPACITY: usize = 256;
/// Wait before connecting to Redis again after a failure.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Settings of live updates in the projection workers.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// `MERIDIAN_UPDATE_RETENTION_SECS`: how long `rm_updates` keeps a row, and so how far
    /// back a client can resume.
    pub retention: Duration,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            retention: DEFAULT_RETENTION,
        }
    }
}

impl LiveSettings {
    /// Reads `MERIDIAN_UPDATE_RETENTION_SECS`, a positive number of seconds.
    pub fn from_env() -> anyhow::Result<Self> {
        let Ok(raw) = std::env::var("MERIDIAN_UPDATE_RETENTION_SECS") else {
            return Ok(Self::default());
        };
        let seconds: u64 = raw
            .parse()
            .ok()
            .filter(|seconds| *seconds > 0)
            .with_context(|| {
                format!("MERIDIAN_UPDATE_RETENTION_SECS must be a positive integer, got {raw:?}")
            })?;
        Ok(Self {
            retention: Duration::from_secs(seconds),
        })
    }

    /// Returns how often old rows are deleted: a quarter of the retention, from 1 s to 60 s.
    fn prune_interval(&self) -> Duration {
        (self.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Handle to the task that publishes live updates.
#[derive(Debug, Clone)]
pub struct Publisher {
    queue: mpsc::Sender<Vec<LiveUpdate>>,
}

impl Publisher {
    /// Starts the publishing task and the pruning task; both stop with `shutdown`.
    pub fn start(
        settings: &Settings,
        live_settings: LiveSettings,
        pool: PgPool,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .with_context(|| format!("invalid MERIDIAN_REDIS_URL {:?}", settings.redis_url))?;
        let channel = live::updates_channel(&settings.topic_prefix);
        let (queue, batches) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(publish_batches(client, channel, batches, shutdown.clone()));
        tokio::spawn(prune_periodically(pool, live_settings, shutdown));
        Ok(Self { queue })
    }

    /// Queues `updates` for publishing, or drops them when the queue is full.
    pub fn publish(&self, updates: Vec<LiveUpdate>) {
        if updates.is_empty() {
            return;
        }
        if let Err(error) = self.queue.try_send(updates) {
            tracing::debug!(%error, "live updates not published; query services will read them from PostgreSQL");
        }
    }
}

async fn publish_batches(
    client: redis::Client,
    channel: String,
    mut batches: mpsc::Receiver<Vec<LiveUpdate>>,
    shutdown: CancellationToken,
) {
    let mut connection = None;
    let mut reported_down = false;
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => return,
            },
        };
        let payload = match serde_json::to_string(&batch) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!(%error, "cannot encode live updates");
                continue;
            }
        };
        if connection.is_none() {
            match client.get_multiplexed_async_connection().await {
                Ok(connected) => {
                    if reported_down {
                        tracing::info!("connected to Redis again; publishing live updates");
                        reported_down = false;
                    }
                    connection = Some(connected);
                }
                Err(error) => {
                    if !reported_down {
                        tracing::warn!(%error, "cannot reach Redis; live updates wait in PostgreSQL");
                        reported_down = true;
                    }
                    // Drop what queued up meanwhile: it is all in rm_updates.
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RECONNECT_DELAY) => {}
                    }
                    while batches.try_recv().is_ok() {}
                    continue;
                }
            }
        }
        let Some(redis) = connection.as_mut() else {
            continue;
        };
        let published: Result<i64, redis::RedisError> = redis.publish(&channel, payload).await;
        if let Err(error) = published {
            tracing::warn!(%error, "lost the Redis connection while publishing live updates");
            reported_down = true;
            connection = None;
        }
    }
}

async fn prune_periodically(pool: PgPool, settings: LiveSettings, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(settings.prune_interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Ok(retention) = chrono::Duration::from_std(settings.retention) else {
            return;
        };
        let cutoff = Utc::now() - retention;
        let pruned = async {
            let mut connection = pool.acquire().await?;
            live::prune(&mut connection, cutoff).await
        };
        match pruned.await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::debug!(deleted, "deleted live updates past the retention window")
            }
            Err(error) => tracing::warn!(%error, "failed to delete old live updates"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_interval_follows_retention_within_bounds() {
        let interval = |seconds| {
            LiveSettings {
                retention: Duration::from_secs(seconds),
            }
            .prune_interval()
        };

        assert_eq!(interval(2), Duration::from_secs(1));
        assert_eq!(interval(40), Duration::from_secs(10));
        assert_eq!(interval(3600), Duration::from_secs(60));
    }
}
