//! Applying lifecycle events, and carrying out every effect they return.
//!
//! [`Master::execute`] is the one place effects happen: an exhaustive
//! `match` over [`Effect`], so a new effect is a compile error until it is
//! handled. Effects that need I/O (an assignment to send, a stop to
//! deliver, a placement pass) are recorded as owed in the state; the driver
//! performs them.

use tracing::{debug, info, info_span, warn, Instrument};

use super::state::BackstopSlack;
use super::{Master, MasterEvent};
use crate::apply::{apply_event, record_report, Applied};
use crate::ledger::Reconciliation;
use crate::lifecycle::{Effect, TaskEvent, Transition};
use crate::model::{
    Attempt, EndCause, EndKind, RunningTask, TaskId, TaskRecord, TaskResult, TaskStatus, Term,
    WorkerId,
};
use crate::store::TaskFilter;
use crate::{Error, Result};

impl Master {
    /// Applies an event with one compare-and-set and executes its effects.
    pub(super) async fn apply(&self, id: &TaskId, event: TaskEvent) -> Result<Applied> {
        let applied = apply_event(self.inner.store.as_ref(), id, &event, self.now()).await?;
        match &applied {
            Applied::Changed { task, transition } => self.carry_out(task, transition),
            // Final by a write this master did not see as its own (one
            // whose answer was lost): its dependents and its array's
            // throttle still learn of its end.
            Applied::Refused {
                task: Some(task), ..
            } if task.status.is_terminal() => {
                let now = self.now();
                let mut st = self.state();
                st.gate_final(task, now);
                self.done(st);
            }
            Applied::Refused { .. } => {}
        }
        Ok(applied)
    }

    /// Executes a stored transition's effects and counts the attempt it
    /// ended, if any.
    fn carry_out(&self, task: &TaskRecord, transition: &Transition) {
        self.execute(task, transition.from, &transition.effects);
        if let Some(ended) = &transition.change.push {
            self.attempt_ended(task, ended);
        }
    }

    /// An attempt of `task` ended (its history has it now): counted by
    /// cause and what follows, and, when the task runs again, an event.
    fn attempt_ended(&self, task: &TaskRecord, ended: &Attempt) {
        let next = match (task.status, ended.cause.kind()) {
            (TaskStatus::Pending, EndKind::Task | EndKind::Timeout) => "retry",
            (TaskStatus::Pending, _) => "requeue",
            _ => "final",
        };
        self.inner.metrics.attempt_ended(ended.cause, next);
        if task.status == TaskStatus::Pending {
            info!(task = %task.id, attempt = ended.attempt, cause = %ended.cause, not_before = ?task.not_before, "the task runs again");
            self.emit(MasterEvent::Again {
                id: task.id.clone(),
                attempt: ended.attempt,
                cause: ended.cause,
                not_before: task.not_before,
            });
        }
    }

    /// Carries out the effects of a stored change of `task` from `from`.
    pub(super) fn execute(&self, task: &TaskRecord, from: TaskStatus, effects: &[Effect]) {
        let first_placement = task.status == TaskStatus::Running && task.attempt == 1;
        let waited = first_placement.then(|| self.now().saturating_since(task.created_at));
        self.inner.metrics.transition(task.status, waited);
        self.emit(MasterEvent::Task {
            id: task.id.clone(),
            from,
            to: task.status,
            worker: task.worker.clone(),
            attempt: task.attempt,
        });
        let now = self.now();
        let slack = self.backstop_slack();
        let mut st = self.state();
        st.track_queue(task, from, now);
        for effect in effects {
            match effect {
                Effect::Reserve {
                    worker,
                    resources,
                    gpus,
                    attempt,
                } => {
                    if let Err(e) = st.hold(&task.id, worker, *resources, gpus, *attempt) {
                        // Only an uncertain write can get here; reconcile
                        // reports the worker as overcommitted.
                        warn!(task = %task.id, error = %e, "assigned task does not fit its worker's ledger");
                    }
                    st.set_backstop(task, slack);
                }
                Effect::Release { worker, attempt } => {
                    st.release_run(&task.id, worker, *attempt);
                }
                Effect::SendAssignment { worker } => st.owe_send(task.clone(), worker.clone()),
                Effect::StopOnWorker {
                    worker,
                    attempt,
                    grace,
                } => {
                    let run = RunningTask {
                        task: task.id.clone(),
                        attempt: *attempt,
                    };
                    st.clear_backstop(&task.id);
                    st.owe_stop(worker.clone(), run, *grace, now);
                }
            }
        }
        self.done(st);
    }

    /// Takes a worker's report: the transition (a cancel that came first
    /// wins) and the result (the first one wins), through
    /// [`record_report`]. A report the task's record refuses (another
    /// worker's, an earlier attempt's, an unknown or already-final task's)
    /// is answered with [`Error::Conflict`] and its reason, so the worker
    /// can tell it from success; a failed store write is answered with the
    /// store's error, so the worker retries.
    pub async fn report(&self, result: TaskResult) -> Result<()> {
        let span = info_span!("report", task = %result.task_id, worker = %result.worker_id, attempt = result.attempt);
        self.take_report(result).instrument(span).await
    }

    async fn take_report(&self, result: TaskResult) -> Result<()> {
        let result = self.across_takeover(result).await;
        let (task, worker) = (result.task_id.clone(), result.worker_id.clone());
        let (result_attempt, usage) = (result.attempt, result.usage);
        let outcome = record_report(self.inner.store.as_ref(), result, self.now()).await?;
        // The transition's effects (the release) run even when the result
        // write failed, so a failed write cannot strand the allocation.
        let (finished, refusal) = match outcome.status {
            Applied::Changed {
                task: t,
                transition,
            } => {
                self.carry_out(&t, &transition);
                if let Some(u) = &usage {
                    self.inner.metrics.used(&t.spec.resources, u);
                }
                (Some(transition.to), None)
            }
            Applied::Refused {
                refusal,
                task: Some(t),
            } => {
                // Refused (a cancel or the master's own stop came first),
                // the report still says the run is over.
                self.run_ended(&t.id, &worker, result_attempt);
                (None, Some(refusal))
            }
            Applied::Refused { refusal, .. } => (None, Some(refusal)),
        };
        {
            // One line a finished task, its result's fate in it: a short
            // task's log lines cost the master more than its transition.
            let _result = info_span!("result").entered();
            if let Some(status) = finished {
                let result = match &outcome.result {
                    Ok(Ok(())) => "stored".to_owned(),
                    Ok(Err(why)) => format!("not stored: {why}"),
                    Err(e) => format!("not stored: {e}"),
                };
                info!(task = %task, worker = %worker, %status, %result, "task finished");
            } else if let Ok(Err(why)) = &outcome.result {
                debug!(%why, "result not stored");
            }
        }
        // A failed write is the worker's to retry; an ignored result is
        // no error of the report's.
        let _ignored = outcome.result?;
        match refusal {
            None => Ok(()),
            Some(refusal) => {
                info!(task = %task, worker = %worker, %refusal, "report refused");
                Err(Error::Conflict(format!(
                    "report about task {task} refused: {refusal}"
                )))
            }
        }
    }

    /// A run its worker cut off (no master answered for too long) that
    /// was placed before this master's stretch of leading began: the
    /// takeover kept the masters silent, not the worker, so it ends as
    /// [`EndCause::Takeover`] and is requeued at no cost to the crash
    /// budget. (A master without a lease has no takeovers.)
    async fn across_takeover(&self, mut result: TaskResult) -> TaskResult {
        if result.cause != EndCause::CutOff || self.term() == Term::ZERO {
            return result;
        }
        let since = self.inner.tenure.since();
        if let Ok(Some(t)) = self.inner.store.get_task(&result.task_id).await {
            if t.attempt == result.attempt && t.assigned_at.is_some_and(|at| at < since) {
                result.cause = EndCause::Takeover;
            }
        }
        result
    }

    /// Attempt `attempt` of `task` on `worker` is known to have ended
    /// outside any transition (the task is final already, its stop was
    /// owed): its resources go back. A stop still owed goes out all the
    /// same (harmless: the worker has no such run), and confirms.
    pub(super) fn run_ended(&self, task: &TaskId, worker: &WorkerId, attempt: u32) {
        let mut st = self.state();
        st.release_run(task, worker, attempt);
        self.done(st);
    }

    /// How long after a run's time limit and grace the master stops it
    /// itself, when no end was heard: a heartbeat timeout (the worker, or
    /// the run's own supervisor, acts first).
    pub(super) fn backstop_slack(&self) -> BackstopSlack {
        BackstopSlack(self.inner.config.liveness.timeout)
    }

    /// Recomputes every allocation from the tasks the store says are running
    /// (the operator's `fix-resources`) and returns the corrections made.
    pub async fn reconcile(&self) -> Result<Reconciliation> {
        for _ in 0..16 {
            let epoch = self.state().epoch();
            let running = self
                .inner
                .store
                .list_tasks(&TaskFilter::status([TaskStatus::Running]))
                .await?;
            let mut st = self.state();
            if let Some(report) = st.reconcile(epoch, running, self.backstop_slack()) {
                self.done(st);
                return Ok(report);
            }
        }
        Err(Error::Unavailable(
            "tasks kept changing during reconciliation; try again".into(),
        ))
    }
}
