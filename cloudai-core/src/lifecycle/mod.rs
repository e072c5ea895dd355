//! The task lifecycle: `pending → running → {completed, failed, cancelled}`.
//!
//! One pure function, [`decide`], holds every rule. It is used twice: to
//! compute the compare-and-set a store must perform ([`TaskEvent::change`]),
//! and to explain or apply the outcome against the record the store returns.
//! Because the store's write is conditional on the same guard, precedence
//! holds even with several writers: once `cancelled` is written, no report
//! can match `running` again.

use std::fmt;
use std::time::Duration;

use crate::model::{Resources, TaskRecord, TaskStatus, Timestamp, WorkerId};
mod change;

pub use change::{Assignment, StatusChange};

/// Statuses from which a task may be assigned.
const FROM_PENDING: &[TaskStatus] = &[TaskStatus::Pending];
/// Statuses from which a worker report, requeue or loss applies.
const FROM_RUNNING: &[TaskStatus] = &[TaskStatus::Running];
/// Statuses from which a user may cancel.
const CANCELLABLE: &[TaskStatus] = &[TaskStatus::Pending, TaskStatus::Running];

/// How a worker says a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Exit code 0.
    Completed,
    /// Non-zero exit, start failure, or the worker shut down under it.
    Failed,
    /// The worker stopped it (after a cancel, or on its operator's request).
    Cancelled,
}

impl From<Reported> for TaskStatus {
    fn from(r: Reported) -> TaskStatus {
        match r {
            Reported::Completed => TaskStatus::Completed,
            Reported::Failed => TaskStatus::Failed,
            Reported::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// Something that happens to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The master places a pending task on a worker.
    Assign {
        /// Where it goes.
        worker: WorkerId,
    },
    /// The assignment could not be delivered; the task goes back to the queue.
    Requeue {
        /// The worker it was assigned to.
        worker: WorkerId,
        /// The assignment that failed.
        attempt: u32,
        /// Why delivery failed.
        reason: String,
    },
    /// A worker reports that the task ended.
    Report {
        /// Who reports.
        worker: WorkerId,
        /// Which assignment the report is about.
        attempt: u32,
        /// How it ended.
        outcome: Reported,
        /// The worker's explanation, if any.
        message: Option<String>,
    },
    /// A user cancels the task.
    Cancel {
        /// Skip the grace period: SIGKILL at once.
        force: bool,
    },
    /// The task's worker was declared lost.
    WorkerLost {
        /// The lost worker.
        worker: WorkerId,
    },
    /// The drain deadline of the task's worker passed with the task still
    /// running: it is stopped (with its grace) and failed as drained.
    Drained {
        /// The drained worker.
        worker: WorkerId,
        /// The assignment to stop.
        attempt: u32,
    },
}

/// A side effect the caller must carry out after the transition is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Reserve the task's resources on the worker.
    Reserve {
        /// The worker.
        worker: WorkerId,
        /// The task's request.
        resources: Resources,
    },
    /// Give the task's resources back to the worker.
    Release {
        /// The worker.
        worker: WorkerId,
        /// The task's request.
        resources: Resources,
    },
    /// Send the assignment to the worker.
    SendAssignment {
        /// The worker.
        worker: WorkerId,
    },
    /// Tell the worker to stop the task (now, or when it is reachable again).
    StopOnWorker {
        /// The worker.
        worker: WorkerId,
        /// The assignment to stop.
        attempt: u32,
        /// SIGTERM→SIGKILL grace; zero for a force stop.
        grace: Duration,
    },
}

/// A transition that applies, with the effects it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transition {
    /// Status before.
    pub from: TaskStatus,
    /// Status after.
    pub to: TaskStatus,
    /// What the caller must do once the new status is stored.
    pub effects: Vec<Effect>,
}

/// Why an event does not apply. For reports this is a logged no-op; for a
/// user's request (cancel, assign) it becomes an error to the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such task.
    UnknownTask,
    /// The task already reached this final status.
    AlreadyFinal(TaskStatus),
    /// The event needs a running task; this one is still pending.
    NotRunning,
    /// The task is already assigned to this worker.
    AlreadyAssigned(WorkerId),
    /// The event names a worker the task is not assigned to.
    OtherWorker {
        /// The worker the task is assigned to, if any.
        assigned: Option<WorkerId>,
        /// The worker the event named.
        claimed: WorkerId,
    },
    /// The event is about an earlier assignment of the task.
    StaleAttempt {
        /// The task's current attempt.
        current: u32,
        /// The attempt the event named.
        claimed: u32,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownTask => f.write_str("unknown task"),
            Refusal::AlreadyFinal(s) => write!(f, "task already {s}"),
            Refusal::NotRunning => f.write_str("task is not running"),
            Refusal::AlreadyAssigned(w) => write!(f, "task already assigned to {w}"),
            Refusal::OtherWorker {
                assigned: Some(a),
                claimed,
            } => {
                write!(f, "task is assigned to {a}, not {claimed}")
            }
            Refusal::OtherWorker {
                assigned: None,
                claimed,
            } => {
                write!(f, "task is not assigned to {claimed}")
            }
            Refusal::StaleAttempt { current, claimed } => {
                write!(
                    f,
                    "event concerns attempt {claimed}, the task is on attempt {current}"
                )
            }
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// The event applies.
    Apply(Transition),
    /// The event does not apply, and why.
    Refuse(Refusal),
}

impl TaskEvent {
    /// The status the event leads to.
    pub fn target(&self) -> TaskStatus {
        match self {
            TaskEvent::Assign { .. } => TaskStatus::Running,
            TaskEvent::Requeue { .. } => TaskStatus::Pending,
            TaskEvent::Report { outcome, .. } => (*outcome).into(),
            TaskEvent::Cancel { .. } => TaskStatus::Cancelled,
            TaskEvent::WorkerLost { .. } | TaskEvent::Drained { .. } => TaskStatus::Failed,
        }
    }

    fn allowed_from(&self) -> &'static [TaskStatus] {
        match self {
            TaskEvent::Assign { .. } => FROM_PENDING,
            TaskEvent::Cancel { .. } => CANCELLABLE,
            TaskEvent::Requeue { .. }
            | TaskEvent::Report { .. }
            | TaskEvent::WorkerLost { .. }
            | TaskEvent::Drained { .. } => FROM_RUNNING,
        }
    }

    /// The worker the task must currently be assigned to for the event to
    /// apply: a report, requeue or loss only concerns the assigned worker.
    fn expected_worker(&self) -> Option<&WorkerId> {
        match self {
            TaskEvent::Requeue { worker, .. }
            | TaskEvent::Report { worker, .. }
            | TaskEvent::WorkerLost { worker }
            | TaskEvent::Drained { worker, .. } => Some(worker),
            TaskEvent::Assign { .. } | TaskEvent::Cancel { .. } => None,
        }
    }

    fn expected_attempt(&self) -> Option<u32> {
        match self {
            TaskEvent::Requeue { attempt, .. }
            | TaskEvent::Report { attempt, .. }
            | TaskEvent::Drained { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    fn reason(&self) -> Option<String> {
        match self {
            TaskEvent::Assign { .. } => None,
            TaskEvent::Requeue { reason, .. } => Some(format!("requeued: {reason}")),
            TaskEvent::Report { message, .. } => message.clone(),
            TaskEvent::Cancel { force: false } => Some("cancelled by user".into()),
            TaskEvent::Cancel { force: true } => Some("force-cancelled by user".into()),
            TaskEvent::WorkerLost { worker } => {
                Some(format!("worker lost: {worker} stopped sending heartbeats"))
            }
            TaskEvent::Drained { worker, .. } => Some(format!(
                "drained: the drain deadline of worker {worker} passed"
            )),
        }
    }

    /// The compare-and-set a store performs for this event at `now`.
    pub fn change(&self, now: Timestamp) -> StatusChange {
        StatusChange {
            allowed_from: self.allowed_from().to_vec(),
            expected_worker: self.expected_worker().cloned(),
            expected_attempt: self.expected_attempt(),
            to: self.target(),
            assignment: match self {
                TaskEvent::Assign { worker } => Assignment::Set(worker.clone()),
                TaskEvent::Requeue { .. } => Assignment::Clear,
                _ => Assignment::Keep,
            },
            reason: self.reason(),
            at: now,
        }
    }
}

/// Decides what `event` does to `task` (`None`: the task is unknown).
pub fn decide(task: Option<&TaskRecord>, event: &TaskEvent) -> Decision {
    let Some(task) = task else {
        return Decision::Refuse(Refusal::UnknownTask);
    };
    if let Some(refusal) = refusal(task, event) {
        return Decision::Refuse(refusal);
    }
    Decision::Apply(Transition {
        from: task.status,
        to: event.target(),
        effects: event.effects(task),
    })
}

fn refusal(task: &TaskRecord, event: &TaskEvent) -> Option<Refusal> {
    if task.status.is_terminal() {
        return Some(Refusal::AlreadyFinal(task.status));
    }
    if !event.allowed_from().contains(&task.status) {
        return Some(match (&task.worker, task.status) {
            (Some(w), TaskStatus::Running) => Refusal::AlreadyAssigned(w.clone()),
            _ => Refusal::NotRunning,
        });
    }
    if let Some(claimed) = event.expected_worker() {
        if task.worker.as_ref() != Some(claimed) {
            return Some(Refusal::OtherWorker {
                assigned: task.worker.clone(),
                claimed: claimed.clone(),
            });
        }
    }
    match event.expected_attempt() {
        Some(claimed) if claimed != task.attempt => Some(Refusal::StaleAttempt {
            current: task.attempt,
            claimed,
        }),
        _ => None,
    }
}

impl TaskEvent {
    /// The effects of this event on `task` as it is before the change.
    /// [`decide`] returns them with the transition; a caller that learns
    /// only afterwards that its write landed (an uncertain store answer)
    /// may ask again.
    pub fn effects(&self, task: &TaskRecord) -> Vec<Effect> {
        let resources = task.spec.resources;
        let holder = || {
            task.worker
                .clone()
                .filter(|_| task.status == TaskStatus::Running)
        };
        match self {
            TaskEvent::Assign { worker } => vec![
                Effect::Reserve {
                    worker: worker.clone(),
                    resources,
                },
                Effect::SendAssignment {
                    worker: worker.clone(),
                },
            ],
            TaskEvent::Report { worker, .. } => vec![Effect::Release {
                worker: worker.clone(),
                resources,
            }],
            TaskEvent::Requeue { worker, .. } | TaskEvent::WorkerLost { worker } => vec![
                Effect::Release {
                    worker: worker.clone(),
                    resources,
                },
                Effect::StopOnWorker {
                    worker: worker.clone(),
                    attempt: task.attempt,
                    grace: Duration::ZERO,
                },
            ],
            TaskEvent::Drained { worker, attempt } => vec![
                Effect::Release {
                    worker: worker.clone(),
                    resources,
                },
                Effect::StopOnWorker {
                    worker: worker.clone(),
                    attempt: *attempt,
                    grace: task.spec.cancel_grace,
                },
            ],
            TaskEvent::Cancel { force } => match holder() {
                Some(worker) => vec![
                    Effect::Release {
                        worker: worker.clone(),
                        resources,
                    },
                    Effect::StopOnWorker {
                        worker,
                        attempt: task.attempt,
                        grace: if *force {
                            Duration::ZERO
                        } else {
                            task.spec.cancel_grace
                        },
                    },
                ],
                None => Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
