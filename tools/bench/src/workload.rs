//! The AIS reports every phase sends: read once, put in time order, and split into the
//! commands of each client.
//!
//! Each vessel (MMSI) is one user. A vessel's reports always go to one client, so two clients
//! never write one aggregate and commands never conflict.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::{ensure, Context};
use bytes::Bytes;
use chrono::Utc;
use meridian_domain::location::LocationReport;
use meridian_importer::ais;
use serde::Serialize;

/// One valid report and the vessel that sent it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimedReport {
    /// Index into [`Workload::vessels`].
    pub vessel: usize,
    pub report: LocationReport,
}

/// The valid reports of the file in time order.
#[derive(Debug, Clone)]
pub struct Workload {
    /// MMSI of each vessel, in the order of its first report in time.
    pub vessels: Vec<u64>,
    /// Every report of those vessels, ordered by `recorded_at`, then by line in the file.
    pub reports: Vec<TimedReport>,
    /// Valid rows in the file, before any vessel limit.
    pub valid_rows: usize,
}

impl Workload {
    /// Reads `path` and keeps the first `vessel_limit` vessels by their first report in time,
    /// or every vessel without a limit.
    pub fn load(path: &Path, vessel_limit: Option<usize>) -> anyhow::Result<Self> {
        let file =
            File::open(path).with_context(|| format!("failed to open {}", path.display()))?;
        let parsed = ais::parse(BufReader::new(file), Utc::now(), |_| {}, |_| {})
            .with_context(|| format!("failed to read {}", path.display()))?;

        let mut rows: Vec<(LocationReport, u64, u64)> = parsed
            .vessels
            .iter()
            .flat_map(|vessel| {
                vessel
                    .reports
                    .iter()
                    .zip(&vessel.lines)
                    .map(|(report, line)| (*report, *line, vessel.mmsi))
            })
            .collect();
        let valid_rows = rows.len();
        ensure!(valid_rows > 0, "{} has no valid reports", path.display());
        rows.sort_by_key(|(report, line, _)| (report.recorded_at, *line));

        Ok(Self::from_time_ordered(rows, vessel_limit, valid_rows))
    }

    /// Numbers the vessels by first appearance in `rows` (already in time order) and drops
    /// the reports of vessels beyond `vessel_limit`.
    fn from_time_ordered(
        rows: Vec<(LocationReport, u64, u64)>,
        vessel_limit: Option<usize>,
        valid_rows: usize,
    ) -> Self {
        let limit = vessel_limit.unwrap_or(usize::MAX);
        let mut vessels: Vec<u64> = Vec::new();
        let mut index_of = std::collections::HashMap::new();
        let mut reports = Vec::with_capacity(rows.len());
        for (report, _, mmsi) in rows {
            let vessel = match index_of.get(&mmsi) {
                Some(&index) => index,
                None if vessels.len() < limit => {
                    vessels.push(mmsi);
                    index_of.insert(mmsi, vessels.len() - 1);
                    vessels.len() - 1
                }
                None => continue,
            };
            reports.push(TimedReport { vessel, report });
        }
        Self {
            vessels,
            reports,
            valid_rows,
        }
    }

    /// Returns the first `count` reports in time order, or all of them.
    pub fn first(&self, count: usize) -> &[TimedReport] {
        &self.reports[..count.min(self.reports.len())]
    }
}

/// Assigns each vessel to one of `clients` clients, the vessels with the most reports first,
/// each to the client with the fewest reports so far. Returns the client of each vessel.
pub fn assign_vessels(report_counts: &[usize], clients: usize) -> Vec<usize> {
    assert!(clients > 0, "at least one client");
    let mut order: Vec<usize> = (0..report_counts.len()).collect();
    order.sort_by_key(|&vessel| (std::cmp::Reverse(report_counts[vessel]), vessel));

    let mut load = vec![0_usize; clients];
    let mut assignment = vec![0_usize; report_counts.len()];
    for vessel in order {
        let client = (0..clients)
            .min_by_key(|&client| (load[client], client))
            .unwrap_or(0);
        load[client] += report_counts[vessel];
        assignment[vessel] = client;
    }
    assignment
}

/// Reports of one command: up to a batch of one vessel's reports, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub vessel: usize,
    pub reports: Vec<LocationReport>,
}

/// Splits time-ordered `reports` into each client's commands. A vessel's batch is complete
/// once it contains `batch_size` reports and then joins its client's list, so every client
/// sends in the order in which its batches filled up. Partial batches follow at the end.
pub fn plan_batches(
    reports: &[TimedReport],
    vessel_count: usize,
    clients: usize,
    batch_size: usize,
) -> Vec<Vec<Batch>> {
    assert!(batch_size > 0, "batch size must be at least 1");
    let mut counts = vec![0_usize; vessel_count];
    for report in reports {
        counts[report.vessel] += 1;
    }
    let assignment = assign_vessels(&counts, clients);

    let mut plans: Vec<Vec<Batch>> = vec![Vec::new(); clients];
    let mut pending: Vec<Vec<LocationReport>> = vec![Vec::new(); vessel_count];
    // Index of the first report of each vessel's pending batch, to order the partial ones.
    let mut pending_since = vec![usize::MAX; vessel_count];
    for (index, timed) in reports.iter().enumerate() {
        let batch = &mut pending[timed.vessel];
        if batch.is_empty() {
            pending_since[timed.vessel] = index;
        }
        batch.push(timed.report);
        if batch.len() == batch_size {
            plans[assignment[timed.vessel]].push(Batch {
                vessel: timed.vessel,
                reports: std::mem::take(batch),
            });
        }
    }

    let mut partial: Vec<usize> = (0..vessel_count)
        .filter(|&vessel| !pending[vessel].is_empty())
        .collect();
    partial.sort_by_key(|&vessel| pending_since[vessel]);
    for vessel in partial {
        plans[assignment[vessel]].push(Batch {
            vessel,
            reports: std::mem::take(&mut pending[vessel]),
        });
    }
    plans
}

#[derive(Serialize)]
struct LocationBatch<'a> {
    reports: &'a [LocationReport],
}

/// Builds the body of `POST /v1/users/{id}/locations`: a single report for a batch of one,
/// as a client sending one fix would, and `{"reports": [...]}` otherwise.
pub fn locations_body(reports: &[LocationReport]) -> Bytes {
    // serde_json fails only on maps with non-string keys and on failing Serialize impls, and
    // a report has neither.
    let body = match reports {
        [single] => serde_json::to_vec(single),
        _ => serde_json::to_vec(&LocationBatch { reports }),
    };
    Bytes::from(body.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone};

    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_600_000_000 + second, 0).unwrap()
    }

    fn report(vessel: usize, second: i64) -> TimedReport {
        TimedReport {
            vessel,
            report: LocationReport {
                latitude: 40.0,
                longitude: -74.0,
                recorded_at: at(second),
            },
        }
    }

    /// Vessel of each report in a mixed time-ordered stream of three vessels.
    const STREAM: [usize; 12] = [0, 1, 0, 2, 0, 1, 0, 0, 2, 1, 0, 0];

    fn stream() -> Vec<TimedReport> {
        STREAM
            .iter()
            .enumerate()
            .map(|(second, &vessel)| report(vessel, second as i64))
            .collect()
    }

    #[test]
    fn assignment_balances_reports() {
        let assignment = assign_vessels(&[10, 6, 5, 4], 2);
        let mut load = [0, 0];
        for (vessel, client) in assignment.iter().enumerate() {
            load[*client] += [10, 6, 5, 4][vessel];
        }
        assert_eq!(load, [14, 11]);
    }

    #[test]
    fn assignment_with_more_clients_than_vessels() {
        let assignment = assign_vessels(&[3, 2], 8);
        assert_ne!(assignment[0], assignment[1]);
        assert!(assignment.iter().all(|&client| client < 8));
    }

    #[test]
    fn plan_keeps_each_vessel_on_one_client() {
        let plans = plan_batches(&stream(), 3, 2, 2);
        for vessel in 0..3 {
            let clients: std::collections::HashSet<usize> = plans
                .iter()
                .enumerate()
                .filter(|(_, plan)| plan.iter().any(|batch| batch.vessel == vessel))
                .map(|(client, _)| client)
                .collect();
            assert_eq!(
                clients.len(),
                1,
                "vessel {vessel} is on clients {clients:?}"
            );
        }
    }

    #[test]
    fn plan_keeps_each_vessel_in_time_order() {
        let reports = stream();
        let plans = plan_batches(&reports, 3, 2, 3);
        for vessel in 0..3 {
            let sent: Vec<DateTime<Utc>> = plans
                .iter()
                .flatten()
                .filter(|batch| batch.vessel == vessel)
                .flat_map(|batch| batch.reports.iter().map(|report| report.recorded_at))
                .collect();
            let expected: Vec<DateTime<Utc>> = reports
                .iter()
                .filter(|timed| timed.vessel == vessel)
                .map(|timed| timed.report.recorded_at)
                .collect();
            assert_eq!(sent, expected, "vessel {vessel}");
        }
    }

    #[test]
    fn plan_fills_batches_up_to_size() {
        let plans = plan_batches(&stream(), 3, 1, 4);
        let sizes: Vec<(usize, usize)> = plans[0]
            .iter()
            .map(|batch| (batch.vessel, batch.reports.len()))
            .collect();
        // Vessel 0 fills a batch of 4 at its fourth report; the rest are partial batches in
        // the order of their first report.
        assert_eq!(sizes, [(0, 4), (1, 3), (2, 2), (0, 3)]);
    }

    #[test]
    fn vessel_limit_keeps_first_vessels_in_time() {
        let rows = vec![
            (report(0, 0).report, 2, 111),
            (report(0, 1).report, 1, 222),
            (report(0, 2).report, 3, 333),
            (report(0, 3).report, 4, 111),
        ];
        let workload = Workload::from_time_ordered(rows, Some(2), 4);
        assert_eq!(workload.vessels, [111, 222]);
        assert_eq!(workload.reports.len(), 3);
        assert_eq!(workload.valid_rows, 4);
    }

    #[test]
    fn body_of_one_report_is_an_object() {
        let body = locations_body(&[report(0, 0).report]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(value.get("latitude").is_some());
    }

    #[test]
    fn body_of_batch_has_reports() {
        let body = locations_body(&[report(0, 0).report, report(0, 1).report]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["reports"].as_array().map(Vec::len), Some(2));
    }
}
