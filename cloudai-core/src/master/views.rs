//! Read models: workers with their live status, tasks with their result
//! and queue reason.

use super::state::State;
use super::Master;
use crate::liveness::Health;
use crate::model::{
    Drain, Gpu, Labels, Resources, StatusCounts, TaskId, TaskRecord, TaskResult, TaskStatus,
    Telemetry, Timestamp, WorkerId,
};
use crate::store::{PageKey, TaskFilter};

/// A waiting reason in a word, in the manner of Slurm's pending reasons,
/// for lists (the sentence is for `show`).
pub fn short_reason(reason: &str) -> &'static str {
    let pinned = reason.starts_with("waiting for worker ");
    if reason.contains("of higher priority") {
        "Priority"
    } else if reason.starts_with("retrying") {
        "Retrying"
    } else if reason.contains("before it runs again") {
        "Stopping"
    } else if reason.contains("pulling its image") {
        "Pulling"
    } else if reason.contains("no active workers") {
        if pinned {
            "PinnedWorkerDown"
        } else {
            "NoActiveWorker"
        }
    } else if reason.contains("exceeds") {
        "TooLarge"
    } else if reason.contains("allows bind mounts") {
        "MountNotAllowed"
    } else if reason.contains("matches the constraints") {
        "NoMatchingWorker"
    } else if reason.starts_with("waiting for its dependencies") {
        "Dependency"
    } else if reason.starts_with("array limit") {
        "ArrayLimit"
    } else if reason.contains("enough free resources") {
        if pinned {
            "PinnedWorkerBusy"
        } else {
            "Resources"
        }
    } else if reason.contains("placed again") || reason.starts_with("requeued") {
        "Requeued"
    } else {
        "Waiting"
    }
}

/// The most tasks one page holds.
pub const MAX_PAGE: usize = 1000;
use crate::Result;

/// A worker as the master sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    /// The worker.
    pub id: WorkerId,
    /// Where it is reached.
    pub address: Option<String>,
    /// Health from heartbeat deadlines, at the time of the call.
    pub health: Health,
    /// Whether it registered with this master since the master started.
    pub registered: bool,
    /// Everything it offers.
    pub capacity: Resources,
    /// Sum of its running tasks' requests.
    pub allocated: Resources,
    /// What is free.
    pub available: Resources,
    /// Tasks holding resources on it.
    pub tasks: Vec<TaskId>,
    /// Its GPUs, each with the task holding it.
    pub gpus: Vec<GpuView>,
    /// Its last heartbeat.
    pub last_heartbeat: Option<Timestamp>,
    /// Telemetry from that heartbeat.
    pub telemetry: Option<Telemetry>,
    /// Set while an operator drains it.
    pub drain: Option<Drain>,
    /// Its labels.
    pub labels: Labels,
}

/// One GPU of a worker, and the task that holds it (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    /// The GPU.
    pub gpu: Gpu,
    /// The task holding it.
    pub task: Option<TaskId>,
}

impl WorkerView {
    /// `"draining"` while drained with tasks still on it, `"drained"` once
    /// none are left; `None` if not drained.
    pub fn drain_state(&self) -> Option<&'static str> {
        self.drain.map(|_| {
            if self.tasks.is_empty() {
                "drained"
            } else {
                "draining"
            }
        })
    }
}

/// A task with its result and, if queued, why it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    /// The task.
    pub task: TaskRecord,
    /// Its result, once reported.
    pub result: Option<TaskResult>,
    /// Why it is still pending.
    pub waiting: Option<String>,
}

impl Master {
    /// Every known worker with its live status and allocation.
    pub fn workers(&self) -> Vec<WorkerView> {
        let now = self.now();
        self.state().worker_views(now)
    }

    /// Why task `task` waits now: a pending one for a worker (if the queue
    /// has said), a running one for its worker to start it (as the
    /// worker's last heartbeat said).
    pub fn waiting(&self, task: &TaskRecord) -> Option<String> {
        waiting_in(&self.state(), task, self.now())
    }

    /// [`Master::waiting`] of each of `tasks`, read under one look at the
    /// state (a page of 1,000 tasks would take its lock 1,000 times).
    pub fn waiting_each(&self, tasks: &[TaskRecord]) -> Vec<Option<String>> {
        let now = self.now();
        let st = self.state();
        tasks.iter().map(|t| waiting_in(&st, t, now)).collect()
    }

    /// The task with its result and queue reason.
    pub async fn task(&self, id: &TaskId) -> Result<TaskView> {
        let task = self
            .inner
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| self.missing_task(id))?;
        let result = self.inner.store.get_result(id).await?;
        let waiting = self.waiting(&task);
        Ok(TaskView {
            task,
            result,
            waiting,
        })
    }

    /// Tasks passing `filter`, oldest first.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.inner.store.list_tasks(filter).await
    }

    /// At most `limit` tasks passing `filter`, newest first, continuing
    /// after `after`; with the key to pass for the next page, if there may
    /// be one.
    pub async fn page(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<(Vec<TaskRecord>, Option<PageKey>)> {
        let limit = limit.clamp(1, MAX_PAGE);
        let tasks = self.inner.store.page_tasks(filter, after, limit).await?;
        let next = (tasks.len() == limit)
            .then(|| tasks.last().map(PageKey::after))
            .flatten();
        Ok((tasks, next))
    }

    /// How many tasks are in each status (the store counts; nothing is
    /// listed).
    pub async fn task_counts(&self) -> Result<StatusCounts> {
        self.inner.store.count_tasks().await
    }

    /// How many tasks passing `filter` are in each status (an array's, a
    /// name's); nothing is listed.
    pub async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts> {
        self.inner.store.count_matching(filter).await
    }
}

/// Why `task` waits, as `st` says now.
fn waiting_in(st: &State, task: &TaskRecord, now: Timestamp) -> Option<String> {
    if let Some((w, attempt)) = task.ending() {
        return Some(format!(
            "waiting for attempt {attempt} on worker {w} to end before it runs again"
        ));
    }
    if let Some(due) = st.delayed_until(&task.id) {
        let left = due.saturating_since(now);
        let left = std::time::Duration::from_secs(left.as_secs().max(1));
        return Some(format!(
            "retrying: the next attempt is placed in {}",
            humantime::format_duration(left)
        ));
    }
    match (task.status, &task.worker) {
        (TaskStatus::Pending, _) => st.waiting_reason(task),
        (TaskStatus::Running, Some(w)) if st.is_starting(w, &task.id) => Some(format!(
            "starting on worker {w}: pulling its image or creating its container"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::short_reason;
    use crate::placement::NoCapacity;

    #[test]
    fn each_waiting_sentence_has_its_word() {
        let pinned = |r: &NoCapacity| format!("waiting for worker w1: {r}");
        for (sentence, word) in [
            (NoCapacity::NoActiveWorkers.to_string(), "NoActiveWorker"),
            (NoCapacity::ExceedsEveryWorker.to_string(), "TooLarge"),
            (NoCapacity::AllBusy.to_string(), "Resources"),
            (pinned(&NoCapacity::NoActiveWorkers), "PinnedWorkerDown"),
            (pinned(&NoCapacity::AllBusy), "PinnedWorkerBusy"),
            (
                "worker w1 could not be reached: the task is placed again".to_string(),
                "Requeued",
            ),
            (
                "starting on worker w1: pulling its image or creating its container".to_string(),
                "Pulling",
            ),
            (
                "retrying: the next attempt is placed in 4s".to_string(),
                "Retrying",
            ),
            (
                "waiting for attempt 2 on worker w1 to end before it runs again".to_string(),
                "Stopping",
            ),
            (
                "requeued: worker lost: w1 (loss 1 of 5)".to_string(),
                "Requeued",
            ),
            (
                "no active worker allows bind mounts from /data".to_string(),
                "MountNotAllowed",
            ),
        ] {
            assert_eq!(short_reason(&sentence), word, "{sentence}");
        }
    }
}
