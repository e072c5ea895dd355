//! The network seams, one trait per direction:
//! [`MasterToWorker`] (how a master reaches its workers) and
//! [`WorkerToMaster`] (how a worker reaches its master). Errors are
//! classified for the caller: [`crate::Error::Unavailable`] (unreachable:
//! back off), [`crate::Error::Timeout`] (outcome unknown), or a definite
//! answer from the peer.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::model::RunningTask;
use crate::model::{
    Gpu, InstanceId, Labels, Resources, TaskResult, TaskSpec, Telemetry, Term, WorkerId,
    WorkerIdentity,
};
use crate::output::{Follow, OutputFrom};
use crate::Result;

/// Where a master reaches a worker, and whom it expects there: every call
/// names the worker, so one that now answers at that address refuses a
/// call meant for another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerEndpoint {
    /// The worker's id.
    pub id: WorkerId,
    /// Its instance, once it registered (unknown for a worker an operator
    /// named by address).
    pub instance: Option<InstanceId>,
    /// Its address (`host:port`).
    pub address: String,
}

/// Who the master is, sent when it (re)connects to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterInfo {
    /// The master's id.
    pub id: String,
    /// Where workers reach it.
    pub address: String,
    /// Its term (0: a master without a lease). A worker obeys no call of
    /// a term below the highest it has seen, and moves to a master of a
    /// higher one.
    #[serde(default)]
    pub term: Term,
}

/// A worker announcing itself to a master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The worker's id.
    pub worker: WorkerId,
    /// Its instance: a registration from another instance while this id's
    /// session is live is refused.
    pub instance: InstanceId,
    /// Where the master reaches it.
    pub address: String,
    /// What it offers.
    pub capacity: Resources,
    /// Its GPUs (`capacity.gpus` of them; empty: numbered from 0).
    pub gpus: Vec<Gpu>,
    /// Host directories under which its tasks may bind-mount.
    pub allow_mounts: Vec<String>,
    /// Its labels, which tasks' constraints must match.
    pub labels: Labels,
    /// Tasks it is running right now (empty on a fresh start).
    pub running: Vec<RunningTask>,
}

/// The master's answer to a [`Registration`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegistrationReply {
    /// Of the tasks the worker listed, those it must stop (cancelled, failed
    /// over, or unknown while it was away).
    pub stop: Vec<RunningTask>,
    /// How often to send heartbeats.
    pub heartbeat_interval: Duration,
    /// The master's id (for the logs: terms decide whom a worker obeys).
    pub master_id: String,
    /// The master's term: the worker obeys no call of a lower one from now on.
    #[serde(default)]
    pub term: Term,
    /// Silence after which the master declares a worker lost (zero: not
    /// said, an older master): the worker stops its runs before that (see
    /// [`crate::fence`]).
    pub lost_after: Duration,
}

/// The master's answer to a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The master has no session with this instance (it restarted without
    /// a persistent store, or another instance registered since): register
    /// again.
    pub register_again: bool,
}

/// Calls a master makes to a worker.
#[async_trait]
pub trait MasterToWorker: Send + Sync + std::fmt::Debug {
    /// Asks the worker to register with this master (when it reconnects to an inactive worker, or is told of a new one).
    async fn master_register(&self, to: &WorkerEndpoint, master: &MasterInfo) -> Result<()>;

    /// Hands the worker assignment `run` of a task, with the indices of
    /// the worker's GPUs it gets. Repeats are harmless.
    async fn assign(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        spec: &TaskSpec,
        gpus: &[u32],
    ) -> Result<()>;

    /// Asks the worker to stop assignment `run`, SIGKILL after `grace`.
    /// Stopping a run the worker does not have succeeds (and keeps that run
    /// from starting if its assignment arrives late).
    async fn cancel(&self, to: &WorkerEndpoint, run: &RunningTask, grace: Duration) -> Result<()>;

    /// The output of run `run` from `from`; following, until its end (see
    /// [`Worker::follow_output`](crate::worker::Worker::follow_output)).
    async fn follow_output(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        from: OutputFrom,
        keep_following: bool,
    ) -> Result<Follow>;

    /// Who answers at `to.address` (the probe that decides whether a
    /// worker's session is still live). Names nobody, so nobody refuses it.
    async fn identify(&self, to: &WorkerEndpoint) -> Result<WorkerIdentity>;

    /// The same transport, its calls carrying `term`: a worker that has
    /// seen a later term refuses them. A master signs every call with
    /// its own term this way.
    fn fenced(&self, term: Term) -> std::sync::Arc<dyn MasterToWorker>;
}

/// Calls a worker makes to its master.
#[async_trait]
pub trait WorkerToMaster: Send + Sync + std::fmt::Debug {
    /// Registers (or re-registers) the worker.
    async fn register(&self, registration: &Registration) -> Result<RegistrationReply>;

    /// Sends a heartbeat with telemetry.
    async fn heartbeat(
        &self,
        worker: &WorkerIdentity,
        telemetry: &Telemetry,
    ) -> Result<HeartbeatReply>;

    /// Reports how a task ended. Safe to repeat: the master keeps the first.
    async fn report(&self, result: &TaskResult) -> Result<()>;

    /// Says the worker is shutting down: the master places nothing more on
    /// it from now on.
    async fn leave(&self, worker: &WorkerIdentity) -> Result<()>;

    /// Sends every later call to the master at `address`: a master of a
    /// higher term asked this worker to register with it.
    fn follow(&self, address: &str);
}
