//! HTTP read API of Meridian.
