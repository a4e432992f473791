//! Command API tests against the real PostgreSQL, each test in a database of its own.

mod audit;
mod auth;
mod common;
mod erase;
mod idempotency;
mod locations;
mod origin_metadata;
mod profile;
mod profile_image;
mod service;
mod users;
