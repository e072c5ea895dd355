//! The worker agent, generic over [`ContainerRuntime`] and [`WorkerToMaster`].
//!
//! It registers with its master (listing the runs it still has), sends
//! heartbeats with telemetry, runs and stops tasks through the runtime, and
//! reports each run's result until the master acknowledges it. On shutdown
//! (seed 000) it reports every running task as failed within a bound and
//! stops their containers, whether or not the master answers.

mod telemetry;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::model::{Resources, TaskId, TaskResult, TaskSpec, TaskStatus, Timestamp, WorkerId};
use crate::rng::SplitMix64;
use crate::runtime::{
    ContainerId, ContainerRuntime, ContainerSpec, ExitStatus, LABEL_ATTEMPT, LABEL_TASK,
    LABEL_WORKER,
};
use crate::transport::{MasterInfo, Registration, RunningTask, WorkerToMaster};
use crate::{Error, Result};

/// The message every run carries when its worker shuts down under it.
pub const SHUTDOWN_MESSAGE: &str = "worker was terminated while task was running";

/// How many stopped-before-started runs the worker remembers, so a late
/// assignment for one of them is not run.
const TOMBSTONES: usize = 4096;

/// Worker settings, with the seeds' values as defaults.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's id.
    pub id: WorkerId,
    /// Where the master reaches this worker (`host:port`).
    pub advertise_address: String,
    /// What it offers to tasks.
    pub capacity: Resources,
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
    /// Bytes of output kept per task (1 MiB).
    pub log_limit: usize,
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
            advertise_address: advertise_address.into(),
            capacity,
            heartbeat_interval: Duration::from_secs(5),
            max_grace: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(3),
            rpc_timeout: Duration::from_secs(10),
            log_limit: 1 << 20,
            backoff: Backoff::default(),
            seed: 0x5eed,
        }
    }
}

/// Why a run is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopKind {
    /// The user cancelled: report `cancelled` with the logs.
    Cancel,
    /// The master says the run is not (or no longer) this worker's: no report.
    Drop,
    /// The worker is shutting down: `shutdown` reports it.
    Shutdown,
}

#[derive(Debug)]
struct Slot {
    container: Option<ContainerId>,
    stop: Option<(StopKind, Duration)>,
    started_at: Timestamp,
}

struct Inner {
    config: WorkerConfig,
    runtime: Arc<dyn ContainerRuntime>,
    master: Arc<dyn WorkerToMaster>,
    clock: Clock,
    runs: Mutex<BTreeMap<RunningTask, Slot>>,
    tombstones: Mutex<(BTreeSet<RunningTask>, VecDeque<RunningTask>)>,
    /// Results not yet acknowledged by the master.
    outbox: Mutex<BTreeMap<RunningTask, TaskResult>>,
    closing: AtomicBool,
    register_now: Notify,
    /// The master this worker registered with; it obeys no other.
    master_id: Mutex<Option<String>>,
    rng: Mutex<SplitMix64>,
    supervisors: Mutex<JoinSet<()>>,
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

/// What [`Worker::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownSummary {
    /// Reports (running tasks as failed, plus results still in the outbox)
    /// the master acknowledged.
    pub reported: usize,
    /// Reports that did not get through in time.
    pub unreported: usize,
    /// Runs stopped and removed before the bound.
    pub stopped: usize,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Worker {
    /// A worker that runs tasks on `runtime` and talks to `master`.
    pub fn new(
        config: WorkerConfig,
        runtime: Arc<dyn ContainerRuntime>,
        master: Arc<dyn WorkerToMaster>,
        clock: Clock,
    ) -> Worker {
        let rng = SplitMix64::new(config.seed);
        Worker {
            inner: Arc::new(Inner {
                config,
                runtime,
                master,
                clock,
                runs: Mutex::new(BTreeMap::new()),
                tombstones: Mutex::new((BTreeSet::new(), VecDeque::new())),
                outbox: Mutex::new(BTreeMap::new()),
                closing: AtomicBool::new(false),
                register_now: Notify::new(),
                master_id: Mutex::new(None),
                rng: Mutex::new(rng),
                supervisors: Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// The worker's id.
    pub fn id(&self) -> &WorkerId {
        &self.inner.config.id
    }

    /// The id of the master this worker is registered with, once it is.
    pub fn master_id(&self) -> Option<String> {
        locked(&self.inner.master_id).clone()
    }

    /// The runs this worker has now.
    pub fn running(&self) -> Vec<RunningTask> {
        locked(&self.inner.runs).keys().cloned().collect()
    }

    fn jitter(&self) -> f64 {
        locked(&self.inner.rng).next_f64()
    }

    // ---- calls from the master ------------------------------------------

    /// Accepts assignment `run` and starts it. Repeats are no-ops; a run
    /// stopped before its assignment arrived is not started.
    pub async fn assign(&self, run: RunningTask, spec: TaskSpec) -> Result<()> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(Error::Unavailable(format!(
                "worker {} is shutting down",
                self.id()
            )));
        }
        spec.validate()?;
        {
            // Lock order: runs, then tombstones (as in `stop_run`), so a stop
            // racing this assignment either finds the slot or leaves a
            // tombstone that is seen here.
            let mut runs = locked(&self.inner.runs);
            if runs.contains_key(&run) {
                return Ok(());
            }
            if locked(&self.inner.tombstones).0.contains(&run) {
                info!(task = %run.task, attempt = run.attempt, "assignment arrived after its stop; not starting it");
                return Ok(());
            }
            runs.insert(
                run.clone(),
                Slot {
                    container: None,
                    stop: None,
                    started_at: self.inner.clock.now(),
                },
            );
        }
        info!(task = %run.task, attempt = run.attempt, image = %spec.image, "task accepted");
        let w = self.clone();
        self.spawn_supervisor(async move { w.supervise(run, spec).await });
        Ok(())
    }

    /// Stops run `run`: SIGTERM, then SIGKILL after `grace` (capped at the
    /// configured maximum). Returns once it is stopped. A run this worker
    /// does not have is remembered, so its assignment will not start it.
    pub async fn cancel(&self, run: &RunningTask, grace: Duration) -> Result<()> {
        self.stop_run(
            run,
            StopKind::Cancel,
            grace.min(self.inner.config.max_grace),
        )
        .await
    }

    /// The output of run `run` so far, at most `max_bytes`.
    pub async fn logs(&self, run: &RunningTask, max_bytes: usize) -> Result<crate::runtime::Logs> {
        let container = locked(&self.inner.runs)
            .get(run)
            .and_then(|s| s.container.clone());
        match container {
            Some(c) => self.inner.runtime.logs(&c, max_bytes).await,
            None => Err(Error::not_found("running task", &run.task)),
        }
    }

    /// Adopts the containers a previous run of this worker left behind (found
    /// by the worker label): running ones are watched again and listed at
    /// registration, where the master says which to keep and which to stop;
    /// finished or unreadable ones are removed. Call before [`Worker::run`].
    /// Returns how many runs were adopted.
    pub async fn adopt_orphans(&self) -> Result<usize> {
        let found = self
            .inner
            .runtime
            .list(LABEL_WORKER, self.id().as_str())
            .await?;
        let mut adopted = 0;
        for c in found {
            let run = c
                .labels
                .get(LABEL_TASK)
                .zip(c.labels.get(LABEL_ATTEMPT))
                .and_then(|(t, a)| {
                    Some(RunningTask {
                        task: TaskId::new(t.as_str()).ok()?,
                        attempt: a.parse().ok()?,
                    })
                });
            match run {
                Some(run) if c.running => {
                    let slot = Slot {
                        container: Some(c.id.clone()),
                        stop: None,
                        started_at: self.inner.clock.now(),
                    };
                    locked(&self.inner.runs).insert(run.clone(), slot);
                    info!(task = %run.task, attempt = run.attempt, container = %c.id, "adopted a running container");
                    let w = self.clone();
                    self.spawn_supervisor(async move { w.watch(run, c.id, None).await });
                    adopted += 1;
                }
                _ => {
                    info!(container = %c.id, "removing a leftover container");
                    let _ = self.inner.runtime.stop(&c.id, Duration::ZERO).await;
                    self.inner.runtime.remove(&c.id).await?;
                }
            }
        }
        Ok(adopted)
    }

    /// The master asks this worker to register with it (seed 004).
    pub fn master_register(&self, master: &MasterInfo) {
        info!(master = %master.id, address = %master.address, "master asked us to register");
        self.inner.register_now.notify_one();
    }

    async fn stop_run(&self, run: &RunningTask, kind: StopKind, grace: Duration) -> Result<()> {
        let container = {
            let mut runs = locked(&self.inner.runs);
            match runs.get_mut(run) {
                None => {
                    self.tombstone(run.clone());
                    return Ok(());
                }
                Some(slot) => {
                    slot.stop.get_or_insert((kind, grace));
                    slot.container.clone()
                }
            }
        };
        // Not started yet: the supervisor stops it as soon as it starts.
        if let Some(c) = container {
            info!(task = %run.task, attempt = run.attempt, ?kind, ?grace, "stopping task");
            self.inner.runtime.stop(&c, grace).await?;
        }
        Ok(())
    }

    /// Spawns a run's supervisor, reaping the finished ones first so the
    /// set does not grow with every task the worker ever ran.
    fn spawn_supervisor(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = locked(&self.inner.supervisors);
        while set.try_join_next().is_some() {}
        set.spawn(f);
    }

    /// Remembers a run stopped before it started. Called with the `runs`
    /// lock held (see `assign`).
    fn tombstone(&self, run: RunningTask) {
        let mut t = locked(&self.inner.tombstones);
        if t.0.insert(run.clone()) {
            t.1.push_back(run);
            if t.1.len() > TOMBSTONES {
                if let Some(old) = t.1.pop_front() {
                    t.0.remove(&old);
                }
            }
        }
    }

    // ---- running tasks --------------------------------------------------

    async fn supervise(&self, run: RunningTask, spec: TaskSpec) {
        let cfg = &self.inner.config;
        let cspec = ContainerSpec {
            name: format!("cloudai-{}-{}-{}", cfg.id, run.task, run.attempt),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: spec.env.clone(),
            limits: spec.resources,
            labels: [
                (LABEL_TASK.to_string(), run.task.to_string()),
                (LABEL_ATTEMPT.to_string(), run.attempt.to_string()),
                (LABEL_WORKER.to_string(), cfg.id.to_string()),
            ]
            .into(),
        };
        let container = match self.inner.runtime.start(&cspec).await {
            Ok(c) => c,
            Err(e) => {
                warn!(task = %run.task, error = %e, "task could not start");
                let slot = locked(&self.inner.runs).remove(&run);
                let (stop, started_at) = (
                    slot.as_ref().and_then(|s| s.stop),
                    slot.map(|s| s.started_at),
                );
                if stop.is_none() {
                    let result = self.result(
                        &run,
                        TaskStatus::Failed,
                        None,
                        String::new(),
                        Some(format!("could not start: {e}")),
                        started_at,
                    );
                    self.deliver(run, result).await;
                }
                return;
            }
        };
        self.watch(run, container, Some(spec.resources)).await;
    }

    /// Follows a started container to its end and reports it. `limits` is
    /// known for runs this agent started, not for adopted ones.
    async fn watch(&self, run: RunningTask, container: ContainerId, limits: Option<Resources>) {
        let cfg = &self.inner.config;
        let pending_stop = {
            let mut runs = locked(&self.inner.runs);
            runs.get_mut(&run).and_then(|slot| {
                slot.container = Some(container.clone());
                slot.stop
            })
        };
        if let Some((_, grace)) = pending_stop {
            let _ = self.inner.runtime.stop(&container, grace).await;
        }
        let exit = self.inner.runtime.wait(&container).await;
        let logs = self
            .inner
            .runtime
            .logs(&container, cfg.log_limit)
            .await
            .unwrap_or_default();
        if let Err(e) = self.inner.runtime.remove(&container).await {
            warn!(task = %run.task, error = %e, "could not remove container");
        }
        let slot = locked(&self.inner.runs).remove(&run);
        let (stop, started_at) = (
            slot.as_ref().and_then(|s| s.stop),
            slot.map(|s| s.started_at),
        );
        let (status, message) = match (stop, &exit) {
            (Some((StopKind::Shutdown | StopKind::Drop, _)), _) => return,
            (Some((StopKind::Cancel, _)), _) => {
                (TaskStatus::Cancelled, Some("stopped on cancel".to_string()))
            }
            (None, Ok(e)) if e.success() => (TaskStatus::Completed, None),
            (None, Ok(e)) => (TaskStatus::Failed, Some(describe_exit(e, limits))),
            (None, Err(e)) => (
                TaskStatus::Failed,
                Some(format!("lost track of the container: {e}")),
            ),
        };
        let code = exit.as_ref().ok().and_then(|e| e.code);
        let mut result = self.result(&run, status, code, logs.text, message, started_at);
        result.logs_truncated = logs.truncated;
        info!(task = %run.task, attempt = run.attempt, %status, code = ?code, "task ended");
        self.deliver(run, result).await;
    }

    fn result(
        &self,
        run: &RunningTask,
        status: TaskStatus,
        exit_code: Option<i32>,
        logs: String,
        message: Option<String>,
        started_at: Option<Timestamp>,
    ) -> TaskResult {
        TaskResult {
            task_id: run.task.clone(),
            worker_id: self.inner.config.id.clone(),
            attempt: run.attempt,
            status,
            exit_code,
            logs,
            logs_truncated: false,
            message,
            started_at,
            finished_at: self.inner.clock.now(),
        }
    }

    /// Puts a result in the outbox and tries to send it now; the heartbeat
    /// loop retries whatever is left.
    async fn deliver(&self, run: RunningTask, result: TaskResult) {
        locked(&self.inner.outbox).insert(run.clone(), result.clone());
        self.send_report(run, result).await;
    }

    /// One attempt to report; `true` once the master has the result.
    async fn send_report(&self, run: RunningTask, result: TaskResult) -> bool {
        let call = self.inner.master.report(&result);
        let answer = tokio::time::timeout(self.inner.config.rpc_timeout, call).await;
        let done = match answer {
            Ok(Ok(())) => true,
            // Only a definite refusal drops the report; a master-side
            // failure (its store, say) is retried like an outage.
            Ok(Err(e @ (Error::InvalidInput(_) | Error::NotFound { .. } | Error::Conflict(_)))) => {
                warn!(task = %run.task, error = %e, "master refused the report; dropping it");
                true
            }
            Ok(Err(e)) => {
                debug!(task = %run.task, error = %e, "report not delivered; will retry");
                false
            }
            Err(_) => false,
        };
        if done {
            locked(&self.inner.outbox).remove(&run);
        }
        done
    }

    async fn flush_outbox(&self) {
        let pending: Vec<_> = locked(&self.inner.outbox).clone().into_iter().collect();
        for (run, result) in pending {
            if !self.send_report(run, result).await {
                break;
            }
        }
    }

    // ---- registration and heartbeats ------------------------------------

    /// Registers, then heartbeats until `shutdown` flips. Registers again
    /// when the master asks (a restarted master, or `master_register`).
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let Some(interval) = self.register(&mut shutdown).await else {
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = self.inner.register_now.notified() => break,
                    _ = shutdown.changed() => return,
                }
                self.flush_outbox().await;
                let telemetry = telemetry::sample(self.running().len());
                let call = self
                    .inner
                    .master
                    .heartbeat(&self.inner.config.id, &telemetry);
                match tokio::time::timeout(self.inner.config.rpc_timeout, call).await {
                    Ok(Ok(reply)) if reply.register_again => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => debug!(error = %e, "heartbeat failed"),
                    Err(_) => debug!("heartbeat timed out"),
                }
            }
        }
    }

    /// Registers with backoff until the master accepts; stops the runs it
    /// names. `None` if shut down meanwhile.
    async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Duration> {
        let cfg = &self.inner.config;
        let mut failures = 0u32;
        loop {
            // Results that ended while the master was away go first; runs
            // whose result is still unacknowledged are listed with the
            // running ones, so the master does not fail them as vanished.
            self.flush_outbox().await;
            let mut running = self.running();
            running.extend(locked(&self.inner.outbox).keys().cloned());
            running.sort();
            running.dedup();
            let registration = Registration {
                worker: cfg.id.clone(),
                address: cfg.advertise_address.clone(),
                capacity: cfg.capacity,
                running,
            };
            let call = self.inner.master.register(&registration);
            match tokio::time::timeout(cfg.rpc_timeout, call).await {
                Ok(Ok(reply)) => {
                    info!(worker = %cfg.id, running = registration.running.len(), stop = reply.stop.len(), "registered with master");
                    for run in reply.stop {
                        let w = self.clone();
                        tokio::spawn(async move {
                            w.stop_run(&run, StopKind::Drop, Duration::ZERO).await
                        });
                    }
                    *locked(&self.inner.master_id) = Some(reply.master_id.clone());
                    let interval = reply.heartbeat_interval;
                    return Some(if interval.is_zero() {
                        cfg.heartbeat_interval
                    } else {
                        interval
                    });
                }
                Ok(Err(e)) => warn!(error = %e, "registration failed"),
                Err(_) => warn!("registration timed out"),
            }
            failures += 1;
            let delay = cfg.backoff.delay(failures, self.jitter());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.register_now.notified() => {}
                _ = shutdown.changed() => return None,
            }
        }
    }

    // ---- shutdown ---------------------------------------------------------

    /// Seed 000: reports every running task as failed ("worker was terminated
    /// while task was running") within the shutdown bound, and stops and
    /// removes their containers, even when the master is unreachable.
    pub async fn shutdown(&self) -> ShutdownSummary {
        let cfg = &self.inner.config;
        self.inner.closing.store(true, Ordering::SeqCst);
        let runs: Vec<(RunningTask, Timestamp)> = {
            let mut runs = locked(&self.inner.runs);
            runs.iter_mut()
                .map(|(run, slot)| {
                    slot.stop
                        .get_or_insert((StopKind::Shutdown, cfg.shutdown_grace));
                    (run.clone(), slot.started_at)
                })
                .collect()
        };
        info!(
            running = runs.len(),
            "worker shutting down; reporting running tasks as failed"
        );
        let mut reports: Vec<(RunningTask, TaskResult)> =
            locked(&self.inner.outbox).clone().into_iter().collect();
        for (run, started_at) in &runs {
            let r = self.result(
                run,
                TaskStatus::Failed,
                None,
                String::new(),
                Some(SHUTDOWN_MESSAGE.into()),
                Some(*started_at),
            );
            reports.push((run.clone(), r));
        }
        let total = reports.len();
        let report_all = async {
            let mut set = JoinSet::new();
            for (run, result) in reports {
                let w = self.clone();
                set.spawn(async move { w.send_report(run, result).await });
            }
            let mut acked = 0;
            let bounded = tokio::time::timeout(cfg.shutdown_timeout, async {
                while let Some(done) = set.join_next().await {
                    if matches!(done, Ok(true)) {
                        acked += 1;
                    }
                }
            });
            let _ = bounded.await;
            acked
        };
        // Stop every container, including runs still starting (their
        // supervisor stops them as soon as they start), and wait, bounded,
        // until every supervisor has removed its run.
        let stop_all = async {
            let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout + cfg.shutdown_grace;
            let mut stopping = BTreeSet::new();
            let mut set = JoinSet::new();
            loop {
                let left: Vec<(RunningTask, Option<ContainerId>)> = locked(&self.inner.runs)
                    .iter()
                    .map(|(r, s)| (r.clone(), s.container.clone()))
                    .collect();
                if left.is_empty() || tokio::time::Instant::now() >= deadline {
                    break runs.len().saturating_sub(left.len());
                }
                for (run, container) in left {
                    if let Some(c) = container.filter(|_| stopping.insert(run.clone())) {
                        let (rt, grace) = (self.inner.runtime.clone(), cfg.shutdown_grace);
                        set.spawn(async move { rt.stop(&c, grace).await });
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (reported, stopped) = tokio::join!(report_all, stop_all);
        let summary = ShutdownSummary {
            reported,
            unreported: total - reported,
            stopped,
        };
        info!(?summary, "worker shut down");
        summary
    }

    /// Ends every supervisor at once without reporting or stopping anything,
    /// as `kill -9` would (containers are left to the runtime). For tests.
    pub fn abort(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        locked(&self.inner.supervisors).abort_all();
    }
}

fn describe_exit(e: &ExitStatus, limits: Option<Resources>) -> String {
    if e.oom_killed {
        match limits {
            Some(l) => format!("killed: exceeded its memory limit of {} GB", l.memory_gb()),
            None => "killed: exceeded its memory limit".to_string(),
        }
    } else if let Some(sig) = e.signal {
        format!("killed by signal {sig}")
    } else {
        format!("exited with code {}", e.code.unwrap_or(-1))
    }
}
