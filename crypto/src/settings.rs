//! Key settings shared by every process that seals or opens personal data.

use std::env;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::PgPool;

use crate::cache::CachePolicy;
use crate::keyring::Keyring;
use crate::personal::EventCipher;
use crate::provider::{KeyProvider, LocalProvider};

/// Default master key file of the local provider, relative to the working directory.
pub const DEFAULT_MASTER_KEY_FILE: &str = ".stack/keys/master-keys.json";

/// Which provider wraps data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// Master keys in a file: [`LocalProvider`].
    Local { master_key_file: PathBuf },
}

/// Key settings. Each field reads the environment variable named in its comment.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// `MERIDIAN_KEY_PROVIDER` (`local`, the default) with its own settings.
    pub provider: ProviderKind,
    /// `MERIDIAN_KEY_CACHE_TTL_SECS` (300) and `MERIDIAN_KEY_CACHE_MAX_USES` (100000).
    pub cache: CachePolicy,
    /// `MERIDIAN_SEAL_EVENTS` (`true`); `false` stores personal data in plaintext and exists
    /// only to measure what sealing costs.
    pub seal_events: bool,
}

impl KeySettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let provider = match var("MERIDIAN_KEY_PROVIDER").as_deref() {
            None | Some("local") => ProviderKind::Local {
                master_key_file: var("MERIDIAN_MASTER_KEY_FILE")
                    .unwrap_or_else(|| DEFAULT_MASTER_KEY_FILE.to_owned())
                    .into(),
            },
            Some(other) => bail!("MERIDIAN_KEY_PROVIDER must be local or kms, got {other:?}"),
        };
        let defaults = CachePolicy::default();
        let cache = CachePolicy {
            time_to_live: Duration::from_secs(parse_or(
                "MERIDIAN_KEY_CACHE_TTL_SECS",
                defaults.time_to_live.as_secs(),
            )?),
            max_uses: parse_or("MERIDIAN_KEY_CACHE_MAX_USES", defaults.max_uses)?,
        };
        let seal_events = match var("MERIDIAN_SEAL_EVENTS").as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => bail!("MERIDIAN_SEAL_EVENTS must be true or false, got {other:?}"),
        };
        Ok(Self {
            provider,
            cache,
            seal_events,
        })
    }

    /// Settings for the local provider with the master key file at `path`.
    pub fn local(path: impl Into<PathBuf>) -> Self {
        Self {
            provider: ProviderKind::Local {
                master_key_file: path.into(),
            },
            cache: CachePolicy::default(),
            seal_events: true,
        }
    }

    /// Connects to the configured provider.
    pub async fn provider(&self) -> anyhow::Result<Arc<dyn KeyProvider>> {
        match &self.provider {
            ProviderKind::Local { master_key_file } => {
                Ok(Arc::new(LocalProvider::open(master_key_file)?))
            }
        }
    }

    /// The key ring and event cipher every service uses.
    pub async fn event_cipher(&self, pool: PgPool) -> anyhow::Result<EventCipher> {
        let provider = self.provider().await?;
        let keyring = Arc::new(Keyring::new(pool, provider, self.cache));
        Ok(EventCipher::new(keyring, self.seal_events))
    }
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|value| !value.is_empty())
}

fn parse_or<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T> {
    match var(name) {
        Some(raw) => raw
            .parse()
            .ok()
            .with_context(|| format!("{name} must be a positive integer, got {raw:?}")),
        None => Ok(default),
    }
}
