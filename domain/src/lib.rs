//! The decisions of Meridian, free of I/O.
//!
//! - [`user`]: the `User` aggregate (register, rename, change email or password, deactivate).
//! - [`profile`]: the `Profile` aggregate (settings object and image reference).
//! - [`location`]: the `LocationTrack` aggregate (one report or a batch of reports).
//! - [`field`]: validated values and the [`FieldError`] that names a rejected field.
//!
//! Every aggregate of one user shares that user's id, so Kafka keys all of a user's events alike.

pub mod field;
pub mod location;
pub mod profile;
pub mod user;

pub use field::FieldError;

/// Version written with every event of this release; it selects the JSON Schema that
/// describes the event's payload.
pub const EVENT_VERSION: &str = "1";
