//! The storage seams: [`TaskStore`] (tasks, assignments, results) and
//! [`WorkerRegistry`] (workers and their heartbeats).
//!
//! Both are object-safe and used as `Arc<dyn …>`. Precedence rests on two
//! store guarantees, checked by the conformance suites in `testing`:
//! status changes are compare-and-set ([`TaskStore::update_status`]) and
//! result insertion is insert-if-absent ([`TaskStore::insert_result`]).

use std::fmt::Debug;

use async_trait::async_trait;

pub use crate::lifecycle::{Assignment, StatusChange, WorkerGuard};
use crate::model::{
    ArrayId, Drain, Heartbeat, StatusCounts, TaskId, TaskRecord, TaskResult, TaskStatus, Timestamp,
    ValidationError, WorkerId, WorkerRecord,
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

/// Which tasks [`TaskStore::list_tasks`] and [`TaskStore::page_tasks`]
/// return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only tasks in one of these statuses (empty: any status).
    pub statuses: Vec<TaskStatus>,
    /// Only tasks assigned to this worker.
    pub worker: Option<WorkerId>,
    /// Only the tasks of this array.
    pub array: Option<ArrayId>,
}

impl TaskFilter {
    /// Tasks in any of `statuses`.
    pub fn status(statuses: impl IntoIterator<Item = TaskStatus>) -> Self {
        TaskFilter {
            statuses: statuses.into_iter().collect(),
            ..TaskFilter::default()
        }
    }

    /// Whether `task` passes the filter.
    pub fn matches(&self, task: &TaskRecord) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&task.status))
            && self
                .worker
                .as_ref()
                .is_none_or(|w| task.worker.as_ref() == Some(w))
            && self
                .array
                .as_ref()
                .is_none_or(|a| task.array.as_ref().map(|m| &m.id) == Some(a))
    }
}

/// Where a page of tasks (newest first) continues: after the task created
/// at `created_at` with id `id`, i.e. with the tasks older than it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageKey {
    /// The last task's creation time.
    pub created_at: Timestamp,
    /// The last task's id (ties on the time go by id, descending).
    pub id: TaskId,
}

impl PageKey {
    /// The key just after `task`.
    pub fn after(task: &TaskRecord) -> Self {
        PageKey {
            created_at: task.created_at,
            id: task.id.clone(),
        }
    }
}

impl std::fmt::Display for PageKey {
    /// `<created_at ms>:<task id>`, the cursor clients pass back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.created_at.as_millis(), self.id)
    }
}

impl std::str::FromStr for PageKey {
    type Err = ValidationError;
    fn from_str(s: &str) -> std::result::Result<Self, ValidationError> {
        let bad = || ValidationError::Invalid {
            field: "page cursor",
            reason: format!("{s:?} is not a cursor this master handed out"),
        };
        let (at, id) = s.split_once(':').ok_or_else(bad)?;
        Ok(PageKey {
            created_at: Timestamp::from_millis(at.parse().map_err(|_| bad())?),
            id: TaskId::new(id).map_err(|_| bad())?,
        })
    }
}

/// Persistent tasks and results.
#[async_trait]
pub trait TaskStore: Send + Sync + Debug {
    /// Stores a new task. [`crate::Error::AlreadyExists`] if the id is taken.
    async fn insert_task(&self, task: TaskRecord) -> Result<()>;

    /// Stores new tasks in one batch (an array). A taken id fails the batch
    /// with [`crate::Error::AlreadyExists`]; a backend that cannot undo a
    /// partial batch may have kept the tasks before it (ids the master
    /// generates are never taken).
    async fn insert_tasks(&self, tasks: Vec<TaskRecord>) -> Result<()>;

    /// The task, if it exists.
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>>;

    /// Tasks passing `filter`, oldest first (ties by id).
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>>;

    /// At most `limit` tasks passing `filter`, newest first (ties by id,
    /// descending), continuing after `after`: pages that together list
    /// every task exactly once, however many there are.
    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>>;

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

    /// Removes at most `limit` tasks that finished before `before`, each
    /// with its result (the result first, so nothing is left without its
    /// task). Returns how many tasks went.
    async fn remove_finished(&self, before: Timestamp, limit: usize) -> Result<usize>;
}

/// Registered workers and their liveness fields.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + Debug {
    /// Registers a worker, or updates the address, capacity, GPUs, allowed
    /// mounts and instance of a known one (keeping its `registered_at`, last heartbeat, telemetry
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
