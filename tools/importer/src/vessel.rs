//! Importing one vessel: register its user, then send its reports in file order.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use meridian_domain::location::LocationReport;
use rand::distr::{Alphanumeric, SampleString};
use reqwest::StatusCode;
use uuid::Uuid;

use crate::ais::{expected_latest, first_occurrences, Vessel};
use crate::client::{ApiError, LatestLocation, Meridian, Recorded, Registration};
use crate::console::Console;

/// Characters in the random password of a vessel's user.
const PASSWORD_CHARS: usize = 32;
/// Pause between two lookups of a user in the query service.
const LOOKUP_INTERVAL: Duration = Duration::from_millis(250);

/// A batch the command service rejected (a 4xx other than 401, 403, 404, 409 and 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedBatch {
    pub mmsi: u64,
    /// Index of the batch in the vessel's batches, from 0.
    pub index: usize,
    pub batches: usize,
    /// Line of each report in the batch.
    pub lines: Vec<u64>,
    pub status: u16,
    /// The rejected field, such as `reports[3].latitude`.
    pub field: Option<String>,
    pub reason: String,
    /// Line of the report the field points at, when it names one.
    pub offending_line: Option<u64>,
}

impl fmt::Display for RejectedBatch {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.lines.first().copied().unwrap_or_default();
        let last = self.lines.last().copied().unwrap_or_default();
        write!(
            formatter,
            "vessel {}: batch {} of {} (lines {first}-{last}, {} reports) rejected with {}: ",
            self.mmsi,
            self.index + 1,
            self.batches,
            self.lines.len(),
            self.status
        )?;
        if let Some(field) = &self.field {
            write!(formatter, "{field}: ")?;
        }
        write!(formatter, "{}", self.reason)?;
        if let Some(line) = self.offending_line {
            write!(formatter, " (line {line})")?;
        }
        Ok(())
    }
}

/// The report the query service should show as a vessel's latest location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpectedLatest {
    pub line: u64,
    pub report: LocationReport,
    /// Sequence of the event that stored the report, when the command service's responses
    /// determine it (see [`expected_latest_of`]).
    pub sequence: Option<i64>,
}

/// A batch the command service accepted: its reports' indices and the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedBatch {
    pub range: Range<usize>,
    pub recorded: Recorded,
}

/// Returns the report the query service should show as latest once `accepted` are stored,
/// and the sequence of its event.
///
/// A batch stores its new reports, those not identical to an earlier one, as consecutive
/// events from `first_sequence` on. When the batch stored exactly as many events as it has
/// reports new within this file, the k-th new report has sequence `first_sequence + k`.
/// Otherwise some reports were stored before this import, and the sequence stays unknown.
pub fn expected_latest_of(vessel: &Vessel, accepted: &[AcceptedBatch]) -> Option<ExpectedLatest> {
    let indices = accepted.iter().flat_map(|batch| batch.range.clone());
    let new = first_occurrences(&vessel.reports, indices);
    let index = expected_latest(&vessel.reports, new.iter().copied())?;

    let batch = accepted.iter().find(|batch| batch.range.contains(&index))?;
    let new_in_batch: Vec<usize> = new
        .iter()
        .copied()
        .filter(|new_index| batch.range.contains(new_index))
        .collect();
    let offset = new_in_batch
        .iter()
        .position(|&new_index| new_index == index)?;
    let sequence = match batch.recorded.first_sequence {
        Some(first) if new_in_batch.len() as u64 == batch.recorded.stored => {
            i64::try_from(offset).ok().map(|offset| first + offset)
        }
        _ => None,
    };

    Some(ExpectedLatest {
        line: vessel.lines[index],
        report: vessel.reports[index],
        sequence,
    })
}

/// Result of checking a vessel's latest location in the query service after the import.
#[derive(Debug, Clone, PartialEq)]
pub enum Verification {
    /// Not checked: the vessel failed or had no accepted report.
    NotChecked,
    /// The latest location matches the expected report.
    Matched,
    /// The query service caught up but shows another location.
    Mismatch { found: LatestLocation },
    /// The query service did not catch up within the wait timeout.
    Lagging {
        /// Sequence of the latest location last seen, if any.
        seen_sequence: Option<i64>,
        /// The error of the last lookup, if it failed.
        last_error: Option<String>,
    },
}

/// The result of importing one vessel.
#[derive(Debug, Clone, PartialEq)]
pub struct VesselOutcome {
    pub mmsi: u64,
    pub user_name: String,
    pub user_id: Option<Uuid>,
    /// Valid reports of the vessel in the file.
    pub reports: usize,
    /// Reports in batches the command service accepted.
    pub reports_accepted: u64,
    /// Reports among those in batches an earlier import had sent, whose stored responses
    /// the command service returned again.
    pub reports_replayed: u64,
    /// Events the command service stored for the batches of this import.
    pub events_stored: u64,
    /// The greatest sequence the command service returned for the vessel's location track.
    pub last_sequence: Option<i64>,
    pub rejected_batches: Vec<RejectedBatch>,
    /// Reason the vessel could not be imported completely.
    pub failure: Option<String>,
    pub expected_latest: Option<ExpectedLatest>,
    pub verification: Verification,
}

impl VesselOutcome {
    fn new(vessel: &Vessel) -> Self {
        Self {
            mmsi: vessel.mmsi,
            user_name: vessel.user_name(),
            user_id: None,
            reports: vessel.reports.len(),
            reports_accepted: 0,
            reports_replayed: 0,
            events_stored: 0,
            last_sequence: None,
            rejected_batches: Vec::new(),
            failure: None,
            expected_latest: None,
            verification: Verification::NotChecked,
        }
    }
}

/// Clients, display and settings that a vessel's import shares with the others.
pub struct VesselContext<'a> {
    pub client: &'a Meridian,
    pub console: &'a Console,
    pub progress: &'a ProgressBar,
    pub batch_size: usize,
    /// SHA-256 of the file in hex; part of every batch's idempotency key.
    pub file_sha256: &'a str,
    pub lookup_timeout: Duration,
}

/// Returns the idempotency key of the user of vessel `mmsi`.
pub fn user_key(mmsi: u64) -> String {
    format!("import-user-{mmsi}")
}

/// Returns the idempotency key of batch `index` of vessel `mmsi`. It changes with the file's
/// content and the batch size, which together fix the batch's reports, so a re-run of the
/// same import repeats the same requests and a different import never reuses a key.
pub fn batch_key(file_sha256: &str, mmsi: u64, batch_size: usize, index: usize) -> String {
    let file = file_sha256.get(..16).unwrap_or(file_sha256);
    format!("import-{file}-{mmsi}-{batch_size}-{index}")
}

/// Registers the vessel's user and sends its reports, batch after batch.
pub async fn import_vessel(vessel: &Vessel, context: &VesselContext<'_>) -> VesselOutcome {
    let mut outcome = VesselOutcome::new(vessel);
    let batches = vessel.reports.len().div_ceil(context.batch_size);

    let user_id = match register(vessel, context).await {
        Ok(user_id) => user_id,
        Err(reason) => {
            context.progress.inc(vessel.reports.len() as u64);
            let failure = format!("vessel {}: registration failed: {reason}", vessel.mmsi);
            context.console.message(&failure);
            outcome.failure = Some(failure);
            return outcome;
        }
    };
    outcome.user_id = Some(user_id);

    let mut accepted = Vec::with_capacity(batches);
    for index in 0..batches {
        let start = index * context.batch_size;
        let end = (start + context.batch_size).min(vessel.reports.len());
        let key = batch_key(context.file_sha256, vessel.mmsi, context.batch_size, index);
        let result = context
            .client
            .record_locations(user_id, &vessel.reports[start..end], &key)
            .await;
        context.progress.inc((end - start) as u64);

        match result {
            Ok(recorded) => {
                outcome.reports_accepted += recorded.accepted;
                if recorded.replayed {
                    outcome.reports_replayed += recorded.accepted;
                } else {
                    outcome.events_stored += recorded.stored;
                }
                outcome.last_sequence = outcome.last_sequence.max(recorded.last_sequence);
                accepted.push(AcceptedBatch {
                    range: start..end,
                    recorded,
                });
            }
            Err(error) if is_rejection(&error) => {
                let rejected = rejected_batch(vessel, index, batches, start..end, &error);
                context.console.message(&rejected);
                outcome.rejected_batches.push(rejected);
            }
            Err(error) => {
                let failure = format!(
                    "vessel {}: batch {} of {} (lines {}-{}) failed, so its later batches were not sent: {error}",
                    vessel.mmsi,
                    index + 1,
                    batches,
                    vessel.lines[start],
                    vessel.lines[end - 1]
                );
                context.console.message(&failure);
                outcome.failure = Some(failure);
                let unsent = vessel.reports.len() - end;
                context.progress.inc(unsent as u64);
                break;
            }
        }
    }

    outcome.expected_latest = expected_latest_of(vessel, &accepted);
    outcome
}

/// Returns whether the command service rejected the batch itself, in which case the
/// vessel's next batch is still worth sending. A rejected token (401) or a missing
/// permission (403) would reject every batch, so it stops the vessel instead.
fn is_rejection(error: &ApiError) -> bool {
    error.status().is_some_and(|status| {
        status.is_client_error()
            && !matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::NOT_FOUND
                    | StatusCode::CONFLICT
                    | StatusCode::TOO_MANY_REQUESTS
            )
    })
}

fn rejected_batch(
    vessel: &Vessel,
    index: usize,
    batches: usize,
    range: Range<usize>,
    error: &ApiError,
) -> RejectedBatch {
    let body = error.body();
    let field = body.and_then(|body| body.field.clone());
    let reason = body
        .map(|body| body.reason.clone().unwrap_or_else(|| body.message.clone()))
        .unwrap_or_else(|| error.to_string());
    let offending_line = field
        .as_deref()
        .and_then(report_index)
        .filter(|offset| *offset < range.len())
        .map(|offset| vessel.lines[range.start + offset]);
    RejectedBatch {
        mmsi: vessel.mmsi,
        index,
        batches,
        lines: vessel.lines[range].to_vec(),
        status: error.status().map_or(0, |status| status.as_u16()),
        field,
        reason,
        offending_line,
    }
}

/// Reads the report index out of a field name such as `reports[3].latitude`.
pub fn report_index(field: &str) -> Option<usize> {
    let rest = field.strip_prefix("reports[")?;
    let (index, _) = rest.split_once(']')?;
    index.parse().ok()
}

/// Registers the vessel's user, or finds the user registered for it before.
async fn register(vessel: &Vessel, context: &VesselContext<'_>) -> Result<Uuid, String> {
    let email = vessel.email();
    let password = Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_CHARS);
    let registration = context
        .client
        .register_user(
            &email,
            &vessel.user_name(),
            &password,
            &user_key(vessel.mmsi),
        )
        .await
        .map_err(|error| error.to_string())?;

    match registration {
        Registration::Registered(user_id) => Ok(user_id),
        // NOTE: A repeated import sends a new random password, so the command service
        // reports the idempotency key as reused and the user is found by email instead.
        Registration::EmailTaken | Registration::KeyReused => find_user(&email, context).await,
    }
}

/// Looks the user up by email until the query service shows it or the lookup times out.
async fn find_user(email: &str, context: &VesselContext<'_>) -> Result<Uuid, String> {
    let deadline = Instant::now() + context.lookup_timeout;
    loop {
        let found = context
            .client
            .find_user_by_email(email)
            .await
            .map_err(|error| format!("{email} is taken, and looking it up failed: {error}"))?;
        if let Some(user_id) = found {
            return Ok(user_id);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{email} is taken, but {}/v1/users?email= did not show its user within {} s",
                context.client.query_url(),
                context.lookup_timeout.as_secs()
            ));
        }
        tokio::time::sleep(LOOKUP_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vessel(reports: &[(i64, f64)]) -> Vessel {
        let start: chrono::DateTime<chrono::Utc> = "2020-06-30T00:00:00Z".parse().unwrap();
        Vessel {
            mmsi: 1,
            vessel_name: None,
            reports: reports
                .iter()
                .map(|&(seconds, latitude)| LocationReport {
                    latitude,
                    longitude: 0.0,
                    recorded_at: start + chrono::TimeDelta::seconds(seconds),
                })
                .collect(),
            lines: (2..).take(reports.len()).collect(),
        }
    }

    fn accepted(range: Range<usize>, stored: u64, first_sequence: i64) -> AcceptedBatch {
        AcceptedBatch {
            recorded: Recorded {
                accepted: range.len() as u64,
                stored,
                first_sequence: (stored > 0).then_some(first_sequence),
                last_sequence: (stored > 0).then_some(first_sequence + stored as i64 - 1),
                replayed: false,
            },
            range,
        }
    }

    #[test]
    fn expected_sequence_of_last_report() {
        let vessel = vessel(&[(1, 1.0), (2, 2.0), (3, 3.0)]);
        let batches = [accepted(0..2, 2, 1), accepted(2..3, 1, 3)];
        let expected = expected_latest_of(&vessel, &batches).unwrap();
        assert_eq!(expected.line, 4);
        assert_eq!(expected.sequence, Some(3));
    }

    #[test]
    fn expected_sequence_of_earlier_report() {
        let vessel = vessel(&[(1, 1.0), (9, 2.0), (3, 3.0)]);
        let batches = [accepted(0..2, 2, 1), accepted(2..3, 1, 3)];
        let expected = expected_latest_of(&vessel, &batches).unwrap();
        assert_eq!(expected.line, 3);
        assert_eq!(expected.sequence, Some(2));
    }

    #[test]
    fn expected_sequence_skips_repeated_reports() {
        // The second row repeats the first, so the batch stores two events, not three.
        let vessel = vessel(&[(1, 1.0), (1, 1.0), (5, 2.0)]);
        let batches = [accepted(0..3, 2, 10)];
        let expected = expected_latest_of(&vessel, &batches).unwrap();
        assert_eq!(expected.line, 4);
        assert_eq!(expected.sequence, Some(11));
    }

    #[test]
    fn expected_sequence_unknown_when_reports_were_stored_before() {
        let vessel = vessel(&[(1, 1.0), (5, 2.0)]);
        let batches = [accepted(0..2, 1, 7)];
        let expected = expected_latest_of(&vessel, &batches).unwrap();
        assert_eq!(expected.line, 3);
        assert_eq!(expected.sequence, None);
    }

    #[test]
    fn expected_latest_ignores_rejected_batches() {
        let vessel = vessel(&[(1, 1.0), (9, 2.0), (3, 3.0)]);
        let batches = [accepted(0..1, 1, 1), accepted(2..3, 1, 2)];
        let expected = expected_latest_of(&vessel, &batches).unwrap();
        assert_eq!(expected.line, 4);
        assert_eq!(expected.sequence, Some(2));
    }

    #[test]
    fn no_accepted_batch_has_no_expected_latest() {
        let vessel = vessel(&[(1, 1.0)]);
        assert_eq!(expected_latest_of(&vessel, &[]), None);
    }

    #[test]
    fn report_index_reads_field() {
        assert_eq!(report_index("reports[3].latitude"), Some(3));
        assert_eq!(report_index("reports[999].recorded_at"), Some(999));
    }

    #[test]
    fn report_index_ignores_other_fields() {
        assert_eq!(report_index("reports"), None);
        assert_eq!(report_index("latitude"), None);
        assert_eq!(report_index("reports[x].latitude"), None);
    }

    #[test]
    fn batch_key_depends_on_every_part() {
        let file = "0123456789abcdef0123456789abcdef";
        let key = batch_key(file, 367_000_140, 500, 2);
        assert_eq!(key, "import-0123456789abcdef-367000140-500-2");
        assert_ne!(key, batch_key("f123456789abcdef", 367_000_140, 500, 2));
        assert_ne!(key, batch_key(file, 367_000_141, 500, 2));
        assert_ne!(key, batch_key(file, 367_000_140, 400, 2));
        assert_ne!(key, batch_key(file, 367_000_140, 500, 3));
    }

    #[test]
    fn user_key_names_mmsi() {
        assert_eq!(user_key(367_000_140), "import-user-367000140");
    }

    #[test]
    fn rejected_batch_message_names_lines() {
        let rejected = RejectedBatch {
            mmsi: 367_000_140,
            index: 1,
            batches: 3,
            lines: vec![10, 12, 15],
            status: 422,
            field: Some("reports[1].recorded_at".into()),
            reason: "is more than 5 minutes in the future".into(),
            offending_line: Some(12),
        };
        assert_eq!(
            rejected.to_string(),
            "vessel 367000140: batch 2 of 3 (lines 10-15, 3 reports) rejected with 422: \
             reports[1].recorded_at: is more than 5 minutes in the future (line 12)"
        );
    }
}
