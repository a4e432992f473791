//! One batch: read outbox rows, produce them, and check them off in one transaction.

use std::collections::BTreeMap;

use anyhow::{anyhow, Context};
use meridian_event_log::{EventMessage, StoredEvent};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

/// The partition and offset at which Kafka stored the message of one outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub position: i64,
    pub partition: i32,
    pub offset: i64,
}

/// Reads up to `limit` outbox rows with their events, oldest position first.
pub async fn next_batch(pool: &PgPool, limit: i64) -> anyhow::Result<Vec<StoredEvent>> {
    sqlx::query_as(
        "SELECT o.position, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                e.event_version, e.stored_at, e.payload \
         FROM outbox o JOIN events e USING (position) \
         ORDER BY o.position LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
    .context("failed to read the outbox")
}

/// Produces one message per event, keyed by aggregate id with CloudEvents headers, and waits
/// for every delivery. Fails when any delivery fails, after all of them have settled.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    events: Vec<StoredEvent>,
) -> anyhow::Result<Vec<Delivery>> {
    let mut pending = Vec::with_capacity(events.len());
    let mut enqueue_error = None;
    for event in events {
        let message = EventMessage::from_stored(event);
        let payload = message.value();
        let record = FutureRecord::to(topic)
            .key(message.key())
            .payload(&payload)
            .headers(message.headers());
        match producer.send_result(record) {
            Ok(delivery) => pending.push((message.position, delivery)),
            Err((error, _)) => {
                enqueue_error = Some(anyhow!(error).context(format!(
                    "failed to enqueue the message of position {}",
                    message.position
                )));
                break;
            }
        }
    }

    let mut deliveries = Vec::with_capacity(pending.len());
    let mut delivery_error = None;
    for (position, delivery) in pending {
        match delivery.await {
            Ok(Ok(delivered)) => deliveries.push(Delivery {
                position,
                partition: delivered.partition,
                offset: delivered.offset,
            }),
            Ok(Err((error, _))) => {
                delivery_error.get_or_insert_with(|| {
                    anyhow!(error).context(format!("failed to deliver position {position}"))
                });
            }
            Err(_) => {
                delivery_error.get_or_insert_with(|| {
                    anyhow!("the producer dropped the delivery of position {position}")
                });
            }
        }
    }
    match enqueue_error.or(delivery_error) {
        Some(error) => Err(error),
        None => Ok(deliveries),
    }
}

/// Deletes the delivered rows from the outbox and moves each partition's checkpoint past the
/// greatest delivered offset, in one transaction.
pub async fn checkpoint(pool: &PgPool, topic: &str, deliveries: &[Delivery]) -> anyhow::Result<()> {
    let positions: Vec<i64> = deliveries
        .iter()
        .map(|delivery| delivery.position)
        .collect();
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    for delivery in deliveries {
        let next = next_offsets.entry(delivery.partition).or_insert(0);
        *next = (*next).max(delivery.offset + 1);
    }
    let partitions: Vec<i32> = next_offsets.keys().copied().collect();
    let offsets: Vec<i64> = next_offsets.values().copied().collect();

    let mut transaction = pool
        .begin()
        .await
        .context("failed to begin the checkpoint")?;
    sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
        .bind(&positions)
        .execute(&mut *transaction)
        .await
        .context("failed to delete published outbox rows")?;
    sqlx::query(
        "INSERT INTO relay_checkpoints (topic, partition, next_offset) \
         SELECT $1, partition, next_offset FROM unnest($2::int4[], $3::int8[]) AS t (partition, next_offset) \
         ON CONFLICT (topic, partition) DO UPDATE \
         SET next_offset = GREATEST(relay_checkpoints.next_offset, EXCLUDED.next_offset)",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *transaction)
    .await
    .context("failed to advance the relay checkpoints")?;
    transaction
        .commit()
        .await
        .context("failed to commit the checkpoint")
}
