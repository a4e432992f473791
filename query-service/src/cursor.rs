//! The opaque keyset cursor of the location history: the `(recorded_at, sequence)` key of
//! the last item of a page, so the next page starts strictly after it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};

/// Prefix of the encoded key, so that a later format can be distinguished.
const VERSION: &str = "v1";

/// Position after which the next page of location history starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub recorded_at: DateTime<Utc>,
    pub sequence: i64,
}

impl Cursor {
    /// Encodes the cursor as URL-safe base64 of `v1:<recorded_at in µs>:<sequence>`.
    /// Microseconds are PostgreSQL's `timestamptz` precision, so the key is exact.
    pub fn encode(&self) -> String {
        let key = format!(
            "{VERSION}:{}:{}",
            self.recorded_at.timestamp_micros(),
            self.sequence
        );
        URL_SAFE_NO_PAD.encode(key)
    }

    /// Decodes a cursor made by [`Cursor::encode`]; returns `None` for anything else.
    pub fn decode(raw: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let key = String::from_utf8(bytes).ok()?;
        let mut parts = key.split(':');
        if parts.next()? != VERSION {
            return None;
        }
        let micros: i64 = parts.next()?.parse().ok()?;
        let sequence: i64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || sequence < 0 {
            return None;
        }
        let recorded_at = DateTime::from_timestamp_micros(micros)?;
        Some(Self {
            recorded_at,
            sequence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let cursor = Cursor {
            recorded_at: DateTime::from_timestamp_micros(1_593_475_200_123_456).unwrap(),
            sequence: 42,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
    }

    #[test]
    fn cursor_rejects_garbage() {
        assert_eq!(Cursor::decode("not a cursor"), None);
    }

    #[test]
    fn cursor_rejects_other_version() {
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("v2:0:1")), None);
    }

    #[test]
    fn cursor_rejects_trailing_parts() {
        assert_eq!(Cursor::decode(&URL_SAFE_NO_PAD.encode("v1:0:1:2")), None);
    }
}
