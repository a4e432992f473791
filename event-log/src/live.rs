//! Live updates: the rows of `rm_updates` that the read-models projection appends in the
//! transaction that folds an event, and that query services push to Socket.IO subscribers.
//!
//! After a commit the projection publishes the new rows as one JSON array on the Redis
//! channel [`updates_channel`]. Redis is only the fast path: a query service that finds a gap
//! in `seq`, or lost its Redis connection, reads the missing rows from PostgreSQL with
//! [`rows_after`]. `seq` numbers rows in commit order, so reading `seq > n` never misses a
//! row that commits later.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// The kind of an update, by which a subscription selects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    /// A `LocationRecorded` event, with its coordinates.
    Location,
    /// An event of the `User` or `Profile` aggregate.
    Profile,
}

impl UpdateKind {
    /// Returns the value stored in `rm_updates.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Location => "location",
            Self::Profile => "profile",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "location" => Some(Self::Location),
            "profile" => Some(Self::Profile),
            _ => None,
        }
    }
}

/// The part of an update that subscribers receive about its event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateBody {
    /// Sequence of the event within its aggregate.
    pub sequence: i64,
    pub event_type: String,
    /// The event's fields, opened; secrets such as password hashes are left out.
    pub data: Value,
}

/// One row of `rm_updates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveUpdate {
    /// Number of the row in commit order; contiguous unless a transaction rolled back.
    pub seq: i64,
    /// Global position of the event.
    pub position: i64,
    pub user_id: Uuid,
    pub kind: UpdateKind,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    /// `None` once the user is erased: the row keeps its place in the sequence only.
    pub body: Option<UpdateBody>,
    pub committed_at: DateTime<Utc>,
}

/// An update before the projection numbers and stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewUpdate {
    pub position: i64,
    pub user_id: Uuid,
    pub kind: UpdateKind,
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub body: UpdateBody,
}

/// Redis channel on which the projection of `topic_prefix` publishes new rows.
pub fn updates_channel(topic_prefix: &str) -> String {
    format!("{topic_prefix}updates")
}

/// Numbers `updates` after the current head and inserts them, holding the head's row lock
/// until the caller's transaction ends. Call it last in the transaction, so that the lock,
/// which serializes every writer of updates, is held briefly.
pub async fn append(
    transaction: &mut PgConnection,
    updates: &[NewUpdate],
) -> Result<Vec<LiveUpdate>, sqlx::Error> {
    if updates.is_empty() {
        return Ok(Vec::new());
    }
    let count = i64::try_from(updates.len()).unwrap_or(i64::MAX);
    let (head, committed_at): (i64, DateTime<Utc>) = sqlx::query_as(
        "UPDATE rm_update_head SET seq = seq + $1 RETURNING seq - $1, statement_timestamp()",
    )
    .bind(count)
    .fetch_one(&mut *transaction)
    .await?;

    let rows: Vec<LiveUpdate> = updates
        .iter()
        .zip(head + 1..)
        .map(|(update, seq)| LiveUpdate {
            seq,
            position: update.position,
            user_id: update.user_id,
            kind: update.kind,
            latitude: update.latitude,
            longitude: update.longitude,
            body: Some(update.body.clone()),
            committed_at,
        })
        .collect();
    let bodies = rows
        .iter()
        .map(|row| serde_json::to_value(&row.body))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
    sqlx::query(
        "INSERT INTO rm_updates (seq, position, user_id, kind, latitude, longitude, payload,
                                 committed_at)
         SELECT seq, position, user_id, kind, latitude, longitude, payload, $8
         FROM unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::text[],
                     $5::double precision[], $6::double precision[], $7::jsonb[])
              AS u(seq, position, user_id, kind, latitude, longitude, payload)",
    )
    .bind(rows.iter().map(|row| row.seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.position).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.latitude).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.longitude).collect::<Vec<_>>())
    .bind(bodies)
    .bind(committed_at)
    .execute(&mut *transaction)
    .await?;
    Ok(rows)
}

/// Blanks the updates of erased `users`: they keep their `seq` and position, so resuming
/// from them still works, but their payload and coordinates are gone.
pub async fn forget_users(
    connection: &mut PgConnection,
    users: &[Uuid],
) -> Result<u64, sqlx::Error> {
    if users.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE rm_updates SET payload = NULL, latitude = NULL, longitude = NULL
         WHERE user_id = ANY($1) AND payload IS NOT NULL",
    )
    .bind(users)
    .execute(connection)
    .await?;
    Ok(result.rows_affected())
}

/// Deletes the updates committed before `cutoff` and records the highest deleted `seq`, so
/// a resume from before it is rejected and the client reads current state instead. The newest row always
/// stays, so the head keeps a position that clients can subscribe after. Returns how many
/// rows were deleted.
pub async fn prune(
    connection: &mut PgConnection,
    cutoff: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let (deleted, highest): (i64, Option<i64>) = sqlx::query_as(
        "WITH deleted AS (DELETE FROM rm_updates
                          WHERE committed_at < $1
                            AND seq < (SELECT seq FROM rm_update_head)
                          RETURNING seq),
              head AS (UPDATE rm_update_head
                       SET pruned_seq = GREATEST(pruned_seq, (SELECT max(seq) FROM deleted))
                       WHERE EXISTS (SELECT 1 FROM deleted)
                       RETURNING pruned_seq)
         SELECT (SELECT count(*) FROM deleted), (SELECT pruned_seq FROM head)",
    )
    .bind(cutoff)
    .fetch_one(connection)
    .await?;
    if let Some(highest) = highest {
        tracing::debug!(deleted, highest, "pruned live updates");
    }
    Ok(u64::try_from(deleted).unwrap_or_default())
}

/// Reads the head: the highest `seq` assigned and the highest `seq` pruned.
pub async fn head(connection: &mut PgConnection) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT seq, pruned_seq FROM rm_update_head")
        .fetch_one(connection)
        .await
}

/// Reads up to `limit` rows with `seq > after`, in `seq` order.
pub async fn rows_after(
    connection: &mut PgConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<LiveUpdate>, sqlx::Error> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT seq, position, user_id, kind, latitude, longitude, payload, committed_at
         FROM rm_updates WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.into_iter().map(StoredRow::into_update).collect()
}

/// Reads up to `limit` rows of one user with `seq > after`, in `seq` order.
pub async fn user_rows_after(
    connection: &mut PgConnection,
    user_id: Uuid,
    kind: UpdateKind,
    after: i64,
    limit: i64,
) -> Result<Vec<LiveUpdate>, sqlx::Error> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT seq, position, user_id, kind, latitude, longitude, payload, committed_at
         FROM rm_updates WHERE user_id = $1 AND kind = $2 AND seq > $3 ORDER BY seq LIMIT $4",
    )
    .bind(user_id)
    .bind(kind.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(connection)
    .await?;
    rows.into_iter().map(StoredRow::into_update).collect()
}

/// Looks up the `seq` of the update of the event at `position`, if it is still retained.
pub async fn seq_of_position(
    connection: &mut PgConnection,
    position: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT seq FROM rm_updates WHERE position = $1")
        .bind(position)
        .fetch_optional(connection)
        .await
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    seq: i64,
    position: i64,
    user_id: Uuid,
    kind: String,
    latitude: Option<f64>,
    longitude: Option<f64>,
    payload: Option<Value>,
    committed_at: DateTime<Utc>,
}

impl StoredRow {
    fn into_update(self) -> Result<LiveUpdate, sqlx::Error> {
        let kind = UpdateKind::parse(&self.kind).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown rm_updates.kind {:?}", self.kind).into())
        })?;
        let body = self
            .payload
            .map(serde_json::from_value)
            .transpose()
            .map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        Ok(LiveUpdate {
            seq: self.seq,
            position: self.position,
            user_id: self.user_id,
            kind,
            latitude: self.latitude,
            longitude: self.longitude,
            body,
            committed_at: self.committed_at,
        })
    }
}
