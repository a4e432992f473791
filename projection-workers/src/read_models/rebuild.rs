//! Rebuilding the read models from the event store, without Kafka.
//!
//! One transaction truncates `rm_users`, `rm_profiles`, `rm_latest_locations`,
//! `rm_location_history` and `rm_applied`, replays every stored event in `position` order
//! through the live projection's opening ([`EventOpener`]) and fold ([`ReadModelRows`]), and
//! commits. Three steps overlap:
//!
//! 1. a reader task streams `events` over its own connection in one query, which reads one
//!    snapshot, taken after the truncation holds its locks;
//! 2. a fold task has chunks opened on two spawned tasks at once, folds them in their
//!    original order, keeps user, profile and latest-location rows in memory and encodes
//!    history rows in the binary `COPY` format;
//! 3. the calling task sends those chunks into `COPY rm_location_history` and, at the end,
//!    writes the in-memory rows, deletes what erased users left, fills `rm_applied` and
//!    rebuilds the history indexes it dropped.
//!
//! The truncation takes ACCESS EXCLUSIVE locks until the commit, so readers and the live
//! projection wait for the rebuild instead of seeing a half-built read model, and a failed or
//! cancelled rebuild leaves the old one as it was. A transaction-level advisory lock keeps a
//! second rebuild from queueing behind the first.
//!
//! `projection_offsets` stays as it is. Every event the live projection applied is below its
//! stored offsets and in the snapshot. Events after those offsets are consumed again when the
//! projection resumes, and folding them again changes nothing: user and profile events at or
//! below a row's `last_sequence` are skipped, the latest location is the maximum of
//! `(recorded_at, sequence)`, and history rows are keyed by event id.
//!
//! The rebuild appends nothing to `rm_updates`: replayed events are no news to subscribers,
//! and the resuming projection appends the updates of events after its offsets. It only
//! blanks the stored updates of erased users, as the live projection does.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::TryStreamExt;
use meridian_crypto::{CipherError, EventCipher};
use meridian_event_log::{live, EventMessage, StoredEvent};
use serde::Serialize;
use sqlx::{Acquire, PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::fold::{Folded, ReadModelRows};
use super::history_copy::{HistoryCopy, COPY_HISTORY};
use super::store::{self, AppliedSequences};
use crate::event::ProjectedEvent;
use crate::opener::{EventOpener, Opened, ERASED_EVENT};

/// Key of the advisory lock that one rebuild holds for its transaction.
pub const REBUILD_LOCK_KEY: i64 = 0x6d72_6462_7569_6c64;
/// Connections a rebuild uses: the writer, the reader and the key ring's lookups.
pub const DATABASE_CONNECTIONS: u32 = 4;

/// Events per chunk passed from the reader to the fold task.
const EVENTS_PER_CHUNK: usize = 4096;
/// Chunks buffered between two steps, which bounds memory while one step waits.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Chunks opened at once. Opening is the costliest step on the client, so it runs on more
/// than one core.
const OPEN_TASKS: usize = 2;
/// Attempts to open one event while the key store or key provider is unreachable.
const OPEN_ATTEMPTS: u32 = 5;
/// Delay before the second attempt; it doubles for each further one.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);

const TRUNCATE: &str =
    "TRUNCATE rm_users, rm_profiles, rm_latest_locations, rm_location_history, rm_applied";
const SELECT_EVENTS: &str = "SELECT aggregate_type, aggregate_id, sequence, position, event_type, event_version, stored_at, payload FROM events ORDER BY position";

/// Choices that change how a rebuild loads `rm_location_history`, not what it writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RebuildOptions {
    /// Keep the secondary indexes of `rm_location_history` during the load instead of
    /// dropping them first and building them again after it.
    pub keep_indexes: bool,
    /// Keep the primary key of `rm_location_history` during the load instead of adding it
    /// again after it.
    pub keep_primary_key: bool,
}

/// The counts of a rebuild and the time of each stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebuildSummary {
    /// Rows read from `events`.
    pub events: u64,
    /// Wall-clock time from taking the lock to the commit.
    pub seconds: f64,
    pub events_per_second: f64,
    pub history_rows: u64,
    pub users: u64,
    pub profiles: u64,
    pub latest_locations: u64,
    /// Aggregates with a row in `rm_applied`.
    pub applied_aggregates: u64,
    pub erased_users: u64,
    /// Events of erased users, which cannot be opened and were skipped.
    pub skipped_erased: u64,
    /// Events that could not be opened or decoded, and were skipped.
    pub invalid: u64,
    /// Events that change a user without a row, such as a change of an erased user.
    pub unknown_user: u64,
    pub stages: StageSeconds,
}

/// Busy and waiting time of each step, in seconds. The first three steps overlap.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageSeconds {
    pub truncate: f64,
    pub drop_indexes: f64,
    /// Reader: waiting for rows from PostgreSQL, including decoding them.
    pub read: f64,
    /// Reader: waiting for the fold task to take a chunk.
    pub read_blocked: f64,
    /// Opening sealed fields and decoding events, summed over the tasks that open chunks
    /// in parallel.
    pub open: f64,
    pub fold: f64,
    /// Fold task: encoding history rows for `COPY`.
    pub encode: f64,
    /// Fold task: waiting for the next opened chunk.
    pub fold_idle: f64,
    /// Writer: sending `COPY` data, which waits while PostgreSQL inserts.
    pub copy: f64,
    /// Writer: waiting for the next `COPY` chunk.
    pub copy_idle: f64,
    /// Users, profiles and latest locations, written once at the end.
    pub write_rows: f64,
    /// Deleting the rows of erased users and blanking their live updates.
    pub erase: f64,
    pub applied: f64,
    pub build_indexes: f64,
    pub commit: f64,
}

/// Replaces the read models with a replay of every stored event. Returns an error, and leaves
/// the read models unchanged, when any step fails, another rebuild holds the lock, or
/// `shutdown` is cancelled first.
pub async fn rebuild(
    pool: &PgPool,
    cipher: EventCipher,
    options: RebuildOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<RebuildSummary> {
    let mut writer = pool
        .acquire()
        .await
        .context("failed to connect to PostgreSQL")?;
    let outcome = tokio::select! {
        outcome = rebuild_on(&mut writer, pool, cipher, options) => outcome,
        () = shutdown.cancelled() => Err(anyhow!("rebuild cancelled")),
    };
    if outcome.is_err() {
        // Closing the connection makes PostgreSQL roll back the transaction, also when it
        // was left inside an unfinished COPY.
        if let Err(error) = writer.close().await {
            tracing::warn!(%error, "failed to close the connection of a failed rebuild");
        }
    }
    outcome
}

async fn rebuild_on(
    writer: &mut PgConnection,
    pool: &PgPool,
    cipher: EventCipher,
    options: RebuildOptions,
) -> anyhow::Result<RebuildSummary> {
    let started = Instant::now();
    let mut stages = StageSeconds::default();
    let mut transaction = writer
        .begin()
        .await
        .context("failed to begin transaction")?;
    take_lock(&mut transaction).await?;

    let step = Instant::now();
    sqlx::query(TRUNCATE)
        .execute(&mut *transaction)
        .await
        .context("failed to truncate the read models")?;
    stages.truncate = step.elapsed().as_secs_f64();
    let step = Instant::now();
    let indexes = drop_indexes(&mut transaction, options)
        .await
        .context("failed to drop the indexes of rm_location_history")?;
    stages.drop_indexes = step.elapsed().as_secs_f64();

    // Spawned only now, so the reader's snapshot is taken while the truncation's locks keep
    // the live projection from committing.
    let (event_sender, event_receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (copy_sender, copy_receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let reader = Task(tokio::spawn(read_events(pool.clone(), event_sender)));
    let folder = Task(tokio::spawn(fold_events(
        cipher,
        event_receiver,
        copy_sender,
    )));
    let copied = copy_history(&mut transaction, copy_receiver)
        .await
        .context("failed to copy rows into rm_location_history");
    let read = reader
        .join()
        .await
        .context("failed to read the event store");
    let replay = folder.join().await;
    let (read, replay, copied) = match (read, replay, copied) {
        (Ok(read), Ok(replay), Ok(copied)) => (read, replay, copied),
        (read, replay, copied) => {
            return Err(first_failure([read.err(), replay.err(), copied.err()]))
        }
    };
    (stages.read, stages.read_blocked) = (read.busy, read.blocked);
    (stages.copy, stages.copy_idle) = (copied.busy, copied.idle);
    replay.times.store(&mut stages);

    let summary = finish(&mut transaction, replay, indexes, &mut stages).await?;
    let step = Instant::now();
    transaction
        .commit()
        .await
        .context("failed to commit the rebuild")?;
    stages.commit = step.elapsed().as_secs_f64();

    let seconds = started.elapsed().as_secs_f64();
    Ok(RebuildSummary {
        events: read.events,
        seconds,
        events_per_second: read.events as f64 / seconds.max(f64::EPSILON),
        history_rows: copied.rows,
        stages,
        ..summary
    })
}

async fn take_lock(connection: &mut PgConnection) -> anyhow::Result<()> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(REBUILD_LOCK_KEY)
        .fetch_one(&mut *connection)
        .await
        .context("failed to take the rebuild lock")?;
    if !locked {
        bail!("another rebuild of the read models is running; wait for it to finish");
    }
    Ok(())
}

/// Writes everything but the history, which is already copied, and restores the indexes.
async fn finish(
    connection: &mut PgConnection,
    replay: Replay,
    indexes: Vec<String>,
    stages: &mut StageSeconds,
) -> anyhow::Result<RebuildSummary> {
    let step = Instant::now();
    store::write_rows(connection, &replay.rows)
        .await
        .context("failed to write the read-model rows")?;
    stages.write_rows = step.elapsed().as_secs_f64();

    let step = Instant::now();
    super::delete_users(connection, &replay.erased)
        .await
        .context("failed to delete the read-model rows of erased users")?;
    live::forget_users(connection, &replay.erased)
        .await
        .context("failed to blank the live updates of erased users")?;
    stages.erase = step.elapsed().as_secs_f64();

    let step = Instant::now();
    let applied_aggregates = replay.applied.aggregate_count();
    replay
        .applied
        .store(connection)
        .await
        .context("failed to record the processed sequences")?;
    stages.applied = step.elapsed().as_secs_f64();

    let step = Instant::now();
    for definition in &indexes {
        sqlx::query(definition)
            .execute(&mut *connection)
            .await
            .with_context(|| format!("failed to run {definition}"))?;
    }
    stages.build_indexes = step.elapsed().as_secs_f64();

    let erased: HashSet<Uuid> = replay.erased.iter().copied().collect();
    Ok(RebuildSummary {
        users: count_kept(replay.rows.users.keys(), &erased),
        profiles: count_kept(replay.rows.profiles.keys(), &erased),
        latest_locations: count_kept(replay.rows.latest_locations.keys(), &erased),
        applied_aggregates: u64::try_from(applied_aggregates).unwrap_or(u64::MAX),
        erased_users: u64::try_from(erased.len()).unwrap_or(u64::MAX),
        skipped_erased: replay.skipped_erased,
        invalid: replay.invalid,
        unknown_user: replay.unknown_user,
        ..RebuildSummary::default()
    })
}

/// Counts the users among `ids` that were not erased.
fn count_kept<'a>(ids: impl Iterator<Item = &'a Uuid>, erased: &HashSet<Uuid>) -> u64 {
    let kept = ids.filter(|id| !erased.contains(id)).count();
    u64::try_from(kept).unwrap_or(u64::MAX)
}

/// A step that stopped because the step after it stopped taking its output.
#[derive(Debug, thiserror::Error)]
#[error("the {0} stopped")]
struct Stopped(&'static str);

/// Returns the error of the step that failed on its own, in pipeline order, rather than one
/// that only followed from it.
fn first_failure(errors: [Option<anyhow::Error>; 3]) -> anyhow::Error {
    let mut errors: Vec<anyhow::Error> = errors.into_iter().flatten().collect();
    let cause = errors
        .iter()
        .position(|error| !error.is::<Stopped>())
        .unwrap_or(0);
    errors.swap_remove(cause)
}

/// Drops the indexes of `rm_location_history` that `options` lets go and returns the
/// statements that create them again, taken from the catalog so they match the migrations.
async fn drop_indexes(
    connection: &mut PgConnection,
    options: RebuildOptions,
) -> Result<Vec<String>, sqlx::Error> {
    let mut restore = Vec::new();
    if !options.keep_primary_key {
        let primary_key: Option<(String, String)> = sqlx::query_as(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = 'rm_location_history'::regclass AND contype = 'p'",
        )
        .fetch_optional(&mut *connection)
        .await?;
        if let Some((name, definition)) = primary_key {
            let name = quote_identifier(&name);
            sqlx::query(&format!(
                "ALTER TABLE rm_location_history DROP CONSTRAINT {name}"
            ))
            .execute(&mut *connection)
            .await?;
            restore.push(format!(
                "ALTER TABLE rm_location_history ADD CONSTRAINT {name} {definition}"
            ));
        }
    }
    if !options.keep_indexes {
        let secondary: Vec<(String, String)> = sqlx::query_as(
            "SELECT index.relname::text, pg_get_indexdef(index.oid)
             FROM pg_index JOIN pg_class AS index ON index.oid = pg_index.indexrelid
             WHERE pg_index.indrelid = 'rm_location_history'::regclass
               AND NOT EXISTS (SELECT 1 FROM pg_constraint
                               WHERE pg_constraint.conindid = pg_index.indexrelid)",
        )
        .fetch_all(&mut *connection)
        .await?;
        for (name, definition) in secondary {
            sqlx::query(&format!("DROP INDEX {}", quote_identifier(&name)))
                .execute(&mut *connection)
                .await?;
            restore.push(definition);
        }
    }
    Ok(restore)
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A spawned step of the rebuild, aborted when dropped, so a failed or cancelled rebuild
/// leaves no task behind.
struct Task<T>(JoinHandle<anyhow::Result<T>>);

impl<T> Task<T> {
    async fn join(mut self) -> anyhow::Result<T> {
        (&mut self.0).await.context("rebuild task panicked")?
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The counts and time of the reader.
struct Read {
    events: u64,
    busy: f64,
    blocked: f64,
}

/// Streams every stored event in `position` order to `sender`, in chunks.
async fn read_events(
    pool: PgPool,
    sender: mpsc::Sender<Vec<EventMessage>>,
) -> anyhow::Result<Read> {
    let mut connection = pool.acquire().await?;
    let mut rows = sqlx::query_as::<_, StoredEvent>(SELECT_EVENTS).fetch(&mut *connection);
    let mut read = Read {
        events: 0,
        busy: 0.0,
        blocked: 0.0,
    };
    let mut chunk = Vec::with_capacity(EVENTS_PER_CHUNK);
    loop {
        let step = Instant::now();
        let row = rows.try_next().await?;
        read.busy += step.elapsed().as_secs_f64();
        let done = row.is_none();
        if let Some(row) = row {
            chunk.push(EventMessage::from_stored(row));
            read.events += 1;
        }
        if chunk.len() == EVENTS_PER_CHUNK || (done && !chunk.is_empty()) {
            let step = Instant::now();
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(EVENTS_PER_CHUNK));
            sender.send(full).await.map_err(|_| Stopped("fold task"))?;
            read.blocked += step.elapsed().as_secs_f64();
        }
        if done {
            return Ok(read);
        }
    }
}

/// Busy and waiting time of the fold task.
#[derive(Debug, Default)]
struct FoldTimes {
    open: Duration,
    fold: Duration,
    encode: Duration,
    idle: Duration,
}

impl FoldTimes {
    fn store(&self, stages: &mut StageSeconds) {
        stages.open = self.open.as_secs_f64();
        stages.fold = self.fold.as_secs_f64();
        stages.encode = self.encode.as_secs_f64();
        stages.fold_idle = self.idle.as_secs_f64();
    }
}

/// The state of the replay: what the live projection would have written, minus the history,
/// which goes straight to `COPY`.
#[derive(Debug, Default)]
struct Replay {
    rows: ReadModelRows,
    applied: AppliedSequences,
    /// Users with a `UserErased` event, in the order of those events.
    erased: Vec<Uuid>,
    skipped_erased: u64,
    invalid: u64,
    unknown_user: u64,
    times: FoldTimes,
}

impl Replay {
    /// Folds one opened event as `apply_batch` of the live projection does.
    fn fold(&mut self, event: &ProjectedEvent) {
        self.applied.add(event);
        if event.event_type == ERASED_EVENT {
            self.erased.push(event.user_id);
            return;
        }
        if self.rows.fold(event) == Folded::UnknownUser {
            self.unknown_user += 1;
            tracing::debug!(
                user_id = %event.user_id,
                sequence = event.sequence,
                position = event.position,
                event_type = %event.event_type,
                "skipping event of a user that the rebuilt rm_users does not have"
            );
        }
    }

    /// Returns the opened event, or counts and logs why there is none.
    fn take_event(&mut self, message: &EventMessage, opened: Opened) -> Option<ProjectedEvent> {
        match opened {
            Opened::Event(event) => return Some(event),
            Opened::Erased => self.skipped_erased += 1,
            Opened::Invalid(error) => {
                self.invalid += 1;
                tracing::error!(
                    position = message.position,
                    aggregate_id = %message.aggregate_id,
                    error = format!("{error:#}"),
                    "skipping event that is not a known event"
                );
            }
        }
        None
    }
}

/// Opens every chunk from `events` on up to [`OPEN_TASKS`] spawned tasks at once, folds the
/// opened chunks in their original order, and sends the history rows to `copy` in the binary
/// `COPY` format, ending with its trailer once `events` is closed.
async fn fold_events(
    cipher: EventCipher,
    mut events: mpsc::Receiver<Vec<EventMessage>>,
    copy: mpsc::Sender<Vec<u8>>,
) -> anyhow::Result<Replay> {
    let mut replay = Replay::default();
    let mut encoder = HistoryCopy::default();
    let mut opening: VecDeque<Task<OpenedChunk>> = VecDeque::with_capacity(OPEN_TASKS);
    let mut events_done = false;
    loop {
        let step = Instant::now();
        while !events_done && opening.len() < OPEN_TASKS {
            match events.recv().await {
                Some(messages) => {
                    opening.push_back(Task(tokio::spawn(open_chunk(cipher.clone(), messages))))
                }
                None => events_done = true,
            }
        }
        let Some(next) = opening.pop_front() else {
            break;
        };
        let chunk = next.join().await?;
        replay.times.idle += step.elapsed();
        replay.times.open += chunk.busy;

        let step = Instant::now();
        for (message, opened) in chunk.messages.iter().zip(chunk.opened) {
            if let Some(event) = replay.take_event(message, opened) {
                replay.fold(&event);
            }
        }
        replay.times.fold += step.elapsed();

        let step = Instant::now();
        let history = replay.rows.take_history();
        let data = encoder.encode(&history);
        replay.times.encode += step.elapsed();
        copy.send(data)
            .await
            .map_err(|_| Stopped("COPY into rm_location_history"))?;
    }
    copy.send(encoder.finish())
        .await
        .map_err(|_| Stopped("COPY into rm_location_history"))?;
    Ok(replay)
}

/// A chunk of messages with what opening each one gave, and the time it took.
struct OpenedChunk {
    messages: Vec<EventMessage>,
    opened: Vec<Opened>,
    busy: Duration,
}

/// Opens every message of one chunk. Each chunk has an opener of its own: the users it
/// finds erased stay erased for every other chunk too, because their keys are gone.
async fn open_chunk(
    cipher: EventCipher,
    messages: Vec<EventMessage>,
) -> anyhow::Result<OpenedChunk> {
    let started = Instant::now();
    let mut opener = EventOpener::new(cipher);
    let mut opened = Vec::with_capacity(messages.len());
    for message in &messages {
        opened.push(open_with_retries(&mut opener, message).await?);
    }
    Ok(OpenedChunk {
        messages,
        opened,
        busy: started.elapsed(),
    })
}

/// Opens `message`, trying again a few times while the key store or key provider is
/// unreachable.
async fn open_with_retries(
    opener: &mut EventOpener,
    message: &EventMessage,
) -> anyhow::Result<Opened> {
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1;
    loop {
        let error: CipherError = match opener.open(message).await {
            Ok(opened) => return Ok(opened),
            Err(error) => error,
        };
        if attempt == OPEN_ATTEMPTS {
            return Err(anyhow::Error::new(error).context(format!(
                "failed to open the event at position {} after {OPEN_ATTEMPTS} attempts",
                message.position
            )));
        }
        tracing::warn!(
            position = message.position,
            attempt,
            error = %error,
            retry_in_ms = delay.as_millis(),
            "failed to open a sealed event, retrying"
        );
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

/// The rows the writer copied, and its busy and idle seconds.
struct Copied {
    rows: u64,
    busy: f64,
    idle: f64,
}

/// Sends every chunk from `chunks` into `COPY rm_location_history` until the channel closes.
async fn copy_history(
    connection: &mut PgConnection,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> Result<Copied, sqlx::Error> {
    let mut copy = connection.copy_in_raw(COPY_HISTORY).await?;
    let (mut busy, mut idle) = (Duration::ZERO, Duration::ZERO);
    loop {
        let step = Instant::now();
        let Some(chunk) = chunks.recv().await else {
            break;
        };
        idle += step.elapsed();
        let step = Instant::now();
        copy.send(chunk).await?;
        busy += step.elapsed();
    }
    let step = Instant::now();
    let rows = copy.finish().await?;
    busy += step.elapsed();
    Ok(Copied {
        rows,
        busy: busy.as_secs_f64(),
        idle: idle.as_secs_f64(),
    })
}
