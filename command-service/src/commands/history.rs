//! The report history of the `LocationTrack` aggregate, read from the event store.

use async_trait::async_trait;
use cqrs_es::Aggregate;
use meridian_crypto::EventCipher;
use meridian_domain::location::{LocationEvent, LocationReport, LocationTrack, ReportHistory};
use serde_json::Value;
use sqlx::PgPool;

/// Looks reports up among the stored `LocationRecorded` events of one user.
///
/// Coordinates are sealed in the store, so the lookup selects the events with the report's
/// timestamp, which is stored in plaintext, and compares the opened coordinates.
pub struct PgReportHistory {
    pool: PgPool,
    cipher: EventCipher,
}

impl PgReportHistory {
    pub fn new(pool: PgPool, cipher: EventCipher) -> Self {
        Self { pool, cipher }
    }
}

#[async_trait]
impl ReportHistory for PgReportHistory {
    async fn contains(&self, user_id: &str, report: &LocationReport) -> Result<bool, String> {
        let payloads: Vec<Value> = sqlx::query_scalar(
            "SELECT payload FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = 'LocationRecorded' \
               AND (payload -> 'LocationRecorded' ->> 'recorded_at')::timestamptz = $3",
        )
        .bind(LocationTrack::TYPE)
        .bind(user_id)
        .bind(report.recorded_at)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| format!("failed to look up a stored location report: {error}"))?;

        for mut payload in payloads {
            self.cipher
                .open_event(user_id, "LocationRecorded", &mut payload)
                .await
                .map_err(|error| format!("failed to open a stored location report: {error}"))?;
            let LocationEvent::LocationRecorded {
                latitude,
                longitude,
                ..
            } = serde_json::from_value(payload)
                .map_err(|error| format!("stored location report does not decode: {error}"))?;
            if latitude == report.latitude && longitude == report.longitude {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
