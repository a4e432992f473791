//! The `LocationTrack` aggregate: the location reports of one user.
//!
//! A report identical to one already stored (same timestamp and coordinates) is a no-op, so a
//! client may resend a batch safely. The aggregate keeps only the most recent reports in its
//! state, which keeps snapshots small; an older timestamp is checked through [`ReportHistory`].

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{FieldError, EVENT_VERSION};

/// Maximum number of reports in one command.
pub const MAX_BATCH: usize = 1_000;
/// How far past the time of receipt a report's timestamp may be.
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);
/// The earliest timestamp a report may carry: the Unix epoch. Earlier dates are bad device
/// clocks, and year 0 cannot even be stored by every analytics store.
pub const EARLIEST_RECORDED_AT: DateTime<Utc> = DateTime::UNIX_EPOCH;
/// How many recent reports the aggregate remembers for duplicate detection.
pub const RECENT_REPORTS: usize = 256;

/// One position fix as a client sends it, before validation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LocationReport {
    pub latitude: f64,
    pub longitude: f64,
    pub recorded_at: DateTime<Utc>,
}

impl LocationReport {
    /// Checks ranges and the timestamp; `field` prefixes the field names in errors.
    pub fn validate(&self, field: &str, received_at: DateTime<Utc>) -> Result<(), FieldError> {
        if !(self.latitude.is_finite() && (-90.0..=90.0).contains(&self.latitude)) {
            return Err(FieldError::new(
                format!("{field}latitude"),
                format!("{} is outside [-90, 90]", self.latitude),
            ));
        }
        if !(self.longitude.is_finite() && (-180.0..=180.0).contains(&self.longitude)) {
            return Err(FieldError::new(
                format!("{field}longitude"),
                format!("{} is outside [-180, 180]", self.longitude),
            ));
        }
        if self.recorded_at < EARLIEST_RECORDED_AT {
            return Err(FieldError::new(
                format!("{field}recorded_at"),
                format!(
                    "{} is before {}",
                    self.recorded_at.to_rfc3339(),
                    EARLIEST_RECORDED_AT.to_rfc3339()
                ),
            ));
        }
        if self.recorded_at > received_at + MAX_CLOCK_SKEW {
            return Err(FieldError::new(
                format!("{field}recorded_at"),
                format!(
                    "{} is more than 5 minutes in the future",
                    self.recorded_at.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint(
            self.recorded_at.timestamp_micros(),
            self.latitude.to_bits(),
            self.longitude.to_bits(),
        )
    }
}

/// Identity of a report for duplicate detection: timestamp in microseconds, then the exact
/// bit patterns of latitude and longitude. Ordered by time first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint(i64, u64, u64);

/// Looks up reports older than the aggregate's recent window.
#[async_trait::async_trait]
pub trait ReportHistory: Send + Sync {
    /// Returns whether `report` is already stored for the user `user_id`.
    async fn contains(&self, user_id: &str, report: &LocationReport) -> Result<bool, String>;
}

#[derive(Clone)]
pub struct LocationServices {
    pub history: Arc<dyn ReportHistory>,
}

#[derive(Debug, Clone)]
pub struct RecordLocations {
    pub user_id: String,
    pub reports: Vec<LocationReport>,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LocationEvent {
    LocationRecorded {
        latitude: f64,
        longitude: f64,
        recorded_at: DateTime<Utc>,
    },
}

impl DomainEvent for LocationEvent {
    fn event_type(&self) -> String {
        "LocationRecorded".to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocationError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("report history lookup failed: {0}")]
    HistoryUnavailable(String),
}

/// State kept between commands, and in snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocationTrack {
    /// Number of reports stored.
    pub reports: u64,
    /// Latest stored report: the greatest timestamp, and on equal timestamps the later one.
    pub latest: Option<LocationReport>,
    /// The most recent reports by timestamp, at most [`RECENT_REPORTS`].
    recent: BTreeSet<Fingerprint>,
    /// Every stored report with a timestamp after this one (microseconds) is in `recent`.
    recent_after: Option<i64>,
}

impl LocationTrack {
    /// Validates every report first, so a batch is rejected as a whole.
    pub fn validate_batch(
        reports: &[LocationReport],
        received_at: DateTime<Utc>,
    ) -> Result<(), FieldError> {
        if reports.is_empty() {
            return Err(FieldError::new(
                "reports",
                "must contain at least one report",
            ));
        }
        if reports.len() > MAX_BATCH {
            return Err(FieldError::new(
                "reports",
                format!(
                    "contains {} reports; the maximum is {MAX_BATCH}",
                    reports.len()
                ),
            ));
        }
        for (index, report) in reports.iter().enumerate() {
            report.validate(&format!("reports[{index}]."), received_at)?;
        }
        Ok(())
    }

    async fn is_stored(
        &self,
        user_id: &str,
        report: &LocationReport,
        history: &dyn ReportHistory,
    ) -> Result<bool, LocationError> {
        let fingerprint = report.fingerprint();
        if self.recent.contains(&fingerprint) {
            return Ok(true);
        }
        let covered = self.recent_after.is_none_or(|after| fingerprint.0 > after);
        if covered {
            return Ok(false);
        }
        history
            .contains(user_id, report)
            .await
            .map_err(LocationError::HistoryUnavailable)
    }
}

impl Aggregate for LocationTrack {
    const TYPE: &'static str = "LocationTrack";
    type Command = RecordLocations;
    type Event = LocationEvent;
    type Error = LocationError;
    type Services = LocationServices;

    async fn handle(
        &mut self,
        command: RecordLocations,
        services: &LocationServices,
        sink: &EventSink<Self>,
    ) -> Result<(), LocationError> {
        Self::validate_batch(&command.reports, command.received_at)?;
        for report in &command.reports {
            if self
                .is_stored(&command.user_id, report, services.history.as_ref())
                .await?
            {
                continue;
            }
            let event = LocationEvent::LocationRecorded {
                latitude: report.latitude,
                longitude: report.longitude,
                recorded_at: report.recorded_at,
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: LocationEvent) {
        let LocationEvent::LocationRecorded {
            latitude,
            longitude,
            recorded_at,
        } = event;
        let report = LocationReport {
            latitude,
            longitude,
            recorded_at,
        };
        self.reports += 1;
        if self
            .latest
            .is_none_or(|latest| recorded_at >= latest.recorded_at)
        {
            self.latest = Some(report);
        }
        self.recent.insert(report.fingerprint());
        while self.recent.len() > RECENT_REPORTS {
            if let Some(evicted) = self.recent.pop_first() {
                self.recent_after = Some(self.recent_after.map_or(evicted.0, |t| t.max(evicted.0)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use std::sync::Mutex;

    /// Contains the reports a test puts in the history, and counts each lookup.
    #[derive(Default)]
    struct FakeHistory {
        stored: Vec<LocationReport>,
        lookups: Mutex<usize>,
    }

    #[async_trait::async_trait]
    impl ReportHistory for FakeHistory {
        async fn contains(&self, _user_id: &str, report: &LocationReport) -> Result<bool, String> {
            *self.lookups.lock().unwrap() += 1;
            Ok(self.stored.contains(report))
        }
    }

    fn services(history: FakeHistory) -> LocationServices {
        LocationServices {
            history: Arc::new(history),
        }
    }

    fn time(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_593_475_200 + seconds, 0).unwrap()
    }

    fn report(seconds: i64, latitude: f64, longitude: f64) -> LocationReport {
        LocationReport {
            latitude,
            longitude,
            recorded_at: time(seconds),
        }
    }

    fn recorded(report: LocationReport) -> LocationEvent {
        LocationEvent::LocationRecorded {
            latitude: report.latitude,
            longitude: report.longitude,
            recorded_at: report.recorded_at,
        }
    }

    fn command(reports: Vec<LocationReport>) -> RecordLocations {
        RecordLocations {
            user_id: "u1".into(),
            reports,
            received_at: time(3_600),
        }
    }

    #[test]
    fn batch_records_one_event_per_report() {
        let reports = vec![report(0, 40.6, -74.0), report(10, 40.7, -74.1)];
        TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(reports.clone()))
            .then_expect_events(reports.into_iter().map(recorded).collect());
    }

    #[test]
    fn identical_report_is_a_no_op() {
        let first = report(0, 40.6, -74.0);
        TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given(vec![recorded(first)])
            .when(command(vec![first]))
            .then_expect_events(vec![]);
    }

    #[test]
    fn duplicate_inside_one_batch_is_stored_once() {
        let first = report(0, 40.6, -74.0);
        TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(vec![first, first]))
            .then_expect_events(vec![recorded(first)]);
    }

    #[test]
    fn same_timestamp_other_coordinates_is_kept() {
        let first = report(0, 40.6, -74.0);
        let second = report(0, 40.61, -74.0);
        TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given(vec![recorded(first)])
            .when(command(vec![second]))
            .then_expect_events(vec![recorded(second)]);
    }

    #[test]
    fn later_of_equal_timestamps_is_latest() {
        let mut track = LocationTrack::default();
        track.apply(recorded(report(5, 1.0, 1.0)));
        track.apply(recorded(report(5, 2.0, 2.0)));
        assert_eq!(track.latest, Some(report(5, 2.0, 2.0)));
    }

    #[test]
    fn older_report_does_not_replace_latest() {
        let mut track = LocationTrack::default();
        track.apply(recorded(report(5, 1.0, 1.0)));
        track.apply(recorded(report(4, 2.0, 2.0)));
        assert_eq!(track.latest, Some(report(5, 1.0, 1.0)));
    }

    #[test]
    fn latitude_out_of_range_rejects_whole_batch() {
        TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(vec![
                report(0, 40.0, -74.0),
                report(1, 90.5, -74.0),
            ]))
            .then_expect_error(LocationError::Invalid(FieldError::new(
                "reports[1].latitude",
                "90.5 is outside [-90, 90]",
            )));
    }

    #[test]
    fn longitude_out_of_range_is_rejected() {
        let result = TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(vec![report(0, 40.0, -180.5)]))
            .inspect_result();
        let Err(LocationError::Invalid(error)) = result else {
            panic!("expected a field error, got {result:?}");
        };
        assert_eq!(error.field, "reports[0].longitude");
    }

    #[test]
    fn report_far_in_future_is_rejected() {
        let result = TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(vec![report(3_600 + 301, 40.0, -74.0)]))
            .inspect_result();
        let Err(LocationError::Invalid(error)) = result else {
            panic!("expected a field error, got {result:?}");
        };
        assert_eq!(error.field, "reports[0].recorded_at");
    }

    #[test]
    fn report_before_epoch_is_rejected() {
        let year_zero = LocationReport {
            latitude: 40.0,
            longitude: -74.0,
            recorded_at: "0000-01-01T00:00:00Z".parse().unwrap(),
        };
        let result = TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(vec![year_zero]))
            .inspect_result();
        let Err(LocationError::Invalid(error)) = result else {
            panic!("expected a field error, got {result:?}");
        };
        assert_eq!(error.field, "reports[0].recorded_at");
    }

    #[test]
    fn report_slightly_in_future_is_accepted() {
        let near = report(3_600 + 299, 40.0, -74.0);
        TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(vec![near]))
            .then_expect_events(vec![recorded(near)]);
    }

    #[test]
    fn empty_batch_is_rejected() {
        let result = TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(vec![]))
            .inspect_result();
        assert!(matches!(result, Err(LocationError::Invalid(_))));
    }

    #[test]
    fn oversized_batch_is_rejected() {
        let reports = (0..=MAX_BATCH as i64)
            .map(|i| report(i, 1.0, 1.0))
            .collect();
        let result = TestFramework::<LocationTrack>::with(services(FakeHistory::default()))
            .given_no_previous_events()
            .when(command(reports))
            .inspect_result();
        assert!(matches!(result, Err(LocationError::Invalid(_))));
    }

    #[test]
    fn old_duplicate_is_found_through_history() {
        let old = report(0, 40.6, -74.0);
        let mut given = vec![recorded(old)];
        given.extend((1..=RECENT_REPORTS as i64 + 5).map(|i| recorded(report(i, 1.0, 1.0))));
        let history = FakeHistory {
            stored: vec![old],
            ..FakeHistory::default()
        };
        TestFramework::<LocationTrack>::with(services(history))
            .given(given)
            .when(command(vec![old]))
            .then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn new_timestamp_needs_no_history_lookup() {
        let history = Arc::new(FakeHistory::default());
        let services = LocationServices {
            history: history.clone(),
        };
        let mut track = LocationTrack::default();
        for i in 0..(RECENT_REPORTS as i64 * 2) {
            track.apply(recorded(report(i, 1.0, 1.0)));
        }
        let sink = EventSink::default();
        track
            .handle(command(vec![report(3_000, 2.0, 2.0)]), &services, &sink)
            .await
            .unwrap();
        assert_eq!(*history.lookups.lock().unwrap(), 0);
    }

    #[test]
    fn recent_window_is_bounded() {
        let mut track = LocationTrack::default();
        for i in 0..(RECENT_REPORTS as i64 * 3) {
            track.apply(recorded(report(i, 1.0, 1.0)));
        }
        assert_eq!(track.recent.len(), RECENT_REPORTS);
    }
}
