//! Running tasks: accepting assignments, starting them on the runtime,
//! following each to its end (stopping it at its time limit), stopping
//! them, and adopting the runs a previous agent left behind.

use std::time::Duration;

use tracing::{debug, info, info_span, warn, Instrument};

use super::runs::{Admit, NewRun, StopKind};
use super::{Worker, SHUTDOWN_MESSAGE};
use crate::model::{
    ContainerOptions, EndCause, ExitStatus, Gpu, Mount, Resources, RunningTask, TaskId, TaskResult,
    TaskSpec, TaskStatus, Timestamp, ValidationError, ATTEMPT_ENV, GPUS_ENV, TASK_ID_ENV,
};
use crate::output::{OutputLog, Tail};
use crate::runtime::{
    refuse_unsupported, ContainerId, ContainerInfo, ContainerSpec, LABEL_ATTEMPT, LABEL_GRACE,
    LABEL_TASK, LABEL_TIME_LIMIT, LABEL_WORKER,
};
use crate::sync::lock;
use crate::{Error, Result};

/// How long a cancel waits, after the stop, for the run's supervisor to
/// collect its logs and remove it.
const RUN_END_WAIT: Duration = Duration::from_secs(5);

/// How a run ended, as the worker reports it.
struct End {
    status: TaskStatus,
    cause: EndCause,
    message: Option<String>,
}

impl End {
    fn failed(cause: EndCause, message: String) -> Option<End> {
        Some(End {
            status: TaskStatus::Failed,
            cause,
            message: Some(message),
        })
    }

    /// What a stop the worker asked for makes of a run's end (`None`: no
    /// report, the master already knows).
    fn of_stop(kind: StopKind, spec_limit: Option<Duration>) -> Option<End> {
        match kind {
            StopKind::Drop => None,
            StopKind::Cancel => Some(End {
                status: TaskStatus::Cancelled,
                cause: EndCause::Cancelled,
                message: Some("stopped on cancel".into()),
            }),
            StopKind::Shutdown => End::failed(EndCause::WorkerShutdown, SHUTDOWN_MESSAGE.into()),
            StopKind::Timeout => End::failed(
                EndCause::TimedOut,
                match spec_limit {
                    Some(l) => format!(
                        "timeout: ran past its time limit of {}",
                        humantime::format_duration(l)
                    ),
                    None => "timeout: ran past its time limit".into(),
                },
            ),
            StopKind::CutOff => End::failed(
                EndCause::CutOff,
                "stopped by its worker, cut off from the master for so long that the master may declare it lost".into(),
            ),
        }
    }
}

impl Worker {
    /// Accepts assignment `run` and starts it. Repeats are no-ops; a run
    /// stopped before its assignment arrived is not started. A worker cut
    /// off from its master past its fence refuses it, as one shutting
    /// down does.
    pub async fn assign(&self, run: RunningTask, mut spec: TaskSpec, gpus: Vec<u32>) -> Result<()> {
        if self.closing() {
            return Err(Error::Unavailable(format!(
                "worker {} is shutting down",
                self.id()
            )));
        }
        if self.fenced() {
            return Err(Error::Unavailable(format!(
                "worker {} has heard nothing from its master for too long to start a task",
                self.id()
            )));
        }
        spec.validate()?;
        let gpus = Gpu::pick(&self.inner.config.gpus, &gpus, spec.resources.gpus)?;
        self.resolve_mounts(&mut spec.options)?;
        refuse_unsupported(self.inner.runtime.as_ref(), &spec.options)?;
        // Not while a registration is on its way: it lists the runs as they
        // were when it left, and the master would fail this one as vanished.
        let _not_registering = self.inner.registering.read().await;
        let retain = self.inner.config.log_retain;
        let grace = spec.cancel_grace.min(self.inner.config.max_grace);
        let mut runs = lock(&self.inner.runs);
        let new = || NewRun {
            container: None,
            output: OutputLog::new(retain),
            grace,
            deadline: None,
        };
        match runs.admit(&run, self.inner.clock.now(), new) {
            Admit::Repeat => return Ok(()),
            Admit::Tombstoned => {
                info!(task = %run.task, attempt = run.attempt, "assignment arrived after its stop; not starting it");
                return Ok(());
            }
            Admit::Start => {}
        }
        // At debug: a line a task costs short tasks several per cent, and
        // "task ended" says the rest (the master's "task placed" this).
        debug!(task = %run.task, attempt = run.attempt, image = %spec.image, "task accepted");
        let w = self.clone();
        let span = info_span!("run", task = %run.task, attempt = run.attempt);
        runs.supervise(async move { w.supervise(run, spec, gpus).await }.instrument(span));
        Ok(())
    }

    /// Refuses bind mounts from outside the directories this worker
    /// allows (`--allow-mount`), judged on the paths as the file system
    /// resolves them, so a symbolic link cannot lead out of them; the
    /// mounts the run gets name those resolved paths, so a link swapped in
    /// after the check cannot either.
    fn resolve_mounts(&self, options: &mut ContainerOptions) -> Result<()> {
        if options.mounts.is_empty() {
            return Ok(());
        }
        let cfg = &self.inner.config;
        let resolved = |p: &str| std::fs::canonicalize(p).map(|p| p.to_string_lossy().into_owned());
        let allowed: Vec<String> = cfg
            .allow_mounts
            .iter()
            .filter_map(|p| resolved(p).ok())
            .collect();
        for mount in &mut options.mounts {
            let source = &mount.source;
            let refuse = |why: String| {
                Error::from(ValidationError::Invalid {
                    field: "mount",
                    reason: format!("worker {} refuses to mount {source}: {why}", cfg.id),
                })
            };
            let real = resolved(source).map_err(|e| refuse(e.to_string()))?;
            if !Mount::allowed_by(&real, &allowed) {
                return Err(refuse(format!(
                    "{real} is not under a directory it allows (--allow-mount {})",
                    cfg.allow_mounts.join(",")
                )));
            }
            mount.source = real;
        }
        Ok(())
    }

    /// Stops run `run`: SIGTERM, then SIGKILL after `grace` (capped at the
    /// configured maximum). Returns once it is stopped and its supervisor
    /// has collected its end (at most 5 s past the stop), so the run is no
    /// longer listed: then the master may run the task elsewhere. A run
    /// still here then is [`Error::Timeout`] (the master asks again). A
    /// run this worker does not have is remembered, so its assignment
    /// will not start it.
    pub async fn cancel(&self, run: &RunningTask, grace: Duration) -> Result<()> {
        self.stop_run(
            run,
            StopKind::Cancel,
            grace.min(self.inner.config.max_grace),
        )
        .await?;
        let gone = async {
            loop {
                let ended = self.inner.run_ended.notified();
                if !lock(&self.inner.runs).contains(run) {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(RUN_END_WAIT, gone).await.map_err(|_| {
            Error::Timeout(format!(
                "run {} (attempt {}) is still stopping",
                run.task, run.attempt
            ))
        })
    }

    /// Adopts the containers a previous run of this worker left behind (found
    /// by the worker label): running ones are watched again and listed at
    /// registration, where the master says which to keep and which to stop;
    /// finished or unreadable ones are removed. Call before [`Worker::run`].
    /// Returns how many runs were adopted.
    pub async fn adopt_orphans(&self) -> Result<usize> {
        let found = self
            .inner
            .runtime
            .list(LABEL_WORKER, self.id().as_str())
            .await?;
        let mut adopted = 0;
        for c in found {
            match adoptable(&c) {
                Some((run, deadline, grace)) if c.running => {
                    info!(task = %run.task, attempt = run.attempt, container = %c.id, "adopted a running container");
                    let mut runs = lock(&self.inner.runs);
                    let new = NewRun {
                        container: Some(c.id.clone()),
                        output: OutputLog::new(self.inner.config.log_retain),
                        // No longer than this worker allows now (the fence
                        // counts on it).
                        grace: grace
                            .unwrap_or(self.inner.config.max_grace)
                            .min(self.inner.config.max_grace),
                        deadline,
                    };
                    runs.insert(run.clone(), new, self.inner.clock.now());
                    let w = self.clone();
                    runs.supervise(async move { w.watch(run, c.id, None).await });
                    adopted += 1;
                }
                _ => {
                    info!(container = %c.id, "removing a leftover container");
                    let _ = self.inner.runtime.stop(&c.id, Duration::ZERO).await;
                    self.inner.runtime.remove(&c.id).await?;
                }
            }
        }
        Ok(adopted)
    }

    pub(super) async fn stop_run(
        &self,
        run: &RunningTask,
        kind: StopKind,
        grace: Duration,
    ) -> Result<()> {
        let container = lock(&self.inner.runs).stop(run, kind, grace);
        // Not started yet: the supervisor stops it as soon as it starts.
        if let Some(c) = container {
            info!(task = %run.task, attempt = run.attempt, ?kind, ?grace, "stopping task");
            self.inner.runtime.stop(&c, grace).await?;
        }
        Ok(())
    }

    async fn supervise(&self, run: RunningTask, spec: TaskSpec, gpus: Vec<Gpu>) {
        let cfg = &self.inner.config;
        let limit = spec.policy.time_limit;
        let grace = spec.cancel_grace.min(cfg.max_grace);
        let mut env = spec.env.clone();
        env.insert(TASK_ID_ENV.into(), run.task.to_string());
        env.insert(ATTEMPT_ENV.into(), run.attempt.to_string());
        let indices: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
        env.insert(GPUS_ENV.into(), indices.join(","));
        let mut labels: std::collections::BTreeMap<String, String> = [
            (LABEL_TASK.to_string(), run.task.to_string()),
            (LABEL_ATTEMPT.to_string(), run.attempt.to_string()),
            (LABEL_WORKER.to_string(), cfg.id.to_string()),
            (LABEL_GRACE.to_string(), grace.as_millis().to_string()),
        ]
        .into();
        if let Some(l) = limit {
            labels.insert(LABEL_TIME_LIMIT.into(), l.as_millis().to_string());
        }
        let cspec = ContainerSpec {
            name: format!("cloudai-{}-{}-{}", cfg.id, run.task, run.attempt),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env,
            limits: spec.resources,
            gpus,
            options: spec.options.clone(),
            labels,
            time_limit: limit,
            grace,
            lease: self.lease(),
        };
        let container = match self.inner.runtime.start(&cspec).await {
            Ok(c) => c,
            Err(e) => {
                warn!(task = %run.task, error = %e, "task could not start");
                let output = lock(&self.inner.runs).output(&run);
                if let Some(output) = output {
                    output.close();
                    self.keep_ended_output(run.clone(), output);
                }
                let slot = lock(&self.inner.runs).finish(&run);
                self.inner.run_ended.notify_waiters();
                let started_at = slot.as_ref().map(|s| s.started_at);
                let end = match slot.and_then(|s| s.stop) {
                    None => End::failed(EndCause::StartFailed, format!("could not start: {e}")),
                    // It never ran: only ends the master must hear of.
                    Some((kind @ (StopKind::Shutdown | StopKind::CutOff), _)) => {
                        End::of_stop(kind, limit)
                    }
                    Some(_) => None,
                };
                if let Some(end) = end {
                    let result = self.result(&run, end, None, Tail::default(), started_at);
                    self.deliver(run, result).await;
                }
                return;
            }
        };
        self.watch(run, container, Some((spec.resources, limit)))
            .await;
    }

    /// Follows a started container to its end, stopping it at its time
    /// limit, and reports it. `known` (its limits and time limit) is known
    /// for runs this agent started, not for adopted ones (their deadline
    /// comes from their labels).
    async fn watch(
        &self,
        run: RunningTask,
        container: ContainerId,
        known: Option<(Resources, Option<Duration>)>,
    ) {
        let limit = known.and_then(|(_, l)| l);
        let ((pending_stop, deadline), output) = {
            let mut runs = lock(&self.inner.runs);
            let now = self.inner.clock.now();
            (
                runs.started(&run, container.clone(), now, limit),
                runs.output(&run),
            )
        };
        let output = output.unwrap_or_else(|| OutputLog::new(self.inner.config.log_retain));
        let pump = self.pump_output(&run, &container, &output).await;
        if let Some((_, grace)) = pending_stop {
            let _ = self.inner.runtime.stop(&container, grace).await;
        }
        let exit = {
            let wait = self.inner.runtime.wait(&container);
            tokio::pin!(wait);
            match deadline {
                None => wait.await,
                Some(at) => {
                    tokio::select! {
                        exit = &mut wait => exit,
                        () = tokio::time::sleep_until(self.inner.clock.instant_at(at)) => {
                            self.time_out(&run, &container).await;
                            wait.await
                        }
                    }
                }
            }
        };
        let ended_at = self.inner.clock.now();
        self.end_output(pump, &output).await;
        let tail = output.tail(self.inner.config.result_log_limit);
        if let Err(e) = self.inner.runtime.remove(&container).await {
            warn!(task = %run.task, error = %e, "could not remove container");
        }
        // Kept before the slot goes, so a follower finds one or the other.
        self.keep_ended_output(run.clone(), output);
        let slot = lock(&self.inner.runs).finish(&run);
        self.inner.run_ended.notify_waiters();
        let (stop, started_at) = (
            slot.as_ref().and_then(|s| s.stop),
            slot.map(|s| s.started_at),
        );
        // A run found ended past its deadline ran out of time, whoever
        // stopped it (its supervisor, while this worker was away). The
        // supervisor stops it on its own monotonic clock, at the limit to
        // the millisecond; this worker's timestamps are whole milliseconds
        // of another clock: a stop at the limit can read a little early.
        let timed_out = deadline.is_some_and(|at| ended_at.saturating_add(CLOCK_SLACK) >= at);
        // One that ended past the fence was stopped for the loss (by its
        // supervisor, whose lease ran out with the fence).
        let stop = match stop {
            None if timed_out => Some((StopKind::Timeout, Duration::ZERO)),
            None if self.fenced() => Some((StopKind::CutOff, Duration::ZERO)),
            other => other,
        };
        let end = match (stop, &exit) {
            (Some((kind, _)), _) => End::of_stop(kind, limit),
            (None, Ok(e)) => Some(end_of_exit(e, known.map(|(r, _)| r))),
            (None, Err(e)) => End::failed(
                EndCause::WorkerRestarted,
                format!("lost track of the container: {e}"),
            ),
        };
        let Some(end) = end else { return };
        let result = self.result(&run, end, exit.ok(), tail, started_at);
        info!(task = %run.task, attempt = run.attempt, status = %result.status, cause = %result.cause, code = ?result.exit_code, signal = ?result.signal, "task ended");
        self.deliver(run, result).await;
    }

    /// The run's time limit ran out: it is stopped with its grace and will
    /// be reported as timed out (a timeout beats an exit during the grace,
    /// as a cancel does).
    async fn time_out(&self, run: &RunningTask, container: &ContainerId) {
        let grace = {
            let mut runs = lock(&self.inner.runs);
            let grace = runs.grace(run);
            runs.stop(run, StopKind::Timeout, grace);
            grace
        };
        info!(task = %run.task, attempt = run.attempt, ?grace, "time limit reached; stopping the task");
        if let Err(e) = self.inner.runtime.stop(container, grace).await {
            warn!(task = %run.task, error = %e, "could not stop a task past its time limit");
        }
    }

    fn result(
        &self,
        run: &RunningTask,
        end: End,
        exit: Option<ExitStatus>,
        logs: Tail,
        started_at: Option<Timestamp>,
    ) -> TaskResult {
        let finished_at = self.inner.clock.now();
        // The runtime measures what the run used; its wall time is the
        // worker's view of its start and end.
        let usage = exit.and_then(|e| e.usage).map(|mut u| {
            u.wall_ms =
                started_at.map_or(0, |s| finished_at.saturating_since(s).as_millis() as u64);
            u
        });
        TaskResult {
            task_id: run.task.clone(),
            worker_id: self.inner.config.id.clone(),
            attempt: run.attempt,
            status: end.status,
            cause: end.cause,
            exit_code: exit.and_then(|e| e.code),
            signal: exit.and_then(|e| e.signal),
            logs: logs.text,
            logs_offset: logs.offset,
            message: end.message,
            started_at,
            finished_at,
            usage,
        }
    }
}

/// How far apart this worker's clock and a supervisor's may read the same
/// moment (both count whole milliseconds, on different clocks).
const CLOCK_SLACK: Duration = Duration::from_millis(50);

/// The run an adopted container is, with its deadline (its start and
/// time limit) and grace.
fn adoptable(c: &ContainerInfo) -> Option<(RunningTask, Option<Timestamp>, Option<Duration>)> {
    let run = RunningTask {
        task: TaskId::new(c.labels.get(LABEL_TASK)?.as_str()).ok()?,
        attempt: c.labels.get(LABEL_ATTEMPT)?.parse().ok()?,
    };
    let ms = |key| c.labels.get(key).and_then(|v| v.parse::<u64>().ok());
    let deadline = c
        .started_at
        .zip(ms(LABEL_TIME_LIMIT))
        .map(|(at, limit)| at.saturating_add(Duration::from_millis(limit)));
    Some((run, deadline, ms(LABEL_GRACE).map(Duration::from_millis)))
}

/// How a run that exited on its own ended.
fn end_of_exit(e: &ExitStatus, limits: Option<Resources>) -> End {
    if e.success() {
        return End {
            status: TaskStatus::Completed,
            cause: EndCause::Completed,
            message: None,
        };
    }
    let (cause, message) = if e.oom_killed {
        let message = match limits {
            Some(l) => format!("killed: exceeded its memory limit of {} GB", l.memory_gb()),
            None => "killed: exceeded its memory limit".to_string(),
        };
        (EndCause::OutOfMemory, message)
    } else if let Some(sig) = e.signal {
        (EndCause::Signalled, format!("killed by signal {sig}"))
    } else {
        (
            EndCause::Exited,
            format!("exited with code {}", e.code.unwrap_or(-1)),
        )
    };
    End {
        status: TaskStatus::Failed,
        cause,
        message: Some(message),
    }
}
