//! `GET /v1/audit`: who did what and when, read from the metadata of stored events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{RawQuery, State};
use axum::Json;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use meridian_crypto::{KeyError, UserKeys};
use meridian_domain::location::LocationTrack;
use meridian_domain::profile::Profile;
use meridian_domain::user::{Role, User};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Authenticated;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::commands::metadata_keys;
use crate::commands::sealed::open_metadata;

/// Entries per page when the request sets no `limit`.
pub const DEFAULT_LIMIT: i64 = 100;
/// Maximum `limit`.
pub const MAX_LIMIT: i64 = 1000;
/// The aggregate types whose id is the id of the user the events belong to.
const USER_AGGREGATE_TYPES: [&str; 3] = [User::TYPE, Profile::TYPE, LocationTrack::TYPE];
/// The query parameters this route accepts.
const PARAMETERS: [&str; 6] = ["user_id", "actor_id", "from", "to", "after", "limit"];

/// One stored event: who caused it, from where, and when.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Global position of the event in the event store.
    pub position: i64,
    /// When the event was stored.
    pub stored_at: DateTime<Utc>,
    /// The user the event belongs to: the id of its User, Profile or LocationTrack aggregate.
    #[schema(format = Uuid)]
    pub user_id: String,
    #[schema(example = "LocationTrack")]
    pub aggregate_type: String,
    #[schema(example = "LocationRecorded")]
    pub event_type: String,
    /// The user id of the authenticated caller, or null for an anonymous request.
    pub actor_id: Option<String>,
    /// `user`, `admin` or `analyst`, or null for an anonymous request.
    pub actor_role: Option<String>,
    /// The `x-request-id` of the request that stored the event.
    pub request_id: Option<String>,
    /// Peer IP address of the request. Null when the user is erased, or when the event
    /// carries none, because it was stored before addresses were recorded or without a
    /// network connection.
    pub client_addr: Option<String>,
    /// `User-Agent` of the request, cut to 256 characters. Null when the user is erased,
    /// or when the event carries none.
    pub user_agent: Option<String>,
    pub personal_data: PersonalData,
}

/// Whether `client_addr` and `user_agent` of an entry can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PersonalData {
    /// The user's key exists: the fields show what the event recorded.
    Readable,
    /// The user was erased and their key destroyed, so both fields are null for good.
    Erased,
}

/// One page of audit entries, ordered by position.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// The `after` of the next page, or null on the last page.
    pub next_after: Option<i64>,
}

/// List who did what and when: the stored events of users, with the caller, request id,
/// client address and user agent recorded with each, ordered by position. Admins only.
#[utoipa::path(
    get,
    path = "/v1/audit",
    tag = "audit",
    params(
        ("user_id" = Option<String>, Query, format = Uuid, description = "Only events of this user: their User, Profile and LocationTrack events"),
        ("actor_id" = Option<String>, Query, format = Uuid, description = "Only events that this authenticated user caused"),
        ("from" = Option<String>, Query, format = DateTime, description = "Only events stored at or after this RFC 3339 time. Send a + as %2B."),
        ("to" = Option<String>, Query, format = DateTime, description = "Only events stored before this RFC 3339 time, which must be later than from"),
        ("after" = Option<i64>, Query, description = "Only events after this position: the next_after of the previous page"),
        ("limit" = Option<i64>, Query, description = "Entries per page, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "One page of entries. All filters are optional and combine with AND.", body = AuditPage),
        (status = 400, description = "A query parameter is invalid, repeated or unknown, and `field` names it", body = ErrorBody),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
    )
)]
pub async fn list_audit_entries(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require_role(&[Role::Admin])?;
    let query = AuditQuery::parse(query.as_deref().unwrap_or_default())?;

    let mut rows = fetch_events(&state.pool, &query).await?;
    let next_after = if rows.len() > query.limit_rows() {
        rows.truncate(query.limit_rows());
        rows.last().map(|row| row.position)
    } else {
        None
    };

    let entries = AuditReader::new(&state, &rows).await?.entries(rows).await?;
    Ok(Json(AuditPage {
        entries,
        next_after,
    }))
}

/// The validated query parameters.
#[derive(Debug, Clone, PartialEq)]
struct AuditQuery {
    user_id: Option<String>,
    actor_id: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<i64>,
    limit: i64,
}

impl AuditQuery {
    /// Parses a query string such as `user_id=…&from=…`, naming the first bad parameter.
    fn parse(raw: &str) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw).map_err(|error| ApiError::InvalidRequest {
                message: format!("query string is not URL-encoded: {error}"),
            })?;
        check_names(&pairs)?;
        let value = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };

        let query = Self {
            user_id: value("user_id")
                .map(|raw| parse_uuid("user_id", raw))
                .transpose()?,
            actor_id: value("actor_id")
                .map(|raw| parse_uuid("actor_id", raw))
                .transpose()?,
            from: value("from")
                .map(|raw| parse_time("from", raw))
                .transpose()?,
            to: value("to").map(|raw| parse_time("to", raw)).transpose()?,
            after: value("after").map(parse_after).transpose()?,
            limit: value("limit")
                .map(parse_limit)
                .transpose()?
                .unwrap_or(DEFAULT_LIMIT),
        };
        if let (Some(from), Some(to)) = (query.from, query.to) {
            if to <= from {
                return Err(ApiError::parameter(
                    "to",
                    format!("must be later than from ({})", from.to_rfc3339()),
                ));
            }
        }
        Ok(query)
    }

    fn limit_rows(&self) -> usize {
        usize::try_from(self.limit).unwrap_or(0)
    }
}

/// Fails on the first parameter that is unknown or given twice.
fn check_names(pairs: &[(String, String)]) -> Result<(), ApiError> {
    let mut seen = HashSet::new();
    for (name, _) in pairs {
        if !PARAMETERS.contains(&name.as_str()) {
            let expected = PARAMETERS.join(", ");
            return Err(ApiError::parameter(
                name.as_str(),
                format!("is not a known parameter, expected one of {expected}"),
            ));
        }
        if !seen.insert(name.as_str()) {
            return Err(ApiError::parameter(
                name.as_str(),
                "is given more than once",
            ));
        }
    }
    Ok(())
}

/// Parses a user id in any form [`Uuid`] accepts into the hyphenated lower-case form that
/// aggregate ids and actor ids use.
fn parse_uuid(name: &str, raw: &str) -> Result<String, ApiError> {
    Uuid::parse_str(raw)
        .map(|id| id.to_string())
        .map_err(|_| ApiError::parameter(name, format!("{raw:?} is not a UUID")))
}

fn parse_time(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| {
            // A literal + in a query string decodes to a space.
            let hint = if raw.contains(' ') {
                "; send a + in an offset as %2B"
            } else {
                ""
            };
            ApiError::parameter(
                name,
                format!(
                    "{raw:?} is not an RFC 3339 timestamp such as 2020-12-01T00:00:00Z: {error}{hint}"
                ),
            )
        })
}

fn parse_after(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(position) if position >= 0 => Ok(position),
        _ => Err(ApiError::parameter(
            "after",
            format!("{raw:?} is not a position: expected an integer of at least 0"),
        )),
    }
}

fn parse_limit(raw: &str) -> Result<i64, ApiError> {
    match raw.parse::<i64>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(ApiError::parameter(
            "limit",
            format!("{raw:?} is not an integer from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// An event as the audit reads it.
#[derive(Debug, FromRow)]
struct EventRow {
    position: i64,
    stored_at: DateTime<Utc>,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    metadata: Value,
}

/// Reads one page of events plus one more, which shows whether a next page exists.
///
/// NOTE: a position is taken when an event is inserted, not when its transaction commits.
/// An event whose transaction commits after a page was read, with a position below that
/// page's last one, does not appear on later pages.
async fn fetch_events(pool: &PgPool, query: &AuditQuery) -> Result<Vec<EventRow>, ApiError> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT position, stored_at, aggregate_type, aggregate_id, event_type, \
                metadata::jsonb AS metadata \
         FROM events WHERE aggregate_type = ANY(",
    );
    sql.push_bind(&USER_AGGREGATE_TYPES[..]).push(")");
    // Each filter is added only when set, so PostgreSQL plans with the indexes it can use:
    // the primary key for a user, the BRIN index on stored_at for a time range.
    if let Some(user_id) = &query.user_id {
        sql.push(" AND aggregate_id = ").push_bind(user_id);
    }
    if let Some(actor_id) = &query.actor_id {
        sql.push(" AND metadata ->> ")
            .push_bind(metadata_keys::ACTOR_ID)
            .push(" = ")
            .push_bind(actor_id);
    }
    if let Some(from) = query.from {
        sql.push(" AND stored_at >= ").push_bind(from);
    }
    if let Some(to) = query.to {
        sql.push(" AND stored_at < ").push_bind(to);
    }
    if let Some(after) = query.after {
        sql.push(" AND position > ").push_bind(after);
    }
    // PostgreSQL assumes that stored_at and position are independent, so for ORDER BY
    // position LIMIT it prefers walking the position index from the start and filtering by
    // time, which reads every event before `from`. Sorting by position + 0, the same order,
    // rules that walk out: the first page reads the block ranges that the BRIN index on
    // stored_at selects, which is every event in the time range. Later pages set `after`,
    // from where the walk reads about one page.
    let order = if query.from.is_some() && query.after.is_none() {
        "position + 0"
    } else {
        "position"
    };
    sql.push(" ORDER BY ")
        .push(order)
        .push(" LIMIT ")
        .push_bind(query.limit + 1);

    let rows = sql
        .build_query_as::<EventRow>()
        .fetch_all(pool)
        .await
        .context("failed to read events for the audit")?;
    Ok(rows)
}

/// Turns event rows into entries, opening the sealed metadata of users that are not erased.
struct AuditReader<'a> {
    state: &'a AppState,
    erased: HashSet<String>,
    keys: HashMap<String, Arc<UserKeys>>,
}

impl<'a> AuditReader<'a> {
    /// Looks up which users of `rows` are erased, in one query.
    async fn new(state: &'a AppState, rows: &[EventRow]) -> Result<Self, ApiError> {
        let user_ids: Vec<&str> = rows
            .iter()
            .map(|row| row.aggregate_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let erased: Vec<String> =
            sqlx::query_scalar("SELECT user_id FROM erased_users WHERE user_id = ANY($1)")
                .bind(&user_ids)
                .fetch_all(&state.pool)
                .await
                .context("failed to look up erased users for the audit")?;
        Ok(Self {
            state,
            erased: erased.into_iter().collect(),
            keys: HashMap::new(),
        })
    }

    async fn entries(mut self, rows: Vec<EventRow>) -> Result<Vec<AuditEntry>, ApiError> {
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            entries.push(self.entry(row).await?);
        }
        Ok(entries)
    }

    async fn entry(&mut self, mut row: EventRow) -> Result<AuditEntry, ApiError> {
        let personal_data = self
            .open_personal_metadata(&row.aggregate_id, row.position, &mut row.metadata)
            .await?;
        let text = |key: &str| {
            row.metadata
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let (client_addr, user_agent) = match personal_data {
            PersonalData::Readable => (
                text(metadata_keys::CLIENT_ADDR),
                text(metadata_keys::USER_AGENT),
            ),
            PersonalData::Erased => (None, None),
        };
        Ok(AuditEntry {
            position: row.position,
            stored_at: row.stored_at,
            actor_id: text(metadata_keys::ACTOR_ID),
            actor_role: text(metadata_keys::ACTOR_ROLE),
            request_id: text(metadata_keys::REQUEST_ID),
            client_addr,
            user_agent,
            personal_data,
            user_id: row.aggregate_id,
            aggregate_type: row.aggregate_type,
            event_type: row.event_type,
        })
    }

    /// Opens the sealed entries of `metadata` in place, unless the user is erased.
    async fn open_personal_metadata(
        &mut self,
        user_id: &str,
        position: i64,
        metadata: &mut Value,
    ) -> Result<PersonalData, ApiError> {
        if self.erased.contains(user_id) {
            return Ok(PersonalData::Erased);
        }
        let sealed = [metadata_keys::CLIENT_ADDR, metadata_keys::USER_AGENT]
            .iter()
            .any(|key| metadata.get(key).is_some());
        if !sealed || !self.state.cipher.seals() {
            return Ok(PersonalData::Readable);
        }

        let Some(keys) = self.keys_of(user_id).await? else {
            return Ok(PersonalData::Erased);
        };
        open_metadata(&keys, metadata)
            .with_context(|| format!("failed to open the metadata of the event at {position}"))?;
        Ok(PersonalData::Readable)
    }

    /// Returns the keys of `user_id`, or None when the user was erased after [`Self::new`].
    async fn keys_of(&mut self, user_id: &str) -> Result<Option<Arc<UserKeys>>, ApiError> {
        if let Some(keys) = self.keys.get(user_id) {
            return Ok(Some(Arc::clone(keys)));
        }
        match self.state.cipher.keyring().for_reading(user_id).await {
            Ok(keys) => {
                self.keys.insert(user_id.to_owned(), Arc::clone(&keys));
                Ok(Some(keys))
            }
            Err(KeyError::Erased(_)) => {
                self.erased.insert(user_id.to_owned());
                Ok(None)
            }
            Err(error) => Err(ApiError::Internal(
                anyhow::Error::new(error).context(format!("failed to load the key of {user_id}")),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected_parameter(raw: &str) -> (String, String) {
        match AuditQuery::parse(raw) {
            Err(ApiError::InvalidParameter(error)) => (error.field, error.reason),
            other => panic!("expected a parameter error for {raw:?}, got {other:?}"),
        }
    }

    #[test]
    fn empty_query_lists_everything() {
        let query = AuditQuery::parse("").unwrap();
        assert_eq!(query.user_id, None);
        assert_eq!(query.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn user_id_is_normalized() {
        let query = AuditQuery::parse("user_id=5B0F8A528D3C4C449B0E0D5A3B1F6A10").unwrap();
        assert_eq!(
            query.user_id.as_deref(),
            Some("5b0f8a52-8d3c-4c44-9b0e-0d5a3b1f6a10")
        );
    }

    #[test]
    fn encoded_offset_is_parsed() {
        let query = AuditQuery::parse("from=2020-12-01T02:00:00%2B02:00").unwrap();
        let expected: DateTime<Utc> = "2020-12-01T00:00:00Z".parse().unwrap();
        assert_eq!(query.from, Some(expected));
    }

    #[test]
    fn unencoded_plus_gets_a_hint() {
        let (field, reason) = rejected_parameter("from=2020-12-01T02:00:00+02:00");
        assert_eq!(field, "from");
        assert!(reason.contains("%2B"), "{reason}");
    }

    #[test]
    fn each_bad_parameter_is_named() {
        for (raw, expected) in [
            ("user_id=42", "user_id"),
            ("actor_id=", "actor_id"),
            ("from=yesterday", "from"),
            ("to=2020-13-01T00:00:00Z", "to"),
            ("after=-1", "after"),
            ("after=x", "after"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=ten", "limit"),
            ("from=2020-12-02T00:00:00Z&to=2020-12-01T00:00:00Z", "to"),
            ("from=2020-12-01T00:00:00Z&to=2020-12-01T00:00:00Z", "to"),
            ("user=5b0f8a52-8d3c-4c44-9b0e-0d5a3b1f6a10", "user"),
            ("limit=1&limit=2", "limit"),
        ] {
            let (field, _) = rejected_parameter(raw);
            assert_eq!(field, expected, "query {raw:?}");
        }
    }

    #[test]
    fn limit_bounds_are_accepted() {
        assert_eq!(AuditQuery::parse("limit=1").unwrap().limit, 1);
        assert_eq!(AuditQuery::parse("limit=1000").unwrap().limit, MAX_LIMIT);
    }
}
