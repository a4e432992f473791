//! Outbox relay tests against the real PostgreSQL and the Kafka-compatible broker of
//! `MERIDIAN_KAFKA_BROKERS` (default 127.0.0.1:9092), each test with its own database and topic.

#[path = "../api/common.rs"]
#[allow(
    dead_code,
    reason = "the relay tests use only part of the API test helpers"
)]
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_command_service::relay::lock::RELAY_LOCK_KEYS;
use meridian_command_service::relay::{create_producer, publish};
use meridian_command_service::run_relay;
use meridian_event_log::message::{event_id, CE_ID, CE_POSITION, CE_SEQUENCE, CE_TYPE};
use meridian_event_log::topic::ensure_topic;
use meridian_event_log::Settings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use common::{report, TestApp};

/// A relay running in this process.
struct RunningRelay {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningRelay {
    fn start(settings: &Settings) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_relay(settings.clone(), async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("relay stops within 30 s")
            .expect("relay task did not panic");
        result.expect("relay ran without a start-up error");
    }
}

/// A test database plus a topic of its own.
///
/// NOTE: the topic is left on the broker. Deleting one topic on tansu 0.6.0 with sqlite
/// storage deletes every topic of the cluster, after which producing to the others panics
/// its storage task and the broker stops responding.
struct Harness {
    app: TestApp,
    settings: Settings,
}

impl Harness {
    async fn start() -> Self {
        meridian_event_log::telemetry::init();
        let app = TestApp::start().await;
        let settings = app.settings();
        require_broker(&settings.kafka_brokers);
        Self { app, settings }
    }

    fn topic(&self) -> String {
        self.settings.events_topic()
    }

    fn pool(&self) -> &PgPool {
        &self.app.pool
    }

    async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(self.pool())
            .await
            .expect("outbox is countable")
    }

    async fn wait_outbox_empty(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let pending = self.outbox_len().await;
            if pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} outbox rows left after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Registers users and records `reports_each` reports for each; returns their ids.
    async fn create_events(&self, users: usize, reports_each: i64) -> Vec<String> {
        let mut ids = Vec::with_capacity(users);
        for _ in 0..users {
            let email = format!("relay-{}@ais.example", uuid::Uuid::new_v4().simple());
            let user_id = self.app.register(&email).await;
            let reports: Vec<Value> = (0..reports_each)
                .map(|index| report(index * 10, 40.0 + index as f64 * 1e-4, -74.0))
                .collect();
            if reports_each > 0 {
                let response = self
                    .app
                    .post(
                        &format!("/v1/users/{user_id}/locations"),
                        &json!({ "reports": reports }),
                    )
                    .await;
                assert_eq!(response.status, 200, "{}", response.body);
            }
            ids.push(user_id);
        }
        ids
    }

    async fn stored_events(&self) -> Vec<(String, String, i64, i64, String)> {
        sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, sequence, position, event_type \
             FROM events ORDER BY position",
        )
        .fetch_all(self.pool())
        .await
        .expect("events are readable")
    }

    async fn finish(self) {
        self.app.finish().await;
    }
}

fn require_broker(brokers: &str) {
    let first = brokers.split(',').next().unwrap_or_default();
    let reachable = first
        .parse::<std::net::SocketAddr>()
        .ok()
        .is_some_and(|address| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2)).is_ok()
        });
    assert!(
        reachable,
        "no Kafka broker answers at {brokers}; start it with `infra/stack.sh start` \
         or point MERIDIAN_KAFKA_BROKERS at one"
    );
}

/// Reads every message of `topic` from each partition's low to its high watermark.
fn read_topic(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("relay-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer builds");

    let timeout = Duration::from_secs(10);
    let metadata = with_attempts(|| consumer.fetch_metadata(Some(topic), timeout));
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in metadata.topics()[0].partitions() {
        let (low, high) =
            with_attempts(|| consumer.fetch_watermarks(topic, partition.id(), timeout));
        if high > low {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(low))
                .unwrap();
            remaining.insert(partition.id(), high);
        }
    }
    if remaining.is_empty() {
        return Vec::new();
    }

    consumer.assign(&assignment).expect("assignment");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut messages = Vec::new();
    while !remaining.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.expect("message").detach();
        if let Some(high) = remaining.get(&message.partition()) {
            if message.offset() + 1 >= *high {
                remaining.remove(&message.partition());
            }
        }
        messages.push(message);
    }
    messages
}

/// Runs a broker request up to 3 times, because a broker busy with parallel tests may time out.
fn with_attempts<T>(mut request: impl FnMut() -> rdkafka::error::KafkaResult<T>) -> T {
    let mut attempt = 1;
    loop {
        match request() {
            Ok(value) => return value,
            Err(error) if attempt < 3 => {
                eprintln!("broker request failed on attempt {attempt}: {error}; retrying");
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(error) => panic!("broker request failed 3 times: {error}"),
        }
    }
}

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    })
}

fn positions_of(messages: &[OwnedMessage]) -> Vec<i64> {
    messages
        .iter()
        .map(|message| {
            header(message, CE_POSITION)
                .and_then(|value| value.parse().ok())
                .expect("every message has ce_position")
        })
        .collect()
}

/// Asserts that the topic contains exactly one message per stored event.
async fn assert_published_once(harness: &Harness) -> Vec<OwnedMessage> {
    let stored = harness.stored_events().await;
    let messages = read_topic(&harness.settings.kafka_brokers, &harness.topic());
    let positions = positions_of(&messages);
    let distinct: HashSet<i64> = positions.iter().copied().collect();
    let expected: HashSet<i64> = stored.iter().map(|event| event.3).collect();
    assert_eq!(
        distinct.len(),
        positions.len(),
        "a position was published twice"
    );
    assert_eq!(
        distinct, expected,
        "published positions differ from stored ones"
    );
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_every_event_once_with_headers() {
    let harness = Harness::start().await;
    harness.create_events(3, 40).await;
    let relay = RunningRelay::start(&harness.settings);
    harness.wait_outbox_empty(Duration::from_secs(60)).await;

    // Events stored while the relay runs are published too.
    harness.create_events(2, 10).await;
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    relay.stop().await;

    let messages = assert_published_once(&harness).await;
    let stored: HashMap<i64, (String, String, i64, i64, String)> = harness
        .stored_events()
        .await
        .into_iter()
        .map(|event| (event.3, event))
        .collect();
    for message in &messages {
        let position: i64 = header(message, CE_POSITION).unwrap().parse().unwrap();
        let (aggregate_type, aggregate_id, sequence, _, event_type) = &stored[&position];
        let key = String::from_utf8_lossy(message.key().unwrap()).into_owned();
        assert_eq!(&key, aggregate_id);
        assert_eq!(header(message, CE_TYPE).as_ref(), Some(event_type));
        assert_eq!(header(message, CE_SEQUENCE), Some(sequence.to_string()));
        let expected_id = event_id(aggregate_type, aggregate_id, *sequence).to_string();
        assert_eq!(header(message, CE_ID), Some(expected_id));
        let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert!(
            value.is_object(),
            "value is the untagged event data: {value}"
        );
        assert!(
            value.get(event_type).is_none(),
            "value keeps the enum tag: {value}"
        );
    }
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_keeps_sequence_order_per_aggregate() {
    let harness = Harness::start().await;
    harness.create_events(2, 120).await;
    let relay = RunningRelay::start(&harness.settings);
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    relay.stop().await;

    let mut messages = read_topic(&harness.settings.kafka_brokers, &harness.topic());
    messages.sort_by_key(|message| (message.partition(), message.offset()));
    let mut last_sequence: BTreeMap<(String, String), i64> = BTreeMap::new();
    for message in &messages {
        let aggregate = (
            header(message, "ce_source").unwrap(),
            header(message, "ce_subject").unwrap(),
        );
        let sequence: i64 = header(message, CE_SEQUENCE).unwrap().parse().unwrap();
        let previous = last_sequence
            .insert(aggregate.clone(), sequence)
            .unwrap_or(0);
        assert_eq!(sequence, previous + 1, "gap or reorder in {aggregate:?}");
    }
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_checkpoints_match_topic() {
    let harness = Harness::start().await;
    harness.create_events(2, 30).await;
    let relay = RunningRelay::start(&harness.settings);
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    relay.stop().await;

    let checkpointed: Option<i64> =
        sqlx::query_scalar("SELECT sum(next_offset)::int8 FROM relay_checkpoints WHERE topic = $1")
            .bind(harness.topic())
            .fetch_one(harness.pool())
            .await
            .unwrap();
    let messages = read_topic(&harness.settings.kafka_brokers, &harness.topic());
    assert_eq!(checkpointed, Some(i64::try_from(messages.len()).unwrap()));
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_crash_publishes_no_duplicate() {
    let harness = Harness::start().await;
    harness.create_events(3, 50).await;
    ensure_topic(
        &harness.settings.kafka_brokers,
        &harness.topic(),
        harness.settings.topic_partitions,
    )
    .await
    .unwrap();
    // A relay that crashed after Kafka acknowledged part of the outbox but before it deleted
    // the rows and advanced its checkpoints.
    let producer = create_producer(&harness.settings.kafka_brokers).unwrap();
    let batch = publish::next_batch(harness.pool(), 100).await.unwrap();
    let delivered = publish::publish(&producer, &harness.topic(), batch)
        .await
        .unwrap();
    drop(producer);
    assert_eq!(delivered.len(), 100);
    assert_eq!(harness.outbox_len().await, 153);

    let relay = RunningRelay::start(&harness.settings);
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    relay.stop().await;

    let messages = assert_published_once(&harness).await;
    assert_eq!(messages.len(), 153);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_relay_waits_for_lock() {
    let harness = Harness::start().await;
    harness.create_events(1, 5).await;
    let mut holder = PgConnection::connect(&harness.settings.database_url)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(RELAY_LOCK_KEYS.0)
        .bind(RELAY_LOCK_KEYS.1)
        .execute(&mut holder)
        .await
        .unwrap();

    let relay = RunningRelay::start(&harness.settings);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pending_while_locked = harness.outbox_len().await;
    holder.close().await.unwrap();
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    relay.stop().await;

    assert_eq!(pending_while_locked, 6);
    assert_published_once(&harness).await;
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_each_event_once() {
    let harness = Harness::start().await;
    let first = RunningRelay::start(&harness.settings);
    let second = RunningRelay::start(&harness.settings);
    harness.create_events(4, 60).await;
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    first.stop().await;
    harness.create_events(1, 10).await;
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    second.stop().await;

    let messages = assert_published_once(&harness).await;
    assert_eq!(messages.len(), 4 * 61 + 11);
    harness.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_committed_late_is_published() {
    let harness = Harness::start().await;
    let relay = RunningRelay::start(&harness.settings);
    // This transaction takes a position first but commits after later events were published.
    let mut slow = harness.pool().begin().await.unwrap();
    let late_id = uuid::Uuid::new_v4().to_string();
    // The event store accepts events only of a user with a data key; the relay never opens one.
    sqlx::query(
        "INSERT INTO user_keys (user_id, master_key_id, wrapped_key) VALUES ($1, 'relay-test', '\\x00')",
    )
    .bind(&late_id)
    .execute(&mut *slow)
    .await
    .unwrap();
    let late_position: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('Profile', $1, 1, 'ProfileSettingsUpdated', '1', $2, '{}') RETURNING position",
    )
    .bind(&late_id)
    .bind(json!({"ProfileSettingsUpdated": {"settings": {}}}))
    .fetch_one(&mut *slow)
    .await
    .unwrap();
    harness.create_events(1, 5).await;
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    slow.commit().await.unwrap();
    harness.wait_outbox_empty(Duration::from_secs(60)).await;
    relay.stop().await;

    let messages = assert_published_once(&harness).await;
    let positions = positions_of(&messages);
    assert!(positions.contains(&late_position));
    assert!(positions.iter().any(|position| *position > late_position));
    harness.finish().await;
}

/// Starts the `outbox-relay` binary with the harness's settings.
fn spawn_relay_binary(settings: &Settings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .env("MERIDIAN_DATABASE_URL", &settings.database_url)
        .env("MERIDIAN_KAFKA_BROKERS", &settings.kafka_brokers)
        .env("MERIDIAN_TOPIC_PREFIX", &settings.topic_prefix)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("outbox-relay starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_publish_leaves_no_duplicate() {
    let harness = Harness::start().await;
    harness.create_events(8, 500).await;
    let total = harness.outbox_len().await;

    let mut relay = spawn_relay_binary(&harness.settings);
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.outbox_len().await == total {
        assert!(Instant::now() < deadline, "relay published nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.kill().unwrap();
    relay.wait().unwrap();
    let pending_after_kill = harness.outbox_len().await;

    let mut restarted = spawn_relay_binary(&harness.settings);
    harness.wait_outbox_empty(Duration::from_secs(120)).await;
    restarted.kill().unwrap();
    restarted.wait().unwrap();

    assert!(
        pending_after_kill > 0,
        "the kill came after the relay finished"
    );
    let messages = assert_published_once(&harness).await;
    assert_eq!(i64::try_from(messages.len()).unwrap(), total);
    harness.finish().await;
}
