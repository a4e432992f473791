//! Settings of the command service, read from `MERIDIAN_*` environment variables.

use std::net::SocketAddr;

use anyhow::Context;
use meridian_event_log::settings::var_or;

/// Default listen address of the command API.
pub const DEFAULT_COMMAND_ADDR: &str = "127.0.0.1:8080";
/// Default size of the PostgreSQL connection pool of the command service.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 32;

/// Settings of the `command-service` binary. Each field reads the variable named in its comment.
#[derive(Debug, Clone)]
pub struct CommandSettings {
    /// `MERIDIAN_COMMAND_ADDR`, the `host:port` the HTTP API listens on.
    pub addr: SocketAddr,
    /// `MERIDIAN_COMMAND_MAX_CONNECTIONS`, the maximum number of pooled PostgreSQL connections.
    /// A request with an `Idempotency-Key` uses one extra connection while it runs.
    pub max_connections: u32,
}

impl CommandSettings {
    /// Reads the settings from the environment, falling back to the documented defaults.
    pub fn from_env() -> anyhow::Result<Self> {
        let raw_addr = var_or("MERIDIAN_COMMAND_ADDR", DEFAULT_COMMAND_ADDR);
        let addr = raw_addr.parse().with_context(|| {
            format!("MERIDIAN_COMMAND_ADDR must be a host:port address such as {DEFAULT_COMMAND_ADDR}, got {raw_addr:?}")
        })?;
        let raw_connections = var_or(
            "MERIDIAN_COMMAND_MAX_CONNECTIONS",
            &DEFAULT_MAX_CONNECTIONS.to_string(),
        );
        let max_connections = raw_connections
            .parse()
            .ok()
            .filter(|connections| *connections > 0)
            .with_context(|| {
                format!("MERIDIAN_COMMAND_MAX_CONNECTIONS must be a positive integer, got {raw_connections:?}")
            })?;
        Ok(Self {
            addr,
            max_connections,
        })
    }
}
