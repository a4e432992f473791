//! Unwrapped keys kept in memory for a limited time and a limited number of uses.
//!
//! Unwrapping costs a KMS round trip, so keys are cached; but a key that lives in memory
//! forever outlives an erase performed by another process and widens what a memory dump
//! exposes. Each entry therefore expires after a time-to-live or a number of uses,
//! whichever comes first, and the next use unwraps the key again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// When a cached key must be unwrapped again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub time_to_live: Duration,
    pub max_uses: u64,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            time_to_live: Duration::from_secs(300),
            max_uses: 100_000,
        }
    }
}

struct Entry<T> {
    value: Arc<T>,
    loaded_at: Instant,
    uses: u64,
}

/// A map from subject to unwrapped key that forgets entries by [`CachePolicy`].
pub struct KeyCache<T> {
    policy: CachePolicy,
    entries: Mutex<HashMap<String, Entry<T>>>,
}

impl<T> KeyCache<T> {
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the cached key of `subject` and counts one use, or `None` when there is none
    /// or it has expired.
    pub fn get(&self, subject: &str) -> Option<Arc<T>> {
        self.get_at(subject, Instant::now())
    }

    fn get_at(&self, subject: &str, now: Instant) -> Option<Arc<T>> {
        let mut entries = self.entries.lock().expect("key cache lock poisoned");
        let entry = entries.get_mut(subject)?;
        let expired = now.duration_since(entry.loaded_at) >= self.policy.time_to_live
            || entry.uses >= self.policy.max_uses;
        if expired {
            entries.remove(subject);
            return None;
        }
        entry.uses += 1;
        Some(Arc::clone(&entry.value))
    }

    /// Caches `value` for `subject`, counting the caller's use of it.
    pub fn insert(&self, subject: &str, value: Arc<T>) {
        self.insert_at(subject, value, Instant::now());
    }

    fn insert_at(&self, subject: &str, value: Arc<T>, now: Instant) {
        let mut entries = self.entries.lock().expect("key cache lock poisoned");
        // Drop expired entries now and then, so subjects seen once do not pile up.
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            let ttl = self.policy.time_to_live;
            entries.retain(|_, entry| now.duration_since(entry.loaded_at) < ttl);
        }
        entries.insert(
            subject.to_owned(),
            Entry {
                value,
                loaded_at: now,
                uses: 1,
            },
        );
    }

    /// Forgets the key of `subject`, as an erase does.
    pub fn remove(&self, subject: &str) {
        self.entries
            .lock()
            .expect("key cache lock poisoned")
            .remove(subject);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("key cache lock poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl_secs: u64, max_uses: u64) -> KeyCache<u32> {
        KeyCache::new(CachePolicy {
            time_to_live: Duration::from_secs(ttl_secs),
            max_uses,
        })
    }

    #[test]
    fn entry_expires_after_its_time_to_live() {
        let cache = cache(10, 100);
        let start = Instant::now();
        cache.insert_at("user:1", Arc::new(7), start);

        assert_eq!(
            cache
                .get_at("user:1", start + Duration::from_secs(9))
                .as_deref(),
            Some(&7)
        );
        assert!(cache
            .get_at("user:1", start + Duration::from_secs(10))
            .is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn entry_expires_after_its_maximum_uses() {
        let cache = cache(60, 3);
        let now = Instant::now();
        cache.insert_at("user:1", Arc::new(7), now);

        assert!(cache.get_at("user:1", now).is_some());
        assert!(cache.get_at("user:1", now).is_some());
        assert!(
            cache.get_at("user:1", now).is_none(),
            "the insert counted as the first use"
        );
    }

    #[test]
    fn removed_entry_is_gone() {
        let cache = cache(60, 100);
        cache.insert("user:1", Arc::new(7));
        cache.insert("user:2", Arc::new(8));
        cache.remove("user:1");
        assert!(cache.get("user:1").is_none());
        assert_eq!(cache.get("user:2").as_deref(), Some(&8));
    }
}
