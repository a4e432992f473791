//! Measures how many location reports per second the command service stores with sealing of
//! personal data on and off.
//!
//! ```text
//! cargo run --release -p meridian-command-service --example ingest_sealing -- [options]
//! ```
//!
//! Needs PostgreSQL on `MERIDIAN_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`).
//! Each sealing mode gets a scratch database and a master key file of its own, both deleted at
//! the end, also when the run fails. The "off" mode sets `KeySettings::seal_events` to false,
//! as `MERIDIAN_SEAL_EVENTS=false` does: users still get data keys, but personal fields are
//! stored in plaintext.
//!
//! Requests go through the production router with `tower::ServiceExt::oneshot`, so the
//! figures cover HTTP parsing, validation, the aggregate, sealing and the PostgreSQL commit,
//! but no network. No log subscriber is installed, so logging costs nothing here.
//!
//! The reports are real AIS positions: every vessel (MMSI) is one user, registered as
//! `vessel-<mmsi>@ais.example`, and each vessel's reports are sent in file order. The first
//! `--reports` valid rows of the file go to the batch-size-1 case, the next `--reports` rows to
//! the batch-size-100 case, so the second case stores new reports rather than repeats. Every
//! client owns a disjoint set of vessels, so no two commands contend for one aggregate.
//!
//! Registration is timed apart from the cases, because its argon2id password hash makes it
//! far slower than a location command, and is compared with the same number of hashes alone.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use axum::body::{to_bytes, Body, Bytes};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::Router;
use chrono::{SecondsFormat, Utc};
use clap::Parser;
use meridian_auth::keys::{KeyFile, KeyStore};
use meridian_auth::password;
use meridian_command_service::settings::DEFAULT_MAX_CONNECTIONS;
use meridian_command_service::{router, AppState};
use meridian_crypto::testing::TestKeys;
use meridian_domain::location::LocationReport;
use meridian_event_log::testing::TestDatabase;
use meridian_importer::ais;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tower::ServiceExt;

/// Reports per command in each case, in the order the cases run.
const BATCH_SIZES: [usize; 2] = [1, 100];
/// Password of every benchmark user, hashed with argon2id at registration.
const PASSWORD: &str = "ingest benchmark password";
/// The AIS file of the measurements in docs/benchmarks.md: 172,679 reports of 140 vessels.
const DEFAULT_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/ais/nyharbor_2020_12_first_week.csv"
);
/// Largest response body read back, far above any response of these routes.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Debug, Parser)]
#[command(about = "Measure ingest throughput of location reports with sealing on and off")]
struct Options {
    /// Number of concurrent clients. Each owns a disjoint set of vessels.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    clients: u16,
    /// Reports per case (one case per batch size and sealing mode).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    reports: u32,
    /// Wall-clock limit of one case, and of the registration of one mode, in seconds. A case
    /// that reaches it stops sending and is measured over what it stored.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    max_seconds: u64,
    /// AIS CSV file with the columns MMSI, BaseDateTime, LON and LAT.
    #[arg(long, default_value = DEFAULT_FILE)]
    file: PathBuf,
}

/// The reports of one vessel that one case sends, in file order.
struct VesselReports {
    mmsi: u64,
    reports: Vec<LocationReport>,
}

/// The input of every mode: the vessels to register and the reports of each case.
struct Workload {
    vessels: Vec<ais::Vessel>,
    /// One entry per batch size, parallel to [`BATCH_SIZES`].
    cases: Vec<Vec<VesselReports>>,
}

#[derive(Debug, Clone, Copy)]
enum Sealing {
    On,
    Off,
}

impl Sealing {
    fn label(self) -> &'static str {
        match self {
            Sealing::On => "on",
            Sealing::Off => "off",
        }
    }
}

struct Registration {
    users: usize,
    elapsed: Duration,
    /// Time the same number of argon2id hashes takes alone, with the same concurrency.
    hashing: Duration,
}

struct CaseResult {
    batch_size: usize,
    commands: usize,
    reports_sent: usize,
    events_stored: i64,
    elapsed: Duration,
    /// Latency of every command, sorted.
    latencies: Vec<Duration>,
    /// Whether the case stopped at `--max-seconds` before sending every report.
    capped: bool,
}

impl CaseResult {
    fn reports_per_second(&self) -> f64 {
        self.events_stored as f64 / self.elapsed.as_secs_f64()
    }

    fn commands_per_second(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }
}

struct ModeResult {
    sealing: Sealing,
    registration: Registration,
    cases: Vec<CaseResult>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    let workload = Arc::new(load_workload(&options)?);

    let mut results = Vec::new();
    for sealing in [Sealing::On, Sealing::Off] {
        results.push(measure_mode(sealing, workload.clone(), &options).await?);
    }
    print_results(&results);
    Ok(())
}

/// Reads the AIS file and splits its first valid rows, in file order, into one slice per case.
fn load_workload(options: &Options) -> anyhow::Result<Workload> {
    let file = File::open(&options.file)
        .with_context(|| format!("failed to open {}", options.file.display()))?;
    let parsed = ais::parse(file, Utc::now(), |_| {}, |_| {})
        .with_context(|| format!("failed to read {}", options.file.display()))?;
    let per_case = options.reports as usize;
    let needed = per_case * BATCH_SIZES.len();
    let valid = parsed.valid_rows() as usize;
    ensure!(
        needed <= valid,
        "--reports {per_case} needs {needed} valid reports for {} cases, but {} has {valid}; \
         pass --reports {} or less",
        BATCH_SIZES.len(),
        options.file.display(),
        valid / BATCH_SIZES.len(),
    );
    eprintln!(
        "read {} rows of {}: {valid} valid, {} skipped, {} vessels",
        parsed.rows_read,
        options.file.display(),
        parsed.skipped.len(),
        parsed.vessels.len(),
    );

    // Every valid row as (line, vessel, report), back in file order.
    let mut rows: Vec<(u64, usize, usize)> = parsed
        .vessels
        .iter()
        .enumerate()
        .flat_map(|(vessel, entry)| {
            entry
                .lines
                .iter()
                .enumerate()
                .map(move |(report, line)| (*line, vessel, report))
        })
        .collect();
    rows.sort_unstable();

    let cases = rows[..needed]
        .chunks(per_case)
        .map(|case_rows| group_by_vessel(&parsed.vessels, case_rows))
        .collect();
    Ok(Workload {
        vessels: parsed.vessels,
        cases,
    })
}

/// Groups rows (in file order) by vessel, keeping each vessel's reports in file order.
fn group_by_vessel(vessels: &[ais::Vessel], rows: &[(u64, usize, usize)]) -> Vec<VesselReports> {
    let mut grouped: Vec<VesselReports> = Vec::new();
    let mut position_of: HashMap<usize, usize> = HashMap::new();
    for &(_, vessel, report) in rows {
        let position = *position_of.entry(vessel).or_insert_with(|| {
            grouped.push(VesselReports {
                mmsi: vessels[vessel].mmsi,
                reports: Vec::new(),
            });
            grouped.len() - 1
        });
        grouped[position]
            .reports
            .push(vessels[vessel].reports[report]);
    }
    grouped
}

/// Runs one sealing mode on a scratch database, which is dropped whether the mode succeeds,
/// fails, panics or is interrupted with Ctrl-C.
async fn measure_mode(
    sealing: Sealing,
    workload: Arc<Workload>,
    options: &Options,
) -> anyhow::Result<ModeResult> {
    let database = TestDatabase::create().await.context(
        "failed to create a scratch database; start PostgreSQL with `make up` or set \
             MERIDIAN_TEST_POSTGRES_URL",
    )?;
    let mut keys = TestKeys::create().context("failed to create a master key file")?;
    keys.settings.seal_events = matches!(sealing, Sealing::On);

    let url = database.url.clone();
    let clients = usize::from(options.clients);
    let max_time = Duration::from_secs(options.max_seconds);
    let mut task =
        tokio::spawn(
            async move { run_mode(sealing, &url, &keys, &workload, clients, max_time).await },
        );
    let result = tokio::select! {
        joined = &mut task => joined
            .context("the benchmark task panicked")
            .and_then(|result| result),
        _ = tokio::signal::ctrl_c() => {
            task.abort();
            Err(anyhow::anyhow!("interrupted by Ctrl-C"))
        }
    };

    let dropped = database
        .drop_database()
        .await
        .context("failed to drop the scratch database");
    let result = result.with_context(|| format!("sealing {} failed", sealing.label()))?;
    dropped?;
    Ok(result)
}

async fn run_mode(
    sealing: Sealing,
    url: &str,
    keys: &TestKeys,
    workload: &Workload,
    clients: usize,
    max_time: Duration,
) -> anyhow::Result<ModeResult> {
    // The command service's default pool size, rather than the test helper's smaller one.
    let pool = meridian_event_log::database::connect(url, DEFAULT_MAX_CONNECTIONS).await?;
    let cipher = keys.event_cipher(pool.clone()).await?;
    // Every request acts as an admin, as the importer does; the limits are set out of reach.
    let auth = meridian_auth::Auth::with_keys(
        &meridian_auth::AuthSettings {
            limits: meridian_auth::Limits::generous(),
            ..meridian_auth::AuthSettings::from_vars(|_| None)?
        },
        Arc::new(KeyStore::fixed(&KeyFile::generate())?),
        pool.clone(),
        &meridian_event_log::settings::var_or("MERIDIAN_REDIS_URL", "redis://127.0.0.1:6379/"),
        &format!("bench.{}.", uuid::Uuid::new_v4().simple()),
    )?;
    let token = auth
        .tokens()
        .issue(
            &uuid::Uuid::new_v4().to_string(),
            meridian_auth::Role::Admin,
        )?
        .token;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}"))?;
    let app = router(AppState::new(pool.clone(), cipher, auth)).layer(
        axum::middleware::map_request(move |mut request: Request<Body>| {
            let bearer = bearer.clone();
            async move {
                request.headers_mut().insert(AUTHORIZATION, bearer);
                request
            }
        }),
    );

    eprintln!(
        "sealing {}: registering {} users",
        sealing.label(),
        workload.vessels.len()
    );
    let (user_ids, registration) =
        register_users(&app, &workload.vessels, clients, max_time).await?;

    let mut cases = Vec::new();
    for (batch_size, vessels) in BATCH_SIZES.into_iter().zip(&workload.cases) {
        eprintln!("sealing {}: batch size {batch_size}", sealing.label());
        let plan = plan_clients(vessels, &user_ids, batch_size, clients);
        cases.push(run_case(&app, &pool, plan, batch_size, max_time).await?);
    }
    pool.close().await;
    Ok(ModeResult {
        sealing,
        registration,
        cases,
    })
}

/// Registers one user per vessel with `clients` concurrent clients and returns the user id of
/// each MMSI.
async fn register_users(
    app: &Router,
    vessels: &[ais::Vessel],
    clients: usize,
    max_time: Duration,
) -> anyhow::Result<(HashMap<u64, String>, Registration)> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let app = app.clone();
        let mine: Vec<(u64, Bytes)> = vessels
            .iter()
            .skip(client)
            .step_by(clients)
            .map(|vessel| (vessel.mmsi, registration_body(vessel)))
            .collect();
        tasks.spawn(async move {
            let mut ids = Vec::with_capacity(mine.len());
            for (mmsi, body) in mine {
                let response = send(&app, "/v1/users", body, StatusCode::CREATED).await?;
                let id = response["user_id"]
                    .as_str()
                    .context("registration response has no user_id")?;
                ids.push((mmsi, id.to_owned()));
            }
            anyhow::Ok(ids)
        });
    }

    let joined = tokio::time::timeout(max_time, tasks.join_all())
        .await
        .with_context(|| {
            format!(
                "registering {} users took longer than {} s",
                vessels.len(),
                max_time.as_secs()
            )
        })?;
    let elapsed = start.elapsed();
    let mut user_ids = HashMap::new();
    for ids in joined {
        user_ids.extend(ids?);
    }
    let registration = Registration {
        users: user_ids.len(),
        elapsed,
        hashing: time_hashing(user_ids.len(), clients, max_time).await?,
    };
    Ok((user_ids, registration))
}

/// Hashes the benchmark password `count` times with `clients` concurrent clients, as
/// registration does, and returns the elapsed time.
async fn time_hashing(
    count: usize,
    clients: usize,
    max_time: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let hashes = (client..count).step_by(clients).count();
        tasks.spawn(async move {
            for _ in 0..hashes {
                password::hash(PASSWORD.to_owned()).await?;
            }
            anyhow::Ok(())
        });
    }
    let joined = tokio::time::timeout(max_time, tasks.join_all())
        .await
        .with_context(|| {
            format!(
                "{count} argon2id hashes took longer than {} s",
                max_time.as_secs()
            )
        })?;
    joined.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(start.elapsed())
}

fn registration_body(vessel: &ais::Vessel) -> Bytes {
    let body = json!({
        "email": vessel.email(),
        "name": vessel.user_name(),
        "password": PASSWORD,
    });
    Bytes::from(body.to_string())
}

/// One command: the path of the user's locations and a request body of up to a batch of
/// reports.
struct Command {
    path: String,
    body: Bytes,
    reports: usize,
}

/// Spreads the vessels over `clients` clients, each vessel to the client with the fewest
/// reports so far, and builds each client's commands in order. Bodies are built before the
/// clock starts, so client-side serialization is not measured.
fn plan_clients(
    vessels: &[VesselReports],
    user_ids: &HashMap<u64, String>,
    batch_size: usize,
    clients: usize,
) -> Vec<Vec<Command>> {
    let mut by_size: Vec<&VesselReports> = vessels.iter().collect();
    by_size.sort_by_key(|vessel| std::cmp::Reverse(vessel.reports.len()));

    let mut plans: Vec<Vec<Command>> = (0..clients).map(|_| Vec::new()).collect();
    let mut load = vec![0_usize; clients];
    for vessel in by_size {
        let client = (0..clients)
            .min_by_key(|&client| load[client])
            .expect("at least one client");
        load[client] += vessel.reports.len();
        let path = format!("/v1/users/{}/locations", user_ids[&vessel.mmsi]);
        for chunk in vessel.reports.chunks(batch_size) {
            plans[client].push(Command {
                path: path.clone(),
                body: locations_body(chunk),
                reports: chunk.len(),
            });
        }
    }
    plans
}

/// Builds a single report for a batch of one, as a client sending one fix would, and a
/// `{"reports": [...]}` batch otherwise.
fn locations_body(reports: &[LocationReport]) -> Bytes {
    let mut items: Vec<Value> = reports
        .iter()
        .map(|report| {
            json!({
                "latitude": report.latitude,
                "longitude": report.longitude,
                "recorded_at": report.recorded_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            })
        })
        .collect();
    let body = if items.len() == 1 {
        items.remove(0)
    } else {
        json!({ "reports": items })
    };
    Bytes::from(body.to_string())
}

/// Runs every client's commands concurrently until all are sent or `max_time` has passed,
/// then counts the events stored.
async fn run_case(
    app: &Router,
    pool: &PgPool,
    plans: Vec<Vec<Command>>,
    batch_size: usize,
    max_time: Duration,
) -> anyhow::Result<CaseResult> {
    let planned: usize = plans.iter().map(Vec::len).sum();
    let before = location_events(pool).await?;

    let start = Instant::now();
    let deadline = start + max_time;
    let mut tasks = JoinSet::new();
    for commands in plans {
        let app = app.clone();
        tasks.spawn(async move { run_client(&app, commands, deadline).await });
    }
    let mut commands = 0;
    let mut reports_sent = 0;
    let mut latencies = Vec::with_capacity(planned);
    for client in tasks.join_all().await {
        let client = client?;
        commands += client.latencies.len();
        reports_sent += client.reports_sent;
        latencies.extend(client.latencies);
    }
    let elapsed = start.elapsed();

    let events_stored = location_events(pool).await? - before;
    latencies.sort_unstable();
    Ok(CaseResult {
        batch_size,
        commands,
        reports_sent,
        events_stored,
        elapsed,
        latencies,
        capped: commands < planned,
    })
}

struct ClientResult {
    reports_sent: usize,
    latencies: Vec<Duration>,
}

/// Sends `commands` one after another and stops early at `deadline`. A command in flight at
/// the deadline still completes.
async fn run_client(
    app: &Router,
    commands: Vec<Command>,
    deadline: Instant,
) -> anyhow::Result<ClientResult> {
    let mut result = ClientResult {
        reports_sent: 0,
        latencies: Vec::with_capacity(commands.len()),
    };
    for command in commands {
        if Instant::now() >= deadline {
            break;
        }
        let sent = Instant::now();
        send(app, &command.path, command.body, StatusCode::OK).await?;
        result.latencies.push(sent.elapsed());
        result.reports_sent += command.reports;
    }
    Ok(result)
}

/// Posts a JSON body through the router, reads the whole response, and fails unless the
/// status is `expected`.
async fn send(
    app: &Router,
    path: &str,
    body: Bytes,
    expected: StatusCode,
) -> anyhow::Result<Value> {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .context("failed to build a request")?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status();
    let bytes = to_bytes(response.into_body(), MAX_RESPONSE_BYTES)
        .await
        .with_context(|| format!("failed to read the response of POST {path}"))?;
    if status != expected {
        bail!(
            "POST {path} returned {status}, expected {expected}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes)
        .with_context(|| format!("the response of POST {path} is not JSON"))
}

async fn location_events(pool: &PgPool) -> anyhow::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'LocationTrack'")
        .fetch_one(pool)
        .await
        .context("failed to count the stored location events")
}

fn print_results(results: &[ModeResult]) {
    println!("## Registration, and the same number of argon2id hashes alone\n");
    println!("| sealing | users | elapsed s | users/s | hashes/s alone |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for mode in results {
        let registration = &mode.registration;
        let users = registration.users as f64;
        println!(
            "| {} | {} | {:.2} | {:.1} | {:.1} |",
            mode.sealing.label(),
            registration.users,
            registration.elapsed.as_secs_f64(),
            users / registration.elapsed.as_secs_f64(),
            users / registration.hashing.as_secs_f64(),
        );
    }

    println!("\n## Location reports\n");
    println!(
        "| sealing | batch size | commands | reports sent | events stored | elapsed s | \
         reports/s | commands/s | p50 | p99 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for mode in results {
        for case in &mode.cases {
            print_case(mode.sealing, case);
        }
    }

    println!("\n## Sealed/plain ratio of reports/s\n");
    println!("| batch size | sealed reports/s | plain reports/s | ratio |");
    println!("| ---: | ---: | ---: | ---: |");
    let [sealed, plain] = results else {
        return;
    };
    for (on, off) in sealed.cases.iter().zip(&plain.cases) {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} |",
            on.batch_size,
            on.reports_per_second(),
            off.reports_per_second(),
            on.reports_per_second() / off.reports_per_second(),
        );
    }
}

fn print_case(sealing: Sealing, case: &CaseResult) {
    let capped = if case.capped { " (time limit)" } else { "" };
    println!(
        "| {} | {} | {} | {} | {} | {:.2}{capped} | {:.0} | {:.0} | {} | {} |",
        sealing.label(),
        case.batch_size,
        case.commands,
        case.reports_sent,
        case.events_stored,
        case.elapsed.as_secs_f64(),
        case.reports_per_second(),
        case.commands_per_second(),
        format_latency(percentile(&case.latencies, 50)),
        format_latency(percentile(&case.latencies, 99)),
    );
}

/// Returns the nearest-rank percentile of sorted `latencies`, or zero when there are none.
fn percentile(latencies: &[Duration], percent: usize) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    let rank = (latencies.len() * percent).div_ceil(100).max(1);
    latencies[rank - 1]
}

fn format_latency(latency: Duration) -> String {
    format!("{:.2} ms", latency.as_secs_f64() * 1000.0)
}
