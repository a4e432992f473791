//! Loading and writing the read-model rows of one batch, with one statement per table.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use crate::event::ProjectedEvent;

use super::fold::{HistoryRow, LatestLocationRow, ProfileRow, ReadModelRows, UserRow};

/// Loads the current rows of the given users into `rows`.
pub async fn load_rows(
    connection: &mut PgConnection,
    rows: &mut ReadModelRows,
    users: &[Uuid],
    profiles: &[Uuid],
    latest_locations: &[Uuid],
) -> Result<(), sqlx::Error> {
    if !users.is_empty() {
        let loaded: Vec<UserRow> = sqlx::query_as(
            "SELECT user_id, email, name, active, role, registered_at, updated_at,
                    last_sequence, last_position
             FROM rm_users WHERE user_id = ANY($1)",
        )
        .bind(users)
        .fetch_all(&mut *connection)
        .await?;
        rows.users = by_user(loaded, |row| row.user_id);
    }
    if !profiles.is_empty() {
        let loaded: Vec<ProfileRow> = sqlx::query_as(
            "SELECT user_id, settings, image, encrypted_image, updated_at, last_sequence,
                    last_position
             FROM rm_profiles WHERE user_id = ANY($1)",
        )
        .bind(profiles)
        .fetch_all(&mut *connection)
        .await?;
        rows.profiles = by_user(loaded, |row| row.user_id);
    }
    if !latest_locations.is_empty() {
        let loaded: Vec<LatestLocationRow> = sqlx::query_as(
            "SELECT user_id, latitude, longitude, recorded_at, sequence, position, event_id
             FROM rm_latest_locations WHERE user_id = ANY($1)",
        )
        .bind(latest_locations)
        .fetch_all(&mut *connection)
        .await?;
        rows.latest_locations = by_user(loaded, |row| row.user_id);
    }
    Ok(())
}

fn by_user<T>(rows: Vec<T>, key: impl Fn(&T) -> Uuid) -> HashMap<Uuid, T> {
    rows.into_iter().map(|row| (key(&row), row)).collect()
}

/// Writes the changed rows and inserts the new history rows. Returns the event ids of the
/// history rows that were new; the others were already stored by an earlier batch.
pub async fn write_rows(
    connection: &mut PgConnection,
    rows: &ReadModelRows,
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let users: Vec<&UserRow> = rows
        .changed_users
        .iter()
        .filter_map(|id| rows.users.get(id))
        .collect();
    let profiles: Vec<&ProfileRow> = rows
        .changed_profiles
        .iter()
        .filter_map(|id| rows.profiles.get(id))
        .collect();
    let latest: Vec<&LatestLocationRow> = rows
        .changed_latest_locations
        .iter()
        .filter_map(|id| rows.latest_locations.get(id))
        .collect();

    upsert_users(connection, &users).await?;
    upsert_profiles(connection, &profiles).await?;
    upsert_latest_locations(connection, &latest).await?;
    insert_history(connection, &rows.history).await
}

async fn upsert_users(connection: &mut PgConnection, rows: &[&UserRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rm_users (user_id, email, name, active, role, registered_at, updated_at,
                               last_sequence, last_position)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::boolean[], $5::text[],
                              $6::timestamptz[], $7::timestamptz[], $8::bigint[], $9::bigint[])
         ON CONFLICT (user_id) DO UPDATE
         SET email = EXCLUDED.email, name = EXCLUDED.name, active = EXCLUDED.active,
             role = EXCLUDED.role, registered_at = EXCLUDED.registered_at,
             updated_at = EXCLUDED.updated_at, last_sequence = EXCLUDED.last_sequence,
             last_position = EXCLUDED.last_position
         WHERE rm_users.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(rows.iter().map(|row| row.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.email.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.name.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.active).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.role.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.registered_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.last_sequence).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.last_position).collect::<Vec<_>>())
    .execute(connection)
    .await?;
    Ok(())
}

async fn upsert_profiles(
    connection: &mut PgConnection,
    rows: &[&ProfileRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rm_profiles (user_id, settings, image, encrypted_image, updated_at,
                                  last_sequence, last_position)
         SELECT * FROM unnest($1::uuid[], $2::jsonb[], $3::jsonb[], $4::jsonb[],
                              $5::timestamptz[], $6::bigint[], $7::bigint[])
         ON CONFLICT (user_id) DO UPDATE
         SET settings = EXCLUDED.settings, image = EXCLUDED.image,
             encrypted_image = EXCLUDED.encrypted_image,
             updated_at = EXCLUDED.updated_at, last_sequence = EXCLUDED.last_sequence,
             last_position = EXCLUDED.last_position
         WHERE rm_profiles.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(rows.iter().map(|row| row.user_id).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|row| row.settings.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.image.clone()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|row| row.encrypted_image.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|row| row.updated_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.last_sequence).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.last_position).collect::<Vec<_>>())
    .execute(connection)
    .await?;
    Ok(())
}

async fn upsert_latest_locations(
    connection: &mut PgConnection,
    rows: &[&LatestLocationRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO rm_latest_locations (user_id, latitude, longitude, recorded_at, sequence,
                                          position, event_id)
         SELECT * FROM unnest($1::uuid[], $2::double precision[], $3::double precision[],
                              $4::timestamptz[], $5::bigint[], $6::bigint[], $7::uuid[])
         ON CONFLICT (user_id) DO UPDATE
         SET latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude,
             recorded_at = EXCLUDED.recorded_at, sequence = EXCLUDED.sequence,
             position = EXCLUDED.position, event_id = EXCLUDED.event_id
         WHERE (rm_latest_locations.recorded_at, rm_latest_locations.sequence)
               <= (EXCLUDED.recorded_at, EXCLUDED.sequence)",
    )
    .bind(rows.iter().map(|row| row.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.latitude).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.longitude).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.recorded_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.sequence).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.position).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.event_id).collect::<Vec<_>>())
    .execute(connection)
    .await?;
    Ok(())
}

async fn insert_history(
    connection: &mut PgConnection,
    rows: &[HistoryRow],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO rm_location_history (event_id, user_id, sequence, latitude, longitude,
                                          recorded_at, position)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::double precision[],
                              $5::double precision[], $6::timestamptz[], $7::bigint[])
         ON CONFLICT (event_id) DO NOTHING
         RETURNING event_id",
    )
    .bind(rows.iter().map(|row| row.event_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.user_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.sequence).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.latitude).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.longitude).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.recorded_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|row| row.position).collect::<Vec<_>>())
    .fetch_all(connection)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// The highest sequence of each aggregate among processed events, for `rm_applied`.
#[derive(Debug, Default)]
pub struct AppliedSequences {
    highest: HashMap<(&'static str, Uuid), i64>,
}

impl AppliedSequences {
    /// Counts `event` as processed, whether or not it changed a row.
    pub fn add(&mut self, event: &ProjectedEvent) {
        let sequence = self
            .highest
            .entry((event.event.aggregate_type(), event.user_id))
            .or_default();
        *sequence = (*sequence).max(event.sequence);
    }

    /// Returns the number of aggregates with a processed event.
    pub fn aggregate_count(&self) -> usize {
        self.highest.len()
    }

    /// Raises the `rm_applied` row of each aggregate to its highest processed sequence.
    pub async fn store(self, connection: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.highest.is_empty() {
            return Ok(());
        }
        let (keys, sequences): (Vec<_>, Vec<i64>) = self.highest.into_iter().unzip();
        sqlx::query(
            "INSERT INTO rm_applied (aggregate_type, aggregate_id, last_sequence)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
             SET last_sequence = EXCLUDED.last_sequence
             WHERE rm_applied.last_sequence < EXCLUDED.last_sequence",
        )
        .bind(keys.iter().map(|(kind, _)| *kind).collect::<Vec<_>>())
        .bind(
            keys.iter()
                .map(|(_, id)| id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(sequences)
        .execute(connection)
        .await?;
        Ok(())
    }
}

/// Records the highest sequence of each aggregate among `events` in `rm_applied`, whether or
/// not the event changed a row.
pub async fn record_applied(
    connection: &mut PgConnection,
    events: &[&ProjectedEvent],
) -> Result<(), sqlx::Error> {
    let mut applied = AppliedSequences::default();
    for event in events {
        applied.add(event);
    }
    applied.store(connection).await
}
