//! Waiting until the query service shows every vessel's last report, then checking it.
//!
//! A vessel has caught up when `GET /v1/users/{id}/location` returns a sequence at least as
//! great as that of the event that stored the expected latest report. When the file lists
//! the vessel's reports in time order, that is the last sequence the command service
//! returned for the vessel. Otherwise it is an earlier one, because the latest location keeps
//! the greatest timestamp and a final report with an older timestamp never shows there.
//!
//! When the event's sequence is unknown, because the import found some reports already
//! stored, the vessel has caught up once the location matches the expected report.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use uuid::Uuid;

use crate::client::{LatestLocation, Meridian};
use crate::console::Console;
use crate::vessel::{ExpectedLatest, Verification, VesselOutcome};

/// Pause between two rounds of checks.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The state of one vessel still being waited for.
struct Pending {
    /// Index into the outcomes.
    index: usize,
    user_id: Uuid,
    expected: ExpectedLatest,
    seen: Option<LatestLocation>,
    last_error: Option<String>,
}

/// Returns whether `found` is the expected report.
pub fn matches(found: &LatestLocation, expected: &ExpectedLatest) -> bool {
    found.latitude == expected.report.latitude
        && found.longitude == expected.report.longitude
        && found.recorded_at == expected.report.recorded_at
}

/// Waits up to `timeout` for every vessel that has an expected latest report, `concurrency`
/// lookups at a time, and sets each one's verification.
pub async fn wait_for_query_service(
    client: &Meridian,
    console: &Console,
    outcomes: &mut [VesselOutcome],
    timeout: Duration,
    concurrency: usize,
) {
    let mut pending: Vec<Pending> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, outcome)| outcome.failure.is_none())
        .filter_map(|(index, outcome)| {
            Some(Pending {
                index,
                user_id: outcome.user_id?,
                expected: outcome.expected_latest?,
                seen: None,
                last_error: None,
            })
        })
        .collect();
    let progress = console.count_bar("waiting", pending.len() as u64, "vessels");
    let deadline = Instant::now() + timeout;

    loop {
        let checked: Vec<(Pending, Option<Verification>)> = stream::iter(pending)
            .map(|vessel| check(client, vessel))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        pending = Vec::new();
        for (vessel, verification) in checked {
            match verification {
                Some(verification) => {
                    progress.inc(1);
                    report_mismatch(console, &outcomes[vessel.index], &verification);
                    outcomes[vessel.index].verification = verification;
                }
                None => pending.push(vessel),
            }
        }
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    progress.finish_and_clear();

    for vessel in pending {
        let outcome = &mut outcomes[vessel.index];
        outcome.verification = match (vessel.expected.sequence, vessel.seen) {
            // Without a known sequence, a location that never matched is a mismatch.
            (None, Some(found)) => Verification::Mismatch { found },
            _ => Verification::Lagging {
                seen_sequence: vessel.seen.map(|found| found.sequence),
                last_error: vessel.last_error,
            },
        };
        report_mismatch(console, outcome, &outcome.verification);
    }
}

/// Looks up one vessel; returns its verification once it has caught up.
async fn check(client: &Meridian, mut vessel: Pending) -> (Pending, Option<Verification>) {
    let found = match client.latest_location(vessel.user_id).await {
        Ok(Some(found)) => found,
        Ok(None) => return (vessel, None),
        Err(error) => {
            vessel.last_error = Some(error.to_string());
            return (vessel, None);
        }
    };
    vessel.seen = Some(found);
    vessel.last_error = None;

    let verification = match vessel.expected.sequence {
        Some(sequence) if found.sequence < sequence => None,
        Some(_) if matches(&found, &vessel.expected) => Some(Verification::Matched),
        Some(_) => Some(Verification::Mismatch { found }),
        None if matches(&found, &vessel.expected) => Some(Verification::Matched),
        None => None,
    };
    (vessel, verification)
}

fn report_mismatch(console: &Console, outcome: &VesselOutcome, verification: &Verification) {
    let (Verification::Mismatch { found }, Some(expected)) =
        (verification, outcome.expected_latest)
    else {
        return;
    };
    console.message(format_args!(
        "vessel {}: latest location is {}, {} at {} (sequence {}), expected {}, {} at {} from line {}",
        outcome.mmsi,
        found.latitude,
        found.longitude,
        found.recorded_at.to_rfc3339(),
        found.sequence,
        expected.report.latitude,
        expected.report.longitude,
        expected.report.recorded_at.to_rfc3339(),
        expected.line
    ));
}
