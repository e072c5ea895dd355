//! A steady load across master takeovers (`nodesim --rate`): the swarm
//! runs tasks while a submitter sends a fixed number of submits a second
//! (each with a request id of its own, retried under it until a master
//! acknowledges it, through a [`MasterClient`] that follows the leader
//! among the masters listed), keeping at most so many tasks non-final.
//! Every acknowledgement is recorded (when it was sent and answered, and
//! the term of the master that made the task, read from its id), so the
//! caller can tell when a new leader first answered after a fault, and the
//! longest stretch without an answer. At the end it stops submitting,
//! waits until every acknowledged task is final, and checks the store: no
//! acknowledged task missing, none non-final, every task ended by exactly
//! one accepted report, no (task, attempt) started twice.
//!
//! [`submit_pending`] fills a cluster with pending tasks (arrays), for a
//! takeover's raise and load times.
#![allow(clippy::print_stderr)] // progress lines, as the binaries print

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudai_core::master::SubmitOptions;
use cloudai_core::model::{
    ArrayIndices, RequestId, Resources, TaskId, TaskRecord, TaskSpec, TaskStatus,
};
use cloudai_core::store::{TaskFilter, TaskStore};
use cloudai_grpc::{MasterClient, Security};
use cloudai_mongo::{MongoConfig, MongoStore};
use serde_json::json;

use crate::swarm::{Swarm, SwarmConfig};

/// The steady load.
#[derive(Debug, Clone)]
pub struct SteadyConfig {
    /// Submits sent per second.
    pub rate: f64,
    /// Submits are skipped while this many tasks are non-final
    /// (acknowledged or on their way, and not reported).
    pub max_pending: usize,
    /// What each task asks for.
    pub request: Resources,
    /// Stop submitting once this file exists.
    pub stop_file: Option<PathBuf>,
    /// Created once the swarm is registered and a first submit was
    /// acknowledged.
    pub ready_file: Option<PathBuf>,
    /// Stop submitting after this long (if no stop file came first).
    pub duration: Option<Duration>,
    /// How long a submit call is retried while no master leads or
    /// answers (it is then sent again under the same request id).
    pub leader_wait: Duration,
    /// How long to wait, after the last submit, for every acknowledged
    /// task to end.
    pub drain: Duration,
    /// The store to read at the end (`mongodb://` URI and database);
    /// without it, the tasks are listed through the leader.
    pub store: Option<(String, String)>,
}

/// One acknowledged submit.
#[derive(Debug, Clone)]
pub struct Ack {
    /// When the submit was first sent, ms since the epoch.
    pub sent_ms: u64,
    /// When it was acknowledged, ms since the epoch.
    pub acked_ms: u64,
    /// The term of the master that made the task (from its id).
    pub term: u64,
    /// Which listed master the client followed when the answer came.
    pub via: usize,
    /// The task.
    pub task: TaskId,
}

/// What a steady run saw.
#[derive(Debug, Clone)]
pub struct SteadyReport {
    /// Workers simulated.
    pub workers: usize,
    /// The masters listed.
    pub masters: Vec<String>,
    /// Every acknowledged submit, in order of acknowledgement.
    pub acks: Vec<Ack>,
    /// Submit calls that failed (then sent again under their request id).
    pub submit_errors: u64,
    /// Submits never acknowledged (given up).
    pub unacknowledged: u64,
    /// Ticks skipped because `max_pending` tasks were non-final.
    pub skipped: u64,
    /// Reports accepted: completed, failed, cancelled; and refused.
    pub reports: [u64; 4],
    /// (task, attempt) pairs started twice.
    pub double_assignments: u64,
    /// Assignments of a run its worker still held (no-ops).
    pub repeated_assignments: u64,
    /// Calls refused for a term below the highest a worker had seen.
    pub stale_calls: u64,
    /// Registrations answered from a term below the highest seen.
    pub stale_registrations: u64,
    /// Workers moved to a new master by a higher term's `MasterRegister`.
    pub moves: u64,
    /// Registrations accepted (first ones and repeats).
    pub registrations: u64,
    /// Heartbeats failed or answered "register again".
    pub heartbeat_errors: u64,
    /// Whether every acknowledged task ended within the drain time.
    pub drained: bool,
    /// Acknowledged tasks missing from the store at the end.
    pub lost: Vec<TaskId>,
    /// Acknowledged tasks not final at the end.
    pub not_final: Vec<TaskId>,
    /// Acknowledged tasks final but not completed (every run succeeds).
    pub not_completed: Vec<String>,
    /// Acknowledged tasks whose runs' reports the master accepted other
    /// than once.
    pub reports_not_one: Vec<String>,
    /// Tasks in the store no submit was acknowledged with (a submit
    /// retried without its request id being honoured).
    pub extra: Vec<TaskId>,
    /// Tasks without exactly one terminal state: not final, ended by two
    /// accepted reports, or stored as other than the completion a worker's
    /// accepted report said.
    pub bad_terminal: u64,
    /// The first errors met.
    pub errors: Vec<String>,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The term of the master that generated `task` (`task-<ms>-<n>`, the
/// term in the high 32 bits of `n`); 0 for another id.
pub fn term_of(task: &TaskId) -> u64 {
    task.as_str()
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map_or(0, |n| n >> 32)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps the first few of many messages.
#[derive(Debug, Default)]
struct Errors(Mutex<Vec<String>>);

impl Errors {
    fn push(&self, e: String) {
        let mut v = lock(&self.0);
        if v.len() < 20 {
            v.push(e);
        }
    }
}

/// Runs the swarm and the steady load against `masters` (`a:1,b:2`).
pub async fn run(
    masters: &str,
    security: Security,
    swarm: SwarmConfig,
    load: &SteadyConfig,
) -> Result<SteadyReport, String> {
    let workers = swarm.workers;
    let client = MasterClient::new(masters, security.clone())
        .map_err(|e| e.to_string())?
        .leader_wait(load.leader_wait);
    let listed = client.listed().to_vec();
    let swarm = Swarm::start(masters, security, swarm).await?;
    let stats = swarm.stats();
    eprintln!(
        "{workers} workers registered; submitting {}/s to {masters}",
        load.rate
    );
    let spec = TaskSpec::new("busybox", vec!["true".into()], load.request);
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let submit_errors = Arc::new(AtomicU64::new(0));
    let unacknowledged = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let mut skipped = 0u64;
    let started = Instant::now();
    let pid = std::process::id();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut submits = tokio::task::JoinSet::new();
    let mut ready = load.ready_file.clone();
    let stop_asked = || {
        load.stop_file.as_ref().is_some_and(|f| f.exists())
            || load.duration.is_some_and(|d| started.elapsed() >= d)
    };
    for n in 0u64.. {
        tick.tick().await;
        if stop_asked() {
            break;
        }
        if ready.is_some() && !lock(&acks).is_empty() {
            if let Some(f) = ready.take() {
                std::fs::write(&f, b"ready\n").map_err(|e| format!("{}: {e}", f.display()))?;
            }
        }
        let acked = lock(&acks).len() as u64;
        let open = in_flight.load(Ordering::Relaxed) as u64 + acked.saturating_sub(stats.ended());
        if open >= load.max_pending as u64 {
            skipped += 1;
            continue;
        }
        while submits.try_join_next().is_some() {}
        let request = RequestId::new(format!("nodesim-{pid}-{n}")).map_err(|e| e.to_string())?;
        let (c, spec, acks, in_flight) = (
            client.clone(),
            spec.clone(),
            acks.clone(),
            in_flight.clone(),
        );
        let (submit_errors, unacknowledged, errors, listed) = (
            submit_errors.clone(),
            unacknowledged.clone(),
            errors.clone(),
            listed.clone(),
        );
        in_flight.fetch_add(1, Ordering::Relaxed);
        submits.spawn(async move {
            let sent_ms = epoch_ms();
            let sent = Instant::now();
            let options = SubmitOptions {
                wait_for_capacity: false,
                request: Some(request.clone()),
                ..SubmitOptions::default()
            };
            let mut refusals = 0;
            loop {
                match c.submit_with(spec.clone(), options.clone()).await {
                    Ok(task) => {
                        let acked_ms = epoch_ms();
                        let following = c.following();
                        let via = listed.iter().position(|a| *a == following).unwrap_or(0);
                        lock(&acks).push(Ack {
                            sent_ms,
                            acked_ms,
                            term: term_of(&task),
                            via,
                            task,
                        });
                        break;
                    }
                    Err(e) => {
                        submit_errors.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!(
                            "submit {request} (sent at {sent_ms}) failed at {}: {e}",
                            epoch_ms()
                        ));
                        if !e.is_transient() {
                            refusals += 1;
                        }
                        if refusals >= 5 || sent.elapsed() > Duration::from_secs(180) {
                            unacknowledged.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Every submit sent is acknowledged (or given up) before the drain.
    while submits.join_next().await.is_some() {}
    let mut acks = std::mem::take(&mut *lock(&acks));
    acks.sort_by_key(|a| a.acked_ms);
    eprintln!(
        "{} submits acknowledged; waiting for their tasks to end",
        acks.len()
    );

    // Every task the master has is final (every acknowledged one is
    // stored by now), and the workers hold no run.
    let deadline = Instant::now() + load.drain;
    let drained = loop {
        if swarm.running() == 0 {
            match client.task_counts().await {
                Ok(c) if c.pending + c.running == 0 => break true,
                Ok(_) => {}
                Err(e) => errors.push(format!("task counts: {e}")),
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A last look for late double assignments or reports.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let tasks: Vec<TaskRecord> = match &load.store {
        Some((uri, db)) => {
            let store = MongoStore::connect(MongoConfig::new(uri.clone(), db.clone()))
                .await
                .map_err(|e| format!("cannot open the store to check it: {e}"))?;
            store
                .list_tasks(&TaskFilter::default())
                .await
                .map_err(|e| format!("cannot list the store's tasks: {e}"))?
        }
        None => client
            .tasks(&TaskFilter::default())
            .await
            .map_err(|e| format!("cannot list the tasks: {e}"))?,
    };
    let stored: HashMap<&TaskId, &TaskRecord> = tasks.iter().map(|t| (&t.id, t)).collect();
    let acked: HashSet<&TaskId> = acks.iter().map(|a| &a.task).collect();
    let mut lost = Vec::new();
    let mut not_final = Vec::new();
    let mut not_completed = Vec::new();
    let mut reports_not_one = Vec::new();
    let mut bad_terminal = 0;
    for id in &acked {
        let Some(t) = stored.get(*id) else {
            lost.push((*id).clone());
            continue;
        };
        // Every simulated run completes: a task ends once, completed, by
        // the one report the master accepted. Bad: not final; two reports
        // accepted (two ends); or a report accepted and the task stored as
        // something else.
        let n = stats.reports(id);
        let terminal = t.status.is_terminal();
        if !terminal {
            not_final.push((*id).clone());
        }
        if terminal && t.status != TaskStatus::Completed {
            not_completed.push(format!(
                "{id}: {} ({}; attempt {}, history {:?}; {n} reports accepted)",
                t.status,
                t.reason.as_deref().unwrap_or("no reason"),
                t.attempt,
                t.history
                    .iter()
                    .map(|a| format!("{}@{}:{:?}", a.attempt, a.worker, a.cause))
                    .collect::<Vec<_>>()
            ));
        }
        if n != 1 {
            reports_not_one.push(format!("{id}: {n} reports accepted, status {}", t.status));
        }
        if !terminal || n > 1 || (n == 1 && t.status != TaskStatus::Completed) {
            bad_terminal += 1;
        }
    }
    let extra: Vec<TaskId> = tasks
        .iter()
        .filter(|t| !acked.contains(&t.id))
        .map(|t| t.id.clone())
        .collect();
    for e in stats.errors() {
        errors.push(e);
    }
    let report = SteadyReport {
        workers,
        masters: listed,
        submit_errors: submit_errors.load(Ordering::Relaxed),
        unacknowledged: unacknowledged.load(Ordering::Relaxed),
        skipped,
        reports: [
            stats.completed.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.cancelled.load(Ordering::Relaxed),
            stats.refused.load(Ordering::Relaxed),
        ],
        double_assignments: stats.double_assignments.load(Ordering::Relaxed),
        repeated_assignments: stats.repeated_assignments.load(Ordering::Relaxed),
        stale_calls: stats.stale_calls.load(Ordering::Relaxed),
        stale_registrations: stats.stale_registrations.load(Ordering::Relaxed),
        moves: stats.moves.load(Ordering::Relaxed),
        registrations: stats.registrations.load(Ordering::Relaxed),
        heartbeat_errors: stats.heartbeat_errors.load(Ordering::Relaxed),
        drained,
        lost,
        not_final,
        not_completed,
        reports_not_one,
        extra,
        bad_terminal,
        errors: std::mem::take(&mut *lock(&errors.0)),
        acks,
    };
    swarm.stop().await;
    Ok(report)
}

/// At most `n` of `items`, for a report.
fn first<T: ToString>(items: &[T], n: usize) -> Vec<String> {
    items.iter().take(n).map(ToString::to_string).collect()
}

impl SteadyReport {
    /// Submits acknowledged.
    pub fn submits(&self) -> usize {
        self.acks.len()
    }

    /// The longest stretch without an acknowledgement, first to last, ms.
    pub fn longest_gap_ms(&self) -> u64 {
        self.acks
            .windows(2)
            .map(|w| w[1].acked_ms.saturating_sub(w[0].acked_ms))
            .max()
            .unwrap_or(0)
    }

    /// The report as one JSON object (acknowledgements as
    /// `[sent_ms, acked_ms, term, via]`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "mode": "steady",
            "workers": self.workers,
            "masters": self.masters,
            "submits": self.submits(),
            "submit_errors": self.submit_errors,
            "unacknowledged": self.unacknowledged,
            "skipped": self.skipped,
            "longest_gap_ms": self.longest_gap_ms(),
            "completed": self.reports[0],
            "failed": self.reports[1],
            "cancelled": self.reports[2],
            "refused": self.reports[3],
            "double_assignments": self.double_assignments,
            "repeated_assignments": self.repeated_assignments,
            "stale_calls": self.stale_calls,
            "stale_registrations": self.stale_registrations,
            "moves": self.moves,
            "registrations": self.registrations,
            "heartbeat_errors": self.heartbeat_errors,
            "drained": self.drained,
            "lost": self.lost.len(),
            "lost_first": first(&self.lost, 10),
            "not_final": self.not_final.len(),
            "not_final_first": first(&self.not_final, 10),
            "not_completed": self.not_completed.len(),
            "not_completed_first": first(&self.not_completed, 10),
            "reports_not_one": self.reports_not_one.len(),
            "reports_not_one_first": first(&self.reports_not_one, 10),
            "extra_tasks": self.extra.len(),
            "extra_first": first(&self.extra, 10),
            "bad_terminal": self.bad_terminal,
            "errors": self.errors,
            "acks": self.acks.iter().map(|a| [a.sent_ms, a.acked_ms, a.term, a.via as u64]).collect::<Vec<_>>(),
        })
    }
}

impl std::fmt::Display for SteadyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let terms: std::collections::BTreeSet<u64> = self.acks.iter().map(|a| a.term).collect();
        writeln!(
            f,
            "workers: {} against {}",
            self.workers,
            self.masters.join(",")
        )?;
        writeln!(
            f,
            "submits: {} acknowledged (terms {:?}), {} failed calls retried, {} given up, {} ticks skipped at the non-final cap; longest gap {} ms",
            self.submits(),
            terms,
            self.submit_errors,
            self.unacknowledged,
            self.skipped,
            self.longest_gap_ms()
        )?;
        writeln!(
            f,
            "reports: {} completed, {} failed, {} cancelled, {} refused; drained: {}",
            self.reports[0], self.reports[1], self.reports[2], self.reports[3], self.drained
        )?;
        writeln!(
            f,
            "workers moved by a higher term: {}; calls refused for a lower term: {}; stale registration replies: {}; registrations: {}; heartbeat errors: {}",
            self.moves, self.stale_calls, self.stale_registrations, self.registrations, self.heartbeat_errors
        )?;
        writeln!(
            f,
            "lost acknowledged submits: {}; not final: {}; final but not completed: {}; reports accepted other than once: {}; tasks no submit acknowledged: {}",
            self.lost.len(),
            self.not_final.len(),
            self.not_completed.len(),
            self.reports_not_one.len(),
            self.extra.len()
        )?;
        writeln!(
            f,
            "tasks without exactly one terminal state: {}",
            self.bad_terminal
        )?;
        write!(
            f,
            "double assignments: {} (repeats ignored: {})",
            self.double_assignments, self.repeated_assignments
        )?;
        for e in &self.errors {
            write!(f, "\nerror: {e}")?;
        }
        Ok(())
    }
}

/// Submits `n` pending tasks as arrays of at most `chunk`, each under a
/// request id of its own (retried under it while no master leads), with
/// no worker to run them; returns how long it took.
pub async fn submit_pending(
    client: &MasterClient,
    request: Resources,
    n: usize,
    chunk: usize,
) -> Result<Duration, String> {
    let start = Instant::now();
    let spec = TaskSpec::new("busybox", vec!["true".into()], request);
    let chunk = chunk.max(1);
    let pid = std::process::id();
    let mut done = 0;
    let mut k = 0;
    while done < n {
        let size = chunk.min(n - done);
        let indices: ArrayIndices = format!("1-{size}")
            .parse()
            .map_err(|e: cloudai_core::model::ValidationError| e.to_string())?;
        let options = SubmitOptions {
            wait_for_capacity: true,
            request: Some(RequestId::new(format!("pending-{pid}-{k}")).map_err(|e| e.to_string())?),
            ..SubmitOptions::default()
        };
        let mut tries = 0;
        loop {
            match client
                .submit_array(spec.clone(), &indices, options.clone())
                .await
            {
                Ok(_) => break,
                Err(e) if e.is_transient() && tries < 10 => {
                    tries += 1;
                    eprintln!("array {k}: {e}; again");
                }
                Err(e) => return Err(format!("array {k} of {size} tasks: {e}")),
            }
        }
        done += size;
        k += 1;
        eprintln!("{done} of {n} pending tasks submitted");
    }
    Ok(start.elapsed())
}
