//! The read-model rebuild against real servers: PostgreSQL for the event store and the read
//! models, the Kafka-compatible broker for the live projection it is compared with. Each test
//! has its own database and topic prefix, and stores sealed events straight into `events`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use meridian_crypto::testing::TestKeys;
use meridian_crypto::EventCipher;
use meridian_domain::location::LocationEvent;
use meridian_domain::profile::{ImageReference, ProfileEvent};
use meridian_domain::user::{Role, UserEvent};
use meridian_event_log::testing::{settings_for, TestDatabase};
use meridian_event_log::{EventMessage, Settings, StoredEvent};
use meridian_projection_workers::consumer::CounterValues;
use meridian_projection_workers::read_models::rebuild::{
    self, RebuildOptions, RebuildSummary, REBUILD_LOCK_KEY,
};
use meridian_projection_workers::read_models::{self, ReadModelProjection};
use meridian_projection_workers::testing::{seal_messages, store_events};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Maximum wait for the live projection to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(90);
/// Tables a rebuild writes, each with the columns that order its rows.
const READ_MODEL_TABLES: [(&str, &str); 5] = [
    ("rm_users", "user_id"),
    ("rm_profiles", "user_id"),
    ("rm_latest_locations", "user_id"),
    ("rm_location_history", "event_id"),
    ("rm_applied", "aggregate_type, aggregate_id"),
];

/// The servers and names of one test.
struct Stack {
    settings: Settings,
    pool: PgPool,
    producer: FutureProducer,
    /// Seals events as the command service does. The projections get ciphers of their own,
    /// as processes that start after the events were stored.
    sealer: EventCipher,
    keys: Arc<TestKeys>,
}

impl Stack {
    /// Seals and stores [`mixed_history`] for three new users. Returns the log, to extend
    /// the history, the users and the stored events.
    async fn store_mixed_history(&self) -> (EventLog, [Uuid; 3], Vec<EventMessage>) {
        let mut log = EventLog::default();
        let users = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
        let sealed = self.seal(&mixed_history(&mut log, users)).await;
        self.store(&sealed).await;
        (log, users, sealed)
    }

    async fn cipher(&self) -> EventCipher {
        self.keys
            .event_cipher(self.pool.clone())
            .await
            .expect("event cipher")
    }

    /// Seals `messages` and returns them as the event store stores them.
    async fn seal(&self, messages: &[EventMessage]) -> Vec<EventMessage> {
        seal_messages(&self.sealer, messages)
            .await
            .expect("sealing test events")
    }

    async fn store(&self, sealed: &[EventMessage]) {
        store_events(&self.pool, sealed)
            .await
            .expect("storing test events");
    }

    /// Produces sealed `messages` keyed by aggregate id, as the outbox relay does.
    async fn produce(&self, sealed: &[EventMessage]) {
        let topic = self.settings.events_topic();
        let values: Vec<Vec<u8>> = sealed.iter().map(EventMessage::value).collect();
        let sends = sealed.iter().zip(&values).map(|(message, value)| {
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

    async fn rebuild(&self) -> anyhow::Result<RebuildSummary> {
        rebuild::rebuild(
            &self.pool,
            self.cipher().await,
            RebuildOptions::default(),
            CancellationToken::new(),
        )
        .await
    }

    /// Runs the live projection until it consumed `messages` messages in all, then stops it.
    async fn run_live_until(&self, messages: usize) -> CounterValues {
        let projection = ReadModelProjection::new(
            self.settings.clone(),
            self.pool.clone(),
            self.cipher().await,
        );
        let counters = projection.counters();
        let stop = CancellationToken::new();
        let task = tokio::spawn(projection.run(stop.clone()));
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        let expected = i64::try_from(messages).unwrap();
        while self.consumed().await < expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the live projection did not consume {messages} messages in {CATCH_UP_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await
            .expect("projection task")
            .expect("projection failed");
        counters.values()
    }

    /// Returns the sum of the live projection's stored next offsets.
    async fn consumed(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_offsets
             WHERE projection = $1",
        )
        .bind(read_models::PROJECTION)
        .fetch_one(&self.pool)
        .await
        .expect("read projection_offsets")
    }

    /// Returns every read-model table as JSON rows in key order.
    async fn dump(&self) -> Vec<(&'static str, Value)> {
        let mut tables = Vec::new();
        for (table, order) in READ_MODEL_TABLES {
            let rows: Value = sqlx::query_scalar(&format!(
                "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY {order}), '[]') FROM {table} t"
            ))
            .fetch_one(&self.pool)
            .await
            .expect("dump a read-model table");
            tables.push((table, rows));
        }
        tables
    }

    async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }
}

/// Asserts that two dumps hold the same rows, table by table.
fn assert_same_tables(actual: &[(&str, Value)], expected: &[(&str, Value)]) {
    for ((table, actual), (_, expected)) in actual.iter().zip(expected) {
        assert_eq!(actual, expected, "rows of {table}");
    }
}

/// Runs `test` with a fresh database and topic prefix, and drops the database afterwards,
/// also when the test panics.
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

    let outcome = tokio::spawn(test(stack)).await;

    // NOTE: the test topic stays on the broker, because deleting one topic on tansu 0.6.0
    // deletes every topic of the cluster. The unique prefix keeps it out of other tests.
    database.drop_database().await.expect("drop database");
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn connect_stack(database: &TestDatabase) -> anyhow::Result<Stack> {
    let settings = settings_for(database)?;
    meridian_projection_workers::ensure_events_topic(&settings).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka_brokers)
        .set("message.timeout.ms", "60000")
        .create()?;
    let keys = TestKeys::create()?;
    let sealer = keys.event_cipher(database.pool.clone()).await?;
    Ok(Stack {
        settings,
        pool: database.pool.clone(),
        producer,
        sealer,
        keys: Arc::new(keys),
    })
}

fn time(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_593_475_200 + seconds, 0).unwrap()
}

/// Builds stored events, numbering sequences per aggregate and positions globally.
#[derive(Default)]
struct EventLog {
    position: i64,
    sequences: HashMap<(&'static str, Uuid), i64>,
}

impl EventLog {
    fn message<E: cqrs_es::DomainEvent>(
        &mut self,
        aggregate_type: &'static str,
        user_id: Uuid,
        event: E,
    ) -> EventMessage {
        let sequence = self.sequences.entry((aggregate_type, user_id)).or_insert(0);
        *sequence += 1;
        self.position += 1;
        EventMessage::from_stored(StoredEvent {
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: user_id.to_string(),
            sequence: *sequence,
            position: self.position,
            event_type: event.event_type(),
            event_version: event.event_version(),
            // Microseconds, so the commit time survives PostgreSQL's precision.
            stored_at: time(10_000) + chrono::TimeDelta::microseconds(self.position * 1_001),
            payload: serde_json::to_value(&event).unwrap(),
        })
    }

    fn user(&mut self, user_id: Uuid, event: UserEvent) -> EventMessage {
        self.message("User", user_id, event)
    }

    fn profile(&mut self, user_id: Uuid, event: ProfileEvent) -> EventMessage {
        self.message("Profile", user_id, event)
    }

    fn location(&mut self, user_id: Uuid, latitude: f64, seconds: i64) -> EventMessage {
        let event = LocationEvent::LocationRecorded {
            latitude,
            longitude: -74.0 - latitude / 100.0,
            recorded_at: time(seconds),
        };
        self.message("LocationTrack", user_id, event)
    }

    fn registered(&mut self, user_id: Uuid, email: &str) -> EventMessage {
        self.user(
            user_id,
            UserEvent::UserRegistered {
                email: email.to_owned(),
                name: format!("Vessel {email}"),
                password_hash: "$argon2id$hash".to_owned(),
                registered_at: time(0),
            },
        )
    }

    fn erased(&mut self, user_id: Uuid) -> EventMessage {
        self.user(
            user_id,
            UserEvent::UserErased {
                erased_at: time(900),
            },
        )
    }
}

/// A history with every kind of event: registrations, user and profile changes, locations
/// out of time order and with equal times, and a user who is erased at the end.
fn mixed_history(log: &mut EventLog, users: [Uuid; 3]) -> Vec<EventMessage> {
    let [ada, bob, erased] = users;
    let settings = json!({"units": "metric"}).as_object().cloned().unwrap();
    let image = ImageReference::parse("image", "s3://bucket/bob.png", "image/png").unwrap();
    let mut messages = vec![
        log.registered(ada, "Ada@AIS.example"),
        log.registered(bob, "bob@ais.example"),
        log.registered(erased, "cy@ais.example"),
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
        log.profile(ada, ProfileEvent::ProfileSettingsUpdated { settings }),
        log.user(
            bob,
            UserEvent::UserDeactivated {
                deactivated_at: time(5),
            },
        ),
        log.user(
            bob,
            UserEvent::RoleChanged {
                role: Role::Analyst,
            },
        ),
        log.profile(
            bob,
            ProfileEvent::ProfileImageChanged { image: Some(image) },
        ),
        log.location(erased, 41.0, 1),
        log.profile(
            erased,
            ProfileEvent::ProfileSettingsUpdated {
                settings: serde_json::Map::new(),
            },
        ),
    ];
    // Ada's reports arrive out of time order; Bob's last two share a timestamp.
    for (step, seconds) in [30, 10, 50, 20, 40].into_iter().enumerate() {
        messages.push(log.location(ada, 40.0 + step as f64, seconds));
    }
    for (step, seconds) in [5, 15, 15].into_iter().enumerate() {
        messages.push(log.location(bob, 42.0 + step as f64, seconds));
    }
    messages.push(log.erased(erased));
    messages
}

#[tokio::test]
async fn rebuild_matches_live_projection() {
    with_stack(|stack| async move {
        let (_, _, sealed) = stack.store_mixed_history().await;
        // The relay published the user and profile events twice, as after a crash before
        // it deleted their outbox rows.
        let mut published = sealed.clone();
        published.extend(
            sealed
                .iter()
                .filter(|message| message.aggregate_type != "LocationTrack")
                .cloned(),
        );
        stack.produce(&published).await;
        stack.run_live_until(published.len()).await;
        let live = stack.dump().await;
        let offsets = stack.consumed().await;

        let summary = stack.rebuild().await.expect("rebuild");

        assert_same_tables(&stack.dump().await, &live);
        assert_eq!(stack.consumed().await, offsets);
        assert_eq!(summary.events, u64::try_from(sealed.len()).unwrap());
        assert_eq!(summary.users, 2);
        assert_eq!(summary.history_rows, 8);
        assert_eq!(summary.erased_users, 1);
        assert_eq!(stack.count("rm_location_history").await, 8);
    })
    .await;
}

#[tokio::test]
async fn rebuild_replaces_existing_rows() {
    with_stack(|stack| async move {
        stack.store_mixed_history().await;
        stack.rebuild().await.expect("first rebuild");
        let first = stack.dump().await;
        // Rows no event explains, and rows that disagree with the events.
        for statement in [
            "UPDATE rm_users SET name = 'stale', last_sequence = 99",
            "DELETE FROM rm_latest_locations",
            "INSERT INTO rm_location_history VALUES (gen_random_uuid(), gen_random_uuid(), 1, 0, 0, now(), 999)",
            "INSERT INTO rm_applied VALUES ('User', 'nobody', 7)",
        ] {
            sqlx::query(statement).execute(&stack.pool).await.unwrap();
        }

        stack.rebuild().await.expect("second rebuild");

        assert_same_tables(&stack.dump().await, &first);
    })
    .await;
}

#[tokio::test]
async fn failed_rebuild_keeps_old_read_model() {
    with_stack(|stack| async move {
        let (mut log, users, _) = stack.store_mixed_history().await;
        stack.rebuild().await.expect("first rebuild");
        let before = stack.dump().await;
        // The new events are many, so the failing row arrives in a later COPY chunk than
        // the first rows.
        let newer: Vec<EventMessage> = (0..10_000)
            .map(|step| log.location(users[0], if step == 9_000 { 13.0 } else { 1.0 }, step))
            .collect();
        stack.store(&stack.seal(&newer).await).await;
        sqlx::raw_sql(
            "CREATE FUNCTION reject_latitude_13() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.latitude = 13 THEN RAISE EXCEPTION 'latitude 13 rejected'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER reject_latitude_13 BEFORE INSERT ON rm_location_history
             FOR EACH ROW EXECUTE FUNCTION reject_latitude_13();",
        )
        .execute(&stack.pool)
        .await
        .unwrap();

        let error = stack.rebuild().await.expect_err("the rebuild must fail");

        assert!(
            format!("{error:#}").contains("latitude 13 rejected"),
            "{error:#}"
        );
        assert_same_tables(&stack.dump().await, &before);
    })
    .await;
}

#[tokio::test]
async fn cancelled_rebuild_keeps_old_read_model() {
    with_stack(|stack| async move {
        stack.store_mixed_history().await;
        stack.rebuild().await.expect("first rebuild");
        let before = stack.dump().await;
        // Holding a lock on `events` stops the rebuild's reader after the truncation.
        let mut blocker = stack.pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let running = {
            let (pool, cipher, stop) = (stack.pool.clone(), stack.cipher().await, stop.clone());
            tokio::spawn(async move {
                rebuild::rebuild(&pool, cipher, RebuildOptions::default(), stop).await
            })
        };
        wait_for_lock_wait(&stack.pool, "events").await;

        stop.cancel();
        let outcome = running.await.expect("rebuild task");
        blocker.rollback().await.unwrap();

        assert!(outcome.is_err());
        assert_same_tables(&stack.dump().await, &before);
    })
    .await;
}

/// Waits until some session waits for a lock on `table`.
async fn wait_for_lock_wait(pool: &PgPool, table: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_locks
                            WHERE relation = $1::regclass AND NOT granted)",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no session waited for a lock on {table}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn second_rebuild_is_rejected() {
    with_stack(|stack| async move {
        let mut holder = stack.pool.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(REBUILD_LOCK_KEY)
            .execute(&mut *holder)
            .await
            .unwrap();

        let error = stack.rebuild().await.expect_err("the lock is taken");

        assert!(
            format!("{error:#}").contains("another rebuild"),
            "{error:#}"
        );
        holder.rollback().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn live_projection_resumes_after_rebuild() {
    with_stack(|stack| async move {
        let (mut log, users, applied) = stack.store_mixed_history().await;
        stack.produce(&applied).await;
        stack.run_live_until(applied.len()).await;
        // Stored while the projection was stopped, so only the rebuild saw them so far.
        let [ada, bob, _] = users;
        let mut pending = vec![log.user(
            ada,
            UserEvent::NameChanged {
                name: "Ada M".into(),
            },
        )];
        pending.extend((0..20).map(|step| log.location(bob, 43.0, 100 + step)));
        let pending = stack.seal(&pending).await;
        stack.store(&pending).await;
        stack.rebuild().await.expect("rebuild");

        let mut newer = vec![log.user(
            ada,
            UserEvent::NameChanged {
                name: "Ada N".into(),
            },
        )];
        newer.extend((0..5).map(|step| log.location(ada, 44.0, 200 + step)));
        let newer = stack.seal(&newer).await;
        stack.store(&newer).await;
        stack.produce(&pending).await;
        stack.produce(&newer).await;
        let counters = stack
            .run_live_until(applied.len() + pending.len() + newer.len())
            .await;

        assert_eq!(counters.applied, u64::try_from(newer.len()).unwrap());
        assert_eq!(
            counters.already_applied,
            u64::try_from(pending.len()).unwrap()
        );
        assert_eq!(stack.count("rm_location_history").await, 8 + 20 + 5);
        let resumed = stack.dump().await;
        stack.rebuild().await.expect("second rebuild");
        assert_same_tables(&stack.dump().await, &resumed);
    })
    .await;
}

#[tokio::test]
async fn rebuild_command_prints_summary() {
    with_stack(|stack| async move {
        let (_, _, sealed) = stack.store_mixed_history().await;

        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_projection-workers"))
            .arg("rebuild-read-models")
            .env("MERIDIAN_DATABASE_URL", &stack.settings.database_url)
            .envs(stack.keys.env())
            .output()
            .await
            .expect("run projection-workers");

        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        let summary: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(summary["events"], json!(sealed.len()));
        assert_eq!(summary["history_rows"], json!(8));
        assert!(summary["events_per_second"].as_f64().unwrap() > 0.0);
        assert_eq!(stack.count("rm_users").await, 2);
    })
    .await;
}

#[tokio::test]
async fn rebuild_of_a_missing_database_fails() {
    with_stack(|stack| async move {
        let missing = format!("{}_missing", stack.settings.database_url);

        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_projection-workers"))
            .arg("rebuild-read-models")
            .env("MERIDIAN_DATABASE_URL", &missing)
            .envs(stack.keys.env())
            .output()
            .await
            .expect("run projection-workers");

        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("does not exist"), "{stderr}");
        let name = missing.rsplit('/').next().unwrap();
        let created: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(name)
                .fetch_one(&stack.pool)
                .await
                .unwrap();
        assert!(!created, "{name} was created");
    })
    .await;
}
