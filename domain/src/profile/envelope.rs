//! The binary envelope of a profile image that the client encrypted. The command service
//! checks only its header, because it has no key. The `meridian-image` client writes
//! and opens it.
//!
//! Layout, integers big-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 6 | magic `MRDIMG` |
//! | 1 | format version, 1 |
//! | 1 | key mode: 1 passphrase, 2 key file |
//! | 4 + 16 | passphrase mode: PBKDF2-HMAC-SHA256 iteration count, salt |
//! | 12 + 48 | key-file mode: nonce, then the 32-byte content key sealed with AES-256-GCM-SIV under the user's key file (ciphertext and tag) |
//! | 1 | media type of the plaintext: 1 PNG, 2 JPEG, 3 WebP, 4 GIF |
//! | 12 | nonce of the image ciphertext |
//! | rest | AES-256-GCM-SIV ciphertext of the image, ending in its 16-byte tag |
//!
//! The associated data of the image ciphertext is the whole header followed by the user id,
//! so a changed header byte or a blob copied to another user fails to decrypt.

use serde::{Deserialize, Serialize};

/// First bytes of every envelope.
pub const MAGIC: [u8; 6] = *b"MRDIMG";
/// The only format version this release reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Length of an AES-256-GCM-SIV nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-256-GCM-SIV authentication tag.
pub const TAG_LEN: usize = 16;
/// Length of the PBKDF2 salt in passphrase mode.
pub const SALT_LEN: usize = 16;
/// Length of the wrapped content key in key-file mode: 32 key bytes and a tag.
pub const WRAPPED_KEY_LEN: usize = 32 + TAG_LEN;
/// Minimum PBKDF2 iteration count accepted in an envelope.
pub const MIN_PBKDF2_ITERATIONS: u32 = 100_000;
/// Maximum PBKDF2 iteration count accepted in an envelope, so that a forged header cannot
/// make a client derive a key for hours.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
/// Maximum size of a whole envelope, header included.
pub const MAX_ENVELOPE_BYTES: usize = 2 * 1024 * 1024;
/// Media type of an envelope in HTTP requests and responses.
pub const ENVELOPE_CONTENT_TYPE: &str = "application/vnd.meridian.encrypted-image";

/// Bytes before the key parameters: magic, version and key mode.
const PREFIX_LEN: usize = MAGIC.len() + 2;

/// Media type of the image inside an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MediaType {
    #[serde(rename = "image/png")]
    Png,
    #[serde(rename = "image/jpeg")]
    Jpeg,
    #[serde(rename = "image/webp")]
    Webp,
    #[serde(rename = "image/gif")]
    Gif,
}

impl MediaType {
    pub const ALL: [MediaType; 4] = [Self::Png, Self::Jpeg, Self::Webp, Self::Gif];

    /// Returns the envelope's code of this media type.
    pub fn code(self) -> u8 {
        match self {
            Self::Png => 1,
            Self::Jpeg => 2,
            Self::Webp => 3,
            Self::Gif => 4,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|media_type| media_type.code() == code)
    }

    /// Returns the IANA media type, such as `image/png`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
            Self::Gif => "image/gif",
        }
    }
}

/// The source of an envelope's content key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyMode {
    /// PBKDF2-HMAC-SHA256 of a passphrase.
    #[serde(rename = "passphrase")]
    Passphrase,
    /// A random content key, wrapped under a 32-byte key file of the user.
    #[serde(rename = "key-file")]
    KeyFile,
}

impl KeyMode {
    /// Returns the envelope's code of this key mode.
    pub fn code(self) -> u8 {
        match self {
            Self::Passphrase => 1,
            Self::KeyFile => 2,
        }
    }

    pub fn from_code(code: u8) -> Option<Self> {
        [Self::Passphrase, Self::KeyFile]
            .into_iter()
            .find(|mode| mode.code() == code)
    }

    /// Returns the name used in events and API responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passphrase => "passphrase",
            Self::KeyFile => "key-file",
        }
    }
}

/// The key parameters of an envelope, which depend on its key mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyParams {
    Passphrase {
        iterations: u32,
        salt: [u8; SALT_LEN],
    },
    KeyFile {
        nonce: [u8; NONCE_LEN],
        wrapped_key: [u8; WRAPPED_KEY_LEN],
    },
}

impl KeyParams {
    pub fn mode(&self) -> KeyMode {
        match self {
            Self::Passphrase { .. } => KeyMode::Passphrase,
            Self::KeyFile { .. } => KeyMode::KeyFile,
        }
    }
}

/// The header of an envelope: everything before the image ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub key: KeyParams,
    pub media_type: MediaType,
    /// Nonce of the image ciphertext.
    pub nonce: [u8; NONCE_LEN],
}

/// A rejected envelope: which header field is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("is {length} bytes, shorter than its {minimum}-byte header and authentication tag")]
    TooShort { length: usize, minimum: usize },
    #[error("must start with the magic bytes MRDIMG")]
    Magic,
    #[error("is {0}, but only format version {FORMAT_VERSION} is supported")]
    Version(u8),
    #[error("is {0}; expected 1 (passphrase) or 2 (key file)")]
    KeyMode(u8),
    #[error(
        "is {0}; PBKDF2 iterations must be {MIN_PBKDF2_ITERATIONS} to {MAX_PBKDF2_ITERATIONS}"
    )]
    Iterations(u32),
    #[error("is {0}; expected 1 (PNG), 2 (JPEG), 3 (WebP) or 4 (GIF)")]
    MediaType(u8),
}

impl EnvelopeError {
    /// Returns the name of the rejected header field, or `length` for a truncated envelope.
    pub fn field(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "length",
            Self::Magic => "magic",
            Self::Version(_) => "version",
            Self::KeyMode(_) => "key_mode",
            Self::Iterations(_) => "iterations",
            Self::MediaType(_) => "media_type",
        }
    }
}

impl EnvelopeHeader {
    /// Parses the header at the start of `envelope` and checks that the envelope is long
    /// enough to hold it and an authentication tag. The error names the first wrong field.
    pub fn parse(envelope: &[u8]) -> Result<Self, EnvelopeError> {
        let too_short = |minimum: usize| EnvelopeError::TooShort {
            length: envelope.len(),
            minimum,
        };
        let magic_len = MAGIC.len().min(envelope.len());
        if envelope[..magic_len] != MAGIC[..magic_len] {
            return Err(EnvelopeError::Magic);
        }
        let Some([version, mode]) = take_at::<2>(envelope, MAGIC.len()) else {
            return Err(too_short(minimum_len(KeyMode::Passphrase)));
        };
        if version != FORMAT_VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let mode = KeyMode::from_code(mode).ok_or(EnvelopeError::KeyMode(mode))?;
        let minimum = minimum_len(mode);
        if envelope.len() < minimum {
            return Err(too_short(minimum));
        }

        let params = &envelope[PREFIX_LEN..];
        let key = match mode {
            KeyMode::Passphrase => {
                let (iterations, salt) = take_at::<4>(params, 0)
                    .zip(take_at::<SALT_LEN>(params, 4))
                    .ok_or_else(|| too_short(minimum))?;
                let iterations = u32::from_be_bytes(iterations);
                if !(MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
                    return Err(EnvelopeError::Iterations(iterations));
                }
                KeyParams::Passphrase { iterations, salt }
            }
            KeyMode::KeyFile => {
                let (nonce, wrapped_key) = take_at::<NONCE_LEN>(params, 0)
                    .zip(take_at::<WRAPPED_KEY_LEN>(params, NONCE_LEN))
                    .ok_or_else(|| too_short(minimum))?;
                KeyParams::KeyFile { nonce, wrapped_key }
            }
        };

        let offset = PREFIX_LEN + params_len(mode);
        let (code, nonce) = take_at::<1>(envelope, offset)
            .zip(take_at::<NONCE_LEN>(envelope, offset + 1))
            .ok_or_else(|| too_short(minimum))?;
        let media_type = MediaType::from_code(code[0]).ok_or(EnvelopeError::MediaType(code[0]))?;
        Ok(Self {
            key,
            media_type,
            nonce,
        })
    }

    /// Returns the length of the encoded header.
    pub fn encoded_len(&self) -> usize {
        header_len(self.key.mode())
    }

    /// Encodes the header in the layout of this module.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(FORMAT_VERSION);
        bytes.push(self.key.mode().code());
        match &self.key {
            KeyParams::Passphrase { iterations, salt } => {
                bytes.extend_from_slice(&iterations.to_be_bytes());
                bytes.extend_from_slice(salt);
            }
            KeyParams::KeyFile { nonce, wrapped_key } => {
                bytes.extend_from_slice(nonce);
                bytes.extend_from_slice(wrapped_key);
            }
        }
        bytes.push(self.media_type.code());
        bytes.extend_from_slice(&self.nonce);
        bytes
    }
}

/// Returns the length of the key parameters of `mode`.
fn params_len(mode: KeyMode) -> usize {
    match mode {
        KeyMode::Passphrase => 4 + SALT_LEN,
        KeyMode::KeyFile => NONCE_LEN + WRAPPED_KEY_LEN,
    }
}

/// Returns the length of the header of an envelope in `mode`: 41 bytes for a passphrase,
/// 81 for a key file.
pub fn header_len(mode: KeyMode) -> usize {
    PREFIX_LEN + params_len(mode) + 1 + NONCE_LEN
}

/// Returns the length of the shortest envelope of `mode`: its header and a tag.
fn minimum_len(mode: KeyMode) -> usize {
    header_len(mode) + TAG_LEN
}

/// Returns the `N` bytes of `bytes` from `offset` on, or `None` when it is shorter.
fn take_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes
        .get(offset..offset.checked_add(N)?)
        .and_then(|slice| slice.try_into().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passphrase_header() -> EnvelopeHeader {
        EnvelopeHeader {
            key: KeyParams::Passphrase {
                iterations: 600_000,
                salt: [7; SALT_LEN],
            },
            media_type: MediaType::Png,
            nonce: [9; NONCE_LEN],
        }
    }

    fn key_file_header() -> EnvelopeHeader {
        EnvelopeHeader {
            key: KeyParams::KeyFile {
                nonce: [3; NONCE_LEN],
                wrapped_key: [4; WRAPPED_KEY_LEN],
            },
            media_type: MediaType::Webp,
            nonce: [5; NONCE_LEN],
        }
    }

    /// Returns `header` followed by a tag's worth of ciphertext.
    fn envelope(header: &EnvelopeHeader) -> Vec<u8> {
        let mut bytes = header.to_bytes();
        bytes.extend_from_slice(&[0xAB; TAG_LEN]);
        bytes
    }

    #[test]
    fn passphrase_header_round_trips() {
        let header = passphrase_header();
        assert_eq!(header.to_bytes().len(), 41);
        assert_eq!(EnvelopeHeader::parse(&envelope(&header)), Ok(header));
    }

    #[test]
    fn key_file_header_round_trips() {
        let header = key_file_header();
        assert_eq!(header.to_bytes().len(), 81);
        assert_eq!(EnvelopeHeader::parse(&envelope(&header)), Ok(header));
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut bytes = envelope(&passphrase_header());
        bytes[0] = b'X';
        assert_eq!(EnvelopeHeader::parse(&bytes), Err(EnvelopeError::Magic));
    }

    #[test]
    fn png_file_is_rejected_by_magic() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(EnvelopeHeader::parse(png), Err(EnvelopeError::Magic));
    }

    #[test]
    fn version_2_is_rejected() {
        let mut bytes = envelope(&passphrase_header());
        bytes[6] = 2;
        assert_eq!(
            EnvelopeHeader::parse(&bytes),
            Err(EnvelopeError::Version(2))
        );
    }

    #[test]
    fn unknown_key_mode_is_rejected() {
        let mut bytes = envelope(&passphrase_header());
        bytes[7] = 3;
        assert_eq!(
            EnvelopeHeader::parse(&bytes),
            Err(EnvelopeError::KeyMode(3))
        );
    }

    #[test]
    fn iterations_below_minimum_are_rejected() {
        let header = EnvelopeHeader {
            key: KeyParams::Passphrase {
                iterations: MIN_PBKDF2_ITERATIONS - 1,
                salt: [7; SALT_LEN],
            },
            ..passphrase_header()
        };
        let error = EnvelopeHeader::parse(&envelope(&header)).unwrap_err();
        assert_eq!(error, EnvelopeError::Iterations(99_999));
        assert_eq!(error.field(), "iterations");
    }

    #[test]
    fn iterations_at_minimum_are_accepted() {
        let header = EnvelopeHeader {
            key: KeyParams::Passphrase {
                iterations: MIN_PBKDF2_ITERATIONS,
                salt: [7; SALT_LEN],
            },
            ..passphrase_header()
        };
        assert!(EnvelopeHeader::parse(&envelope(&header)).is_ok());
    }

    #[test]
    fn iterations_above_maximum_are_rejected() {
        let header = EnvelopeHeader {
            key: KeyParams::Passphrase {
                iterations: u32::MAX,
                salt: [7; SALT_LEN],
            },
            ..passphrase_header()
        };
        let error = EnvelopeHeader::parse(&envelope(&header)).unwrap_err();
        assert_eq!(error, EnvelopeError::Iterations(u32::MAX));
    }

    #[test]
    fn unknown_media_type_is_rejected() {
        let mut bytes = envelope(&key_file_header());
        bytes[68] = 5;
        assert_eq!(
            EnvelopeHeader::parse(&bytes),
            Err(EnvelopeError::MediaType(5))
        );
    }

    #[test]
    fn envelope_without_tag_is_too_short() {
        let bytes = passphrase_header().to_bytes();
        let error = EnvelopeHeader::parse(&bytes).unwrap_err();
        assert_eq!(
            error,
            EnvelopeError::TooShort {
                length: 41,
                minimum: 57
            }
        );
        assert_eq!(error.field(), "length");
    }

    #[test]
    fn every_truncation_is_rejected() {
        for header in [passphrase_header(), key_file_header()] {
            let bytes = envelope(&header);
            for length in 0..bytes.len() {
                let result = EnvelopeHeader::parse(&bytes[..length]);
                assert!(
                    matches!(result, Err(EnvelopeError::TooShort { .. })),
                    "length {length}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn media_types_round_trip_through_codes() {
        for media_type in MediaType::ALL {
            assert_eq!(MediaType::from_code(media_type.code()), Some(media_type));
        }
        assert_eq!(MediaType::from_code(0), None);
    }

    #[test]
    fn media_type_serializes_as_iana_name() {
        let json = serde_json::to_value(MediaType::Jpeg).unwrap();
        assert_eq!(json, "image/jpeg");
    }

    #[test]
    fn key_mode_serializes_as_name() {
        let json = serde_json::to_value(KeyMode::KeyFile).unwrap();
        assert_eq!(json, KeyMode::KeyFile.as_str());
    }
}
