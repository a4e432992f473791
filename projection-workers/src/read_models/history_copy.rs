//! `rm_location_history` rows in PostgreSQL's binary `COPY` format: a signature and header,
//! then per row a field count and each field as a 4-byte length and its binary value, then
//! a trailer of -1. Integers and floats are big-endian, a `uuid` is its 16 bytes, and a
//! `timestamptz` is microseconds since 2000-01-01 00:00 UTC.

use chrono::{DateTime, Utc};

use super::fold::HistoryRow;

/// The statement that [`HistoryCopy`] data feeds; its column list fixes the field order.
pub const COPY_HISTORY: &str = "COPY rm_location_history (event_id, user_id, sequence, latitude, longitude, recorded_at, position) FROM STDIN (FORMAT binary)";

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
const FIELDS: i16 = 7;
const TRAILER: i16 = -1;
/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01 00:00 UTC.
const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
/// Encoded size of one row: the field count, seven lengths, two UUIDs and five 8-byte values.
pub const ROW_BYTES: usize = 2 + 7 * 4 + 2 * 16 + 5 * 8;

/// Encodes the data stream of one `COPY`, chunk by chunk.
#[derive(Debug, Default)]
pub struct HistoryCopy {
    header_written: bool,
}

impl HistoryCopy {
    /// Encodes `rows` into a new chunk, preceded by the header when this is the first chunk.
    pub fn encode(&mut self, rows: &[HistoryRow]) -> Vec<u8> {
        let mut chunk = Vec::with_capacity(SIGNATURE.len() + 8 + rows.len() * ROW_BYTES);
        if !self.header_written {
            chunk.extend_from_slice(SIGNATURE);
            chunk.extend_from_slice(&0_i32.to_be_bytes());
            chunk.extend_from_slice(&0_i32.to_be_bytes());
            self.header_written = true;
        }
        for row in rows {
            encode_row(&mut chunk, row);
        }
        chunk
    }

    /// Returns the last chunk: the header if no chunk was encoded yet, then the trailer.
    pub fn finish(mut self) -> Vec<u8> {
        let mut chunk = self.encode(&[]);
        chunk.extend_from_slice(&TRAILER.to_be_bytes());
        chunk
    }
}

fn encode_row(buffer: &mut Vec<u8>, row: &HistoryRow) {
    buffer.extend_from_slice(&FIELDS.to_be_bytes());
    field(buffer, row.event_id.as_bytes());
    field(buffer, row.user_id.as_bytes());
    field(buffer, &row.sequence.to_be_bytes());
    field(buffer, &row.latitude.to_be_bytes());
    field(buffer, &row.longitude.to_be_bytes());
    field(buffer, &postgres_micros(row.recorded_at).to_be_bytes());
    field(buffer, &row.position.to_be_bytes());
}

fn field(buffer: &mut Vec<u8>, value: &[u8]) {
    // Every value here is 8 or 16 bytes long.
    let length = value.len() as i32;
    buffer.extend_from_slice(&length.to_be_bytes());
    buffer.extend_from_slice(value);
}

/// Microseconds since PostgreSQL's epoch, with sub-microsecond digits truncated towards
/// zero, as sqlx encodes a bound timestamp.
fn postgres_micros(time: DateTime<Utc>) -> i64 {
    let epoch = DateTime::from_timestamp(POSTGRES_EPOCH_UNIX_SECONDS, 0).unwrap_or_default();
    // chrono's range of about 262,000 years fits in i64 microseconds.
    (time - epoch).num_microseconds().unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn row() -> HistoryRow {
        HistoryRow {
            event_id: Uuid::from_u128(1),
            user_id: Uuid::from_u128(2),
            sequence: 3,
            latitude: 40.5,
            longitude: -74.25,
            recorded_at: DateTime::from_timestamp(POSTGRES_EPOCH_UNIX_SECONDS + 1, 0).unwrap(),
            position: 9,
        }
    }

    #[test]
    fn first_chunk_starts_with_header() {
        let mut copy = HistoryCopy::default();

        let first = copy.encode(&[row()]);
        let second = copy.encode(&[row()]);

        assert!(first.starts_with(SIGNATURE));
        assert_eq!(first.len(), SIGNATURE.len() + 8 + ROW_BYTES);
        assert_eq!(second.len(), ROW_BYTES);
    }

    #[test]
    fn timestamp_counts_from_postgres_epoch() {
        let mut copy = HistoryCopy::default();
        copy.encode(&[]);

        let chunk = copy.encode(&[row()]);

        // The timestamp is the sixth field: after the count, five lengths and four values.
        let offset = 2 + 5 * 4 + 16 + 16 + 8 + 8 + 8;
        let micros = i64::from_be_bytes(chunk[offset + 4..offset + 12].try_into().unwrap());
        assert_eq!(micros, 1_000_000);
    }

    #[test]
    fn finish_without_rows_writes_header_and_trailer() {
        let chunk = HistoryCopy::default().finish();

        assert!(chunk.starts_with(SIGNATURE));
        assert!(chunk.ends_with(&TRAILER.to_be_bytes()));
    }
}
