use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::common::{assert_error, TestApp};

fn profile() -> Value {
    json!({
        "settings": {"units": "metric", "share_location": true},
        "image": {"uri": "s3://meridian-images/1.png", "content_type": "image/png"},
    })
}

#[tokio::test]
async fn put_profile_stores_settings_and_image() {
    let app = TestApp::start().await;
    let user_id = app.register("profile-1@ais.example").await;

    let response = app
        .put(&format!("/v1/users/{user_id}/profile"), &profile())
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["stored_events"], 2);
    assert_eq!(response.body["sequence"], 2);
    let position = app.position_of("Profile", &user_id, 2).await;
    assert_eq!(response.body["position"], position);
    app.finish().await;
}

#[tokio::test]
async fn unchanged_profile_stores_nothing() {
    let app = TestApp::start().await;
    let user_id = app.register("profile-2@ais.example").await;
    let path = format!("/v1/users/{user_id}/profile");
    app.put(&path, &profile()).await;

    let response = app.put(&path, &profile()).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["stored_events"], 0);
    assert_eq!(response.body["position"], Value::Null);
    assert_eq!(app.events_of("Profile", &user_id).await, 2);
    app.finish().await;
}

#[tokio::test]
async fn null_image_clears_image() {
    let app = TestApp::start().await;
    let user_id = app.register("profile-3@ais.example").await;
    let path = format!("/v1/users/{user_id}/profile");
    app.put(&path, &profile()).await;

    let mut cleared = profile();
    cleared["image"] = Value::Null;
    let response = app.put(&path, &cleared).await;

    assert_eq!(response.body["stored_events"], 1);
    let event_type: String = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'Profile' AND sequence = 3",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(event_type, "ProfileImageChanged");
    app.finish().await;
}

#[tokio::test]
async fn profile_of_unknown_user_is_not_found() {
    let app = TestApp::start().await;

    let user_id = uuid::Uuid::new_v4();
    let response = app
        .put(&format!("/v1/users/{user_id}/profile"), &profile())
        .await;

    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn profile_of_deactivated_user_is_conflict() {
    let app = TestApp::start().await;
    let user_id = app.register("profile-4@ais.example").await;
    app.patch(&format!("/v1/users/{user_id}"), &json!({"active": false}))
        .await;

    let response = app
        .put(&format!("/v1/users/{user_id}/profile"), &profile())
        .await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_eq!(response.body["message"], "user is deactivated");
    assert_eq!(app.events_of("Profile", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn settings_that_are_not_object_are_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("profile-5@ais.example").await;

    let response = app
        .put(
            &format!("/v1/users/{user_id}/profile"),
            &json!({"settings": [1, 2], "image": null}),
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "settings");
    assert_eq!(app.events_of("Profile", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn image_of_wrong_media_type_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("profile-6@ais.example").await;

    let mut body = profile();
    body["image"]["content_type"] = json!("text/plain");
    let response = app
        .put(&format!("/v1/users/{user_id}/profile"), &body)
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "image.content_type");
    assert_eq!(app.events_of("Profile", &user_id).await, 0);
    app.finish().await;
}

#[tokio::test]
async fn missing_settings_is_rejected() {
    let app = TestApp::start().await;
    let user_id = app.register("profile-7@ais.example").await;

    let response = app
        .put(
            &format!("/v1/users/{user_id}/profile"),
            &json!({"image": null}),
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], "settings");
    assert_eq!(app.events_of("Profile", &user_id).await, 0);
    app.finish().await;
}
