//! Both projections against the real servers: PostgreSQL, the Kafka-compatible broker and
//! the MongoDB-compatible server. Each test has its own database, topic prefix and
//! MongoDB database, and produces real `EventMessage`s built from domain events.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate as _, DomainEvent as _};
use meridian_crypto::testing::TestKeys;
use meridian_crypto::EventCipher;
use meridian_domain::field::{Email, UserName};
use meridian_domain::location::LocationEvent;
use meridian_domain::profile::{ImageReference, ProfileEvent};
use meridian_domain::user::{Role, User, UserCommand, UserEvent};
use meridian_event_log::testing::{settings_for, TestDatabase};
use meridian_event_log::{EventMessage, Settings, StoredEvent};
use meridian_projection_workers::analytics::{self, AnalyticsProjection};
use meridian_projection_workers::consumer::{Batch, CounterValues, Counters, Received};
use meridian_projection_workers::event::ProjectedEvent;
use meridian_projection_workers::read_models::publisher::LiveSettings;
use meridian_projection_workers::read_models::{self, ReadModelProjection};
use mongodb::bson::{doc, Document};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Maximum wait for a projection to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);

/// The servers and names of one test.
#[derive(Clone)]
struct Stack {
    settings: Settings,
    pool: PgPool,
    producer: FutureProducer,
    mongo: mongodb::Client,
    cipher: EventCipher,
    /// The master key file of the test, which lives as long as the stack.
    keys: Arc<TestKeys>,
}

impl Stack {
    fn topic(&self) -> String {
        self.settings.events_topic()
    }

    fn location_events(&self) -> mongodb::Collection<Document> {
        self.mongo
            .database(&self.settings.mongodb_database)
            .collection(analytics::COLLECTION)
    }

    /// Seals the personal fields of `messages` as the command service stores them, and
    /// produces them keyed by aggregate id, as the outbox relay does.
    async fn produce(&self, messages: &[EventMessage]) {
        let sealed = self.seal(messages).await;
        self.produce_sealed(&sealed).await;
    }

    /// Returns `messages` with their personal fields sealed.
    async fn seal(&self, messages: &[EventMessage]) -> Vec<EventMessage> {
        let mut sealed = Vec::with_capacity(messages.len());
        for message in messages {
            let mut payload = message.tagged_payload();
            self.cipher
                .seal_event(&message.aggregate_id, &message.event_type, &mut payload)
                .await
                .expect("sealing a test event");
            let mut message = message.clone();
            message.data = payload[&message.event_type].take();
            sealed.push(message);
        }
        sealed
    }

    /// Produces `messages` as they are, keyed by aggregate id.
    async fn produce_sealed(&self, messages: &[EventMessage]) {
        let topic = self.topic();
        let values: Vec<Vec<u8>> = messages.iter().map(EventMessage::value).collect();
        let sends = messages.iter().zip(&values).map(|(message, value)| {
            let record = FutureRecord::to(&topic)
                .key(message.key())
                .payload(value)
                .headers(message.headers());
            self.producer.send(record, Duration::from_secs(60))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(error, _)| error).expect("produce failed");
        }
    }

    /// Produces one message with the given key and value and no headers.
    async fn produce_raw(&self, key: &str, value: &[u8]) {
        let topic = self.topic();
        let record = FutureRecord::to(&topic).key(key).payload(value);
        self.producer
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(error, _)| error)
            .expect("produce failed");
    }

    /// Returns the sum of the stored next offsets of `projection`, which equals the
    /// number of messages it consumed because the topic starts at offset 0.
    async fn consumed(&self, projection: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_offsets
             WHERE projection = $1 AND topic = $2",
        )
        .bind(projection)
        .bind(self.topic())
        .fetch_one(&self.pool)
        .await
        .expect("read projection_offsets")
    }

    /// Waits until `projection` consumed at least `messages` messages.
    async fn wait_until_consumed(&self, projection: &str, messages: i64) {
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let consumed = self.consumed(projection).await;
            if consumed >= messages {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{projection} consumed {consumed} of {messages} messages in {CATCH_UP_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets the committed Kafka offsets of `projection`'s group back to 0, as if the
    /// commits after each batch had been lost.
    async fn reset_group_offsets(&self, projection: &'static str) {
        let settings = meridian_projection_workers::consumer_settings(&self.settings, projection);
        let partitions = self.settings.topic_partitions;
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &settings.brokers)
                .set("group.id", &settings.group_id)
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            let mut offsets = TopicPartitionList::new();
            for partition in 0..partitions {
                offsets
                    .add_partition_offset(&settings.topic, partition, Offset::Offset(0))
                    .expect("partition offset");
            }
            consumer
                .commit(&offsets, CommitMode::Sync)
                .expect("commit offsets 0");
        })
        .await
        .expect("reset task");
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }
}

/// Runs `test` with a fresh database, topic and MongoDB database, and drops the two
/// databases afterwards, also when the test panics.
async fn with_stack<F, Fut>(test: F)
where
    F: FnOnce(Stack) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    meridian_event_log::telemetry::init();
    let database = TestDatabase::create().await.expect("test database");
    let stack = match connect_stack(&database).await {
        Ok(stack) => stack,
        Err(error) => {
            database.drop_database().await.ok();
            panic!("failed to set up the test: {error:#}");
        }
    };
    let (settings, mongo) = (stack.settings.clone(), stack.mongo.clone());

    let outcome = tokio::spawn(test(stack)).await;

    // NOTE: the test topic stays on the broker, because deleting one topic on tansu
    // 0.6.0 deletes every topic of the cluster (its `topic_delete_by.sql` filters on the
    // cluster only). The unique prefix keeps the leftover topic out of other tests.
    database.drop_database().await.expect("drop database");
    mongo
        .database(&settings.mongodb_database)
        .drop()
        .await
        .expect("drop MongoDB database");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Creates the topic, the producer and the MongoDB client of a test.
async fn connect_stack(database: &TestDatabase) -> anyhow::Result<Stack> {
    let settings = settings_for(database)?;
    meridian_projection_workers::ensure_events_topic(&settings).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("message.timeout.ms", "60000")
        .create()?;
    let mongo = mongodb::Client::with_uri_str(&settings.mongodb_url).await?;
    let keys = TestKeys::create()?;
    let cipher = keys.event_cipher(database.pool.clone()).await?;
    Ok(Stack {
        settings,
        pool: database.pool.clone(),
        producer,
        mongo,
        cipher,
        keys: Arc::new(keys),
    })
}

/// A projection running in its own task.
struct Running {
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn read_models(stack: &Stack) -> Self {
        let projection = ReadModelProjection::new(
            stack.settings.clone(),
            stack.pool.clone(),
            stack.cipher.clone(),
        );
        let counters = projection.counters();
        let stop = CancellationToken::new();
        let task = tokio::spawn(projection.run(stop.clone()));
        Self {
            counters,
            stop,
            task,
        }
    }

    async fn analytics(stack: &Stack) -> Self {
        let projection = AnalyticsProjection::connect(
            stack.settings.clone(),
            stack.pool.clone(),
            stack.cipher.clone(),
        )
        .await
        .expect("analytics projection");
        let counters = projection.counters();
        let stop = CancellationToken::new();
        let task = tokio::spawn(projection.run(stop.clone()));
        Self {
            counters,
            stop,
            task,
        }
    }

    /// Stops the projection gracefully and returns its counters.
    async fn stop(self) -> CounterValues {
        self.stop.cancel();
        self.task
            .await
            .expect("projection task")
            .expect("projection failed");
        self.counters.values()
    }
}

fn time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_593_475_200 + seconds, 0).unwrap()
}

/// Builds the messages the outbox relay would publish, numbering sequences per
/// aggregate and positions globally.
#[derive(Default)]
struct EventLog {
    position: i64,
    sequences: HashMap<(&'static str, Uuid), i64>,
}

impl EventLog {
    fn message(
        &mut self,
        aggregate_type: &'static str,
        user_id: Uuid,
        event_type: String,
        payload: Value,
    ) -> EventMessage {
        let sequence = self.sequences.entry((aggregate_type, user_id)).or_insert(0);
        *sequence += 1;
        self.position += 1;
        EventMessage::from_stored(StoredEvent {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: user_id.to_string(),
            sequence: *sequence,
            position: self.position,
            event_type,
            event_version: "1".to_owned(),
            stored_at: time(10_000 + self.position),
            payload,
        })
    }

    fn user(&mut self, user_id: Uuid, event: UserEvent) -> EventMessage {
        let payload = serde_json::to_value(&event).unwrap();
        self.message("User", user_id, event.event_type(), payload)
    }

    fn profile(&mut self, user_id: Uuid, event: ProfileEvent) -> EventMessage {
        let payload = serde_json::to_value(&event).unwrap();
        self.message("Profile", user_id, event.event_type(), payload)
    }

    fn location(&mut self, user_id: Uuid, latitude: f64, seconds: i64) -> EventMessage {
        let event = LocationEvent::LocationRecorded {
            latitude,
            longitude: -74.0,
            recorded_at: time(seconds),
        };
        let payload = serde_json::to_value(&event).unwrap();
        self.message("LocationTrack", user_id, event.event_type(), payload)
    }

    fn registered(&mut self, user_id: Uuid, email: &str) -> EventMessage {
        self.user(
            user_id,
            UserEvent::UserRegistered {
                email: email.to_owned(),
                name: "SAMUEL I NEWHOUSE".to_owned(),
                password_hash: "$argon2id$hash".to_owned(),
                registered_at: time(0),
            },
        )
    }
}

fn count(total: usize) -> i64 {
    i64::try_from(total).unwrap()
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct UserRow {
    email: String,
    name: String,
    active: bool,
    role: String,
    registered_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_sequence: i64,
    last_position: i64,
}

async fn user_row(pool: &PgPool, user_id: Uuid) -> UserRow {
    sqlx::query_as(
        "SELECT email, name, active, role, registered_at, updated_at, last_sequence,
                last_position
         FROM rm_users WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_one(pool)
    .await
    .expect("rm_users row")
}

/// Returns `(sequence, event_id)` of the latest location of `user_id`.
async fn latest_location(pool: &PgPool, user_id: Uuid) -> (i64, Uuid) {
    sqlx::query_as("SELECT sequence, event_id FROM rm_latest_locations WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(pool)
        .await
        .expect("rm_latest_locations row")
}

#[tokio::test]
async fn read_models_fold_every_event_type() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let settings = json!({"units": "metric"}).as_object().cloned().unwrap();
        let image = ImageReference::parse("image", "s3://bucket/ada.png", "image/png").unwrap();
        let messages = vec![
            log.registered(ada, "ada@ais.example"),
            log.registered(bob, "bob@ais.example"),
            log.user(
                ada,
                UserEvent::NameChanged {
                    name: "Ada L".into(),
                },
            ),
            log.user(
                ada,
                UserEvent::EmailChanged {
                    email: "ada@new.example".into(),
                },
            ),
            log.user(
                ada,
                UserEvent::PasswordChanged {
                    password_hash: "$argon2id$2".into(),
                },
            ),
            log.user(
                bob,
                UserEvent::UserDeactivated {
                    deactivated_at: time(5),
                },
            ),
            log.profile(ada, ProfileEvent::ProfileSettingsUpdated { settings }),
            log.profile(
                ada,
                ProfileEvent::ProfileImageChanged { image: Some(image) },
            ),
            log.location(ada, 40.1, 100),
            log.location(ada, 40.2, 300),
            log.location(ada, 40.3, 200),
            log.location(ada, 40.4, 300),
        ];
        let latest_event_id = messages[11].event_id;
        stack.produce(&messages).await;

        let running = Running::read_models(&stack);
        stack
            .wait_until_consumed(read_models::PROJECTION, count(messages.len()))
            .await;
        let counters = running.stop().await;

        assert_eq!(counters.applied, 12);
        assert_eq!(counters.already_applied, 0);
        assert_eq!(
            user_row(&stack.pool, ada).await,
            UserRow {
                email: "ada@new.example".into(),
                name: "Ada L".into(),
                active: true,
                role: "user".into(),
                registered_at: time(0),
                updated_at: messages[4].stored_at,
                last_sequence: 4,
                last_position: messages[4].position,
            }
        );
        let bob_row = user_row(&stack.pool, bob).await;
        assert!(!bob_row.active);
        assert_eq!(bob_row.last_sequence, 2);

        let (settings, image, last_sequence): (Value, Option<Value>, i64) = sqlx::query_as(
            "SELECT settings, image, last_sequence FROM rm_profiles WHERE user_id = $1",
        )
        .bind(ada)
        .fetch_one(&stack.pool)
        .await
        .expect("rm_profiles row");
        assert_eq!(settings, json!({"units": "metric"}));
        assert_eq!(
            image,
            Some(json!({"uri": "s3://bucket/ada.png", "content_type": "image/png"}))
        );
        assert_eq!(last_sequence, 2);

        // Two fixes share the greatest timestamp; the later event wins.
        assert_eq!(
            latest_location(&stack.pool, ada).await,
            (4, latest_event_id)
        );
        assert_eq!(stack.count("rm_location_history").await, 4);
    })
    .await;
}

/// Returns the events the `User` aggregate decides for `command` after `given`.
async fn decide(given: Vec<UserEvent>, command: UserCommand) -> Vec<UserEvent> {
    let mut user = User::default();
    for event in given {
        user.apply(event);
    }
    let sink = EventSink::default();
    user.handle(command, &(), &sink)
        .await
        .expect("the command is accepted");
    sink.collect().await
}

fn register_command(email: &str, role: Role) -> UserCommand {
    UserCommand::Register {
        email: Email::parse("email", email).unwrap(),
        name: UserName::parse("name", "SAMUEL I NEWHOUSE").unwrap(),
        password_hash: "$argon2id$hash".to_owned(),
        role,
        at: time(0),
    }
}

/// Returns the `data` of the live updates of `user_id` for events of `event_type`, in
/// commit order.
async fn update_data(pool: &PgPool, user_id: Uuid, event_type: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload -> 'data' FROM rm_updates
         WHERE user_id = $1 AND payload ->> 'event_type' = $2
         ORDER BY seq",
    )
    .bind(user_id)
    .bind(event_type)
    .fetch_all(pool)
    .await
    .expect("read rm_updates")
}

#[tokio::test]
async fn read_models_follow_role_changes() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let ada_registered = decide(vec![], register_command("ada@ais.example", Role::Admin)).await;
        let bob_registered = decide(vec![], register_command("bob@ais.example", Role::User)).await;
        assert_eq!(ada_registered.len(), 2, "{ada_registered:?}");
        let mut registrations: Vec<EventMessage> = ada_registered
            .iter()
            .map(|event| log.user(ada, event.clone()))
            .collect();
        registrations.extend(
            bob_registered
                .iter()
                .map(|event| log.user(bob, event.clone())),
        );
        stack.produce(&registrations).await;

        let running = Running::read_models(&stack);
        stack
            .wait_until_consumed(read_models::PROJECTION, count(registrations.len()))
            .await;
        let ada_row = user_row(&stack.pool, ada).await;
        assert_eq!(ada_row.role, "admin");
        assert_eq!(ada_row.last_sequence, 2);
        assert_eq!(user_row(&stack.pool, bob).await.role, "user");

        let ada_demoted = decide(
            ada_registered,
            UserCommand::ChangeRole {
                role: Role::Analyst,
            },
        )
        .await;
        let bob_promoted = decide(
            bob_registered,
            UserCommand::ChangeRole { role: Role::Admin },
        )
        .await;
        let mut changes: Vec<EventMessage> = ada_demoted
            .into_iter()
            .map(|event| log.user(ada, event))
            .collect();
        changes.extend(bob_promoted.into_iter().map(|event| log.user(bob, event)));
        stack.produce(&changes).await;
        stack
            .wait_until_consumed(
                read_models::PROJECTION,
                count(registrations.len() + changes.len()),
            )
            .await;
        let counters = running.stop().await;

        assert_eq!(counters.applied, 5);
        assert_eq!(counters.undecodable, 0);
        let ada_row = user_row(&stack.pool, ada).await;
        assert_eq!(ada_row.role, "analyst");
        assert_eq!(ada_row.last_sequence, 3);
        assert_eq!(ada_row.last_position, changes[0].position);
        assert_eq!(user_row(&stack.pool, bob).await.role, "admin");
        assert_eq!(
            update_data(&stack.pool, ada, "RoleChanged").await,
            [json!({"role": "admin"}), json!({"role": "analyst"})]
        );
        assert_eq!(
            update_data(&stack.pool, bob, "RoleChanged").await,
            [json!({"role": "admin"})]
        );
    })
    .await;
}

#[tokio::test]
async fn restart_neither_loses_nor_repeats() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let users: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
        let mut messages: Vec<EventMessage> = users
            .iter()
            .map(|user| log.registered(*user, &format!("{user}@ais.example")))
            .collect();
        for step in 0..200 {
            for user in &users {
                messages.push(log.location(*user, f64::from(step) / 10.0, i64::from(step % 50)));
            }
        }
        let half = messages.len() / 2;

        stack.produce(&messages[..half]).await;
        let first = Running::read_models(&stack);
        stack.wait_until_consumed(read_models::PROJECTION, 1).await;
        let first_counters = first.stop().await;
        let after_first = stack.consumed(read_models::PROJECTION).await;

        stack.produce(&messages[half..]).await;
        let second = Running::read_models(&stack);
        stack
            .wait_until_consumed(read_models::PROJECTION, count(messages.len()))
            .await;
        let second_counters = second.stop().await;

        assert!(after_first <= count(half));
        assert_eq!(
            first_counters.applied + second_counters.applied,
            u64::try_from(messages.len()).unwrap()
        );
        assert_eq!(
            first_counters.already_applied + second_counters.already_applied,
            0
        );
        assert_eq!(stack.count("rm_users").await, 8);
        assert_eq!(stack.count("rm_location_history").await, 1600);
        assert_eq!(
            stack.consumed(read_models::PROJECTION).await,
            count(messages.len())
        );
        // Timestamps repeat every 50 steps; the last step at second 49 is step 199.
        for user in &users {
            let (sequence, _) = latest_location(&stack.pool, *user).await;
            assert_eq!(sequence, 200);
        }
    })
    .await;
}

#[tokio::test]
async fn hard_stop_mid_stream_loses_nothing() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let users: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let mut messages: Vec<EventMessage> = users
            .iter()
            .map(|user| log.registered(*user, &format!("{user}@ais.example")))
            .collect();
        for step in 0..400 {
            for user in &users {
                messages.push(log.location(*user, 1.0, i64::from(step)));
            }
        }
        stack.produce(&messages).await;

        let killed = Running::read_models(&stack);
        stack.wait_until_consumed(read_models::PROJECTION, 1).await;
        killed.task.abort();
        assert!(killed.task.await.is_err_and(|error| error.is_cancelled()));
        let after_kill = stack.consumed(read_models::PROJECTION).await;

        let restarted = Running::read_models(&stack);
        stack
            .wait_until_consumed(read_models::PROJECTION, count(messages.len()))
            .await;
        let counters = restarted.stop().await;

        // A transaction whose COMMIT was in flight at the abort may land after
        // `after_kill` was read, so only a bound holds for the restarted run.
        assert!(counters.applied <= u64::try_from(count(messages.len()) - after_kill).unwrap());
        assert_eq!(counters.already_applied, 0);
        assert_eq!(stack.count("rm_location_history").await, 2000);
        for user in &users {
            assert_eq!(latest_location(&stack.pool, *user).await.0, 400);
        }
    })
    .await;
}

#[tokio::test]
async fn stale_kafka_offsets_do_not_reapply() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let mut messages = vec![log.registered(user, "ada@ais.example")];
        messages.extend((0..20).map(|step| log.location(user, 1.0, step)));
        stack.produce(&messages).await;
        let first = Running::read_models(&stack);
        stack
            .wait_until_consumed(read_models::PROJECTION, count(messages.len()))
            .await;
        first.stop().await;

        stack.reset_group_offsets(read_models::PROJECTION).await;
        let more: Vec<EventMessage> = (20..25).map(|step| log.location(user, 2.0, step)).collect();
        stack.produce(&more).await;
        let second = Running::read_models(&stack);
        stack
            .wait_until_consumed(read_models::PROJECTION, count(messages.len() + more.len()))
            .await;
        let counters = second.stop().await;

        assert_eq!(counters.applied, 5);
        assert_eq!(counters.redelivered, 0);
        assert_eq!(counters.already_applied, 0);
        assert_eq!(stack.count("rm_location_history").await, 25);
    })
    .await;
}

#[tokio::test]
async fn duplicate_delivery_is_ignored() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let registered = log.registered(user, "ada@ais.example");
        let renamed = log.user(
            user,
            UserEvent::NameChanged {
                name: "Ada L".into(),
            },
        );
        let first_fix = log.location(user, 1.0, 10);
        let second_fix = log.location(user, 2.0, 10);
        // The relay published every event twice, as after a crash before it deleted the
        // outbox rows. The second copy of the first fix comes after the second fix.
        let messages = vec![
            registered.clone(),
            renamed.clone(),
            first_fix.clone(),
            second_fix.clone(),
            registered,
            renamed,
            first_fix,
            second_fix.clone(),
        ];
        stack.produce(&messages).await;

        let running = Running::read_models(&stack);
        stack
            .wait_until_consumed(read_models::PROJECTION, count(messages.len()))
            .await;
        let counters = running.stop().await;

        assert_eq!(counters.applied, 4);
        assert_eq!(counters.already_applied, 4);
        let row = user_row(&stack.pool, user).await;
        assert_eq!(row.name, "Ada L");
        assert_eq!(row.last_sequence, 2);
        assert_eq!(stack.count("rm_location_history").await, 2);
        assert_eq!(
            latest_location(&stack.pool, user).await,
            (2, second_fix.event_id)
        );
    })
    .await;
}

#[tokio::test]
async fn late_location_copy_is_ignored() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let registered = log.registered(user, "ada@ais.example");
        let fix = log.location(user, 1.0, 10);
        stack.produce(&[registered, fix.clone()]).await;
        let running = Running::read_models(&stack);
        stack.wait_until_consumed(read_models::PROJECTION, 2).await;

        // A copy of the fix, as a relay that published it twice, reaches a batch of its own.
        stack.produce(&[fix]).await;
        stack.wait_until_consumed(read_models::PROJECTION, 3).await;
        let counters = running.stop().await;

        assert_eq!(counters.applied, 2);
        assert_eq!(counters.already_applied, 1);
        assert_eq!(stack.count("rm_location_history").await, 1);
        assert_eq!(stack.count("rm_updates").await, 2);
    })
    .await;
}

#[tokio::test]
async fn undecodable_messages_are_skipped() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        stack.produce_raw(&user.to_string(), b"not an event").await;
        let unknown = log.message(
            "Invoice",
            user,
            "InvoicePaid".into(),
            json!({"InvoicePaid": {"amount": 3}}),
        );
        let unknown_type = log.message(
            "User",
            user,
            "UserPromoted".into(),
            json!({"UserPromoted": {"level": 2}}),
        );
        let registered = log.registered(user, "ada@ais.example");
        stack.produce(&[unknown, unknown_type, registered]).await;

        let running = Running::read_models(&stack);
        stack.wait_until_consumed(read_models::PROJECTION, 4).await;
        let counters = running.stop().await;

        assert_eq!(counters.undecodable, 3);
        assert_eq!(counters.applied, 1);
        assert_eq!(user_row(&stack.pool, user).await.email, "ada@ais.example");
    })
    .await;
}

#[tokio::test]
async fn applying_batch_twice_changes_nothing() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let messages = [
            log.registered(user, "ada@ais.example"),
            log.location(user, 1.0, 10),
            log.location(user, 2.0, 20),
        ];
        let batch = Batch {
            topic: stack.topic(),
            messages: messages
                .iter()
                .zip(0..)
                .map(|(message, offset)| Received {
                    partition: 1,
                    offset,
                    event: Some(ProjectedEvent::from_message(message).unwrap()),
                })
                .collect(),
        };

        let first = read_models::apply_batch(&stack.pool, &batch).await.unwrap();
        let second = read_models::apply_batch(&stack.pool, &batch).await.unwrap();

        assert_eq!(first.outcome.applied, 3);
        assert_eq!(second.outcome.applied, 0);
        assert_eq!(second.outcome.redelivered, 3);
        assert_eq!(stack.count("rm_location_history").await, 2);
        assert_eq!(stack.consumed(read_models::PROJECTION).await, 3);
    })
    .await;
}

#[tokio::test]
async fn analytics_stores_location_documents() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let mut messages = vec![log.registered(user, "ada@ais.example")];
        messages.extend(
            (0..30).map(|step| log.location(user, 40.0 + f64::from(step), i64::from(step))),
        );
        let first_fix = messages[1].clone();
        stack.produce(&messages).await;

        let running = Running::analytics(&stack).await;
        stack
            .wait_until_consumed(analytics::PROJECTION, count(messages.len()))
            .await;
        let counters = running.stop().await;

        assert_eq!(counters.applied, 30);
        let collection = stack.location_events();
        assert_eq!(collection.count_documents(doc! {}).await.unwrap(), 30);
        let document = collection
            .find_one(doc! {"_id": first_fix.event_id.to_string()})
            .await
            .unwrap()
            .expect("document of the first fix");
        assert_eq!(document.get_str("user_id").unwrap(), user.to_string());
        assert_eq!(document.get_f64("latitude").unwrap(), 40.0);
        assert_eq!(document.get_f64("longitude").unwrap(), -74.0);
        assert_eq!(
            document
                .get_datetime("recorded_at")
                .unwrap()
                .timestamp_millis(),
            time(0).timestamp_millis()
        );
        assert_eq!(integer(&document, "sequence"), 1);
        assert_eq!(integer(&document, "position"), first_fix.position);
        assert_eq!(
            document
                .get_datetime("stored_at")
                .unwrap()
                .timestamp_millis(),
            first_fix.stored_at.timestamp_millis()
        );
        assert_eq!(document.get_str("event_type").unwrap(), "LocationRecorded");
    })
    .await;
}

#[tokio::test]
async fn analytics_skips_user_and_unknown_events() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let mut messages = vec![
            log.registered(user, "ada@ais.example"),
            log.user(user, UserEvent::RoleChanged { role: Role::Admin }),
            // An event type of a later release, which this build cannot decode.
            log.message(
                "User",
                user,
                "UserSuspended".into(),
                json!({"UserSuspended": {"until": "2030-01-01T00:00:00Z"}}),
            ),
        ];
        messages.extend((0..3).map(|step| log.location(user, 40.0, step)));
        stack.produce(&messages).await;

        let running = Running::analytics(&stack).await;
        stack
            .wait_until_consumed(analytics::PROJECTION, count(messages.len()))
            .await;
        let counters = running.stop().await;

        assert_eq!(counters.applied, 3, "{counters:?}");
        assert_eq!(counters.undecodable, 1, "{counters:?}");
        let stored = stack
            .location_events()
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(stored, 3);
        let non_location = stack
            .location_events()
            .count_documents(doc! {"event_type": {"$ne": "LocationRecorded"}})
            .await
            .unwrap();
        assert_eq!(non_location, 0);
    })
    .await;
}

/// Returns an integer field. The driver writes `i64`; nx-27017 returns small values
/// as `i32`, which real MongoDB does not.
fn integer(document: &Document, key: &str) -> i64 {
    match document.get(key) {
        Some(mongodb::bson::Bson::Int64(value)) => *value,
        Some(mongodb::bson::Bson::Int32(value)) => i64::from(*value),
        other => panic!("{key} is not an integer: {other:?}"),
    }
}

#[tokio::test]
async fn analytics_is_idempotent_by_event_id() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let fixes: Vec<EventMessage> = (0..10).map(|step| log.location(user, 1.0, step)).collect();
        let mut messages = fixes.clone();
        messages.extend(fixes[..4].iter().cloned());
        stack.produce(&messages).await;

        let first = Running::analytics(&stack).await;
        stack
            .wait_until_consumed(analytics::PROJECTION, count(messages.len()))
            .await;
        let first_counters = first.stop().await;

        // Forget all progress, so the next run consumes the topic from the start.
        sqlx::query("DELETE FROM projection_offsets WHERE projection = $1")
            .bind(analytics::PROJECTION)
            .execute(&stack.pool)
            .await
            .unwrap();
        stack.reset_group_offsets(analytics::PROJECTION).await;
        let second = Running::analytics(&stack).await;
        stack
            .wait_until_consumed(analytics::PROJECTION, count(messages.len()))
            .await;
        let second_counters = second.stop().await;

        assert_eq!(first_counters.applied, 10);
        assert_eq!(first_counters.already_applied, 4);
        assert_eq!(second_counters.applied, 0);
        assert_eq!(second_counters.already_applied, 14);
        let stored = stack
            .location_events()
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(stored, 10);
    })
    .await;
}

#[tokio::test]
async fn run_starts_both_projections() {
    with_stack(|stack| async move {
        let mut settings = stack.settings.clone();
        // A topic that does not exist yet, so `run` must create it.
        settings.topic_prefix = format!("{}run.", settings.topic_prefix);
        let run_stack = Stack {
            settings: settings.clone(),
            ..stack.clone()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let workers = tokio::spawn(meridian_projection_workers::run(
            settings.clone(),
            stack.keys.settings.clone(),
            LiveSettings::default(),
            async {
                stopped.await.ok();
            },
        ));
        wait_for_topic(&run_stack).await;

        let mut log = EventLog::default();
        let user = Uuid::new_v4();
        let messages = vec![
            log.registered(user, "ada@ais.example"),
            log.location(user, 1.0, 0),
        ];
        run_stack.produce(&messages).await;
        run_stack
            .wait_until_consumed(read_models::PROJECTION, 2)
            .await;
        run_stack
            .wait_until_consumed(analytics::PROJECTION, 2)
            .await;
        stop.send(()).unwrap();
        let result = workers.await.expect("workers task");

        assert!(result.is_ok(), "run failed: {result:?}");
        assert_eq!(user_row(&stack.pool, user).await.email, "ada@ais.example");
        let stored = run_stack
            .location_events()
            .count_documents(doc! {})
            .await
            .unwrap();
        assert_eq!(stored, 1);
    })
    .await;
}

/// Waits until the broker lists the events topic of `stack`.
async fn wait_for_topic(stack: &Stack) {
    let topic = stack.topic();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let producer = stack.producer.clone();
        let listed = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(5))
                .map(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .map(|topic| topic.name().to_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .await
        .expect("metadata task");
        if listed.contains(&topic) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "topic {topic} was not created"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Destroys the key of `user_id` as the event store's trigger does with `UserErased`.
async fn destroy_key(pool: &PgPool, user_id: Uuid) {
    sqlx::query("DELETE FROM user_keys WHERE user_id = $1")
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .expect("delete the user's key");
    sqlx::query("INSERT INTO erased_users (user_id) VALUES ($1)")
        .bind(user_id.to_string())
        .execute(pool)
        .await
        .expect("record the erase");
}

#[tokio::test]
async fn erased_user_disappears_from_every_projection() {
    with_stack(|stack| async move {
        let mut log = EventLog::default();
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let mut before = vec![log.registered(ada, "ada@ais.example")];
        before.push(log.registered(bob, "bob@ais.example"));
        before.extend((0..5).map(|step| log.location(ada, 40.0 + f64::from(step), step.into())));
        before.push(log.location(bob, 41.0, 0));
        let before = stack.seal(&before).await;
        stack.produce_sealed(&before).await;

        // Stored before the erase but consumed after it: the key is gone by then, and no
        // process has it cached any more.
        let unread = vec![log.location(ada, 45.0, 50)];
        stack.produce(&unread).await;
        destroy_key(&stack.pool, ada).await;
        stack.cipher.keyring().forget(&ada.to_string());
        // The erase, which has no personal field to seal, then a copy of an earlier
        // message, as a relay that published twice.
        let erased = log.user(
            ada,
            UserEvent::UserErased {
                erased_at: time(60),
            },
        );
        stack.produce_sealed(&[erased, before[2].clone()]).await;
        let total = count(before.len() + 3);

        let read_models = Running::read_models(&stack);
        let analytics = Running::analytics(&stack).await;
        stack
            .wait_until_consumed(read_models::PROJECTION, total)
            .await;
        stack
            .wait_until_consumed(analytics::PROJECTION, total)
            .await;
        let read_counters = read_models.stop().await;
        analytics.stop().await;

        for table in [
            "rm_users",
            "rm_profiles",
            "rm_latest_locations",
            "rm_location_history",
        ] {
            let rows: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE user_id = $1"))
                    .bind(ada)
                    .fetch_one(&stack.pool)
                    .await
                    .unwrap();
            assert_eq!(rows, 0, "{table} rows of the erased user");
        }
        let collection = stack.location_events();
        let documents = |user: Uuid| doc! {"user_id": user.to_string()};
        assert_eq!(collection.count_documents(documents(ada)).await.unwrap(), 0);
        assert_eq!(collection.count_documents(documents(bob)).await.unwrap(), 1);
        assert_eq!(user_row(&stack.pool, bob).await.email, "bob@ais.example");
        // The projections started after the erase, so none of Ada's seven sealed messages
        // (and the copy) could be opened; Bob's two and the erase itself applied.
        assert_eq!(read_counters.erased, 8, "{read_counters:?}");
        assert_eq!(read_counters.applied, 3, "{read_counters:?}");
        assert_eq!(read_counters.undecodable, 0, "{read_counters:?}");
    })
    .await;
}
