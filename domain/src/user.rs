//! The `User` aggregate: identity, contact details and credentials of one user.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::field::{Email, UserName};
use crate::{FieldError, EVENT_VERSION};

#[derive(Debug, Clone)]
pub enum UserCommand {
    Register {
        email: Email,
        name: UserName,
        /// An argon2 PHC string; the plaintext never reaches the domain.
        password_hash: String,
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
                at,
            } => {
                if self.erased {
                    return Err(UserError::Erased);
                }
                if self.registered {
                    return Err(UserError::AlreadyRegistered);
                }
                UserEvent::UserRegistered {
                    email: email.as_str().to_owned(),
                    name: name.as_str().to_owned(),
                    password_hash,
                    registered_at: at,
                }
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
        UserCommand::Register {
            email: Email::parse("email", "Vessel-1@AIS.example").unwrap(),
            name: UserName::parse("name", "SAMUEL I NEWHOUSE").unwrap(),
            password_hash: "$argon2id$hash".into(),
            at: at(),
        }
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
}
