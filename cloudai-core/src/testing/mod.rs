//! Conformance suites for backend implementations (feature `testing`).
//!
//! Each suite is a set of public `async fn` cases plus a `run_all` that runs
//! them all, each on a fresh instance from the caller's builder, the way
//! openraft's `Suite::test_all` does. A backend's own tests call `run_all`
//! against the real component:
//!
//! ```
//! use std::sync::Arc;
//! use cloudai_core::memory::MemoryStore;
//! use cloudai_core::store::TaskStore;
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! cloudai_core::testing::task_store::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn TaskStore> }).await;
//! # });
//! ```
//!
//! Cases panic with a message naming the broken rule.

pub mod gate;
pub mod lease;
pub mod runtime;
pub mod sim;
pub mod task_store;
pub mod worker_registry;

use crate::model::{Resources, TaskId, TaskRecord, TaskSpec, Timestamp, WorkerId};

/// A task id for tests.
pub fn task_id(s: &str) -> TaskId {
    TaskId::new(s).expect("test ids are valid")
}

/// A worker id for tests.
pub fn worker_id(s: &str) -> WorkerId {
    WorkerId::new(s).expect("test ids are valid")
}

/// A pending task asking for one core and 0.5 GB, created at `created_ms`.
pub fn pending_task(id: &str, created_ms: u64) -> TaskRecord {
    let spec = TaskSpec::new(
        "busybox:latest",
        vec!["sleep".into(), "1".into()],
        Resources::new(1.0, 0.5, 0.0, 0).expect("valid"),
    );
    TaskRecord::new(task_id(id), spec, Timestamp::from_millis(created_ms))
}
