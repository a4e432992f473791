//! An event repository that seals personal data on the way into PostgreSQL and opens it on
//! the way out, so aggregates decide on plaintext while the store holds only ciphertext.
//!
//! It wraps postgres-es's repository and changes two things per event: the personal fields
//! of the payload (see `meridian_crypto::personal`) and, for `UserRegistered` and
//! `EmailChanged`, a metadata entry `email_index` with the blind index of the new address.
//! The event store's insert trigger moves that entry into `user_emails` and strips it
//! from the stored metadata. Snapshots are sealed whole.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use meridian_crypto::{CipherError, EventCipher, KeyError};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

/// Metadata key the insert trigger reads the email blind index from.
pub const EMAIL_INDEX_KEY: &str = "email_index";
/// Events in a replay stream buffered ahead of the reader.
const REPLAY_QUEUE: usize = 256;

/// A user whose data key was destroyed; nothing of theirs can be loaded or stored.
#[derive(Debug, thiserror::Error)]
#[error("user {0} was erased")]
pub struct UserErased(pub String);

/// postgres-es's repository with sealing and opening around it.
pub struct SealedRepository {
    inner: PostgresEventRepository,
    cipher: EventCipher,
    pool: PgPool,
}

impl SealedRepository {
    pub fn new(pool: PgPool, cipher: EventCipher) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool.clone()),
            cipher,
            pool,
        }
    }

    async fn seal(&self, event: &SerializedEvent) -> Result<SerializedEvent, PersistenceError> {
        let mut sealed = event.clone();
        if let Some(email) = new_email(event) {
            let index = self.cipher.email_index(email).await.map_err(failure)?;
            if let Value::Object(metadata) = &mut sealed.metadata {
                metadata.insert(EMAIL_INDEX_KEY.to_owned(), Value::String(index));
            }
        }
        self.cipher
            .seal_event(&event.aggregate_id, &event.event_type, &mut sealed.payload)
            .await
            .map_err(failure)?;
        Ok(sealed)
    }

    async fn open(&self, mut event: SerializedEvent) -> Result<SerializedEvent, PersistenceError> {
        self.cipher
            .open_event(&event.aggregate_id, &event.event_type, &mut event.payload)
            .await
            .map_err(failure)?;
        Ok(event)
    }

    async fn open_all(
        &self,
        events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let mut opened = Vec::with_capacity(events.len());
        for event in events {
            opened.push(self.open(event).await?);
        }
        Ok(opened)
    }

    /// Tells whether a failed write was rejected because the user was erased meanwhile: the
    /// insert trigger rejects events of a user without a key.
    async fn erased_during_write(&self, aggregate_id: &str) -> bool {
        self.cipher
            .keyring()
            .is_erased(aggregate_id)
            .await
            .unwrap_or(false)
    }
}

impl PersistedEventRepository for SealedRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self.inner.get_events::<A>(aggregate_id).await?;
        self.open_all(events).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self
            .inner
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await?;
        self.open_all(events).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let Some(mut snapshot) = self.inner.get_snapshot::<A>(aggregate_id).await? else {
            return Ok(None);
        };
        snapshot.aggregate = self
            .cipher
            .open_snapshot(aggregate_id, A::TYPE, snapshot.aggregate)
            .await
            .map_err(failure)?;
        Ok(Some(snapshot))
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let mut sealed = Vec::with_capacity(events.len());
        for event in events {
            sealed.push(self.seal(event).await?);
        }
        let snapshot_update = match snapshot_update {
            Some((aggregate_id, state, version)) => {
                let state = self
                    .cipher
                    .seal_snapshot(&aggregate_id, A::TYPE, state)
                    .await
                    .map_err(failure)?;
                Some((aggregate_id, state, version))
            }
            None => None,
        };
        match self.inner.persist::<A>(&sealed, snapshot_update).await {
            Ok(()) => Ok(()),
            Err(error @ PersistenceError::OptimisticLockError) => Err(error),
            Err(error) => {
                let aggregate_id = events.first().map(|event| event.aggregate_id.as_str());
                match aggregate_id {
                    Some(id) if self.erased_during_write(id).await => Err(
                        PersistenceError::UnknownError(Box::new(UserErased(id.to_owned()))),
                    ),
                    _ => Err(error),
                }
            }
        }
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        let events = self.get_events::<A>(aggregate_id).await?;
        let (mut feed, stream) = ReplayStream::new(REPLAY_QUEUE);
        tokio::spawn(async move {
            for event in events {
                if feed.push(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(stream)
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = $1 ORDER BY 1",
        )
        .bind(A::TYPE)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| PersistenceError::ConnectionError(Box::new(error)))?;
        let (mut feed, stream) = ReplayStream::new(REPLAY_QUEUE);
        let repository = Self {
            inner: PostgresEventRepository::new(self.pool.clone()),
            cipher: self.cipher.clone(),
            pool: self.pool.clone(),
        };
        tokio::spawn(async move {
            for id in ids {
                let events = match repository.get_events::<A>(&id).await {
                    Ok(events) => events,
                    // An erased user's events cannot be replayed; the others still are.
                    Err(PersistenceError::UnknownError(error)) if error.is::<UserErased>() => {
                        continue
                    }
                    Err(error) => {
                        let _ = feed.push(Err(error)).await;
                        return;
                    }
                };
                for event in events {
                    if feed.push(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }
}

/// Returns the new address of an event that sets one.
fn new_email(event: &SerializedEvent) -> Option<&str> {
    if !matches!(event.event_type.as_str(), "UserRegistered" | "EmailChanged") {
        return None;
    }
    event.payload.get(&event.event_type)?.get("email")?.as_str()
}

/// Maps a sealing failure into the repository's error, keeping an erase recognizable.
fn failure(error: CipherError) -> PersistenceError {
    match error {
        CipherError::Key(KeyError::Erased(user_id)) => {
            PersistenceError::UnknownError(Box::new(UserErased(user_id)))
        }
        error if error.is_transient() => PersistenceError::ConnectionError(Box::new(error)),
        error => PersistenceError::UnknownError(Box::new(error)),
    }
}
