//! Handlers, one module per resource.

pub mod events;
pub mod health;
pub mod location_snapshot;
pub mod locations;
pub mod stats;
pub mod users;
