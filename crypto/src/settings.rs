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
use crate::provider::{KeyProvider, KmsProvider, KmsSettings, LocalProvider};

/// Default master key file of the local provider, relative to the working directory.
pub const DEFAULT_MASTER_KEY_FILE: &str = ".stack/keys/master-keys.json";
/// Default region of the KMS provider.
pub const DEFAULT_KMS_REGION: &str = "us-east-1";

/// The provider that wraps data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderKind {
    /// Master keys in a file: [`LocalProvider`].
    Local { master_key_file: PathBuf },
    /// A KMS key: [`KmsProvider`].
    Kms(KmsSettings),
}

/// Key settings. Each field reads the environment variable named in its comment.
#[derive(Debug, Clone)]
pub struct KeySettings {
    /// `MERIDIAN_KEY_PROVIDER` (`local`, the default, or `kms`) with its own settings:
    /// `MERIDIAN_MASTER_KEY_FILE` for `local`; `MERIDIAN_KMS_ENDPOINT`, `MERIDIAN_KMS_REGION`
    /// and `MERIDIAN_KMS_KEY_ID` for `kms`.
    pub provider: ProviderKind,
    /// `MERIDIAN_KEY_CACHE_TTL_SECS` (300) and `MERIDIAN_KEY_CACHE_MAX_USES` (100000).
    pub cache: CachePolicy,
    /// `MERIDIAN_SEAL_EVENTS` (`true`); `false` stores personal data in plaintext and exists
    /// only to measure what sealing costs.
    pub seal_events: bool,
}

impl KeySettings {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_vars(|name| env::var(name).ok())
    }

    /// Reads the settings through `lookup`, which returns the value of a variable; an empty
    /// value counts as unset.
    fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let var = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let provider = match var("MERIDIAN_KEY_PROVIDER").as_deref() {
            None | Some("local") => ProviderKind::Local {
                master_key_file: var("MERIDIAN_MASTER_KEY_FILE")
                    .unwrap_or_else(|| DEFAULT_MASTER_KEY_FILE.to_owned())
                    .into(),
            },
            Some("kms") => ProviderKind::Kms(KmsSettings {
                endpoint: var("MERIDIAN_KMS_ENDPOINT"),
                region: var("MERIDIAN_KMS_REGION").unwrap_or_else(|| DEFAULT_KMS_REGION.to_owned()),
                key_id: var("MERIDIAN_KMS_KEY_ID").context(
                    "MERIDIAN_KMS_KEY_ID is missing; the kms key provider needs the id, ARN or \
                     alias (alias/…) of the KMS key that wraps data keys",
                )?,
            }),
            Some(other) => bail!("MERIDIAN_KEY_PROVIDER must be local or kms, got {other:?}"),
        };
        let defaults = CachePolicy::default();
        let cache = CachePolicy {
            time_to_live: Duration::from_secs(parse_or(
                "MERIDIAN_KEY_CACHE_TTL_SECS",
                var("MERIDIAN_KEY_CACHE_TTL_SECS"),
                defaults.time_to_live.as_secs(),
            )?),
            max_uses: parse_or(
                "MERIDIAN_KEY_CACHE_MAX_USES",
                var("MERIDIAN_KEY_CACHE_MAX_USES"),
                defaults.max_uses,
            )?,
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
            ProviderKind::Kms(settings) => Ok(Arc::new(KmsProvider::new(settings.clone())?)),
        }
    }

    /// Builds the key ring and event cipher every service uses.
    pub async fn event_cipher(&self, pool: PgPool) -> anyhow::Result<EventCipher> {
        let provider = self.provider().await?;
        let keyring = Arc::new(Keyring::new(pool, provider, self.cache));
        Ok(EventCipher::new(keyring, self.seal_events))
    }
}

fn parse_or<T: std::str::FromStr>(
    name: &str,
    value: Option<String>,
    default: T,
) -> anyhow::Result<T> {
    match value {
        Some(raw) => raw
            .parse()
            .ok()
            .with_context(|| format!("{name} must be a positive integer, got {raw:?}")),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<KeySettings> {
        let vars: HashMap<&str, &str> = vars.iter().copied().collect();
        KeySettings::from_vars(|name| vars.get(name).map(|value| value.to_string()))
    }

    #[test]
    fn local_provider_is_the_default() {
        let settings = read(&[]).unwrap();
        assert_eq!(
            settings.provider,
            ProviderKind::Local {
                master_key_file: DEFAULT_MASTER_KEY_FILE.into()
            }
        );
        assert_eq!(settings.cache, CachePolicy::default());
        assert!(settings.seal_events);
    }

    #[test]
    fn kms_settings_are_read() {
        let settings = read(&[
            ("MERIDIAN_KEY_PROVIDER", "kms"),
            ("MERIDIAN_KMS_ENDPOINT", "http://127.0.0.1:4566"),
            ("MERIDIAN_KMS_REGION", "eu-west-1"),
            ("MERIDIAN_KMS_KEY_ID", "alias/meridian"),
        ])
        .unwrap();
        assert_eq!(
            settings.provider,
            ProviderKind::Kms(KmsSettings {
                endpoint: Some("http://127.0.0.1:4566".to_owned()),
                region: "eu-west-1".to_owned(),
                key_id: "alias/meridian".to_owned(),
            })
        );
    }

    #[test]
    fn kms_region_defaults_and_endpoint_is_optional() {
        let settings = read(&[
            ("MERIDIAN_KEY_PROVIDER", "kms"),
            ("MERIDIAN_KMS_ENDPOINT", ""),
            (
                "MERIDIAN_KMS_KEY_ID",
                "1234abcd-12ab-34cd-56ef-1234567890ab",
            ),
        ])
        .unwrap();
        let ProviderKind::Kms(kms) = settings.provider else {
            panic!("expected the kms provider, got {:?}", settings.provider);
        };
        assert_eq!(kms.region, DEFAULT_KMS_REGION);
        assert_eq!(kms.endpoint, None);
    }

    #[test]
    fn kms_without_key_id_names_the_variable() {
        let error = read(&[("MERIDIAN_KEY_PROVIDER", "kms")]).unwrap_err();
        assert!(
            error.to_string().contains("MERIDIAN_KMS_KEY_ID is missing"),
            "{error}"
        );
    }

    #[test]
    fn unknown_provider_is_rejected() {
        let error = read(&[("MERIDIAN_KEY_PROVIDER", "vault")]).unwrap_err();
        assert!(error.to_string().contains("\"vault\""), "{error}");
    }

    #[test]
    fn cache_policy_is_read() {
        let settings = read(&[
            ("MERIDIAN_KEY_CACHE_TTL_SECS", "5"),
            ("MERIDIAN_KEY_CACHE_MAX_USES", "10"),
        ])
        .unwrap();
        assert_eq!(settings.cache.time_to_live, Duration::from_secs(5));
        assert_eq!(settings.cache.max_uses, 10);
    }

    #[test]
    fn malformed_cache_setting_names_the_variable() {
        let error = read(&[("MERIDIAN_KEY_CACHE_MAX_USES", "many")]).unwrap_err();
        assert!(
            error.to_string().contains("MERIDIAN_KEY_CACHE_MAX_USES"),
            "{error}"
        );
    }
}
