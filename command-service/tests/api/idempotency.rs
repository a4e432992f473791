use axum::http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{assert_error, report, TestApp};

fn registration(email: &str) -> Value {
    json!({"email": email, "name": "Keyed Vessel", "password": "correct horse battery"})
}

/// Derives the advisory lock id of a scoped key the way the service does.
fn lock_id(scoped_key: &str) -> i64 {
    let digest = Sha256::digest(scoped_key.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap())
}

fn body_hash(body: &Value) -> String {
    Sha256::digest(body.to_string().as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[tokio::test]
async fn replay_returns_first_result_and_stores_nothing() {
    let app = TestApp::start().await;
    let body = registration("keyed-1@ais.example");
    let key = [("idempotency-key", "register-keyed-1")];

    let first = app.send(Method::POST, "/v1/users", &body, &key).await;
    let second = app.send(Method::POST, "/v1/users", &body, &key).await;

    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn key_is_written_into_event_metadata() {
    let app = TestApp::start().await;
    let body = registration("keyed-2@ais.example");

    app.send(
        Method::POST,
        "/v1/users",
        &body,
        &[("idempotency-key", "k-2")],
    )
    .await;

    let key: String = sqlx::query_scalar("SELECT metadata ->> 'idempotency_key' FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(key, app.admin_scoped("POST /v1/users k-2"));
    app.finish().await;
}

#[tokio::test]
async fn same_key_with_other_body_is_rejected() {
    let app = TestApp::start().await;
    let key = [("idempotency-key", "register-keyed-3")];
    app.send(
        Method::POST,
        "/v1/users",
        &registration("keyed-3@ais.example"),
        &key,
    )
    .await;

    let response = app
        .send(
            Method::POST,
            "/v1/users",
            &registration("other-3@ais.example"),
            &key,
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "Idempotency-Key");
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn same_key_on_other_path_is_independent() {
    let app = TestApp::start().await;
    let user_id = app.register("keyed-4@ais.example").await;
    let key = [("idempotency-key", "shared-key")];

    let patched = app
        .send(
            Method::PATCH,
            &format!("/v1/users/{user_id}"),
            &json!({"name": "A"}),
            &key,
        )
        .await;
    let located = app
        .send(
            Method::POST,
            &format!("/v1/users/{user_id}/locations"),
            &report(0, 1.0, 2.0),
            &key,
        )
        .await;

    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(located.status, StatusCode::OK, "{}", located.body);
    assert_eq!(located.header("idempotent-replayed"), None);
    app.finish().await;
}

#[tokio::test]
async fn rejected_request_frees_its_key() {
    let app = TestApp::start().await;
    let rejected = json!({"email": "keyed-5@ais.example", "name": "Short", "password": "short"});
    let corrected = registration("keyed-5@ais.example");
    let key = [("idempotency-key", "bad-password")];

    let first = app.send(Method::POST, "/v1/users", &rejected, &key).await;
    let second = app.send(Method::POST, "/v1/users", &corrected, &key).await;

    assert_eq!(first.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(second.status, StatusCode::CREATED);
    assert_eq!(second.header("idempotent-replayed"), None);
    app.finish().await;
}

#[tokio::test]
async fn key_with_space_is_rejected() {
    let app = TestApp::start().await;

    let response = app
        .send(
            Method::POST,
            "/v1/users",
            &registration("keyed-6@ais.example"),
            &[("idempotency-key", "two words")],
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "Idempotency-Key");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn empty_key_is_rejected() {
    let app = TestApp::start().await;

    let response = app
        .send(
            Method::POST,
            "/v1/users",
            &registration("keyed-7@ais.example"),
            &[("idempotency-key", "")],
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "Idempotency-Key");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn key_of_201_characters_is_rejected() {
    let app = TestApp::start().await;

    let long_key = "k".repeat(201);
    let response = app
        .send(
            Method::POST,
            "/v1/users",
            &registration("keyed-8@ais.example"),
            &[("idempotency-key", &long_key)],
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "Idempotency-Key");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn key_in_progress_is_conflict() {
    let app = TestApp::start().await;
    let body = registration("keyed-9@ais.example");
    let scoped_key = &app.admin_scoped("POST /v1/users running-key");
    // Stand in for a first request that is still running: its row, and its lock held by an
    // open transaction.
    sqlx::query("INSERT INTO idempotency_keys (key, request_hash) VALUES ($1, $2)")
        .bind(scoped_key)
        .bind(body_hash(&body))
        .execute(&app.pool)
        .await
        .unwrap();
    let mut running = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_id(scoped_key))
        .execute(&mut *running)
        .await
        .unwrap();

    let response = app
        .send(
            Method::POST,
            "/v1/users",
            &body,
            &[("idempotency-key", "running-key")],
        )
        .await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(response.body["field"], "Idempotency-Key");
    assert_eq!(app.event_count().await, 0);
    running.rollback().await.unwrap();
    app.finish().await;
}

#[tokio::test]
async fn unfinished_key_is_resolved_from_events() {
    let app = TestApp::start().await;
    let body = registration("keyed-10@ais.example");
    let key = [("idempotency-key", "crashed-after-commit")];
    let first = app.send(Method::POST, "/v1/users", &body, &key).await;
    // As if the process died after the commit but before it stored the response.
    sqlx::query(
        "UPDATE idempotency_keys SET status_code = NULL, response = NULL, completed_at = NULL",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let second = app.send(Method::POST, "/v1/users", &body, &key).await;
    let third = app.send(Method::POST, "/v1/users", &body, &key).await;

    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(third.header("idempotent-replayed"), Some("true"));
    assert_eq!(third.body, first.body);
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn unfinished_batch_key_rebuilds_counts() {
    let app = TestApp::start().await;
    let user_id = app.register("keyed-11@ais.example").await;
    let path = format!("/v1/users/{user_id}/locations");
    let body = json!({"reports": [report(0, 1.0, 2.0), report(10, 1.0, 2.1), report(0, 1.0, 2.0)]});
    let key = [("idempotency-key", "batch-crashed")];
    let first = app.send(Method::POST, &path, &body, &key).await;
    sqlx::query(
        "UPDATE idempotency_keys SET status_code = NULL, response = NULL, completed_at = NULL",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let second = app.send(Method::POST, &path, &body, &key).await;

    assert_eq!(first.body["accepted"], 3);
    assert_eq!(second.body, first.body);
    assert_eq!(app.events_of("LocationTrack", &user_id).await, 2);
    app.finish().await;
}

#[tokio::test]
async fn unfinished_key_without_events_runs_again() {
    let app = TestApp::start().await;
    let body = registration("keyed-12@ais.example");
    // As if the process died before the commit.
    sqlx::query("INSERT INTO idempotency_keys (key, request_hash) VALUES ($1, $2)")
        .bind(app.admin_scoped("POST /v1/users crashed-before-commit"))
        .bind(body_hash(&body))
        .execute(&app.pool)
        .await
        .unwrap();

    let response = app
        .send(
            Method::POST,
            "/v1/users",
            &body,
            &[("idempotency-key", "crashed-before-commit")],
        )
        .await;

    assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
    assert_eq!(app.event_count().await, 1);
    let status: Option<i32> = sqlx::query_scalar("SELECT status_code FROM idempotency_keys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, Some(201));
    app.finish().await;
}

#[tokio::test]
async fn completed_key_replays_while_locked() {
    let app = TestApp::start().await;
    let body = registration("keyed-13@ais.example");
    let key = [("idempotency-key", "completed-and-locked")];
    let first = app.send(Method::POST, "/v1/users", &body, &key).await;
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_id("POST /v1/users completed-and-locked"))
        .execute(&mut *other)
        .await
        .unwrap();

    let second = app.send(Method::POST, "/v1/users", &body, &key).await;

    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    other.rollback().await.unwrap();
    app.finish().await;
}
