//! Live updates over Socket.IO, on an address of their own (`MERIDIAN_SOCKET_ADDR`).
//!
//! - [`filter`]: `subscribe` requests and the updates each one selects.
//! - [`hub`]: takes the rows of `rm_updates` from Redis and PostgreSQL, in order, once.
//! - [`subscription`]: replays a client's backlog, then forwards live rows.
//!
//! The protocol is described in `docs/live-updates.md`.

pub mod filter;
pub mod hub;
pub mod subscription;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Context;
use axum::Router;
use serde_json::{json, Value};
use socketioxide::extract::{AckSender, Data, SocketRef, State};
use socketioxide::socket::Sid;
use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

use filter::SubscribeRequest;
use hub::Hub;
use subscription::Start;

/// Packets buffered per socket before an emit has to wait. A replay sends rows faster than
/// a client reads them; the default of 128 would make it wait often.
const SOCKET_BUFFER: usize = 4096;

/// State shared by every socket of one process.
#[derive(Debug)]
pub struct Live {
    hub: Hub,
    next_subscription: AtomicU64,
    /// Running subscriptions per socket, to stop them on `unsubscribe` or disconnect.
    subscriptions: Mutex<HashMap<Sid, HashMap<String, CancellationToken>>>,
}

impl Live {
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            next_subscription: AtomicU64::new(1),
            subscriptions: Mutex::default(),
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    fn subscriptions(&self) -> MutexGuard<'_, HashMap<Sid, HashMap<String, CancellationToken>>> {
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds the Socket.IO service at `/socket.io/` and returns it with its handle. Pages of
/// any origin may connect, because the dashboard comes from the HTTP address, another origin.
pub fn router(live: Arc<Live>) -> (Router, SocketIo) {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(SOCKET_BUFFER)
        .with_state(live)
        .build_layer();
    io.ns("/", on_connect);
    let router = Router::new().layer(layer).layer(CorsLayer::permissive());
    (router, io)
}

/// Serves [`router`] on `listener` until `shutdown` fires, then disconnects every socket.
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
    axum::serve(listener, router)
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
}

async fn on_subscribe(
    socket: SocketRef,
    Data(payload): Data<Value>,
    ack: AckSender,
    State(live): State<Arc<Live>>,
) {
    let request = match SubscribeRequest::parse(&payload) {
        Ok(request) => request,
        Err(error) => {
            send_ack(ack, &json!({ "ok": false, "error": error }));
            return;
        }
    };
    // Register before resolving and acknowledging, so that no row delivered meanwhile is
    // missed; the replay and the live rows overlap, and the subscription skips repeats.
    let hub = live.hub.clone();
    let registration = hub.register(request.filter);
    let start = match subscription::resolve(&hub, request.after).await {
        Ok(Ok(start)) => start,
        Ok(Err(not_retained)) => {
            hub.unregister(registration.id);
            send_ack(
                ack,
                &json!({ "ok": false, "error": {
                    "code": "position_not_retained",
                    "field": "after",
                    "message": format!(
                        "position {} is not among the retained updates; read current state and subscribe again",
                        not_retained.position
                    ),
                }}),
            );
            return;
        }
        Err(error) => {
            hub.unregister(registration.id);
            tracing::warn!(%error, "cannot resolve a resume position");
            send_ack(
                ack,
                &json!({ "ok": false, "error": {
                    "code": "unavailable", "field": "after",
                    "message": "the update history cannot be read now; try again",
                }}),
            );
            return;
        }
    };

    let id = live
        .next_subscription
        .fetch_add(1, Ordering::Relaxed)
        .to_string();
    let cancel = CancellationToken::new();
    live.subscriptions()
        .entry(socket.id)
        .or_default()
        .insert(id.clone(), cancel.clone());
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
    Data(payload): Data<Value>,
    ack: AckSender,
    State(live): State<Arc<Live>>,
) {
    let Some(id) = payload.get("subscription").and_then(Value::as_str) else {
        send_ack(
            ack,
            &json!({ "ok": false, "error": {
                "code": "invalid_subscription", "field": "subscription",
                "message": "is required: the id that subscribe returned",
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
    let running = live.subscriptions().remove(&socket.id);
    for cancel in running.into_iter().flat_map(HashMap::into_values) {
        cancel.cancel();
    }
}

fn send_ack(ack: AckSender, reply: &Value) {
    if let Err(error) = ack.send(reply) {
        tracing::debug!(%error, "cannot acknowledge a request");
    }
}
