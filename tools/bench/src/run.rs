//! One run: set up, the selected phases in order, clean up, report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use crate::cli::{Bounds, Options, Phase};
use crate::client::BenchClient;
use crate::ingest;
use crate::lag::{self, LagBounds};
use crate::machine::{self, Machine};
use crate::naive;
use crate::physical::{self, PhysicalBounds};
use crate::rebuild;
use crate::report::{Drain, Registration, Report, ServiceMemory, WorkloadSummary};
use crate::stack::{Stack, StackSettings, ADMIN_EMAIL};
use crate::workload::{plan_batches, Workload};

/// Time between two reads of `/v1/stats` while waiting for the pipeline to drain.
const DRAIN_POLL: Duration = Duration::from_millis(500);

/// Runs the phases that `options` selects, prints the report on stdout, writes the JSON
/// file, and returns the report. Services, databases and key files are removed whether the
/// phases succeed, fail or are interrupted with Ctrl-C.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    options.validate()?;
    let bounds = options.bounds();
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut report = Report {
        machine: Some(Machine::describe(&repository)),
        bounds: Some(bounds.clone()),
        ..Report::default()
    };

    let workload = Workload::load(&options.file, bounds.vessels)?;
    // The random part keeps two runs in one process, such as two tests, apart.
    let run_name = format!(
        "meridian_bench_{}_{}",
        std::process::id(),
        &Uuid::new_v4().simple().to_string()[..6]
    );
    report.run_name = run_name.clone();
    let run_dir = options
        .work_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(run_name.replace('_', "-"));
    // The services run in the run directory, so a relative path would not reach them.
    let bin_dir = std::fs::canonicalize(&options.bin_dir).with_context(|| {
        format!(
            "the binary directory {} does not exist; build with `cargo build --release \
             --workspace --bins` or pass --bin-dir",
            options.bin_dir.display()
        )
    })?;
    let settings = StackSettings {
        bin_dir,
        postgres_url: options.postgres_url.clone(),
        run_name,
        run_dir,
    };
    report.workload = Some(WorkloadSummary {
        file: options.file.display().to_string(),
        valid_rows: workload.valid_rows,
        vessels: workload.vessels.len(),
        reports_used: workload.reports.len(),
    });

    let needs_services = options.phases.iter().any(|phase| phase.needs_services());
    let mut stack = if needs_services {
        eprintln!("starting the services from {}", settings.bin_dir.display());
        let stack = Stack::start(settings.clone()).await?;
        report.logs = Some(settings.logs_dir().display().to_string());
        Some(stack)
    } else {
        meridian_event_log::database::connect(&settings.database_url(), 1)
            .await?
            .close()
            .await;
        None
    };

    let phases = async {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&settings.database_url())
            .await
            .context("failed to connect to the benchmark database")?;
        let result = run_phases(
            &options,
            &bounds,
            &workload,
            &settings,
            stack.as_mut(),
            &pool,
            &mut report,
        )
        .await;
        pool.close().await;
        result
    };
    let result = tokio::select! {
        result = phases => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted by Ctrl-C")),
    };
    if let Err(error) = result {
        report.problems.push(format!("the run stopped: {error:#}"));
    }

    let cleanup = match stack {
        Some(stack) => stack.shutdown().await,
        None => meridian_event_log::database::drop_database(&settings.database_url()).await,
    };
    if let Err(error) = cleanup {
        report
            .problems
            .push(format!("cleaning up failed: {error:#}"));
    }

    report.load_average_end = machine::load_average();
    report.evaluate_goals();
    print!("{}", report.render());
    if let Some(path) = &options.json {
        write_json(path, &report)?;
    }
    Ok(report)
}

async fn run_phases(
    options: &Options,
    bounds: &Bounds,
    workload: &Workload,
    settings: &StackSettings,
    stack: Option<&mut Stack>,
    pool: &PgPool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let client = match stack.as_deref() {
        Some(stack) => {
            record_memory(stack, report, MemoryMoment::Idle);
            let client = BenchClient::login(
                &stack.command_url,
                &stack.query_url,
                ADMIN_EMAIL,
                &settings.admin_password_file(),
                options.ingest_clients.iter().copied().max().unwrap_or(1),
            )
            .await?;
            Some(client)
        }
        None => None,
    };
    let users = match &client {
        Some(client) => register_all(client, options, workload, report).await?,
        None => Users::default(),
    };
    if let Some(stack) = stack.as_deref() {
        record_memory(stack, report, MemoryMoment::AfterRegistration);
    }

    if let (true, Some(client)) = (options.runs(Phase::Lag), &client) {
        eprintln!(
            "lag: {} events/s for {} s",
            options.lag_rate, bounds.lag_seconds
        );
        let lag_bounds = LagBounds {
            events_per_second: options.lag_rate,
            clients: options.lag_clients,
            batch_size: options.lag_batch,
            send_time: Duration::from_secs(bounds.lag_seconds),
            drain_time: Duration::from_secs(bounds.lag_drain_seconds),
            poll_interval: Duration::from_millis(options.lag_poll_ms),
        };
        let plans = plan_batches(
            lag_reports(options, bounds, workload),
            workload.vessels.len(),
            options.lag_clients,
            options.lag_batch,
        );
        match lag::run(client, pool, &users.lag, plans, &lag_bounds).await {
            Ok(result) => {
                if result.commands_failed > 0 {
                    report.problems.push(format!(
                        "lag: {} commands failed, first: {}",
                        result.commands_failed,
                        result.first_failure.as_deref().unwrap_or("-")
                    ));
                }
                report.lag = Some(result);
            }
            Err(error) => report.problems.push(format!("lag failed: {error:#}")),
        }
    }

    let mut stack = stack;
    let pause = !options.pipeline_during_ingest
        && [Phase::Ingest, Phase::Physical, Phase::Naive]
            .into_iter()
            .any(|phase| options.runs(phase));
    if let (true, Some(stack)) = (pause, stack.as_deref_mut()) {
        eprintln!("pausing the outbox relay and the projection workers");
        pause_pipeline(stack, true)?;
    }
    report.pipeline_paused_during_ingest = pause && stack.is_some();

    if let (true, Some(client)) = (options.runs(Phase::Ingest), &client) {
        run_ingest(client, pool, options, bounds, workload, &users, report).await;
    }

    if options.runs(Phase::Physical) {
        eprintln!("physical reference");
        let physical_bounds = PhysicalBounds {
            connections: options.physical_connections.clone(),
            rows: bounds.physical_rows,
            time_limit: Duration::from_secs(bounds.physical_seconds),
            copy_chunk_rows: options.copy_chunk_rows,
        };
        match physical::run(pool, &settings.database_url(), &physical_bounds).await {
            Ok(result) => report.physical = Some(result),
            Err(error) => report
                .problems
                .push(format!("physical reference failed: {error:#}")),
        }
    }

    if options.runs(Phase::Naive) {
        eprintln!("naive baseline");
        let reports = workload.first(bounds.naive_reports.unwrap_or(usize::MAX));
        let plans = plan_batches(reports, workload.vessels.len(), options.naive_clients, 1);
        let url = format!("{}_naive", settings.database_url());
        let time_limit = Duration::from_secs(bounds.naive_seconds);
        match naive::run(&url, plans, options.naive_connections, time_limit).await {
            Ok(result) => {
                if result.commands_failed > 0 {
                    report.problems.push(format!(
                        "naive: {} commands failed, first: {}",
                        result.commands_failed,
                        result.first_failure.as_deref().unwrap_or("-")
                    ));
                }
                report.naive = Some(result);
            }
            Err(error) => report
                .problems
                .push(format!("naive baseline failed: {error:#}")),
        }
    }

    let (Some(stack), Some(client)) = (stack, &client) else {
        return Ok(());
    };
    if pause {
        eprintln!("resuming the outbox relay and the projection workers");
        pause_pipeline(stack, false)?;
    }
    eprintln!(
        "waiting up to {} s for the pipeline to drain",
        bounds.drain_seconds
    );
    match wait_for_drain(client, Duration::from_secs(bounds.drain_seconds)).await {
        Ok(drain) => report.drain = Some(drain),
        Err(error) => report
            .problems
            .push(format!("reading /v1/stats failed: {error:#}")),
    }
    record_memory(stack, report, MemoryMoment::AfterLoad);
    record_memory(stack, report, MemoryMoment::AtEnd);

    if options.runs(Phase::Rebuild) {
        eprintln!("rebuild");
        stack.stop("projection-workers").await?;
        if pause {
            // The relay would otherwise keep the broker busy with the backlog of the load.
            stack.signal("outbox-relay", true)?;
        }
        match rebuild::run(stack, Duration::from_secs(bounds.rebuild_seconds)).await {
            Ok(result) => report.rebuild = Some(result),
            Err(error) => report.problems.push(format!("rebuild failed: {error:#}")),
        }
    }
    Ok(())
}

/// Pauses or resumes the processes downstream of the event store.
fn pause_pipeline(stack: &mut Stack, pause: bool) -> anyhow::Result<()> {
    for name in ["outbox-relay", "projection-workers"] {
        stack.signal(name, pause)?;
    }
    Ok(())
}

/// The users of each phase, indexed by vessel.
#[derive(Default)]
struct Users {
    lag: Vec<Uuid>,
    /// One list per ingest case, in the order of the cases.
    ingest: Vec<Vec<Uuid>>,
}

/// Returns the ingest cases in run order: (clients, batch size).
fn ingest_cases(options: &Options) -> Vec<(usize, usize)> {
    options
        .ingest_clients
        .iter()
        .flat_map(|&clients| {
            options
                .ingest_batches
                .iter()
                .map(move |&batch| (clients, batch))
        })
        .collect()
}

fn lag_reports<'a>(
    options: &Options,
    bounds: &Bounds,
    workload: &'a Workload,
) -> &'a [crate::workload::TimedReport] {
    // Enough reports for the whole send time; the schedule stops sending at its end.
    let needed = options.lag_rate * bounds.lag_seconds as f64;
    workload.first(needed.ceil() as usize)
}

/// Registers one user per vessel for the lag phase and for each ingest case, before any
/// phase is timed, because each registration hashes a password with argon2id.
async fn register_all(
    client: &BenchClient,
    options: &Options,
    workload: &Workload,
    report: &mut Report,
) -> anyhow::Result<Users> {
    let pid = std::process::id();
    let email = |label: &str, vessel: usize| {
        format!(
            "bench-{pid}-{label}-{}@bench.example",
            workload.vessels[vessel]
        )
    };
    let mut emails: Vec<String> = Vec::new();
    let lag_count = if options.runs(Phase::Lag) {
        workload.vessels.len()
    } else {
        0
    };
    emails.extend((0..lag_count).map(|vessel| email("lag", vessel)));
    let cases = if options.runs(Phase::Ingest) {
        ingest_cases(options)
    } else {
        Vec::new()
    };
    for (clients, batch) in &cases {
        let label = format!("c{clients}b{batch}");
        emails.extend((0..workload.vessels.len()).map(|vessel| email(&label, vessel)));
    }

    eprintln!("registering {} users", emails.len());
    let started = Instant::now();
    let ids = client.register_users(&emails).await?;
    report.registration = Some(Registration {
        users: ids.len(),
        seconds: started.elapsed().as_secs_f64(),
    });

    let mut chunks = ids.chunks(workload.vessels.len().max(1));
    let lag = if lag_count > 0 {
        chunks.next().map(<[Uuid]>::to_vec).unwrap_or_default()
    } else {
        Vec::new()
    };
    let ingest = chunks.map(<[Uuid]>::to_vec).collect();
    Ok(Users { lag, ingest })
}

async fn run_ingest(
    client: &BenchClient,
    pool: &PgPool,
    options: &Options,
    bounds: &Bounds,
    workload: &Workload,
    users: &Users,
    report: &mut Report,
) {
    let reports = workload.first(bounds.ingest_reports.unwrap_or(usize::MAX));
    let time_limit = Duration::from_secs(bounds.ingest_seconds);
    for ((clients, batch), case_users) in ingest_cases(options).into_iter().zip(&users.ingest) {
        eprintln!("ingest: {clients} clients, batch {batch}");
        let plans = plan_batches(reports, workload.vessels.len(), clients, batch);
        match ingest::run_case(client, pool, case_users, plans, batch, time_limit).await {
            Ok(case) => {
                if case.commands_failed > 0 {
                    report.problems.push(format!(
                        "ingest {clients}x{batch}: {} commands failed, first: {}",
                        case.commands_failed,
                        case.first_failure.as_deref().unwrap_or("-")
                    ));
                }
                if case.events_missing > 0 {
                    report.problems.push(format!(
                        "ingest {clients}x{batch}: {} events acknowledged with 2xx are missing \
                         from the events table",
                        case.events_missing
                    ));
                }
                report.ingest.push(case);
            }
            Err(error) => report
                .problems
                .push(format!("ingest {clients}x{batch} failed: {error:#}")),
        }
    }
}

/// Waits until the outbox is empty and the read models have no lag, or `limit` passes.
async fn wait_for_drain(client: &BenchClient, limit: Duration) -> anyhow::Result<Drain> {
    let stats = client.stats_client();
    let started = Instant::now();
    loop {
        let lag = stats.lag().await?;
        let caught_up = lag.outbox_pending == 0 && lag.read_models == 0;
        if caught_up || started.elapsed() >= limit {
            return Ok(Drain {
                caught_up,
                seconds: started.elapsed().as_secs_f64(),
                outbox_pending: lag.outbox_pending,
                read_models_lag: lag.read_models,
            });
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

#[derive(Clone, Copy)]
enum MemoryMoment {
    Idle,
    AfterRegistration,
    AfterLoad,
    AtEnd,
}

fn record_memory(stack: &Stack, report: &mut Report, moment: MemoryMoment) {
    for (name, usage) in stack.memory() {
        let usage = match usage {
            Ok(usage) => Some(usage),
            Err(error) => {
                report
                    .problems
                    .push(format!("reading the memory of {name} failed: {error:#}"));
                None
            }
        };
        let position = match report.memory.iter().position(|entry| entry.service == name) {
            Some(position) => position,
            None => {
                report.memory.push(ServiceMemory {
                    service: name.to_owned(),
                    idle: None,
                    after_registration: None,
                    after_load: None,
                    at_end: None,
                });
                report.memory.len() - 1
            }
        };
        let entry = &mut report.memory[position];
        match moment {
            MemoryMoment::Idle => entry.idle = usage,
            MemoryMoment::AfterRegistration => entry.after_registration = usage,
            MemoryMoment::AfterLoad => entry.after_load = usage,
            MemoryMoment::AtEnd => entry.at_end = usage,
        }
    }
}

fn write_json(path: &PathBuf, report: &Report) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text + "\n").with_context(|| format!("failed to write {}", path.display()))
}
