//! Which parts of an event are personal data, and sealing them in a stored payload.
//!
//! A stored payload is the domain event as serde writes it, tagged by event type:
//! `{"LocationRecorded": {"latitude": 40.7, "longitude": -74.0, "recorded_at": "…"}}`.
//! Sealing replaces the value of each personal field with the sealed text of its JSON, so the
//! payload keeps its shape and every other field stays readable for routing and debugging:
//! `{"LocationRecorded": {"latitude": "AQAAAAE…", "longitude": "AQAAAAE…", "recorded_at": "…"}}`.
//!
//! The field name given to the cipher is `EventType.field`, which the associated data binds,
//! so a sealed latitude cannot be passed off as a longitude or as an email.

use std::sync::Arc;

use serde_json::Value;

use crate::envelope::SealError;
use crate::keyring::{KeyError, Keyring, UserKeys};

/// Personal fields of each event type. A type not listed has none.
const PERSONAL_FIELDS: &[(&str, &[&str])] = &[
    ("UserRegistered", &["email", "name", "password_hash"]),
    ("NameChanged", &["name"]),
    ("EmailChanged", &["email"]),
    ("PasswordChanged", &["password_hash"]),
    ("ProfileSettingsUpdated", &["settings"]),
    ("ProfileImageChanged", &["image"]),
    ("LocationRecorded", &["latitude", "longitude"]),
];

/// Returns the personal fields of `event_type`.
pub fn personal_fields(event_type: &str) -> &'static [&'static str] {
    PERSONAL_FIELDS
        .iter()
        .find(|(name, _)| *name == event_type)
        .map_or(&[], |(_, fields)| fields)
}

/// Key in a sealed snapshot object.
const SEALED_SNAPSHOT_KEY: &str = "sealed";

/// Reason an event or snapshot cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("field {field}: {source}")]
    Seal { field: String, source: SealError },
    #[error("field {field} is stored in plaintext, but personal data must be sealed")]
    NotSealed { field: String },
    #[error("payload of {event_type} is not an object tagged with its event type")]
    Shape { event_type: String },
    #[error("sealed field {field} does not hold JSON: {source}")]
    Json {
        field: String,
        source: serde_json::Error,
    },
}

impl CipherError {
    /// Tells whether the user was erased, so their data is gone for good.
    pub fn is_erased(&self) -> bool {
        matches!(self, Self::Key(KeyError::Erased(_)))
    }

    /// Tells whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Key(error) if error.is_transient())
    }
}

/// Seals and opens the personal fields of events and the snapshots of aggregates, with the
/// key of the user each belongs to. Every aggregate of a user has the user's id as its id.
#[derive(Clone)]
pub struct EventCipher {
    keyring: Arc<Keyring>,
    seal: bool,
}

impl EventCipher {
    /// With `seal` false, payloads are stored in plaintext; keys are still created, because
    /// the event store requires one per user. That mode exists to measure what sealing costs.
    pub fn new(keyring: Arc<Keyring>, seal: bool) -> Self {
        Self { keyring, seal }
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    pub fn seals(&self) -> bool {
        self.seal
    }

    /// Seals the personal fields of a payload about to be stored.
    pub async fn seal_event(
        &self,
        user_id: &str,
        event_type: &str,
        payload: &mut Value,
    ) -> Result<(), CipherError> {
        let keys = self.keyring.for_writing(user_id).await?;
        if !self.seal {
            return Ok(());
        }
        seal_fields(&keys, event_type, payload)
    }

    /// Opens the personal fields of a stored payload.
    pub async fn open_event(
        &self,
        user_id: &str,
        event_type: &str,
        payload: &mut Value,
    ) -> Result<(), CipherError> {
        if !self.seal || personal_fields(event_type).is_empty() {
            return Ok(());
        }
        let keys = self.keyring.for_reading(user_id).await?;
        open_fields(&keys, event_type, payload)
    }

    /// Seals a snapshot of an aggregate of `user_id` as `{"sealed": "…"}`.
    pub async fn seal_snapshot(
        &self,
        user_id: &str,
        aggregate_type: &str,
        state: Value,
    ) -> Result<Value, CipherError> {
        if !self.seal {
            return Ok(state);
        }
        let keys = self.keyring.for_writing(user_id).await?;
        let label = format!("snapshot.{aggregate_type}");
        let plaintext = serde_json::to_vec(&state).expect("a JSON value serializes");
        let sealed =
            keys.snapshots
                .seal(&label, &plaintext)
                .map_err(|source| CipherError::Seal {
                    field: label,
                    source,
                })?;
        Ok(serde_json::json!({ SEALED_SNAPSHOT_KEY: sealed }))
    }

    /// Opens a snapshot written by [`EventCipher::seal_snapshot`].
    pub async fn open_snapshot(
        &self,
        user_id: &str,
        aggregate_type: &str,
        stored: Value,
    ) -> Result<Value, CipherError> {
        if !self.seal {
            return Ok(stored);
        }
        let label = format!("snapshot.{aggregate_type}");
        let Some(sealed) = stored.get(SEALED_SNAPSHOT_KEY).and_then(Value::as_str) else {
            return Err(CipherError::NotSealed { field: label });
        };
        let keys = self.keyring.for_reading(user_id).await?;
        let plaintext =
            keys.snapshots
                .open(&label, sealed)
                .map_err(|source| CipherError::Seal {
                    field: label.clone(),
                    source,
                })?;
        serde_json::from_slice(&plaintext).map_err(|source| CipherError::Json {
            field: label,
            source,
        })
    }

    /// Blind index of an email address, for `user_emails`.
    pub async fn email_index(&self, email: &str) -> Result<String, CipherError> {
        Ok(self.keyring.blind_index().await?.email(email))
    }
}

/// Seals the personal fields of `payload` with `keys`.
pub fn seal_fields(
    keys: &UserKeys,
    event_type: &str,
    payload: &mut Value,
) -> Result<(), CipherError> {
    for_each_personal_field(event_type, payload, |field, label, value| {
        let plaintext = serde_json::to_vec(value).expect("a JSON value serializes");
        let sealed = keys
            .fields
            .seal(label, &plaintext)
            .map_err(|source| CipherError::Seal {
                field: field.to_owned(),
                source,
            })?;
        *value = Value::String(sealed);
        Ok(())
    })
}

/// Opens the personal fields of `payload` with `keys`.
pub fn open_fields(
    keys: &UserKeys,
    event_type: &str,
    payload: &mut Value,
) -> Result<(), CipherError> {
    for_each_personal_field(event_type, payload, |field, label, value| {
        let Value::String(sealed) = value else {
            return Err(CipherError::NotSealed {
                field: field.to_owned(),
            });
        };
        let plaintext = keys
            .fields
            .open(label, sealed)
            .map_err(|source| CipherError::Seal {
                field: field.to_owned(),
                source,
            })?;
        *value = serde_json::from_slice(&plaintext).map_err(|source| CipherError::Json {
            field: field.to_owned(),
            source,
        })?;
        Ok(())
    })
}

/// Calls `visit(field, label, value)` for each personal field present in `payload`.
fn for_each_personal_field(
    event_type: &str,
    payload: &mut Value,
    mut visit: impl FnMut(&str, &str, &mut Value) -> Result<(), CipherError>,
) -> Result<(), CipherError> {
    let fields = personal_fields(event_type);
    if fields.is_empty() {
        return Ok(());
    }
    let Some(body) = payload.get_mut(event_type).and_then(Value::as_object_mut) else {
        return Err(CipherError::Shape {
            event_type: event_type.to_owned(),
        });
    };
    for field in fields {
        if let Some(value) = body.get_mut(*field) {
            let label = format!("{event_type}.{field}");
            visit(field, &label, value)?;
        }
    }
    Ok(())
}
