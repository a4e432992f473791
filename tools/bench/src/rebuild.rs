//! Projection rebuild: `projection-workers rebuild-read-models` replays the whole `events`
//! table into fresh read models and prints one JSON line with its count and rate.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::memory::MemoryUsage;
use crate::stack::Stack;

/// The subcommand that rebuilds the read models.
pub const SUBCOMMAND: &str = "rebuild-read-models";
/// Time between two reads of the rebuild's memory.
const MEMORY_POLL: Duration = Duration::from_millis(20);

/// The line the rebuild prints when it has finished.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct RebuildLine {
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

/// Figures of the rebuild phase.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RebuildResult {
    Measured {
        /// The line the rebuild printed.
        reported: RebuildLine,
        /// Wall-clock time of the process, start to exit, as the harness saw it.
        process_seconds: f64,
        /// Highest `VmHWM` read while it ran, every 20 ms.
        peak_kib: Option<u64>,
    },
    NotAvailable {
        reason: String,
    },
}

/// Returns the last line of `output` that is the rebuild's JSON line.
pub fn parse_rebuild_output(output: &str) -> Option<RebuildLine> {
    output
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<RebuildLine>(line.trim()).ok())
}

/// Returns whether the binary at `path` names the subcommand anywhere in its text. A binary
/// without the subcommand ignores its arguments and runs the projections until stopped.
pub fn binary_has_subcommand(path: &Path) -> anyhow::Result<bool> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let needle = SUBCOMMAND.as_bytes();
    Ok(bytes.windows(needle.len()).any(|window| window == needle))
}

/// Runs the rebuild with the services' environment, bounded by `time_limit`.
pub async fn run(stack: &Stack, time_limit: Duration) -> anyhow::Result<RebuildResult> {
    let binary = stack.settings.bin_dir.join("projection-workers");
    if !binary_has_subcommand(&binary)? {
        return Ok(RebuildResult::NotAvailable {
            reason: format!("{} has no {SUBCOMMAND} subcommand", binary.display()),
        });
    }
    let log_path = stack.log_path("rebuild-read-models");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("failed to create {}", log_path.display()))?;
    let started = Instant::now();
    let mut child = stack
        .command(&binary)
        .arg(SUBCOMMAND)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {} {SUBCOMMAND}", binary.display()))?;
    let pid = child.id().context("the rebuild exited at once")?;
    let mut stdout = child.stdout.take().context("the rebuild has no stdout")?;
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        stdout.read_to_string(&mut text).await.map(|_| text)
    });

    let deadline = started + time_limit;
    let mut peak_kib = None;
    let status = loop {
        if let Ok(usage) = MemoryUsage::of_process(pid) {
            peak_kib = Some(usage.peak_kib.max(peak_kib.unwrap_or(0)));
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().await.ok();
            anyhow::bail!(
                "the rebuild did not finish within {} s; see {}",
                time_limit.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(MEMORY_POLL).await;
    };
    let process_seconds = started.elapsed().as_secs_f64();
    let stdout = reader
        .await?
        .context("failed to read the rebuild's output")?;

    if !status.success() {
        return Ok(RebuildResult::NotAvailable {
            reason: format!(
                "{} {SUBCOMMAND} exited with {status}; see {}",
                binary.display(),
                log_path.display()
            ),
        });
    }
    let reported = parse_rebuild_output(&stdout).with_context(|| {
        format!("the rebuild printed no line like {{\"events\":N,\"seconds\":S,\"events_per_second\":R}}: {stdout}")
    })?;
    Ok(RebuildResult::Measured {
        reported,
        process_seconds,
        peak_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_json_line() {
        let output = "starting\n{\"events\":1200,\"seconds\":0.5,\"events_per_second\":2400.0}\n";
        let line = parse_rebuild_output(output).expect("the line is there");
        assert_eq!(line.events, 1200);
        assert_eq!(line.seconds, 0.5);
        assert_eq!(line.events_per_second, 2400.0);
    }

    #[test]
    fn takes_the_last_json_line() {
        let output = "{\"events\":1,\"seconds\":1,\"events_per_second\":1}\n\
                      {\"events\":2,\"seconds\":1,\"events_per_second\":2}";
        assert_eq!(
            parse_rebuild_output(output).map(|line| line.events),
            Some(2)
        );
    }

    #[test]
    fn ignores_other_json() {
        assert_eq!(parse_rebuild_output("{\"level\":\"info\"}\n"), None);
        assert_eq!(parse_rebuild_output(""), None);
    }

    #[test]
    fn finds_subcommand_in_a_file() {
        let directory = tempfile::tempdir().unwrap();
        let with = directory.path().join("with");
        let without = directory.path().join("without");
        std::fs::write(&with, b"\0\x7fELF usage: rebuild-read-models\0").unwrap();
        std::fs::write(&without, b"\0\x7fELF usage: run\0").unwrap();
        assert!(binary_has_subcommand(&with).unwrap());
        assert!(!binary_has_subcommand(&without).unwrap());
    }
}
