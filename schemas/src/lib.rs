//! JSON Schemas of Meridian events and a validator for them.
//!
//! Each event type has one schema per version, `events/<EventType>.v<version>.json` (draft
//! 2020-12). A schema describes the Kafka value of the event: its fields without the enum tag
//! that postgres-es wraps them in (see `EventMessage::data` in `meridian-event-log`). The files
//! are embedded at compile time, so the validator needs no file system.
//!
//! - [`validate`] checks event data against the schema of its type and version.
//! - [`all`] lists every `(event type, version)` pair that has a schema.
//! - [`schema`] returns the text of one schema.

use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::Value;

/// One embedded schema file.
struct EmbeddedSchema {
    event_type: &'static str,
    version: &'static str,
    text: &'static str,
}

/// Embeds `events/<type>.v<version>.json`.
macro_rules! embed {
    ($event_type:literal, $version:literal) => {
        EmbeddedSchema {
            event_type: $event_type,
            version: $version,
            text: include_str!(concat!("../events/", $event_type, ".v", $version, ".json")),
        }
    };
}

/// Every schema, in the order the aggregates declare their events. A new version of an event
/// gets a new file and a new line here; existing files are never edited.
const SCHEMAS: &[EmbeddedSchema] = &[
    embed!("UserRegistered", "1"),
    embed!("NameChanged", "1"),
    embed!("EmailChanged", "1"),
    embed!("PasswordChanged", "1"),
    embed!("UserDeactivated", "1"),
    embed!("RoleChanged", "1"),
    embed!("UserErased", "1"),
    embed!("ProfileSettingsUpdated", "1"),
    embed!("ProfileImageChanged", "1"),
    embed!("ProfileImageUploaded", "1"),
    embed!("LocationRecorded", "1"),
];

/// A compiled schema, or the reason it did not compile.
type Compiled = Result<Validator, String>;

/// Compiled validators by `(event type, version)`.
static VALIDATORS: LazyLock<HashMap<(&'static str, &'static str), Compiled>> =
    LazyLock::new(|| {
        SCHEMAS
            .iter()
            .map(|schema| ((schema.event_type, schema.version), compile(schema.text)))
            .collect()
    });

fn compile(text: &str) -> Compiled {
    let document: Value = serde_json::from_str(text).map_err(|error| error.to_string())?;
    jsonschema::draft202012::options()
        // Draft 2020-12 treats `format` as an annotation unless a validator opts in.
        .should_validate_formats(true)
        .build(&document)
        .map_err(|error| error.to_string())
}

/// One way in which event data breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the offending value, such as `/latitude`; empty for the whole object.
    pub instance_path: String,
    /// Description of the problem, as the `jsonschema` crate words it.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.instance_path.is_empty() {
            "/"
        } else {
            &self.instance_path
        };
        write!(formatter, "{path}: {}", self.message)
    }
}

/// Failure to validate event data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// No schema exists for this event type and version.
    #[error("no schema for event type {event_type:?} version {version:?}")]
    Unknown { event_type: String, version: String },
    /// The data breaks the schema; `violations` lists every reason, never empty.
    #[error("{event_type} v{version} data is invalid: {}", join(violations))]
    Invalid {
        event_type: String,
        version: String,
        violations: Vec<Violation>,
    },
    /// The embedded schema itself is broken. The crate's tests compile every schema, so this
    /// only happens when a file was edited without running them.
    #[error("schema of {event_type} v{version} does not compile: {reason}")]
    Broken {
        event_type: String,
        version: String,
        reason: String,
    },
}

fn join(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Validates `data`, the Kafka value of an event, against the schema of `event_type` at
/// `version` (the `ce_schemaversion` header, such as `"1"`).
pub fn validate(event_type: &str, version: &str, data: &Value) -> Result<(), SchemaError> {
    let Some(compiled) = VALIDATORS.get(&(event_type, version)) else {
        return Err(SchemaError::Unknown {
            event_type: event_type.to_owned(),
            version: version.to_owned(),
        });
    };
    let validator = compiled.as_ref().map_err(|reason| SchemaError::Broken {
        event_type: event_type.to_owned(),
        version: version.to_owned(),
        reason: reason.clone(),
    })?;

    let violations: Vec<Violation> = validator
        .iter_errors(data)
        .map(|error| Violation {
            instance_path: error.instance_path.to_string(),
            message: error.to_string(),
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Invalid {
            event_type: event_type.to_owned(),
            version: version.to_owned(),
            violations,
        })
    }
}

/// Lists every `(event type, version)` pair that has a schema.
pub fn all() -> Vec<(&'static str, &'static str)> {
    SCHEMAS
        .iter()
        .map(|schema| (schema.event_type, schema.version))
        .collect()
}

/// Returns the text of the schema of `event_type` at `version`, if there is one.
pub fn schema(event_type: &str, version: &str) -> Option<&'static str> {
    SCHEMAS
        .iter()
        .find(|schema| schema.event_type == event_type && schema.version == version)
        .map(|schema| schema.text)
}

/// Returns the path of a schema relative to this crate, `events/<EventType>.v<version>.json`.
/// `EventMessage::data_schema` returns the same path below `schemas/`.
pub fn file_name(event_type: &str, version: &str) -> String {
    format!("events/{event_type}.v{version}.json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_schema_compiles() {
        for (event_type, version) in all() {
            let compiled = &VALIDATORS[&(event_type, version)];
            assert!(
                compiled.is_ok(),
                "{event_type} v{version}: {:?}",
                compiled.as_ref().err()
            );
        }
    }

    #[test]
    fn every_schema_is_valid_draft_2020_12() {
        for (event_type, version) in all() {
            let text = schema(event_type, version).unwrap();
            let document: Value = serde_json::from_str(text).unwrap();
            let result = jsonschema::draft202012::meta::validate(&document);
            assert!(result.is_ok(), "{event_type} v{version}: {result:?}");
        }
    }

    #[test]
    fn every_schema_declares_its_identity() {
        for (event_type, version) in all() {
            let document: Value =
                serde_json::from_str(schema(event_type, version).unwrap()).unwrap();
            assert_eq!(
                document["$schema"],
                json!("https://json-schema.org/draft/2020-12/schema"),
                "{event_type} v{version}"
            );
            assert_eq!(
                document["$id"],
                json!(format!("urn:meridian:events:{event_type}:v{version}")),
                "{event_type} v{version}"
            );
        }
    }

    #[test]
    fn every_schema_rejects_extra_properties() {
        for (event_type, version) in all() {
            let document: Value =
                serde_json::from_str(schema(event_type, version).unwrap()).unwrap();
            assert_eq!(
                document["additionalProperties"],
                json!(false),
                "{event_type} v{version}"
            );
        }
    }

    #[test]
    fn every_schema_file_is_embedded() {
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/events");
        let mut on_disk: Vec<String> = std::fs::read_dir(directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = all()
            .into_iter()
            .map(|(event_type, version)| format!("{event_type}.v{version}.json"))
            .collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn unknown_event_type_is_an_error() {
        let error = validate("ShipSank", "1", &json!({})).unwrap_err();
        assert!(matches!(error, SchemaError::Unknown { .. }), "{error}");
    }

    #[test]
    fn unknown_version_is_an_error() {
        let data = json!({"name": "A"});
        let error = validate("NameChanged", "2", &data).unwrap_err();
        assert!(matches!(error, SchemaError::Unknown { .. }), "{error}");
    }

    #[test]
    fn invalid_data_lists_every_violation() {
        let data = json!({"latitude": 91.0, "longitude": -181.0});
        let Err(SchemaError::Invalid { violations, .. }) = validate("LocationRecorded", "1", &data)
        else {
            panic!("expected an Invalid error");
        };
        let paths: Vec<&str> = violations
            .iter()
            .map(|violation| violation.instance_path.as_str())
            .collect();
        assert!(paths.contains(&"/latitude"), "{violations:?}");
        assert!(paths.contains(&"/longitude"), "{violations:?}");
        assert!(paths.contains(&""), "missing recorded_at: {violations:?}");
    }

    #[test]
    fn file_name_matches_data_schema_header() {
        assert_eq!(
            file_name("LocationRecorded", "1"),
            "events/LocationRecorded.v1.json"
        );
    }
}
