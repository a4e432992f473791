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

    let report = meridian_bench::run(options).await.expect("the run completes");

    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let physical = report.physical.as_ref().expect("the physical phase ran");
    assert_eq!(physical.insert.len(), 2);
    for rate in &physical.insert {
        assert_eq!(rate.rows, 1000, "INSERT with {} connections", rate.connections);
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

    let run_name = format!("meridian_bench_{}", std::process::id());
    assert_eq!(databases_named(&run_name).await, 0, "{run_name}* was dropped");
}
