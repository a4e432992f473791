//! The stored data keys: one per user in `user_keys`, plus system keys in `system_keys`,
//! each wrapped by the [`KeyProvider`] and cached unwrapped by [`KeyCache`].

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::OnceCell;
use tracing::{debug, info};

use crate::blind_index::BlindIndex;
use crate::cache::{CachePolicy, KeyCache};
use crate::envelope::{DataKey, FieldCipher, Purpose};
use crate::provider::{KeyProvider, ProviderError, WrappedKey};

/// Name of the blind-index key in `system_keys`.
const BLIND_INDEX_KEY: &str = "blind-index";
/// Version of every user key this release creates.
const KEY_VERSION: u32 = 1;
/// Rows rewrapped per round trip during a rotation.
const ROTATION_BATCH: i64 = 200;

/// The subkeys of one user, ready to seal and open.
pub struct UserKeys {
    pub user_id: String,
    pub version: u32,
    /// Seals personal fields of events.
    pub fields: FieldCipher,
    /// Seals snapshots of the user's aggregates.
    pub snapshots: FieldCipher,
}

impl UserKeys {
    /// Derives the subkeys of `user_id` from their data key.
    pub fn new(user_id: &str, version: u32, key: &DataKey) -> Self {
        Self {
            user_id: user_id.to_owned(),
            version,
            fields: FieldCipher::new(key, Purpose::EventField, user_id, version),
            snapshots: FieldCipher::new(key, Purpose::Snapshot, user_id, version),
        }
    }
}

/// Reason a user's keys are not available.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The user was erased: their key is destroyed and will never come back.
    #[error("user {0} was erased; their data key is destroyed")]
    Erased(String),
    /// The user has no key and was not erased: nothing was ever written for them.
    #[error("user {0} has no data key")]
    Missing(String),
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("key store query failed: {0}")]
    Database(#[from] sqlx::Error),
}

impl KeyError {
    /// Tells whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Provider(ProviderError::Unavailable(_)) | Self::Database(_)
        )
    }
}

/// Outcome of [`Keyring::rotate`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// User keys wrapped again under the current master key.
    pub user_keys: u64,
    /// System keys wrapped again under the current master key.
    pub system_keys: u64,
}

/// Creates, loads, caches and destroys data keys.
pub struct Keyring {
    pool: PgPool,
    provider: Arc<dyn KeyProvider>,
    cache: KeyCache<UserKeys>,
    blind_index: OnceCell<BlindIndex>,
}

impl Keyring {
    pub fn new(pool: PgPool, provider: Arc<dyn KeyProvider>, policy: CachePolicy) -> Self {
        Self {
            pool,
            provider,
            cache: KeyCache::new(policy),
            blind_index: OnceCell::new(),
        }
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    /// Keys to seal new data of `user_id`, created on the user's first write.
    pub async fn for_writing(&self, user_id: &str) -> Result<Arc<UserKeys>, KeyError> {
        if let Some(keys) = self.cache.get(user_id) {
            return Ok(keys);
        }
        match self.load(user_id).await {
            Err(KeyError::Missing(_)) => self.create(user_id).await,
            loaded => loaded,
        }
    }

    /// Keys to open stored data of `user_id`.
    pub async fn for_reading(&self, user_id: &str) -> Result<Arc<UserKeys>, KeyError> {
        if let Some(keys) = self.cache.get(user_id) {
            return Ok(keys);
        }
        self.load(user_id).await
    }

    /// Drops the cached keys of `user_id` in this process, as after an erase.
    pub fn forget(&self, user_id: &str) {
        self.cache.remove(user_id);
    }

    /// Tells whether `user_id` was erased.
    pub async fn is_erased(&self, user_id: &str) -> Result<bool, KeyError> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erased_users WHERE user_id = $1)")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn load(&self, user_id: &str) -> Result<Arc<UserKeys>, KeyError> {
        let row: Option<(i32, String, Vec<u8>)> = sqlx::query_as(
            "SELECT key_version, master_key_id, wrapped_key FROM user_keys WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let Some((version, master_key_id, ciphertext)) = row else {
            return Err(if self.is_erased(user_id).await? {
                KeyError::Erased(user_id.to_owned())
            } else {
                KeyError::Missing(user_id.to_owned())
            });
        };
        let wrapped = WrappedKey {
            master_key_id,
            ciphertext,
        };
        let key = self
            .provider
            .unwrap(&wrapped, &user_subject(user_id))
            .await?;
        let version = u32::try_from(version).unwrap_or(KEY_VERSION);
        let keys = Arc::new(UserKeys::new(user_id, version, &key));
        self.cache.insert(user_id, Arc::clone(&keys));
        Ok(keys)
    }

    /// Generates and stores a key for `user_id`. When two processes race, the first insert
    /// wins and both use its key; an erased user never gets a new key.
    async fn create(&self, user_id: &str) -> Result<Arc<UserKeys>, KeyError> {
        let (key, wrapped) = self.provider.generate(&user_subject(user_id)).await?;
        let inserted = sqlx::query(
            "INSERT INTO user_keys (user_id, key_version, master_key_id, wrapped_key) \
             SELECT $1, $2, $3, $4 \
             WHERE NOT EXISTS (SELECT 1 FROM erased_users WHERE user_id = $1) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(KEY_VERSION as i32)
        .bind(&wrapped.master_key_id)
        .bind(&wrapped.ciphertext)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 0 {
            return self.load(user_id).await;
        }
        debug!(user_id, "created a data key");
        let keys = Arc::new(UserKeys::new(user_id, KEY_VERSION, &key));
        self.cache.insert(user_id, Arc::clone(&keys));
        Ok(keys)
    }

    /// Returns the blind index of email addresses, creating its key on first use.
    pub async fn blind_index(&self) -> Result<&BlindIndex, KeyError> {
        self.blind_index
            .get_or_try_init(|| async {
                let key = self.system_key(BLIND_INDEX_KEY).await?;
                Ok(BlindIndex::new(key))
            })
            .await
    }

    async fn system_key(&self, name: &str) -> Result<DataKey, KeyError> {
        let subject = system_subject(name);
        let (key, wrapped) = self.provider.generate(&subject).await?;
        sqlx::query(
            "INSERT INTO system_keys (name, master_key_id, wrapped_key) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&wrapped.master_key_id)
        .bind(&wrapped.ciphertext)
        .execute(&self.pool)
        .await?;
        drop(key);
        // Read back whichever key won, so every process indexes with the same one.
        let (master_key_id, ciphertext): (String, Vec<u8>) =
            sqlx::query_as("SELECT master_key_id, wrapped_key FROM system_keys WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        let stored = WrappedKey {
            master_key_id,
            ciphertext,
        };
        Ok(self.provider.unwrap(&stored, &subject).await?)
    }

    /// Wraps every user and system key that is not under the provider's current master key
    /// again under it. Data keys do not change, so nothing sealed needs re-encrypting, and
    /// running services keep working throughout. Safe to run again after an interruption.
    pub async fn rotate(&self) -> Result<Rotation, KeyError> {
        let current = self.provider.current_master_key_id().await?;
        let mut rotation = Rotation::default();
        loop {
            let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
                "SELECT user_id, master_key_id, wrapped_key FROM user_keys \
                 WHERE master_key_id <> $1 ORDER BY user_id LIMIT $2",
            )
            .bind(&current)
            .bind(ROTATION_BATCH)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            for (user_id, master_key_id, ciphertext) in rows {
                let old = WrappedKey {
                    master_key_id,
                    ciphertext,
                };
                let new = self.provider.rewrap(&old, &user_subject(&user_id)).await?;
                // The old master key id in the condition keeps a concurrent rotation or
                // erase from being overwritten.
                sqlx::query(
                    "UPDATE user_keys SET master_key_id = $1, wrapped_key = $2, rewrapped_at = now() \
                     WHERE user_id = $3 AND master_key_id = $4",
                )
                .bind(&new.master_key_id)
                .bind(&new.ciphertext)
                .bind(&user_id)
                .bind(&old.master_key_id)
                .execute(&self.pool)
                .await?;
                rotation.user_keys += 1;
            }
        }

        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT name, master_key_id, wrapped_key FROM system_keys WHERE master_key_id <> $1",
        )
        .bind(&current)
        .fetch_all(&self.pool)
        .await?;
        for (name, master_key_id, ciphertext) in rows {
            let old = WrappedKey {
                master_key_id,
                ciphertext,
            };
            let new = self.provider.rewrap(&old, &system_subject(&name)).await?;
            sqlx::query(
                "UPDATE system_keys SET master_key_id = $1, wrapped_key = $2, rewrapped_at = now() \
                 WHERE name = $3 AND master_key_id = $4",
            )
            .bind(&new.master_key_id)
            .bind(&new.ciphertext)
            .bind(&name)
            .bind(&old.master_key_id)
            .execute(&self.pool)
            .await?;
            rotation.system_keys += 1;
        }
        info!(
            master_key_id = %current,
            user_keys = rotation.user_keys,
            system_keys = rotation.system_keys,
            "rewrapped data keys"
        );
        Ok(rotation)
    }

    /// Number of stored user keys per master key id, for `meridian-keys status`.
    pub async fn keys_per_master_key(&self) -> Result<Vec<(String, i64)>, KeyError> {
        Ok(sqlx::query_as(
            "SELECT master_key_id, count(*) FROM user_keys GROUP BY master_key_id ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Returns the subject a user's key is bound to when wrapped.
pub fn user_subject(user_id: &str) -> String {
    format!("user:{user_id}")
}

fn system_subject(name: &str) -> String {
    format!("system:{name}")
}
