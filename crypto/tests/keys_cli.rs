//! The `meridian-keys` binary, run as an operator runs it, against a test database and a
//! local key file or moto.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use meridian_crypto::provider::{KeyProvider, LocalProvider};
use serde_json::json;
use support::{kms_endpoint, new_user_id, Fixture, Kind};

/// Variables of the key settings, removed so that the caller's environment cannot leak in.
const KEY_VARIABLES: &[&str] = &[
    "MERIDIAN_KEY_PROVIDER",
    "MERIDIAN_MASTER_KEY_FILE",
    "MERIDIAN_KMS_ENDPOINT",
    "MERIDIAN_KMS_REGION",
    "MERIDIAN_KMS_KEY_ID",
    "MERIDIAN_KEY_CACHE_TTL_SECS",
    "MERIDIAN_KEY_CACHE_MAX_USES",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

fn meridian_keys(database_url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meridian-keys"));
    for name in KEY_VARIABLES {
        command.env_remove(name);
    }
    command.env("MERIDIAN_DATABASE_URL", database_url);
    command.envs(env.iter().copied());
    command.args(args);
    command.output().expect("run meridian-keys")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn local_env(path: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("MERIDIAN_KEY_PROVIDER", "local".to_owned()),
        ("MERIDIAN_MASTER_KEY_FILE", path.display().to_string()),
    ]
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect()
}

/// Parses the counts that `status` printed for `master_key_id`: `(user keys, system keys)`.
fn status_counts(status: &str, master_key_id: &str) -> Option<(u64, u64)> {
    status.lines().find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        match columns.as_slice() {
            [id, users, systems] if *id == master_key_id => {
                Some((users.parse().ok()?, systems.parse().ok()?))
            }
            _ => None,
        }
    })
}

#[tokio::test]
async fn init_creates_the_key_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys").join("master-keys.json");
    let file = path.display().to_string();
    // init touches no database; this URL is never used.
    let database_url = "postgres://postgres@127.0.0.1:5432/unused";

    let created = meridian_keys(database_url, &[], &["init", "--file", &file]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("created"), "{}", stdout(&created));
    let contents = std::fs::read(&path).unwrap();
    assert!(LocalProvider::open(&path).is_ok());

    let again = meridian_keys(database_url, &[], &["init", "--file", &file]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));

    let if_missing = meridian_keys(
        database_url,
        &[("MERIDIAN_MASTER_KEY_FILE", &file)],
        &["init", "--if-missing"],
    );
    assert!(if_missing.status.success(), "{}", stderr(&if_missing));
    assert_eq!(std::fs::read(&path).unwrap(), contents, "the file changed");
}

#[tokio::test]
async fn init_with_the_kms_provider_is_rejected() {
    let output = meridian_keys(
        "postgres://postgres@127.0.0.1:5432/unused",
        &[
            ("MERIDIAN_KEY_PROVIDER", "kms"),
            ("MERIDIAN_KMS_KEY_ID", "alias/meridian"),
        ],
        &["init"],
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("KMS"), "{}", stderr(&output));
}

#[tokio::test]
async fn kms_without_key_id_is_rejected() {
    let output = meridian_keys(
        "postgres://postgres@127.0.0.1:5432/unused",
        &[("MERIDIAN_KEY_PROVIDER", "kms")],
        &["status"],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("MERIDIAN_KMS_KEY_ID"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test]
async fn local_rotation_rewraps_every_key() {
    let fixture = Fixture::new(Kind::Local).await;
    let path = fixture.key_file().unwrap().to_owned();
    let env = local_env(&path);
    let cipher = fixture.cipher();
    let user = new_user_id();
    let original = json!({"NameChanged": {"name": "Ada Lovelace"}});
    let mut stored = original.clone();
    cipher
        .seal_event(&user, "NameChanged", &mut stored)
        .await
        .unwrap();
    cipher.keyring().for_writing(&new_user_id()).await.unwrap();
    cipher.email_index("ada@example.com").await.unwrap();
    let old_master = LocalProvider::open(&path)
        .unwrap()
        .current_master_key_id()
        .await
        .unwrap();

    let rotated = meridian_keys(
        &fixture.database.url,
        &borrowed(&env),
        &["rotate", "--new-master-key"],
    );
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert!(
        stdout(&rotated).contains("rewrapped 2 user keys and 1 system keys"),
        "{}",
        stdout(&rotated)
    );

    let new_master = LocalProvider::open(&path)
        .unwrap()
        .current_master_key_id()
        .await
        .unwrap();
    assert_ne!(new_master, old_master);
    assert_eq!(
        fixture.user_key_masters().await,
        vec![new_master.clone(); 2]
    );
    assert_eq!(fixture.system_key_masters().await, vec![new_master.clone()]);
    let mut opened = stored.clone();
    fixture
        .cipher()
        .open_event(&user, "NameChanged", &mut opened)
        .await
        .unwrap();
    assert_eq!(opened, original);

    let status = meridian_keys(&fixture.database.url, &borrowed(&env), &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let printed = stdout(&status);
    assert!(printed.contains("provider: local"), "{printed}");
    assert!(
        printed.contains(&format!("current master key: {new_master}")),
        "{printed}"
    );
    assert_eq!(
        status_counts(&printed, &new_master),
        Some((2, 1)),
        "{printed}"
    );
    assert_eq!(status_counts(&printed, &old_master), None, "{printed}");

    fixture.finish().await;
}

#[tokio::test]
async fn kms_rotation_follows_the_configured_key() {
    let mut fixture = Fixture::new(Kind::Kms).await;
    let keyring = fixture.keyring();
    keyring.for_writing(&new_user_id()).await.unwrap();
    keyring.for_writing(&new_user_id()).await.unwrap();
    let old_master = keyring.provider().current_master_key_id().await.unwrap();
    let new_master = fixture.new_master_key().await;
    let endpoint = kms_endpoint();
    let env = [
        ("MERIDIAN_KEY_PROVIDER", "kms"),
        ("MERIDIAN_KMS_ENDPOINT", endpoint.as_str()),
        ("MERIDIAN_KMS_REGION", support::KMS_REGION),
        ("MERIDIAN_KMS_KEY_ID", new_master.as_str()),
    ];

    let status = meridian_keys(&fixture.database.url, &env, &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    let printed = stdout(&status);
    assert!(printed.contains("provider: kms"), "{printed}");
    assert_eq!(
        status_counts(&printed, &old_master),
        Some((2, 0)),
        "{printed}"
    );
    assert_eq!(
        status_counts(&printed, &new_master),
        Some((0, 0)),
        "{printed}"
    );

    let rotated = meridian_keys(&fixture.database.url, &env, &["rotate"]);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert_eq!(
        fixture.user_key_masters().await,
        vec![new_master.clone(); 2]
    );
    let refused = meridian_keys(&fixture.database.url, &env, &["rotate", "--new-master-key"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("MERIDIAN_KMS_KEY_ID"),
        "{}",
        stderr(&refused)
    );

    fixture.finish().await;
}
