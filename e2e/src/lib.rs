//! A harness that runs the real Meridian binaries as child processes, each test with its own
//! database, topic prefix and MongoDB database, so tests can kill and restart them.
//!
//! Each platform also has its own token key file and admin account, in a temporary directory.
//! The command service creates the admin at start, and [`Platform::admin`] is logged in as it.
//! The request rate limits are set out of reach unless a test sets them, because the imports
//! and the importer's polling of the query service send thousands of requests a minute from
//! one address and one user.
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
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian_auth::keys::KeyFile;
use meridian_crypto::testing::TestKeys;
use meridian_event_log::testing::{settings_for, TestDatabase};
use meridian_event_log::Settings;
use meridian_importer::session::{Credentials, RateLimitPolicy, Reply, Secret, Session};
use meridian_importer::ImportOptions;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::{json, Value};

/// Email address of the admin account of every platform.
pub const ADMIN_EMAIL: &str = "admin@meridian.test";
/// Request limit per address and per user when a test sets none: out of reach of any test.
const UNREACHED_RATE_LIMIT: &str = "1000000000";

/// The long-running processes of Meridian, with the query service twice, as the replicas
/// that live updates fan out across.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Process {
    CommandService,
    /// A second command-service process on an address of its own. [`Platform::start`] does
    /// not start it; a test spawns it.
    CommandReplica,
    OutboxRelay,
    ProjectionWorkers,
    QueryService,
    /// A second query-service process on addresses of its own.
    QueryReplica,
}

impl Process {
    /// The processes that [`Platform::start`] starts.
    pub const ALL: [Process; 5] = [
        Process::CommandService,
        Process::OutboxRelay,
        Process::ProjectionWorkers,
        Process::QueryService,
        Process::QueryReplica,
    ];

    pub fn binary(self) -> &'static str {
        match self {
            Process::CommandService | Process::CommandReplica => "command-service",
            Process::OutboxRelay => "outbox-relay",
            Process::ProjectionWorkers => "projection-workers",
            Process::QueryService | Process::QueryReplica => "query-service",
        }
    }

    /// Name of the process's log file, unique per process.
    pub fn name(self) -> &'static str {
        match self {
            Process::CommandReplica => "command-service-2",
            Process::QueryReplica => "query-service-2",
            other => other.binary(),
        }
    }
}

/// A running Meridian: its processes sharing one test database and topic prefix.
pub struct Platform {
    pub settings: Settings,
    pub command_url: String,
    /// HTTP addresses of both command services; the second runs only once a test spawns
    /// [`Process::CommandReplica`].
    pub command_urls: [String; 2],
    /// HTTP address of the first query service.
    pub query_url: String,
    /// HTTP addresses of both query services.
    pub query_urls: [String; 2],
    /// Socket.IO addresses of both query services, as `http://127.0.0.1:<port>`.
    pub socket_urls: [String; 2],
    database: Option<TestDatabase>,
    command_addrs: [String; 2],
    query_addrs: [String; 2],
    socket_addrs: [String; 2],
    /// Variables set on every process after the defaults, so they override them.
    extra_env: Vec<(String, String)>,
    children: HashMap<Process, Child>,
    log_dir: PathBuf,
    http: reqwest::Client,
    /// The master key file every process of this platform uses.
    pub keys: TestKeys,
    /// The token key file, the admin's password file and their directory.
    pub secrets: Secrets,
    /// A session of the admin account, logged in once the services are healthy.
    admin: Option<Arc<Session>>,
}

/// The files of a platform's token keys and admin password, deleted with this value.
pub struct Secrets {
    dir: PathBuf,
    /// The token key file, `MERIDIAN_TOKEN_KEY_FILE` of the services.
    pub token_key_file: PathBuf,
    /// The admin's password, in the file `MERIDIAN_ADMIN_PASSWORD_FILE` names.
    pub admin_password: String,
    pub admin_password_file: PathBuf,
}

impl Secrets {
    /// Writes a new token key file and a random admin password under the system's temporary
    /// directory, both with mode 0600.
    pub fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("meridian-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let token_key_file = dir.join("token-keys.json");
        write_private(
            &token_key_file,
            &serde_json::to_string_pretty(&KeyFile::generate())?,
        )?;
        let admin_password = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let admin_password_file = dir.join("admin-password");
        write_private(&admin_password_file, &admin_password)?;
        Ok(Self {
            dir,
            token_key_file,
            admin_password,
            admin_password_file,
        })
    }

    /// Returns the HMAC secrets of the token key file, as the file stores them.
    pub fn token_key_secrets(&self) -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(&self.token_key_file)?;
        let file: KeyFile = serde_json::from_str(&text)?;
        Ok(file.keys.into_iter().map(|entry| entry.secret).collect())
    }
}

impl Drop for Secrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `text` to a new file that only its owner may read.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
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
        let command_addrs = [free_local_addr()?, free_local_addr()?];
        let query_addrs = [free_local_addr()?, free_local_addr()?];
        let socket_addrs = [free_local_addr()?, free_local_addr()?];
        let log_dir = target_dir()?.join("e2e-logs").join(test_name);
        std::fs::create_dir_all(&log_dir)?;
        let command_urls = command_addrs.clone().map(|addr| format!("http://{addr}"));
        let mut platform = Self {
            command_url: command_urls[0].clone(),
            command_urls,
            query_url: format!("http://{}", query_addrs[0]),
            query_urls: query_addrs.clone().map(|addr| format!("http://{addr}")),
            socket_urls: socket_addrs.clone().map(|addr| format!("http://{addr}")),
            settings,
            database: Some(database),
            command_addrs,
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
            secrets: Secrets::create()?,
            admin: None,
        };
        for process in Process::ALL {
            platform.spawn(process)?;
        }
        platform.wait_healthy().await?;
        let admin = platform
            .login(ADMIN_EMAIL, &platform.secrets.admin_password)
            .await
            .context("the admin of MERIDIAN_ADMIN_EMAIL cannot log in")?;
        platform.admin = Some(Arc::new(admin));
        Ok(platform)
    }

    /// Returns the admin's session, which renews its token by itself.
    pub fn admin(&self) -> &Session {
        self.admin.as_ref().expect("the admin logs in at start")
    }

    /// Returns the admin's email address and password, for the importer.
    pub fn admin_credentials(&self) -> Credentials {
        Credentials::new(ADMIN_EMAIL, Secret::new(&self.secrets.admin_password))
    }

    /// Logs in at the first command service.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let session = Session::login(
            self.http.clone(),
            &self.command_url,
            Credentials::new(email, Secret::new(password)),
            RateLimitPolicy::default(),
            None,
        )
        .await?;
        Ok(session)
    }

    /// Registers a user with `POST /v1/users`, which needs no token, and returns their id.
    pub async fn register(
        &self,
        email: &str,
        name: &str,
        password: &str,
    ) -> anyhow::Result<uuid::Uuid> {
        let response = self
            .http
            .post(format!("{}/v1/users", self.command_url))
            .json(&json!({ "email": email, "name": name, "password": password }))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        anyhow::ensure!(
            status == 201,
            "registering {email} returned {status}: {body}"
        );
        let user_id = body["user_id"].as_str().unwrap_or_default();
        Ok(user_id.parse()?)
    }

    /// Returns import options for `file` into this platform as its admin, without progress
    /// bars and with a 600-second wait for the query service.
    pub fn import_options(&self, file: &Path) -> ImportOptions {
        let mut options = ImportOptions::new(file, self.admin_credentials());
        options.command_url = self.command_url.clone();
        options.query_url = self.query_url.clone();
        options.show_progress = false;
        options.wait_timeout = Duration::from_secs(600);
        options
    }

    /// Returns the directory of the process logs, `<log_dir>/<name>.log`.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
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
        let replica = usize::from(matches!(
            process,
            Process::QueryReplica | Process::CommandReplica
        ));
        let log = File::options().create(true).append(true).open(&log_path)?;
        let mut command = Command::new(&binary);
        if matches!(process, Process::CommandService | Process::CommandReplica) {
            command.env("MERIDIAN_ADMIN_EMAIL", ADMIN_EMAIL).env(
                "MERIDIAN_ADMIN_PASSWORD_FILE",
                &self.secrets.admin_password_file,
            );
        }
        let child = command
            .env("MERIDIAN_DATABASE_URL", &self.settings.database_url)
            .env("MERIDIAN_KAFKA_BROKERS", &self.settings.kafka_brokers)
            .env("MERIDIAN_TOPIC_PREFIX", &self.settings.topic_prefix)
            .env("MERIDIAN_MONGODB_URL", &self.settings.mongodb_url)
            .env("MERIDIAN_MONGODB_DATABASE", &self.settings.mongodb_database)
            .env("MERIDIAN_REDIS_URL", &self.settings.redis_url)
            .envs(self.keys.env())
            .env("MERIDIAN_TOKEN_KEY_FILE", &self.secrets.token_key_file)
            .env("MERIDIAN_RATE_LIMIT_PER_ADDRESS", UNREACHED_RATE_LIMIT)
            .env("MERIDIAN_RATE_LIMIT_PER_USER", UNREACHED_RATE_LIMIT)
            .env("MERIDIAN_COMMAND_ADDR", &self.command_addrs[replica])
            .env("MERIDIAN_COMMAND_PUBLIC_URL", &self.command_url)
            .env("MERIDIAN_QUERY_ADDR", &self.query_addrs[replica])
            .env("MERIDIAN_SOCKET_ADDR", &self.socket_addrs[replica])
            .env("RUST_LOG", "info")
            // Plain text, so that a search of the logs is not split by color codes.
            .env("NO_COLOR", "1")
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
        if self.children.contains_key(&Process::CommandReplica) {
            urls.push(self.command_urls[1].clone());
        }
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

    /// Reads `GET /v1/stats` of the query service as the admin.
    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/v1/stats", self.query_url);
        let reply = self.admin().execute(|| self.http.get(&url)).await?;
        json_body(&reply)
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
        let running: Vec<Process> = self.children.keys().copied().collect();
        for process in running {
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

/// Decodes the JSON body of a 2xx reply, or fails with its status and body.
pub fn json_body(reply: &Reply) -> anyhow::Result<Value> {
    let text = String::from_utf8_lossy(&reply.body);
    anyhow::ensure!(
        reply.status.is_success(),
        "the request returned {}: {text}",
        reply.status
    );
    serde_json::from_str(&text).with_context(|| format!("the body is not JSON: {text}"))
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
