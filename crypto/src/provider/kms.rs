//! Data keys generated and wrapped by AWS KMS, or by a server that speaks its API (moto).
//!
//! KMS keeps the master key: `GenerateDataKey` returns a new data key in plaintext and wrapped,
//! `Decrypt` unwraps it and `ReEncrypt` moves a wrapped key to another KMS key without the
//! plaintext leaving KMS. Every call carries the encryption context
//! `{"meridian:subject": subject}`, which KMS binds into the ciphertext, so a wrapped key copied
//! to another user's row fails to decrypt. The stored `master_key_id` is the key ARN that KMS
//! returned, so a key wrapped before a rotation still names the KMS key that can unwrap it.

use std::env;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{KeyProvider, ProviderError, WrappedKey};
use crate::envelope::DataKey;

/// Encryption context key that binds a wrapped key to its subject.
pub const SUBJECT_CONTEXT_KEY: &str = "meridian:subject";

/// Access key used against a local endpoint when none is set; moto accepts any.
const TEST_ACCESS_KEY_ID: &str = "test";
const TEST_SECRET_ACCESS_KEY: &str = "test";

/// KMS error codes after which the same request may succeed later, besides any 5xx or 429
/// response. Other 4xx codes
/// (InvalidCiphertextException, NotFoundException, DisabledException, IncorrectKeyException,
/// KMSInvalidStateException, AccessDeniedException, …) will fail again.
const TRANSIENT_ERROR_CODES: &[&str] = &[
    "DependencyTimeoutException",
    "KMSInternalException",
    "KeyUnavailableException",
    "LimitExceededException",
    "ThrottlingException",
];

/// Settings of the KMS provider. Each field reads the environment variable named in its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsSettings {
    /// `MERIDIAN_KMS_ENDPOINT`, such as `http://127.0.0.1:4566` for moto; unset for AWS itself.
    pub endpoint: Option<String>,
    /// `MERIDIAN_KMS_REGION` (`us-east-1`).
    pub region: String,
    /// `MERIDIAN_KMS_KEY_ID`: key id, key ARN, alias name (`alias/…`) or alias ARN of the KMS
    /// key that wraps new data keys.
    pub key_id: String,
}

impl KmsSettings {
    /// Builds a KMS client for these settings, with static credentials from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`. With an endpoint set and no access key,
    /// it uses the test key `test`/`test`, which moto accepts.
    pub fn client(&self) -> anyhow::Result<Client> {
        let credentials = credentials(self.endpoint.is_some(), |name| {
            env::var(name).ok().filter(|value| !value.is_empty())
        })?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(5))
            .operation_timeout(Duration::from_secs(15))
            .build();
        let mut config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(timeouts);
        if let Some(endpoint) = &self.endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Client::from_conf(config.build()))
    }

    /// `KMS at <endpoint>` or `KMS in <region>`, for error messages.
    fn location(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => format!("KMS at {endpoint}"),
            None => format!("KMS in {}", self.region),
        }
    }
}

/// Reads static credentials through `var`, falling back to the test key for a local endpoint.
fn credentials(
    local_endpoint: bool,
    var: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Credentials> {
    let session_token = var("AWS_SESSION_TOKEN");
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Credentials::new(
            access_key_id,
            secret_access_key,
            session_token,
            None,
            "environment",
        )),
        (None, None) if local_endpoint => Ok(Credentials::new(
            TEST_ACCESS_KEY_ID,
            TEST_SECRET_ACCESS_KEY,
            None,
            None,
            "test credentials for a local endpoint",
        )),
        _ => anyhow::bail!(
            "the kms key provider needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; \
             set both, or set MERIDIAN_KMS_ENDPOINT to use a local KMS server with test credentials"
        ),
    }
}

/// Data keys wrapped by one KMS key.
pub struct KmsProvider {
    client: Client,
    settings: KmsSettings,
    /// ARN of `settings.key_id`, resolved with `DescribeKey` on first use.
    key_arn: OnceCell<String>,
}

impl KmsProvider {
    /// Builds the client; no request is sent until the provider is first used.
    pub fn new(settings: KmsSettings) -> anyhow::Result<Self> {
        let client = settings.client()?;
        Ok(Self::with_client(client, settings))
    }

    /// Uses `client` to reach the KMS of `settings`.
    pub fn with_client(client: Client, settings: KmsSettings) -> Self {
        Self {
            client,
            settings,
            key_arn: OnceCell::new(),
        }
    }

    pub fn settings(&self) -> &KmsSettings {
        &self.settings
    }

    async fn describe_current_key(&self) -> Result<String, ProviderError> {
        let output = self
            .client
            .describe_key()
            .key_id(&self.settings.key_id)
            .send()
            .await
            .map_err(|error| self.classify("DescribeKey", &self.settings.key_id, error))?;
        let metadata = output.key_metadata.ok_or_else(|| {
            ProviderError::Unavailable(format!(
                "{} returned no key metadata for {}",
                self.settings.location(),
                self.settings.key_id
            ))
        })?;
        let arn = metadata.arn().ok_or_else(|| {
            ProviderError::Unavailable(format!(
                "{} returned no ARN for {}",
                self.settings.location(),
                self.settings.key_id
            ))
        })?;
        if !metadata.enabled() {
            return Err(ProviderError::Rejected(format!(
                "KMS key {arn} (MERIDIAN_KMS_KEY_ID={}) is disabled; enable it or configure another key",
                self.settings.key_id
            )));
        }
        Ok(arn.to_owned())
    }

    /// Maps an SDK error to [`ProviderError`]: network failures, time-outs, throttling and 5xx
    /// responses are `Unavailable`, every other KMS error is `Rejected`. The message carries the
    /// error code and KMS's message, never a request or response body, so no key bytes.
    fn classify<E>(
        &self,
        operation: &str,
        about: &str,
        error: SdkError<E, HttpResponse>,
    ) -> ProviderError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let location = self.settings.location();
        match &error {
            SdkError::ServiceError(context) => {
                let status = context.raw().status().as_u16();
                let code = context.err().code().unwrap_or("an unnamed error");
                let message = context.err().message().unwrap_or("no message");
                let text = format!(
                    "{location}: {operation} for {about} failed with HTTP {status} {code}: {message}"
                );
                if is_transient(status, code) {
                    ProviderError::Unavailable(text)
                } else {
                    ProviderError::Rejected(text)
                }
            }
            SdkError::TimeoutError(_) => {
                ProviderError::Unavailable(format!("{location}: {operation} for {about} timed out"))
            }
            SdkError::ResponseError(_) => ProviderError::Unavailable(format!(
                "{location}: {operation} for {about} returned a response that could not be read"
            )),
            // Dispatch and construction failures carry a connector or client-side error only.
            _ => ProviderError::Unavailable(format!(
                "{location}: {operation} for {about} failed: {}",
                DisplayErrorContext(&error)
            )),
        }
    }
}

/// Tells whether a KMS error response with HTTP `status` and error `code` may turn into a
/// success when the request is sent again.
fn is_transient(status: u16, code: &str) -> bool {
    status >= 500 || status == 429 || TRANSIENT_ERROR_CODES.contains(&code)
}

/// Copies the data key out of a KMS `Plaintext` blob and zeroes the blob's bytes.
fn data_key(
    plaintext: Option<Blob>,
    location: &str,
    about: &str,
) -> Result<DataKey, ProviderError> {
    let bytes = Zeroizing::new(
        plaintext
            .ok_or_else(|| {
                ProviderError::Unavailable(format!("{location} returned no plaintext for {about}"))
            })?
            .into_inner(),
    );
    DataKey::from_slice(&bytes).map_err(|error| {
        ProviderError::Rejected(format!(
            "{location} returned a bad data key for {about}: {error}"
        ))
    })
}

#[async_trait]
impl KeyProvider for KmsProvider {
    fn kind(&self) -> &'static str {
        "kms"
    }

    async fn current_master_key_id(&self) -> Result<String, ProviderError> {
        self.key_arn
            .get_or_try_init(|| self.describe_current_key())
            .await
            .cloned()
    }

    async fn generate(&self, subject: &str) -> Result<(DataKey, WrappedKey), ProviderError> {
        let key_arn = self.current_master_key_id().await?;
        let mut output = self
            .client
            .generate_data_key()
            .key_id(&key_arn)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(SUBJECT_CONTEXT_KEY, subject)
            .send()
            .await
            .map_err(|error| self.classify("GenerateDataKey", subject, error))?;

        let location = self.settings.location();
        let key = data_key(output.plaintext.take(), &location, subject)?;
        let ciphertext = output
            .ciphertext_blob
            .take()
            .ok_or_else(|| {
                ProviderError::Unavailable(format!(
                    "{location} returned no ciphertext for {subject}"
                ))
            })?
            .into_inner();
        let wrapped = WrappedKey {
            master_key_id: output.key_id.take().unwrap_or(key_arn),
            ciphertext,
        };
        Ok((key, wrapped))
    }

    async fn unwrap(&self, wrapped: &WrappedKey, subject: &str) -> Result<DataKey, ProviderError> {
        // Naming the key makes KMS reject a ciphertext of any other key.
        let mut output = self
            .client
            .decrypt()
            .key_id(&wrapped.master_key_id)
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .encryption_context(SUBJECT_CONTEXT_KEY, subject)
            .send()
            .await
            .map_err(|error| self.classify("Decrypt", subject, error))?;
        data_key(output.plaintext.take(), &self.settings.location(), subject)
    }

    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        subject: &str,
    ) -> Result<WrappedKey, ProviderError> {
        let key_arn = self.current_master_key_id().await?;
        let mut output = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .source_key_id(&wrapped.master_key_id)
            .source_encryption_context(SUBJECT_CONTEXT_KEY, subject)
            .destination_key_id(&key_arn)
            .destination_encryption_context(SUBJECT_CONTEXT_KEY, subject)
            .send()
            .await
            .map_err(|error| self.classify("ReEncrypt", subject, error))?;
        let ciphertext = output
            .ciphertext_blob
            .take()
            .ok_or_else(|| {
                ProviderError::Unavailable(format!(
                    "{} returned no ciphertext for {subject}",
                    self.settings.location()
                ))
            })?
            .into_inner();
        Ok(WrappedKey {
            master_key_id: output.key_id.take().unwrap_or(key_arn),
            ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_sdk_kms::config::ProvideCredentials;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[tokio::test]
    async fn credentials_come_from_the_standard_variables() {
        let vars = lookup(&[
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
        ]);
        let credentials = credentials(false, vars)
            .unwrap()
            .provide_credentials()
            .await
            .unwrap();
        assert_eq!(credentials.access_key_id(), "AKIDEXAMPLE");
        assert_eq!(credentials.secret_access_key(), "secret");
        assert_eq!(credentials.session_token(), Some("token"));
    }

    #[tokio::test]
    async fn local_endpoint_defaults_to_test_credentials() {
        let credentials = credentials(true, lookup(&[]))
            .unwrap()
            .provide_credentials()
            .await
            .unwrap();
        assert_eq!(credentials.access_key_id(), TEST_ACCESS_KEY_ID);
    }

    #[test]
    fn aws_without_credentials_is_rejected() {
        let error = credentials(false, lookup(&[])).unwrap_err();
        assert!(error.to_string().contains("AWS_ACCESS_KEY_ID"), "{error}");
    }

    #[test]
    fn error_responses_are_classified() {
        let cases = [
            (400, "InvalidCiphertextException", false),
            (400, "IncorrectKeyException", false),
            (400, "NotFoundException", false),
            (400, "DisabledException", false),
            (400, "KMSInvalidStateException", false),
            (400, "AccessDeniedException", false),
            (400, "ThrottlingException", true),
            (400, "LimitExceededException", true),
            (500, "DependencyTimeoutException", true),
            (500, "KMSInternalException", true),
            (500, "KeyUnavailableException", true),
            (503, "an unnamed error", true),
            (429, "an unnamed error", true),
        ];
        for (status, code, transient) in cases {
            assert_eq!(
                is_transient(status, code),
                transient,
                "HTTP {status} {code}"
            );
        }
    }

    #[test]
    fn half_set_credentials_are_rejected_even_locally() {
        let vars = lookup(&[("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")]);
        assert!(credentials(true, vars).is_err());
    }
}
