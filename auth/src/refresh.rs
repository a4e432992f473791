//! Refresh tokens in PostgreSQL, rotated on each use, with reuse detection.
//!
//! A login starts a family. [`RefreshStore::rotate`] marks the presented token used and
//! issues the next one of its family. A token presented a second time means that someone
//! else has a copy, so the whole family is revoked and neither holder can refresh again.
//! Only SHA-256 hashes are stored: the tokens carry 256 random bits, so a hash is enough
//! to make a copy of the table useless.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// Default lifetime of a refresh token: 30 days.
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Marks refresh tokens so they are easy to tell from access tokens and to find in leaks.
const TOKEN_PREFIX: &str = "mrt_";

/// The reason a family was revoked, stored in `auth_refresh_families.revoked_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    Reuse,
    AccountDisabled,
    PasswordChanged,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Reuse => "reuse",
            Self::AccountDisabled => "account_disabled",
            Self::PasswordChanged => "password_changed",
        }
    }
}

/// The reason a refresh token was rejected.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the refresh token is not known")]
    Unknown,
    #[error("the refresh token has expired")]
    Expired,
    #[error("the refresh token's session was revoked")]
    Revoked,
    #[error("the refresh token was already used; its session is now revoked")]
    Reused,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A new refresh token, in the clear: it is shown to the client once and never stored.
pub struct RefreshToken {
    pub token: String,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// The result of a successful rotation.
pub struct Rotated {
    pub user_id: String,
    pub next: RefreshToken,
}

#[derive(Clone)]
pub struct RefreshStore {
    pool: PgPool,
    ttl: Duration,
}

impl RefreshStore {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, ttl }
    }

    /// Starts a family for `user_id` and returns its first token.
    pub async fn start(&self, user_id: &str) -> Result<RefreshToken, RefreshError> {
        let family_id = Uuid::new_v4();
        let mut transaction = self.pool.begin().await?;
        sqlx::query("INSERT INTO auth_refresh_families (family_id, user_id) VALUES ($1, $2)")
            .bind(family_id)
            .bind(user_id)
            .execute(&mut *transaction)
            .await?;
        let token = self.insert_token(&mut transaction, family_id).await?;
        transaction.commit().await?;
        Ok(token)
    }

    /// Uses `token` once: marks it used and returns the next token of its family. A token
    /// that was already used revokes its family.
    pub async fn rotate(&self, token: &str) -> Result<Rotated, RefreshError> {
        let hash = token_hash(token).ok_or(RefreshError::Unknown)?;
        let mut transaction = self.pool.begin().await?;
        // Locking the token row serializes two refreshes with the same token: the second
        // reads `used_at` and revokes the family.
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT t.family_id, t.expires_at, t.used_at, f.user_id, f.revoked_at \
             FROM auth_refresh_tokens t JOIN auth_refresh_families f USING (family_id) \
             WHERE t.token_hash = $1 FOR UPDATE OF t, f",
        )
        .bind(&hash)
        .fetch_optional(&mut *transaction)
        .await?;
        let row = row.ok_or(RefreshError::Unknown)?;
        if row.revoked_at.is_some() {
            return Err(RefreshError::Revoked);
        }
        if row.used_at.is_some() {
            revoke_family(&mut transaction, row.family_id, RevokeReason::Reuse).await?;
            transaction.commit().await?;
            return Err(RefreshError::Reused);
        }
        if row.expires_at <= Utc::now() {
            return Err(RefreshError::Expired);
        }
        sqlx::query("UPDATE auth_refresh_tokens SET used_at = now() WHERE token_hash = $1")
            .bind(&hash)
            .execute(&mut *transaction)
            .await?;
        let next = self.insert_token(&mut transaction, row.family_id).await?;
        transaction.commit().await?;
        Ok(Rotated {
            user_id: row.user_id,
            next,
        })
    }

    /// Revokes the family of `token`, used or not. Returns false when the token is unknown.
    pub async fn revoke(&self, token: &str, reason: RevokeReason) -> Result<bool, RefreshError> {
        let Some(hash) = token_hash(token) else {
            return Ok(false);
        };
        let revoked = sqlx::query(
            "UPDATE auth_refresh_families f SET revoked_at = coalesce(f.revoked_at, now()), \
             revoked_reason = coalesce(f.revoked_reason, $2) \
             FROM auth_refresh_tokens t \
             WHERE t.token_hash = $1 AND t.family_id = f.family_id",
        )
        .bind(&hash)
        .bind(reason.as_str())
        .execute(&self.pool)
        .await?;
        Ok(revoked.rows_affected() > 0)
    }

    /// Revokes the family `family_id`.
    pub async fn revoke_family(
        &self,
        family_id: Uuid,
        reason: RevokeReason,
    ) -> Result<(), RefreshError> {
        let mut transaction = self.pool.begin().await?;
        revoke_family(&mut transaction, family_id, reason).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Revokes every open family of `user_id`, such as when the account is deactivated.
    pub async fn revoke_user(
        &self,
        user_id: &str,
        reason: RevokeReason,
    ) -> Result<u64, RefreshError> {
        let revoked = sqlx::query(
            "UPDATE auth_refresh_families SET revoked_at = now(), revoked_reason = $2 \
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(reason.as_str())
        .execute(&self.pool)
        .await?;
        Ok(revoked.rows_affected())
    }

    async fn insert_token(
        &self,
        transaction: &mut sqlx::PgConnection,
        family_id: Uuid,
    ) -> Result<RefreshToken, RefreshError> {
        let mut secret = [0_u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::days(30));
        let expires_at = Utc::now() + ttl;
        sqlx::query(
            "INSERT INTO auth_refresh_tokens (token_hash, family_id, expires_at) \
             VALUES ($1, $2, $3)",
        )
        .bind(token_hash(&token).expect("a generated token has the prefix"))
        .bind(family_id)
        .bind(expires_at)
        .execute(&mut *transaction)
        .await?;
        Ok(RefreshToken {
            token,
            family_id,
            expires_at,
        })
    }
}

async fn revoke_family(
    transaction: &mut sqlx::PgConnection,
    family_id: Uuid,
    reason: RevokeReason,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE auth_refresh_families SET revoked_at = now(), revoked_reason = $2 \
         WHERE family_id = $1 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(reason.as_str())
    .execute(transaction)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    family_id: Uuid,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
    user_id: String,
    revoked_at: Option<DateTime<Utc>>,
}

/// Returns the stored hash of `token`, or None when it is not shaped like a refresh token.
fn token_hash(token: &str) -> Option<Vec<u8>> {
    let secret = token.strip_prefix(TOKEN_PREFIX)?;
    if secret.len() != 43 || URL_SAFE_NO_PAD.decode(secret).is_err() {
        return None;
    }
    Some(Sha256::digest(token.as_bytes()).to_vec())
}

#[cfg(test)]
mod tests {
    use meridian_event_log::testing::TestDatabase;

    use super::*;

    #[tokio::test]
    async fn rotation_reuse_logout_and_expiry() {
        let database = TestDatabase::create().await.unwrap();
        let store = RefreshStore::new(database.pool.clone(), DEFAULT_REFRESH_TTL);

        let first = store.start("user-1").await.unwrap();
        let second = store.rotate(&first.token).await.unwrap();
        assert_eq!(second.user_id, "user-1");
        assert_eq!(second.next.family_id, first.family_id);
        let third = store.rotate(&second.next.token).await.unwrap();

        // The first token again: reuse revokes the family, so the newest token fails too.
        assert!(matches!(
            store.rotate(&first.token).await,
            Err(RefreshError::Reused)
        ));
        assert!(matches!(
            store.rotate(&third.next.token).await,
            Err(RefreshError::Revoked)
        ));
        let reason: Option<String> = sqlx::query_scalar(
            "SELECT revoked_reason FROM auth_refresh_families WHERE family_id = $1",
        )
        .bind(first.family_id)
        .fetch_one(&database.pool)
        .await
        .unwrap();
        assert_eq!(reason.as_deref(), Some("reuse"));

        // Logout revokes another family; other sessions of the user stay open.
        let session = store.start("user-1").await.unwrap();
        let other = store.start("user-1").await.unwrap();
        assert!(store
            .revoke(&session.token, RevokeReason::Logout)
            .await
            .unwrap());
        assert!(matches!(
            store.rotate(&session.token).await,
            Err(RefreshError::Revoked)
        ));
        store.rotate(&other.token).await.unwrap();

        // Unknown and malformed tokens.
        assert!(matches!(
            store
                .rotate("mrt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .await,
            Err(RefreshError::Unknown)
        ));
        assert!(matches!(
            store.rotate("garbage").await,
            Err(RefreshError::Unknown)
        ));
        assert!(!store.revoke("garbage", RevokeReason::Logout).await.unwrap());

        // Expired.
        let short = RefreshStore::new(database.pool.clone(), Duration::from_millis(1));
        let expiring = short.start("user-2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(
            short.rotate(&expiring.token).await,
            Err(RefreshError::Expired)
        ));

        // Nothing in the table is the token itself.
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM auth_refresh_tokens WHERE encode(token_hash, 'escape') LIKE 'mrt_%'",
        )
        .fetch_one(&database.pool)
        .await
        .unwrap();
        assert_eq!(stored, 0);

        database.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_use_of_one_token_revokes_the_family() {
        let database = TestDatabase::create().await.unwrap();
        let store = RefreshStore::new(database.pool.clone(), DEFAULT_REFRESH_TTL);
        let first = store.start("user-1").await.unwrap();
        let (a, b) = tokio::join!(store.rotate(&first.token), store.rotate(&first.token));
        let outcomes = [a.is_ok(), b.is_ok()];
        assert_eq!(
            outcomes.iter().filter(|ok| **ok).count(),
            1,
            "one rotation wins"
        );
        let winner = a.or(b).unwrap();
        assert!(matches!(
            store.rotate(&winner.next.token).await,
            Err(RefreshError::Revoked)
        ));
        database.drop_database().await.unwrap();
    }

    #[tokio::test]
    async fn revoking_a_user_closes_every_family() {
        let database = TestDatabase::create().await.unwrap();
        let store = RefreshStore::new(database.pool.clone(), DEFAULT_REFRESH_TTL);
        let one = store.start("user-1").await.unwrap();
        let two = store.start("user-1").await.unwrap();
        let keep = store.start("user-2").await.unwrap();
        let revoked = store
            .revoke_user("user-1", RevokeReason::AccountDisabled)
            .await
            .unwrap();
        assert_eq!(revoked, 2);
        for token in [&one.token, &two.token] {
            assert!(matches!(
                store.rotate(token).await,
                Err(RefreshError::Revoked)
            ));
        }
        store.rotate(&keep.token).await.unwrap();
        database.drop_database().await.unwrap();
    }
}
