//! An in-process stand-in for Meridian's command and query services, following their HTTP
//! contract closely enough to exercise the importer: login and token refresh, bearer tokens
//! on every `/v1` route, idempotency keys, email uniqueness, duplicate reports as no-ops, the
//! latest-location rule, and faults a test switches on.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Datelike;
use meridian_domain::location::LocationReport;
use meridian_importer::session::{Credentials, Secret};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Email address of the admin account the mock accepts.
pub const ADMIN_EMAIL: &str = "admin@meridian.test";
/// Password of the admin account.
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// Access token lifetime when [`Faults::access_ttl_secs`] is zero, as the command service's
/// default.
const DEFAULT_ACCESS_TTL_SECS: u64 = 900;

/// Faults a test can switch on.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Number of location requests to reject with 503 before accepting any.
    pub unavailable_locations: usize,
    /// Rejects a batch with 422 when a report was recorded in this year.
    pub reject_year: Option<i32>,
    /// Number of email lookups to return an empty list for, as a lagging read model does.
    pub lookup_misses: usize,
    /// Never shows a latest location (404), as a stalled projection does.
    pub hide_locations: bool,
    /// Shows latest locations this many sequences behind.
    pub sequence_lag: i64,
    /// Shows every latest location with the latitude shifted.
    pub wrong_latitude: bool,
    /// Lifetime of access tokens in seconds, sent as `expires_in`; zero means 900.
    pub access_ttl_secs: u64,
    /// Number of authenticated requests to reject with 401 `token_expired` although their
    /// token is still valid, as after a clock difference between client and server.
    pub expired_tokens: usize,
    /// Number of location requests to reject with 429 and `Retry-After: 1`.
    pub rate_limited_locations: usize,
    /// Time each location request takes, after its token is checked.
    pub location_delay: Duration,
}

/// State of one refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshState {
    Active,
    /// Exchanged once already; presenting it again revokes every token.
    Spent,
    Revoked,
}

/// Tokens the mock issued and what the clients did with them.
#[derive(Debug, Default)]
pub struct AuthState {
    pub admin_id: Uuid,
    /// Access tokens and when each expires.
    pub access: HashMap<String, Instant>,
    pub refresh: HashMap<String, RefreshState>,
    /// Every token issued, access and refresh, in order.
    pub issued: Vec<String>,
    pub logins: usize,
    pub failed_logins: usize,
    pub refreshes: usize,
    /// Refresh tokens presented a second time.
    pub reused_refresh_tokens: usize,
    /// 401 responses with the error `token_expired`, injected ones included.
    pub expired_responses: usize,
    /// 401 responses for a missing or unknown token.
    pub rejected_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct User {
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    pub report: LocationReport,
    pub sequence: i64,
}

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub method: &'static str,
    pub path: String,
    pub idempotency_key: Option<String>,
    /// The token of the `Authorization: Bearer` header, if any.
    pub bearer: Option<String>,
    pub status: u16,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct MockState {
    pub faults: Faults,
    pub auth: AuthState,
    pub users: HashMap<Uuid, User>,
    pub emails: HashMap<String, Uuid>,
    /// Completed idempotent requests by (path, key): body, status and response.
    pub keys: HashMap<(String, String), (Bytes, StatusCode, Value)>,
    pub tracks: HashMap<Uuid, Vec<StoredReport>>,
    pub latest: HashMap<Uuid, StoredReport>,
    pub requests: Vec<ReceivedRequest>,
    next_position: i64,
}

impl MockState {
    /// Registers a user the way another client would, without an idempotency key.
    pub fn register_elsewhere(&mut self, email: &str, name: &str) -> Uuid {
        let user_id = Uuid::new_v4();
        self.users.insert(
            user_id,
            User {
                email: email.to_owned(),
                name: name.to_owned(),
            },
        );
        self.emails.insert(email.to_owned(), user_id);
        user_id
    }

    pub fn user_by_email(&self, email: &str) -> Option<(Uuid, &User)> {
        let user_id = *self.emails.get(email)?;
        Some((user_id, &self.users[&user_id]))
    }

    /// Users with a vessel's email address, so everyone but the admin.
    pub fn vessel_users(&self) -> usize {
        self.users
            .values()
            .filter(|user| user.email.ends_with("@ais.example"))
            .count()
    }

    pub fn location_requests(&self) -> Vec<&ReceivedRequest> {
        self.requests
            .iter()
            .filter(|request| request.path.ends_with("/locations"))
            .collect()
    }

    fn access_ttl(&self) -> Duration {
        match self.faults.access_ttl_secs {
            0 => Duration::from_secs(DEFAULT_ACCESS_TTL_SECS),
            seconds => Duration::from_secs(seconds),
        }
    }

    /// Issues a new access and refresh token to the admin and returns the token response.
    fn issue_tokens(&mut self) -> Value {
        let ttl = self.access_ttl();
        let access = format!("access-{}", Uuid::new_v4());
        let refresh = format!("refresh-{}", Uuid::new_v4());
        self.auth
            .access
            .insert(access.clone(), Instant::now() + ttl);
        self.auth
            .refresh
            .insert(refresh.clone(), RefreshState::Active);
        self.auth.issued.push(access.clone());
        self.auth.issued.push(refresh.clone());
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
            "refresh_token": refresh,
            "refresh_expires_at": chrono::Utc::now() + chrono::TimeDelta::days(30),
            "user_id": self.auth.admin_id,
            "role": "admin",
        })
    }

    /// Checks the bearer token of a request to a protected route.
    fn authorize(&mut self, headers: &HeaderMap) -> Result<(), Unauthorized> {
        let Some(token) = bearer(headers) else {
            self.auth.rejected_tokens += 1;
            return Err(Unauthorized(
                "unauthorized",
                "the request has no bearer token",
            ));
        };
        let expiry = self.auth.access.get(&token).copied();
        let expired = self.faults.expired_tokens > 0
            || expiry.is_some_and(|expires_at| Instant::now() >= expires_at);
        if expiry.is_none() {
            self.auth.rejected_tokens += 1;
            return Err(Unauthorized("invalid_token", "the token is not valid"));
        }
        if expired {
            self.faults.expired_tokens = self.faults.expired_tokens.saturating_sub(1);
            self.auth.expired_responses += 1;
            return Err(Unauthorized(
                "token_expired",
                "the access token has expired",
            ));
        }
        Ok(())
    }

    fn position(&mut self) -> i64 {
        self.next_position += 1;
        self.next_position
    }
}

type Shared = Arc<Mutex<MockState>>;

/// A running mock: the command and query services on two ports of 127.0.0.1.
pub struct MockMeridian {
    pub command_url: String,
    pub query_url: String,
    state: Shared,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MockMeridian {
    pub async fn start(faults: Faults) -> Self {
        let mut state = MockState {
            faults,
            ..MockState::default()
        };
        state.auth.admin_id = state.register_elsewhere(ADMIN_EMAIL, "Service account");
        let state: Shared = Arc::new(Mutex::new(state));
        let router = Router::new()
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/v1/auth/login", post(login))
            .route("/v1/auth/refresh", post(refresh))
            .route("/v1/users", post(register).get(find_by_email))
            .route("/v1/users/{id}/locations", post(record_locations))
            .route("/v1/users/{id}/location", get(latest_location))
            .with_state(state.clone());

        let mut urls = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(format!("http://{}", listener.local_addr().unwrap()));
            let router = router.clone();
            tasks.push(tokio::spawn(async move {
                axum::serve(listener, router).await.unwrap();
            }));
        }
        Self {
            command_url: urls[0].clone(),
            query_url: urls[1].clone(),
            state,
            tasks,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, MockState> {
        self.state.lock().unwrap()
    }

    /// Returns the admin account's email address and password.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(ADMIN_EMAIL, Secret::new(ADMIN_PASSWORD))
    }
}

impl Drop for MockMeridian {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn error(status: StatusCode, code: &str, field: Option<&str>, reason: &str) -> (StatusCode, Value) {
    let body = json!({
        "error": code,
        "message": "the request was rejected",
        "field": field,
        "reason": reason,
        "request_id": Uuid::new_v4().to_string(),
    });
    (status, body)
}

fn respond((status, body): (StatusCode, Value)) -> Response {
    (status, Json(body)).into_response()
}

/// A 401 response: the error code and the message.
struct Unauthorized(&'static str, &'static str);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        unauthorized(self.0, self.1)
    }
}

/// Builds a 401 with the error body and `WWW-Authenticate` header of the real services.
fn unauthorized(code: &str, message: &str) -> Response {
    let body = json!({"error": code, "message": message, "request_id": Uuid::new_v4().to_string()});
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{message}\"");
    (
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", challenge)],
        Json(body),
    )
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::to_owned)
}

fn respond_replayed(((status, body), replayed): Outcome) -> Response {
    if replayed {
        (status, [("idempotent-replayed", "true")], Json(body)).into_response()
    } else {
        respond((status, body))
    }
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// A response, and whether it is the stored result of an earlier request.
type Outcome = ((StatusCode, Value), bool);

/// Returns the stored result of a repeated request, or a 422 when the body differs.
fn replay(state: &MockState, path: &str, key: Option<&String>, body: &Bytes) -> Option<Outcome> {
    let key = key?;
    let (stored_body, status, response) = state.keys.get(&(path.to_owned(), key.clone()))?;
    if stored_body != body {
        let mismatch = error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("Idempotency-Key"),
            "was used before with a different request body",
        );
        return Some((mismatch, false));
    }
    Some(((*status, response.clone()), true))
}

fn remember(
    state: &mut MockState,
    path: &str,
    key: Option<String>,
    body: Bytes,
    result: &(StatusCode, Value),
) {
    if let Some(key) = key {
        state
            .keys
            .insert((path.to_owned(), key), (body, result.0, result.1.clone()));
    }
}

fn log(
    state: &mut MockState,
    method: &'static str,
    path: &str,
    headers: &HeaderMap,
    status: StatusCode,
) {
    state.requests.push(ReceivedRequest {
        method,
        path: path.to_owned(),
        idempotency_key: idempotency_key(headers),
        bearer: bearer(headers),
        status: status.as_u16(),
        at: Instant::now(),
    });
}

#[derive(Deserialize)]
struct LoginBody {
    email: String,
    password: String,
}

async fn login(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    let response = match serde_json::from_slice::<LoginBody>(&body) {
        Ok(request) if request.email == ADMIN_EMAIL && request.password == ADMIN_PASSWORD => {
            state.auth.logins += 1;
            Json(state.issue_tokens()).into_response()
        }
        Ok(_) => {
            state.auth.failed_logins += 1;
            respond(error(
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                None,
                "the email or password is wrong",
            ))
        }
        Err(_) => respond(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
            "malformed JSON",
        )),
    };
    log(
        &mut state,
        "POST",
        "/v1/auth/login",
        &headers,
        response.status(),
    );
    response
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    let Ok(request) = serde_json::from_slice::<RefreshBody>(&body) else {
        return respond(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
            "malformed JSON",
        ));
    };
    let current = state.auth.refresh.get(&request.refresh_token).copied();
    let response = match current {
        Some(RefreshState::Active) => {
            state
                .auth
                .refresh
                .insert(request.refresh_token, RefreshState::Spent);
            state.auth.refreshes += 1;
            Json(state.issue_tokens()).into_response()
        }
        Some(RefreshState::Spent) => {
            // Reuse means the token was stolen: revoke the whole session.
            state.auth.reused_refresh_tokens += 1;
            for value in state.auth.refresh.values_mut() {
                *value = RefreshState::Revoked;
            }
            state.auth.access.clear();
            unauthorized("invalid_refresh_token", "the refresh token was used before")
        }
        Some(RefreshState::Revoked) | None => {
            unauthorized("invalid_refresh_token", "the refresh token is not valid")
        }
    };
    log(
        &mut state,
        "POST",
        "/v1/auth/refresh",
        &headers,
        response.status(),
    );
    response
}

#[derive(Deserialize)]
struct RegisterBody {
    email: String,
    name: String,
    password: String,
}

async fn register(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = state.lock().unwrap();
    let path = "/v1/users";
    // Registration is open, but a token that is sent must be valid.
    if bearer(&headers).is_some() {
        if let Err(response) = state
            .authorize(&headers)
            .map_err(IntoResponse::into_response)
        {
            log(&mut state, "POST", path, &headers, response.status());
            return response;
        }
    }
    let key = idempotency_key(&headers);
    let outcome = match replay(&state, path, key.as_ref(), &body) {
        Some(outcome) => outcome,
        None => {
            let result = register_new(&mut state, &body);
            remember(&mut state, path, key.clone(), body, &result);
            (result, false)
        }
    };
    log(&mut state, "POST", path, &headers, outcome.0 .0);
    respond_replayed(outcome)
}

fn register_new(state: &mut MockState, body: &Bytes) -> (StatusCode, Value) {
    let Ok(request) = serde_json::from_slice::<RegisterBody>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
            "malformed JSON",
        );
    };
    if request.password.chars().count() < 8 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("password"),
            "must be 8 to 1024 characters long",
        );
    }
    if state.emails.contains_key(&request.email) {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            Some("email"),
            "is already taken",
        );
    }
    let user_id = state.register_elsewhere(&request.email, &request.name);
    let position = state.position();
    (
        StatusCode::CREATED,
        json!({"user_id": user_id, "sequence": 1, "position": position}),
    )
}

async fn find_by_email(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
    let response = match state
        .authorize(&headers)
        .map_err(IntoResponse::into_response)
    {
        Ok(()) => users_with_email(&mut state, &query),
        Err(response) => response,
    };
    log(&mut state, "GET", "/v1/users", &headers, response.status());
    response
}

fn users_with_email(state: &mut MockState, query: &HashMap<String, String>) -> Response {
    let Some(email) = query.get("email") else {
        return respond(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("email"),
            "is required",
        ));
    };
    if state.faults.lookup_misses > 0 {
        state.faults.lookup_misses -= 1;
        return Json(json!({"users": []})).into_response();
    }
    let users: Vec<Value> = state
        .user_by_email(&email.trim().to_lowercase())
        .map(|(user_id, user)| json!({"user_id": user_id, "email": user.email, "name": user.name}))
        .into_iter()
        .collect();
    Json(json!({ "users": users })).into_response()
}

#[derive(Deserialize)]
struct LocationBody {
    reports: Vec<LocationReport>,
}

async fn record_locations(
    State(state): State<Shared>,
    Path(user_id): Path<Uuid>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1/users/{user_id}/locations");
    let delay = {
        let mut state = state.lock().unwrap();
        if let Err(response) = state
            .authorize(&headers)
            .map_err(IntoResponse::into_response)
        {
            log(&mut state, "POST", &path, &headers, response.status());
            return response;
        }
        if state.faults.rate_limited_locations > 0 {
            state.faults.rate_limited_locations -= 1;
            let (status, body) = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                None,
                "too many requests",
            );
            log(&mut state, "POST", &path, &headers, status);
            return (status, [("retry-after", "1")], Json(body)).into_response();
        }
        state.faults.location_delay
    };
    tokio::time::sleep(delay).await;

    let mut state = state.lock().unwrap();
    let key = idempotency_key(&headers);
    if state.faults.unavailable_locations > 0 {
        state.faults.unavailable_locations -= 1;
        let result = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            None,
            "try again",
        );
        log(&mut state, "POST", &path, &headers, result.0);
        return respond(result);
    }

    let outcome = match replay(&state, &path, key.as_ref(), &body) {
        Some(outcome) => outcome,
        None => {
            let result = record_new(&mut state, user_id, &body);
            if !result.0.is_server_error() {
                remember(&mut state, &path, key.clone(), body, &result);
            }
            (result, false)
        }
    };
    log(&mut state, "POST", &path, &headers, outcome.0 .0);
    respond_replayed(outcome)
}

fn record_new(state: &mut MockState, user_id: Uuid, body: &Bytes) -> (StatusCode, Value) {
    if !state.users.contains_key(&user_id) {
        return error(StatusCode::NOT_FOUND, "not_found", None, "user not found");
    }
    let Ok(request) = serde_json::from_slice::<LocationBody>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            None,
            "malformed JSON",
        );
    };
    for (index, report) in request.reports.iter().enumerate() {
        if !(-90.0..=90.0).contains(&report.latitude) {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some(&format!("reports[{index}].latitude")),
                "is outside [-90, 90]",
            );
        }
        if Some(report.recorded_at.year()) == state.faults.reject_year {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                Some(&format!("reports[{index}].recorded_at")),
                "is in a rejected year",
            );
        }
    }

    let track = state.tracks.entry(user_id).or_default();
    let mut sequence = track.last().map_or(0, |stored| stored.sequence);
    let first_sequence = sequence + 1;
    let mut stored = Vec::new();
    for report in &request.reports {
        let repeated = track.iter().any(|existing| {
            existing.report.recorded_at == report.recorded_at
                && existing.report.latitude.to_bits() == report.latitude.to_bits()
                && existing.report.longitude.to_bits() == report.longitude.to_bits()
        });
        if repeated {
            continue;
        }
        sequence += 1;
        let event = StoredReport {
            report: *report,
            sequence,
        };
        track.push(event.clone());
        stored.push(event);
    }
    for event in &stored {
        let replaces = state
            .latest
            .get(&user_id)
            .is_none_or(|latest| event.report.recorded_at >= latest.report.recorded_at);
        if replaces {
            state.latest.insert(user_id, event.clone());
        }
    }
    let position = state.position();
    let (first, last) = if stored.is_empty() {
        (Value::Null, Value::Null)
    } else {
        (json!(first_sequence), json!(sequence))
    };
    (
        StatusCode::OK,
        json!({
            "user_id": user_id,
            "accepted": request.reports.len(),
            "stored": stored.len(),
            "first_sequence": first,
            "last_sequence": last,
            "position": position,
        }),
    )
}

async fn latest_location(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(user_id): Path<Uuid>,
) -> Response {
    let mut state = state.lock().unwrap();
    let response = match state
        .authorize(&headers)
        .map_err(IntoResponse::into_response)
    {
        Ok(()) => latest_location_of(&state, user_id),
        Err(response) => response,
    };
    let path = format!("/v1/users/{user_id}/location");
    log(&mut state, "GET", &path, &headers, response.status());
    response
}

fn latest_location_of(state: &MockState, user_id: Uuid) -> Response {
    let latest = state
        .latest
        .get(&user_id)
        .filter(|_| !state.faults.hide_locations);
    let Some(latest) = latest else {
        return respond(error(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            "no location",
        ));
    };
    let shift = if state.faults.wrong_latitude {
        0.5
    } else {
        0.0
    };
    Json(json!({
        "user_id": user_id,
        "latitude": latest.report.latitude - shift,
        "longitude": latest.report.longitude,
        "recorded_at": latest.report.recorded_at,
        "sequence": latest.sequence - state.faults.sequence_lag,
        "position": 1,
        "event_id": Uuid::new_v4(),
    }))
    .into_response()
}
