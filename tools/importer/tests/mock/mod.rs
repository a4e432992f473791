//! An in-process stand-in for Meridian's command and query services, following their HTTP
//! contract closely enough to exercise the importer: idempotency keys, email uniqueness,
//! duplicate reports as no-ops, the latest-location rule, and faults a test switches on.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Datelike;
use meridian_domain::location::LocationReport;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

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
    pub status: u16,
}

#[derive(Debug, Default)]
pub struct MockState {
    pub faults: Faults,
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

    pub fn location_requests(&self) -> Vec<&ReceivedRequest> {
        self.requests
            .iter()
            .filter(|request| request.path.ends_with("/locations"))
            .collect()
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
        let state: Shared = Arc::new(Mutex::new(MockState {
            faults,
            ..MockState::default()
        }));
        let router = Router::new()
            .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
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
    key: Option<String>,
    status: StatusCode,
) {
    state.requests.push(ReceivedRequest {
        method,
        path: path.to_owned(),
        idempotency_key: key,
        status: status.as_u16(),
    });
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
    let key = idempotency_key(&headers);
    let outcome = match replay(&state, path, key.as_ref(), &body) {
        Some(outcome) => outcome,
        None => {
            let result = register_new(&mut state, &body);
            remember(&mut state, path, key.clone(), body, &result);
            (result, false)
        }
    };
    log(&mut state, "POST", path, key, outcome.0 .0);
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
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = state.lock().unwrap();
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
    let mut state = state.lock().unwrap();
    let path = format!("/v1/users/{user_id}/locations");
    let key = idempotency_key(&headers);

    if state.faults.unavailable_locations > 0 {
        state.faults.unavailable_locations -= 1;
        let result = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "internal",
            None,
            "try again",
        );
        log(&mut state, "POST", &path, key, result.0);
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
    log(&mut state, "POST", &path, key, outcome.0 .0);
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

async fn latest_location(State(state): State<Shared>, Path(user_id): Path<Uuid>) -> Response {
    let state = state.lock().unwrap();
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
