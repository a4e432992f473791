//! A Socket.IO subscriber for tests: runs `e2e/js/subscriber.mjs` (the npm socket.io-client)
//! under Node.js and collects what it reports.
//!
//! The packages come from `e2e/js/node_modules`; `make test` installs them with `npm ci`.
//! The script connects with an access token, which it reads from the environment variable
//! `MERIDIAN_ACCESS_TOKEN` and sends in the Socket.IO handshake.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use meridian_importer::session::Secret;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Directory of the Node.js scripts and their packages.
pub fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// One Node.js process holding one socket with one or more subscriptions.
pub struct Subscriber {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Updates received so far, per subscription index.
    pub updates: Vec<Vec<Value>>,
    /// Every line the script printed, for failure messages.
    pub log: Vec<Value>,
}

impl Subscriber {
    /// Connects to `socket_url` with the access token `token` and makes `subscriptions` (each
    /// a `subscribe` payload).
    pub async fn start(
        socket_url: &str,
        token: &Secret,
        subscriptions: &[Value],
    ) -> anyhow::Result<Self> {
        let directory = js_dir();
        if !directory.join("node_modules/socket.io-client").exists() {
            bail!(
                "{} has no socket.io-client; run `npm ci` there (make test does)",
                directory.display()
            );
        }
        let config = json!({ "url": socket_url, "subscriptions": subscriptions });
        let mut child = Command::new("node")
            .arg(directory.join("subscriber.mjs"))
            .arg(config.to_string())
            .env("MERIDIAN_ACCESS_TOKEN", token.expose())
            .current_dir(&directory)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("failed to start node; is Node.js installed?")?;
        let stdin = child.stdin.take().context("node has no stdin")?;
        let stdout = child.stdout.take().context("node has no stdout")?;
        let (sender, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({ "type": "unparsed", "line": line }));
                if sender.send(value).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            updates: vec![Vec::new(); subscriptions.len()],
            log: Vec::new(),
        })
    }

    /// Reads what the script reported until `done` holds, failing after `timeout`.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            let line = tokio::time::timeout_at(deadline, self.lines.recv()).await;
            match line {
                Ok(Some(line)) => self.record(line),
                Ok(None) => bail!("the subscriber exited while waiting for {what}"),
                Err(_) => bail!(
                    "timed out after {timeout:?} waiting for {what}; received {:?} updates; last lines: {}",
                    self.updates.iter().map(Vec::len).collect::<Vec<_>>(),
                    self.tail()
                ),
            }
        }
        Ok(())
    }

    /// Waits until subscription `index` has received `count` updates in all.
    pub async fn wait_for_updates(
        &mut self,
        index: usize,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.wait_until(
            &format!("{count} updates of subscription {index}"),
            timeout,
            |subscriber| subscriber.updates[index].len() >= count,
        )
        .await
    }

    /// Waits until every subscription is acknowledged on the current connection, and
    /// returns the acknowledgements.
    pub async fn wait_subscribed(&mut self, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let start = self.log.len();
        let wanted = self.updates.len();
        self.wait_until(
            "the subscriptions' acknowledgements",
            timeout,
            |subscriber| acknowledgements(&subscriber.log[start..]).len() >= wanted,
        )
        .await?;
        Ok(acknowledgements(&self.log[start..]))
    }

    /// Makes the next handshakes, including automatic reconnections, send `token`.
    pub async fn set_token(&mut self, token: &Secret) -> anyhow::Result<()> {
        self.send(json!({ "cmd": "token", "token": token.expose() }))
            .await
    }

    /// Drops the connection and resumes every subscription on `socket_url`.
    pub async fn switch(&mut self, socket_url: &str) -> anyhow::Result<()> {
        self.send(json!({ "cmd": "switch", "url": socket_url }))
            .await
    }

    /// Positions of the updates of subscription `index`, in the order received.
    pub fn positions(&self, index: usize) -> Vec<i64> {
        self.updates[index]
            .iter()
            .filter_map(|update| update["position"].as_i64())
            .collect()
    }

    /// Lines of one `type`, such as `reset` or `connected`.
    pub fn lines_of_type(&self, kind: &str) -> Vec<&Value> {
        self.log
            .iter()
            .filter(|line| line["type"] == kind)
            .collect()
    }

    /// Tells the script to exit and waits for it.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let _ = self.send(json!({ "cmd": "exit" })).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
        Ok(())
    }

    async fn send(&mut self, command: Value) -> anyhow::Result<()> {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .context("the subscriber's stdin is closed")
    }

    fn record(&mut self, line: Value) {
        if line["type"] == "update" {
            if let Some(index) = line["index"].as_u64().and_then(|i| usize::try_from(i).ok()) {
                if let Some(updates) = self.updates.get_mut(index) {
                    updates.push(line["update"].clone());
                }
            }
        }
        self.log.push(line);
    }

    fn tail(&self) -> String {
        let skip = self.log.len().saturating_sub(8);
        self.log[skip..]
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn acknowledgements(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter(|line| line["type"] == "subscribed")
        .map(|line| line["reply"].clone())
        .collect()
}
