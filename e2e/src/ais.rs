//! Builds AIS CSV files the importer has not seen, and computes what Meridian should show for
//! them, independently of the importer's own parsing.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, NaiveDateTime, Utc};

/// One valid report of a vessel, in file order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    pub latitude: f64,
    pub longitude: f64,
    pub recorded_at: DateTime<Utc>,
}

/// What a file should produce: per vessel, its distinct reports and its latest report.
#[derive(Debug, Default)]
pub struct Expected {
    pub reports: HashMap<u64, Vec<Report>>,
    /// Rows written that the importer must skip.
    pub invalid_rows: usize,
}

impl Expected {
    /// Number of location events the file should store: reports minus exact repeats.
    pub fn distinct_reports(&self) -> usize {
        self.reports
            .values()
            .map(|reports| {
                let mut seen = std::collections::HashSet::new();
                reports
                    .iter()
                    .filter(|r| {
                        seen.insert((r.recorded_at, r.latitude.to_bits(), r.longitude.to_bits()))
                    })
                    .count()
            })
            .sum()
    }

    /// Returns the latest report: the greatest timestamp, and on equal timestamps the later row.
    pub fn latest(&self, mmsi: u64) -> Option<Report> {
        self.reports
            .get(&mmsi)?
            .iter()
            .fold(None, |latest, report| match latest {
                Some(current) if report.recorded_at < current.recorded_at => Some(current),
                _ => Some(*report),
            })
    }
}

/// Reads rows `MMSI,BaseDateTime,LON,LAT` of the week file, up to `limit` rows.
pub fn read_week_rows(path: &Path, limit: usize) -> anyhow::Result<Vec<(u64, String, f64, f64)>> {
    let mut reader = csv::Reader::from_path(path)?;
    let mut rows = Vec::new();
    for record in reader.records().take(limit) {
        let record = record?;
        rows.push((
            record[0].parse()?,
            record[1].to_owned(),
            record[2].parse()?,
            record[3].parse()?,
        ));
    }
    Ok(rows)
}

/// Writes `rows` as a MarineCadastre-style CSV with shuffled columns, a vessel name for some
/// vessels, and the quirks of real files mixed in: a repeated report, a second report at an
/// existing timestamp, and invalid rows. Returns what a correct import should show.
pub fn write_unseen_file(
    path: &Path,
    rows: &[(u64, String, f64, f64)],
) -> anyhow::Result<Expected> {
    let mut file = std::fs::File::create(path)?;
    writeln!(file, "VesselName,LAT,BaseDateTime,SOG,MMSI,LON,Heading")?;
    let mut expected = Expected::default();
    let mut write_valid = |file: &mut std::fs::File, mmsi: u64, time: &str, lon: f64, lat: f64| {
        let name = if mmsi.is_multiple_of(3) {
            String::new()
        } else {
            format!("VESSEL {mmsi}")
        };
        writeln!(file, "{name},{lat},{time},0.0,{mmsi},{lon},511")?;
        let naive = NaiveDateTime::parse_from_str(time, "%Y-%m-%dT%H:%M:%S")?;
        expected.reports.entry(mmsi).or_default().push(Report {
            latitude: lat,
            longitude: lon,
            recorded_at: naive.and_utc(),
        });
        anyhow::Ok(())
    };
    let mut invalid = 0;
    for (index, (mmsi, time, lon, lat)) in rows.iter().enumerate() {
        write_valid(&mut file, *mmsi, time, *lon, *lat)?;
        match index % 997 {
            10 => write_valid(&mut file, *mmsi, time, *lon, *lat)?,
            20 => write_valid(&mut file, *mmsi, time, *lon + 0.001, *lat)?,
            30 => {
                writeln!(file, "BAD LAT,95.5,{time},0.0,{mmsi},{lon},511")?;
                invalid += 1;
            }
            40 => {
                writeln!(file, "NO MMSI,{lat},{time},0.0,,{lon},511")?;
                invalid += 1;
            }
            50 => {
                writeln!(file, "BAD TIME,{lat},yesterday,0.0,{mmsi},{lon},511")?;
                invalid += 1;
            }
            60 => {
                writeln!(file, "BAD LON,{lat},{time},0.0,{mmsi},-181.0,511")?;
                invalid += 1;
            }
            _ => {}
        }
    }
    // The last vessel gets a second report at its latest timestamp: that one must win.
    if let Some((mmsi, time, lon, lat)) = rows.last() {
        write_valid(&mut file, *mmsi, time, *lon - 0.002, *lat + 0.002)?;
    }
    expected.invalid_rows = invalid;
    Ok(expected)
}
