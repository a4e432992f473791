//! Validated values. Each type is built only by parsing, so holding one proves it is valid.

use serde::{Deserialize, Serialize};

/// A rejected input value: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Maximum length of an email address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Maximum length of a display name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// An email address, trimmed and lower-cased so that uniqueness ignores case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let normalized = raw.trim().to_lowercase();
        if normalized.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if normalized.len() > MAX_EMAIL_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_EMAIL_LEN} bytes"),
            ));
        }
        let Some((local, domain)) = normalized.split_once('@') else {
            return Err(FieldError::new(field, "must contain '@'"));
        };
        if local.is_empty() || !is_hostname(domain) {
            return Err(FieldError::new(
                field,
                "must look like local-part@domain.tld",
            ));
        }
        if normalized
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FieldError::new(field, "must not contain whitespace"));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Returns whether `domain` is a DNS host name of at least two labels, each of letters, digits
/// and inner hyphens (RFC 1123), as JSON Schema's `email` format expects.
fn is_hostname(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && domain.len() <= 253
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A display name: trimmed, not empty, at most [`MAX_NAME_CHARS`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserName(String);

impl UserName {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if trimmed.chars().count() > MAX_NAME_CHARS {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_NAME_CHARS} characters"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Minimum and maximum password length, in characters, checked before hashing.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=1024;

/// Checks a plaintext password against the length policy; the caller hashes it afterwards.
pub fn check_password(field: &str, raw: &str) -> Result<(), FieldError> {
    let chars = raw.chars().count();
    if !PASSWORD_CHARS.contains(&chars) {
        return Err(FieldError::new(
            field,
            format!(
                "must be {} to {} characters long",
                PASSWORD_CHARS.start(),
                PASSWORD_CHARS.end()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_lowercased_and_trimmed() {
        let email = Email::parse("email", "  Vessel-1@AIS.Example ").unwrap();
        assert_eq!(email.as_str(), "vessel-1@ais.example");
    }

    #[test]
    fn email_without_domain_is_rejected() {
        let error = Email::parse("email", "nobody@").unwrap_err();
        assert_eq!(error.field, "email");
    }

    #[test]
    fn email_with_underscore_in_domain_is_rejected() {
        assert!(Email::parse("email", "a@my_host.com").is_err());
    }

    #[test]
    fn email_with_space_is_rejected() {
        assert!(Email::parse("email", "a b@example.com").is_err());
    }

    #[test]
    fn blank_name_is_rejected() {
        assert!(UserName::parse("name", "   ").is_err());
    }

    #[test]
    fn short_password_is_rejected() {
        let error = check_password("password", "short").unwrap_err();
        assert_eq!(error.field, "password");
    }
}
