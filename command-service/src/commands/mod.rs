//! Runs domain commands against the PostgreSQL event store.
//!
//! [`Executor`] drives a postgres-es `PersistedEventStore` directly instead of
//! `CqrsFramework::execute`, so it gets the committed envelopes back and can report their
//! sequences and global positions. [`with_retries`] repeats an attempt that lost an
//! optimistic-concurrency race.

pub mod history;
pub mod password;
mod retry;
pub mod sealed;

use std::collections::HashMap;

use anyhow::{anyhow, Context};
use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, EventStore};
use meridian_crypto::EventCipher;
use sqlx::PgPool;
use tracing::{debug, warn};
use uuid::Uuid;

pub use retry::{with_retries, RetryPolicy, Retryable};
pub use sealed::{SealedRepository, UserErased};

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
    /// A UUID per commit attempt, which shows whether a commit reported as a conflict was stored.
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

/// Runs commands of one aggregate type against its event store.
pub struct Executor<A>
where
    A: Aggregate,
{
    store: PersistedEventStore<SealedRepository, A>,
    services: A::Services,
    pool: PgPool,
}

impl<A> Executor<A>
where
    A: Aggregate + Clone,
{
    /// Creates an executor that rebuilds the aggregate from all of its events on every load.
    pub fn with_event_store(pool: PgPool, cipher: EventCipher, services: A::Services) -> Self {
        let repository = SealedRepository::new(pool.clone(), cipher);
        Self {
            store: PersistedEventStore::new_event_store(repository),
            services,
            pool,
        }
    }

    /// Creates an executor that writes a snapshot with every commit and loads the snapshot plus
    /// the events after it.
    ///
    /// NOTE: postgres-es 0.5 records a snapshot's `last_sequence` as the last event of the
    /// commit, but it folds only the events up to the snapshot boundary into the state. With a
    /// snapshot size above 1, a commit that crosses a boundary therefore drops events from every
    /// later load. A size of 1 makes each snapshot cover its whole commit.
    pub fn with_snapshot_store(pool: PgPool, cipher: EventCipher, services: A::Services) -> Self {
        let repository = SealedRepository::new(pool.clone(), cipher);
        Self {
            store: PersistedEventStore::new_snapshot_store(repository, 1),
            services,
            pool,
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

        // NOTE: commands run on a clone because cqrs-es 0.5's `EventSink::write` applies each
        // event to the aggregate it is given, and `commit` applies them again to
        // `context.aggregate` when it writes a snapshot.
        let mut aggregate = context.aggregate.clone();
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
        let commit_id = Uuid::new_v4();
        match self
            .store
            .commit(events, context, metadata.to_map(commit_id))
            .await
        {
            Ok(envelopes) => {
                debug!(
                    aggregate_type = A::TYPE,
                    aggregate_id,
                    events = envelopes.len(),
                    "committed events"
                );
            }
            Err(AggregateError::AggregateConflict) => {
                // postgres-es checks the snapshot update only after its transaction committed,
                // so a conflict may be reported for events that are stored.
                if !self
                    .is_committed(aggregate_id, base_sequence, count, commit_id)
                    .await?
                {
                    return Err(CommandError::Conflict {
                        aggregate_type: A::TYPE,
                        aggregate_id: aggregate_id.to_owned(),
                    });
                }
                warn!(
                    aggregate_type = A::TYPE,
                    aggregate_id, "commit reported a conflict but its events are stored"
                );
            }
            Err(error) => return Err(store_error::<A>(error, aggregate_id)),
        }

        let first_sequence = sequence_after(base_sequence, 1)?;
        let last_sequence = sequence_after(base_sequence, count)?;
        let position = self
            .max_position(aggregate_id, first_sequence, last_sequence)
            .await?;
        self.notify_relay().await;
        Ok(Committed {
            aggregate_id: aggregate_id.to_owned(),
            stored: count,
            first_sequence: Some(first_sequence),
            last_sequence: Some(last_sequence),
            position: Some(position),
        })
    }

    /// Tells whether the events of commit attempt `commit_id` are stored.
    async fn is_committed(
        &self,
        aggregate_id: &str,
        base_sequence: usize,
        count: usize,
        commit_id: Uuid,
    ) -> Result<bool, CommandError<A::Error>> {
        let first = sequence_after(base_sequence, 1)?;
        let last = sequence_after(base_sequence, count)?;
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence BETWEEN $3 AND $4 \
               AND metadata ->> $5 = $6",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(first)
        .bind(last)
        .bind(metadata_keys::COMMIT_ID)
        .bind(commit_id.to_string())
        .fetch_one(&self.pool)
        .await
        .context("failed to check whether a conflicting commit was stored")?;
        Ok(usize::try_from(stored).is_ok_and(|stored| stored == count))
    }

    async fn max_position(
        &self,
        aggregate_id: &str,
        first_sequence: i64,
        last_sequence: i64,
    ) -> Result<i64, CommandError<A::Error>> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT max(position) FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence BETWEEN $3 AND $4",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(first_sequence)
        .bind(last_sequence)
        .fetch_one(&self.pool)
        .await
        .context("failed to read the positions of committed events")?;
        position.ok_or_else(|| {
            CommandError::Unexpected(anyhow!(
                "committed events of {} {aggregate_id} at sequences {first_sequence}..={last_sequence} are missing",
                A::TYPE
            ))
        })
    }

    /// Wakes the outbox relay; a failure only delays publishing until its next poll.
    async fn notify_relay(&self) {
        let result = sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&self.pool)
            .await;
        if let Err(error) = result {
            warn!(%error, "failed to notify the outbox relay");
        }
    }
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
