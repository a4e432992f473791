//! The hub of one query-service process: takes the rows of `rm_updates` in `seq` order and
//! hands each to the subscriptions whose filter it matches.
//!
//! Rows arrive from Redis (the projection publishes each committed batch) and from
//! PostgreSQL: on a gap in `seq`, after Redis reconnects, and on a timer, the hub reads every
//! row after the last one it delivered. A row is delivered once, whichever way it came.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use meridian_event_log::live::{self, LiveUpdate, UpdateKind};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::filter::Filter;

/// Rows read from PostgreSQL per query.
pub const PAGE: i64 = 1000;
/// Updates queued for one subscription before the hub gives up on it; the subscription then
/// reads what it missed from PostgreSQL.
pub const SUBSCRIBER_QUEUE: usize = 1024;
/// Wait before connecting to Redis again.
const REDIS_RETRY: Duration = Duration::from_secs(1);

/// Handle to the hub; cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: PgPool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `seq` and position of the last row delivered.
    seq: i64,
    position: i64,
    next_id: u64,
    subscribers: HashMap<u64, Subscriber>,
    /// Subscribers to one user's updates of one kind, so a row is matched against its
    /// user's subscribers and the area subscribers only, not against every socket.
    by_user: HashMap<(Uuid, UpdateKind), HashSet<u64>>,
    areas: HashSet<u64>,
}

impl State {
    fn insert(&mut self, id: u64, subscriber: Subscriber) {
        match subscriber.filter.user() {
            Some(key) => {
                self.by_user.entry(key).or_default().insert(id);
            }
            None => {
                self.areas.insert(id);
            }
        }
        self.subscribers.insert(id, subscriber);
    }

    fn remove(&mut self, id: u64) {
        let Some(subscriber) = self.subscribers.remove(&id) else {
            return;
        };
        match subscriber.filter.user() {
            Some(key) => {
                if let Some(ids) = self.by_user.get_mut(&key) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.by_user.remove(&key);
                    }
                }
            }
            None => {
                self.areas.remove(&id);
            }
        }
    }

    /// Ids of the subscribers that may want `row`.
    fn candidates(&self, row: &LiveUpdate) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .by_user
            .get(&(row.user_id, row.kind))
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default();
        if row.kind == UpdateKind::Location {
            ids.extend(self.areas.iter().copied());
        }
        ids
    }
}

#[derive(Debug)]
struct Subscriber {
    filter: Filter,
    sender: mpsc::Sender<Arc<LiveUpdate>>,
}

/// A subscription's place in the hub: every matching row after `seq` goes to `updates`,
/// until the queue overflows, when the hub closes it.
#[derive(Debug)]
pub struct Registration {
    pub id: u64,
    /// The last row delivered before this registration.
    pub seq: i64,
    /// The event position of that row, 0 when there is none.
    pub position: i64,
    pub updates: mpsc::Receiver<Arc<LiveUpdate>>,
}

/// Settings of the hub: the Redis channel it reads rows from, and how often it reads
/// PostgreSQL as well.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub redis_url: String,
    pub channel: String,
    pub poll_interval: Duration,
}

enum Feed {
    Rows(Vec<LiveUpdate>),
    /// The Redis subscription was (re)established; rows published meanwhile were lost.
    Subscribed,
}

impl Hub {
    /// Starts delivering after the newest row in `rm_updates`, and the tasks that feed the
    /// hub; they stop with `shutdown`.
    pub async fn start(
        pool: PgPool,
        settings: HubSettings,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.redis_url.as_str())
            .with_context(|| format!("invalid MERIDIAN_REDIS_URL {:?}", settings.redis_url))?;
        let mut connection = pool.acquire().await.context("cannot reach PostgreSQL")?;
        let (seq, _) = live::head(&mut connection)
            .await
            .context("failed to read rm_update_head")?;
        let position = if seq == 0 {
            0
        } else {
            live::rows_after(&mut connection, seq - 1, 1)
                .await
                .context("failed to read the newest live update")?
                .first()
                .map_or(0, |row| row.position)
        };
        drop(connection);

        let hub = Self {
            shared: Arc::new(Shared {
                pool,
                state: Mutex::new(State {
                    seq,
                    position,
                    ..State::default()
                }),
            }),
        };
        let (feed, rows) = mpsc::channel(256);
        tokio::spawn(listen_to_redis(
            client,
            settings.channel,
            feed,
            shutdown.clone(),
        ));
        tokio::spawn(hub.clone().run(rows, settings.poll_interval, shutdown));
        tracing::info!(seq, "live updates hub started");
        Ok(hub)
    }

    /// Returns the pool that subscriptions read their backlog from.
    pub fn pool(&self) -> &PgPool {
        &self.shared.pool
    }

    /// Adds a subscriber; it receives every matching row delivered from now on.
    pub fn register(&self, filter: Filter) -> Registration {
        let (sender, updates) = mpsc::channel(SUBSCRIBER_QUEUE);
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        state.insert(id, Subscriber { filter, sender });
        Registration {
            id,
            seq: state.seq,
            position: state.position,
            updates,
        }
    }

    pub fn unregister(&self, id: u64) {
        self.state().remove(id);
    }

    /// Number of subscriptions registered now.
    pub fn subscriber_count(&self) -> usize {
        self.state().subscribers.len()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The code under this lock only updates maps and sends without waiting, so a poisoned
        // state is still consistent.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn run(
        self,
        mut feed: mpsc::Receiver<Feed>,
        poll_interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                received = feed.recv() => match received {
                    Some(Feed::Rows(rows)) => self.accept(rows).await,
                    Some(Feed::Subscribed) => self.catch_up().await,
                    None => return,
                },
                _ = ticks.tick() => self.catch_up().await,
            }
        }
    }

    /// Delivers rows published on Redis, first reading from PostgreSQL any rows between the
    /// last delivered one and these.
    async fn accept(&self, rows: Vec<LiveUpdate>) {
        let Some(first) = rows.first() else {
            return;
        };
        if first.seq > self.state().seq + 1 {
            self.catch_up().await;
        }
        self.deliver(rows);
    }

    /// Delivers every committed row after the last delivered one.
    async fn catch_up(&self) {
        loop {
            let after = self.state().seq;
            let page = async {
                let mut connection = self.shared.pool.acquire().await?;
                live::rows_after(&mut connection, after, PAGE).await
            };
            match page.await {
                Ok(rows) => {
                    let complete = rows.len() < usize::try_from(PAGE).unwrap_or(usize::MAX);
                    self.deliver(rows);
                    if complete {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, after, "cannot read live updates from PostgreSQL");
                    return;
                }
            }
        }
    }

    fn deliver(&self, rows: Vec<LiveUpdate>) {
        let mut state = self.state();
        for row in rows {
            if row.seq <= state.seq {
                continue;
            }
            state.seq = row.seq;
            state.position = row.position;
            let row = Arc::new(row);
            let mut dropped = Vec::new();
            for id in state.candidates(&row) {
                let Some(subscriber) = state.subscribers.get(&id) else {
                    continue;
                };
                if !subscriber.filter.matches(&row) {
                    continue;
                }
                match subscriber.sender.try_send(row.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!(
                            subscriber = id,
                            "subscriber fell behind; it reads PostgreSQL"
                        );
                        dropped.push(id);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => dropped.push(id),
                }
            }
            for id in dropped {
                state.remove(id);
            }
        }
    }
}

/// Feeds the hub with the rows published on `channel`, reconnecting after Redis goes away.
async fn listen_to_redis(
    client: redis::Client,
    channel: String,
    feed: mpsc::Sender<Feed>,
    shutdown: CancellationToken,
) {
    let mut reported_down = false;
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            () = shutdown.cancelled() => return,
            subscribed = subscribed => subscribed,
        };
        match pubsub {
            Ok(mut pubsub) => {
                if reported_down {
                    tracing::info!(%channel, "subscribed to Redis again");
                }
                if feed.send(Feed::Subscribed).await.is_err() {
                    return;
                }
                let mut messages = pubsub.on_message();
                loop {
                    let message = tokio::select! {
                        () = shutdown.cancelled() => return,
                        message = messages.next() => message,
                    };
                    let Some(message) = message else {
                        tracing::warn!(%channel, "lost the Redis subscription; reading PostgreSQL until it is back");
                        reported_down = true;
                        break;
                    };
                    match serde_json::from_slice::<Vec<LiveUpdate>>(message.get_payload_bytes()) {
                        Ok(rows) => {
                            if feed.send(Feed::Rows(rows)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, %channel, "ignoring a message that is not a list of live updates");
                        }
                    }
                }
            }
            Err(error) => {
                if !reported_down {
                    tracing::warn!(%error, "cannot subscribe to Redis; reading PostgreSQL until it is back");
                    reported_down = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REDIS_RETRY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use meridian_event_log::live::UpdateBody;
    use serde_json::json;

    use super::*;

    fn location(user_id: Uuid) -> LiveUpdate {
        LiveUpdate {
            seq: 1,
            position: 1,
            user_id,
            kind: UpdateKind::Location,
            latitude: Some(40.7),
            longitude: Some(-74.0),
            body: Some(UpdateBody {
                sequence: 1,
                event_type: "LocationRecorded".into(),
                data: json!({}),
            }),
            committed_at: Utc::now(),
        }
    }

    fn subscriber(filter: Filter) -> Subscriber {
        let (sender, _) = mpsc::channel(1);
        Subscriber { filter, sender }
    }

    #[test]
    fn candidates_are_the_user_subscribers_and_every_area() {
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let world = crate::geo::BoundingBox::WORLD;
        let mut state = State::default();
        state.insert(1, subscriber(Filter::UserLocations(ada)));
        state.insert(2, subscriber(Filter::UserLocations(bob)));
        state.insert(3, subscriber(Filter::UserProfile(ada)));
        state.insert(4, subscriber(Filter::Area(world)));

        let mut ids = state.candidates(&location(ada));
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 4]);

        state.remove(1);
        state.remove(4);
        assert!(state.candidates(&location(ada)).is_empty());
        assert!(!state.by_user.contains_key(&(ada, UpdateKind::Location)));
        assert_eq!(state.subscribers.len(), 2);
    }
}
