//! Times `rebuild-read-models` on a week of real AIS reports, and a plain `COPY` of the same
//! event rows into a bare table for comparison.
//!
//! ```text
//! cargo run --release -p meridian-projection-workers --example rebuild_ais -- [options]
//! ```
//!
//! Needs PostgreSQL on `MERIDIAN_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`).
//! It fills a scratch database straight from the file, without the command service: every
//! vessel (MMSI) is one user with a sealed `UserRegistered` event, followed by one sealed
//! `LocationRecorded` event per valid report, in file order. It then runs the rebuild
//! `--runs` times and prints each summary as one JSON line, and drops the database at the
//! end, also when a step fails.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::TryStreamExt;
use meridian_crypto::testing::TestKeys;
use meridian_domain::location::LocationEvent;
use meridian_domain::user::UserEvent;
use meridian_event_log::testing::TestDatabase;
use meridian_event_log::{EventMessage, StoredEvent};
use meridian_importer::ais;
use meridian_projection_workers::read_models::rebuild::{self, RebuildOptions};
use meridian_projection_workers::testing::{seal_messages, store_events};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The AIS file of the measurements: 172,679 reports of 140 vessels.
const DEFAULT_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/ais/nyharbor_2020_12_first_week.csv"
);

#[derive(Debug, Parser)]
#[command(about = "Time a rebuild of the read models from a week of AIS reports")]
struct Options {
    /// AIS CSV file with the columns MMSI, BaseDateTime, LON and LAT.
    #[arg(long, default_value = DEFAULT_FILE)]
    file: PathBuf,
    /// Rebuilds to run one after the other on the same event store.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Keep the secondary indexes of rm_location_history during the load.
    #[arg(long)]
    keep_indexes: bool,
    /// Keep the primary key of rm_location_history during the load.
    #[arg(long)]
    keep_primary_key: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let database = TestDatabase::create().await?;
    let outcome = measure(&options, &database.pool).await;
    database.drop_database().await?;
    outcome
}

async fn measure(options: &Options, pool: &PgPool) -> anyhow::Result<()> {
    let keys = TestKeys::create()?;
    let cipher = keys.event_cipher(pool.clone()).await?;
    let started = Instant::now();
    let messages = history(&options.file)?;
    let sealed = seal_messages(&cipher, &messages).await?;
    store_events(pool, &sealed).await?;
    eprintln!(
        "stored {} events in {:.1} s",
        sealed.len(),
        started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;

    let rebuild_options = RebuildOptions {
        keep_indexes: options.keep_indexes,
        keep_primary_key: options.keep_primary_key,
    };
    for _ in 0..options.runs {
        // A new cipher per run, so every run unwraps the data keys as a new process does.
        let cipher = keys.event_cipher(pool.clone()).await?;
        let summary =
            rebuild::rebuild(pool, cipher, rebuild_options, CancellationToken::new()).await?;
        println!("{}", serde_json::to_string(&summary)?);
    }
    let (rows, seconds) = plain_copy(pool).await?;
    println!(
        "{}",
        serde_json::json!({
            "plain_copy_rows": rows,
            "plain_copy_seconds": seconds,
            "plain_copy_rows_per_second": rows as f64 / seconds,
        })
    );
    Ok(())
}

/// Builds the stored form of the file's history: per vessel a registration, then its
/// reports, in file order and numbered as the event store would.
fn history(file: &PathBuf) -> anyhow::Result<Vec<EventMessage>> {
    let input = File::open(file).with_context(|| format!("failed to open {}", file.display()))?;
    let parsed = ais::parse(input, Utc::now(), |_| {}, |_| {})?;
    let mut reports: Vec<(u64, usize, usize)> = Vec::new();
    for (vessel_index, vessel) in parsed.vessels.iter().enumerate() {
        for (report_index, line) in vessel.lines.iter().enumerate() {
            reports.push((*line, vessel_index, report_index));
        }
    }
    reports.sort_unstable();

    let mut log = EventLog::default();
    let users: Vec<Uuid> = parsed.vessels.iter().map(|_| Uuid::new_v4()).collect();
    let mut messages = Vec::with_capacity(reports.len() + users.len());
    for (vessel, user_id) in parsed.vessels.iter().zip(&users) {
        let event = UserEvent::UserRegistered {
            email: vessel.email(),
            name: vessel.user_name(),
            password_hash: "$argon2id$rebuild-benchmark".to_owned(),
            registered_at: log.now(),
        };
        messages.push(log.message("User", *user_id, &event)?);
    }
    for (_, vessel_index, report_index) in reports {
        let report = &parsed.vessels[vessel_index].reports[report_index];
        let event = LocationEvent::LocationRecorded {
            latitude: report.latitude,
            longitude: report.longitude,
            recorded_at: report.recorded_at,
        };
        messages.push(log.message("LocationTrack", users[vessel_index], &event)?);
    }
    Ok(messages)
}

/// Numbers sequences per aggregate and positions globally, one millisecond apart.
#[derive(Default)]
struct EventLog {
    position: i64,
    sequences: HashMap<(&'static str, Uuid), i64>,
}

impl EventLog {
    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + self.position).unwrap_or_default()
    }

    fn message<E: cqrs_es::DomainEvent>(
        &mut self,
        aggregate_type: &'static str,
        user_id: Uuid,
        event: &E,
    ) -> anyhow::Result<EventMessage> {
        let sequence = self.sequences.entry((aggregate_type, user_id)).or_insert(0);
        *sequence += 1;
        self.position += 1;
        Ok(EventMessage::from_stored(StoredEvent {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: user_id.to_string(),
            sequence: *sequence,
            position: self.position,
            event_type: event.event_type(),
            event_version: event.event_version(),
            stored_at: self.now(),
            payload: serde_json::to_value(event)?,
        }))
    }
}

/// Copies every row of `events` out in the binary format and into a bare table with the
/// same columns and no index, trigger or constraint. Returns the rows and the seconds the
/// `COPY ... FROM STDIN` took.
async fn plain_copy(pool: &PgPool) -> anyhow::Result<(u64, f64)> {
    let mut connection = pool.acquire().await?;
    let data: Vec<u8> = connection
        .copy_out_raw("COPY events TO STDOUT (FORMAT binary)")
        .await?
        .try_fold(Vec::new(), |mut data, chunk| async move {
            data.extend_from_slice(&chunk);
            Ok(data)
        })
        .await?;
    sqlx::query("CREATE TABLE plain_copy (LIKE events)")
        .execute(&mut *connection)
        .await?;
    let started = Instant::now();
    let mut copy = connection
        .copy_in_raw("COPY plain_copy FROM STDIN (FORMAT binary)")
        .await?;
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    let rows = copy.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE plain_copy")
        .execute(&mut *connection)
        .await?;
    Ok((rows, seconds))
}
