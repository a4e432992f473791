//! The services under test, started from the release binaries as child processes, each run
//! with a database, topic prefix and MongoDB database of its own.
//!
//! [`Stack::start`] creates a run directory with a master key file, a token key file and a
//! random admin password. It starts the command service alone, because that creates the
//! database and applies the migrations, then the outbox relay, the projection workers and
//! one query service. [`Stack::shutdown`] stops them, drops the database and the MongoDB database and
//! deletes the key files. The logs stay in the run directory.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::distr::{Alphanumeric, SampleString};
use tokio::process::{Child, Command};

use crate::memory::MemoryUsage;

/// Email of the admin that the command service creates at start.
pub const ADMIN_EMAIL: &str = "bench-admin@bench.example";
/// Time each HTTP service gets to return 200 from `GET /healthz` after it starts.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the workers must stay alive after start. A worker with a bad connection setting
/// usually exits within it.
const SETTLE_TIME: Duration = Duration::from_secs(2);
/// Time a service gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// Requests per minute per client address and per user: out of reach of any phase, because
/// every request comes from 127.0.0.1 and most of them from the one admin.
const RATE_LIMIT: &str = "100000000";

/// Names of the services, in start order.
pub const SERVICES: [&str; 4] = [
    "command-service",
    "outbox-relay",
    "projection-workers",
    "query-service",
];

/// Locations of the binaries, the database and the run's files.
#[derive(Debug, Clone)]
pub struct StackSettings {
    /// Directory with the release binaries.
    pub bin_dir: PathBuf,
    /// PostgreSQL server, without a database name.
    pub postgres_url: String,
    /// Name shared by the database and the MongoDB database, such as `meridian_bench_4242`.
    pub run_name: String,
    /// Directory for keys, password and logs.
    pub run_dir: PathBuf,
}

impl StackSettings {
    pub fn database_url(&self) -> String {
        format!(
            "{}/{}",
            self.postgres_url.trim_end_matches('/'),
            self.run_name
        )
    }

    pub fn topic_prefix(&self) -> String {
        format!("{}.", self.run_name.replace('_', "-"))
    }

    fn keys_dir(&self) -> PathBuf {
        self.run_dir.join("keys")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.run_dir.join("logs")
    }

    pub fn admin_password_file(&self) -> PathBuf {
        self.keys_dir().join("admin-password")
    }
}

/// One running service.
#[derive(Debug)]
pub struct Service {
    pub name: &'static str,
    pub pid: u32,
    child: Child,
}

/// The running services and what they need to be reached and cleaned up.
#[derive(Debug)]
pub struct Stack {
    pub settings: StackSettings,
    /// Environment of every service; the rebuild runs with it too.
    pub env: BTreeMap<String, String>,
    pub command_url: String,
    pub query_url: String,
    pub services: Vec<Service>,
}

impl Stack {
    /// Starts every service, or stops the ones it started and fails.
    pub async fn start(settings: StackSettings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(settings.keys_dir())
            .with_context(|| format!("failed to create {}", settings.keys_dir().display()))?;
        std::fs::create_dir_all(settings.logs_dir())?;
        let command_address = free_address()?;
        let query_address = free_address()?;
        let socket_address = free_address()?;
        let env = service_env(&settings, &command_address, &query_address, &socket_address);
        let mut stack = Self {
            env,
            command_url: format!("http://{command_address}"),
            query_url: format!("http://{query_address}"),
            services: Vec::new(),
            settings,
        };
        if let Err(error) = stack.start_services().await {
            stack.stop_all().await;
            return Err(error);
        }
        Ok(stack)
    }

    async fn start_services(&mut self) -> anyhow::Result<()> {
        self.create_keys().await?;

        self.spawn("command-service", &[])?;
        let command_url = self.command_url.clone();
        self.wait_for_health("command-service", &command_url)
            .await?;

        for name in ["outbox-relay", "projection-workers", "query-service"] {
            self.spawn(name, &[])?;
        }
        let query_url = self.query_url.clone();
        self.wait_for_health("query-service", &query_url).await?;
        tokio::time::sleep(SETTLE_TIME).await;
        for name in ["outbox-relay", "projection-workers"] {
            self.check_alive(name)?;
        }
        Ok(())
    }

    /// Creates the master key file, the token key file and the admin password.
    async fn create_keys(&self) -> anyhow::Result<()> {
        let keys = self.settings.keys_dir();
        self.run_tool(
            "meridian-keys",
            &["init", "--file"],
            &keys.join("master-keys.json"),
        )
        .await?;
        self.run_tool(
            "meridian-token-keys",
            &["init", "--file"],
            &keys.join("token-keys.json"),
        )
        .await?;
        write_secret(
            &self.settings.admin_password_file(),
            &Alphanumeric.sample_string(&mut rand::rng(), 32),
        )
    }

    async fn run_tool(&self, tool: &str, arguments: &[&str], file: &Path) -> anyhow::Result<()> {
        let binary = self.settings.bin_dir.join(tool);
        let output = self
            .command(&binary)
            .args(arguments)
            .arg(file)
            .output()
            .await
            .with_context(|| format!("failed to run {}", binary.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed ({}): {}",
                binary.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Returns a command for `binary` with the services' environment and no other
    /// `MERIDIAN_*` variable of this process.
    pub fn command(&self, binary: &Path) -> Command {
        let mut command = Command::new(binary);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MERIDIAN_") {
                command.env_remove(name);
            }
        }
        command
            .envs(&self.env)
            .env("NO_COLOR", "1")
            .current_dir(&self.settings.run_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // The services get SIGTERM when the harness dies, so a harness killed by a signal
        // leaves no service holding database connections.
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl(2), which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        command
    }

    /// Starts service `name` with its output appended to `logs/<name>.log`.
    pub fn spawn(&mut self, name: &'static str, arguments: &[&str]) -> anyhow::Result<u32> {
        let binary = self.settings.bin_dir.join(name);
        let log_path = self.settings.logs_dir().join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("failed to open {}", log_path.display()))?;
        let child = self
            .command(&binary)
            .args(arguments)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "failed to start {}; build it with `cargo build --release --workspace --bins`",
                    binary.display()
                )
            })?;
        let pid = child.id().context("the service exited at once")?;
        self.services.push(Service { name, pid, child });
        Ok(pid)
    }

    async fn wait_for_health(&mut self, name: &str, base_url: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{base_url}/healthz");
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            if let Ok(response) = http.get(&url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            self.check_alive(name)?;
            if Instant::now() >= deadline {
                bail!(
                    "GET {url} did not return 200 within {} s; see {}",
                    HEALTH_TIMEOUT.as_secs(),
                    self.log_path(name).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails when service `name` has exited.
    pub fn check_alive(&mut self, name: &str) -> anyhow::Result<()> {
        let log = self.log_path(name);
        let service = self.service_mut(name)?;
        if let Some(status) = service.child.try_wait()? {
            bail!(
                "{name} exited ({status}); see {}:\n{}",
                log.display(),
                log_tail(&log)
            );
        }
        Ok(())
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.settings.logs_dir().join(format!("{name}.log"))
    }

    fn service_mut(&mut self, name: &str) -> anyhow::Result<&mut Service> {
        self.services
            .iter_mut()
            .find(|service| service.name == name)
            .with_context(|| format!("{name} is not running"))
    }

    /// Reads the memory of every running service, in start order.
    pub fn memory(&self) -> Vec<(&'static str, anyhow::Result<MemoryUsage>)> {
        self.services
            .iter()
            .map(|service| (service.name, MemoryUsage::of_process(service.pid)))
            .collect()
    }

    /// Pauses (`SIGSTOP`) or resumes (`SIGCONT`) service `name`. A paused process keeps its
    /// memory and its peak, and takes no CPU.
    pub fn signal(&mut self, name: &str, pause: bool) -> anyhow::Result<()> {
        let service = self.service_mut(name)?;
        let pid = libc::pid_t::try_from(service.pid).context("pid out of range")?;
        let signal = if pause { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) with the pid of a child that has not been reaped yet, so the pid
        // cannot belong to another process.
        let sent = unsafe { libc::kill(pid, signal) };
        anyhow::ensure!(
            sent == 0,
            "failed to signal {name}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Stops service `name` with SIGTERM, or SIGKILL after the grace time.
    pub async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let position = self
            .services
            .iter()
            .position(|service| service.name == name)
            .with_context(|| format!("{name} is not running"))?;
        let service = self.services.remove(position);
        stop_child(service).await
    }

    async fn stop_all(&mut self) {
        // The query service and the workers first, the command service last.
        while let Some(service) = self.services.pop() {
            let name = service.name;
            if let Err(error) = stop_child(service).await {
                eprintln!("stopping {name} failed: {error:#}");
            }
        }
    }

    /// Stops every service, drops the database and the MongoDB database, and deletes the
    /// key files. Returns the first failure after trying every step.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.stop_all().await;
        let database = meridian_event_log::database::drop_database(&self.settings.database_url())
            .await
            .with_context(|| format!("failed to drop database {}", self.settings.run_name));
        let mongodb = drop_mongodb_database(&self.env, &self.settings.run_name).await;
        let keys = std::fs::remove_dir_all(self.settings.keys_dir())
            .with_context(|| format!("failed to delete {}", self.settings.keys_dir().display()));
        database.and(mongodb).and(keys)
    }
}

/// Sends SIGTERM, and SIGCONT in case the process is paused, waits up to [`STOP_GRACE`],
/// then kills the process.
async fn stop_child(mut service: Service) -> anyhow::Result<()> {
    if service.child.try_wait()?.is_some() {
        return Ok(());
    }
    let pid = libc::pid_t::try_from(service.pid).context("pid out of range")?;
    // SAFETY: kill(2) with a pid of a child that has not been reaped yet, so the pid cannot
    // belong to another process.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(pid, libc::SIGCONT);
    }
    match tokio::time::timeout(STOP_GRACE, service.child.wait()).await {
        Ok(status) => status.map(drop).context("waiting for the service failed"),
        Err(_) => {
            eprintln!(
                "{} did not exit within {} s of SIGTERM; killing it",
                service.name,
                STOP_GRACE.as_secs()
            );
            service
                .child
                .kill()
                .await
                .context("killing the service failed")
        }
    }
}

/// Returns the environment of every service.
fn service_env(
    settings: &StackSettings,
    command_address: &str,
    query_address: &str,
    socket_address: &str,
) -> BTreeMap<String, String> {
    let keys = settings.keys_dir();
    let mut env = BTreeMap::new();
    let mut set = |name: &str, value: String| {
        env.insert(name.to_owned(), value);
    };
    set("MERIDIAN_DATABASE_URL", settings.database_url());
    set("MERIDIAN_TOPIC_PREFIX", settings.topic_prefix());
    set("MERIDIAN_MONGODB_DATABASE", settings.run_name.clone());
    set("MERIDIAN_COMMAND_ADDR", command_address.to_owned());
    set("MERIDIAN_QUERY_ADDR", query_address.to_owned());
    set("MERIDIAN_SOCKET_ADDR", socket_address.to_owned());
    set(
        "MERIDIAN_COMMAND_PUBLIC_URL",
        format!("http://{command_address}"),
    );

    set("MERIDIAN_KEY_PROVIDER", "local".to_owned());
    set(
        "MERIDIAN_MASTER_KEY_FILE",
        keys.join("master-keys.json").display().to_string(),
    );
    set(
        "MERIDIAN_TOKEN_KEY_FILE",
        keys.join("token-keys.json").display().to_string(),
    );
    set("MERIDIAN_ADMIN_EMAIL", ADMIN_EMAIL.to_owned());
    set(
        "MERIDIAN_ADMIN_PASSWORD_FILE",
        settings.admin_password_file().display().to_string(),
    );

    set("MERIDIAN_RATE_LIMIT_PER_ADDRESS", RATE_LIMIT.to_owned());
    set("MERIDIAN_RATE_LIMIT_PER_USER", RATE_LIMIT.to_owned());

    // The addresses of the shared servers pass through from this process.
    for name in [
        "MERIDIAN_KAFKA_BROKERS",
        "MERIDIAN_MONGODB_URL",
        "MERIDIAN_REDIS_URL",
        "MERIDIAN_TOPIC_PARTITIONS",
    ] {
        if let Ok(value) = std::env::var(name) {
            set(name, value);
        }
    }
    env
}

/// Returns a free 127.0.0.1 address. Another process could take it before the service
/// binds it, and the service then fails to start with an error in its log.
fn free_address() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.to_string())
}

/// Writes `secret` to a new file readable only by its owner.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(())
}

async fn drop_mongodb_database(env: &BTreeMap<String, String>, name: &str) -> anyhow::Result<()> {
    let url = env
        .get("MERIDIAN_MONGODB_URL")
        .map(String::as_str)
        .unwrap_or(meridian_event_log::settings::DEFAULT_MONGODB_URL);
    let client = mongodb::Client::with_uri_str(url)
        .await
        .with_context(|| format!("failed to connect to MongoDB at {url}"))?;
    client
        .database(name)
        .drop()
        .await
        .with_context(|| format!("failed to drop MongoDB database {name}"))
}

/// Returns the last 20 lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
