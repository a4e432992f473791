//! Every command records who sent it and from where in the metadata of its events, with the
//! client address and user agent sealed under the key of the event's user.

use std::net::SocketAddr;

use axum::http::{Method, StatusCode};
use meridian_auth::Role;
use meridian_command_service::commands::sealed::open_metadata;
use meridian_command_service::serve;
use meridian_domain::profile::envelope::ENVELOPE_CONTENT_TYPE;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::{report, TestApp};
use crate::profile_image::envelope;

const USER_AGENT: &str = "meridian-audit-test/1.0";

/// The command service on a loopback port, as production serves it.
struct RunningServer {
    base_url: String,
    client: reqwest::Client,
    stop: oneshot::Sender<()>,
    server: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    async fn start(app: &TestApp) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port is free");
        let address: SocketAddr = listener.local_addr().expect("listener has an address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app.state.clone(), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .build()
            .expect("HTTP client builds");
        Self {
            base_url: format!("http://{address}"),
            client,
            stop,
            server,
        }
    }

    /// Sends a request with `x-request-id: request_id` and returns the status and JSON body.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        request_id: &str,
    ) -> (reqwest::StatusCode, Value) {
        let response = request
            .header("x-request-id", request_id)
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let body = response.json().await.expect("the body is JSON");
        (status, body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn stop(self) {
        self.stop.send(()).expect("the server is running");
        self.server
            .await
            .expect("the server task ends")
            .expect("the server stops cleanly");
    }
}

/// Returns `(event_type, metadata)` of every event of `user_id`, in position order.
async fn stored_metadata(app: &TestApp, user_id: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT event_type, metadata::jsonb FROM events WHERE aggregate_id = $1 ORDER BY position",
    )
    .bind(user_id)
    .fetch_all(&app.pool)
    .await
    .expect("events are readable")
}

async fn opened(app: &TestApp, user_id: &str, mut metadata: Value) -> Value {
    let keys = app
        .state
        .cipher
        .keyring()
        .for_reading(user_id)
        .await
        .expect("the user has a key");
    open_metadata(&keys, &mut metadata).expect("the metadata opens");
    metadata
}

#[tokio::test]
async fn commands_seal_address_and_agent() {
    let app = TestApp::start().await;
    let server = RunningServer::start(&app).await;

    let (status, body) = server
        .send(
            server.client.post(server.url("/v1/users")).json(&json!({
                "email": "origin-1@ais.example",
                "name": "Origin Vessel",
                "password": "long enough password",
            })),
            "origin-register",
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let user_id = body["user_id"].as_str().unwrap().to_owned();
    let path = format!("/v1/users/{user_id}");
    // The user logs in and acts with their own token.
    let (status, session) = server
        .send(
            server
                .client
                .post(server.url("/v1/auth/login"))
                .json(&json!({
                    "email": "origin-1@ais.example",
                    "password": "long enough password",
                })),
            "origin-login",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let token = session["access_token"].as_str().unwrap().to_owned();
    let commands = [
        (
            server
                .client
                .patch(server.url(&path))
                .bearer_auth(&token)
                .json(&json!({"name": "Renamed Vessel"})),
            "origin-rename",
        ),
        (
            server
                .client
                .put(server.url(&format!("{path}/profile")))
                .bearer_auth(&token)
                .json(&json!({"settings": {"units": "metric"}})),
            "origin-profile",
        ),
        (
            server
                .client
                .put(server.url(&format!("{path}/profile/image")))
                .bearer_auth(&token)
                .header("content-type", ENVELOPE_CONTENT_TYPE)
                .body(envelope(0x5A)),
            "origin-image",
        ),
        (
            server
                .client
                .post(server.url(&format!("{path}/locations")))
                .bearer_auth(&token)
                .json(&report(0, 40.6401, -74.0745)),
            "origin-locations",
        ),
    ];
    for (request, request_id) in commands {
        let (status, body) = server.send(request, request_id).await;
        assert_eq!(status, StatusCode::OK, "{request_id}: {body}");
    }

    let expected = [
        ("UserRegistered", "origin-register"),
        ("NameChanged", "origin-rename"),
        ("ProfileSettingsUpdated", "origin-profile"),
        ("ProfileImageUploaded", "origin-image"),
        ("LocationRecorded", "origin-locations"),
    ];
    let stored = stored_metadata(&app, &user_id).await;
    assert_eq!(stored.len(), expected.len(), "{stored:?}");
    for ((event_type, metadata), (expected_type, request_id)) in stored.into_iter().zip(expected) {
        assert_eq!(event_type, expected_type);
        assert_eq!(metadata["request_id"], request_id, "{event_type}");
        if event_type == "UserRegistered" {
            assert!(metadata.get("actor_id").is_none(), "anonymous: {metadata}");
        } else {
            assert_eq!(metadata["actor_id"], user_id.as_str(), "{event_type}");
            assert_eq!(metadata["actor_role"], "user", "{event_type}");
        }
        let sealed_addr = metadata["client_addr"].as_str().unwrap_or_default();
        let sealed_agent = metadata["user_agent"].as_str().unwrap_or_default();
        assert!(sealed_addr.starts_with("AQ"), "{event_type}: {metadata}");
        assert!(sealed_agent.starts_with("AQ"), "{event_type}: {metadata}");
        assert!(!metadata.to_string().contains("127.0.0.1"), "{metadata}");
        assert!(!metadata.to_string().contains(USER_AGENT), "{metadata}");

        let opened = opened(&app, &user_id, metadata).await;
        assert_eq!(opened["client_addr"], "127.0.0.1", "{event_type}");
        assert_eq!(opened["user_agent"], USER_AGENT, "{event_type}");
    }

    let (status, body) = server
        .send(
            server.client.delete(server.url(&path)).bearer_auth(&token),
            "origin-erase",
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (event_type, metadata) = stored_metadata(&app, &user_id).await.pop().unwrap();
    assert_eq!(event_type, "UserErased");
    assert_eq!(metadata["request_id"], "origin-erase");
    assert!(metadata["client_addr"].is_string(), "{metadata}");
    assert!(!metadata.to_string().contains("127.0.0.1"), "{metadata}");
    assert!(!metadata.to_string().contains(USER_AGENT), "{metadata}");

    server.stop().await;
    app.finish().await;
}

#[tokio::test]
async fn the_caller_of_the_token_is_recorded() {
    let app = TestApp::start().await;
    let user_id = app.register("origin-2@ais.example").await;
    let admin_id = "0e5c1a7e-2f0b-4c59-8f3a-5d1c2b3a4f60";
    let bearer = format!("Bearer {}", app.token_for(admin_id, Role::Admin));

    let response = app
        .send(
            Method::PATCH,
            &format!("/v1/users/{user_id}"),
            &json!({"name": "Renamed By Admin"}),
            &[
                ("authorization", &bearer),
                ("x-request-id", "origin-admin-rename"),
            ],
        )
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let (event_type, metadata) = stored_metadata(&app, &user_id).await.pop().unwrap();
    assert_eq!(event_type, "NameChanged");
    assert_eq!(metadata["actor_id"], admin_id);
    assert_eq!(metadata["actor_role"], "admin");
    assert_eq!(metadata["request_id"], "origin-admin-rename");
    app.finish().await;
}

#[tokio::test]
async fn oneshot_request_stores_no_address() {
    let app = TestApp::start().await;

    let user_id = app.register("origin-3@ais.example").await;

    let (_, metadata) = stored_metadata(&app, &user_id).await.pop().unwrap();
    assert!(metadata.get("client_addr").is_none(), "{metadata}");
    assert!(metadata.get("user_agent").is_none(), "{metadata}");
    assert_eq!(metadata["actor_id"], app.admin_id.as_str(), "{metadata}");
    assert!(metadata["request_id"].is_string(), "{metadata}");
    app.finish().await;
}

#[tokio::test]
async fn long_user_agent_is_cut() {
    let app = TestApp::start().await;
    let user_id = app.register("origin-4@ais.example").await;
    let agent = "A".repeat(300);

    let response = app
        .send(
            axum::http::Method::PATCH,
            &format!("/v1/users/{user_id}"),
            &json!({"name": "Long Agent"}),
            &[("user-agent", agent.as_str())],
        )
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let (_, metadata) = stored_metadata(&app, &user_id).await.pop().unwrap();
    let opened = opened(&app, &user_id, metadata).await;
    assert_eq!(opened["user_agent"], agent[..256]);
    app.finish().await;
}

#[tokio::test]
async fn batch_events_share_one_sealed_origin() {
    let app = TestApp::start().await;
    let user_id = app.register("origin-5@ais.example").await;
    let batch = json!({"reports": [report(0, 40.1, -74.1), report(10, 40.2, -74.2)]});

    let response = app
        .send(
            axum::http::Method::POST,
            &format!("/v1/users/{user_id}/locations"),
            &batch,
            &[("user-agent", USER_AGENT)],
        )
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let stored = stored_metadata(&app, &user_id).await;
    let locations: Vec<&Value> = stored
        .iter()
        .filter(|(event_type, _)| event_type == "LocationRecorded")
        .map(|(_, metadata)| metadata)
        .collect();
    assert_eq!(locations.len(), 2);
    for metadata in locations {
        let opened = opened(&app, &user_id, metadata.clone()).await;
        assert_eq!(opened["user_agent"], USER_AGENT);
    }
    app.finish().await;
}
