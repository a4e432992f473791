//! Imports AIS vessel reports in MarineCadastre's CSV format into Meridian.
//!
//! Each vessel (MMSI) becomes a user, registered through the command service with the email
//! address `vessel-<MMSI>@ais.example`, and each valid row one location report of that user.
//! [`import`] reads the file, sends every vessel's reports in file order, then waits until
//! the query service shows each vessel's last report and checks it.
//!
//! - [`ais`]: reading the CSV, header lookup and row validation.
//! - [`session`]: logging in as the service account and keeping the access token fresh;
//!   the image client and the live-update benchmark use it too.
//! - [`client`]: the HTTP calls to the command and query services, with retries.
//! - [`vessel`]: registering one vessel's user and sending its batches.
//! - [`wait`]: waiting for the query service and checking the latest locations.
//! - [`report`]: the [`ImportReport`] and its printed summary.
//! - [`options`] and [`cli`]: the settings of an import and the command line that sets them.
//!
//! Every request that changes state carries an `Idempotency-Key`, so an interrupted import
//! can simply be run again. Every request to a `/v1` route carries the access token of the
//! account in [`ImportOptions::credentials`], which must be an admin.

pub mod ais;
pub mod cli;
pub mod client;
pub mod console;
pub mod options;
pub mod report;
pub mod session;
pub mod vessel;
pub mod wait;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::stream::{self, StreamExt};

pub use options::{ImportOptions, RetryPolicy};
pub use report::ImportReport;

use crate::ais::ParsedFile;
use crate::client::{ApiError, Meridian};
use crate::console::Console;
use crate::session::{CredentialsError, Session, SessionError};
use crate::vessel::{import_vessel, VesselContext};

/// Exit status for a failed import: a vessel failed, lags or shows the wrong location, or a
/// service could not be reached.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for an invalid command line or an unreadable file.
pub const EXIT_USAGE: u8 = 2;

/// A failure that stops an import before it sends reports.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("invalid {option}: {reason}")]
    InvalidOption {
        option: &'static str,
        reason: String,
    },
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot import {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: ais::ParseError,
    },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("the {service} is not reachable; start it or pass its URL: {source}")]
    Unreachable {
        service: &'static str,
        source: ApiError,
    },
    #[error("logging in failed: {0}")]
    Login(#[source] SessionError),
    #[error("failed to build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("reading the file stopped unexpectedly: {0}")]
    Reader(tokio::task::JoinError),
}

impl ImportError {
    /// Returns the process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidOption { .. }
            | Self::Open { .. }
            | Self::Parse { .. }
            | Self::Credentials(_)
            | Self::Login(SessionError::Rejected { .. }) => EXIT_USAGE,
            Self::Unreachable { .. } | Self::Login(_) | Self::Client(_) | Self::Reader(_) => {
                EXIT_FAILURE
            }
        }
    }
}

/// Imports the file named in `options` into the Meridian it names.
///
/// Skipped rows, rejected batches, failed vessels and verification results are written to
/// stderr as they happen, and they are also returned in the report. An `Err` means that no
/// command was sent.
pub async fn import(options: ImportOptions) -> Result<ImportReport, ImportError> {
    options.validate()?;
    let console = Console::new(options.show_progress);

    let started = Instant::now();
    let parsed = read_file(&options.file, &console).await?;
    let read_time = started.elapsed();

    let http = Meridian::http_client(&options).map_err(ImportError::Client)?;
    Meridian::check_health(&http, &options.command_url, &options.retry, &console)
        .await
        .map_err(|source| ImportError::Unreachable {
            service: "command service",
            source,
        })?;
    Meridian::check_health(&http, &options.query_url, &options.retry, &console)
        .await
        .map_err(|source| ImportError::Unreachable {
            service: "query service",
            source,
        })?;
    let session = login(http.clone(), &options, &console).await?;
    let client = Meridian::new(http, &options, session.clone(), console.clone());

    let sending = Instant::now();
    let mut vessels = send_all(&parsed, &options, &client, &console).await;
    let send_time = sending.elapsed();

    let waiting = Instant::now();
    wait::wait_for_query_service(
        &client,
        &console,
        &mut vessels,
        options.wait_timeout,
        options.concurrency,
    )
    .await;
    let wait_time = waiting.elapsed();

    Ok(ImportReport {
        file: options.file,
        rows_read: parsed.rows_read,
        skipped_rows: parsed.skipped,
        vessels,
        session: session.stats(),
        read_time,
        send_time,
        wait_time,
    })
}

/// Logs in as the account in `options`, retrying connection errors and 5xx responses as
/// for any request. Waits after 429 responses are written to the console.
async fn login(
    http: reqwest::Client,
    options: &ImportOptions,
    console: &Console,
) -> Result<Arc<Session>, ImportError> {
    let notify = {
        let console = console.clone();
        Arc::new(move |line: &str| console.message(line)) as session::Notify
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = Session::login(
            http.clone(),
            &options.command_url,
            options.credentials.clone(),
            options.rate_limit.clone(),
            Some(notify.clone()),
        )
        .await;
        match result {
            Ok(session) => return Ok(Arc::new(session)),
            Err(error) if error.is_transient() && attempt < options.retry.max_attempts => {
                let delay = options.retry.delay(attempt);
                console.message(format_args!(
                    "retrying the login in {:.1} s (attempt {} of {}): {error}",
                    delay.as_secs_f64(),
                    attempt + 1,
                    options.retry.max_attempts
                ));
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(ImportError::Login(error)),
        }
    }
}

/// Reads and validates the whole file on a blocking thread, reporting skipped rows.
async fn read_file(path: &Path, console: &Console) -> Result<ParsedFile, ImportError> {
    let file = File::open(path).map_err(|source| ImportError::Open {
        path: path.to_owned(),
        source,
    })?;
    let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let console = console.clone();
    let path = path.to_owned();

    let task = tokio::task::spawn_blocking(move || {
        let progress = console.bytes_bar("reading", size);
        let parsed = ais::parse(
            BufReader::new(file),
            Utc::now(),
            |row| console.message(row),
            |count| progress.inc(count as u64),
        );
        progress.finish_and_clear();
        parsed.map_err(|source| ImportError::Parse { path, source })
    });
    task.await.map_err(ImportError::Reader)?
}

/// Imports every vessel, `options.concurrency` at a time, and returns their outcomes in the
/// order of the file.
async fn send_all(
    parsed: &ParsedFile,
    options: &ImportOptions,
    client: &Meridian,
    console: &Console,
) -> Vec<vessel::VesselOutcome> {
    let progress = console.count_bar("sending", parsed.valid_rows(), "reports");
    let context = VesselContext {
        client,
        console,
        progress: &progress,
        batch_size: options.batch_size,
        file_sha256: &parsed.sha256,
        lookup_timeout: options.lookup_timeout,
    };

    // Vessels with the most reports start first, so a long one does not start last and
    // keep the import running alone at the end.
    let mut order: Vec<usize> = (0..parsed.vessels.len()).collect();
    order.sort_by_key(|&index| std::cmp::Reverse(parsed.vessels[index].reports.len()));

    let mut outcomes: Vec<(usize, vessel::VesselOutcome)> = stream::iter(order)
        .map(|index| {
            let context = &context;
            async move { (index, import_vessel(&parsed.vessels[index], context).await) }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    progress.finish_and_clear();

    outcomes.sort_by_key(|(index, _)| *index);
    outcomes.into_iter().map(|(_, outcome)| outcome).collect()
}
