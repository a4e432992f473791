//! Access tokens: HS256 JWTs that name the user and their role.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use meridian_domain::user::Role;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys::KeyStore;

/// The `iss` and `aud` of every token.
pub const ISSUER: &str = "meridian";
pub const AUDIENCE: &str = "meridian-api";

/// Default lifetime of an access token: 15 minutes.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);

/// Seconds of clock difference tolerated on `exp` and `iat`.
const LEEWAY_SECS: u64 = 5;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
    /// Token id.
    pub jti: String,
}

/// A signed access token and how long it lives.
pub struct AccessToken {
    pub token: String,
    pub expires_in: Duration,
}

/// The reason a token was rejected. The message is safe to send to the client because it
/// never repeats the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token signature does not verify")]
    BadSignature,
    #[error("the token names a signing key that is not known")]
    UnknownKey,
    #[error("the token header must name algorithm HS256 and a key id")]
    BadHeader,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token claims are not valid: {0}")]
    BadClaims(&'static str),
}

/// Signs and verifies access tokens with the keys of a [`KeyStore`].
#[derive(Clone)]
pub struct TokenService {
    keys: Arc<KeyStore>,
    access_ttl: Duration,
    validation: Validation,
}

impl TokenService {
    pub fn new(keys: Arc<KeyStore>, access_ttl: Duration) -> Self {
        // Only HS256 is accepted, whatever algorithm the header names; `none` and the public-key
        // algorithms fail before any key is used.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = false;
        Self {
            keys,
            access_ttl,
            validation,
        }
    }

    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Signs a token for `user_id` with `role`, valid for the configured lifetime.
    pub fn issue(&self, user_id: &str, role: Role) -> anyhow::Result<AccessToken> {
        let now = Utc::now().timestamp();
        let ttl = i64::try_from(self.access_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: user_id.to_owned(),
            role,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now.saturating_add(ttl),
            jti: Uuid::new_v4().to_string(),
        };
        Ok(AccessToken {
            token: self.sign(&claims)?,
            expires_in: self.access_ttl,
        })
    }

    /// Signs `claims` as they are, with the active key.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let keys = self.keys.current();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(keys.active_kid().to_owned());
        Ok(jsonwebtoken::encode(&header, claims, keys.encoding())?)
    }

    /// Checks the header, the signature and the claims of `token`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_error(token))?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::BadHeader);
        }
        let kid = header.kid.ok_or(TokenError::BadHeader)?;
        let mut keys = self.keys.current();
        if keys.decoding(&kid).is_none() && self.keys.reload_for_unknown_kid() {
            keys = self.keys.current();
        }
        let key = keys.decoding(&kid).ok_or(TokenError::UnknownKey)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|error| {
                match error.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidSignature => TokenError::BadSignature,
                    ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                        TokenError::BadHeader
                    }
                    ErrorKind::InvalidIssuer => TokenError::BadClaims("iss is not meridian"),
                    ErrorKind::InvalidAudience => TokenError::BadClaims("aud is not meridian-api"),
                    ErrorKind::MissingRequiredClaim(_) => {
                        TokenError::BadClaims("exp, iat, sub, iss and aud are required")
                    }
                    ErrorKind::Json(_) => TokenError::BadClaims("a claim has the wrong type"),
                    _ => TokenError::Malformed,
                }
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(TokenError::BadClaims("sub is empty"));
        }
        let now = Utc::now().timestamp();
        if claims.iat > now + LEEWAY_SECS as i64 {
            return Err(TokenError::BadClaims("iat is in the future"));
        }
        Ok(claims)
    }
}

/// Tells a header that is JSON but not acceptable, such as `"alg": "none"`, from a token
/// that is not a JWT at all.
fn header_error(token: &str) -> TokenError {
    let header = token.split('.').next().unwrap_or_default();
    let parsed = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
    match parsed {
        Some(serde_json::Value::Object(_)) => TokenError::BadHeader,
        _ => TokenError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyFile;

    fn service() -> (TokenService, KeyFile) {
        let file = KeyFile::generate();
        let keys = Arc::new(KeyStore::fixed(&file).unwrap());
        (TokenService::new(keys, DEFAULT_ACCESS_TTL), file)
    }

    fn claims(role: Role, iat: i64, exp: i64) -> Claims {
        Claims {
            sub: "user-1".into(),
            role,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat,
            exp,
            jti: "t".into(),
        }
    }

    #[test]
    fn issued_token_verifies_with_user_role_and_kid() {
        let (tokens, file) = service();
        let issued = tokens.issue("user-1", Role::Analyst).unwrap();
        let claims = tokens.verify(&issued.token).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.role, Role::Analyst);
        assert_eq!(claims.exp - claims.iat, 900);
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(file.active.as_str()));
    }

    #[test]
    fn rotation_keeps_old_tokens_until_their_key_is_retired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let mut file = KeyFile::generate();
        file.write(&path).unwrap();
        let old_kid = file.active.clone();
        let tokens =
            TokenService::new(Arc::new(KeyStore::open(&path).unwrap()), DEFAULT_ACCESS_TTL);
        let old = tokens.issue("user-1", Role::User).unwrap().token;

        let new_kid = file.rotate();
        file.write(&path).unwrap();
        tokens.keys().reload_if_changed();
        let new = tokens.issue("user-1", Role::User).unwrap().token;
        let header = jsonwebtoken::decode_header(&new).unwrap();
        assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
        assert!(tokens.verify(&old).is_ok(), "the old key still verifies");

        file.retire(&old_kid).unwrap();
        file.write(&path).unwrap();
        tokens.keys().reload_if_changed();
        assert_eq!(tokens.verify(&old), Err(TokenError::UnknownKey));
        assert!(tokens.verify(&new).is_ok());
    }

    #[test]
    fn expired_token_is_refused() {
        let (tokens, _) = service();
        let now = Utc::now().timestamp();
        let token = tokens
            .sign(&claims(Role::User, now - 1000, now - 60))
            .unwrap();
        assert_eq!(tokens.verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn token_of_another_key_is_refused() {
        let (tokens, _) = service();
        let (other, _) = service();
        let token = other.issue("user-1", Role::Admin).unwrap().token;
        assert_eq!(tokens.verify(&token), Err(TokenError::UnknownKey));
    }

    #[test]
    fn tampered_payload_fails_the_signature() {
        let (tokens, _) = service();
        let token = tokens.issue("user-1", Role::User).unwrap().token;
        let parts: Vec<&str> = token.split('.').collect();
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let forged = String::from_utf8(payload)
            .unwrap()
            .replace("\"user\"", "\"admin\"");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged),
            parts[2]
        );
        assert_eq!(tokens.verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let (tokens, file) = service();
        let now = Utc::now().timestamp();
        let header = format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, file.active);
        let payload = serde_json::to_string(&claims(Role::Admin, now, now + 600)).unwrap();
        let token = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        assert_eq!(tokens.verify(&token), Err(TokenError::BadHeader));
    }

    #[test]
    fn wrong_audience_and_garbage_are_refused() {
        let (tokens, _) = service();
        let now = Utc::now().timestamp();
        let mut wrong = claims(Role::User, now, now + 600);
        wrong.aud = "elsewhere".into();
        let token = tokens.sign(&wrong).unwrap();
        assert!(matches!(
            tokens.verify(&token),
            Err(TokenError::BadClaims(_))
        ));
        assert_eq!(tokens.verify("not-a-jwt"), Err(TokenError::Malformed));
    }
}
