//! Runs domain commands against the PostgreSQL event store.
//!
//! [`Executor`] loads aggregates through a postgres-es `PersistedEventStore`, runs the
//! commands itself instead of `CqrsFramework::execute`, and stores each commit with
//! [`SealedRepository::append`] in one transaction, so it can report the global position of
//! what it stored. [`with_retries`] repeats an attempt that lost an optimistic-concurrency
//! race.

pub mod history;
mod retry;
pub mod sealed;

use std::collections::HashMap;

use anyhow::{anyhow, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventStore, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventStore};
use meridian_crypto::EventCipher;
use sqlx::PgPool;
use tracing::debug;
use uuid::Uuid;

pub use retry::{with_retries, RetryPolicy, Retryable};
pub use sealed::{SealedRepository, SnapshotWrite, UserErased};

/// Channel the command service notifies after each commit, so the outbox relay wakes at once.
pub const OUTBOX_CHANNEL: &str = "meridian_outbox";

/// Metadata keys written with every event.
pub mod metadata_keys {
    /// The `x-request-id` of the HTTP request that stored the event.
    pub const REQUEST_ID: &str = "request_id";
    /// The scoped idempotency key (method, path and `Idempotency-Key` header), if any.
    pub const IDEMPOTENCY_KEY: &str = "idempotency_key";
    /// When the command service received the request, RFC 3339.
    pub const RECEIVED_AT: &str = "received_at";
    /// A UUID per commit attempt, shared by the events of one commit.
    pub const COMMIT_ID: &str = "commit_id";
    /// The user id of the authenticated caller, absent for anonymous requests.
    pub const ACTOR_ID: &str = "actor_id";
    /// The role of the authenticated caller: `user`, `admin` or `analyst`.
    pub const ACTOR_ROLE: &str = "actor_role";
    /// The peer IP address of the HTTP connection, sealed with the key of the event's user.
    pub const CLIENT_ADDR: &str = "client_addr";
    /// The `User-Agent` header, sealed with the key of the event's user.
    pub const USER_AGENT: &str = "user_agent";
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    /// `user`, `admin` or `analyst`.
    pub role: String,
}

/// The origin of a command, written as metadata on each event it stores.
#[derive(Debug, Clone)]
pub struct EventMetadata {
    pub request_id: String,
    pub idempotency_key: Option<String>,
    pub received_at: DateTime<Utc>,
    /// None for an anonymous request, such as an open registration.
    pub actor: Option<Actor>,
    /// The peer IP address of the HTTP connection, or None when the server did not record it.
    pub client_addr: Option<String>,
    /// The `User-Agent` header, cut to 256 characters.
    pub user_agent: Option<String>,
}

impl EventMetadata {
    /// Metadata of a command the service issues itself, such as creating the configured
    /// administrator at start.
    pub fn system(request_id: String) -> Self {
        Self {
            request_id,
            idempotency_key: None,
            received_at: Utc::now(),
            actor: None,
            client_addr: None,
            user_agent: None,
        }
    }

    /// Builds the map stored with each event. Client address and user agent are plaintext
    /// here, and [`SealedRepository`] seals them before they reach PostgreSQL.
    fn to_map(&self, commit_id: Uuid) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(9);
        map.insert(
            metadata_keys::REQUEST_ID.to_owned(),
            self.request_id.clone(),
        );
        if let Some(key) = &self.idempotency_key {
            map.insert(metadata_keys::IDEMPOTENCY_KEY.to_owned(), key.clone());
        }
        map.insert(
            metadata_keys::RECEIVED_AT.to_owned(),
            self.received_at
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        map.insert(metadata_keys::COMMIT_ID.to_owned(), commit_id.to_string());
        if let Some(actor) = &self.actor {
            map.insert(metadata_keys::ACTOR_ID.to_owned(), actor.user_id.clone());
            map.insert(metadata_keys::ACTOR_ROLE.to_owned(), actor.role.clone());
        }
        if let Some(address) = &self.client_addr {
            map.insert(metadata_keys::CLIENT_ADDR.to_owned(), address.clone());
        }
        if let Some(agent) = &self.user_agent {
            map.insert(metadata_keys::USER_AGENT.to_owned(), agent.clone());
        }
        map
    }
}

/// The events one command stored: none when the command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub aggregate_id: String,
    /// Number of events stored.
    pub stored: usize,
    pub first_sequence: Option<i64>,
    pub last_sequence: Option<i64>,
    /// The greatest `events.position` among the stored events.
    pub position: Option<i64>,
}

impl Committed {
    fn nothing(aggregate_id: &str) -> Self {
        Self {
            aggregate_id: aggregate_id.to_owned(),
            stored: 0,
            first_sequence: None,
            last_sequence: None,
            position: None,
        }
    }
}

/// The reason a command stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate rejected the command.
    #[error(transparent)]
    Rejected(E),
    /// Another command committed events to the same aggregate first.
    #[error("another command changed {aggregate_type} {aggregate_id} concurrently")]
    Conflict {
        aggregate_type: &'static str,
        aggregate_id: String,
    },
    /// The user was erased: their key is destroyed, so nothing of theirs loads or stores.
    #[error("user {user_id} was erased")]
    Erased { user_id: String },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl<E: std::error::Error> Retryable for CommandError<E> {
    fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }
}

/// How many events an aggregate with snapshots may gain before its snapshot is rewritten.
/// A load opens the snapshot and replays at most this many events after it. A location
/// track's snapshot contains its 256 most recent reports, an estimated 20 KB of JSON, so
/// rewriting it on every single-report command would write far more than the report itself.
pub const SNAPSHOT_INTERVAL: usize = 64;

/// Runs commands of one aggregate type against its event store.
pub struct Executor<A>
where
    A: Aggregate,
{
    /// Loads aggregates: from a snapshot and the events after it when snapshots are on.
    store: PersistedEventStore<SealedRepository, A>,
    /// Stores commits.
    repository: SealedRepository,
    /// Events between snapshots, or None for an aggregate without snapshots.
    snapshot_interval: Option<usize>,
    services: A::Services,
}

impl<A> Executor<A>
where
    A: Aggregate + Clone,
{
    /// Creates an executor that rebuilds the aggregate from all of its events on every load.
    pub fn with_event_store(pool: PgPool, cipher: EventCipher, services: A::Services) -> Self {
        Self {
            store: PersistedEventStore::new_event_store(SealedRepository::new(
                pool.clone(),
                cipher.clone(),
            )),
            repository: SealedRepository::new(pool, cipher),
            snapshot_interval: None,
            services,
        }
    }

    /// Creates an executor that loads the latest snapshot plus the events after it, and
    /// rewrites the snapshot with each commit that passes a multiple of [`SNAPSHOT_INTERVAL`]
    /// events.
    ///
    /// The snapshot is written by [`SealedRepository::append`], which records the sequence of
    /// the commit's last event as the snapshot's `last_sequence`, and the state after the whole
    /// commit. postgres-es's own snapshot commit folds only the events up to its snapshot
    /// boundary into the state but records the last event's sequence, which drops events from
    /// later loads unless every commit writes a snapshot.
    pub fn with_snapshot_store(pool: PgPool, cipher: EventCipher, services: A::Services) -> Self {
        Self {
            // The snapshot size only matters to `PersistedEventStore::commit`, which is not used.
            store: PersistedEventStore::new_snapshot_store(
                SealedRepository::new(pool.clone(), cipher.clone()),
                SNAPSHOT_INTERVAL,
            ),
            repository: SealedRepository::new(pool, cipher),
            snapshot_interval: Some(SNAPSHOT_INTERVAL),
            services,
        }
    }

    /// Loads the current state of an aggregate; an unknown id yields the default state.
    pub async fn load(&self, aggregate_id: &str) -> Result<A, CommandError<A::Error>> {
        let context = self
            .store
            .load_aggregate(aggregate_id)
            .await
            .map_err(|error| store_error::<A>(error, aggregate_id))?;
        Ok(context.aggregate)
    }

    /// Makes one attempt to run `commands` in order on one aggregate and commit all of their
    /// events in one transaction. The first rejected command rejects them all.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        commands: Vec<A::Command>,
        metadata: &EventMetadata,
    ) -> Result<Committed, CommandError<A::Error>> {
        let context = self
            .store
            .load_aggregate(aggregate_id)
            .await
            .map_err(|error| store_error::<A>(error, aggregate_id))?;
        let base_sequence = context.current_sequence;

        // `EventSink::write` applies each event to the aggregate it is given, so after the
        // commands ran, `aggregate` is the state after the commit.
        let mut aggregate = context.aggregate;
        let sink = EventSink::default();
        for command in commands {
            aggregate
                .handle(command, &self.services, &sink)
                .await
                .map_err(CommandError::Rejected)?;
        }
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(Committed::nothing(aggregate_id));
        }

        let count = events.len();
        let first_sequence = sequence_after(base_sequence, 1)?;
        let last_sequence = sequence_after(base_sequence, count)?;
        let metadata = metadata.to_map(Uuid::new_v4());
        let serialized = serialize_events::<A>(aggregate_id, base_sequence, &events, &metadata)
            .map_err(|error| store_error::<A>(error.into(), aggregate_id))?;
        let snapshot = match self.snapshot_due(base_sequence, count) {
            true => Some(SnapshotWrite {
                state: serde_json::to_value(&aggregate)
                    .context("failed to serialize the aggregate for its snapshot")?,
                last_sequence: base_sequence + count,
            }),
            false => None,
        };
        let position = self
            .repository
            .append::<A>(&serialized, snapshot)
            .await
            .map_err(|error| store_error::<A>(error.into(), aggregate_id))?;
        debug!(
            aggregate_type = A::TYPE,
            aggregate_id,
            events = count,
            position,
            "committed events"
        );
        Ok(Committed {
            aggregate_id: aggregate_id.to_owned(),
            stored: count,
            first_sequence: Some(first_sequence),
            last_sequence: Some(last_sequence),
            position: Some(position),
        })
    }

    /// Tells whether a commit of `count` events after `base_sequence` passes a multiple of
    /// the snapshot interval, and so rewrites the snapshot.
    fn snapshot_due(&self, base_sequence: usize, count: usize) -> bool {
        self.snapshot_interval
            .is_some_and(|interval| (base_sequence + count) / interval > base_sequence / interval)
    }
}

/// Serializes the events of one commit with their sequences and the commit's metadata.
fn serialize_events<A: Aggregate>(
    aggregate_id: &str,
    base_sequence: usize,
    events: &[A::Event],
    metadata: &HashMap<String, String>,
) -> Result<Vec<SerializedEvent>, serde_json::Error> {
    let metadata = serde_json::to_value(metadata)?;
    events
        .iter()
        .zip(base_sequence + 1..)
        .map(|(event, sequence)| {
            Ok(SerializedEvent::new(
                aggregate_id.to_owned(),
                sequence,
                A::TYPE.to_owned(),
                event.event_type(),
                event.event_version(),
                serde_json::to_value(event)?,
                metadata.clone(),
            ))
        })
        .collect()
}

fn sequence_after<E: std::error::Error>(
    base_sequence: usize,
    offset: usize,
) -> Result<i64, CommandError<E>> {
    base_sequence
        .checked_add(offset)
        .and_then(|sequence| i64::try_from(sequence).ok())
        .ok_or_else(|| {
            CommandError::Unexpected(anyhow!(
                "sequence {base_sequence} + {offset} does not fit in a bigint"
            ))
        })
}

fn store_error<A: Aggregate>(
    error: AggregateError<A::Error>,
    aggregate_id: &str,
) -> CommandError<A::Error> {
    match error {
        AggregateError::UserError(error) => CommandError::Rejected(error),
        AggregateError::AggregateConflict => CommandError::Conflict {
            aggregate_type: A::TYPE,
            aggregate_id: aggregate_id.to_owned(),
        },
        AggregateError::DatabaseConnectionError(error) => CommandError::Unexpected(anyhow!(
            "event store connection failed for {} {aggregate_id}: {error}",
            A::TYPE
        )),
        AggregateError::DeserializationError(error) => CommandError::Unexpected(anyhow!(
            "failed to deserialize stored events of {} {aggregate_id}: {error}",
            A::TYPE
        )),
        AggregateError::UnexpectedError(error) if error.is::<UserErased>() => {
            CommandError::Erased {
                user_id: aggregate_id.to_owned(),
            }
        }
        AggregateError::UnexpectedError(error) => CommandError::Unexpected(anyhow!(
            "event store failed for {} {aggregate_id}: {error}",
            A::TYPE
        )),
    }
}
