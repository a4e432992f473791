//! End-to-end tests that run the Meridian processes against the local stack.
