//! The naive baseline: the same reports through a plain cqrs-es `CqrsFramework` on
//! postgres-es's `PostgresEventRepository`, one command per event, in a scratch database
//! with postgres-es's standard schema. No snapshots, no sealing, no outbox, no HTTP.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use meridian_domain::location::LocationReport;
use postgres_es::{postgres_cqrs, PostgresCqrs};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::stats::{per_second, Latency};
use crate::workload::Batch;

/// postgres-es's standard event and snapshot tables (its `db/init.sql`, version 0.5.0).
const SCHEMA: [&str; 2] = [
    "CREATE TABLE events (
        aggregate_type text                         NOT NULL,
        aggregate_id   text                         NOT NULL,
        sequence       bigint CHECK (sequence >= 0) NOT NULL,
        event_type     text                         NOT NULL,
        event_version  text                         NOT NULL,
        payload        json                         NOT NULL,
        metadata       json                         NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, sequence)
    )",
    "CREATE TABLE snapshots (
        aggregate_type   text                                 NOT NULL,
        aggregate_id     text                                 NOT NULL,
        last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
        current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
        payload          json                                 NOT NULL,
        PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
    )",
];

/// A location track that stores every report it is given as one event.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct NaiveTrack {
    reports: u64,
    latest: Option<LocationReport>,
}

/// Records one report.
#[derive(Debug)]
pub struct RecordLocation(pub LocationReport);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NaiveEvent {
    LocationRecorded {
        latitude: f64,
        longitude: f64,
        recorded_at: DateTime<Utc>,
    },
}

impl DomainEvent for NaiveEvent {
    fn event_type(&self) -> String {
        "LocationRecorded".to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

impl Aggregate for NaiveTrack {
    const TYPE: &'static str = "LocationTrack";
    type Command = RecordLocation;
    type Event = NaiveEvent;
    type Error = Infallible;
    type Services = ();

    async fn handle(
        &mut self,
        command: RecordLocation,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Infallible> {
        let RecordLocation(report) = command;
        let event = NaiveEvent::LocationRecorded {
            latitude: report.latitude,
            longitude: report.longitude,
            recorded_at: report.recorded_at,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: NaiveEvent) {
        let NaiveEvent::LocationRecorded {
            latitude,
            longitude,
            recorded_at,
        } = event;
        self.reports += 1;
        self.latest = Some(LocationReport {
            latitude,
            longitude,
            recorded_at,
        });
    }
}

/// Figures of the naive baseline.
#[derive(Debug, Clone, Serialize)]
pub struct NaiveResult {
    pub clients: usize,
    pub pool_connections: u32,
    pub commands_sent: u64,
    pub commands_failed: u64,
    pub events_in_store: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub latency: Option<Latency>,
    pub stopped_at_time_limit: bool,
    pub first_failure: Option<String>,
}

/// Sends every planned report as one command in a scratch database `database_url`, which
/// is created first and dropped at the end, also when the run fails.
pub async fn run(
    database_url: &str,
    plans: Vec<Vec<Batch>>,
    pool_connections: u32,
    time_limit: Duration,
) -> anyhow::Result<NaiveResult> {
    meridian_event_log::database::create_database_if_missing(database_url).await?;
    let result = run_in(database_url, plans, pool_connections, time_limit).await;
    let dropped = meridian_event_log::database::drop_database(database_url)
        .await
        .context("failed to drop the naive baseline's database");
    let result = result?;
    dropped?;
    Ok(result)
}

async fn run_in(
    database_url: &str,
    plans: Vec<Vec<Batch>>,
    pool_connections: u32,
    time_limit: Duration,
) -> anyhow::Result<NaiveResult> {
    let pool = PgPoolOptions::new()
        .max_connections(pool_connections)
        .acquire_timeout(Duration::from_secs(30))
        .connect(database_url)
        .await
        .context("failed to connect to the naive baseline's database")?;
    for statement in SCHEMA {
        sqlx::query(statement).execute(&pool).await?;
    }
    let cqrs = std::sync::Arc::new(postgres_cqrs::<NaiveTrack>(pool.clone(), Vec::new(), ()));
    let clients = plans.len();
    let planned: usize = plans
        .iter()
        .map(|plan| plan.iter().map(|b| b.reports.len()).sum::<usize>())
        .sum();
    // Each vessel gets an aggregate id of its own.
    let vessel_ids: Vec<String> = (0..=max_vessel(&plans))
        .map(|_| Uuid::new_v4().to_string())
        .collect();

    let started = Instant::now();
    let deadline = started + time_limit;
    let mut tasks = JoinSet::new();
    for batches in plans {
        let cqrs = cqrs.clone();
        let ids = vessel_ids.clone();
        tasks.spawn(async move { send_all(&cqrs, &ids, batches, deadline).await });
    }
    let mut sent = 0;
    let mut failed = 0;
    let mut latencies = Vec::new();
    let mut first_failure = None;
    for tally in tasks.join_all().await {
        sent += tally.sent;
        failed += tally.failed;
        latencies.extend(tally.latencies);
        if first_failure.is_none() {
            first_failure = tally.first_failure;
        }
    }
    let elapsed = started.elapsed();

    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    let stored = u64::try_from(stored).unwrap_or(0);
    Ok(NaiveResult {
        clients,
        pool_connections,
        commands_sent: sent,
        commands_failed: failed,
        events_in_store: stored,
        seconds: elapsed.as_secs_f64(),
        events_per_second: per_second(stored, elapsed),
        latency: Latency::of(&latencies),
        stopped_at_time_limit: (sent as usize) < planned,
        first_failure,
    })
}

fn max_vessel(plans: &[Vec<Batch>]) -> usize {
    plans
        .iter()
        .flatten()
        .map(|batch| batch.vessel)
        .max()
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    sent: u64,
    failed: u64,
    latencies: Vec<Duration>,
    first_failure: Option<String>,
}

/// Executes one command per report, in order, until `deadline`.
async fn send_all(
    cqrs: &PostgresCqrs<NaiveTrack>,
    vessel_ids: &[String],
    batches: Vec<Batch>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    for batch in batches {
        for report in batch.reports {
            if Instant::now() >= deadline {
                return tally;
            }
            let started = Instant::now();
            let result = cqrs
                .execute(&vessel_ids[batch.vessel], RecordLocation(report))
                .await;
            tally.sent += 1;
            match result {
                Ok(()) => tally.latencies.push(started.elapsed()),
                Err(error) => {
                    tally.failed += 1;
                    tally
                        .first_failure
                        .get_or_insert_with(|| format!("a naive command failed: {error}"));
                }
            }
        }
    }
    tally
}
