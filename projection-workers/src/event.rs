//! Typed events as the projections consume them: a Kafka message decoded into the domain
//! event of its aggregate, with the envelope fields the read models store.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use meridian_domain::location::{LocationEvent, LocationTrack};
use meridian_domain::profile::{Profile, ProfileEvent};
use meridian_domain::user::{User, UserEvent};
use meridian_event_log::EventMessage;
use serde_json::Value;
use uuid::Uuid;

/// Aggregate type names as stored in `events.aggregate_type`.
const USER: &str = <User as Aggregate>::TYPE;
const PROFILE: &str = <Profile as Aggregate>::TYPE;
const LOCATION_TRACK: &str = <LocationTrack as Aggregate>::TYPE;

/// The domain event of one aggregate type.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateEvent {
    User(UserEvent),
    Profile(ProfileEvent),
    Location(LocationEvent),
}

impl AggregateEvent {
    /// Name of the aggregate type, as stored in `events.aggregate_type`.
    pub fn aggregate_type(&self) -> &'static str {
        match self {
            Self::User(_) => USER,
            Self::Profile(_) => PROFILE,
            Self::Location(_) => LOCATION_TRACK,
        }
    }
}

/// One event with the envelope fields of its message.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectedEvent {
    /// Aggregate id, which is the user's id for every aggregate type.
    pub user_id: Uuid,
    pub event_id: Uuid,
    /// Sequence of the event within its aggregate.
    pub sequence: i64,
    /// Global position of the event in the event store.
    pub position: i64,
    /// Commit time of the event.
    pub stored_at: DateTime<Utc>,
    pub event_type: String,
    pub event: AggregateEvent,
}

/// Reason a decoded message cannot be projected.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unknown aggregate type {0:?}")]
    UnknownAggregateType(String),
    #[error("aggregate id {0:?} is not a UUID")]
    InvalidAggregateId(String),
    #[error("event {event_type:?} of aggregate type {aggregate_type:?} does not match the domain: {source}")]
    InvalidPayload {
        aggregate_type: String,
        event_type: String,
        source: serde_json::Error,
    },
}

impl ProjectedEvent {
    /// Deserializes the message's payload into the domain event of its aggregate type.
    /// The payload must hold no sealed fields; see [`ProjectedEvent::from_payload`].
    pub fn from_message(message: &EventMessage) -> Result<Self, EventError> {
        Self::from_payload(message, message.tagged_payload())
    }

    /// Deserializes `payload`, the message's tagged payload with its personal fields opened,
    /// into the domain event of the message's aggregate type.
    pub fn from_payload(message: &EventMessage, payload: Value) -> Result<Self, EventError> {
        let user_id = Uuid::parse_str(&message.aggregate_id)
            .map_err(|_| EventError::InvalidAggregateId(message.aggregate_id.clone()))?;
        let invalid = |source| EventError::InvalidPayload {
            aggregate_type: message.aggregate_type.clone(),
            event_type: message.event_type.clone(),
            source,
        };
        let event = match message.aggregate_type.as_str() {
            USER => AggregateEvent::User(serde_json::from_value(payload).map_err(invalid)?),
            PROFILE => AggregateEvent::Profile(serde_json::from_value(payload).map_err(invalid)?),
            LOCATION_TRACK => {
                AggregateEvent::Location(serde_json::from_value(payload).map_err(invalid)?)
            }
            other => return Err(EventError::UnknownAggregateType(other.to_owned())),
        };
        Ok(Self {
            user_id,
            event_id: message.event_id,
            sequence: message.sequence,
            position: message.position,
            stored_at: message.stored_at,
            event_type: message.event_type.clone(),
            event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_event_log::StoredEvent;
    use serde_json::json;

    fn message(aggregate_type: &str, aggregate_id: &str, payload: Value) -> EventMessage {
        let event_type = payload
            .as_object()
            .and_then(|map| map.keys().next().cloned())
            .unwrap_or_default();
        EventMessage::from_stored(StoredEvent {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            sequence: 4,
            position: 99,
            event_type,
            event_version: "1".to_owned(),
            stored_at: Utc::now(),
            payload,
        })
    }

    #[test]
    fn location_message_decodes() {
        let user_id = Uuid::new_v4();
        let payload = json!({"LocationRecorded": {
            "latitude": 40.5, "longitude": -74.25, "recorded_at": "2020-06-30T00:00:00Z"
        }});

        let event =
            ProjectedEvent::from_message(&message("LocationTrack", &user_id.to_string(), payload))
                .unwrap();

        assert_eq!(event.user_id, user_id);
        assert_eq!(event.sequence, 4);
        assert_eq!(event.position, 99);
        assert!(matches!(
            event.event,
            AggregateEvent::Location(LocationEvent::LocationRecorded { latitude, .. }) if latitude == 40.5
        ));
    }

    #[test]
    fn unknown_aggregate_type_is_rejected() {
        let result = ProjectedEvent::from_message(&message(
            "Invoice",
            &Uuid::new_v4().to_string(),
            json!({"InvoicePaid": {}}),
        ));
        assert!(matches!(result, Err(EventError::UnknownAggregateType(_))));
    }

    #[test]
    fn unknown_event_type_is_rejected() {
        let result = ProjectedEvent::from_message(&message(
            "User",
            &Uuid::new_v4().to_string(),
            json!({"UserPromoted": {"level": 3}}),
        ));
        assert!(matches!(result, Err(EventError::InvalidPayload { .. })));
    }

    #[test]
    fn non_uuid_aggregate_id_is_rejected() {
        let result = ProjectedEvent::from_message(&message(
            "User",
            "user-7",
            json!({"NameChanged": {"name": "A"}}),
        ));
        assert!(matches!(result, Err(EventError::InvalidAggregateId(_))));
    }
}
