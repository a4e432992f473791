//! Reading AIS CSV files in MarineCadastre's format: header lookup, row validation and
//! grouping of the valid reports by vessel.
//!
//! Columns are found by name (case-insensitive, surrounding whitespace ignored), so any
//! column order and any extra columns work. Each invalid row is skipped with its line number
//! and reason; only an unreadable file or a header without a required column stops a parse.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::Read;

use chrono::{DateTime, DurationRound, NaiveDateTime, TimeDelta, Utc};
use csv::ByteRecord;
use meridian_domain::field::UserName;
use meridian_domain::location::{LocationReport, EARLIEST_RECORDED_AT, MAX_CLOCK_SKEW};
use sha2::{Digest, Sha256};

/// Header names of the columns every file must have.
pub const MMSI: &str = "MMSI";
pub const BASE_DATE_TIME: &str = "BaseDateTime";
pub const LAT: &str = "LAT";
pub const LON: &str = "LON";
/// Header name of the optional vessel name column.
pub const VESSEL_NAME: &str = "VesselName";

/// Positions of the columns the importer reads, found in the header row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub mmsi: usize,
    pub base_date_time: usize,
    pub latitude: usize,
    pub longitude: usize,
    pub vessel_name: Option<usize>,
    /// Number of fields in the header; every row must have as many.
    pub count: usize,
}

/// A header row the importer cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error(
        "the file is empty; expected a header row with columns MMSI, BaseDateTime, LAT and LON"
    )]
    Empty,
    #[error(
        "missing required column{} {}; the header has: {}",
        if missing.len() > 1 { "s" } else { "" },
        missing.join(", "),
        found.join(", ")
    )]
    MissingColumns {
        missing: Vec<&'static str>,
        found: Vec<String>,
    },
    #[error("column {column} appears twice in the header, as fields {first} and {second}")]
    DuplicateColumn {
        column: &'static str,
        first: usize,
        second: usize,
    },
}

impl Columns {
    /// Finds the columns by name in the header row.
    pub fn from_header(header: &ByteRecord) -> Result<Self, HeaderError> {
        let names: Vec<String> = header
            .iter()
            .map(|field| {
                String::from_utf8_lossy(field)
                    .trim()
                    .trim_start_matches('\u{feff}')
                    .trim()
                    .to_owned()
            })
            .collect();
        if names.iter().all(String::is_empty) {
            return Err(HeaderError::Empty);
        }

        let find = |column: &'static str| -> Result<Option<usize>, HeaderError> {
            let mut positions = names
                .iter()
                .enumerate()
                .filter(|(_, name)| name.eq_ignore_ascii_case(column))
                .map(|(position, _)| position);
            let first = positions.next();
            if let (Some(first), Some(second)) = (first, positions.next()) {
                return Err(HeaderError::DuplicateColumn {
                    column,
                    first: first + 1,
                    second: second + 1,
                });
            }
            Ok(first)
        };
        let mmsi = find(MMSI)?;
        let base_date_time = find(BASE_DATE_TIME)?;
        let latitude = find(LAT)?;
        let longitude = find(LON)?;
        let vessel_name = find(VESSEL_NAME)?;

        match (mmsi, base_date_time, latitude, longitude) {
            (Some(mmsi), Some(base_date_time), Some(latitude), Some(longitude)) => Ok(Self {
                mmsi,
                base_date_time,
                latitude,
                longitude,
                vessel_name,
                count: names.len(),
            }),
            _ => {
                let required = [
                    (MMSI, mmsi),
                    (BASE_DATE_TIME, base_date_time),
                    (LAT, latitude),
                    (LON, longitude),
                ];
                let missing = required
                    .iter()
                    .filter(|(_, position)| position.is_none())
                    .map(|(column, _)| *column)
                    .collect();
                Err(HeaderError::MissingColumns {
                    missing,
                    found: names,
                })
            }
        }
    }
}

/// Reason a row was skipped.
#[derive(Debug, Clone, PartialEq)]
pub enum SkipReason {
    /// The row has a different number of fields than the header.
    FieldCount { found: usize, expected: usize },
    /// A required field is empty.
    Empty { column: &'static str },
    /// A field is not valid UTF-8.
    NotUtf8 { column: &'static str },
    /// The MMSI is not a decimal number.
    InvalidMmsi { value: String },
    /// The timestamp matches none of the accepted forms.
    InvalidTime { value: String },
    /// The timestamp is more than [`MAX_CLOCK_SKEW`] after the start of the import.
    FutureTime {
        value: DateTime<Utc>,
        now: DateTime<Utc>,
    },
    /// The timestamp is before [`EARLIEST_RECORDED_AT`].
    EarlyTime { value: DateTime<Utc> },
    /// A coordinate is not a number.
    InvalidNumber { column: &'static str, value: String },
    /// A coordinate is NaN or infinite.
    NotFinite { column: &'static str, value: String },
    /// A coordinate lies outside its range.
    OutOfRange {
        column: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FieldCount { found, expected } => write!(
                formatter,
                "the row has {found} fields but the header has {expected}"
            ),
            Self::Empty { column } => write!(formatter, "{column} is empty"),
            Self::NotUtf8 { column } => write!(formatter, "{column} is not valid UTF-8"),
            Self::InvalidMmsi { value } => {
                write!(formatter, "MMSI {value:?} is not a decimal number")
            }
            Self::InvalidTime { value } => write!(
                formatter,
                "BaseDateTime {value:?} is not a timestamp like 2020-06-30T00:00:00"
            ),
            Self::FutureTime { value, now } => write!(
                formatter,
                "BaseDateTime {} is more than {} minutes after the start of the import ({})",
                value.to_rfc3339(),
                MAX_CLOCK_SKEW.num_minutes(),
                now.to_rfc3339()
            ),
            Self::EarlyTime { value } => write!(
                formatter,
                "BaseDateTime {} is before {}",
                value.to_rfc3339(),
                EARLIEST_RECORDED_AT.to_rfc3339()
            ),
            Self::InvalidNumber { column, value } => {
                write!(formatter, "{column} {value:?} is not a number")
            }
            Self::NotFinite { column, value } => {
                write!(formatter, "{column} {value:?} is not a finite number")
            }
            Self::OutOfRange {
                column,
                value,
                min,
                max,
            } => write!(formatter, "{column} {value} is outside [{min}, {max}]"),
        }
    }
}

/// A row that was not imported: its line in the file (the header is line 1) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRow {
    pub line: u64,
    pub reason: SkipReason,
}

impl fmt::Display for SkippedRow {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "line {}: row skipped: {}",
            self.line, self.reason
        )
    }
}

/// A valid row: one report of one vessel.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub mmsi: u64,
    /// The trimmed vessel name, when the file has the column and the field is not empty.
    pub vessel_name: Option<String>,
    pub report: LocationReport,
}

/// Parses a timestamp as MarineCadastre writes it (`2020-06-30T00:00:00`, also with a space
/// for the `T`), taken as UTC, or with a trailing `Z` or UTC offset. Fractions of a second
/// are truncated to microseconds, the precision PostgreSQL stores.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").map(|time| time.and_utc())
        })
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").map(|time| time.and_utc())
        })
        .ok()?;
    parsed.duration_trunc(TimeDelta::microseconds(1)).ok()
}

fn field<'a>(
    record: &'a ByteRecord,
    position: usize,
    column: &'static str,
) -> Result<&'a str, SkipReason> {
    let bytes = record.get(position).unwrap_or_default();
    let text = std::str::from_utf8(bytes).map_err(|_| SkipReason::NotUtf8 { column })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(SkipReason::Empty { column });
    }
    Ok(text)
}

fn coordinate(
    record: &ByteRecord,
    position: usize,
    column: &'static str,
    limit: f64,
) -> Result<f64, SkipReason> {
    let text = field(record, position, column)?;
    let value: f64 = text.parse().map_err(|_| SkipReason::InvalidNumber {
        column,
        value: text.to_owned(),
    })?;
    if !value.is_finite() {
        return Err(SkipReason::NotFinite {
            column,
            value: text.to_owned(),
        });
    }
    if !(-limit..=limit).contains(&value) {
        return Err(SkipReason::OutOfRange {
            column,
            value,
            min: -limit,
            max: limit,
        });
    }
    Ok(value)
}

/// Validates one data row. `now` is the start of the import, against which future
/// timestamps are judged.
pub fn parse_row(
    record: &ByteRecord,
    line: u64,
    columns: &Columns,
    now: DateTime<Utc>,
) -> Result<Row, SkipReason> {
    if record.len() != columns.count {
        return Err(SkipReason::FieldCount {
            found: record.len(),
            expected: columns.count,
        });
    }

    let mmsi_text = field(record, columns.mmsi, MMSI)?;
    if !mmsi_text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(SkipReason::InvalidMmsi {
            value: mmsi_text.to_owned(),
        });
    }
    let mmsi: u64 = mmsi_text.parse().map_err(|_| SkipReason::InvalidMmsi {
        value: mmsi_text.to_owned(),
    })?;

    let time_text = field(record, columns.base_date_time, BASE_DATE_TIME)?;
    let recorded_at = parse_timestamp(time_text).ok_or_else(|| SkipReason::InvalidTime {
        value: time_text.to_owned(),
    })?;
    if recorded_at < EARLIEST_RECORDED_AT {
        return Err(SkipReason::EarlyTime { value: recorded_at });
    }
    if recorded_at > now + MAX_CLOCK_SKEW {
        return Err(SkipReason::FutureTime {
            value: recorded_at,
            now,
        });
    }

    let latitude = coordinate(record, columns.latitude, LAT, 90.0)?;
    let longitude = coordinate(record, columns.longitude, LON, 180.0)?;

    // A name that is not valid UTF-8 is not a reason to drop the position.
    let vessel_name = columns
        .vessel_name
        .and_then(|position| record.get(position))
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
        .filter(|name| !name.is_empty());

    Ok(Row {
        line,
        mmsi,
        vessel_name,
        report: LocationReport {
            latitude,
            longitude,
            recorded_at,
        },
    })
}

/// The valid reports of one vessel, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Vessel {
    pub mmsi: u64,
    /// The first non-empty vessel name in the file that is a valid user name.
    pub vessel_name: Option<UserName>,
    pub reports: Vec<LocationReport>,
    /// Line of each report in the file, parallel to `reports`.
    pub lines: Vec<u64>,
}

impl Vessel {
    fn new(mmsi: u64) -> Self {
        Self {
            mmsi,
            vessel_name: None,
            reports: Vec::new(),
            lines: Vec::new(),
        }
    }

    fn push(&mut self, row: Row) {
        if self.vessel_name.is_none() {
            self.vessel_name = row
                .vessel_name
                .and_then(|name| UserName::parse("name", &name).ok());
        }
        self.reports.push(row.report);
        self.lines.push(row.line);
    }

    /// Returns the email address of the vessel's user.
    pub fn email(&self) -> String {
        format!("vessel-{}@ais.example", self.mmsi)
    }

    /// Returns the name of the vessel's user: the vessel name, or `MMSI <number>` without one.
    pub fn user_name(&self) -> String {
        match &self.vessel_name {
            Some(name) => name.as_str().to_owned(),
            None => format!("MMSI {}", self.mmsi),
        }
    }
}

/// Returns the indices among `indices` (in file order) whose report is not identical to an
/// earlier one among them. Meridian stores an identical report only once.
pub fn first_occurrences(
    reports: &[LocationReport],
    indices: impl IntoIterator<Item = usize>,
) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    indices
        .into_iter()
        .filter(|&index| {
            let report = &reports[index];
            seen.insert((
                report.recorded_at,
                report.latitude.to_bits(),
                report.longitude.to_bits(),
            ))
        })
        .collect()
}

/// Returns the index of the report Meridian shows as latest once the reports at `indices`
/// (in file order) are stored: the greatest timestamp, and on equal timestamps the later row.
/// A report identical to an earlier one is not stored again, so it cannot become the latest.
pub fn expected_latest(
    reports: &[LocationReport],
    indices: impl IntoIterator<Item = usize>,
) -> Option<usize> {
    first_occurrences(reports, indices)
        .into_iter()
        .reduce(|current, index| {
            if reports[index].recorded_at >= reports[current].recorded_at {
                index
            } else {
                current
            }
        })
}

/// The result of reading a whole file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedFile {
    /// Data rows read, valid or not; the header is not counted.
    pub rows_read: u64,
    pub skipped: Vec<SkippedRow>,
    /// Vessels in the order of their first valid row.
    pub vessels: Vec<Vessel>,
    /// SHA-256 of the file's bytes, in lowercase hex.
    pub sha256: String,
}

impl ParsedFile {
    /// Returns the number of valid rows.
    pub fn valid_rows(&self) -> u64 {
        self.vessels
            .iter()
            .map(|vessel| vessel.reports.len() as u64)
            .sum()
    }
}

/// A failure that stops a parse.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("failed to read line {line}: {source}")]
    Read { line: u64, source: csv::Error },
}

/// Hashes every byte that passes through, reports how many passed, and records where each
/// line's first byte of content is.
///
/// NOTE: The csv crate (1.4) reports wrong line numbers after a blank line and with CRLF
/// line endings (BurntSushi/rust-csv issues #208 and #395), so lines are counted here. Its byte
/// offsets are right: a record starts at the first content byte at or after its offset.
struct TrackingReader<R, F> {
    inner: R,
    hasher: Sha256,
    on_read: F,
    /// Bytes read so far.
    offset: u64,
    /// Line of the next byte, from 1. `\n`, `\r\n` and a lone `\r` each end a line, as
    /// they each end a record for the csv crate.
    line: u64,
    after_carriage_return: bool,
    /// Whether the current line has had no content byte yet.
    at_line_start: bool,
    /// Offset and line of the first content byte of each line not yet looked up.
    line_starts: VecDeque<(u64, u64)>,
}

impl<R, F> TrackingReader<R, F> {
    fn new(inner: R, on_read: F) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            on_read,
            offset: 0,
            line: 1,
            after_carriage_return: false,
            at_line_start: true,
            line_starts: VecDeque::new(),
        }
    }

    fn track(&mut self, bytes: &[u8]) {
        for (index, &byte) in bytes.iter().enumerate() {
            match byte {
                b'\r' => {
                    self.line += 1;
                    self.at_line_start = true;
                    self.after_carriage_return = true;
                }
                b'\n' => {
                    if !self.after_carriage_return {
                        self.line += 1;
                    }
                    self.at_line_start = true;
                    self.after_carriage_return = false;
                }
                _ => {
                    if self.at_line_start {
                        let offset = self.offset + index as u64;
                        self.line_starts.push_back((offset, self.line));
                        self.at_line_start = false;
                    }
                    self.after_carriage_return = false;
                }
            }
        }
        self.offset += bytes.len() as u64;
    }

    /// Returns the line of the record whose csv byte offset is `offset`. Offsets must be
    /// looked up in increasing order.
    fn line_at(&mut self, offset: u64) -> Option<u64> {
        while let Some(&(start, line)) = self.line_starts.front() {
            if start >= offset {
                return Some(line);
            }
            self.line_starts.pop_front();
        }
        None
    }
}

impl<R: Read, F: FnMut(usize)> Read for TrackingReader<R, F> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let count = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..count]);
        self.track(&buffer[..count]);
        (self.on_read)(count);
        Ok(count)
    }
}

/// Reads an AIS CSV from `input`. `on_skip` is called with each skipped row as it is found,
/// and `on_bytes` with the size of each chunk read, for progress display.
///
/// NOTE: Every valid report stays in memory until the import ends, about 40 bytes each, so a
/// file of 10 million rows needs about 400 MB.
pub fn parse<R: Read>(
    input: R,
    now: DateTime<Utc>,
    mut on_skip: impl FnMut(&SkippedRow),
    on_bytes: impl FnMut(usize),
) -> Result<ParsedFile, ParseError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(TrackingReader::new(input, on_bytes));

    let header = reader
        .byte_headers()
        .map_err(|source| ParseError::Read { line: 1, source })?
        .clone();
    if header.is_empty() {
        return Err(HeaderError::Empty.into());
    }
    let columns = Columns::from_header(&header)?;

    let mut rows_read = 0;
    let mut skipped = Vec::new();
    let mut vessels: Vec<Vessel> = Vec::new();
    let mut vessel_index: HashMap<u64, usize> = HashMap::new();
    let mut record = ByteRecord::new();
    loop {
        let more = match reader.read_byte_record(&mut record) {
            Ok(more) => more,
            Err(source) => {
                let line = source
                    .position()
                    .and_then(|position| reader.get_mut().line_at(position.byte()))
                    .unwrap_or_default();
                return Err(ParseError::Read { line, source });
            }
        };
        if !more {
            break;
        }
        rows_read += 1;
        let line = record
            .position()
            .and_then(|position| reader.get_mut().line_at(position.byte()))
            .unwrap_or_default();
        match parse_row(&record, line, &columns, now) {
            Ok(row) => {
                let index = *vessel_index.entry(row.mmsi).or_insert_with(|| {
                    vessels.push(Vessel::new(row.mmsi));
                    vessels.len() - 1
                });
                vessels[index].push(row);
            }
            Err(reason) => {
                let row = SkippedRow { line, reason };
                on_skip(&row);
                skipped.push(row);
            }
        }
    }

    let sha256 = format!("{:x}", reader.into_inner().hasher.finalize());
    Ok(ParsedFile {
        rows_read,
        skipped,
        vessels,
        sha256,
    })
}

#[cfg(test)]
mod tests;
