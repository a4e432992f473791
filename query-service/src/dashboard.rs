//! The live map page at `GET /` and its static files under `/assets/`.
//!
//! Every file is compiled into the binary, so the page works without network access beyond
//! this service, its Socket.IO port and the command service it logs in at. The HTML carries
//! that port, which the page's script connects to on the host it was loaded from, and the
//! command service's URL.

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
/// Text in [`PAGE_TEMPLATE`] that is replaced by the command service's base URL.
const COMMAND_URL_PLACEHOLDER: &str = "{{command_url}}";

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
/// `socket_port`. The page logs in at the command service at `command_url`, a URL that
/// [`parse_public_url`] accepted.
pub fn router<S>(socket_port: u16, command_url: &str) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let page = Arc::new(render_page(socket_port, command_url));
    Router::new()
        .route("/", get(get_dashboard))
        .route("/assets/{name}", get(get_asset))
        .with_state(page)
}

/// Fills the Socket.IO port and the command service's URL into the page template.
fn render_page(socket_port: u16, command_url: &str) -> String {
    PAGE_TEMPLATE
        .replace(SOCKET_PORT_PLACEHOLDER, &socket_port.to_string())
        .replace(COMMAND_URL_PLACEHOLDER, command_url)
}

/// Checks the value of the environment variable `name`: an `http` or `https` URL of a host,
/// without a query, fragment or characters that HTML would need escaped. Returns it without
/// a trailing slash, ready to have a path such as `/v1/auth/login` appended.
pub fn parse_public_url(name: &str, raw: &str) -> anyhow::Result<String> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let Some(rest) = rest else {
        anyhow::bail!("{name} must start with http:// or https://, got {raw:?}");
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        anyhow::bail!("{name} must name a host, such as http://127.0.0.1:8080, got {raw:?}");
    }
    let allowed = |character: char| {
        character.is_ascii_alphanumeric() || "-._~:/[]%@!$()*+,;=".contains(character)
    };
    if let Some(character) = url.chars().find(|character| !allowed(*character)) {
        anyhow::bail!(
            "{name} must be a plain URL without query, fragment, quotes or spaces; \
             {character:?} in {raw:?} is not allowed"
        );
    }
    Ok(url.to_owned())
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
        let response = router::<()>(8091, COMMAND_URL)
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

    const COMMAND_URL: &str = "http://127.0.0.1:8080";

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

    #[tokio::test]
    async fn page_carries_command_url() {
        let (_, _, body) = get("/").await;
        assert!(
            body.contains(r#"<meta name="meridian-command-url" content="http://127.0.0.1:8080">"#),
            "page lacks the command service's URL: {body}"
        );
        assert!(!body.contains(COMMAND_URL_PLACEHOLDER), "placeholder left");
    }

    #[test]
    fn page_has_login_form() {
        let page = render_page(8091, COMMAND_URL);
        // Browser tests log in through these elements.
        for id in ["login-form", "login-email", "login-password", "login-error"] {
            assert!(page.contains(&format!(r#"id="{id}""#)), "no element {id}");
        }
        assert!(
            page.contains(r#"type="password""#),
            "password is not masked"
        );
    }

    #[test]
    fn page_loads_only_local_files() {
        let page = render_page(8091, COMMAND_URL);
        // The command service's URL is where the login form posts to, not a file to load.
        let references: Vec<&str> = page
            .split(['"', '\''])
            .filter(|part| part.contains("://") || part.starts_with("//"))
            .filter(|part| *part != COMMAND_URL)
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

    #[test]
    fn public_url_loses_trailing_slash() {
        let url = parse_public_url("URL", " https://meridian.example:8443/ ").unwrap();
        assert_eq!(url, "https://meridian.example:8443");
    }

    #[test]
    fn public_url_accepts_path_prefix() {
        let url = parse_public_url("URL", "http://127.0.0.1:8080/command").unwrap();
        assert_eq!(url, "http://127.0.0.1:8080/command");
    }

    #[test]
    fn public_url_rejects_bad_values() {
        for raw in [
            "",
            "127.0.0.1:8080",
            "ftp://host",
            "http://",
            "http:///path",
            "javascript:alert(1)",
            "http://host/\"><script>",
            "http://host/a b",
            "http://host/?q=1",
            "http://host/#top",
            "http://host/'",
        ] {
            let error = parse_public_url("MERIDIAN_COMMAND_PUBLIC_URL", raw).unwrap_err();
            assert!(
                error.to_string().contains("MERIDIAN_COMMAND_PUBLIC_URL"),
                "{raw:?}: {error}"
            );
        }
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
