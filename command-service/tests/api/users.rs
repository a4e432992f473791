use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{assert_error, TestApp};

fn registration(email: &str) -> Value {
    json!({"email": email, "name": "SAMUEL I NEWHOUSE", "password": "correct horse battery"})
}

#[tokio::test]
async fn register_returns_sequence_and_position() {
    let app = TestApp::start().await;

    let response = app
        .post("/v1/users", &registration("vessel-1@ais.example"))
        .await;

    assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
    let user_id = response.body["user_id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(user_id).is_ok());
    assert_eq!(response.body["sequence"], 1);
    let stored_position = app.position_of("User", user_id, 1).await;
    assert_eq!(response.body["position"], stored_position);
    app.finish().await;
}

#[tokio::test]
async fn register_stores_hash_not_password() {
    let app = TestApp::start().await;

    let user_id = app.register("vessel-2@ais.example").await;

    let payload: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_id = $1 AND sequence = 1",
    )
    .bind(&user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!payload.to_string().contains("long enough password"));
    assert!(
        !payload.to_string().contains("argon2"),
        "the hash is sealed: {payload}"
    );
    assert!(!payload.to_string().contains("vessel-2@ais.example"));

    let mut opened = payload;
    app.state
        .cipher
        .open_event(&user_id, "UserRegistered", &mut opened)
        .await
        .unwrap();
    let hash = opened["UserRegistered"]["password_hash"].as_str().unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert_eq!(opened["UserRegistered"]["email"], "vessel-2@ais.example");
    app.finish().await;
}

#[tokio::test]
async fn register_writes_request_metadata() {
    let app = TestApp::start().await;

    let response = app
        .send(
            Method::POST,
            "/v1/users",
            &registration("vessel-3@ais.example"),
            &[("x-request-id", "req-register-1")],
        )
        .await;

    assert_eq!(response.header("x-request-id"), Some("req-register-1"));
    let metadata: Value = sqlx::query_scalar("SELECT metadata::jsonb FROM events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(metadata["request_id"], "req-register-1");
    assert!(metadata["received_at"].is_string());
    assert!(metadata.get("idempotency_key").is_none());
    app.finish().await;
}

#[tokio::test]
async fn malformed_json_is_rejected() {
    let app = TestApp::start().await;

    let response = app
        .raw(
            Method::POST,
            "/v1/users",
            Some("application/json"),
            r#"{"email": "a@b.example", "name": "#,
            &[],
        )
        .await;

    assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn wrong_content_type_is_rejected() {
    let app = TestApp::start().await;

    let body = registration("vessel-4@ais.example").to_string();
    let response = app
        .raw(Method::POST, "/v1/users", Some("text/plain"), body, &[])
        .await;

    assert_error(&response, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn missing_email_is_rejected() {
    let app = TestApp::start().await;

    let response = app
        .post(
            "/v1/users",
            &json!({"name": "No Email", "password": "correct horse battery"}),
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "email");
    assert_eq!(response.body["reason"], "is required");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn wrong_type_is_rejected() {
    let app = TestApp::start().await;

    let response = app
        .post(
            "/v1/users",
            &json!({"email": "vessel-5@ais.example", "name": 42, "password": "correct horse battery"}),
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "name");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn unknown_field_is_rejected() {
    let app = TestApp::start().await;

    let mut body = registration("vessel-6@ais.example");
    body["nickname"] = json!("Sam");
    let response = app.post("/v1/users", &body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "nickname");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn invalid_email_is_rejected() {
    let app = TestApp::start().await;

    let response = app.post("/v1/users", &registration("not-an-address")).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "email");
    assert!(response.body["reason"].is_string());
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn short_password_is_rejected() {
    let app = TestApp::start().await;

    let response = app
        .post(
            "/v1/users",
            &json!({"email": "vessel-7@ais.example", "name": "Short", "password": "short"}),
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "password");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn taken_email_is_conflict() {
    let app = TestApp::start().await;
    app.register("vessel-8@ais.example").await;

    let response = app
        .post("/v1/users", &registration("vessel-8@ais.example"))
        .await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(response.body["field"], "email");
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn taken_email_in_other_case_is_conflict() {
    let app = TestApp::start().await;
    app.register("vessel-9@ais.example").await;

    let response = app
        .post("/v1/users", &registration("  Vessel-9@AIS.Example "))
        .await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(response.body["field"], "email");
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn concurrent_registrations_of_one_email_store_one() {
    let app = TestApp::start().await;

    let body = registration("vessel-10@ais.example");
    let (first, second) = tokio::join!(app.post("/v1/users", &body), app.post("/v1/users", &body));

    let mut statuses = [first.status, second.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    let rejected = if first.status == StatusCode::CONFLICT {
        &first
    } else {
        &second
    };
    // The loser either saw the address taken or lost the race and saw it on its retry.
    assert_eq!(rejected.body["field"], "email");
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn patch_stores_all_changes_in_one_commit() {
    let app = TestApp::start().await;
    let user_id = app.register("vessel-11@ais.example").await;

    let response = app
        .patch(
            &format!("/v1/users/{user_id}"),
            &json!({"name": "New Name", "email": "New-11@AIS.example", "password": "another long password"}),
        )
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["user_id"], user_id.as_str());
    assert_eq!(response.body["stored_events"], 3);
    assert_eq!(response.body["sequence"], 4);
    let last_position = app.position_of("User", &user_id, 4).await;
    assert_eq!(response.body["position"], last_position);
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&user_id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        types,
        [
            "UserRegistered",
            "NameChanged",
            "EmailChanged",
            "PasswordChanged"
        ]
    );
    let index = app
        .state
        .cipher
        .email_index("new-11@ais.example")
        .await
        .unwrap();
    let owner: String =
        sqlx::query_scalar("SELECT user_id FROM user_emails WHERE email_index = $1")
            .bind(index)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(owner, user_id);
    app.finish().await;
}

#[tokio::test]
async fn patch_unchanged_name_stores_nothing() {
    let app = TestApp::start().await;
    let user_id = app.register("vessel-12@ais.example").await;

    let response = app
        .patch(
            &format!("/v1/users/{user_id}"),
            &json!({"name": "Test Vessel"}),
        )
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["stored_events"], 0);
    assert_eq!(response.body["sequence"], Value::Null);
    assert_eq!(response.body["position"], Value::Null);
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn patch_empty_body_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("vessel-13@ais.example").await;

    let response = app.patch(&format!("/v1/users/{user_id}"), &json!({})).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "body");
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn patch_unknown_user_is_not_found() {
    let app = TestApp::start().await;

    let user_id = uuid::Uuid::new_v4();
    let response = app
        .patch(&format!("/v1/users/{user_id}"), &json!({"name": "Nobody"}))
        .await;

    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn patch_unknown_user_with_email_is_not_found() {
    let app = TestApp::start().await;
    app.register("vessel-14@ais.example").await;

    let user_id = uuid::Uuid::new_v4();
    let response = app
        .patch(
            &format!("/v1/users/{user_id}"),
            &json!({"email": "vessel-14@ais.example"}),
        )
        .await;

    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn patch_id_that_is_not_uuid_is_rejected() {
    let app = TestApp::start().await;

    let response = app
        .patch("/v1/users/not-a-uuid", &json!({"name": "Nobody"}))
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "id");
    app.finish().await;
}

#[tokio::test]
async fn patch_active_true_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("vessel-15@ais.example").await;

    let response = app
        .patch(&format!("/v1/users/{user_id}"), &json!({"active": true}))
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "active");
    assert_eq!(app.event_count().await, 1);
    app.finish().await;
}

#[tokio::test]
async fn patch_taken_email_stores_no_change() {
    let app = TestApp::start().await;
    app.register("vessel-16@ais.example").await;
    let user_id = app.register("vessel-17@ais.example").await;

    let response = app
        .patch(
            &format!("/v1/users/{user_id}"),
            &json!({"name": "Renamed", "email": "VESSEL-16@ais.example"}),
        )
        .await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(response.body["field"], "email");
    assert_eq!(app.event_count().await, 2);
    app.finish().await;
}

#[tokio::test]
async fn deactivated_user_cannot_be_renamed() {
    let app = TestApp::start().await;
    let user_id = app.register("vessel-18@ais.example").await;
    let path = format!("/v1/users/{user_id}");

    let deactivated = app.patch(&path, &json!({"active": false})).await;
    let renamed = app.patch(&path, &json!({"name": "Ghost"})).await;

    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.body);
    assert_eq!(deactivated.body["stored_events"], 1);
    assert_error(&renamed, StatusCode::CONFLICT, "conflict");
    assert_eq!(renamed.body["message"], "user is deactivated");
    assert_eq!(app.event_count().await, 2);
    app.finish().await;
}

#[tokio::test]
async fn patch_of_deactivated_user_stores_nothing() {
    let app = TestApp::start().await;
    let user_id = app.register("vessel-19@ais.example").await;
    let path = format!("/v1/users/{user_id}");
    app.patch(&path, &json!({"active": false})).await;

    // Deactivating again alone would be a no-op; the rename makes the whole request fail.
    let response = app
        .patch(&path, &json!({"name": "Other", "active": false}))
        .await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(app.event_count().await, 2);
    app.finish().await;
}
