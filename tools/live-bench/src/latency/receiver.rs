//! The Socket.IO side of the latency benchmark: `e2e/js/bench-receiver.mjs` subscribed to
//! every location update, and the updates it reported, keyed by user and sequence.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use meridian_importer::session::Secret;
use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::node::NodeScript;

/// The bounding box of the whole world, `[min_lon, min_lat, max_lon, max_lat]`.
const WHOLE_WORLD: [f64; 4] = [-180.0, -90.0, 180.0, 90.0];

/// An update as the receiver saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReceivedUpdate {
    pub position: i64,
    /// Milliseconds since the Unix epoch, from Node's clock on this machine.
    pub received_ms: f64,
}

/// Updates received so far, by `(user_id, sequence)` of their event.
#[derive(Debug, Default)]
pub struct Received {
    pub updates: HashMap<(Uuid, i64), ReceivedUpdate>,
    pub duplicates: u64,
    /// Lines that were neither a valid update nor expected, such as a disconnect.
    pub problems: Vec<String>,
}

impl Received {
    /// Records one line of the receiver's output.
    pub fn record(&mut self, line: &Value) {
        match line["type"].as_str() {
            Some("update") => match parse_update(line) {
                Ok((key, update)) => {
                    if self.updates.insert(key, update).is_some() {
                        self.duplicates += 1;
                    }
                }
                Err(error) => self.problems.push(format!("{error:#}")),
            },
            _ => self.problems.push(format!("receiver reported {line}")),
        }
    }
}

fn parse_update(line: &Value) -> anyhow::Result<((Uuid, i64), ReceivedUpdate)> {
    let user_id = line["user_id"]
        .as_str()
        .and_then(|raw| Uuid::parse_str(raw).ok())
        .with_context(|| format!("update without a UUID user_id: {line}"))?;
    let sequence = line["sequence"]
        .as_i64()
        .with_context(|| format!("update without an integer sequence: {line}"))?;
    let position = line["position"]
        .as_i64()
        .with_context(|| format!("update without an integer position: {line}"))?;
    let received_ms = line["received_ms"]
        .as_f64()
        .with_context(|| format!("update without received_ms: {line}"))?;
    Ok((
        (user_id, sequence),
        ReceivedUpdate {
            position,
            received_ms,
        },
    ))
}

/// A running receiver.
pub struct Receiver {
    script: NodeScript,
}

impl Receiver {
    /// Starts the receiver, which connects with `token`, and waits until the server
    /// acknowledges its subscription.
    pub async fn start(js_dir: &Path, socket_url: &str, token: &Secret) -> anyhow::Result<Self> {
        let config = json!({
            "url": socket_url,
            "subscription": { "topic": "area", "bbox": WHOLE_WORLD },
        });
        let mut script = NodeScript::start(js_dir, "bench-receiver.mjs", &config, token)?;
        let mut early = Vec::new();
        let subscribed = script
            .wait_for("subscribed", Duration::from_secs(15), |line| {
                early.push(line)
            })
            .await
            .with_context(|| format!("subscribing at {socket_url} failed; lines: {early:?}"))?;
        if subscribed["reply"]["ok"] != true {
            bail!(
                "the area subscription was rejected: {}",
                subscribed["reply"]
            );
        }
        Ok(Self { script })
    }

    /// Records every line that has arrived, without waiting.
    pub fn collect(&mut self, into: &mut Received) {
        while let Some(line) = self.script.try_next_line() {
            into.record(&line);
        }
    }

    /// Records lines until `done` returns true or `deadline` passes, and returns whether `done`
    /// returned true.
    pub async fn collect_until(
        &mut self,
        into: &mut Received,
        deadline: Instant,
        mut done: impl FnMut(&Received) -> bool,
    ) -> anyhow::Result<bool> {
        self.collect(into);
        while !done(into) {
            match self.script.next_line_before(deadline).await? {
                Some(line) => into.record(&line),
                None => return Ok(false),
            }
            self.collect(into);
        }
        Ok(true)
    }

    pub async fn stop(self) {
        self.script.stop("exit").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(user: Uuid, sequence: i64) -> Value {
        json!({
            "type": "update", "position": 40 + sequence, "user_id": user.to_string(),
            "sequence": sequence, "received_ms": 1.5e12,
        })
    }

    #[test]
    fn update_is_keyed_by_user_and_sequence() {
        let user = Uuid::new_v4();
        let mut received = Received::default();
        received.record(&update(user, 3));
        assert_eq!(
            received
                .updates
                .get(&(user, 3))
                .map(|update| update.position),
            Some(43)
        );
    }

    #[test]
    fn repeated_update_counts_as_duplicate() {
        let user = Uuid::new_v4();
        let mut received = Received::default();
        received.record(&update(user, 3));
        received.record(&update(user, 3));
        assert_eq!(received.duplicates, 1);
    }

    #[test]
    fn update_without_user_is_a_problem() {
        let mut received = Received::default();
        received.record(&json!({ "type": "update", "position": 1, "sequence": 1 }));
        assert_eq!(received.updates.len(), 0);
        assert!(
            received.problems[0].contains("user_id"),
            "{:?}",
            received.problems
        );
    }

    #[test]
    fn disconnect_is_a_problem() {
        let mut received = Received::default();
        received.record(&json!({ "type": "disconnected", "reason": "transport close" }));
        assert!(received.problems[0].contains("transport close"));
    }
}
