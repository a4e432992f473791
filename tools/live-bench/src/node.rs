//! Runs one of the Node.js scripts in `e2e/js`, which print one JSON object per line, and
//! hands their lines to the caller in the order printed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use meridian_importer::session::Secret;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::login::TOKEN_VARIABLE;

/// A running Node.js script: its standard input and its output lines.
pub struct NodeScript {
    name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl NodeScript {
    /// Starts `node <js_dir>/<script> <config>` with `js_dir` as its working directory and
    /// `token` in the environment variable [`TOKEN_VARIABLE`].
    pub fn start(
        js_dir: &Path,
        script: &str,
        config: &Value,
        token: &Secret,
    ) -> anyhow::Result<Self> {
        // Absolute, because node resolves the script path from its working directory.
        let js_dir = js_dir
            .canonicalize()
            .with_context(|| format!("the script directory {} is not found", js_dir.display()))?;
        if !js_dir.join("node_modules/socket.io-client").is_dir() {
            bail!(
                "{} has no node_modules/socket.io-client; run `npm ci` there, or point --js-dir \
                 at the repository's e2e/js",
                js_dir.display()
            );
        }
        let mut child = Command::new("node")
            .arg(js_dir.join(script))
            .arg(config.to_string())
            .env(TOKEN_VARIABLE, token.expose())
            .current_dir(&js_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start node {script}; is Node.js installed?"))?;
        let stdin = child
            .stdin
            .take()
            .context("node was started without stdin")?;
        let stdout = child
            .stdout
            .take()
            .context("node was started without stdout")?;

        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "type": "unparsed", "line": line }));
                if sender.send(value).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            name: script.to_owned(),
            child,
            stdin,
            lines,
        })
    }

    /// Process id of the running script, or `None` once it has exited.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Receives the next line, or `None` when `deadline` passes first.
    ///
    /// Fails when the script has exited and printed everything.
    pub async fn next_line_before(&mut self, deadline: Instant) -> anyhow::Result<Option<Value>> {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => Ok(Some(line)),
            Ok(None) => bail!("node {} exited unexpectedly", self.name),
            Err(_) => Ok(None),
        }
    }

    /// Receives the next line that already arrived, without waiting.
    pub fn try_next_line(&mut self) -> Option<Value> {
        self.lines.try_recv().ok()
    }

    /// Waits for the next line whose `type` is `kind`, passing the other lines to `other`.
    pub async fn wait_for(
        &mut self,
        kind: &str,
        timeout: Duration,
        mut other: impl FnMut(Value),
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(line) = self.next_line_before(deadline).await? else {
                bail!(
                    "node {} printed no {kind:?} line within {timeout:?}",
                    self.name
                );
            };
            if line["type"] == kind {
                return Ok(line);
            }
            other(line);
        }
    }

    /// Writes one line to the script's standard input.
    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.stdin
            .write_all(&bytes)
            .await
            .with_context(|| format!("failed to write to node {}", self.name))
    }

    /// Asks the script to exit with `exit_line`, then kills it if it has not exited within
    /// five seconds.
    pub async fn stop(mut self, exit_line: &str) {
        let _ = self.send(exit_line).await;
        let exited = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        if exited.is_err() {
            let _ = self.child.kill().await;
        }
    }
}
