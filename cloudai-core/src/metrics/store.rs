//! A task store and worker registry that time every call and notice a
//! fenced write.

use std::sync::Arc;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use super::{timed, Latencies};
use crate::lease::Tenure;
use crate::model::{
    Drain, Heartbeat, StatusCounts, TaskId, TaskRecord, TaskResult, Term, Timestamp, WorkerId,
    WorkerRecord,
};
use crate::store::{
    CasOutcome, InsertOutcome, PageKey, RequestClaim, StatusChange, TaskFilter, TaskStore,
    WorkerRegistry,
};
use crate::{Error, Result};

/// Counts fenced writes and raises a flag at the first: whoever holds the
/// receiver (the master) learns it was deposed, whichever call met it.
#[derive(Debug, Clone)]
pub(crate) struct FenceAlarm {
    count: Counter,
    raised: Arc<watch::Sender<bool>>,
}

impl FenceAlarm {
    pub(crate) fn new(count: Counter) -> Self {
        FenceAlarm {
            count,
            raised: Arc::new(watch::channel(false).0),
        }
    }

    /// Whether a write was fenced, now and later.
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.raised.subscribe()
    }

    fn check<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(Error::Fenced { writer, fence }) = &r {
            self.count.inc();
            self.raised.send_replace(true);
            tracing::warn!(%writer, %fence, "a store write was fenced: another master took over");
        }
        r
    }
}

/// Wraps a backend, recording each call's duration by operation; the
/// master wraps its store and registry in one, so any backend is measured.
/// It also keeps the master's writes within its tenure: none is sent once
/// the master no longer acts, and a fenced one raises the alarm.
#[derive(Debug)]
pub struct MeteredStore<B: ?Sized> {
    inner: Arc<B>,
    latencies: Latencies,
    alarm: FenceAlarm,
    tenure: Tenure,
}

impl<B: ?Sized> MeteredStore<B> {
    /// Measures `inner` into `latencies`, sending writes only within
    /// `tenure` and raising `alarm` on a fenced one.
    pub(crate) fn new(
        inner: Arc<B>,
        latencies: Latencies,
        alarm: FenceAlarm,
        tenure: Tenure,
    ) -> Self {
        MeteredStore {
            inner,
            latencies,
            alarm,
            tenure,
        }
    }

    /// [`MeteredStore::call`] for a write: refused unsent outside the
    /// tenure, or once a write was fenced.
    async fn write<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        if *self.alarm.raised.borrow() || !self.tenure.acting() {
            return Err(Error::Unavailable(format!(
                "this master no longer leads (its term {} ended)",
                self.tenure.term()
            )));
        }
        self.call(operation, call).await
    }

    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.alarm
            .check(timed(&self.latencies, operation, call).await)
    }
}

#[async_trait]
impl<B: TaskStore + ?Sized> TaskStore for MeteredStore<B> {
    fn fenced(&self, term: Term) -> Arc<dyn TaskStore> {
        Arc::new(MeteredStore::new(
            self.inner.fenced(term),
            self.latencies.clone(),
            self.alarm.clone(),
            self.tenure.clone(),
        ))
    }

    async fn claim_request(&self, claim: RequestClaim) -> Result<Option<RequestClaim>> {
        self.write("claim_request", self.inner.claim_request(claim))
            .await
    }

    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        self.write("insert_task", self.inner.insert_task(task))
            .await
    }

    async fn insert_tasks(&self, tasks: Vec<TaskRecord>) -> Result<()> {
        self.write("insert_tasks", self.inner.insert_tasks(tasks))
            .await
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.call("get_task", self.inner.get_task(id)).await
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.call("list_tasks", self.inner.list_tasks(filter)).await
    }

    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.call("page_tasks", self.inner.page_tasks(filter, after, limit))
            .await
    }

    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome> {
        self.write("update_status", self.inner.update_status(id, change))
            .await
    }

    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        self.write("insert_result", self.inner.insert_result(result))
            .await
    }

    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        self.call("get_result", self.inner.get_result(id)).await
    }

    async fn count_tasks(&self) -> Result<StatusCounts> {
        self.call("count_tasks", self.inner.count_tasks()).await
    }

    async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts> {
        self.call("count_matching", self.inner.count_matching(filter))
            .await
    }

    async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<CasOutcome> {
        self.write("set_priority", self.inner.set_priority(id, priority))
            .await
    }

    async fn remove_finished(
        &self,
        before: Timestamp,
        limit: usize,
        keep: &[TaskId],
    ) -> Result<usize> {
        self.write(
            "remove_finished",
            self.inner.remove_finished(before, limit, keep),
        )
        .await
    }
}

#[async_trait]
impl<B: WorkerRegistry + ?Sized> WorkerRegistry for MeteredStore<B> {
    fn fenced(&self, term: Term) -> Arc<dyn WorkerRegistry> {
        Arc::new(MeteredStore::new(
            self.inner.fenced(term),
            self.latencies.clone(),
            self.alarm.clone(),
            self.tenure.clone(),
        ))
    }

    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        self.write("upsert_worker", self.inner.upsert_worker(worker))
            .await
    }

    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        self.write("set_drain", self.inner.set_drain(id, drain))
            .await
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        self.call("get_worker", self.inner.get_worker(id)).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.call("list_workers", self.inner.list_workers()).await
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        self.write("remove_worker", self.inner.remove_worker(id))
            .await
    }

    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        self.write("record_heartbeats", self.inner.record_heartbeats(beats))
            .await
    }
}
