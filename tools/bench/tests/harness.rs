//! Runs the harness's PostgreSQL-only phases with tiny bounds against the local server.

use clap::Parser;
use meridian_bench::cli::Options;

/// Counts the databases whose name starts with `prefix`.
async fn databases_named(prefix: &str) -> i64 {
    let server = std::env::var("MERIDIAN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
    let pool = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .expect("PostgreSQL is reachable");
    let count = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE $1")
        .bind(format!("{prefix}%"))
        .fetch_one(&pool)
        .await
        .expect("pg_database is readable");
    pool.close().await;
    count
}

#[tokio::test]
async fn physical_and_naive_phases_measure_and_clean_up() {
    let work_dir = tempfile::tempdir().expect("a temporary directory");
    let json = work_dir.path().join("report.json");
    let options = Options::try_parse_from([
        "meridian-bench",
        "--phases",
        "physical,naive",
        "--bin-dir",
        work_dir.path().to_str().unwrap(),
        "--work-dir",
        work_dir.path().to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--vessels",
        "4",
        "--physical-connections",
        "1,2",
        "--physical-rows",
        "1000",
        "--physical-seconds",
        "20",
        "--copy-chunk-rows",
        "300",
        "--naive-clients",
        "2",
        "--naive-connections",
        "2",
        "--naive-reports",
        "200",
        "--naive-seconds",
        "20",
    ])
    .expect("valid options");

    let report = meridian_bench::run(options)
        .await
        .expect("the run completes");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let physical = report.physical.as_ref().expect("the physical phase ran");
    assert_eq!(physical.insert.len(), 2);
    for rate in &physical.insert {
        assert_eq!(
            rate.rows, 1000,
            "INSERT with {} connections",
            rate.connections
        );
        assert!(rate.rows_per_second > 0.0);
    }
    assert_eq!(physical.copy.rows, 1000);
    assert!(!physical.sample_from_store, "no location event was stored");

    let naive = report.naive.as_ref().expect("the naive phase ran");
    assert_eq!(naive.commands_sent, 200);
    assert_eq!(naive.commands_failed, 0);
    assert_eq!(naive.events_in_store, 200);

    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report exists"))
            .expect("the report is JSON");
    assert_eq!(written["naive"]["events_in_store"], 200);

    let run_name = &report.run_name;
    assert_eq!(
        databases_named(run_name).await,
        0,
        "{run_name}* was dropped"
    );
}

/// Directory of the release service binaries: `MERIDIAN_BENCH_BIN_DIR`, else the release
/// directory of `CARGO_TARGET_DIR` or of the workspace's `target`.
fn release_dir() -> std::path::PathBuf {
    if let Ok(directory) = std::env::var("MERIDIAN_BENCH_BIN_DIR") {
        return directory.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_owned());
    std::path::Path::new(&target).join("release")
}

// NOTE: this test uses the release binaries as they were last built, which may be older
// than the source; `make bench` builds them first.
#[tokio::test]
async fn service_phases_store_every_acknowledged_event() {
    let bin_dir = release_dir();
    if !bin_dir.join("command-service").exists() {
        eprintln!(
            "skipped: no release binaries in {}; run `cargo build --release --workspace --bins`",
            bin_dir.display()
        );
        return;
    }
    let work_dir = tempfile::tempdir().expect("a temporary directory");
    let options = Options::try_parse_from([
        "meridian-bench",
        "--phases",
        "lag,ingest",
        "--bin-dir",
        bin_dir.to_str().unwrap(),
        "--work-dir",
        work_dir.path().to_str().unwrap(),
        "--vessels",
        "2",
        "--ingest-clients",
        "1,2",
        "--ingest-batches",
        "1,10",
        "--ingest-reports",
        "40",
        "--ingest-seconds",
        "20",
        "--lag-rate",
        "100",
        "--lag-batch",
        "5",
        "--lag-clients",
        "2",
        "--lag-seconds",
        "2",
        "--lag-drain-seconds",
        "5",
        "--drain-seconds",
        "5",
    ])
    .expect("valid options");

    let report = meridian_bench::run(options)
        .await
        .expect("the run completes");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.ingest.len(), 4);
    for case in &report.ingest {
        let name = format!("{} clients, batch {}", case.clients, case.batch_size);
        assert_eq!(case.commands_failed, 0, "{name}");
        assert_eq!(case.reports_sent, 40, "{name}");
        assert_eq!(case.events_acknowledged, 40, "{name}");
        assert_eq!(case.events_in_store, 40, "{name}");
        assert_eq!(case.events_missing, 0, "{name}");
    }
    let lag = report.lag.as_ref().expect("the lag phase ran");
    assert_eq!(lag.commands_failed, 0);
    assert!(lag.commands_accepted > 0);
    assert_eq!(
        lag.commands_shown + lag.commands_not_shown,
        lag.commands_accepted
    );
    assert_eq!(report.memory.len(), 4);
    for service in &report.memory {
        assert!(service.idle.is_some(), "{}", service.service);
    }

    let run_name = &report.run_name;
    assert_eq!(databases_named(run_name).await, 0, "{run_name} was dropped");
}
