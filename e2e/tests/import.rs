//! Imports an AIS file the importer has not seen and checks every store against it.

use std::collections::HashSet;
use std::time::Duration;

use meridian_e2e::ais::{read_week_rows, write_unseen_file};
use meridian_e2e::{header, json_body, Platform};
use rdkafka::Message;

const WEEK_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/ais/nyharbor_2020_12_first_week.csv"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_reaches_every_store() -> anyhow::Result<()> {
    let mut platform = Platform::start("import_reaches_every_store").await?;
    let directory = tempdir()?;
    let file = directory.join("unseen.csv");
    let rows = read_week_rows(WEEK_FILE.as_ref(), 4_000)?;
    let expected = write_unseen_file(&file, &rows)?;

    let report = import(&platform, &file).await?;
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

    // Finding users by email is for admins only.
    let admin = platform.admin();
    let http = admin.http();
    for mmsi in expected.reports.keys() {
        let users_url = format!("{}/v1/users", platform.query_url);
        let email = format!("vessel-{mmsi}@ais.example");
        let found = json_body(
            &admin
                .execute(|| http.get(&users_url).query(&[("email", &email)]))
                .await?,
        )?;
        let users = found["users"].as_array().cloned().unwrap_or_default();
        assert_eq!(users.len(), 1, "users with the email of vessel {mmsi}");
        let id = users[0]["user_id"].as_str().unwrap_or_default().to_owned();
        let location_url = format!("{}/v1/users/{id}/location", platform.query_url);
        let location = json_body(&admin.execute(|| http.get(&location_url)).await?)?;
        let latest = expected.latest(*mmsi).expect("vessel has reports");
        assert_eq!(
            location["latitude"].as_f64(),
            Some(latest.latitude),
            "vessel {mmsi}"
        );
        assert_eq!(
            location["longitude"].as_f64(),
            Some(latest.longitude),
            "vessel {mmsi}"
        );
        let recorded_at: chrono::DateTime<chrono::Utc> = location["recorded_at"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        assert_eq!(recorded_at, latest.recorded_at, "vessel {mmsi}");
    }

    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'LocationTrack'")
            .fetch_one(platform.pool())
            .await?;
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_location_history")
        .fetch_one(platform.pool())
        .await?;
    let messages = platform.read_topic()?;
    let location_messages = messages
        .iter()
        .filter(|m| header(m, "ce_type").as_deref() == Some("LocationRecorded"))
        .count();
    let documents = platform.count_mongo_documents().await?;
    let distinct = i64::try_from(expected.distinct_reports())?;
    assert_eq!(stored, distinct, "location events in the event store");
    assert_eq!(
        i64::try_from(location_messages)?,
        distinct,
        "location messages on Kafka"
    );
    assert_eq!(history, distinct, "rows of location history");
    assert_eq!(documents, distinct, "documents in MongoDB");

    for message in &messages {
        let event_type = header(message, "ce_type").unwrap_or_default();
        let version = header(message, "ce_schemaversion").unwrap_or_default();
        let data: serde_json::Value =
            serde_json::from_slice(message.payload().unwrap_or_default())?;
        let result = meridian_schemas::validate(&event_type, &version, &data);
        assert!(
            result.is_ok(),
            "{event_type} v{version} fails its schema: {result:?}"
        );
    }
    let ids: HashSet<String> = messages.iter().filter_map(|m| header(m, "ce_id")).collect();
    assert_eq!(
        ids.len(),
        messages.len(),
        "every message has its own event id"
    );

    platform.shut_down().await?;
    std::fs::remove_dir_all(directory)?;
    Ok(())
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let directory = std::env::temp_dir().join(format!("meridian-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}

async fn import(
    platform: &Platform,
    file: &std::path::Path,
) -> anyhow::Result<meridian_importer::ImportReport> {
    Ok(meridian_importer::import(platform.import_options(file)).await?)
}
