//! The Kafka side that both projections share. A consumer takes every partition of the
//! topic, starts each at the offset its projection stored in PostgreSQL and collects
//! messages into batches. It applies each batch until the projection succeeds, and only
//! then commits the batch's offsets to Kafka.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use meridian_crypto::{CipherError, EventCipher};
use meridian_event_log::EventMessage;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaResult;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use crate::event::ProjectedEvent;
use crate::opener::{EventOpener, Opened};

pub use crate::opener::ERASED_EVENT;

/// Maximum number of messages in one batch.
pub const MAX_BATCH_MESSAGES: usize = 500;
/// How long a batch keeps collecting after its first message.
pub const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// First and maximum delay between attempts to apply a failed batch.
const RETRY_DELAYS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// Pause after a consumer error, so that an unreachable broker does not cause a busy loop.
const CONSUMER_ERROR_PAUSE: Duration = Duration::from_millis(500);

/// One consumed message. `event` is `None` when the message could not be decoded; it
/// was logged and counted, and the projection only advances its offset past it.
#[derive(Debug, Clone)]
pub struct Received {
    pub partition: i32,
    pub offset: i64,
    pub event: Option<ProjectedEvent>,
}

/// Messages of one topic in the order they were consumed.
#[derive(Debug, Clone)]
pub struct Batch {
    pub topic: String,
    pub messages: Vec<Received>,
}

impl Batch {
    /// Returns, per partition, the offset after the last message of the batch.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        let mut offsets = BTreeMap::new();
        for message in &self.messages {
            let next = offsets.entry(message.partition).or_insert(0);
            *next = (*next).max(message.offset + 1);
        }
        offsets
    }
}

/// Result of applying one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events that changed the projection.
    pub applied: u64,
    /// Events the projection already contained, such as an event the outbox relay
    /// published twice.
    pub already_applied: u64,
    /// Messages skipped because their offset was below the stored next offset.
    pub redelivered: u64,
}

/// Applies batches to one projection's store.
pub trait BatchHandler: Send + Sync {
    /// Applies `batch`. After an error the same batch is applied again, so a partial
    /// application must either roll back or be harmless to repeat.
    fn apply(&self, batch: &Batch) -> impl Future<Output = anyhow::Result<BatchOutcome>> + Send;
}

/// Running totals of one projection, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    batches: AtomicU64,
    applied: AtomicU64,
    already_applied: AtomicU64,
    redelivered: AtomicU64,
    undecodable: AtomicU64,
    erased: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValues {
    pub batches: u64,
    pub applied: u64,
    pub already_applied: u64,
    pub redelivered: u64,
    /// Messages that could not be decoded into a known event, and were skipped.
    pub undecodable: u64,
    /// Messages of erased users, whose key is destroyed, and were skipped.
    pub erased: u64,
}

impl Counters {
    pub fn values(&self) -> CounterValues {
        CounterValues {
            batches: self.batches.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            already_applied: self.already_applied.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            undecodable: self.undecodable.load(Ordering::Relaxed),
            erased: self.erased.load(Ordering::Relaxed),
        }
    }

    fn add(&self, outcome: BatchOutcome) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.applied.fetch_add(outcome.applied, Ordering::Relaxed);
        self.already_applied
            .fetch_add(outcome.already_applied, Ordering::Relaxed);
        self.redelivered
            .fetch_add(outcome.redelivered, Ordering::Relaxed);
    }
}

/// Broker, consumer group and topic of one projection.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Projection name, as stored in `projection_offsets`.
    pub projection: &'static str,
    pub brokers: String,
    pub group_id: String,
    pub topic: String,
}

/// Offsets a projection stored, per partition, shared with the rebalance callback.
type StartOffsets = Arc<Mutex<HashMap<i32, i64>>>;

/// Consumer context that positions newly assigned partitions at the stored offsets.
struct ProjectionContext {
    projection: &'static str,
    start_offsets: StartOffsets,
}

impl ClientContext for ProjectionContext {}

impl ConsumerContext for ProjectionContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        error: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let result = match error {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.position_at_stored_offsets(partitions);
                if cooperative {
                    consumer.incremental_assign(partitions)
                } else {
                    consumer.assign(partitions)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!(projection = self.projection, partitions = ?partition_numbers(partitions), "partitions revoked");
                if cooperative {
                    consumer.incremental_unassign(partitions)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(projection = self.projection, error = ?other, "rebalance failed");
                consumer.unassign()
            }
        };
        if let Err(error) = result {
            tracing::error!(projection = self.projection, %error, "failed to change the partition assignment");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            // The stored offsets in PostgreSQL stay correct; only the resume hint is older.
            tracing::warn!(projection = self.projection, %error, partitions = ?partition_numbers(offsets), "failed to commit offsets to Kafka");
        }
    }
}

impl ProjectionContext {
    /// Sets each partition's start to the projection's stored next offset, or to the
    /// beginning when it stored none: the table decides, never the group's Kafka offset.
    fn position_at_stored_offsets(&self, partitions: &mut TopicPartitionList) {
        let stored = self
            .start_offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let assigned: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|element| (element.topic().to_owned(), element.partition()))
            .collect();
        let mut starts = BTreeMap::new();
        for (topic, partition) in assigned {
            let offset = stored
                .get(&partition)
                .map_or(Offset::Beginning, |next| Offset::Offset(*next));
            if let Err(error) = partitions.set_partition_offset(&topic, partition, offset) {
                tracing::error!(projection = self.projection, partition, %error, "failed to set start offset");
            }
            starts.insert(partition, format!("{offset:?}"));
        }
        tracing::info!(projection = self.projection, starts = ?starts, "partitions assigned");
    }
}

/// Assigns every partition of `topic` to `consumer`, each at the projection's stored offset.
///
/// NOTE: partitions are assigned, not balanced by the group coordinator. After a worker was
/// killed, tansu 0.6.0 sometimes gave its restarted successor an empty assignment and never
/// rebalanced again, which stalled the projection. The group id still names the group that
/// Kafka offsets are committed to. A second worker of the same projection stays correct,
/// because offsets are checked in the read-model transaction, but it does the work twice,
/// and partitions added to the topic later need a restart.
async fn assign_every_partition(
    consumer: &StreamConsumer<ProjectionContext>,
    topic: &str,
) -> anyhow::Result<()> {
    let mut partitions = TopicPartitionList::new();
    // A topic created a moment ago may not list its partitions yet.
    for _ in 0..50 {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .with_context(|| format!("failed to read the partitions of {topic}"))?;
        for partition in metadata
            .topics()
            .iter()
            .filter(|entry| entry.name() == topic)
            .flat_map(|entry| entry.partitions())
        {
            partitions.add_partition(topic, partition.id());
        }
        if partitions.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if partitions.count() == 0 {
        anyhow::bail!("topic {topic} lists no partitions after 10 s; create it first");
    }
    consumer
        .context()
        .position_at_stored_offsets(&mut partitions);
    consumer
        .assign(&partitions)
        .with_context(|| format!("failed to assign the partitions of {topic}"))
}

fn partition_numbers(partitions: &TopicPartitionList) -> Vec<i32> {
    partitions
        .elements()
        .iter()
        .map(|element| element.partition())
        .collect()
}

/// Consumes `settings.topic` as a member of `settings.group_id` and applies every batch
/// with `handler` until `shutdown` is cancelled. `start_offsets` are the projection's
/// stored next offsets per partition.
pub async fn run_projection<H: BatchHandler>(
    settings: ConsumerSettings,
    cipher: EventCipher,
    start_offsets: HashMap<i32, i64>,
    handler: H,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let start_offsets: StartOffsets = Arc::new(Mutex::new(start_offsets));
    let consumer = create_consumer(&settings, start_offsets.clone())?;
    assign_every_partition(&consumer, &settings.topic).await?;
    tracing::info!(projection = settings.projection, topic = %settings.topic, group = %settings.group_id, "projection started");

    let mut committed = TopicPartitionList::new();
    while let Some(messages) = next_batch(&consumer, &settings, &counters, &shutdown).await {
        let Some(batch) = open_until_done(&cipher, messages, &settings, &counters, &shutdown).await
        else {
            break;
        };
        let Some(outcome) = apply_until_done(&handler, &batch, &settings, &shutdown).await else {
            break;
        };
        counters.add(outcome);
        let next_offsets = batch.next_offsets();
        start_offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(
                next_offsets
                    .iter()
                    .map(|(partition, next)| (*partition, *next)),
            );
        let batch_offsets = offsets_list(&settings.topic, &next_offsets, TopicPartitionList::new());
        committed = offsets_list(&settings.topic, &next_offsets, committed);
        if let Err(error) = consumer.commit(&batch_offsets, CommitMode::Async) {
            tracing::warn!(projection = settings.projection, %error, "failed to commit offsets to Kafka");
        }
        tracing::debug!(
            projection = settings.projection,
            messages = batch.messages.len(),
            applied = outcome.applied,
            already_applied = outcome.already_applied,
            redelivered = outcome.redelivered,
            "batch applied"
        );
    }

    if committed.count() > 0 {
        if let Err(error) = consumer.commit(&committed, CommitMode::Sync) {
            tracing::warn!(projection = settings.projection, %error, "failed to commit offsets to Kafka at shutdown");
        }
    }
    let totals = counters.values();
    tracing::info!(
        projection = settings.projection,
        batches = totals.batches,
        applied = totals.applied,
        already_applied = totals.already_applied,
        redelivered = totals.redelivered,
        undecodable = totals.undecodable,
        erased = totals.erased,
        "projection stopped"
    );
    Ok(())
}

fn create_consumer(
    settings: &ConsumerSettings,
    start_offsets: StartOffsets,
) -> anyhow::Result<StreamConsumer<ProjectionContext>> {
    let context = ProjectionContext {
        projection: settings.projection,
        start_offsets,
    };
    ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", &settings.group_id)
        .set("client.id", format!("meridian-{}", settings.projection))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(context)
        .with_context(|| {
            format!(
                "failed to create Kafka consumer for {} at {}",
                settings.projection, settings.brokers
            )
        })
}

/// Adds `next_offsets` to `list`, replacing the offsets of partitions it already has.
fn offsets_list(
    topic: &str,
    next_offsets: &BTreeMap<i32, i64>,
    list: TopicPartitionList,
) -> TopicPartitionList {
    let mut offsets: BTreeMap<i32, i64> = list
        .elements_for_topic(topic)
        .iter()
        .filter_map(|element| {
            element
                .offset()
                .to_raw()
                .map(|raw| (element.partition(), raw))
        })
        .collect();
    offsets.extend(next_offsets);
    let mut updated = TopicPartitionList::with_capacity(offsets.len());
    for (partition, next) in offsets {
        // This fails only for a partition missing from the list or an offset without a
        // raw value, and neither can happen here.
        let _ = updated.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    updated
}

/// One consumed message, decoded but with its personal fields still sealed. `message` is
/// `None` when it is not an event message; that was logged and counted.
struct Decoded {
    partition: i32,
    offset: i64,
    message: Option<EventMessage>,
}

/// Waits for the first message, then collects more for up to [`BATCH_WINDOW`] or
/// [`MAX_BATCH_MESSAGES`]. Returns `None` once `shutdown` is cancelled.
async fn next_batch(
    consumer: &StreamConsumer<ProjectionContext>,
    settings: &ConsumerSettings,
    counters: &Counters,
    shutdown: &CancellationToken,
) -> Option<Vec<Decoded>> {
    let mut messages = Vec::new();
    while messages.is_empty() {
        let received = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => messages.push(decode(&message, settings, counters)),
            Err(error) => {
                tracing::warn!(projection = settings.projection, %error, "failed to consume from Kafka");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = sleep(CONSUMER_ERROR_PAUSE) => {}
                }
            }
        }
    }

    let deadline = Instant::now() + BATCH_WINDOW;
    while messages.len() < MAX_BATCH_MESSAGES {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = sleep_until(deadline) => break,
            received = consumer.recv() => match received {
                Ok(message) => messages.push(decode(&message, settings, counters)),
                Err(error) => {
                    tracing::warn!(projection = settings.projection, %error, "failed to consume from Kafka");
                    break;
                }
            },
        }
    }
    Some(messages)
}

/// Decodes one message, logging and counting a message that is not an event message.
fn decode(
    message: &BorrowedMessage<'_>,
    settings: &ConsumerSettings,
    counters: &Counters,
) -> Decoded {
    let decoded = match EventMessage::decode(message) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            skip_undecodable(
                settings,
                counters,
                message.partition(),
                message.offset(),
                &error,
            );
            None
        }
    };
    Decoded {
        partition: message.partition(),
        offset: message.offset(),
        message: decoded,
    }
}

fn skip_undecodable(
    settings: &ConsumerSettings,
    counters: &Counters,
    partition: i32,
    offset: i64,
    error: &dyn std::fmt::Display,
) {
    let skipped = counters.undecodable.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::error!(
        projection = settings.projection,
        topic = %settings.topic,
        partition,
        offset,
        error = %error,
        skipped,
        "skipping message that is not a known event"
    );
}

/// Opens the personal fields of every message and decodes the domain events, retrying
/// while the key store or key provider is unreachable. Returns `None` when `shutdown` is
/// cancelled first.
async fn open_until_done(
    cipher: &EventCipher,
    messages: Vec<Decoded>,
    settings: &ConsumerSettings,
    counters: &Counters,
    shutdown: &CancellationToken,
) -> Option<Batch> {
    let mut delay = RETRY_DELAYS.0;
    loop {
        match open_batch(cipher, &messages, settings, counters).await {
            Ok(received) => {
                return Some(Batch {
                    topic: settings.topic.clone(),
                    messages: received,
                })
            }
            Err(error) => tracing::error!(
                projection = settings.projection,
                messages = messages.len(),
                error = format!("{error:#}"),
                retry_in_ms = delay.as_millis(),
                "failed to open sealed events, retrying"
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_DELAYS.1);
    }
}

/// One attempt of [`open_until_done`]. Events of an erased user are skipped: their key is
/// destroyed, and the `UserErased` event removes what the projections hold of them. After a
/// `UserErased` event, the batch skips the user's later messages too, which can only be
/// copies the relay published twice.
async fn open_batch(
    cipher: &EventCipher,
    messages: &[Decoded],
    settings: &ConsumerSettings,
    counters: &Counters,
) -> Result<Vec<Received>, CipherError> {
    let mut opener = EventOpener::new(cipher.clone());
    let mut skipped_erased = 0;
    let mut received = Vec::with_capacity(messages.len());
    for decoded in messages {
        let mut event = None;
        if let Some(message) = &decoded.message {
            match opener.open(message).await? {
                Opened::Event(projected) => event = Some(projected),
                Opened::Erased => skipped_erased += 1,
                Opened::Invalid(error) => skip_undecodable(
                    settings,
                    counters,
                    decoded.partition,
                    decoded.offset,
                    &format!("{error:#}"),
                ),
            }
        }
        received.push(Received {
            partition: decoded.partition,
            offset: decoded.offset,
            event,
        });
    }
    if skipped_erased > 0 {
        counters.erased.fetch_add(skipped_erased, Ordering::Relaxed);
        tracing::debug!(
            projection = settings.projection,
            skipped = skipped_erased,
            "skipped events of erased users"
        );
    }
    Ok(received)
}

/// Applies `batch` until it succeeds, waiting longer after each failure. Returns `None`
/// when `shutdown` is cancelled first; the batch is then consumed again after a restart.
async fn apply_until_done<H: BatchHandler>(
    handler: &H,
    batch: &Batch,
    settings: &ConsumerSettings,
    shutdown: &CancellationToken,
) -> Option<BatchOutcome> {
    let mut delay = RETRY_DELAYS.0;
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        // The first attempt runs to completion. A retry, which may wait for a server
        // that is down, gives way to shutdown. Dropping it is safe, because an unfinished
        // transaction rolls back and documents it inserted count as duplicates later.
        let result = tokio::select! {
            biased;
            result = handler.apply(batch) => result,
            () = shutdown.cancelled(), if attempt > 1 => return None,
        };
        let error = match result {
            Ok(outcome) => return Some(outcome),
            Err(error) => error,
        };
        tracing::error!(
            projection = settings.projection,
            attempt,
            messages = batch.messages.len(),
            error = format!("{error:#}"),
            retry_in_ms = delay.as_millis(),
            "failed to apply batch, retrying"
        );
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = sleep(delay) => {}
        }
        delay = (delay * 2).min(RETRY_DELAYS.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(partition: i32, offset: i64) -> Received {
        Received {
            partition,
            offset,
            event: None,
        }
    }

    #[test]
    fn next_offsets_follow_last_message_per_partition() {
        let batch = Batch {
            topic: "t".into(),
            messages: vec![
                received(0, 4),
                received(1, 9),
                received(0, 5),
                received(1, 10),
            ],
        };
        let offsets = batch.next_offsets();
        assert_eq!(offsets.get(&0), Some(&6));
        assert_eq!(offsets.get(&1), Some(&11));
    }

    #[test]
    fn offsets_list_keeps_earlier_partitions() {
        let first = offsets_list(
            "t",
            &BTreeMap::from([(0, 5), (1, 3)]),
            TopicPartitionList::new(),
        );
        let merged = offsets_list("t", &BTreeMap::from([(1, 8)]), first);
        let offsets = merged.to_topic_map();
        assert_eq!(offsets.get(&("t".to_owned(), 0)), Some(&Offset::Offset(5)));
        assert_eq!(offsets.get(&("t".to_owned(), 1)), Some(&Offset::Offset(8)));
    }
}
