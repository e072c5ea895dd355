//! The compare-and-set a store performs for a lifecycle event: the guard
//! (allowed statuses, assigned worker, attempt) and the write.

use crate::model::{Attempt, TaskRecord, TaskStatus, Timestamp, WorkerId};

/// What a status change does to the task's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Leave it as it is.
    Keep,
    /// Assign the task to this worker, with these of its GPUs (a new
    /// attempt).
    Set(WorkerId, Vec<u32>),
    /// Unassign it (its GPUs go with it).
    Clear,
}

/// Which worker the task must be assigned to for a change to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerGuard {
    /// Any, or none.
    Any,
    /// None: the task is assigned to no worker.
    Unassigned,
    /// This one.
    Is(WorkerId),
}

impl WorkerGuard {
    /// The guard that holds exactly for `worker`.
    pub fn exactly(worker: Option<&WorkerId>) -> Self {
        match worker {
            Some(w) => WorkerGuard::Is(w.clone()),
            None => WorkerGuard::Unassigned,
        }
    }

    fn admits(&self, worker: Option<&WorkerId>) -> bool {
        match self {
            WorkerGuard::Any => true,
            WorkerGuard::Unassigned => worker.is_none(),
            WorkerGuard::Is(w) => worker == Some(w),
        }
    }
}

/// A conditional status change: applied only if the task's current status is
/// in `allowed_from`, its worker passes `expected_worker` and, when set,
/// it is on `expected_attempt`. Built by [`super::decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Statuses the task may be in for the change to apply.
    pub allowed_from: Vec<TaskStatus>,
    /// Worker the task must be assigned to.
    pub expected_worker: WorkerGuard,
    /// Attempt the task must be on, if any.
    pub expected_attempt: Option<u32>,
    /// The new status.
    pub to: TaskStatus,
    /// What happens to the assignment (setting one also counts an attempt
    /// and stamps `assigned_at`).
    pub assignment: Assignment,
    /// The new reason (replaces the old one; `None` clears it).
    pub reason: Option<String>,
    /// The new not-before time (replaces the old one; `None` clears it).
    pub not_before: Option<Timestamp>,
    /// An ended attempt to append to the task's history.
    pub push: Option<Box<Attempt>>,
    /// When the change happens.
    pub at: Timestamp,
}

impl StatusChange {
    /// Whether the guard holds for `task`.
    pub fn admits(&self, task: &TaskRecord) -> bool {
        self.allowed_from.contains(&task.status)
            && self.expected_worker.admits(task.worker.as_ref())
            && self.expected_attempt.is_none_or(|a| task.attempt == a)
    }

    /// Writes the change into `task` (the guard is the caller's business).
    /// Stores that keep whole records use this so every field is set alike.
    pub fn apply_to(&self, task: &mut TaskRecord) {
        task.status = self.to;
        match &self.assignment {
            Assignment::Keep => {}
            Assignment::Set(w, gpus) => {
                task.worker = Some(w.clone());
                task.gpus.clone_from(gpus);
                task.attempt += 1;
                task.assigned_at = Some(self.at);
            }
            Assignment::Clear => {
                task.worker = None;
                task.gpus.clear();
            }
        }
        task.reason.clone_from(&self.reason);
        task.not_before = self.not_before;
        if let Some(a) = &self.push {
            task.history.push((**a).clone());
        }
        task.updated_at = self.at;
        if self.to.is_terminal() {
            task.finished_at = Some(self.at);
        }
    }
}
