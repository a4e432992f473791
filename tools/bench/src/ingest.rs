//! Durable ingest through the command API. Every client sends its vessels' reports as fast
//! as the command service responds, one command in flight per client. After the case, the
//! events in the store are counted for the case's users.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::client::{BenchClient, Outcome};
use crate::stats::{per_second, Latency};
use crate::workload::{locations_body, Batch};

/// One prepared command: its URL, body and the user it writes.
struct Command {
    url: String,
    body: Bytes,
    user: usize,
    reports: u64,
}

/// Figures of one ingest case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub clients: usize,
    pub batch_size: usize,
    pub commands_sent: u64,
    pub commands_accepted: u64,
    pub commands_failed: u64,
    pub reports_sent: u64,
    /// Sum of `stored` over the 2xx responses.
    pub events_acknowledged: u64,
    /// Location events of the case's users in the `events` table after the case.
    pub events_in_store: u64,
    /// Acknowledged events of a user beyond what the store holds for that user.
    pub events_missing: u64,
    pub seconds: f64,
    /// `events_in_store` per second of the case's wall-clock time.
    pub events_per_second: f64,
    pub commands_per_second: f64,
    /// Latency of the accepted commands, from sending to reading the whole response.
    pub latency: Option<Latency>,
    /// Whether the time limit ended the case before every planned command was sent.
    pub stopped_at_time_limit: bool,
    pub first_failure: Option<String>,
}

/// Counts of one client of a case.
#[derive(Default)]
struct ClientTally {
    commands_sent: u64,
    commands_failed: u64,
    reports_sent: u64,
    /// Acknowledged events per user index.
    acknowledged: HashMap<usize, u64>,
    latencies: Vec<Duration>,
    first_failure: Option<String>,
}

/// Runs one case: `plans[c]` are the batches of client `c`, `users[v]` the user of vessel
/// `v`. Stops sending at `time_limit`; a command in flight then still completes.
pub async fn run_case(
    client: &BenchClient,
    pool: &PgPool,
    users: &[Uuid],
    plans: Vec<Vec<Batch>>,
    batch_size: usize,
    time_limit: Duration,
) -> anyhow::Result<CaseResult> {
    let clients = plans.len();
    let planned: usize = plans.iter().map(Vec::len).sum();
    let prepared: Vec<Vec<Command>> = plans
        .into_iter()
        .map(|batches| prepare(client, users, batches))
        .collect();

    let started = Instant::now();
    let deadline = started + time_limit;
    let mut tasks = JoinSet::new();
    for commands in prepared {
        let client = client.clone();
        tasks.spawn(async move { send_all(&client, commands, deadline).await });
    }
    let tallies = tasks.join_all().await;
    let elapsed = started.elapsed();

    let mut total = ClientTally::default();
    for tally in tallies {
        merge(&mut total, tally);
    }
    let stored = stored_per_user(pool, users).await?;
    Ok(summarize(
        total, &stored, clients, batch_size, planned, elapsed,
    ))
}

fn prepare(client: &BenchClient, users: &[Uuid], batches: Vec<Batch>) -> Vec<Command> {
    batches
        .into_iter()
        .map(|batch| Command {
            url: client.locations_url(users[batch.vessel]),
            body: locations_body(&batch.reports),
            user: batch.vessel,
            reports: batch.reports.len() as u64,
        })
        .collect()
}

async fn send_all(client: &BenchClient, commands: Vec<Command>, deadline: Instant) -> ClientTally {
    let mut tally = ClientTally {
        latencies: Vec::with_capacity(commands.len()),
        ..ClientTally::default()
    };
    for command in commands {
        if Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        let outcome = client.record(&command.url, &command.body).await;
        let latency = sent.elapsed();

        tally.commands_sent += 1;
        tally.reports_sent += command.reports;
        match outcome {
            Outcome::Accepted(recorded) => {
                tally.latencies.push(latency);
                *tally.acknowledged.entry(command.user).or_default() += recorded.stored;
            }
            Outcome::Failed(reason) => {
                tally.commands_failed += 1;
                tally.first_failure.get_or_insert(reason);
            }
        }
    }
    tally
}

fn merge(total: &mut ClientTally, tally: ClientTally) {
    total.commands_sent += tally.commands_sent;
    total.commands_failed += tally.commands_failed;
    total.reports_sent += tally.reports_sent;
    for (user, events) in tally.acknowledged {
        *total.acknowledged.entry(user).or_default() += events;
    }
    total.latencies.extend(tally.latencies);
    if total.first_failure.is_none() {
        total.first_failure = tally.first_failure;
    }
}

fn summarize(
    total: ClientTally,
    stored: &HashMap<usize, u64>,
    clients: usize,
    batch_size: usize,
    planned: usize,
    elapsed: Duration,
) -> CaseResult {
    let events_acknowledged = total.acknowledged.values().sum();
    let events_in_store = stored.values().sum();
    let events_missing = total
        .acknowledged
        .iter()
        .map(|(user, events)| events.saturating_sub(stored.get(user).copied().unwrap_or(0)))
        .sum();
    let commands_accepted = total.commands_sent - total.commands_failed;
    CaseResult {
        clients,
        batch_size,
        commands_sent: total.commands_sent,
        commands_accepted,
        commands_failed: total.commands_failed,
        reports_sent: total.reports_sent,
        events_acknowledged,
        events_in_store,
        events_missing,
        seconds: elapsed.as_secs_f64(),
        events_per_second: per_second(events_in_store, elapsed),
        commands_per_second: per_second(commands_accepted, elapsed),
        latency: Latency::of(&total.latencies),
        stopped_at_time_limit: (total.commands_sent as usize) < planned,
        first_failure: total.first_failure,
    }
}

/// Counts the location events of each user in the store, keyed by the user's index.
pub async fn stored_per_user(pool: &PgPool, users: &[Uuid]) -> anyhow::Result<HashMap<usize, u64>> {
    let ids: Vec<String> = users.iter().map(Uuid::to_string).collect();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*) FROM events \
         WHERE aggregate_type = 'LocationTrack' AND aggregate_id = ANY($1) \
         GROUP BY aggregate_id",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .context("failed to count the stored location events")?;

    let index_of: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| (id.as_str(), index))
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|(id, count)| {
            let index = *index_of.get(id.as_str())?;
            Some((index, u64::try_from(count).unwrap_or(0)))
        })
        .collect())
}
