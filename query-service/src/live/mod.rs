//! Live updates over Socket.IO, on an address of their own (`MERIDIAN_SOCKET_ADDR`).
//!
//! A client connects with an access token in the handshake (`auth: { token }`); the
//! connection is rejected without a valid one, and closed when the token expires. Each
//! subscription is checked against the caller's role.
//!
//! - [`session`]: the handshake check and the disconnect at expiry.
//! - [`filter`]: `subscribe` requests, who may make them, and the updates each one selects.
//! - [`hub`]: takes the rows of `rm_updates` from Redis and PostgreSQL, in order, once.
//! - [`subscription`]: replays a client's backlog, then forwards live rows.
//!
//! The protocol is described in `docs/live-updates.md`.

pub mod filter;
pub mod hub;
pub mod session;
pub mod subscription;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context;
use axum::Router;
use meridian_auth::Auth;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, SocketRef, State, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::Sid;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

use filter::SubscribeRequest;
use hub::Hub;
use session::Session;
use subscription::Start;

/// Subscriptions one socket may hold at a time. Each costs a task and a queue, and every
/// update is sent once per matching subscription, so an unbounded number would let one
/// client multiply the server's work.
pub const MAX_SUBSCRIPTIONS_PER_SOCKET: usize = 64;

/// Packets buffered per socket before an emit has to wait. A replay sends rows faster than
/// a client reads them; the default of 128 would make it wait often.
const SOCKET_BUFFER: usize = 4096;

/// State shared by every socket of one process.
pub struct Live {
    hub: Hub,
    /// Checks the handshake's access token and counts requests against the rate limits.
    auth: Auth,
    next_subscription: AtomicU64,
    /// Running subscriptions per socket, to stop them on `unsubscribe` or disconnect.
    subscriptions: Mutex<HashMap<Sid, HashMap<String, CancellationToken>>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("hub", &self.hub)
            .field("next_subscription", &self.next_subscription)
            .finish_non_exhaustive()
    }
}

impl Live {
    pub fn new(hub: Hub, auth: Auth) -> Self {
        Self {
            hub,
            auth,
            next_subscription: AtomicU64::new(1),
            subscriptions: Mutex::default(),
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Records subscription `id` of `socket`, or returns how many it holds when that is
    /// already [`MAX_SUBSCRIPTIONS_PER_SOCKET`].
    fn reserve(&self, socket: Sid, id: &str, cancel: &CancellationToken) -> Result<(), usize> {
        let mut subscriptions = self.subscriptions();
        let held = subscriptions.entry(socket).or_default();
        if held.len() >= MAX_SUBSCRIPTIONS_PER_SOCKET {
            return Err(held.len());
        }
        held.insert(id.to_owned(), cancel.clone());
        Ok(())
    }

    fn release(&self, socket: Sid, id: &str) {
        if let Some(held) = self.subscriptions().get_mut(&socket) {
            held.remove(id);
        }
    }

    fn subscriptions(&self) -> MutexGuard<'_, HashMap<Sid, HashMap<String, CancellationToken>>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds the Socket.IO service at `/socket.io/` and returns it with its handle. Pages of
/// any origin may connect, because the dashboard comes from the HTTP address, another origin.
/// The access token, not the origin, decides who may connect.
pub fn router(live: Arc<Live>) -> (Router, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(SOCKET_BUFFER)
        .with_state(live)
        .build_layer();
    io.ns("/", on_connect.with(session::authenticate_socket));
    let router = Router::new().layer(layer).layer(CorsLayer::permissive());
    (router, io)
}

/// Serves [`router`] on `listener` until `shutdown` fires, then disconnects every socket.
/// Each connection carries its peer address, which the rate limit counts.
pub async fn serve(
    listener: TcpListener,
    live: Arc<Live>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("listener has no address")?;
    let (router, io) = router(live);
    tracing::info!(%addr, "Socket.IO listening");
    let stopped = shutdown.clone();
    let close_sockets = async move {
        stopped.cancelled().await;
        // Upgraded WebSocket connections would otherwise keep the server open.
        io.close().await;
    };
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(close_sockets)
        .await
        .context("Socket.IO server failed")?;
    tracing::info!("Socket.IO stopped");
    Ok(())
}

async fn on_connect(socket: SocketRef) {
    socket.on("subscribe", on_subscribe);
    socket.on("unsubscribe", on_unsubscribe);
    socket.on_disconnect(on_disconnect);
    session::disconnect_at_expiry(socket);
}

async fn on_subscribe(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(live): State<Arc<Live>>,
) {
    let Ok(payload) = payload else {
        send_ack(ack, &missing_payload("subscribe"));
        return;
    };
    let request = match SubscribeRequest::parse(&payload) {
        Ok(request) => request,
        Err(error) => {
            send_ack(ack, &json!({ "ok": false, "error": error }));
            return;
        }
    };
    if let Err(error) = session::admit_subscription(&socket, &live, &request.filter).await {
        send_ack(ack, &json!({ "ok": false, "error": error }));
        return;
    }
    // Take a slot before anything awaits, so concurrent requests cannot pass the limit.
    let id = live
        .next_subscription
        .fetch_add(1, Ordering::Relaxed)
        .to_string();
    let cancel = CancellationToken::new();
    if let Err(held) = live.reserve(socket.id, &id, &cancel) {
        send_ack(
            ack,
            &json!({ "ok": false, "error": {
                "code": "too_many_subscriptions", "field": null,
                "message": format!(
                    "this socket holds {held} subscriptions, the most allowed; unsubscribe one first"
                ),
            }}),
        );
        return;
    }

    // Register before resolving and acknowledging, so that no row delivered meanwhile is
    // missed; the replay and the live rows overlap, and the subscription skips repeats.
    let hub = live.hub.clone();
    let registration = hub.register(request.filter);
    let refusal = match subscription::resolve(&hub, request.after).await {
        Ok(Ok(start)) => Ok(start),
        Ok(Err(not_retained)) => Err(json!({
            "code": "position_not_retained",
            "field": "after",
            "message": format!(
                "position {} is not among the retained updates; read current state and subscribe again",
                not_retained.position
            ),
        })),
        Err(error) => {
            tracing::warn!(%error, "cannot resolve a resume position");
            Err(json!({
                "code": "unavailable", "field": "after",
                "message": "the update history cannot be read now; try again",
            }))
        }
    };
    let start = match refusal {
        Ok(start) => start,
        Err(error) => {
            hub.unregister(registration.id);
            live.release(socket.id, &id);
            send_ack(ack, &json!({ "ok": false, "error": error }));
            return;
        }
    };

    let position = match start {
        Start::After { .. } => request.after.unwrap_or_default(),
        Start::Live => registration.position,
    };
    send_ack(
        ack,
        &json!({ "ok": true, "subscription": id, "position": position }),
    );
    tokio::spawn(subscription::run(
        hub,
        socket,
        id,
        request.filter,
        registration,
        start,
        cancel,
    ));
}

async fn on_unsubscribe(
    socket: SocketRef,
    TryData(payload): TryData<Value>,
    ack: AckSender,
    State(live): State<Arc<Live>>,
) {
    let Ok(payload) = payload else {
        send_ack(ack, &missing_payload("unsubscribe"));
        return;
    };
    let Some(id) = payload.get("subscription").and_then(Value::as_str) else {
        let message = if payload.get("subscription").is_some() {
            "must be a string: the id that subscribe returned"
        } else {
            "is required: the id that subscribe returned"
        };
        send_ack(
            ack,
            &json!({ "ok": false, "error": {
                "code": "invalid_subscription", "field": "subscription", "message": message,
            }}),
        );
        return;
    };
    let removed = live
        .subscriptions()
        .get_mut(&socket.id)
        .and_then(|running| running.remove(id));
    match removed {
        Some(cancel) => {
            cancel.cancel();
            send_ack(ack, &json!({ "ok": true }));
        }
        None => send_ack(
            ack,
            &json!({ "ok": false, "error": {
                "code": "unknown_subscription", "field": "subscription",
                "message": format!("this socket has no subscription {id:?}"),
            }}),
        ),
    }
}

async fn on_disconnect(socket: SocketRef, State(live): State<Arc<Live>>) {
    if let Some(session) = socket.extensions.get::<Session>() {
        session.closed.cancel();
    }
    let running = live.subscriptions().remove(&socket.id);
    for cancel in running.into_iter().flat_map(HashMap::into_values) {
        cancel.cancel();
    }
}

/// Builds the reply to an event sent without a payload, or with one that is not JSON.
fn missing_payload(event: &str) -> Value {
    json!({ "ok": false, "error": {
        "code": "invalid_subscription", "field": null,
        "message": format!("{event} needs one payload object"),
    }})
}

fn send_ack(ack: AckSender, reply: &Value) {
    if let Err(error) = ack.send(reply) {
        tracing::debug!(%error, "cannot acknowledge a request");
    }
}
