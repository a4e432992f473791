//! The machine, time and source revision that a report belongs to.

use std::path::Path;
use std::process::Command;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

/// The machine, date and commit of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical processors available to this process.
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_total_kib: u64,
    pub kernel: String,
    /// Start of the run, RFC 3339 in UTC.
    pub date: String,
    /// `git rev-parse HEAD` of the repository, with `-dirty` when `git status` lists changes.
    pub commit: String,
    /// The three load averages of `/proc/loadavg` at the start of the run.
    pub load_average_start: String,
}

impl Machine {
    /// Describes this machine and the checkout at `repository`. Fields that cannot be read
    /// are `unknown`.
    pub fn describe(repository: &Path) -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let meminfo = read("/proc/meminfo");
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |count| count.get()),
            cpu_model: cpu_model(&cpuinfo).unwrap_or_else(unknown),
            memory_total_kib: memory_total_kib(&meminfo).unwrap_or(0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            date: Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
            commit: git_commit(repository).unwrap_or_else(unknown),
            load_average_start: load_average(),
        }
    }
}

/// Returns the first three fields of `/proc/loadavg`.
pub fn load_average() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn unknown() -> String {
    "unknown".to_owned()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Returns the `model name` of the first processor in a `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

/// Returns `MemTotal` of a `/proc/meminfo` text.
fn memory_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

fn git_commit(repository: &Path) -> Option<String> {
    let head = git(repository, &["rev-parse", "HEAD"])?;
    let changes = git(
        repository,
        &["status", "--porcelain", "--untracked-files=no"],
    )?;
    let dirty = if changes.is_empty() { "" } else { "-dirty" };
    Some(format!("{head}{dirty}"))
}

fn git(repository: &Path, arguments: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repository)
        .args(arguments)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_from_cpuinfo() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t: fpu\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
    }

    #[test]
    fn memory_total_from_meminfo() {
        let text = "MemTotal:       24615776 kB\nMemFree:         1000 kB\n";
        assert_eq!(memory_total_kib(text), Some(24_615_776));
    }
}
