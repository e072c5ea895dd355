//! The swarm's measured run: register the workers, let them heartbeat
//! idle, park tasks that cannot run, submit the load and wait for every
//! report, then read the figures. [`check`] asserts that the cluster is
//! clean afterwards (the CI smoke test and `nodesim --check`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudai_core::host;
use cloudai_core::liveness::Health;
use cloudai_core::master::SubmitOptions;
use cloudai_core::model::{ArrayId, ArrayIndices, Resources, TaskSpec, TaskStatus};
use cloudai_core::store::TaskFilter;
use cloudai_grpc::{MasterClient, Security};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::submit::{park, park_dependents, submit_all, PARKED_WORKER};
use crate::swarm::{Swarm, SwarmConfig};

/// The load the swarm is given.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Runnable tasks submitted and measured.
    pub tasks: usize,
    /// Submissions in flight at once.
    pub concurrency: usize,
    /// What each task asks for.
    pub request: Resources,
    /// Tasks parked first on a worker that never answers.
    pub parked: usize,
    /// How long the registered swarm only heartbeats, measured, before the
    /// load (zero: skip).
    pub idle: Duration,
    /// Give up waiting for the reports after this long.
    pub deadline: Duration,
    /// Submit the runnable tasks as one array (one call, one store batch)
    /// instead of one call each.
    pub array: bool,
    /// Retries each task asks for after a failure (with no delay), so a
    /// share of failing runs is run again.
    pub retries: u32,
    /// Submit the tasks as a two-stage pipeline: an array of half of them,
    /// then an array of the rest `--after-corr` the first.
    pub pipeline: bool,
    /// Dependents parked first: one array waiting on a parked task.
    pub dependents: usize,
}

/// Master CPU (percent of one core) and heartbeats over one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Length of the phase, seconds.
    pub secs: f64,
    /// Heartbeats the master answered per second.
    pub heartbeats_per_s: f64,
    /// The master's CPU use over the phase, percent of one core (`None`
    /// without its pid).
    pub master_cpu_percent: Option<f64>,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Workers simulated.
    pub workers: usize,
    /// Registrations per second while the swarm joined.
    pub registrations_per_s: f64,
    /// The idle heartbeat phase, if any.
    pub idle: Option<Phase>,
    /// The load phase.
    pub load: Phase,
    /// Runnable tasks submitted.
    pub tasks: usize,
    /// Tasks parked.
    pub parked: usize,
    /// Whether the tasks went as one array.
    pub array: bool,
    /// Whether they went as a two-stage `after-corr` pipeline.
    pub pipeline: bool,
    /// Dependents parked.
    pub dependents: usize,
    /// Submits answered per second.
    pub submits_per_s: f64,
    /// Assignments arriving per second, first submit to last assignment.
    pub placements_per_s: f64,
    /// Reports accepted per second, first submit to last report.
    pub tasks_per_s: f64,
    /// Submit → assignment at a worker, ms: p50, p99, max.
    pub to_running_ms: [f64; 3],
    /// Submit → report accepted, ms: p50, p99, max.
    pub to_completed_ms: [f64; 3],
    /// Reported completed.
    pub completed: u64,
    /// Reported failed (the configured share).
    pub failed: u64,
    /// Reports the master refused.
    pub refused: u64,
    /// (task, attempt) pairs started twice (see
    /// [`crate::swarm::Stats::double_assignments`]).
    pub double_assignments: u64,
    /// The master's resident memory at the end, MiB.
    pub master_rss_mib: Option<f64>,
    /// Errors the swarm met.
    pub errors: Vec<String>,
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let phase = |p: &Phase| {
            json!({
                "secs": p.secs,
                "heartbeats_per_s": p.heartbeats_per_s,
                "master_cpu_percent": p.master_cpu_percent,
            })
        };
        json!({
            "workers": self.workers,
            "registrations_per_s": self.registrations_per_s,
            "idle": self.idle.as_ref().map(phase),
            "load": phase(&self.load),
            "tasks": self.tasks,
            "parked": self.parked,
            "array": self.array,
            "pipeline": self.pipeline,
            "dependents": self.dependents,
            "submits_per_s": self.submits_per_s,
            "placements_per_s": self.placements_per_s,
            "tasks_per_s": self.tasks_per_s,
            "to_running_ms": {"p50": self.to_running_ms[0], "p99": self.to_running_ms[1], "max": self.to_running_ms[2]},
            "to_completed_ms": {"p50": self.to_completed_ms[0], "p99": self.to_completed_ms[1], "max": self.to_completed_ms[2]},
            "completed": self.completed,
            "failed": self.failed,
            "refused": self.refused,
            "double_assignments": self.double_assignments,
            "master_rss_mib": self.master_rss_mib,
            "errors": self.errors,
        })
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cpu = |p: &Phase| {
            p.master_cpu_percent
                .map_or("n/a".into(), |c| format!("{c:.1}% of a core"))
        };
        writeln!(
            f,
            "workers: {} registered at {:.0}/s",
            self.workers, self.registrations_per_s
        )?;
        if let Some(idle) = &self.idle {
            writeln!(
                f,
                "idle {:.1} s: {:.0} heartbeats/s absorbed, master CPU {}",
                idle.secs,
                idle.heartbeats_per_s,
                cpu(idle)
            )?;
        }
        writeln!(
            f,
            "load: {} tasks ({} parked{}): submit {:.0}/s, placement {:.0}/s, completed {:.0} tasks/s",
            self.tasks,
            self.parked,
            if self.array { ", as one array" } else { "" },
            self.submits_per_s,
            self.placements_per_s,
            self.tasks_per_s
        )?;
        let [r50, r99, rmax] = self.to_running_ms;
        let [c50, c99, cmax] = self.to_completed_ms;
        writeln!(
            f,
            "submit->running p50 {r50:.1} ms, p99 {r99:.1} ms, max {rmax:.1} ms; submit->completed p50 {c50:.1} ms, p99 {c99:.1} ms, max {cmax:.1} ms"
        )?;
        writeln!(
            f,
            "during load: {:.0} heartbeats/s, master CPU {}, master RSS {}",
            self.load.heartbeats_per_s,
            cpu(&self.load),
            self.master_rss_mib
                .map_or("n/a".into(), |m| format!("{m:.0} MiB"))
        )?;
        writeln!(
            f,
            "reports: {} completed, {} failed, {} refused",
            self.completed, self.failed, self.refused
        )?;
        write!(f, "double assignments: {}", self.double_assignments)?;
        for e in &self.errors {
            write!(f, "\nerror: {e}")?;
        }
        Ok(())
    }
}

/// Measures a phase: heartbeats and the master's CPU ticks from its start
/// to [`PhaseClock::end`].
struct PhaseClock {
    at: Instant,
    beats: u64,
    ticks: Option<u64>,
    pid: Option<i32>,
}

impl PhaseClock {
    fn start(swarm: &Swarm, pid: Option<i32>) -> Self {
        PhaseClock {
            at: Instant::now(),
            beats: swarm.stats().heartbeats.load(Ordering::Relaxed),
            ticks: pid.and_then(host::process_cpu_ticks),
            pid,
        }
    }

    fn end(&self, swarm: &Swarm) -> Phase {
        let secs = self.at.elapsed().as_secs_f64();
        let beats = swarm.stats().heartbeats.load(Ordering::Relaxed) - self.beats;
        let ticks = self.pid.and_then(host::process_cpu_ticks);
        Phase {
            secs,
            heartbeats_per_s: beats as f64 / secs,
            // USER_HZ is 100 on Linux: a tick is 10 ms.
            master_cpu_percent: self.ticks.zip(ticks).map(|(a, b)| (b - a) as f64 / secs),
        }
    }
}

/// Runs the swarm against the master at `master` (whose pid, if given,
/// is read for CPU and memory) and returns the figures with the swarm,
/// still heartbeating, for [`check`].
pub async fn run(
    master: &str,
    security: Security,
    swarm: SwarmConfig,
    load: &LoadConfig,
    master_pid: Option<i32>,
) -> Result<(Report, Swarm), String> {
    let client = MasterClient::new(master, security.clone()).map_err(|e| e.to_string())?;
    let workers = swarm.workers;
    let joined = Instant::now();
    let swarm = Swarm::start(master, security, swarm).await?;
    let registrations_per_s = workers as f64 / joined.elapsed().as_secs_f64();
    let idle = if load.idle.is_zero() {
        None
    } else {
        // The groups' first beats are spread over one interval: measure
        // from when every worker beats.
        tokio::time::sleep(swarm.heartbeat_interval()).await;
        let clock = PhaseClock::start(&swarm, master_pid);
        tokio::time::sleep(load.idle).await;
        Some(clock.end(&swarm))
    };
    let mut spec = TaskSpec::new("busybox", vec!["true".into()], load.request);
    spec.policy.retries = load.retries;
    spec.policy.retry_delay = Duration::ZERO;
    park(&client, &spec, load.parked, load.concurrency).await?;
    park_dependents(&client, &spec, load.dependents).await?;

    let clock = PhaseClock::start(&swarm, master_pid);
    let start = Instant::now();
    let arrays = if load.pipeline {
        let first = load.tasks / 2;
        let a = submit_array(&client, &spec, first, SubmitOptions::default()).await?;
        let corr = SubmitOptions {
            after_corr: Some(a.clone()),
            ..SubmitOptions::default()
        };
        let b = submit_array(&client, &spec, load.tasks - first, corr).await?;
        vec![a, b]
    } else if load.array {
        vec![submit_array(&client, &spec, load.tasks, SubmitOptions::default()).await?]
    } else {
        Vec::new()
    };
    let mut submitted = if arrays.is_empty() {
        submit_all(&client, &spec, load.tasks, load.concurrency).await?
    } else {
        Vec::new()
    };
    let submits_per_s = load.tasks as f64 / start.elapsed().as_secs_f64();
    let stats = swarm.stats();
    // With retries a failed run is reported and run again: the master
    // says when every task ended.
    let ended = || async {
        if load.retries == 0 {
            return stats.ended();
        }
        match client.task_counts().await {
            Ok(c) if c.pending + c.running == load.parked as u64 => c.completed + c.failed,
            _ => 0,
        }
    };
    while ended().await < load.tasks as u64 {
        if start.elapsed() > load.deadline {
            return Err(format!(
                "only {} of {} tasks were reported within {:?}; {:?}",
                stats.ended(),
                load.tasks,
                load.deadline,
                stats.errors()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let phase = clock.end(&swarm);
    for id in arrays {
        // One call submitted each array: each task was sent when it began.
        let filter = TaskFilter {
            array: Some(id),
            ..TaskFilter::default()
        };
        let tasks = client.tasks(&filter).await.map_err(|e| e.to_string())?;
        submitted.extend(tasks.into_iter().map(|t| (t.id, start)));
    }

    let mut to_running = histogram();
    let mut to_completed = histogram();
    let (mut last_assigned, mut last_reported) = (start, start);
    for (id, sent) in &submitted {
        let assigned = stats
            .assigned(id)
            .ok_or(format!("task {id} was never assigned"))?;
        let reported = stats
            .reported(id)
            .ok_or(format!("task {id} was never reported"))?;
        record(&mut to_running, assigned.saturating_duration_since(*sent));
        record(&mut to_completed, reported.saturating_duration_since(*sent));
        last_assigned = last_assigned.max(assigned);
        last_reported = last_reported.max(reported);
    }
    let per_s = |until: Instant| load.tasks as f64 / (until - start).as_secs_f64();
    let report = Report {
        workers,
        registrations_per_s,
        idle,
        load: phase,
        tasks: load.tasks,
        parked: load.parked,
        array: load.array,
        pipeline: load.pipeline,
        dependents: load.dependents,
        submits_per_s,
        placements_per_s: per_s(last_assigned),
        tasks_per_s: per_s(last_reported),
        to_running_ms: quantiles(&to_running),
        to_completed_ms: quantiles(&to_completed),
        completed: stats.completed.load(Ordering::Relaxed),
        failed: stats.failed.load(Ordering::Relaxed),
        refused: stats.refused.load(Ordering::Relaxed),
        double_assignments: stats.double_assignments.load(Ordering::Relaxed),
        master_rss_mib: master_pid
            .and_then(host::process_rss_kb)
            .map(|kb| kb as f64 / 1024.0),
        errors: stats.errors(),
    };
    Ok((report, swarm))
}

/// Submits `n` copies of `spec` as one array.
async fn submit_array(
    client: &MasterClient,
    spec: &TaskSpec,
    n: usize,
    options: SubmitOptions,
) -> Result<ArrayId, String> {
    let indices: ArrayIndices = format!("1-{}", n.max(1))
        .parse()
        .map_err(|e: cloudai_core::model::ValidationError| e.to_string())?;
    let (id, _) = client
        .submit_array(spec.clone(), &indices, options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(id)
}

fn histogram() -> Histogram<u64> {
    // Microseconds, up to an hour, three significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1));
}

fn quantiles(h: &Histogram<u64>) -> [f64; 3] {
    let ms = |us: u64| us as f64 / 1000.0;
    [
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    ]
}

/// Checks the cluster after a run: every runnable task ended as its
/// worker reported it, only parked tasks still wait, the swarm runs
/// nothing, no worker holds an allocation, and a reconcile finds nothing
/// to correct.
pub async fn check(
    client: &MasterClient,
    report: &Report,
    swarm: &Swarm,
    failed_expected: Option<u64>,
) -> Result<(), String> {
    let err = |e: cloudai_core::Error| e.to_string();
    if report.refused > 0 || report.double_assignments > 0 || !report.errors.is_empty() {
        return Err(format!(
            "{} reports refused, {} double assignments; errors: {:?}",
            report.refused, report.double_assignments, report.errors
        ));
    }
    let failed_ok = failed_expected.is_none_or(|f| report.failed == f);
    if (failed_expected.is_some() && report.completed + report.failed != report.tasks as u64)
        || !failed_ok
    {
        return Err(format!(
            "{} tasks: {} reported completed and {} failed (expected {failed_expected:?} failed)",
            report.tasks, report.completed, report.failed
        ));
    }
    let completed = client
        .tasks(&TaskFilter::status([TaskStatus::Completed]))
        .await
        .map_err(err)?;
    let failed = client
        .tasks(&TaskFilter::status([TaskStatus::Failed]))
        .await
        .map_err(err)?;
    let (done, retried) = (completed.len() + failed.len(), failed_expected.is_none());
    if (retried && done != report.tasks)
        || (!retried
            && (completed.len() as u64 != report.completed || failed.len() as u64 != report.failed))
    {
        return Err(format!(
            "the master has {} completed and {} failed; the swarm reported {} and {}",
            completed.len(),
            failed.len(),
            report.completed,
            report.failed
        ));
    }
    let pending = client
        .tasks(&TaskFilter::status([
            TaskStatus::Pending,
            TaskStatus::Running,
        ]))
        .await
        .map_err(err)?;
    if let Some(t) = pending.iter().find(|t| {
        t.status != TaskStatus::Pending
            || t.spec
                .pin
                .as_ref()
                .is_none_or(|p| p.as_str() != PARKED_WORKER)
    }) {
        return Err(format!(
            "task {} is still {} and not parked",
            t.id, t.status
        ));
    }
    if pending.len() != report.parked {
        return Err(format!(
            "{} tasks wait; {} were parked",
            pending.len(),
            report.parked
        ));
    }
    if swarm.running() != 0 {
        return Err(format!("the swarm still runs {} tasks", swarm.running()));
    }
    let workers = client.workers().await.map_err(err)?;
    if let Some(w) = workers
        .iter()
        .find(|w| !w.allocated.is_zero() || !w.tasks.is_empty())
    {
        return Err(format!(
            "worker {} still holds {:?} for {:?}",
            w.id, w.allocated, w.tasks
        ));
    }
    let registered = workers
        .iter()
        .filter(|w| w.registered && w.health == Health::Active)
        .count();
    if registered != report.workers {
        return Err(format!(
            "{registered} workers active; {} were simulated",
            report.workers
        ));
    }
    let reconcile = client.reconcile().await.map_err(err)?;
    if !reconcile.corrections.is_empty() || !reconcile.overcommitted.is_empty() {
        return Err(format!("reconcile corrected something: {reconcile:?}"));
    }
    Ok(())
}
