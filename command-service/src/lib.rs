//! HTTP command API of Meridian and the outbox relay to Kafka.
//!
//! - [`api`]: the axum router of the command API: request parsing, idempotency keys, errors,
//!   the OpenAPI document, and [`serve`] for the `command-service` binary.
//! - [`commands`]: runs domain commands against the PostgreSQL event store (load, decide on a
//!   copy, commit, retry on conflict) and reports the stored sequences and positions.
//! - [`relay`]: [`run_relay`] publishes the transactional outbox to Kafka exactly once, for the
//!   `outbox-relay` binary.
//! - [`settings`]: settings of the command service beyond the shared `MERIDIAN_*` ones.
//! - [`shutdown`]: the SIGTERM and Ctrl-C signal both binaries stop on.

pub mod api;
pub mod commands;
pub mod relay;
pub mod settings;
pub mod shutdown;

pub use api::{router, run, serve, AppState};
pub use relay::run_relay;
pub use settings::CommandSettings;
