//! Login, refresh and logout, and the attacks a command route must refuse: no token, an
//! expired token, a forged signature, `alg: none`, another user's token, a reused refresh
//! token and a role escalation through a request body.

use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use meridian_auth::token::{Claims, AUDIENCE, ISSUER};
use meridian_auth::{BootstrapAdmin, Limits, Role, Secret};
use meridian_command_service::api::auth::bootstrap_admin;
use serde_json::{json, Value};

use crate::common::{assert_error, report, TestApp, TestResponse, ANONYMOUS};

const PASSWORD: &str = "long enough password";

/// Registers a user with [`PASSWORD`] and logs in; returns the id and the login body.
async fn user_session(app: &TestApp, email: &str) -> (String, Value) {
    let user_id = app.register(email).await;
    let login = login(app, email, PASSWORD).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    (user_id, login.body)
}

async fn login(app: &TestApp, email: &str, password: &str) -> TestResponse {
    app.send_as(
        None,
        Method::POST,
        "/v1/auth/login",
        &json!({"email": email, "password": password}),
    )
    .await
}

async fn refresh(app: &TestApp, token: &Value) -> TestResponse {
    app.send_as(
        None,
        Method::POST,
        "/v1/auth/refresh",
        &json!({"refresh_token": token}),
    )
    .await
}

fn location_body() -> Value {
    json!({"reports": [report(0, 40.7, -74.0)]})
}

#[tokio::test]
async fn login_issues_tokens_that_act_as_the_user() {
    let app = TestApp::start().await;
    let (user_id, session) = user_session(&app, "ada@example.com").await;
    assert_eq!(session["token_type"], "Bearer");
    assert_eq!(session["expires_in"], 900);
    assert_eq!(session["user_id"], user_id.as_str());
    assert_eq!(session["role"], "user");
    let token = session["access_token"].as_str().unwrap();

    let own = app
        .send_as(
            Some(token),
            Method::POST,
            &format!("/v1/users/{user_id}/locations"),
            &location_body(),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);

    // The email is matched without regard to case, as registration stores it.
    let upper = login(&app, "ADA@example.com", PASSWORD).await;
    assert_eq!(upper.status, StatusCode::OK, "{}", upper.body);

    for (email, password) in [
        ("ada@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
    ] {
        let refused = login(&app, email, password).await;
        assert_error(&refused, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    let empty = login(&app, "", PASSWORD).await;
    assert_error(
        &empty,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(empty.body["field"], "email");
    app.finish().await;
}

#[tokio::test]
async fn command_routes_refuse_requests_without_a_valid_token() {
    let app = TestApp::start().await;
    let user_id = app.register("ada@example.com").await;
    let before = app.event_count().await;
    let path = format!("/v1/users/{user_id}/locations");

    let missing = app
        .send(Method::POST, &path, &location_body(), &[(ANONYMOUS, "")])
        .await;
    assert_error(&missing, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"meridian\"")
    );

    let now = chrono::Utc::now().timestamp();
    let expired = app
        .state
        .auth
        .tokens()
        .sign(&Claims {
            sub: user_id.clone(),
            role: Role::User,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now - 2000,
            exp: now - 1000,
            jti: "expired".into(),
        })
        .unwrap();

    let genuine = app.token_for(&user_id, Role::User);
    let forged_role = forge_payload(&genuine, |claims| claims["role"] = json!("admin"));
    let foreign_key = other_key_token(&user_id);
    let alg_none = unsigned_token(&app, &user_id);

    for (token, code) in [
        (expired.as_str(), "token_expired"),
        (forged_role.as_str(), "invalid_token"),
        (foreign_key.as_str(), "invalid_token"),
        (alg_none.as_str(), "invalid_token"),
        ("not-a-token", "invalid_token"),
    ] {
        let refused = app
            .send_as(Some(token), Method::POST, &path, &location_body())
            .await;
        assert_error(&refused, StatusCode::UNAUTHORIZED, code);
        assert!(refused
            .header("www-authenticate")
            .is_some_and(|value| value.contains("invalid_token")));
    }
    // A bad token is refused even on the open registration route.
    let register = app
        .send_as(
            Some("not-a-token"),
            Method::POST,
            "/v1/users",
            &json!({"email": "x@example.com", "name": "X", "password": PASSWORD}),
        )
        .await;
    assert_error(&register, StatusCode::UNAUTHORIZED, "invalid_token");
    assert_eq!(app.event_count().await, before, "nothing was stored");
    app.finish().await;
}

/// Changes the payload of `token` and keeps its header and signature.
fn forge_payload(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    change(&mut claims);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// A token signed by a key this service does not have.
fn other_key_token(user_id: &str) -> String {
    use meridian_auth::keys::{KeyFile, KeyStore};
    use meridian_auth::token::{TokenService, DEFAULT_ACCESS_TTL};
    let keys = KeyStore::fixed(&KeyFile::generate()).unwrap();
    TokenService::new(std::sync::Arc::new(keys), DEFAULT_ACCESS_TTL)
        .issue(user_id, Role::Admin)
        .unwrap()
        .token
}

/// An admin token with `"alg": "none"`, the service's key id and no signature.
fn unsigned_token(app: &TestApp, user_id: &str) -> String {
    let kid = app
        .state
        .auth
        .tokens()
        .keys()
        .current()
        .active_kid()
        .to_owned();
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "sub": user_id, "role": "admin", "iss": ISSUER, "aud": AUDIENCE,
        "iat": now, "exp": now + 600, "jti": "none",
    });
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[tokio::test]
async fn users_act_only_on_themselves_and_analysts_change_nothing() {
    let app = TestApp::start().await;
    let ada = app.register("ada@example.com").await;
    let bob = app.register("bob@example.com").await;
    let ada_token = app.token_for(&ada, Role::User);
    let analyst = app.token_for("analyst-1", Role::Analyst);
    let before = app.event_count().await;

    let on_bob: [(Method, String, Value); 4] = [
        (
            Method::POST,
            format!("/v1/users/{bob}/locations"),
            location_body(),
        ),
        (
            Method::PUT,
            format!("/v1/users/{bob}/profile"),
            json!({"settings": {"theme": "dark"}}),
        ),
        (
            Method::PATCH,
            format!("/v1/users/{bob}"),
            json!({"name": "Mallory"}),
        ),
        (Method::DELETE, format!("/v1/users/{bob}"), json!({})),
    ];
    for (method, path, body) in &on_bob {
        let refused = app
            .send_as(Some(&ada_token), method.clone(), path, body)
            .await;
        assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
        let refused = app
            .send_as(Some(&analyst), method.clone(), path, body)
            .await;
        assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
        assert!(refused.body["message"]
            .as_str()
            .unwrap()
            .contains("change nothing"));
    }
    assert_eq!(app.event_count().await, before, "nothing was stored");

    // Bob's own token and an admin's work.
    let bob_token = app.token_for(&bob, Role::User);
    let own = app
        .send_as(
            Some(&bob_token),
            Method::PATCH,
            &format!("/v1/users/{bob}"),
            &json!({"name": "Robert"}),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let admin = app
        .send(
            Method::POST,
            &format!("/v1/users/{bob}/locations"),
            &location_body(),
            &[],
        )
        .await;
    assert_eq!(admin.status, StatusCode::OK, "{}", admin.body);
    app.finish().await;
}

#[tokio::test]
async fn a_role_cannot_be_raised_through_a_request_body() {
    let app = TestApp::start().await;
    let ada = app.register("ada@example.com").await;
    let ada_token = app.token_for(&ada, Role::User);
    let before = app.event_count().await;

    let anonymous = app
        .send_as(
            None,
            Method::POST,
            "/v1/users",
            &json!({"email": "eve@example.com", "name": "Eve", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_error(&anonymous, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(anonymous.body["field"], "role");

    let as_user = app
        .send_as(
            Some(&ada_token),
            Method::POST,
            "/v1/users",
            &json!({"email": "eve@example.com", "name": "Eve", "password": PASSWORD, "role": "analyst"}),
        )
        .await;
    assert_error(&as_user, StatusCode::FORBIDDEN, "forbidden");

    let promote_self = app
        .send_as(
            Some(&ada_token),
            Method::PATCH,
            &format!("/v1/users/{ada}"),
            &json!({"name": "Ada", "role": "admin"}),
        )
        .await;
    assert_error(&promote_self, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(promote_self.body["field"], "role");
    assert_eq!(app.event_count().await, before, "nothing was stored");

    let unknown = app
        .send(
            Method::PATCH,
            &format!("/v1/users/{ada}"),
            &json!({"role": "root"}),
            &[],
        )
        .await;
    assert_error(
        &unknown,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(unknown.body["field"], "role");

    // An admin may grant roles, at registration or later, and login reports them.
    let analyst = app
        .post(
            "/v1/users",
            &json!({"email": "ann@example.com", "name": "Ann", "password": PASSWORD, "role": "analyst"}),
        )
        .await;
    assert_eq!(analyst.status, StatusCode::CREATED, "{}", analyst.body);
    let session = login(&app, "ann@example.com", PASSWORD).await;
    assert_eq!(session.body["role"], "analyst");
    let promoted = app
        .patch(&format!("/v1/users/{ada}"), &json!({"role": "admin"}))
        .await;
    assert_eq!(promoted.status, StatusCode::OK, "{}", promoted.body);
    assert_eq!(
        login(&app, "ada@example.com", PASSWORD).await.body["role"],
        "admin"
    );
    app.finish().await;
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_session() {
    let app = TestApp::start().await;
    let (_, session) = user_session(&app, "ada@example.com").await;
    let first = session["refresh_token"].clone();

    let second = refresh(&app, &first).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_ne!(second.body["refresh_token"], first);
    let third = refresh(&app, &second.body["refresh_token"]).await;
    assert_eq!(third.status, StatusCode::OK, "{}", third.body);

    // The first token again: someone has a copy, so the whole session ends.
    let reused = refresh(&app, &first).await;
    assert_error(&reused, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    assert!(reused.body["message"]
        .as_str()
        .unwrap()
        .contains("already used"));
    let newest = refresh(&app, &third.body["refresh_token"]).await;
    assert_error(&newest, StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    // Logout ends another session; the call is idempotent.
    let (_, session) = (
        String::new(),
        login(&app, "ada@example.com", PASSWORD).await.body,
    );
    for _ in 0..2 {
        let logout = app
            .send_as(
                None,
                Method::POST,
                "/v1/auth/logout",
                &json!({"refresh_token": session["refresh_token"]}),
            )
            .await;
        assert_eq!(logout.status, StatusCode::NO_CONTENT);
    }
    let after = refresh(&app, &session["refresh_token"]).await;
    assert_error(&after, StatusCode::UNAUTHORIZED, "invalid_refresh_token");

    let garbage = refresh(&app, &json!("mrt_nope")).await;
    assert_error(&garbage, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    let missing = app
        .send_as(None, Method::POST, "/v1/auth/refresh", &json!({}))
        .await;
    assert_error(
        &missing,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(missing.body["field"], "refresh_token");
    app.finish().await;
}

#[tokio::test]
async fn password_change_deactivation_and_erase_end_sessions() {
    let app = TestApp::start().await;
    let (ada, session) = user_session(&app, "ada@example.com").await;
    let changed = app
        .patch(
            &format!("/v1/users/{ada}"),
            &json!({"password": "another long password"}),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    let refused = refresh(&app, &session["refresh_token"]).await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    assert_eq!(
        login(&app, "ada@example.com", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    let session = login(&app, "ada@example.com", "another long password")
        .await
        .body;

    let deactivated = app
        .patch(&format!("/v1/users/{ada}"), &json!({"active": false}))
        .await;
    assert_eq!(deactivated.status, StatusCode::OK, "{}", deactivated.body);
    let refused = refresh(&app, &session["refresh_token"]).await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    let refused = login(&app, "ada@example.com", "another long password").await;
    assert_error(&refused, StatusCode::UNAUTHORIZED, "invalid_credentials");

    let (bob, _) = user_session(&app, "bob@example.com").await;
    let erased = app
        .send(Method::DELETE, &format!("/v1/users/{bob}"), &json!({}), &[])
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.body);
    let sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM auth_refresh_families WHERE user_id = $1")
            .bind(&bob)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(sessions, 0, "erasing a user deletes their sessions");
    app.finish().await;
}

#[tokio::test]
async fn requests_over_the_user_limit_get_429_with_retry_after() {
    let mut limits = Limits::generous();
    limits.per_user.max = 3;
    let app = TestApp::start_with_limits(limits).await;
    let ada = app.register("ada@example.com").await;
    let token = app.token_for(&ada, Role::User);
    let path = format!("/v1/users/{ada}/locations");
    for second in 0..3 {
        let body = json!({"reports": [report(second, 40.7, -74.0)]});
        let accepted = app.send_as(Some(&token), Method::POST, &path, &body).await;
        assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.body);
    }
    let limited = app
        .send_as(Some(&token), Method::POST, &path, &location_body())
        .await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(app.events_of("LocationTrack", &ada).await, 3);
    app.finish().await;
}

#[tokio::test]
async fn failed_logins_are_limited_tighter() {
    let app = TestApp::start().await;
    app.register("ada@example.com").await;
    for _ in 0..5 {
        let refused = login(&app, "ada@example.com", "wrong password").await;
        assert_error(&refused, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    let limited = login(&app, "ada@example.com", PASSWORD).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert!(limited.header("retry-after").is_some());
    app.finish().await;
}

#[tokio::test]
async fn idempotent_results_are_not_replayed_to_another_caller() {
    let app = TestApp::start().await;
    let ada = app.register("ada@example.com").await;
    let path = format!("/v1/users/{ada}/locations");
    let first = app
        .send(
            Method::POST,
            &path,
            &location_body(),
            &[("idempotency-key", "shared-key")],
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    // Another admin repeats the key and body: a new request, not a replay.
    let other_admin = app.token_for("admin-2", Role::Admin);
    let header = format!("Bearer {other_admin}");
    let second = app
        .send(
            Method::POST,
            &path,
            &location_body(),
            &[
                ("idempotency-key", "shared-key"),
                ("authorization", &header),
            ],
        )
        .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_ne!(second.body["position"], first.body["position"]);
    app.finish().await;
}

#[tokio::test]
async fn the_configured_admin_is_created_once_and_can_log_in() {
    let app = TestApp::start().await;
    let admin = BootstrapAdmin {
        email: "root@example.com".into(),
        password: Secret::new("configured admin password"),
    };
    let created = bootstrap_admin(&app.state, &admin).await.unwrap();
    let again = bootstrap_admin(&app.state, &admin).await.unwrap();
    assert_eq!(created, again);
    let session = login(&app, "root@example.com", "configured admin password").await;
    assert_eq!(session.status, StatusCode::OK, "{}", session.body);
    assert_eq!(session.body["role"], "admin");

    // An existing user with the configured email is promoted, and keeps their password.
    let ada = app.register("ada@example.com").await;
    let promoted = bootstrap_admin(
        &app.state,
        &BootstrapAdmin {
            email: "ada@example.com".into(),
            password: Secret::new("ignored for existing users"),
        },
    )
    .await
    .unwrap();
    assert_eq!(promoted, ada);
    assert_eq!(
        login(&app, "ada@example.com", PASSWORD).await.body["role"],
        "admin"
    );

    let short = BootstrapAdmin {
        email: "x@example.com".into(),
        password: Secret::new("short"),
    };
    let error = bootstrap_admin(&app.state, &short).await.unwrap_err();
    assert!(
        error.to_string().contains("MERIDIAN_ADMIN_PASSWORD"),
        "{error}"
    );
    app.finish().await;
}

#[tokio::test]
async fn auth_routes_allow_cross_origin_preflights() {
    let app = TestApp::start().await;
    let preflight = app
        .raw(
            Method::OPTIONS,
            "/v1/auth/login",
            None,
            axum::body::Body::empty(),
            &[
                (ANONYMOUS, ""),
                ("origin", "http://127.0.0.1:8081"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "content-type"),
            ],
        )
        .await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(preflight.header("access-control-allow-origin"), Some("*"));
    app.finish().await;
}

#[tokio::test]
async fn bad_tokens_count_against_the_address_limit() {
    let mut limits = Limits::generous();
    limits.per_address.max = 3;
    let app = TestApp::start_with_limits(limits).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meridian_command_service::serve(
        listener,
        app.state.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let path = format!("{base}/v1/users/{}/locations", uuid::Uuid::new_v4());
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = client
            .post(&path)
            .bearer_auth("forged")
            .json(&location_body())
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    app.finish().await;
}

#[tokio::test]
async fn sessions_survive_a_restart_of_the_service() {
    let app = TestApp::start().await;
    let (_, session) = user_session(&app, "ada@example.com").await;

    // A new process: fresh state over the same database and key file, nothing in memory.
    let settings = meridian_auth::AuthSettings {
        limits: Limits::generous(),
        ..meridian_auth::AuthSettings::from_vars(|_| None).unwrap()
    };
    let restarted = meridian_auth::Auth::with_keys(
        &settings,
        app.state.auth.tokens().keys().clone(),
        app.pool.clone(),
        &meridian_event_log::settings::var_or("MERIDIAN_REDIS_URL", "redis://127.0.0.1:6379/"),
        &format!("test.{}.", uuid::Uuid::new_v4().simple()),
    )
    .unwrap();
    let state = meridian_command_service::AppState::new(
        app.pool.clone(),
        app.state.cipher.clone(),
        restarted,
    );
    let accounts = meridian_command_service::api::auth::UserAccounts(&state);
    let refresh_token = session["refresh_token"].as_str().unwrap();
    let renewed = state.auth.refresh(&accounts, refresh_token).await.unwrap();
    assert_eq!(renewed.user_id, session["user_id"].as_str().unwrap());
    // The token spent after the restart is spent for the old process too.
    let reused = refresh(&app, &session["refresh_token"]).await;
    assert_error(&reused, StatusCode::UNAUTHORIZED, "invalid_refresh_token");
    app.finish().await;
}
