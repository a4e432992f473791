//! The paced load: location commands sent on a fixed schedule, each to a user with no
//! command in flight, with the send and response times of every accepted command.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use uuid::Uuid;

use super::client::{now_ms, reports, Client, Recorded};

/// Whether a command was sent during the warm-up or the measured window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measured,
}

/// A command that the command service accepted, with wall-clock times in ms since the epoch.
#[derive(Debug, Clone)]
pub struct AcceptedCommand {
    pub phase: Phase,
    pub recorded: Recorded,
    pub sent_ms: f64,
    pub accepted_ms: f64,
}

/// The schedule of the load.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Reports per command.
    pub batch: u32,
    /// Reports per second, in total.
    pub rate: u32,
    pub warmup: Duration,
    pub measured: Duration,
}

impl Pace {
    /// Time between two commands.
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.batch) / f64::from(self.rate))
    }
}

/// Everything the load sent and received.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    pub accepted: Vec<AcceptedCommand>,
    /// Commands sent in the measured window.
    pub measured_sent: u64,
    /// Commands of either phase that failed, and the first failure's message.
    pub failed: u64,
    pub first_failure: Option<String>,
    /// Scheduled measured commands not sent because every user had one in flight.
    pub measured_skipped: u64,
}

struct Finished {
    phase: Phase,
    sent_ms: f64,
    accepted_ms: f64,
    result: anyhow::Result<Recorded>,
}

/// Sends commands to `users` on the schedule of `pace`, then waits for the commands in
/// flight (each is bounded by the client's request timeout).
pub async fn run(client: &Client, users: &[Uuid], pace: Pace) -> LoadOutcome {
    let (idle_sender, mut idle) = mpsc::unbounded_channel::<usize>();
    for index in 0..users.len() {
        let _ = idle_sender.send(index);
    }
    let (finished_sender, mut finished) = mpsc::unbounded_channel::<Finished>();
    let mut counters = vec![0_u64; users.len()];
    let mut outcome = LoadOutcome::default();

    let start = Instant::now();
    let measure_start = start + pace.warmup;
    let end = measure_start + pace.measured;
    let period = pace.period();
    for tick in 0_u32.. {
        let due = start + period * tick;
        if due >= end {
            break;
        }
        sleep_until(due).await;
        let phase = if due < measure_start {
            Phase::Warmup
        } else {
            Phase::Measured
        };
        let Ok(index) = idle.try_recv() else {
            if phase == Phase::Measured {
                outcome.measured_skipped += 1;
            }
            continue;
        };
        if phase == Phase::Measured {
            outcome.measured_sent += 1;
        }

        let counter = counters[index];
        counters[index] += 1;
        let user_index = u32::try_from(index).unwrap_or(u32::MAX);
        let batch = reports(user_index, counter, pace.batch);
        let (client, user, idle_sender, finished_sender) = (
            client.clone(),
            users[index],
            idle_sender.clone(),
            finished_sender.clone(),
        );
        tokio::spawn(async move {
            let sent_ms = now_ms();
            let result = client.record(user, &batch).await;
            let accepted_ms = now_ms();
            let _ = idle_sender.send(index);
            let _ = finished_sender.send(Finished {
                phase,
                sent_ms,
                accepted_ms,
                result,
            });
        });
    }

    drop(finished_sender);
    while let Some(done) = finished.recv().await {
        match done.result {
            Ok(recorded) => outcome.accepted.push(AcceptedCommand {
                phase: done.phase,
                recorded,
                sent_ms: done.sent_ms,
                accepted_ms: done.accepted_ms,
            }),
            Err(error) => {
                outcome.failed += 1;
                outcome
                    .first_failure
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_of_batches() {
        let pace = Pace {
            batch: 10,
            rate: 2000,
            warmup: Duration::ZERO,
            measured: Duration::from_secs(1),
        };
        assert_eq!(pace.period(), Duration::from_millis(5));
    }

    #[test]
    fn period_of_single_reports() {
        let pace = Pace {
            batch: 1,
            rate: 2000,
            warmup: Duration::ZERO,
            measured: Duration::from_secs(1),
        };
        assert_eq!(pace.period(), Duration::from_micros(500));
    }
}
