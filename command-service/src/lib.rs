//! HTTP command API of Meridian and the outbox relay to Kafka.
