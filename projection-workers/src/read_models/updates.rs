//! The live update of each event, which the read-models projection appends to `rm_updates`
//! with the rows it folds (see `meridian_event_log::live`).

use meridian_domain::location::LocationEvent;
use meridian_domain::profile::ProfileEvent;
use meridian_domain::user::UserEvent;
use meridian_event_log::live::{NewUpdate, UpdateBody, UpdateKind};
use serde_json::{json, Value};

use crate::event::{AggregateEvent, ProjectedEvent};

/// Builds the update of `event`, or `None` for events no subscription shows
/// (`PasswordChanged`, because a password hash is never sent).
pub fn update_for(event: &ProjectedEvent) -> Option<NewUpdate> {
    let (kind, coordinates, data) = match &event.event {
        AggregateEvent::Location(LocationEvent::LocationRecorded {
            latitude,
            longitude,
            recorded_at,
        }) => (
            UpdateKind::Location,
            Some((*latitude, *longitude)),
            json!({ "latitude": latitude, "longitude": longitude, "recorded_at": recorded_at }),
        ),
        AggregateEvent::User(user) => (UpdateKind::Profile, None, user_data(user)?),
        AggregateEvent::Profile(profile) => (UpdateKind::Profile, None, profile_data(profile)),
    };
    Some(NewUpdate {
        position: event.position,
        user_id: event.user_id,
        kind,
        latitude: coordinates.map(|(latitude, _)| latitude),
        longitude: coordinates.map(|(_, longitude)| longitude),
        body: UpdateBody {
            sequence: event.sequence,
            event_type: event.event_type.clone(),
            data,
        },
    })
}

fn user_data(event: &UserEvent) -> Option<Value> {
    let data = match event {
        UserEvent::UserRegistered {
            email,
            name,
            registered_at,
            password_hash: _,
        } => json!({ "email": email, "name": name, "registered_at": registered_at }),
        UserEvent::NameChanged { name } => json!({ "name": name }),
        UserEvent::EmailChanged { email } => json!({ "email": email }),
        UserEvent::PasswordChanged { .. } => return None,
        UserEvent::UserDeactivated { deactivated_at } => {
            json!({ "deactivated_at": deactivated_at })
        }
        UserEvent::RoleChanged { role } => json!({ "role": role }),
        UserEvent::UserErased { erased_at } => json!({ "erased_at": erased_at }),
    };
    Some(data)
}

fn profile_data(event: &ProfileEvent) -> Value {
    match event {
        ProfileEvent::ProfileSettingsUpdated { settings } => json!({ "settings": settings }),
        ProfileEvent::ProfileImageChanged { image } => json!({ "image": image }),
        ProfileEvent::ProfileImageUploaded { image } => json!({ "encrypted_image": image }),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use meridian_domain::user::Role;
    use uuid::Uuid;

    use super::*;

    fn projected(event: AggregateEvent, event_type: &str) -> ProjectedEvent {
        ProjectedEvent {
            user_id: Uuid::from_u128(7),
            event_id: Uuid::from_u128(8),
            sequence: 3,
            position: 42,
            stored_at: Utc.with_ymd_and_hms(2026, 12, 4, 10, 0, 0).unwrap(),
            event_type: event_type.to_owned(),
            event,
        }
    }

    #[test]
    fn location_update_carries_coordinates_for_area_filters() {
        let recorded_at = Utc.with_ymd_and_hms(2020, 6, 30, 0, 1, 2).unwrap();
        let event = projected(
            AggregateEvent::Location(LocationEvent::LocationRecorded {
                latitude: 40.68,
                longitude: -74.02,
                recorded_at,
            }),
            "LocationRecorded",
        );

        let update = update_for(&event).expect("a location event is an update");

        assert_eq!(update.kind, UpdateKind::Location);
        assert_eq!(update.position, 42);
        assert_eq!(
            (update.latitude, update.longitude),
            (Some(40.68), Some(-74.02))
        );
        assert_eq!(update.body.sequence, 3);
        assert_eq!(update.body.data["recorded_at"], json!(recorded_at));
    }

    #[test]
    fn registration_update_leaves_out_the_password_hash() {
        let event = projected(
            AggregateEvent::User(UserEvent::UserRegistered {
                email: "ada@example.com".into(),
                name: "Ada".into(),
                password_hash: "$argon2id$secret".into(),
                registered_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            }),
            "UserRegistered",
        );

        let update = update_for(&event).expect("a registration is an update");

        assert_eq!(update.kind, UpdateKind::Profile);
        assert_eq!(update.latitude, None);
        assert!(update.body.data.get("password_hash").is_none());
        assert!(!update.body.data.to_string().contains("argon2"));
        assert_eq!(update.body.data["name"], "Ada");
    }

    #[test]
    fn role_change_is_a_profile_update() {
        let event = projected(
            AggregateEvent::User(UserEvent::RoleChanged {
                role: Role::Analyst,
            }),
            "RoleChanged",
        );

        let update = update_for(&event).expect("a role change is an update");

        assert_eq!(update.kind, UpdateKind::Profile);
        assert_eq!(update.user_id, Uuid::from_u128(7));
        assert_eq!(update.position, 42);
        assert_eq!(update.latitude, None);
        assert_eq!(update.body.event_type, "RoleChanged");
        assert_eq!(update.body.sequence, 3);
        assert_eq!(update.body.data, json!({"role": "analyst"}));
    }

    #[test]
    fn password_change_is_not_an_update() {
        let event = projected(
            AggregateEvent::User(UserEvent::PasswordChanged {
                password_hash: "$argon2id$secret".into(),
            }),
            "PasswordChanged",
        );

        assert_eq!(update_for(&event), None);
    }
}
