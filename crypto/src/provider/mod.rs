//! Key providers: where data keys come from and what wraps them at rest.
//!
//! A provider generates a data key for a subject (a user, or a system key such as the blind
//! index key) and returns it twice: in plaintext, to use now, and wrapped under a master key, to
//! store. Only the wrapped form is ever written down. The subject is bound into the wrapping, so
//! a wrapped key copied to another user's row fails to unwrap.
//!
//! - [`LocalProvider`]: master keys in a file on this machine; the default for `make demo`.
//! - [`KmsProvider`]: AWS KMS (or a server that speaks its API), through `aws-sdk-kms`.

mod kms;
mod local;

use async_trait::async_trait;

pub use kms::{KmsProvider, KmsSettings, SUBJECT_CONTEXT_KEY};
pub use local::LocalProvider;

use crate::envelope::DataKey;

/// A data key encrypted under a master key, as stored in `user_keys` and `system_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The master key that wrapped it: a local key id, or a KMS key ARN.
    pub master_key_id: String,
    pub ciphertext: Vec<u8>,
}

/// Reason a provider could not generate, unwrap or rewrap a key.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or failed; trying again later may succeed.
    #[error("key provider unavailable: {0}")]
    Unavailable(String),
    /// The provider rejected the request: unknown master key, wrong subject, or altered
    /// ciphertext. Trying again will not help.
    #[error("key provider rejected the request: {0}")]
    Rejected(String),
}

/// Generates, unwraps and rewraps data keys under a master key.
#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// `local` or `kms`, for logs and `meridian-keys status`.
    fn kind(&self) -> &'static str;

    /// Returns the master key that wraps new keys and that [`KeyProvider::rewrap`] moves keys to.
    async fn current_master_key_id(&self) -> Result<String, ProviderError>;

    /// Generates a new data key for `subject`, in plaintext and wrapped.
    async fn generate(&self, subject: &str) -> Result<(DataKey, WrappedKey), ProviderError>;

    /// Unwraps a key stored for `subject`.
    async fn unwrap(&self, wrapped: &WrappedKey, subject: &str) -> Result<DataKey, ProviderError>;

    /// Wraps a stored key under the current master key. The data key itself does not change,
    /// so everything it encrypted still opens.
    async fn rewrap(
        &self,
        wrapped: &WrappedKey,
        subject: &str,
    ) -> Result<WrappedKey, ProviderError>;
}
