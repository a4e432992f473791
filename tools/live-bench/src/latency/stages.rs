//! Splits the latency at two timestamps that PostgreSQL records: `events.stored_at` (the
//! start of the command's transaction) and `rm_updates.committed_at` (the start of the
//! read-models projection's transaction that folded the event). Both use `now()`, so each
//! is the start of its transaction, not its commit.

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;

/// Store and projection times of one event, in ms since the epoch.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct EventTimes {
    pub position: i64,
    pub stored_ms: f64,
    pub projected_ms: f64,
}

/// Reads the store and projection times of the events at `positions`.
pub async fn event_times(database_url: &str, positions: &[i64]) -> anyhow::Result<Vec<EventTimes>> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(database_url)
        .await
        .context("failed to connect to --database-url")?;
    let times = sqlx::query_as::<_, EventTimes>(
        "SELECT e.position,
                (extract(epoch FROM e.stored_at) * 1000)::float8 AS stored_ms,
                (extract(epoch FROM u.committed_at) * 1000)::float8 AS projected_ms
         FROM events e
         JOIN rm_updates u ON u.position = e.position
         WHERE e.position = ANY($1)",
    )
    .bind(positions)
    .fetch_all(&pool)
    .await
    .context("failed to read events.stored_at and rm_updates.committed_at")?;
    pool.close().await;
    Ok(times)
}
