//! Every event the domain can produce validates against its schema once it is shaped as it
//! travels on Kafka: serialized as postgres-es stores it, then stripped of its enum tag by
//! `EventMessage::from_stored`.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::test::TestFramework;
use cqrs_es::{Aggregate, DomainEvent};
use meridian_crypto::envelope::DataKey;
use meridian_crypto::personal::{personal_fields, seal_fields};
use meridian_crypto::UserKeys;
use meridian_domain::field::{Email, UserName};
use meridian_domain::location::{
    LocationEvent, LocationReport, LocationServices, LocationTrack, RecordLocations, ReportHistory,
};
use meridian_domain::profile::envelope::{KeyMode, MediaType};
use meridian_domain::profile::{
    EncryptedImage, ImageReference, Profile, ProfileCommand, ProfileEvent, Settings,
};
use meridian_domain::user::{Role, User, UserCommand, UserEvent};
use meridian_event_log::{EventMessage, StoredEvent};
use serde_json::{json, Value};

/// An argon2id hash in PHC format, as the command service stores it.
const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzYWx0$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

fn at(text: &str) -> DateTime<Utc> {
    text.parse().unwrap()
}

/// Shapes `event` as its Kafka value: the payload postgres-es stores, without the enum tag.
fn kafka_value<E: DomainEvent>(event: &E) -> (String, String, Value) {
    let stored = StoredEvent {
        aggregate_type: "Test".into(),
        aggregate_id: "8f0c1f0e-3d4b-4a51-9a43-2b5f0f9e4c11".into(),
        sequence: 1,
        position: 1,
        event_type: event.event_type(),
        event_version: event.event_version(),
        stored_at: Utc::now(),
        payload: serde_json::to_value(event).unwrap(),
    };
    let message = EventMessage::from_stored(stored);
    (message.event_type, message.schema_version, message.data)
}

fn registered() -> UserEvent {
    UserEvent::UserRegistered {
        email: "vessel-367000140@ais.example".into(),
        name: "SAMUEL I NEWHOUSE".into(),
        password_hash: PASSWORD_HASH.into(),
        registered_at: at("2020-06-30T00:00:00Z"),
    }
}

fn handle_user(given: Vec<UserEvent>, command: UserCommand) -> Vec<UserEvent> {
    TestFramework::<User>::with(())
        .given(given)
        .when(command)
        .inspect_result()
        .unwrap()
}

/// Number of `UserEvent` variants. The exhaustive match in `user_variant` stops compiling when
/// a variant is added, and the coverage test then fails until `user_events` builds it.
const USER_VARIANTS: usize = 7;

fn user_variant(event: &UserEvent) -> usize {
    match event {
        UserEvent::UserRegistered { .. } => 0,
        UserEvent::NameChanged { .. } => 1,
        UserEvent::EmailChanged { .. } => 2,
        UserEvent::PasswordChanged { .. } => 3,
        UserEvent::UserDeactivated { .. } => 4,
        UserEvent::UserErased { .. } => 5,
        UserEvent::RoleChanged { .. } => 6,
    }
}

/// Builds one event of each `UserEvent` variant by running commands on the aggregate, and a
/// `RoleChanged` event of every role.
fn user_events() -> Vec<UserEvent> {
    let mut events = handle_user(
        vec![],
        UserCommand::Register {
            email: Email::parse("email", "  Vessel-367000140@AIS.example ").unwrap(),
            name: UserName::parse("name", " SAMUEL I NEWHOUSE ").unwrap(),
            password_hash: PASSWORD_HASH.into(),
            role: Role::Admin,
            at: at("2020-06-30T00:00:00.123456Z"),
        },
    );
    events.extend(handle_user(
        vec![registered()],
        UserCommand::ChangeRole {
            role: Role::Analyst,
        },
    ));
    events.extend(handle_user(
        vec![registered(), UserEvent::RoleChanged { role: Role::Admin }],
        UserCommand::ChangeRole { role: Role::User },
    ));
    events.extend(handle_user(
        vec![registered()],
        UserCommand::ChangeName {
            name: UserName::parse("name", "Staten Island Ferry").unwrap(),
        },
    ));
    events.extend(handle_user(
        vec![registered()],
        UserCommand::ChangeEmail {
            email: Email::parse("email", "Ferry@Example.com").unwrap(),
        },
    ));
    events.extend(handle_user(
        vec![registered()],
        UserCommand::ChangePassword {
            password_hash: PASSWORD_HASH.replace("RdescudvJ", "Xk2sdf9aQ"),
        },
    ));
    events.extend(handle_user(
        vec![registered()],
        UserCommand::Deactivate {
            at: at("2020-07-01T12:00:00Z"),
        },
    ));
    events.extend(handle_user(
        vec![registered()],
        UserCommand::Erase {
            at: at("2020-07-02T08:00:00Z"),
        },
    ));
    events
}

const PROFILE_VARIANTS: usize = 3;

fn profile_variant(event: &ProfileEvent) -> usize {
    match event {
        ProfileEvent::ProfileSettingsUpdated { .. } => 0,
        ProfileEvent::ProfileImageChanged { .. } => 1,
        ProfileEvent::ProfileImageUploaded { .. } => 2,
    }
}

fn image() -> ImageReference {
    ImageReference::parse("image", "s3://meridian-images/367000140.png", "image/png").unwrap()
}

fn encrypted_image() -> EncryptedImage {
    EncryptedImage {
        id: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        size_bytes: 48_213,
        media_type: MediaType::Webp,
        key_mode: KeyMode::KeyFile,
        uploaded_at: at("2026-12-05T09:30:00.123456Z"),
    }
}

/// Builds every `ProfileEvent` variant, the image both set and cleared, and an encrypted
/// image upload.
fn profile_events() -> Vec<ProfileEvent> {
    let settings = json!({"units": "metric", "map": {"zoom": 12, "layers": ["ais"]}});
    let mut events = TestFramework::<Profile>::with(())
        .given_no_previous_events()
        .when(ProfileCommand::Update {
            settings: Settings::parse("settings", settings).unwrap(),
            image: Some(image()),
        })
        .inspect_result()
        .unwrap();
    let cleared = TestFramework::<Profile>::with(())
        .given(vec![ProfileEvent::ProfileImageChanged {
            image: Some(image()),
        }])
        .when(ProfileCommand::Update {
            settings: Settings::default(),
            image: None,
        })
        .inspect_result()
        .unwrap();
    events.extend(cleared);
    let uploaded = TestFramework::<Profile>::with(())
        .given_no_previous_events()
        .when(ProfileCommand::UploadImage {
            image: encrypted_image(),
        })
        .inspect_result()
        .unwrap();
    events.extend(uploaded);
    events
}

const LOCATION_VARIANTS: usize = 1;

fn location_variant(event: &LocationEvent) -> usize {
    match event {
        LocationEvent::LocationRecorded { .. } => 0,
    }
}

/// A history that stores nothing, so every report is new.
struct EmptyHistory;

#[async_trait::async_trait]
impl ReportHistory for EmptyHistory {
    async fn contains(&self, _user_id: &str, _report: &LocationReport) -> Result<bool, String> {
        Ok(false)
    }
}

/// Builds `LocationRecorded` events at the edges of the coordinate ranges.
fn location_events() -> Vec<LocationEvent> {
    let services = LocationServices {
        history: Arc::new(EmptyHistory),
    };
    let reports = [
        (-90.0, -180.0),
        (90.0, 180.0),
        (40.64409, -74.07157),
        (0.0, 0.0),
    ]
    .into_iter()
    .enumerate()
    .map(|(index, (latitude, longitude))| LocationReport {
        latitude,
        longitude,
        recorded_at: at("2020-06-30T00:00:00Z") + chrono::Duration::seconds(index as i64),
    })
    .collect();
    TestFramework::<LocationTrack>::with(services)
        .given_no_previous_events()
        .when(RecordLocations {
            user_id: "8f0c1f0e-3d4b-4a51-9a43-2b5f0f9e4c11".into(),
            reports,
            received_at: Utc::now(),
        })
        .inspect_result()
        .unwrap()
}

fn assert_covers<E>(events: &[E], variant: fn(&E) -> usize, count: usize, aggregate: &str) {
    let covered: BTreeSet<usize> = events.iter().map(variant).collect();
    let expected: BTreeSet<usize> = (0..count).collect();
    assert_eq!(covered, expected, "{aggregate} events built by the test");
}

/// Checks each event in plaintext, as with `MERIDIAN_SEAL_EVENTS=false`, and with its
/// personal fields sealed, as the command service stores and publishes it by default.
fn assert_all_valid<E: DomainEvent>(events: &[E]) {
    let keys = UserKeys::new(
        "8f0c1f0e-3d4b-4a51-9a43-2b5f0f9e4c11",
        1,
        &DataKey::generate(),
    );
    for event in events {
        let (event_type, version, data) = kafka_value(event);
        let result = meridian_schemas::validate(&event_type, &version, &data);
        assert!(result.is_ok(), "{event_type} {data}: {result:?}");

        let mut sealed = json!({ event_type.clone(): data });
        seal_fields(&keys, &event_type, &mut sealed).unwrap();
        let sealed = &sealed[&event_type];
        for field in personal_fields(&event_type) {
            if let Some(value) = sealed.get(*field) {
                assert!(value.is_string(), "{event_type}.{field} sealed: {value}");
            }
        }
        let result = meridian_schemas::validate(&event_type, &version, sealed);
        assert!(result.is_ok(), "sealed {event_type} {sealed}: {result:?}");
    }
}

#[test]
fn tests_build_every_event_variant() {
    assert_covers(&user_events(), user_variant, USER_VARIANTS, User::TYPE);
    assert_covers(
        &profile_events(),
        profile_variant,
        PROFILE_VARIANTS,
        Profile::TYPE,
    );
    assert_covers(
        &location_events(),
        location_variant,
        LOCATION_VARIANTS,
        LocationTrack::TYPE,
    );
}

#[test]
fn user_events_match_their_schemas() {
    assert_all_valid(&user_events());
}

#[test]
fn profile_events_match_their_schemas() {
    assert_all_valid(&profile_events());
}

#[test]
fn location_events_match_their_schemas() {
    assert_all_valid(&location_events());
}

#[test]
fn schemas_exist_for_exactly_the_domain_event_types() {
    let mut domain: BTreeSet<(String, String)> = BTreeSet::new();
    for (event_type, version, _) in user_events().iter().map(kafka_value) {
        domain.insert((event_type, version));
    }
    for (event_type, version, _) in profile_events().iter().map(kafka_value) {
        domain.insert((event_type, version));
    }
    for (event_type, version, _) in location_events().iter().map(kafka_value) {
        domain.insert((event_type, version));
    }
    let current: BTreeSet<(String, String)> = meridian_schemas::all()
        .into_iter()
        .filter(|(_, version)| *version == meridian_domain::EVENT_VERSION)
        .map(|(event_type, version)| (event_type.to_owned(), version.to_owned()))
        .collect();
    assert_eq!(domain, current);
}

/// Returns the Kafka value of a real `LocationRecorded` event, to be broken by a test.
fn location_value() -> Value {
    let (_, _, data) = kafka_value(&location_events()[2]);
    data
}

fn is_valid(event_type: &str, data: &Value) -> bool {
    meridian_schemas::validate(event_type, "1", data).is_ok()
}

#[test]
fn location_without_latitude_is_invalid() {
    let mut data = location_value();
    data.as_object_mut().unwrap().remove("latitude");
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn latitude_above_90_is_invalid() {
    let mut data = location_value();
    data["latitude"] = json!(90.000001);
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn latitude_below_minus_90_is_invalid() {
    let mut data = location_value();
    data["latitude"] = json!(-90.5);
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn longitude_above_180_is_invalid() {
    let mut data = location_value();
    data["longitude"] = json!(180.25);
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn latitude_as_string_is_invalid() {
    let mut data = location_value();
    data["latitude"] = json!("40.6");
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn non_finite_latitude_is_invalid() {
    // serde_json writes NaN and infinities as null.
    let mut data = location_value();
    data["latitude"] = serde_json::to_value(f64::NAN).unwrap();
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn location_with_extra_field_is_invalid() {
    let mut data = location_value();
    data["speed_knots"] = json!(12.5);
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn recorded_at_not_a_date_time_is_invalid() {
    let mut data = location_value();
    data["recorded_at"] = json!("2020-06-30 yesterday");
    assert!(!is_valid("LocationRecorded", &data));
}

#[test]
fn tagged_payload_is_invalid() {
    // The schema describes the value without the enum tag; the stored form must not pass.
    let tagged = serde_json::to_value(&location_events()[0]).unwrap();
    assert!(!is_valid("LocationRecorded", &tagged));
}

fn registered_value() -> Value {
    kafka_value(&user_events()[0]).2
}

#[test]
fn registered_without_email_is_invalid() {
    let mut data = registered_value();
    data.as_object_mut().unwrap().remove("email");
    assert!(!is_valid("UserRegistered", &data));
}

#[test]
fn registered_with_malformed_email_is_invalid() {
    let mut data = registered_value();
    data["email"] = json!("vessel-367000140.ais.example");
    assert!(!is_valid("UserRegistered", &data));
}

#[test]
fn registered_with_uppercase_email_is_invalid() {
    let mut data = registered_value();
    data["email"] = json!("Vessel-367000140@ais.example");
    assert!(!is_valid("UserRegistered", &data));
}

#[test]
fn registered_with_blank_name_is_invalid() {
    let mut data = registered_value();
    data["name"] = json!("  ");
    assert!(!is_valid("UserRegistered", &data));
}

#[test]
fn registered_with_untrimmed_name_is_invalid() {
    let mut data = registered_value();
    data["name"] = json!(" SAMUEL I NEWHOUSE");
    assert!(!is_valid("UserRegistered", &data));
}

#[test]
fn name_with_control_character_is_invalid() {
    let data = json!({"name": "SAMUEL\u{7}NEWHOUSE"});
    assert!(!is_valid("NameChanged", &data));
}

#[test]
fn name_of_201_characters_is_invalid() {
    let data = json!({"name": "x".repeat(201)});
    assert!(!is_valid("NameChanged", &data));
}

#[test]
fn name_of_200_characters_is_valid() {
    let data = json!({"name": "é".repeat(200)});
    assert!(is_valid("NameChanged", &data));
}

#[test]
fn plaintext_password_is_invalid() {
    let data = json!({"password_hash": "hunter22"});
    assert!(!is_valid("PasswordChanged", &data));
}

#[test]
fn role_not_in_enum_is_invalid() {
    for role in ["root", "Admin", ""] {
        let data = json!({ "role": role });
        assert!(!is_valid("RoleChanged", &data), "{data}");
    }
}

#[test]
fn role_change_without_role_is_invalid() {
    assert!(!is_valid("RoleChanged", &json!({})));
}

#[test]
fn role_as_array_is_invalid() {
    let data = json!({"role": ["admin"]});
    assert!(!is_valid("RoleChanged", &data));
}

#[test]
fn every_domain_role_is_valid() {
    for role in Role::ALL {
        let data = json!({ "role": role });
        assert!(is_valid("RoleChanged", &data), "{data}");
    }
}

#[test]
fn deactivated_at_as_number_is_invalid() {
    let data = json!({"deactivated_at": 1_593_475_200});
    assert!(!is_valid("UserDeactivated", &data));
}

#[test]
fn settings_as_array_is_invalid() {
    let data = json!({"settings": ["metric"]});
    assert!(!is_valid("ProfileSettingsUpdated", &data));
}

#[test]
fn image_without_content_type_is_invalid() {
    let data = json!({"image": {"uri": "s3://meridian-images/a.png"}});
    assert!(!is_valid("ProfileImageChanged", &data));
}

#[test]
fn image_with_text_media_type_is_invalid() {
    let data =
        json!({"image": {"uri": "s3://meridian-images/a.txt", "content_type": "text/plain"}});
    assert!(!is_valid("ProfileImageChanged", &data));
}

#[test]
fn image_with_extra_field_is_invalid() {
    let data = json!({"image": {
        "uri": "s3://meridian-images/a.png",
        "content_type": "image/png",
        "width": 640
    }});
    assert!(!is_valid("ProfileImageChanged", &data));
}

#[test]
fn image_change_without_image_field_is_invalid() {
    assert!(!is_valid("ProfileImageChanged", &json!({})));
}

/// Returns the Kafka value of a real `ProfileImageUploaded` event, to be broken by a test.
fn uploaded_value() -> Value {
    let event = ProfileEvent::ProfileImageUploaded {
        image: encrypted_image(),
    };
    kafka_value(&event).2
}

#[test]
fn uploaded_image_id_not_sha256_hex_is_invalid() {
    let mut data = uploaded_value();
    data["image"]["id"] = json!("9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08");
    assert!(!is_valid("ProfileImageUploaded", &data));
}

#[test]
fn uploaded_image_of_unknown_media_type_is_invalid() {
    let mut data = uploaded_value();
    data["image"]["media_type"] = json!("image/svg+xml");
    assert!(!is_valid("ProfileImageUploaded", &data));
}

#[test]
fn uploaded_image_over_2_mib_is_invalid() {
    let mut data = uploaded_value();
    data["image"]["size_bytes"] = json!(2_097_153);
    assert!(!is_valid("ProfileImageUploaded", &data));
}

#[test]
fn uploaded_image_with_unknown_key_mode_is_invalid() {
    let mut data = uploaded_value();
    data["image"]["key_mode"] = json!("kms");
    assert!(!is_valid("ProfileImageUploaded", &data));
}

#[test]
fn uploaded_image_with_extra_field_is_invalid() {
    let mut data = uploaded_value();
    data["image"]["plaintext_sha256"] = json!("00");
    assert!(!is_valid("ProfileImageUploaded", &data));
}
