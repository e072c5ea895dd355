//! The storage seams: [`TaskStore`] (tasks, assignments, results),
//! [`WorkerRegistry`] (workers and their heartbeats) and [`LeaseStore`]
//! (the masters' leader lease and the fences it raises).
//!
//! Both are object-safe and used as `Arc<dyn …>`. Precedence rests on two
//! store guarantees, checked by the conformance suites in `testing`:
//! status changes are compare-and-set ([`TaskStore::update_status`]) and
//! result insertion is insert-if-absent ([`TaskStore::insert_result`]).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use crate::lifecycle::{Assignment, StatusChange, WorkerGuard};
use crate::model::{
    ArrayId, Drain, Heartbeat, RequestId, StatusCounts, TaskId, TaskRecord, TaskResult, TaskStatus,
    Term, Timestamp, ValidationError, WorkerId, WorkerRecord,
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
    /// Only tasks with this name.
    pub name: Option<String>,
    /// Only tasks with every one of these labels.
    pub labels: Vec<(String, String)>,
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
            && self
                .name
                .as_ref()
                .is_none_or(|n| task.spec.name.as_ref() == Some(n))
            && self
                .labels
                .iter()
                .all(|(k, v)| task.spec.labels.get(k) == Some(v))
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

/// What a submit with a request id made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// One task.
    Task(TaskId),
    /// An array.
    Array(ArrayId),
}

/// A request id's record: what the first submit under it made, and a hash
/// of the spec as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestClaim {
    /// The client's request id.
    pub request: RequestId,
    /// The task or array the submit made.
    pub made: Submitted,
    /// A hash of the spec the client sent (before the master added to it).
    pub spec_hash: String,
    /// When it was claimed (retention removes old claims).
    pub at: Timestamp,
}

/// Persistent tasks and results.
///
/// A handle carries a [`Term`] ([`TaskStore::fenced`]; term 0 for a plain
/// handle) into every state-changing write. A task document keeps a fence:
/// a write lands only where the fence is at most the writer's term (or
/// the document has no fence yet), and sets it to that term; a refused
/// write is [`crate::Error::Fenced`]. Inserts cannot be fenced (the
/// document does not exist yet) and write the handle's term.
#[async_trait]
pub trait TaskStore: Send + Sync + Debug {
    /// A handle on the same tasks whose writes carry `term`.
    fn fenced(&self, term: Term) -> Arc<dyn TaskStore>;

    /// Records `claim` unless its request id is taken; returns the claim
    /// that holds it when it was (insert-if-absent).
    async fn claim_request(&self, claim: RequestClaim) -> Result<Option<RequestClaim>>;

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

    /// How many tasks passing `filter` are in each status (its statuses
    /// ignored), without sending them: an array's counts at a glance.
    async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts>;

    /// Sets a pending task's priority (its place in the queue). Applied
    /// only while it is pending; otherwise rejected with the record as it
    /// is. [`crate::Error::NotFound`] if there is no such task.
    async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<CasOutcome>;

    /// Removes at most `limit` tasks that finished before `before`, each
    /// with its result (the result first, so nothing is left without its
    /// task), and the request claims made before `before`. Tasks in `keep`
    /// stay (parents a waiting dependent still needs). Returns how many
    /// tasks went.
    async fn remove_finished(
        &self,
        before: Timestamp,
        limit: usize,
        keep: &[TaskId],
    ) -> Result<usize>;
}

/// Registered workers and their liveness fields. Fenced like
/// [`TaskStore`]: every write but a first registration is refused by a
/// worker document fenced above the handle's term.
#[async_trait]
pub trait WorkerRegistry: Send + Sync + Debug {
    /// A handle on the same workers whose writes carry `term`.
    fn fenced(&self, term: Term) -> Arc<dyn WorkerRegistry>;

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

/// The leader lease: one record all masters of a cluster share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The id of the master that holds it; `None` once released.
    pub holder: Option<String>,
    /// A nonce for each start of that master's process.
    pub run: String,
    /// Where the holder's clients and workers reach it.
    pub address: String,
    /// The term: raised by each takeover.
    pub term: Term,
    /// Raised by each renewal within a term.
    pub version: u64,
    /// How long the holder lets a renewal stand.
    pub ttl: Duration,
}

/// The lease and the fences a new term raises. No call reads the server's
/// clock: time is judged by each master on its own clock.
#[async_trait]
pub trait LeaseStore: Send + Sync + Debug {
    /// The lease, if one was ever created.
    async fn read_lease(&self) -> Result<Option<LeaseRecord>>;

    /// Creates the lease as `record` (term 1, version 0), or
    /// [`crate::Error::AlreadyExists`].
    async fn create_lease(&self, record: &LeaseRecord) -> Result<()>;

    /// Replaces the lease with `new` if it is still at (`term`,
    /// `version`): one conditional write, so of racing swaps on one value
    /// exactly one applies. Renews (same term, version + 1), takes over
    /// (term + 1, version 0) and releases (holder cleared).
    async fn swap_lease(&self, term: Term, version: u64, new: &LeaseRecord) -> Result<bool>;

    /// Raises the fence of every task that has not ended and of every
    /// worker to at least `term`, in batches. Returns how many documents it
    /// touched.
    async fn raise_fence(&self, term: Term) -> Result<u64>;

    /// At most `limit` pending tasks fenced below `term` (inserted by an
    /// older term after its raise), their fence raised to `term`.
    async fn adopt_pending(&self, term: Term, limit: usize) -> Result<Vec<TaskRecord>>;
}
