//! `GET /v1/locations/latest`: the latest location of every user, with the live-update
//! position to subscribe after.
//!
//! The locations and the position come from one REPEATABLE READ snapshot. The projection
//! numbers `rm_updates` rows in commit order and each row commits with the read-model
//! change it describes, so the snapshot contains exactly the updates up to the head row. A
//! client that subscribes with `after: position` therefore receives every later change
//! and none that the snapshot already shows.

use anyhow::Context;
use axum::extract::rejection::QueryRejection;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use meridian_auth::Role;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Authenticated;
use crate::error::{ApiError, ErrorBody};
use crate::extract::invalid_query;
use crate::geo::BoundingBox;
use crate::AppState;

/// Number of locations when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 1000;
/// Largest accepted `limit`.
pub const MAX_LIMIT: i64 = 10_000;

/// The latest location of one user.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, ToSchema)]
pub struct UserLocation {
    pub user_id: Uuid,
    /// The user's name. Null for an analyst, who reads locations but no personal data, and
    /// when `rm_users` has no row for the user.
    pub name: Option<String>,
    pub latitude: f64,
    pub longitude: f64,
    /// When the device recorded the fix.
    pub recorded_at: DateTime<Utc>,
    /// Sequence of the `LocationRecorded` event in the user's `LocationTrack`.
    pub sequence: i64,
    /// Global position of that event.
    pub position: i64,
}

/// The latest locations and the live-update position they include.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LocationSnapshot {
    /// Position of the newest live update that these locations include, or 0 when there
    /// has been none. Subscribe with `after` set to it to receive every later update.
    pub position: i64,
    /// Locations ordered by `user_id`.
    pub locations: Vec<UserLocation>,
    /// True when more users match than `limit` allowed.
    pub truncated: bool,
}

/// Parameters of the snapshot, taken as text and parsed here so that each error names
/// its parameter.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// `min_longitude,min_latitude,max_longitude,max_latitude` in degrees. Edges are
    /// included, and the box may not cross the antimeridian.
    #[param(example = "-74.1,40.6,-73.9,40.8")]
    pub bbox: Option<String>,
    /// Maximum number of locations, 1 to 10000; default 1000.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 10000)]
    pub limit: Option<String>,
}

/// Parses `min_lon,min_lat,max_lon,max_lat`, rejecting with a 400 that names `bbox`.
pub fn parse_bbox(raw: &str) -> Result<BoundingBox, ApiError> {
    let parts: Vec<&str> = raw.split(',').collect();
    let [min_longitude, min_latitude, max_longitude, max_latitude] = parts[..] else {
        return Err(ApiError::invalid_field(
            "bbox",
            format!(
                "must be four numbers min_lon,min_lat,max_lon,max_lat, got {} values in {raw:?}",
                parts.len()
            ),
        ));
    };
    BoundingBox::new(
        parse_degrees("min_lon", min_longitude)?,
        parse_degrees("min_lat", min_latitude)?,
        parse_degrees("max_lon", max_longitude)?,
        parse_degrees("max_lat", max_latitude)?,
    )
    .map_err(|reason| ApiError::invalid_field("bbox", reason))
}

/// Parses one corner coordinate of the box; [`BoundingBox::new`] checks its range.
fn parse_degrees(name: &str, raw: &str) -> Result<f64, ApiError> {
    raw.trim()
        .parse()
        .map_err(|_| ApiError::invalid_field("bbox", format!("{name} {raw:?} is not a number")))
}

fn parse_limit(raw: &str) -> Result<i64, ApiError> {
    let out_of_range = || {
        ApiError::invalid_field(
            "limit",
            format!("must be an integer from 1 to {MAX_LIMIT}, got {raw:?}"),
        )
    };
    let limit: i64 = raw.trim().parse().map_err(|_| out_of_range())?;
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(out_of_range());
    }
    Ok(limit)
}

#[utoipa::path(
    get,
    path = "/v1/locations/latest",
    tag = "locations",
    params(SnapshotQuery),
    responses(
        (status = 200, description = "The latest location of every user, with the live-update position they include", body = LocationSnapshot),
        (status = 400, description = "bbox, limit or the minimum position is invalid", body = ErrorBody),
        (status = 403, description = "The caller is neither an admin nor an analyst", body = ErrorBody),
    )
)]
pub async fn get_latest_locations(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    query: Result<axum::extract::Query<SnapshotQuery>, QueryRejection>,
) -> Result<Json<LocationSnapshot>, ApiError> {
    caller.require_role(&[Role::Admin, Role::Analyst])?;
    let with_names = caller.role == Role::Admin;
    let axum::extract::Query(query) = query.map_err(invalid_query)?;
    let bbox = query.bbox.as_deref().map(parse_bbox).transpose()?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => parse_limit(raw)?,
    };

    let mut transaction = state.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *transaction)
        .await?;
    let position = head_position(&mut transaction).await?;
    let mut locations = latest_locations(&mut transaction, bbox, limit + 1, with_names).await?;
    transaction.commit().await?;

    let page_size = usize::try_from(limit).unwrap_or(usize::MAX);
    let truncated = locations.len() > page_size;
    locations.truncate(page_size);
    Ok(Json(LocationSnapshot {
        position,
        locations,
        truncated,
    }))
}

/// Returns the position of the newest row of `rm_updates`, or 0 when none was ever
/// written. The retention delete of the projection workers removes only rows below the
/// head, so a missing head row is an error.
async fn head_position(connection: &mut PgConnection) -> Result<i64, ApiError> {
    let (seq, position): (i64, Option<i64>) = sqlx::query_as(
        "SELECT h.seq, u.position
         FROM rm_update_head AS h
         LEFT JOIN rm_updates AS u ON u.seq = h.seq",
    )
    .fetch_one(connection)
    .await?;
    if seq == 0 {
        return Ok(0);
    }
    position
        .with_context(|| format!("rm_updates has no row for the head seq {seq}"))
        .map_err(ApiError::Internal)
}

/// Returns up to `limit` latest locations inside `bbox`, ordered by user id, with the
/// users' names only when `with_names` is true.
async fn latest_locations(
    connection: &mut PgConnection,
    bbox: Option<BoundingBox>,
    limit: i64,
    with_names: bool,
) -> Result<Vec<UserLocation>, sqlx::Error> {
    sqlx::query_as::<_, UserLocation>(
        "SELECT l.user_id, CASE WHEN $6 THEN u.name END AS name, l.latitude, l.longitude,
                l.recorded_at, l.sequence, l.position
         FROM rm_latest_locations AS l
         LEFT JOIN rm_users AS u ON u.user_id = l.user_id
         WHERE $1::float8 IS NULL
            OR (l.longitude BETWEEN $1 AND $3 AND l.latitude BETWEEN $2 AND $4)
         ORDER BY l.user_id
         LIMIT $5",
    )
    .bind(bbox.map(|b| b.min_longitude))
    .bind(bbox.map(|b| b.min_latitude))
    .bind(bbox.map(|b| b.max_longitude))
    .bind(bbox.map(|b| b.max_latitude))
    .bind(limit)
    .bind(with_names)
    .fetch_all(connection)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected_field(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        match result {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn bbox_parses_four_numbers() {
        let bbox = parse_bbox("-74.1, 40.6,-73.9,40.8").unwrap();
        assert_eq!(
            bbox,
            BoundingBox {
                min_longitude: -74.1,
                min_latitude: 40.6,
                max_longitude: -73.9,
                max_latitude: 40.8,
            }
        );
    }

    #[test]
    fn bbox_accepts_whole_world_and_single_point() {
        assert!(parse_bbox("-180,-90,180,90").is_ok());
        assert!(parse_bbox("5,5,5,5").is_ok());
    }

    #[test]
    fn bbox_rejects_malformed_values() {
        for raw in [
            "",
            "1,2,3",
            "1,2,3,4,5",
            "a,2,3,4",
            "1,,3,4",
            "NaN,2,3,4",
            "inf,2,3,4",
            "-181,0,0,0",
            "0,-91,0,0",
            "0,0,181,0",
            "0,0,0,90.5",
            "10,0,5,1",
            "0,10,1,5",
        ] {
            assert_eq!(rejected_field(parse_bbox(raw)), "bbox", "{raw:?}");
        }
    }

    #[test]
    fn limit_bounds_are_accepted() {
        assert_eq!(parse_limit("1").unwrap(), 1);
        assert_eq!(parse_limit("10000").unwrap(), MAX_LIMIT);
    }

    #[test]
    fn limit_out_of_range_names_limit() {
        for raw in ["0", "10001", "-1", "ten", ""] {
            assert_eq!(rejected_field(parse_limit(raw)), "limit", "{raw:?}");
        }
    }
}
