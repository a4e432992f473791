//! The result of an import and its printed summary.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::ais::SkippedRow;
use crate::session::SessionStats;
use crate::vessel::{RejectedBatch, Verification, VesselOutcome};

/// Everything an import did, vessel by vessel.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportReport {
    pub file: PathBuf,
    /// Data rows read, valid or not.
    pub rows_read: u64,
    pub skipped_rows: Vec<SkippedRow>,
    /// One outcome per vessel, in the order of the vessels' first rows in the file.
    pub vessels: Vec<VesselOutcome>,
    /// Logins, token refreshes and 429 responses of the import's session.
    pub session: SessionStats,
    /// Time spent reading the file.
    pub read_time: Duration,
    /// Time spent registering users and sending reports.
    pub send_time: Duration,
    /// Time spent waiting for the query service.
    pub wait_time: Duration,
}

impl ImportReport {
    /// Total time of the import.
    pub fn elapsed(&self) -> Duration {
        self.read_time + self.send_time + self.wait_time
    }

    /// Valid rows, grouped into vessels.
    pub fn valid_rows(&self) -> u64 {
        self.vessels
            .iter()
            .map(|vessel| vessel.reports as u64)
            .sum()
    }

    /// Reports in batches the command service accepted.
    pub fn reports_imported(&self) -> u64 {
        self.vessels
            .iter()
            .map(|vessel| vessel.reports_accepted)
            .sum()
    }

    /// Location events the command service stored during this import; repeats of stored
    /// reports store none.
    pub fn events_stored(&self) -> u64 {
        self.vessels.iter().map(|vessel| vessel.events_stored).sum()
    }

    /// Reports in batches an earlier import had already sent with the same idempotency key.
    pub fn reports_replayed(&self) -> u64 {
        self.vessels
            .iter()
            .map(|vessel| vessel.reports_replayed)
            .sum()
    }

    pub fn rejected_batches(&self) -> impl Iterator<Item = &RejectedBatch> {
        self.vessels
            .iter()
            .flat_map(|vessel| vessel.rejected_batches.iter())
    }

    /// Vessels whose registration or a batch failed for good.
    pub fn failed_vessels(&self) -> Vec<u64> {
        self.vessels_where(|vessel| vessel.failure.is_some())
    }

    /// Vessels the query service did not catch up with in time.
    pub fn lagging_vessels(&self) -> Vec<u64> {
        self.vessels_where(|vessel| matches!(vessel.verification, Verification::Lagging { .. }))
    }

    /// Vessels whose latest location differs from the expected report.
    pub fn mismatched_vessels(&self) -> Vec<u64> {
        self.vessels_where(|vessel| matches!(vessel.verification, Verification::Mismatch { .. }))
    }

    /// Vessels whose latest location matched the expected report.
    pub fn verified_vessels(&self) -> usize {
        self.vessels
            .iter()
            .filter(|vessel| vessel.verification == Verification::Matched)
            .count()
    }

    fn vessels_where(&self, predicate: impl Fn(&VesselOutcome) -> bool) -> Vec<u64> {
        self.vessels
            .iter()
            .filter(|vessel| predicate(vessel))
            .map(|vessel| vessel.mmsi)
            .collect()
    }

    /// Returns whether every vessel was imported and verified. Skipped rows and rejected
    /// batches do not count against it.
    pub fn is_success(&self) -> bool {
        self.failed_vessels().is_empty()
            && self.lagging_vessels().is_empty()
            && self.mismatched_vessels().is_empty()
    }

    /// Reports imported per second over the whole import.
    pub fn reports_per_second(&self) -> f64 {
        let seconds = self.elapsed().as_secs_f64();
        if seconds > 0.0 {
            self.reports_imported() as f64 / seconds
        } else {
            0.0
        }
    }

    /// Returns the lines printed at the end of an import.
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }
}

/// The printed form of an [`ImportReport`].
pub struct Summary<'a>(&'a ImportReport);

fn list(mmsis: &[u64]) -> String {
    mmsis
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = self.0;
        let rejected: Vec<&RejectedBatch> = report.rejected_batches().collect();
        let rejected_reports: usize = rejected.iter().map(|batch| batch.lines.len()).sum();
        let failed = report.failed_vessels();
        let lagging = report.lagging_vessels();
        let mismatched = report.mismatched_vessels();

        writeln!(formatter, "file:       {}", report.file.display())?;
        writeln!(formatter, "rows read:  {}", report.rows_read)?;
        write!(
            formatter,
            "imported:   {} reports ({} new location events",
            report.reports_imported(),
            report.events_stored()
        )?;
        let replayed = report.reports_replayed();
        if replayed > 0 {
            write!(formatter, ", {replayed} reports sent by an earlier import")?;
        }
        writeln!(formatter, ")")?;
        writeln!(formatter, "skipped:    {} rows", report.skipped_rows.len())?;
        writeln!(
            formatter,
            "rejected:   {rejected_reports} reports in {} batches",
            rejected.len()
        )?;
        writeln!(
            formatter,
            "vessels:    {} ({} failed, {} verified)",
            report.vessels.len(),
            failed.len(),
            report.verified_vessels()
        )?;
        writeln!(
            formatter,
            "limited:    {} responses 429 Too Many Requests, {:.1} s spent waiting",
            report.session.rate_limited,
            report.session.rate_limited_wait.as_secs_f64()
        )?;
        writeln!(
            formatter,
            "session:    {} login(s), {} token refresh(es)",
            report.session.logins, report.session.refreshes
        )?;
        writeln!(
            formatter,
            "elapsed:    {:.1} s (read {:.1} s, send {:.1} s, wait {:.1} s)",
            report.elapsed().as_secs_f64(),
            report.read_time.as_secs_f64(),
            report.send_time.as_secs_f64(),
            report.wait_time.as_secs_f64()
        )?;
        write!(
            formatter,
            "rate:       {:.0} reports/s",
            report.reports_per_second()
        )?;
        if !failed.is_empty() {
            write!(formatter, "\nfailed vessels: {}", list(&failed))?;
        }
        if !lagging.is_empty() {
            write!(
                formatter,
                "\nvessels the query service did not catch up with: {}",
                list(&lagging)
            )?;
        }
        if !mismatched.is_empty() {
            write!(
                formatter,
                "\nvessels with an unexpected latest location: {}",
                list(&mismatched)
            )?;
        }
        Ok(())
    }
}
