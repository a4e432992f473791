//! `GET /v1/stats`: row counts and how far each projection lags behind the event store.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use meridian_auth::Role;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::AppState;

/// Projections whose lag is reported, by the name they store in `projection_offsets`.
pub const PROJECTIONS: [&str; 2] = ["read-models", "analytics"];

/// Counts of the event store and read models.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Stats {
    /// Rows in `rm_users`.
    pub users: i64,
    /// Stored events of every aggregate type.
    pub events: i64,
    /// Stored events of `LocationTrack` aggregates.
    pub location_events: i64,
    /// Rows in `rm_location_history`.
    pub location_history: i64,
    /// Stored events not yet published to Kafka.
    pub outbox_pending: i64,
    /// Lag of each projection, by name.
    pub projections: BTreeMap<String, ProjectionLag>,
}

/// How many stored events a projection has not consumed yet.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct ProjectionLag {
    /// Events published but not consumed, plus events not yet published; 0 when caught up.
    pub lag: i64,
}

#[derive(Debug, sqlx::FromRow)]
struct Counts {
    users: i64,
    events: i64,
    location_events: i64,
    location_history: i64,
    outbox_pending: i64,
    published: i64,
}

#[utoipa::path(
    get,
    path = "/v1/stats",
    tag = "stats",
    responses(
        (status = 200, description = "Counts and projection lag", body = Stats),
        (status = 403, description = "The caller is neither an admin nor an analyst", body = ErrorBody),
        (status = 500, description = "The database query failed", body = ErrorBody),
    )
)]
pub async fn get_stats(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
) -> Result<Json<Stats>, ApiError> {
    caller.require_role(&[Role::Admin, Role::Analyst])?;

    // One statement, so every count comes from one snapshot.
    // NOTE: count(*) scans the tables; on millions of events this takes seconds.
    let counts = sqlx::query_as::<_, Counts>(
        "SELECT
            (SELECT count(*) FROM rm_users) AS users,
            event_counts.events,
            event_counts.location_events,
            (SELECT count(*) FROM rm_location_history) AS location_history,
            (SELECT count(*) FROM outbox) AS outbox_pending,
            (SELECT coalesce(sum(next_offset), 0)::bigint
             FROM relay_checkpoints WHERE topic = $1) AS published
         FROM (SELECT count(*) AS events,
                      count(*) FILTER (WHERE aggregate_type = 'LocationTrack')
                          AS location_events
               FROM events) AS event_counts",
    )
    .bind(&state.events_topic)
    .fetch_one(&state.pool)
    .await?;

    let consumed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT projection, coalesce(sum(next_offset), 0)::bigint
         FROM projection_offsets
         WHERE topic = $1 AND projection = ANY($2)
         GROUP BY projection",
    )
    .bind(&state.events_topic)
    .bind(PROJECTIONS.as_slice())
    .fetch_all(&state.pool)
    .await?;

    let projections = PROJECTIONS
        .iter()
        .map(|name| {
            let consumed = consumed
                .iter()
                .find(|(projection, _)| projection == name)
                .map_or(0, |(_, next_offset)| *next_offset);
            let lag = counts.published - consumed + counts.outbox_pending;
            ((*name).to_owned(), ProjectionLag { lag })
        })
        .collect();

    Ok(Json(Stats {
        users: counts.users,
        events: counts.events,
        location_events: counts.location_events,
        location_history: counts.location_history,
        outbox_pending: counts.outbox_pending,
        projections,
    }))
}
