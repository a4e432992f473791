//! A command API over a database of its own, driven with `Router::oneshot`.

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use std::sync::Arc;

use axum::Router;
use meridian_auth::keys::{KeyFile, KeyStore};
use meridian_auth::{Auth, AuthSettings, Limits, Role};
use meridian_command_service::{router, AppState};
use meridian_crypto::testing::TestKeys;
use meridian_event_log::settings::var_or;
use meridian_event_log::testing::{settings_for, TestDatabase};
use meridian_event_log::Settings;
use serde_json::{json, Value};
use sqlx::PgPool;
use tower::ServiceExt;
use uuid::Uuid;

pub struct TestApp {
    pub router: Router,
    pub pool: PgPool,
    pub state: AppState,
    /// An admin's access token, sent by every request that names no other.
    pub admin_token: String,
    /// The user id in [`TestApp::admin_token`]; no such user is registered.
    pub admin_id: String,
    /// Held so the master key file lives as long as the app.
    _keys: TestKeys,
    database: Option<TestDatabase>,
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

impl TestApp {
    pub async fn start() -> Self {
        Self::start_with_limits(Limits::generous()).await
    }

    /// Like [`TestApp::start`] with rate limits of the test's choosing.
    pub async fn start_with_limits(limits: Limits) -> Self {
        let database = TestDatabase::create()
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 must accept connections");
        let pool = database.pool.clone();
        let keys = TestKeys::create().expect("a temporary master key file");
        let cipher = keys
            .event_cipher(pool.clone())
            .await
            .expect("the local key provider opens its file");
        let auth = test_auth(pool.clone(), limits);
        let admin_id = Uuid::new_v4().to_string();
        let admin_token = auth
            .tokens()
            .issue(&admin_id, Role::Admin)
            .expect("tokens sign")
            .token;
        let state = AppState::new(pool.clone(), cipher, auth);
        Self {
            router: router(state.clone()),
            pool,
            state,
            admin_token,
            admin_id,
            _keys: keys,
            database: Some(database),
        }
    }

    /// An access token of `user_id` with `role`.
    pub fn token_for(&self, user_id: &str, role: Role) -> String {
        self.state
            .auth
            .tokens()
            .issue(user_id, role)
            .expect("tokens sign")
            .token
    }

    /// Sends a JSON request with the access token `token`, or with none.
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: &Value,
    ) -> TestResponse {
        let header = token.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = match &header {
            Some(header) => vec![("authorization", header.as_str())],
            None => vec![(ANONYMOUS, "")],
        };
        self.raw(
            method,
            path,
            Some("application/json"),
            body.to_string(),
            &headers,
        )
        .await
    }

    /// `scoped` as the idempotency layer stores it for a request by the default admin.
    pub fn admin_scoped(&self, scoped: &str) -> String {
        format!("{scoped} @{}", self.admin_id)
    }

    /// Sends a request with a raw body, content type and extra headers. Without an
    /// `authorization` header it sends the admin token, unless `headers` names [`ANONYMOUS`].
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        let mut builder = Request::builder().method(method).uri(path);
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        let named = |wanted: &str| {
            headers
                .iter()
                .any(|(name, _)| name.eq_ignore_ascii_case(wanted))
        };
        if !named("authorization") && !named(ANONYMOUS) {
            builder = builder.header("authorization", format!("Bearer {}", self.admin_token));
        }
        for (name, value) in headers.iter().filter(|(name, _)| *name != ANONYMOUS) {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body.into()).expect("request builds");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body is readable");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "response body is not JSON: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        TestResponse {
            status,
            headers,
            body,
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> TestResponse {
        self.raw(
            method,
            path,
            Some("application/json"),
            body.to_string(),
            headers,
        )
        .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> TestResponse {
        self.send(Method::POST, path, body, &[]).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> TestResponse {
        self.send(Method::PATCH, path, body, &[]).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> TestResponse {
        self.send(Method::PUT, path, body, &[]).await
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.raw(Method::GET, path, None, Body::empty(), &[]).await
    }

    /// Registers a user and returns its id.
    pub async fn register(&self, email: &str) -> String {
        let response = self
            .post(
                "/v1/users",
                &json!({"email": email, "name": "Test Vessel", "password": "long enough password"}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{:?}", response.body);
        response.body["user_id"]
            .as_str()
            .expect("user_id is a string")
            .to_owned()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("events are countable")
    }

    pub async fn events_of(&self, aggregate_type: &str, aggregate_id: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_one(&self.pool)
        .await
        .expect("events are countable")
    }

    pub async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> i64 {
        sqlx::query_scalar(
            "SELECT position FROM events \
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_one(&self.pool)
        .await
        .expect("event exists")
    }

    /// Settings naming this test's database, a topic prefix of its own and the local servers.
    #[allow(
        dead_code,
        reason = "only the relay tests, which include this file, need settings"
    )]
    pub fn settings(&self) -> Settings {
        let database = self.database.as_ref().expect("database is open");
        settings_for(database).expect("settings load")
    }

    /// Drops the database.
    pub async fn finish(mut self) {
        if let Some(database) = self.database.take() {
            database.drop_database().await.expect("test database drops");
        }
    }
}

impl Drop for TestApp {
    /// Drops the database of a test that panicked before [`TestApp::finish`]. The pool is not
    /// closed, because closing waits for connections that only this test's runtime, blocked
    /// here, can return; `DROP DATABASE ... WITH (FORCE)` ends them instead.
    fn drop(&mut self) {
        let Some(database) = self.database.take() else {
            return;
        };
        let url = database.url.clone();
        drop(database);
        let dropper = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime builds");
            runtime.block_on(meridian_event_log::database::drop_database(&url))
        });
        let _ = dropper.join();
    }
}

/// A pseudo header for [`TestApp::raw`]: send no `authorization` header at all.
pub const ANONYMOUS: &str = "x-test-anonymous";

/// Authentication over fixed keys and this test's own Redis prefix.
pub fn test_auth(pool: PgPool, limits: Limits) -> Auth {
    let settings = AuthSettings {
        limits,
        ..AuthSettings::from_vars(|_| None).expect("default settings")
    };
    let keys = KeyStore::fixed(&KeyFile::generate()).expect("generated keys load");
    let redis = var_or("MERIDIAN_REDIS_URL", "redis://127.0.0.1:6379/");
    let prefix = format!("test.{}.", Uuid::new_v4().simple());
    Auth::with_keys(&settings, Arc::new(keys), pool, &redis, &prefix).expect("auth builds")
}

/// Asserts the error body shape and returns `(field, reason)`.
pub fn assert_error(response: &TestResponse, status: StatusCode, code: &str) {
    assert_eq!(response.status, status, "body: {}", response.body);
    assert_eq!(response.body["error"], code, "body: {}", response.body);
    assert!(
        response.body["message"].is_string(),
        "body: {}",
        response.body
    );
    let request_id = response
        .header("x-request-id")
        .expect("x-request-id header");
    assert_eq!(response.body["request_id"], request_id);
}

pub fn report(seconds: i64, latitude: f64, longitude: f64) -> Value {
    let at = chrono::DateTime::from_timestamp(1_606_780_800 + seconds, 0).expect("valid time");
    json!({
        "latitude": latitude,
        "longitude": longitude,
        "recorded_at": at.to_rfc3339(),
    })
}
