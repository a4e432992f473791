//! Folding events into read-model rows in memory, free of I/O. A batch loads the rows its
//! events touch, folds every event in order, and writes back only the rows that changed.
//!
//! Each fold is idempotent, because the outbox relay may publish an event twice at two
//! Kafka offsets. A `User` or `Profile` event applies only when its sequence is above the
//! row's `last_sequence`. The latest location is the greatest `(recorded_at, sequence)`.
//! History rows are keyed by event id.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use meridian_domain::location::LocationEvent;
use meridian_domain::profile::ProfileEvent;
use meridian_domain::user::{Role, UserEvent};
use serde_json::Value;
use uuid::Uuid;

use crate::event::{AggregateEvent, ProjectedEvent};

/// A row of `rm_users`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
    pub active: bool,
    /// Stored as the role's name, which the table's CHECK limits to the three roles.
    #[sqlx(try_from = "String")]
    pub role: Role,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_sequence: i64,
    pub last_position: i64,
}

/// A row of `rm_profiles`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ProfileRow {
    pub user_id: Uuid,
    pub settings: Value,
    pub image: Option<Value>,
    /// Metadata of the current encrypted image, an `EncryptedImage` as JSON.
    pub encrypted_image: Option<Value>,
    pub updated_at: DateTime<Utc>,
    pub last_sequence: i64,
    pub last_position: i64,
}

/// A row of `rm_latest_locations`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LatestLocationRow {
    pub user_id: Uuid,
    pub latitude: f64,
    pub longitude: f64,
    pub recorded_at: DateTime<Utc>,
    pub sequence: i64,
    pub position: i64,
    pub event_id: Uuid,
}

/// A row of `rm_location_history`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub event_id: Uuid,
    pub user_id: Uuid,
    pub sequence: i64,
    pub latitude: f64,
    pub longitude: f64,
    pub recorded_at: DateTime<Utc>,
    pub position: i64,
}

/// Effect of folding one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    Applied,
    /// The read model already contains this event.
    AlreadyApplied,
    /// The event changes a user that the read model does not have, which means an
    /// earlier event of that user was never projected.
    UnknownUser,
}

/// Rows touched by one batch: their state before the batch, then after each fold.
#[derive(Debug, Default)]
pub struct ReadModelRows {
    pub users: HashMap<Uuid, UserRow>,
    pub profiles: HashMap<Uuid, ProfileRow>,
    pub latest_locations: HashMap<Uuid, LatestLocationRow>,
    /// Users whose `rm_users` row changed.
    pub changed_users: BTreeSet<Uuid>,
    /// Users whose `rm_profiles` row changed.
    pub changed_profiles: BTreeSet<Uuid>,
    /// Users whose `rm_latest_locations` row changed.
    pub changed_latest_locations: BTreeSet<Uuid>,
    /// New history rows, one per event id.
    pub history: Vec<HistoryRow>,
    history_ids: HashSet<Uuid>,
}

/// Normalizes an email the way the domain does before storing it: trimmed, lower-cased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

impl ReadModelRows {
    /// Removes and returns the history rows folded so far, and clears their event ids. A
    /// later fold of one of those events would add its row again, so only a caller whose
    /// events are unique, such as a replay of the event store, may drain the history.
    pub fn take_history(&mut self) -> Vec<HistoryRow> {
        self.history_ids.clear();
        std::mem::take(&mut self.history)
    }

    /// Folds one event into the rows.
    pub fn fold(&mut self, event: &ProjectedEvent) -> Folded {
        match &event.event {
            AggregateEvent::User(user_event) => self.fold_user(event, user_event),
            AggregateEvent::Profile(profile_event) => self.fold_profile(event, profile_event),
            AggregateEvent::Location(location_event) => self.fold_location(event, location_event),
        }
    }

    fn fold_user(&mut self, envelope: &ProjectedEvent, event: &UserEvent) -> Folded {
        if let Some(row) = self.users.get(&envelope.user_id) {
            if envelope.sequence <= row.last_sequence {
                return Folded::AlreadyApplied;
            }
        }
        if let UserEvent::UserRegistered {
            email,
            name,
            registered_at,
            ..
        } = event
        {
            let row = UserRow {
                user_id: envelope.user_id,
                email: normalize_email(email),
                name: name.clone(),
                active: true,
                role: Role::default(),
                registered_at: *registered_at,
                updated_at: envelope.stored_at,
                last_sequence: envelope.sequence,
                last_position: envelope.position,
            };
            self.users.insert(envelope.user_id, row);
            self.changed_users.insert(envelope.user_id);
            return Folded::Applied;
        }

        let Some(row) = self.users.get_mut(&envelope.user_id) else {
            return Folded::UnknownUser;
        };
        match event {
            UserEvent::NameChanged { name } => row.name = name.clone(),
            UserEvent::EmailChanged { email } => row.email = normalize_email(email),
            UserEvent::UserDeactivated { .. } => row.active = false,
            UserEvent::RoleChanged { role } => row.role = *role,
            // The password hash is in no read model; `UserErased` is applied by deleting
            // the user's rows after the batch is folded.
            UserEvent::PasswordChanged { .. }
            | UserEvent::UserRegistered { .. }
            | UserEvent::UserErased { .. } => {}
        }
        row.updated_at = envelope.stored_at;
        row.last_sequence = envelope.sequence;
        row.last_position = envelope.position;
        self.changed_users.insert(envelope.user_id);
        Folded::Applied
    }

    fn fold_profile(&mut self, envelope: &ProjectedEvent, event: &ProfileEvent) -> Folded {
        let row = self
            .profiles
            .entry(envelope.user_id)
            .or_insert_with(|| ProfileRow {
                user_id: envelope.user_id,
                settings: Value::Object(serde_json::Map::new()),
                image: None,
                encrypted_image: None,
                updated_at: envelope.stored_at,
                last_sequence: 0,
                last_position: 0,
            });
        if envelope.sequence <= row.last_sequence {
            return Folded::AlreadyApplied;
        }
        match event {
            ProfileEvent::ProfileSettingsUpdated { settings } => {
                row.settings = Value::Object(settings.clone());
            }
            ProfileEvent::ProfileImageChanged { image } => {
                // `ImageReference` has two string fields, so serializing it cannot fail.
                row.image = image
                    .as_ref()
                    .and_then(|image| serde_json::to_value(image).ok());
            }
            ProfileEvent::ProfileImageUploaded { image } => {
                // `EncryptedImage` contains only strings, an integer, unit enums and a
                // timestamp, so serializing it cannot fail.
                row.encrypted_image = serde_json::to_value(image).ok();
            }
        }
        row.updated_at = envelope.stored_at;
        row.last_sequence = envelope.sequence;
        row.last_position = envelope.position;
        self.changed_profiles.insert(envelope.user_id);
        Folded::Applied
    }

    fn fold_location(&mut self, envelope: &ProjectedEvent, event: &LocationEvent) -> Folded {
        let LocationEvent::LocationRecorded {
            latitude,
            longitude,
            recorded_at,
        } = *event;

        let candidate = LatestLocationRow {
            user_id: envelope.user_id,
            latitude,
            longitude,
            recorded_at,
            sequence: envelope.sequence,
            position: envelope.position,
            event_id: envelope.event_id,
        };
        // Equal timestamps: the later event, with the greater sequence, wins.
        let replaces = self
            .latest_locations
            .get(&envelope.user_id)
            .is_none_or(|latest| {
                (recorded_at, envelope.sequence) > (latest.recorded_at, latest.sequence)
            });
        if replaces {
            self.latest_locations.insert(envelope.user_id, candidate);
            self.changed_latest_locations.insert(envelope.user_id);
        }

        if !self.history_ids.insert(envelope.event_id) {
            return Folded::AlreadyApplied;
        }
        self.history.push(HistoryRow {
            event_id: envelope.event_id,
            user_id: envelope.user_id,
            sequence: envelope.sequence,
            latitude,
            longitude,
            recorded_at,
            position: envelope.position,
        });
        Folded::Applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_domain::profile::envelope::{KeyMode, MediaType};
    use meridian_domain::profile::{EncryptedImage, ImageReference};
    use serde_json::json;

    fn time(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_593_475_200 + seconds, 0).unwrap()
    }

    fn envelope(user_id: Uuid, sequence: i64, event: AggregateEvent) -> ProjectedEvent {
        ProjectedEvent {
            user_id,
            event_id: meridian_event_log::message::event_id("T", &user_id.to_string(), sequence),
            sequence,
            position: 100 + sequence,
            stored_at: time(1000 + sequence),
            event_type: String::new(),
            event,
        }
    }

    fn registered(user_id: Uuid) -> ProjectedEvent {
        envelope(
            user_id,
            1,
            AggregateEvent::User(UserEvent::UserRegistered {
                email: " Vessel-1@AIS.Example".into(),
                name: "SAMUEL I NEWHOUSE".into(),
                password_hash: "$argon2id$hash".into(),
                registered_at: time(0),
            }),
        )
    }

    fn located(user_id: Uuid, sequence: i64, seconds: i64) -> ProjectedEvent {
        envelope(
            user_id,
            sequence,
            AggregateEvent::Location(LocationEvent::LocationRecorded {
                latitude: sequence as f64,
                longitude: -74.0,
                recorded_at: time(seconds),
            }),
        )
    }

    #[test]
    fn registration_creates_active_user() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();

        assert_eq!(rows.fold(&registered(user_id)), Folded::Applied);

        let row = &rows.users[&user_id];
        assert_eq!(row.email, "vessel-1@ais.example");
        assert!(row.active);
        assert_eq!(row.registered_at, time(0));
        assert_eq!(row.last_sequence, 1);
        assert!(rows.changed_users.contains(&user_id));
    }

    #[test]
    fn user_changes_fold_in_order() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        rows.fold(&registered(user_id));
        let changes = [
            UserEvent::NameChanged { name: "B".into() },
            UserEvent::EmailChanged {
                email: "New@Example.com".into(),
            },
            UserEvent::PasswordChanged {
                password_hash: "$argon2id$other".into(),
            },
            UserEvent::UserDeactivated {
                deactivated_at: time(50),
            },
        ];
        for (index, change) in changes.into_iter().enumerate() {
            let sequence = i64::try_from(index).unwrap() + 2;
            let folded = rows.fold(&envelope(user_id, sequence, AggregateEvent::User(change)));
            assert_eq!(folded, Folded::Applied);
        }

        let row = &rows.users[&user_id];
        assert_eq!(row.name, "B");
        assert_eq!(row.email, "new@example.com");
        assert!(!row.active);
        assert_eq!(row.last_sequence, 5);
        assert_eq!(row.last_position, 105);
        assert_eq!(row.updated_at, time(1005));
    }

    #[test]
    fn registration_starts_with_user_role() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();

        rows.fold(&registered(user_id));

        assert_eq!(rows.users[&user_id].role, Role::User);
    }

    #[test]
    fn role_changes_fold_in_order() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        rows.fold(&registered(user_id));
        let admin = UserEvent::RoleChanged { role: Role::Admin };
        let analyst = UserEvent::RoleChanged {
            role: Role::Analyst,
        };

        let folded = rows.fold(&envelope(user_id, 2, AggregateEvent::User(admin.clone())));
        assert_eq!(folded, Folded::Applied);
        assert_eq!(rows.users[&user_id].role, Role::Admin);

        rows.fold(&envelope(user_id, 3, AggregateEvent::User(analyst)));
        let row = &rows.users[&user_id];
        assert_eq!(row.role, Role::Analyst);
        assert_eq!(row.last_sequence, 3);
        assert_eq!(row.last_position, 103);

        let repeated = rows.fold(&envelope(user_id, 2, AggregateEvent::User(admin)));
        assert_eq!(repeated, Folded::AlreadyApplied);
        assert_eq!(rows.users[&user_id].role, Role::Analyst);
    }

    #[test]
    fn role_change_of_unknown_user_is_reported() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        let promoted = envelope(
            user_id,
            2,
            AggregateEvent::User(UserEvent::RoleChanged { role: Role::Admin }),
        );

        assert_eq!(rows.fold(&promoted), Folded::UnknownUser);
        assert!(rows.users.is_empty());
    }

    #[test]
    fn repeated_user_event_is_already_applied() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        let rename = envelope(
            user_id,
            2,
            AggregateEvent::User(UserEvent::NameChanged { name: "B".into() }),
        );
        rows.fold(&registered(user_id));
        rows.fold(&rename);

        assert_eq!(rows.fold(&registered(user_id)), Folded::AlreadyApplied);
        assert_eq!(rows.fold(&rename), Folded::AlreadyApplied);
        assert_eq!(rows.users[&user_id].name, "B");
    }

    #[test]
    fn change_of_unknown_user_is_reported() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        let rename = envelope(
            user_id,
            2,
            AggregateEvent::User(UserEvent::NameChanged { name: "B".into() }),
        );

        assert_eq!(rows.fold(&rename), Folded::UnknownUser);
        assert!(rows.changed_users.is_empty());
    }

    #[test]
    fn profile_events_fill_settings_and_image() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        let settings = json!({"units": "metric"}).as_object().cloned().unwrap();
        let image = ImageReference::parse("image", "s3://bucket/a.png", "image/png").unwrap();

        rows.fold(&envelope(
            user_id,
            1,
            AggregateEvent::Profile(ProfileEvent::ProfileSettingsUpdated { settings }),
        ));
        rows.fold(&envelope(
            user_id,
            2,
            AggregateEvent::Profile(ProfileEvent::ProfileImageChanged { image: Some(image) }),
        ));

        let row = &rows.profiles[&user_id];
        assert_eq!(row.settings, json!({"units": "metric"}));
        assert_eq!(
            row.image,
            Some(json!({"uri": "s3://bucket/a.png", "content_type": "image/png"}))
        );
        assert_eq!(row.last_sequence, 2);
    }

    #[test]
    fn cleared_image_becomes_null() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        rows.profiles.insert(
            user_id,
            ProfileRow {
                user_id,
                settings: json!({}),
                image: Some(json!({"uri": "s3://b/a.png", "content_type": "image/png"})),
                encrypted_image: None,
                updated_at: time(0),
                last_sequence: 3,
                last_position: 50,
            },
        );

        rows.fold(&envelope(
            user_id,
            4,
            AggregateEvent::Profile(ProfileEvent::ProfileImageChanged { image: None }),
        ));

        assert_eq!(rows.profiles[&user_id].image, None);
    }

    fn encrypted_image(id: &str) -> EncryptedImage {
        EncryptedImage {
            id: id.repeat(64),
            size_bytes: 2048,
            media_type: MediaType::Png,
            key_mode: KeyMode::KeyFile,
            uploaded_at: time(5),
        }
    }

    #[test]
    fn uploaded_image_is_recorded() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();

        let folded = rows.fold(&envelope(
            user_id,
            1,
            AggregateEvent::Profile(ProfileEvent::ProfileImageUploaded {
                image: encrypted_image("a"),
            }),
        ));

        assert_eq!(folded, Folded::Applied);
        let row = &rows.profiles[&user_id];
        assert_eq!(
            row.encrypted_image,
            Some(json!({
                "id": "a".repeat(64),
                "size_bytes": 2048,
                "media_type": "image/png",
                "key_mode": "key-file",
                "uploaded_at": "2020-06-30T00:00:05Z",
            }))
        );
        assert_eq!(row.image, None);
        assert!(rows.changed_profiles.contains(&user_id));
    }

    #[test]
    fn later_upload_replaces_image_and_settings_stay() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        let settings = json!({"units": "metric"}).as_object().cloned().unwrap();
        let events = [
            ProfileEvent::ProfileImageUploaded {
                image: encrypted_image("a"),
            },
            ProfileEvent::ProfileSettingsUpdated { settings },
            ProfileEvent::ProfileImageUploaded {
                image: encrypted_image("b"),
            },
        ];
        for (sequence, event) in (1..).zip(events) {
            rows.fold(&envelope(user_id, sequence, AggregateEvent::Profile(event)));
        }

        let row = &rows.profiles[&user_id];
        let id = row.encrypted_image.as_ref().map(|image| &image["id"]);
        assert_eq!(id, Some(&json!("b".repeat(64))));
        assert_eq!(row.settings, json!({"units": "metric"}));
        assert_eq!(row.last_sequence, 3);
    }

    #[test]
    fn latest_location_keeps_greatest_timestamp() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();

        rows.fold(&located(user_id, 1, 100));
        rows.fold(&located(user_id, 2, 50));

        assert_eq!(rows.latest_locations[&user_id].sequence, 1);
        assert_eq!(rows.history.len(), 2);
    }

    #[test]
    fn equal_timestamps_let_later_event_win() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();

        rows.fold(&located(user_id, 1, 100));
        rows.fold(&located(user_id, 2, 100));

        assert_eq!(rows.latest_locations[&user_id].sequence, 2);
    }

    #[test]
    fn republished_location_changes_nothing() {
        let user_id = Uuid::new_v4();
        let mut rows = ReadModelRows::default();
        rows.fold(&located(user_id, 1, 100));
        rows.fold(&located(user_id, 2, 100));

        assert_eq!(rows.fold(&located(user_id, 1, 100)), Folded::AlreadyApplied);
        assert_eq!(rows.latest_locations[&user_id].sequence, 2);
        assert_eq!(rows.history.len(), 2);
    }
}
