//! The in-memory store runs the shared conformance suites.

use std::sync::Arc;

use cloudai_core::memory::MemoryStore;
use cloudai_core::store::{TaskStore, WorkerRegistry};
use cloudai_core::testing::lease::{self, LeaseBackend};
use cloudai_core::testing::{task_store, worker_registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_task_store_conforms() {
    task_store::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn TaskStore> }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_worker_registry_conforms() {
    worker_registry::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn WorkerRegistry> })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_lease_store_conforms() {
    lease::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn LeaseBackend> }).await;
}
