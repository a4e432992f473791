//! The report history of the `LocationTrack` aggregate, read from the event store.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use meridian_domain::location::{LocationReport, LocationTrack, ReportHistory};
use sqlx::PgPool;

/// Looks reports up among the stored `LocationRecorded` events of one user.
pub struct PgReportHistory {
    pool: PgPool,
}

impl PgReportHistory {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl ReportHistory for PgReportHistory {
    async fn contains(&self, user_id: &str, report: &LocationReport) -> Result<bool, String> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = 'LocationRecorded' \
               AND (payload -> 'LocationRecorded' ->> 'recorded_at')::timestamptz = $3 \
               AND (payload -> 'LocationRecorded' ->> 'latitude')::float8 = $4 \
               AND (payload -> 'LocationRecorded' ->> 'longitude')::float8 = $5)",
        )
        .bind(LocationTrack::TYPE)
        .bind(user_id)
        .bind(report.recorded_at)
        .bind(report.latitude)
        .bind(report.longitude)
        .fetch_one(&self.pool)
        .await
        .map_err(|error| format!("failed to look up a stored location report: {error}"))
    }
}
