//! Keys for tests: a master key file of their own in a temporary directory.

use std::path::{Path, PathBuf};

use sqlx::PgPool;

use crate::personal::EventCipher;
use crate::settings::KeySettings;

/// A local master key file that is deleted with this value.
pub struct TestKeys {
    dir: PathBuf,
    path: PathBuf,
    pub settings: KeySettings,
}

impl TestKeys {
    /// Creates a new master key file under the system's temporary directory.
    pub fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("meridian-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("master-keys.json");
        crate::provider::LocalProvider::create(&path)?;
        Ok(Self {
            dir,
            settings: KeySettings::local(&path),
            path,
        })
    }

    /// Path of the master key file, for `MERIDIAN_MASTER_KEY_FILE` of child processes.
    pub fn master_key_file(&self) -> &Path {
        &self.path
    }

    /// Environment variables that point a child process at these keys.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MERIDIAN_KEY_PROVIDER", "local".to_owned()),
            (
                "MERIDIAN_MASTER_KEY_FILE",
                self.master_key_file().display().to_string(),
            ),
        ]
    }

    /// Builds the event cipher over `pool` with these keys.
    pub async fn event_cipher(&self, pool: PgPool) -> anyhow::Result<EventCipher> {
        self.settings.event_cipher(pool).await
    }
}

impl Drop for TestKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
