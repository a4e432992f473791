//! `GET /v1/users/{id}/location` and `GET /v1/users/{id}/locations`.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{require_access_to, Authenticated};
use crate::cursor::Cursor;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Query, UserId};
use crate::routes::users::user_exists;
use crate::AppState;

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 100;
/// Largest accepted `limit`.
pub const MAX_LIMIT: i64 = 1000;

/// The most recent location of a user, from `rm_latest_locations`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct LatestLocation {
    pub user_id: Uuid,
    pub latitude: f64,
    pub longitude: f64,
    /// When the device recorded the fix.
    pub recorded_at: DateTime<Utc>,
    /// Sequence of the `LocationRecorded` event in the user's `LocationTrack`.
    pub sequence: i64,
    /// Global position of that event.
    pub position: i64,
    pub event_id: Uuid,
}

/// One recorded location of the history.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct LocationItem {
    pub latitude: f64,
    pub longitude: f64,
    pub recorded_at: DateTime<Utc>,
    pub sequence: i64,
    pub event_id: Uuid,
}

/// A page of location history.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LocationPage {
    /// Locations ordered by `recorded_at`, then `sequence`.
    pub items: Vec<LocationItem>,
    /// Value to pass as `cursor` for the next page, or null on the last page.
    pub next_cursor: Option<String>,
}

/// Query string of the history, kept as text so each parameter is validated with its
/// own message.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Earliest `recorded_at` included, RFC 3339 (encode `+` as `%2B`).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// `recorded_at` before which the history ends (excluded), RFC 3339.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Page size, 1 to 1000; default 100.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// [`HistoryQuery`] after validation.
#[derive(Debug, Clone, PartialEq)]
struct HistoryRange {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: i64,
    after: Option<Cursor>,
}

impl HistoryQuery {
    fn validate(&self) -> Result<HistoryRange, ApiError> {
        let from = self
            .from
            .as_deref()
            .map(|raw| parse_timestamp("from", raw))
            .transpose()?;
        let to = self
            .to
            .as_deref()
            .map(|raw| parse_timestamp("to", raw))
            .transpose()?;
        if let (Some(from), Some(to)) = (from, to) {
            if to <= from {
                return Err(ApiError::validation("to", "must be later than from"));
            }
        }
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(raw) => parse_limit(raw)?,
        };
        let after = match self.cursor.as_deref() {
            None => None,
            Some(raw) => Some(Cursor::decode(raw).ok_or_else(|| {
                ApiError::validation("cursor", "is not a next_cursor returned by this endpoint")
            })?),
        };
        Ok(HistoryRange {
            from,
            to,
            limit,
            after,
        })
    }
}

fn parse_timestamp(field: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| {
            ApiError::validation(
                field,
                format!(
                    "{raw:?} is not an RFC 3339 timestamp such as 2020-06-30T00:00:00Z \
                     ({error}; encode + as %2B)"
                ),
            )
        })
}

fn parse_limit(raw: &str) -> Result<i64, ApiError> {
    let out_of_range =
        || ApiError::validation("limit", format!("must be an integer from 1 to {MAX_LIMIT}"));
    let limit: i64 = raw.trim().parse().map_err(|_| out_of_range())?;
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(out_of_range());
    }
    Ok(limit)
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/location",
    tag = "locations",
    params(("id" = Uuid, Path, description = "User id")),
    responses(
        (status = 200, description = "The user's latest location", body = LatestLocation),
        (status = 403, description = "The caller is neither this user, an admin nor an analyst", body = ErrorBody),
        (status = 404, description = "No location stored for this user", body = ErrorBody),
        (status = 422, description = "The id is not a UUID", body = ErrorBody),
    )
)]
pub async fn get_latest_location(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
) -> Result<Json<LatestLocation>, ApiError> {
    require_access_to(&caller, user_id, true)?;
    let location = sqlx::query_as::<_, LatestLocation>(
        "SELECT user_id, latitude, longitude, recorded_at, sequence, position, event_id
         FROM rm_latest_locations WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await?;
    location
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no location stored for user {user_id}")))
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}/locations",
    tag = "locations",
    params(("id" = Uuid, Path, description = "User id"), HistoryQuery),
    responses(
        (status = 200, description = "A page of the user's location history", body = LocationPage),
        (status = 403, description = "The caller is neither this user, an admin nor an analyst", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "A parameter is invalid", body = ErrorBody),
    )
)]
pub async fn list_locations(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    UserId(user_id): UserId,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<LocationPage>, ApiError> {
    require_access_to(&caller, user_id, true)?;
    let range = query.validate()?;

    // Fetching one row more than the page shows whether another page follows.
    let mut items = sqlx::query_as::<_, LocationItem>(
        "SELECT latitude, longitude, recorded_at, sequence, event_id
         FROM rm_location_history
         WHERE user_id = $1
           AND ($2::timestamptz IS NULL OR recorded_at >= $2)
           AND ($3::timestamptz IS NULL OR recorded_at < $3)
           AND ($4::timestamptz IS NULL OR (recorded_at, sequence) > ($4, $5))
         ORDER BY recorded_at, sequence
         LIMIT $6",
    )
    .bind(user_id)
    .bind(range.from)
    .bind(range.to)
    .bind(range.after.map(|cursor| cursor.recorded_at))
    .bind(range.after.map_or(0, |cursor| cursor.sequence))
    .bind(range.limit + 1)
    .fetch_all(&state.pool)
    .await?;

    if items.is_empty() && !user_exists(&state.pool, user_id).await? {
        return Err(ApiError::not_found(format!("user {user_id} not found")));
    }

    let page_size = usize::try_from(range.limit).unwrap_or(usize::MAX);
    let has_more = items.len() > page_size;
    items.truncate(page_size);
    let next_cursor = match items.last() {
        Some(last) if has_more => Some(
            Cursor {
                recorded_at: last.recorded_at,
                sequence: last.sequence,
            }
            .encode(),
        ),
        _ => None,
    };
    Ok(Json(LocationPage { items, next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(from: Option<&str>, to: Option<&str>, limit: Option<&str>) -> HistoryQuery {
        HistoryQuery {
            from: from.map(str::to_owned),
            to: to.map(str::to_owned),
            limit: limit.map(str::to_owned),
            cursor: None,
        }
    }

    fn rejected_field(query: HistoryQuery) -> String {
        match query.validate() {
            Err(ApiError::Validation { field, .. }) => field,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_without_parameters() {
        let range = HistoryQuery::default().validate().unwrap();
        assert_eq!(range.limit, DEFAULT_LIMIT);
        assert_eq!(range.from, None);
    }

    #[test]
    fn offset_timestamps_are_converted_to_utc() {
        let range = query(Some("2020-06-30T02:00:00+02:00"), None, None)
            .validate()
            .unwrap();
        assert_eq!(range.from, "2020-06-30T00:00:00Z".parse().ok());
    }

    #[test]
    fn invalid_from_names_from() {
        assert_eq!(rejected_field(query(Some("yesterday"), None, None)), "from");
    }

    #[test]
    fn to_before_from_names_to() {
        let query = query(
            Some("2020-06-30T00:00:00Z"),
            Some("2020-06-29T00:00:00Z"),
            None,
        );
        assert_eq!(rejected_field(query), "to");
    }

    #[test]
    fn limit_out_of_range_names_limit() {
        for limit in ["0", "1001", "-1", "ten", ""] {
            assert_eq!(rejected_field(query(None, None, Some(limit))), "limit");
        }
    }

    #[test]
    fn limit_bounds_are_accepted() {
        assert_eq!(parse_limit("1").unwrap(), 1);
        assert_eq!(parse_limit("1000").unwrap(), 1000);
    }

    #[test]
    fn foreign_cursor_names_cursor() {
        let query = HistoryQuery {
            cursor: Some("bogus".into()),
            ..HistoryQuery::default()
        };
        assert_eq!(rejected_field(query), "cursor");
    }
}
