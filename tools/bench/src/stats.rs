//! Latency summaries in the units the report prints.

use std::time::Duration;

use meridian_live_bench::summary::Distribution;
use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Summarizes `samples`, or returns `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        let milliseconds: Vec<f64> = samples
            .iter()
            .map(|sample| sample.as_secs_f64() * 1000.0)
            .collect();
        Distribution::of(&milliseconds).map(|distribution| Self {
            count: distribution.count,
            p50_ms: distribution.p50,
            p99_ms: distribution.p99,
            max_ms: distribution.max,
        })
    }
}

/// Returns `count` per second of `elapsed`, or zero for no time.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_hundred_latencies() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let latency = Latency::of(&samples).expect("samples are not empty");
        assert_eq!(latency.count, 100);
        assert_eq!(latency.p50_ms, 50.0);
        assert_eq!(latency.p99_ms, 99.0);
        assert_eq!(latency.max_ms, 100.0);
    }

    #[test]
    fn percentiles_of_two_latencies() {
        let latency = Latency::of(&[Duration::from_millis(4), Duration::from_millis(2)]).unwrap();
        assert_eq!(latency.p50_ms, 2.0);
        assert_eq!(latency.p99_ms, 4.0);
    }

    #[test]
    fn no_latencies_give_none() {
        assert_eq!(Latency::of(&[]), None);
    }

    #[test]
    fn rate_of_no_time_is_zero() {
        assert_eq!(per_second(10, Duration::ZERO), 0.0);
        assert_eq!(per_second(10, Duration::from_millis(500)), 20.0);
    }
}
