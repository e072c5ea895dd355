//! The compare-and-set a store performs for a lifecycle event: the guard
//! (allowed statuses, assigned worker, attempt) and the write.

use crate::model::{TaskRecord, TaskStatus, Timestamp, WorkerId};

/// What a status change does to the task's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Leave it as it is.
    Keep,
    /// Assign the task to this worker.
    Set(WorkerId),
    /// Unassign it.
    Clear,
}

/// A conditional status change: applied only if the task's current status is
/// in `allowed_from` and, when `expected_worker` is set, the task is assigned
/// to that worker. Built by [`super::TaskEvent::change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Statuses the task may be in for the change to apply.
    pub allowed_from: Vec<TaskStatus>,
    /// Worker the task must be assigned to, if any.
    pub expected_worker: Option<WorkerId>,
    /// Attempt the task must be on, if any.
    pub expected_attempt: Option<u32>,
    /// The new status.
    pub to: TaskStatus,
    /// What happens to the assignment.
    pub assignment: Assignment,
    /// The new reason (replaces the old one; `None` clears it).
    pub reason: Option<String>,
    /// When the change happens.
    pub at: Timestamp,
}

impl StatusChange {
    /// Whether the guard holds for `task`.
    pub fn admits(&self, task: &TaskRecord) -> bool {
        self.allowed_from.contains(&task.status)
            && self
                .expected_worker
                .as_ref()
                .is_none_or(|w| task.worker.as_ref() == Some(w))
            && self.expected_attempt.is_none_or(|a| task.attempt == a)
    }

    /// Writes the change into `task` (the guard is the caller's business).
    /// Stores that keep whole records use this so every field is set alike.
    pub fn apply_to(&self, task: &mut TaskRecord) {
        task.status = self.to;
        match &self.assignment {
            Assignment::Keep => {}
            Assignment::Set(w) => {
                task.worker = Some(w.clone());
                task.attempt += 1;
            }
            Assignment::Clear => task.worker = None,
        }
        task.reason.clone_from(&self.reason);
        task.updated_at = self.at;
        if self.to.is_terminal() {
            task.finished_at = Some(self.at);
        }
    }
}
