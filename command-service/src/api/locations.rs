//! `POST /v1/users/{id}/locations`: one report, or a batch of up to 1000.

use std::collections::HashSet;

use axum::extract::State;
use axum::{Extension, Json};
use chrono::{DateTime, SubsecRound, Utc};
use meridian_domain::location::{LocationReport, LocationTrack, RecordLocations};
use meridian_domain::FieldError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::Authenticated;
use super::error::{ApiError, ErrorBody};
use super::extract::{from_value, JsonBody, RequestOrigin, UserId};
use super::idempotency::IdempotencyKey;
use super::{event_metadata, require_active_user, AppState};
use crate::commands::{with_retries, Committed};

/// One position fix.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportRequest {
    /// Degrees, -90 to 90.
    #[schema(example = 40.6401)]
    pub latitude: f64,
    /// Degrees, -180 to 180.
    #[schema(example = -74.0745)]
    pub longitude: f64,
    /// RFC 3339; at most 5 minutes after the time the request arrives. Stored to the
    /// microsecond.
    #[schema(example = "2020-12-01T00:00:05Z")]
    pub recorded_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 1000 reports, accepted or rejected as a whole.
    pub reports: Vec<ReportRequest>,
}

/// Either one report or a batch (an object with `reports`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RecordLocationsRequest {
    Batch(BatchRequest),
    Single(ReportRequest),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecordLocationsResponse {
    #[schema(format = Uuid)]
    pub user_id: String,
    /// Reports in the request.
    pub accepted: usize,
    /// Events stored; a report already stored is a no-op.
    pub stored: usize,
    pub first_sequence: Option<i64>,
    pub last_sequence: Option<i64>,
    /// Greatest global position of the stored events; null when nothing was stored.
    pub position: Option<i64>,
}

impl RecordLocationsResponse {
    pub fn new(committed: Committed, accepted: usize) -> Self {
        Self {
            user_id: committed.aggregate_id,
            accepted,
            stored: committed.stored,
            first_sequence: committed.first_sequence,
            last_sequence: committed.last_sequence,
            position: committed.position,
        }
    }
}

/// Record location reports of a user.
#[utoipa::path(
    post,
    path = "/v1/users/{id}/locations",
    tag = "locations",
    params(
        ("id" = String, Path, format = Uuid, description = "User id"),
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 200 visible ASCII characters; a repeat returns the first result"),
    ),
    request_body = RecordLocationsRequest,
    responses(
        (status = 200, description = "Reports recorded; duplicates store nothing", body = RecordLocationsResponse),
        (status = 400, description = "Body is not JSON", body = ErrorBody),
        (status = 404, description = "Unknown user", body = ErrorBody),
        (status = 409, description = "User deactivated, or idempotency key in use", body = ErrorBody),
        (status = 413, description = "Body larger than 1 MiB", body = ErrorBody),
        (status = 422, description = "A report is invalid; nothing is stored", body = ErrorBody),
    )
)]
pub async fn record_locations(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
    origin: RequestOrigin,
    idempotency_key: Option<Extension<IdempotencyKey>>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<RecordLocationsResponse>, ApiError> {
    caller.require_write_access_to(&user_id)?;
    let received_at = Utc::now();
    let reports = parse_reports(body, received_at)?;
    let accepted = reports.len();
    let command = RecordLocations {
        user_id: user_id.clone(),
        reports: without_repeats(reports),
        received_at,
    };
    let metadata = event_metadata(origin, idempotency_key, received_at);

    let (state, id, command, metadata) = (&state, &user_id, &command, &metadata);
    let committed = with_retries(&state.retry, move || async move {
        require_active_user(state, id).await?;
        state
            .locations
            .execute(id, vec![command.clone()], metadata)
            .await
            .map_err(ApiError::from)
    })
    .await?;
    Ok(Json(RecordLocationsResponse::new(committed, accepted)))
}

/// Parses and validates the body: a batch when it is an object with `reports`, else one report.
fn parse_reports(body: Value, received_at: DateTime<Utc>) -> Result<Vec<LocationReport>, ApiError> {
    if is_batch(&body) {
        let batch: BatchRequest = from_value(body)?;
        let reports = batch
            .reports
            .iter()
            .enumerate()
            .map(|(index, report)| to_report(report, &format!("reports[{index}].")))
            .collect::<Result<Vec<_>, _>>()?;
        LocationTrack::validate_batch(&reports, received_at)?;
        Ok(reports)
    } else {
        let request: ReportRequest = from_value(body)?;
        let report = to_report(&request, "")?;
        report.validate("", received_at)?;
        Ok(vec![report])
    }
}

fn is_batch(body: &Value) -> bool {
    body.as_object()
        .is_some_and(|object| object.contains_key("reports"))
}

/// Returns the number of reports in a request body that [`record_locations`] accepted.
pub fn count_reports(body: &[u8]) -> Option<usize> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if is_batch(&value) {
        value["reports"].as_array().map(Vec::len)
    } else {
        Some(1)
    }
}

fn to_report(request: &ReportRequest, prefix: &str) -> Result<LocationReport, FieldError> {
    let recorded_at = DateTime::parse_from_rfc3339(&request.recorded_at)
        .map_err(|error| {
            FieldError::new(
                format!("{prefix}recorded_at"),
                format!(
                    "{:?} is not an RFC 3339 timestamp such as 2020-12-01T00:00:05Z: {error}",
                    request.recorded_at
                ),
            )
        })?
        .with_timezone(&Utc)
        // PostgreSQL keeps microseconds; truncating here makes stored and compared values agree.
        .trunc_subsecs(6);
    Ok(LocationReport {
        latitude: request.latitude,
        longitude: request.longitude,
        recorded_at,
    })
}

/// Drops repeats of a report within one request, keeping the first. The aggregate would skip
/// them as well, except in a batch of more than its recent window, where an uncommitted repeat
/// is not yet in the history it consults.
fn without_repeats(reports: Vec<LocationReport>) -> Vec<LocationReport> {
    let mut seen = HashSet::with_capacity(reports.len());
    reports
        .into_iter()
        .filter(|report| {
            seen.insert((
                report.recorded_at.timestamp_micros(),
                report.latitude.to_bits(),
                report.longitude.to_bits(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        "2020-12-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn single_report_is_parsed() {
        let body =
            json!({"latitude": 40.5, "longitude": -74.0, "recorded_at": "2020-12-01T00:00:00Z"});
        let reports = parse_reports(body, now()).unwrap();
        assert_eq!(reports.len(), 1);
    }

    #[test]
    fn single_report_error_names_plain_field() {
        let body =
            json!({"latitude": 91.0, "longitude": -74.0, "recorded_at": "2020-12-01T00:00:00Z"});
        match parse_reports(body, now()) {
            Err(ApiError::Validation(error)) => assert_eq!(error.field, "latitude"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn bad_timestamp_in_batch_is_named() {
        let body = json!({"reports": [
            {"latitude": 1.0, "longitude": 2.0, "recorded_at": "2020-12-01T00:00:00Z"},
            {"latitude": 1.0, "longitude": 2.0, "recorded_at": "yesterday"},
        ]});
        match parse_reports(body, now()) {
            Err(ApiError::Validation(error)) => assert_eq!(error.field, "reports[1].recorded_at"),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn nanoseconds_are_truncated_to_microseconds() {
        let body = json!({"latitude": 1.0, "longitude": 2.0, "recorded_at": "2020-12-01T00:00:00.123456789Z"});
        let reports = parse_reports(body, now()).unwrap();
        assert_eq!(reports[0].recorded_at.timestamp_subsec_nanos(), 123_456_000);
    }

    #[test]
    fn repeats_within_request_are_dropped() {
        let report = LocationReport {
            latitude: 1.0,
            longitude: 2.0,
            recorded_at: now(),
        };
        assert_eq!(without_repeats(vec![report, report]).len(), 1);
    }

    #[test]
    fn count_reports_reads_batch_length() {
        let body = br#"{"reports":[{"latitude":1},{"latitude":2}]}"#;
        assert_eq!(count_reports(body), Some(2));
    }
}
