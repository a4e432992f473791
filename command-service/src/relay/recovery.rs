//! Finds messages that reached Kafka after the last checkpoint and checks their outbox rows off.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian_event_log::message::CE_POSITION;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sqlx::PgPool;
use tracing::warn;

/// Timeout of each metadata and watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to read every partition from its checkpoint to its high watermark.
const SCAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The messages found past the checkpoints, and the end of each partition.
#[derive(Debug, Default)]
struct Scan {
    /// Positions (`ce_position`) of the messages found.
    positions: Vec<i64>,
    /// High watermark of every partition when the scan began.
    high_watermarks: BTreeMap<i32, i64>,
}

/// Reads each partition from its checkpoint to its high watermark, deletes the outbox rows of
/// the messages found, and sets the checkpoints to the high watermarks, in one transaction.
/// Returns the number of messages found.
///
/// NOTE: a produce request of a killed relay that the broker appends only after this scan read
/// the high watermarks goes unseen, so its event is published a second time.
pub async fn recover(pool: &PgPool, brokers: &str, topic: &str) -> anyhow::Result<usize> {
    let checkpoints: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(
        "SELECT partition, next_offset FROM relay_checkpoints WHERE topic = $1",
    )
    .bind(topic)
    .fetch_all(pool)
    .await
    .context("failed to read the relay checkpoints")?
    .into_iter()
    .collect();

    let brokers = brokers.to_owned();
    let scan_topic = topic.to_owned();
    let scan = tokio::task::spawn_blocking(move || scan(&brokers, &scan_topic, &checkpoints))
        .await
        .context("topic scan task failed")??;

    let partitions: Vec<i32> = scan.high_watermarks.keys().copied().collect();
    let offsets: Vec<i64> = scan.high_watermarks.values().copied().collect();
    let mut transaction = pool.begin().await.context("failed to begin recovery")?;
    sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
        .bind(&scan.positions)
        .execute(&mut *transaction)
        .await
        .context("failed to delete recovered outbox rows")?;
    sqlx::query(
        "INSERT INTO relay_checkpoints (topic, partition, next_offset) \
         SELECT $1, partition, next_offset FROM unnest($2::int4[], $3::int8[]) AS t (partition, next_offset) \
         ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
    )
    .bind(topic)
    .bind(&partitions)
    .bind(&offsets)
    .execute(&mut *transaction)
    .await
    .context("failed to set the relay checkpoints")?;
    transaction
        .commit()
        .await
        .context("failed to commit recovery")?;
    Ok(scan.positions.len())
}

/// Reads `[checkpoint, high watermark)` of every partition with a group-less consumer.
fn scan(brokers: &str, topic: &str, checkpoints: &HashMap<i32, i64>) -> anyhow::Result<Scan> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "meridian-outbox-relay-recovery")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_uncommitted")
        .create()
        .context("failed to create the recovery consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("failed to read the metadata of {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|entry| entry.name() == topic)
        .flat_map(|entry| entry.partitions().iter().map(|partition| partition.id()))
        .collect();
    if partitions.is_empty() {
        bail!("topic {topic} has no partitions");
    }

    let mut result = Scan::default();
    let mut assignment = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .with_context(|| format!("failed to read the watermarks of {topic}/{partition}"))?;
        result.high_watermarks.insert(partition, high);
        let checkpoint = checkpoints.get(&partition).copied().unwrap_or(0);
        // A checkpoint past the high watermark means the topic was recreated.
        let start = if checkpoint > high {
            low
        } else {
            checkpoint.max(low)
        };
        if start < high {
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(start))
                .context("failed to build the recovery assignment")?;
            remaining.insert(partition, high);
        }
    }
    if remaining.is_empty() {
        return Ok(result);
    }
    consumer
        .assign(&assignment)
        .context("failed to assign the recovery consumer")?;

    let deadline = Instant::now() + SCAN_TIMEOUT;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("reading {topic} up to its high watermarks timed out; partitions left: {remaining:?}");
        }
        let Some(polled) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = polled.with_context(|| format!("failed to read {topic}"))?;
        let partition = message.partition();
        let Some(&high) = remaining.get(&partition) else {
            continue;
        };
        if message.offset() < high {
            match position_of(&message) {
                Some(position) => result.positions.push(position),
                None => warn!(
                    %topic,
                    partition,
                    offset = message.offset(),
                    "message without a valid ce_position header; not from this relay"
                ),
            }
        }
        if message.offset() + 1 >= high {
            remaining.remove(&partition);
        }
    }
    Ok(result)
}

fn position_of(message: &impl Message) -> Option<i64> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == CE_POSITION)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|value| value.parse().ok())
}
