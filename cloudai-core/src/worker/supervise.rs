//! Running tasks: accepting assignments, starting them on the runtime,
//! following each to its end, stopping them, and adopting the runs a
//! previous agent left behind.

use std::time::Duration;

use tracing::{info, info_span, warn, Instrument};

use super::runs::{Admit, StopKind};
use super::Worker;
use crate::model::{
    ExitStatus, Resources, RunningTask, TaskId, TaskResult, TaskSpec, TaskStatus, Timestamp,
};
use crate::output::{OutputLog, Tail};
use crate::runtime::{ContainerId, ContainerSpec, LABEL_ATTEMPT, LABEL_TASK, LABEL_WORKER};
use crate::sync::lock;
use crate::{Error, Result};

/// How long a cancel waits, after the stop, for the run's supervisor to
/// collect its logs and remove it.
const RUN_END_WAIT: Duration = Duration::from_secs(5);

impl Worker {
    /// Accepts assignment `run` and starts it. Repeats are no-ops; a run
    /// stopped before its assignment arrived is not started.
    pub async fn assign(&self, run: RunningTask, spec: TaskSpec) -> Result<()> {
        if self.closing() {
            return Err(Error::Unavailable(format!(
                "worker {} is shutting down",
                self.id()
            )));
        }
        spec.validate()?;
        // Not while a registration is on its way: it lists the runs as they
        // were when it left, and the master would fail this one as vanished.
        let _not_registering = self.inner.registering.read().await;
        let retain = self.inner.config.log_retain;
        let mut runs = lock(&self.inner.runs);
        match runs.admit(&run, self.inner.clock.now(), || OutputLog::new(retain)) {
            Admit::Repeat => return Ok(()),
            Admit::Tombstoned => {
                info!(task = %run.task, attempt = run.attempt, "assignment arrived after its stop; not starting it");
                return Ok(());
            }
            Admit::Start => {}
        }
        info!(task = %run.task, attempt = run.attempt, image = %spec.image, "task accepted");
        let w = self.clone();
        let span = info_span!("run", task = %run.task, attempt = run.attempt);
        runs.supervise(async move { w.supervise(run, spec).await }.instrument(span));
        Ok(())
    }

    /// Stops run `run`: SIGTERM, then SIGKILL after `grace` (capped at the
    /// configured maximum). Returns once it is stopped and its supervisor
    /// has collected its end (at most 5 s past the stop),
    /// so the run is no longer listed. A run this worker does not have is
    /// remembered, so its assignment will not start it.
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
        let _ = tokio::time::timeout(RUN_END_WAIT, gone).await;
        Ok(())
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
            let run = c
                .labels
                .get(LABEL_TASK)
                .zip(c.labels.get(LABEL_ATTEMPT))
                .and_then(|(t, a)| {
                    Some(RunningTask {
                        task: TaskId::new(t.as_str()).ok()?,
                        attempt: a.parse().ok()?,
                    })
                });
            match run {
                Some(run) if c.running => {
                    info!(task = %run.task, attempt = run.attempt, container = %c.id, "adopted a running container");
                    let mut runs = lock(&self.inner.runs);
                    let output = OutputLog::new(self.inner.config.log_retain);
                    runs.insert(
                        run.clone(),
                        Some(c.id.clone()),
                        output,
                        self.inner.clock.now(),
                    );
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

    async fn supervise(&self, run: RunningTask, spec: TaskSpec) {
        let cfg = &self.inner.config;
        let cspec = ContainerSpec {
            name: format!("cloudai-{}-{}-{}", cfg.id, run.task, run.attempt),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            limits: spec.resources,
            labels: [
                (LABEL_TASK.to_string(), run.task.to_string()),
                (LABEL_ATTEMPT.to_string(), run.attempt.to_string()),
                (LABEL_WORKER.to_string(), cfg.id.to_string()),
            ]
            .into(),
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
                if slot.as_ref().and_then(|s| s.stop).is_none() {
                    let result = self.result(
                        &run,
                        TaskStatus::Failed,
                        None,
                        Tail::default(),
                        Some(format!("could not start: {e}")),
                        slot.map(|s| s.started_at),
                    );
                    self.deliver(run, result).await;
                }
                return;
            }
        };
        self.watch(run, container, Some(spec.resources)).await;
    }

    /// Follows a started container to its end and reports it. `limits` is
    /// known for runs this agent started, not for adopted ones.
    async fn watch(&self, run: RunningTask, container: ContainerId, limits: Option<Resources>) {
        let (pending_stop, output) = {
            let mut runs = lock(&self.inner.runs);
            (runs.started(&run, container.clone()), runs.output(&run))
        };
        let output = output.unwrap_or_else(|| OutputLog::new(self.inner.config.log_retain));
        let pump = self.pump_output(&run, &container, &output).await;
        if let Some((_, grace)) = pending_stop {
            let _ = self.inner.runtime.stop(&container, grace).await;
        }
        let exit = self.inner.runtime.wait(&container).await;
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
        let (status, message) = match (stop, &exit) {
            (Some((StopKind::Shutdown | StopKind::Drop, _)), _) => return,
            (Some((StopKind::Cancel, _)), _) => {
                (TaskStatus::Cancelled, Some("stopped on cancel".to_string()))
            }
            (None, Ok(e)) if e.success() => (TaskStatus::Completed, None),
            (None, Ok(e)) => (TaskStatus::Failed, Some(describe_exit(e, limits))),
            (None, Err(e)) => (
                TaskStatus::Failed,
                Some(format!("lost track of the container: {e}")),
            ),
        };
        let exit = exit.ok();
        let result = self.result(&run, status, exit, tail, message, started_at);
        info!(task = %run.task, attempt = run.attempt, %status, code = ?result.exit_code, signal = ?result.signal, "task ended");
        self.deliver(run, result).await;
    }

    pub(super) fn result(
        &self,
        run: &RunningTask,
        status: TaskStatus,
        exit: Option<ExitStatus>,
        logs: Tail,
        message: Option<String>,
        started_at: Option<Timestamp>,
    ) -> TaskResult {
        TaskResult {
            task_id: run.task.clone(),
            worker_id: self.inner.config.id.clone(),
            attempt: run.attempt,
            status,
            exit_code: exit.and_then(|e| e.code),
            signal: exit.and_then(|e| e.signal),
            logs: logs.text,
            logs_offset: logs.offset,
            message,
            started_at,
            finished_at: self.inner.clock.now(),
        }
    }
}

fn describe_exit(e: &ExitStatus, limits: Option<Resources>) -> String {
    if e.oom_killed {
        match limits {
            Some(l) => format!("killed: exceeded its memory limit of {} GB", l.memory_gb()),
            None => "killed: exceeded its memory limit".to_string(),
        }
    } else if let Some(sig) = e.signal {
        format!("killed by signal {sig}")
    } else {
        format!("exited with code {}", e.code.unwrap_or(-1))
    }
}
