//! Kills processes with SIGKILL in the middle of an import and checks that no event is lost
//! and none is applied twice.

use std::collections::HashSet;
use std::time::Duration;

use meridian_e2e::ais::{read_week_rows, write_unseen_file};
use meridian_e2e::{header, Platform, Process};

const WEEK_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/ais/nyharbor_2020_12_first_week.csv"
);

/// Waits until the location events in the event store grow past `count`, so a kill lands in
/// the middle of the import rather than before or after it.
async fn wait_for_events(platform: &Platform, count: i64) -> anyhow::Result<()> {
    for _ in 0..600 {
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'LocationTrack'",
        )
        .fetch_one(platform.pool())
        .await?;
        if stored >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("fewer than {count} location events after 60 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_import_keeps_counts_equal() -> anyhow::Result<()> {
    let mut platform = Platform::start("sigkill_mid_import_keeps_counts_equal").await?;
    let directory = std::env::temp_dir().join(format!("meridian-crash-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory)?;
    let file = directory.join("unseen.csv");
    let rows = read_week_rows(WEEK_FILE.as_ref(), 4_000)?;
    let expected = write_unseen_file(&file, &rows)?;

    let mut options = platform.import_options(&file);
    options.batch_size = 100;
    options.concurrency = 4;
    let import = tokio::spawn(meridian_importer::import(options));

    wait_for_events(&platform, 800).await?;
    platform
        .kill_and_restart(Process::ProjectionWorkers)
        .await?;
    wait_for_events(&platform, 1_800).await?;
    platform.kill_and_restart(Process::OutboxRelay).await?;
    wait_for_events(&platform, 2_800).await?;
    platform.kill_and_restart(Process::CommandService).await?;

    let report = import.await??;
    assert_eq!(
        report.skipped_rows.len(),
        expected.invalid_rows,
        "skipped rows"
    );
    assert!(report.failed_vessels().is_empty(), "failed vessels");
    assert!(
        report.mismatched_vessels().is_empty(),
        "vessels showing the wrong location"
    );
    assert!(
        report.lagging_vessels().is_empty(),
        "vessels the query service lags behind"
    );
    platform.wait_caught_up(Duration::from_secs(600)).await?;

    let distinct = i64::try_from(expected.distinct_reports())?;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'LocationTrack'")
            .fetch_one(platform.pool())
            .await?;
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_location_history")
        .fetch_one(platform.pool())
        .await?;
    let all_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(platform.pool())
        .await?;
    let messages = platform.read_topic()?;
    let ids: HashSet<String> = messages.iter().filter_map(|m| header(m, "ce_id")).collect();
    let documents = platform.count_mongo_documents().await?;

    assert_eq!(stored, distinct, "location events in the event store");
    assert_eq!(
        i64::try_from(messages.len())?,
        all_events,
        "messages on Kafka"
    );
    assert_eq!(ids.len(), messages.len(), "no message published twice");
    assert_eq!(history, distinct, "rows of location history");
    assert_eq!(documents, distinct, "documents in MongoDB");

    platform.shut_down().await?;
    std::fs::remove_dir_all(directory)?;
    Ok(())
}
