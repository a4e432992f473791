//! Event-log parts shared by every Meridian process.
//!
//! - [`settings`]: connection settings read from `MERIDIAN_*` environment variables.
//! - [`database`]: connects to PostgreSQL, creating the database and applying migrations.
//! - [`live`]: the live updates that query services push to Socket.IO subscribers.
//! - [`message`]: how a stored event travels on Kafka (key, headers, value).
//! - [`topic`]: topic names and creation.
//! - [`shutdown`]: the SIGTERM and Ctrl-C handling every process shares.
//! - [`telemetry`]: the tracing subscriber every binary installs.
//! - [`testing`]: a database and topic prefix per integration test.

pub mod database;
pub mod live;
pub mod message;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod testing;
pub mod topic;

pub use message::{EventMessage, StoredEvent};
pub use settings::Settings;
