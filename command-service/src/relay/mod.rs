//! The outbox relay: publishes every stored event to Kafka exactly once, also across a SIGKILL
//! of the relay, except in the window named in the NOTE on [`recovery::recover`].
//!
//! A trigger writes the `position` of each stored event into `outbox` in the transaction that
//! stores it. The relay works in sessions:
//!
//! 1. It takes the relay lock ([`lock`]), so only one relay per database publishes; another
//!    waits.
//! 2. It recovers ([`recovery`]): messages between each partition's checkpoint in
//!    `relay_checkpoints` and the high watermark reached Kafka in a batch whose outbox rows were
//!    not deleted. Their positions, read from the `ce_position` header, are deleted from the
//!    outbox and the checkpoints move to the high watermark, in one transaction.
//! 3. It publishes ([`publish`]) the outbox in batches ordered by position: produce every
//!    message, await every delivery, then delete the batch's outbox rows and advance the
//!    checkpoints in one transaction. A failed delivery ends the session, and the next session
//!    recovers first.
//!
//! Rows are deleted, never skipped by a cursor, so an event whose transaction commits late is
//! still published. The broker needs no transactions, which tansu lacks.

pub mod lock;
pub mod publish;
pub mod recovery;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_event_log::Settings;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use self::lock::RelayLock;
use crate::commands::OUTBOX_CHANNEL;

/// Maximum number of outbox rows published per batch.
pub const BATCH_SIZE: i64 = 1000;
/// How long the relay waits for a notification before it looks at an empty outbox again. Events
/// stored by the command service wake it at once; this bounds the delay for other writers.
pub const IDLE_POLL: Duration = Duration::from_millis(100);
/// Pause before a new session after a failed one.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Runs the relay until `shutdown` completes. Returns an error only when it cannot start: the
/// database or the topic is unusable. Later failures are logged and retried.
pub async fn run_relay(
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let topic = settings.events_topic();
    let pool = meridian_event_log::database::connect(&settings.database_url, 4).await?;
    meridian_event_log::topic::ensure_topic(
        &settings.kafka_brokers,
        &topic,
        settings.topic_partitions,
    )
    .await?;
    let mut stop = stop_signal(shutdown);
    info!(%topic, brokers = %settings.kafka_brokers, "outbox relay started");

    loop {
        let Some(lock) = RelayLock::acquire(&settings.database_url, &mut stop).await? else {
            break;
        };
        match run_session(&pool, &settings, &topic, lock, &mut stop).await {
            Ok(()) => break,
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "relay session failed; starting a new one"
                );
                if wait_or_stop(&mut stop, RETRY_DELAY).await {
                    break;
                }
            }
        }
    }
    pool.close().await;
    info!(%topic, "outbox relay stopped");
    Ok(())
}

/// The stop signal: a receiver whose value turns true once the shutdown future passed to
/// [`run_relay`] has completed.
pub type Stop = watch::Receiver<bool>;

fn stop_signal(shutdown: impl Future<Output = ()> + Send + 'static) -> Stop {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // The receiver is gone only when the relay already stopped.
        let _ = sender.send(true);
    });
    receiver
}

async fn stopped(stop: &mut Stop) {
    // An error means the sender is gone, which happens only after it sent `true`.
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Sleeps for `delay`. Returns true when the stop signal arrived meanwhile.
async fn wait_or_stop(stop: &mut Stop, delay: Duration) -> bool {
    tokio::select! {
        () = stopped(stop) => true,
        () = tokio::time::sleep(delay) => false,
    }
}

/// Recovers, then publishes until the stop signal arrives (`Ok`) or something fails (`Err`).
async fn run_session(
    pool: &PgPool,
    settings: &Settings,
    topic: &str,
    mut lock: RelayLock,
    stop: &mut Stop,
) -> anyhow::Result<()> {
    let recovered = recovery::recover(pool, &settings.kafka_brokers, topic).await?;
    info!(
        %topic,
        recovered_messages = recovered,
        "recovered messages published before the last checkpoint"
    );
    let producer = create_producer(&settings.kafka_brokers)?;
    let mut listener = listen(pool).await;

    loop {
        if *stop.borrow() {
            return Ok(());
        }
        lock.ensure_held().await?;
        let events = publish::next_batch(pool, BATCH_SIZE).await?;
        if events.is_empty() {
            tokio::select! {
                () = stopped(stop) => return Ok(()),
                () = wait_for_notification(&mut listener) => {}
            }
            continue;
        }
        let started = Instant::now();
        let count = events.len();
        let first = events.first().map(|event| event.position);
        let last = events.last().map(|event| event.position);
        let deliveries = publish::publish(&producer, topic, events).await?;
        publish::checkpoint(pool, topic, &deliveries).await?;
        debug!(
            %topic,
            events = count,
            first_position = first,
            last_position = last,
            elapsed_ms = started.elapsed().as_millis(),
            "published batch"
        );
    }
}

/// Builds the idempotent producer: acks from all replicas, no duplicates on internal retries.
pub fn create_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .context("failed to create the Kafka producer")
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let result = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(OUTBOX_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    }
    .await;
    match result {
        Ok(listener) => Some(listener),
        Err(error) => {
            warn!(%error, "failed to listen for outbox notifications; polling only");
            None
        }
    }
}

/// Waits for a notification on the outbox channel, at most [`IDLE_POLL`].
async fn wait_for_notification(listener: &mut Option<PgListener>) {
    let Some(active) = listener else {
        tokio::time::sleep(IDLE_POLL).await;
        return;
    };
    match tokio::time::timeout(IDLE_POLL, active.recv()).await {
        Ok(Ok(_)) | Err(_) => {}
        Ok(Err(error)) => {
            // PgListener reconnects on the next call; the poll covers the gap.
            debug!(%error, "outbox notification listener failed");
            tokio::time::sleep(IDLE_POLL).await;
        }
    }
}
