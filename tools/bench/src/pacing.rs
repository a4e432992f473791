//! The fixed schedule of the lag phase: commands at evenly spaced times, taken in turn by the
//! clients, so the whole phase sends a steady number of events per second.

use std::time::Duration;

/// Send times of the commands of a paced load, relative to its start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Time between two consecutive commands of the whole load.
    pub interval: Duration,
    pub clients: usize,
}

impl Schedule {
    /// Returns the schedule that sends `events_per_second` events in commands of
    /// `batch_size` reports, spread over `clients` clients.
    pub fn for_rate(events_per_second: f64, batch_size: usize, clients: usize) -> Self {
        assert!(events_per_second > 0.0, "the rate must be positive");
        assert!(clients > 0, "at least one client");
        let commands_per_second = events_per_second / batch_size as f64;
        Self {
            interval: Duration::from_secs_f64(1.0 / commands_per_second),
            clients,
        }
    }

    /// Returns when the `command`-th command of `client` is due. Client `c` takes the slots
    /// `c`, `c + clients`, `c + 2 * clients` and so on of the whole load.
    pub fn due(&self, client: usize, command: usize) -> Duration {
        let slot = (command * self.clients + client) as u128;
        duration_from_nanos(self.interval.as_nanos() * slot)
    }

    /// Returns how many commands of one client fall within `duration`.
    pub fn commands_within(&self, client: usize, duration: Duration) -> usize {
        let interval = self.interval.as_nanos().max(1);
        let slots = duration.as_nanos().div_ceil(interval);
        let slots = usize::try_from(slots).unwrap_or(usize::MAX);
        slots.saturating_sub(client).div_ceil(self.clients)
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let seconds = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in a u32.
    Duration::new(seconds, (nanos % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_sets_interval() {
        let schedule = Schedule::for_rate(2000.0, 10, 8);
        assert_eq!(schedule.interval, Duration::from_millis(5));
    }

    #[test]
    fn clients_take_slots_in_turn() {
        let schedule = Schedule::for_rate(1000.0, 1, 4);
        assert_eq!(schedule.due(0, 0), Duration::ZERO);
        assert_eq!(schedule.due(1, 0), Duration::from_millis(1));
        assert_eq!(schedule.due(3, 0), Duration::from_millis(3));
        assert_eq!(schedule.due(0, 1), Duration::from_millis(4));
        assert_eq!(schedule.due(2, 5), Duration::from_millis(22));
    }

    #[test]
    fn one_second_holds_the_rate() {
        let schedule = Schedule::for_rate(2000.0, 10, 8);
        let total: usize = (0..8)
            .map(|client| schedule.commands_within(client, Duration::from_secs(1)))
            .sum();
        assert_eq!(total, 200);
    }

    #[test]
    fn every_due_time_within_the_duration_is_counted() {
        let schedule = Schedule::for_rate(300.0, 1, 3);
        let duration = Duration::from_millis(100);
        for client in 0..3 {
            let count = schedule.commands_within(client, duration);
            assert!(
                schedule.due(client, count - 1) < duration,
                "client {client}"
            );
            assert!(schedule.due(client, count) >= duration, "client {client}");
        }
    }
}
