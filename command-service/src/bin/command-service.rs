//! The HTTP command API of Meridian.

use meridian_auth::AuthSettings;
use meridian_command_service::CommandSettings;
use meridian_crypto::KeySettings;
use meridian_event_log::{telemetry, Settings};

/// Allocations of at least this many bytes get a memory mapping of their own, which is
/// returned to the system when freed.
///
/// Each password hash allocates 19 MiB. glibc raises its default threshold after the first
/// such block is freed, so later blocks came from the arenas of the blocking threads, and
/// glibc kept them there: 980 registrations left the service at 735 MB resident. A fixed
/// threshold also keeps glibc from raising it.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD_BYTES: libc::c_int = 1 << 20;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of glibc's allocator, which takes its own locks.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
    telemetry::init();
    let settings = Settings::from_env()?;
    let keys = KeySettings::from_env()?;
    let auth = AuthSettings::from_env()?;
    let command = CommandSettings::from_env()?;
    meridian_command_service::run(settings, keys, auth, command).await
}
