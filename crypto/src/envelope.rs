//! Sealing values with a user's data key.
//!
//! A [`DataKey`] is 32 random bytes, one per user. It never encrypts anything directly: HKDF-SHA256
//! derives one subkey per [`Purpose`], and each subkey drives AES-256-GCM-SIV. A sealed value is
//! the base64url (unpadded) text of
//!
//! ```text
//! [format: 1 byte = 1][key version: 4 bytes, big-endian][nonce: 12 bytes][ciphertext and tag]
//! ```
//!
//! and its associated data binds it to the user, the field and the key version, so a ciphertext
//! copied to another user or another field fails to open instead of yielding the wrong value.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use rand::RngCore;
use sha2_011::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Version byte at the start of every sealed value.
pub const FORMAT_VERSION: u8 = 1;
/// Length of a data key, and of every subkey, in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// HKDF salt; changing it would change every subkey.
const HKDF_SALT: &[u8] = b"meridian/hkdf/v1";

/// A user's data key in plaintext. Zeroed when dropped; `Debug` never prints it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; KEY_LEN]);

impl DataKey {
    /// Draws a new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Takes a key unwrapped by a key provider; fails unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SealError> {
        let bytes: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| SealError::KeyLength(bytes.len()))?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives the subkey of one purpose with HKDF-SHA256.
    pub fn derive(&self, purpose: Purpose) -> [u8; KEY_LEN] {
        let hkdf = Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.0);
        let mut subkey = [0u8; KEY_LEN];
        hkdf.expand(purpose.info().as_bytes(), &mut subkey)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        subkey
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(redacted)")
    }
}

/// What a subkey is used for. Each purpose gets an independent key, so a weakness in how one
/// kind of value is handled cannot expose another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Personal fields of events.
    EventField,
    /// Aggregate snapshots.
    Snapshot,
}

impl Purpose {
    fn info(self) -> &'static str {
        match self {
            Self::EventField => "meridian/subkey/event-field/v1",
            Self::Snapshot => "meridian/subkey/snapshot/v1",
        }
    }
}

/// Reason a value cannot be sealed or opened. None of the variants carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("a data key must be 32 bytes, got {0}")]
    KeyLength(usize),
    #[error("sealed value is not base64url text")]
    Encoding,
    #[error("sealed value is {0} bytes, shorter than a header and a tag")]
    TooShort(usize),
    #[error("sealed value has format version {0}, this build reads version {FORMAT_VERSION}")]
    UnknownFormat(u8),
    #[error("sealed value names key version {found}, the user's key is version {expected}")]
    KeyVersion { found: u32, expected: u32 },
    #[error("sealed value failed authentication: it was altered, or belongs to another user, field or key")]
    Authentication,
    #[error("encryption failed")]
    Encryption,
}

/// The subkey of one purpose, ready to seal and open values of one user.
pub struct FieldCipher {
    cipher: Aes256GcmSiv,
    user_id: String,
    key_version: u32,
}

impl FieldCipher {
    pub fn new(key: &DataKey, purpose: Purpose, user_id: &str, key_version: u32) -> Self {
        let mut subkey = key.derive(purpose);
        let cipher = Aes256GcmSiv::new_from_slice(&subkey).expect("subkeys are 32 bytes");
        subkey.zeroize();
        Self {
            cipher,
            user_id: user_id.to_owned(),
            key_version,
        }
    }

    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    /// Encrypts `plaintext` as the value of `field` and returns the sealed text.
    pub fn seal(&self, field: &str, plaintext: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = self.associated_data(field, self.key_version);
        let ciphertext = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Encryption)?;

        let mut sealed = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        sealed.push(FORMAT_VERSION);
        sealed.extend_from_slice(&self.key_version.to_be_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Decrypts the sealed text of `field`. Any change to the text, or a ciphertext of another
    /// user, field or key version, fails with an error; it never yields different plaintext.
    pub fn open(&self, field: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SealError::Encoding)?;
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(SealError::TooShort(bytes.len()));
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(SealError::UnknownFormat(bytes[0]));
        }
        let found = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        if found != self.key_version {
            return Err(SealError::KeyVersion {
                found,
                expected: self.key_version,
            });
        }
        let nonce: [u8; NONCE_LEN] = bytes[5..HEADER_LEN].try_into().expect("12 bytes");
        let aad = self.associated_data(field, found);
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &bytes[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Authentication)
    }

    /// `meridian/v1`, user id, field and key version, separated by NUL bytes, which none of
    /// them contains.
    fn associated_data(&self, field: &str, key_version: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(16 + self.user_id.len() + field.len());
        aad.extend_from_slice(b"meridian/v1\0");
        aad.extend_from_slice(self.user_id.as_bytes());
        aad.push(0);
        aad.extend_from_slice(field.as_bytes());
        aad.push(0);
        aad.extend_from_slice(&key_version.to_be_bytes());
        aad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "0b9f4c55-3d57-4b3c-9d55-6a1f4f1f2f6e";

    fn cipher(key: &DataKey) -> FieldCipher {
        FieldCipher::new(key, Purpose::EventField, USER, 1)
    }

    #[test]
    fn sealed_value_opens_to_the_plaintext() {
        let key = DataKey::generate();
        let sealed = cipher(&key).seal("email", b"ada@example.com").unwrap();
        assert_eq!(
            cipher(&key).open("email", &sealed).unwrap(),
            b"ada@example.com"
        );
        assert!(!sealed.contains("ada"));
    }

    #[test]
    fn sealed_text_starts_with_the_prefix_the_schemas_match() {
        // schemas/events/*.json describe sealed values as `^AQ…`: format 1, key version < 2^28.
        let key = DataKey::generate();
        for version in [1, 2, (1 << 28) - 1] {
            let sealed = FieldCipher::new(&key, Purpose::EventField, USER, version)
                .seal("name", b"\"Ada\"")
                .unwrap();
            assert!(sealed.starts_with("AQ"), "{sealed}");
        }
    }

    #[test]
    fn sealing_twice_gives_different_text() {
        let key = DataKey::generate();
        let cipher = cipher(&key);
        assert_ne!(
            cipher.seal("name", b"Ada").unwrap(),
            cipher.seal("name", b"Ada").unwrap()
        );
    }

    #[test]
    fn every_flipped_byte_fails_to_open() {
        let key = DataKey::generate();
        let cipher = cipher(&key);
        let sealed = cipher.seal("latitude", b"40.6892").unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(&sealed).unwrap();
        for index in 0..bytes.len() {
            for bit in [0x01, 0x80] {
                let mut altered = bytes.clone();
                altered[index] ^= bit;
                let result = cipher.open("latitude", &URL_SAFE_NO_PAD.encode(&altered));
                assert!(result.is_err(), "flipping byte {index} opened: {result:?}");
            }
        }
    }

    #[test]
    fn every_altered_character_fails_to_open() {
        let key = DataKey::generate();
        let cipher = cipher(&key);
        let sealed = cipher.seal("name", b"Ada Lovelace").unwrap();
        for index in 0..sealed.len() {
            let mut altered = sealed.clone().into_bytes();
            altered[index] = if altered[index] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            assert!(cipher.open("name", &altered).is_err(), "index {index}");
        }
    }

    #[test]
    fn value_of_another_field_user_or_purpose_fails_to_open() {
        let key = DataKey::generate();
        let sealed = cipher(&key).seal("email", b"ada@example.com").unwrap();

        assert_eq!(
            cipher(&key).open("name", &sealed),
            Err(SealError::Authentication)
        );
        let other_user = FieldCipher::new(&key, Purpose::EventField, "someone-else", 1);
        assert_eq!(
            other_user.open("email", &sealed),
            Err(SealError::Authentication)
        );
        let snapshot = FieldCipher::new(&key, Purpose::Snapshot, USER, 1);
        assert_eq!(
            snapshot.open("email", &sealed),
            Err(SealError::Authentication)
        );
        let other_key = DataKey::generate();
        assert_eq!(
            cipher(&other_key).open("email", &sealed),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn other_key_version_is_named_in_the_error() {
        let key = DataKey::generate();
        let sealed = FieldCipher::new(&key, Purpose::EventField, USER, 2)
            .seal("name", b"Ada")
            .unwrap();
        assert_eq!(
            cipher(&key).open("name", &sealed),
            Err(SealError::KeyVersion {
                found: 2,
                expected: 1
            })
        );
    }

    #[test]
    fn malformed_text_is_rejected() {
        let cipher = cipher(&DataKey::generate());
        assert_eq!(cipher.open("name", "not base64!"), Err(SealError::Encoding));
        assert_eq!(cipher.open("name", "AQAAAAE"), Err(SealError::TooShort(5)));
    }

    #[test]
    fn purposes_derive_different_subkeys() {
        let key = DataKey::generate();
        assert_ne!(
            key.derive(Purpose::EventField),
            key.derive(Purpose::Snapshot)
        );
        assert_eq!(
            key.derive(Purpose::EventField),
            key.derive(Purpose::EventField)
        );
    }

    #[test]
    fn debug_output_hides_the_key() {
        assert_eq!(format!("{:?}", DataKey::generate()), "DataKey(redacted)");
    }
}
