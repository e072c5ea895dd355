//! The embedded default store: [`TaskStore`], [`WorkerRegistry`] and
//! [`LeaseStore`] in memory, with the same compare-and-set,
//! insert-if-absent and fencing semantics as every other backend (it runs
//! the same conformance suites).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

use async_trait::async_trait;

use crate::model::{
    ArrayId, Drain, Heartbeat, RequestId, StatusCounts, TaskId, TaskRecord, TaskResult, TaskStatus,
    Term, Timestamp, WorkerId, WorkerRecord,
};
use crate::store::{
    CasOutcome, InsertOutcome, LeaseRecord, LeaseStore, PageKey, RequestClaim, StatusChange,
    TaskFilter, TaskStore, WorkerRegistry,
};
use crate::{Error, Result};

/// Tasks, results, workers and the lease in memory. Cheap to create;
/// share it as `Arc<MemoryStore>`. Locks are never held across an
/// `.await`. Handles of other terms ([`MemoryStore::at_term`]) share the
/// same data.
#[derive(Debug, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
    /// The term this handle's writes carry.
    term: Term,
}

#[derive(Debug, Default)]
struct Shared {
    tasks: Mutex<Tasks>,
    results: Mutex<HashMap<TaskId, TaskResult>>,
    workers: Mutex<Workers>,
    requests: Mutex<HashMap<RequestId, RequestClaim>>,
    lease: Mutex<Option<LeaseRecord>>,
    #[cfg(feature = "testing")]
    writes: Mutex<Option<Vec<AppliedWrite>>>,
}

/// One write the store applied, with the term it carried and the fence
/// the document had (feature `testing`): a simulation checks that no
/// write landed on a document fenced above its term.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedWrite {
    /// The task or worker written.
    pub document: String,
    /// The writer's term.
    pub term: Term,
    /// The document's fence before the write (`None`: it had none).
    pub fence: Option<Term>,
}

/// The tasks, with what is kept beside them for cheap reads.
#[derive(Debug, Default)]
struct Tasks {
    by_id: HashMap<TaskId, TaskRecord>,
    /// Each task's fence (absent: written by nothing that fences).
    fences: HashMap<TaskId, Term>,
    index: Index,
}

/// The workers, with their fences.
#[derive(Debug, Default)]
struct Workers {
    by_id: BTreeMap<WorkerId, WorkerRecord>,
    fences: HashMap<WorkerId, Term>,
}

/// Whether a write of term `writer` may land on a document fenced at
/// `fence`.
fn admit(fence: Option<Term>, writer: Term) -> Result<()> {
    match fence {
        Some(fence) if fence > writer => Err(Error::Fenced { writer, fence }),
        _ => Ok(()),
    }
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
    /// Tasks by name, by creation.
    by_name: HashMap<String, BTreeSet<Key>>,
    /// Tasks by label (key and value), by creation.
    by_label: HashMap<(String, String), BTreeSet<Key>>,
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
        if let Some(n) = &task.spec.name {
            file(&mut self.by_name, n.clone(), key.clone(), enters);
        }
        for (k, v) in &task.spec.labels {
            file(
                &mut self.by_label,
                (k.clone(), v.clone()),
                key.clone(),
                enters,
            );
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
        if let Some(n) = &filter.name {
            return self.by_name.get(n).unwrap_or(&NONE);
        }
        if let Some(label) = filter.labels.first() {
            return self.by_label.get(label).unwrap_or(&NONE);
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
        self.fences.remove(id);
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
    /// An empty store (its writes carry term 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on the same data whose writes carry `term`.
    pub fn at_term(&self, term: Term) -> MemoryStore {
        MemoryStore {
            shared: self.shared.clone(),
            term,
        }
    }

    /// Notes an applied write (feature `testing`, once
    /// [`MemoryStore::log_writes`] turned the log on).
    fn applied(&self, _document: &str, _fence: Option<Term>) {
        #[cfg(feature = "testing")]
        if let Some(log) = lock(&self.shared.writes).as_mut() {
            log.push(AppliedWrite {
                document: _document.to_owned(),
                term: self.term,
                fence: _fence,
            });
        }
    }

    /// Starts logging every applied task and worker write (feature
    /// `testing`).
    #[cfg(feature = "testing")]
    pub fn log_writes(&self) {
        lock(&self.shared.writes).get_or_insert_with(Vec::new);
    }

    /// The writes applied since the last call (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn take_writes(&self) -> Vec<AppliedWrite> {
        lock(&self.shared.writes)
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

#[async_trait]
impl TaskStore for MemoryStore {
    fn fenced(&self, term: Term) -> Arc<dyn TaskStore> {
        Arc::new(self.at_term(term))
    }

    async fn claim_request(&self, claim: RequestClaim) -> Result<Option<RequestClaim>> {
        let mut requests = lock(&self.shared.requests);
        if let Some(held) = requests.get(&claim.request) {
            return Ok(Some(held.clone()));
        }
        requests.insert(claim.request.clone(), claim);
        Ok(None)
    }

    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        let mut tasks = lock(&self.shared.tasks);
        tasks.taken(&task.id)?;
        tasks.fences.insert(task.id.clone(), self.term);
        self.applied(task.id.as_str(), None);
        tasks.insert(task);
        Ok(())
    }

    async fn insert_tasks(&self, batch: Vec<TaskRecord>) -> Result<()> {
        let mut tasks = lock(&self.shared.tasks);
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
            tasks.fences.insert(t.id.clone(), self.term);
            self.applied(t.id.as_str(), None);
            tasks.insert(t);
        }
        Ok(())
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        Ok(lock(&self.shared.tasks).by_id.get(id).cloned())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let tasks = lock(&self.shared.tasks);
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
        Ok(tasks
            .index
            .candidates(filter)
            .iter()
            .filter_map(|(_, id)| tasks.by_id.get(id))
            .filter(|t| filter.matches(t))
            .cloned()
            .collect())
    }

    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        let tasks = lock(&self.shared.tasks);
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
        let mut guard = lock(&self.shared.tasks);
        let tasks = &mut *guard;
        let task = tasks
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::not_found("task", id))?;
        let fence = tasks.fences.get(id).copied();
        admit(fence, self.term)?;
        if !change.admits(task) {
            return Ok(CasOutcome::Rejected {
                current: task.clone(),
            });
        }
        let before = task.clone();
        change.apply_to(task);
        if fence != Some(self.term) {
            tasks.fences.insert(id.clone(), self.term);
        }
        self.applied(id.as_str(), fence);
        tasks.index.track(&before, false);
        tasks.index.track(task, true);
        Ok(CasOutcome::Applied { before })
    }

    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        let mut results = lock(&self.shared.results);
        if results.contains_key(&result.task_id) {
            return Ok(InsertOutcome::AlreadyPresent);
        }
        results.insert(result.task_id.clone(), result);
        Ok(InsertOutcome::Inserted)
    }

    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        Ok(lock(&self.shared.results).get(id).cloned())
    }

    async fn count_tasks(&self) -> Result<StatusCounts> {
        Ok(lock(&self.shared.tasks).index.counts)
    }

    async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts> {
        let filter = TaskFilter {
            statuses: Vec::new(),
            ..filter.clone()
        };
        let tasks = lock(&self.shared.tasks);
        let mut counts = StatusCounts::default();
        for t in tasks
            .index
            .candidates(&filter)
            .iter()
            .filter_map(|(_, id)| tasks.by_id.get(id))
            .filter(|t| filter.matches(t))
        {
            counts.add(t.status, 1);
        }
        Ok(counts)
    }

    async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<CasOutcome> {
        let mut guard = lock(&self.shared.tasks);
        let tasks = &mut *guard;
        let task = tasks
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::not_found("task", id))?;
        let fence = tasks.fences.get(id).copied();
        admit(fence, self.term)?;
        if task.status != TaskStatus::Pending {
            return Ok(CasOutcome::Rejected {
                current: task.clone(),
            });
        }
        let before = task.clone();
        task.spec.priority = priority;
        tasks.fences.insert(id.clone(), self.term);
        self.applied(id.as_str(), fence);
        Ok(CasOutcome::Applied { before })
    }

    async fn remove_finished(
        &self,
        before: Timestamp,
        limit: usize,
        keep: &[TaskId],
    ) -> Result<usize> {
        let mut tasks = lock(&self.shared.tasks);
        let keep: HashSet<&TaskId> = keep.iter().collect();
        let due: Vec<TaskId> = tasks
            .index
            .finished
            .iter()
            .take_while(|(at, _)| *at < before)
            .filter(|(_, id)| !keep.contains(id))
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect();
        let mut results = lock(&self.shared.results);
        for id in &due {
            results.remove(id);
            tasks.remove(id);
        }
        lock(&self.shared.requests).retain(|_, claim| claim.at >= before);
        Ok(due.len())
    }
}

#[async_trait]
impl WorkerRegistry for MemoryStore {
    fn fenced(&self, term: Term) -> Arc<dyn WorkerRegistry> {
        Arc::new(self.at_term(term))
    }

    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        let mut guard = lock(&self.shared.workers);
        let workers = &mut *guard;
        let fence = workers.fences.get(&worker.id).copied();
        let stored = match workers.by_id.get_mut(&worker.id) {
            Some(known) => {
                admit(fence, self.term)?;
                known.address = worker.address;
                known.capacity = worker.capacity;
                known.gpus = worker.gpus;
                known.allow_mounts = worker.allow_mounts;
                known.labels = worker.labels;
                known.instance = worker.instance;
                known.clone()
            }
            None => {
                workers.by_id.insert(worker.id.clone(), worker.clone());
                worker
            }
        };
        workers.fences.insert(stored.id.clone(), self.term);
        self.applied(stored.id.as_str(), fence);
        Ok(stored)
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        Ok(lock(&self.shared.workers).by_id.get(id).cloned())
    }

    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        let mut guard = lock(&self.shared.workers);
        let workers = &mut *guard;
        let known = workers
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::not_found("worker", id))?;
        let fence = workers.fences.get(id).copied();
        admit(fence, self.term)?;
        known.drain = drain;
        workers.fences.insert(id.clone(), self.term);
        self.applied(id.as_str(), fence);
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        Ok(lock(&self.shared.workers).by_id.values().cloned().collect())
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        let mut workers = lock(&self.shared.workers);
        if !workers.by_id.contains_key(id) {
            return Err(Error::not_found("worker", id));
        }
        let fence = workers.fences.get(id).copied();
        admit(fence, self.term)?;
        workers.by_id.remove(id);
        workers.fences.remove(id);
        self.applied(id.as_str(), fence);
        Ok(())
    }

    /// All or nothing: a batch that reaches a worker fenced above this
    /// handle's term changes no worker.
    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        let mut guard = lock(&self.shared.workers);
        let workers = &mut *guard;
        for beat in beats {
            admit(workers.fences.get(&beat.worker).copied(), self.term)?;
        }
        let mut unknown = Vec::new();
        for beat in beats {
            match workers.by_id.get_mut(&beat.worker) {
                Some(w) if w.last_heartbeat.is_some_and(|last| last > beat.at) => {}
                Some(w) => {
                    w.last_heartbeat = Some(beat.at);
                    w.telemetry = Some(beat.telemetry.clone());
                    let fence = workers.fences.get(&beat.worker).copied();
                    if fence != Some(self.term) {
                        workers.fences.insert(beat.worker.clone(), self.term);
                    }
                    self.applied(beat.worker.as_str(), fence);
                }
                None if !unknown.contains(&beat.worker) => unknown.push(beat.worker.clone()),
                None => {}
            }
        }
        Ok(unknown)
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn read_lease(&self) -> Result<Option<LeaseRecord>> {
        Ok(lock(&self.shared.lease).clone())
    }

    async fn create_lease(&self, record: &LeaseRecord) -> Result<()> {
        let mut lease = lock(&self.shared.lease);
        if lease.is_some() {
            return Err(Error::AlreadyExists {
                kind: "lease",
                id: "master".into(),
            });
        }
        *lease = Some(record.clone());
        Ok(())
    }

    async fn swap_lease(&self, term: Term, version: u64, new: &LeaseRecord) -> Result<bool> {
        let mut lease = lock(&self.shared.lease);
        match lease.as_mut() {
            Some(held) if held.term == term && held.version == version => {
                *held = new.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn raise_fence(&self, term: Term) -> Result<u64> {
        let mut raised = 0;
        {
            let mut guard = lock(&self.shared.tasks);
            let tasks = &mut *guard;
            for t in tasks.by_id.values().filter(|t| !t.status.is_terminal()) {
                let fence = tasks.fences.entry(t.id.clone()).or_default();
                *fence = (*fence).max(term);
                raised += 1;
            }
        }
        let mut guard = lock(&self.shared.workers);
        let workers = &mut *guard;
        for id in workers.by_id.keys() {
            let fence = workers.fences.entry(id.clone()).or_default();
            *fence = (*fence).max(term);
            raised += 1;
        }
        Ok(raised)
    }

    async fn adopt_pending(&self, term: Term, limit: usize) -> Result<Vec<TaskRecord>> {
        let mut guard = lock(&self.shared.tasks);
        let tasks = &mut *guard;
        let pending = tasks.index.by_status.get(&TaskStatus::Pending);
        let below: Vec<TaskId> = pending
            .into_iter()
            .flatten()
            .map(|(_, id)| id)
            .filter(|id| tasks.fences.get(*id).is_some_and(|f| *f < term))
            .take(limit)
            .cloned()
            .collect();
        for id in &below {
            tasks.fences.insert(id.clone(), term);
        }
        Ok(below
            .iter()
            .filter_map(|id| tasks.by_id.get(id).cloned())
            .collect())
    }
}
