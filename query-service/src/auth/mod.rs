//! Authentication of `/v1` requests: the middleware that checks the bearer token and the
//! rate limits, and the extractor that hands the caller to a handler.
//!
//! Who may read what is decided in each handler, because most rules depend on the user id
//! in the path.
//!
//! - [`openapi`]: adds the bearer scheme and the 401 and 429 responses to every `/v1`
//!   operation.

pub mod openapi;

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::Extensions;
use axum::middleware::Next;
use axum::response::Response;
use meridian_auth::{AuthError, Caller};
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// Middleware that rejects a request over a rate limit (429) or without a valid access
/// token (401), and otherwise stores its [`Caller`] for [`Authenticated`].
///
/// The address is counted before the token is checked, so that requests with missing or
/// forged tokens count against the address limit too. The user is counted once the token
/// names one.
pub async fn authenticate_request(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let address = peer_address(request.extensions());
    state.auth.admit(address, None).await?;
    let caller = state
        .auth
        .authenticate(request.headers())?
        .ok_or(AuthError::MissingToken)?;
    state.auth.admit(None, Some(&caller)).await?;

    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Returns the IP address of the peer from the connect info in `extensions`, with an IPv4
/// address mapped into IPv6 turned back into IPv4, so that both services count one client
/// under one key. Requests not served with connect info, such as tower `oneshot` calls in
/// tests, have none and count against the user's limit only.
pub fn peer_address(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip().to_canonical())
}

/// The caller of a request that passed [`authenticate_request`].
#[derive(Debug, Clone)]
pub struct Authenticated(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Self)
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "route {} has no authentication middleware",
                    parts.uri.path()
                ))
            })
    }
}

/// Passes when `caller` may read the resources of `user_id`: that user, an admin, or an
/// analyst when `analysts_may` is true. A rejection names the path segment `id`.
pub fn require_access_to(
    caller: &Caller,
    user_id: Uuid,
    analysts_may: bool,
) -> Result<(), ApiError> {
    caller
        .require_access_to(&user_id.to_string(), analysts_may)
        .map_err(|error| match error {
            AuthError::Forbidden { message, .. } => AuthError::forbidden_field("id", message),
            other => other,
        })
        .map_err(ApiError::from)
}
