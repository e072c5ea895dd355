//! The execution seam: something that runs a task's container (or process).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use crate::model::ExitStatus;
use crate::model::{ContainerOption, ContainerOptions, Gpu, Resources, Timestamp, ValidationError};
pub use crate::output::{Follow, OutputChunk, OutputStream};
use crate::Result;

/// Label holding the task id on every container CloudAI-rs starts.
pub const LABEL_TASK: &str = "cloudai.task_id";
/// Label holding the attempt number, so a restarted worker can adopt the
/// run.
pub const LABEL_ATTEMPT: &str = "cloudai.attempt";
/// Label holding the worker id on every container CloudAI-rs starts, used to
/// find orphans after a crash.
pub const LABEL_WORKER: &str = "cloudai.worker_id";
/// Label holding a run's time limit in milliseconds, so a restarted
/// worker keeps enforcing it (from the start [`ContainerInfo`] reports).
pub const LABEL_TIME_LIMIT: &str = "cloudai.time_limit_ms";
/// Label holding a run's stop grace in milliseconds.
pub const LABEL_GRACE: &str = "cloudai.grace_ms";

/// A runtime's handle to one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerId(pub String);

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// A name unique on the worker (runtimes may use it as the container name).
    pub name: String,
    /// Image to run.
    pub image: String,
    /// Program and arguments; empty means the image's default.
    pub command: Vec<String>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Limits to enforce where the runtime can.
    pub limits: Resources,
    /// The worker's GPUs the run gets (`limits.gpus` of them): the runtime
    /// makes exactly these visible to it, and no others.
    pub gpus: Vec<Gpu>,
    /// Working directory, mounts, user and `/dev/shm`: each applied, or
    /// the start refused (see [`ContainerRuntime::unsupported`]).
    pub options: ContainerOptions,
    /// Labels to attach (see [`LABEL_TASK`], [`LABEL_WORKER`]).
    pub labels: BTreeMap<String, String>,
    /// Longest the run may go, from its start: a runtime that keeps runs
    /// without their worker stops it then (with `grace`) even while its
    /// worker is away. `None`: no limit.
    pub time_limit: Option<Duration>,
    /// SIGTERM→SIGKILL grace for the stops the runtime makes itself.
    pub grace: Duration,
    /// How long the run may go on without its worker renewing the lease
    /// (see [`ContainerRuntime::renew_lease`]); `None`: the runtime's own
    /// default.
    pub lease: Option<Duration>,
}

/// A container found by [`ContainerRuntime::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Its id.
    pub id: ContainerId,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Whether it is still running.
    pub running: bool,
    /// When it started, if the runtime knows.
    pub started_at: Option<Timestamp>,
}

/// Runs containers. Every call is idempotent where it can be: stopping or
/// removing a container that is already gone succeeds.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + fmt::Debug {
    /// The runtime's name (`"process"`, `"docker"`, ...).
    fn name(&self) -> &'static str;

    /// The options set in `options` that this runtime cannot apply. By
    /// default every one: a runtime names those it does apply.
    fn unsupported(&self, options: &ContainerOptions) -> Vec<ContainerOption> {
        options.set()
    }

    /// Creates and starts a container. A spec setting an option the
    /// runtime cannot apply is refused ([`refuse_unsupported`]).
    async fn start(&self, spec: &ContainerSpec) -> Result<ContainerId>;

    /// Waits until the container exits.
    async fn wait(&self, id: &ContainerId) -> Result<ExitStatus>;

    /// Everything the container writes, from its start (offset 0), each
    /// chunk marked stdout or stderr; the channel closes once the
    /// container exited and its output was drained. Each call starts
    /// again at the start of what the runtime still holds (a chunk past the
    /// offset expected says what it no longer holds).
    async fn output(&self, id: &ContainerId) -> Result<Follow>;

    /// SIGTERM, then SIGKILL if it still runs after `grace`.
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()>;

    /// Removes the container and what the runtime keeps for it.
    async fn remove(&self, id: &ContainerId) -> Result<()>;

    /// Containers carrying label `key=value`.
    async fn list(&self, key: &str, value: &str) -> Result<Vec<ContainerInfo>>;

    /// The worker still stands for its runs for `lease` from now: a
    /// runtime that keeps runs going without their worker (a supervisor
    /// per run, a watchdog) stops every run whose lease runs out, so a
    /// worker that died or was cut off from its master leaves nothing
    /// running once the master may place its tasks elsewhere. A runtime
    /// whose runs die with their worker ignores it.
    async fn renew_lease(&self, lease: Duration) -> Result<()> {
        let _ = lease;
        Ok(())
    }
}

/// Refuses `options` if `runtime` cannot apply one of them, naming each,
/// so that no option is silently ignored.
pub fn refuse_unsupported(
    runtime: &(impl ContainerRuntime + ?Sized),
    options: &ContainerOptions,
) -> Result<()> {
    let missing = runtime.unsupported(options);
    if missing.is_empty() {
        return Ok(());
    }
    let flags: Vec<&str> = missing.iter().map(|o| o.flag()).collect();
    Err(ValidationError::Invalid {
        field: "container options",
        reason: format!(
            "the {} runtime cannot apply {}",
            runtime.name(),
            flags.join(", ")
        ),
    }
    .into())
}
