//! Matches the measured commits with the updates one subscriber saw, by position.

use std::collections::HashMap;

use super::writer::Committed;
use crate::latency::receiver::Received;

/// One subscriber's view of the measured updates.
#[derive(Debug, Default)]
pub struct Matched {
    /// Receive time minus commit time of each update that arrived, in ms.
    pub latencies_ms: Vec<f64>,
    /// Positions of the measured updates that did not arrive.
    pub missing: Vec<i64>,
    /// Updates that arrived under their position but with another user or sequence.
    pub mismatched: Vec<i64>,
}

/// Joins `committed` with `received` by position.
pub fn join(committed: &[Committed], received: &Received) -> Matched {
    let by_position: HashMap<i64, (&(uuid::Uuid, i64), f64)> = received
        .updates
        .iter()
        .map(|(key, update)| (update.position, (key, update.received_ms)))
        .collect();
    let mut matched = Matched::default();
    for update in committed {
        match by_position.get(&update.position) {
            Some(((user_id, sequence), received_ms))
                if *user_id == update.user_id && *sequence == update.sequence =>
            {
                matched.latencies_ms.push(received_ms - update.committed_ms);
            }
            Some(_) => matched.mismatched.push(update.position),
            None => matched.missing.push(update.position),
        }
    }
    matched
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::latency::receiver::ReceivedUpdate;

    fn committed(user_id: Uuid, position: i64) -> Committed {
        Committed {
            position,
            user_id,
            sequence: position,
            committed_ms: 1000.0,
        }
    }

    fn received(entries: &[(Uuid, i64, i64)]) -> Received {
        let mut received = Received::default();
        for &(user_id, sequence, position) in entries {
            received.updates.insert(
                (user_id, sequence),
                ReceivedUpdate {
                    position,
                    received_ms: 1002.5,
                },
            );
        }
        received
    }

    #[test]
    fn arrived_update_gives_latency() {
        let user = Uuid::new_v4();
        let matched = join(&[committed(user, 7)], &received(&[(user, 7, 7)]));
        assert_eq!(matched.latencies_ms, vec![2.5]);
        assert!(matched.missing.is_empty());
    }

    #[test]
    fn absent_update_is_missing() {
        let user = Uuid::new_v4();
        let matched = join(
            &[committed(user, 7), committed(user, 8)],
            &received(&[(user, 7, 7)]),
        );
        assert_eq!(matched.missing, vec![8]);
    }

    #[test]
    fn update_of_other_user_is_mismatched() {
        let matched = join(
            &[committed(Uuid::new_v4(), 7)],
            &received(&[(Uuid::new_v4(), 7, 7)]),
        );
        assert_eq!(matched.mismatched, vec![7]);
        assert!(matched.latencies_ms.is_empty());
    }

    #[test]
    fn warmup_updates_are_ignored() {
        let user = Uuid::new_v4();
        let matched = join(
            &[committed(user, 9)],
            &received(&[(user, 1, 1), (user, 9, 9)]),
        );
        assert_eq!(matched.latencies_ms.len(), 1);
    }
}
