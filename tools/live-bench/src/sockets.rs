//! The idle-socket benchmark: opens Socket.IO connections in steps, each with one
//! `user_locations` subscription that never receives an update, and reads the query
//! service's resident memory (`VmRSS` in `/proc/<pid>/status`) and open file descriptors
//! after each step.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use meridian_importer::session::Secret;
use serde_json::{json, Value};

use crate::cli::SocketOptions;
use crate::login::{login, LOGIN_TIMEOUT};
use crate::node::NodeScript;
use crate::summary::table;

/// Memory and descriptors of one process at one moment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    pub rss_kib: u64,
    pub open_files: usize,
}

impl ProcessSample {
    /// Reads `VmRSS` and counts `/proc/<pid>/fd`.
    pub fn read(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| {
            format!("failed to read /proc/{pid}/status; has process {pid} exited?")
        })?;
        let open_files = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .with_context(|| format!("failed to list /proc/{pid}/fd"))?
            .count();
        Ok(Self {
            rss_kib: vm_rss_kib(&status)?,
            open_files,
        })
    }
}

/// Reads the `VmRSS` value, in KiB, from the text of `/proc/<pid>/status`.
pub fn vm_rss_kib(status: &str) -> anyhow::Result<u64> {
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("the status has no VmRSS line")?;
    let mut fields = line.split_whitespace().skip(1);
    let value = fields.next().context("the VmRSS line has no value")?;
    if fields.next() != Some("kB") {
        bail!("the VmRSS line is not in kB: {line:?}");
    }
    value
        .parse()
        .with_context(|| format!("the VmRSS value is not an integer: {line:?}"))
}

/// Reads the soft `Max open files` limit from the text of `/proc/<pid>/limits`.
pub fn open_file_limit(limits: &str) -> anyhow::Result<String> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("the limits have no \"Max open files\" line")?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("the open-files line has no soft limit: {line:?}"))
}

/// Finds the query service's process id and checks that it is a query service.
fn query_service_pid(options: &SocketOptions) -> anyhow::Result<u32> {
    let pid = match options.pid {
        Some(pid) => pid,
        None => read_pid_file(&options.pid_file)?,
    };
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("process {pid} is not running"))?;
    let command_line = String::from_utf8_lossy(&command_line).replace('\0', " ");
    if !command_line.contains("query-service") {
        bail!("process {pid} is not a query service; its command line is {command_line:?}");
    }
    Ok(pid)
}

fn read_pid_file(path: &Path) -> anyhow::Result<u32> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "failed to read {}; start the services with infra/services.sh or pass --pid",
            path.display()
        )
    })?;
    text.trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id: {text:?}", path.display()))
}

/// One Node.js process and the sockets it holds.
struct Client {
    script: NodeScript,
    open: u32,
}

/// The state after one step.
struct Step {
    requested: u32,
    open: u32,
    failed: u32,
    open_secs: f64,
    server: ProcessSample,
    clients_rss_kib: u64,
    first_error: Option<String>,
}

/// Runs the benchmark that `options` describe and prints its results.
pub async fn run(options: SocketOptions) -> anyhow::Result<()> {
    options.validate()?;
    let pid = query_service_pid(&options)?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .with_context(|| format!("failed to read /proc/{pid}/limits"))?;
    let server_limit = open_file_limit(&limits)?;
    let session = login(&options.command_url, &options.login, LOGIN_TIMEOUT).await?;
    let token = session.access_token().await?;
    let baseline = ProcessSample::read(pid)?;
    eprintln!(
        "query service pid {pid}: {} KiB resident, {} open files (limit {server_limit})",
        baseline.rss_kib, baseline.open_files
    );

    let mut clients: Vec<Client> = Vec::new();
    let mut steps = Vec::new();
    let mut dropped = 0_u64;
    for &requested in &options.steps {
        let step = open_step(&options, &token, pid, requested, &mut clients, &mut dropped).await?;
        let complete = step.open == requested;
        eprintln!(
            "{} of {requested} sockets open after {:.1} s",
            step.open, step.open_secs
        );
        steps.push(step);
        if !complete {
            break;
        }
    }

    for client in &mut clients {
        client.script.send(r#"{"cmd":"close"}"#).await?;
    }
    for client in &mut clients {
        client
            .script
            .wait_for("closed", Duration::from_secs(60), |_| {})
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(options.settle_secs)).await;
    let after_close = ProcessSample::read(pid)?;
    for client in clients {
        client.script.stop(r#"{"cmd":"exit"}"#).await;
    }

    print_report(&steps, baseline, after_close, &server_limit, dropped);
    check_steps(&steps, &options.steps, dropped)
}

/// Opens sockets until `requested` are open in all, then waits `settle_secs` and samples.
async fn open_step(
    options: &SocketOptions,
    token: &Secret,
    pid: u32,
    requested: u32,
    clients: &mut Vec<Client>,
    dropped: &mut u64,
) -> anyhow::Result<Step> {
    let started = tokio::time::Instant::now();
    let mut needed = requested.saturating_sub(clients.iter().map(|c| c.open).sum());
    let mut requested_from = Vec::new();
    while needed > 0 {
        if clients
            .last()
            .is_none_or(|c| c.open >= options.sockets_per_process)
        {
            clients.push(start_client(options, token)?);
        }
        let index = clients.len() - 1;
        let client = &mut clients[index];
        let count = needed.min(options.sockets_per_process - client.open);
        client
            .script
            .send(&json!({ "cmd": "open", "count": count }).to_string())
            .await?;
        client.open += count;
        needed -= count;
        requested_from.push(index);
    }

    let mut failed = 0;
    let mut first_error = None;
    let timeout = Duration::from_secs(options.step_timeout_secs);
    for index in requested_from {
        let client = &mut clients[index];
        let opened = client
            .script
            .wait_for("opened", timeout, |line| count_drop(&line, dropped))
            .await?;
        let open = json_u32(&opened["open"])?;
        failed += json_u32(&opened["failed"])?;
        if let Some(error) = opened["first_error"].as_str() {
            first_error.get_or_insert_with(|| error.to_owned());
        }
        client.open = open;
    }
    let open_secs = started.elapsed().as_secs_f64();

    tokio::time::sleep(Duration::from_secs(options.settle_secs)).await;
    for client in clients.iter_mut() {
        while let Some(line) = client.script.try_next_line() {
            count_drop(&line, dropped);
        }
    }
    let mut clients_rss_kib = 0;
    for client in clients.iter() {
        if let Some(node_pid) = client.script.pid() {
            clients_rss_kib += ProcessSample::read(node_pid)?.rss_kib;
        }
    }
    Ok(Step {
        requested,
        open: clients.iter().map(|c| c.open).sum(),
        failed,
        open_secs,
        server: ProcessSample::read(pid)?,
        clients_rss_kib,
        first_error,
    })
}

fn start_client(options: &SocketOptions, token: &Secret) -> anyhow::Result<Client> {
    let config = json!({
        "url": options.socket_url,
        "parallel": options.parallel,
        "timeout_ms": 20_000,
    });
    Ok(Client {
        script: NodeScript::start(&options.js_dir, "idle-sockets.mjs", &config, token)?,
        open: 0,
    })
}

fn count_drop(line: &Value, dropped: &mut u64) {
    if line["type"] == "dropped" {
        *dropped += 1;
    } else {
        eprintln!("idle-sockets.mjs reported {line}");
    }
}

fn json_u32(value: &Value) -> anyhow::Result<u32> {
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .with_context(|| format!("expected a count, got {value}"))
}

fn print_report(
    steps: &[Step],
    baseline: ProcessSample,
    after_close: ProcessSample,
    server_limit: &str,
    dropped: u64,
) {
    println!(
        "idle Socket.IO connections (WebSocket, one user_locations subscription each) on one \
         query-service process; open-file limit {server_limit}"
    );
    let mut rows = vec![vec![
        "0 (baseline)".to_owned(),
        "0".to_owned(),
        "-".to_owned(),
        "-".to_owned(),
        format!("{:.1}", mib(baseline.rss_kib)),
        "-".to_owned(),
        baseline.open_files.to_string(),
        "-".to_owned(),
    ]];
    for step in steps {
        let growth = step.server.rss_kib.saturating_sub(baseline.rss_kib);
        let per_socket = if step.open > 0 {
            format!("{:.1}", growth as f64 / f64::from(step.open))
        } else {
            "-".to_owned()
        };
        rows.push(vec![
            step.requested.to_string(),
            step.open.to_string(),
            step.failed.to_string(),
            format!("{:.1} s", step.open_secs),
            format!("{:.1}", mib(step.server.rss_kib)),
            per_socket,
            step.server.open_files.to_string(),
            format!("{:.1}", mib(step.clients_rss_kib)),
        ]);
    }
    println!(
        "{}",
        table(
            &[
                "sockets requested",
                "open",
                "failed",
                "time to open",
                "server RSS MiB",
                "KiB per socket",
                "server fds",
                "Node RSS MiB",
            ],
            &rows,
        )
    );
    println!(
        "after closing every socket: server RSS {:.1} MiB, {} open files; sockets dropped by \
         the server while idle: {dropped}",
        mib(after_close.rss_kib),
        after_close.open_files
    );
    if let Some(error) = steps.iter().find_map(|step| step.first_error.as_ref()) {
        println!("first failed socket: {error}");
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Fails unless every requested step opened all its sockets and none dropped.
fn check_steps(steps: &[Step], requested: &[u32], dropped: u64) -> anyhow::Result<()> {
    if let Some(step) = steps.iter().find(|step| step.open < step.requested) {
        bail!(
            "only {} of {} sockets opened; the first error: {}",
            step.open,
            step.requested,
            step.first_error.as_deref().unwrap_or("none reported")
        );
    }
    if steps.len() < requested.len() {
        bail!("only {} of {} steps ran", steps.len(), requested.len());
    }
    if dropped > 0 {
        bail!("{dropped} idle sockets were dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str =
        "Name:\tquery-service\nVmPeak:\t  912345 kB\nVmRSS:\t   45678 kB\nThreads:\t4\n";

    #[test]
    fn vm_rss_read_in_kib() {
        assert_eq!(vm_rss_kib(STATUS).expect("VmRSS parses"), 45_678);
    }

    #[test]
    fn status_without_vm_rss_rejected() {
        let error = vm_rss_kib("Name:\tx\n").expect_err("no VmRSS line");
        assert!(error.to_string().contains("no VmRSS line"), "{error}");
    }

    #[test]
    fn vm_rss_in_other_unit_rejected() {
        let error = vm_rss_kib("VmRSS:\t 12 MB\n").expect_err("MB is not kB");
        assert!(error.to_string().contains("not in kB"), "{error}");
    }

    #[test]
    fn soft_open_file_limit_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                524288               files\n";
        assert_eq!(open_file_limit(limits).expect("limit parses"), "20000");
    }

    #[test]
    fn pid_file_with_text_rejected() {
        let path = std::env::temp_dir().join(format!("live-bench-{}.pid", uuid::Uuid::new_v4()));
        std::fs::write(&path, "not a pid\n").expect("temporary file is writable");
        let error = read_pid_file(&path).expect_err("text is no pid");
        let _ = std::fs::remove_file(&path);
        assert!(
            error.to_string().contains("does not hold a process id"),
            "{error}"
        );
    }
}
