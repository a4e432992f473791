//! Password hashing and checking with argon2id and the `argon2` crate's default parameters.
//!
//! One hash or check fills 19 MiB of memory (the default memory cost of 19,456 KiB) and
//! takes tens of milliseconds of CPU, so both run on the blocking thread pool, at most one
//! per CPU at a time. Without that bound, 64 concurrent registrations hashed at once, and
//! the command service's resident memory grew from 14 MB to 1.7 GB. Further requests wait
//! for a permit instead.

use std::num::NonZero;
use std::sync::LazyLock;

use anyhow::{anyhow, Context};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Semaphore;
use uuid::Uuid;

/// Hashes and checks that may run at once: one per CPU.
static PERMITS: LazyLock<Semaphore> = LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(1, NonZero::get);
    Semaphore::new(cpus)
});

/// An argon2id hash of a random password, checked when the account does not exist so that
/// a wrong email costs as long as a wrong password.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(Uuid::new_v4().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .unwrap_or_default()
});

/// Hashes `password` with a new random salt. Returns a PHC string.
pub async fn hash(password: String) -> anyhow::Result<String> {
    bounded(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| anyhow!("failed to hash a password: {error}"))
    })
    .await
    .context("password hashing task failed")?
}

/// Checks `password` against `hash`, or against a dummy hash when there is none, so that
/// the time taken does not reveal whether an account exists. True only for a known hash
/// that matches.
pub async fn verify(hash: Option<String>, password: String) -> anyhow::Result<bool> {
    let known = hash.is_some();
    let verified = bounded(move || {
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
    .await
    .context("password check task failed")?;
    Ok(known && verified)
}

/// Runs `work` on the blocking pool once a permit is free.
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let _permit = PERMITS
        .acquire()
        .await
        .expect("the password semaphore is never closed");
    tokio::task::spawn_blocking(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_and_verifies() {
        let hash = hash("correct horse battery".into()).await.unwrap();

        assert!(hash.starts_with("$argon2id$"));
        assert!(verify(Some(hash.clone()), "correct horse battery".into())
            .await
            .unwrap());
        assert!(!verify(Some(hash), "wrong horse battery".into())
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn unknown_account_never_verifies() {
        assert!(!verify(None, String::new()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_run_one_per_cpu_at_most() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let cpus = std::thread::available_parallelism().map_or(1, NonZero::get);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..cpus + 3)
            .map(|_| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(bounded(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    running.fetch_sub(1, Ordering::SeqCst);
                }))
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }

        assert!(most.load(Ordering::SeqCst) <= cpus);
        assert!(most.load(Ordering::SeqCst) >= 1);
    }
}
