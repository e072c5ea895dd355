//! The storage seams: [`TaskStore`] (tasks, assignments, results) and
//! [`WorkerRegistry`] (workers and their heartbeats).
//!
//! Both are object-safe and used as `Arc<dyn …>`. Precedence rests on two
//! store guarantees, checked by the conformance suites in `testing`:
//! status changes are compare-and-set ([`TaskStore::update_status`]) and
//! result insertion is insert-if-absent ([`TaskStore::insert_result`]).

use std::fmt::Debug;

use async_trait::async_trait;

use crate::model::{
    Heartbeat, TaskId, TaskRecord, TaskResult, TaskStatus, Timestamp, WorkerId, WorkerRecord,
};
use crate::Result;

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
/// to that worker. Built by [`crate::lifecycle::TaskEvent::change`].
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

/// The result of [`TaskStore::update_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum CasOutcome {
    /// The guard held and the change is stored; the record as it was before.
    Applied {
        /// The record before the change.
        before: TaskRecord,
    },
    /// The guard did not hold; nothing changed. The record as it is.
    Rejected {
        /// The current record.
        current: TaskRecord,
    },
}

/// The result of [`TaskStore::insert_result`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum InsertOutcome {
    /// This result is now the task's result.
    Inserted,
    /// The task already had a result; this one was dropped.
    AlreadyPresent,
}

/// Which tasks [`TaskStore::list_tasks`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks in one of these statuses (empty: any status).
    pub statuses: Vec<TaskStatus>,
    /// Only tasks assigned to this worker.
    pub worker: Option<WorkerId>,
}

impl TaskFilter {
    /// Tasks in any of `statuses`.
    pub fn status(statuses: impl IntoIterator<Item = TaskStatus>) -> Self {
        TaskFilter {
            statuses: statuses.into_iter().collect(),
            worker: None,
        }
    }

    /// Whether `task` passes the filter.
    pub fn matches(&self, task: &TaskRecord) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&task.status))
            && self
                .worker
                .as_ref()
                .is_none_or(|w| task.worker.as_ref() == Some(w))
    }
}

/// Persistent tasks and results.
#[async_trait]
pub trait TaskStore: Send + Sync + Debug {
    /// Stores a new task. [`crate::Error::AlreadyExists`] if the id is taken.
    async fn insert_task(&self, task: TaskRecord) -> Result<()>;

    /// The task, if it exists.
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>>;

    /// Tasks passing `filter`, oldest first (ties by id).
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>>;

    /// Atomically applies `change` if its guard holds for the stored task.
    /// [`crate::Error::NotFound`] if there is no such task.
    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome>;

    /// Stores `result` unless the task already has one. Two concurrent
    /// inserts for one task: exactly one returns [`InsertOutcome::Inserted`].
    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome>;

    /// The task's result, if one is stored.
    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>>;
}

/// Registered workers and their liveness fields.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + Debug {
    /// Registers a worker, or updates the address and capacity of a known one
    /// (keeping its `registered_at`, last heartbeat and telemetry). Returns
    /// the stored record.
    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord>;

    /// The worker, if registered.
    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>>;

    /// Every registered worker, by id.
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>>;

    /// Unregisters a worker. [`crate::Error::NotFound`] if unknown.
    async fn remove_worker(&self, id: &WorkerId) -> Result<()>;

    /// Records a batch of heartbeats in one call (the master coalesces them
    /// so a heartbeat costs no write of its own). A worker's last heartbeat
    /// never moves backwards. Returns the ids that are not registered.
    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>>;
}
