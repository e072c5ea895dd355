//! A swarm of simulated workers in one process, speaking the real gRPC
//! protocol to a master (Nomad's nodesim, HyperQueue's zero-worker mode).
//!
//! Each simulated worker is a distinct worker to the master: its own id and
//! instance, registration and heartbeats. They share listeners (100 workers
//! an address by default; 10,000 listeners would exhaust the file handles),
//! and a shared listener routes each master→worker call by the worker it
//! names. An assignment "runs" for the configured time, then is reported
//! completed (or failed, for the configured share); nothing is executed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudai_core::metrics::Rpcs;
use cloudai_core::model::{
    EndCause, InstanceId, Resources, TaskId, TaskResult, TaskStatus, Telemetry, Timestamp,
    WorkerId, WorkerIdentity,
};
use cloudai_core::output::OutputChunk;
use cloudai_core::transport::{Registration, RunningTask, WorkerToMaster};
use cloudai_core::Error;
use cloudai_grpc::auth::addressee;
use cloudai_grpc::convert::{self, to_status};
use cloudai_grpc::proto::{self, worker_server};
use cloudai_grpc::{serve, MasterClient, Security};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// What the swarm simulates.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// How many workers.
    pub workers: usize,
    /// Workers sharing one listener (and one connection to the master).
    pub per_listener: usize,
    /// What each worker offers.
    pub capacity: Resources,
    /// How long an assignment runs before it is reported (zero: at once).
    pub run_time: Duration,
    /// Percent of runs reported failed (exit code 1), spread evenly.
    pub fail_percent: u8,
    /// Worker ids are `<prefix><n>`.
    pub id_prefix: String,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            workers: 10_000,
            per_listener: 100,
            capacity: Resources::new(4.0, 16.0, 100.0, 0).expect("valid resources"),
            run_time: Duration::ZERO,
            fail_percent: 0,
            id_prefix: "sim-".into(),
        }
    }
}

/// Counters and timings the swarm keeps, read by the driver.
#[derive(Debug, Default)]
pub struct Stats {
    /// Heartbeats the master answered.
    pub heartbeats: AtomicU64,
    /// Heartbeats that failed or were answered "register again".
    pub heartbeat_errors: AtomicU64,
    /// Registrations the master accepted (first ones and repeats).
    pub registrations: AtomicU64,
    /// Reports the master accepted, by outcome.
    pub completed: AtomicU64,
    /// Runs reported failed (the configured share).
    pub failed: AtomicU64,
    /// Runs stopped by the master and reported cancelled.
    pub cancelled: AtomicU64,
    /// Reports the master refused as final (FAILED_PRECONDITION and the
    /// like): a bug in a correct run.
    pub refused: AtomicU64,
    /// The first few errors met (a listener that failed, a refused report).
    errors: Mutex<Vec<String>>,
    /// When each task's first assignment arrived.
    assigned_at: Mutex<HashMap<TaskId, Instant>>,
    /// When each task's report was accepted.
    reported_at: Mutex<HashMap<TaskId, Instant>>,
}

impl Stats {
    /// Reports accepted so far (completed, failed or cancelled).
    pub fn ended(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.cancelled.load(Ordering::Relaxed)
    }

    /// The first errors met, if any.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.errors).clone()
    }

    fn error(&self, e: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < 10 {
            errors.push(e);
        }
    }

    /// When `task` was first assigned to a simulated worker.
    pub fn assigned(&self, task: &TaskId) -> Option<Instant> {
        lock(&self.assigned_at).get(task).copied()
    }

    /// When `task`'s report was accepted.
    pub fn reported(&self, task: &TaskId) -> Option<Instant> {
        lock(&self.reported_at).get(task).copied()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One simulated worker.
#[derive(Debug)]
struct SimWorker {
    me: WorkerIdentity,
    address: String,
    /// Index of its group (listener and master connection).
    group: usize,
    running: AtomicU32,
}

#[derive(Debug)]
struct Shared {
    config: SwarmConfig,
    workers: HashMap<WorkerId, SimWorker>,
    /// One connection to the master per group.
    clients: Vec<MasterClient>,
    /// Runs in progress: (task, attempt) → worker.
    runs: Mutex<HashMap<RunningTask, WorkerId>>,
    /// Reports made so far, to spread failures evenly.
    reports: AtomicU64,
    heartbeat_interval: Mutex<Duration>,
    stats: Arc<Stats>,
    closing: AtomicBool,
}

/// A running swarm. Dropping it leaves its tasks running; call
/// [`Swarm::stop`].
#[derive(Debug)]
pub struct Swarm {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Swarm {
    /// Binds the listeners and registers every worker with the master at
    /// `master` (at most 64 registrations in flight), then starts their
    /// heartbeats at the interval the master names.
    pub async fn start(
        master: &str,
        security: Security,
        config: SwarmConfig,
    ) -> Result<Swarm, String> {
        let groups = config.workers.div_ceil(config.per_listener.max(1));
        let mut listeners = Vec::with_capacity(groups);
        let mut clients = Vec::with_capacity(groups);
        for _ in 0..groups {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot bind a listener: {e}"))?;
            listeners.push(l);
            clients.push(MasterClient::new(master, security.clone()).map_err(|e| e.to_string())?);
        }
        let mut workers = HashMap::with_capacity(config.workers);
        for n in 0..config.workers {
            let group = n / config.per_listener.max(1);
            let id =
                WorkerId::new(format!("{}{n}", config.id_prefix)).map_err(|e| e.to_string())?;
            let instance =
                InstanceId::new(format!("{}{n}-{}", config.id_prefix, std::process::id()))
                    .map_err(|e| e.to_string())?;
            let address = listeners[group]
                .local_addr()
                .map_err(|e| e.to_string())?
                .to_string();
            workers.insert(
                id.clone(),
                SimWorker {
                    me: WorkerIdentity { id, instance },
                    address,
                    group,
                    running: AtomicU32::new(0),
                },
            );
        }
        let shared = Arc::new(Shared {
            config,
            workers,
            clients,
            runs: Mutex::new(HashMap::new()),
            reports: AtomicU64::new(0),
            heartbeat_interval: Mutex::new(Duration::from_secs(5)),
            stats: Arc::new(Stats::default()),
            closing: AtomicBool::new(false),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for l in listeners {
            let routes = Routes::new(
                worker_server::WorkerServer::new(Listener(shared.clone()))
                    .max_decoding_message_size(cloudai_grpc::client::MAX_MESSAGE),
            );
            let mut rx = stopped.clone();
            let security = security.clone();
            let stats = shared.stats.clone();
            tasks.spawn(async move {
                let until = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = serve(routes, l, security, Rpcs::default(), until).await {
                    stats.error(format!("a swarm listener failed: {e}"));
                }
            });
        }
        register_all(&shared).await?;
        for group in 0..shared.clients.len() {
            let (s, rx) = (shared.clone(), stopped.clone());
            tasks.spawn(heartbeats(s, group, rx));
        }
        Ok(Swarm {
            shared,
            stop,
            tasks,
        })
    }

    /// The swarm's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// The simulated workers' ids.
    pub fn worker_ids(&self) -> impl Iterator<Item = &WorkerId> {
        self.shared.workers.keys()
    }

    /// The heartbeat interval the master named.
    pub fn heartbeat_interval(&self) -> Duration {
        *lock(&self.shared.heartbeat_interval)
    }

    /// Runs still in progress.
    pub fn running(&self) -> usize {
        lock(&self.shared.runs).len()
    }

    /// Stops heartbeats and listeners; runs in progress are not reported.
    pub async fn stop(mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn register_all(shared: &Arc<Shared>) -> Result<(), String> {
    let gate = Arc::new(Semaphore::new(64));
    let mut regs = tokio::task::JoinSet::new();
    for id in shared.workers.keys() {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (s, id) = (shared.clone(), id.clone());
        regs.spawn(async move {
            let r = register(&s, &id).await;
            drop(permit);
            r
        });
    }
    while let Some(r) = regs.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Registers one worker, retrying while the master is unavailable (up to
/// about 30 s). It lists the runs it has, as a real worker does.
async fn register(shared: &Shared, id: &WorkerId) -> Result<(), String> {
    let w = &shared.workers[id];
    let running: Vec<RunningTask> = lock(&shared.runs)
        .iter()
        .filter(|(_, on)| *on == id)
        .map(|(run, _)| run.clone())
        .collect();
    let reg = Registration {
        worker: id.clone(),
        instance: w.me.instance.clone(),
        address: w.address.clone(),
        capacity: shared.config.capacity,
        gpus: Vec::new(),
        allow_mounts: Vec::new(),
        running,
    };
    let mut tries = 0;
    loop {
        match shared.clients[w.group].register(&reg).await {
            Ok(reply) => {
                shared.stats.registrations.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.heartbeat_interval) = reply.heartbeat_interval;
                for run in reply.stop {
                    lock(&shared.runs).remove(&run);
                }
                return Ok(());
            }
            Err(e) if e.is_transient() && tries < 300 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("worker {id} could not register: {e}")),
        }
    }
}

/// One group's heartbeats: its workers in turn, spread evenly over the
/// master's interval, each sent on a task of its own so a slow answer
/// delays no other beat.
async fn heartbeats(shared: Arc<Shared>, group: usize, mut stopped: watch::Receiver<bool>) {
    let ids: Vec<WorkerId> = shared
        .workers
        .iter()
        .filter(|(_, w)| w.group == group)
        .map(|(id, _)| id.clone())
        .collect();
    if ids.is_empty() {
        return;
    }
    // Groups start at different points of the interval.
    let interval = *lock(&shared.heartbeat_interval);
    let offset = interval * group as u32 / shared.clients.len() as u32;
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + offset,
        interval / ids.len() as u32,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for id in ids.iter().cycle() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        let (s, id) = (shared.clone(), id.clone());
        tokio::spawn(async move { beat(&s, &id).await });
    }
}

async fn beat(shared: &Shared, id: &WorkerId) {
    let w = &shared.workers[id];
    let telemetry = Telemetry {
        cpu_percent: 0.0,
        memory_used_mb: 0,
        running_tasks: w.running.load(Ordering::Relaxed),
        starting: Vec::new(),
    };
    match shared.clients[w.group].heartbeat(&w.me, &telemetry).await {
        Ok(reply) if !reply.register_again => {
            shared.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            shared
                .stats
                .heartbeat_errors
                .fetch_add(1, Ordering::Relaxed);
            if !shared.closing.load(Ordering::Relaxed) {
                let _ = register(shared, id).await;
            }
        }
        Err(_) => {
            shared
                .stats
                .heartbeat_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Takes `run` on worker `on` (a repeat is harmless) and reports it after
/// the run time, unless it was stopped meanwhile.
fn start_run(shared: &Arc<Shared>, on: &WorkerId, run: RunningTask) {
    let fresh = lock(&shared.runs).insert(run.clone(), on.clone()).is_none();
    if !fresh {
        return;
    }
    shared.workers[on].running.fetch_add(1, Ordering::Relaxed);
    lock(&shared.stats.assigned_at)
        .entry(run.task.clone())
        .or_insert_with(Instant::now);
    let (s, on) = (shared.clone(), on.clone());
    tokio::spawn(async move {
        let started = now();
        if !s.config.run_time.is_zero() {
            tokio::time::sleep(s.config.run_time).await;
        }
        if lock(&s.runs).remove(&run).is_none() {
            return; // stopped: the stop reported it
        }
        let n = s.reports.fetch_add(1, Ordering::Relaxed);
        let p = u64::from(s.config.fail_percent);
        let fails = (n + 1) * p / 100 > n * p / 100;
        let status = if fails {
            TaskStatus::Failed
        } else {
            TaskStatus::Completed
        };
        report(&s, &on, &run, status, started).await;
    });
}

/// Ends `run` as stopped by the master, if it is still running.
fn stop_run(shared: &Arc<Shared>, run: &RunningTask) {
    let Some(on) = lock(&shared.runs).remove(run) else {
        return;
    };
    let (s, run) = (shared.clone(), run.clone());
    tokio::spawn(async move {
        let at = now();
        report(&s, &on, &run, TaskStatus::Cancelled, at).await;
    });
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Reports a run's end until the master answers definitely (a worker
/// retries a report the master could not store).
async fn report(
    shared: &Shared,
    on: &WorkerId,
    run: &RunningTask,
    status: TaskStatus,
    started: Timestamp,
) {
    let w = &shared.workers[on];
    w.running.fetch_sub(1, Ordering::Relaxed);
    let exit_code = match status {
        TaskStatus::Completed => Some(0),
        TaskStatus::Failed => Some(1),
        _ => None,
    };
    let result = TaskResult {
        task_id: run.task.clone(),
        worker_id: on.clone(),
        attempt: run.attempt,
        status,
        cause: EndCause::inferred(status, exit_code, None),
        exit_code,
        logs: String::new(),
        logs_offset: 0,
        signal: None,
        message: (status == TaskStatus::Cancelled).then(|| "stopped on cancel".into()),
        started_at: Some(started),
        finished_at: now(),
        usage: None,
    };
    let mut tries = 0;
    let outcome = loop {
        match shared.clients[w.group].report(&result).await {
            Err(e) if e.is_transient() && tries < 300 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => break r,
        }
    };
    let stats = &shared.stats;
    match outcome {
        Ok(()) => {
            lock(&stats.reported_at).insert(run.task.clone(), Instant::now());
            let counter = match status {
                TaskStatus::Completed => &stats.completed,
                TaskStatus::Failed => &stats.failed,
                _ => &stats.cancelled,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            stats.error(format!("report of {} refused: {e}", run.task));
        }
    }
}

/// A shared listener: routes each call to the simulated worker it names.
#[derive(Debug, Clone)]
struct Listener(Arc<Shared>);

impl Listener {
    /// The worker a call is meant for; refused (as a real worker refuses a
    /// call meant for another) if it is not one of ours.
    fn addressed<T>(&self, req: &Request<T>) -> Result<WorkerId, Status> {
        let (id, instance) = addressee(req.metadata())?;
        let w = self
            .0
            .workers
            .get(&id)
            .ok_or_else(|| to_status(Error::Unavailable(format!("no worker {id} here"))))?;
        if instance.is_some_and(|i| i != w.me.instance) {
            return Err(to_status(Error::Unavailable(format!(
                "worker {id} here is another instance"
            ))));
        }
        Ok(id)
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl worker_server::Worker for Listener {
    /// A shared listener cannot say who answers (the probe names nobody):
    /// it answers as unreachable, so the probing master treats the old
    /// session as gone. Simulated workers never change instance.
    async fn identify(&self, _req: Request<proto::Empty>) -> Reply<proto::Identity> {
        Err(Status::unavailable(
            "a shared swarm listener has no single identity",
        ))
    }

    async fn master_register(
        &self,
        req: Request<proto::MasterRegisterRequest>,
    ) -> Reply<proto::Empty> {
        let id = self.addressed(&req)?;
        let s = self.0.clone();
        tokio::spawn(async move { register(&s, &id).await });
        Ok(Response::new(proto::Empty {}))
    }

    async fn assign(&self, req: Request<proto::AssignRequest>) -> Reply<proto::Empty> {
        let id = self.addressed(&req)?;
        let run = convert::run(req.into_inner().run)?;
        start_run(&self.0, &id, run);
        Ok(Response::new(proto::Empty {}))
    }

    async fn cancel(&self, req: Request<proto::StopRequest>) -> Reply<proto::Empty> {
        self.addressed(&req)?;
        let run = convert::run(req.into_inner().run)?;
        stop_run(&self.0, &run);
        Ok(Response::new(proto::Empty {}))
    }

    type FollowOutputStream = cloudai_grpc::output::OutputReplies<proto::OutputChunk>;

    /// Simulated runs write nothing: their output is empty.
    async fn follow_output(
        &self,
        req: Request<proto::RunOutputRequest>,
    ) -> Reply<Self::FollowOutputStream> {
        self.addressed(&req)?;
        let (_, none) = tokio::sync::mpsc::channel::<cloudai_core::Result<OutputChunk>>(1);
        Ok(Response::new(cloudai_grpc::output::replies(none)))
    }
}
