//! The task lifecycle: `pending → running → {completed, failed, cancelled}`,
//! where a task whose attempt ended may go back to `pending` for another
//! (see [`crate::attempts`]).
//!
//! One pure function, [`decide`], holds every rule. From the task's record
//! and an event it computes the compare-and-set a store must perform (the
//! guard pins the status, worker and attempt the decision was made on) and
//! the effects the caller must carry out. Because the store's write is
//! conditional on that guard, precedence holds even with several writers:
//! once `cancelled` is written, no report can match `running` again.
//!
//! A pending task is in one of two phases: *queued* (no worker: it may be
//! placed, once its not-before time passed) or *ending* (its previous
//! attempt's worker is still named: that attempt is not known to have
//! ended, a stop is owed, and the task is not placed again until the
//! worker reports the end, confirms the stop, comes back without the run,
//! or is declared lost). So at most one attempt of a task runs at a time.

use std::fmt;
use std::time::Duration;

use crate::model::{Attempt, EndCause, Resources, TaskRecord, TaskStatus, Timestamp, WorkerId};
mod change;
mod plan;

pub use change::{Assignment, StatusChange, WorkerGuard};
pub use plan::assignment_effects;
use plan::{assign_change, Plan};

/// Statuses from which a task may be assigned.
const FROM_PENDING: &[TaskStatus] = &[TaskStatus::Pending];
/// Statuses from which a worker report, requeue or loss applies.
const FROM_RUNNING: &[TaskStatus] = &[TaskStatus::Running];
/// Statuses from which a user may cancel.
const CANCELLABLE: &[TaskStatus] = &[TaskStatus::Pending, TaskStatus::Running];

/// Something that happens to a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The master places a queued task on a worker.
    Assign {
        /// Where it goes.
        worker: WorkerId,
        /// The worker's GPUs it gets (as many as it asked for).
        gpus: Vec<u32>,
    },
    /// The assignment could not be delivered: the task goes back to the
    /// queue once the stop owed to the worker lands.
    Requeue {
        /// The worker it was assigned to.
        worker: WorkerId,
        /// The assignment that failed.
        attempt: u32,
        /// Why delivery failed.
        reason: String,
    },
    /// A worker reports that an attempt ended, and how.
    Report(Box<Attempt>),
    /// A user cancels the task.
    Cancel {
        /// Skip the grace period: SIGKILL at once.
        force: bool,
    },
    /// A dependency of a task that was never assigned can no longer hold:
    /// it is cancelled with this reason.
    Unmet {
        /// Which parent ended how (and the root of the chain).
        reason: String,
    },
    /// The task's worker was declared lost.
    WorkerLost {
        /// The lost worker.
        worker: WorkerId,
    },
    /// The task's worker registered again without the run.
    Vanished {
        /// The worker.
        worker: WorkerId,
        /// The run it no longer has.
        attempt: u32,
    },
    /// The drain deadline of the task's worker passed with the task still
    /// running: it is stopped (with its grace) and requeued or failed.
    Drained {
        /// The drained worker.
        worker: WorkerId,
        /// The assignment to stop.
        attempt: u32,
    },
    /// No end of the run was heard by its time limit (and then some): the
    /// master stops it and records the timeout itself.
    TimedOut {
        /// The worker.
        worker: WorkerId,
        /// The attempt that ran out of time.
        attempt: u32,
    },
    /// The worker confirmed the stop of an attempt that was ending.
    StopConfirmed {
        /// The worker.
        worker: WorkerId,
        /// The attempt it stopped.
        attempt: u32,
    },
}

/// A side effect the caller must carry out after the transition is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Reserve the task's resources on the worker for the attempt.
    Reserve {
        /// The worker.
        worker: WorkerId,
        /// The task's request.
        resources: Resources,
        /// The worker's GPUs it holds.
        gpus: Vec<u32>,
        /// The attempt they are for.
        attempt: u32,
    },
    /// The attempt's end is known: give its resources back to the worker.
    Release {
        /// The worker.
        worker: WorkerId,
        /// The attempt that ended.
        attempt: u32,
    },
    /// Send the assignment to the worker.
    SendAssignment {
        /// The worker.
        worker: WorkerId,
    },
    /// Tell the worker to stop the task (now, or when it is reachable
    /// again); its resources stay held until the stop is confirmed.
    StopOnWorker {
        /// The worker.
        worker: WorkerId,
        /// The assignment to stop.
        attempt: u32,
        /// SIGTERM→SIGKILL grace; zero for a force stop.
        grace: Duration,
    },
}

/// A transition that applies: the write to make, and the effects it
/// requires once written.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transition {
    /// Status before.
    pub from: TaskStatus,
    /// Status after.
    pub to: TaskStatus,
    /// The compare-and-set that makes it.
    pub change: StatusChange,
    /// What the caller must do once the change is stored.
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
    /// The event needs a running task; this one is pending.
    NotRunning,
    /// The event needs an ending attempt; this one still runs.
    StillRunning,
    /// The task is already assigned to this worker.
    AlreadyAssigned(WorkerId),
    /// The task's previous attempt, on this worker, has not ended yet.
    Ending(WorkerId),
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
            Refusal::StillRunning => f.write_str("task is still running"),
            Refusal::AlreadyAssigned(w) => write!(f, "task already assigned to {w}"),
            Refusal::Ending(w) => write!(f, "the task's previous attempt on {w} has not ended yet"),
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
    /// A report that attempt `attempt` on `worker` ended with `cause`,
    /// dated the epoch (for tests and tools; workers report whole results,
    /// and the master dates what it decides itself).
    pub fn report(
        worker: WorkerId,
        attempt: u32,
        cause: EndCause,
        message: Option<String>,
    ) -> TaskEvent {
        TaskEvent::Report(Box::new(Attempt::ended(
            attempt,
            worker,
            cause,
            Timestamp::ZERO,
            message,
        )))
    }

    /// The worker and attempt the event is about, for events about a run.
    fn run(&self) -> Option<(&WorkerId, Option<u32>)> {
        match self {
            TaskEvent::Requeue {
                worker, attempt, ..
            }
            | TaskEvent::Vanished { worker, attempt }
            | TaskEvent::Drained { worker, attempt }
            | TaskEvent::TimedOut { worker, attempt }
            | TaskEvent::StopConfirmed { worker, attempt } => Some((worker, Some(*attempt))),
            TaskEvent::Report(a) => Some((&a.worker, Some(a.attempt))),
            TaskEvent::WorkerLost { worker } => Some((worker, None)),
            TaskEvent::Assign { .. } | TaskEvent::Cancel { .. } | TaskEvent::Unmet { .. } => None,
        }
    }

    /// The change for this event made without reading the task first, for
    /// the events whose write does not depend on the record beyond the
    /// guard (an assignment, a success): the hot path's one round trip.
    /// Stored, it means what [`decide`] on the record before would have
    /// written.
    pub fn blind_change(&self, now: Timestamp) -> Option<StatusChange> {
        match self {
            TaskEvent::Assign { worker, gpus } => Some(assign_change(worker, gpus, now)),
            TaskEvent::Report(a) if a.cause == EndCause::Completed => Some(StatusChange {
                allowed_from: FROM_RUNNING.to_vec(),
                expected_worker: WorkerGuard::Is(a.worker.clone()),
                expected_attempt: Some(a.attempt),
                to: TaskStatus::Completed,
                assignment: Assignment::Keep,
                reason: None,
                not_before: None,
                push: Some(Box::new((**a).clone().without_logs())),
                at: now,
            }),
            _ => None,
        }
    }
}

/// Where a task is, as far as events care.
#[derive(Clone, Copy)]
enum Phase<'a> {
    Final(TaskStatus),
    Queued,
    Ending(&'a WorkerId, u32),
    Running(&'a WorkerId, u32),
}

fn phase(task: &TaskRecord) -> Phase<'_> {
    match (task.status, &task.worker) {
        (s, _) if s.is_terminal() => Phase::Final(s),
        (TaskStatus::Running, Some(w)) => Phase::Running(w, task.attempt),
        (_, Some(w)) => Phase::Ending(w, task.attempt),
        _ => Phase::Queued,
    }
}

/// Statuses from which a report of a run's end, or a loss, applies (a
/// pending task's ending attempt ends so too).
const REPORTABLE: &[TaskStatus] = &[TaskStatus::Pending, TaskStatus::Running];

impl TaskEvent {
    fn allowed_from(&self) -> &'static [TaskStatus] {
        match self {
            TaskEvent::Assign { .. }
            | TaskEvent::StopConfirmed { .. }
            | TaskEvent::Unmet { .. } => FROM_PENDING,
            TaskEvent::Cancel { .. } => CANCELLABLE,
            TaskEvent::Requeue { .. } | TaskEvent::Drained { .. } | TaskEvent::TimedOut { .. } => {
                FROM_RUNNING
            }
            TaskEvent::Report(_) | TaskEvent::WorkerLost { .. } | TaskEvent::Vanished { .. } => {
                REPORTABLE
            }
        }
    }
}

/// Decides what `event` does to `task` (`None`: the task is unknown) at
/// `now`.
pub fn decide(task: Option<&TaskRecord>, event: &TaskEvent, now: Timestamp) -> Decision {
    let Some(task) = task else {
        return Decision::Refuse(Refusal::UnknownTask);
    };
    if let Some(refusal) = refusal(task, event) {
        return Decision::Refuse(refusal);
    }
    Decision::Apply(Plan { task, now }.transition(event))
}

fn refusal(task: &TaskRecord, event: &TaskEvent) -> Option<Refusal> {
    let ph = phase(task);
    if !event.allowed_from().contains(&task.status) {
        return Some(match ph {
            Phase::Final(s) => Refusal::AlreadyFinal(s),
            Phase::Running(w, _) if matches!(event, TaskEvent::Assign { .. }) => {
                Refusal::AlreadyAssigned(w.clone())
            }
            Phase::Running(..) => Refusal::StillRunning,
            Phase::Queued | Phase::Ending(..) => Refusal::NotRunning,
        });
    }
    let Some((claimed, attempt)) = event.run() else {
        return match (event, ph) {
            // A dependency decides only a task that never ran.
            (TaskEvent::Unmet { .. }, _) if task.attempt > 0 => Some(Refusal::StaleAttempt {
                current: task.attempt,
                claimed: 0,
            }),
            (TaskEvent::Assign { .. } | TaskEvent::Unmet { .. }, Phase::Ending(w, _)) => {
                Some(Refusal::Ending(w.clone()))
            }
            _ => None,
        };
    };
    if matches!(ph, Phase::Queued) {
        return Some(Refusal::NotRunning);
    }
    if task.worker.as_ref() != Some(claimed) {
        return Some(Refusal::OtherWorker {
            assigned: task.worker.clone(),
            claimed: claimed.clone(),
        });
    }
    match attempt {
        Some(claimed) if claimed != task.attempt => Some(Refusal::StaleAttempt {
            current: task.attempt,
            claimed,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
