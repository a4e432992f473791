//! Personal data after an import: sealed everywhere outside the read models, and gone for
//! good once a user is erased.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_crypto::personal::personal_fields;
use meridian_e2e::ais::{read_week_rows, write_unseen_file};
use meridian_e2e::{header, Platform};
use meridian_importer::session::Reply;
use rdkafka::Message;
use regex::Regex;
use serde_json::{json, Value};

const WEEK_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/ais/nyharbor_2020_12_first_week.csv"
);

/// Plaintext values of every user, as the read models hold them.
struct Plaintexts {
    emails: Vec<String>,
    /// Names long enough that base64 text cannot contain them by chance.
    names: Vec<String>,
    /// Coordinates as JSON writes them, with at least four decimals.
    coordinates: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_is_sealed_and_erase_destroys_it() -> anyhow::Result<()> {
    let mut platform = Platform::start("personal_data_is_sealed_and_erase_destroys_it").await?;
    let directory = std::env::temp_dir().join(format!("meridian-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory)?;
    let file = directory.join("unseen.csv");
    write_unseen_file(&file, &read_week_rows(WEEK_FILE.as_ref(), 1_500)?)?;

    let report = meridian_importer::import(platform.import_options(&file)).await?;
    assert!(report.failed_vessels().is_empty(), "failed vessels");
    platform.wait_caught_up(Duration::from_secs(600)).await?;

    let plaintexts = read_plaintexts(&platform).await?;
    assert!(plaintexts.emails.len() > 10, "the import registered users");
    assert!(
        plaintexts.coordinates.len() > 100,
        "the import stored reports"
    );

    // 1. Nothing personal is readable in the event-store tables or on Kafka.
    let store_text = event_store_text(&platform).await?;
    assert_no_plaintext("event store", &store_text, &plaintexts);
    let messages = platform.read_topic()?;
    let mut topic_text = String::new();
    for message in &messages {
        topic_text.push_str(&String::from_utf8_lossy(
            message.payload().unwrap_or_default(),
        ));
        topic_text.push('\n');
        if let Some(headers) = message.headers() {
            for header in rdkafka::message::Headers::iter(headers) {
                topic_text.push_str(&String::from_utf8_lossy(header.value.unwrap_or_default()));
                topic_text.push('\n');
            }
        }
    }
    assert_no_plaintext("Kafka", &topic_text, &plaintexts);
    assert_personal_fields_sealed(&messages)?;

    // 2. A changed byte in any sealed field fails to open; it never yields other data.
    let cipher = platform.keys.event_cipher(platform.pool().clone()).await?;
    let sample: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, payload::jsonb FROM events \
         WHERE event_type IN ('UserRegistered', 'LocationRecorded') ORDER BY position LIMIT 40",
    )
    .fetch_all(platform.pool())
    .await?;
    for (user_id, event_type, payload) in &sample {
        let mut opened = payload.clone();
        cipher.open_event(user_id, event_type, &mut opened).await?;
        for field in personal_fields(event_type) {
            let sealed = payload[event_type][*field].as_str().expect("sealed text");
            for index in [0, sealed.len() / 2, sealed.len() - 1] {
                let mut altered = payload.clone();
                altered[event_type][*field] = Value::String(flip_character(sealed, index));
                let result = cipher.open_event(user_id, event_type, &mut altered).await;
                assert!(
                    result.is_err(),
                    "{event_type}.{field} opened after character {index} changed"
                );
            }
        }
    }

    // 3. Erase the user with the most reports.
    let (victim, victim_reports): (String, i64) = sqlx::query_as(
        "SELECT user_id::text, count(*) FROM rm_location_history \
         GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1",
    )
    .fetch_one(platform.pool())
    .await?;
    let victim_email: String =
        sqlx::query_scalar("SELECT email FROM rm_users WHERE user_id::text = $1")
            .bind(&victim)
            .fetch_one(platform.pool())
            .await?;
    let history_before: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_location_history")
        .fetch_one(platform.pool())
        .await?;
    let documents_before = platform.count_mongo_documents().await?;
    assert_eq!(history_before, documents_before);

    // The admin erases the user and then tries to act on them.
    let admin = platform.admin();
    let http = admin.http();
    let victim_url = format!("{}/v1/users/{victim}", platform.command_url);
    let erased = admin.execute(|| http.delete(&victim_url)).await?;
    assert_eq!(erased.status, 200, "{}", text(&erased));

    let keys_left: i64 = sqlx::query_scalar("SELECT count(*) FROM user_keys WHERE user_id = $1")
        .bind(&victim)
        .fetch_one(platform.pool())
        .await?;
    assert_eq!(keys_left, 0, "the erased user's key is destroyed");

    // Nothing of the erased user opens any more, from the store or from Kafka, even with a
    // key ring that never cached their key.
    let fresh = platform.keys.event_cipher(platform.pool().clone()).await?;
    let stored: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload::jsonb FROM events WHERE aggregate_id = $1 ORDER BY position",
    )
    .bind(&victim)
    .fetch_all(platform.pool())
    .await?;
    let mut sealed_events = 0;
    for (event_type, payload) in &stored {
        if personal_fields(event_type).is_empty() {
            continue;
        }
        sealed_events += 1;
        let mut attempt = payload.clone();
        let result = fresh.open_event(&victim, event_type, &mut attempt).await;
        assert!(
            result.as_ref().is_err_and(|error| error.is_erased()),
            "{event_type} of the erased user: {result:?}"
        );
    }
    assert!(
        sealed_events as i64 > victim_reports,
        "every event was checked"
    );
    for message in platform.read_topic()? {
        if message.key() != Some(victim.as_bytes()) {
            continue;
        }
        let event_type = header(&message, "ce_type").unwrap_or_default();
        let data: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
        let mut payload = json!({ event_type.clone(): data });
        let result = fresh.open_event(&victim, &event_type, &mut payload).await;
        assert!(
            personal_fields(&event_type).is_empty() || result.is_err(),
            "{event_type} message of the erased user opened"
        );
    }

    // The projections delete the user's rows and documents, and only theirs.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rows: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM rm_users WHERE user_id::text = $1) \
                  + (SELECT count(*) FROM rm_profiles WHERE user_id::text = $1) \
                  + (SELECT count(*) FROM rm_latest_locations WHERE user_id::text = $1) \
                  + (SELECT count(*) FROM rm_location_history WHERE user_id::text = $1)",
        )
        .bind(&victim)
        .fetch_one(platform.pool())
        .await?;
        let documents = platform
            .count_mongo_documents_matching(mongodb::bson::doc! {"user_id": &victim})
            .await?;
        if rows == 0 && documents == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{rows} read-model rows and {documents} documents of the erased user remain"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let history_after: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_location_history")
        .fetch_one(platform.pool())
        .await?;
    assert_eq!(history_after, history_before - victim_reports);
    assert_eq!(
        platform.count_mongo_documents().await?,
        documents_before - victim_reports
    );
    let (other, other_type, other_payload): (String, String, Value) = sqlx::query_as(
        "SELECT aggregate_id, event_type, payload::jsonb FROM events \
         WHERE aggregate_id <> $1 AND event_type = 'LocationRecorded' ORDER BY position DESC LIMIT 1",
    )
    .bind(&victim)
    .fetch_one(platform.pool())
    .await?;
    let mut opened = other_payload;
    fresh.open_event(&other, &other_type, &mut opened).await?;
    assert!(opened["LocationRecorded"]["latitude"].is_number());

    // Commands for the erased user return 410, reads find nothing, and the address is free again.
    let rename_body = json!({"name": "Someone"});
    let rename = admin
        .execute(|| http.patch(&victim_url).json(&rename_body))
        .await?;
    assert_eq!(rename.status, 410);
    let body: Value = serde_json::from_slice(&rename.body)?;
    assert_eq!(body["error"], "gone");
    let locations_url = format!("{victim_url}/locations");
    let report_body =
        json!({"latitude": 40.7, "longitude": -74.0, "recorded_at": "2020-12-01T00:00:00Z"});
    let report = admin
        .execute(|| http.post(&locations_url).json(&report_body))
        .await?;
    assert_eq!(report.status, 410);
    let again = admin.execute(|| http.delete(&victim_url)).await?;
    assert_eq!(again.status, 410);
    let read_url = format!("{}/v1/users/{victim}", platform.query_url);
    let read = admin.execute(|| http.get(&read_url)).await?;
    assert_eq!(read.status, 404);
    // Registration is open: the address is free again for anyone.
    platform
        .register(&victim_email, "New Owner", "long enough password")
        .await?;

    platform.shut_down().await?;
    std::fs::remove_dir_all(directory)?;
    Ok(())
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

async fn read_plaintexts(platform: &Platform) -> anyhow::Result<Plaintexts> {
    let users: Vec<(String, String)> = sqlx::query_as("SELECT email, name FROM rm_users")
        .fetch_all(platform.pool())
        .await?;
    let points: Vec<(f64, f64)> =
        sqlx::query_as("SELECT latitude, longitude FROM rm_location_history")
            .fetch_all(platform.pool())
            .await?;
    let mut coordinates: Vec<String> = points
        .iter()
        .flat_map(|(latitude, longitude)| [latitude, longitude])
        .map(|value| Value::from(*value).to_string())
        .filter(|text| {
            text.split_once('.')
                .is_some_and(|(_, decimals)| decimals.len() >= 4)
        })
        .collect();
    coordinates.sort();
    coordinates.dedup();
    Ok(Plaintexts {
        emails: users.iter().map(|(email, _)| email.clone()).collect(),
        names: users
            .iter()
            .map(|(_, name)| name.clone())
            .filter(|name| name.len() >= 8)
            .collect(),
        coordinates,
    })
}

/// Collects the text of every event-store table that could contain personal data.
async fn event_store_text(platform: &Platform) -> anyhow::Result<String> {
    let mut text = String::new();
    for query in [
        "SELECT payload::text || ' ' || metadata::text FROM events",
        "SELECT payload::text FROM snapshots",
        "SELECT email_index || ' ' || user_id FROM user_emails",
        "SELECT coalesce(response::text, '') FROM idempotency_keys",
        "SELECT encode(wrapped_key, 'escape') FROM user_keys",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(query).fetch_all(platform.pool()).await?;
        for row in rows {
            text.push_str(&row);
            text.push('\n');
        }
    }
    Ok(text)
}

/// Fails when `text` contains any plaintext value. Timestamps are removed first, because
/// their seconds and fractions can read like a coordinate (`…:40.7128…`).
fn assert_no_plaintext(place: &str, text: &str, plaintexts: &Plaintexts) {
    let timestamps =
        Regex::new(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})").unwrap();
    let text = timestamps.replace_all(text, "<time>");
    let lower = text.to_lowercase();
    let mut found: HashMap<&str, Vec<&String>> = HashMap::new();
    for email in &plaintexts.emails {
        if lower.contains(email.as_str()) {
            found.entry("email").or_default().push(email);
        }
    }
    for name in &plaintexts.names {
        if text.contains(name.as_str()) {
            found.entry("name").or_default().push(name);
        }
    }
    for coordinate in &plaintexts.coordinates {
        if text.contains(coordinate.as_str()) {
            found.entry("coordinate").or_default().push(coordinate);
        }
    }
    assert!(
        found.is_empty(),
        "plaintext found in the {place}: {found:?}"
    );
}

/// Checks that every personal field of every message is sealed text.
fn assert_personal_fields_sealed(
    messages: &[rdkafka::message::OwnedMessage],
) -> anyhow::Result<()> {
    let mut checked = 0;
    for message in messages {
        let event_type = header(message, "ce_type").unwrap_or_default();
        let data: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
        for field in personal_fields(&event_type) {
            if let Some(value) = data.get(*field) {
                assert!(
                    value.is_string(),
                    "{event_type}.{field} is not sealed: {value}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 0, "messages carry personal fields");
    Ok(())
}

/// Replaces one base64url character with another, so exactly one encoded character changes.
fn flip_character(text: &str, index: usize) -> String {
    let mut bytes = text.as_bytes().to_vec();
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("base64url is ASCII")
}
