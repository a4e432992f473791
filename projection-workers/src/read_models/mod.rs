//! The `read-models` projection: folds every event into `rm_users`, `rm_profiles`,
//! `rm_latest_locations` and `rm_location_history`.
//!
//! Each batch is one PostgreSQL transaction that locks the batch's partitions in
//! `projection_offsets`, skips messages below the stored next offset, folds the rest,
//! and stores the new next offsets. A restart therefore neither loses a message nor
//! applies one twice, whatever offsets the consumer group committed to Kafka.
//!
//! The same transaction appends the batch's live updates to `rm_updates` and records each
//! aggregate's last processed sequence in `rm_applied`, for reads that wait for a position.
//! After the commit, [`publisher`] sends the updates to the query services through Redis.

pub mod fold;
mod history_copy;
pub mod publisher;
pub mod rebuild;
mod store;
pub mod updates;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use anyhow::Context;
use meridian_crypto::EventCipher;
use meridian_event_log::live::{self, LiveUpdate, NewUpdate};
use meridian_event_log::Settings;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::consumer::{self, Batch, BatchHandler, BatchOutcome, Counters};
use crate::event::{AggregateEvent, ProjectedEvent};
use crate::offsets;
use fold::{Folded, ReadModelRows};
use publisher::{LiveSettings, Publisher};

/// Name of the projection in `projection_offsets` and in its consumer group.
pub const PROJECTION: &str = "read-models";

/// The read-model projection, ready to run.
pub struct ReadModelProjection {
    settings: Settings,
    pool: PgPool,
    cipher: EventCipher,
    live_settings: LiveSettings,
    counters: Arc<Counters>,
}

impl ReadModelProjection {
    pub fn new(settings: Settings, pool: PgPool, cipher: EventCipher) -> Self {
        Self {
            settings,
            pool,
            cipher,
            live_settings: LiveSettings::default(),
            counters: Arc::default(),
        }
    }

    /// Replaces the default retention of live updates.
    pub fn with_live_settings(mut self, live_settings: LiveSettings) -> Self {
        self.live_settings = live_settings;
        self
    }

    /// Counters that [`ReadModelProjection::run`] updates after each batch.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Consumes the events topic until `shutdown` is cancelled, creating the topic first
    /// when it is missing.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer_settings = crate::consumer_settings(&self.settings, PROJECTION);
        crate::ensure_events_topic(&self.settings).await?;
        let start_offsets = offsets::load(&self.pool, PROJECTION, &consumer_settings.topic)
            .await
            .context("failed to load the stored offsets of read-models")?;
        let publisher = Publisher::start(
            &self.settings,
            self.live_settings,
            self.pool.clone(),
            shutdown.clone(),
        )?;
        let handler = ReadModelHandler {
            pool: self.pool,
            publisher,
        };
        consumer::run_projection(
            consumer_settings,
            self.cipher,
            start_offsets,
            handler,
            self.counters,
            shutdown,
        )
        .await
    }
}

struct ReadModelHandler {
    pool: PgPool,
    publisher: Publisher,
}

impl BatchHandler for ReadModelHandler {
    async fn apply(&self, batch: &Batch) -> anyhow::Result<BatchOutcome> {
        let applied = apply_batch(&self.pool, batch).await?;
        self.publisher.publish(applied.updates);
        Ok(applied.outcome)
    }
}

/// The result of one committed batch.
#[derive(Debug, Default)]
pub struct AppliedBatch {
    pub outcome: BatchOutcome,
    /// The live updates it appended, in `seq` order.
    pub updates: Vec<LiveUpdate>,
}

/// Applies one batch in one transaction, together with the new next offsets.
pub async fn apply_batch(pool: &PgPool, batch: &Batch) -> anyhow::Result<AppliedBatch> {
    let partitions: Vec<i32> = batch.next_offsets().into_keys().collect();
    let mut transaction = pool.begin().await.context("failed to begin transaction")?;
    let stored = offsets::lock(&mut transaction, PROJECTION, &batch.topic, &partitions)
        .await
        .context("failed to lock projection offsets")?;
    let unseen = select_unseen(batch, &stored);

    let mut rows = ReadModelRows::default();
    let (users, profiles, locations) = users_by_kind(&unseen.events);
    store::load_rows(&mut transaction, &mut rows, &users, &profiles, &locations)
        .await
        .context("failed to load read-model rows")?;

    let mut outcome = BatchOutcome {
        redelivered: unseen.redelivered,
        ..BatchOutcome::default()
    };
    let mut erased = Vec::new();
    let mut new_updates = Vec::new();
    for event in &unseen.events {
        if event.event_type == consumer::ERASED_EVENT {
            erased.push(event.user_id);
            new_updates.extend(updates::update_for(event).map(|update| (event.event_id, update)));
            outcome.applied += 1;
            continue;
        }
        match rows.fold(event) {
            Folded::Applied => {
                outcome.applied += 1;
                new_updates
                    .extend(updates::update_for(event).map(|update| (event.event_id, update)));
            }
            Folded::AlreadyApplied => outcome.already_applied += 1,
            Folded::UnknownUser => tracing::error!(
                projection = PROJECTION,
                user_id = %event.user_id,
                sequence = event.sequence,
                position = event.position,
                event_type = %event.event_type,
                "skipping event of a user that rm_users does not have"
            ),
        }
    }

    let new_history_ids = store::write_rows(&mut transaction, &rows)
        .await
        .context("failed to write read-model rows")?;
    // History rows that an earlier batch already stored (copies of an event published
    // twice) were counted as applied, and their live updates exist already.
    let stored_before: HashSet<Uuid> = rows
        .history
        .iter()
        .map(|row| row.event_id)
        .filter(|event_id| !new_history_ids.contains(event_id))
        .collect();
    let new_updates: Vec<NewUpdate> = new_updates
        .into_iter()
        .filter(|(event_id, _)| !stored_before.contains(event_id))
        .map(|(_, update)| update)
        .collect();
    let stored_before = u64::try_from(stored_before.len()).unwrap_or(u64::MAX);
    outcome.applied -= stored_before.min(outcome.applied);
    outcome.already_applied += stored_before;
    delete_users(&mut transaction, &erased)
        .await
        .context("failed to delete the read-model rows of erased users")?;
    live::forget_users(&mut transaction, &erased)
        .await
        .context("failed to blank the live updates of erased users")?;
    store::record_applied(&mut transaction, &unseen.events)
        .await
        .context("failed to record the processed sequences")?;

    offsets::store(
        &mut transaction,
        PROJECTION,
        &batch.topic,
        &unseen.next_offsets,
    )
    .await
    .context("failed to store projection offsets")?;
    // Last, because it takes the lock that serializes every writer of live updates.
    let new_updates = without_erased(new_updates, &erased);
    let updates = live::append(&mut transaction, &new_updates)
        .await
        .context("failed to append live updates")?;
    transaction
        .commit()
        .await
        .context("failed to commit read-model transaction")?;
    Ok(AppliedBatch { outcome, updates })
}

/// Drops the updates of users that the same batch erases, except the erasure itself, so
/// their personal data is neither stored in `rm_updates` nor published.
fn without_erased(updates: Vec<NewUpdate>, erased: &[Uuid]) -> Vec<NewUpdate> {
    if erased.is_empty() {
        return updates;
    }
    updates
        .into_iter()
        .filter(|update| {
            !erased.contains(&update.user_id) || update.body.event_type == consumer::ERASED_EVENT
        })
        .collect()
}

/// Deletes every read-model row of the erased `users`. Runs after the batch's rows are
/// written, so rows the same batch folded for them are deleted too.
pub(crate) async fn delete_users(
    connection: &mut sqlx::PgConnection,
    users: &[Uuid],
) -> Result<(), sqlx::Error> {
    if users.is_empty() {
        return Ok(());
    }
    for table in [
        "rm_location_history",
        "rm_latest_locations",
        "rm_profiles",
        "rm_users",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = ANY($1)"))
            .bind(users)
            .execute(&mut *connection)
            .await?;
    }
    tracing::info!(
        projection = PROJECTION,
        users = users.len(),
        "deleted the read-model rows of erased users"
    );
    Ok(())
}

/// Messages of a batch at or after the stored next offset of their partition.
#[derive(Debug, Default)]
struct Unseen<'a> {
    /// Decoded events among them, in consumption order.
    events: Vec<&'a ProjectedEvent>,
    /// Messages below the stored next offset, which an earlier batch applied.
    redelivered: u64,
    /// Next offset per partition after the batch, for partitions the batch advanced.
    next_offsets: BTreeMap<i32, i64>,
}

fn select_unseen<'a>(batch: &'a Batch, stored: &BTreeMap<i32, i64>) -> Unseen<'a> {
    let mut unseen = Unseen::default();
    let mut next = stored.clone();
    for message in &batch.messages {
        let expected = next.entry(message.partition).or_insert(0);
        if message.offset < *expected {
            unseen.redelivered += 1;
            continue;
        }
        *expected = message.offset + 1;
        unseen.next_offsets.insert(message.partition, *expected);
        if let Some(event) = &message.event {
            unseen.events.push(event);
        }
    }
    unseen
}

/// Returns the ids of users with `User`, `Profile` and `LocationTrack` events.
fn users_by_kind(events: &[&ProjectedEvent]) -> (Vec<Uuid>, Vec<Uuid>, Vec<Uuid>) {
    let mut users = Vec::new();
    let mut profiles = Vec::new();
    let mut locations = Vec::new();
    for event in events {
        let ids = match event.event {
            AggregateEvent::User(_) => &mut users,
            AggregateEvent::Profile(_) => &mut profiles,
            AggregateEvent::Location(_) => &mut locations,
        };
        ids.push(event.user_id);
    }
    for ids in [&mut users, &mut profiles, &mut locations] {
        ids.sort_unstable();
        ids.dedup();
    }
    (users, profiles, locations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::Received;

    fn received(partition: i32, offset: i64) -> Received {
        Received {
            partition,
            offset,
            event: None,
        }
    }

    #[test]
    fn messages_below_stored_offset_are_redelivered() {
        let batch = Batch {
            topic: "t".into(),
            messages: vec![
                received(0, 3),
                received(0, 4),
                received(0, 5),
                received(1, 0),
            ],
        };
        let stored = BTreeMap::from([(0, 5), (1, 0)]);

        let unseen = select_unseen(&batch, &stored);

        assert_eq!(unseen.redelivered, 2);
        assert_eq!(unseen.next_offsets, BTreeMap::from([(0, 6), (1, 1)]));
    }

    #[test]
    fn repeated_offset_within_batch_is_redelivered() {
        let batch = Batch {
            topic: "t".into(),
            messages: vec![received(2, 7), received(2, 8), received(2, 7)],
        };

        let unseen = select_unseen(&batch, &BTreeMap::new());

        assert_eq!(unseen.redelivered, 1);
        assert_eq!(unseen.next_offsets, BTreeMap::from([(2, 9)]));
    }

    #[test]
    fn fully_redelivered_partition_keeps_its_offset() {
        let batch = Batch {
            topic: "t".into(),
            messages: vec![received(0, 1)],
        };

        let unseen = select_unseen(&batch, &BTreeMap::from([(0, 10)]));

        assert!(unseen.next_offsets.is_empty());
    }
}
