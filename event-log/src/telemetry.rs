//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber filtered by `RUST_LOG` (default `info`). Set
/// `MERIDIAN_LOG_FORMAT=json` for one JSON object per line.
pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = if std::env::var("MERIDIAN_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second call, as in tests that start several services in one process, is harmless.
    drop(result);
}
