//! `GET /v1/events`: the event store in position order, for analysts who replay history.
//!
//! Payloads are returned as stored, so the personal fields that the command service seals
//! (names, email addresses) stay ciphertext. Metadata, which contains the caller's address
//! and user agent, is not returned at all.

use anyhow::Context;
use axum::extract::rejection::QueryRejection;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use meridian_auth::Role;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::FromRow;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::extract::invalid_query;
use crate::AppState;

/// Events per page when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest accepted `limit`.
pub const MAX_LIMIT: i64 = 1000;
/// Longest accepted `type`, in bytes; event types are short identifiers.
const MAX_EVENT_TYPE_LEN: usize = 64;

/// One stored event.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredEvent {
    /// Global position of the event in the event store.
    pub position: i64,
    #[schema(example = "LocationTrack")]
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// Sequence of the event within its aggregate.
    pub sequence: i64,
    #[schema(example = "LocationRecorded")]
    pub event_type: String,
    pub event_version: String,
    /// The payload byte for byte as the event store contains it, with personal fields sealed.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    /// When the transaction that stored the event started.
    pub stored_at: DateTime<Utc>,
}

/// One page of events, ordered by position.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// The `after` of the next page, or null when this page ends at the newest matching
    /// event.
    // NOTE: positions are taken when a transaction inserts, not when it commits. An event
    // of a slow transaction can appear below a position a client already paged past, and
    // paging on with `after` then skips it.
    pub next_after: Option<i64>,
}

/// Query string of the replay, taken as text so that each parameter is checked with its
/// own message.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this position: 0 (the default) for the first page, then the
    /// `next_after` of the previous page.
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
    /// Events per page, 1 to 1000; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// Only events of this type, such as `LocationRecorded`.
    #[serde(rename = "type")]
    #[param(rename = "type", example = "LocationRecorded")]
    pub event_type: Option<String>,
}

/// [`EventsQuery`] after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventRange {
    after: i64,
    limit: i64,
    event_type: Option<String>,
}

impl EventsQuery {
    fn validate(&self) -> Result<EventRange, ApiError> {
        let after = match self.after.as_deref() {
            None => 0,
            Some(raw) => parse_after(raw)?,
        };
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(raw) => parse_limit(raw)?,
        };
        let event_type = self
            .event_type
            .as_deref()
            .map(parse_event_type)
            .transpose()?;
        Ok(EventRange {
            after,
            limit,
            event_type,
        })
    }
}

fn parse_after(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(after) if after >= 0 => Ok(after),
        _ => Err(ApiError::invalid_field(
            "after",
            format!("{raw:?} is not a position: expected an integer of at least 0"),
        )),
    }
}

fn parse_limit(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ApiError::invalid_field(
            "limit",
            format!("{raw:?} is not an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// Checks that `raw` looks like an event type: an ASCII letter followed by letters, digits
/// or underscores.
fn parse_event_type(raw: &str) -> Result<String, ApiError> {
    let valid = raw.len() <= MAX_EVENT_TYPE_LEN
        && raw.starts_with(|first: char| first.is_ascii_alphabetic())
        && raw
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_');
    if !valid {
        return Err(ApiError::invalid_field(
            "type",
            format!(
                "must be an event type such as LocationRecorded: a letter, then letters, \
                 digits or underscores, at most {MAX_EVENT_TYPE_LEN} bytes"
            ),
        ));
    }
    Ok(raw.to_owned())
}

/// An event as the query reads it, with the payload as text.
#[derive(Debug, FromRow)]
struct EventRow {
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    stored_at: DateTime<Utc>,
}

impl EventRow {
    fn into_event(self) -> anyhow::Result<StoredEvent> {
        let payload = RawValue::from_string(self.payload)
            .with_context(|| format!("payload of event {} is not JSON", self.position))?;
        Ok(StoredEvent {
            position: self.position,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload,
            stored_at: self.stored_at,
        })
    }
}

/// Replay the event store: stored events in position order, with their payloads as stored.
/// Admins and analysts only.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "One page of events, in position order", body = EventPage),
        (status = 400, description = "after, limit or type is invalid, and `field` names it", body = ErrorBody),
        (status = 403, description = "The caller is neither an admin nor an analyst", body = ErrorBody),
    )
)]
pub async fn list_events(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    query: Result<axum::extract::Query<EventsQuery>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    caller.require_role(&[Role::Admin, Role::Analyst])?;
    let axum::extract::Query(query) = query.map_err(invalid_query)?;
    let range = query.validate()?;

    // One row more than the page shows whether another page follows.
    // NOTE: no index covers event_type. With `type`, the scan walks the position index and
    // skips other types, so a rare type among millions of events can take seconds.
    let mut rows = sqlx::query_as::<_, EventRow>(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload::text AS payload, stored_at
         FROM events
         WHERE position > $1 AND ($2::text IS NULL OR event_type = $2)
         ORDER BY position
         LIMIT $3",
    )
    .bind(range.after)
    .bind(range.event_type.as_deref())
    .bind(range.limit + 1)
    .fetch_all(&state.pool)
    .await?;

    let page_size = usize::try_from(range.limit).unwrap_or(usize::MAX);
    let has_more = rows.len() > page_size;
    rows.truncate(page_size);
    let next_after = rows.last().filter(|_| has_more).map(|row| row.position);
    let events = rows
        .into_iter()
        .map(EventRow::into_event)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Json(EventPage { events, next_after }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(after: Option<&str>, limit: Option<&str>, event_type: Option<&str>) -> EventsQuery {
        EventsQuery {
            after: after.map(str::to_owned),
            limit: limit.map(str::to_owned),
            event_type: event_type.map(str::to_owned),
        }
    }

    fn rejected_field(query: EventsQuery) -> String {
        match query.validate() {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_without_parameters() {
        let range = EventsQuery::default().validate().unwrap();
        assert_eq!(
            range,
            EventRange {
                after: 0,
                limit: DEFAULT_LIMIT,
                event_type: None,
            }
        );
    }

    #[test]
    fn bounds_are_accepted() {
        let range = query(Some("0"), Some("1000"), Some("UserRegistered"))
            .validate()
            .unwrap();
        assert_eq!(range.limit, MAX_LIMIT);
        assert_eq!(range.event_type.as_deref(), Some("UserRegistered"));
        assert_eq!(query(None, Some("1"), None).validate().unwrap().limit, 1);
    }

    #[test]
    fn bad_after_names_after() {
        for raw in ["-1", "abc", "", "1.5", "99999999999999999999"] {
            assert_eq!(
                rejected_field(query(Some(raw), None, None)),
                "after",
                "{raw:?}"
            );
        }
    }

    #[test]
    fn bad_limit_names_limit() {
        for raw in ["0", "1001", "-5", "ten", ""] {
            assert_eq!(
                rejected_field(query(None, Some(raw), None)),
                "limit",
                "{raw:?}"
            );
        }
    }

    #[test]
    fn bad_type_names_type() {
        let long = "A".repeat(MAX_EVENT_TYPE_LEN + 1);
        for raw in [
            "",
            "1Event",
            "Location Recorded",
            "x'; DROP",
            "Événement",
            &long,
        ] {
            assert_eq!(
                rejected_field(query(None, None, Some(raw))),
                "type",
                "{raw:?}"
            );
        }
    }
}
