//! The access token of a socket: checked in the handshake, counted against the rate limits
//! with every subscription, and enforced until it expires, when the socket is disconnected.
//! The client then reconnects with a fresh token and resumes its subscriptions with `after`.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use meridian_auth::token::TokenError;
use meridian_auth::{AuthError, Caller};
use serde_json::{json, Value};
use socketioxide::extract::{SocketRef, State, TryData};
use tokio_util::sync::CancellationToken;

use super::filter::Filter;
use super::Live;
use crate::auth::peer_address;

/// The caller of a socket, stored in the socket's extensions by [`authenticate_socket`].
#[derive(Debug, Clone)]
pub struct Session {
    pub caller: Caller,
    /// Peer address of the connection, for the per-address rate limit.
    pub address: Option<IpAddr>,
    /// When the handshake's access token expires.
    pub expires_at: DateTime<Utc>,
    /// Cancelled when the socket disconnects, which stops the expiry timer.
    pub closed: CancellationToken,
}

/// The rejection of a connection. socket.io-client passes its text to `connect_error` as
/// `error.message`: the error code, a colon, and a sentence, such as
/// `token_expired: the access token is not valid: the token has expired`.
#[derive(Debug)]
pub struct ConnectRejection {
    code: &'static str,
    message: String,
}

impl fmt::Display for ConnectRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl From<AuthError> for ConnectRejection {
    fn from(error: AuthError) -> Self {
        if let AuthError::Internal(cause) = &error {
            tracing::error!(
                error = format!("{cause:#}"),
                "cannot check a socket's token"
            );
            return Self {
                code: "internal",
                message: "checking the access token failed; try again".to_owned(),
            };
        }
        Self {
            code: error.code(),
            message: error.to_string(),
        }
    }
}

/// Connect middleware: accepts the connection only within the rate limits and with a
/// valid, unexpired access token in the handshake's `auth.token`, and stores its
/// [`Session`]. As on the HTTP routes, the address is counted before the token is checked.
pub async fn authenticate_socket(
    socket: SocketRef,
    TryData(auth): TryData<Value>,
    State(live): State<Arc<Live>>,
) -> Result<(), ConnectRejection> {
    let address = peer_address(&socket.req_parts().extensions);
    live.auth.admit(address, None).await?;
    let auth = auth.unwrap_or_default();
    let Some(token) = auth.get("token").and_then(Value::as_str) else {
        return Err(ConnectRejection {
            code: AuthError::MissingToken.code(),
            message: "connect with an access token: the socket.io-client option \
                      auth: { token: \"<access token>\" }"
                .to_owned(),
        });
    };
    let claims = live.auth.tokens().verify(token).map_err(AuthError::from)?;
    // Verification allows a few seconds of clock skew past `exp`. A socket accepted in that
    // margin would be disconnected at once, so it is rejected instead.
    let expires_at = DateTime::from_timestamp(claims.exp, 0)
        .filter(|expires_at| *expires_at > Utc::now())
        .ok_or(AuthError::InvalidToken(TokenError::Expired))?;
    let caller = Caller {
        user_id: claims.sub,
        role: claims.role,
    };
    live.auth.admit(None, Some(&caller)).await?;

    socket.extensions.insert(Session {
        caller,
        address,
        expires_at,
        closed: CancellationToken::new(),
    });
    Ok(())
}

/// Starts the timer that disconnects `socket` when its access token expires.
pub fn disconnect_at_expiry(socket: SocketRef) {
    let Some(session) = socket.extensions.get::<Session>() else {
        // The middleware stores a session before any socket connects, so this is a bug.
        tracing::error!(sid = %socket.id, "socket has no session; disconnecting it");
        disconnect(socket);
        return;
    };
    let remaining = (session.expires_at - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::spawn(async move {
        tokio::select! {
            () = session.closed.cancelled() => {}
            () = tokio::time::sleep(remaining) => {
                tracing::debug!(
                    sid = %socket.id,
                    user_id = %session.caller.user_id,
                    "access token expired; disconnecting the socket"
                );
                disconnect(socket);
            }
        }
    });
}

fn disconnect(socket: SocketRef) {
    let sid = socket.id;
    if let Err(error) = socket.disconnect() {
        tracing::debug!(%sid, %error, "cannot disconnect a socket");
    }
}

/// Checks that the caller of `socket` may subscribe with `filter`, and counts the request
/// against the rate limits. Returns the `error` object of the rejection otherwise.
pub async fn admit_subscription(
    socket: &SocketRef,
    live: &Live,
    filter: &Filter,
) -> Result<(), Value> {
    let Some(session) = socket.extensions.get::<Session>() else {
        return Err(json!({
            "code": "internal", "field": null,
            "message": "this connection has no session; reconnect",
        }));
    };
    // The timer disconnects the socket at expiry, and this check covers the time until it
    // runs.
    if session.expires_at <= Utc::now() {
        return Err(json!({
            "code": "token_expired", "field": null,
            "message": "the access token of this connection has expired; reconnect with a fresh one",
        }));
    }
    filter
        .authorize(&session.caller)
        .map_err(|error| json!(error))?;
    match live
        .auth
        .admit(session.address, Some(&session.caller))
        .await
    {
        Ok(()) => Ok(()),
        Err(error) => Err(json!({
            "code": error.code(), "field": null,
            "message": error.to_string(),
            "retry_after": error.retry_after_secs(),
        })),
    }
}
