//! A task store and worker registry that time every call.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{observe, Latencies};
use crate::model::{
    Drain, Heartbeat, StatusCounts, TaskId, TaskRecord, TaskResult, Timestamp, WorkerId,
    WorkerRecord,
};
use crate::store::{
    CasOutcome, InsertOutcome, PageKey, StatusChange, TaskFilter, TaskStore, WorkerRegistry,
};
use crate::Result;

/// Wraps a backend, recording each call's duration by operation; the
/// master wraps its store and registry in one, so any backend is measured.
#[derive(Debug)]
pub struct MeteredStore<B: ?Sized> {
    inner: Arc<B>,
    latencies: Latencies,
}

impl<B: ?Sized> MeteredStore<B> {
    /// Measures `inner` into `latencies`.
    pub(crate) fn new(inner: Arc<B>, latencies: Latencies) -> Self {
        MeteredStore { inner, latencies }
    }

    async fn timed<T>(&self, operation: &'static str, call: impl Future<Output = T>) -> T {
        let began = Instant::now();
        let out = call.await;
        observe(&self.latencies, operation, began.elapsed());
        out
    }
}

#[async_trait]
impl<B: TaskStore + ?Sized> TaskStore for MeteredStore<B> {
    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        self.timed("insert_task", self.inner.insert_task(task))
            .await
    }

    async fn insert_tasks(&self, tasks: Vec<TaskRecord>) -> Result<()> {
        self.timed("insert_tasks", self.inner.insert_tasks(tasks))
            .await
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.timed("get_task", self.inner.get_task(id)).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.timed("list_tasks", self.inner.list_tasks(filter))
            .await
    }

    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.timed("page_tasks", self.inner.page_tasks(filter, after, limit))
            .await
    }

    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome> {
        self.timed("update_status", self.inner.update_status(id, change))
            .await
    }

    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        self.timed("insert_result", self.inner.insert_result(result))
            .await
    }

    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        self.timed("get_result", self.inner.get_result(id)).await
    }

    async fn count_tasks(&self) -> Result<StatusCounts> {
        self.timed("count_tasks", self.inner.count_tasks()).await
    }

    async fn remove_finished(&self, before: Timestamp, limit: usize) -> Result<usize> {
        self.timed("remove_finished", self.inner.remove_finished(before, limit))
            .await
    }
}

#[async_trait]
impl<B: WorkerRegistry + ?Sized> WorkerRegistry for MeteredStore<B> {
    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        self.timed("upsert_worker", self.inner.upsert_worker(worker))
            .await
    }

    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        self.timed("set_drain", self.inner.set_drain(id, drain))
            .await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        self.timed("get_worker", self.inner.get_worker(id)).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.timed("list_workers", self.inner.list_workers()).await
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        self.timed("remove_worker", self.inner.remove_worker(id))
            .await
    }

    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        self.timed("record_heartbeats", self.inner.record_heartbeats(beats))
            .await
    }
}
