//! The paced writer: location updates appended to `rm_updates` in one transaction per tick,
//! each committed batch handed to the projection's own [`Publisher`], with the wall-clock
//! time taken right after every commit.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use meridian_event_log::live::{self, NewUpdate, UpdateBody, UpdateKind};
use meridian_projection_workers::read_models::publisher::Publisher;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::latency::client::now_ms;

/// Seed of the locations, so that two runs write the same points.
const LOCATION_SEED: u64 = 2_000;

/// The schedule of the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Updates per second, in total.
    pub rate: u32,
    /// Time between two transactions.
    pub tick: Duration,
    /// Ticks before the measured window.
    pub warmup_ticks: u64,
    /// Ticks of warm-up and measured window together.
    pub total_ticks: u64,
}

impl Plan {
    /// Builds the schedule of `warmup` then `measured` time, in ticks of `tick`.
    pub fn new(rate: u32, tick: Duration, warmup: Duration, measured: Duration) -> Self {
        let tick_micros = tick.as_micros().max(1);
        let ticks_in = |span: Duration| u64::try_from(span.as_micros() / tick_micros).unwrap_or(0);
        let warmup_ticks = ticks_in(warmup);
        Self {
            rate,
            tick,
            warmup_ticks,
            total_ticks: warmup_ticks + ticks_in(measured),
        }
    }

    /// Returns how many updates tick `index` appends. Spreading the remainder over the ticks
    /// keeps the total of the first n ticks at `rate * n * tick`, rounded down, for any tick.
    pub fn updates_in_tick(&self, index: u64) -> u64 {
        self.updates_due_after(index + 1) - self.updates_due_after(index)
    }

    fn updates_due_after(&self, ticks: u64) -> u64 {
        let micros = u128::from(ticks) * self.tick.as_micros();
        u64::try_from(u128::from(self.rate) * micros / 1_000_000).unwrap_or(u64::MAX)
    }
}

/// A measured update, with the time right after its transaction committed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Committed {
    pub position: i64,
    pub user_id: Uuid,
    pub sequence: i64,
    /// Milliseconds since the Unix epoch, from this machine's system clock.
    pub committed_ms: f64,
}

/// The measured updates of a run, with counts and timings of its transactions.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Updates of the measured window, in commit order.
    pub measured: Vec<Committed>,
    pub warmup_updates: u64,
    /// Measured transactions and the time each took from begin to commit, in ms.
    pub transaction_ms: Vec<f64>,
    /// Ticks that started more than one tick after their scheduled time.
    pub late_ticks: u64,
    /// Time from the first measured tick to the last measured commit.
    pub measured_elapsed: Duration,
}

/// Fake users, each with the sequence of its last update.
struct Users {
    ids: Vec<Uuid>,
    sequences: Vec<i64>,
    next: usize,
}

impl Users {
    fn new(count: u32) -> Self {
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        Self {
            ids: (0..count).map(|_| Uuid::new_v4()).collect(),
            sequences: vec![0; count],
            next: 0,
        }
    }

    /// Picks the users in turn and returns the next one's id and sequence.
    fn next(&mut self) -> (Uuid, i64) {
        let index = self.next;
        self.next = (self.next + 1) % self.ids.len();
        self.sequences[index] += 1;
        (self.ids[index], self.sequences[index])
    }
}

/// A paced writer: its connection pool, publisher, schedule, users and box.
pub struct Writer<'a> {
    pub pool: &'a PgPool,
    pub publisher: &'a Publisher,
    pub plan: Plan,
    pub users: u32,
    /// `[min_lon, min_lat, max_lon, max_lat]` in degrees.
    pub bbox: [f64; 4],
}

impl Writer<'_> {
    /// Appends and publishes the updates of every tick of the plan, then returns the measured
    /// ones. Fails on the first transaction that fails, because a gap would skew the rate.
    pub async fn run(&self) -> anyhow::Result<WriteOutcome> {
        let mut position = self.highest_position().await?;
        let mut users = Users::new(self.users);
        let mut rng = StdRng::seed_from_u64(LOCATION_SEED);
        let mut outcome = WriteOutcome::default();
        let mut ticks = tokio::time::interval(self.plan.tick);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut measure_start = None;

        for index in 0..self.plan.total_ticks {
            let scheduled = ticks.tick().await;
            if scheduled.elapsed() > self.plan.tick {
                outcome.late_ticks += 1;
            }
            let measured = index >= self.plan.warmup_ticks;
            if measured {
                measure_start.get_or_insert(scheduled);
            }

            let count = self.plan.updates_in_tick(index);
            let updates: Vec<NewUpdate> = (0..count)
                .map(|_| {
                    position += 1;
                    self.location_update(position, users.next(), &mut rng)
                })
                .collect();
            if updates.is_empty() {
                continue;
            }

            let began = Instant::now();
            let rows = self.append(&updates).await?;
            let committed_ms = now_ms();
            if measured {
                outcome
                    .transaction_ms
                    .push(began.elapsed().as_secs_f64() * 1000.0);
                outcome.measured.extend(rows.iter().map(|row| Committed {
                    position: row.position,
                    user_id: row.user_id,
                    sequence: row.body.as_ref().map_or(0, |body| body.sequence),
                    committed_ms,
                }));
            } else {
                outcome.warmup_updates += count;
            }
            self.publisher.publish(rows);
        }

        outcome.measured_elapsed = measure_start.map_or(Duration::ZERO, |start| start.elapsed());
        Ok(outcome)
    }

    /// Reads the highest position in `rm_updates`, so that a second run in the same
    /// database does not reuse a position (the column is unique).
    async fn highest_position(&self) -> anyhow::Result<i64> {
        sqlx::query_scalar("SELECT COALESCE(max(position), 0) FROM rm_updates")
            .fetch_one(self.pool)
            .await
            .context("failed to read the highest position in rm_updates")
    }

    /// Appends `updates` in one transaction, as the projection does after folding events.
    async fn append(&self, updates: &[NewUpdate]) -> anyhow::Result<Vec<live::LiveUpdate>> {
        let mut transaction = self
            .pool
            .begin()
            .await
            .context("failed to begin a transaction")?;
        let rows = live::append(&mut transaction, updates)
            .await
            .with_context(|| format!("failed to append {} updates", updates.len()))?;
        transaction
            .commit()
            .await
            .context("failed to commit the appended updates")?;
        Ok(rows)
    }

    fn location_update(
        &self,
        position: i64,
        (user_id, sequence): (Uuid, i64),
        rng: &mut StdRng,
    ) -> NewUpdate {
        let [min_lon, min_lat, max_lon, max_lat] = self.bbox;
        let latitude = rng.random_range(min_lat..=max_lat);
        let longitude = rng.random_range(min_lon..=max_lon);
        NewUpdate {
            position,
            user_id,
            kind: UpdateKind::Location,
            latitude: Some(latitude),
            longitude: Some(longitude),
            body: UpdateBody {
                sequence,
                event_type: "LocationRecorded".to_owned(),
                data: json!({
                    "latitude": latitude,
                    "longitude": longitude,
                    "recorded_at": Utc::now(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rate: u32, tick_ms: u64) -> Plan {
        Plan::new(
            rate,
            Duration::from_millis(tick_ms),
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
    }

    fn updates_in_first(plan: &Plan, ticks: u64) -> u64 {
        (0..ticks).map(|index| plan.updates_in_tick(index)).sum()
    }

    #[test]
    fn plan_counts_warmup_and_measured_ticks() {
        let plan = plan(2000, 10);
        assert_eq!(plan.warmup_ticks, 500);
        assert_eq!(plan.total_ticks, 3500);
    }

    #[test]
    fn even_rate_gives_equal_ticks() {
        let plan = plan(2000, 10);
        assert!((0..100).all(|index| plan.updates_in_tick(index) == 20));
    }

    #[test]
    fn uneven_rate_spreads_remainder() {
        let plan = plan(150, 10);
        let counts: Vec<u64> = (0..4).map(|index| plan.updates_in_tick(index)).collect();
        assert_eq!(counts, vec![1, 2, 1, 2]);
        assert_eq!(updates_in_first(&plan, 100), 150);
    }

    #[test]
    fn slow_rate_leaves_empty_ticks() {
        let plan = plan(1, 10);
        assert_eq!(updates_in_first(&plan, 99), 0);
        assert_eq!(updates_in_first(&plan, 100), 1);
    }

    #[test]
    fn whole_run_writes_rate_times_duration() {
        // 714 warm-up and 4,285 measured ticks of 7 ms are 34.993 s at 2,000/s.
        let plan = plan(2000, 7);
        assert_eq!(plan.total_ticks, 4999);
        assert_eq!(updates_in_first(&plan, plan.total_ticks), 69_986);
    }

    #[test]
    fn users_take_turns_and_count_sequences() {
        let mut users = Users::new(2);
        let first = users.next();
        let second = users.next();
        let third = users.next();
        assert_ne!(first.0, second.0);
        assert_eq!(third.0, first.0);
        assert_eq!((first.1, third.1), (1, 2));
    }
}
