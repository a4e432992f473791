//! The keys that sign access tokens.
//!
//! They live in a JSON key file (default [`DEFAULT_KEY_FILE`]) that every service reads:
//!
//! ```json
//! { "active": "k2", "keys": [ { "kid": "k1", "secret": "…", "created_at": "…" },
//!                             { "kid": "k2", "secret": "…", "created_at": "…" } ] }
//! ```
//!
//! Tokens are signed with the active key and carry its id in the `kid` header. A token
//! verifies against any key in the file, so a rotation is: add a key and make it active
//! (`meridian-token-keys rotate`), then, once every token signed with the old key has
//! expired, remove it (`meridian-token-keys retire KID`). Services reread the file when it
//! changes ([`KeyStore::reload_if_changed`]) and when a token names a key they do not know.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Default key file, relative to the working directory, next to the master key file.
pub const DEFAULT_KEY_FILE: &str = ".stack/keys/token-keys.json";

/// Bytes of a generated secret; HS256 wants at least the hash size, 32.
const SECRET_BYTES: usize = 32;

/// Shortest interval between two rereads of the file caused by unknown key ids, so a flood
/// of forged tokens cannot turn into a flood of file reads.
const UNKNOWN_KID_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The key file as stored.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// The id of the key that signs new tokens.
    pub active: String,
    pub keys: Vec<KeyEntry>,
}

/// One key of the file.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyEntry {
    pub kid: String,
    /// The HMAC secret, unpadded base64url of at least 32 bytes.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

// Secrets must not reach logs through a stray `{:?}`.
impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("kid", &self.kid)
            .field("secret", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile")
            .field("active", &self.active)
            .field("keys", &self.keys)
            .finish()
    }
}

impl KeyFile {
    /// Generates a file with one new random key, which is active.
    pub fn generate() -> Self {
        let entry = KeyEntry::generate(&new_kid());
        Self {
            active: entry.kid.clone(),
            keys: vec![entry],
        }
    }

    /// Adds a new random key and makes it active; returns its id.
    pub fn rotate(&mut self) -> String {
        let entry = KeyEntry::generate(&new_kid());
        let kid = entry.kid.clone();
        self.keys.push(entry);
        self.active = kid.clone();
        kid
    }

    /// Removes the key `kid`, which must not be the active one.
    pub fn retire(&mut self, kid: &str) -> anyhow::Result<()> {
        ensure!(
            kid != self.active,
            "key {kid} is active; rotate first, then retire it once its tokens have expired"
        );
        let before = self.keys.len();
        self.keys.retain(|entry| entry.kid != kid);
        ensure!(self.keys.len() < before, "the key file has no key {kid}");
        Ok(())
    }

    /// Checks the file and decodes its secrets.
    pub fn signing_keys(&self) -> anyhow::Result<SigningKeys> {
        let mut decoding = HashMap::with_capacity(self.keys.len());
        let mut active = None;
        for entry in &self.keys {
            ensure!(!entry.kid.is_empty(), "a key has an empty kid");
            let secret = URL_SAFE_NO_PAD
                .decode(entry.secret.trim_end_matches('='))
                .with_context(|| format!("the secret of key {} is not base64url", entry.kid))?;
            ensure!(
                secret.len() >= SECRET_BYTES,
                "the secret of key {} has {} bytes; at least {SECRET_BYTES} are needed",
                entry.kid,
                secret.len()
            );
            if entry.kid == self.active {
                active = Some(
                    EncodingKey::from_secret(&secret)
                        .with_context(|| format!("key {} is not usable", entry.kid))?,
                );
            }
            if decoding
                .insert(
                    entry.kid.clone(),
                    DecodingKey::from_secret(&secret)
                        .with_context(|| format!("key {} is not usable", entry.kid))?,
                )
                .is_some()
            {
                bail!("key {} appears twice", entry.kid);
            }
        }
        let encoding = active
            .with_context(|| format!("the active key {} is not in the key file", self.active))?;
        Ok(SigningKeys {
            active_kid: self.active.clone(),
            encoding,
            decoding,
        })
    }

    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read the token key file {}", path.display()))?;
        let file: Self = serde_json::from_str(&text)
            .with_context(|| format!("the token key file {} is not valid", path.display()))?;
        file.signing_keys()
            .with_context(|| format!("the token key file {} is not valid", path.display()))?;
        Ok(file)
    }

    /// Writes the file to `path` with mode 0600, through a temporary file and a rename so a
    /// service never reads half of it.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        self.signing_keys()?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("failed to create {}", parent.display()))?;
        }
        let temporary = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        write_private(&temporary, text.as_bytes())?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("failed to replace {}", path.display()))?;
        Ok(())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("failed to write {}", path.display()))
}

impl KeyEntry {
    fn generate(kid: &str) -> Self {
        let mut secret = [0_u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        Self {
            kid: kid.to_owned(),
            secret: URL_SAFE_NO_PAD.encode(secret),
            created_at: Utc::now(),
        }
    }
}

/// Generates a key id that sorts by creation time: `k`, the UTC time to the millisecond and
/// four random hex digits, so two keys made in one millisecond still differ.
fn new_kid() -> String {
    format!(
        "k{}-{:04x}",
        Utc::now().format("%Y%m%dT%H%M%S%3f"),
        rand::rng().next_u32() & 0xffff
    )
}

/// The decoded keys of one version of the file.
pub struct SigningKeys {
    active_kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
}

impl SigningKeys {
    pub fn active_kid(&self) -> &str {
        &self.active_kid
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn decoding(&self, kid: &str) -> Option<&DecodingKey> {
        self.decoding.get(kid)
    }
}

/// The current keys, reread from their file when it changes.
pub struct KeyStore {
    path: Option<PathBuf>,
    current: RwLock<Arc<SigningKeys>>,
    modified: Mutex<Option<SystemTime>>,
    last_forced_reload: Mutex<Option<Instant>>,
}

impl KeyStore {
    /// Reads the key file at `path`.
    pub fn open(path: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let path = path.into();
        let file = KeyFile::read(&path)?;
        let modified = modified_time(&path);
        Ok(Self {
            current: RwLock::new(Arc::new(file.signing_keys()?)),
            path: Some(path),
            modified: Mutex::new(modified),
            last_forced_reload: Mutex::new(None),
        })
    }

    /// Keys that never change, for tests.
    pub fn fixed(file: &KeyFile) -> anyhow::Result<Self> {
        Ok(Self {
            current: RwLock::new(Arc::new(file.signing_keys()?)),
            path: None,
            modified: Mutex::new(None),
            last_forced_reload: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<SigningKeys> {
        Arc::clone(&self.current.read().expect("key store lock poisoned"))
    }

    /// Rereads the file when its modification time changed. A file that fails to parse is
    /// logged and the previous keys stay in use.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let modified = modified_time(path);
        {
            let mut last = self.modified.lock().expect("key store lock poisoned");
            if *last == modified {
                return;
            }
            *last = modified;
        }
        self.reload(path);
    }

    /// Rereads the file because a token named a key id that is not loaded, at most once per
    /// second. Returns whether the file was read.
    pub(crate) fn reload_for_unknown_kid(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        {
            let mut last = self
                .last_forced_reload
                .lock()
                .expect("key store lock poisoned");
            if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_RELOAD_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        *self.modified.lock().expect("key store lock poisoned") = modified_time(path);
        self.reload(path);
        true
    }

    fn reload(&self, path: &Path) {
        match KeyFile::read(path).and_then(|file| file.signing_keys()) {
            Ok(keys) => {
                let active = keys.active_kid().to_owned();
                let mut current = self.current.write().expect("key store lock poisoned");
                if current.active_kid() != active {
                    info!(kid = %active, "token signing key changed");
                }
                *current = Arc::new(keys);
            }
            Err(error) => {
                warn!(
                    error = format!("{error:#}"),
                    "keeping the previous token keys"
                );
            }
        }
    }

    /// Checks the file for changes every `interval` until the runtime shuts down.
    pub fn watch(self: &Arc<Self>, interval: Duration) {
        if self.path.is_none() {
            return;
        }
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(store) = store.upgrade() else { return };
                store.reload_if_changed();
            }
        });
    }
}

fn modified_time(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_file_round_trips_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut file = KeyFile::generate();
        file.write(&path).unwrap();
        let first = file.active.clone();
        std::thread::sleep(Duration::from_millis(2));
        let second = file.rotate();
        assert_ne!(first, second);
        file.write(&path).unwrap();
        let read = KeyFile::read(&path).unwrap();
        assert_eq!(read.active, second);
        assert_eq!(read.keys.len(), 2);
        let keys = read.signing_keys().unwrap();
        assert!(keys.decoding(&first).is_some());
        assert_eq!(keys.active_kid(), second);
    }

    #[test]
    fn retiring_the_active_key_is_refused() {
        let mut file = KeyFile::generate();
        let active = file.active.clone();
        let error = file.retire(&active).unwrap_err().to_string();
        assert!(error.contains("is active"), "{error}");
        let error = file.retire("nope").unwrap_err().to_string();
        assert!(error.contains("no key nope"), "{error}");
    }

    #[test]
    fn short_secrets_and_missing_active_keys_are_rejected() {
        let mut file = KeyFile::generate();
        file.keys[0].secret = URL_SAFE_NO_PAD.encode([7_u8; 16]);
        let error = format!("{:#}", file.signing_keys().err().unwrap());
        assert!(error.contains("16 bytes"), "{error}");

        let mut file = KeyFile::generate();
        file.active = "other".into();
        let error = format!("{:#}", file.signing_keys().err().unwrap());
        assert!(error.contains("active key other"), "{error}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let file = KeyFile::generate();
        let printed = format!("{file:?}");
        assert!(!printed.contains(&file.keys[0].secret));
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn store_picks_up_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut file = KeyFile::generate();
        file.write(&path).unwrap();
        let store = KeyStore::open(&path).unwrap();
        let old = store.current().active_kid().to_owned();
        std::thread::sleep(Duration::from_millis(2));
        let new = file.rotate();
        file.write(&path).unwrap();
        assert!(store.reload_for_unknown_kid());
        assert_eq!(store.current().active_kid(), new);
        assert!(store.current().decoding(&old).is_some());
        // A second forced reload within a second is skipped.
        assert!(!store.reload_for_unknown_kid());
    }
}
