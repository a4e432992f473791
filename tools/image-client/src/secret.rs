//! The secrets an envelope is sealed with: a passphrase from an environment variable, or a
//! 32-byte user key in a file. Both are wiped from memory when dropped, and neither has a
//! `Debug` output that shows it.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use rand::RngCore;
use zeroize::Zeroizing;

/// Length of a user key file, in bytes.
pub const USER_KEY_LEN: usize = 32;
/// Minimum passphrase length, in characters, for sealing a new envelope.
pub const MIN_PASSPHRASE_CHARS: usize = 8;

/// A reason a secret cannot be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set or is empty")]
    MissingPassphrase(String),
    #[error("environment variable {0} is not valid UTF-8")]
    PassphraseNotUtf8(String),
    #[error("failed to read key file {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} has {length} bytes; a user key has exactly {USER_KEY_LEN}")]
    KeyLength { path: String, length: usize },
    #[error("key file {path} is readable by other users (mode {mode:o}); run chmod 600 {path}")]
    KeyPermissions { path: String, mode: u32 },
    #[error("failed to create key file {path}: {source}")]
    WriteKey {
        path: String,
        source: std::io::Error,
    },
}

/// The secret that derives or unwraps the content key of an envelope.
pub enum Secret {
    /// A passphrase; its UTF-8 bytes, without Unicode normalization, go into PBKDF2.
    Passphrase(Zeroizing<String>),
    /// A user key that wraps a random content key per envelope.
    KeyFile(Zeroizing<[u8; USER_KEY_LEN]>),
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passphrase(_) => formatter.write_str("Secret::Passphrase(<redacted>)"),
            Self::KeyFile(_) => formatter.write_str("Secret::KeyFile(<redacted>)"),
        }
    }
}

impl Secret {
    /// Reads a passphrase from the environment variable `name`.
    pub fn from_env(name: &str) -> Result<Self, SecretError> {
        let value = match std::env::var(name) {
            Ok(value) => Zeroizing::new(value),
            Err(std::env::VarError::NotPresent) => {
                return Err(SecretError::MissingPassphrase(name.to_owned()))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(SecretError::PassphraseNotUtf8(name.to_owned()))
            }
        };
        if value.is_empty() {
            return Err(SecretError::MissingPassphrase(name.to_owned()));
        }
        Ok(Self::Passphrase(value))
    }

    /// Reads a user key file: exactly 32 bytes, readable by its owner only.
    pub fn from_key_file(path: &Path) -> Result<Self, SecretError> {
        let display = path.display().to_string();
        let read_error = |source| SecretError::ReadKey {
            path: display.clone(),
            source,
        };
        check_owner_only(path)?;
        let bytes = Zeroizing::new(fs::read(path).map_err(read_error)?);
        let key: [u8; USER_KEY_LEN] =
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| SecretError::KeyLength {
                    path: display.clone(),
                    length: bytes.len(),
                })?;
        Ok(Self::KeyFile(Zeroizing::new(key)))
    }
}

/// Writes a new random user key to `path` with mode 0600. An existing file is never
/// overwritten, because the images sealed with its key could not be opened any more.
pub fn generate_key_file(path: &Path) -> Result<(), SecretError> {
    let write_error = |source| SecretError::WriteKey {
        path: path.display().to_string(),
        source,
    };
    let mut key = Zeroizing::new([0u8; USER_KEY_LEN]);
    rand::rng().fill_bytes(key.as_mut());

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(write_error)?;
    file.write_all(key.as_ref()).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// Fails when group or others may read or write the file at `path`.
#[cfg(unix)]
fn check_owner_only(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;

    let metadata = fs::metadata(path).map_err(|source| SecretError::ReadKey {
        path: path.display().to_string(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::KeyPermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path) -> Result<(), SecretError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_file_is_private_and_32_bytes() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("user.key");

        generate_key_file(&path).unwrap();

        assert_eq!(fs::read(&path).unwrap().len(), USER_KEY_LEN);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(matches!(
            Secret::from_key_file(&path),
            Ok(Secret::KeyFile(_))
        ));
    }

    #[test]
    fn existing_key_file_is_not_overwritten() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("user.key");
        generate_key_file(&path).unwrap();
        let first = fs::read(&path).unwrap();

        let result = generate_key_file(&path);

        assert!(matches!(result, Err(SecretError::WriteKey { .. })));
        assert_eq!(fs::read(&path).unwrap(), first);
    }

    #[test]
    fn key_file_of_wrong_length_is_rejected() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("short.key");
        write_private(&path, &[1; 31]);

        let result = Secret::from_key_file(&path);

        assert!(matches!(
            result,
            Err(SecretError::KeyLength { length: 31, .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_rejected() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("open.key");
        write_private(&path, &[1; USER_KEY_LEN]);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();

        let result = Secret::from_key_file(&path);

        assert!(matches!(
            result,
            Err(SecretError::KeyPermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let secret = Secret::Passphrase(Zeroizing::new("correct horse".to_owned()));
        let output = format!("{secret:?}");
        assert!(!output.contains("horse"), "{output}");
    }

    fn write_private(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
}
