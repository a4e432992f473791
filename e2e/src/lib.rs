//! A harness that runs the real Meridian binaries as child processes, each test with its own
//! database, topic prefix and MongoDB database, so tests can kill and restart them.
//!
//! The binaries come from the Cargo target directory of the test itself; build them first with
//! `cargo build --workspace --bins` (`make test` does).

pub mod ais;
pub mod live;

use std::collections::HashMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian_crypto::testing::TestKeys;
use meridian_event_log::testing::{settings_for, TestDatabase};
use meridian_event_log::Settings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The long-running processes of Meridian, with the query service twice, as the replicas
/// that live updates fan out across.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Process {
    CommandService,
    OutboxRelay,
    ProjectionWorkers,
    QueryService,
    /// A second query-service process on addresses of its own.
    QueryReplica,
}

impl Process {
    pub const ALL: [Process; 5] = [
        Process::CommandService,
        Process::OutboxRelay,
        Process::ProjectionWorkers,
        Process::QueryService,
        Process::QueryReplica,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Process::CommandService => "command-service",
            Process::OutboxRelay => "outbox-relay",
            Process::ProjectionWorkers => "projection-workers",
            Process::QueryService | Process::QueryReplica => "query-service",
        }
    }

    /// Name of the process's log file, unique per process.
    pub fn name(self) -> &'static str {
        match self {
            Process::QueryReplica => "query-service-2",
            other => other.binary(),
        }
    }
}

/// A running Meridian: its processes sharing one test database and topic prefix.
pub struct Platform {
    pub settings: Settings,
    pub command_url: String,
    /// HTTP address of the first query service.
    pub query_url: String,
    /// HTTP addresses of both query services.
    pub query_urls: [String; 2],
    /// Socket.IO addresses of both query services, as `http://127.0.0.1:<port>`.
    pub socket_urls: [String; 2],
    database: Option<TestDatabase>,
    command_addr: String,
    query_addrs: [String; 2],
    socket_addrs: [String; 2],
    /// Variables set on every process after the defaults, so they override them.
    extra_env: Vec<(String, String)>,
    children: HashMap<Process, Child>,
    log_dir: PathBuf,
    http: reqwest::Client,
    /// The master key file every process of this platform uses.
    pub keys: TestKeys,
}

impl Platform {
    /// Starts every process and waits until every HTTP service returns 200 from `/healthz`.
    pub async fn start(test_name: &str) -> anyhow::Result<Self> {
        Self::start_with_env(test_name, &[]).await
    }

    /// Like [`Platform::start`], with `extra_env` set on every process, such as
    /// `MERIDIAN_REDIS_URL` of a Redis server the test controls.
    pub async fn start_with_env(
        test_name: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let database = TestDatabase::create().await?;
        let mut settings = settings_for(&database)?;
        if let Some((_, url)) = extra_env
            .iter()
            .find(|(name, _)| *name == "MERIDIAN_REDIS_URL")
        {
            settings.redis_url = (*url).to_owned();
        }
        let command_addr = free_local_addr()?;
        let query_addrs = [free_local_addr()?, free_local_addr()?];
        let socket_addrs = [free_local_addr()?, free_local_addr()?];
        let log_dir = target_dir()?.join("e2e-logs").join(test_name);
        std::fs::create_dir_all(&log_dir)?;
        let mut platform = Self {
            command_url: format!("http://{command_addr}"),
            query_url: format!("http://{}", query_addrs[0]),
            query_urls: query_addrs.clone().map(|addr| format!("http://{addr}")),
            socket_urls: socket_addrs.clone().map(|addr| format!("http://{addr}")),
            settings,
            database: Some(database),
            command_addr,
            query_addrs,
            socket_addrs,
            extra_env: extra_env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
            children: HashMap::new(),
            log_dir,
            http: reqwest::Client::new(),
            keys: TestKeys::create()?,
        };
        for process in Process::ALL {
            platform.spawn(process)?;
        }
        platform.wait_healthy().await?;
        Ok(platform)
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.database.as_ref().expect("database is open").pool
    }

    /// Starts one process; its output is appended to `<log_dir>/<binary>.log`.
    pub fn spawn(&mut self, process: Process) -> anyhow::Result<()> {
        let binary = target_dir()?.join(process.binary());
        if !binary.exists() {
            bail!(
                "{} is missing; build it with `cargo build --workspace --bins`",
                binary.display()
            );
        }
        let log_path = self.log_dir.join(format!("{}.log", process.name()));
        let replica = usize::from(process == Process::QueryReplica);
        let log = File::options().create(true).append(true).open(&log_path)?;
        let child = Command::new(&binary)
            .env("MERIDIAN_DATABASE_URL", &self.settings.database_url)
            .env("MERIDIAN_KAFKA_BROKERS", &self.settings.kafka_brokers)
            .env("MERIDIAN_TOPIC_PREFIX", &self.settings.topic_prefix)
            .env("MERIDIAN_MONGODB_URL", &self.settings.mongodb_url)
            .env("MERIDIAN_MONGODB_DATABASE", &self.settings.mongodb_database)
            .env("MERIDIAN_REDIS_URL", &self.settings.redis_url)
            .envs(self.keys.env())
            .env("MERIDIAN_COMMAND_ADDR", &self.command_addr)
            .env("MERIDIAN_QUERY_ADDR", &self.query_addrs[replica])
            .env("MERIDIAN_SOCKET_ADDR", &self.socket_addrs[replica])
            .env("RUST_LOG", "info")
            .envs(self.extra_env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        self.children.insert(process, child);
        Ok(())
    }

    /// Sends SIGKILL to a process and waits for it to exit.
    pub fn kill(&mut self, process: Process) -> anyhow::Result<()> {
        if let Some(mut child) = self.children.remove(&process) {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Kills a process with SIGKILL and starts it again.
    pub async fn kill_and_restart(&mut self, process: Process) -> anyhow::Result<()> {
        self.kill(process)?;
        self.spawn(process)?;
        self.wait_healthy().await
    }

    /// Waits until every HTTP service returns 200 from `/healthz` and no child has exited.
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut urls = vec![self.command_url.clone()];
        for process in [Process::QueryService, Process::QueryReplica] {
            if self.children.contains_key(&process) {
                let replica = usize::from(process == Process::QueryReplica);
                urls.push(self.query_urls[replica].clone());
            }
        }
        for url in urls {
            loop {
                self.check_alive()?;
                let healthy = self
                    .http
                    .get(format!("{url}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{url}/healthz did not answer within 60 s; logs in {}",
                        self.log_dir.display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (process, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited with {status}; see {}",
                    process.name(),
                    self.log_dir
                        .join(format!("{}.log", process.name()))
                        .display()
                );
            }
        }
        Ok(())
    }

    /// Reads `GET /v1/stats` of the query service.
    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let response = self
            .http
            .get(format!("{}/v1/stats", self.query_url))
            .send()
            .await?
            .error_for_status()?;
        Ok(response.json().await?)
    }

    /// Waits until the outbox is empty and both projections report no lag.
    pub async fn wait_caught_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let stats = self.stats().await?;
            let lag = |name: &str| stats["projections"][name]["lag"].as_i64();
            let analytics_done = self
                .count_mongo_documents()
                .await
                .is_ok_and(|count| Some(count) == stats["location_events"].as_i64());
            if stats["outbox_pending"].as_i64() == Some(0)
                && lag("read-models") == Some(0)
                && lag("analytics") == Some(0)
                && stats["location_history"] == stats["location_events"]
                && analytics_done
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("projections did not catch up within {timeout:?}: {stats}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Counts the documents of the analytics collection.
    pub async fn count_mongo_documents(&self) -> anyhow::Result<i64> {
        self.count_mongo_documents_matching(mongodb::bson::doc! {})
            .await
    }

    /// Counts the documents of the analytics collection that match `filter`.
    pub async fn count_mongo_documents_matching(
        &self,
        filter: mongodb::bson::Document,
    ) -> anyhow::Result<i64> {
        let client = mongodb::Client::with_uri_str(&self.settings.mongodb_url).await?;
        let collection = client
            .database(&self.settings.mongodb_database)
            .collection::<mongodb::bson::Document>("location_events");
        let count = collection.count_documents(filter).await?;
        Ok(i64::try_from(count)?)
    }

    /// Reads every message of the events topic from the beginning to the high watermark.
    pub fn read_topic(&self) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
        read_whole_topic(&self.settings.kafka_brokers, &self.settings.events_topic())
    }

    /// Stops every process, then drops the database and the MongoDB database.
    pub async fn shut_down(mut self) -> anyhow::Result<()> {
        for process in Process::ALL {
            self.terminate(process);
        }
        if let Ok(client) = mongodb::Client::with_uri_str(&self.settings.mongodb_url).await {
            let _ = client
                .database(&self.settings.mongodb_database)
                .drop()
                .await;
        }
        // NOTE: the topic stays on the broker, because tansu 0.6.0 deletes every topic of
        // the cluster when asked to delete one. Its name is unique to this test.
        if let Some(database) = self.database.take() {
            database.drop_database().await?;
        }
        Ok(())
    }

    /// Sends SIGTERM, waits up to 10 s, then SIGKILL.
    fn terminate(&mut self, process: Process) {
        let Some(mut child) = self.children.remove(&process) else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) with a pid of our own child and a valid signal number.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Returns the value of header `name` of a consumed message.
pub fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|header| header.key == name)
            .and_then(|header| header.value)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    })
}

/// Returns `target/<profile>`, where Cargo puts the binaries this test can run.
pub fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // The test binary lives in target/<profile>/deps/.
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("test binary has no target directory")
}

/// Returns an address on 127.0.0.1 with a port that was free a moment ago.
pub fn free_local_addr() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Reads every message of `topic` from offset 0 to the high watermark of each partition.
pub fn read_whole_topic(
    brokers: &str,
    topic: &str,
) -> anyhow::Result<Vec<rdkafka::message::OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("e2e-reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut remaining = HashMap::new();
    for partition in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(topic, partition, Offset::Offset(low))?;
            remaining.insert(partition, high);
        }
    }
    consumer.assign(&assignment)?;
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("reading {topic} timed out; partitions left: {remaining:?}");
        }
        let Some(result) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = result?.detach();
        if let Some(high) = remaining.get(&message.partition()) {
            if message.offset() + 1 >= *high {
                remaining.remove(&message.partition());
            }
        }
        messages.push(message);
    }
    Ok(messages)
}
