//! Command API tests against the real PostgreSQL, each test in a database of its own.

mod common;
mod idempotency;
mod locations;
mod profile;
mod service;
mod users;
