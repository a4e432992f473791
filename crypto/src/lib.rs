//! Per-user encryption of personal data.
//!
//! Every user has a data key of their own ([`keyring`]), wrapped at rest by a key
//! [`provider`] (a local master key file, or AWS KMS). Personal fields of events and whole
//! aggregate snapshots are sealed with AES-256-GCM-SIV under subkeys derived from it
//! ([`envelope`], [`personal`]). Erasing a user deletes the wrapped key, so every copy of
//! their events, in PostgreSQL or on Kafka, stays unreadable from then on. Email addresses stay
//! unique through a keyed [`blind_index`].

pub mod blind_index;
pub mod cache;
pub mod envelope;
pub mod keyring;
pub mod personal;
pub mod provider;
pub mod settings;
pub mod testing;

pub use keyring::{KeyError, Keyring, UserKeys};
pub use personal::{CipherError, EventCipher};
pub use settings::KeySettings;
