//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber that writes to standard output, filtered by `RUST_LOG`
/// (default `info`). Set `MERIDIAN_LOG_FORMAT=json` for one JSON object per line.
pub fn init() {
    init_with_writer(std::io::stdout);
}

/// Installs the subscriber of [`init`] writing to standard error, for commands whose standard
/// output carries their result.
pub fn init_to_stderr() {
    init_with_writer(std::io::stderr);
}

fn init_with_writer<W>(writer: W)
where
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,rdkafka=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = if std::env::var("MERIDIAN_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second call, as in tests that start several services in one process, is harmless.
    drop(result);
}
