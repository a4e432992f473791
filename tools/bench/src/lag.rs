//! End-to-end lag: commands at a steady rate, and for each one the time from its 2xx
//! response to the read model showing it.
//!
//! The read-models projection records the last sequence it applied per aggregate in
//! `rm_applied`, in the transaction that changes the read models. A poller reads the rows
//! of the phase's users every poll interval. A command counts as shown at the start of the
//! first poll whose `last_sequence` reaches the command's last sequence. The row was not
//! there at the start of the poll before, so the error is at most one poll interval plus
//! one query's duration, and the poller reports the largest gap between two polls.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::client::{BenchClient, Outcome};
use crate::pacing::Schedule;
use crate::stats::{per_second, Latency};
use crate::workload::{locations_body, Batch};

/// Bounds and rate of the lag phase.
#[derive(Debug, Clone)]
pub struct LagBounds {
    pub events_per_second: f64,
    pub clients: usize,
    pub batch_size: usize,
    pub send_time: Duration,
    /// Time to wait after the last command for the read model to show the rest.
    pub drain_time: Duration,
    pub poll_interval: Duration,
}

/// Figures of the lag phase.
#[derive(Debug, Clone, Serialize)]
pub struct LagResult {
    pub requested_events_per_second: f64,
    pub achieved_events_per_second: f64,
    pub clients: usize,
    pub batch_size: usize,
    pub commands_accepted: u64,
    pub commands_failed: u64,
    /// Commands sent more than one interval after their due time.
    pub commands_late: u64,
    pub events_accepted: u64,
    /// Accepted commands that the read model showed within the drain time.
    pub commands_shown: u64,
    pub commands_not_shown: u64,
    /// Age of the oldest command not shown when the phase stopped.
    pub oldest_not_shown_seconds: Option<f64>,
    /// From the 2xx response to the read model showing the command.
    pub lag: Option<Latency>,
    /// Largest time between the starts of two polls of `rm_applied`.
    pub max_poll_gap_ms: f64,
    pub first_failure: Option<String>,
}

/// Accepted commands not yet shown, per user: last sequence and acceptance time, in order.
type Pending = Arc<Mutex<HashMap<String, VecDeque<(i64, Instant)>>>>;
/// When the last sender finished, once it has.
type SendingEnded = Arc<Mutex<Option<Instant>>>;

/// Locks `mutex`, also after a thread panicked while holding it: the data stays consistent
/// because every critical section only pushes or pops whole entries.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the lag phase with `plans[c]` as the batches of client `c`.
pub async fn run(
    client: &BenchClient,
    pool: &PgPool,
    users: &[Uuid],
    plans: Vec<Vec<Batch>>,
    bounds: &LagBounds,
) -> anyhow::Result<LagResult> {
    let schedule = Schedule::for_rate(bounds.events_per_second, bounds.batch_size, bounds.clients);
    let pending: Pending = Arc::default();
    let started = Instant::now();

    let mut senders = JoinSet::new();
    for (index, batches) in plans.into_iter().enumerate() {
        let count = schedule.commands_within(index, bounds.send_time);
        let commands: Vec<(String, Uuid, Bytes, u64)> = batches
            .into_iter()
            .take(count)
            .map(|batch| {
                let user = users[batch.vessel];
                let reports = batch.reports.len() as u64;
                (
                    client.locations_url(user),
                    user,
                    locations_body(&batch.reports),
                    reports,
                )
            })
            .collect();
        let client = client.clone();
        let pending = pending.clone();
        senders.spawn(async move {
            send_paced(&client, commands, schedule, index, started, pending).await
        });
    }

    let user_ids: Vec<String> = users.iter().map(Uuid::to_string).collect();
    let sending_ended: SendingEnded = Arc::default();
    let poller = {
        let pool = pool.clone();
        let pending = pending.clone();
        let sending_ended = sending_ended.clone();
        let interval = bounds.poll_interval;
        let drain_time = bounds.drain_time;
        tokio::spawn(async move {
            poll_applied(
                &pool,
                &user_ids,
                &pending,
                &sending_ended,
                interval,
                drain_time,
            )
            .await
        })
    };

    let mut sent = SendTally::default();
    for tally in senders.join_all().await {
        sent.merge(tally);
    }
    let send_elapsed = started.elapsed();
    *lock(&sending_ended) = Some(Instant::now());
    let polled = poller.await.context("the rm_applied poller panicked")??;

    let now = Instant::now();
    let (not_shown, oldest) = {
        let pending = lock(&pending);
        let not_shown: usize = pending.values().map(VecDeque::len).sum();
        let oldest = pending
            .values()
            .filter_map(|queue| queue.front())
            .map(|(_, accepted)| now - *accepted)
            .max();
        (not_shown, oldest)
    };

    Ok(LagResult {
        requested_events_per_second: bounds.events_per_second,
        achieved_events_per_second: per_second(sent.events, send_elapsed),
        clients: bounds.clients,
        batch_size: bounds.batch_size,
        commands_accepted: sent.accepted,
        commands_failed: sent.failed,
        commands_late: sent.late,
        events_accepted: sent.events,
        commands_shown: polled.lags.len() as u64,
        commands_not_shown: not_shown as u64,
        oldest_not_shown_seconds: oldest.map(|age| age.as_secs_f64()),
        lag: Latency::of(&polled.lags),
        max_poll_gap_ms: polled.max_gap.as_secs_f64() * 1000.0,
        first_failure: sent.first_failure,
    })
}

#[derive(Default)]
struct SendTally {
    accepted: u64,
    failed: u64,
    late: u64,
    events: u64,
    first_failure: Option<String>,
}

impl SendTally {
    fn merge(&mut self, other: SendTally) {
        self.accepted += other.accepted;
        self.failed += other.failed;
        self.late += other.late;
        self.events += other.events;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }
}

/// Sends the commands of client `index` at their due times, or at once when late.
async fn send_paced(
    client: &BenchClient,
    commands: Vec<(String, Uuid, Bytes, u64)>,
    schedule: Schedule,
    index: usize,
    started: Instant,
    pending: Pending,
) -> SendTally {
    let mut tally = SendTally::default();
    for (number, (url, user, body, _reports)) in commands.into_iter().enumerate() {
        let due = started + schedule.due(index, number);
        let now = Instant::now();
        if now < due {
            tokio::time::sleep_until(due.into()).await;
        } else if now - due > schedule.interval {
            tally.late += 1;
        }
        match client.record(&url, &body).await {
            Outcome::Accepted(recorded) => {
                let accepted_at = Instant::now();
                tally.accepted += 1;
                tally.events += recorded.stored;
                if let Some(sequence) = recorded.last_sequence.filter(|_| recorded.stored > 0) {
                    let mut pending = lock(&pending);
                    pending
                        .entry(user.to_string())
                        .or_default()
                        .push_back((sequence, accepted_at));
                }
            }
            Outcome::Failed(reason) => {
                tally.failed += 1;
                tally.first_failure.get_or_insert(reason);
            }
        }
    }
    tally
}

struct Polled {
    lags: Vec<Duration>,
    max_gap: Duration,
}

/// Polls `rm_applied` and moves each shown command from `pending` to the returned lags,
/// until sending has ended and nothing is pending, or `drain_time` after sending ended.
async fn poll_applied(
    pool: &PgPool,
    user_ids: &[String],
    pending: &Pending,
    sending_ended: &SendingEnded,
    interval: Duration,
    drain_time: Duration,
) -> anyhow::Result<Polled> {
    let mut lags = Vec::new();
    let mut max_gap = Duration::ZERO;
    let mut previous: Option<Instant> = None;
    loop {
        let poll_start = Instant::now();
        if let Some(previous) = previous {
            max_gap = max_gap.max(poll_start - previous);
        }
        previous = Some(poll_start);

        let applied: Vec<(String, i64)> = sqlx::query_as(
            "SELECT aggregate_id, last_sequence FROM rm_applied \
             WHERE aggregate_type = 'LocationTrack' AND aggregate_id = ANY($1)",
        )
        .bind(user_ids)
        .fetch_all(pool)
        .await
        .context("failed to read rm_applied")?;

        let empty = {
            let mut pending = lock(pending);
            for (user, last_sequence) in applied {
                if let Some(queue) = pending.get_mut(&user) {
                    while queue
                        .front()
                        .is_some_and(|(sequence, _)| *sequence <= last_sequence)
                    {
                        if let Some((_, accepted_at)) = queue.pop_front() {
                            lags.push(poll_start.saturating_duration_since(accepted_at));
                        }
                    }
                }
            }
            pending.values().all(VecDeque::is_empty)
        };
        if let Some(ended) = *lock(sending_ended) {
            if empty || Instant::now() >= ended + drain_time {
                break;
            }
        }
        tokio::time::sleep_until((poll_start + interval).into()).await;
    }
    Ok(Polled { lags, max_gap })
}
