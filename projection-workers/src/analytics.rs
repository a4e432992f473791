//! The `analytics` projection: writes every `LocationRecorded` event into the MongoDB
//! collection `location_events`, one document per event with the event id as `_id`.
//! Other events, such as those of the `User` aggregate, add no document. The consumer skips
//! an event type that this build cannot decode, and counts it as undecodable.
//!
//! Inserts are unordered and a duplicate key error (code 11000) means the event is
//! already stored, so applying a batch again changes nothing. Kafka offsets are
//! committed only after MongoDB acknowledged the batch; the projection's progress is
//! also stored in `projection_offsets` for lag reporting.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_crypto::EventCipher;
use meridian_domain::location::LocationEvent;
use meridian_event_log::Settings;
use mongodb::bson::{doc, DateTime as BsonDateTime, Document};
use mongodb::error::{ErrorKind, InsertManyError};
use mongodb::{Client, Collection, IndexModel};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::consumer::{self, Batch, BatchHandler, BatchOutcome, Counters};
use crate::event::{AggregateEvent, ProjectedEvent};
use crate::offsets;

/// Name of the projection in `projection_offsets` and in its consumer group.
pub const PROJECTION: &str = "analytics";
/// Collection that receives one document per `LocationRecorded` event.
pub const COLLECTION: &str = "location_events";
/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;
/// Delay between attempts to create the collection's index.
const INDEX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// The analytics projection, ready to run.
pub struct AnalyticsProjection {
    settings: Settings,
    pool: PgPool,
    cipher: EventCipher,
    collection: Collection<Document>,
    counters: Arc<Counters>,
}

impl AnalyticsProjection {
    /// Creates the MongoDB client of `settings.mongodb_url`. The client connects lazily,
    /// so an unreachable server is reported by [`AnalyticsProjection::run`].
    pub async fn connect(
        settings: Settings,
        pool: PgPool,
        cipher: EventCipher,
    ) -> anyhow::Result<Self> {
        let client = Client::with_uri_str(&settings.mongodb_url)
            .await
            .context("invalid MongoDB URL in MERIDIAN_MONGODB_URL")?;
        let collection = client
            .database(&settings.mongodb_database)
            .collection(COLLECTION);
        Ok(Self {
            settings,
            pool,
            cipher,
            collection,
            counters: Arc::default(),
        })
    }

    /// Counters that [`AnalyticsProjection::run`] updates after each batch.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Consumes the events topic until `shutdown` is cancelled, creating the topic and the
    /// collection's index first.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let consumer_settings = crate::consumer_settings(&self.settings, PROJECTION);
        crate::ensure_events_topic(&self.settings).await?;
        if !self.create_index_until_done(&shutdown).await {
            return Ok(());
        }
        let start_offsets = offsets::load(&self.pool, PROJECTION, &consumer_settings.topic)
            .await
            .context("failed to load the stored offsets of analytics")?;
        let handler = AnalyticsHandler {
            pool: self.pool,
            collection: self.collection,
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

impl AnalyticsProjection {
    /// Creates the `(user_id, recorded_at)` index, retrying while MongoDB is unreachable.
    /// Returns false when `shutdown` is cancelled first.
    async fn create_index_until_done(&self, shutdown: &CancellationToken) -> bool {
        let index = IndexModel::builder()
            .keys(doc! {"user_id": 1, "recorded_at": 1})
            .build();
        loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return false,
                result = self.collection.create_index(index.clone()) => result,
            };
            let Err(error) = attempt else {
                return true;
            };
            tracing::error!(
                projection = PROJECTION,
                collection = COLLECTION,
                error = %error,
                retry_in_ms = INDEX_RETRY_DELAY.as_millis(),
                "failed to create MongoDB index, retrying"
            );
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(INDEX_RETRY_DELAY) => {}
            }
        }
    }
}

struct AnalyticsHandler {
    pool: PgPool,
    collection: Collection<Document>,
}

impl BatchHandler for AnalyticsHandler {
    async fn apply(&self, batch: &Batch) -> anyhow::Result<BatchOutcome> {
        let documents: Vec<Document> = batch
            .messages
            .iter()
            .filter_map(|message| message.event.as_ref())
            .filter_map(location_document)
            .collect();
        let mut outcome = insert_documents(&self.collection, documents).await?;
        let erased: Vec<String> = batch
            .messages
            .iter()
            .filter_map(|message| message.event.as_ref())
            .filter(|event| event.event_type == consumer::ERASED_EVENT)
            .map(|event| event.user_id.to_string())
            .collect();
        if !erased.is_empty() {
            // After the inserts, so documents this batch added for the user go too.
            let deleted = self
                .collection
                .delete_many(doc! {"user_id": {"$in": &erased}})
                .await
                .context("failed to delete the analytics documents of erased users")?;
            tracing::info!(
                projection = PROJECTION,
                users = erased.len(),
                documents = deleted.deleted_count,
                "deleted the analytics documents of erased users"
            );
            outcome.applied += u64::try_from(erased.len()).unwrap_or(u64::MAX);
        }

        let mut connection = self
            .pool
            .acquire()
            .await
            .context("failed to acquire a PostgreSQL connection")?;
        offsets::store(
            &mut connection,
            PROJECTION,
            &batch.topic,
            &batch.next_offsets(),
        )
        .await
        .context("failed to store analytics progress")?;
        Ok(outcome)
    }
}

/// Builds the document of a `LocationRecorded` event; other events have none.
/// NOTE: BSON dates hold milliseconds, so `recorded_at` and `stored_at` lose their
/// microseconds here.
pub fn location_document(event: &ProjectedEvent) -> Option<Document> {
    let AggregateEvent::Location(LocationEvent::LocationRecorded {
        latitude,
        longitude,
        recorded_at,
    }) = event.event
    else {
        return None;
    };
    Some(doc! {
        "_id": event.event_id.to_string(),
        "user_id": event.user_id.to_string(),
        "latitude": latitude,
        "longitude": longitude,
        "recorded_at": BsonDateTime::from_millis(recorded_at.timestamp_millis()),
        "sequence": event.sequence,
        "position": event.position,
        "stored_at": BsonDateTime::from_millis(event.stored_at.timestamp_millis()),
        "event_type": &event.event_type,
    })
}

/// Inserts `documents` unordered. Documents whose `_id` is already stored count as
/// already applied; any other failure is an error, and the batch is applied again.
async fn insert_documents(
    collection: &Collection<Document>,
    documents: Vec<Document>,
) -> anyhow::Result<BatchOutcome> {
    let total = u64::try_from(documents.len()).unwrap_or(u64::MAX);
    if total == 0 {
        return Ok(BatchOutcome::default());
    }
    let error = match collection.insert_many(documents).ordered(false).await {
        Ok(_) => {
            return Ok(BatchOutcome {
                applied: total,
                ..BatchOutcome::default()
            })
        }
        Err(error) => error,
    };
    match error.kind.as_ref() {
        ErrorKind::InsertMany(failure) if only_duplicates(failure) => {
            let duplicates = failure
                .write_errors
                .as_ref()
                .map_or(0, |errors| u64::try_from(errors.len()).unwrap_or(u64::MAX));
            Ok(BatchOutcome {
                applied: total.saturating_sub(duplicates),
                already_applied: duplicates,
                redelivered: 0,
            })
        }
        _ => Err(anyhow::Error::new(error).context(format!("failed to insert into {COLLECTION}"))),
    }
}

fn only_duplicates(failure: &InsertManyError) -> bool {
    failure.write_concern_error.is_none()
        && failure
            .write_errors
            .as_ref()
            .is_some_and(|errors| errors.iter().all(|error| error.code == DUPLICATE_KEY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use meridian_domain::user::{Role, UserEvent};
    use uuid::Uuid;

    fn event(domain_event: AggregateEvent) -> ProjectedEvent {
        ProjectedEvent {
            user_id: Uuid::new_v4(),
            event_id: Uuid::new_v4(),
            sequence: 3,
            position: 77,
            stored_at: DateTime::from_timestamp_micros(1_593_475_260_123_456).unwrap(),
            event_type: "LocationRecorded".into(),
            event: domain_event,
        }
    }

    #[test]
    fn location_document_has_every_field() {
        let recorded_at: DateTime<Utc> = "2020-06-30T00:00:00.250Z".parse().unwrap();
        let event = event(AggregateEvent::Location(LocationEvent::LocationRecorded {
            latitude: 40.5,
            longitude: -74.25,
            recorded_at,
        }));

        let document = location_document(&event).unwrap();

        assert_eq!(document.get_str("_id").unwrap(), event.event_id.to_string());
        assert_eq!(
            document.get_str("user_id").unwrap(),
            event.user_id.to_string()
        );
        assert_eq!(document.get_f64("latitude").unwrap(), 40.5);
        assert_eq!(document.get_f64("longitude").unwrap(), -74.25);
        assert_eq!(
            document
                .get_datetime("recorded_at")
                .unwrap()
                .timestamp_millis(),
            recorded_at.timestamp_millis()
        );
        assert_eq!(document.get_i64("sequence").unwrap(), 3);
        assert_eq!(document.get_i64("position").unwrap(), 77);
        assert_eq!(
            document
                .get_datetime("stored_at")
                .unwrap()
                .timestamp_millis(),
            1_593_475_260_123
        );
        assert_eq!(document.get_str("event_type").unwrap(), "LocationRecorded");
    }

    #[test]
    fn user_event_has_no_document() {
        let event = event(AggregateEvent::User(UserEvent::NameChanged {
            name: "A".into(),
        }));
        assert!(location_document(&event).is_none());
    }

    #[test]
    fn role_change_has_no_document() {
        let event = event(AggregateEvent::User(UserEvent::RoleChanged {
            role: Role::Admin,
        }));
        assert!(location_document(&event).is_none());
    }
}
