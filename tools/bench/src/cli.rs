//! The command line: which phases run, their bounds, and where the report goes.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// The AIS week of New York Harbor reports: 172,679 valid reports of 140 vessels.
pub const DEFAULT_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/ais/nyharbor_2020_12_first_week.csv"
);
/// Directory of the release binaries in the workspace's default target directory.
const DEFAULT_BIN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release");

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Phase {
    /// End-to-end lag at a steady rate.
    Lag,
    /// Ingest through the command API with 1, 8 and 64 clients and batch sizes 1 and 100.
    Ingest,
    /// Batched INSERT and COPY into a bare table.
    Physical,
    /// cqrs-es and postgres-es with one command per event.
    Naive,
    /// Replaying the whole history into fresh read models.
    Rebuild,
}

impl Phase {
    /// Returns whether the phase needs the services running.
    pub fn needs_services(self) -> bool {
        matches!(self, Phase::Lag | Phase::Ingest | Phase::Rebuild)
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "meridian-bench",
    about = "Start a Meridian stack of its own and measure ingest, lag, rebuild and memory",
    after_help = "Bounds not given on the command line take the --quick value with --quick, \
                  else the full value shown in brackets."
)]
pub struct Options {
    /// Phases to run, comma-separated; they run in the order lag, ingest, physical, naive,
    /// rebuild.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lag,ingest,physical,naive,rebuild"
    )]
    pub phases: Vec<Phase>,
    /// Use small bounds for a trial run of about two minutes.
    #[arg(long)]
    pub quick: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// AIS CSV file with the columns MMSI, BaseDateTime, LAT and LON.
    #[arg(long, default_value = DEFAULT_FILE)]
    pub file: PathBuf,
    /// Directory with the release binaries of the services and their key tools.
    #[arg(long, env = "MERIDIAN_BENCH_BIN_DIR", default_value = DEFAULT_BIN_DIR)]
    pub bin_dir: PathBuf,
    /// PostgreSQL server, without a database name.
    #[arg(
        long,
        env = "MERIDIAN_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres_url: String,
    /// Directory for the run's keys and logs [default: the system temporary directory].
    #[arg(long, value_name = "PATH")]
    pub work_dir: Option<PathBuf>,

    /// Vessels to use, the first ones by their first report in time [all; quick: 16].
    #[arg(long)]
    pub vessels: Option<usize>,

    /// Client counts of the ingest cases.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub ingest_clients: Vec<usize>,
    /// Batch sizes of the ingest cases (1 to 1000).
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    pub ingest_batches: Vec<usize>,
    /// Reports per ingest case, the first ones in time [all; quick: 3000].
    #[arg(long)]
    pub ingest_reports: Option<usize>,
    /// Time limit of one ingest case, in seconds [30; quick: 5].
    #[arg(long)]
    pub ingest_seconds: Option<u64>,

    /// Connection counts of the batched INSERT reference.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    pub physical_connections: Vec<usize>,
    /// Rows per physical reference case [500000; quick: 20000].
    #[arg(long)]
    pub physical_rows: Option<u64>,
    /// Time limit of one physical reference case, in seconds [15; quick: 5].
    #[arg(long)]
    pub physical_seconds: Option<u64>,
    /// Rows per COPY statement, each committed on its own.
    #[arg(long, default_value_t = 10_000)]
    pub copy_chunk_rows: usize,

    /// Concurrent clients of the naive baseline.
    #[arg(long, default_value_t = 64)]
    pub naive_clients: usize,
    /// Connections of the naive baseline's pool.
    #[arg(long, default_value_t = 16)]
    pub naive_connections: u32,
    /// Reports the naive baseline sends, the first ones in time [all; quick: 3000].
    #[arg(long)]
    pub naive_reports: Option<usize>,
    /// Time limit of the naive baseline, in seconds [30; quick: 5].
    #[arg(long)]
    pub naive_seconds: Option<u64>,

    /// Events per second of the lag phase.
    #[arg(long, default_value_t = 2000.0)]
    pub lag_rate: f64,
    /// Clients of the lag phase.
    #[arg(long, default_value_t = 8)]
    pub lag_clients: usize,
    /// Reports per command in the lag phase.
    #[arg(long, default_value_t = 10)]
    pub lag_batch: usize,
    /// Sending time of the lag phase, in seconds [60; quick: 10].
    #[arg(long)]
    pub lag_seconds: Option<u64>,
    /// Time to wait for the read model after the last lag command, in seconds
    /// [30; quick: 10].
    #[arg(long)]
    pub lag_drain_seconds: Option<u64>,
    /// Milliseconds between two polls of rm_applied.
    #[arg(long, default_value_t = 5)]
    pub lag_poll_ms: u64,

    /// Keep the outbox relay and the projection workers running during the ingest,
    /// physical and naive phases. By default they are paused (SIGSTOP) then and resumed
    /// before the drain, so that the broker and the workers do not take the CPU of the
    /// write path being measured.
    #[arg(long)]
    pub pipeline_during_ingest: bool,

    /// Time to wait for the outbox and the read models to catch up after the load, before
    /// the memory is read and the rebuild starts, in seconds [120; quick: 15].
    #[arg(long)]
    pub drain_seconds: Option<u64>,
    /// Time limit of the rebuild, in seconds [600; quick: 120].
    #[arg(long)]
    pub rebuild_seconds: Option<u64>,
}

/// The bounds of a run after applying `--quick` and the full defaults.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bounds {
    pub vessels: Option<usize>,
    pub ingest_reports: Option<usize>,
    pub ingest_seconds: u64,
    pub physical_rows: u64,
    pub physical_seconds: u64,
    pub naive_reports: Option<usize>,
    pub naive_seconds: u64,
    pub lag_seconds: u64,
    pub lag_drain_seconds: u64,
    pub drain_seconds: u64,
    pub rebuild_seconds: u64,
}

impl Options {
    /// Returns the bounds: each given flag, else its quick or full default.
    pub fn bounds(&self) -> Bounds {
        let pick = |given: Option<u64>, quick: u64, full: u64| {
            given.unwrap_or(if self.quick { quick } else { full })
        };
        let pick_count = |given: Option<usize>, quick: usize| given.or(self.quick.then_some(quick));
        Bounds {
            vessels: pick_count(self.vessels, 16),
            ingest_reports: pick_count(self.ingest_reports, 3000),
            ingest_seconds: pick(self.ingest_seconds, 5, 30),
            physical_rows: pick(self.physical_rows, 20_000, 500_000),
            physical_seconds: pick(self.physical_seconds, 5, 15),
            naive_reports: pick_count(self.naive_reports, 3000),
            naive_seconds: pick(self.naive_seconds, 5, 30),
            lag_seconds: pick(self.lag_seconds, 10, 60),
            lag_drain_seconds: pick(self.lag_drain_seconds, 10, 30),
            drain_seconds: pick(self.drain_seconds, 15, 120),
            rebuild_seconds: pick(self.rebuild_seconds, 120, 600),
        }
    }

    /// Checks the values that clap's types do not.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            (
                "--ingest-clients",
                self.ingest_clients.iter().all(|&n| n > 0),
            ),
            (
                "--ingest-batches",
                self.ingest_batches.iter().all(|&n| (1..=1000).contains(&n)),
            ),
            (
                "--physical-connections",
                self.physical_connections.iter().all(|&n| n > 0),
            ),
            ("--copy-chunk-rows", self.copy_chunk_rows > 0),
            ("--naive-clients", self.naive_clients > 0),
            ("--naive-connections", self.naive_connections > 0),
            (
                "--lag-rate",
                self.lag_rate > 0.0 && self.lag_rate.is_finite(),
            ),
            ("--lag-clients", self.lag_clients > 0),
            ("--lag-batch", (1..=1000).contains(&self.lag_batch)),
            ("--lag-poll-ms", self.lag_poll_ms > 0),
            ("--vessels", self.vessels != Some(0)),
        ];
        for (flag, valid) in positive {
            anyhow::ensure!(
                valid,
                "invalid {flag}: counts must be at least 1 and batch sizes 1 to 1000"
            );
        }
        Ok(())
    }

    /// Returns whether `phase` was selected.
    pub fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_bounds_apply_unless_given() {
        let options =
            Options::try_parse_from(["meridian-bench", "--quick", "--ingest-seconds", "7"])
                .unwrap();
        let bounds = options.bounds();
        assert_eq!(bounds.ingest_seconds, 7);
        assert_eq!(bounds.lag_seconds, 10);
        assert_eq!(bounds.vessels, Some(16));
    }

    #[test]
    fn full_bounds_by_default() {
        let options = Options::try_parse_from(["meridian-bench"]).unwrap();
        let bounds = options.bounds();
        assert_eq!(bounds.ingest_seconds, 30);
        assert_eq!(bounds.vessels, None);
        assert_eq!(options.phases.len(), 5);
    }

    #[test]
    fn zero_clients_are_rejected() {
        let options =
            Options::try_parse_from(["meridian-bench", "--ingest-clients", "0,8"]).unwrap();
        assert!(options.validate().is_err());
    }
}
