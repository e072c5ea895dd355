//! The storage seams: [`TaskStore`] (tasks, assignments, results) and
//! [`WorkerRegistry`] (workers and their heartbeats).
//!
//! Both are object-safe and used as `Arc<dyn …>`. Precedence rests on two
//! store guarantees, checked by the conformance suites in `testing`:
//! status changes are compare-and-set ([`TaskStore::update_status`]) and
//! result insertion is insert-if-absent ([`TaskStore::insert_result`]).

use std::fmt::Debug;

use async_trait::async_trait;

pub use crate::lifecycle::{Assignment, StatusChange};
use crate::model::{
    Drain, Heartbeat, StatusCounts, TaskId, TaskRecord, TaskResult, TaskStatus, WorkerId,
    WorkerRecord,
};
use crate::Result;

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

    /// How many tasks are in each status, without listing them.
    async fn count_tasks(&self) -> Result<StatusCounts>;
}

/// Registered workers and their liveness fields.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + Debug {
    /// Registers a worker, or updates the address, capacity and instance of
    /// a known one (keeping its `registered_at`, last heartbeat, telemetry
    /// and drain). Returns the stored record.
    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord>;

    /// Sets or clears a worker's drain. [`crate::Error::NotFound`] if
    /// unknown.
    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()>;

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
