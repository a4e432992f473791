//! Sealing an image into an envelope and opening it again. The layout is defined in
//! `meridian_domain::profile::envelope`, which the command service uses to check headers.
//!
//! - Passphrase mode: the content key is PBKDF2-HMAC-SHA256 of the passphrase with a random
//!   16-byte salt.
//! - Key-file mode: the content key is 32 random bytes, sealed with AES-256-GCM-SIV under the
//!   user key. The associated data of that seal is the envelope's first 8 bytes (magic,
//!   version, key mode) followed by the user id.
//!
//! The image is sealed with AES-256-GCM-SIV under the content key. Its associated data is the
//! whole header followed by the user id, so a changed header byte or a blob moved to another
//! user fails to open.

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use hmac::Hmac;
use meridian_domain::profile::envelope::{
    header_len, EnvelopeError, EnvelopeHeader, KeyMode, KeyParams, MediaType, FORMAT_VERSION,
    MAGIC, MAX_ENVELOPE_BYTES, MAX_PBKDF2_ITERATIONS, MIN_PBKDF2_ITERATIONS, NONCE_LEN, SALT_LEN,
    TAG_LEN, WRAPPED_KEY_LEN,
};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::media;
use crate::secret::{Secret, MIN_PASSPHRASE_CHARS};

/// PBKDF2 iteration count of new passphrase envelopes: the minimum that the OWASP Password
/// Storage Cheat Sheet recommends for PBKDF2-HMAC-SHA256 since May 2023.
pub const DEFAULT_PBKDF2_ITERATIONS: u32 = 600_000;

/// Length of a content key: AES-256.
const CONTENT_KEY_LEN: usize = 32;

/// A reason an image cannot be sealed or an envelope cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeFailure {
    #[error("the file is not a PNG, JPEG, WebP or GIF image")]
    NotAnImage,
    #[error("the image is {length} bytes; at most {maximum} bytes fit in a 2 MiB envelope")]
    TooLarge { length: usize, maximum: usize },
    #[error(
        "PBKDF2 iterations must be {MIN_PBKDF2_ITERATIONS} to {MAX_PBKDF2_ITERATIONS}, got {0}"
    )]
    Iterations(u32),
    #[error("the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")]
    ShortPassphrase,
    #[error("invalid envelope: {} {}", .0.field(), .0)]
    Envelope(#[from] EnvelopeError),
    #[error("encryption failed")]
    Encrypt,
    #[error("the envelope was sealed with a {envelope}, but a {provided} was provided")]
    WrongSecretKind {
        envelope: &'static str,
        provided: &'static str,
    },
    #[error(
        "decryption failed: wrong passphrase or key file, another user's image, or a changed envelope"
    )]
    Decrypt,
    #[error("the decrypted image is not the {declared} that the envelope declares")]
    MediaTypeMismatch { declared: &'static str },
}

/// A decrypted image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedImage {
    pub media_type: MediaType,
    pub bytes: Vec<u8>,
}

/// Seals `image` for `user_id`. `iterations` applies to passphrase mode only.
pub fn seal(
    image: &[u8],
    user_id: Uuid,
    secret: &Secret,
    iterations: u32,
) -> Result<Vec<u8>, EnvelopeFailure> {
    let media_type = media::sniff(image).ok_or(EnvelopeFailure::NotAnImage)?;
    let maximum = MAX_ENVELOPE_BYTES - header_len(secret_mode(secret)) - TAG_LEN;
    if image.len() > maximum {
        return Err(EnvelopeFailure::TooLarge {
            length: image.len(),
            maximum,
        });
    }

    let (key, content_key) = match secret {
        Secret::Passphrase(passphrase) => {
            if passphrase.chars().count() < MIN_PASSPHRASE_CHARS {
                return Err(EnvelopeFailure::ShortPassphrase);
            }
            if !(MIN_PBKDF2_ITERATIONS..=MAX_PBKDF2_ITERATIONS).contains(&iterations) {
                return Err(EnvelopeFailure::Iterations(iterations));
            }
            let salt = random_bytes::<SALT_LEN>();
            let content_key = derive_key(passphrase.as_bytes(), &salt, iterations);
            (KeyParams::Passphrase { iterations, salt }, content_key)
        }
        Secret::KeyFile(user_key) => {
            let content_key = Zeroizing::new(random_bytes::<CONTENT_KEY_LEN>());
            let nonce = random_bytes::<NONCE_LEN>();
            let wrapped_key = wrap_key(user_key, &content_key, &nonce, user_id)?;
            (KeyParams::KeyFile { nonce, wrapped_key }, content_key)
        }
    };
    let header = EnvelopeHeader {
        key,
        media_type,
        nonce: random_bytes::<NONCE_LEN>(),
    };
    let mut envelope = header.to_bytes();
    let ciphertext = cipher(&content_key)
        .encrypt(
            &Nonce::from(header.nonce),
            Payload {
                msg: image,
                aad: &associated_data(&envelope, user_id),
            },
        )
        .map_err(|_| EnvelopeFailure::Encrypt)?;
    envelope.extend_from_slice(&ciphertext);
    Ok(envelope)
}

/// Opens an envelope of `user_id` and checks that the plaintext is an image of the media
/// type that the header declares.
pub fn open(
    envelope: &[u8],
    user_id: Uuid,
    secret: &Secret,
) -> Result<OpenedImage, EnvelopeFailure> {
    let header = EnvelopeHeader::parse(envelope)?;
    let (header_bytes, ciphertext) = envelope.split_at(header.encoded_len());
    let content_key = match (&header.key, secret) {
        (KeyParams::Passphrase { iterations, salt }, Secret::Passphrase(passphrase)) => {
            derive_key(passphrase.as_bytes(), salt, *iterations)
        }
        (KeyParams::KeyFile { nonce, wrapped_key }, Secret::KeyFile(user_key)) => {
            unwrap_key(user_key, wrapped_key, nonce, user_id)?
        }
        (params, _) => {
            return Err(EnvelopeFailure::WrongSecretKind {
                envelope: secret_kind(params.mode()),
                provided: secret_kind(secret_mode(secret)),
            })
        }
    };

    let bytes = cipher(&content_key)
        .decrypt(
            &Nonce::from(header.nonce),
            Payload {
                msg: ciphertext,
                aad: &associated_data(header_bytes, user_id),
            },
        )
        .map_err(|_| EnvelopeFailure::Decrypt)?;
    if media::sniff(&bytes) != Some(header.media_type) {
        return Err(EnvelopeFailure::MediaTypeMismatch {
            declared: header.media_type.as_str(),
        });
    }
    Ok(OpenedImage {
        media_type: header.media_type,
        bytes,
    })
}

/// Returns the header bytes followed by the user id in its hyphenated lower-case form, the
/// form the command service uses as the aggregate id.
fn associated_data(header: &[u8], user_id: Uuid) -> Vec<u8> {
    let mut data = header.to_vec();
    data.extend_from_slice(user_id.hyphenated().to_string().as_bytes());
    data
}

/// Returns the associated data of a wrapped content key: magic, version, key mode and user id.
fn wrap_associated_data(user_id: Uuid) -> Vec<u8> {
    let mut prefix = MAGIC.to_vec();
    prefix.extend_from_slice(&[FORMAT_VERSION, KeyMode::KeyFile.code()]);
    associated_data(&prefix, user_id)
}

fn wrap_key(
    user_key: &[u8; 32],
    content_key: &[u8; CONTENT_KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    user_id: Uuid,
) -> Result<[u8; WRAPPED_KEY_LEN], EnvelopeFailure> {
    let wrapped = cipher(user_key)
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: content_key,
                aad: &wrap_associated_data(user_id),
            },
        )
        .map_err(|_| EnvelopeFailure::Encrypt)?;
    wrapped.try_into().map_err(|_| EnvelopeFailure::Encrypt)
}

fn unwrap_key(
    user_key: &[u8; 32],
    wrapped_key: &[u8; WRAPPED_KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    user_id: Uuid,
) -> Result<Zeroizing<[u8; CONTENT_KEY_LEN]>, EnvelopeFailure> {
    let content_key = Zeroizing::new(
        cipher(user_key)
            .decrypt(
                &Nonce::from(*nonce),
                Payload {
                    msg: wrapped_key,
                    aad: &wrap_associated_data(user_id),
                },
            )
            .map_err(|_| EnvelopeFailure::Decrypt)?,
    );
    if content_key.len() != CONTENT_KEY_LEN {
        return Err(EnvelopeFailure::Decrypt);
    }
    let mut key = Zeroizing::new([0u8; CONTENT_KEY_LEN]);
    key.copy_from_slice(&content_key);
    Ok(key)
}

fn derive_key(
    passphrase: &[u8],
    salt: &[u8; SALT_LEN],
    iterations: u32,
) -> Zeroizing<[u8; CONTENT_KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; CONTENT_KEY_LEN]);
    pbkdf2::pbkdf2::<Hmac<Sha256>>(passphrase, salt, iterations, key.as_mut())
        .expect("HMAC accepts a key of any length");
    key
}

fn cipher(key: &[u8; 32]) -> Aes256GcmSiv {
    Aes256GcmSiv::new_from_slice(key).expect("the key is 32 bytes")
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn secret_mode(secret: &Secret) -> KeyMode {
    match secret {
        Secret::Passphrase(_) => KeyMode::Passphrase,
        Secret::KeyFile(_) => KeyMode::KeyFile,
    }
}

fn secret_kind(mode: KeyMode) -> &'static str {
    match mode {
        KeyMode::Passphrase => "passphrase",
        KeyMode::KeyFile => "key file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x2 RGB PNG: red, blue; red, blue.
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\
        \x00\x00\x00\x0dIHDR\x00\x00\x00\x02\x00\x00\x00\x02\x08\x02\x00\x00\x00\xfd\xd4\x9a\x73\
        \x00\x00\x00\x12IDAT\x78\xda\x63\xf8\xcf\xc0\xc0\xd0\xf0\x9f\x01\x42\x01\x00\x21\x72\x04\xfd\
        \xa9\x27\x74\x8b\
        \x00\x00\x00\x00IEND\xae\x42\x60\x82";

    /// The minimum, so that the tests' many key derivations stay fast in debug builds.
    const ITERATIONS: u32 = MIN_PBKDF2_ITERATIONS;

    fn user() -> Uuid {
        Uuid::parse_str("0b5cbd6e-4c3e-4a43-9d1e-2f6b0e1f4a7c").unwrap()
    }

    fn passphrase(text: &str) -> Secret {
        Secret::Passphrase(Zeroizing::new(text.to_owned()))
    }

    fn user_key(byte: u8) -> Secret {
        Secret::KeyFile(Zeroizing::new([byte; 32]))
    }

    #[test]
    fn passphrase_envelope_round_trips() {
        let secret = passphrase("correct horse battery");
        let sealed = seal(PNG, user(), &secret, ITERATIONS).unwrap();

        let opened = open(&sealed, user(), &secret).unwrap();

        assert_eq!(opened.bytes, PNG);
        assert_eq!(opened.media_type, MediaType::Png);
        assert_eq!(sealed.len(), 41 + PNG.len() + TAG_LEN);
    }

    #[test]
    fn key_file_envelope_round_trips() {
        let secret = user_key(7);
        let sealed = seal(PNG, user(), &secret, ITERATIONS).unwrap();

        let opened = open(&sealed, user(), &secret).unwrap();

        assert_eq!(opened.bytes, PNG);
        assert_eq!(sealed.len(), 81 + PNG.len() + TAG_LEN);
    }

    #[test]
    fn sealing_twice_gives_different_envelopes() {
        let secret = user_key(7);
        let first = seal(PNG, user(), &secret, ITERATIONS).unwrap();
        let second = seal(PNG, user(), &secret, ITERATIONS).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn envelope_does_not_contain_the_plaintext() {
        let sealed = seal(PNG, user(), &user_key(7), ITERATIONS).unwrap();
        let found = sealed
            .windows(8)
            .any(|window| PNG.windows(8).any(|part| part == window));
        assert!(!found);
    }

    #[test]
    fn wrong_passphrase_fails() {
        let sealed = seal(
            PNG,
            user(),
            &passphrase("correct horse battery"),
            ITERATIONS,
        )
        .unwrap();
        let result = open(&sealed, user(), &passphrase("correct horse battery!"));
        assert!(
            matches!(result, Err(EnvelopeFailure::Decrypt)),
            "{result:?}"
        );
    }

    #[test]
    fn wrong_key_file_fails() {
        let sealed = seal(PNG, user(), &user_key(7), ITERATIONS).unwrap();
        let result = open(&sealed, user(), &user_key(8));
        assert!(
            matches!(result, Err(EnvelopeFailure::Decrypt)),
            "{result:?}"
        );
    }

    #[test]
    fn key_file_for_passphrase_envelope_fails() {
        let sealed = seal(
            PNG,
            user(),
            &passphrase("correct horse battery"),
            ITERATIONS,
        )
        .unwrap();
        let result = open(&sealed, user(), &user_key(7));
        assert!(
            matches!(result, Err(EnvelopeFailure::WrongSecretKind { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn other_user_id_fails_in_both_modes() {
        let other = Uuid::parse_str("8f0c1f0e-3d4b-4a51-9a43-2b5f0f9e4c11").unwrap();
        for secret in [passphrase("correct horse battery"), user_key(7)] {
            let sealed = seal(PNG, user(), &secret, ITERATIONS).unwrap();
            let result = open(&sealed, other, &secret);
            assert!(
                matches!(result, Err(EnvelopeFailure::Decrypt)),
                "{result:?}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_fails_in_key_file_mode() {
        let secret = user_key(7);
        let sealed = seal(PNG, user(), &secret, ITERATIONS).unwrap();
        for index in 0..sealed.len() {
            for bit in 0..8 {
                let mut changed = sealed.clone();
                changed[index] ^= 1 << bit;
                let result = open(&changed, user(), &secret);
                assert!(result.is_err(), "byte {index} bit {bit} still opens");
            }
        }
    }

    /// Every position would take minutes in a debug build, because most flips cost a key
    /// derivation. Key-file mode covers every position; this covers each passphrase field.
    #[test]
    fn flipped_byte_in_each_field_fails_in_passphrase_mode() {
        let secret = passphrase("correct horse battery");
        let sealed = seal(PNG, user(), &secret, ITERATIONS).unwrap();
        let last = sealed.len() - 1;
        let positions = [
            ("magic", 0),
            ("version", 6),
            ("key mode", 7),
            ("iterations, high byte", 8),
            ("iterations, low byte", 11),
            ("salt, first byte", 12),
            ("salt, last byte", 27),
            ("media type", 28),
            ("nonce", 29),
            ("ciphertext", 41),
            ("tag", last),
        ];
        for (field, index) in positions {
            let mut changed = sealed.clone();
            changed[index] ^= 0x01;
            let result = open(&changed, user(), &secret);
            assert!(result.is_err(), "{field} (byte {index}) still opens");
        }
    }

    #[test]
    fn truncated_envelope_fails() {
        let secret = user_key(7);
        let sealed = seal(PNG, user(), &secret, ITERATIONS).unwrap();
        let result = open(&sealed[..sealed.len() - 1], user(), &secret);
        assert!(result.is_err());
    }

    #[test]
    fn non_image_is_not_sealed() {
        let result = seal(b"%PDF-1.7 not an image", user(), &user_key(7), ITERATIONS);
        assert!(
            matches!(result, Err(EnvelopeFailure::NotAnImage)),
            "{result:?}"
        );
    }

    #[test]
    fn non_image_plaintext_is_not_returned() {
        // Seal text under a header that declares a PNG, as a faulty client could.
        let content_key = [9u8; CONTENT_KEY_LEN];
        let secret = user_key(7);
        let Secret::KeyFile(key) = &secret else {
            unreachable!()
        };
        let nonce = [2u8; NONCE_LEN];
        let header = EnvelopeHeader {
            key: KeyParams::KeyFile {
                nonce,
                wrapped_key: wrap_key(key, &content_key, &nonce, user()).unwrap(),
            },
            media_type: MediaType::Png,
            nonce: [3u8; NONCE_LEN],
        };
        let mut sealed = header.to_bytes();
        let ciphertext = cipher(&content_key)
            .encrypt(
                &Nonce::from(header.nonce),
                Payload {
                    msg: b"plain text, not a PNG".as_slice(),
                    aad: &associated_data(&sealed, user()),
                },
            )
            .unwrap();
        sealed.extend_from_slice(&ciphertext);

        let result = open(&sealed, user(), &secret);

        assert!(
            matches!(
                result,
                Err(EnvelopeFailure::MediaTypeMismatch {
                    declared: "image/png"
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn image_too_large_for_an_envelope_is_rejected() {
        let mut large = PNG.to_vec();
        large.resize(MAX_ENVELOPE_BYTES, 0);
        let result = seal(&large, user(), &user_key(7), ITERATIONS);
        assert!(
            matches!(result, Err(EnvelopeFailure::TooLarge { maximum, .. }) if maximum == MAX_ENVELOPE_BYTES - 81 - TAG_LEN),
            "{result:?}"
        );
    }

    #[test]
    fn largest_image_fits_in_an_envelope() {
        let mut largest = PNG.to_vec();
        largest.resize(MAX_ENVELOPE_BYTES - 81 - TAG_LEN, 0);
        let sealed = seal(&largest, user(), &user_key(7), ITERATIONS).unwrap();
        assert_eq!(sealed.len(), MAX_ENVELOPE_BYTES);
    }

    #[test]
    fn iterations_below_minimum_are_rejected() {
        let secret = passphrase("correct horse battery");
        let result = seal(PNG, user(), &secret, MIN_PBKDF2_ITERATIONS - 1);
        assert!(
            matches!(result, Err(EnvelopeFailure::Iterations(99_999))),
            "{result:?}"
        );
    }

    #[test]
    fn short_passphrase_is_rejected() {
        let result = seal(PNG, user(), &passphrase("seven!!"), ITERATIONS);
        assert!(
            matches!(result, Err(EnvelopeFailure::ShortPassphrase)),
            "{result:?}"
        );
    }
}
