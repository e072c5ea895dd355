//! The embedded default store: [`TaskStore`] and [`WorkerRegistry`] in
//! memory, with the same compare-and-set and insert-if-absent semantics as
//! every other backend (it runs the same conformance suites).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use crate::sync::lock;

use async_trait::async_trait;

use crate::model::{
    ArrayId, Drain, Heartbeat, StatusCounts, TaskId, TaskRecord, TaskResult, TaskStatus, Timestamp,
    WorkerId, WorkerRecord,
};
use crate::store::{
    CasOutcome, InsertOutcome, PageKey, StatusChange, TaskFilter, TaskStore, WorkerRegistry,
};
use crate::{Error, Result};

/// Tasks, results and workers in memory. Cheap to create; share it as
/// `Arc<MemoryStore>`. Locks are never held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tasks: Mutex<Tasks>,
    results: Mutex<HashMap<TaskId, TaskResult>>,
    workers: Mutex<BTreeMap<WorkerId, WorkerRecord>>,
}

/// The tasks, with what is kept beside them for cheap reads.
#[derive(Debug, Default)]
struct Tasks {
    by_id: HashMap<TaskId, TaskRecord>,
    index: Index,
}

/// A task's place in creation order.
type Key = (Timestamp, TaskId);

/// Kept by [`Index::track`] on every insert, applied change and removal.
#[derive(Debug, Default)]
struct Index {
    counts: StatusCounts,
    /// Every task, by creation: pages read from the newest end.
    created: BTreeSet<Key>,
    /// Tasks by status, by creation: a page of one status reads only those.
    by_status: HashMap<TaskStatus, BTreeSet<Key>>,
    /// Tasks by array, by creation.
    by_array: HashMap<ArrayId, BTreeSet<Key>>,
    /// Finished tasks by when they finished: retention reads the oldest.
    finished: BTreeSet<(Timestamp, TaskId)>,
    /// Live tasks by the worker they are assigned to (running, or pending
    /// while their previous attempt ends there), oldest first: what a
    /// registration or a lost worker asks for, read without a scan of
    /// every task.
    on_worker: HashMap<WorkerId, BTreeSet<Key>>,
}

/// Puts `key` in (`enters`) or takes it out of the set under `at`,
/// dropping a set left empty.
fn file<K: Eq + std::hash::Hash>(
    sets: &mut HashMap<K, BTreeSet<Key>>,
    at: K,
    key: Key,
    enters: bool,
) {
    if enters {
        sets.entry(at).or_default().insert(key);
    } else if let Some(set) = sets.get_mut(&at) {
        set.remove(&key);
        if set.is_empty() {
            sets.remove(&at);
        }
    }
}

impl Index {
    /// Files `task` in (`enters`) or out, as it is now.
    fn track(&mut self, task: &TaskRecord, enters: bool) {
        let key = (task.created_at, task.id.clone());
        if enters {
            self.counts.add(task.status, 1);
            self.created.insert(key.clone());
        } else {
            self.counts.remove(task.status);
            self.created.remove(&key);
        }
        file(&mut self.by_status, task.status, key.clone(), enters);
        if let Some(a) = &task.array {
            file(&mut self.by_array, a.id.clone(), key.clone(), enters);
        }
        if let Some(at) = task.finished_at.filter(|_| task.status.is_terminal()) {
            if enters {
                self.finished.insert((at, task.id.clone()));
            } else {
                self.finished.remove(&(at, task.id.clone()));
            }
        }
        if let (false, Some(worker)) = (task.status.is_terminal(), &task.worker) {
            file(&mut self.on_worker, worker.clone(), key, enters);
        }
    }

    /// The smallest index that holds every task `filter` can pass.
    fn candidates(&self, filter: &TaskFilter) -> &BTreeSet<Key> {
        static NONE: BTreeSet<Key> = BTreeSet::new();
        if let Some(a) = &filter.array {
            return self.by_array.get(a).unwrap_or(&NONE);
        }
        if let [one] = &filter.statuses[..] {
            return self.by_status.get(one).unwrap_or(&NONE);
        }
        &self.created
    }
}

impl Tasks {
    fn insert(&mut self, task: TaskRecord) {
        self.index.track(&task, true);
        self.by_id.insert(task.id.clone(), task);
    }

    fn remove(&mut self, id: &TaskId) -> Option<TaskRecord> {
        let task = self.by_id.remove(id)?;
        self.index.track(&task, false);
        Some(task)
    }

    fn taken(&self, id: &TaskId) -> Result<()> {
        if self.by_id.contains_key(id) {
            return Err(Error::AlreadyExists {
                kind: "task",
                id: id.to_string(),
            });
        }
        Ok(())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        let mut tasks = lock(&self.tasks);
        tasks.taken(&task.id)?;
        tasks.insert(task);
        Ok(())
    }

    async fn insert_tasks(&self, batch: Vec<TaskRecord>) -> Result<()> {
        let mut tasks = lock(&self.tasks);
        let mut ids = HashSet::new();
        for t in &batch {
            tasks.taken(&t.id)?;
            if !ids.insert(&t.id) {
                return Err(Error::AlreadyExists {
                    kind: "task",
                    id: t.id.to_string(),
                });
            }
        }
        for t in batch {
            tasks.insert(t);
        }
        Ok(())
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        Ok(lock(&self.tasks).by_id.get(id).cloned())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let tasks = lock(&self.tasks);
        let live = |s: &TaskStatus| !s.is_terminal();
        if let (Some(worker), false, true) = (
            &filter.worker,
            filter.statuses.is_empty(),
            filter.statuses.iter().all(live),
        ) {
            let on = tasks.index.on_worker.get(worker).into_iter().flatten();
            return Ok(on
                .filter_map(|(_, id)| tasks.by_id.get(id))
                .filter(|t| filter.matches(t))
                .cloned()
                .collect());
        }
        let mut out: Vec<TaskRecord> = tasks
            .by_id
            .values()
            .filter(|t| filter.matches(t))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        let tasks = lock(&self.tasks);
        let keys = tasks.index.candidates(filter);
        let older = match after {
            Some(k) => keys.range(..(k.created_at, k.id.clone())),
            None => keys.range::<Key, _>(..),
        };
        Ok(older
            .rev()
            .filter_map(|(_, id)| tasks.by_id.get(id))
            .filter(|t| filter.matches(t))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome> {
        let mut guard = lock(&self.tasks);
        let tasks = &mut *guard;
        let task = tasks
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::not_found("task", id))?;
        if !change.admits(task) {
            return Ok(CasOutcome::Rejected {
                current: task.clone(),
            });
        }
        let before = task.clone();
        change.apply_to(task);
        tasks.index.track(&before, false);
        tasks.index.track(task, true);
        Ok(CasOutcome::Applied { before })
    }

    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        let mut results = lock(&self.results);
        if results.contains_key(&result.task_id) {
            return Ok(InsertOutcome::AlreadyPresent);
        }
        results.insert(result.task_id.clone(), result);
        Ok(InsertOutcome::Inserted)
    }

    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        Ok(lock(&self.results).get(id).cloned())
    }

    async fn count_tasks(&self) -> Result<StatusCounts> {
        Ok(lock(&self.tasks).index.counts)
    }

    async fn remove_finished(&self, before: Timestamp, limit: usize) -> Result<usize> {
        let mut tasks = lock(&self.tasks);
        let due: Vec<TaskId> = tasks
            .index
            .finished
            .iter()
            .take_while(|(at, _)| *at < before)
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        let mut results = lock(&self.results);
        for id in &due {
            results.remove(id);
            tasks.remove(id);
        }
        Ok(due.len())
    }
}

#[async_trait]
impl WorkerRegistry for MemoryStore {
    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        let mut workers = lock(&self.workers);
        let stored = match workers.get_mut(&worker.id) {
            Some(known) => {
                known.address = worker.address;
                known.capacity = worker.capacity;
                known.gpus = worker.gpus;
                known.allow_mounts = worker.allow_mounts;
                known.instance = worker.instance;
                known.clone()
            }
            None => {
                workers.insert(worker.id.clone(), worker.clone());
                worker
            }
        };
        Ok(stored)
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        Ok(lock(&self.workers).get(id).cloned())
    }

    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        let mut workers = lock(&self.workers);
        let known = workers
            .get_mut(id)
            .ok_or_else(|| Error::not_found("worker", id))?;
        known.drain = drain;
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(lock(&self.workers).values().cloned().collect())
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        lock(&self.workers)
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| Error::not_found("worker", id))
    }

    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        let mut workers = lock(&self.workers);
        let mut unknown = Vec::new();
        for beat in beats {
            match workers.get_mut(&beat.worker) {
                Some(w) if w.last_heartbeat.is_some_and(|last| last > beat.at) => {}
                Some(w) => {
                    w.last_heartbeat = Some(beat.at);
                    w.telemetry = Some(beat.telemetry.clone());
                }
                None if !unknown.contains(&beat.worker) => unknown.push(beat.worker.clone()),
                None => {}
            }
        }
        Ok(unknown)
    }
}
