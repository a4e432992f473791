//! Authentication of live updates: the Socket.IO handshake, the check of each subscription,
//! and the disconnect when the token expires, against a real server on a database of its
//! own. The client speaks Socket.IO 5 over Engine.IO 4 on a WebSocket, as socket.io-client
//! does with `transports: ["websocket"]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{SinkExt, StreamExt};
use meridian_auth::keys::{KeyFile, KeyStore};
use meridian_auth::token::{Claims, AUDIENCE, ISSUER};
use meridian_auth::{Auth, AuthSettings, Limits, Role};
use meridian_event_log::live::updates_channel;
use meridian_event_log::testing::{unique_topic_prefix, TestDatabase};
use meridian_event_log::Settings;
use meridian_query_service::live::hub::{Hub, HubSettings};
use meridian_query_service::live::{self, Live};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Bound of every wait for the server.
const WAIT: Duration = Duration::from_secs(10);

/// A running Socket.IO server and the authentication that signs the tests' tokens.
struct Server {
    addr: SocketAddr,
    auth: Auth,
}

impl Server {
    fn token(&self, user_id: Uuid, role: Role) -> String {
        self.auth
            .tokens()
            .issue(&user_id.to_string(), role)
            .expect("issue a token")
            .token
    }

    /// Signs a token of `user_id` with `role` that expires in `seconds`.
    fn token_expiring_in(&self, user_id: Uuid, role: Role, seconds: i64) -> String {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user_id.to_string(),
            role,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + seconds,
            jti: Uuid::new_v4().to_string(),
        };
        self.auth.tokens().sign(&claims).expect("sign")
    }

    /// Opens a socket and connects with `token`, which must be accepted.
    async fn connect(&self, token: &str) -> Client {
        let mut client = Client::open(self.addr).await;
        let answer = client.connect(Some(json!({ "token": token }))).await;
        assert!(answer.is_ok(), "connection rejected: {answer:?}");
        client
    }
}

/// Runs `test` against a fresh database, hub and Socket.IO server with `limits`, then stops
/// them and drops the database, also when the test panics.
async fn with_server<F, Fut>(limits: Limits, test: F)
where
    F: FnOnce(Server) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let database = TestDatabase::create().await.expect("test database");
    let settings = Settings::from_env().expect("settings");
    let prefix = unique_topic_prefix();
    let mut auth_settings = AuthSettings::from_vars(|_| None).expect("default auth settings");
    auth_settings.limits = limits;
    let keys = KeyStore::fixed(&KeyFile::generate()).expect("signing keys");
    let auth = Auth::with_keys(
        &auth_settings,
        Arc::new(keys),
        database.pool.clone(),
        &settings.redis_url,
        &prefix,
    )
    .expect("auth");

    let stop = CancellationToken::new();
    let hub = Hub::start(
        database.pool.clone(),
        HubSettings {
            redis_url: settings.redis_url.clone(),
            channel: updates_channel(&prefix),
            poll_interval: Duration::from_millis(200),
        },
        stop.clone(),
    )
    .await
    .expect("hub");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let live = Arc::new(Live::new(hub, auth.clone()));
    let server = tokio::spawn(live::serve(listener, live, stop.clone()));

    let outcome = tokio::spawn(test(Server { addr, auth })).await;

    stop.cancel();
    server.await.expect("server task").expect("server failed");
    database.drop_database().await.expect("drop database");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// One Socket.IO connection to the default namespace.
struct Client {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_ack: u64,
}

impl Client {
    /// Opens the WebSocket transport and reads the Engine.IO open packet.
    async fn open(addr: SocketAddr) -> Self {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("WebSocket handshake");
        let mut client = Self {
            socket,
            next_ack: 0,
        };
        let open = client.next_text().await.expect("open packet");
        assert!(open.starts_with("0{"), "not an open packet: {open}");
        client
    }

    /// Sends the Socket.IO CONNECT packet with `auth`, and returns Ok on CONNECT or the
    /// message of a CONNECT_ERROR.
    async fn connect(&mut self, auth: Option<Value>) -> Result<(), String> {
        let packet = match auth {
            Some(auth) => format!("40{auth}"),
            None => "40".to_owned(),
        };
        self.send(packet).await;
        let answer = self.next_packet().await.expect("answer to CONNECT");
        if answer.starts_with("0{") {
            return Ok(());
        }
        let error = answer
            .strip_prefix('4')
            .unwrap_or_else(|| panic!("neither CONNECT nor CONNECT_ERROR: {answer}"));
        let error: Value = serde_json::from_str(error).expect("CONNECT_ERROR data");
        Err(error["message"].as_str().expect("message").to_owned())
    }

    /// Emits `subscribe` with `request` and returns the acknowledgement.
    async fn subscribe(&mut self, request: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send(format!("42{id}{}", json!(["subscribe", request])))
            .await;
        let prefix = format!("3{id}");
        loop {
            let packet = self.next_packet().await.expect("acknowledgement");
            if let Some(data) = packet.strip_prefix(&prefix) {
                let mut arguments: Vec<Value> = serde_json::from_str(data).expect("ack data");
                return arguments.remove(0);
            }
        }
    }

    /// Waits for the server to end the connection: a DISCONNECT packet or the close of the
    /// WebSocket. Returns false when neither comes within half of [`WAIT`].
    async fn wait_for_disconnect(&mut self) -> bool {
        let closed = async {
            while let Some(packet) = self.next_packet().await {
                if packet.starts_with('1') {
                    return;
                }
            }
        };
        tokio::time::timeout(WAIT / 2, closed).await.is_ok()
    }

    async fn send(&mut self, packet: String) {
        self.socket
            .send(Message::text(packet))
            .await
            .expect("send a packet");
    }

    /// Returns the next Socket.IO packet (an Engine.IO message without its `4`), or None
    /// once the WebSocket is closed.
    async fn next_packet(&mut self) -> Option<String> {
        loop {
            let text = self.next_text().await?;
            if let Some(packet) = text.strip_prefix('4') {
                return Some(packet.to_owned());
            }
        }
    }

    /// Returns the next Engine.IO packet, replying to pings on the way, or None once the
    /// WebSocket is closed.
    async fn next_text(&mut self) -> Option<String> {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("the server sent nothing in time")?;
            match message {
                Ok(Message::Text(text)) if text.as_str() == "2" => self.send("3".to_owned()).await,
                Ok(Message::Text(text)) => return Some(text.as_str().to_owned()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

fn area() -> Value {
    json!({ "topic": "area", "bbox": [-180, -90, 180, 90] })
}

fn user_topic(topic: &str, user_id: Uuid) -> Value {
    json!({ "topic": topic, "user_id": user_id.to_string() })
}

/// Checks a rejected subscription: `forbidden`, naming `field`.
fn assert_forbidden(reply: &Value, field: &str) {
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    assert_eq!(reply["error"]["field"], field, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{reply}");
}

fn assert_subscribed(reply: &Value) {
    assert_eq!(reply["ok"], true, "{reply}");
    assert!(reply["subscription"].is_string(), "{reply}");
}

#[tokio::test]
async fn handshake_without_token_is_rejected() {
    with_server(Limits::generous(), |server| async move {
        for auth in [None, Some(json!({})), Some(json!({ "token": 42 }))] {
            let mut client = Client::open(server.addr).await;

            let rejection = client.connect(auth.clone()).await.unwrap_err();

            assert!(
                rejection.starts_with("unauthenticated: "),
                "{auth:?}: {rejection}"
            );
            assert!(rejection.contains("auth: { token"), "{rejection}");
        }
    })
    .await;
}

#[tokio::test]
async fn handshake_with_bad_token_is_rejected() {
    with_server(Limits::generous(), |server| async move {
        let valid = server.token(Uuid::new_v4(), Role::Admin);
        let [header, _, signature]: [&str; 3] = valid
            .split('.')
            .collect::<Vec<_>>()
            .try_into()
            .expect("three parts");
        let changed = format!("{header}.e30.{signature}");
        let expired = server.token_expiring_in(Uuid::new_v4(), Role::Admin, -60);

        for (token, code) in [
            ("not-a-jwt", "invalid_token"),
            (changed.as_str(), "invalid_token"),
            (expired.as_str(), "token_expired"),
        ] {
            let mut client = Client::open(server.addr).await;

            let rejection = client.connect(Some(json!({ "token": token }))).await;

            let rejection = rejection.unwrap_err();
            assert!(rejection.starts_with(&format!("{code}: ")), "{rejection}");
        }
    })
    .await;
}

#[tokio::test]
async fn handshake_over_rate_limit_is_rejected() {
    let mut limits = Limits::generous();
    limits.per_user.max = 1;
    with_server(limits, |server| async move {
        let token = server.token(Uuid::new_v4(), Role::Admin);
        let _first = server.connect(&token).await;

        let mut second = Client::open(server.addr).await;
        let rejection = second.connect(Some(json!({ "token": token }))).await;

        let rejection = rejection.unwrap_err();
        assert!(rejection.starts_with("rate_limited: "), "{rejection}");
        assert!(rejection.contains("retry after"), "{rejection}");
    })
    .await;
}

#[tokio::test]
async fn rejected_handshakes_count_against_address() {
    let mut limits = Limits::generous();
    limits.per_address.max = 1;
    with_server(limits, |server| async move {
        let mut first = Client::open(server.addr).await;
        let rejection = first.connect(None).await.unwrap_err();
        assert!(rejection.starts_with("unauthenticated: "), "{rejection}");

        let mut second = Client::open(server.addr).await;
        let token = server.token(Uuid::new_v4(), Role::Admin);
        let rejection = second.connect(Some(json!({ "token": token }))).await;

        let rejection = rejection.unwrap_err();
        assert!(rejection.starts_with("rate_limited: "), "{rejection}");
        assert!(rejection.contains("from this address"), "{rejection}");
    })
    .await;
}

#[tokio::test]
async fn user_subscribes_only_to_own_updates() {
    with_server(Limits::generous(), |server| async move {
        let user_id = Uuid::new_v4();
        let other = Uuid::new_v4();
        let mut client = server.connect(&server.token(user_id, Role::User)).await;

        assert_subscribed(
            &client
                .subscribe(user_topic("user_locations", user_id))
                .await,
        );
        assert_subscribed(&client.subscribe(user_topic("user_profile", user_id)).await);
        let reply = client.subscribe(user_topic("user_locations", other)).await;
        assert_forbidden(&reply, "user_id");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&other.to_string()), "{message}");
        assert_forbidden(
            &client.subscribe(user_topic("user_profile", other)).await,
            "user_id",
        );
        assert_forbidden(&client.subscribe(area()).await, "topic");
    })
    .await;
}

#[tokio::test]
async fn analyst_gets_locations_but_no_profiles() {
    with_server(Limits::generous(), |server| async move {
        let user_id = Uuid::new_v4();
        let mut client = server
            .connect(&server.token(Uuid::new_v4(), Role::Analyst))
            .await;

        assert_subscribed(&client.subscribe(area()).await);
        assert_subscribed(
            &client
                .subscribe(user_topic("user_locations", user_id))
                .await,
        );
        assert_forbidden(
            &client.subscribe(user_topic("user_profile", user_id)).await,
            "user_id",
        );
    })
    .await;
}

#[tokio::test]
async fn admin_subscribes_to_anything() {
    with_server(Limits::generous(), |server| async move {
        let user_id = Uuid::new_v4();
        let mut client = server
            .connect(&server.token(Uuid::new_v4(), Role::Admin))
            .await;

        assert_subscribed(&client.subscribe(area()).await);
        assert_subscribed(
            &client
                .subscribe(user_topic("user_locations", user_id))
                .await,
        );
        assert_subscribed(&client.subscribe(user_topic("user_profile", user_id)).await);
    })
    .await;
}

#[tokio::test]
async fn subscriptions_count_against_rate_limit() {
    let mut limits = Limits::generous();
    limits.per_user.max = 2;
    with_server(limits, |server| async move {
        // The handshake is the first request, the subscription the second.
        let mut client = server
            .connect(&server.token(Uuid::new_v4(), Role::Admin))
            .await;
        assert_subscribed(&client.subscribe(area()).await);

        let reply = client.subscribe(area()).await;

        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
        assert!(
            reply["error"]["retry_after"]
                .as_u64()
                .is_some_and(|s| s >= 1),
            "{reply}"
        );
    })
    .await;
}

#[tokio::test]
async fn socket_is_disconnected_when_token_expires() {
    with_server(Limits::generous(), |server| async move {
        let token = server.token_expiring_in(Uuid::new_v4(), Role::Admin, 2);
        let connected_at = Instant::now();
        let mut client = server.connect(&token).await;
        assert_subscribed(&client.subscribe(area()).await);

        let disconnected = client.wait_for_disconnect().await;

        assert!(
            disconnected,
            "the socket stayed open after its token expired"
        );
        assert!(
            connected_at.elapsed() >= Duration::from_millis(900),
            "disconnected after {:?}, before the token expired",
            connected_at.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn socket_with_valid_token_stays_connected() {
    with_server(Limits::generous(), |server| async move {
        let mut client = server
            .connect(&server.token(Uuid::new_v4(), Role::Admin))
            .await;

        let ended = tokio::time::timeout(Duration::from_secs(3), client.next_packet()).await;

        assert!(ended.is_err(), "the server sent or closed: {ended:?}");
    })
    .await;
}
