//! Live updates through the stock npm socket.io-client against two query-service replicas:
//! every update once and in order, across a reconnect to the other replica, a replica
//! restart and a Redis restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use meridian_e2e::ais::{read_week_rows, write_unseen_file};
use meridian_e2e::live::Subscriber;
use meridian_e2e::{free_local_addr, json_body, Platform, Process};
use meridian_importer::session::Secret;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use uuid::Uuid;

const WEEK_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../data/ais/nyharbor_2020_12_first_week.csv"
);
const WAIT: Duration = Duration::from_secs(300);

fn whole_world() -> Value {
    json!({ "topic": "area", "bbox": [-180, -90, 180, 90] })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_receive_every_update_once_in_order() -> anyhow::Result<()> {
    let platform = Platform::start("subscribers_receive_every_update_once_in_order").await?;
    let user = register(&platform, "live-one@example.com").await?;
    let mut subscriber = Subscriber::start(
        &platform.socket_urls[0],
        &token(&platform).await?,
        &[
            whole_world(),
            json!({ "topic": "user_locations", "user_id": user }),
            json!({ "topic": "user_profile", "user_id": user }),
            json!({ "topic": "area", "bbox": [-74.03, 40.68, -74.0, 40.71] }),
        ],
    )
    .await?;
    let replies = subscriber.wait_subscribed(WAIT).await?;
    assert!(
        replies.iter().all(|reply| reply["ok"] == true),
        "{replies:?}"
    );

    let (directory, import) = start_import(&platform, 800)?;
    let own_reports = 20;
    // The user sends their own reports and renames themselves.
    let own_session = platform
        .login("live-one@example.com", "long enough password")
        .await?;
    let http = own_session.http();
    for minute in 0..own_reports {
        let url = format!("{}/v1/users/{user}/locations", platform.command_url);
        let body = json!({
            "latitude": 40.70, "longitude": -74.01,
            "recorded_at": format!("2020-12-01T00:{minute:02}:00Z"),
        });
        json_body(&own_session.execute(|| http.post(&url).json(&body)).await?)?;
    }
    let url = format!("{}/v1/users/{user}", platform.command_url);
    let rename = json!({ "name": "Renamed" });
    json_body(
        &own_session
            .execute(|| http.patch(&url).json(&rename))
            .await?,
    )?;
    import.await??;

    let all = location_positions(&platform, None).await?;
    subscriber.wait_for_updates(0, all.len(), WAIT).await?;
    assert_same_sequence(&subscriber.positions(0), &all, "whole world");

    let own = location_positions(&platform, Some(user)).await?;
    assert_eq!(own.len(), own_reports, "location events of the user");
    subscriber.wait_for_updates(1, own.len(), WAIT).await?;
    assert_same_sequence(&subscriber.positions(1), &own, "one user's locations");

    // The registration may arrive first: the subscription started before the read model
    // had folded it.
    let renamed = |update: &Value| update["event_type"] == "NameChanged";
    subscriber
        .wait_until("the NameChanged update", WAIT, |s| {
            s.updates[2].iter().any(renamed)
        })
        .await?;
    let profile = &subscriber.updates[2];
    let sequences: Vec<i64> = profile
        .iter()
        .filter_map(|u| u["sequence"].as_i64())
        .collect();
    assert!(
        sequences.windows(2).all(|pair| pair[0] < pair[1]),
        "{profile:?}"
    );
    let rename = profile
        .iter()
        .find(|update| renamed(update))
        .expect("waited for it");
    assert_eq!(rename["data"]["name"], "Renamed");
    assert_eq!(rename["user_id"], user.to_string());

    let in_box: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM rm_updates
         WHERE kind = 'location' AND latitude BETWEEN 40.68 AND 40.71
           AND longitude BETWEEN -74.03 AND -74.0
         ORDER BY seq",
    )
    .fetch_all(platform.pool())
    .await?;
    assert!(
        in_box.len() >= own_reports,
        "the user's reports lie in the box"
    );
    subscriber.wait_for_updates(3, in_box.len(), WAIT).await?;
    assert_same_sequence(&subscriber.positions(3), &in_box, "bounding box");
    for update in &subscriber.updates[3] {
        let latitude = update["data"]["latitude"].as_f64().unwrap_or_default();
        let longitude = update["data"]["longitude"].as_f64().unwrap_or_default();
        assert!((40.68..=40.71).contains(&latitude), "{update}");
        assert!((-74.03..=-74.0).contains(&longitude), "{update}");
    }
    assert!(
        subscriber.lines_of_type("error").is_empty(),
        "{:?}",
        subscriber.log
    );
    subscriber.close().await?;

    // A resume from a position that was never an update is refused, naming the field.
    let mut stranger = Subscriber::start(
        &platform.socket_urls[1],
        &token(&platform).await?,
        &[json!({ "topic": "area", "bbox": [-180, -90, 180, 90], "after": 987_654_321 })],
    )
    .await?;
    let replies = stranger.wait_subscribed(WAIT).await?;
    assert_eq!(replies[0]["ok"], false);
    assert_eq!(replies[0]["error"]["code"], "position_not_retained");
    assert_eq!(replies[0]["error"]["field"], "after");
    stranger.close().await?;

    // One socket may have at most 64 subscriptions, however fast it requests more.
    let greedy_requests = vec![json!({ "topic": "user_locations", "user_id": user }); 65];
    let mut greedy = Subscriber::start(
        &platform.socket_urls[0],
        &token(&platform).await?,
        &greedy_requests,
    )
    .await?;
    let replies = greedy.wait_subscribed(WAIT).await?;
    let accepted = replies.iter().filter(|reply| reply["ok"] == true).count();
    let refused: Vec<_> = replies
        .iter()
        .filter(|reply| reply["ok"] == false)
        .collect();
    assert_eq!(accepted, 64, "{replies:?}");
    assert_eq!(refused.len(), 1, "{replies:?}");
    assert_eq!(refused[0]["error"]["code"], "too_many_subscriptions");
    greedy.close().await?;

    platform.shut_down().await?;
    std::fs::remove_dir_all(directory)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_other_replica_is_exact() -> anyhow::Result<()> {
    let mut platform = Platform::start("resume_on_other_replica_is_exact").await?;
    let mut subscriber = Subscriber::start(
        &platform.socket_urls[0],
        &token(&platform).await?,
        &[whole_world()],
    )
    .await?;
    subscriber.wait_subscribed(WAIT).await?;

    let (directory, import) = start_import(&platform, 1_500)?;

    subscriber.wait_for_updates(0, 100, WAIT).await?;
    subscriber.switch(&platform.socket_urls[1]).await?;
    subscriber.wait_for_updates(0, 250, WAIT).await?;
    import.await??;

    // Kill the replica the client is on and record reports while it is down. Once the
    // replica is back, socket.io-client reconnects by itself and the subscription resumes
    // from its last position: the missed reports first, then the live ones.
    let user = register(&platform, "restart@example.com").await?;
    platform.kill(Process::QueryReplica)?;
    for minute in 0..20 {
        record(&platform, user, minute).await?;
    }
    platform.spawn(Process::QueryReplica)?;
    platform.wait_healthy().await?;
    subscriber
        .wait_until("the reconnection to replica 2", WAIT, |s| {
            s.lines_of_type("connected").len() >= 3
        })
        .await?;
    for minute in 20..40 {
        record(&platform, user, minute).await?;
    }

    let all = location_positions(&platform, None).await?;
    subscriber.wait_for_updates(0, all.len(), WAIT).await?;
    assert_same_sequence(&subscriber.positions(0), &all, "after two reconnects");
    let own = location_positions(&platform, Some(user)).await?;
    assert_eq!(own.len(), 40, "reports recorded around the restart");
    subscriber.close().await?;
    platform.shut_down().await?;
    std::fs::remove_dir_all(directory)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_resume_without_loss_after_redis_restarts() -> anyhow::Result<()> {
    let redis_addr = free_local_addr()?;
    let port = redis_addr.rsplit(':').next().unwrap_or_default().to_owned();
    let mut redis = RedisServer::start(&port)?;
    let redis_url = format!("redis://{redis_addr}/");
    let platform = Platform::start_with_env(
        "subscribers_resume_without_loss_after_redis_restarts",
        &[("MERIDIAN_REDIS_URL", redis_url.as_str())],
    )
    .await?;
    let channel = format!("{}updates", platform.settings.topic_prefix);
    wait_for_subscribers(&redis_url, &channel, 2).await?;
    let mut first = Subscriber::start(
        &platform.socket_urls[0],
        &token(&platform).await?,
        &[whole_world()],
    )
    .await?;
    let mut second = Subscriber::start(
        &platform.socket_urls[1],
        &token(&platform).await?,
        &[whole_world()],
    )
    .await?;
    first.wait_subscribed(WAIT).await?;
    second.wait_subscribed(WAIT).await?;

    let (directory, import) = start_import(&platform, 1_500)?;

    first.wait_for_updates(0, 100, WAIT).await?;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis = RedisServer::start(&port)?;
    // Both query services subscribe again by themselves.
    wait_for_subscribers(&redis_url, &channel, 2).await?;
    import.await??;

    let all = location_positions(&platform, None).await?;
    for (name, subscriber) in [("replica 1", &mut first), ("replica 2", &mut second)] {
        subscriber.wait_for_updates(0, all.len(), WAIT).await?;
        assert_same_sequence(&subscriber.positions(0), &all, name);
    }

    // The projection publishes on the new Redis too: a new report reaches a plain Redis
    // subscriber of the channel.
    let client = redis::Client::open(redis_url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let user = register(&platform, "after-restart@example.com").await?;
    let published = tokio::time::timeout(WAIT, async {
        use futures::StreamExt;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let payload: String = message.get_payload()?;
            if payload.contains(&user.to_string()) {
                return Ok::<_, anyhow::Error>(());
            }
        }
        anyhow::bail!("the Redis subscription ended")
    })
    .await;
    assert!(
        matches!(published, Ok(Ok(()))),
        "no update published after the restart: {published:?}"
    );

    first.close().await?;
    second.close().await?;
    platform.shut_down().await?;
    redis.stop();
    std::fs::remove_dir_all(directory)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_past_the_retention_window_is_refused() -> anyhow::Result<()> {
    let platform = Platform::start_with_env(
        "resuming_past_the_retention_window_is_refused",
        &[("MERIDIAN_UPDATE_RETENTION_SECS", "1")],
    )
    .await?;
    let user = register(&platform, "retention@example.com").await?;
    let first = record(&platform, user, 0).await?;
    // Wait until the update is past the window and the pruning task has run.
    tokio::time::sleep(Duration::from_secs(4)).await;
    record(&platform, user, 1).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let pruned: i64 = sqlx::query_scalar("SELECT pruned_seq FROM rm_update_head")
            .fetch_one(platform.pool())
            .await?;
        let kept: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM rm_updates WHERE position = $1")
                .bind(first)
                .fetch_optional(platform.pool())
                .await?;
        if pruned > 0 && kept.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the update was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut subscriber = Subscriber::start(
        &platform.socket_urls[0],
        &token(&platform).await?,
        &[
            json!({ "topic": "user_locations", "user_id": user, "after": first }),
            json!({ "topic": "user_locations", "user_id": user, "after": 0 }),
        ],
    )
    .await?;
    let replies = subscriber.wait_subscribed(WAIT).await?;
    for reply in &replies {
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["error"]["code"], "position_not_retained");
    }
    subscriber.close().await?;
    platform.shut_down().await?;
    Ok(())
}

/// Positions of the `LocationRecorded` events in the event store, of one user or all, in
/// the order the read-models projection committed their updates. Waits until the
/// projection has folded every stored event.
async fn location_positions(platform: &Platform, user: Option<Uuid>) -> anyhow::Result<Vec<i64>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stored: HashSet<i64> = sqlx::query_scalar(
            "SELECT position FROM events
             WHERE event_type = 'LocationRecorded' AND ($1::text IS NULL OR aggregate_id = $1)",
        )
        .bind(user.map(|user| user.to_string()))
        .fetch_all(platform.pool())
        .await?
        .into_iter()
        .collect();
        let committed: Vec<i64> = sqlx::query_scalar(
            "SELECT position FROM rm_updates
             WHERE kind = 'location' AND ($1::uuid IS NULL OR user_id = $1)
             ORDER BY seq",
        )
        .bind(user)
        .fetch_all(platform.pool())
        .await?;
        let committed_set: HashSet<i64> = committed.iter().copied().collect();
        assert_eq!(
            committed.len(),
            committed_set.len(),
            "no update is stored twice"
        );
        assert!(
            committed_set.is_subset(&stored),
            "every live update belongs to a stored event"
        );
        if committed_set == stored {
            return Ok(committed);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} stored location events have no live update after {WAIT:?}",
            stored.len() - committed_set.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that `received` is `expected`: nothing missing, nothing repeated, same order.
fn assert_same_sequence(received: &[i64], expected: &[i64], what: &str) {
    let unique: HashSet<i64> = received.iter().copied().collect();
    assert_eq!(
        unique.len(),
        received.len(),
        "{what}: a position arrived twice"
    );
    let missing: Vec<_> = expected.iter().filter(|p| !unique.contains(p)).collect();
    assert!(
        missing.is_empty(),
        "{what}: {} positions missing: {missing:?}",
        missing.len()
    );
    assert_eq!(received, expected, "{what}: updates out of commit order");
}

async fn register(platform: &Platform, email: &str) -> anyhow::Result<Uuid> {
    platform
        .register(email, "Live Tester", "long enough password")
        .await
}

/// Returns a fresh access token of the admin, who may subscribe to every topic.
async fn token(platform: &Platform) -> anyhow::Result<Secret> {
    Ok(platform.admin().access_token().await?)
}

/// Records one report as the admin and returns the position of its event.
async fn record(platform: &Platform, user: Uuid, minute: u32) -> anyhow::Result<i64> {
    let url = format!("{}/v1/users/{user}/locations", platform.command_url);
    let body = json!({
        "latitude": 40.7, "longitude": -74.0,
        "recorded_at": format!("2020-12-01T00:{minute:02}:00Z"),
    });
    let admin = platform.admin();
    let accepted = json_body(
        &admin
            .execute(|| admin.http().post(&url).json(&body))
            .await?,
    )?;
    accepted["position"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no position in {accepted}"))
}

/// Imports the first `rows` rows of the week file (with the invalid rows the importer must
/// skip) in a task, and returns the directory of the file with the task.
fn start_import(
    platform: &Platform,
    rows: usize,
) -> anyhow::Result<(PathBuf, JoinHandle<anyhow::Result<()>>)> {
    let directory = tempdir()?;
    let file = directory.join("slice.csv");
    write_unseen_file(&file, &read_week_rows(WEEK_FILE.as_ref(), rows)?)?;
    let mut options = platform.import_options(&file);
    options.wait_timeout = WAIT;
    let import = tokio::spawn(async move {
        let report = meridian_importer::import(options).await?;
        anyhow::ensure!(report.failed_vessels().is_empty(), "failed vessels");
        Ok(())
    });
    Ok((directory, import))
}

/// Waits until `count` clients subscribe to `channel`.
async fn wait_for_subscribers(url: &str, channel: &str, count: i64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let subscribers = async {
            let client = redis::Client::open(url)?;
            let mut connection = client.get_multiplexed_async_connection().await?;
            let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut connection)
                .await?;
            Ok::<_, redis::RedisError>(subscribers)
        };
        if let Ok(found) = subscribers.await {
            if found >= count {
                return Ok(());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "fewer than {count} subscribers of {channel} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A Redis server of this test alone, so restarting it disturbs no other test.
struct RedisServer {
    child: Child,
}

impl RedisServer {
    fn start(port: &str) -> anyhow::Result<Self> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| anyhow::anyhow!("cannot start redis-server: {error}"))?;
        Ok(Self { child })
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let directory = std::env::temp_dir().join(format!("meridian-live-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&directory)?;
    Ok(directory)
}
