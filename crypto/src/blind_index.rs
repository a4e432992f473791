//! Blind indexes: a keyed HMAC of a normalized value, so equal values can be found and kept
//! unique without storing them.
//!
//! The key is one system-wide data key (not per user, or two users' equal emails would not
//! collide). Without the key, an index reveals nothing that a guess can be checked against.

use hmac::{Hmac, KeyInit, Mac};
use sha2_011::Sha256;

use crate::envelope::DataKey;

/// HMAC-SHA256 keyed by the blind-index system key.
pub struct BlindIndex {
    key: DataKey,
}

impl BlindIndex {
    pub fn new(key: DataKey) -> Self {
        Self { key }
    }

    /// Index of an email address: lowercase hex of HMAC-SHA256 over the trimmed, lowercased
    /// address, under the label `email`.
    pub fn email(&self, email: &str) -> String {
        self.index("email", &email.trim().to_lowercase())
    }

    fn index(&self, label: &str, normalized: &str) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(normalized.as_bytes());
        let tag = mac.finalize().into_bytes();
        tag.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_addresses_after_normalizing_share_an_index() {
        let index = BlindIndex::new(DataKey::generate());
        assert_eq!(
            index.email("Ada@Example.com "),
            index.email("ada@example.com")
        );
        assert_ne!(
            index.email("ada@example.com"),
            index.email("bob@example.com")
        );
        assert_eq!(index.email("ada@example.com").len(), 64);
    }

    #[test]
    fn index_depends_on_the_key() {
        let first = BlindIndex::new(DataKey::generate());
        let second = BlindIndex::new(DataKey::generate());
        assert_ne!(
            first.email("ada@example.com"),
            second.email("ada@example.com")
        );
    }
}
