//! The signal both binaries stop on.

pub use meridian_event_log::shutdown::shutdown_signal;
