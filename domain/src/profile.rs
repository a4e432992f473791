//! The `Profile` aggregate: a user's settings object, the reference to their profile image,
//! and the metadata of the encrypted profile image they uploaded.
//!
//! - [`envelope`]: the binary format of an image that the client encrypted.

pub mod envelope;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use self::envelope::{KeyMode, MediaType};
use crate::{FieldError, EVENT_VERSION};

/// Maximum size of the settings object, serialized as JSON.
pub const MAX_SETTINGS_BYTES: usize = 16 * 1024;
/// URI schemes an image reference may use: object storage or the web. Anything else, such
/// as `javascript:` or `data:`, would be served back to clients verbatim.
pub const IMAGE_URI_SCHEMES: [&str; 3] = ["https://", "http://", "s3://"];
/// Maximum length of an image URI.
pub const MAX_IMAGE_URI_LEN: usize = 2048;

/// Storage location and media type of a profile image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageReference {
    pub uri: String,
    pub content_type: String,
}

impl ImageReference {
    pub fn parse(field: &str, uri: &str, content_type: &str) -> Result<Self, FieldError> {
        let uri = uri.trim();
        if uri.is_empty() {
            return Err(FieldError::new(format!("{field}.uri"), "must not be empty"));
        }
        if uri.len() > MAX_IMAGE_URI_LEN {
            return Err(FieldError::new(
                format!("{field}.uri"),
                format!("must be at most {MAX_IMAGE_URI_LEN} bytes"),
            ));
        }
        if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(FieldError::new(
                format!("{field}.uri"),
                "must not contain whitespace",
            ));
        }
        let scheme_ok = IMAGE_URI_SCHEMES
            .iter()
            .any(|scheme| uri.len() > scheme.len() && uri.to_ascii_lowercase().starts_with(scheme));
        if !scheme_ok {
            return Err(FieldError::new(
                format!("{field}.uri"),
                "must be an https://, http:// or s3:// URI",
            ));
        }
        if !content_type.starts_with("image/") || content_type.len() <= "image/".len() {
            return Err(FieldError::new(
                format!("{field}.content_type"),
                "must be an image media type such as image/png",
            ));
        }
        Ok(Self {
            uri: uri.to_owned(),
            content_type: content_type.to_owned(),
        })
    }
}

/// A settings object that fits in [`MAX_SETTINGS_BYTES`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(Map<String, Value>);

impl Settings {
    pub fn parse(field: &str, value: Value) -> Result<Self, FieldError> {
        let Value::Object(map) = value else {
            return Err(FieldError::new(field, "must be a JSON object"));
        };
        let size = serde_json::to_vec(&map).map_or(usize::MAX, |bytes| bytes.len());
        if size > MAX_SETTINGS_BYTES {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_SETTINGS_BYTES} bytes as JSON"),
            ));
        }
        Ok(Self(map))
    }

    pub fn into_inner(self) -> Map<String, Value> {
        self.0
    }
}

/// Metadata of a profile image that the client encrypted. The server stores the envelope
/// under `id` and never receives the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedImage {
    /// Lower-case hex SHA-256 of the whole envelope.
    pub id: String,
    /// Size of the whole envelope in bytes.
    pub size_bytes: u64,
    /// Media type of the plaintext image, as the envelope header declares it.
    pub media_type: MediaType,
    pub key_mode: KeyMode,
    pub uploaded_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub enum ProfileCommand {
    /// Replaces the whole profile: the settings object and the image (none clears it).
    Update {
        settings: Settings,
        image: Option<ImageReference>,
    },
    /// Makes an uploaded encrypted image the current one. Uploading the current image again
    /// stores nothing.
    UploadImage { image: EncryptedImage },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProfileEvent {
    ProfileSettingsUpdated { settings: Map<String, Value> },
    ProfileImageChanged { image: Option<ImageReference> },
    ProfileImageUploaded { image: EncryptedImage },
}

impl DomainEvent for ProfileEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::ProfileSettingsUpdated { .. } => "ProfileSettingsUpdated",
            Self::ProfileImageChanged { .. } => "ProfileImageChanged",
            Self::ProfileImageUploaded { .. } => "ProfileImageUploaded",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub settings: Map<String, Value>,
    pub image: Option<ImageReference>,
    /// The current encrypted image, which `Update` leaves unchanged.
    #[serde(default)]
    pub encrypted_image: Option<EncryptedImage>,
}

impl Aggregate for Profile {
    const TYPE: &'static str = "Profile";
    type Command = ProfileCommand;
    type Event = ProfileEvent;
    type Error = ProfileError;
    type Services = ();

    async fn handle(
        &mut self,
        command: ProfileCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), ProfileError> {
        match command {
            ProfileCommand::Update { settings, image } => {
                let settings = settings.into_inner();
                if settings != self.settings {
                    sink.write(ProfileEvent::ProfileSettingsUpdated { settings }, self)
                        .await;
                }
                if image != self.image {
                    sink.write(ProfileEvent::ProfileImageChanged { image }, self)
                        .await;
                }
            }
            ProfileCommand::UploadImage { image } => {
                let current_id = self.encrypted_image.as_ref().map(|image| &image.id);
                if current_id != Some(&image.id) {
                    sink.write(ProfileEvent::ProfileImageUploaded { image }, self)
                        .await;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: ProfileEvent) {
        match event {
            ProfileEvent::ProfileSettingsUpdated { settings } => self.settings = settings,
            ProfileEvent::ProfileImageChanged { image } => self.image = image,
            ProfileEvent::ProfileImageUploaded { image } => self.encrypted_image = Some(image),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use serde_json::json;

    fn settings(value: Value) -> Settings {
        Settings::parse("settings", value).unwrap()
    }

    fn image() -> ImageReference {
        ImageReference::parse("image", "s3://bucket/a.png", "image/png").unwrap()
    }

    #[test]
    fn first_update_stores_settings_and_image() {
        TestFramework::<Profile>::with(())
            .given_no_previous_events()
            .when(ProfileCommand::Update {
                settings: settings(json!({"units": "metric"})),
                image: Some(image()),
            })
            .then_expect_events(vec![
                ProfileEvent::ProfileSettingsUpdated {
                    settings: json!({"units": "metric"}).as_object().unwrap().clone(),
                },
                ProfileEvent::ProfileImageChanged {
                    image: Some(image()),
                },
            ]);
    }

    #[test]
    fn unchanged_profile_stores_nothing() {
        TestFramework::<Profile>::with(())
            .given(vec![ProfileEvent::ProfileSettingsUpdated {
                settings: json!({"units": "metric"}).as_object().unwrap().clone(),
            }])
            .when(ProfileCommand::Update {
                settings: settings(json!({"units": "metric"})),
                image: None,
            })
            .then_expect_events(vec![]);
    }

    fn encrypted_image(id: &str) -> EncryptedImage {
        EncryptedImage {
            id: id.repeat(64),
            size_bytes: 1024,
            media_type: MediaType::Png,
            key_mode: KeyMode::Passphrase,
            uploaded_at: "2026-12-05T10:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn upload_records_encrypted_image() {
        TestFramework::<Profile>::with(())
            .given_no_previous_events()
            .when(ProfileCommand::UploadImage {
                image: encrypted_image("a"),
            })
            .then_expect_events(vec![ProfileEvent::ProfileImageUploaded {
                image: encrypted_image("a"),
            }]);
    }

    #[test]
    fn upload_of_current_image_stores_nothing() {
        let mut again = encrypted_image("a");
        again.uploaded_at = "2026-12-06T10:00:00Z".parse().unwrap();
        TestFramework::<Profile>::with(())
            .given(vec![ProfileEvent::ProfileImageUploaded {
                image: encrypted_image("a"),
            }])
            .when(ProfileCommand::UploadImage { image: again })
            .then_expect_events(vec![]);
    }

    #[test]
    fn upload_of_other_image_replaces_current() {
        TestFramework::<Profile>::with(())
            .given(vec![ProfileEvent::ProfileImageUploaded {
                image: encrypted_image("a"),
            }])
            .when(ProfileCommand::UploadImage {
                image: encrypted_image("b"),
            })
            .then_expect_events(vec![ProfileEvent::ProfileImageUploaded {
                image: encrypted_image("b"),
            }]);
    }

    #[test]
    fn update_keeps_encrypted_image() {
        let mut profile = Profile::default();
        profile.apply(ProfileEvent::ProfileImageUploaded {
            image: encrypted_image("a"),
        });
        profile.apply(ProfileEvent::ProfileImageChanged { image: None });
        assert_eq!(profile.encrypted_image, Some(encrypted_image("a")));
    }

    #[test]
    fn settings_must_be_an_object() {
        let error = Settings::parse("settings", json!([1, 2])).unwrap_err();
        assert_eq!(error.field, "settings");
    }

    #[test]
    fn oversized_settings_are_rejected() {
        let big = "x".repeat(MAX_SETTINGS_BYTES);
        assert!(Settings::parse("settings", json!({ "blob": big })).is_err());
    }

    #[test]
    fn javascript_image_uri_is_rejected() {
        let error = ImageReference::parse("image", "javascript:alert(1)", "image/png").unwrap_err();
        assert_eq!(error.field, "image.uri");
    }

    #[test]
    fn image_needs_image_media_type() {
        let error = ImageReference::parse("image", "s3://b/a.txt", "text/plain").unwrap_err();
        assert_eq!(error.field, "image.content_type");
    }
}
