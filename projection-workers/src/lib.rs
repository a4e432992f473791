//! Kafka consumers that fold Meridian events into PostgreSQL read models and MongoDB
//! analytics. Each projection is its own consumer group and task:
//!
//! - [`read_models`]: `rm_users`, `rm_profiles`, `rm_latest_locations` and
//!   `rm_location_history`, with offsets and live updates stored in the same transaction.
//! - [`analytics`]: one MongoDB document per `LocationRecorded` event.
//! - [`consumer`]: batching, retries, offset commits and partition assignment.
//! - [`event`]: Kafka messages decoded into domain events.
//! - [`opener`]: sealed personal fields opened, shared by the consumer and the rebuild.
//! - [`offsets`]: the `projection_offsets` table.
//! - [`testing`]: filling the event store directly, for tests and examples.

pub mod analytics;
pub mod consumer;
pub mod event;
pub mod offsets;
pub mod opener;
pub mod read_models;
pub mod testing;

use std::future::Future;

use anyhow::Context;
use meridian_crypto::KeySettings;
use meridian_event_log::Settings;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::analytics::AnalyticsProjection;
use crate::consumer::ConsumerSettings;
use crate::read_models::publisher::LiveSettings;
use crate::read_models::rebuild::{self, RebuildOptions, RebuildSummary};
use crate::read_models::ReadModelProjection;

/// Connections of the PostgreSQL pool that both projections share.
pub const DATABASE_CONNECTIONS: u32 = 8;

/// Consumer settings of `projection`: its group is `<topic prefix><projection>`.
pub fn consumer_settings(settings: &Settings, projection: &'static str) -> ConsumerSettings {
    ConsumerSettings {
        projection,
        brokers: settings.kafka_brokers.clone(),
        group_id: format!("{}{projection}", settings.topic_prefix),
        topic: settings.events_topic(),
    }
}

/// Creates the events topic unless it exists.
pub async fn ensure_events_topic(settings: &Settings) -> anyhow::Result<()> {
    meridian_event_log::topic::ensure_topic(
        &settings.kafka_brokers,
        &settings.events_topic(),
        settings.topic_partitions,
    )
    .await
}

/// Runs both projections until `shutdown` completes. When one of them fails, the other
/// is stopped too and the error is returned.
pub async fn run(
    settings: Settings,
    keys: KeySettings,
    live_settings: LiveSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool =
        meridian_event_log::database::connect(&settings.database_url, DATABASE_CONNECTIONS).await?;
    let cipher = keys.event_cipher(pool.clone()).await?;
    let read_models = ReadModelProjection::new(settings.clone(), pool.clone(), cipher.clone())
        .with_live_settings(live_settings);
    let analytics = AnalyticsProjection::connect(settings, pool, cipher).await?;

    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let token = stop.child_token();
    tasks.spawn(async move {
        read_models
            .run(token)
            .await
            .context("read-models projection failed")
    });
    let token = stop.child_token();
    tasks.spawn(async move {
        analytics
            .run(token)
            .await
            .context("analytics projection failed")
    });
    tracing::info!("projection workers started");

    let mut first_error = None;
    tokio::select! {
        () = shutdown => {}
        Some(joined) = tasks.join_next() => first_error = task_error(joined),
    }
    stop.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Some(error) = task_error(joined) {
            first_error.get_or_insert(error);
        }
    }
    tracing::info!("projection workers stopped");
    first_error.map_or(Ok(()), Err)
}

/// Rebuilds the read models from the event store (see [`read_models::rebuild`]) until done
/// or until `shutdown` completes, which rolls the rebuild back.
pub async fn rebuild_read_models(
    settings: Settings,
    keys: KeySettings,
    options: RebuildOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RebuildSummary> {
    let pool = meridian_event_log::database::connect_existing(
        &settings.database_url,
        rebuild::DATABASE_CONNECTIONS,
    )
    .await?;
    let cipher = keys.event_cipher(pool.clone()).await?;
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    tracing::info!("rebuilding the read models");
    let outcome = rebuild::rebuild(&pool, cipher, options, stop).await;
    watcher.abort();
    pool.close().await;
    let summary = outcome.context("failed to rebuild the read models")?;
    tracing::info!(
        events = summary.events,
        seconds = summary.seconds,
        events_per_second = summary.events_per_second.round(),
        users = summary.users,
        history_rows = summary.history_rows,
        erased_users = summary.erased_users,
        skipped_erased = summary.skipped_erased,
        invalid = summary.invalid,
        "rebuilt the read models"
    );
    Ok(summary)
}

fn task_error(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> Option<anyhow::Error> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(error)) => {
            tracing::error!(
                error = format!("{error:#}"),
                "projection stopped with an error"
            );
            Some(error)
        }
        Err(error) => Some(anyhow::Error::new(error).context("projection task panicked")),
    }
}

pub use meridian_event_log::shutdown::shutdown_signal;
