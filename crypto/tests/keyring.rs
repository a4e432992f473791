//! The key ring against a real PostgreSQL, once with the local provider and once with KMS
//! (moto on 127.0.0.1:4566, started by `make up`). Every test creates its own database and
//! master key, so the tests run in parallel.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use meridian_crypto::cache::CachePolicy;
use meridian_crypto::envelope::DataKey;
use meridian_crypto::keyring::Rotation;
use meridian_crypto::provider::{KeyProvider, ProviderError, WrappedKey};
use meridian_crypto::KeyError;
use serde_json::{json, Value};
use support::{new_user_id, outlive, Fixture, Kind};

/// Runs each scenario below once per provider, as `local::NAME` and `kms::NAME`.
macro_rules! for_both_providers {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Local).await;
                }
            )*
        }
        mod kms {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Kms).await;
                }
            )*
        }
    };
}

for_both_providers!(
    key_is_created_once_and_stable,
    concurrent_first_writes_share_one_key,
    sealed_event_opens_with_a_fresh_keyring,
    rotation_rewraps_every_key,
    erased_user_has_no_key,
    wrapped_key_of_another_user_is_rejected,
    cache_expires_after_its_time_to_live,
    cache_expires_after_max_uses,
    blind_index_key_is_shared,
);

fn registered(email: &str, name: &str) -> Value {
    json!({"UserRegistered": {
        "email": email,
        "name": name,
        "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        "registered_at": "2026-12-04T10:00:00Z"
    }})
}

fn located(latitude: f64, longitude: f64) -> Value {
    json!({"LocationRecorded": {
        "latitude": latitude,
        "longitude": longitude,
        "recorded_at": "2026-12-04T10:00:00Z"
    }})
}

async fn key_is_created_once_and_stable(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let user = new_user_id();

    let first = fixture.keyring();
    let keys = first.for_writing(&user).await.unwrap();
    let sealed = keys.fields.seal("test.value", b"stable").unwrap();
    let stored = fixture.wrapped_key(&user).await.expect("a stored key");

    // A keyring with an empty cache loads the stored key instead of creating another.
    let second = fixture.keyring();
    let reloaded = second.for_writing(&user).await.unwrap();
    assert_eq!(
        reloaded.fields.open("test.value", &sealed).unwrap(),
        b"stable"
    );
    assert_eq!(fixture.wrapped_key(&user).await, Some(stored));
    assert_eq!(fixture.user_key_masters().await.len(), 1);

    fixture.finish().await;
}

async fn concurrent_first_writes_share_one_key(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let user = new_user_id();

    // Half the tasks share one keyring, as in one process; the others each have their own,
    // as separate processes do.
    let shared = Arc::new(fixture.keyring());
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..8 {
        let keyring = if index % 2 == 0 {
            Arc::clone(&shared)
        } else {
            Arc::new(fixture.keyring())
        };
        let user = user.clone();
        tasks.spawn(async move {
            let keys = keyring.for_writing(&user).await.unwrap();
            let plaintext = format!("task {index}");
            let sealed = keys
                .fields
                .seal("test.value", plaintext.as_bytes())
                .unwrap();
            (plaintext, sealed)
        });
    }
    let sealed = tasks.join_all().await;

    assert_eq!(fixture.user_key_masters().await.len(), 1);
    let keys = fixture.keyring().for_reading(&user).await.unwrap();
    for (plaintext, sealed) in sealed {
        let opened = keys.fields.open("test.value", &sealed);
        assert_eq!(opened.as_deref(), Ok(plaintext.as_bytes()), "{plaintext}");
    }

    fixture.finish().await;
}

async fn sealed_event_opens_with_a_fresh_keyring(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let user = new_user_id();
    let events = [
        (
            "UserRegistered",
            registered("ada@example.com", "Ada Lovelace"),
        ),
        ("LocationRecorded", located(40.689247, -74.044502)),
    ];

    let writer = fixture.cipher();
    let mut sealed = Vec::new();
    for (event_type, payload) in &events {
        let mut stored = payload.clone();
        writer
            .seal_event(&user, event_type, &mut stored)
            .await
            .unwrap();
        sealed.push(stored);
    }
    let text = serde_json::to_string(&sealed).unwrap();
    for plaintext in ["ada@example.com", "Ada Lovelace", "40.689247", "-74.044502"] {
        assert!(
            !text.contains(plaintext),
            "{plaintext} is stored in the clear"
        );
    }

    let reader = fixture.cipher();
    for ((event_type, payload), mut stored) in events.iter().zip(sealed) {
        reader
            .open_event(&user, event_type, &mut stored)
            .await
            .unwrap();
        assert_eq!(&stored, payload, "{event_type}");
    }

    fixture.finish().await;
}

async fn rotation_rewraps_every_key(kind: Kind) {
    let mut fixture = Fixture::new(kind).await;
    let users: Vec<String> = (0..3).map(|_| new_user_id()).collect();
    let writer = fixture.cipher();
    let mut sealed = Vec::new();
    for (index, user) in users.iter().enumerate() {
        let mut payload = located(f64::from(index as u8), 1.5);
        writer
            .seal_event(user, "LocationRecorded", &mut payload)
            .await
            .unwrap();
        sealed.push(payload);
    }
    let email_index = writer.email_index("ada@example.com").await.unwrap();
    let old_master = writer
        .keyring()
        .provider()
        .current_master_key_id()
        .await
        .unwrap();
    let wrapped_before = fixture.wrapped_key(&users[0]).await.unwrap();
    // Created before the rotation, but used only after it, so it must unwrap the rewrapped
    // keys with a provider configured for the old master key.
    let before = fixture.cipher();

    let new_master = fixture.new_master_key().await;
    assert_ne!(new_master, old_master);
    let rotation = fixture.keyring().rotate().await.unwrap();

    assert_eq!(
        rotation,
        Rotation {
            user_keys: 3,
            system_keys: 1
        }
    );
    assert_eq!(
        fixture.user_key_masters().await,
        vec![new_master.clone(); 3]
    );
    assert_eq!(fixture.system_key_masters().await, vec![new_master.clone()]);
    let wrapped_after = fixture.wrapped_key(&users[0]).await.unwrap();
    assert_ne!(wrapped_after.1, wrapped_before.1);

    for cipher in [fixture.cipher(), before] {
        for (index, (user, stored)) in users.iter().zip(&sealed).enumerate() {
            let mut payload = stored.clone();
            cipher
                .open_event(user, "LocationRecorded", &mut payload)
                .await
                .unwrap();
            assert_eq!(payload, located(f64::from(index as u8), 1.5));
        }
        let index = cipher.email_index("ada@example.com").await.unwrap();
        assert_eq!(index, email_index);
    }

    let again = fixture.keyring().rotate().await.unwrap();
    assert_eq!(
        again,
        Rotation::default(),
        "a second rotation rewraps nothing"
    );

    fixture.finish().await;
}

async fn erased_user_has_no_key(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let user = new_user_id();
    let other = new_user_id();
    let cipher = fixture.cipher();
    let mut stored = registered("grace@example.com", "Grace Hopper");
    cipher
        .seal_event(&user, "UserRegistered", &mut stored)
        .await
        .unwrap();
    cipher.keyring().for_writing(&other).await.unwrap();

    // What the event store's trigger does for a UserErased event.
    let mut transaction = fixture.database.pool.begin().await.unwrap();
    sqlx::query("INSERT INTO erased_users (user_id) VALUES ($1)")
        .bind(&user)
        .execute(&mut *transaction)
        .await
        .unwrap();
    sqlx::query("DELETE FROM user_keys WHERE user_id = $1")
        .bind(&user)
        .execute(&mut *transaction)
        .await
        .unwrap();
    transaction.commit().await.unwrap();

    let keyring = fixture.keyring();
    let reading = keyring.for_reading(&user).await.err();
    assert!(matches!(reading, Some(KeyError::Erased(_))), "{reading:?}");
    let writing = keyring.for_writing(&user).await.err();
    assert!(matches!(writing, Some(KeyError::Erased(_))), "{writing:?}");
    assert_eq!(
        fixture.wrapped_key(&user).await,
        None,
        "a key was created again"
    );

    // The writer has the key cached until it forgets it.
    cipher.keyring().forget(&user);
    let opened = cipher
        .open_event(&user, "UserRegistered", &mut stored)
        .await;
    assert!(
        opened.as_ref().is_err_and(|error| error.is_erased()),
        "{opened:?}"
    );
    assert!(
        keyring.for_reading(&other).await.is_ok(),
        "another user was affected"
    );

    fixture.finish().await;
}

async fn wrapped_key_of_another_user_is_rejected(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let victim = new_user_id();
    let thief = new_user_id();
    let keyring = fixture.keyring();
    keyring.for_writing(&victim).await.unwrap();
    keyring.for_writing(&thief).await.unwrap();

    sqlx::query(
        "UPDATE user_keys SET master_key_id = source.master_key_id, \
         wrapped_key = source.wrapped_key \
         FROM user_keys AS source \
         WHERE user_keys.user_id = $1 AND source.user_id = $2",
    )
    .bind(&thief)
    .bind(&victim)
    .execute(&fixture.database.pool)
    .await
    .unwrap();

    let loaded = fixture.keyring().for_reading(&thief).await.err();
    assert!(
        matches!(loaded, Some(KeyError::Provider(ProviderError::Rejected(_)))),
        "{loaded:?}"
    );
    assert!(fixture.keyring().for_reading(&victim).await.is_ok());

    fixture.finish().await;
}

/// A provider that counts the unwraps it passes on to the real one.
struct CountingProvider {
    inner: Arc<dyn KeyProvider>,
    unwraps: AtomicUsize,
}

impl CountingProvider {
    fn new(inner: Arc<dyn KeyProvider>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            unwraps: AtomicUsize::new(0),
        })
    }

    fn unwraps(&self) -> usize {
        self.unwraps.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl KeyProvider for CountingProvider {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn current_master_key_id(&self) -> Result<String, ProviderError> {
        self.inner.current_master_key_id().await
    }

    async fn generate(&self, subject: &str) -> Result<(DataKey, WrappedKey), ProviderError> {
        self.inner.generate(subject).await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, subject: &str) -> Result<DataKey, ProviderError> {
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(wrapped, subject).await
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        subject: &str,
    ) -> Result<WrappedKey, ProviderError> {
        self.inner.rewrap(wrapped, subject).await
    }
}

async fn cache_expires_after_its_time_to_live(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let user = new_user_id();
    fixture.keyring().for_writing(&user).await.unwrap();
    let counting = CountingProvider::new(fixture.provider());
    let policy = CachePolicy {
        time_to_live: Duration::from_millis(300),
        max_uses: 1_000_000,
    };
    let keyring = fixture.keyring_with(counting.clone(), policy);

    for _ in 0..5 {
        keyring.for_reading(&user).await.unwrap();
    }
    assert_eq!(counting.unwraps(), 1, "reads within the time-to-live");

    outlive(policy.time_to_live).await;
    keyring.for_reading(&user).await.unwrap();
    assert_eq!(counting.unwraps(), 2, "first read after the time-to-live");

    fixture.finish().await;
}

async fn cache_expires_after_max_uses(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let user = new_user_id();
    fixture.keyring().for_writing(&user).await.unwrap();
    let counting = CountingProvider::new(fixture.provider());
    let policy = CachePolicy {
        time_to_live: Duration::from_secs(3600),
        max_uses: 3,
    };
    let keyring = fixture.keyring_with(counting.clone(), policy);

    let mut unwraps = Vec::new();
    for _ in 0..7 {
        keyring.for_reading(&user).await.unwrap();
        unwraps.push(counting.unwraps());
    }
    // The read that loads a key counts as its first use.
    assert_eq!(unwraps, [1, 1, 1, 2, 2, 2, 3]);

    fixture.finish().await;
}

async fn blind_index_key_is_shared(kind: Kind) {
    let fixture = Fixture::new(kind).await;
    let first = fixture.keyring();
    let second = fixture.keyring();

    // Both create the key at once; the one stored first wins for both.
    let (first_index, second_index) = tokio::join!(first.blind_index(), second.blind_index());
    let email = "Ada@Example.com";
    assert_eq!(
        first_index.unwrap().email(email),
        second_index.unwrap().email(email)
    );
    assert_eq!(fixture.system_key_masters().await.len(), 1);

    let later = fixture.keyring();
    assert_eq!(
        later.blind_index().await.unwrap().email(email),
        first.blind_index().await.unwrap().email(email)
    );

    fixture.finish().await;
}
