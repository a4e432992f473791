//! A benchmark harness that starts Meridian from empty and measures, in one run, durable
//! ingest through the command API, the same PostgreSQL's raw write rate, a naive cqrs-es
//! baseline, end-to-end lag, projection rebuild and the memory of each service.
//!
//! - [`cli`]: phases, bounds and `--quick`.
//! - [`stack`]: the services as child processes with a database, topic prefix and MongoDB
//!   database of their own.
//! - [`workload`]: the AIS week in time order, split into each client's commands.
//! - [`client`]: login, registration and location commands.
//! - [`ingest`], [`physical`], [`naive`], [`lag`] and [`rebuild`]: the phases.
//! - [`pacing`], [`stats`], [`memory`] and [`machine`]: schedules, percentiles, `/proc`
//!   readings and the machine description.
//! - [`report`]: the goals and the printed report.

pub mod cli;
pub mod client;
pub mod ingest;
pub mod lag;
pub mod machine;
pub mod memory;
pub mod naive;
pub mod pacing;
pub mod physical;
pub mod rebuild;
pub mod report;
pub mod stack;
pub mod stats;
pub mod workload;

mod run;

pub use run::run;
