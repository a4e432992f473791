//! The KMS provider against moto (127.0.0.1:4566, started by `make up`). Each test creates
//! its own KMS keys and schedules their deletion at the end.

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use meridian_crypto::provider::{KeyProvider, KmsProvider, ProviderError};
use support::{kms_settings, TestKms};
use uuid::Uuid;

#[tokio::test]
async fn generated_key_is_wrapped_under_the_key_arn() {
    let kms = TestKms::connect().await;
    let arn = kms.create_key().await;
    let provider = kms.provider(&arn);

    let (key, wrapped) = provider.generate("user:1").await.unwrap();

    assert_eq!(wrapped.master_key_id, arn);
    assert!(arn.starts_with("arn:aws:kms:"), "{arn}");
    let unwrapped = provider.unwrap(&wrapped, "user:1").await.unwrap();
    assert_eq!(unwrapped.as_bytes(), key.as_bytes());
    kms.delete_keys().await;
}

#[tokio::test]
async fn key_of_another_subject_is_rejected_without_key_bytes() {
    let kms = TestKms::connect().await;
    let provider = kms.provider(&kms.create_key().await);
    let (key, wrapped) = provider.generate("user:1").await.unwrap();

    let error = provider.unwrap(&wrapped, "user:2").await.unwrap_err();

    assert!(matches!(error, ProviderError::Rejected(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("user:2"), "{message}");
    assert!(
        !message.contains(&STANDARD.encode(key.as_bytes())),
        "{message}"
    );
    assert!(
        !message.contains(&STANDARD.encode(&wrapped.ciphertext)),
        "{message}"
    );
    kms.delete_keys().await;
}

#[tokio::test]
async fn altered_wrapped_key_is_rejected() {
    let kms = TestKms::connect().await;
    let provider = kms.provider(&kms.create_key().await);
    let (_, wrapped) = provider.generate("user:1").await.unwrap();

    let mut altered = wrapped.clone();
    let last = altered.ciphertext.len() - 1;
    altered.ciphertext[last] ^= 0x01;
    let result = provider.unwrap(&altered, "user:1").await;

    assert!(
        matches!(result, Err(ProviderError::Rejected(_))),
        "{result:?}"
    );
    kms.delete_keys().await;
}

#[tokio::test]
async fn alias_resolves_to_the_key_arn() {
    let kms = TestKms::connect().await;
    let arn = kms.create_key().await;
    let alias = format!("alias/meridian-test-{}", Uuid::new_v4().simple());
    kms.client
        .create_alias()
        .alias_name(&alias)
        .target_key_id(&arn)
        .send()
        .await
        .unwrap();
    let provider = kms.provider(&alias);

    let current = provider.current_master_key_id().await.unwrap();
    let (_, wrapped) = provider.generate("user:1").await.unwrap();

    assert_eq!(current, arn);
    assert_eq!(wrapped.master_key_id, arn);
    kms.client
        .delete_alias()
        .alias_name(&alias)
        .send()
        .await
        .unwrap();
    kms.delete_keys().await;
}

#[tokio::test]
async fn rewrap_moves_a_key_to_the_current_kms_key() {
    let kms = TestKms::connect().await;
    let old = kms.provider(&kms.create_key().await);
    let (key, wrapped) = old.generate("user:1").await.unwrap();
    let new_arn = kms.create_key().await;
    let new = kms.provider(&new_arn);

    let rewrapped = new.rewrap(&wrapped, "user:1").await.unwrap();

    assert_eq!(rewrapped.master_key_id, new_arn);
    let by_new = new.unwrap(&rewrapped, "user:1").await.unwrap();
    assert_eq!(by_new.as_bytes(), key.as_bytes());
    // A provider still configured for the old key unwraps by the stored key ARN.
    let by_old = old.unwrap(&rewrapped, "user:1").await.unwrap();
    assert_eq!(by_old.as_bytes(), key.as_bytes());
    kms.delete_keys().await;
}

#[tokio::test]
async fn rewrap_for_another_subject_is_rejected() {
    let kms = TestKms::connect().await;
    let provider = kms.provider(&kms.create_key().await);
    let (_, wrapped) = provider.generate("user:1").await.unwrap();

    let result = provider.rewrap(&wrapped, "user:2").await;

    assert!(
        matches!(result, Err(ProviderError::Rejected(_))),
        "{result:?}"
    );
    kms.delete_keys().await;
}

// NOTE: moto 5.2 still serves GenerateDataKey and Decrypt with a disabled key, so only the
// DescribeKey check runs here. AWS answers those with DisabledException, which the unit
// tests of the error mapping cover.
#[tokio::test]
async fn disabled_current_key_is_rejected() {
    let kms = TestKms::connect().await;
    let arn = kms.create_key().await;
    // moto 5.2 fails DisableKey for a key ARN, so name the key by its id.
    let (_, key_id) = arn.rsplit_once('/').unwrap();
    kms.client
        .disable_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap();

    let result = kms.provider(&arn).current_master_key_id().await;

    let Err(ProviderError::Rejected(message)) = result else {
        panic!("expected a refusal, got {result:?}");
    };
    assert!(message.contains("disabled"), "{message}");
    kms.delete_keys().await;
}

#[tokio::test]
async fn unknown_key_is_rejected() {
    let kms = TestKms::connect().await;
    let provider = kms.provider(&Uuid::new_v4().to_string());

    let result = provider.current_master_key_id().await;

    assert!(
        matches!(result, Err(ProviderError::Rejected(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    // A port that was free a moment ago, so nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut settings = kms_settings("alias/meridian");
    settings.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let provider = KmsProvider::new(settings).unwrap();

    let result = provider.current_master_key_id().await;

    assert!(
        matches!(result, Err(ProviderError::Unavailable(_))),
        "{result:?}"
    );
}
