//! The Kafka form of a stored event.
//!
//! The key is the aggregate id, so all events of one user land on one partition in order.
//! The value is the event's data as JSON (the payload postgres-es stores, without the
//! enum tag). Headers follow the binary content mode of the CloudEvents Kafka binding:
//! `ce_specversion`, `ce_id`, `ce_source`, `ce_type`, `ce_subject`, `ce_time`,
//! `ce_dataschema` and `content-type`, plus the extension attributes `ce_aggregatetype`,
//! `ce_aggregateid`, `ce_sequence`, `ce_schemaversion` and `ce_position`.

use chrono::{DateTime, Utc};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message;
use serde_json::Value;
use uuid::Uuid;

/// Prefix of `ce_source`; the aggregate type follows it.
const SOURCE_PREFIX: &str = "/meridian/";

/// Namespace of the name-based (v5) UUIDs that identify events.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6d65_7269_6469_616e_2d65_7665_6e74_7331);

pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CE_ID: &str = "ce_id";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SUBJECT: &str = "ce_subject";
pub const CE_TIME: &str = "ce_time";
pub const CE_SEQUENCE: &str = "ce_sequence";
pub const CE_SCHEMA_VERSION: &str = "ce_schemaversion";
pub const CE_POSITION: &str = "ce_position";

/// Returns the id of the event at `sequence` of an aggregate. It is derived, not stored,
/// so the event store, Kafka and every projection compute the same id.
pub fn event_id(aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Uuid {
    let name = format!("{aggregate_type}/{aggregate_id}/{sequence}");
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes())
}

/// A row of the `events` table, whose `payload` is `{"<EventType>": {...}}` as postgres-es
/// writes it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
    pub event_type: String,
    pub event_version: String,
    pub stored_at: DateTime<Utc>,
    pub payload: Value,
}

/// One stored event, as published on and read from Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMessage {
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub position: i64,
    pub event_type: String,
    pub schema_version: String,
    pub stored_at: DateTime<Utc>,
    /// The event's fields, without the enum tag postgres-es wraps them in.
    pub data: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message has no header {0}")]
    MissingHeader(&'static str),
    #[error("header {name} is invalid: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    #[error("message has no value")]
    MissingValue,
    #[error("message value is not JSON: {0}")]
    InvalidValue(#[from] serde_json::Error),
}

impl EventMessage {
    /// Builds the message for a row of the `events` table.
    pub fn from_stored(row: StoredEvent) -> Self {
        let data = match row.payload {
            Value::Object(mut map) if map.len() == 1 && map.contains_key(&row.event_type) => {
                map.remove(&row.event_type).unwrap_or(Value::Null)
            }
            other => other,
        };
        Self {
            event_id: event_id(&row.aggregate_type, &row.aggregate_id, row.sequence),
            aggregate_type: row.aggregate_type,
            aggregate_id: row.aggregate_id,
            sequence: row.sequence,
            position: row.position,
            event_type: row.event_type,
            schema_version: row.event_version,
            stored_at: row.stored_at,
            data,
        }
    }

    /// Returns the payload in the form postgres-es stores and the domain enums deserialize.
    pub fn tagged_payload(&self) -> Value {
        let mut map = serde_json::Map::with_capacity(1);
        map.insert(self.event_type.clone(), self.data.clone());
        Value::Object(map)
    }

    /// Kafka key: the aggregate id.
    pub fn key(&self) -> &str {
        &self.aggregate_id
    }

    /// Kafka value: the event's data as JSON.
    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&self.data).unwrap_or_default()
    }

    /// Relative URI of the JSON Schema that describes `data`.
    pub fn data_schema(&self) -> String {
        format!(
            "schemas/events/{}.v{}.json",
            self.event_type, self.schema_version
        )
    }

    /// Kafka headers in the CloudEvents binary content mode.
    pub fn headers(&self) -> OwnedHeaders {
        let sequence = self.sequence.to_string();
        let position = self.position.to_string();
        let time = self.stored_at.to_rfc3339();
        let source = format!("{SOURCE_PREFIX}{}", self.aggregate_type);
        let id = self.event_id.to_string();
        let pairs: [(&str, &str); 9] = [
            (CE_SPECVERSION, "1.0"),
            (CE_ID, &id),
            (CE_SOURCE, &source),
            (CE_TYPE, &self.event_type),
            (CE_SUBJECT, &self.aggregate_id),
            (CE_TIME, &time),
            (CE_SEQUENCE, &sequence),
            (CE_SCHEMA_VERSION, &self.schema_version),
            (CE_POSITION, &position),
        ];
        pairs.iter().fold(
            OwnedHeaders::new_with_capacity(pairs.len()),
            |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            },
        )
    }

    /// Decodes a consumed message.
    pub fn decode(message: &BorrowedMessage<'_>) -> Result<Self, DecodeError> {
        let headers = message.headers().ok_or(DecodeError::MissingHeader(CE_ID))?;
        let find = |name: &'static str| -> Result<String, DecodeError> {
            headers
                .iter()
                .find(|header| header.key == name)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .ok_or(DecodeError::MissingHeader(name))
        };
        let invalid =
            |name: &'static str, reason: String| DecodeError::InvalidHeader { name, reason };
        let event_id = Uuid::parse_str(&find(CE_ID)?).map_err(|e| invalid(CE_ID, e.to_string()))?;
        let sequence = find(CE_SEQUENCE)?
            .parse()
            .map_err(|e: std::num::ParseIntError| invalid(CE_SEQUENCE, e.to_string()))?;
        let position = find(CE_POSITION)?
            .parse()
            .map_err(|e: std::num::ParseIntError| invalid(CE_POSITION, e.to_string()))?;
        let stored_at = DateTime::parse_from_rfc3339(&find(CE_TIME)?)
            .map_err(|e| invalid(CE_TIME, e.to_string()))?
            .with_timezone(&Utc);
        let source = find(CE_SOURCE)?;
        let aggregate_type = source
            .strip_prefix(SOURCE_PREFIX)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                invalid(
                    CE_SOURCE,
                    format!("{source:?} does not start with {SOURCE_PREFIX}"),
                )
            })?
            .to_owned();
        let data = serde_json::from_slice(message.payload().ok_or(DecodeError::MissingValue)?)?;
        Ok(Self {
            event_id,
            aggregate_type,
            aggregate_id: find(CE_SUBJECT)?,
            sequence,
            position,
            event_type: find(CE_TYPE)?,
            schema_version: find(CE_SCHEMA_VERSION)?,
            stored_at,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_id_is_stable() {
        assert_eq!(
            event_id("LocationTrack", "u1", 7),
            event_id("LocationTrack", "u1", 7)
        );
    }

    #[test]
    fn event_id_differs_by_sequence() {
        assert_ne!(
            event_id("LocationTrack", "u1", 7),
            event_id("LocationTrack", "u1", 8)
        );
    }

    #[test]
    fn from_stored_strips_enum_tag() {
        let message = EventMessage::from_stored(StoredEvent {
            aggregate_type: "User".into(),
            aggregate_id: "u1".into(),
            sequence: 1,
            position: 10,
            event_type: "NameChanged".into(),
            event_version: "1".into(),
            stored_at: Utc::now(),
            payload: json!({"NameChanged": {"name": "A"}}),
        });
        assert_eq!(message.data, json!({"name": "A"}));
        assert_eq!(
            message.tagged_payload(),
            json!({"NameChanged": {"name": "A"}})
        );
    }
}
