//! The command line of `meridian-image` and what each subcommand does.

use std::fs;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use meridian_importer::session::{Credentials, CredentialsError};
use uuid::Uuid;

use crate::envelope::{self, EnvelopeFailure, DEFAULT_PBKDF2_ITERATIONS};
use crate::secret::{self, Secret, SecretError};
use crate::service::{self, HttpFailure, UploadedImage, DEFAULT_COMMAND_URL, DEFAULT_QUERY_URL};

/// Encrypts profile images before they reach Meridian, and decrypts them after download.
/// The server stores only ciphertext, which cannot be decrypted without the passphrase or
/// key file.
#[derive(Debug, Parser)]
#[command(name = "meridian-image", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Encrypt an image file (PNG, JPEG, WebP or GIF) into an envelope file.
    Encrypt {
        /// Image file to encrypt.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Envelope file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        user: UserArg,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        iterations: IterationsArg,
    },
    /// Decrypt an envelope file and check that it contains an image of the declared type.
    Decrypt {
        /// Envelope file to decrypt.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Image file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        user: UserArg,
        #[command(flatten)]
        secret: SecretArgs,
    },
    /// Encrypt an image and upload it as the user's profile image.
    Upload {
        #[command(flatten)]
        user: UserArg,
        /// Image file to encrypt and upload.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        iterations: IterationsArg,
        #[command(flatten)]
        login: LoginArgs,
        /// Base URL of the command service.
        #[arg(long, env = "MERIDIAN_COMMAND_URL", default_value = DEFAULT_COMMAND_URL)]
        command_url: String,
    },
    /// Download the user's current profile image and decrypt it.
    Download {
        #[command(flatten)]
        user: UserArg,
        /// Image file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        secret: SecretArgs,
        #[command(flatten)]
        login: LoginArgs,
        /// Base URL of the command service, where the login goes.
        #[arg(long, env = "MERIDIAN_COMMAND_URL", default_value = DEFAULT_COMMAND_URL)]
        command_url: String,
        /// Base URL of the query service.
        #[arg(long, env = "MERIDIAN_QUERY_URL", default_value = DEFAULT_QUERY_URL)]
        query_url: String,
    },
    /// Write a new random 32-byte user key to a file with mode 0600.
    Keygen {
        /// Key file to create; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct UserArg {
    /// User id; the envelope is bound to it and fails to decrypt for any other user.
    #[arg(long = "user-id", value_name = "UUID")]
    pub user_id: Uuid,
}

/// Exactly one of the two secrets.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SecretArgs {
    /// Name of the environment variable that contains the passphrase.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// File with the 32-byte user key that `keygen` writes.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// The account that uploads or downloads: the image's owner, or an admin.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Email address to log in with.
    #[arg(long, env = "MERIDIAN_EMAIL", value_name = "EMAIL")]
    pub email: String,
    /// File that contains the password (line breaks at its end are ignored).
    #[arg(long, env = "MERIDIAN_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: PathBuf,
}

impl LoginArgs {
    fn load(self) -> Result<Credentials, CredentialsError> {
        Credentials::from_password_file(self.email, &self.password_file)
    }
}

#[derive(Debug, Args)]
pub struct IterationsArg {
    /// PBKDF2-HMAC-SHA256 iterations in passphrase mode, 100000 to 10000000.
    #[arg(long, value_name = "COUNT", default_value_t = DEFAULT_PBKDF2_ITERATIONS)]
    pub iterations: u32,
}

impl SecretArgs {
    fn load(&self) -> Result<Secret, SecretError> {
        match (&self.passphrase_env, &self.key_file) {
            (Some(variable), _) => Secret::from_env(variable),
            (None, Some(path)) => Secret::from_key_file(path),
            // clap's group makes one of the two required.
            (None, None) => Err(SecretError::MissingPassphrase(String::new())),
        }
    }
}

/// A failed subcommand.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeFailure),
    #[error(transparent)]
    Http(#[from] HttpFailure),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("failed to read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("failed to write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("the server declares media type {server:?}, but the envelope declares {envelope:?}")]
    MediaTypeMismatch { server: String, envelope: String },
}

/// Runs a subcommand and returns the line to print on success.
pub async fn run(command: Command) -> Result<String, CliError> {
    match command {
        Command::Encrypt {
            input,
            out,
            user,
            secret,
            iterations,
        } => {
            let image = read(&input)?;
            let sealed =
                envelope::seal(&image, user.user_id, &secret.load()?, iterations.iterations)?;
            write(&out, &sealed)?;
            Ok(format!(
                "encrypted {} ({} bytes) into {} ({} bytes)",
                input.display(),
                image.len(),
                out.display(),
                sealed.len()
            ))
        }
        Command::Decrypt {
            input,
            out,
            user,
            secret,
        } => {
            let sealed = read(&input)?;
            let image = envelope::open(&sealed, user.user_id, &secret.load()?)?;
            write(&out, &image.bytes)?;
            Ok(format!(
                "decrypted {} into {} ({}, {} bytes)",
                input.display(),
                out.display(),
                image.media_type.as_str(),
                image.bytes.len()
            ))
        }
        Command::Upload {
            user,
            input,
            secret,
            iterations,
            login,
            command_url,
        } => {
            let credentials = login.load()?;
            let image = read(&input)?;
            let sealed =
                envelope::seal(&image, user.user_id, &secret.load()?, iterations.iterations)?;
            let session = service::login(&command_url, credentials).await?;
            let uploaded = service::upload(&session, &command_url, user.user_id, sealed).await?;
            Ok(describe_upload(&uploaded))
        }
        Command::Download {
            user,
            out,
            secret,
            login,
            command_url,
            query_url,
        } => {
            let session = service::login(&command_url, login.load()?).await?;
            let downloaded = service::download(&session, &query_url, user.user_id).await?;
            let image = envelope::open(&downloaded.bytes, user.user_id, &secret.load()?)?;
            if downloaded.media_type != image.media_type.as_str() {
                return Err(CliError::MediaTypeMismatch {
                    server: downloaded.media_type,
                    envelope: image.media_type.as_str().to_owned(),
                });
            }
            write(&out, &image.bytes)?;
            Ok(format!(
                "downloaded image {} and wrote {} ({}, {} bytes)",
                downloaded.image_id,
                out.display(),
                image.media_type.as_str(),
                image.bytes.len()
            ))
        }
        Command::Keygen { out } => {
            secret::generate_key_file(&out)?;
            Ok(format!(
                "wrote a new user key to {} (mode 0600); keep a copy, because images \
                 encrypted with it cannot be decrypted without it",
                out.display()
            ))
        }
    }
}

fn describe_upload(uploaded: &UploadedImage) -> String {
    let image = &uploaded.image;
    match uploaded.position {
        Some(position) => format!(
            "stored image {} ({} bytes, {}) at position {position}",
            image.id, image.size_bytes, image.media_type
        ),
        None => format!(
            "image {} ({} bytes, {}) already is the current image; nothing stored",
            image.id, image.size_bytes, image.media_type
        ),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    fs::read(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    fs::write(path, bytes).map_err(|source| CliError::Write {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn passphrase_and_key_file_are_exclusive() {
        let result = Cli::try_parse_from([
            "meridian-image",
            "decrypt",
            "--in",
            "a.sealed",
            "--out",
            "a.png",
            "--user-id",
            "0b5cbd6e-4c3e-4a43-9d1e-2f6b0e1f4a7c",
            "--passphrase-env",
            "PASS",
            "--key-file",
            "user.key",
        ]);
        assert!(result.is_err());
    }

    #[test]
    fn secret_argument_is_required() {
        let result = Cli::try_parse_from([
            "meridian-image",
            "encrypt",
            "--in",
            "a.png",
            "--out",
            "a.sealed",
            "--user-id",
            "0b5cbd6e-4c3e-4a43-9d1e-2f6b0e1f4a7c",
        ]);
        assert!(result.is_err());
    }

    #[test]
    fn download_requires_login() {
        let result = Cli::try_parse_from([
            "meridian-image",
            "download",
            "--out",
            "a.png",
            "--user-id",
            "0b5cbd6e-4c3e-4a43-9d1e-2f6b0e1f4a7c",
            "--key-file",
            "user.key",
        ]);
        let error = result.unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert!(error.to_string().contains("--email"), "{error}");
    }

    #[test]
    fn iterations_default_to_600000() {
        let cli = Cli::try_parse_from([
            "meridian-image",
            "upload",
            "--in",
            "a.png",
            "--user-id",
            "0b5cbd6e-4c3e-4a43-9d1e-2f6b0e1f4a7c",
            "--key-file",
            "user.key",
            "--email",
            "owner@example.com",
            "--password-file",
            "password",
        ])
        .unwrap();
        let Command::Upload { iterations, .. } = cli.command else {
            panic!("expected upload, got {:?}", cli.command);
        };
        assert_eq!(iterations.iterations, 600_000);
    }
}
