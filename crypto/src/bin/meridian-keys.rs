//! Administers the master keys that wrap users' data keys.
//!
//! - `init` creates the local master key file.
//! - `rotate` wraps every stored data key again under the provider's current master key.
//! - `status` prints the provider, its current master key and how many keys each master key
//!   wraps.
//!
//! It reads the same settings as the services (`MERIDIAN_DATABASE_URL`, `MERIDIAN_KEY_PROVIDER`
//! and the provider's variables), and applies pending migrations when it connects. It prints
//! its results on standard output and installs no log subscriber.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use meridian_crypto::provider::{KeyProvider, LocalProvider};
use meridian_crypto::settings::ProviderKind;
use meridian_crypto::{KeySettings, Keyring};
use meridian_event_log::{database, Settings};
use sqlx::PgPool;

/// PostgreSQL connections of the tool; it runs one query at a time.
const MAX_CONNECTIONS: u32 = 2;

#[derive(Parser)]
#[command(name = "meridian-keys", about = "Administer Meridian's master keys")]
struct Cli {
    /// Master key file; selects the local provider and overrides MERIDIAN_MASTER_KEY_FILE.
    #[arg(long, global = true, value_name = "PATH")]
    file: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the local master key file with one new master key. Fails if the file exists.
    Init {
        /// Succeed without changing anything when the file exists.
        #[arg(long)]
        if_missing: bool,
    },
    /// Wrap every data key again under the provider's current master key. For KMS, first set
    /// MERIDIAN_KMS_KEY_ID to the new key (in the services too).
    Rotate {
        /// Local provider only: add a new master key to the file and make it current first.
        #[arg(long)]
        new_master_key: bool,
    },
    /// Print the provider, its current master key, and the number of keys per master key.
    Status,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut keys = KeySettings::from_env()?;
    if let Some(file) = cli.file {
        keys.provider = ProviderKind::Local {
            master_key_file: file,
        };
    }

    match cli.command {
        Command::Init { if_missing } => init(&keys, if_missing),
        Command::Rotate { new_master_key } => rotate(&keys, new_master_key).await,
        Command::Status => status(&keys).await,
    }
}

fn init(keys: &KeySettings, if_missing: bool) -> anyhow::Result<()> {
    let ProviderKind::Local { master_key_file } = &keys.provider else {
        bail!(
            "init creates a local master key file, but MERIDIAN_KEY_PROVIDER is kms, \
             whose master key lives in KMS; create the KMS key there instead"
        );
    };
    if if_missing && master_key_file.exists() {
        println!("{} exists; left unchanged", master_key_file.display());
        return Ok(());
    }

    let provider = LocalProvider::create(master_key_file)?;
    let ids = provider.master_key_ids();
    println!(
        "created {} with master key {}",
        master_key_file.display(),
        ids.join(", ")
    );
    Ok(())
}

async fn rotate(keys: &KeySettings, new_master_key: bool) -> anyhow::Result<()> {
    // Connect first, so a database that cannot be reached leaves the key file unchanged.
    let pool = connect().await?;
    let provider: Arc<dyn KeyProvider> = match &keys.provider {
        ProviderKind::Local { master_key_file } => {
            let local = LocalProvider::open(master_key_file)?;
            if new_master_key {
                let id = local.add_master_key()?;
                println!("added master key {id} to {}", master_key_file.display());
            }
            Arc::new(local)
        }
        ProviderKind::Kms(_) if new_master_key => bail!(
            "--new-master-key works with the local provider only; for KMS, create a key, \
             set MERIDIAN_KMS_KEY_ID to it, and run rotate again"
        ),
        ProviderKind::Kms(_) => keys.provider().await?,
    };

    let keyring = Keyring::new(pool.clone(), provider, keys.cache);
    let rotation = keyring.rotate().await.context(
        "key rotation failed; run `meridian-keys rotate`, without --new-master-key, \
             to rewrap the keys left",
    )?;
    let current = keyring.provider().current_master_key_id().await?;
    println!(
        "rewrapped {} user keys and {} system keys under master key {current}",
        rotation.user_keys, rotation.system_keys
    );
    pool.close().await;
    Ok(())
}

async fn status(keys: &KeySettings) -> anyhow::Result<()> {
    let provider = keys.provider().await?;
    let current = provider.current_master_key_id().await?;
    let pool = connect().await?;
    let keyring = Keyring::new(pool.clone(), Arc::clone(&provider), keys.cache);
    let user_keys = keyring.keys_per_master_key().await?;
    let system_keys: Vec<(String, i64)> = sqlx::query_as(
        "SELECT master_key_id, count(*) FROM system_keys GROUP BY master_key_id ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .context("failed to count system keys")?;
    pool.close().await;

    println!("provider: {}", provider.kind());
    if let ProviderKind::Local { master_key_file } = &keys.provider {
        println!("master key file: {}", master_key_file.display());
    }
    println!("current master key: {current}");
    print_counts(&current, &user_keys, &system_keys);
    Ok(())
}

/// Prints one line per master key that wraps a key, current key first.
fn print_counts(current: &str, user_keys: &[(String, i64)], system_keys: &[(String, i64)]) {
    let mut ids: Vec<&str> = vec![current];
    for (id, _) in user_keys.iter().chain(system_keys) {
        if !ids.contains(&id.as_str()) {
            ids.push(id);
        }
    }
    let count = |rows: &[(String, i64)], id: &str| {
        rows.iter()
            .find(|(row_id, _)| row_id == id)
            .map_or(0, |(_, count)| *count)
    };
    let width = ids.iter().map(|id| id.len()).max().unwrap_or(0).max(10);
    println!(
        "{:<width$}  {:>9}  {:>11}",
        "MASTER KEY", "USER KEYS", "SYSTEM KEYS"
    );
    for id in ids {
        println!(
            "{id:<width$}  {:>9}  {:>11}",
            count(user_keys, id),
            count(system_keys, id)
        );
    }
}

/// Connects to the database of `MERIDIAN_DATABASE_URL` and applies pending migrations, as the
/// services do at start-up.
async fn connect() -> anyhow::Result<PgPool> {
    let settings = Settings::from_env()?;
    database::connect(&settings.database_url, MAX_CONNECTIONS).await
}
