use axum::http::{Method, StatusCode};
use chrono::{Duration, Utc};
use serde_json::{json, Value};

use crate::common::{assert_error, report, TestApp};

fn batch(start: i64, count: i64) -> Value {
    let reports: Vec<Value> = (start..start + count)
        .map(|index| report(index * 10, 40.0 + index as f64 * 1e-4, -74.0))
        .collect();
    json!({ "reports": reports })
}

fn location_path(user_id: &str) -> String {
    format!("/v1/users/{user_id}/locations")
}

#[tokio::test]
async fn single_report_is_stored_with_position() {
    let app = TestApp::start().await;
    let user_id = app.register("track-1@ais.example").await;

    let response = app
        .post(&location_path(&user_id), &report(0, 40.64, -74.07))
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["user_id"], user_id.as_str());
    assert_eq!(response.body["accepted"], 1);
    assert_eq!(response.body["stored"], 1);
    assert_eq!(response.body["first_sequence"], 1);
    assert_eq!(response.body["last_sequence"], 1);
    let position = app.position_of("LocationTrack", &user_id, 1).await;
    assert_eq!(response.body["position"], position);
    app.finish().await;
}

#[tokio::test]
async fn batch_is_stored_with_sequence_range() {
    let app = TestApp::start().await;
    let user_id = app.register("track-2@ais.example").await;

    let response = app.post(&location_path(&user_id), &batch(0, 50)).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["accepted"], 50);
    assert_eq!(response.body["stored"], 50);
    assert_eq!(response.body["first_sequence"], 1);
    assert_eq!(response.body["last_sequence"], 50);
    let position = app.position_of("LocationTrack", &user_id, 50).await;
    assert_eq!(response.body["position"], position);
    app.finish().await;
}

#[tokio::test]
async fn duplicate_report_is_noop() {
    let app = TestApp::start().await;
    let user_id = app.register("track-3@ais.example").await;
    let path = location_path(&user_id);
    app.post(&path, &report(0, 40.64, -74.07)).await;

    let response = app.post(&path, &report(0, 40.64, -74.07)).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["accepted"], 1);
    assert_eq!(response.body["stored"], 0);
    assert_eq!(response.body["first_sequence"], Value::Null);
    assert_eq!(response.body["position"], Value::Null);
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 1);
    app.finish().await;
}

#[tokio::test]
async fn repeats_within_batch_store_once() {
    let app = TestApp::start().await;
    let user_id = app.register("track-4@ais.example").await;

    let body = json!({"reports": [report(0, 1.0, 2.0), report(5, 1.0, 2.0), report(0, 1.0, 2.0)]});
    let response = app.post(&location_path(&user_id), &body).await;

    assert_eq!(response.body["accepted"], 3);
    assert_eq!(response.body["stored"], 2);
    app.finish().await;
}

#[tokio::test]
async fn old_report_beyond_recent_window_is_noop() {
    let app = TestApp::start().await;
    let user_id = app.register("track-5@ais.example").await;
    let path = location_path(&user_id);
    // 300 reports exceed the 256 the aggregate remembers, so the oldest is found through the
    // event store's history.
    app.post(&path, &batch(0, 300)).await;

    let response = app.post(&path, &batch(0, 1)).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["stored"], 0);
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 300);
    app.finish().await;
}

#[tokio::test]
async fn resent_batches_store_nothing() {
    let app = TestApp::start().await;
    let user_id = app.register("track-6@ais.example").await;
    let path = location_path(&user_id);
    for start in [0, 60, 120] {
        app.post(&path, &batch(start, 60)).await;
    }

    let response = app.post(&path, &batch(0, 180)).await;

    assert_eq!(response.body["stored"], 0);
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 180);
    app.finish().await;
}

#[tokio::test]
async fn snapshot_counts_every_stored_report() {
    let app = TestApp::start().await;
    let user_id = app.register("track-7@ais.example").await;
    let path = location_path(&user_id);
    for start in [0, 70, 140] {
        app.post(&path, &batch(start, 70)).await;
    }

    let sealed: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM snapshots \
         WHERE aggregate_type = 'LocationTrack' AND aggregate_id = $1",
    )
    .bind(&user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        sealed.get("sealed").is_some(),
        "snapshot is sealed: {sealed}"
    );
    assert_eq!(stored_snapshot(&app, &user_id).await, (210, json!(210)));
    app.finish().await;
}

/// Reads the sequence the stored `LocationTrack` snapshot covers, and its report count.
async fn stored_snapshot(app: &TestApp, user_id: &str) -> (i64, Value) {
    let (last_sequence, snapshot): (i64, Value) = sqlx::query_as(
        "SELECT last_sequence, payload::jsonb FROM snapshots \
         WHERE aggregate_type = 'LocationTrack' AND aggregate_id = $1",
    )
    .bind(user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let snapshot = app
        .state
        .cipher
        .open_snapshot(user_id, "LocationTrack", snapshot)
        .await
        .unwrap();
    (last_sequence, snapshot["reports"].clone())
}

#[tokio::test]
async fn single_reports_rewrite_the_snapshot_once_per_interval() {
    let app = TestApp::start().await;
    let user_id = app.register("track-7b@ais.example").await;
    let path = location_path(&user_id);
    for index in 0..70 {
        let response = app.post(&path, &report(index * 10, 40.0, -74.0)).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    }

    // The snapshot interval is 64 events: the 64th commit wrote it, the next six did not.
    assert_eq!(stored_snapshot(&app, &user_id).await, (64, json!(64)));
    // Loading replays the six events after the snapshot, so a report from either side of
    // it is recognized as already stored.
    for index in [10, 67] {
        let response = app.post(&path, &report(index * 10, 40.0, -74.0)).await;
        assert_eq!(
            response.body["stored"], 0,
            "report {index}: {}",
            response.body
        );
    }
    let response = app.post(&path, &report(700, 40.0, -74.0)).await;
    assert_eq!(response.body["first_sequence"], 71);
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 71);
    app.finish().await;
}

#[tokio::test]
async fn bad_latitude_rejects_whole_batch() {
    let app = TestApp::start().await;
    let user_id = app.register("track-8@ais.example").await;

    let mut body = batch(0, 5);
    body["reports"][3]["latitude"] = json!(90.5);
    let response = app.post(&location_path(&user_id), &body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "reports[3].latitude");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn bad_longitude_rejects_whole_batch() {
    let app = TestApp::start().await;
    let user_id = app.register("track-9@ais.example").await;

    let mut body = batch(0, 5);
    body["reports"][2]["longitude"] = json!(-180.25);
    let response = app.post(&location_path(&user_id), &body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "reports[2].longitude");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn latitude_of_wrong_type_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("track-10@ais.example").await;

    let mut body = batch(0, 3);
    body["reports"][1]["latitude"] = json!("40.1");
    let response = app.post(&location_path(&user_id), &body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "reports[1].latitude");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn future_timestamp_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("track-11@ais.example").await;

    let future = (Utc::now() + Duration::minutes(10)).to_rfc3339();
    let body = json!({"latitude": 1.0, "longitude": 2.0, "recorded_at": future});
    let response = app.post(&location_path(&user_id), &body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "recorded_at");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn year_zero_timestamp_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("track-31@ais.example").await;

    let body = json!({"latitude": 1.0, "longitude": 2.0, "recorded_at": "0000-01-01T00:00:00Z"});
    let response = app.post(&location_path(&user_id), &body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "recorded_at");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn timestamp_without_offset_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("track-12@ais.example").await;

    let body = json!({"latitude": 1.0, "longitude": 2.0, "recorded_at": "2020-12-01T00:00:00"});
    let response = app.post(&location_path(&user_id), &body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "recorded_at");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn batch_of_1001_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("track-13@ais.example").await;

    let response = app.post(&location_path(&user_id), &batch(0, 1001)).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "reports");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn batch_of_1000_is_stored() {
    let app = TestApp::start().await;
    let user_id = app.register("track-14@ais.example").await;

    let response = app.post(&location_path(&user_id), &batch(0, 1000)).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["stored"], 1000);
    assert_eq!(response.body["last_sequence"], 1000);
    app.finish().await;
}

#[tokio::test]
async fn empty_batch_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("track-15@ais.example").await;

    let response = app
        .post(&location_path(&user_id), &json!({"reports": []}))
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "reports");
    app.finish().await;
}

#[tokio::test]
async fn locations_of_unknown_user_are_not_found() {
    let app = TestApp::start().await;

    let user_id = uuid::Uuid::new_v4().to_string();
    let response = app
        .post(&location_path(&user_id), &report(0, 1.0, 2.0))
        .await;

    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn locations_of_deactivated_user_are_conflict() {
    let app = TestApp::start().await;
    let user_id = app.register("track-16@ais.example").await;
    app.patch(&format!("/v1/users/{user_id}"), &json!({"active": false}))
        .await;

    let response = app
        .post(&location_path(&user_id), &report(0, 1.0, 2.0))
        .await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn body_over_limit_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("track-17@ais.example").await;

    let padding = " ".repeat(1024 * 1024 + 1);
    let body = format!("{{\"reports\": []{padding}}}");
    let response = app
        .raw(
            Method::POST,
            &location_path(&user_id),
            Some("application/json"),
            body,
            &[],
        )
        .await;

    assert_error(
        &response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn concurrent_batches_to_one_user_all_succeed() {
    let app = TestApp::start().await;
    let user_id = app.register("track-18@ais.example").await;
    let path = location_path(&user_id);

    let requests = (0..4).map(|round| {
        let body = batch(round * 100, 100);
        let app = &app;
        let path = &path;
        async move { app.post(path, &body).await }
    });
    let responses = futures::future::join_all(requests).await;

    for response in &responses {
        assert_eq!(response.status, StatusCode::OK, "{}", response.body);
        assert_eq!(response.body["stored"], 100);
    }
    let mut firsts: Vec<i64> = responses
        .iter()
        .map(|response| response.body["first_sequence"].as_i64().unwrap())
        .collect();
    firsts.sort_unstable();
    assert_eq!(firsts, [1, 101, 201, 301]);
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 400);
    app.finish().await;
}
