//! HTTP calls to the services under test: the admin's login, user registration (the
//! importer's client) and location commands with prebuilt bodies.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use meridian_importer::client::{Meridian, Registration};
use meridian_importer::console::Console;
use meridian_importer::session::{Credentials, RateLimitPolicy, Session};
use meridian_importer::ImportOptions;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;
use uuid::Uuid;

/// Password of every registered benchmark user. The harness never logs in as these users.
const USER_PASSWORD: &str = "meridian bench user password";
/// Registrations in flight at once. Each hashes a password with argon2id, which keeps a core
/// busy, so more would only queue in the command service.
const REGISTRATION_CONCURRENCY: usize = 8;
/// Time limit of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Response body of `POST /v1/users/{id}/locations`.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Recorded {
    /// Events stored; a repeat of a stored report stores none.
    pub stored: u64,
    pub last_sequence: Option<i64>,
}

/// The outcome of one location command.
#[derive(Debug, Clone)]
pub enum Outcome {
    Accepted(Recorded),
    /// A status other than 2xx, a body that is not the expected JSON, or a transport error,
    /// described for the report.
    Failed(String),
}

/// A logged-in admin of the command service under test.
#[derive(Clone)]
pub struct BenchClient {
    session: Arc<Session>,
    meridian: Meridian,
    command_url: String,
    query_url: String,
}

impl BenchClient {
    /// Logs in at `command_url` as `email` with the password in `password_file`.
    pub async fn login(
        command_url: &str,
        query_url: &str,
        email: &str,
        password_file: &Path,
        clients: usize,
    ) -> anyhow::Result<Self> {
        let credentials = Credentials::from_password_file(email, password_file)?;
        let mut options = ImportOptions::new(password_file, credentials.clone());
        options.command_url = command_url.to_owned();
        options.query_url = query_url.to_owned();
        options.concurrency = clients.max(REGISTRATION_CONCURRENCY);
        options.request_timeout = REQUEST_TIMEOUT;
        options.show_progress = false;

        let http = Meridian::http_client(&options).context("failed to build the HTTP client")?;
        let session = Session::login(
            http.clone(),
            command_url,
            credentials,
            RateLimitPolicy::default(),
            None,
        )
        .await
        .with_context(|| format!("logging in at {command_url} as {email} failed"))?;
        let session = Arc::new(session);
        let meridian = Meridian::new(http, &options, session.clone(), Console::new(false));
        Ok(Self {
            session,
            meridian,
            command_url: command_url.trim_end_matches('/').to_owned(),
            query_url: query_url.trim_end_matches('/').to_owned(),
        })
    }

    /// Registers one user per email address, [`REGISTRATION_CONCURRENCY`] at a time, and
    /// returns their ids in the order of `emails`.
    pub async fn register_users(&self, emails: &[String]) -> anyhow::Result<Vec<Uuid>> {
        stream::iter(emails)
            .map(|email| self.register(email))
            .buffered(REGISTRATION_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn register(&self, email: &str) -> anyhow::Result<Uuid> {
        let key = Uuid::new_v4().to_string();
        let registration = self
            .meridian
            .register_user(email, "Bench vessel", USER_PASSWORD, &key)
            .await
            .with_context(|| format!("registering {email} failed"))?;
        match registration {
            Registration::Registered(user_id) => Ok(user_id),
            other => bail!("registering {email} failed: {other:?}"),
        }
    }

    /// Returns the live-update benchmark's client, which reads `/v1/stats` as this admin.
    pub fn stats_client(&self) -> meridian_live_bench::latency::client::Client {
        meridian_live_bench::latency::client::Client::new(
            self.session.clone(),
            &self.command_url,
            &self.query_url,
        )
    }

    /// Returns the URL of the locations of `user_id`.
    pub fn locations_url(&self, user_id: Uuid) -> String {
        format!("{}/v1/users/{user_id}/locations", self.command_url)
    }

    /// Sends one location command with a prebuilt JSON body, without retries.
    pub async fn record(&self, url: &str, body: &Bytes) -> Outcome {
        let reply = self
            .session
            .execute(|| {
                self.session
                    .http()
                    .post(url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => return Outcome::Failed(format!("POST {url} failed: {error}")),
        };
        if !reply.status.is_success() {
            let body = String::from_utf8_lossy(&reply.body);
            let start: String = body.chars().take(200).collect();
            return Outcome::Failed(format!("POST {url} returned {}: {start}", reply.status));
        }
        match serde_json::from_slice::<Recorded>(&reply.body) {
            Ok(recorded) => Outcome::Accepted(recorded),
            Err(error) => Outcome::Failed(format!("POST {url} returned invalid JSON: {error}")),
        }
    }
}
