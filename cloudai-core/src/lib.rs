//! # cloudai-core
//!
//! The core of CloudAI-rs, a scheduler for container tasks across a cluster:
//! the domain [`model`], pure state machines that hold every rule, the
//! traits that backends implement, and an in-memory store.
//!
//! The state machines do no I/O and never read a clock; callers pass `now`.
//!
//! | module | rule it holds |
//! |---|---|
//! | [`lifecycle`] | task status transitions and their precedence (a cancel beats later reports; terminal states absorb; a task is placed again only once its previous attempt is known to have ended) |
//! | [`attempts`] | after an attempt ends: run again (after how long) or end, within the task's retry budgets |
//! | [`results`] | at most one result per task, the first wins |
//! | [`ledger`] | a worker's allocation is derived from its running tasks; reconciliation |
//! | [`liveness`] | heartbeat deadlines: active, inactive, lost |
//! | [`fence`] | the timing rule: a worker cut off from its master stops its runs before it can be declared lost |
//! | [`placement`] | which active worker with room gets a task |
//! | [`backoff`] | reconnection retry schedule with jitter |
//! | [`events`] | the numbered event stream, resumable from a cursor within its buffer |
//!
//! The seams: [`store::TaskStore`], [`store::WorkerRegistry`],
//! [`runtime::ContainerRuntime`], [`transport::MasterToWorker`] and
//! [`transport::WorkerToMaster`]. With the `testing` feature, the
//! `testing` module holds the conformance suites every implementation runs.
//!
//! ```
//! use cloudai_core::lifecycle::{decide, Decision, Refusal, TaskEvent};
//! use cloudai_core::model::*;
//!
//! let spec = TaskSpec::new("busybox", vec!["true".into()], Resources::new(1.0, 0.5, 0.0, 0)?);
//! let mut task = TaskRecord::new(TaskId::new("t1")?, spec, Timestamp::ZERO);
//! task.status = TaskStatus::Cancelled;
//! task.worker = Some(WorkerId::new("w1")?);
//! task.attempt = 1;
//!
//! // A late report never overwrites a cancel.
//! let late = TaskEvent::report(WorkerId::new("w1")?, 1, EndCause::Exited, None);
//! assert_eq!(
//!     decide(Some(&task), &late, Timestamp::ZERO),
//!     Decision::Refuse(Refusal::AlreadyFinal(TaskStatus::Cancelled))
//! );
//! # Ok::<(), ValidationError>(())
//! ```

pub mod apply;
pub mod attempts;
pub mod backoff;
pub mod clock;
mod error;
pub mod events;
pub mod fence;
pub mod host;
pub mod lease;
pub mod ledger;
pub mod lifecycle;
pub mod liveness;
pub mod master;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod output;
pub mod placement;
pub mod process;
pub mod results;
pub mod rng;
pub mod runtime;
pub mod store;
mod sync;
pub mod transport;
pub mod worker;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::{BoxError, Error, Result};
