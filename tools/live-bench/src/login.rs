//! Logging in at the command service, with the importer's session, and handing the access
//! token to the Node.js Socket.IO clients.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_importer::session::{Credentials, RateLimitPolicy, Session};

use crate::cli::LoginOptions;

/// Environment variable through which the Node.js scripts in `e2e/js` receive the access
/// token for the Socket.IO handshake. The environment, unlike the command line, is readable
/// only by the same user.
pub const TOKEN_VARIABLE: &str = "MERIDIAN_ACCESS_TOKEN";
/// Time limit of the login request of the benchmarks that send no other request.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs in at `command_url` as the account of `options`. Waits after 429 responses are
/// reported on stderr.
pub async fn login(
    command_url: &str,
    options: &LoginOptions,
    request_timeout: Duration,
) -> anyhow::Result<Arc<Session>> {
    let credentials = Credentials::from_password_file(&options.email, &options.password_file)?;
    let http = reqwest::Client::builder()
        .timeout(request_timeout)
        .build()
        .context("failed to build the HTTP client")?;
    let notify = Arc::new(|line: &str| eprintln!("{line}"));
    let session = Session::login(
        http,
        command_url,
        credentials,
        RateLimitPolicy::default(),
        Some(notify),
    )
    .await
    .with_context(|| format!("logging in at {command_url} failed"))?;
    eprintln!("logged in as {} (role {})", session.email(), session.role());
    Ok(Arc::new(session))
}
