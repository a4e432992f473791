//! The fan-out benchmark: the query service's part of the live-update path alone, from a
//! committed `rm_updates` row to a Socket.IO subscriber, with no Kafka or projection.
//!
//! - [`writer`]: the paced transactions and the projection's publisher.
//! - [`join`]: matching commits with the updates each subscriber saw.
//!
//! The tool takes the projection's place: it appends rows with
//! `meridian_event_log::live::append`, one transaction per tick, and publishes each committed
//! batch through `meridian_projection_workers`' own `Publisher`. One subscriber of the
//! whole-world area per query-service replica receives. The latency of an update is its
//! receive time (Node.js) minus the time right after its commit (this process), both read
//! from the system clock of this machine.

pub mod join;
pub mod writer;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use meridian_event_log::Settings;
use meridian_projection_workers::read_models::publisher::{LiveSettings, Publisher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cli::FanoutOptions;
use crate::latency::receiver::{Received, Receiver};
use crate::login::{login, LOGIN_TIMEOUT};
use crate::summary::{milliseconds, table, Distribution};
use join::Matched;
use writer::{Committed, Plan, WriteOutcome, Writer};

/// PostgreSQL connections: the writer uses one at a time, the publisher's pruning another.
const DATABASE_CONNECTIONS: u32 = 2;

/// Runs the benchmark that `options` describe and prints its results.
pub async fn run(options: FanoutOptions) -> anyhow::Result<()> {
    options.validate()?;
    let pool =
        meridian_event_log::database::connect(&options.database_url, DATABASE_CONNECTIONS).await?;
    let session = login(&options.command_url, &options.login, LOGIN_TIMEOUT).await?;
    let token = session.access_token().await?;
    let mut receivers = Vec::with_capacity(options.socket_url.len());
    for url in &options.socket_url {
        receivers.push(Receiver::start(&options.js_dir, url, &token).await?);
        eprintln!("subscribed to the whole-world area at {url}");
    }

    let shutdown = CancellationToken::new();
    let publisher = Publisher::start(
        &publisher_settings(&options)?,
        LiveSettings::default(),
        pool.clone(),
        shutdown.clone(),
    )?;
    let plan = Plan::new(
        options.rate,
        Duration::from_millis(options.tick_ms),
        Duration::from_secs(options.warmup_secs),
        Duration::from_secs(options.duration_secs),
    );
    eprintln!(
        "appending {} updates/s in transactions every {} ms for {} s warm-up and {} s measured",
        options.rate, options.tick_ms, options.warmup_secs, options.duration_secs
    );
    let load_before = load_average();
    let written = Writer {
        pool: &pool,
        publisher: &publisher,
        plan,
        users: options.users,
        bbox: [
            options.bbox[0],
            options.bbox[1],
            options.bbox[2],
            options.bbox[3],
        ],
    }
    .run()
    .await;
    let load_after = load_average();
    let written = match written {
        Ok(written) => written,
        Err(error) => {
            shutdown.cancel();
            stop_all(receivers).await;
            return Err(error);
        }
    };

    eprintln!(
        "load done; waiting up to {} s for {} measured updates on each subscriber",
        options.drain_secs,
        written.measured.len()
    );
    let received = drain(&mut receivers, &written.measured, options.drain_secs).await;
    shutdown.cancel();
    stop_all(receivers).await;
    let received = received?;

    let results: Vec<(String, &Received, Matched)> = options
        .socket_url
        .iter()
        .zip(&received)
        .map(|(url, received)| {
            (
                url.clone(),
                received,
                join::join(&written.measured, received),
            )
        })
        .collect();
    print_report(&options, &written, &results, (load_before, load_after));
    check_complete(&results)
}

/// Builds the projection's settings with this run's database, Redis and topic prefix, so
/// the publisher sends on the channel that the query services read.
fn publisher_settings(options: &FanoutOptions) -> anyhow::Result<Settings> {
    let mut settings = Settings::from_env().context("failed to read the MERIDIAN_* settings")?;
    settings.database_url = options.database_url.clone();
    settings.redis_url = options.redis_url.clone();
    settings.topic_prefix = options.topic_prefix.clone();
    Ok(settings)
}

/// Collects each subscriber's updates until it has every measured one or the drain time
/// has passed. The subscribers share one deadline.
async fn drain(
    receivers: &mut [Receiver],
    measured: &[Committed],
    drain_secs: u64,
) -> anyhow::Result<Vec<Received>> {
    let deadline = Instant::now() + Duration::from_secs(drain_secs);
    let expected: HashSet<(Uuid, i64)> = measured
        .iter()
        .map(|update| (update.user_id, update.sequence))
        .collect();
    let mut all = Vec::with_capacity(receivers.len());
    for receiver in receivers.iter_mut() {
        let mut received = Received::default();
        let mut waiting = expected.clone();
        receiver
            .collect_until(&mut received, deadline, |received| {
                waiting.retain(|key| !received.updates.contains_key(key));
                waiting.is_empty() || !received.problems.is_empty()
            })
            .await?;
        all.push(received);
    }
    Ok(all)
}

async fn stop_all(receivers: Vec<Receiver>) {
    for receiver in receivers {
        receiver.stop().await;
    }
}

/// Reads the one-minute load average from `/proc/loadavg`, or `None` where there is none.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next().map(str::to_owned)
}

fn print_report(
    options: &FanoutOptions,
    written: &WriteOutcome,
    results: &[(String, &Received, Matched)],
    (load_before, load_after): (Option<String>, Option<String>),
) {
    let elapsed = written.measured_elapsed.as_secs_f64();
    let achieved = if elapsed > 0.0 {
        written.measured.len() as f64 / elapsed
    } else {
        0.0
    };
    let unknown = || "unknown".to_owned();
    println!(
        "fan-out latency: {} updates/s requested in transactions every {} ms, {} users, \
         {} s warm-up, {} s measured, {} subscriber(s)",
        options.rate,
        options.tick_ms,
        options.users,
        options.warmup_secs,
        options.duration_secs,
        results.len()
    );
    println!(
        "measured updates committed: {} in {elapsed:.1} s ({achieved:.0}/s) in {} transactions; \
         warm-up updates: {}; ticks late by more than one tick: {}",
        written.measured.len(),
        written.transaction_ms.len(),
        written.warmup_updates,
        written.late_ticks
    );
    println!(
        "load average (1 min) before and after the load: {} and {}",
        load_before.unwrap_or_else(unknown),
        load_after.unwrap_or_else(unknown)
    );
    println!();

    let mut rows = Vec::new();
    for (url, received, matched) in results {
        let early = matched
            .latencies_ms
            .iter()
            .filter(|latency| **latency < 0.0)
            .count();
        let mut row = vec![
            format!("commit -> update received at {url}"),
            matched.latencies_ms.len().to_string(),
            matched.missing.len().to_string(),
            received.duplicates.to_string(),
            early.to_string(),
        ];
        row.extend(percentiles(&matched.latencies_ms));
        rows.push(row);
    }
    // Missing, duplicates and early apply to subscribers only.
    let mut row = vec![
        "transaction begin -> commit".to_owned(),
        written.transaction_ms.len().to_string(),
        String::new(),
        String::new(),
        String::new(),
    ];
    row.extend(percentiles(&written.transaction_ms));
    rows.push(row);
    println!(
        "{}",
        table(
            &[
                "stage",
                "count",
                "missing",
                "duplicates",
                "early",
                "p50",
                "p90",
                "p99",
                "max"
            ],
            &rows
        )
    );
}

/// Formats p50, p90, p99 and max of `samples`, or dashes when there are none.
fn percentiles(samples: &[f64]) -> [String; 4] {
    match Distribution::of(samples) {
        Some(d) => [d.p50, d.p90, d.p99, d.max].map(milliseconds),
        None => ["-", "-", "-", "-"].map(str::to_owned),
    }
}

/// Fails when a subscriber lost an update, received one twice or under the wrong identity,
/// or reported a problem such as a disconnect.
fn check_complete(results: &[(String, &Received, Matched)]) -> anyhow::Result<()> {
    for (url, received, matched) in results {
        if let Some(problem) = received.problems.first() {
            bail!("the subscriber at {url} reported a problem: {problem}");
        }
        if let Some(position) = matched.mismatched.first() {
            bail!(
                "{} updates at {url} carried another user or sequence than committed, such as \
                 position {position}",
                matched.mismatched.len()
            );
        }
        if let Some(position) = matched.missing.first() {
            bail!(
                "{} measured updates never arrived at {url}, such as position {position}",
                matched.missing.len()
            );
        }
        if received.duplicates > 0 {
            bail!(
                "{} updates arrived more than once at {url}",
                received.duplicates
            );
        }
    }
    Ok(())
}
