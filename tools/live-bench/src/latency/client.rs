//! HTTP calls of the latency benchmark: registering users and recording locations on the
//! command service, and reading projection lag from the query service.
//!
//! Registration is open and sends no token, so the users get the role `user`. Recording
//! and reading the stats send the access token of the benchmark's admin session.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use chrono::{SecondsFormat, Utc};
use meridian_importer::session::{Reply, Session};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

/// Milliseconds since the Unix epoch, with a fractional part, from the system clock.
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Response body of `POST /v1/users/{id}/locations`.
#[derive(Debug, Clone, Deserialize)]
pub struct Recorded {
    pub user_id: Uuid,
    pub accepted: usize,
    pub stored: usize,
    pub first_sequence: Option<i64>,
    pub last_sequence: Option<i64>,
    pub position: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Registered {
    user_id: Uuid,
}

/// Lag of the projections, as `GET /v1/stats` returns it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lag {
    pub read_models: i64,
    pub outbox_pending: i64,
}

/// Client of the command and query services.
#[derive(Debug, Clone)]
pub struct Client {
    session: Arc<Session>,
    command_url: String,
    query_url: String,
}

impl Client {
    /// Returns a client that sends its requests as `session`.
    pub fn new(session: Arc<Session>, command_url: &str, query_url: &str) -> Self {
        Self {
            session,
            command_url: command_url.trim_end_matches('/').to_owned(),
            query_url: query_url.trim_end_matches('/').to_owned(),
        }
    }

    /// Registers user number `index` of benchmark run `run_id` and returns its id.
    pub async fn register(&self, run_id: &str, index: u32) -> anyhow::Result<Uuid> {
        let body = json!({
            "email": format!("live-bench-{run_id}-{index}@bench.example"),
            "name": format!("Live bench {index}"),
            "password": format!("bench-password-{run_id}"),
        });
        let url = format!("{}/v1/users", self.command_url);
        let response = self
            .session
            .http()
            .post(&url)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url} failed"))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("failed to read the response of {url}"))?;
        let registered: Registered = parse_reply(status, &body, &url)?;
        Ok(registered.user_id)
    }

    /// Records `reports` for `user_id`, as a single report when there is one, else as a batch.
    pub async fn record(&self, user_id: Uuid, reports: &[Value]) -> anyhow::Result<Recorded> {
        let body = match reports {
            [single] => single.clone(),
            _ => json!({ "reports": reports }),
        };
        let url = format!("{}/v1/users/{user_id}/locations", self.command_url);
        let reply = self
            .session
            .execute(|| self.session.http().post(&url).json(&body))
            .await
            .with_context(|| format!("POST {url} failed"))?;
        parse_session_reply(&reply, &url)
    }

    /// Reads the read-models projection lag and the outbox backlog from `GET /v1/stats`.
    pub async fn lag(&self) -> anyhow::Result<Lag> {
        let url = format!("{}/v1/stats", self.query_url);
        let reply = self
            .session
            .execute(|| self.session.http().get(&url))
            .await
            .with_context(|| format!("GET {url} failed"))?;
        let stats: Value = parse_session_reply(&reply, &url)?;
        let read_models = stats["projections"]["read-models"]["lag"]
            .as_i64()
            .with_context(|| format!("GET {url} returned no projections.read-models.lag"))?;
        let outbox_pending = stats["outbox_pending"]
            .as_i64()
            .with_context(|| format!("GET {url} returned no outbox_pending"))?;
        Ok(Lag {
            read_models,
            outbox_pending,
        })
    }
}

fn parse_session_reply<T: serde::de::DeserializeOwned>(
    reply: &Reply,
    url: &str,
) -> anyhow::Result<T> {
    parse_reply(reply.status, &reply.body, url)
}

/// Decodes a 2xx response as `T`, or fails with the status and the start of the body.
fn parse_reply<T: serde::de::DeserializeOwned>(
    status: reqwest::StatusCode,
    body: &[u8],
    url: &str,
) -> anyhow::Result<T> {
    let body = String::from_utf8_lossy(body);
    if !status.is_success() {
        let start: String = body.chars().take(300).collect();
        bail!("{url} returned {status}: {start}");
    }
    serde_json::from_str(&body)
        .with_context(|| format!("{url} returned a body that is not the expected JSON: {body}"))
}

/// Builds `count` location reports for user number `user_index`, each with its own
/// `recorded_at` so the command service stores every one (it drops exact repeats).
///
/// The points lie around New York harbor and move with `counter`.
pub fn reports(user_index: u32, counter: u64, count: u32) -> Vec<Value> {
    let now = Utc::now();
    (0..count)
        .map(|offset| {
            let step = (counter * u64::from(count) + u64::from(offset)) % 1000;
            let latitude = 40.5 + f64::from(user_index % 100) * 0.003 + step as f64 * 0.0001;
            let longitude = -74.2 + f64::from(user_index / 100) * 0.003 + step as f64 * 0.0001;
            let recorded_at = now - chrono::Duration::microseconds(i64::from(count - offset));
            json!({
                "latitude": latitude,
                "longitude": longitude,
                "recorded_at": recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_have_distinct_times() {
        let batch = reports(3, 0, 10);
        let times: std::collections::HashSet<&str> = batch
            .iter()
            .filter_map(|report| report["recorded_at"].as_str())
            .collect();
        assert_eq!(times.len(), 10);
    }

    #[test]
    fn reports_stay_in_valid_range() {
        for report in reports(4999, 999, 1000) {
            let latitude = report["latitude"].as_f64().expect("latitude is a number");
            let longitude = report["longitude"].as_f64().expect("longitude is a number");
            assert!((-90.0..=90.0).contains(&latitude), "{latitude}");
            assert!((-180.0..=180.0).contains(&longitude), "{longitude}");
        }
    }
}
