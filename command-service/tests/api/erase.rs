//! `DELETE /v1/users/{id}`: the user's key is destroyed with the event, and nothing of
//! theirs can be loaded or stored afterwards.

use axum::body::Body;
use axum::http::Method;
use serde_json::{json, Value};

use crate::common::TestApp;

impl TestApp {
    async fn delete(&self, path: &str, headers: &[(&str, &str)]) -> crate::common::TestResponse {
        self.raw(Method::DELETE, path, None, Body::empty(), headers)
            .await
    }

    async fn count(&self, query: &str, user_id: &str) -> i64 {
        sqlx::query_scalar(query)
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn report(seconds: i64) -> Value {
    json!({
        "latitude": 40.6401,
        "longitude": -74.0745,
        "recorded_at": format!("2020-12-01T00:{:02}:{:02}Z", seconds / 60, seconds % 60),
    })
}

#[tokio::test]
async fn erase_destroys_the_key_and_refuses_later_commands() {
    let app = TestApp::start().await;
    let user_id = app.register("erase-1@ais.example").await;
    let other_id = app.register("erase-2@ais.example").await;
    let path = format!("/v1/users/{user_id}");
    for seconds in [0, 10, 20] {
        let response = app
            .post(&format!("{path}/locations"), &report(seconds))
            .await;
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let events_before = app.event_count().await;

    let response = app.delete(&path, &[]).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.body["stored_events"], 1);
    assert!(response.body["position"].as_i64().unwrap() > 0);

    assert_eq!(app.event_count().await, events_before + 1, "events stay");
    let by_user = "SELECT count(*) FROM user_keys WHERE user_id = $1";
    assert_eq!(app.count(by_user, &user_id).await, 0, "key destroyed");
    assert_eq!(app.count(by_user, &other_id).await, 1, "other key kept");
    let snapshots = "SELECT count(*) FROM snapshots WHERE aggregate_id = $1";
    assert_eq!(app.count(snapshots, &user_id).await, 0, "snapshots deleted");
    let emails = "SELECT count(*) FROM user_emails WHERE user_id = $1";
    assert_eq!(app.count(emails, &user_id).await, 0, "email index deleted");
    let erased = "SELECT count(*) FROM erased_users WHERE user_id = $1";
    assert_eq!(app.count(erased, &user_id).await, 1);

    // The erased user's stored events no longer open, even with a key ring that cached the
    // key before, because the erase also evicted it.
    let payload: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_id = $1 AND event_type = 'UserRegistered'",
    )
    .bind(&user_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let mut attempt = payload;
    let error = app
        .state
        .cipher
        .open_event(&user_id, "UserRegistered", &mut attempt)
        .await
        .unwrap_err();
    assert!(error.is_erased(), "{error}");

    for response in [
        app.patch(&path, &json!({"name": "Someone Else"})).await,
        app.post(&format!("{path}/locations"), &report(30)).await,
        app.put(
            &format!("{path}/profile"),
            &json!({"settings": {}, "image": null}),
        )
        .await,
        app.delete(&path, &[]).await,
    ] {
        assert_eq!(response.status, 410, "{}", response.body);
        assert_eq!(response.body["error"], "gone");
    }
    assert_eq!(app.event_count().await, events_before + 1, "nothing stored");

    // The other user is untouched, and the address is free for a new user.
    let response = app
        .patch(
            &format!("/v1/users/{other_id}"),
            &json!({"name": "Still Here"}),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.body);
    app.register("erase-1@ais.example").await;
    app.finish().await;
}

#[tokio::test]
async fn erase_of_unknown_user_is_404_and_stores_nothing() {
    let app = TestApp::start().await;
    let response = app
        .delete("/v1/users/5b0f8a52-8d3c-4c44-9b0e-0d5a3b1f6a10", &[])
        .await;
    assert_eq!(response.status, 404, "{}", response.body);
    let response = app.delete("/v1/users/not-a-uuid", &[]).await;
    assert_eq!(response.status, 422, "{}", response.body);
    assert_eq!(response.body["field"], "id");
    assert_eq!(app.event_count().await, 0);
    app.finish().await;
}

#[tokio::test]
async fn erase_repeated_with_its_idempotency_key_replays_the_first_answer() {
    let app = TestApp::start().await;
    let user_id = app.register("erase-3@ais.example").await;
    let path = format!("/v1/users/{user_id}");

    let first = app
        .delete(&path, &[("idempotency-key", "erase-once")])
        .await;
    let second = app
        .delete(&path, &[("idempotency-key", "erase-once")])
        .await;

    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.body, second.body);
    app.finish().await;
}

#[tokio::test]
async fn request_repeated_after_erase_is_gone_not_replayed() {
    let app = TestApp::start().await;
    let key = [("idempotency-key", "register-erase-4")];
    let registered = app
        .send(
            Method::POST,
            "/v1/users",
            &json!({"email": "erase-4@ais.example", "name": "Ada", "password": "long enough password"}),
            &key,
        )
        .await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let user_id = registered.body["user_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/users/{user_id}");
    let rename_key = [("idempotency-key", "rename-erase-4")];
    let renamed = app
        .send(Method::PATCH, &path, &json!({"name": "Ada L"}), &rename_key)
        .await;
    assert_eq!(renamed.status, 200, "{}", renamed.body);

    let erased = app.delete(&path, &[("idempotency-key", "erase-4")]).await;
    assert_eq!(erased.status, 200, "{}", erased.body);

    let renamed_again = app
        .send(Method::PATCH, &path, &json!({"name": "Ada L"}), &rename_key)
        .await;
    assert_eq!(renamed_again.status, 410, "{}", renamed_again.body);
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        keys,
        vec![app.admin_scoped(&format!("DELETE {path} erase-4"))]
    );
    app.finish().await;
}
