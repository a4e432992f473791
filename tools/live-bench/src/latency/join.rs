//! Matches the events of accepted commands with the updates the receiver saw.

use uuid::Uuid;

use super::load::{AcceptedCommand, Phase};
use super::receiver::Received;

/// One measured event that arrived, with wall-clock times in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivery {
    pub position: i64,
    pub sent_ms: f64,
    pub accepted_ms: f64,
    pub received_ms: f64,
}

/// The measured events, split into those that arrived and those that did not.
#[derive(Debug, Default)]
pub struct Joined {
    pub deliveries: Vec<Delivery>,
    pub missing: Vec<(Uuid, i64)>,
}

/// Lists the `(user_id, sequence)` of every event that a measured command stored.
pub fn expected_events(commands: &[AcceptedCommand]) -> Vec<(Uuid, i64)> {
    commands
        .iter()
        .filter(|command| command.phase == Phase::Measured)
        .flat_map(|command| {
            let recorded = &command.recorded;
            // A command that stored nothing has neither sequence and expects no update.
            let sequences = recorded
                .first_sequence
                .zip(recorded.last_sequence)
                .map(|(first, last)| first..=last)
                .into_iter()
                .flatten();
            sequences.map(move |sequence| (recorded.user_id, sequence))
        })
        .collect()
}

/// Joins the measured commands' events with `received`.
///
/// A batch's response carries the first and last sequence but only the last position, so
/// the join uses `(user_id, sequence)`, which names the same event as its position.
pub fn join(commands: &[AcceptedCommand], received: &Received) -> Joined {
    let mut joined = Joined::default();
    for command in commands
        .iter()
        .filter(|command| command.phase == Phase::Measured)
    {
        for key in expected_events(std::slice::from_ref(command)) {
            match received.updates.get(&key) {
                Some(update) => joined.deliveries.push(Delivery {
                    position: update.position,
                    sent_ms: command.sent_ms,
                    accepted_ms: command.accepted_ms,
                    received_ms: update.received_ms,
                }),
                None => joined.missing.push(key),
            }
        }
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::super::client::Recorded;
    use super::super::receiver::ReceivedUpdate;
    use super::*;

    fn command(phase: Phase, user_id: Uuid, first: i64, last: i64) -> AcceptedCommand {
        AcceptedCommand {
            phase,
            recorded: Recorded {
                user_id,
                accepted: usize::try_from(last - first + 1).expect("small batch"),
                stored: usize::try_from(last - first + 1).expect("small batch"),
                first_sequence: Some(first),
                last_sequence: Some(last),
                position: Some(100 + last),
            },
            sent_ms: 1000.0,
            accepted_ms: 1010.0,
        }
    }

    fn received(user: Uuid, sequences: &[i64]) -> Received {
        let mut received = Received::default();
        for &sequence in sequences {
            received.updates.insert(
                (user, sequence),
                ReceivedUpdate {
                    position: 100 + sequence,
                    received_ms: 1015.0,
                },
            );
        }
        received
    }

    #[test]
    fn batch_events_each_matched() {
        let user = Uuid::new_v4();
        let joined = join(
            &[command(Phase::Measured, user, 3, 5)],
            &received(user, &[3, 4, 5]),
        );
        assert_eq!(joined.deliveries.len(), 3);
        assert!(joined.missing.is_empty());
        assert_eq!(
            joined.deliveries[0].received_ms - joined.deliveries[0].accepted_ms,
            5.0
        );
    }

    #[test]
    fn absent_update_is_missing() {
        let user = Uuid::new_v4();
        let joined = join(
            &[command(Phase::Measured, user, 3, 5)],
            &received(user, &[3, 5]),
        );
        assert_eq!(joined.missing, vec![(user, 4)]);
    }

    #[test]
    fn warmup_commands_not_measured() {
        let user = Uuid::new_v4();
        let commands = [command(Phase::Warmup, user, 1, 2)];
        assert!(expected_events(&commands).is_empty());
        assert!(join(&commands, &Received::default()).missing.is_empty());
    }

    #[test]
    fn command_storing_nothing_expects_nothing() {
        let user = Uuid::new_v4();
        let mut repeat = command(Phase::Measured, user, 1, 1);
        repeat.recorded.first_sequence = None;
        repeat.recorded.last_sequence = None;
        assert!(expected_events(&[repeat]).is_empty());
    }
}
