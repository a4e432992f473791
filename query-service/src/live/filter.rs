//! Subscription requests as clients send them, checked field by field, who may make them,
//! and the filter each one selects updates by.

use meridian_auth::{AuthError, Caller, Role};
use meridian_event_log::live::{LiveUpdate, UpdateKind};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::geo::BoundingBox;

/// The selection of updates that a subscription receives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Filter {
    /// Every location update of one user.
    UserLocations(Uuid),
    /// Every location update inside a bounding box, edges included.
    Area(BoundingBox),
    /// Every profile update of one user.
    UserProfile(Uuid),
}

impl Filter {
    /// Returns whether `update` belongs to this subscription. Blanked updates of erased users
    /// belong to none.
    pub fn matches(&self, update: &LiveUpdate) -> bool {
        if update.body.is_none() {
            return false;
        }
        match self {
            Self::UserLocations(user) => {
                update.kind == UpdateKind::Location && update.user_id == *user
            }
            Self::UserProfile(user) => {
                update.kind == UpdateKind::Profile && update.user_id == *user
            }
            Self::Area(area) => {
                update.kind == UpdateKind::Location
                    && matches!(
                        (update.latitude, update.longitude),
                        (Some(latitude), Some(longitude)) if area.contains(latitude, longitude)
                    )
            }
        }
    }

    /// Passes when `caller` may receive the updates of this filter: a user's locations go
    /// to that user, admins and analysts; a user's profile, which contains personal data, to
    /// that user and admins; an area, which spans many users, to admins and analysts.
    pub fn authorize(&self, caller: &Caller) -> Result<(), RequestError> {
        let (field, checked) = match self {
            Self::UserLocations(user) => {
                ("user_id", caller.require_access_to(&user.to_string(), true))
            }
            Self::UserProfile(user) => (
                "user_id",
                caller.require_access_to(&user.to_string(), false),
            ),
            Self::Area(_) => ("topic", caller.require_role(&[Role::Admin, Role::Analyst])),
        };
        checked.map_err(|error| {
            let message = match error {
                AuthError::Forbidden { message, .. } => message,
                other => other.to_string(),
            };
            RequestError {
                code: "forbidden",
                field: Some(field),
                message,
            }
        })
    }

    /// Returns the user whose updates alone this filter selects, if any, so that its backlog
    /// can be read through the `(user_id, seq)` index.
    pub fn user(&self) -> Option<(Uuid, UpdateKind)> {
        match self {
            Self::UserLocations(user) => Some((*user, UpdateKind::Location)),
            Self::UserProfile(user) => Some((*user, UpdateKind::Profile)),
            Self::Area(_) => None,
        }
    }
}

/// A checked `subscribe` request.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    pub filter: Filter,
    /// The last position the client saw, if it resumes.
    pub after: Option<i64>,
}

/// Why a `subscribe` request was refused: the field and the reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestError {
    pub code: &'static str,
    /// The field at fault, or `None` when the payload as a whole is.
    pub field: Option<&'static str>,
    pub message: String,
}

impl RequestError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: "invalid_subscription",
            field: Some(field),
            message: message.into(),
        }
    }

    fn payload(message: impl Into<String>) -> Self {
        Self {
            field: None,
            ..Self::new("", message)
        }
    }
}

/// Text of a client's value as an error message quotes it: at most 64 characters, so a
/// huge value does not come back whole.
fn quoted(raw: &str) -> String {
    const MAX_CHARS: usize = 64;
    match raw.char_indices().nth(MAX_CHARS) {
        Some((end, _)) => format!("{:?}… ({} bytes)", &raw[..end], raw.len()),
        None => format!("{raw:?}"),
    }
}

impl SubscribeRequest {
    /// Checks a `subscribe` payload.
    pub fn parse(payload: &Value) -> Result<Self, RequestError> {
        let Some(fields) = payload.as_object() else {
            return Err(RequestError::payload("the payload must be an object"));
        };
        let topic = fields
            .get("topic")
            .ok_or_else(|| RequestError::new("topic", "is required"))?
            .as_str()
            .ok_or_else(|| RequestError::new("topic", "must be a string"))?;
        let filter = match topic {
            "user_locations" => Filter::UserLocations(user_id(payload)?),
            "user_profile" => Filter::UserProfile(user_id(payload)?),
            "area" => Filter::Area(bounding_box(payload)?),
            other => {
                return Err(RequestError::new(
                    "topic",
                    format!(
                        "must be user_locations, area or user_profile, got {}",
                        quoted(other)
                    ),
                ))
            }
        };
        let after = match fields.get("after") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64().filter(|after| *after >= 0).ok_or_else(|| {
                RequestError::new("after", "must be a position: an integer of 0 or more")
            })?),
        };
        Ok(Self { filter, after })
    }
}

fn user_id(payload: &Value) -> Result<Uuid, RequestError> {
    let raw = payload
        .get("user_id")
        .ok_or_else(|| RequestError::new("user_id", "is required for this topic"))?
        .as_str()
        .ok_or_else(|| RequestError::new("user_id", "must be a string"))?;
    Uuid::parse_str(raw)
        .map_err(|_| RequestError::new("user_id", format!("{} is not a UUID", quoted(raw))))
}

fn bounding_box(payload: &Value) -> Result<BoundingBox, RequestError> {
    const SHAPE: &str = "must be [min_longitude, min_latitude, max_longitude, max_latitude]";
    let values = payload
        .get("bbox")
        .ok_or_else(|| RequestError::new("bbox", "is required for the area topic"))?
        .as_array()
        .filter(|values| values.len() == 4)
        .ok_or_else(|| RequestError::new("bbox", SHAPE))?;
    let mut numbers = [0.0; 4];
    for (number, value) in numbers.iter_mut().zip(values) {
        *number = value
            .as_f64()
            .ok_or_else(|| RequestError::new("bbox", format!("{SHAPE}, all numbers")))?;
    }
    let [min_longitude, min_latitude, max_longitude, max_latitude] = numbers;
    BoundingBox::new(min_longitude, min_latitude, max_longitude, max_latitude)
        .map_err(|reason| RequestError::new("bbox", reason))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use meridian_event_log::live::UpdateBody;
    use serde_json::json;

    use super::*;

    fn location(user_id: Uuid, latitude: f64, longitude: f64) -> LiveUpdate {
        LiveUpdate {
            seq: 1,
            position: 10,
            user_id,
            kind: UpdateKind::Location,
            latitude: Some(latitude),
            longitude: Some(longitude),
            body: Some(UpdateBody {
                sequence: 1,
                event_type: "LocationRecorded".into(),
                data: json!({}),
            }),
            committed_at: Utc::now(),
        }
    }

    fn rejected_field(payload: Value) -> Option<&'static str> {
        SubscribeRequest::parse(&payload)
            .expect_err("the request is invalid")
            .field
    }

    #[test]
    fn area_matches_locations_inside_the_box_only() {
        let request = SubscribeRequest::parse(&json!({
            "topic": "area", "bbox": [-74.1, 40.6, -73.9, 40.8]
        }))
        .unwrap();
        let user = Uuid::new_v4();

        assert!(request.filter.matches(&location(user, 40.7, -74.0)));
        assert!(request.filter.matches(&location(user, 40.6, -74.1)));
        assert!(!request.filter.matches(&location(user, 40.9, -74.0)));
        assert!(!request.filter.matches(&location(user, 40.7, -73.0)));
    }

    #[test]
    fn user_filter_skips_other_rows() {
        let user = Uuid::new_v4();
        let filter = SubscribeRequest::parse(&json!({
            "topic": "user_locations", "user_id": user.to_string(), "after": 5
        }))
        .unwrap()
        .filter;
        let mut erased = location(user, 1.0, 1.0);
        erased.body = None;
        let mut profile = location(user, 1.0, 1.0);
        profile.kind = UpdateKind::Profile;

        assert!(filter.matches(&location(user, 1.0, 1.0)));
        assert!(!filter.matches(&location(Uuid::new_v4(), 1.0, 1.0)));
        assert!(!filter.matches(&erased));
        assert!(!filter.matches(&profile));
    }

    #[test]
    fn after_is_optional_and_must_be_a_position() {
        let user = Uuid::new_v4().to_string();
        let parse = |after: Value| {
            SubscribeRequest::parse(
                &json!({"topic": "user_profile", "user_id": user, "after": after}),
            )
        };

        assert_eq!(parse(json!(null)).unwrap().after, None);
        assert_eq!(parse(json!(0)).unwrap().after, Some(0));
        assert_eq!(parse(json!(42)).unwrap().after, Some(42));
        assert_eq!(parse(json!(-1)).unwrap_err().field, Some("after"));
        assert_eq!(parse(json!("42")).unwrap_err().field, Some("after"));
        assert_eq!(parse(json!(1.5)).unwrap_err().field, Some("after"));
    }

    fn caller(user_id: Uuid, role: Role) -> Caller {
        Caller {
            user_id: user_id.to_string(),
            role,
        }
    }

    #[test]
    fn users_may_subscribe_to_themselves_only() {
        let user = Uuid::new_v4();
        let other = Uuid::new_v4();
        let caller = caller(user, Role::User);

        assert!(Filter::UserLocations(user).authorize(&caller).is_ok());
        assert!(Filter::UserProfile(user).authorize(&caller).is_ok());
        for filter in [Filter::UserLocations(other), Filter::UserProfile(other)] {
            let error = filter.authorize(&caller).unwrap_err();
            assert_eq!(error.code, "forbidden");
            assert_eq!(error.field, Some("user_id"));
            assert!(
                error.message.contains(&other.to_string()),
                "{}",
                error.message
            );
        }
    }

    #[test]
    fn area_needs_admin_or_analyst() {
        let area = Filter::Area(BoundingBox::new(-180.0, -90.0, 180.0, 90.0).unwrap());

        let error = area
            .authorize(&caller(Uuid::new_v4(), Role::User))
            .unwrap_err();
        assert_eq!(error.code, "forbidden");
        assert_eq!(error.field, Some("topic"));
        assert!(area.authorize(&caller(Uuid::new_v4(), Role::Admin)).is_ok());
        assert!(area
            .authorize(&caller(Uuid::new_v4(), Role::Analyst))
            .is_ok());
    }

    #[test]
    fn analysts_get_locations_but_not_profiles() {
        let user = Uuid::new_v4();
        let analyst = caller(Uuid::new_v4(), Role::Analyst);

        assert!(Filter::UserLocations(user).authorize(&analyst).is_ok());
        let error = Filter::UserProfile(user).authorize(&analyst).unwrap_err();
        assert_eq!(error.field, Some("user_id"));
    }

    #[test]
    fn admins_may_subscribe_to_anyone() {
        let user = Uuid::new_v4();
        let admin = caller(Uuid::new_v4(), Role::Admin);

        assert!(Filter::UserLocations(user).authorize(&admin).is_ok());
        assert!(Filter::UserProfile(user).authorize(&admin).is_ok());
    }

    #[test]
    fn quoted_values_are_cut_short() {
        let huge = "x".repeat(10_000);
        let error = SubscribeRequest::parse(&json!({ "topic": huge })).unwrap_err();

        assert!(error.message.len() < 200, "{}", error.message);
        assert!(error.message.contains("10000 bytes"), "{}", error.message);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(rejected_field(json!("area")), None);
        assert_eq!(rejected_field(json!({})), Some("topic"));
        assert_eq!(rejected_field(json!({"topic": 3})), Some("topic"));
        assert_eq!(rejected_field(json!({"topic": "weather"})), Some("topic"));
        assert_eq!(
            rejected_field(json!({"topic": "user_locations"})),
            Some("user_id")
        );
        assert_eq!(
            rejected_field(json!({"topic": "user_profile", "user_id": "ship-7"})),
            Some("user_id")
        );
        assert_eq!(rejected_field(json!({"topic": "area"})), Some("bbox"));
        assert_eq!(
            rejected_field(json!({"topic": "area", "bbox": [1, 2, 3]})),
            Some("bbox")
        );
        assert_eq!(
            rejected_field(json!({"topic": "area", "bbox": [1, "2", 3, 4]})),
            Some("bbox")
        );
        assert_eq!(
            rejected_field(json!({"topic": "area", "bbox": [-190, 0, 0, 10]})),
            Some("bbox")
        );
        assert_eq!(
            rejected_field(json!({"topic": "area", "bbox": [0, -91, 10, 10]})),
            Some("bbox")
        );
        assert_eq!(
            rejected_field(json!({"topic": "area", "bbox": [170, 0, -170, 10]})),
            Some("bbox")
        );
    }
}
