//! One subscription of one socket: replays the rows the client missed, then forwards the
//! live ones, each exactly once and in `seq` order.

use std::time::Duration;

use meridian_event_log::live::{self, LiveUpdate, UpdateKind};
use serde::Serialize;
use serde_json::Value;
use socketioxide::extract::SocketRef;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::filter::Filter;
use super::hub::{Hub, Registration, PAGE};

/// Wait before trying again when the socket's send buffer is full.
const SEND_RETRY: Duration = Duration::from_millis(5);

/// The starting point of a subscription, once `after` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With the rows delivered from now on.
    Live,
    /// With the rows after this `seq`, read from PostgreSQL first.
    After { seq: i64 },
}

/// The error of a resume from a position that is no longer retained, so the client must read
/// current state instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRetained {
    pub position: i64,
}

/// Resolves the position a client last saw to the `seq` to resume after.
pub async fn resolve(
    hub: &Hub,
    after: Option<i64>,
) -> Result<Result<Start, NotRetained>, sqlx::Error> {
    let Some(position) = after else {
        return Ok(Ok(Start::Live));
    };
    let mut connection = hub.pool().acquire().await?;
    if position == 0 {
        let (_, pruned) = live::head(&mut connection).await?;
        return Ok(if pruned == 0 {
            Ok(Start::After { seq: 0 })
        } else {
            Err(NotRetained { position })
        });
    }
    Ok(
        match live::seq_of_position(&mut connection, position).await? {
            Some(seq) => Ok(Start::After { seq }),
            None => Err(NotRetained { position }),
        },
    )
}

/// An update as a subscriber receives it.
#[derive(Debug, Serialize)]
struct Message<'a> {
    subscription: &'a str,
    position: i64,
    kind: UpdateKind,
    user_id: Uuid,
    sequence: i64,
    event_type: &'a str,
    data: &'a Value,
}

/// Sends `filter`'s updates to `socket` as `update` events until `cancel` fires or the
/// socket closes. `registration` must have been made before `start` was resolved.
pub async fn run(
    hub: Hub,
    socket: SocketRef,
    subscription: String,
    filter: Filter,
    mut registration: Registration,
    start: Start,
    cancel: CancellationToken,
) {
    let mut last = match start {
        Start::Live => registration.seq,
        Start::After { seq } => seq,
    };
    let mut replay = matches!(start, Start::After { .. });
    loop {
        let guard = Unregister {
            hub: &hub,
            id: registration.id,
        };
        if replay {
            match replay_backlog(&hub, &socket, &subscription, filter, last, &cancel).await {
                Ok(Some(seq)) => last = seq,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, %subscription, "cannot read the backlog; ending the subscription");
                    emit_reset(&socket, &subscription, "backlog_unavailable");
                    return;
                }
            }
        }
        loop {
            let update = tokio::select! {
                () = cancel.cancelled() => return,
                update = registration.updates.recv() => update,
            };
            let Some(update) = update else {
                break;
            };
            if update.seq <= last {
                continue;
            }
            if !send(&socket, &subscription, &update, &cancel).await {
                return;
            }
            last = update.seq;
        }
        // The hub dropped this subscriber because its queue overflowed: read what it
        // missed from PostgreSQL, as for a resume.
        drop(guard);
        registration = hub.register(filter);
        replay = true;
    }
}

/// Removes a registration from the hub when the subscription ends or re-registers.
struct Unregister<'a> {
    hub: &'a Hub,
    id: u64,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.hub.unregister(self.id);
    }
}

/// Sends the stored rows after `after` that match `filter`. Returns the `seq` of the last
/// row read, or `None` when the subscription ended meanwhile.
async fn replay_backlog(
    hub: &Hub,
    socket: &SocketRef,
    subscription: &str,
    filter: Filter,
    mut after: i64,
    cancel: &CancellationToken,
) -> Result<Option<i64>, sqlx::Error> {
    loop {
        let rows = {
            let mut connection = hub.pool().acquire().await?;
            match filter.user() {
                Some((user, kind)) => {
                    live::user_rows_after(&mut connection, user, kind, after, PAGE).await?
                }
                None => live::rows_after(&mut connection, after, PAGE).await?,
            }
        };
        let complete = rows.len() < usize::try_from(PAGE).unwrap_or(usize::MAX);
        for row in &rows {
            if filter.matches(row) && !send(socket, subscription, row, cancel).await {
                return Ok(None);
            }
            after = row.seq;
        }
        if complete {
            return Ok(Some(after));
        }
    }
}

/// Emits one update, waiting while the socket's buffer is full. Returns false when the
/// socket is gone or the subscription was cancelled.
async fn send(
    socket: &SocketRef,
    subscription: &str,
    update: &LiveUpdate,
    cancel: &CancellationToken,
) -> bool {
    let Some(body) = &update.body else {
        return true;
    };
    let message = Message {
        subscription,
        position: update.position,
        kind: update.kind,
        user_id: update.user_id,
        sequence: body.sequence,
        event_type: &body.event_type,
        data: &body.data,
    };
    loop {
        if cancel.is_cancelled() || !socket.connected() {
            return false;
        }
        match socket.emit("update", &message) {
            Ok(()) => return true,
            Err(socketioxide::SendError::Socket(
                socketioxide::SocketError::InternalChannelFull,
            )) => {
                tokio::time::sleep(SEND_RETRY).await;
            }
            Err(error) => {
                tracing::debug!(%error, %subscription, "cannot send an update; ending the subscription");
                return false;
            }
        }
    }
}

/// Tells the client that `subscription` ended and it must read current state.
pub fn emit_reset(socket: &SocketRef, subscription: &str, reason: &str) {
    let message = serde_json::json!({ "subscription": subscription, "reason": reason });
    if let Err(error) = socket.emit("reset", &message) {
        tracing::debug!(%error, %subscription, "cannot send reset");
    }
}
