//! Authentication across processes: two command services enforce one rate limit per user
//! together, and no password, token or key reaches any process log.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use meridian_e2e::live::Subscriber;
use meridian_e2e::{target_dir, Platform, Process};
use meridian_importer::session::Secret;
use regex::Regex;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

/// Requests per user the rate-limit test allows.
const LIMIT: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_holds_across_command_services() -> anyhow::Result<()> {
    // A window much longer than the test, so that no counter expires while it runs.
    let limit = LIMIT.to_string();
    let mut platform = Platform::start_with_env(
        "rate_limit_holds_across_command_services",
        &[
            ("MERIDIAN_RATE_LIMIT_PER_USER", limit.as_str()),
            ("MERIDIAN_RATE_LIMIT_WINDOW_SECS", "3600"),
        ],
    )
    .await?;
    platform.spawn(Process::CommandReplica)?;
    platform.wait_healthy().await?;

    // A user of their own, so that no request of the harness counts against the limit.
    // Neither registration nor login counts against a user's limit.
    let password = "long enough password";
    let user = platform
        .register("limited@example.com", "Limited", password)
        .await?;
    let session = platform.login("limited@example.com", password).await?;
    let token = session.access_token().await?;

    let http = reqwest::Client::new();
    let mut admitted = [0_usize; 2];
    let mut limited = Vec::new();
    for index in 0..2 * LIMIT {
        let service = index % 2;
        let response = http
            .post(format!(
                "{}/v1/users/{user}/locations",
                platform.command_urls[service]
            ))
            .bearer_auth(token.expose())
            .json(&json!({
                "latitude": 40.7, "longitude": -74.0,
                "recorded_at": format!("2020-12-01T00:00:{:02}Z", index % 60),
            }))
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            admitted[service] += 1;
            continue;
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let body: Value = response.json().await?;
        limited.push((service, status, retry_after, body));
    }

    assert_eq!(
        admitted.iter().sum::<usize>(),
        LIMIT,
        "requests admitted by both services together"
    );
    assert_eq!(admitted[0], LIMIT / 2, "requests admitted by service 1");
    assert_eq!(admitted[1], LIMIT / 2, "requests admitted by service 2");
    assert_eq!(limited.len(), LIMIT, "requests rejected");
    let services: BTreeSet<usize> = limited.iter().map(|(service, ..)| *service).collect();
    assert_eq!(
        services.len(),
        2,
        "both services reject once the limit is reached"
    );
    for (service, status, retry_after, body) in &limited {
        assert_eq!(
            *status,
            StatusCode::TOO_MANY_REQUESTS,
            "service {service}: {body}"
        );
        assert_eq!(body["error"], "rate_limited", "service {service}: {body}");
        let seconds = retry_after.unwrap_or_default();
        assert!(
            (1..=3600).contains(&seconds),
            "service {service}: Retry-After {retry_after:?}"
        );
    }
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'LocationRecorded'",
    )
    .bind(user.to_string())
    .fetch_one(platform.pool())
    .await?;
    assert_eq!(stored, LIMIT as i64, "location events stored");

    platform.shut_down().await?;
    Ok(())
}

/// The tokens of one login or refresh, as the command service returns them.
struct Tokens {
    access: String,
    refresh: String,
}

/// Everything secret that the log test used: passwords, tokens and keys.
#[derive(Default)]
struct Used {
    /// Each secret with a description for the failure message.
    secrets: Vec<(String, String)>,
}

impl Used {
    fn add(&mut self, description: &str, value: &str) {
        self.secrets
            .push((description.to_owned(), value.to_owned()));
    }

    fn add_tokens(&mut self, owner: &str, tokens: &Tokens) {
        self.add(&format!("{owner} access token"), &tokens.access);
        // The signature alone identifies a token, so it must not appear either.
        if let Some(signature) = tokens.access.rsplit('.').next() {
            self.add(&format!("{owner} access token signature"), signature);
        }
        self.add(&format!("{owner} refresh token"), &tokens.refresh);
    }

    /// Adds a key in the encodings a log line could show it in.
    fn add_key(&mut self, description: &str, bytes: &[u8]) {
        self.add(&format!("{description} (base64)"), &STANDARD.encode(bytes));
        self.add(
            &format!("{description} (base64url)"),
            &URL_SAFE_NO_PAD.encode(bytes),
        );
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        self.add(&format!("{description} (hex)"), &hex);
        let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
        self.add(&format!("{description} (bytes)"), &list.join(", "));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_contain_no_secrets() -> anyhow::Result<()> {
    const NAME: &str = "logs_contain_no_secrets";
    // Logs of earlier runs would hold their own secrets, not this run's; start empty anyway.
    let _ = std::fs::remove_dir_all(target_dir()?.join("e2e-logs").join(NAME));
    let filter = "info,meridian=debug,command_service=debug,query_service=debug,\
                  outbox_relay=debug,projection_workers=debug,tower_http=debug";
    let platform = Platform::start_with_env(NAME, &[("RUST_LOG", filter)]).await?;
    let http = reqwest::Client::new();
    let mut used = Used::default();
    used.add("admin password", &platform.secrets.admin_password);
    used.add(
        "admin access token",
        platform.admin().access_token().await?.expose(),
    );

    // Two users register and log in.
    let ada_password = format!("ada-{}", Uuid::new_v4().simple());
    let bob_password = format!("bob-{}", Uuid::new_v4().simple());
    used.add("Ada's password", &ada_password);
    used.add("Bob's password", &bob_password);
    let ada = platform
        .register("ada@example.com", "Ada", &ada_password)
        .await?;
    let bob = platform
        .register("bob@example.com", "Bob", &bob_password)
        .await?;
    let first = login(&http, &platform, "ada@example.com", &ada_password).await?;
    used.add_tokens("Ada's first", &first);

    // A refresh, then a reuse of the spent refresh token, which revokes the family, so the
    // newest refresh token fails too.
    let refreshed = refresh(&http, &platform, &first.refresh).await?;
    used.add_tokens("Ada's refreshed", &refreshed);
    let reuse = post(
        &http,
        &platform,
        "refresh",
        json!({"refresh_token": first.refresh}),
    )
    .await?;
    assert_eq!(reuse.0, StatusCode::UNAUTHORIZED, "reuse: {}", reuse.1);
    let revoked = post(
        &http,
        &platform,
        "refresh",
        json!({"refresh_token": refreshed.refresh}),
    )
    .await?;
    assert_eq!(
        revoked.0,
        StatusCode::UNAUTHORIZED,
        "after reuse: {}",
        revoked.1
    );

    // A new login, requests with its token on both services and a socket, then a logout.
    let second = login(&http, &platform, "ada@example.com", &ada_password).await?;
    used.add_tokens("Ada's second", &second);
    let recorded = http
        .post(format!("{}/v1/users/{ada}/locations", platform.command_url))
        .bearer_auth(&second.access)
        .json(&json!({"latitude": 40.7, "longitude": -74.0, "recorded_at": "2020-12-01T00:00:00Z"}))
        .send()
        .await?;
    assert!(recorded.status().is_success(), "{}", recorded.text().await?);
    read_user(&http, &platform, ada, &second.access).await?;
    let mut subscriber = Subscriber::start(
        &platform.socket_urls[0],
        &Secret::new(&second.access),
        &[json!({ "topic": "user_locations", "user_id": ada })],
    )
    .await?;
    let replies = subscriber.wait_subscribed(Duration::from_secs(60)).await?;
    assert_eq!(replies[0]["ok"], true, "{replies:?}");
    subscriber.close().await?;
    let logout = post(
        &http,
        &platform,
        "logout",
        json!({"refresh_token": second.refresh}),
    )
    .await?;
    assert_eq!(logout.0, StatusCode::NO_CONTENT, "logout: {}", logout.1);

    // A forged token on both services, and failed logins: a wrong password, and an unknown
    // email address.
    let forged = format!("{}x", second.access);
    used.add("forged token", &forged);
    let rejected_by_query = http
        .get(format!("{}/v1/users/{ada}", platform.query_url))
        .bearer_auth(&forged)
        .send()
        .await?;
    assert_eq!(rejected_by_query.status(), StatusCode::UNAUTHORIZED);
    let rejected_by_command = http
        .patch(format!("{}/v1/users/{ada}", platform.command_url))
        .bearer_auth(&forged)
        .json(&json!({"name": "Mallory"}))
        .send()
        .await?;
    assert_eq!(rejected_by_command.status(), StatusCode::UNAUTHORIZED);
    for (index, email) in ["ada@example.com", "nobody@example.com"].iter().enumerate() {
        let wrong = format!("wrong-{index}-{}", Uuid::new_v4().simple());
        used.add("wrong password", &wrong);
        let failed = post(
            &http,
            &platform,
            "login",
            json!({"email": email, "password": wrong}),
        )
        .await?;
        assert_eq!(failed.0, StatusCode::UNAUTHORIZED, "{}", failed.1);
    }

    // Bob changes his password; the old one stops working and the new one logs in.
    let bob_tokens = login(&http, &platform, "bob@example.com", &bob_password).await?;
    used.add_tokens("Bob's", &bob_tokens);
    let new_password = format!("bob-new-{}", Uuid::new_v4().simple());
    used.add("Bob's new password", &new_password);
    let changed = http
        .patch(format!("{}/v1/users/{bob}", platform.command_url))
        .bearer_auth(&bob_tokens.access)
        .json(&json!({"password": new_password}))
        .send()
        .await?;
    assert!(changed.status().is_success(), "{}", changed.text().await?);
    let old = post(
        &http,
        &platform,
        "login",
        json!({"email": "bob@example.com", "password": bob_password}),
    )
    .await?;
    assert_eq!(old.0, StatusCode::UNAUTHORIZED, "old password: {}", old.1);
    let after_change = login(&http, &platform, "bob@example.com", &new_password).await?;
    used.add_tokens("Bob's new", &after_change);

    for secret in platform.secrets.token_key_secrets()? {
        used.add("token key secret", &secret);
        let bytes = URL_SAFE_NO_PAD.decode(secret.trim_end_matches('='))?;
        used.add_key("token key", &bytes);
    }
    let master: Value =
        serde_json::from_str(&std::fs::read_to_string(platform.keys.master_key_file())?)?;
    for key in master["keys"].as_array().into_iter().flatten() {
        let encoded = key["key"].as_str().unwrap_or_default();
        used.add("master key", encoded);
        used.add_key("master key", &STANDARD.decode(encoded)?);
    }
    assert!(
        used.secrets.len() > 30,
        "{} secrets collected",
        used.secrets.len()
    );

    // Stop the processes first, so that every line is written.
    let log_dir = platform.log_dir().to_owned();
    platform.shut_down().await?;

    let jwt = Regex::new(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.")?;
    let refresh_token = Regex::new(r"mrt_[A-Za-z0-9_-]{16,}")?;
    let mut scanned = 0;
    let mut debug_lines = 0;
    for entry in std::fs::read_dir(&log_dir)? {
        let path = entry?.path();
        let text = std::fs::read_to_string(&path)?;
        let name = path.display();
        for line in text.lines() {
            scanned += 1;
            debug_lines += usize::from(line.contains("DEBUG"));
            for (description, secret) in &used.secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "{description} in {name}: {line}"
                );
            }
            assert!(!jwt.is_match(line), "a JWT in {name}: {line}");
            assert!(
                !refresh_token.is_match(line),
                "a refresh token in {name}: {line}"
            );
        }
    }
    // The scan read real logs: the services logged at debug level, and the logins and the
    // reuse of a refresh token are there.
    let command_log = std::fs::read_to_string(log_dir.join("command-service.log"))?;
    assert!(scanned > 100, "{scanned} log lines");
    assert!(debug_lines > 0, "no DEBUG line in {}", log_dir.display());
    assert!(
        command_log.matches("login").count() >= 4,
        "logins in the command-service log"
    );
    assert!(
        command_log.contains("presented again"),
        "the reuse warning in the command-service log"
    );
    Ok(())
}

/// Reads `GET /v1/users/{id}` on the query service with `token`, waiting up to 60 s for the
/// read model to show the user.
async fn read_user(
    http: &reqwest::Client,
    platform: &Platform,
    user: Uuid,
    token: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let response = http
            .get(format!("{}/v1/users/{user}", platform.query_url))
            .bearer_auth(token)
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        anyhow::ensure!(
            status == StatusCode::NOT_FOUND && tokio::time::Instant::now() < deadline,
            "GET /v1/users/{user} returned {status}: {}",
            response.text().await?
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `body` to `POST /v1/auth/<route>` and returns the status and the body.
async fn post(
    http: &reqwest::Client,
    platform: &Platform,
    route: &str,
    body: Value,
) -> anyhow::Result<(StatusCode, String)> {
    let response = http
        .post(format!("{}/v1/auth/{route}", platform.command_url))
        .json(&body)
        .send()
        .await?;
    Ok((response.status(), response.text().await?))
}

async fn login(
    http: &reqwest::Client,
    platform: &Platform,
    email: &str,
    password: &str,
) -> anyhow::Result<Tokens> {
    let body = json!({"email": email, "password": password});
    let (status, text) = post(http, platform, "login", body).await?;
    tokens(status, &text)
}

async fn refresh(
    http: &reqwest::Client,
    platform: &Platform,
    refresh_token: &str,
) -> anyhow::Result<Tokens> {
    let body = json!({"refresh_token": refresh_token});
    let (status, text) = post(http, platform, "refresh", body).await?;
    tokens(status, &text)
}

/// Reads the tokens of a login or refresh response. The error never quotes the body.
fn tokens(status: StatusCode, text: &str) -> anyhow::Result<Tokens> {
    anyhow::ensure!(
        status == StatusCode::OK,
        "the session request returned {status}"
    );
    let body: Value = serde_json::from_str(text)?;
    let field = |name: &str| {
        body[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("the session response has no {name}"))
    };
    Ok(Tokens {
        access: field("access_token")?,
        refresh: field("refresh_token")?,
    })
}
