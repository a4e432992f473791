//! Opening the sealed personal fields of event messages and decoding them into
//! [`ProjectedEvent`]s. The Kafka consumer and the read-model rebuild share it, so both
//! skip the same messages for the same reasons.

use std::collections::HashSet;

use meridian_crypto::personal::personal_fields;
use meridian_crypto::{CipherError, EventCipher};
use meridian_event_log::EventMessage;

use crate::event::ProjectedEvent;

/// Event type whose projection deletes a user's rows and documents.
pub const ERASED_EVENT: &str = "UserErased";

/// Outcome of opening one message.
#[derive(Debug)]
pub enum Opened {
    Event(ProjectedEvent),
    /// The message belongs to an erased user: their key is destroyed, and the `UserErased`
    /// event removes what the projections hold of them.
    Erased,
    /// The message cannot be opened or does not decode into a domain event. Trying again
    /// will not help.
    Invalid(anyhow::Error),
}

/// Opens messages in consumption order and remembers erased users, so their later messages
/// are skipped without asking the key ring again.
pub struct EventOpener {
    cipher: EventCipher,
    /// Users whose `UserErased` event was opened: every later message is a copy.
    erased: HashSet<String>,
    /// Users whose key the key ring reported destroyed. Their messages with personal fields
    /// cannot be opened, but those without, such as `UserErased` itself, still apply.
    keyless: HashSet<String>,
}

impl EventOpener {
    pub fn new(cipher: EventCipher) -> Self {
        Self {
            cipher,
            erased: HashSet::new(),
            keyless: HashSet::new(),
        }
    }

    /// Opens the personal fields of `message` and decodes its domain event. Only a transient
    /// failure (key store or key provider unreachable) is an error; the caller may try the
    /// same message again.
    pub async fn open(&mut self, message: &EventMessage) -> Result<Opened, CipherError> {
        let keyless = self.keyless.contains(&message.aggregate_id)
            && !personal_fields(&message.event_type).is_empty();
        if keyless || self.erased.contains(&message.aggregate_id) {
            return Ok(Opened::Erased);
        }
        let mut payload = message.tagged_payload();
        if let Err(error) = self
            .cipher
            .open_event(&message.aggregate_id, &message.event_type, &mut payload)
            .await
        {
            if error.is_erased() {
                self.keyless.insert(message.aggregate_id.clone());
                return Ok(Opened::Erased);
            }
            if error.is_transient() {
                return Err(error);
            }
            return Ok(Opened::Invalid(anyhow::Error::new(error).context(format!(
                "failed to open {} event at position {}",
                message.event_type, message.position
            ))));
        }
        let event = match ProjectedEvent::from_payload(message, payload) {
            Ok(event) => event,
            Err(error) => return Ok(Opened::Invalid(error.into())),
        };
        if event.event_type == ERASED_EVENT {
            self.cipher.keyring().forget(&message.aggregate_id);
            self.erased.insert(message.aggregate_id.clone());
        }
        Ok(Opened::Event(event))
    }
}
