//! The login, refresh and logout flows against real PostgreSQL and Redis, with accounts
//! held in memory (the command service's tests cover its own account lookup).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use meridian_event_log::testing::TestDatabase;
use uuid::Uuid;

use super::*;
use crate::keys::KeyFile;

#[derive(Default)]
struct MemoryAccounts(Mutex<HashMap<String, (String, Account)>>);

impl MemoryAccounts {
    fn add(&self, email: &str, password: &str, user_id: &str, role: Role) {
        let salt = SaltString::generate(&mut OsRng);
        let password_hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string();
        self.0.lock().unwrap().insert(
            user_id.to_owned(),
            (
                email.to_owned(),
                Account {
                    user_id: user_id.to_owned(),
                    role,
                    password_hash,
                    active: true,
                },
            ),
        );
    }

    fn update(&self, user_id: &str, change: impl FnOnce(&mut Account)) {
        change(&mut self.0.lock().unwrap().get_mut(user_id).unwrap().1);
    }
}

impl Accounts for MemoryAccounts {
    async fn by_email(&self, email: &str) -> anyhow::Result<Option<Account>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .values()
            .find(|(stored, _)| stored == email)
            .map(|(_, account)| account.clone()))
    }

    async fn by_id(&self, user_id: &str) -> anyhow::Result<Option<Account>> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .get(user_id)
            .map(|(_, account)| account.clone()))
    }
}

fn auth(pool: PgPool, limits: Limits) -> Auth {
    let settings = AuthSettings {
        limits,
        ..AuthSettings::from_vars(|_| None).unwrap()
    };
    let keys = Arc::new(KeyStore::fixed(&KeyFile::generate()).unwrap());
    let redis =
        meridian_event_log::settings::var_or("MERIDIAN_REDIS_URL", "redis://127.0.0.1:6379/");
    let prefix = format!("test.{}.", Uuid::new_v4().simple());
    Auth::with_keys(&settings, keys, pool, &redis, &prefix).unwrap()
}

const ADDRESS: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));

#[tokio::test]
async fn login_refresh_and_logout() {
    let database = TestDatabase::create().await.unwrap();
    let auth = auth(database.pool.clone(), Limits::default());
    let accounts = MemoryAccounts::default();
    accounts.add("ada@example.com", "correct horse", "user-1", Role::User);

    let session = auth
        .login(&accounts, "ada@example.com", "correct horse", ADDRESS)
        .await
        .unwrap();
    assert_eq!(session.token_type, "Bearer");
    assert_eq!(session.expires_in, 900);
    let caller = auth.verify(&session.access_token).unwrap();
    assert_eq!(
        caller,
        Caller {
            user_id: "user-1".into(),
            role: Role::User
        }
    );

    // A promotion shows in the access token of the next refresh.
    accounts.update("user-1", |account| account.role = Role::Analyst);
    let refreshed = auth
        .refresh(&accounts, &session.refresh_token)
        .await
        .unwrap();
    assert_eq!(
        auth.verify(&refreshed.access_token).unwrap().role,
        Role::Analyst
    );
    assert_ne!(refreshed.refresh_token, session.refresh_token);

    // Reusing the first refresh token revokes the family, so the second one fails too.
    let reused = auth
        .refresh(&accounts, &session.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(reused.code(), "invalid_refresh_token");
    assert!(reused.to_string().contains("already used"), "{reused}");
    let after = auth
        .refresh(&accounts, &refreshed.refresh_token)
        .await
        .unwrap_err();
    assert!(after.to_string().contains("revoked"), "{after}");

    // Logout ends a session.
    let session = auth
        .login(&accounts, "ada@example.com", "correct horse", ADDRESS)
        .await
        .unwrap();
    auth.logout(&session.refresh_token).await.unwrap();
    auth.logout(&session.refresh_token).await.unwrap();
    let error = auth
        .refresh(&accounts, &session.refresh_token)
        .await
        .unwrap_err();
    assert_eq!(error.status(), http::StatusCode::UNAUTHORIZED);

    // A deactivated account can neither refresh nor log in.
    let session = auth
        .login(&accounts, "ada@example.com", "correct horse", ADDRESS)
        .await
        .unwrap();
    accounts.update("user-1", |account| account.active = false);
    let error = auth
        .refresh(&accounts, &session.refresh_token)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("deactivated"), "{error}");
    let error = auth
        .login(&accounts, "ada@example.com", "correct horse", ADDRESS)
        .await
        .unwrap_err();
    assert!(matches!(error, AuthError::InvalidCredentials));

    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn failed_logins_are_limited_per_account_and_address() {
    let database = TestDatabase::create().await.unwrap();
    let mut limits = Limits::default();
    limits.login_failures_per_account.max = 3;
    limits.login_failures_per_address.max = 5;
    let auth = auth(database.pool.clone(), limits);
    let accounts = MemoryAccounts::default();
    accounts.add("ada@example.com", "correct horse", "user-1", Role::User);
    accounts.add("bob@example.com", "battery staple", "user-2", Role::User);

    for _ in 0..3 {
        let error = auth
            .login(&accounts, "ada@example.com", "wrong", ADDRESS)
            .await
            .unwrap_err();
        assert!(matches!(error, AuthError::InvalidCredentials));
    }
    // The account is locked for now, even with the right password.
    let error = auth
        .login(&accounts, "ada@example.com", "correct horse", ADDRESS)
        .await
        .unwrap_err();
    assert_eq!(error.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert!(error.retry_after_secs().unwrap() > 800);

    // Another account from the same address still works until the address limit.
    auth.login(&accounts, "bob@example.com", "battery staple", ADDRESS)
        .await
        .unwrap();
    for _ in 0..2 {
        auth.login(&accounts, "nobody@example.com", "x", ADDRESS)
            .await
            .unwrap_err();
    }
    let error = auth
        .login(&accounts, "bob@example.com", "battery staple", ADDRESS)
        .await
        .unwrap_err();
    assert!(matches!(error, AuthError::RateLimited { .. }), "{error}");
    // From another address, bob is fine.
    let elsewhere = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    auth.login(&accounts, "bob@example.com", "battery staple", elsewhere)
        .await
        .unwrap();

    database.drop_database().await.unwrap();
}

#[tokio::test]
async fn requests_are_limited_per_address_and_per_user() {
    let database = TestDatabase::create().await.unwrap();
    let mut limits = Limits::default();
    limits.per_address.max = 4;
    limits.per_user.max = 2;
    let auth = auth(database.pool.clone(), limits);
    let ada = Caller {
        user_id: "user-1".into(),
        role: Role::User,
    };
    let bob = Caller {
        user_id: "user-2".into(),
        role: Role::User,
    };
    auth.admit(ADDRESS, Some(&ada)).await.unwrap();
    auth.admit(ADDRESS, Some(&ada)).await.unwrap();
    let error = auth.admit(ADDRESS, Some(&ada)).await.unwrap_err();
    assert!(
        error.to_string().contains("requests by this user"),
        "{error}"
    );
    auth.admit(ADDRESS, Some(&bob)).await.unwrap();
    let error = auth.admit(ADDRESS, Some(&bob)).await.unwrap_err();
    assert!(error.to_string().contains("from this address"), "{error}");
    database.drop_database().await.unwrap();
}

#[test]
fn bearer_header_parsing() {
    assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
    assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
    assert_eq!(bearer_token(b"Basic abc"), None);
    assert_eq!(bearer_token(b"Bearer "), None);
    assert_eq!(bearer_token(b"Bearer"), None);
}

#[test]
fn access_rules() {
    let user = Caller {
        user_id: "u1".into(),
        role: Role::User,
    };
    let admin = Caller {
        user_id: "a".into(),
        role: Role::Admin,
    };
    let analyst = Caller {
        user_id: "n".into(),
        role: Role::Analyst,
    };
    assert!(user.require_access_to("u1", false).is_ok());
    assert_eq!(
        user.require_access_to("u2", true).unwrap_err().code(),
        "forbidden"
    );
    assert!(admin.require_write_access_to("u2").is_ok());
    assert!(analyst.require_access_to("u2", true).is_ok());
    assert!(analyst.require_access_to("u2", false).is_err());
    assert!(analyst.require_write_access_to("n").is_err());
    assert!(user.require_role(&[Role::Admin, Role::Analyst]).is_err());
    assert!(analyst.require_role(&[Role::Admin, Role::Analyst]).is_ok());
}
