//! The physical reference: how fast the same PostgreSQL stores rows shaped like the stored
//! location events in a bare table, by batched `INSERT` and by `COPY`, with one commit per
//! statement at the server's durability settings.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::stats::per_second;

/// The bare table: the columns of `events`, its primary key and no other index or trigger.
const CREATE_TABLE: &str = "CREATE TABLE bench_bare_events (
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    event_type     text        NOT NULL,
    event_version  text        NOT NULL,
    payload        json        NOT NULL,
    metadata       json        NOT NULL,
    position       bigint GENERATED ALWAYS AS IDENTITY,
    stored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
)";

const INSERT_BATCH: &str = "INSERT INTO bench_bare_events \
     (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT 'LocationTrack', aggregate_id, sequence, 'LocationRecorded', '1.0', \
            payload::json, metadata::json \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) \
          AS row(aggregate_id, sequence, payload, metadata)";

const COPY_STATEMENT: &str = "COPY bench_bare_events \
     (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     FROM STDIN";

/// Rows stored by the `INSERT` cases per statement, as the ingest's largest batch.
pub const INSERT_ROWS_PER_STATEMENT: usize = 100;
/// Connections left free for the services and other users of the server.
const SPARE_CONNECTIONS: i64 = 20;
/// Sample rows taken from the stored location events.
const SAMPLE_ROWS: i64 = 1000;

/// Bounds of the physical reference.
#[derive(Debug, Clone)]
pub struct PhysicalBounds {
    pub connections: Vec<usize>,
    pub rows: u64,
    pub time_limit: Duration,
    pub copy_chunk_rows: usize,
}

/// Payload and metadata texts of the rows written.
#[derive(Debug, Clone)]
pub struct RowSample {
    pub rows: Vec<(String, String)>,
    /// Whether the texts come from stored location events, or were built because none were
    /// stored.
    pub from_store: bool,
}

impl RowSample {
    fn average_bytes(&self) -> (f64, f64) {
        let count = self.rows.len().max(1) as f64;
        let payload: usize = self.rows.iter().map(|(payload, _)| payload.len()).sum();
        let metadata: usize = self.rows.iter().map(|(_, metadata)| metadata.len()).sum();
        (payload as f64 / count, metadata as f64 / count)
    }
}

/// Rate of one way of writing.
#[derive(Debug, Clone, Serialize)]
pub struct WriteRate {
    pub method: &'static str,
    pub connections: usize,
    pub rows_per_commit: usize,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Connections requested, when fewer were free on the server.
    pub requested_connections: Option<usize>,
}

/// Figures of the physical reference.
#[derive(Debug, Clone, Serialize)]
pub struct PhysicalResult {
    pub synchronous_commit: String,
    pub fsync: String,
    pub payload_bytes: f64,
    pub metadata_bytes: f64,
    pub sample_from_store: bool,
    pub insert: Vec<WriteRate>,
    pub copy: WriteRate,
}

/// Measures batched `INSERT` with each connection count, then `COPY`, in a bare table of
/// the database at `database_url`, which is dropped again at the end.
pub async fn run(
    pool: &PgPool,
    database_url: &str,
    bounds: &PhysicalBounds,
) -> anyhow::Result<PhysicalResult> {
    let sample = sample_rows(pool).await?;
    let (payload_bytes, metadata_bytes) = sample.average_bytes();
    let synchronous_commit: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(pool)
        .await?;
    let fsync: String = sqlx::query_scalar("SHOW fsync").fetch_one(pool).await?;
    sqlx::query(CREATE_TABLE)
        .execute(pool)
        .await
        .context("failed to create the bare table")?;

    let result = measure(pool, database_url, bounds, &sample).await;
    let dropped = sqlx::query("DROP TABLE bench_bare_events")
        .execute(pool)
        .await
        .context("failed to drop the bare table");
    let (insert, copy) = result?;
    dropped?;
    Ok(PhysicalResult {
        synchronous_commit,
        fsync,
        payload_bytes,
        metadata_bytes,
        sample_from_store: sample.from_store,
        insert,
        copy,
    })
}

async fn measure(
    pool: &PgPool,
    database_url: &str,
    bounds: &PhysicalBounds,
    sample: &RowSample,
) -> anyhow::Result<(Vec<WriteRate>, WriteRate)> {
    let mut insert = Vec::new();
    for &requested in &bounds.connections {
        let free = free_connections(pool).await?;
        let connections = requested.min(free.max(1));
        let mut rate = insert_rate(database_url, connections, bounds, sample).await?;
        rate.requested_connections = (connections < requested).then_some(requested);
        insert.push(rate);
        truncate(pool).await?;
    }
    let copy = copy_rate(database_url, bounds, sample).await?;
    truncate(pool).await?;
    Ok((insert, copy))
}

/// Takes payload and metadata texts of stored location events, or builds rows of the
/// unsealed event shape when the store has none.
async fn sample_rows(pool: &PgPool) -> anyhow::Result<RowSample> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT payload::text, metadata::text FROM events \
         WHERE aggregate_type = 'LocationTrack' ORDER BY position DESC LIMIT $1",
    )
    .bind(SAMPLE_ROWS)
    .fetch_all(pool)
    .await
    .context("failed to read sample location events")?;
    if !rows.is_empty() {
        return Ok(RowSample {
            rows,
            from_store: true,
        });
    }
    let built = (0..SAMPLE_ROWS)
        .map(|index| {
            let payload = format!(
                r#"{{"LocationRecorded":{{"latitude":40.{index:06},"longitude":-74.{index:06},"recorded_at":"2020-12-01T00:00:00Z"}}}}"#
            );
            (payload, "{}".to_owned())
        })
        .collect();
    Ok(RowSample {
        rows: built,
        from_store: false,
    })
}

/// Returns how many more connections the server accepts, less [`SPARE_CONNECTIONS`].
async fn free_connections(pool: &PgPool) -> anyhow::Result<usize> {
    let free: i64 = sqlx::query_scalar(
        "SELECT current_setting('max_connections')::bigint - \
                (SELECT count(*) FROM pg_stat_activity)",
    )
    .fetch_one(pool)
    .await?;
    Ok(usize::try_from(free - SPARE_CONNECTIONS).unwrap_or(0))
}

async fn truncate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE bench_bare_events")
        .execute(pool)
        .await
        .context("failed to empty the bare table")?;
    Ok(())
}

async fn connect(database_url: &str) -> anyhow::Result<PgConnection> {
    let options: PgConnectOptions = database_url.parse()?;
    options
        .connect()
        .await
        .context("failed to open a connection for the physical reference")
}

/// Writes rows with `connections` connections, each storing its own aggregate in
/// statements of [`INSERT_ROWS_PER_STATEMENT`] rows, until `bounds.rows` rows are stored
/// or the time limit passes.
async fn insert_rate(
    database_url: &str,
    connections: usize,
    bounds: &PhysicalBounds,
    sample: &RowSample,
) -> anyhow::Result<WriteRate> {
    let statements = bounds.rows.div_ceil(INSERT_ROWS_PER_STATEMENT as u64);
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(connect(database_url).await?);
    }

    let started = Instant::now();
    let deadline = started + bounds.time_limit;
    let mut tasks = JoinSet::new();
    for (index, connection) in opened.into_iter().enumerate() {
        let mine = (index as u64..statements).step_by(connections).count();
        let rows = sample.rows.clone();
        tasks.spawn(insert_statements(connection, mine, rows, deadline));
    }
    let mut stored = 0;
    for joined in tasks.join_all().await {
        stored += joined?;
    }
    let elapsed = started.elapsed();
    Ok(WriteRate {
        method: "INSERT",
        connections,
        rows_per_commit: INSERT_ROWS_PER_STATEMENT,
        rows: stored,
        seconds: elapsed.as_secs_f64(),
        rows_per_second: per_second(stored, elapsed),
        requested_connections: None,
    })
}

async fn insert_statements(
    mut connection: PgConnection,
    statements: usize,
    sample: Vec<(String, String)>,
    deadline: Instant,
) -> anyhow::Result<u64> {
    let aggregate_id = Uuid::new_v4().to_string();
    let mut stored = 0_u64;
    for statement in 0..statements {
        if Instant::now() >= deadline {
            break;
        }
        let first = statement * INSERT_ROWS_PER_STATEMENT;
        let sequences: Vec<i64> = (first..first + INSERT_ROWS_PER_STATEMENT)
            .map(|sequence| sequence as i64 + 1)
            .collect();
        let picked = sequences
            .iter()
            .map(|sequence| &sample[*sequence as usize % sample.len()]);
        let (payloads, metadata): (Vec<&str>, Vec<&str>) = picked
            .map(|(payload, metadata)| (payload.as_str(), metadata.as_str()))
            .unzip();
        let ids = vec![aggregate_id.as_str(); sequences.len()];
        let result = sqlx::query(INSERT_BATCH)
            .bind(&ids)
            .bind(&sequences)
            .bind(&payloads)
            .bind(&metadata)
            .execute(&mut connection)
            .await
            .context("a batched INSERT into the bare table failed")?;
        stored += result.rows_affected();
    }
    connection.close().await.ok();
    Ok(stored)
}

/// Writes rows with one connection, one `COPY` statement (and so one commit) per chunk of
/// `bounds.copy_chunk_rows` rows, until `bounds.rows` rows are stored or the time limit
/// passes. Building each chunk's text is part of the measured time.
async fn copy_rate(
    database_url: &str,
    bounds: &PhysicalBounds,
    sample: &RowSample,
) -> anyhow::Result<WriteRate> {
    let mut connection = connect(database_url).await?;
    let aggregate_id = Uuid::new_v4().to_string();
    let chunk = bounds.copy_chunk_rows as u64;

    let started = Instant::now();
    let deadline = started + bounds.time_limit;
    let mut stored = 0_u64;
    while stored < bounds.rows && Instant::now() < deadline {
        let rows = chunk.min(bounds.rows - stored);
        let text = copy_chunk(&aggregate_id, stored + 1, rows, &sample.rows);
        let mut copy = connection
            .copy_in_raw(COPY_STATEMENT)
            .await
            .context("COPY into the bare table failed")?;
        copy.send(text.into_bytes()).await?;
        stored += copy
            .finish()
            .await
            .context("COPY into the bare table failed")?;
    }
    let elapsed = started.elapsed();
    connection.close().await.ok();
    Ok(WriteRate {
        method: "COPY",
        connections: 1,
        rows_per_commit: bounds.copy_chunk_rows,
        rows: stored,
        seconds: elapsed.as_secs_f64(),
        rows_per_second: per_second(stored, elapsed),
        requested_connections: None,
    })
}

/// Builds `rows` lines of `COPY` text format, sequences from `first_sequence` on.
fn copy_chunk(
    aggregate_id: &str,
    first_sequence: u64,
    rows: u64,
    sample: &[(String, String)],
) -> String {
    let mut text = String::new();
    for sequence in first_sequence..first_sequence + rows {
        let (payload, metadata) = &sample[sequence as usize % sample.len()];
        text.push_str("LocationTrack\t");
        text.push_str(aggregate_id);
        text.push('\t');
        text.push_str(&sequence.to_string());
        text.push_str("\tLocationRecorded\t1.0\t");
        text.push_str(&escape_copy_text(payload));
        text.push('\t');
        text.push_str(&escape_copy_text(metadata));
        text.push('\n');
    }
    text
}

/// Escapes a value for `COPY` text format: backslash, tab, newline and carriage return.
fn escape_copy_text(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '\t' => escaped.push_str("\\t"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_escapes_special_characters() {
        assert_eq!(escape_copy_text("a\\b\tc\nd\re"), "a\\\\b\\tc\\nd\\re");
    }

    #[test]
    fn copy_chunk_has_one_line_per_row() {
        let sample = vec![(r#"{"a":"x\ty"}"#.to_owned(), "{}".to_owned())];
        let text = copy_chunk("id", 5, 3, &sample);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            // The JSON escape \t is a backslash and a t, so COPY needs the backslash doubled.
            "LocationTrack\tid\t5\tLocationRecorded\t1.0\t{\"a\":\"x\\\\ty\"}\t{}"
        );
    }
}
