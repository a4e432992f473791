//! An event repository that seals personal data on the way into PostgreSQL and opens it on
//! the way out, so aggregates decide on plaintext while the store holds only ciphertext.
//!
//! It wraps postgres-es's repository and changes three things per event: the personal fields
//! of the payload (see `meridian_crypto::personal`), the personal metadata entries
//! ([`PERSONAL_METADATA`]) and, for `UserRegistered` and `EmailChanged`, a metadata entry
//! `email_index` with the blind index of the new address. The event store's insert trigger
//! moves that entry into `user_emails` and strips it from the stored metadata. Snapshots are
//! sealed whole.
//!
//! Loading opens payloads only, because aggregates never read metadata; `GET /v1/audit`
//! opens the metadata with [`open_metadata`].

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use meridian_crypto::{CipherError, EventCipher, KeyError, UserKeys};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

use super::metadata_keys;

/// Metadata key the insert trigger reads the email blind index from.
pub const EMAIL_INDEX_KEY: &str = "email_index";
/// Metadata entries that are personal data. They are sealed like personal payload fields,
/// with the key of the user the event belongs to, so erasing the user makes them unreadable.
pub const PERSONAL_METADATA: [&str; 2] = [metadata_keys::CLIENT_ADDR, metadata_keys::USER_AGENT];
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

    async fn seal(
        &self,
        event: &SerializedEvent,
        last_metadata: &mut Option<SealedMetadata>,
    ) -> Result<SerializedEvent, PersistenceError> {
        let mut sealed = event.clone();
        sealed.metadata = self
            .seal_personal_metadata(&event.aggregate_id, &event.metadata, last_metadata)
            .await?;
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

    /// Returns `metadata` with its personal entries sealed. Every event of one commit carries
    /// the same metadata, so the result for the previous event is reused when it matches.
    async fn seal_personal_metadata(
        &self,
        aggregate_id: &str,
        metadata: &Value,
        last: &mut Option<SealedMetadata>,
    ) -> Result<Value, PersistenceError> {
        let has_personal = PERSONAL_METADATA
            .iter()
            .any(|key| metadata.get(key).is_some());
        if !self.cipher.seals() || !has_personal {
            return Ok(metadata.clone());
        }
        if let Some(last) = last.as_ref() {
            if last.aggregate_id == aggregate_id && last.plaintext == *metadata {
                return Ok(last.sealed.clone());
            }
        }

        let keys = self
            .cipher
            .keyring()
            .for_writing(aggregate_id)
            .await
            .map_err(|error| failure(error.into()))?;
        let mut sealed = metadata.clone();
        seal_metadata(&keys, &mut sealed).map_err(failure)?;
        *last = Some(SealedMetadata {
            aggregate_id: aggregate_id.to_owned(),
            plaintext: metadata.clone(),
            sealed: sealed.clone(),
        });
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

    async fn seal_all(
        &self,
        events: &[SerializedEvent],
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let mut sealed = Vec::with_capacity(events.len());
        let mut last_metadata = None;
        for event in events {
            sealed.push(self.seal(event, &mut last_metadata).await?);
        }
        Ok(sealed)
    }

    /// Seals and stores the events of one commit in a single transaction, with a snapshot
    /// when one is given. The transaction runs one multi-row `INSERT` for the events, the
    /// snapshot write, and a notification to the outbox relay, which PostgreSQL delivers at
    /// commit. Returns the greatest position stored.
    ///
    /// postgres-es's own `persist` sends one `INSERT` per event, so a batch of 100 reports cost
    /// 100 round trips. Any unique violation (a concurrent commit at the same sequence, or an
    /// email address taken meanwhile) is reported as
    /// [`PersistenceError::OptimisticLockError`], and nothing of the commit is stored.
    pub async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot: Option<SnapshotWrite>,
    ) -> Result<i64, PersistenceError> {
        let sealed = self.seal_all(events).await?;
        let snapshot = match (snapshot, events.first()) {
            (Some(snapshot), Some(first)) => {
                let state = self
                    .cipher
                    .seal_snapshot(&first.aggregate_id, A::TYPE, snapshot.state)
                    .await
                    .map_err(failure)?;
                Some(SnapshotWrite { state, ..snapshot })
            }
            _ => None,
        };
        match write_commit::<A>(&self.pool, &sealed, snapshot.as_ref()).await {
            Ok(position) => Ok(position),
            Err(error) => Err(self.write_failure(events, error).await),
        }
    }

    /// Classifies a failed write. A conflict stays a conflict. Any other failure of a user
    /// whose key was destroyed meanwhile becomes [`UserErased`], because the insert trigger
    /// rejects events of a user without a key.
    async fn write_failure(
        &self,
        events: &[SerializedEvent],
        error: impl Into<PersistenceError>,
    ) -> PersistenceError {
        let error = error.into();
        if matches!(error, PersistenceError::OptimisticLockError) {
            return error;
        }
        match events.first().map(|event| event.aggregate_id.as_str()) {
            Some(id) if self.erased_during_write(id).await => {
                PersistenceError::UnknownError(Box::new(UserErased(id.to_owned())))
            }
            _ => error,
        }
    }

    /// Tells whether the user was erased: their key no longer exists.
    async fn erased_during_write(&self, aggregate_id: &str) -> bool {
        self.cipher
            .keyring()
            .is_erased(aggregate_id)
            .await
            .unwrap_or(false)
    }
}

/// The state of an aggregate to store as its snapshot in the same transaction as a commit.
#[derive(Debug, Clone)]
pub struct SnapshotWrite {
    /// The aggregate's state after the commit, as plaintext JSON; `append` seals it.
    pub state: Value,
    /// The sequence of the commit's last event, which the state includes.
    pub last_sequence: usize,
}

/// A failed write, before it is classified as a conflict or another failure.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct WriteError(#[from] sqlx::Error);

impl From<WriteError> for PersistenceError {
    fn from(WriteError(error): WriteError) -> Self {
        let unique_violation = error
            .as_database_error()
            .is_some_and(|error| error.code().as_deref() == Some("23505"));
        if unique_violation {
            Self::OptimisticLockError
        } else {
            Self::ConnectionError(Box::new(error))
        }
    }
}

/// Runs the transaction of [`SealedRepository::append`].
async fn write_commit<A: Aggregate>(
    pool: &PgPool,
    events: &[SerializedEvent],
    snapshot: Option<&SnapshotWrite>,
) -> Result<i64, WriteError> {
    let mut transaction = pool.begin().await?;
    let position = insert_events::<A>(&mut transaction, events).await?;
    if let Some(snapshot) = snapshot {
        let aggregate_id = events
            .first()
            .map_or("", |event| event.aggregate_id.as_str());
        write_snapshot::<A>(&mut transaction, aggregate_id, snapshot).await?;
    }
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(super::OUTBOX_CHANNEL)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(position)
}

/// Inserts the events with one statement and returns the greatest position they got.
async fn insert_events<A: Aggregate>(
    transaction: &mut sqlx::PgConnection,
    events: &[SerializedEvent],
) -> Result<i64, WriteError> {
    let count = events.len();
    let mut ids = Vec::with_capacity(count);
    let mut sequences = Vec::with_capacity(count);
    let mut types = Vec::with_capacity(count);
    let mut versions = Vec::with_capacity(count);
    let mut payloads = Vec::with_capacity(count);
    let mut metadata = Vec::with_capacity(count);
    for event in events {
        ids.push(event.aggregate_id.as_str());
        sequences.push(i64::try_from(event.sequence).unwrap_or(i64::MAX));
        types.push(event.event_type.as_str());
        versions.push(event.event_version.as_str());
        payloads.push(event.payload.to_string());
        metadata.push(event.metadata.to_string());
    }
    let position: Option<i64> = sqlx::query_scalar(
        "WITH stored AS (
             INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT $1, id, sequence, event_type, event_version, payload::json, metadata::json
             FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::text[])
                  AS t (id, sequence, event_type, event_version, payload, metadata)
             RETURNING position)
         SELECT max(position) FROM stored",
    )
    .bind(A::TYPE)
    .bind(&ids)
    .bind(&sequences)
    .bind(&types)
    .bind(&versions)
    .bind(&payloads)
    .bind(&metadata)
    .fetch_one(&mut *transaction)
    .await?;
    // An empty commit never reaches this function, so a missing position means a bug.
    Ok(position.unwrap_or_default())
}

/// Writes the aggregate's snapshot, unless the stored one is at least as recent.
///
/// The insert of the commit's events already failed when another commit took the same
/// sequences, so the snapshot needs no version check of its own. A command that loaded the
/// snapshot and then the events after it, with another commit in between, has a correct
/// state but a stale snapshot version, and its commit must still succeed.
async fn write_snapshot<A: Aggregate>(
    transaction: &mut sqlx::PgConnection,
    aggregate_id: &str,
    snapshot: &SnapshotWrite,
) -> Result<(), WriteError> {
    let last_sequence = i64::try_from(snapshot.last_sequence).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                payload)
         VALUES ($1, $2, $3, 1, $4::text::json)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
         SET last_sequence = EXCLUDED.last_sequence,
             current_snapshot = snapshots.current_snapshot + 1,
             payload = EXCLUDED.payload
         WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(A::TYPE)
    .bind(aggregate_id)
    .bind(last_sequence)
    .bind(snapshot.state.to_string())
    .execute(&mut *transaction)
    .await?;
    Ok(())
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
        let sealed = self.seal_all(events).await?;
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
            Err(error) => Err(self.write_failure(events, error).await),
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

/// The metadata of the last event sealed in one `persist` call.
struct SealedMetadata {
    aggregate_id: String,
    plaintext: Value,
    sealed: Value,
}

/// Seals the [`PERSONAL_METADATA`] entries present in `metadata` with `keys`. Each entry
/// becomes the sealed text of its JSON, under the label `metadata.<key>`, as a personal
/// payload field becomes the sealed text of its JSON under `<event type>.<field>`.
pub fn seal_metadata(keys: &UserKeys, metadata: &mut Value) -> Result<(), CipherError> {
    let Some(entries) = metadata.as_object_mut() else {
        return Ok(());
    };
    for key in PERSONAL_METADATA {
        let Some(value) = entries.get_mut(key) else {
            continue;
        };
        let label = metadata_label(key);
        let plaintext = serde_json::to_vec(value).expect("a JSON value serializes");
        let sealed = keys
            .fields
            .seal(&label, &plaintext)
            .map_err(|source| CipherError::Seal {
                field: label,
                source,
            })?;
        *value = Value::String(sealed);
    }
    Ok(())
}

/// Opens the [`PERSONAL_METADATA`] entries present in stored `metadata` with `keys`.
pub fn open_metadata(keys: &UserKeys, metadata: &mut Value) -> Result<(), CipherError> {
    let Some(entries) = metadata.as_object_mut() else {
        return Ok(());
    };
    for key in PERSONAL_METADATA {
        let Some(value) = entries.get_mut(key) else {
            continue;
        };
        let label = metadata_label(key);
        let Value::String(sealed) = value else {
            return Err(CipherError::NotSealed { field: label });
        };
        let plaintext = keys
            .fields
            .open(&label, sealed)
            .map_err(|source| CipherError::Seal {
                field: label.clone(),
                source,
            })?;
        *value = serde_json::from_slice(&plaintext).map_err(|source| CipherError::Json {
            field: label,
            source,
        })?;
    }
    Ok(())
}

/// Returns the label a sealed metadata entry is bound to, such as `metadata.client_addr`. No
/// event type is named `metadata`, so no payload field shares it.
fn metadata_label(key: &str) -> String {
    format!("metadata.{key}")
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
