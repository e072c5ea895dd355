//! The transition an event makes of a task, built from the record it is
//! decided on: the guarded write and its effects, and the retry decision
//! where an attempt ends.

use std::time::Duration;

use super::FROM_PENDING;
use super::{phase, Assignment, Effect, Phase, StatusChange, TaskEvent, Transition, WorkerGuard};
use crate::attempts::{self, Next};
use crate::model::{Attempt, EndCause, Resources, TaskRecord, TaskStatus, Timestamp, WorkerId};
use crate::rng::SplitMix64;

pub(super) fn assign_change(worker: &WorkerId, gpus: &[u32], now: Timestamp) -> StatusChange {
    StatusChange {
        allowed_from: FROM_PENDING.to_vec(),
        expected_worker: WorkerGuard::Unassigned,
        expected_attempt: None,
        to: TaskStatus::Running,
        assignment: Assignment::Set(worker.clone(), gpus.to_vec()),
        reason: None,
        not_before: None,
        push: None,
        at: now,
    }
}

/// A transition in the making, from the record it is decided on.
pub(super) struct Plan<'a> {
    pub(super) task: &'a TaskRecord,
    pub(super) now: Timestamp,
}

impl Plan<'_> {
    /// A change guarded by the record as it is now.
    fn change(
        &self,
        to: TaskStatus,
        assignment: Assignment,
        reason: Option<String>,
    ) -> StatusChange {
        StatusChange {
            allowed_from: vec![self.task.status],
            expected_worker: WorkerGuard::exactly(self.task.worker.as_ref()),
            expected_attempt: Some(self.task.attempt),
            to,
            assignment,
            reason,
            not_before: None,
            push: None,
            at: self.now,
        }
    }

    fn done(&self, change: StatusChange, effects: Vec<Effect>) -> Transition {
        Transition {
            from: self.task.status,
            to: change.to,
            change,
            effects,
        }
    }

    /// Called only once `refusal` found nothing: the phase fits the event.
    pub(super) fn transition(&self, event: &TaskEvent) -> Transition {
        let t = self.task;
        let (w, a) = match phase(t) {
            Phase::Running(w, a) | Phase::Ending(w, a) => (Some(w), a),
            Phase::Queued | Phase::Final(_) => (None, t.attempt),
        };
        let running = t.status == TaskStatus::Running;
        match (event, w) {
            (TaskEvent::Assign { worker, gpus }, _) => {
                let mut change = assign_change(worker, gpus, self.now);
                change.expected_attempt = Some(t.attempt);
                let effects = assigned(worker, t.spec.resources, gpus, t.attempt + 1);
                self.done(change, effects)
            }
            (TaskEvent::Cancel { force }, w) => {
                let reason = if *force {
                    "force-cancelled by user"
                } else {
                    "cancelled by user"
                };
                let grace = if *force {
                    Duration::ZERO
                } else {
                    t.spec.cancel_grace
                };
                let mut change =
                    self.change(TaskStatus::Cancelled, Assignment::Keep, Some(reason.into()));
                let mut effects = Vec::new();
                if let Some(w) = w {
                    if running {
                        let entry = Attempt::ended(
                            a,
                            w.clone(),
                            EndCause::Cancelled,
                            self.now,
                            Some(reason.into()),
                        );
                        change.push = Some(Box::new(entry));
                    }
                    effects.push(stop(w, a, grace));
                }
                self.done(change, effects)
            }
            (TaskEvent::Unmet { reason }, _) => {
                let change = self.change(
                    TaskStatus::Cancelled,
                    Assignment::Keep,
                    Some(reason.clone()),
                );
                self.done(change, Vec::new())
            }
            (_, None) => unreachable!("a run event passed the refusal check of a queued task"),
            (TaskEvent::Report(r), Some(w)) if running => {
                self.ended_run(w, a, r.cause, r.message.clone(), (**r).clone())
            }
            (TaskEvent::WorkerLost { worker }, Some(w)) if running => {
                let what = format!("worker lost: {worker} stopped sending heartbeats");
                self.ended_without_report(w, a, EndCause::WorkerLost, what)
            }
            (TaskEvent::Vanished { worker, .. }, Some(w)) if running => {
                let what =
                    format!("worker {worker} re-registered without this task (it restarted)");
                self.ended_without_report(w, a, EndCause::WorkerRestarted, what)
            }
            (
                TaskEvent::Report(_)
                | TaskEvent::WorkerLost { .. }
                | TaskEvent::Vanished { .. }
                | TaskEvent::StopConfirmed { .. },
                Some(w),
            ) => self.ending_ended(w, a),
            (TaskEvent::Requeue { reason, .. }, Some(w)) => {
                let change = self.change(
                    TaskStatus::Pending,
                    Assignment::Keep,
                    Some(format!("requeued: {reason}")),
                );
                self.done(change, vec![stop(w, a, Duration::ZERO)])
            }
            (TaskEvent::Drained { worker, .. }, Some(w)) => self.stopped_run(
                w,
                a,
                EndCause::Drained,
                format!("drained: the drain deadline of worker {worker} passed"),
                t.spec.cancel_grace,
            ),
            (TaskEvent::TimedOut { worker, .. }, Some(w)) => self.stopped_run(
                w,
                a,
                EndCause::TimedOut,
                format!(
                    "timeout: no end heard from worker {worker} within its time limit of {}",
                    humantime::format_duration(t.spec.policy.time_limit.unwrap_or_default())
                ),
                Duration::ZERO,
            ),
        }
    }

    /// The retry decision for the current run, which ended with `cause`.
    fn next(&self, cause: EndCause, what: Option<&str>) -> Next {
        attempts::next(
            &self.task.spec.policy,
            self.task.counts(),
            cause,
            what,
            jitter(self.task),
        )
    }

    fn ended_without_report(
        &self,
        w: &WorkerId,
        a: u32,
        cause: EndCause,
        what: String,
    ) -> Transition {
        let entry = Attempt::ended(a, w.clone(), cause, self.now, Some(what.clone()));
        self.ended_run(w, a, cause, Some(what), entry)
    }

    /// The current run is known to have ended: its resources go back,
    /// and it runs again or ends here.
    fn ended_run(
        &self,
        w: &WorkerId,
        a: u32,
        cause: EndCause,
        what: Option<String>,
        entry: Attempt,
    ) -> Transition {
        let change = match self.next(cause, what.as_deref()) {
            Next::Final { status, reason } => {
                let mut c = self.change(status, Assignment::Keep, reason);
                c.push = Some(Box::new(entry.without_logs()));
                c
            }
            Next::Again { delay, reason } => {
                let mut c = self.change(TaskStatus::Pending, Assignment::Clear, Some(reason));
                c.not_before = self.not_before(delay);
                c.push = Some(Box::new(entry));
                c
            }
        };
        self.done(change, vec![release(w, a)])
    }

    /// The master ends the current run itself (a drain, a timeout): a stop
    /// is owed, and until it lands the task is final or ending, its
    /// resources held.
    fn stopped_run(
        &self,
        w: &WorkerId,
        a: u32,
        cause: EndCause,
        what: String,
        grace: Duration,
    ) -> Transition {
        let entry = Attempt::ended(a, w.clone(), cause, self.now, Some(what.clone()));
        let mut change = match self.next(cause, Some(&what)) {
            Next::Final { status, reason } => self.change(status, Assignment::Keep, reason),
            Next::Again { delay, reason } => {
                let mut c = self.change(TaskStatus::Pending, Assignment::Keep, Some(reason));
                c.not_before = self.not_before(delay);
                c
            }
        };
        change.push = Some(Box::new(entry));
        self.done(change, vec![stop(w, a, grace)])
    }

    /// The ending attempt is known to have ended: its resources go back,
    /// and the task joins the queue.
    fn ending_ended(&self, w: &WorkerId, a: u32) -> Transition {
        let t = self.task;
        let mut change = self.change(TaskStatus::Pending, Assignment::Clear, t.reason.clone());
        change.not_before = t.not_before;
        self.done(change, vec![release(w, a)])
    }

    fn not_before(&self, delay: Duration) -> Option<Timestamp> {
        (!delay.is_zero()).then(|| self.now.saturating_add(delay))
    }
}

/// The effects of an assignment that is stored: `task` as it is after
/// it (an assignment whose write was uncertain, found to have landed, has
/// exactly these).
pub fn assignment_effects(task: &TaskRecord) -> Vec<Effect> {
    match &task.worker {
        Some(w) if task.status == TaskStatus::Running => {
            assigned(w, task.spec.resources, &task.gpus, task.attempt)
        }
        _ => Vec::new(),
    }
}

fn assigned(worker: &WorkerId, resources: Resources, gpus: &[u32], attempt: u32) -> Vec<Effect> {
    vec![
        Effect::Reserve {
            worker: worker.clone(),
            resources,
            gpus: gpus.to_vec(),
            attempt,
        },
        Effect::SendAssignment {
            worker: worker.clone(),
        },
    ]
}

fn stop(worker: &WorkerId, attempt: u32, grace: Duration) -> Effect {
    Effect::StopOnWorker {
        worker: worker.clone(),
        attempt,
        grace,
    }
}

fn release(worker: &WorkerId, attempt: u32) -> Effect {
    Effect::Release {
        worker: worker.clone(),
        attempt,
    }
}

/// A task's retry jitter in `[0, 1)`, fixed by its id and attempt, so the
/// decision stays a function of the record.
fn jitter(task: &TaskRecord) -> f64 {
    let seed = task
        .id
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    SplitMix64::new(seed ^ u64::from(task.attempt)).next_f64()
}
