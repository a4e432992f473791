//! Helpers for tests and examples: filling the event store directly with messages built
//! from domain events, without the command service.

use meridian_crypto::{CipherError, EventCipher};
use meridian_event_log::EventMessage;
use serde_json::{json, Value};
use sqlx::PgPool;

/// Events per `INSERT` statement of [`store_events`].
const EVENTS_PER_INSERT: usize = 5_000;

/// Returns `messages` with their personal fields sealed, as the command service stores them.
/// Creates the data key of each user on first use.
pub async fn seal_messages(
    cipher: &EventCipher,
    messages: &[EventMessage],
) -> Result<Vec<EventMessage>, CipherError> {
    let mut sealed = Vec::with_capacity(messages.len());
    for message in messages {
        let mut payload = message.tagged_payload();
        cipher
            .seal_event(&message.aggregate_id, &message.event_type, &mut payload)
            .await?;
        let mut message = message.clone();
        message.data = payload[&message.event_type].take();
        sealed.push(message);
    }
    Ok(sealed)
}

/// Inserts `messages` into `events` with their own positions and commit times, in the
/// order given. The event store's triggers run as for the command service: each user needs
/// a data key, and `UserErased` destroys it. Registrations and email changes get a made-up
/// `email_index`, which the triggers require.
pub async fn store_events(pool: &PgPool, messages: &[EventMessage]) -> Result<(), sqlx::Error> {
    for chunk in insert_chunks(messages) {
        let metadata: Vec<Value> = chunk
            .iter()
            .map(|message| match message.event_type.as_str() {
                "UserRegistered" | "EmailChanged" => {
                    json!({ "email_index": format!("{}/{}", message.aggregate_id, message.sequence) })
                }
                _ => json!({}),
            })
            .collect();
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, position, stored_at)
             OVERRIDING SYSTEM VALUE
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                  $6::json[], $7::json[], $8::bigint[], $9::timestamptz[])",
        )
        .bind(column(chunk, |message| message.aggregate_type.clone()))
        .bind(column(chunk, |message| message.aggregate_id.clone()))
        .bind(column(chunk, |message| message.sequence))
        .bind(column(chunk, |message| message.event_type.clone()))
        .bind(column(chunk, |message| message.schema_version.clone()))
        .bind(column(chunk, EventMessage::tagged_payload))
        .bind(metadata)
        .bind(column(chunk, |message| message.position))
        .bind(column(chunk, |message| message.stored_at))
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Splits `messages` into the runs that one `INSERT` stores: at most [`EVENTS_PER_INSERT`]
/// each, and every `UserErased` event alone. The key check of profile and location events
/// runs once per statement, after all of its rows. An erase in the same statement as
/// earlier events of its user would therefore reject them, although the command service
/// commits such events before the erase.
fn insert_chunks(messages: &[EventMessage]) -> Vec<&[EventMessage]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    for (index, message) in messages.iter().enumerate() {
        if message.event_type == "UserErased" {
            if start < index {
                chunks.push(&messages[start..index]);
            }
            chunks.push(&messages[index..=index]);
            start = index + 1;
        }
    }
    if start < messages.len() {
        chunks.push(&messages[start..]);
    }
    chunks
        .into_iter()
        .flat_map(|chunk| chunk.chunks(EVENTS_PER_INSERT))
        .collect()
}

fn column<T>(messages: &[EventMessage], value: impl Fn(&EventMessage) -> T) -> Vec<T> {
    messages.iter().map(value).collect()
}
