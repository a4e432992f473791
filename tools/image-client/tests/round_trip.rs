//! End to end against the four Meridian processes and the local stack: the client library
//! encrypts a real PNG, uploads it, downloads it through the query service and decrypts it,
//! and the plaintext appears nowhere on the server side.
//!
//! Needs the debug binaries (`cargo build --workspace --bins`) and the servers of
//! `infra/stack.sh start`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meridian_e2e::Platform;
use meridian_image_client::envelope::{self, EnvelopeFailure};
use meridian_image_client::secret::{self, Secret};
use meridian_image_client::service::{self, UploadedImage};
use meridian_importer::session::Session;
use rdkafka::message::{Headers, Message};
use serde_json::Value;
use uuid::Uuid;

/// A 2x2 RGB PNG: red, blue; red, blue.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\
    \x00\x00\x00\x0dIHDR\x00\x00\x00\x02\x00\x00\x00\x02\x08\x02\x00\x00\x00\xfd\xd4\x9a\x73\
    \x00\x00\x00\x12IDAT\x78\xda\x63\xf8\xcf\xc0\xc0\xd0\xf0\x9f\x01\x42\x01\x00\x21\x72\x04\xfd\
    \xa9\x27\x74\x8b\
    \x00\x00\x00\x00IEND\xae\x42\x60\x82";

/// Length of the plaintext runs searched for on the server side. For 300 bytes of random
/// ciphertext, the chance of containing any of the PNG's 68 runs is about 2^-50 (an
/// estimate: 300 x 68 positions, each matching with probability 2^-64).
const RUN_LEN: usize = 8;

/// The minimum PBKDF2 iteration count, so that the debug build derives keys quickly.
const ITERATIONS: u32 = 100_000;

/// Returns whether `haystack` contains any `RUN_LEN`-byte run of [`PNG`].
fn contains_plaintext(haystack: &[u8]) -> bool {
    PNG.windows(RUN_LEN)
        .any(|run| haystack.windows(RUN_LEN).any(|window| window == run))
}

/// Email address and password of the image's owner, who uploads and downloads it.
const OWNER_EMAIL: &str = "image-owner@ais.example";
const OWNER_PASSWORD: &str = "long enough password";

/// Waits until the query service shows `image_id` as the user's encrypted image, and returns
/// the profile.
async fn wait_for_image(
    session: &Session,
    query_url: &str,
    user_id: Uuid,
    image_id: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    let url = format!("{query_url}/v1/users/{user_id}/profile");
    loop {
        let reply = session
            .execute(|| session.http().get(&url))
            .await
            .expect("profile request is sent");
        if reply.status.is_success() {
            let profile: Value = serde_json::from_slice(&reply.body).expect("profile is JSON");
            if profile["encrypted_image"]["id"] == image_id {
                return profile;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the query service did not show image {image_id} within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the `meridian-image` binary and fails the test when it exits with an error.
fn meridian_image(arguments: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_meridian-image"))
        .args(arguments)
        .output()
        .expect("meridian-image runs");
    assert!(
        output.status.success(),
        "meridian-image {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

async fn upload(
    platform: &Platform,
    session: &Session,
    user_id: Uuid,
    secret: &Secret,
) -> UploadedImage {
    let sealed = envelope::seal(PNG, user_id, secret, ITERATIONS).expect("PNG seals");
    let uploaded = service::upload(session, &platform.command_url, user_id, sealed)
        .await
        .expect("upload succeeds");
    assert_eq!(uploaded.stored_events, 1);
    assert!(uploaded.position.is_some());
    uploaded
}

#[tokio::test]
async fn image_round_trip_leaves_no_plaintext() {
    let mut platform = Platform::start("image_round_trip")
        .await
        .expect("platform starts");
    let user_id = platform
        .register(OWNER_EMAIL, "Image Owner", OWNER_PASSWORD)
        .await
        .expect("the owner registers");
    let owner = platform
        .login(OWNER_EMAIL, OWNER_PASSWORD)
        .await
        .expect("the owner logs in");
    let directory = tempfile::tempdir().unwrap();
    let password_path = directory.path().join("password");
    std::fs::write(&password_path, OWNER_PASSWORD).unwrap();
    let key_path = directory.path().join("user.key");
    secret::generate_key_file(&key_path).expect("key file is written");
    let key_file = Secret::from_key_file(&key_path).expect("key file loads");
    let passphrase = Secret::Passphrase("correct horse battery staple".to_owned().into());

    // Passphrase mode.
    let uploaded = upload(&platform, &owner, user_id, &passphrase).await;
    let profile = wait_for_image(&owner, &platform.query_url, user_id, &uploaded.image.id).await;
    assert_eq!(profile["encrypted_image"]["key_mode"], "passphrase");
    assert_eq!(profile["encrypted_image"]["media_type"], "image/png");
    let downloaded = service::download(&owner, &platform.query_url, user_id)
        .await
        .expect("download succeeds");
    assert_eq!(downloaded.image_id, uploaded.image.id);
    assert_eq!(downloaded.media_type, "image/png");
    let opened = envelope::open(&downloaded.bytes, user_id, &passphrase).expect("envelope opens");
    assert_eq!(opened.bytes, PNG);
    let as_other_user = envelope::open(&downloaded.bytes, Uuid::new_v4(), &passphrase);
    assert!(matches!(as_other_user, Err(EnvelopeFailure::Decrypt)));

    // Key-file mode replaces the image.
    let uploaded = upload(&platform, &owner, user_id, &key_file).await;
    wait_for_image(&owner, &platform.query_url, user_id, &uploaded.image.id).await;
    let downloaded = service::download(&owner, &platform.query_url, user_id)
        .await
        .expect("download succeeds");
    let opened = envelope::open(&downloaded.bytes, user_id, &key_file).expect("envelope opens");
    assert_eq!(opened.bytes, PNG);

    // The command line does the same through both services.
    let image_path = directory.path().join("photo.png");
    let copy_path = directory.path().join("copy.png");
    std::fs::write(&image_path, PNG).unwrap();
    let user = user_id.to_string();
    let upload_output = meridian_image(&[
        "upload",
        "--user-id",
        &user,
        "--in",
        path(&image_path),
        "--key-file",
        path(&key_path),
        "--email",
        OWNER_EMAIL,
        "--password-file",
        path(&password_path),
        "--command-url",
        &platform.command_url,
    ]);
    let summary = String::from_utf8_lossy(&upload_output.stdout);
    let image_id = summary
        .strip_prefix("stored image ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected upload output: {summary}"))
        .to_owned();
    assert!(summary.contains("at position"), "{summary}");
    wait_for_image(&owner, &platform.query_url, user_id, &image_id).await;
    let download_output = meridian_image(&[
        "download",
        "--user-id",
        &user,
        "--out",
        path(&copy_path),
        "--key-file",
        path(&key_path),
        "--email",
        OWNER_EMAIL,
        "--password-file",
        path(&password_path),
        "--command-url",
        &platform.command_url,
        "--query-url",
        &platform.query_url,
    ]);
    let summary = String::from_utf8_lossy(&download_output.stdout);
    assert!(summary.contains(&image_id), "{summary}");
    assert_eq!(std::fs::read(&copy_path).unwrap(), PNG);

    let envelopes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT bytes FROM profile_images")
        .fetch_all(platform.pool())
        .await
        .expect("profile_images is readable");
    assert_eq!(envelopes.len(), 3);
    for stored in &envelopes {
        assert!(!contains_plaintext(stored), "plaintext in profile_images");
    }
    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload::text FROM events")
        .fetch_all(platform.pool())
        .await
        .expect("events are readable");
    for payload in &payloads {
        assert!(
            !contains_plaintext(payload.as_bytes()),
            "plaintext in events"
        );
    }

    platform
        .wait_caught_up(Duration::from_secs(90))
        .await
        .expect("projections catch up");
    let messages = platform.read_topic().expect("topic is readable");
    let image_events = messages
        .iter()
        .filter(|message| {
            meridian_e2e::header(message, "ce_type").as_deref() == Some("ProfileImageUploaded")
        })
        .count();
    assert_eq!(image_events, 3);
    for message in &messages {
        let key = message.key().unwrap_or_default();
        let payload = message.payload().unwrap_or_default();
        assert!(!contains_plaintext(key), "plaintext in a Kafka key");
        assert!(!contains_plaintext(payload), "plaintext in a Kafka value");
        for header in message
            .headers()
            .into_iter()
            .flat_map(|headers| headers.iter())
        {
            let value = header.value.unwrap_or_default();
            assert!(
                !contains_plaintext(value),
                "plaintext in header {}",
                header.key
            );
        }
    }

    platform.shut_down().await.expect("platform shuts down");
}
