//! The report of one run: its figures, the goals with their ratios, and the printed tables.

use meridian_live_bench::summary::table;
use serde::Serialize;

use crate::cli::Bounds;
use crate::ingest::CaseResult;
use crate::lag::LagResult;
use crate::machine::Machine;
use crate::memory::{megabytes, MemoryUsage};
use crate::naive::NaiveResult;
use crate::physical::PhysicalResult;
use crate::rebuild::RebuildResult;
use crate::stats::Latency;

/// Idle memory goal per service, in megabytes of 10^6 bytes.
pub const IDLE_MEMORY_GOAL_MB: f64 = 50.0;
/// Rebuild goal, events per second.
pub const REBUILD_GOAL_EVENTS_PER_SECOND: f64 = 100_000.0;

/// Memory of one service at the three moments the harness reads it.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceMemory {
    pub service: String,
    /// `VmRSS` after start, before any load.
    pub idle: Option<MemoryUsage>,
    /// `VmRSS` after the users are registered, each with an argon2id hash, before any phase.
    pub after_registration: Option<MemoryUsage>,
    /// `VmRSS` once the load has drained, or the drain time has passed.
    pub after_load: Option<MemoryUsage>,
    /// `VmHWM` at the end, before the service is stopped.
    pub at_end: Option<MemoryUsage>,
}

/// Whether the outbox and the read models caught up after the load.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    pub caught_up: bool,
    pub seconds: f64,
    pub outbox_pending: i64,
    pub read_models_lag: i64,
}

/// One goal, its measured ratio and whether it is met; `None` when a figure is missing.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    /// Name of the run's database and MongoDB database; the topic prefix is derived from it.
    pub run_name: String,
    pub machine: Option<Machine>,
    pub bounds: Option<Bounds>,
    pub load_average_end: String,
    pub workload: Option<WorkloadSummary>,
    pub registration: Option<Registration>,
    pub lag: Option<LagResult>,
    pub ingest: Vec<CaseResult>,
    /// Whether the outbox relay and the projection workers were paused during the ingest,
    /// physical and naive phases.
    pub pipeline_paused_during_ingest: bool,
    pub physical: Option<PhysicalResult>,
    pub naive: Option<NaiveResult>,
    pub drain: Option<Drain>,
    pub rebuild: Option<RebuildResult>,
    pub memory: Vec<ServiceMemory>,
    pub goals: Vec<Goal>,
    /// Failures that make the run's figures doubtful: failed commands, acknowledged events
    /// missing from the store, phases that failed.
    pub problems: Vec<String>,
    /// Directory with the services' logs.
    pub logs: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSummary {
    pub file: String,
    pub valid_rows: usize,
    pub vessels: usize,
    pub reports_used: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Registration {
    pub users: usize,
    pub seconds: f64,
}

impl Report {
    /// Computes the goals from the figures present.
    pub fn evaluate_goals(&mut self) {
        let insert_64 = self
            .physical
            .as_ref()
            .and_then(|physical| physical.insert.iter().max_by_key(|rate| rate.connections))
            .map(|rate| (rate.connections, rate.rows_per_second));
        let copy = self
            .physical
            .as_ref()
            .map(|physical| physical.copy.rows_per_second);
        let naive = self.naive.as_ref().map(|naive| naive.events_per_second);
        let rebuild = match &self.rebuild {
            Some(RebuildResult::Measured { reported, .. }) => Some(reported.events_per_second),
            _ => None,
        };

        let mut goals = Vec::new();
        let widest = self.ingest.iter().map(|case| case.clients).max();
        for case in self
            .ingest
            .iter()
            .filter(|case| Some(case.clients) == widest)
        {
            let label = format!(
                "ingest, {} clients, batch {}",
                case.clients, case.batch_size
            );
            // The reference writes 100 rows per commit, so only batched ingest compares.
            if case.batch_size > 1 {
                goals.push(ratio_goal(
                    format!(
                        "{label} >= 1/2 of batched INSERT ({} connections)",
                        insert_64.map_or(0, |(connections, _)| connections)
                    ),
                    case.events_per_second,
                    insert_64.map(|(_, rate)| rate),
                    0.5,
                ));
            }
            goals.push(ratio_goal(
                format!("{label} >= 5x the naive baseline"),
                case.events_per_second,
                naive,
                5.0,
            ));
        }
        goals.push(match rebuild {
            Some(rate) => Goal {
                goal: "rebuild >= 100,000 events/s".to_owned(),
                measured: format!("{rate:.0} events/s"),
                ratio: Some(rate / REBUILD_GOAL_EVENTS_PER_SECOND),
                met: Some(rate >= REBUILD_GOAL_EVENTS_PER_SECOND),
            },
            None => missing("rebuild >= 100,000 events/s"),
        });
        goals.push(match rebuild {
            Some(rate) => ratio_goal("rebuild >= 1/2 of COPY".to_owned(), rate, copy, 0.5),
            None => missing("rebuild >= 1/2 of COPY"),
        });
        for memory in &self.memory {
            let goal = format!("{} idle memory < 50 MB", memory.service);
            goals.push(match memory.idle {
                Some(usage) => {
                    let mb = megabytes(usage.rss_kib);
                    Goal {
                        goal,
                        measured: format!("{mb:.1} MB"),
                        ratio: Some(mb / IDLE_MEMORY_GOAL_MB),
                        met: Some(mb < IDLE_MEMORY_GOAL_MB),
                    }
                }
                None => missing(&goal),
            });
        }
        self.goals = goals;
    }

    /// Renders the report as text.
    pub fn render(&self) -> String {
        let mut sections = Vec::new();
        if let Some(machine) = &self.machine {
            sections.push(render_machine(machine, &self.load_average_end));
        }
        sections.extend(self.phase_sections());
        if !self.memory.is_empty() {
            sections.push(render_memory(&self.memory));
        }
        sections.push(render_goals(&self.goals));
        if !self.problems.is_empty() {
            let lines: Vec<String> = self
                .problems
                .iter()
                .map(|line| format!("- {line}"))
                .collect();
            sections.push(format!("PROBLEMS\n{}", lines.join("\n")));
        }
        if let Some(logs) = &self.logs {
            sections.push(format!("Service logs: {logs}"));
        }
        sections.join("\n\n") + "\n"
    }

    /// Renders the workload and each phase that ran, in run order.
    fn phase_sections(&self) -> Vec<String> {
        let mut sections = Vec::new();
        if let Some(workload) = &self.workload {
            sections.push(format!(
                "Workload: {} ({} valid reports); {} vessels, {} reports in time order.",
                workload.file, workload.valid_rows, workload.vessels, workload.reports_used
            ));
        }
        if let Some(registration) = &self.registration {
            sections.push(format!(
                "Registration (not timed in any phase): {} users in {:.1} s.",
                registration.users, registration.seconds
            ));
        }
        if let Some(lag) = &self.lag {
            sections.push(render_lag(lag));
        }
        if !self.ingest.is_empty() {
            sections.push(render_ingest(
                &self.ingest,
                self.pipeline_paused_during_ingest,
            ));
        }
        if let Some(physical) = &self.physical {
            sections.push(render_physical(physical));
        }
        if let Some(naive) = &self.naive {
            sections.push(render_naive(naive));
        }
        if let Some(drain) = &self.drain {
            sections.push(format!(
                "Drain after the load: {} after {:.1} s (outbox pending {}, read-models lag {}).",
                if drain.caught_up {
                    "caught up"
                } else {
                    "NOT caught up"
                },
                drain.seconds,
                drain.outbox_pending,
                drain.read_models_lag
            ));
        }
        if let Some(rebuild) = &self.rebuild {
            sections.push(render_rebuild(rebuild));
        }
        sections
    }
}

fn ratio_goal(goal: String, measured: f64, reference: Option<f64>, target: f64) -> Goal {
    match reference.filter(|reference| *reference > 0.0) {
        Some(reference) => {
            let ratio = measured / reference;
            Goal {
                goal,
                measured: format!("{measured:.0} vs {reference:.0} events/s"),
                ratio: Some(ratio),
                met: Some(ratio >= target),
            }
        }
        None => missing(&goal),
    }
}

fn missing(goal: &str) -> Goal {
    Goal {
        goal: goal.to_owned(),
        measured: "not measured".to_owned(),
        ratio: None,
        met: None,
    }
}

fn render_machine(machine: &Machine, load_end: &str) -> String {
    let rows = vec![
        row(["date", &machine.date]),
        row(["commit", &machine.commit]),
        row(["cpus (nproc)", &machine.cpus.to_string()]),
        row(["cpu model", &machine.cpu_model]),
        row([
            "memory",
            &format!(
                "{:.1} GiB",
                machine.memory_total_kib as f64 / 1024.0 / 1024.0
            ),
        ]),
        row(["kernel", &machine.kernel]),
        row(["load average, start", &machine.load_average_start]),
        row(["load average, end", load_end]),
    ];
    format!("MACHINE\n{}", table(&["item", "value"], &rows))
}

fn latency_cells(latency: &Option<Latency>) -> [String; 2] {
    match latency {
        Some(latency) => [
            format!("{:.1} ms", latency.p50_ms),
            format!("{:.1} ms", latency.p99_ms),
        ],
        None => ["-".to_owned(), "-".to_owned()],
    }
}

fn render_ingest(cases: &[CaseResult], pipeline_paused: bool) -> String {
    let rows: Vec<Vec<String>> = cases
        .iter()
        .map(|case| {
            let [p50, p99] = latency_cells(&case.latency);
            let limit = if case.stopped_at_time_limit {
                " (limit)"
            } else {
                ""
            };
            vec![
                case.clients.to_string(),
                case.batch_size.to_string(),
                case.commands_accepted.to_string(),
                case.commands_failed.to_string(),
                case.events_acknowledged.to_string(),
                case.events_in_store.to_string(),
                case.events_missing.to_string(),
                format!("{:.1}{limit}", case.seconds),
                format!("{:.0}", case.events_per_second),
                format!("{:.0}", case.commands_per_second),
                p50,
                p99,
            ]
        })
        .collect();
    let header = [
        "clients",
        "batch",
        "2xx",
        "failed",
        "events acked",
        "events stored",
        "missing",
        "s",
        "events/s",
        "commands/s",
        "p50",
        "p99",
    ];
    let pipeline = if pipeline_paused {
        "outbox relay and projection workers paused"
    } else {
        "outbox relay and projection workers running"
    };
    format!(
        "INGEST (command API, 2xx events counted in the store; {pipeline})\n{}",
        table(&header, &rows)
    )
}

fn render_physical(physical: &PhysicalResult) -> String {
    let rows: Vec<Vec<String>> = physical
        .insert
        .iter()
        .chain(std::iter::once(&physical.copy))
        .map(|rate| {
            let connections = match rate.requested_connections {
                Some(requested) => format!("{} ({requested} requested)", rate.connections),
                None => rate.connections.to_string(),
            };
            vec![
                rate.method.to_owned(),
                connections,
                rate.rows_per_commit.to_string(),
                rate.rows.to_string(),
                format!("{:.1}", rate.seconds),
                format!("{:.0}", rate.rows_per_second),
            ]
        })
        .collect();
    format!(
        "PHYSICAL REFERENCE (bare table; synchronous_commit={}, fsync={}; rows of {:.0} + {:.0} bytes{})\n{}",
        physical.synchronous_commit,
        physical.fsync,
        physical.payload_bytes,
        physical.metadata_bytes,
        if physical.sample_from_store { ", copied from stored events" } else { ", built: no stored events" },
        table(
            &["method", "connections", "rows/commit", "rows", "s", "rows/s"],
            &rows
        )
    )
}

fn render_naive(naive: &NaiveResult) -> String {
    let [p50, p99] = latency_cells(&naive.latency);
    let limit = if naive.stopped_at_time_limit {
        " (limit)"
    } else {
        ""
    };
    let rows = vec![vec![
        naive.clients.to_string(),
        naive.pool_connections.to_string(),
        naive.commands_sent.to_string(),
        naive.commands_failed.to_string(),
        naive.events_in_store.to_string(),
        format!("{:.1}{limit}", naive.seconds),
        format!("{:.0}", naive.events_per_second),
        p50,
        p99,
    ]];
    format!(
        "NAIVE BASELINE (cqrs-es + postgres-es, one command per event, no snapshots)\n{}",
        table(
            &[
                "clients",
                "pool",
                "commands",
                "failed",
                "events stored",
                "s",
                "events/s",
                "p50",
                "p99"
            ],
            &rows
        )
    )
}

fn render_lag(lag: &LagResult) -> String {
    let [p50, p99] = latency_cells(&lag.lag);
    let max = lag.lag.map_or("-".to_owned(), |latency| {
        format!("{:.1} ms", latency.max_ms)
    });
    let oldest = lag
        .oldest_not_shown_seconds
        .map_or("-".to_owned(), |seconds| format!("{seconds:.1} s"));
    let rows = vec![vec![
        format!("{:.0}", lag.requested_events_per_second),
        format!("{:.0}", lag.achieved_events_per_second),
        lag.commands_accepted.to_string(),
        lag.commands_failed.to_string(),
        lag.commands_late.to_string(),
        lag.commands_shown.to_string(),
        lag.commands_not_shown.to_string(),
        oldest,
        p50,
        p99,
        max,
    ]];
    format!(
        "END-TO-END LAG (2xx response to rm_applied; {} clients, batch {}; poll error <= {:.1} ms)\n{}",
        lag.clients,
        lag.batch_size,
        lag.max_poll_gap_ms,
        table(
            &[
                "requested/s", "achieved/s", "2xx", "failed", "late", "shown", "not shown",
                "oldest not shown", "p50", "p99", "max"
            ],
            &rows
        )
    )
}

fn render_rebuild(rebuild: &RebuildResult) -> String {
    match rebuild {
        RebuildResult::Measured {
            reported,
            process_seconds,
            peak_kib,
        } => format!(
            "PROJECTION REBUILD\n{}",
            table(
                &[
                    "events",
                    "s (reported)",
                    "s (process)",
                    "events/s",
                    "peak memory"
                ],
                &[vec![
                    reported.events.to_string(),
                    format!("{:.2}", reported.seconds),
                    format!("{process_seconds:.2}"),
                    format!("{:.0}", reported.events_per_second),
                    peak_kib.map_or("-".to_owned(), |kib| format!("{:.1} MB", megabytes(kib))),
                ]]
            )
        ),
        RebuildResult::NotAvailable { reason } => {
            format!("PROJECTION REBUILD: not available ({reason})")
        }
    }
}

fn render_memory(memory: &[ServiceMemory]) -> String {
    let cell = |usage: Option<MemoryUsage>, peak: bool| match usage {
        Some(usage) if peak => format!("{:.1} MB", megabytes(usage.peak_kib)),
        Some(usage) => format!("{:.1} MB", megabytes(usage.rss_kib)),
        None => "-".to_owned(),
    };
    let rows: Vec<Vec<String>> = memory
        .iter()
        .map(|service| {
            vec![
                service.service.clone(),
                cell(service.idle, false),
                cell(service.after_registration, false),
                cell(service.after_load, false),
                cell(service.at_end, true),
            ]
        })
        .collect();
    format!(
        "MEMORY (MB = 10^6 bytes)\n{}",
        table(
            &[
                "service",
                "idle RSS",
                "RSS after registration",
                "RSS after load",
                "peak (VmHWM)",
            ],
            &rows
        )
    )
}

fn render_goals(goals: &[Goal]) -> String {
    let rows: Vec<Vec<String>> = goals
        .iter()
        .map(|goal| {
            vec![
                goal.goal.clone(),
                goal.measured.clone(),
                goal.ratio
                    .map_or("-".to_owned(), |ratio| format!("{ratio:.2}")),
                match goal.met {
                    Some(true) => "met".to_owned(),
                    Some(false) => "NOT MET".to_owned(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    format!(
        "GOALS\n{}",
        table(&["goal", "measured", "ratio", "result"], &rows)
    )
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|cell| (*cell).to_owned()).collect()
}
