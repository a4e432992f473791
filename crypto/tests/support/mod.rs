//! Fixtures shared by the integration tests: a test database, and a key provider of either
//! kind with its own master key (a temporary key file, or a KMS key created on moto).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::types::KeyState;
use meridian_crypto::cache::CachePolicy;
use meridian_crypto::provider::{KeyProvider, KmsProvider, KmsSettings, LocalProvider};
use meridian_crypto::{EventCipher, Keyring};
use meridian_event_log::testing::TestDatabase;
use tempfile::TempDir;
use uuid::Uuid;

/// moto's address when `MERIDIAN_KMS_ENDPOINT` is unset, as `make up` starts it.
pub const DEFAULT_KMS_ENDPOINT: &str = "http://127.0.0.1:4566";
pub const KMS_REGION: &str = "us-east-1";

/// The provider a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Local,
    Kms,
}

/// Returns the test KMS server: `MERIDIAN_KMS_ENDPOINT`, or moto on 127.0.0.1:4566.
pub fn kms_endpoint() -> String {
    std::env::var("MERIDIAN_KMS_ENDPOINT")
        .ok()
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| DEFAULT_KMS_ENDPOINT.to_owned())
}

pub fn kms_settings(key_id: &str) -> KmsSettings {
    KmsSettings {
        endpoint: Some(kms_endpoint()),
        region: KMS_REGION.to_owned(),
        key_id: key_id.to_owned(),
    }
}

/// A client of the test KMS server that schedules the deletion of every key it created.
pub struct TestKms {
    pub client: aws_sdk_kms::Client,
    created: std::sync::Mutex<Vec<String>>,
}

impl TestKms {
    /// Connects to the test KMS server, and panics with instructions when it is not running:
    /// a KMS test must fail, not pass or skip, without its server.
    pub async fn connect() -> Self {
        let endpoint = kms_endpoint();
        let client = kms_settings("unused")
            .client()
            .expect("KMS client for the test server");
        if let Err(error) = client.list_keys().limit(1).send().await {
            panic!(
                "the KMS server at {endpoint} is not reachable ({}); start moto with `make up` \
                 or `infra/stack.sh start`, or set MERIDIAN_KMS_ENDPOINT",
                aws_sdk_kms::error::DisplayErrorContext(&error)
            );
        }
        Self {
            client,
            created: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Creates a symmetric encryption key and returns its ARN.
    pub async fn create_key(&self) -> String {
        let output = self
            .client
            .create_key()
            .description("meridian-crypto test key")
            .send()
            .await
            .expect("CreateKey on the test KMS server");
        let metadata = output.key_metadata.expect("CreateKey returns key metadata");
        self.created.lock().unwrap().push(metadata.key_id);
        metadata.arn.expect("CreateKey returns the key ARN")
    }

    pub fn provider(&self, key_id: &str) -> KmsProvider {
        KmsProvider::with_client(self.client.clone(), kms_settings(key_id))
    }

    /// Schedules the deletion of every key this client created, after the shortest waiting
    /// period KMS allows (7 days; moto keeps keys in memory only). It names keys by key id,
    /// because moto 5.2 fails ScheduleKeyDeletion for a key ARN with HTTP 500.
    pub async fn delete_keys(&self) {
        let keys = std::mem::take(&mut *self.created.lock().unwrap());
        for key in keys {
            let described = self.client.describe_key().key_id(&key).send().await;
            let pending = described
                .ok()
                .and_then(|output| output.key_metadata)
                .and_then(|metadata| metadata.key_state)
                == Some(KeyState::PendingDeletion);
            if !pending {
                self.client
                    .schedule_key_deletion()
                    .key_id(&key)
                    .pending_window_in_days(7)
                    .send()
                    .await
                    .expect("ScheduleKeyDeletion on the test KMS server");
            }
        }
    }
}

enum Master {
    Local {
        _dir: TempDir,
        path: std::path::PathBuf,
    },
    Kms {
        kms: TestKms,
        key_arn: String,
    },
}

/// A test database and a master key of one provider kind.
pub struct Fixture {
    pub kind: Kind,
    pub database: TestDatabase,
    master: Master,
}

impl Fixture {
    pub async fn new(kind: Kind) -> Self {
        let master = match kind {
            Kind::Local => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let path = dir.path().join("master-keys.json");
                LocalProvider::create(&path).expect("master key file");
                Master::Local { _dir: dir, path }
            }
            Kind::Kms => {
                let kms = TestKms::connect().await;
                let key_arn = kms.create_key().await;
                Master::Kms { kms, key_arn }
            }
        };
        let database = TestDatabase::create().await.expect("test database");
        Self {
            kind,
            database,
            master,
        }
    }

    /// Builds a new provider instance, as another process would, that wraps new keys under
    /// the current master key.
    pub fn provider(&self) -> Arc<dyn KeyProvider> {
        match &self.master {
            Master::Local { path, .. } => {
                Arc::new(LocalProvider::open(path).expect("master key file"))
            }
            Master::Kms { kms, key_arn } => Arc::new(kms.provider(key_arn)),
        }
    }

    pub fn keyring(&self) -> Keyring {
        self.keyring_with(self.provider(), CachePolicy::default())
    }

    pub fn keyring_with(&self, provider: Arc<dyn KeyProvider>, policy: CachePolicy) -> Keyring {
        Keyring::new(self.database.pool.clone(), provider, policy)
    }

    /// Builds an event cipher over a fresh keyring, as a service starting now would.
    pub fn cipher(&self) -> EventCipher {
        EventCipher::new(Arc::new(self.keyring()), true)
    }

    /// Makes a new master key current, as an operator does before `meridian-keys rotate`,
    /// and returns its id. Providers built before keep their configuration.
    pub async fn new_master_key(&mut self) -> String {
        match &mut self.master {
            Master::Local { path, .. } => LocalProvider::open(&*path)
                .expect("master key file")
                .add_master_key()
                .expect("new master key"),
            Master::Kms { kms, key_arn } => {
                *key_arn = kms.create_key().await;
                key_arn.clone()
            }
        }
    }

    /// The master key file of a local fixture.
    pub fn key_file(&self) -> Option<&std::path::Path> {
        match &self.master {
            Master::Local { path, .. } => Some(path),
            Master::Kms { .. } => None,
        }
    }

    pub fn kms(&self) -> Option<&TestKms> {
        match &self.master {
            Master::Local { .. } => None,
            Master::Kms { kms, .. } => Some(kms),
        }
    }

    /// `master_key_id` of every stored user key.
    pub async fn user_key_masters(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT master_key_id FROM user_keys ORDER BY user_id")
            .fetch_all(&self.database.pool)
            .await
            .expect("user_keys query")
    }

    /// `master_key_id` of every stored system key.
    pub async fn system_key_masters(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT master_key_id FROM system_keys ORDER BY name")
            .fetch_all(&self.database.pool)
            .await
            .expect("system_keys query")
    }

    /// Returns the stored `(master_key_id, wrapped_key)` of `user_id`.
    pub async fn wrapped_key(&self, user_id: &str) -> Option<(String, Vec<u8>)> {
        sqlx::query_as("SELECT master_key_id, wrapped_key FROM user_keys WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.database.pool)
            .await
            .expect("user_keys query")
    }

    /// Drops the database and schedules the deletion of the fixture's KMS keys.
    pub async fn finish(self) {
        self.database
            .drop_database()
            .await
            .expect("drop the test database");
        if let Master::Kms { kms, .. } = &self.master {
            kms.delete_keys().await;
        }
    }
}

/// Returns a user id no other test uses.
pub fn new_user_id() -> String {
    Uuid::new_v4().to_string()
}

/// Sleeps long enough for a cache entry with `ttl` to expire.
pub async fn outlive(ttl: Duration) {
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
}
