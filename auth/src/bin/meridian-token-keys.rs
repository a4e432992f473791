//! Administers the key file that signs access tokens.
//!
//! - `init` creates the file with one key.
//! - `rotate` adds a key and makes it the one that signs; the old keys still verify.
//! - `retire KID` removes a key once every token it signed has expired (15 minutes by default).
//! - `list` prints each key id, its creation time and which one is active; never a secret.
//!
//! The file is `MERIDIAN_TOKEN_KEY_FILE` (default `.stack/keys/token-keys.json`) or `--file`.
//! Running services reread it within five seconds of a change.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, Subcommand};
use meridian_auth::keys::{KeyFile, DEFAULT_KEY_FILE};

#[derive(Parser)]
#[command(
    name = "meridian-token-keys",
    about = "Administer Meridian's token signing keys"
)]
struct Cli {
    /// The key file.
    #[arg(long, global = true, env = "MERIDIAN_TOKEN_KEY_FILE", default_value = DEFAULT_KEY_FILE)]
    file: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the key file with one new key. Fails if the file exists.
    Init {
        /// Succeed without changing anything when the file exists.
        #[arg(long)]
        if_missing: bool,
    },
    /// Add a new key and make it active.
    Rotate,
    /// Remove the key KID, which must not be active.
    Retire { kid: String },
    /// Print the key ids.
    List,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let path = cli.file;
    match cli.command {
        Command::Init { if_missing } => {
            if path.exists() {
                if if_missing {
                    return Ok(());
                }
                bail!("{} exists; use rotate to add a key", path.display());
            }
            let file = KeyFile::generate();
            file.write(&path)?;
            println!("created {} with key {}", path.display(), file.active);
        }
        Command::Rotate => {
            let mut file = KeyFile::read(&path)?;
            let kid = file.rotate();
            file.write(&path)?;
            println!("key {kid} now signs new tokens");
        }
        Command::Retire { kid } => {
            let mut file = KeyFile::read(&path)?;
            file.retire(&kid)?;
            file.write(&path)?;
            println!("removed key {kid}");
        }
        Command::List => {
            let file = KeyFile::read(&path)?;
            for entry in &file.keys {
                let marker = if entry.kid == file.active {
                    "active"
                } else {
                    "verifies"
                };
                println!("{}\t{}\t{marker}", entry.kid, entry.created_at.to_rfc3339());
            }
        }
    }
    Ok(())
}
