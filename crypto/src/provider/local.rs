//! Master keys kept in a JSON file on this machine.
//!
//! The file lists every master key with an id and names the current one:
//!
//! ```json
//! {"current": "mk-…", "keys": [{"id": "mk-…", "key": "<base64, 32 bytes>", "created_at": "…"}]}
//! ```
//!
//! New data keys are wrapped under the current master key. Rotation adds a key, makes it current
//! and rewraps every stored data key; older master keys stay in the file so a key that has not
//! been rewrapped yet still unwraps. A running service that meets an unknown master key id
//! rereads the file once, so it follows a rotation done by `meridian-keys` without a restart.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use anyhow::{bail, Context};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeyProvider, ProviderError, WrappedKey};
use crate::envelope::{DataKey, KEY_LEN};

const NONCE_LEN: usize = 12;

/// Master keys read from a file.
pub struct LocalProvider {
    path: PathBuf,
    file: RwLock<KeyFile>,
    /// Modification time of the file when it was last read.
    modified: Mutex<Option<SystemTime>>,
}

#[derive(Clone, Serialize, Deserialize)]
struct KeyFile {
    current: String,
    keys: Vec<MasterKey>,
}

#[derive(Clone, Serialize, Deserialize)]
struct MasterKey {
    id: String,
    /// Base64 of the 32 key bytes.
    key: String,
    created_at: DateTime<Utc>,
}

impl KeyFile {
    fn new_key() -> MasterKey {
        let mut suffix = [0u8; 4];
        rand::rng().fill_bytes(&mut suffix);
        let now = Utc::now();
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(key.as_mut());
        MasterKey {
            id: format!(
                "mk-{}-{:02x}{:02x}{:02x}{:02x}",
                now.format("%Y%m%dT%H%M%S"),
                suffix[0],
                suffix[1],
                suffix[2],
                suffix[3]
            ),
            key: STANDARD.encode(key.as_ref()),
            created_at: now,
        }
    }

    fn cipher(&self, id: &str) -> Option<Aes256GcmSiv> {
        let entry = self.keys.iter().find(|key| key.id == id)?;
        let bytes = Zeroizing::new(STANDARD.decode(&entry.key).ok()?);
        Aes256GcmSiv::new_from_slice(&bytes).ok()
    }

    fn check(&self, path: &Path) -> anyhow::Result<()> {
        for entry in &self.keys {
            let bytes = Zeroizing::new(STANDARD.decode(&entry.key).with_context(|| {
                format!(
                    "master key {} in {} is not base64",
                    entry.id,
                    path.display()
                )
            })?);
            if bytes.len() != KEY_LEN {
                bail!(
                    "master key {} in {} is {} bytes; master keys are 32 bytes",
                    entry.id,
                    path.display(),
                    bytes.len()
                );
            }
        }
        if !self.keys.iter().any(|key| key.id == self.current) {
            bail!(
                "{} names current master key {:?}, which it does not contain",
                path.display(),
                self.current
            );
        }
        Ok(())
    }
}

impl LocalProvider {
    /// Reads the master key file at `path`.
    pub fn open(path: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let path = path.into();
        let file = read_key_file(&path)?;
        Ok(Self {
            path,
            file: RwLock::new(file),
            modified: Mutex::new(None),
        })
    }

    /// Creates a master key file with one new key. Fails if the file exists, so a key that
    /// wraps stored data is never overwritten.
    pub fn create(path: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let path = path.into();
        if path.exists() {
            bail!(
                "{} already exists; a master key file is never replaced, so pass --if-missing or choose another path",
                path.display()
            );
        }
        let key = KeyFile::new_key();
        let file = KeyFile {
            current: key.id.clone(),
            keys: vec![key],
        };
        write_key_file(&path, &file)?;
        Ok(Self {
            path,
            file: RwLock::new(file),
            modified: Mutex::new(None),
        })
    }

    /// Adds a master key to the file and makes it current; returns its id. Keys already
    /// wrapped stay readable; `meridian-keys rotate` then rewraps them under the new key.
    pub fn add_master_key(&self) -> anyhow::Result<String> {
        let mut file = read_key_file(&self.path)?;
        let key = KeyFile::new_key();
        let id = key.id.clone();
        file.keys.push(key);
        file.current = id.clone();
        write_key_file(&self.path, &file)?;
        *self.file.write().expect("key file lock poisoned") = file;
        Ok(id)
    }

    /// Ids of every master key in the file, oldest first.
    pub fn master_key_ids(&self) -> Vec<String> {
        let file = self.file.read().expect("key file lock poisoned");
        file.keys.iter().map(|key| key.id.clone()).collect()
    }

    /// Returns the cipher of master key `id`, rereading the file once if it is not known yet.
    fn cipher(&self, id: &str) -> Result<Aes256GcmSiv, ProviderError> {
        if let Some(cipher) = self.file.read().expect("key file lock poisoned").cipher(id) {
            return Ok(cipher);
        }
        let reread = read_key_file(&self.path)
            .map_err(|error| ProviderError::Unavailable(format!("{error:#}")))?;
        let cipher = reread.cipher(id);
        *self.file.write().expect("key file lock poisoned") = reread;
        cipher.ok_or_else(|| {
            ProviderError::Rejected(format!("master key {id} is not in {}", self.path.display()))
        })
    }

    /// Rereads the file when another process changed it since it was read, so that a master
    /// key added by `meridian-keys rotate --new-master-key` wraps new keys at once.
    fn follow_file(&self) -> Result<(), ProviderError> {
        let modified = fs::metadata(&self.path)
            .and_then(|metadata| metadata.modified())
            .ok();
        let mut loaded = self.modified.lock().expect("key file lock poisoned");
        if modified.is_some() && modified == *loaded {
            return Ok(());
        }
        let reread = read_key_file(&self.path)
            .map_err(|error| ProviderError::Unavailable(format!("{error:#}")))?;
        *self.file.write().expect("key file lock poisoned") = reread;
        *loaded = modified;
        Ok(())
    }

    fn wrap(&self, key: &DataKey, subject: &str) -> Result<WrappedKey, ProviderError> {
        self.follow_file()?;
        let master_key_id = self
            .file
            .read()
            .expect("key file lock poisoned")
            .current
            .clone();
        let cipher = self.cipher(&master_key_id)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: key.as_bytes(),
                    aad: &wrap_aad(&master_key_id, subject),
                },
            )
            .map_err(|_| ProviderError::Rejected("wrapping a data key failed".to_owned()))?;
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(&sealed);
        Ok(WrappedKey {
            master_key_id,
            ciphertext,
        })
    }
}

#[async_trait]
impl KeyProvider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn current_master_key_id(&self) -> Result<String, ProviderError> {
        self.follow_file()?;
        Ok(self
            .file
            .read()
            .expect("key file lock poisoned")
            .current
            .clone())
    }

    async fn generate(&self, subject: &str) -> Result<(DataKey, WrappedKey), ProviderError> {
        let key = DataKey::generate();
        let wrapped = self.wrap(&key, subject)?;
        Ok((key, wrapped))
    }

    async fn unwrap(&self, wrapped: &WrappedKey, subject: &str) -> Result<DataKey, ProviderError> {
        let cipher = self.cipher(&wrapped.master_key_id)?;
        if wrapped.ciphertext.len() < NONCE_LEN {
            return Err(ProviderError::Rejected(format!(
                "wrapped key of {subject} is {} bytes",
                wrapped.ciphertext.len()
            )));
        }
        let (nonce, sealed) = wrapped.ciphertext.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("12 bytes");
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: sealed,
                        aad: &wrap_aad(&wrapped.master_key_id, subject),
                    },
                )
                .map_err(|_| {
                    ProviderError::Rejected(format!(
                        "wrapped key of {subject} failed authentication under master key {}",
                        wrapped.master_key_id
                    ))
                })?,
        );
        DataKey::from_slice(&plaintext).map_err(|error| ProviderError::Rejected(error.to_string()))
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        subject: &str,
    ) -> Result<WrappedKey, ProviderError> {
        let key = self.unwrap(wrapped, subject).await?;
        self.wrap(&key, subject)
    }
}

fn wrap_aad(master_key_id: &str, subject: &str) -> Vec<u8> {
    let mut aad = b"meridian/local-wrap/v1\0".to_vec();
    aad.extend_from_slice(master_key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(subject.as_bytes());
    aad
}

fn read_key_file(path: &Path) -> anyhow::Result<KeyFile> {
    let text = fs::read_to_string(path).with_context(|| {
        format!(
            "failed to read the master key file {}; create one with `meridian-keys init`",
            path.display()
        )
    })?;
    let file: KeyFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a master key file", path.display()))?;
    file.check(path)?;
    Ok(file)
}

/// Writes the file readable by its owner only, through a temporary file and a rename, so a
/// crash never leaves half a key file.
fn write_key_file(path: &Path, file: &KeyFile) -> anyhow::Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut handle = options
        .open(&temporary)
        .with_context(|| format!("failed to write {}", temporary.display()))?;
    let text = Zeroizing::new(serde_json::to_string_pretty(file)?);
    handle.write_all(text.as_bytes())?;
    handle.sync_all()?;
    fs::rename(&temporary, path)
        .with_context(|| format!("failed to move the new key file to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> (tempfile::TempDir, LocalProvider) {
        let dir = tempfile::tempdir().unwrap();
        let provider = LocalProvider::create(dir.path().join("master.json")).unwrap();
        (dir, provider)
    }

    #[tokio::test]
    async fn generated_key_unwraps_for_its_subject_only() {
        let (_dir, provider) = provider();
        let (key, wrapped) = provider.generate("user:1").await.unwrap();

        let unwrapped = provider.unwrap(&wrapped, "user:1").await.unwrap();
        assert_eq!(unwrapped.as_bytes(), key.as_bytes());
        assert!(matches!(
            provider.unwrap(&wrapped, "user:2").await,
            Err(ProviderError::Rejected(_))
        ));
    }

    #[tokio::test]
    async fn altered_wrapped_key_is_rejected() {
        let (_dir, provider) = provider();
        let (_, wrapped) = provider.generate("user:1").await.unwrap();
        for index in 0..wrapped.ciphertext.len() {
            let mut altered = wrapped.clone();
            altered.ciphertext[index] ^= 0x01;
            assert!(provider.unwrap(&altered, "user:1").await.is_err());
        }
    }

    #[tokio::test]
    async fn rotation_rewraps_without_changing_the_data_key() {
        let (_dir, provider) = provider();
        let (key, wrapped) = provider.generate("user:1").await.unwrap();
        let first = wrapped.master_key_id.clone();

        let second = provider.add_master_key().unwrap();
        assert_ne!(first, second);
        let rewrapped = provider.rewrap(&wrapped, "user:1").await.unwrap();

        assert_eq!(rewrapped.master_key_id, second);
        assert_eq!(
            provider
                .unwrap(&rewrapped, "user:1")
                .await
                .unwrap()
                .as_bytes(),
            key.as_bytes()
        );
        // The old wrapping still unwraps while the old master key is in the file.
        assert_eq!(
            provider
                .unwrap(&wrapped, "user:1")
                .await
                .unwrap()
                .as_bytes(),
            key.as_bytes()
        );
    }

    #[tokio::test]
    async fn another_process_sees_a_rotation_without_restarting() {
        let (dir, rotating) = provider();
        let running = LocalProvider::open(dir.path().join("master.json")).unwrap();
        let (key, wrapped) = rotating.generate("user:1").await.unwrap();

        rotating.add_master_key().unwrap();
        let rewrapped = rotating.rewrap(&wrapped, "user:1").await.unwrap();

        let unwrapped = running.unwrap(&rewrapped, "user:1").await.unwrap();
        assert_eq!(unwrapped.as_bytes(), key.as_bytes());
    }

    #[tokio::test]
    async fn running_provider_wraps_under_a_master_key_added_by_another_process() {
        let (dir, rotating) = provider();
        let running = LocalProvider::open(dir.path().join("master.json")).unwrap();
        let (_, before) = running.generate("user:1").await.unwrap();

        let added = rotating.add_master_key().unwrap();
        let (key, after) = running.generate("user:2").await.unwrap();

        assert_ne!(before.master_key_id, added);
        assert_eq!(after.master_key_id, added);
        assert_eq!(running.current_master_key_id().await.unwrap(), added);
        let unwrapped = rotating.unwrap(&after, "user:2").await.unwrap();
        assert_eq!(unwrapped.as_bytes(), key.as_bytes());
    }

    #[test]
    fn create_rejects_overwrite() {
        let (dir, _provider) = provider();
        let error = LocalProvider::create(dir.path().join("master.json"))
            .err()
            .unwrap();
        assert!(error.to_string().contains("never replaced"), "{error}");
    }

    #[test]
    fn missing_file_names_the_command_that_creates_it() {
        let dir = tempfile::tempdir().unwrap();
        let error = LocalProvider::open(dir.path().join("absent.json"))
            .err()
            .unwrap();
        assert!(
            format!("{error:#}").contains("meridian-keys init"),
            "{error:#}"
        );
    }

    #[test]
    fn file_without_its_current_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.json");
        fs::write(&path, r#"{"current": "mk-x", "keys": []}"#).unwrap();
        let error = LocalProvider::open(&path).err().unwrap();
        assert!(error.to_string().contains("mk-x"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, _provider) = provider();
        let mode = fs::metadata(dir.path().join("master.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
