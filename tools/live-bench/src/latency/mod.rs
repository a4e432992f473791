//! The latency benchmark: the time from an accepted location command to the matching
//! update on a Socket.IO subscriber of the whole-world `area` topic.
//!
//! - [`client`]: HTTP calls to the command and query services.
//! - [`load`]: the paced commands.
//! - [`receiver`]: the Node.js subscriber and the updates it saw.
//! - [`join`]: matching events with updates.
//! - [`stages`]: splitting the latency at the times PostgreSQL recorded.
//!
//! Both sides read the system clock of this machine: the sender `SystemTime` when a
//! response has been read, the subscriber `performance.timeOrigin + performance.now()`
//! when an update reaches its handler.

pub mod client;
pub mod join;
pub mod load;
pub mod receiver;
pub mod stages;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cli::LatencyOptions;
use crate::login::login;
use crate::summary::{milliseconds, table, Distribution};
use client::{Client, Lag};
use join::{expected_events, Joined};
use load::{LoadOutcome, Pace};
use receiver::{Received, Receiver};

/// How often `GET /v1/stats` is read during the load.
const LAG_SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Runs the benchmark that `options` describe and prints its results.
pub async fn run(options: LatencyOptions) -> anyhow::Result<()> {
    let session = login(
        &options.command_url,
        &options.login,
        Duration::from_secs(options.request_timeout_secs),
    )
    .await?;
    let token = session.access_token().await?;
    let client = Client::new(session, &options.command_url, &options.query_url);
    let mut receiver = Receiver::start(&options.js_dir, &options.socket_url, &token).await?;
    eprintln!(
        "subscribed to the whole-world area at {}",
        options.socket_url
    );

    let users = register_users(&client, &options).await?;
    let pace = Pace {
        batch: options.batch,
        rate: options.rate,
        warmup: Duration::from_secs(options.warmup_secs),
        measured: Duration::from_secs(options.duration_secs),
    };
    eprintln!(
        "sending {} reports/s as {:.1} commands/s for {} s warm-up and {} s measured",
        pace.rate,
        f64::from(pace.rate) / f64::from(pace.batch),
        options.warmup_secs,
        options.duration_secs
    );
    let (stop_sampling, sampler) = start_lag_sampler(client.clone());
    let outcome = load::run(&client, &users, pace).await;

    let mut received = Received::default();
    let mut waiting: HashSet<(Uuid, i64)> =
        expected_events(&outcome.accepted).into_iter().collect();
    eprintln!(
        "load done; waiting up to {} s for {} measured updates",
        options.drain_secs,
        waiting.len()
    );
    let drain_deadline = Instant::now() + Duration::from_secs(options.drain_secs);
    receiver
        .collect_until(&mut received, drain_deadline, |received| {
            waiting.retain(|key| !received.updates.contains_key(key));
            waiting.is_empty() || !received.problems.is_empty()
        })
        .await?;
    let _ = stop_sampling.send(true);
    let lag = sampler.await.context("the lag sampler panicked")?;
    receiver.stop().await;

    let joined = join::join(&outcome.accepted, &received);
    let stages = match &options.database_url {
        Some(url) => Some(stage_rows(url, &joined).await?),
        None => None,
    };
    print_report(&options, &outcome, &received, &joined, stages, &lag);
    check_complete(&outcome, &received, &joined)
}

/// Registers `options.users` users, a few at a time, and returns their ids in order.
async fn register_users(client: &Client, options: &LatencyOptions) -> anyhow::Result<Vec<Uuid>> {
    let run_id = Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut pending = JoinSet::new();
    let mut users = vec![Uuid::nil(); usize::try_from(options.users)?];
    let mut next = 0_u32;
    loop {
        while next < options.users && pending.len() < usize::try_from(options.register_concurrency)?
        {
            let (client, run_id, index) = (client.clone(), run_id.clone(), next);
            pending.spawn(async move { (index, client.register(&run_id, index).await) });
            next += 1;
        }
        let Some(joined) = pending.join_next().await else {
            break;
        };
        let (index, result) = joined.context("a registration task panicked")?;
        users[usize::try_from(index)?] =
            result.with_context(|| format!("registering user {index} failed"))?;
    }
    eprintln!(
        "registered {} users in {:.1} s",
        users.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(users)
}

/// The largest lags seen and how many samples were read or failed.
#[derive(Debug, Default)]
struct LagSummary {
    max: Lag,
    samples: u32,
    failures: u32,
    first_failure: Option<String>,
}

/// Reads `GET /v1/stats` every [`LAG_SAMPLE_PERIOD`] until the sender sends `true`.
fn start_lag_sampler(client: Client) -> (watch::Sender<bool>, tokio::task::JoinHandle<LagSummary>) {
    let (stop, mut stopped) = watch::channel(false);
    let handle = tokio::spawn(async move {
        let mut summary = LagSummary::default();
        loop {
            tokio::select! {
                _ = stopped.changed() => return summary,
                () = tokio::time::sleep(LAG_SAMPLE_PERIOD) => {}
            }
            match client.lag().await {
                Ok(lag) => {
                    summary.samples += 1;
                    summary.max.read_models = summary.max.read_models.max(lag.read_models);
                    summary.max.outbox_pending = summary.max.outbox_pending.max(lag.outbox_pending);
                }
                Err(error) => {
                    summary.failures += 1;
                    summary
                        .first_failure
                        .get_or_insert_with(|| format!("{error:#}"));
                }
            }
        }
    });
    (stop, handle)
}

/// Distributions of each stage of the deliveries, as table rows.
async fn stage_rows(database_url: &str, joined: &Joined) -> anyhow::Result<Vec<Vec<String>>> {
    let positions: Vec<i64> = joined.deliveries.iter().map(|d| d.position).collect();
    let times = stages::event_times(database_url, &positions).await?;
    let by_position: std::collections::HashMap<i64, stages::EventTimes> =
        times.into_iter().map(|t| (t.position, t)).collect();
    let mut store_to_projection = Vec::new();
    let mut projection_to_received = Vec::new();
    for delivery in &joined.deliveries {
        if let Some(times) = by_position.get(&delivery.position) {
            store_to_projection.push(times.projected_ms - times.stored_ms);
            projection_to_received.push(delivery.received_ms - times.projected_ms);
        }
    }
    Ok(vec![
        distribution_row(
            "event stored -> projection transaction start",
            &store_to_projection,
        ),
        distribution_row(
            "projection transaction start -> update received",
            &projection_to_received,
        ),
    ])
}

fn distribution_row(stage: &str, samples: &[f64]) -> Vec<String> {
    let mut row = vec![stage.to_owned()];
    match Distribution::of(samples) {
        Some(d) => {
            row.push(d.count.to_string());
            row.extend([d.p50, d.p90, d.p99, d.max].map(milliseconds));
        }
        None => row.extend(["0", "-", "-", "-", "-"].map(str::to_owned)),
    }
    row
}

fn print_report(
    options: &LatencyOptions,
    outcome: &LoadOutcome,
    received: &Received,
    joined: &Joined,
    stages: Option<Vec<Vec<String>>>,
    lag: &LagSummary,
) {
    let end_to_end: Vec<f64> = joined
        .deliveries
        .iter()
        .map(|d| d.received_ms - d.accepted_ms)
        .collect();
    // Every measured command counts here, whether or not its updates arrived.
    let command: Vec<f64> = outcome
        .accepted
        .iter()
        .filter(|command| command.phase == load::Phase::Measured)
        .map(|command| command.accepted_ms - command.sent_ms)
        .collect();
    let expected = joined.deliveries.len() + joined.missing.len();
    let achieved = expected as f64 / options.duration_secs as f64;
    let early = end_to_end.iter().filter(|latency| **latency < 0.0).count();

    println!(
        "live-update latency: {} reports/s requested as {:.1} commands/s of {} report(s), {} users, \
         {} s warm-up, {} s measured",
        options.rate,
        f64::from(options.rate) / f64::from(options.batch),
        options.batch,
        options.users,
        options.warmup_secs,
        options.duration_secs
    );
    println!(
        "measured commands: {} sent, {} skipped (every user had a command in flight); \
         failed commands of the whole run: {}",
        outcome.measured_sent, outcome.measured_skipped, outcome.failed
    );
    println!(
        "measured events stored: {expected} ({achieved:.0}/s); updates matched: {}, missing: {}, \
         duplicates: {}, received before the command's response: {early}",
        joined.deliveries.len(),
        joined.missing.len(),
        received.duplicates
    );
    println!();
    let mut rows = vec![
        distribution_row("command accepted -> update received", &end_to_end),
        distribution_row(
            "command sent -> response read (all measured commands)",
            &command,
        ),
    ];
    rows.extend(stages.unwrap_or_default());
    println!(
        "{}",
        table(&["stage", "count", "p50", "p90", "p99", "max"], &rows)
    );
    println!();
    println!(
        "GET /v1/stats every {} s ({} samples, {} failed): max read-models lag {} events, \
         max outbox backlog {} events",
        LAG_SAMPLE_PERIOD.as_secs(),
        lag.samples,
        lag.failures,
        lag.max.read_models,
        lag.max.outbox_pending
    );
    if let Some(failure) = &lag.first_failure {
        println!("first failed GET /v1/stats: {failure}");
    }
}

/// Fails when the run lost anything: a command, an update, or the subscriber's connection.
fn check_complete(
    outcome: &LoadOutcome,
    received: &Received,
    joined: &Joined,
) -> anyhow::Result<()> {
    if let Some(failure) = &outcome.first_failure {
        bail!("{} commands failed; the first: {failure}", outcome.failed);
    }
    if let Some(problem) = received.problems.first() {
        bail!("the subscriber reported a problem: {problem}");
    }
    if let Some((user, sequence)) = joined.missing.first() {
        bail!(
            "{} measured updates never arrived, such as sequence {sequence} of user {user}",
            joined.missing.len()
        );
    }
    if received.duplicates > 0 {
        bail!("{} updates arrived more than once", received.duplicates);
    }
    Ok(())
}
