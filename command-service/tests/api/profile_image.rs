//! `PUT /v1/users/{id}/profile/image`. The server never decrypts, so these envelopes carry a
//! valid header followed by bytes that stand in for ciphertext.

use axum::http::{Method, StatusCode};
use meridian_domain::profile::envelope::{
    EnvelopeHeader, KeyParams, MediaType, ENVELOPE_CONTENT_TYPE, MAX_ENVELOPE_BYTES,
    MIN_PBKDF2_ITERATIONS, NONCE_LEN, SALT_LEN, TAG_LEN, WRAPPED_KEY_LEN,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{assert_error, TestApp, TestResponse};

fn passphrase_header(media_type: MediaType) -> EnvelopeHeader {
    EnvelopeHeader {
        key: KeyParams::Passphrase {
            iterations: 600_000,
            salt: [0x11; SALT_LEN],
        },
        media_type,
        nonce: [0x22; NONCE_LEN],
    }
}

/// Returns an envelope with `header` and `ciphertext_len` bytes of stand-in ciphertext.
fn envelope_with(header: &EnvelopeHeader, ciphertext_len: usize, filler: u8) -> Vec<u8> {
    let mut bytes = header.to_bytes();
    bytes.resize(bytes.len() + ciphertext_len, filler);
    bytes
}

pub(crate) fn envelope(filler: u8) -> Vec<u8> {
    envelope_with(&passphrase_header(MediaType::Png), 256, filler)
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn image_path(user_id: &str) -> String {
    format!("/v1/users/{user_id}/profile/image")
}

async fn upload(app: &TestApp, user_id: &str, body: Vec<u8>) -> TestResponse {
    app.raw(
        Method::PUT,
        &image_path(user_id),
        Some(ENVELOPE_CONTENT_TYPE),
        body,
        &[],
    )
    .await
}

async fn stored_images(app: &TestApp, user_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM profile_images WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&app.pool)
        .await
        .expect("profile_images is countable")
}

async fn assert_nothing_stored(app: &TestApp, user_id: &str) {
    assert_eq!(stored_images(app, user_id).await, 0, "profile_images rows");
    assert_eq!(app.events_of("Profile", user_id).await, 0, "Profile events");
}

/// Sends `body` and checks for a 422 on `field` that stored nothing.
async fn assert_envelope_rejected(body: Vec<u8>, field: &str, reason_part: &str) {
    let app = TestApp::start().await;
    let user_id = app.register("image-rejected@ais.example").await;

    let response = upload(&app, &user_id, body).await;

    assert_error(
        &response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(response.body["field"], field, "{}", response.body);
    let reason = response.body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(reason_part), "reason: {reason}");
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn upload_stores_envelope_and_event() {
    let app = TestApp::start().await;
    let user_id = app.register("image-1@ais.example").await;
    let body = envelope(0x5A);

    let response = upload(&app, &user_id, body.clone()).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    let image = &response.body["image"];
    assert_eq!(image["id"], hex_sha256(&body));
    assert_eq!(image["size_bytes"], body.len());
    assert_eq!(image["media_type"], "image/png");
    assert_eq!(image["key_mode"], "passphrase");
    assert_eq!(response.body["user_id"], user_id.as_str());
    assert_eq!(response.body["stored_events"], 1);
    assert_eq!(response.body["sequence"], 1);
    let position = app.position_of("Profile", &user_id, 1).await;
    assert_eq!(response.body["position"], position);

    let (stored, media_type): (Vec<u8>, String) = sqlx::query_as(
        "SELECT bytes, media_type FROM profile_images WHERE user_id = $1 AND image_id = $2",
    )
    .bind(&user_id)
    .bind(hex_sha256(&body))
    .fetch_one(&app.pool)
    .await
    .expect("the envelope is stored");
    assert_eq!(stored, body);
    assert_eq!(media_type, "image/png");
    app.finish().await;
}

#[tokio::test]
async fn event_records_image_metadata() {
    let app = TestApp::start().await;
    let user_id = app.register("image-2@ais.example").await;
    let header = EnvelopeHeader {
        key: KeyParams::KeyFile {
            nonce: [0x33; NONCE_LEN],
            wrapped_key: [0x44; WRAPPED_KEY_LEN],
        },
        ..passphrase_header(MediaType::Gif)
    };
    let body = envelope_with(&header, 100, 0x5A);

    let response = upload(&app, &user_id, body.clone()).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.body);

    let (event_type, payload): (String, Value) = sqlx::query_as(
        "SELECT event_type, payload::jsonb FROM events \
         WHERE aggregate_type = 'Profile' AND aggregate_id = $1",
    )
    .bind(&user_id)
    .fetch_one(&app.pool)
    .await
    .expect("one Profile event");
    assert_eq!(event_type, "ProfileImageUploaded");
    let text = payload.to_string();
    assert!(text.contains(&hex_sha256(&body)), "{text}");
    assert_eq!(response.body["image"]["key_mode"], "key-file");
    assert_eq!(response.body["image"]["media_type"], "image/gif");
    app.finish().await;
}

#[tokio::test]
async fn repeated_upload_stores_nothing() {
    let app = TestApp::start().await;
    let user_id = app.register("image-3@ais.example").await;
    let first = upload(&app, &user_id, envelope(0x5A)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);

    let again = upload(&app, &user_id, envelope(0x5A)).await;

    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["stored_events"], 0);
    assert_eq!(again.body["position"], Value::Null);
    assert_eq!(again.body["image"], first.body["image"]);
    assert_eq!(app.events_of("Profile", &user_id).await, 1);
    assert_eq!(stored_images(&app, &user_id).await, 1);
    app.finish().await;
}

#[tokio::test]
async fn other_envelope_replaces_current_image() {
    let app = TestApp::start().await;
    let user_id = app.register("image-4@ais.example").await;
    upload(&app, &user_id, envelope(0x5A)).await;

    let response = upload(&app, &user_id, envelope(0x6B)).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["stored_events"], 1);
    assert_eq!(response.body["sequence"], 2);
    assert_eq!(response.body["image"]["id"], hex_sha256(&envelope(0x6B)));
    app.finish().await;
}

#[tokio::test]
async fn envelope_of_exactly_2_mib_is_accepted() {
    let app = TestApp::start().await;
    let user_id = app.register("image-5@ais.example").await;
    let header = passphrase_header(MediaType::Jpeg);
    let body = envelope_with(&header, MAX_ENVELOPE_BYTES - header.encoded_len(), 0x5A);
    assert_eq!(body.len(), 2 * 1024 * 1024);

    let response = upload(&app, &user_id, body).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    assert_eq!(response.body["image"]["size_bytes"], 2 * 1024 * 1024);
    app.finish().await;
}

#[tokio::test]
async fn envelope_over_2_mib_is_too_large() {
    let app = TestApp::start().await;
    let user_id = app.register("image-6@ais.example").await;
    let header = passphrase_header(MediaType::Png);
    let body = envelope_with(&header, MAX_ENVELOPE_BYTES + 1 - header.encoded_len(), 0x5A);

    let response = upload(&app, &user_id, body).await;

    assert_error(
        &response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(response.body["field"], "body");
    let reason = response.body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("2097152"), "reason: {reason}");
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn declared_length_over_2_mib_is_too_large() {
    let app = TestApp::start().await;
    let user_id = app.register("image-7@ais.example").await;

    let response = app
        .raw(
            Method::PUT,
            &image_path(&user_id),
            Some(ENVELOPE_CONTENT_TYPE),
            envelope(0x5A),
            &[("content-length", "3000000")],
        )
        .await;

    assert_error(
        &response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert_eq!(response.body["field"], "body");
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn wrong_content_type_is_unsupported() {
    let app = TestApp::start().await;
    let user_id = app.register("image-8@ais.example").await;

    let response = app
        .raw(
            Method::PUT,
            &image_path(&user_id),
            Some("image/png"),
            envelope(0x5A),
            &[],
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_eq!(response.body["field"], "Content-Type");
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn missing_content_type_is_unsupported() {
    let app = TestApp::start().await;
    let user_id = app.register("image-9@ais.example").await;

    let response = app
        .raw(
            Method::PUT,
            &image_path(&user_id),
            None,
            envelope(0x5A),
            &[],
        )
        .await;

    assert_error(
        &response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn content_type_with_parameter_is_accepted() {
    let app = TestApp::start().await;
    let user_id = app.register("image-10@ais.example").await;
    let content_type = format!("{ENVELOPE_CONTENT_TYPE}; version=1");

    let response = app
        .raw(
            Method::PUT,
            &image_path(&user_id),
            Some(content_type.as_str()),
            envelope(0x5A),
            &[],
        )
        .await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.body);
    app.finish().await;
}

#[tokio::test]
async fn image_of_unknown_user_is_not_found() {
    let app = TestApp::start().await;
    let user_id = uuid::Uuid::new_v4().to_string();

    let response = upload(&app, &user_id, envelope(0x5A)).await;

    assert_error(&response, StatusCode::NOT_FOUND, "not_found");
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn image_of_deactivated_user_is_conflict() {
    let app = TestApp::start().await;
    let user_id = app.register("image-11@ais.example").await;
    app.patch(&format!("/v1/users/{user_id}"), &json!({"active": false}))
        .await;

    let response = upload(&app, &user_id, envelope(0x5A)).await;

    assert_error(&response, StatusCode::CONFLICT, "conflict");
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn wrong_magic_is_rejected() {
    let mut body = envelope(0x5A);
    body[..6].copy_from_slice(b"\x89PNG\r\n");
    assert_envelope_rejected(body, "body.magic", "MRDIMG").await;
}

#[tokio::test]
async fn unknown_version_is_rejected() {
    let mut body = envelope(0x5A);
    body[6] = 2;
    assert_envelope_rejected(body, "body.version", "2").await;
}

#[tokio::test]
async fn unknown_key_mode_is_rejected() {
    let mut body = envelope(0x5A);
    body[7] = 9;
    assert_envelope_rejected(body, "body.key_mode", "9").await;
}

#[tokio::test]
async fn iterations_below_100000_are_rejected() {
    let header = EnvelopeHeader {
        key: KeyParams::Passphrase {
            iterations: MIN_PBKDF2_ITERATIONS - 1,
            salt: [0x11; SALT_LEN],
        },
        ..passphrase_header(MediaType::Png)
    };
    let body = envelope_with(&header, 64, 0x5A);
    assert_envelope_rejected(body, "body.iterations", "99999").await;
}

#[tokio::test]
async fn unknown_media_type_is_rejected() {
    let mut body = envelope(0x5A);
    // The media type follows magic, version, key mode, iterations and salt.
    body[6 + 1 + 1 + 4 + SALT_LEN] = 0;
    assert_envelope_rejected(body, "body.media_type", "0").await;
}

#[tokio::test]
async fn envelope_shorter_than_header_and_tag_is_rejected() {
    let header = passphrase_header(MediaType::Png);
    let body = envelope_with(&header, TAG_LEN - 1, 0x5A);
    assert_envelope_rejected(body, "body", "57").await;
}

#[tokio::test]
async fn empty_body_is_rejected() {
    assert_envelope_rejected(Vec::new(), "body", "0 bytes").await;
}

#[tokio::test]
async fn failed_command_leaves_no_envelope() {
    let app = TestApp::start().await;
    let user_id = app.register("image-12@ais.example").await;
    // Every Profile event now fails to insert, after the envelope was stored.
    sqlx::raw_sql(
        "CREATE FUNCTION test_reject_profile_events() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.aggregate_type = 'Profile' THEN
                 RAISE EXCEPTION 'Profile events are rejected by this test';
             END IF;
             RETURN NEW;
         END;
         $$;
         CREATE TRIGGER test_reject_profile_events BEFORE INSERT ON events
         FOR EACH ROW EXECUTE FUNCTION test_reject_profile_events();",
    )
    .execute(&app.pool)
    .await
    .expect("test trigger is created");

    let response = upload(&app, &user_id, envelope(0x5A)).await;

    assert_error(&response, StatusCode::INTERNAL_SERVER_ERROR, "internal");
    assert_nothing_stored(&app, &user_id).await;
    app.finish().await;
}

#[tokio::test]
async fn erasing_user_deletes_only_their_envelopes() {
    let app = TestApp::start().await;
    let erased = app.register("image-13@ais.example").await;
    let kept = app.register("image-14@ais.example").await;
    upload(&app, &erased, envelope(0x5A)).await;
    upload(&app, &erased, envelope(0x6B)).await;
    upload(&app, &kept, envelope(0x5A)).await;
    assert_eq!(stored_images(&app, &erased).await, 2);

    sqlx::query("INSERT INTO erased_users (user_id, erased_at) VALUES ($1, now())")
        .bind(&erased)
        .execute(&app.pool)
        .await
        .expect("erase is recorded");

    assert_eq!(stored_images(&app, &erased).await, 0);
    assert_eq!(stored_images(&app, &kept).await, 1);
    app.finish().await;
}

#[tokio::test]
async fn openapi_describes_image_upload() {
    let app = TestApp::start().await;

    let response = app.get("/openapi.json").await;

    let operation = &response.body["paths"]["/v1/users/{id}/profile/image"]["put"];
    assert!(operation.is_object(), "{}", response.body["paths"]);
    let body_schema = &operation["requestBody"]["content"][ENVELOPE_CONTENT_TYPE]["schema"];
    let reference = body_schema["$ref"].as_str().unwrap_or_default();
    let name = reference.rsplit('/').next().unwrap_or_default();
    let schema = &response.body["components"]["schemas"][name];
    assert_eq!(schema["type"], "string", "{operation}");
    assert_eq!(schema["format"], "binary", "{operation}");
    for status in ["200", "404", "409", "413", "415", "422"] {
        assert!(
            operation["responses"][status].is_object(),
            "{status} is missing"
        );
    }
    app.finish().await;
}
