//! The `User` aggregate: identity, contact details, credentials and role of one user.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::field::{Email, UserName};
use crate::{FieldError, EVENT_VERSION};

/// Permission level of a user. Every user starts as [`Role::User`], and `RoleChanged` events
/// change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May read and change only their own user, profile and locations.
    #[default]
    User,
    /// May read and change every user.
    Admin,
    /// May read analytics and replay history, but change nothing.
    Analyst,
}

impl Role {
    /// Every role, in the order error messages list them.
    pub const ALL: [Role; 3] = [Role::User, Role::Admin, Role::Analyst];

    /// Returns the name that JSON, the read models and [`Role::from_str`] use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
        }
    }
}

impl FromStr for Role {
    type Err = FieldError;

    /// Parses a role name exactly as [`Role::as_str`] writes it: lower case, no spaces.
    fn from_str(raw: &str) -> Result<Self, FieldError> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or_else(|| {
                let names: Vec<&str> = Role::ALL.into_iter().map(Role::as_str).collect();
                FieldError::new("role", format!("must be one of {}", names.join(", ")))
            })
    }
}

/// Parses a role name with the rules of [`Role::from_str`], for names read back from storage.
impl TryFrom<String> for Role {
    type Error = FieldError;

    fn try_from(raw: String) -> Result<Self, FieldError> {
        raw.parse()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub enum UserCommand {
    /// Registers the user. A role other than [`Role::User`] is stored as a `RoleChanged`
    /// event right after `UserRegistered`, in the same commit.
    Register {
        email: Email,
        name: UserName,
        /// An argon2 PHC string; the plaintext never reaches the domain.
        password_hash: String,
        role: Role,
        at: DateTime<Utc>,
    },
    ChangeName {
        name: UserName,
    },
    ChangeEmail {
        email: Email,
    },
    ChangePassword {
        password_hash: String,
    },
    Deactivate {
        at: DateTime<Utc>,
    },
    ChangeRole {
        role: Role,
    },
    /// Erases the user. The event store destroys the user's data key in the transaction
    /// that stores the resulting event, so every earlier event of theirs becomes unreadable.
    Erase {
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserEvent {
    UserRegistered {
        email: String,
        name: String,
        password_hash: String,
        registered_at: DateTime<Utc>,
    },
    NameChanged {
        name: String,
    },
    EmailChanged {
        email: String,
    },
    PasswordChanged {
        password_hash: String,
    },
    UserDeactivated {
        deactivated_at: DateTime<Utc>,
    },
    /// Carries no personal data, so no field of it is sealed.
    RoleChanged {
        role: Role,
    },
    /// Carries no personal data: it is the one event of the user that stays readable.
    UserErased {
        erased_at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        let name = match self {
            Self::UserRegistered { .. } => "UserRegistered",
            Self::NameChanged { .. } => "NameChanged",
            Self::EmailChanged { .. } => "EmailChanged",
            Self::PasswordChanged { .. } => "PasswordChanged",
            Self::UserDeactivated { .. } => "UserDeactivated",
            Self::RoleChanged { .. } => "RoleChanged",
            Self::UserErased { .. } => "UserErased",
        };
        name.to_owned()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION.to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("user is already registered")]
    AlreadyRegistered,
    #[error("user not found")]
    NotFound,
    #[error("user is deactivated")]
    Deactivated,
    #[error("user was erased")]
    Erased,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub registered: bool,
    pub active: bool,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    #[serde(default)]
    pub erased: bool,
    /// Absent from snapshots taken before roles existed, which belong to users.
    #[serde(default)]
    pub role: Role,
}

impl User {
    fn require_active(&self) -> Result<(), UserError> {
        if self.erased {
            return Err(UserError::Erased);
        }
        if !self.registered {
            return Err(UserError::NotFound);
        }
        if !self.active {
            return Err(UserError::Deactivated);
        }
        Ok(())
    }
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = UserError;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), UserError> {
        let event = match command {
            UserCommand::Register {
                email,
                name,
                password_hash,
                role,
                at,
            } => {
                if self.erased {
                    return Err(UserError::Erased);
                }
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                let registered = UserEvent::UserRegistered {
                    email: email.as_str().to_owned(),
                    name: name.as_str().to_owned(),
                    password_hash,
                    registered_at: at,
                };
                sink.write(registered, self).await;
                if role == Role::User {
                    return Ok(());
                }
                UserEvent::RoleChanged { role }
            }
            UserCommand::ChangeName { name } => {
                self.require_active()?;
                if self.name == name.as_str() {
                    return Ok(());
                }
                UserEvent::NameChanged {
                    name: name.as_str().to_owned(),
                }
            }
            UserCommand::ChangeEmail { email } => {
                self.require_active()?;
                if self.email == email.as_str() {
                    return Ok(());
                }
                UserEvent::EmailChanged {
                    email: email.as_str().to_owned(),
                }
            }
            UserCommand::ChangePassword { password_hash } => {
                self.require_active()?;
                UserEvent::PasswordChanged { password_hash }
            }
            UserCommand::Deactivate { at } => {
                if self.erased {
                    return Err(UserError::Erased);
                }
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if !self.active {
                    return Ok(());
                }
                UserEvent::UserDeactivated { deactivated_at: at }
            }
            UserCommand::ChangeRole { role } => {
                self.require_active()?;
                if self.role == role {
                    return Ok(());
                }
                UserEvent::RoleChanged { role }
            }
            UserCommand::Erase { at } => {
                if !self.registered {
                    return Err(UserError::NotFound);
                }
                if self.erased {
                    return Ok(());
                }
                UserEvent::UserErased { erased_at: at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::UserRegistered {
                email,
                name,
                password_hash,
                ..
            } => {
                self.registered = true;
                self.active = true;
                self.email = email;
                self.name = name;
                self.password_hash = password_hash;
            }
            UserEvent::NameChanged { name } => self.name = name,
            UserEvent::EmailChanged { email } => self.email = email,
            UserEvent::PasswordChanged { password_hash } => self.password_hash = password_hash,
            UserEvent::UserDeactivated { .. } => self.active = false,
            UserEvent::RoleChanged { role } => self.role = role,
            UserEvent::UserErased { .. } => {
                *self = Self {
                    registered: true,
                    erased: true,
                    ..Self::default()
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type UserTest = TestFramework<User>;

    fn at() -> DateTime<Utc> {
        "2020-06-30T00:00:00Z".parse().unwrap()
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered {
            email: "vessel-1@ais.example".into(),
            name: "SAMUEL I NEWHOUSE".into(),
            password_hash: "$argon2id$hash".into(),
            registered_at: at(),
        }
    }

    fn register_command() -> UserCommand {
        register_command_as(Role::User)
    }

    fn register_command_as(role: Role) -> UserCommand {
        UserCommand::Register {
            email: Email::parse("email", "Vessel-1@AIS.example").unwrap(),
            name: UserName::parse("name", "SAMUEL I NEWHOUSE").unwrap(),
            password_hash: "$argon2id$hash".into(),
            role,
            at: at(),
        }
    }

    fn role_changed(role: Role) -> UserEvent {
        UserEvent::RoleChanged { role }
    }

    #[test]
    fn register_new_user() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register_command())
            .then_expect_events(vec![registered()]);
    }

    #[test]
    fn register_twice_is_rejected() {
        UserTest::with(())
            .given(vec![registered()])
            .when(register_command())
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn rename_unknown_user_is_rejected() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::ChangeName {
                name: UserName::parse("name", "X").unwrap(),
            })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn rename_to_same_name_stores_nothing() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangeName {
                name: UserName::parse("name", "SAMUEL I NEWHOUSE").unwrap(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn change_email_records_normalized_email() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangeEmail {
                email: Email::parse("email", "New@Example.com").unwrap(),
            })
            .then_expect_events(vec![UserEvent::EmailChanged {
                email: "new@example.com".into(),
            }]);
    }

    #[test]
    fn change_password_records_hash() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangePassword {
                password_hash: "$argon2id$other".into(),
            })
            .then_expect_events(vec![UserEvent::PasswordChanged {
                password_hash: "$argon2id$other".into(),
            }]);
    }

    #[test]
    fn deactivated_user_cannot_be_renamed() {
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserDeactivated {
                    deactivated_at: at(),
                },
            ])
            .when(UserCommand::ChangeName {
                name: UserName::parse("name", "Other").unwrap(),
            })
            .then_expect_error(UserError::Deactivated);
    }

    #[test]
    fn deactivate_twice_stores_nothing() {
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserDeactivated {
                    deactivated_at: at(),
                },
            ])
            .when(UserCommand::Deactivate { at: at() })
            .then_expect_events(vec![]);
    }

    #[test]
    fn erase_forgets_personal_data_and_refuses_later_commands() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::Erase { at: at() })
            .then_expect_events(vec![UserEvent::UserErased { erased_at: at() }]);

        let erased = || vec![registered(), UserEvent::UserErased { erased_at: at() }];
        UserTest::with(())
            .given(erased())
            .when(UserCommand::ChangeName {
                name: UserName::parse("name", "Other").unwrap(),
            })
            .then_expect_error(UserError::Erased);
        UserTest::with(())
            .given(erased())
            .when(register_command())
            .then_expect_error(UserError::Erased);
        UserTest::with(())
            .given(erased())
            .when(UserCommand::Erase { at: at() })
            .then_expect_events(vec![]);

        let mut user = User::default();
        for event in erased() {
            user.apply(event);
        }
        assert!(user.email.is_empty());
        assert!(user.name.is_empty());
        assert!(user.password_hash.is_empty());
    }

    #[test]
    fn erase_unknown_user_is_rejected() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::Erase { at: at() })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn register_as_admin_adds_role_event() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register_command_as(Role::Admin))
            .then_expect_events(vec![registered(), role_changed(Role::Admin)]);
    }

    #[test]
    fn register_as_analyst_adds_role_event() {
        UserTest::with(())
            .given_no_previous_events()
            .when(register_command_as(Role::Analyst))
            .then_expect_events(vec![registered(), role_changed(Role::Analyst)]);
    }

    #[test]
    fn register_as_admin_twice_is_rejected() {
        UserTest::with(())
            .given(vec![registered(), role_changed(Role::Admin)])
            .when(register_command_as(Role::Admin))
            .then_expect_error(UserError::AlreadyRegistered);
    }

    #[test]
    fn change_role_records_new_role() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangeRole {
                role: Role::Analyst,
            })
            .then_expect_events(vec![role_changed(Role::Analyst)]);
    }

    #[test]
    fn change_role_back_to_user_records_it() {
        UserTest::with(())
            .given(vec![registered(), role_changed(Role::Admin)])
            .when(UserCommand::ChangeRole { role: Role::User })
            .then_expect_events(vec![role_changed(Role::User)]);
    }

    #[test]
    fn change_to_default_role_stores_nothing() {
        UserTest::with(())
            .given(vec![registered()])
            .when(UserCommand::ChangeRole { role: Role::User })
            .then_expect_events(vec![]);
    }

    #[test]
    fn change_to_current_role_stores_nothing() {
        UserTest::with(())
            .given(vec![registered(), role_changed(Role::Admin)])
            .when(UserCommand::ChangeRole { role: Role::Admin })
            .then_expect_events(vec![]);
    }

    #[test]
    fn change_role_of_unknown_user_is_rejected() {
        UserTest::with(())
            .given_no_previous_events()
            .when(UserCommand::ChangeRole { role: Role::Admin })
            .then_expect_error(UserError::NotFound);
    }

    #[test]
    fn deactivated_user_cannot_change_role() {
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserDeactivated {
                    deactivated_at: at(),
                },
            ])
            .when(UserCommand::ChangeRole { role: Role::Admin })
            .then_expect_error(UserError::Deactivated);
    }

    #[test]
    fn erased_user_cannot_change_role() {
        UserTest::with(())
            .given(vec![
                registered(),
                UserEvent::UserErased { erased_at: at() },
            ])
            .when(UserCommand::ChangeRole { role: Role::Admin })
            .then_expect_error(UserError::Erased);
    }

    #[test]
    fn apply_keeps_latest_role() {
        let mut user = User::default();
        user.apply(registered());
        assert_eq!(user.role, Role::User);

        user.apply(role_changed(Role::Admin));
        assert_eq!(user.role, Role::Admin);
        user.apply(role_changed(Role::Analyst));
        assert_eq!(user.role, Role::Analyst);
    }

    #[test]
    fn erase_resets_role() {
        let mut user = User::default();
        user.apply(registered());
        user.apply(role_changed(Role::Admin));

        user.apply(UserEvent::UserErased { erased_at: at() });

        assert_eq!(user.role, Role::User);
    }

    #[test]
    fn role_change_event_type() {
        let event = role_changed(Role::Admin);
        assert_eq!(event.event_type(), "RoleChanged");
        assert_eq!(event.event_version(), EVENT_VERSION);
    }

    #[test]
    fn every_role_parses_from_its_name() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
    }

    #[test]
    fn role_names_are_lowercase_words() {
        let names: Vec<&str> = Role::ALL.into_iter().map(Role::as_str).collect();
        assert_eq!(names, ["user", "admin", "analyst"]);
    }

    #[test]
    fn unknown_role_is_rejected() {
        for raw in ["root", "", "Admin", " admin", "admin "] {
            let error = raw.parse::<Role>().unwrap_err();
            assert_eq!(error.field, "role", "{raw:?}");
            assert_eq!(
                error.reason, "must be one of user, admin, analyst",
                "{raw:?}"
            );
        }
    }

    #[test]
    fn role_serializes_as_its_name() {
        for role in Role::ALL {
            let json = serde_json::to_value(role).unwrap();
            assert_eq!(json, serde_json::json!(role.as_str()));
            assert_eq!(serde_json::from_value::<Role>(json).unwrap(), role);
        }
    }

    #[test]
    fn role_change_payload_is_tagged() {
        let payload = serde_json::to_value(role_changed(Role::Analyst)).unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"RoleChanged": {"role": "analyst"}})
        );
    }

    #[test]
    fn snapshot_without_role_loads_as_user() {
        let snapshot = serde_json::json!({
            "registered": true,
            "active": true,
            "email": "vessel-1@ais.example",
            "name": "SAMUEL I NEWHOUSE",
            "password_hash": "$argon2id$hash",
        });
        let user: User = serde_json::from_value(snapshot).unwrap();
        assert_eq!(user.role, Role::User);
    }
}
