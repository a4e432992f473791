//! Helpers for integration tests: a database and a topic prefix of their own, so tests can
//! run in parallel against the shared local servers and leave nothing behind.

use sqlx::PgPool;
use uuid::Uuid;

use crate::settings::{var_or, Settings};

/// A freshly created and migrated database, dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates `meridian_test_<random>` on the server of `MERIDIAN_TEST_POSTGRES_URL`
    /// (default `postgres://postgres@127.0.0.1:5432`) and applies the migrations.
    pub async fn create() -> anyhow::Result<Self> {
        let server = var_or(
            "MERIDIAN_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432",
        );
        let url = format!("{server}/meridian_test_{}", Uuid::new_v4().simple());
        let pool = crate::database::connect(&url, 8).await?;
        Ok(Self { url, pool })
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.pool.close().await;
        crate::database::drop_database(&self.url).await
    }
}

/// Returns a topic prefix no other test uses, such as `test.3f2a….`.
pub fn unique_topic_prefix() -> String {
    format!("test.{}.", Uuid::new_v4().simple())
}

/// Settings for a test: its own database URL, topic prefix and MongoDB database, and the
/// local servers' addresses from the usual `MERIDIAN_*` variables.
pub fn settings_for(database: &TestDatabase) -> anyhow::Result<Settings> {
    let mut settings = Settings::from_env()?;
    let suffix = Uuid::new_v4().simple().to_string();
    settings.database_url = database.url.clone();
    settings.topic_prefix = format!("test.{suffix}.");
    settings.mongodb_database = format!("meridian_test_{suffix}");
    Ok(settings)
}
