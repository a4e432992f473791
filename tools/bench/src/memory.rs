//! Resident memory of a process, from `/proc/<pid>/status` (Linux only).

use anyhow::Context;
use serde::Serialize;

/// Memory of one process at one moment, in KiB as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// `VmRSS`: resident set size now.
    pub rss_kib: u64,
    /// `VmHWM`: the highest resident set size since the process started.
    pub peak_kib: u64,
}

impl MemoryUsage {
    /// Reads the memory of process `pid`.
    pub fn of_process(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
        Self::parse(&status).with_context(|| format!("{path} has no VmRSS or VmHWM line"))
    }

    /// Parses the `VmRSS` and `VmHWM` lines of a `/proc/<pid>/status` text.
    pub fn parse(status: &str) -> Option<Self> {
        Some(Self {
            rss_kib: field_kib(status, "VmRSS:")?,
            peak_kib: field_kib(status, "VmHWM:")?,
        })
    }
}

/// Returns the value of a line such as `VmRSS:     10240 kB`.
fn field_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    let mut words = line[name.len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

/// Converts KiB to megabytes of 10^6 bytes.
pub fn megabytes(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tquery-service\nVmPeak:\t  900000 kB\nVmHWM:\t   20480 kB\n\
                          VmRSS:\t   10240 kB\nThreads:\t5\n";

    #[test]
    fn parses_rss_and_peak() {
        let usage = MemoryUsage::parse(STATUS).expect("both lines are present");
        assert_eq!(usage.rss_kib, 10240);
        assert_eq!(usage.peak_kib, 20480);
    }

    #[test]
    fn missing_line_gives_none() {
        assert_eq!(MemoryUsage::parse("Name:\tzombie\nVmRSS:\t1 kB\n"), None);
    }

    #[test]
    fn other_unit_is_rejected() {
        assert_eq!(field_kib("VmRSS:\t1 MB\n", "VmRSS:"), None);
    }

    #[test]
    fn own_process_has_memory() {
        let usage = MemoryUsage::of_process(std::process::id()).expect("/proc is readable");
        assert!(usage.rss_kib > 0);
        assert!(usage.peak_kib >= usage.rss_kib);
    }

    #[test]
    fn megabytes_are_decimal() {
        assert_eq!(megabytes(1000), 1.024);
    }
}
