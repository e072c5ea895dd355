//! The worker agent, generic over [`ContainerRuntime`] and [`WorkerToMaster`].
//!
//! It registers with its master (listing the runs it still has), sends
//! heartbeats with telemetry, runs and stops tasks through the runtime, and
//! reports each run's result until the master acknowledges it. On shutdown
//! it reports every running task as failed within a bound and stops their
//! containers, whether or not the master answers.
//!
//! | module | responsibility | state it owns |
//! |---|---|---|
//! | `supervise` | assignments; starting, following and stopping runs; adoption | `runs` (the table in `runs`) |
//! | `output` | each run's output kept by offset, handed to followers | `ended` (in `ended_outputs`) |
//! | `outbox` | results kept until the master acknowledges them | `outbox` |
//! | `session` | registration, heartbeats, which master to obey | `session` |
//! | `shutdown` | the bounded shutdown | `closing` |
//!
//! Each piece of state sits behind its own lock, and no code holds two of
//! them at once.

mod ended_outputs;
mod outbox;
mod output;
mod runs;
mod session;
mod shutdown;
mod supervise;
mod telemetry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::metrics::{MeteredRuntime, WorkerMetrics};
use crate::model::{
    Gpu, InstanceId, Labels, Resources, RunningTask, Term, WorkerId, WorkerIdentity,
};
use crate::rng::SplitMix64;
use crate::runtime::ContainerRuntime;
use crate::sync::lock;
use crate::transport::WorkerToMaster;
use crate::{Error, Result};

pub use shutdown::ShutdownSummary;

/// The message every run carries when its worker shuts down under it.
pub const SHUTDOWN_MESSAGE: &str = "worker was terminated while task was running";

/// Worker settings, with the original system's values as defaults.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's id.
    pub id: WorkerId,
    /// This installation of it (kept in its state directory; a fresh one
    /// per process by default).
    pub instance: InstanceId,
    /// Where the master reaches this worker (`host:port`).
    pub advertise_address: String,
    /// What it offers to tasks.
    pub capacity: Resources,
    /// Its GPUs, `capacity.gpus` of them (by default numbered from 0).
    pub gpus: Vec<Gpu>,
    /// Host directories under which tasks may bind-mount (none by default).
    pub allow_mounts: Vec<String>,
    /// Its labels, which tasks' constraints must match (none by default;
    /// the worker binary adds [`automatic_labels`]).
    pub labels: Labels,
    /// Heartbeat interval until the master names one (5 s).
    pub heartbeat_interval: Duration,
    /// Longest SIGTERM→SIGKILL grace a cancel may ask for (30 s).
    pub max_grace: Duration,
    /// Bound on reporting running tasks at shutdown (5 s).
    pub shutdown_timeout: Duration,
    /// Grace for containers stopped at shutdown (3 s).
    pub shutdown_grace: Duration,
    /// Deadline for each call to the master (10 s).
    pub rpc_timeout: Duration,
    /// Bytes of each run's output kept for followers, the oldest dropped
    /// first (64 MiB); also the budget for the output of ended runs.
    pub log_retain: usize,
    /// Bytes of the end of a run's output stored with its result (1 MiB;
    /// a MongoDB document holds at most 16 MiB).
    pub result_log_limit: usize,
    /// How long the output of an ended run stays for followers (60 s).
    pub output_linger: Duration,
    /// Retry backoff for registration and reports.
    pub backoff: Backoff,
    /// Seed for backoff jitter.
    pub seed: u64,
}

impl WorkerConfig {
    /// Defaults for a worker with this id, address and capacity.
    pub fn new(id: WorkerId, advertise_address: impl Into<String>, capacity: Resources) -> Self {
        WorkerConfig {
            id,
            instance: InstanceId::ephemeral(),
            advertise_address: advertise_address.into(),
            gpus: (0..capacity.gpus).map(Gpu::indexed).collect(),
            allow_mounts: Vec::new(),
            labels: Labels::new(),
            capacity,
            heartbeat_interval: Duration::from_secs(5),
            max_grace: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(3),
            rpc_timeout: Duration::from_secs(10),
            log_retain: 64 << 20,
            result_log_limit: 1 << 20,
            output_linger: Duration::from_secs(60),
            backoff: Backoff::default(),
            seed: 0x5eed,
        }
    }
}

struct Inner {
    config: WorkerConfig,
    metrics: WorkerMetrics,
    runtime: Arc<dyn ContainerRuntime>,
    master: Arc<dyn WorkerToMaster>,
    clock: Clock,
    runs: Mutex<runs::Runs>,
    outbox: Mutex<outbox::Outbox>,
    session: Mutex<session::Session>,
    /// Set once shutdown (or abort) began: no new assignments.
    closing: AtomicBool,
    register_now: Notify,
    /// Held (write) while a registration is in flight and (read) while an
    /// assignment is admitted: an order between the two, not a guard over
    /// state, so it is taken before and apart from the locks above.
    registering: tokio::sync::RwLock<()>,
    /// Woken whenever a run leaves the runs table.
    run_ended: Notify,
    /// The output of runs that ended, for late followers.
    ended: Mutex<ended_outputs::EndedOutputs>,
    /// When this worker stops its runs unless its master answers first
    /// (see `session`).
    fence: watch::Sender<Option<tokio::time::Instant>>,
}

/// A worker agent. Cheap to clone; all clones drive the same worker.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.config.id)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker that runs tasks on `runtime` and talks to `master`.
    pub fn new(
        config: WorkerConfig,
        runtime: Arc<dyn ContainerRuntime>,
        master: Arc<dyn WorkerToMaster>,
        clock: Clock,
    ) -> Worker {
        let metrics = WorkerMetrics::new();
        let runtime = Arc::new(MeteredRuntime::new(runtime, metrics.runtime().clone()));
        let rng = SplitMix64::new(config.seed);
        let (linger, retain) = (config.output_linger, config.log_retain);
        Worker {
            inner: Arc::new(Inner {
                config,
                metrics,
                runtime,
                master,
                clock,
                runs: Mutex::default(),
                outbox: Mutex::default(),
                session: Mutex::new(session::Session {
                    master_id: None,
                    registered: Term::ZERO,
                    term: Term::ZERO,
                    in_session: false,
                    rng,
                    fence_after: None,
                }),
                closing: AtomicBool::new(false),
                register_now: Notify::new(),
                registering: tokio::sync::RwLock::new(()),
                run_ended: Notify::new(),
                ended: Mutex::new(ended_outputs::EndedOutputs::new(linger, retain)),
                fence: watch::channel(None).0,
            }),
        }
    }

    /// The worker's id.
    pub fn id(&self) -> &WorkerId {
        &self.inner.config.id
    }

    /// Where the master reaches this worker.
    pub fn address(&self) -> &str {
        &self.inner.config.advertise_address
    }

    /// Who this worker is: its id and instance.
    pub fn identity(&self) -> WorkerIdentity {
        WorkerIdentity {
            id: self.inner.config.id.clone(),
            instance: self.inner.config.instance.clone(),
        }
    }

    /// Refuses a call meant for another worker (another id, or this id's
    /// other instance): the caller's view of who is at this address is
    /// stale. [`Error::Unavailable`], since the worker it wants cannot be
    /// reached here.
    pub fn check_addressed(&self, worker: &WorkerId, instance: Option<&InstanceId>) -> Result<()> {
        let cfg = &self.inner.config;
        if *worker == cfg.id && instance.is_none_or(|i| *i == cfg.instance) {
            return Ok(());
        }
        let wanted = match instance {
            Some(i) => format!("{worker} (instance {i})"),
            None => worker.to_string(),
        };
        Err(Error::Unavailable(format!(
            "this address serves worker {}, not {wanted}",
            self.identity()
        )))
    }

    /// The runs this worker has now.
    pub fn running(&self) -> Vec<RunningTask> {
        lock(&self.inner.runs).list()
    }

    /// The metrics, for the transport to count its calls into.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.inner.metrics
    }

    /// Every metric in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let running = lock(&self.inner.runs).list().len();
        let outbox = lock(&self.inner.outbox).len();
        self.inner.metrics.render(running, outbox)
    }

    fn closing(&self) -> bool {
        self.inner.closing.load(Ordering::SeqCst)
    }
}

/// The labels every worker binary carries: `hostname`, `os` and `arch`,
/// and `gpu` (the first GPU's model) when GPUs were found with a name.
pub fn automatic_labels(gpus: &[Gpu]) -> Labels {
    let uname = rustix::system::uname();
    let mut labels = Labels::new();
    let host = uname.nodename().to_string_lossy().into_owned();
    for (key, value) in [
        ("hostname", host),
        ("os", std::env::consts::OS.to_owned()),
        ("arch", std::env::consts::ARCH.to_owned()),
    ] {
        labels.insert(key.to_owned(), value);
    }
    if let Some(name) = gpus.iter().find_map(|g| g.name.as_deref()) {
        // Spaces are not allowed in a label value: "NVIDIA A100-SXM4" →
        // "NVIDIA-A100-SXM4".
        let model: String = name
            .split_whitespace()
            .collect::<Vec<_>>()
            .join("-")
            .chars()
            .filter(|c| !",()".contains(*c) && !c.is_control())
            .collect();
        labels.insert("gpu".to_owned(), model);
    }
    labels
}
