//! The query service against a real PostgreSQL database of its own, with rows written
//! straight into the read-model tables, and tokens signed with a key made for each test.

use std::future::Future;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use meridian_auth::keys::{KeyFile, KeyStore};
use meridian_auth::token::{Claims, TokenService, AUDIENCE, ISSUER};
use meridian_auth::{Auth, AuthSettings, Limits, Role};
use meridian_event_log::testing::{unique_topic_prefix, TestDatabase};
use meridian_query_service::read_your_writes::DEFAULT_READ_WAIT;
use meridian_query_service::{serve, AppState};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

const TOPIC: &str = "test.query.events";

/// A running query service, the pool of its database, and its authentication state, which
/// signs the tests' tokens.
#[derive(Clone)]
struct Server {
    base: String,
    client: reqwest::Client,
    pool: PgPool,
    auth: Auth,
    /// The key file whose active key signs the server's tokens.
    keys: KeyFile,
}

type Answer = (StatusCode, reqwest::header::HeaderMap, Value);

impl Server {
    /// Returns an access token of `user_id` with `role`.
    fn token(&self, user_id: Uuid, role: Role) -> String {
        self.auth
            .tokens()
            .issue(&user_id.to_string(), role)
            .expect("issue a token")
            .token
    }

    fn user_token(&self, user_id: Uuid) -> String {
        self.token(user_id, Role::User)
    }

    fn admin_token(&self) -> String {
        self.token(Uuid::new_v4(), Role::Admin)
    }

    fn analyst_token(&self) -> String {
        self.token(Uuid::new_v4(), Role::Analyst)
    }

    /// Sends a GET with `token` as the bearer token.
    async fn get(&self, token: &str, path: &str) -> Answer {
        self.get_query(token, path, &[]).await
    }

    async fn get_query(&self, token: &str, path: &str, query: &[(&str, &str)]) -> Answer {
        let request = self
            .client
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(token);
        send(request).await
    }

    /// Sends a GET without an `Authorization` header.
    async fn get_open(&self, path: &str) -> Answer {
        send(self.client.get(format!("{}{path}", self.base))).await
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request failed");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.expect("body is not JSON");
    (status, headers, body)
}

/// Runs `test` against a fresh database and server, then stops the server and drops the
/// database, also when the test panics.
async fn with_server<F, Fut>(test: F)
where
    F: FnOnce(Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_server_configured(DEFAULT_READ_WAIT, Limits::generous(), test).await;
}

/// Same as [`with_server`], with `read_wait` as the maximum wait for a minimum position.
async fn with_server_waiting<F, Fut>(read_wait: std::time::Duration, test: F)
where
    F: FnOnce(Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_server_configured(read_wait, Limits::generous(), test).await;
}

/// Same as [`with_server`], with these rate limits.
async fn with_server_limited<F, Fut>(limits: Limits, test: F)
where
    F: FnOnce(Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_server_configured(DEFAULT_READ_WAIT, limits, test).await;
}

async fn with_server_configured<F, Fut>(read_wait: std::time::Duration, limits: Limits, test: F)
where
    F: FnOnce(Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let database = TestDatabase::create().await.expect("test database");
    let keys = KeyFile::generate();
    let auth = test_auth(&database.pool, &keys, limits);
    let state = AppState {
        pool: database.pool.clone(),
        events_topic: TOPIC.to_owned(),
        read_wait,
        socket_addr: "127.0.0.1:8091".parse().expect("socket address"),
        command_public_url: "http://127.0.0.1:8080".to_owned(),
        auth: auth.clone(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        stopped.await.ok();
    }));

    let outcome = tokio::spawn(test(Server {
        base,
        client: reqwest::Client::new(),
        pool: database.pool.clone(),
        auth,
        keys,
    }))
    .await;

    stop.send(()).ok();
    server.await.expect("server task").expect("server failed");
    database.drop_database().await.expect("drop database");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Builds authentication with the signing keys of `keys`, `limits`, and rate-limit counters
/// under a Redis prefix of its own.
fn test_auth(pool: &PgPool, keys: &KeyFile, limits: Limits) -> Auth {
    let keys = KeyStore::fixed(keys).expect("signing keys");
    let mut settings = AuthSettings::from_vars(|_| None).expect("default auth settings");
    settings.limits = limits;
    let redis_url = meridian_event_log::Settings::from_env()
        .expect("settings")
        .redis_url;
    Auth::with_keys(
        &settings,
        Arc::new(keys),
        pool.clone(),
        &redis_url,
        &unique_topic_prefix(),
    )
    .expect("auth")
}

fn time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_593_475_200, 0).unwrap() + Duration::seconds(seconds)
}

async fn insert_user(pool: &PgPool, user_id: Uuid, email: &str, active: bool) {
    sqlx::query(
        "INSERT INTO rm_users (user_id, email, name, active, registered_at, updated_at,
                               last_sequence, last_position)
         VALUES ($1, $2, 'SAMUEL I NEWHOUSE', $3, $4, $5, 3, 17)",
    )
    .bind(user_id)
    .bind(email)
    .bind(active)
    .bind(time(0))
    .bind(time(60))
    .execute(pool)
    .await
    .expect("insert rm_users");
}

async fn insert_history(pool: &PgPool, user_id: Uuid, sequence: i64, seconds: i64) -> Uuid {
    let event_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO rm_location_history (event_id, user_id, sequence, latitude, longitude,
                                          recorded_at, position)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event_id)
    .bind(user_id)
    .bind(sequence)
    .bind(40.0 + sequence as f64 / 100.0)
    .bind(-74.0)
    .bind(time(seconds))
    .bind(1000 + sequence)
    .execute(pool)
    .await
    .expect("insert rm_location_history");
    event_id
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "body: {body}");
    assert_eq!(body["error"], code, "body: {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
}

fn assert_field_rejected(status: StatusCode, body: &Value, field: &str) {
    assert_error(
        status,
        body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(body["field"], field, "body: {body}");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
}

#[tokio::test]
async fn user_by_id_returns_read_model() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;

        let token = server.user_token(user_id);
        let (status, _, body) = server.get(&token, &format!("/v1/users/{user_id}")).await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({
                "user_id": user_id,
                "email": "vessel-1@ais.example",
                "name": "SAMUEL I NEWHOUSE",
                "active": true,
                "role": "user",
                "registered_at": "2020-06-30T00:00:00Z",
                "updated_at": "2020-06-30T00:01:00Z",
                "last_sequence": 3,
                "last_position": 17,
            })
        );
    })
    .await;
}

/// Sets the role of a user's row as the read-models projection does for `RoleChanged`.
async fn set_role(pool: &PgPool, user_id: Uuid, role: &str) {
    sqlx::query(
        "UPDATE rm_users SET role = $2, last_sequence = last_sequence + 1 WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(role)
    .execute(pool)
    .await
    .expect("update rm_users role");
}

#[tokio::test]
async fn user_by_id_returns_each_role_change() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;
        let path = format!("/v1/users/{user_id}");
        let token = server.user_token(user_id);

        for role in ["admin", "analyst", "user"] {
            set_role(&server.pool, user_id, role).await;

            let (status, _, body) = server.get(&token, &path).await;

            assert_eq!(status, StatusCode::OK, "body: {body}");
            assert_eq!(body["role"], role, "body: {body}");
        }
    })
    .await;
}

#[tokio::test]
async fn users_by_email_include_role() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;
        set_role(&server.pool, user_id, "analyst").await;

        let (_, _, body) = server
            .get_query(
                &server.admin_token(),
                "/v1/users",
                &[("email", "vessel-1@ais.example")],
            )
            .await;

        assert_eq!(body["users"][0]["role"], "analyst", "body: {body}");
    })
    .await;
}

#[tokio::test]
async fn read_model_rejects_unknown_role() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;

        for role in ["root", "Admin", ""] {
            let result = sqlx::query("UPDATE rm_users SET role = $2 WHERE user_id = $1")
                .bind(user_id)
                .bind(role)
                .execute(&server.pool)
                .await;

            let error = result.expect_err("the CHECK constraint rejects the role");
            let constraint = error
                .as_database_error()
                .and_then(|error| error.constraint().map(str::to_owned));
            assert_eq!(
                constraint.as_deref(),
                Some("rm_users_role_valid"),
                "{role:?}: {error}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn openapi_lists_roles_of_user() {
    with_server(|server| async move {
        let (_, _, body) = server.get_open("/openapi.json").await;

        let user = &body["components"]["schemas"]["UserView"];
        let role = &user["properties"]["role"];
        assert_eq!(role["type"], "string", "{user}");
        assert_eq!(role["enum"], json!(["user", "admin", "analyst"]), "{user}");
        let required = user["required"].as_array().expect("required list");
        assert!(required.contains(&json!("role")), "{user}");
    })
    .await;
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let token = server.user_token(user_id);
        for suffix in ["", "/profile", "/location", "/locations"] {
            let path = format!("/v1/users/{user_id}{suffix}");
            let (status, _, body) = server.get(&token, &path).await;
            assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
            assert_eq!(body["field"], Value::Null);
        }
    })
    .await;
}

#[tokio::test]
async fn non_uuid_id_is_rejected_naming_id() {
    with_server(|server| async move {
        let token = server.admin_token();
        for suffix in ["", "/profile", "/location", "/locations"] {
            let path = format!("/v1/users/not-a-uuid{suffix}");
            let (status, _, body) = server.get(&token, &path).await;
            assert_field_rejected(status, &body, "id");
        }
    })
    .await;
}

#[tokio::test]
async fn users_by_email_matches_normalized_email() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", false).await;
        insert_user(&server.pool, Uuid::new_v4(), "other@ais.example", true).await;

        let (status, _, body) = server
            .get_query(
                &server.admin_token(),
                "/v1/users",
                &[("email", "  Vessel-1@AIS.Example ")],
            )
            .await;

        assert_eq!(status, StatusCode::OK);
        let users = body["users"].as_array().expect("users array");
        assert_eq!(users.len(), 1);
        assert_eq!(users[0]["user_id"], json!(user_id));
        assert_eq!(users[0]["active"], false);
    })
    .await;
}

#[tokio::test]
async fn users_by_unknown_email_is_empty() {
    with_server(|server| async move {
        let (status, _, body) = server
            .get_query(
                &server.admin_token(),
                "/v1/users",
                &[("email", "nobody@ais.example")],
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"users": []}));
    })
    .await;
}

#[tokio::test]
async fn users_by_email_needs_email() {
    with_server(|server| async move {
        let token = server.admin_token();
        let (status, _, body) = server.get(&token, "/v1/users").await;
        assert_field_rejected(status, &body, "email");

        let (status, _, body) = server
            .get_query(&token, "/v1/users", &[("email", "  ")])
            .await;
        assert_field_rejected(status, &body, "email");
    })
    .await;
}

#[tokio::test]
async fn profile_returns_settings_and_image() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let image = json!({"uri": "s3://bucket/a.png", "content_type": "image/png"});
        sqlx::query(
            "INSERT INTO rm_profiles (user_id, settings, image, updated_at, last_sequence,
                                      last_position)
             VALUES ($1, $2, $3, $4, 2, 40)",
        )
        .bind(user_id)
        .bind(json!({"units": "metric", "share": true}))
        .bind(&image)
        .bind(time(5))
        .execute(&server.pool)
        .await
        .expect("insert rm_profiles");

        let token = server.user_token(user_id);
        let (status, _, body) = server
            .get(&token, &format!("/v1/users/{user_id}/profile"))
            .await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({
                "user_id": user_id,
                "settings": {"units": "metric", "share": true},
                "image": image,
                "encrypted_image": null,
                "updated_at": "2020-06-30T00:00:05Z",
                "last_sequence": 2,
            })
        );
    })
    .await;
}

#[tokio::test]
async fn latest_location_returns_stored_fix() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let event_id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO rm_latest_locations (user_id, latitude, longitude, recorded_at,
                                              sequence, position, event_id)
             VALUES ($1, 40.6892, -74.0445, $2, 9, 120, $3)",
        )
        .bind(user_id)
        .bind(time(30))
        .bind(event_id)
        .execute(&server.pool)
        .await
        .expect("insert rm_latest_locations");

        let token = server.user_token(user_id);
        let (status, _, body) = server
            .get(&token, &format!("/v1/users/{user_id}/location"))
            .await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({
                "user_id": user_id,
                "latitude": 40.6892,
                "longitude": -74.0445,
                "recorded_at": "2020-06-30T00:00:30Z",
                "sequence": 9,
                "position": 120,
                "event_id": event_id,
            })
        );
    })
    .await;
}

/// Follows `next_cursor` from the first page to the last, returning every item and the
/// number of pages.
async fn read_all_pages(
    server: &Server,
    user_id: Uuid,
    query: &[(&str, &str)],
) -> (Vec<Value>, usize) {
    let path = format!("/v1/users/{user_id}/locations");
    let token = server.user_token(user_id);
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut page_query = query.to_vec();
        if let Some(cursor) = cursor.as_deref() {
            page_query.push(("cursor", cursor));
        }
        let (status, _, body) = server.get_query(&token, &path, &page_query).await;
        assert_eq!(status, StatusCode::OK, "body: {body}");
        items.extend(body["items"].as_array().expect("items").iter().cloned());
        pages += 1;
        assert!(pages <= 100, "pagination does not end");
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (items, pages),
        }
    }
}

#[tokio::test]
async fn history_pages_have_no_gaps_or_repeats() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let other_user = Uuid::new_v4();
        insert_user(&server.pool, user_id, "a@ais.example", true).await;
        // Inserted out of order; every third pair shares a timestamp, so the sequence
        // breaks ties.
        let mut expected = Vec::new();
        for sequence in (1..=25).rev() {
            let seconds = (sequence / 3) * 10;
            let event_id = insert_history(&server.pool, user_id, sequence, seconds).await;
            expected.push((seconds, sequence, event_id));
            insert_history(&server.pool, other_user, sequence, seconds).await;
        }
        expected.sort();

        let (items, pages) = read_all_pages(&server, user_id, &[("limit", "7")]).await;

        assert_eq!(pages, 4);
        let sequences: Vec<i64> = items
            .iter()
            .map(|i| i["sequence"].as_i64().unwrap())
            .collect();
        let expected_sequences: Vec<i64> = expected.iter().map(|e| e.1).collect();
        assert_eq!(sequences, expected_sequences);
        let event_ids: Vec<Value> = items.iter().map(|i| i["event_id"].clone()).collect();
        let expected_ids: Vec<Value> = expected.iter().map(|e| json!(e.2)).collect();
        assert_eq!(event_ids, expected_ids);
    })
    .await;
}

#[tokio::test]
async fn history_page_exactly_full_has_no_cursor() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "a@ais.example", true).await;
        for sequence in 1..=5 {
            insert_history(&server.pool, user_id, sequence, sequence).await;
        }

        let (status, _, body) = server
            .get_query(
                &server.user_token(user_id),
                &format!("/v1/users/{user_id}/locations"),
                &[("limit", "5")],
            )
            .await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["items"].as_array().map(Vec::len), Some(5));
        assert_eq!(body["next_cursor"], Value::Null);
    })
    .await;
}

#[tokio::test]
async fn history_range_includes_from_and_excludes_to() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "a@ais.example", true).await;
        for sequence in 0..10 {
            insert_history(&server.pool, user_id, sequence, sequence * 60).await;
        }
        let from = time(120).to_rfc3339();
        let to = time(360).to_rfc3339();

        let (items, _) = read_all_pages(
            &server,
            user_id,
            &[("from", &from), ("to", &to), ("limit", "2")],
        )
        .await;

        let sequences: Vec<i64> = items
            .iter()
            .map(|i| i["sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(sequences, vec![2, 3, 4, 5]);
        assert_eq!(items[0]["recorded_at"], "2020-06-30T00:02:00Z");
    })
    .await;
}

#[tokio::test]
async fn history_accepts_offset_timestamps() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "a@ais.example", true).await;
        insert_history(&server.pool, user_id, 1, 0).await;
        insert_history(&server.pool, user_id, 2, 7200).await;

        let (status, _, body) = server
            .get_query(
                &server.user_token(user_id),
                &format!("/v1/users/{user_id}/locations"),
                &[("from", "2020-06-30T03:00:00+01:00")],
            )
            .await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(body["items"][0]["sequence"], 2);
    })
    .await;
}

#[tokio::test]
async fn history_of_user_without_locations_is_empty() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "a@ais.example", true).await;

        let token = server.user_token(user_id);
        let (status, _, body) = server
            .get(&token, &format!("/v1/users/{user_id}/locations"))
            .await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"items": [], "next_cursor": null}));
    })
    .await;
}

#[tokio::test]
async fn history_rejects_invalid_parameters() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "a@ais.example", true).await;
        let path = format!("/v1/users/{user_id}/locations");
        let token = server.user_token(user_id);
        let cases: [(&[(&str, &str)], &str); 10] = [
            (&[("limit", "0")], "limit"),
            (&[("limit", "1001")], "limit"),
            (&[("limit", "ten")], "limit"),
            (&[("limit", "5"), ("limit", "6")], "limit"),
            (&[("from", "yesterday")], "from"),
            (&[("from", "2020-06-30")], "from"),
            (&[("to", "2020-06-30T00:00:00")], "to"),
            (
                &[
                    ("from", "2020-06-30T00:00:00Z"),
                    ("to", "2020-06-30T00:00:00Z"),
                ],
                "to",
            ),
            (&[("cursor", "not-a-cursor")], "cursor"),
            (&[("cursor", "")], "cursor"),
        ];
        for (query, field) in cases {
            let (status, _, body) = server.get_query(&token, &path, query).await;
            assert_field_rejected(status, &body, field);
        }
    })
    .await;
}

#[tokio::test]
async fn stats_count_rows_and_projection_lag() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4().to_string();
        let events = [
            (
                "User",
                "UserRegistered",
                json!({"UserRegistered": {"email": "a@ais.example"}}),
            ),
            (
                "LocationTrack",
                "LocationRecorded",
                json!({"LocationRecorded": {}}),
            ),
            (
                "LocationTrack",
                "LocationRecorded",
                json!({"LocationRecorded": {}}),
            ),
        ];
        // The event store takes events only of a user with a data key, and a registration
        // only with the blind index of its address; the query service reads neither.
        sqlx::query(
            "INSERT INTO user_keys (user_id, master_key_id, wrapped_key) VALUES ($1, 'test', '\\x00')",
        )
        .bind(&user_id)
        .execute(&server.pool)
        .await
        .expect("insert a key row");
        for (sequence, (aggregate_type, event_type, payload)) in events.iter().enumerate() {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ($1, $2, $3, $4, '1', $5, '{\"email_index\": \"test\"}')",
            )
            .bind(aggregate_type)
            .bind(&user_id)
            .bind(i64::try_from(sequence).unwrap() + 1)
            .bind(event_type)
            .bind(payload)
            .execute(&server.pool)
            .await
            .expect("insert events");
        }
        // One of the three stored events has been published and relayed.
        sqlx::query("DELETE FROM outbox WHERE position = (SELECT min(position) FROM outbox)")
            .execute(&server.pool)
            .await
            .expect("delete outbox row");
        insert_user(&server.pool, Uuid::new_v4(), "b@ais.example", true).await;
        insert_history(&server.pool, Uuid::new_v4(), 1, 0).await;
        sqlx::query(
            "INSERT INTO relay_checkpoints (topic, partition, next_offset)
             VALUES ($1, 0, 5), ($1, 1, 7), ('other.events', 0, 1000)",
        )
        .bind(TOPIC)
        .execute(&server.pool)
        .await
        .expect("insert relay_checkpoints");
        sqlx::query(
            "INSERT INTO projection_offsets (projection, topic, partition, next_offset)
             VALUES ('read-models', $1, 0, 5), ('read-models', $1, 1, 4),
                    ('read-models', 'other.events', 0, 900), ('analytics', $1, 0, 2)",
        )
        .bind(TOPIC)
        .execute(&server.pool)
        .await
        .expect("insert projection_offsets");

        let (status, _, body) = server.get(&server.analyst_token(), "/v1/stats").await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({
                "users": 1,
                "events": 3,
                "location_events": 2,
                "location_history": 1,
                "outbox_pending": 2,
                // published 12, consumed 9 and 2, plus 2 not yet published
                "projections": {"read-models": {"lag": 5}, "analytics": {"lag": 12}},
            })
        );
    })
    .await;
}

#[tokio::test]
async fn stats_of_empty_database_show_no_lag() {
    with_server(|server| async move {
        let (status, _, body) = server.get(&server.analyst_token(), "/v1/stats").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["events"], 0);
        assert_eq!(body["projections"]["read-models"]["lag"], 0);
        assert_eq!(body["projections"]["analytics"]["lag"], 0);
    })
    .await;
}

#[tokio::test]
async fn healthz_reports_ok() {
    with_server(|server| async move {
        let (status, _, body) = server.get_open("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({"status": "ok"}));
    })
    .await;
}

#[tokio::test]
async fn openapi_lists_every_route() {
    with_server(|server| async move {
        let (status, _, body) = server.get_open("/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["openapi"], "3.1.0");
        for path in [
            "/healthz",
            "/openapi.json",
            "/v1/users",
            "/v1/users/{id}",
            "/v1/users/{id}/profile",
            "/v1/users/{id}/profile/image",
            "/v1/users/{id}/location",
            "/v1/users/{id}/locations",
            "/v1/locations/latest",
            "/v1/stats",
            "/v1/events",
        ] {
            assert!(body["paths"][path]["get"].is_object(), "{path} is missing");
        }
    })
    .await;
}

#[tokio::test]
async fn request_id_is_generated_and_echoed() {
    with_server(|server| async move {
        let path = format!("/v1/users/{}", Uuid::new_v4());
        let (_, headers, body) = server.get(&server.admin_token(), &path).await;
        let generated = headers["x-request-id"].to_str().expect("header");
        assert!(!generated.is_empty());
        assert_eq!(body["request_id"], generated);

        let response = server
            .client
            .get(format!("{}/healthz", server.base))
            .header("x-request-id", "trace-me-42")
            .send()
            .await
            .expect("request failed");
        assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    })
    .await;
}

#[tokio::test]
async fn unknown_route_and_method_get_json_errors() {
    with_server(|server| async move {
        let (status, _, body) = server.get_open("/v1/nothing-here").await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

        let response = server
            .client
            .post(format!("{}/v1/stats", server.base))
            .bearer_auth(server.analyst_token())
            .send()
            .await
            .expect("request failed");
        let status = response.status();
        let body: Value = response.json().await.expect("body is not JSON");
        assert_error(
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
        );
    })
    .await;
}

#[tokio::test]
async fn database_failure_returns_opaque_error() {
    with_server(|server| async move {
        sqlx::query("DROP TABLE rm_users")
            .execute(&server.pool)
            .await
            .expect("drop rm_users");

        let path = format!("/v1/users/{}", Uuid::new_v4());
        let (status, _, body) = server.get(&server.admin_token(), &path).await;

        assert_error(status, &body, StatusCode::INTERNAL_SERVER_ERROR, "internal");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("rm_users"),
            "message leaks the cause: {message}"
        );
    })
    .await;
}

/// Stand-in for an envelope: the query service serves the stored bytes without reading them.
const ENVELOPE: &[u8] = b"MRDIMG\x01\x01 stand-in header and ciphertext \x00\xff";
const IMAGE_ID: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn encrypted_image(image_id: &str) -> Value {
    json!({
        "id": image_id,
        "size_bytes": ENVELOPE.len(),
        "media_type": "image/webp",
        "key_mode": "passphrase",
        "uploaded_at": "2020-06-30T00:00:07Z",
    })
}

/// Writes the profile read model naming `image` as the current encrypted image.
async fn insert_profile_with_image(pool: &PgPool, user_id: Uuid, image: Option<Value>) {
    sqlx::query(
        "INSERT INTO rm_profiles (user_id, settings, encrypted_image, updated_at, last_sequence,
                                  last_position)
         VALUES ($1, '{}', $2, $3, 1, 41)",
    )
    .bind(user_id)
    .bind(image)
    .bind(time(7))
    .execute(pool)
    .await
    .expect("insert rm_profiles");
}

async fn insert_envelope(pool: &PgPool, user_id: Uuid, image_id: &str, bytes: &[u8]) {
    sqlx::query(
        "INSERT INTO profile_images (user_id, image_id, bytes, media_type, created_at)
         VALUES ($1, $2, $3, 'image/webp', now())",
    )
    .bind(user_id.to_string())
    .bind(image_id)
    .bind(bytes)
    .execute(pool)
    .await
    .expect("insert profile_images");
}

/// Sends `GET /v1/users/{id}/profile/image` and returns the raw response.
async fn get_image(
    server: &Server,
    user_id: Uuid,
    if_none_match: Option<&str>,
) -> reqwest::Response {
    let mut request = server
        .client
        .get(format!("{}/v1/users/{user_id}/profile/image", server.base))
        .bearer_auth(server.user_token(user_id));
    if let Some(etag) = if_none_match {
        request = request.header("if-none-match", etag);
    }
    request.send().await.expect("request failed")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn profile_includes_encrypted_image_metadata() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_profile_with_image(&server.pool, user_id, Some(encrypted_image(IMAGE_ID))).await;

        let token = server.user_token(user_id);
        let (status, _, body) = server
            .get(&token, &format!("/v1/users/{user_id}/profile"))
            .await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["encrypted_image"], encrypted_image(IMAGE_ID));
        assert_eq!(body["image"], Value::Null);
    })
    .await;
}

#[tokio::test]
async fn profile_image_returns_stored_envelope() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_profile_with_image(&server.pool, user_id, Some(encrypted_image(IMAGE_ID))).await;
        insert_envelope(&server.pool, user_id, IMAGE_ID, ENVELOPE).await;

        let response = get_image(&server, user_id, None).await;

        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "content-type"),
            "application/vnd.meridian.encrypted-image"
        );
        assert_eq!(header(&response, "etag"), format!("\"{IMAGE_ID}\""));
        assert_eq!(header(&response, "x-meridian-media-type"), "image/webp");
        assert!(!header(&response, "x-request-id").is_empty());
        let bytes = response.bytes().await.expect("body is readable");
        assert_eq!(bytes.as_ref(), ENVELOPE);
    })
    .await;
}

#[tokio::test]
async fn profile_image_serves_only_current_envelope() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let old_id = "0".repeat(64);
        insert_profile_with_image(&server.pool, user_id, Some(encrypted_image(IMAGE_ID))).await;
        insert_envelope(&server.pool, user_id, &old_id, b"MRDIMG old envelope").await;
        insert_envelope(&server.pool, user_id, IMAGE_ID, ENVELOPE).await;

        let response = get_image(&server, user_id, None).await;

        assert_eq!(header(&response, "etag"), format!("\"{IMAGE_ID}\""));
        let bytes = response.bytes().await.expect("body is readable");
        assert_eq!(bytes.as_ref(), ENVELOPE);
    })
    .await;
}

#[tokio::test]
async fn profile_image_with_current_etag_is_not_modified() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_profile_with_image(&server.pool, user_id, Some(encrypted_image(IMAGE_ID))).await;
        insert_envelope(&server.pool, user_id, IMAGE_ID, ENVELOPE).await;

        let current = format!("\"{IMAGE_ID}\"");
        let response = get_image(&server, user_id, Some(&current)).await;

        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&response, "etag"), current);
        let bytes = response.bytes().await.expect("body is readable");
        assert!(bytes.is_empty());
    })
    .await;
}

#[tokio::test]
async fn profile_image_with_old_etag_is_returned() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_profile_with_image(&server.pool, user_id, Some(encrypted_image(IMAGE_ID))).await;
        insert_envelope(&server.pool, user_id, IMAGE_ID, ENVELOPE).await;

        let old = format!("\"{}\"", "0".repeat(64));
        let response = get_image(&server, user_id, Some(&old)).await;

        assert_eq!(response.status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn profile_image_without_upload_is_not_found() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_profile_with_image(&server.pool, user_id, None).await;

        let (status, _, body) = server
            .get(
                &server.user_token(user_id),
                &format!("/v1/users/{user_id}/profile/image"),
            )
            .await;

        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains("no uploaded profile image"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn profile_image_of_unknown_user_is_not_found() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();

        let (status, _, body) = server
            .get(
                &server.user_token(user_id),
                &format!("/v1/users/{user_id}/profile/image"),
            )
            .await;

        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
    })
    .await;
}

#[tokio::test]
async fn profile_image_missing_from_storage_is_not_found() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_profile_with_image(&server.pool, user_id, Some(encrypted_image(IMAGE_ID))).await;

        let (status, _, body) = server
            .get(
                &server.user_token(user_id),
                &format!("/v1/users/{user_id}/profile/image"),
            )
            .await;

        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(IMAGE_ID), "{message}");
    })
    .await;
}

#[tokio::test]
async fn openapi_describes_image_download() {
    with_server(|server| async move {
        let (_, _, body) = server.get_open("/openapi.json").await;

        let operation = &body["paths"]["/v1/users/{id}/profile/image"]["get"];
        let ok = &operation["responses"]["200"];
        let content = &ok["content"]["application/vnd.meridian.encrypted-image"]["schema"];
        let reference = content["$ref"].as_str().unwrap_or_default();
        let name = reference.rsplit('/').next().unwrap_or_default();
        let schema = &body["components"]["schemas"][name];
        assert_eq!(schema["type"], "string", "{operation}");
        assert_eq!(schema["format"], "binary", "{operation}");
        assert!(ok["headers"]["ETag"].is_object(), "{ok}");
        assert!(ok["headers"]["X-Meridian-Media-Type"].is_object(), "{ok}");
        assert!(operation["responses"]["304"].is_object(), "{operation}");
        assert!(operation["responses"]["404"].is_object(), "{operation}");
    })
    .await;
}

#[tokio::test]
async fn profile_image_of_non_uuid_is_rejected() {
    with_server(|server| async move {
        let (status, _, body) = server
            .get(&server.admin_token(), "/v1/users/42/profile/image")
            .await;
        assert_field_rejected(status, &body, "id");
    })
    .await;
}

// Read-your-writes: a minimum position given as header or parameter.

/// Maximum wait of the servers in the timeout tests.
const SHORT_READ_WAIT: std::time::Duration = std::time::Duration::from_millis(300);

/// Stores a key row for `user_id`, which the event store requires before any event.
async fn insert_user_key(pool: &PgPool, user_id: Uuid) {
    sqlx::query(
        "INSERT INTO user_keys (user_id, master_key_id, wrapped_key) VALUES ($1, 'test', '\\x00')",
    )
    .bind(user_id.to_string())
    .execute(pool)
    .await
    .expect("insert a key row");
}

/// Stores one `LocationRecorded` event and returns its position.
async fn insert_location_event(pool: &PgPool, user_id: Uuid, sequence: i64) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata)
         VALUES ('LocationTrack', $1, $2, 'LocationRecorded', '1',
                 '{\"LocationRecorded\": {}}', '{}')
         RETURNING position",
    )
    .bind(user_id.to_string())
    .bind(sequence)
    .fetch_one(pool)
    .await
    .expect("insert event")
}

/// Folds a location into the read model the way the projection does: the location and
/// `rm_applied` in one transaction.
async fn project_location(pool: &PgPool, user_id: Uuid, sequence: i64, position: i64) {
    let mut transaction = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO rm_latest_locations (user_id, latitude, longitude, recorded_at,
                                          sequence, position, event_id)
         VALUES ($1, 40.6892, -74.0445, $2, $3, $4, $5)",
    )
    .bind(user_id)
    .bind(time(sequence))
    .bind(sequence)
    .bind(position)
    .bind(Uuid::new_v4())
    .execute(&mut *transaction)
    .await
    .expect("insert rm_latest_locations");
    set_applied(&mut transaction, user_id, sequence).await;
    transaction.commit().await.expect("commit");
}

async fn set_applied(connection: &mut sqlx::PgConnection, user_id: Uuid, sequence: i64) {
    sqlx::query(
        "INSERT INTO rm_applied (aggregate_type, aggregate_id, last_sequence)
         VALUES ('LocationTrack', $1, $2)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET last_sequence = $2",
    )
    .bind(user_id.to_string())
    .bind(sequence)
    .execute(connection)
    .await
    .expect("upsert rm_applied");
}

impl Server {
    /// Sends a GET as an admin with an optional `X-Min-Position` header.
    async fn get_min_position(
        &self,
        path: &str,
        query: &[(&str, &str)],
        header: Option<&str>,
    ) -> Answer {
        let mut request = self
            .client
            .get(format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(self.admin_token());
        if let Some(value) = header {
            request = request.header("X-Min-Position", value);
        }
        send(request).await
    }
}

/// Stores an event, reads the user's location with `send`, and folds the event into the
/// read model 200 ms after the request was sent. Returns the response to the read.
async fn read_while_projecting<F, Fut>(server: &Server, send: F) -> (StatusCode, Value)
where
    F: FnOnce(Server, Uuid, i64) -> Fut,
    Fut: Future<Output = Answer>,
{
    let user_id = Uuid::new_v4();
    insert_user_key(&server.pool, user_id).await;
    let position = insert_location_event(&server.pool, user_id, 1).await;

    let pool = server.pool.clone();
    let projection = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        project_location(&pool, user_id, 1, position).await;
    });
    let (status, _, body) = send(server.clone(), user_id, position).await;
    projection.await.expect("projection task");
    (status, body)
}

#[tokio::test]
async fn min_position_header_waits_for_projection() {
    with_server(|server| async move {
        let (status, body) =
            read_while_projecting(&server, |server, user_id, position| async move {
                let path = format!("/v1/users/{user_id}/location");
                server
                    .get_min_position(&path, &[], Some(&position.to_string()))
                    .await
            })
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["sequence"], 1);
    })
    .await;
}

#[tokio::test]
async fn min_position_parameter_waits_for_projection() {
    with_server(|server| async move {
        let (status, body) =
            read_while_projecting(&server, |server, user_id, position| async move {
                let path = format!("/v1/users/{user_id}/location");
                let position = position.to_string();
                server
                    .get_min_position(&path, &[("min_position", &position)], None)
                    .await
            })
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["sequence"], 1);
    })
    .await;
}

#[tokio::test]
async fn min_position_header_and_parameter_agree() {
    with_server(|server| async move {
        let (status, body) =
            read_while_projecting(&server, |server, user_id, position| async move {
                let path = format!("/v1/users/{user_id}/location");
                let position = position.to_string();
                server
                    .get_min_position(&path, &[("min_position", &position)], Some(&position))
                    .await
            })
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["sequence"], 1);
    })
    .await;
}

#[tokio::test]
async fn min_position_already_processed_is_answered() {
    with_server_waiting(SHORT_READ_WAIT, |server| async move {
        let user_id = Uuid::new_v4();
        insert_user_key(&server.pool, user_id).await;
        let first = insert_location_event(&server.pool, user_id, 1).await;
        let second = insert_location_event(&server.pool, user_id, 2).await;
        project_location(&server.pool, user_id, 2, second).await;

        let (status, _, body) = server
            .get_min_position("/v1/stats", &[], Some(&first.to_string()))
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
    })
    .await;
}

#[tokio::test]
async fn min_position_not_processed_times_out() {
    with_server_waiting(SHORT_READ_WAIT, |server| async move {
        let user_id = Uuid::new_v4();
        insert_user_key(&server.pool, user_id).await;
        insert_location_event(&server.pool, user_id, 1).await;
        let position = insert_location_event(&server.pool, user_id, 2).await;
        let mut connection = server.pool.acquire().await.expect("connection");
        set_applied(&mut connection, user_id, 1).await;

        let (status, headers, body) = server
            .get_min_position("/v1/stats", &[], Some(&position.to_string()))
            .await;

        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "not_yet_consistent",
        );
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(body["min_position"], position);
        assert_eq!(
            body["progress"],
            json!({
                "aggregate_type": "LocationTrack",
                "aggregate_id": user_id.to_string(),
                "sequence": 2,
                "processed_sequence": 1,
            })
        );
    })
    .await;
}

#[tokio::test]
async fn min_position_of_unprocessed_aggregate_times_out() {
    with_server_waiting(SHORT_READ_WAIT, |server| async move {
        let user_id = Uuid::new_v4();
        insert_user_key(&server.pool, user_id).await;
        let position = insert_location_event(&server.pool, user_id, 1).await;

        let (status, headers, body) = server
            .get_min_position(
                "/v1/locations/latest",
                &[("min_position", &position.to_string())],
                None,
            )
            .await;

        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "not_yet_consistent",
        );
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(body["progress"]["processed_sequence"], Value::Null);
    })
    .await;
}

#[tokio::test]
async fn min_position_beyond_last_event_times_out() {
    with_server_waiting(SHORT_READ_WAIT, |server| async move {
        let user_id = Uuid::new_v4();
        insert_user_key(&server.pool, user_id).await;
        let last = insert_location_event(&server.pool, user_id, 1).await;
        project_location(&server.pool, user_id, 1, last).await;

        let ahead = (last + 1).to_string();
        let (status, headers, body) = server
            .get_min_position("/v1/stats", &[("min_position", &ahead)], None)
            .await;

        assert_error(
            status,
            &body,
            StatusCode::SERVICE_UNAVAILABLE,
            "not_yet_consistent",
        );
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(body["min_position"], last + 1);
        assert!(body.get("progress").is_none(), "body: {body}");
    })
    .await;
}

#[tokio::test]
async fn min_position_of_rolled_back_event_is_reached() {
    with_server_waiting(SHORT_READ_WAIT, |server| async move {
        let user_id = Uuid::new_v4();
        insert_user_key(&server.pool, user_id).await;
        let mut transaction = server.pool.begin().await.expect("begin");
        let hole: i64 = sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             VALUES ('LocationTrack', $1, 1, 'LocationRecorded', '1', '{}', '{}')
             RETURNING position",
        )
        .bind(user_id.to_string())
        .fetch_one(&mut *transaction)
        .await
        .expect("insert event");
        transaction.rollback().await.expect("rollback");
        let later = insert_location_event(&server.pool, user_id, 1).await;
        assert!(later > hole);

        let (status, _, body) = server
            .get_min_position("/v1/stats", &[], Some(&hole.to_string()))
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
    })
    .await;
}

#[tokio::test]
async fn min_position_rejects_invalid_values() {
    with_server(|server| async move {
        // (min_position parameter, X-Min-Position header, rejected field)
        let cases = [
            (Some("abc"), None, "min_position"),
            (Some("0"), None, "min_position"),
            (Some("-4"), None, "min_position"),
            (Some(""), None, "min_position"),
            (None, Some("abc"), "X-Min-Position"),
            (None, Some("0"), "X-Min-Position"),
            (None, Some("-4"), "X-Min-Position"),
            (Some("6"), Some("5"), "min_position"),
        ];
        for (parameter, header, field) in cases {
            let query: Vec<(&str, &str)> = parameter
                .map(|value| ("min_position", value))
                .into_iter()
                .collect();
            let (status, _, body) = server.get_min_position("/v1/stats", &query, header).await;

            assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
            assert_eq!(body["field"], field, "body: {body}");
            assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
    })
    .await;
}

#[tokio::test]
async fn min_position_is_checked_on_every_v1_route() {
    with_server(|server| async move {
        let (_, _, document) = server.get_open("/openapi.json").await;
        let paths = document["paths"].as_object().expect("paths");
        let v1_paths: Vec<&String> = paths.keys().filter(|p| p.starts_with("/v1/")).collect();
        assert!(
            v1_paths
                .iter()
                .any(|path| path.as_str() == "/v1/users/{id}"),
            "{v1_paths:?}"
        );

        for path in v1_paths {
            let concrete = path.replace("{id}", &Uuid::new_v4().to_string());
            let (status, _, body) = server
                .get_min_position(&concrete, &[("min_position", "soon")], None)
                .await;

            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(body["field"], "min_position", "{path}: {body}");
        }
    })
    .await;
}

#[tokio::test]
async fn openapi_describes_min_position() {
    with_server(|server| async move {
        let (_, _, document) = server.get_open("/openapi.json").await;
        let operation = &document["paths"]["/v1/stats"]["get"];
        let names: Vec<&str> = operation["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|parameter| parameter["name"].as_str())
            .collect();

        assert!(names.contains(&"X-Min-Position"), "{names:?}");
        assert!(names.contains(&"min_position"), "{names:?}");
        assert!(operation["responses"]["503"].is_object());
        assert!(document["paths"]["/healthz"]["get"]["parameters"].is_null());
    })
    .await;
}

// The latest-locations snapshot.

async fn insert_latest_location(pool: &PgPool, user_id: Uuid, longitude: f64, latitude: f64) {
    sqlx::query(
        "INSERT INTO rm_latest_locations (user_id, latitude, longitude, recorded_at,
                                          sequence, position, event_id)
         VALUES ($1, $2, $3, $4, 4, 40, $5)",
    )
    .bind(user_id)
    .bind(latitude)
    .bind(longitude)
    .bind(time(10))
    .bind(Uuid::new_v4())
    .execute(pool)
    .await
    .expect("insert rm_latest_locations");
}

/// Appends live-update rows with these positions and moves the head to the last one.
async fn append_updates(pool: &PgPool, positions: &[i64]) {
    for position in positions {
        sqlx::query(
            "WITH head AS (UPDATE rm_update_head SET seq = seq + 1 RETURNING seq)
             INSERT INTO rm_updates (seq, position, user_id, kind, payload)
             SELECT seq, $1, $2, 'location', '{}' FROM head",
        )
        .bind(position)
        .bind(Uuid::new_v4())
        .execute(pool)
        .await
        .expect("append rm_updates");
    }
}

/// Three users sorted by id, so the expected order is the order of the array.
fn sorted_users() -> [Uuid; 3] {
    let mut users = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    users.sort();
    users
}

fn user_ids(body: &Value) -> Vec<String> {
    body["locations"]
        .as_array()
        .expect("locations")
        .iter()
        .map(|location| location["user_id"].as_str().expect("user_id").to_owned())
        .collect()
}

#[tokio::test]
async fn empty_feed_gives_position_zero() {
    with_server(|server| async move {
        let (status, _, body) = server
            .get(&server.admin_token(), "/v1/locations/latest")
            .await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"position": 0, "locations": [], "truncated": false})
        );
    })
    .await;
}

#[tokio::test]
async fn latest_locations_include_feed_position() {
    with_server(|server| async move {
        let [first, second, third] = sorted_users();
        insert_user(&server.pool, second, "vessel-2@ais.example", true).await;
        insert_user(&server.pool, first, "vessel-1@ais.example", false).await;
        for user_id in [third, first, second] {
            insert_latest_location(&server.pool, user_id, -74.0, 40.5).await;
        }
        append_updates(&server.pool, &[31, 38, 35]).await;

        let (status, _, body) = server
            .get(&server.admin_token(), "/v1/locations/latest")
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["position"], 35);
        assert_eq!(body["truncated"], false);
        assert_eq!(
            user_ids(&body),
            [first, second, third].map(|id| id.to_string())
        );
        assert_eq!(
            body["locations"][0],
            json!({
                "user_id": first,
                "name": "SAMUEL I NEWHOUSE",
                "latitude": 40.5,
                "longitude": -74.0,
                "recorded_at": "2020-06-30T00:00:10Z",
                "sequence": 4,
                "position": 40,
            })
        );
        assert_eq!(body["locations"][2]["name"], Value::Null);
    })
    .await;
}

#[tokio::test]
async fn latest_locations_filter_by_bbox_with_edges() {
    with_server(|server| async move {
        let [inside, on_edge, outside] = sorted_users();
        insert_latest_location(&server.pool, inside, -74.0, 40.7).await;
        insert_latest_location(&server.pool, on_edge, -73.9, 40.6).await;
        insert_latest_location(&server.pool, outside, -73.8, 40.7).await;

        let (status, _, body) = server
            .get_query(
                &server.admin_token(),
                "/v1/locations/latest",
                &[("bbox", "-74.1,40.6,-73.9,40.8")],
            )
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(user_ids(&body), [inside, on_edge].map(|id| id.to_string()));
    })
    .await;
}

#[tokio::test]
async fn latest_locations_limit_truncates() {
    with_server(|server| async move {
        let users = sorted_users();
        for user_id in users {
            insert_latest_location(&server.pool, user_id, 10.0, 10.0).await;
        }

        let (status, _, body) = server
            .get_query(
                &server.admin_token(),
                "/v1/locations/latest",
                &[("limit", "2")],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(
            user_ids(&body),
            [users[0], users[1]].map(|id| id.to_string())
        );
        assert_eq!(body["truncated"], true);

        let (status, _, body) = server
            .get_query(
                &server.admin_token(),
                "/v1/locations/latest",
                &[("limit", "3")],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(user_ids(&body).len(), 3);
        assert_eq!(body["truncated"], false);
    })
    .await;
}

#[tokio::test]
async fn latest_locations_reject_invalid_parameters() {
    with_server(|server| async move {
        let cases = [
            ("bbox", "1,2,3"),
            ("bbox", "a,2,3,4"),
            ("bbox", "-181,0,0,0"),
            ("bbox", "0,-91,0,0"),
            ("bbox", "10,0,5,1"),
            ("bbox", "0,10,1,5"),
            ("bbox", "NaN,0,1,1"),
            ("limit", "0"),
            ("limit", "10001"),
            ("limit", "many"),
        ];
        for (field, value) in cases {
            let (status, _, body) = server
                .get_query(
                    &server.admin_token(),
                    "/v1/locations/latest",
                    &[(field, value)],
                )
                .await;

            assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
            assert_eq!(body["field"], field, "{field}={value}: {body}");
            assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }

        let (status, _, body) = server
            .get_query(
                &server.admin_token(),
                "/v1/locations/latest",
                &[("bbox", "0,0,1,1"), ("bbox", "0,0,2,2")],
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        assert_eq!(body["field"], "bbox", "body: {body}");
    })
    .await;
}

#[tokio::test]
async fn latest_locations_accept_limit_bounds() {
    with_server(|server| async move {
        for limit in ["1", "10000"] {
            let (status, _, body) = server
                .get_query(
                    &server.admin_token(),
                    "/v1/locations/latest",
                    &[("limit", limit)],
                )
                .await;
            assert_eq!(status, StatusCode::OK, "limit={limit}: {body}");
        }
    })
    .await;
}

#[tokio::test]
async fn analyst_gets_snapshot_without_names() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;
        insert_latest_location(&server.pool, user_id, -74.0, 40.5).await;

        let (status, _, body) = server
            .get(&server.analyst_token(), "/v1/locations/latest")
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["locations"][0]["user_id"], json!(user_id));
        assert_eq!(body["locations"][0]["name"], Value::Null);
    })
    .await;
}

// Authentication and authorization.

/// Returns every `/v1` path of the OpenAPI document, with `{id}` replaced by `user_id`.
async fn v1_paths(server: &Server, user_id: Uuid) -> Vec<String> {
    let (_, _, document) = server.get_open("/openapi.json").await;
    let paths: Vec<String> = document["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .filter(|path| path.starts_with("/v1/"))
        .map(|path| path.replace("{id}", &user_id.to_string()))
        .collect();
    assert!(paths.iter().any(|path| path == "/v1/stats"), "{paths:?}");
    paths
}

/// Claims of a token of `user_id` with `role`, issued `age` seconds ago and valid for
/// `lifetime` seconds.
fn claims(user_id: Uuid, role: Role, age: i64, lifetime: i64) -> Claims {
    let issued_at = Utc::now().timestamp() - age;
    Claims {
        sub: user_id.to_string(),
        role,
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        iat: issued_at,
        exp: issued_at + lifetime,
        jti: Uuid::new_v4().to_string(),
    }
}

fn encode_part(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn decode_part(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON")
}

/// Checks a 401 with `code` and a bearer challenge.
fn assert_unauthorized(answer: &Answer, code: &str) {
    let (status, headers, body) = answer;
    assert_error(*status, body, StatusCode::UNAUTHORIZED, code);
    let challenge = headers
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "challenge: {challenge:?}");
}

fn assert_forbidden(answer: &Answer, field: Option<&str>) {
    let (status, _, body) = answer;
    assert_error(*status, body, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(body["field"], json!(field), "body: {body}");
}

#[tokio::test]
async fn every_v1_route_needs_a_token() {
    with_server(|server| async move {
        for path in v1_paths(&server, Uuid::new_v4()).await {
            let answer = server.get_open(&path).await;

            assert_unauthorized(&answer, "unauthenticated");
            assert_eq!(
                answer.1["www-authenticate"], "Bearer realm=\"meridian\"",
                "{path}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn malformed_authorization_is_unauthorized() {
    with_server(|server| async move {
        for value in [
            "Basic YWRtaW46YWRtaW4=",
            "Bearer",
            "Bearer not-a-jwt",
            "Bearer a.b.c",
        ] {
            let request = server
                .client
                .get(format!("{}/v1/stats", server.base))
                .header("authorization", value);
            let answer = send(request).await;

            assert_unauthorized(&answer, "invalid_token");
        }
    })
    .await;
}

#[tokio::test]
async fn expired_token_is_unauthorized() {
    with_server(|server| async move {
        let expired = claims(Uuid::new_v4(), Role::Admin, 1000, 900);
        let token = server.auth.tokens().sign(&expired).expect("sign");

        let answer = server.get(&token, "/v1/stats").await;

        assert_unauthorized(&answer, "token_expired");
        assert!(
            answer.1["www-authenticate"]
                .to_str()
                .unwrap_or_default()
                .contains("error=\"invalid_token\""),
            "{:?}",
            answer.1
        );
    })
    .await;
}

#[tokio::test]
async fn token_with_changed_payload_is_unauthorized() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let token = server.user_token(user_id);
        let [header, payload, signature]: [&str; 3] = token
            .split('.')
            .collect::<Vec<_>>()
            .try_into()
            .expect("three parts");
        let mut claims = decode_part(payload);
        claims["role"] = json!("admin");
        let forged = format!("{header}.{}.{signature}", encode_part(&claims));

        let answer = server.get(&forged, "/v1/stats").await;

        assert_unauthorized(&answer, "invalid_token");
    })
    .await;
}

#[tokio::test]
async fn token_of_another_key_is_unauthorized() {
    with_server(|server| async move {
        // The same key id as the server's active key, with another secret.
        let mut impostor = KeyFile::generate();
        impostor.keys[0].kid = server.keys.active.clone();
        impostor.active = server.keys.active.clone();
        // A key id the server does not know.
        let stranger = KeyFile::generate();

        for keys in [impostor, stranger] {
            let store = KeyStore::fixed(&keys).expect("keys");
            let tokens = TokenService::new(Arc::new(store), std::time::Duration::from_secs(900));
            let token = tokens
                .issue(&Uuid::new_v4().to_string(), Role::Admin)
                .expect("issue")
                .token;

            let answer = server.get(&token, "/v1/stats").await;

            assert_unauthorized(&answer, "invalid_token");
        }
    })
    .await;
}

#[tokio::test]
async fn unsigned_alg_none_token_is_unauthorized() {
    with_server(|server| async move {
        let header = json!({"alg": "none", "typ": "JWT", "kid": server.keys.active});
        let claims =
            serde_json::to_value(claims(Uuid::new_v4(), Role::Admin, 0, 900)).expect("claims JSON");
        let unsigned = format!("{}.{}.", encode_part(&header), encode_part(&claims));

        let answer = server.get(&unsigned, "/v1/stats").await;

        assert_unauthorized(&answer, "invalid_token");
    })
    .await;
}

#[tokio::test]
async fn user_is_forbidden_on_another_user() {
    with_server(|server| async move {
        let owner = Uuid::new_v4();
        insert_user(&server.pool, owner, "vessel-1@ais.example", true).await;
        let intruder = server.user_token(Uuid::new_v4());

        for suffix in ["", "/profile", "/profile/image", "/location", "/locations"] {
            let path = format!("/v1/users/{owner}{suffix}");
            let answer = server.get(&intruder, &path).await;

            assert_forbidden(&answer, Some("id"));
            let message = answer.2["message"].as_str().unwrap_or_default();
            assert!(message.contains(&owner.to_string()), "{path}: {message}");
        }
    })
    .await;
}

#[tokio::test]
async fn user_is_forbidden_on_shared_reads() {
    with_server(|server| async move {
        let token = server.user_token(Uuid::new_v4());

        for (path, query) in [
            ("/v1/users", [("email", "vessel-1@ais.example")].as_slice()),
            ("/v1/locations/latest", &[]),
            ("/v1/stats", &[]),
            ("/v1/events", &[]),
        ] {
            let answer = server.get_query(&token, path, query).await;

            assert_forbidden(&answer, None);
        }
    })
    .await;
}

#[tokio::test]
async fn analyst_is_forbidden_on_personal_data() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;
        let token = server.analyst_token();

        for suffix in ["", "/profile", "/profile/image"] {
            let answer = server
                .get(&token, &format!("/v1/users/{user_id}{suffix}"))
                .await;
            assert_forbidden(&answer, Some("id"));
        }
        let answer = server
            .get_query(&token, "/v1/users", &[("email", "vessel-1@ais.example")])
            .await;
        assert_forbidden(&answer, None);
    })
    .await;
}

#[tokio::test]
async fn analyst_reads_stats_and_locations() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;
        insert_latest_location(&server.pool, user_id, -74.0, 40.5).await;
        insert_history(&server.pool, user_id, 1, 0).await;
        let token = server.analyst_token();

        for path in [
            "/v1/stats".to_owned(),
            "/v1/events".to_owned(),
            "/v1/locations/latest".to_owned(),
            format!("/v1/users/{user_id}/location"),
            format!("/v1/users/{user_id}/locations"),
        ] {
            let (status, _, body) = server.get(&token, &path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
    })
    .await;
}

#[tokio::test]
async fn admin_reads_any_user() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user(&server.pool, user_id, "vessel-1@ais.example", true).await;

        let (status, _, body) = server
            .get(&server.admin_token(), &format!("/v1/users/{user_id}"))
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body["email"], "vessel-1@ais.example");
    })
    .await;
}

/// Limits that let `requests` requests through per minute, by address or by user.
fn tight_limits(per_address: u64, per_user: u64) -> Limits {
    let mut limits = Limits::generous();
    limits.per_address.max = per_address;
    limits.per_user.max = per_user;
    limits
}

fn assert_rate_limited(answer: &Answer) {
    let (status, headers, body) = answer;
    assert_error(*status, body, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("Retry-After in seconds");
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
}

#[tokio::test]
async fn rate_limit_per_user_answers_429() {
    with_server_limited(tight_limits(1000, 3), |server| async move {
        let token = server.analyst_token();
        for _ in 0..3 {
            let (status, _, body) = server.get(&token, "/v1/stats").await;
            assert_eq!(status, StatusCode::OK, "body: {body}");
        }

        let answer = server.get(&token, "/v1/stats").await;

        assert_rate_limited(&answer);
        let message = answer.2["message"].as_str().unwrap_or_default();
        assert!(message.contains("by this user"), "{message}");
        // Another user is not limited.
        let (status, _, _) = server.get(&server.analyst_token(), "/v1/stats").await;
        assert_eq!(status, StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn rate_limit_per_address_answers_429() {
    with_server_limited(tight_limits(3, 1000), |server| async move {
        for _ in 0..3 {
            let (status, _, body) = server.get(&server.analyst_token(), "/v1/stats").await;
            assert_eq!(status, StatusCode::OK, "body: {body}");
        }

        let answer = server.get(&server.analyst_token(), "/v1/stats").await;

        assert_rate_limited(&answer);
        let message = answer.2["message"].as_str().unwrap_or_default();
        assert!(message.contains("from this address"), "{message}");
    })
    .await;
}

#[tokio::test]
async fn requests_with_bad_tokens_count_against_address() {
    with_server_limited(tight_limits(3, 1000), |server| async move {
        for token in ["forged", "forged", "forged"] {
            let answer = server.get(token, "/v1/stats").await;
            assert_unauthorized(&answer, "invalid_token");
        }

        let answer = server.get(&server.analyst_token(), "/v1/stats").await;

        assert_rate_limited(&answer);
    })
    .await;
}

#[tokio::test]
async fn open_routes_need_no_token() {
    with_server(|server| async move {
        for path in ["/healthz", "/openapi.json"] {
            let (status, _, body) = server.get_open(path).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
        let response = server
            .client
            .get(format!("{}/", server.base))
            .send()
            .await
            .expect("request failed");
        assert_eq!(response.status(), StatusCode::OK);
    })
    .await;
}

#[tokio::test]
async fn openapi_describes_bearer_auth() {
    with_server(|server| async move {
        let (_, _, document) = server.get_open("/openapi.json").await;

        let scheme = &document["components"]["securitySchemes"]["bearer"];
        assert_eq!(scheme["type"], "http", "{scheme}");
        assert_eq!(scheme["scheme"], "bearer", "{scheme}");
        for path in ["/v1/stats", "/v1/users/{id}", "/v1/events"] {
            let operation = &document["paths"][path]["get"];
            assert_eq!(operation["security"], json!([{"bearer": []}]), "{path}");
            for status in ["401", "403", "429"] {
                assert!(
                    operation["responses"][status].is_object(),
                    "{path} {status}"
                );
            }
        }
        assert!(document["paths"]["/healthz"]["get"]["security"].is_null());
    })
    .await;
}

// The event replay.

/// Stores an event with `payload` as given, byte for byte, and returns its position.
async fn insert_event(
    pool: &PgPool,
    aggregate_type: &str,
    user_id: Uuid,
    sequence: i64,
    event_type: &str,
    payload: &str,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata)
         VALUES ($1, $2, $3, $4, '1.0', $5::json,
                 '{\"client_addr\": \"sealed\", \"request_id\": \"r-1\"}')
         RETURNING position",
    )
    .bind(aggregate_type)
    .bind(user_id.to_string())
    .bind(sequence)
    .bind(event_type)
    .bind(payload)
    .fetch_one(pool)
    .await
    .expect("insert event")
}

/// Stores three location events and two name changes of one user, interleaved; returns
/// their positions in order.
async fn insert_mixed_events(pool: &PgPool, user_id: Uuid) -> Vec<i64> {
    insert_user_key(pool, user_id).await;
    let mut positions = Vec::new();
    for sequence in 1..=3 {
        let payload = format!(r#"{{"LocationRecorded": {{"sequence": {sequence}}}}}"#);
        positions.push(
            insert_event(
                pool,
                "LocationTrack",
                user_id,
                sequence,
                "LocationRecorded",
                &payload,
            )
            .await,
        );
        if sequence < 3 {
            let payload = r#"{"NameChanged":{"name":"mrd1:sealed-name"}}"#;
            positions
                .push(insert_event(pool, "User", user_id, sequence, "NameChanged", payload).await);
        }
    }
    positions
}

fn positions(body: &Value) -> Vec<i64> {
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["position"].as_i64().expect("position"))
        .collect()
}

#[tokio::test]
async fn events_are_paged_in_position_order() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let expected = insert_mixed_events(&server.pool, user_id).await;
        let token = server.analyst_token();

        let mut seen = Vec::new();
        let mut after = "0".to_owned();
        for page in 1.. {
            assert!(page <= 5, "paging does not end");
            let (status, _, body) = server
                .get_query(&token, "/v1/events", &[("after", &after), ("limit", "2")])
                .await;
            assert_eq!(status, StatusCode::OK, "body: {body}");
            seen.extend(positions(&body));
            match body["next_after"].as_i64() {
                Some(next) => after = next.to_string(),
                None => break,
            }
        }

        assert_eq!(seen, expected);
    })
    .await;
}

#[tokio::test]
async fn events_carry_stored_fields_without_metadata() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let positions = insert_mixed_events(&server.pool, user_id).await;

        let (status, _, body) = server
            .get_query(&server.analyst_token(), "/v1/events", &[("limit", "2")])
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        let event = &body["events"][1];
        assert_eq!(event["position"], positions[1]);
        assert_eq!(event["aggregate_type"], "User");
        assert_eq!(event["aggregate_id"], user_id.to_string());
        assert_eq!(event["sequence"], 1);
        assert_eq!(event["event_type"], "NameChanged");
        assert_eq!(event["event_version"], "1.0");
        assert_eq!(
            event["payload"],
            json!({"NameChanged": {"name": "mrd1:sealed-name"}})
        );
        assert!(event["stored_at"].as_str().is_some(), "{event}");
        assert!(event.get("metadata").is_none(), "{event}");
        assert_eq!(body["next_after"], positions[1]);
    })
    .await;
}

#[tokio::test]
async fn events_return_payload_byte_for_byte() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        insert_user_key(&server.pool, user_id).await;
        // Key order, spacing and a duplicate-free but unusual layout that a JSON round trip
        // through a map would change.
        let payload = r#"{"ProfileSettingsUpdated" :  {"z": 1, "a": [1,2 ,3], "m": {"y": null}}}"#;
        insert_event(
            &server.pool,
            "Profile",
            user_id,
            1,
            "ProfileSettingsUpdated",
            payload,
        )
        .await;

        let response = server
            .client
            .get(format!("{}/v1/events", server.base))
            .bearer_auth(server.admin_token())
            .send()
            .await
            .expect("request failed");
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.text().await.expect("body");

        assert!(text.contains(&format!(r#""payload":{payload}"#)), "{text}");
    })
    .await;
}

#[tokio::test]
async fn events_filter_by_type() {
    with_server(|server| async move {
        let user_id = Uuid::new_v4();
        let all = insert_mixed_events(&server.pool, user_id).await;

        let (status, _, body) = server
            .get_query(
                &server.analyst_token(),
                "/v1/events",
                &[("type", "NameChanged"), ("after", &all[1].to_string())],
            )
            .await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(positions(&body), vec![all[3]]);
        assert_eq!(body["next_after"], Value::Null);
    })
    .await;
}

#[tokio::test]
async fn events_of_empty_store_are_empty() {
    with_server(|server| async move {
        let (status, _, body) = server.get(&server.admin_token(), "/v1/events").await;

        assert_eq!(status, StatusCode::OK, "body: {body}");
        assert_eq!(body, json!({"events": [], "next_after": null}));
    })
    .await;
}

#[tokio::test]
async fn events_reject_invalid_parameters() {
    with_server(|server| async move {
        let token = server.analyst_token();
        let cases: [(&[(&str, &str)], &str); 9] = [
            (&[("after", "-1")], "after"),
            (&[("after", "first")], "after"),
            (&[("limit", "0")], "limit"),
            (&[("limit", "1001")], "limit"),
            (&[("limit", "all")], "limit"),
            (&[("limit", "5"), ("limit", "6")], "limit"),
            (&[("type", "")], "type"),
            (&[("type", "Name Changed")], "type"),
            (&[("type", "NameChanged'--")], "type"),
        ];
        for (query, field) in cases {
            let (status, _, body) = server.get_query(&token, "/v1/events", query).await;

            assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
            assert_eq!(body["field"], field, "{query:?}: {body}");
            assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()));
        }
    })
    .await;
}
