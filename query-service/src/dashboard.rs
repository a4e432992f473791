//! The live map page at `GET /` and its static files under `/assets/`.
//!
//! Every file is compiled into the binary, so the page works without network access beyond
//! this service and its Socket.IO port. The HTML carries that port, which the page's script
//! connects to on the host it was loaded from.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;

const PAGE_TEMPLATE: &str = include_str!("../assets/dashboard.html");
/// Text in [`PAGE_TEMPLATE`] that is replaced by the Socket.IO port.
const SOCKET_PORT_PLACEHOLDER: &str = "{{socket_port}}";

/// A file served under `/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/dashboard.js"),
    },
    Asset {
        name: "dashboard.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/dashboard.css"),
    },
    // The browser bundle of socket.io-client; assets/README.md names its version.
    Asset {
        name: "socket.io.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/socket.io.min.js"),
    },
];

/// Routes of the page and its assets, for a service whose Socket.IO server listens on
/// `socket_port`.
pub fn router<S>(socket_port: u16) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let page = Arc::new(render_page(socket_port));
    Router::new()
        .route("/", get(get_dashboard))
        .route("/assets/{name}", get(get_asset))
        .with_state(page)
}

/// Fills the Socket.IO port into the page template.
fn render_page(socket_port: u16) -> String {
    PAGE_TEMPLATE.replace(SOCKET_PORT_PLACEHOLDER, &socket_port.to_string())
}

async fn get_dashboard(State(page): State<Arc<String>>) -> Response {
    let mut response = Html(page.as_str().to_owned()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn get_asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|asset| asset.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no asset named {name:?}")))?;
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    Ok((headers, asset.body).into_response())
}

#[cfg(test)]
mod tests {
    use axum::body::{to_bytes, Body};
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(path: &str) -> (StatusCode, Option<String>, String) {
        let response = router::<()>(8091)
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        )
    }

    #[tokio::test]
    async fn page_carries_socket_port() {
        let (status, content_type, body) = get("/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
        assert!(
            body.contains(r#"<meta name="meridian-socket-port" content="8091">"#),
            "page lacks the port: {body}"
        );
        assert!(!body.contains(SOCKET_PORT_PLACEHOLDER), "placeholder left");
    }

    #[test]
    fn page_loads_only_local_files() {
        let page = render_page(8091);
        let references: Vec<&str> = page
            .split(['"', '\''])
            .filter(|part| part.contains("://") || part.starts_with("//"))
            .collect();
        assert!(
            references.is_empty(),
            "page refers to other hosts: {references:?}"
        );
        for asset in ["/assets/dashboard.css", "/assets/dashboard.js"] {
            assert!(page.contains(asset), "page does not load {asset}");
        }
        assert!(page.contains("/assets/socket.io.min.js"), "no socket.io");
    }

    #[tokio::test]
    async fn assets_have_their_content_type() {
        for (path, expected) in [
            ("/assets/dashboard.js", "text/javascript; charset=utf-8"),
            ("/assets/dashboard.css", "text/css; charset=utf-8"),
            ("/assets/socket.io.min.js", "text/javascript; charset=utf-8"),
        ] {
            let (status, content_type, body) = get(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(content_type.as_deref(), Some(expected), "{path}");
            assert!(!body.is_empty(), "{path} is empty");
        }
    }

    #[tokio::test]
    async fn vendored_client_keeps_licence_header() {
        let (_, _, body) = get("/assets/socket.io.min.js").await;
        assert!(body.starts_with("/*!\n * Socket.IO v4."), "header missing");
        assert!(
            body.contains("Released under the MIT License."),
            "no licence"
        );
    }

    #[tokio::test]
    async fn unknown_asset_is_not_found() {
        let (status, _, body) = get("/assets/missing.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["error"], "not_found");
        assert_eq!(body["message"], r#"no asset named "missing.js""#);
    }
}
