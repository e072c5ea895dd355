//! A swarm of simulated workers in one process, speaking the real gRPC
//! protocol to a master (Nomad's nodesim, HyperQueue's zero-worker mode).
//!
//! Each simulated worker is a distinct worker to the master: its own id and
//! instance, registration and heartbeats. They share listeners (100 workers
//! an address by default; 10,000 listeners would exhaust the file handles),
//! and a shared listener routes each master→worker call by the worker it
//! names. An assignment "runs" for the configured time, then is reported
//! completed (or failed, for the configured share); nothing is executed.
//!
//! Across a takeover they behave as real workers do: their connections
//! follow the leader among the masters listed (`a:1,b:2`); each obeys no
//! call of a master term (`x-cloudai-term`) below the highest it has seen
//! and remembers a higher one; a `MasterRegister` of a term higher than the
//! one it registered under moves its connection to the address named and
//! registers there at once; a registration lists its runs, those whose
//! report is still unacknowledged included, and assignments wait while one
//! is on its way. Every (task, attempt) started a second time (on another
//! worker, or again after it ended) is counted: a double assignment.

use std::collections::hash_map::Entry;
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
use cloudai_grpc::auth::{addressee, caller_term, MASTER_HEADER};
use cloudai_grpc::convert::{self, to_status};
use cloudai_grpc::proto::{self, worker_server};
use cloudai_grpc::{serve, MasterClient, Security};
use tokio::net::TcpListener;
use tokio::sync::{watch, RwLock, Semaphore};
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
    /// (task, attempt) pairs started a second time: on another worker, or
    /// again after the run ended. A correct master never does it.
    pub double_assignments: AtomicU64,
    /// Assignments of a run the worker still held: no-ops, as on a real
    /// worker (a master may send an assignment again).
    pub repeated_assignments: AtomicU64,
    /// Calls refused because their master's term was below the highest
    /// the worker had seen (a deposed master's late orders).
    pub stale_calls: AtomicU64,
    /// Registrations answered by a master of a term below the highest
    /// seen (tried again).
    pub stale_registrations: AtomicU64,
    /// `MasterRegister` calls of a higher term that moved a worker to a
    /// new master.
    pub moves: AtomicU64,
    /// The first few errors met (a listener that failed, a refused report).
    errors: Mutex<Vec<String>>,
    /// When each task's first assignment arrived.
    assigned_at: Mutex<HashMap<TaskId, Instant>>,
    /// When each task's last report was accepted, and how many were.
    reported_at: Mutex<HashMap<TaskId, (Instant, u32)>>,
    /// The worker each run first started on.
    started: Mutex<HashMap<RunningTask, WorkerId>>,
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

    /// When `task`'s (last) report was accepted.
    pub fn reported(&self, task: &TaskId) -> Option<Instant> {
        lock(&self.reported_at).get(task).map(|(at, _)| *at)
    }

    /// How many reports of `task`'s runs the master accepted.
    pub fn reports(&self, task: &TaskId) -> u32 {
        lock(&self.reported_at).get(task).map_or(0, |(_, n)| *n)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a client call is retried while no master leads or answers
/// (with several masters listed, it also bounds each attempt: a stopped
/// leader holds its connections open).
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long a heartbeat may take (a stopped master never answers it).
const BEAT_TIMEOUT: Duration = Duration::from_secs(5);

/// One simulated worker.
#[derive(Debug)]
struct SimWorker {
    me: WorkerIdentity,
    address: String,
    /// Index of its group (listener and master connection).
    group: usize,
    running: AtomicU32,
    /// The highest master term seen: calls of a lower one are refused.
    term: AtomicU64,
    /// The term of the master it last registered with.
    registered: AtomicU64,
    /// Held (write) while a registration is on its way: assignments wait
    /// (read), so every run it does not list started after the master
    /// had it.
    registering: RwLock<()>,
    /// A registration is asked for and not yet begun.
    wants_register: AtomicBool,
}

/// Where a run held by a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Running (its simulated time not yet over).
    Running,
    /// Ended; its report is not yet acknowledged.
    Reporting,
}

#[derive(Debug)]
struct Shared {
    config: SwarmConfig,
    workers: HashMap<WorkerId, SimWorker>,
    /// One connection to the master per group.
    clients: Vec<MasterClient>,
    /// Runs held: (worker, (task, attempt)) → where the run is.
    runs: Mutex<HashMap<(WorkerId, RunningTask), Held>>,
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
            let client = MasterClient::new(master, security.clone())
                .map_err(|e| e.to_string())?
                .leader_wait(LEADER_WAIT);
            clients.push(client);
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
                    term: AtomicU64::new(0),
                    registered: AtomicU64::new(0),
                    registering: RwLock::new(()),
                    wants_register: AtomicBool::new(false),
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

    /// Runs the workers hold: running, or ended with their report not yet
    /// acknowledged.
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
/// about 30 s) or answers from a term below the highest seen. It lists
/// the runs it holds (those whose report is unacknowledged included), as a
/// real worker does; assignments wait until the master has it.
async fn register(shared: &Shared, id: &WorkerId) -> Result<(), String> {
    let w = &shared.workers[id];
    let _registering = w.registering.write().await;
    // Asked again from now on: one more registration follows this one.
    w.wants_register.store(false, Ordering::Release);
    let running: Vec<RunningTask> = lock(&shared.runs)
        .keys()
        .filter(|(on, _)| on == id)
        .map(|(_, run)| run.clone())
        .collect();
    let reg = Registration {
        worker: id.clone(),
        instance: w.me.instance.clone(),
        address: w.address.clone(),
        capacity: shared.config.capacity,
        gpus: Vec::new(),
        allow_mounts: Vec::new(),
        labels: Default::default(),
        running,
    };
    let mut tries = 0;
    loop {
        match shared.clients[w.group].register(&reg).await {
            Ok(reply) if reply.term.get() < w.term.load(Ordering::Acquire) && tries < 300 => {
                shared
                    .stats
                    .stale_registrations
                    .fetch_add(1, Ordering::Relaxed);
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(reply) => {
                let term = reply.term.get();
                w.term.fetch_max(term, Ordering::AcqRel);
                w.registered.store(term, Ordering::Release);
                shared.stats.registrations.fetch_add(1, Ordering::Relaxed);
                *lock(&shared.heartbeat_interval) = reply.heartbeat_interval;
                let mut runs = lock(&shared.runs);
                for run in reply.stop {
                    // A run still going is dropped unreported; one being
                    // reported finishes its report.
                    let key = (id.clone(), run);
                    if runs.get(&key) == Some(&Held::Running) {
                        runs.remove(&key);
                        w.running.fetch_sub(1, Ordering::Relaxed);
                    }
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

/// Registers `id` soon, on a task of its own: once more after the one on
/// its way, if any (a real worker's "register now").
fn register_soon(shared: &Arc<Shared>, id: &WorkerId) {
    if shared.closing.load(Ordering::Relaxed) {
        return;
    }
    if shared.workers[id]
        .wants_register
        .swap(true, Ordering::AcqRel)
    {
        return; // one is already asked for and not yet begun
    }
    let (s, id) = (shared.clone(), id.clone());
    tokio::spawn(async move {
        if let Err(e) = register(&s, &id).await {
            s.stats.error(e);
        }
    });
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

async fn beat(shared: &Arc<Shared>, id: &WorkerId) {
    let w = &shared.workers[id];
    let telemetry = Telemetry {
        cpu_percent: 0.0,
        memory_used_mb: 0,
        running_tasks: w.running.load(Ordering::Relaxed),
        starting: Vec::new(),
    };
    let call = shared.clients[w.group].heartbeat(&w.me, &telemetry);
    match tokio::time::timeout(BEAT_TIMEOUT, call).await {
        Ok(Ok(reply)) if !reply.register_again => {
            shared.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(_)) => {
            shared
                .stats
                .heartbeat_errors
                .fetch_add(1, Ordering::Relaxed);
            register_soon(shared, id);
        }
        Ok(Err(_)) | Err(_) => {
            shared
                .stats
                .heartbeat_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Takes `run` on worker `on` (a repeat while it holds the run is a
/// no-op) and reports it after the run time, unless it was stopped
/// meanwhile. A run started before, here or elsewhere, counts as a double
/// assignment (and runs again, as a real worker would run it).
async fn start_run(shared: &Arc<Shared>, on: &WorkerId, run: RunningTask) {
    let w = &shared.workers[on];
    let _not_registering = w.registering.read().await;
    match lock(&shared.runs).entry((on.clone(), run.clone())) {
        Entry::Occupied(_) => {
            shared
                .stats
                .repeated_assignments
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        Entry::Vacant(v) => {
            v.insert(Held::Running);
        }
    }
    w.running.fetch_add(1, Ordering::Relaxed);
    let first = match lock(&shared.stats.started).entry(run.clone()) {
        Entry::Occupied(o) => Some(o.get().clone()),
        Entry::Vacant(v) => {
            v.insert(on.clone());
            None
        }
    };
    if let Some(first) = first {
        shared
            .stats
            .double_assignments
            .fetch_add(1, Ordering::Relaxed);
        shared.stats.error(format!(
            "double assignment: task {} attempt {} started on {on}, first on {first}",
            run.task, run.attempt
        ));
    }
    lock(&shared.stats.assigned_at)
        .entry(run.task.clone())
        .or_insert_with(Instant::now);
    let (s, on) = (shared.clone(), on.clone());
    tokio::spawn(async move {
        let started = now();
        if !s.config.run_time.is_zero() {
            tokio::time::sleep(s.config.run_time).await;
        }
        if !ended(&s, &on, &run) {
            return; // stopped: the stop reported it, or it was dropped
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

/// Marks `run` on `on` ended, to be reported: `false` if it was not
/// running (stopped or dropped meanwhile).
fn ended(shared: &Shared, on: &WorkerId, run: &RunningTask) -> bool {
    let mut runs = lock(&shared.runs);
    match runs.get_mut(&(on.clone(), run.clone())) {
        Some(held @ Held::Running) => {
            *held = Held::Reporting;
            drop(runs);
            shared.workers[on].running.fetch_sub(1, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// Ends `run` on `on` as stopped by the master, if it is still running.
fn stop_run(shared: &Arc<Shared>, on: &WorkerId, run: &RunningTask) {
    if !ended(shared, on, run) {
        return;
    }
    let (s, on, run) = (shared.clone(), on.clone(), run.clone());
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
    lock(&shared.runs).remove(&(on.clone(), run.clone()));
    let stats = &shared.stats;
    match outcome {
        Ok(()) => {
            lock(&stats.reported_at)
                .entry(run.task.clone())
                .and_modify(|(at, n)| {
                    *at = Instant::now();
                    *n += 1;
                })
                .or_insert_with(|| (Instant::now(), 1));
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
    /// call meant for another) if it is not one of ours, and refused
    /// (`PERMISSION_DENIED`) if its master's term is below the highest
    /// that worker has seen; a higher one is remembered.
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
        let term = caller_term(req.metadata())?.get();
        let seen = w.term.fetch_max(term, Ordering::AcqRel);
        if term < seen {
            self.0.stats.stale_calls.fetch_add(1, Ordering::Relaxed);
            let caller = req
                .metadata()
                .get(MASTER_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(unnamed)");
            return Err(Status::permission_denied(format!(
                "worker {id} refuses master {caller}: its term {term} is below {seen}, the highest seen"
            )));
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
        let r = req.into_inner();
        let w = &self.0.workers[&id];
        // A master of a higher term than the one it registered with has
        // taken over: every later call of this worker (of its group's
        // connection) goes to it.
        if r.term > w.registered.load(Ordering::Acquire) && !r.address.is_empty() {
            self.0.clients[w.group].follow(&r.address);
            self.0.stats.moves.fetch_add(1, Ordering::Relaxed);
        }
        register_soon(&self.0, &id);
        Ok(Response::new(proto::Empty {}))
    }

    async fn assign(&self, req: Request<proto::AssignRequest>) -> Reply<proto::Empty> {
        let id = self.addressed(&req)?;
        let run = convert::run(req.into_inner().run)?;
        start_run(&self.0, &id, run).await;
        Ok(Response::new(proto::Empty {}))
    }

    async fn cancel(&self, req: Request<proto::StopRequest>) -> Reply<proto::Empty> {
        let id = self.addressed(&req)?;
        let run = convert::run(req.into_inner().run)?;
        stop_run(&self.0, &id, &run);
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
