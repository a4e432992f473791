//! Checks whether the read-models projection has processed the event at a position, and
//! polls PostgreSQL until it has or the wait runs out.
//!
//! The projection stores the last sequence it processed per aggregate in `rm_applied`.
//! The event at a position has reached the read models when the sequence of that event is
//! at most `rm_applied.last_sequence` of its aggregate.
//!
//! A position with no event has two cases:
//! - above the highest stored position: no command has returned it yet, so it counts as
//!   not reached and the request ends with 503 once the wait runs out;
//! - below the highest stored position: a hole left by a rolled-back transaction, because
//!   the command service returns a position only after its transaction commits and events
//!   are never deleted. Nothing will ever be stored there, so it counts as reached.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::error::{ApiError, ReadProgress};

/// Delay before the second check.
const FIRST_POLL_DELAY: Duration = Duration::from_millis(5);
/// Maximum delay between two checks. The delay doubles from [`FIRST_POLL_DELAY`] up to it.
const MAX_POLL_DELAY: Duration = Duration::from_millis(50);

/// State of one position as the read models see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PositionState {
    /// The projection has processed the event, or the position is a hole.
    Reached,
    /// The event is stored, but the projection has not processed it yet.
    Behind(ReadProgress),
    /// No event has this position yet.
    NotStored,
}

/// Row of the progress query. Every column but `is_hole` is NULL when no event has the
/// position.
#[derive(Debug, sqlx::FromRow)]
struct ProgressRow {
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    sequence: Option<i64>,
    processed_sequence: Option<i64>,
    is_hole: bool,
}

/// Looks up the event at `position` and the projection's progress on its aggregate, in
/// one query.
pub async fn position_state(pool: &PgPool, position: i64) -> Result<PositionState, sqlx::Error> {
    let row = sqlx::query_as::<_, ProgressRow>(
        "SELECT e.aggregate_type, e.aggregate_id, e.sequence,
                a.last_sequence AS processed_sequence,
                COALESCE(e.position IS NULL
                         AND $1 < (SELECT max(position) FROM events), false) AS is_hole
         FROM (SELECT $1::bigint AS position) AS target
         LEFT JOIN events AS e ON e.position = target.position
         LEFT JOIN rm_applied AS a
                ON a.aggregate_type = e.aggregate_type AND a.aggregate_id = e.aggregate_id",
    )
    .bind(position)
    .fetch_one(pool)
    .await?;

    let state = match row {
        ProgressRow { is_hole: true, .. } => PositionState::Reached,
        ProgressRow {
            aggregate_type: Some(aggregate_type),
            aggregate_id: Some(aggregate_id),
            sequence: Some(sequence),
            processed_sequence,
            ..
        } => {
            if processed_sequence.is_some_and(|processed| processed >= sequence) {
                PositionState::Reached
            } else {
                PositionState::Behind(ReadProgress {
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    processed_sequence,
                })
            }
        }
        _ => PositionState::NotStored,
    };
    Ok(state)
}

/// Polls [`position_state`] until the position is reached, backing off from 5 ms to 50 ms
/// between checks. Fails with [`ApiError::NotYetConsistent`] when `max_wait` has passed,
/// after one last check at the deadline.
pub async fn wait_until_processed(
    pool: &PgPool,
    min_position: i64,
    max_wait: Duration,
) -> Result<(), ApiError> {
    let started = Instant::now();
    let deadline = started + max_wait;
    let mut delay = FIRST_POLL_DELAY;

    loop {
        let state = position_state(pool, min_position).await.map_err(|error| {
            ApiError::Internal(anyhow::Error::new(error).context(format!(
                "failed to check whether position {min_position} is processed"
            )))
        })?;
        let progress = match state {
            PositionState::Reached => {
                tracing::debug!(
                    min_position,
                    waited_ms = started.elapsed().as_millis(),
                    "read models reached the requested position"
                );
                return Ok(());
            }
            PositionState::Behind(progress) => Some(progress),
            PositionState::NotStored => None,
        };

        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(
                min_position,
                max_wait_ms = max_wait.as_millis(),
                event_stored = progress.is_some(),
                "timed out waiting for the read models to reach the requested position"
            );
            return Err(ApiError::NotYetConsistent {
                min_position,
                max_wait_ms: max_wait.as_millis(),
                progress,
            });
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(MAX_POLL_DELAY);
    }
}
