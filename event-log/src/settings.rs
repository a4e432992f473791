//! Settings shared by every process, with defaults that match the local stack in `infra/`.

use std::env;

/// Default PostgreSQL URL; the database is created on first connect.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/meridian";
/// Default Kafka bootstrap servers.
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
/// Default prefix of every topic name.
pub const DEFAULT_TOPIC_PREFIX: &str = "meridian.";
/// Default number of partitions of the events topic. tansu 0.6.0 (SQLite storage) reads
/// the whole unconsumed part of a partition to serve each fetch, so catching up costs the
/// square of a partition's backlog. More partitions keep each backlog shorter.
pub const DEFAULT_TOPIC_PARTITIONS: i32 = 8;
/// Default MongoDB URL; `directConnection` because the local server is not a replica set.
pub const DEFAULT_MONGODB_URL: &str = "mongodb://127.0.0.1:27017/?directConnection=true";
/// Default MongoDB database for analytics.
pub const DEFAULT_MONGODB_DATABASE: &str = "meridian";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Connection settings. Each field reads the environment variable named in its comment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `MERIDIAN_DATABASE_URL`
    pub database_url: String,
    /// `MERIDIAN_KAFKA_BROKERS`, comma-separated `host:port` list.
    pub kafka_brokers: String,
    /// `MERIDIAN_TOPIC_PREFIX`, prepended to every topic name so tests can share a broker.
    pub topic_prefix: String,
    /// `MERIDIAN_TOPIC_PARTITIONS`, used when the events topic is created.
    pub topic_partitions: i32,
    /// `MERIDIAN_MONGODB_URL`
    pub mongodb_url: String,
    /// `MERIDIAN_MONGODB_DATABASE`
    pub mongodb_database: String,
    /// `MERIDIAN_REDIS_URL`
    pub redis_url: String,
}

impl Settings {
    /// Reads every setting from the environment, falling back to the documented defaults.
    pub fn from_env() -> anyhow::Result<Self> {
        let topic_partitions = match env::var("MERIDIAN_TOPIC_PARTITIONS") {
            Ok(raw) => raw.parse().map_err(|_| {
                anyhow::anyhow!("MERIDIAN_TOPIC_PARTITIONS must be a positive integer, got {raw:?}")
            })?,
            Err(_) => DEFAULT_TOPIC_PARTITIONS,
        };
        if topic_partitions < 1 {
            anyhow::bail!("MERIDIAN_TOPIC_PARTITIONS must be at least 1, got {topic_partitions}");
        }
        Ok(Self {
            database_url: var_or("MERIDIAN_DATABASE_URL", DEFAULT_DATABASE_URL),
            kafka_brokers: var_or("MERIDIAN_KAFKA_BROKERS", DEFAULT_KAFKA_BROKERS),
            topic_prefix: var_or("MERIDIAN_TOPIC_PREFIX", DEFAULT_TOPIC_PREFIX),
            topic_partitions,
            mongodb_url: var_or("MERIDIAN_MONGODB_URL", DEFAULT_MONGODB_URL),
            mongodb_database: var_or("MERIDIAN_MONGODB_DATABASE", DEFAULT_MONGODB_DATABASE),
            redis_url: var_or("MERIDIAN_REDIS_URL", DEFAULT_REDIS_URL),
        })
    }

    /// Name of the topic that carries every event.
    pub fn events_topic(&self) -> String {
        crate::topic::events_topic(&self.topic_prefix)
    }
}

/// Reads `name`, or returns `default` when it is unset or empty.
pub fn var_or(name: &str, default: &str) -> String {
    match env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => default.to_owned(),
    }
}
