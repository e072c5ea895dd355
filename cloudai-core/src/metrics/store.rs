//! A task store and worker registry that time every call.

use std::sync::Arc;

use async_trait::async_trait;

use super::{timed, Latencies};
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
}

#[async_trait]
impl<B: TaskStore + ?Sized> TaskStore for MeteredStore<B> {
    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        timed(&self.latencies, "insert_task", self.inner.insert_task(task)).await
    }

    async fn insert_tasks(&self, tasks: Vec<TaskRecord>) -> Result<()> {
        timed(
            &self.latencies,
            "insert_tasks",
            self.inner.insert_tasks(tasks),
        )
        .await
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        timed(&self.latencies, "get_task", self.inner.get_task(id)).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        timed(&self.latencies, "list_tasks", self.inner.list_tasks(filter)).await
    }

    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        timed(
            &self.latencies,
            "page_tasks",
            self.inner.page_tasks(filter, after, limit),
        )
        .await
    }

    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome> {
        timed(
            &self.latencies,
            "update_status",
            self.inner.update_status(id, change),
        )
        .await
    }

    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        timed(
            &self.latencies,
            "insert_result",
            self.inner.insert_result(result),
        )
        .await
    }

    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        timed(&self.latencies, "get_result", self.inner.get_result(id)).await
    }

    async fn count_tasks(&self) -> Result<StatusCounts> {
        timed(&self.latencies, "count_tasks", self.inner.count_tasks()).await
    }

    async fn remove_finished(&self, before: Timestamp, limit: usize) -> Result<usize> {
        timed(
            &self.latencies,
            "remove_finished",
            self.inner.remove_finished(before, limit),
        )
        .await
    }
}

#[async_trait]
impl<B: WorkerRegistry + ?Sized> WorkerRegistry for MeteredStore<B> {
    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        timed(
            &self.latencies,
            "upsert_worker",
            self.inner.upsert_worker(worker),
        )
        .await
    }

    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        timed(
            &self.latencies,
            "set_drain",
            self.inner.set_drain(id, drain),
        )
        .await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        timed(&self.latencies, "get_worker", self.inner.get_worker(id)).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        timed(&self.latencies, "list_workers", self.inner.list_workers()).await
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        timed(
            &self.latencies,
            "remove_worker",
            self.inner.remove_worker(id),
        )
        .await
    }

    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        timed(
            &self.latencies,
            "record_heartbeats",
            self.inner.record_heartbeats(beats),
        )
        .await
    }
}
