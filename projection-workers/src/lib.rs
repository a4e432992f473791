//! Kafka consumers that fold Meridian events into PostgreSQL read models and MongoDB analytics.
