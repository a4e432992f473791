//! The `meridian-image` binary: keygen, encrypt and decrypt on files, with no server.

use std::path::Path;
use std::process::{Command, Output};

/// A 2x2 RGB PNG.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\
    \x00\x00\x00\x0dIHDR\x00\x00\x00\x02\x00\x00\x00\x02\x08\x02\x00\x00\x00\xfd\xd4\x9a\x73\
    \x00\x00\x00\x12IDAT\x78\xda\x63\xf8\xcf\xc0\xc0\xd0\xf0\x9f\x01\x42\x01\x00\x21\x72\x04\xfd\
    \xa9\x27\x74\x8b\
    \x00\x00\x00\x00IEND\xae\x42\x60\x82";

const USER_ID: &str = "0b5cbd6e-4c3e-4a43-9d1e-2f6b0e1f4a7c";
const PASSPHRASE_VARIABLE: &str = "MERIDIAN_IMAGE_TEST_PASSPHRASE";
const PASSPHRASE: &str = "correct horse battery staple";

fn meridian_image(arguments: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meridian-image"))
        .args(arguments)
        .env(PASSPHRASE_VARIABLE, PASSPHRASE)
        .output()
        .expect("meridian-image runs")
}

fn path(directory: &Path, name: &str) -> String {
    directory.join(name).display().to_string()
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "status {}, stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn key_file_round_trip_restores_the_image() {
    let directory = tempfile::tempdir().unwrap();
    let (key, image, sealed, restored) = (
        path(directory.path(), "user.key"),
        path(directory.path(), "photo.png"),
        path(directory.path(), "photo.sealed"),
        path(directory.path(), "restored.png"),
    );
    std::fs::write(&image, PNG).unwrap();

    assert_success(&meridian_image(&["keygen", "--out", &key]));
    let encrypt = [
        "encrypt",
        "--in",
        &image,
        "--out",
        &sealed,
        "--user-id",
        USER_ID,
        "--key-file",
        &key,
    ];
    assert_success(&meridian_image(&encrypt));
    let decrypt = [
        "decrypt",
        "--in",
        &sealed,
        "--out",
        &restored,
        "--user-id",
        USER_ID,
        "--key-file",
        &key,
    ];
    let output = meridian_image(&decrypt);

    assert_success(&output);
    assert_eq!(std::fs::read(&restored).unwrap(), PNG);
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("image/png"), "{summary}");
}

#[test]
fn passphrase_round_trip_restores_the_image() {
    let directory = tempfile::tempdir().unwrap();
    let (image, sealed, restored) = (
        path(directory.path(), "photo.png"),
        path(directory.path(), "photo.sealed"),
        path(directory.path(), "restored.png"),
    );
    std::fs::write(&image, PNG).unwrap();

    let encrypt = [
        "encrypt",
        "--in",
        &image,
        "--out",
        &sealed,
        "--user-id",
        USER_ID,
        "--passphrase-env",
        PASSPHRASE_VARIABLE,
        "--iterations",
        "100000",
    ];
    assert_success(&meridian_image(&encrypt));
    let decrypt = [
        "decrypt",
        "--in",
        &sealed,
        "--out",
        &restored,
        "--user-id",
        USER_ID,
        "--passphrase-env",
        PASSPHRASE_VARIABLE,
    ];
    assert_success(&meridian_image(&decrypt));

    assert_eq!(std::fs::read(&restored).unwrap(), PNG);
}

#[test]
fn decrypt_for_another_user_fails_without_output() {
    let directory = tempfile::tempdir().unwrap();
    let (key, image, sealed, restored) = (
        path(directory.path(), "user.key"),
        path(directory.path(), "photo.png"),
        path(directory.path(), "photo.sealed"),
        path(directory.path(), "restored.png"),
    );
    std::fs::write(&image, PNG).unwrap();
    assert_success(&meridian_image(&["keygen", "--out", &key]));
    let encrypt = [
        "encrypt",
        "--in",
        &image,
        "--out",
        &sealed,
        "--user-id",
        USER_ID,
        "--key-file",
        &key,
    ];
    assert_success(&meridian_image(&encrypt));

    let other_user = "8f0c1f0e-3d4b-4a51-9a43-2b5f0f9e4c11";
    let decrypt = [
        "decrypt",
        "--in",
        &sealed,
        "--out",
        &restored,
        "--user-id",
        other_user,
        "--key-file",
        &key,
    ];
    let output = meridian_image(&decrypt);

    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("decryption failed"), "{error}");
    assert!(!Path::new(&restored).exists());
}

#[test]
fn encrypt_rejects_a_file_that_is_not_an_image() {
    let directory = tempfile::tempdir().unwrap();
    let (key, text, sealed) = (
        path(directory.path(), "user.key"),
        path(directory.path(), "notes.txt"),
        path(directory.path(), "notes.sealed"),
    );
    std::fs::write(&text, "not an image").unwrap();
    assert_success(&meridian_image(&["keygen", "--out", &key]));

    let encrypt = [
        "encrypt",
        "--in",
        &text,
        "--out",
        &sealed,
        "--user-id",
        USER_ID,
        "--key-file",
        &key,
    ];
    let output = meridian_image(&encrypt);

    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("not a PNG, JPEG, WebP or GIF"), "{error}");
    assert!(!Path::new(&sealed).exists());
}
