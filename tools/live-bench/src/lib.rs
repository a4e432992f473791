//! Benchmarks of the live updates that the query service pushes over Socket.IO, run against
//! services that are already running (`make up`, or `infra/services.sh start`; `fanout`
//! needs only the query services, and the command service for its login). Each benchmark
//! logs in first and connects its Socket.IO clients with the access token.
//!
//! - [`latency`]: sends location commands at a paced rate and measures the time from each
//!   accepted command to the matching update on a Socket.IO subscriber.
//! - [`fanout`]: appends updates to `rm_updates` and publishes them on Redis as the
//!   projection does, and measures the time from each commit to its Socket.IO subscribers,
//!   without Kafka.
//! - [`sockets`]: opens idle Socket.IO connections in steps and reads the query service's
//!   resident memory after each step.
//! - [`login`]: logs in at the command service and passes the access token to the Node.js
//!   scripts.
//! - [`node`]: runs the Node.js scripts in `e2e/js` (the npm socket.io-client) that hold the
//!   sockets.
//! - [`summary`]: percentiles and the printed tables.
//! - [`cli`]: the command line.

pub mod cli;
pub mod fanout;
pub mod latency;
pub mod login;
pub mod node;
pub mod sockets;
pub mod summary;

use cli::{Cli, Command};

/// Runs the benchmark that `cli` selects and prints its results on standard output.
///
/// Fails when the benchmark could not run, and also when it ran but lost data: a failed
/// command, an update that never arrived, or a socket that did not open.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Latency(options) => latency::run(options).await,
        Command::Sockets(options) => sockets::run(options).await,
        Command::Fanout(options) => fanout::run(options).await,
    }
}
