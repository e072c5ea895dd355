//! A master's own way to the shared store in a simulation (feature
//! `testing`): open, held (a paused process: its calls wait, and land when
//! it resumes) or cut (it cannot reach the store: its calls fail).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::memory::MemoryStore;
use crate::model::{
    Drain, Heartbeat, StatusCounts, TaskId, TaskRecord, TaskResult, Term, Timestamp, WorkerId,
    WorkerRecord,
};
use crate::store::{
    CasOutcome, InsertOutcome, LeaseRecord, LeaseStore, PageKey, RequestClaim, StatusChange,
    TaskFilter, TaskStore, WorkerRegistry,
};
use crate::{Error, Result};

/// What the gate does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passage {
    /// Calls go through.
    Open,
    /// Calls wait until the gate opens (or is cut).
    Held,
    /// Calls fail as unreachable.
    Cut,
}

/// A handle on a shared [`MemoryStore`] behind a gate; handles of other
/// terms ([`TaskStore::fenced`]) share the gate.
#[derive(Debug)]
pub struct StoreGate {
    store: MemoryStore,
    passage: Arc<watch::Sender<Passage>>,
}

impl StoreGate {
    /// An open gate to `store`.
    pub fn new(store: &MemoryStore) -> StoreGate {
        StoreGate {
            store: store.at_term(Term::ZERO),
            passage: Arc::new(watch::channel(Passage::Open).0),
        }
    }

    /// Opens, holds or cuts the way to the store.
    pub fn set(&self, passage: Passage) {
        self.passage.send_replace(passage);
    }

    /// How calls fare now.
    pub fn passage(&self) -> Passage {
        *self.passage.borrow()
    }

    async fn pass(&self) -> Result<()> {
        let mut rx = self.passage.subscribe();
        let passage = *rx
            .wait_for(|p| *p != Passage::Held)
            .await
            .map_err(|_| Error::Unavailable("store gate closed".into()))?;
        match passage {
            Passage::Cut => Err(Error::Unavailable("cut off from the store".into())),
            _ => Ok(()),
        }
    }

    fn at(&self, term: Term) -> StoreGate {
        StoreGate {
            store: self.store.at_term(term),
            passage: self.passage.clone(),
        }
    }
}

#[async_trait]
impl TaskStore for StoreGate {
    fn fenced(&self, term: Term) -> Arc<dyn TaskStore> {
        Arc::new(self.at(term))
    }
    async fn claim_request(&self, claim: RequestClaim) -> Result<Option<RequestClaim>> {
        self.pass().await?;
        self.store.claim_request(claim).await
    }
    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        self.pass().await?;
        self.store.insert_task(task).await
    }
    async fn insert_tasks(&self, tasks: Vec<TaskRecord>) -> Result<()> {
        self.pass().await?;
        self.store.insert_tasks(tasks).await
    }
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.pass().await?;
        self.store.get_task(id).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.pass().await?;
        self.store.list_tasks(filter).await
    }
    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.pass().await?;
        self.store.page_tasks(filter, after, limit).await
    }
    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome> {
        self.pass().await?;
        self.store.update_status(id, change).await
    }
    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        self.pass().await?;
        self.store.insert_result(result).await
    }
    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        self.pass().await?;
        self.store.get_result(id).await
    }
    async fn count_tasks(&self) -> Result<StatusCounts> {
        self.pass().await?;
        self.store.count_tasks().await
    }
    async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts> {
        self.pass().await?;
        self.store.count_matching(filter).await
    }
    async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<CasOutcome> {
        self.pass().await?;
        self.store.set_priority(id, priority).await
    }
    async fn remove_finished(
        &self,
        before: Timestamp,
        limit: usize,
        keep: &[TaskId],
    ) -> Result<usize> {
        self.pass().await?;
        self.store.remove_finished(before, limit, keep).await
    }
}

#[async_trait]
impl WorkerRegistry for StoreGate {
    fn fenced(&self, term: Term) -> Arc<dyn WorkerRegistry> {
        Arc::new(self.at(term))
    }
    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        self.pass().await?;
        self.store.upsert_worker(worker).await
    }
    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        self.pass().await?;
        self.store.set_drain(id, drain).await
    }
    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        self.pass().await?;
        self.store.get_worker(id).await
    }
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.pass().await?;
        self.store.list_workers().await
    }
    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        self.pass().await?;
        self.store.remove_worker(id).await
    }
    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        self.pass().await?;
        self.store.record_heartbeats(beats).await
    }
}

#[async_trait]
impl LeaseStore for StoreGate {
    async fn read_lease(&self) -> Result<Option<LeaseRecord>> {
        self.pass().await?;
        self.store.read_lease().await
    }
    async fn create_lease(&self, record: &LeaseRecord) -> Result<()> {
        self.pass().await?;
        self.store.create_lease(record).await
    }
    async fn swap_lease(&self, term: Term, version: u64, new: &LeaseRecord) -> Result<bool> {
        self.pass().await?;
        self.store.swap_lease(term, version, new).await
    }
    async fn raise_fence(&self, term: Term) -> Result<u64> {
        self.pass().await?;
        self.store.raise_fence(term).await
    }
    async fn adopt_pending(&self, term: Term, limit: usize) -> Result<Vec<TaskRecord>> {
        self.pass().await?;
        self.store.adopt_pending(term, limit).await
    }
}
