//! Opens the live map in headless Chromium and logs in through its form as the admin. Then
//! imports AIS reports and checks that the page shows every vessel and every location
//! update, and saves a screenshot of the page.
//!
//! Needs Node.js, the packages of e2e/js (`npm ci` there; `make test` runs it) and Debian's
//! Chromium at /usr/bin/chromium (`infra/stack.sh install` installs it as root).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use meridian_e2e::ais::{read_week_rows, write_unseen_file, Report};
use meridian_e2e::{target_dir, Platform, ADMIN_EMAIL};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

const WEEK_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/ais/nyharbor_2020_12_first_week.csv"
);
const JS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/js");
const CHROMIUM: &str = "/usr/bin/chromium";
/// Rows read from the head of the week file, which is sorted by vessel: about 30 vessels.
const ROWS_READ: usize = 6_000;
/// Reports kept per vessel, spread over its rows so that each track is long enough to show.
const REPORTS_PER_VESSEL: usize = 20;
/// Bound of each wait of the browser script.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_imported_reports() -> anyhow::Result<()> {
    check_prerequisites()?;
    let mut platform = Platform::start("dashboard_shows_imported_reports").await?;
    let directory = tempdir()?;
    let file = directory.join("unseen.csv");
    let rows = spread_reports(read_week_rows(WEEK_FILE.as_ref(), ROWS_READ)?);
    let expected = write_unseen_file(&file, &rows)?;
    let screenshot = target_dir()?
        .parent()
        .context("target directory has no parent")?
        .join("e2e-artifacts")
        .join("dashboard.png");

    let mut browser = BrowserCheck::start(
        &platform.query_url,
        (ADMIN_EMAIL, &platform.secrets.admin_password),
        expected.reports.len(),
        expected.distinct_reports(),
        &screenshot,
    )?;
    let login_error = browser.wait_until_ready().await?;
    assert!(
        login_error.contains("wrong"),
        "the page's error for a wrong password: {login_error}"
    );

    let report = import(&platform, &file).await?;
    assert!(report.failed_vessels().is_empty(), "failed vessels");
    let (stdout, stderr, status) = browser.finish().await?;
    assert!(
        status.success(),
        "the browser check failed ({status}):\n{stderr}\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("screenshot {}", screenshot.display())),
        "no screenshot reported:\n{stdout}"
    );
    assert!(screenshot.is_file(), "{} is missing", screenshot.display());
    println!("dashboard screenshot saved to {}", screenshot.display());

    let listed = listed_users(&stdout)?;
    assert_eq!(
        listed.len(),
        expected.reports.len(),
        "rows of the user list"
    );
    for (mmsi, reports) in &expected.reports {
        let suffix = format!(" {mmsi}");
        let Some(row) = listed.iter().find(|row| row.name.ends_with(&suffix)) else {
            panic!("vessel {mmsi} is not in the user list: {listed:?}");
        };
        let latest = expected.latest(*mmsi).expect("vessel has reports");
        assert_eq!(
            row.last_report,
            latest.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            "last report of vessel {mmsi}"
        );
        assert_eq!(
            row.positions,
            distinct_reports(reports),
            "positions of vessel {mmsi}"
        );
    }

    platform.wait_caught_up(Duration::from_secs(300)).await?;
    platform.shut_down().await?;
    std::fs::remove_dir_all(directory)?;
    Ok(())
}

/// One row of the dashboard's user list, as e2e/js/dashboard.mjs prints it.
#[derive(Debug, serde::Deserialize)]
struct ListedUser {
    name: String,
    last_report: String,
    positions: usize,
}

/// Parses the `rows JSON` line of the browser check's output.
fn listed_users(stdout: &str) -> anyhow::Result<Vec<ListedUser>> {
    let json = stdout
        .lines()
        .find_map(|line| line.strip_prefix("rows "))
        .with_context(|| format!("no user list in the browser check's output:\n{stdout}"))?;
    serde_json::from_str(json).context("the user list is not the expected JSON")
}

/// Counts the reports of one vessel that are not exact repeats, as the command service
/// stores them.
fn distinct_reports(reports: &[Report]) -> usize {
    let mut seen = HashSet::new();
    reports
        .iter()
        .filter(|report| {
            seen.insert((
                report.recorded_at,
                report.latitude.to_bits(),
                report.longitude.to_bits(),
            ))
        })
        .count()
}

/// Fails with the command to run when Chromium or the Node packages are missing.
fn check_prerequisites() -> anyhow::Result<()> {
    if !Path::new(CHROMIUM).is_file() {
        bail!("{CHROMIUM} is missing; install it with `infra/stack.sh install` as root");
    }
    let playwright = Path::new(JS_DIR).join("node_modules/playwright-core");
    if !playwright.is_dir() {
        bail!(
            "{} is missing; run `npm ci --no-audit --no-fund` in {JS_DIR}",
            playwright.display()
        );
    }
    Ok(())
}

/// Keeps `REPORTS_PER_VESSEL` rows of each vessel, evenly spaced over its rows in file
/// order.
fn spread_reports(rows: Vec<(u64, String, f64, f64)>) -> Vec<(u64, String, f64, f64)> {
    let mut kept = Vec::new();
    for vessel in rows.chunk_by(|a, b| a.0 == b.0) {
        let step = vessel.len().div_ceil(REPORTS_PER_VESSEL).max(1);
        kept.extend(vessel.iter().step_by(step).cloned());
    }
    kept
}

/// The running e2e/js/dashboard.mjs: its stdout line by line, and its stderr collected by a
/// task so that the pipe never fills.
struct BrowserCheck {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
}

impl BrowserCheck {
    /// Starts the script, which opens the page, logs in with `login` (email and password)
    /// and waits for the expected counts.
    fn start(
        query_url: &str,
        login: (&str, &str),
        users: usize,
        updates: usize,
        screenshot: &Path,
    ) -> anyhow::Result<Self> {
        let mut child = Command::new("node")
            .arg("dashboard.mjs")
            .args(["--url", &format!("{query_url}/")])
            .args(["--email", login.0])
            .env("MERIDIAN_DASHBOARD_PASSWORD", login.1)
            .args(["--users", &users.to_string()])
            .args(["--updates", &updates.to_string()])
            .arg("--screenshot")
            .arg(screenshot)
            .args(["--timeout-secs", &PAGE_TIMEOUT.as_secs().to_string()])
            .args(["--chromium", CHROMIUM])
            .current_dir(JS_DIR)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("failed to start node; is Node.js installed?")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut stderr = child.stderr.take().context("no stderr pipe")?;
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            // A read error keeps the text read so far, which is all a failure message needs.
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok(Self {
            child,
            stdout: BufReader::new(stdout).lines(),
            stderr,
        })
    }

    /// Waits until the script prints `ready`, meaning that the page has logged in and
    /// subscribed, and returns the login error it printed for a wrong password.
    async fn wait_until_ready(&mut self) -> anyhow::Result<String> {
        let stdout = &mut self.stdout;
        let ready = async {
            let mut login_error = String::new();
            while let Some(line) = stdout.next_line().await? {
                if let Some(message) = line.strip_prefix("login error ") {
                    login_error = message.to_owned();
                }
                if line == "ready" {
                    return anyhow::Ok(Some(login_error));
                }
            }
            anyhow::Ok(None)
        };
        // The script bounds its own waits by PAGE_TIMEOUT; this one also covers its start
        // and its two logins.
        match tokio::time::timeout(PAGE_TIMEOUT * 3, ready).await {
            Ok(Ok(Some(login_error))) => Ok(login_error),
            Ok(Ok(None)) => {
                let stderr = (&mut self.stderr).await.unwrap_or_default();
                bail!("the browser check exited before the page subscribed:\n{stderr}")
            }
            Ok(Err(error)) => Err(error.context("failed to read the browser check's output")),
            Err(_) => bail!("the page did not subscribe within {:?}", PAGE_TIMEOUT * 3),
        }
    }

    /// Waits for the script to exit and returns the rest of its stdout, its stderr and its
    /// exit status.
    async fn finish(mut self) -> anyhow::Result<(String, String, ExitStatus)> {
        let finished = async {
            let mut stdout = String::new();
            while let Some(line) = self.stdout.next_line().await? {
                stdout.push_str(&line);
                stdout.push('\n');
            }
            let status = self.child.wait().await?;
            let stderr = self.stderr.await.unwrap_or_default();
            anyhow::Ok((stdout, stderr, status))
        };
        // The script waits for the counts at most five times PAGE_TIMEOUT in all.
        tokio::time::timeout(PAGE_TIMEOUT * 6, finished)
            .await
            .context("the browser check did not exit in time")?
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let directory = std::env::temp_dir().join(format!("meridian-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}

async fn import(
    platform: &Platform,
    file: &Path,
) -> anyhow::Result<meridian_importer::ImportReport> {
    let mut options = platform.import_options(file);
    options.wait_timeout = Duration::from_secs(300);
    Ok(meridian_importer::import(options).await?)
}
