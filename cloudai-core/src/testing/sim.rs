//! Deterministic cluster simulation (feature `testing`).
//!
//! [`SimNet`] is an in-process transport between one master and its
//! workers that drops, delays, duplicates and reorders messages and can
//! partition workers; [`FakeRuntime`] runs pretend containers on tokio
//! time; [`SimCluster`] wires real [`Master`] and [`Worker`] services to
//! them. Under `#[tokio::test(start_paused = true)]` everything runs on
//! virtual time from one seed, so a failing seed replays the same way.
//!
//! Fake programs (the task's command):
//! `["run", secs, code]` runs `secs` seconds, then exits with `code`;
//! `["stubborn", secs]` runs `secs` seconds and ignores SIGTERM;
//! `["fail-until", n, secs]` runs `secs` seconds, then exits 0 from its
//! `n`th attempt on (`CLOUDAI_ATTEMPT`) and 1 before.
//!
//! Every host's runtime reports its containers to one [`RunningSet`], the
//! cluster-wide view that checks at every instant that at most one attempt
//! of a task runs, that a completed task never runs again, and that no
//! run outlives its time limit by more than its grace and a heartbeat
//! timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::Clock;
use crate::master::{Master, MasterConfig, MasterEvent, Serving};
use crate::memory::MemoryStore;
use crate::model::{
    admits_all, ArrayId, ArrayMember, Dependency, Gpu, InstanceId, Labels, Resources, TaskId,
    TaskRecord, TaskResult, TaskSpec, TaskStatus, Telemetry, Term, Timestamp, Usage,
    ValidationError, Verdict, WorkerId, WorkerIdentity, WorkerRecord, ATTEMPT_ENV, MAX_ATTEMPTS,
};
use crate::output::{OutputFrom, OutputLog, OutputStream};
use crate::rng::SplitMix64;
use crate::runtime::{
    ContainerId, ContainerInfo, ContainerRuntime, ContainerSpec, ExitStatus, Follow, LABEL_ATTEMPT,
    LABEL_TASK, LABEL_WORKER,
};
use crate::store::{TaskFilter, TaskStore, WorkerRegistry};
use crate::sync::lock;
use crate::transport::{
    HeartbeatReply, MasterInfo, MasterToWorker, Registration, RegistrationReply, RunningTask,
    WorkerEndpoint, WorkerToMaster,
};
use crate::worker::{ShutdownSummary, Worker, WorkerConfig};
use crate::{Error, Result};

mod ha;

pub use ha::ActingWindow;

/// Message faults, per message, independently.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Chance that a request is lost (the caller sees a timeout).
    pub drop_request: f64,
    /// Chance that a response is lost after the request was handled.
    pub drop_response: f64,
    /// Chance that a request is handled twice.
    pub duplicate: f64,
    /// Each message is delayed uniformly in `[0, max_delay]`, which also
    /// reorders messages.
    pub max_delay: Duration,
}

impl Faults {
    /// A perfect network.
    pub const NONE: Faults = Faults {
        drop_request: 0.0,
        drop_response: 0.0,
        duplicate: 0.0,
        max_delay: Duration::ZERO,
    };

    /// A lossy, slow, duplicating network.
    pub const HOSTILE: Faults = Faults {
        drop_request: 0.05,
        drop_response: 0.05,
        duplicate: 0.05,
        max_delay: Duration::from_millis(300),
    };
}

/// The in-process network. A handle's calls to workers carry its term
/// ([`MasterToWorker::fenced`] gives another handle on the same network).
pub struct SimNet {
    shared: Arc<Shared>,
    term: Term,
}

struct Shared {
    /// Reachable master processes by address.
    masters: Mutex<BTreeMap<String, Serving>>,
    /// Every address a master process ever answered at: what a worker is
    /// configured with (`--master a,b`), whether or not they run now.
    addresses: Mutex<BTreeSet<String>>,
    /// Addresses of master processes that are stopped: calls to them wait.
    paused: Mutex<BTreeSet<String>>,
    /// The highest term each worker obeyed, and the calls it obeyed below
    /// that: what the worker term rule forbids.
    obeyed: Mutex<(BTreeMap<WorkerId, Term>, Vec<String>)>,
    /// Reachable worker agents by address.
    workers: Mutex<BTreeMap<String, Worker>>,
    partitioned: Mutex<BTreeSet<WorkerId>>,
    faults: Mutex<Faults>,
    rng: Mutex<SplitMix64>,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet").finish_non_exhaustive()
    }
}

impl SimNet {
    /// A network with the given faults, seeded.
    pub fn new(seed: u64, faults: Faults) -> Arc<SimNet> {
        Arc::new(SimNet {
            shared: Arc::new(Shared {
                masters: Mutex::new(BTreeMap::new()),
                addresses: Mutex::new(BTreeSet::new()),
                paused: Mutex::new(BTreeSet::new()),
                obeyed: Mutex::default(),
                workers: Mutex::new(BTreeMap::new()),
                partitioned: Mutex::new(BTreeSet::new()),
                faults: Mutex::new(faults),
                rng: Mutex::new(SplitMix64::new(seed)),
            }),
            term: Term::ZERO,
        })
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Connects a master process at its advertised address (replacing
    /// whatever answered there).
    pub fn set_master(&self, master: Master) {
        let address = master.config().advertise_address.clone();
        self.attach_master(address, master.into());
    }

    /// Connects the master process at `address`: one master, or one under
    /// a lease, answering as a follower while it does not lead.
    pub fn attach_master(&self, address: String, serving: Serving) {
        lock(&self.shared.addresses).insert(address.clone());
        lock(&self.shared.masters).insert(address, serving);
    }

    /// Disconnects the master process at `address` (it crashed).
    pub fn detach_master(&self, address: &str) {
        lock(&self.shared.masters).remove(address);
        self.unpause_master(address);
    }

    /// The master process at `address` stops (`SIGSTOP`): calls to it wait
    /// without an answer until it resumes.
    pub fn pause_master(&self, address: &str) {
        lock(&self.shared.paused).insert(address.to_string());
    }

    /// The master process at `address` runs again.
    pub fn unpause_master(&self, address: &str) {
        lock(&self.shared.paused).remove(address);
    }

    /// The master acting now, among those connected.
    pub fn current_master(&self) -> Option<Master> {
        lock(&self.shared.masters)
            .values()
            .find_map(|s| s.master().ok())
    }

    /// Calls workers obeyed from a term below one they had obeyed before.
    pub fn term_violations(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.shared.obeyed).1)
    }

    /// Records that worker `id` obeyed a call of this handle's term.
    fn obeyed(&self, id: &WorkerId) {
        let mut obeyed = lock(&self.shared.obeyed);
        let (highest, violations) = &mut *obeyed;
        let seen = highest.entry(id.clone()).or_default();
        if self.term < *seen {
            violations.push(format!(
                "worker {id} obeyed a call of term {} after one of term {seen}",
                self.term
            ));
        }
        *seen = (*seen).max(self.term);
    }

    /// Connects a worker agent (it becomes reachable at its address).
    pub fn attach(&self, worker: Worker) {
        lock(&self.shared.workers).insert(worker.address().to_string(), worker);
    }

    /// Disconnects a worker agent (a crashed or stopped process).
    pub fn detach(&self, worker: &Worker) {
        lock(&self.shared.workers).remove(worker.address());
    }

    /// Cuts a worker off from the master, both ways.
    pub fn partition(&self, id: &WorkerId) {
        lock(&self.shared.partitioned).insert(id.clone());
    }

    /// Restores a worker's link.
    pub fn heal(&self, id: &WorkerId) {
        lock(&self.shared.partitioned).remove(id);
    }

    /// The worker side of the link for `worker`, given the addresses of
    /// every master ever connected, running now or not (it follows the
    /// first, as a worker given `--master a,b` does).
    pub fn link(self: &Arc<Self>, worker: WorkerId) -> Arc<dyn WorkerToMaster> {
        let listed: Vec<String> = lock(&self.shared.addresses).iter().cloned().collect();
        let following = Mutex::new(listed.first().cloned().unwrap_or_default());
        Arc::new(SimLink {
            net: self.clone(),
            worker,
            listed,
            following,
        })
    }

    /// The agent listening at `to.address`; each call then checks that it
    /// is the worker the caller names, as a real worker does.
    fn worker(&self, to: &WorkerEndpoint) -> Result<Worker> {
        lock(&self.shared.workers)
            .get(&to.address)
            .cloned()
            .ok_or_else(|| Error::Unavailable(format!("{}: connection refused", to.address)))
    }

    /// Carries one request over the link of `worker`, with faults.
    async fn carry<T, F, Fut>(&self, worker: &WorkerId, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let (delay, lose_request, lose_response, twice) = {
            let f = *lock(&self.shared.faults);
            let mut rng = lock(&self.shared.rng);
            let delay = f.max_delay.mul_f64(rng.next_f64());
            (
                delay,
                rng.chance(f.drop_request),
                rng.chance(f.drop_response),
                rng.chance(f.duplicate),
            )
        };
        tokio::time::sleep(delay).await;
        if lock(&self.shared.partitioned).contains(worker) {
            return Err(Error::Unavailable(format!("{worker}: network partitioned")));
        }
        if lose_request {
            return Err(Error::Timeout(format!("{worker}: request lost")));
        }
        let answer = call().await;
        if twice {
            let _ = call().await;
        }
        if lose_response {
            return Err(Error::Timeout(format!("{worker}: response lost")));
        }
        answer
    }
}

#[async_trait]
impl MasterToWorker for SimNet {
    async fn master_register(&self, to: &WorkerEndpoint, master: &MasterInfo) -> Result<()> {
        let w = self.worker(to)?;
        self.carry(&to.id, || async {
            w.check_addressed(&to.id, to.instance.as_ref())?;
            w.check_master(self.term)?;
            self.obeyed(&to.id);
            w.master_register(master);
            Ok(())
        })
        .await
    }

    async fn assign(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        spec: &TaskSpec,
        gpus: &[u32],
    ) -> Result<()> {
        let w = self.worker(to)?;
        self.carry(&to.id, || async {
            w.check_addressed(&to.id, to.instance.as_ref())?;
            w.check_master(self.term)?;
            self.obeyed(&to.id);
            w.assign(run.clone(), spec.clone(), gpus.to_vec()).await
        })
        .await
    }

    async fn cancel(&self, to: &WorkerEndpoint, run: &RunningTask, grace: Duration) -> Result<()> {
        let w = self.worker(to)?;
        self.carry(&to.id, || async {
            w.check_addressed(&to.id, to.instance.as_ref())?;
            w.check_master(self.term)?;
            self.obeyed(&to.id);
            w.cancel(run, grace).await
        })
        .await
    }

    async fn follow_output(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        from: OutputFrom,
        keep_following: bool,
    ) -> Result<Follow> {
        let w = self.worker(to)?;
        self.carry(&to.id, || async {
            w.check_addressed(&to.id, to.instance.as_ref())?;
            w.check_master(self.term)?;
            self.obeyed(&to.id);
            w.follow_output(run, from, keep_following)
        })
        .await
    }

    async fn identify(&self, to: &WorkerEndpoint) -> Result<WorkerIdentity> {
        let w = self.worker(to)?;
        self.carry(&to.id, || async { Ok(w.identity()) }).await
    }

    fn fenced(&self, term: Term) -> Arc<dyn MasterToWorker> {
        Arc::new(SimNet {
            shared: self.shared.clone(),
            term,
        })
    }
}

/// One worker's link to its masters: it follows one, moves to the leader
/// a follower names (at once, as `MasterClient` does), and to the next
/// address when the one it follows is gone or knows no leader.
#[derive(Debug)]
struct SimLink {
    net: Arc<SimNet>,
    worker: WorkerId,
    listed: Vec<String>,
    following: Mutex<String>,
}

/// How many redirects in a row a call follows at once.
const MAX_REDIRECTS: usize = 3;

impl SimLink {
    /// The master to send a call to, following redirects. A stopped
    /// master answers nothing: the call waits (the worker's own timeout
    /// gives up on it).
    async fn master(&self) -> Result<Master> {
        let mut redirects = 0;
        loop {
            let address = lock(&self.following).clone();
            while lock(&self.net.shared.paused).contains(&address) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let serving = lock(&self.net.shared.masters).get(&address).cloned();
            let answer = match serving {
                Some(s) => s.master(),
                None => Err(Error::Unavailable(format!("{address}: connection refused"))),
            };
            match answer {
                Ok(m) => return Ok(m),
                Err(Error::NotLeader {
                    leader: Some(leader),
                }) if leader != address && redirects < MAX_REDIRECTS => {
                    redirects += 1;
                    self.moves(&address, &leader);
                }
                Err(e) => {
                    self.failed(&address, &e);
                    return Err(e);
                }
            }
        }
    }

    /// A call to `address` failed with `e`: the next address listed, when
    /// that master is gone, does not lead, or names no leader.
    fn failed(&self, address: &str, e: &Error) {
        if !matches!(e, Error::Unavailable(_) | Error::NotLeader { .. }) {
            return;
        }
        let next = self
            .listed
            .iter()
            .position(|a| a == address)
            .map_or(0, |i| (i + 1) % self.listed.len().max(1));
        if let Some(to) = self.listed.get(next) {
            self.moves(address, to);
        }
    }

    /// Follows `to`, unless a call already moved the link off `from`.
    fn moves(&self, from: &str, to: &str) {
        let mut following = lock(&self.following);
        if *following == from {
            *following = to.to_string();
        }
    }

    /// Carries `call` to the master followed now.
    async fn send<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Master) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let m = self.master().await?;
        let address = lock(&self.following).clone();
        let answer = self.net.carry(&self.worker, || call(m.clone())).await;
        if let Err(e) = &answer {
            self.failed(&address, e);
        }
        answer
    }
}

#[async_trait]
impl WorkerToMaster for SimLink {
    async fn register(&self, registration: &Registration) -> Result<RegistrationReply> {
        self.send(|m| async move { m.register(registration.clone()).await })
            .await
    }

    async fn heartbeat(
        &self,
        worker: &WorkerIdentity,
        telemetry: &Telemetry,
    ) -> Result<HeartbeatReply> {
        self.send(|m| async move { m.heartbeat(worker, telemetry.clone()).await })
            .await
    }

    async fn report(&self, result: &TaskResult) -> Result<()> {
        self.send(|m| async move { m.report(result.clone()).await })
            .await
    }

    async fn leave(&self, worker: &WorkerIdentity) -> Result<()> {
        self.send(|m| async move { m.leave(worker) }).await
    }

    fn follow(&self, address: &str) {
        *lock(&self.following) = address.to_string();
    }
}

// ---- fake runtime -------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Program {
    runs_for: Duration,
    code: i32,
    ignores_term: bool,
}

impl Program {
    fn parse(command: &[String], env: &BTreeMap<String, String>) -> Result<Program> {
        let secs = |s: &String| s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        let bad = || {
            Error::InvalidInput(ValidationError::Invalid {
            field: "command",
            reason: format!("fake runtime runs [\"run\", secs, code], [\"stubborn\", secs] or [\"fail-until\", n, secs], not {command:?}"),
        })
        };
        match command {
            [p, s, c] if p == "run" => Ok(Program {
                runs_for: Duration::from_secs_f64(secs(s).ok_or_else(bad)?),
                code: c.parse().map_err(|_| bad())?,
                ignores_term: false,
            }),
            [p, s] if p == "stubborn" => Ok(Program {
                runs_for: Duration::from_secs_f64(secs(s).ok_or_else(bad)?),
                code: 0,
                ignores_term: true,
            }),
            [p, n, s] if p == "fail-until" => {
                let n: u32 = n.parse().map_err(|_| bad())?;
                let attempt: u32 = env
                    .get(ATTEMPT_ENV)
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                Ok(Program {
                    runs_for: Duration::from_secs_f64(secs(s).ok_or_else(bad)?),
                    code: i32::from(attempt < n),
                    ignores_term: false,
                })
            }
            _ => Err(bad()),
        }
    }
}

#[derive(Debug)]
struct FakeContainer {
    labels: BTreeMap<String, String>,
    started_at: Timestamp,
    exit: watch::Receiver<Option<ExitStatus>>,
    signal: watch::Sender<Option<i32>>,
    log: Arc<OutputLog>,
}

/// What every simulated host runs now, by task: the cluster-wide check of
/// the at-most-one rule (see the module docs).
#[derive(Debug)]
pub struct RunningSet {
    /// Task → (host, attempt) of its running container.
    runs: Mutex<BTreeMap<String, (String, String)>>,
    /// (host, GPU index) → (task, attempt) of the running container that
    /// has it: the check that no two runs share a device.
    gpus: Mutex<BTreeMap<(String, u32), (String, String)>>,
    /// Tasks recorded completed.
    completed: Mutex<BTreeSet<TaskId>>,
    /// Every (task, attempt) ever started: none may start twice.
    starts: Mutex<BTreeSet<(String, String)>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// How long past its limit and grace a run may end (a heartbeat timeout).
    slack: Duration,
}

impl RunningSet {
    fn new(violations: Arc<Mutex<Vec<String>>>, slack: Duration) -> Self {
        RunningSet {
            runs: Mutex::default(),
            gpus: Mutex::default(),
            completed: Mutex::default(),
            starts: Mutex::default(),
            violations,
            slack,
        }
    }

    fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    fn run_of(labels: &BTreeMap<String, String>) -> Option<(String, String, String)> {
        Some((
            labels.get(LABEL_TASK)?.clone(),
            labels.get(LABEL_WORKER)?.clone(),
            labels.get(LABEL_ATTEMPT)?.clone(),
        ))
    }

    fn started(&self, labels: &BTreeMap<String, String>, gpus: &[Gpu]) {
        let Some((task, host, attempt)) = Self::run_of(labels) else {
            return;
        };
        for g in gpus {
            let run = (task.clone(), attempt.clone());
            let other = lock(&self.gpus).insert((host.clone(), g.index), run);
            if let Some((t, a)) = other {
                self.violation(format!(
                    "task {task}: attempt {attempt} got GPU {} of {host} while attempt {a} of task {t} has it",
                    g.index
                ));
            }
        }
        if !lock(&self.starts).insert((task.clone(), attempt.clone())) {
            self.violation(format!(
                "task {task}: attempt {attempt} started a second time, on {host}"
            ));
        }
        if TaskId::new(task.as_str()).is_ok_and(|t| lock(&self.completed).contains(&t)) {
            self.violation(format!(
                "task {task} completed, yet attempt {attempt} started on {host}"
            ));
        }
        let other = lock(&self.runs).insert(task.clone(), (host.clone(), attempt.clone()));
        if let Some((h, a)) = other {
            self.violation(format!(
                "task {task}: attempt {attempt} started on {host} while attempt {a} runs on {h}"
            ));
        }
    }

    fn ended(
        &self,
        labels: &BTreeMap<String, String>,
        ran: Duration,
        limit: Option<(Duration, Duration)>,
    ) {
        let Some((task, host, attempt)) = Self::run_of(labels) else {
            return;
        };
        let mut runs = lock(&self.runs);
        if runs.get(&task) == Some(&(host.clone(), attempt.clone())) {
            runs.remove(&task);
        }
        drop(runs);
        lock(&self.gpus).retain(|(h, _), (t, a)| !(*h == host && *t == task && *a == attempt));
        if let Some((limit, grace)) = limit {
            if ran > limit + grace + self.slack {
                self.violation(format!(
                    "task {task}: attempt {attempt} ran {ran:?}, past its limit of {limit:?} and grace of {grace:?}"
                ));
            }
        }
    }
}

/// A fake container's exit status and signal line.
type Handles = (
    watch::Receiver<Option<ExitStatus>>,
    watch::Sender<Option<i32>>,
);

/// Pretend containers on tokio time (see the module docs for programs).
/// Like the supervised process runtime, a container outlives its worker
/// agent only until its lease runs out, and never runs past its time
/// limit: either way it gets SIGTERM, then SIGKILL after its grace.
#[derive(Debug)]
pub struct FakeRuntime {
    containers: Mutex<BTreeMap<ContainerId, FakeContainer>>,
    next: AtomicU64,
    clock: Clock,
    /// Until when the worker stands for its runs.
    lease: watch::Sender<Option<Instant>>,
    /// The cluster-wide view its containers report to, if any.
    running: Option<Arc<RunningSet>>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new(Clock::starting_at(Timestamp::ZERO))
    }
}

impl FakeRuntime {
    /// An empty runtime whose containers' starts read on `clock`.
    pub fn new(clock: Clock) -> Self {
        FakeRuntime {
            containers: Mutex::default(),
            next: AtomicU64::new(0),
            clock,
            lease: watch::channel(None).0,
            running: None,
        }
    }

    /// An empty runtime whose containers report to `running`.
    fn reporting_to(clock: Clock, running: Arc<RunningSet>) -> Self {
        FakeRuntime {
            running: Some(running),
            ..FakeRuntime::new(clock)
        }
    }

    /// Containers still running (for leak checks).
    pub fn running(&self) -> usize {
        lock(&self.containers)
            .values()
            .filter(|c| c.exit.borrow().is_none())
            .count()
    }

    /// Kills every container at once (a host crash).
    pub fn kill_all(&self) {
        for c in lock(&self.containers).values() {
            let _ = c.signal.send(Some(9));
        }
    }

    fn get(&self, id: &ContainerId) -> Result<Handles> {
        let all = lock(&self.containers);
        let c = all
            .get(id)
            .ok_or_else(|| Error::not_found("container", id))?;
        Ok((c.exit.clone(), c.signal.clone()))
    }
}

async fn exited(mut rx: watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    loop {
        if let Some(e) = *rx.borrow_and_update() {
            return e;
        }
        if rx.changed().await.is_err() {
            return ExitStatus {
                code: None,
                signal: Some(9),
                oom_killed: false,
                usage: None,
            };
        }
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<ContainerId> {
        let program = Program::parse(&spec.command, &spec.env)?;
        let id = ContainerId(format!(
            "fake-{}",
            self.next.fetch_add(1, Ordering::Relaxed)
        ));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (sig_tx, mut sig_rx) = watch::channel(None::<i32>);
        let log = OutputLog::new(1 << 20);
        log.push(
            OutputStream::Stdout,
            format!("{} started\n", spec.name).as_bytes(),
        );
        let out = log.clone();
        let started = Instant::now();
        if let Some(lease) = spec.lease {
            self.lease.send_if_modified(|l| {
                let later = l.is_none_or(|l| l < started + lease);
                if later {
                    *l = Some(started + lease);
                }
                later
            });
        }
        let mut lease = self.lease.subscribe();
        let (limit, grace) = (spec.time_limit, spec.grace);
        let running = self.running.clone();
        let labels = spec.labels.clone();
        if let Some(set) = &running {
            set.started(&labels, &spec.gpus);
        }
        tokio::spawn(async move {
            let deadline = started + program.runs_for;
            // When the host stops the run on its own: its time limit, or
            // its lease running out; then SIGKILL after the grace.
            let mut forced: Option<Instant> = None;
            let status = loop {
                let limit_at = limit.map(|l| started + l);
                let lease_at = *lease.borrow_and_update();
                let stop_at = match forced {
                    Some(kill_at) => Some(kill_at),
                    None => limit_at.into_iter().chain(lease_at).min(),
                };
                let stop = async {
                    match stop_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    // A fake run keeps a core busy and a megabyte resident.
                    _ = tokio::time::sleep_until(deadline) => break ExitStatus {
                        code: Some(program.code),
                        signal: None,
                        oom_killed: false,
                        usage: Some(Usage {
                            user_cpu_ms: program.runs_for.as_millis() as u64,
                            peak_memory_bytes: 1 << 20,
                            ..Usage::default()
                        }),
                    },
                    () = stop => match forced {
                        Some(_) => break ExitStatus { code: None, signal: Some(9), oom_killed: false, usage: None },
                        None if program.ignores_term => {
                            out.push(OutputStream::Stderr, b"ignoring SIGTERM\n");
                            forced = Some(Instant::now() + grace);
                        }
                        None => break ExitStatus { code: None, signal: Some(15), oom_killed: false, usage: None },
                    },
                    _ = lease.changed() => {}
                    changed = sig_rx.changed() => {
                        let sig = if changed.is_ok() { *sig_rx.borrow_and_update() } else { Some(9) };
                        match sig {
                            Some(15) if program.ignores_term => out.push(OutputStream::Stderr, b"ignoring SIGTERM\n"),
                            Some(s) => break ExitStatus { code: None, signal: Some(s), oom_killed: false, usage: None },
                            None => {}
                        }
                    }
                }
            };
            out.push(
                OutputStream::Stdout,
                format!("exited {status:?}\n").as_bytes(),
            );
            out.close();
            if let Some(set) = &running {
                set.ended(&labels, started.elapsed(), limit.map(|l| (l, grace)));
            }
            let _ = exit_tx.send(Some(status));
        });
        lock(&self.containers).insert(
            id.clone(),
            FakeContainer {
                labels: spec.labels.clone(),
                started_at: self.clock.now(),
                exit: exit_rx,
                signal: sig_tx,
                log,
            },
        );
        Ok(id)
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitStatus> {
        let (exit, _) = self.get(id)?;
        Ok(exited(exit).await)
    }

    async fn output(&self, id: &ContainerId) -> Result<Follow> {
        let all = lock(&self.containers);
        let c = all
            .get(id)
            .ok_or_else(|| Error::not_found("container", id))?;
        Ok(c.log.follow(OutputFrom::Offset(0), true))
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        let Ok((exit, signal)) = self.get(id) else {
            return Ok(());
        };
        if exit.borrow().is_some() {
            return Ok(());
        }
        let _ = signal.send(Some(15));
        if tokio::time::timeout(grace, exited(exit.clone()))
            .await
            .is_err()
        {
            let _ = signal.send(Some(9));
            exited(exit).await;
        }
        Ok(())
    }

    async fn remove(&self, id: &ContainerId) -> Result<()> {
        if let Some(c) = lock(&self.containers).remove(id) {
            let _ = c.signal.send(Some(9));
        }
        Ok(())
    }

    async fn list(&self, key: &str, value: &str) -> Result<Vec<ContainerInfo>> {
        Ok(lock(&self.containers)
            .iter()
            .filter(|(_, c)| c.labels.get(key).is_some_and(|v| v == value))
            .map(|(id, c)| ContainerInfo {
                id: id.clone(),
                labels: c.labels.clone(),
                running: c.exit.borrow().is_none(),
                started_at: Some(c.started_at),
            })
            .collect())
    }

    async fn renew_lease(&self, lease: Duration) -> Result<()> {
        self.lease.send_replace(Some(Instant::now() + lease));
        Ok(())
    }
}

// ---- cluster --------------------------------------------------------------

struct SimWorker {
    worker: Worker,
    runtime: Arc<FakeRuntime>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<()>>,
}

/// A master, its workers, the network and the store, all in one process.
pub struct SimCluster {
    /// The network (for faults and partitions).
    pub net: Arc<SimNet>,
    /// The store the master writes.
    pub store: Arc<MemoryStore>,
    /// The master.
    pub master: Master,
    /// The clock everyone shares.
    pub clock: Clock,
    workers: BTreeMap<WorkerId, SimWorker>,
    capacities: BTreeMap<WorkerId, Resources>,
    /// The host directories each worker allows bind mounts from.
    allowed_mounts: BTreeMap<WorkerId, Vec<String>>,
    /// The labels each worker carries (its `--label`s).
    worker_labels: BTreeMap<WorkerId, Labels>,
    /// Each host's runtime outlives its agent (as Docker outlives a
    /// `kill -9` of the worker).
    runtimes: BTreeMap<WorkerId, Arc<FakeRuntime>>,
    seed: u64,
    checker: Checker,
    running: Arc<RunningSet>,
    /// The masters, when several share the store.
    ha: Option<ha::Ha>,
}

impl std::fmt::Debug for SimCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimCluster")
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// The program a fake task runs: `secs` seconds, then exit `code`.
pub fn fake_task(secs: u64, code: i32, cpu: f64) -> TaskSpec {
    TaskSpec::new(
        "fake:latest",
        vec!["run".into(), secs.to_string(), code.to_string()],
        Resources::new(cpu, 0.5, 0.0, 0).expect("valid resources"),
    )
}

impl SimCluster {
    /// A master with `config` and no workers, on network faults `faults`.
    pub async fn start(seed: u64, faults: Faults, config: MasterConfig) -> SimCluster {
        let clock = Clock::starting_at(Timestamp::from_millis(1_700_000_000_000));
        let net = SimNet::new(seed, faults);
        let store = Arc::new(MemoryStore::new());
        let master = Master::start(config, store.clone(), store.clone(), net.clone(), clock)
            .await
            .expect("master starts on a memory store");
        net.set_master(master.clone());
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let timeout = master.config().liveness.timeout;
        let running = Arc::new(RunningSet::new(violations.clone(), timeout));
        let checker = Checker::new(timeout, faults.max_delay, violations, running.clone());
        checker.shared.watch(&master, 1.0);
        SimCluster::assemble(seed, net, store, master, clock, checker, running)
    }

    fn assemble(
        seed: u64,
        net: Arc<SimNet>,
        store: Arc<MemoryStore>,
        master: Master,
        clock: Clock,
        checker: Checker,
        running: Arc<RunningSet>,
    ) -> SimCluster {
        SimCluster {
            net,
            store,
            master,
            clock,
            workers: BTreeMap::new(),
            capacities: BTreeMap::new(),
            allowed_mounts: BTreeMap::new(),
            worker_labels: BTreeMap::new(),
            runtimes: BTreeMap::new(),
            seed,
            checker,
            running,
            ha: None,
        }
    }

    /// Starts (or restarts) worker `id` with `capacity` and lets it register.
    pub async fn start_worker(&mut self, id: &str, capacity: Resources) -> Worker {
        let wid = WorkerId::new(id).expect("valid worker id");
        let mut config = WorkerConfig::new(wid.clone(), format!("sim-{id}:1"), capacity);
        config.seed = self.seed ^ self.workers.len() as u64;
        // One instance per id, as a state directory kept across restarts.
        config.instance = InstanceId::new(format!("sim-{id}")).expect("valid instance");
        config.allow_mounts = self.allowed_mounts.get(&wid).cloned().unwrap_or_default();
        config.labels = self.worker_labels.get(&wid).cloned().unwrap_or_default();
        let (clock, running) = (self.clock, self.running.clone());
        let runtime = self
            .runtimes
            .entry(wid.clone())
            .or_insert_with(|| Arc::new(FakeRuntime::reporting_to(clock, running)))
            .clone();
        let worker = Worker::new(
            config,
            runtime.clone(),
            self.net.link(wid.clone()),
            self.clock,
        );
        worker
            .adopt_orphans()
            .await
            .expect("the fake runtime lists");
        self.net.attach(worker.clone());
        self.checker.reachable(&wid);
        let (stop, rx) = watch::channel(false);
        let w = worker.clone();
        let handle = tokio::spawn(async move { w.run(rx).await });
        self.workers.insert(
            wid.clone(),
            SimWorker {
                worker: worker.clone(),
                runtime,
                stop,
                handle,
            },
        );
        self.capacities.insert(wid, capacity);
        worker
    }

    /// Starts a second agent under the id of worker `id`, from another
    /// instance at another address (a second process given the same
    /// `--id`), and lets it try to register for up to `patience`. Returns
    /// the master's refusal, or `None` if it was taken (it is then
    /// stopped: its host and containers go away).
    pub async fn start_impostor(
        &mut self,
        id: &str,
        capacity: Resources,
        patience: Duration,
    ) -> Option<Error> {
        let wid = WorkerId::new(id).expect("valid worker id");
        let mut config = WorkerConfig::new(wid.clone(), format!("impostor-{id}:1"), capacity);
        config.instance = InstanceId::new(format!("impostor-{id}")).expect("valid instance");
        config.seed = !self.seed;
        let runtime = Arc::new(FakeRuntime::new(self.clock));
        let worker = Worker::new(config, runtime.clone(), self.net.link(wid), self.clock);
        self.net.attach(worker.clone());
        let (_stop, rx) = watch::channel(false);
        let outcome = tokio::time::timeout(patience, worker.run(rx)).await;
        worker.abort();
        runtime.kill_all();
        self.net.detach(&worker);
        match outcome {
            Ok(Err(refusal)) => Some(refusal),
            Ok(Ok(())) | Err(_) => None,
        }
    }

    /// The running worker agent `id`, if it runs.
    pub fn worker(&self, id: &str) -> Option<Worker> {
        self.workers
            .get(&WorkerId::new(id).ok()?)
            .map(|w| w.worker.clone())
    }

    /// The running worker agents' ids.
    pub fn live_workers(&self) -> Vec<WorkerId> {
        self.workers.keys().cloned().collect()
    }

    /// Every worker ever started (live or not).
    pub fn all_workers(&self) -> Vec<WorkerId> {
        self.capacities.keys().cloned().collect()
    }

    /// `kill -9` on the worker's host: the agent and its containers die.
    pub fn crash_worker(&mut self, id: &WorkerId) {
        if let Some(w) = self.workers.remove(id) {
            self.checker.unreachable(id);
            w.worker.abort();
            w.handle.abort();
            w.runtime.kill_all();
            self.net.detach(&w.worker);
        }
    }

    /// `kill -9` on the worker agent only: its containers keep running.
    pub fn kill_agent(&mut self, id: &WorkerId) {
        if let Some(w) = self.workers.remove(id) {
            self.checker.unreachable(id);
            w.worker.abort();
            w.handle.abort();
            self.net.detach(&w.worker);
        }
    }

    /// Containers running on a host, whether or not its agent is alive.
    pub fn host_containers(&self, id: &WorkerId) -> usize {
        self.runtimes.get(id).map_or(0, |r| r.running())
    }

    /// SIGTERM to the worker: its shutdown path runs, then it exits.
    pub async fn shutdown_worker(&mut self, id: &WorkerId) -> Option<(ShutdownSummary, usize)> {
        let w = self.workers.remove(id)?;
        let summary = w.worker.shutdown().await;
        let _ = w.stop.send(true);
        let _ = w.handle.await;
        self.checker.unreachable(id);
        self.net.detach(&w.worker);
        Some((summary, w.runtime.running()))
    }

    /// Starts a stopped or crashed worker again, with its old capacity.
    pub async fn restart_worker(&mut self, id: &WorkerId) -> Option<Worker> {
        if self.workers.contains_key(id) {
            return None;
        }
        let capacity = *self.capacities.get(id)?;
        Some(self.start_worker(id.as_str(), capacity).await)
    }

    /// Worker `id`, when it next starts, allows bind mounts from under
    /// `prefixes` (its `--allow-mount`).
    pub fn allow_mounts(&mut self, id: &str, prefixes: Vec<String>) {
        let wid = WorkerId::new(id).expect("valid worker id");
        self.allowed_mounts.insert(wid, prefixes);
    }

    /// Worker `id`, when it next starts, carries `labels` (its `--label`s),
    /// which tasks' constraints must match.
    pub fn label_worker(&mut self, id: &str, labels: Labels) {
        let wid = WorkerId::new(id).expect("valid worker id");
        self.worker_labels.insert(wid, labels);
    }

    /// Cuts the worker off.
    pub fn partition(&mut self, id: &WorkerId) {
        self.checker.unreachable(id);
        self.net.partition(id);
    }

    /// Restores the worker's link.
    pub fn heal(&mut self, id: &WorkerId) {
        self.net.heal(id);
        if self.workers.contains_key(id) {
            self.checker.reachable(id);
        }
    }

    /// Lets virtual time pass.
    pub async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Checks what must hold at every instant; panics naming the seed.
    /// Returns the tasks it checked.
    pub async fn check(&mut self) -> Vec<TaskRecord> {
        let seed = self.seed;
        let tasks = self
            .store
            .list_tasks(&TaskFilter::default())
            .await
            .expect("list");
        for t in &tasks {
            if let Some(final_status) = self.checker.finals.get(&t.id) {
                assert_eq!(
                    t.status, *final_status,
                    "seed {seed}: task {} left terminal status {final_status}",
                    t.id
                );
            }
            if t.status.is_terminal() {
                self.checker.finals.insert(t.id.clone(), t.status);
            }
            let (counts, p) = (t.counts(), &t.spec.policy);
            assert!(
                counts.total <= MAX_ATTEMPTS
                    && counts.failures <= p.retries + 1
                    && (p.crash_limit == 0 || counts.losses <= p.crash_limit + 1)
                    && (p.requeue || counts.losses <= 1),
                "seed {seed}: task {} ran past its budgets: {counts:?} under {p:?}",
                t.id
            );
            if let Some(r) = self.store.get_result(&t.id).await.expect("get result") {
                assert!(
                    t.status.is_terminal(),
                    "seed {seed}: task {} has a result while {}",
                    t.id,
                    t.status
                );
                assert_eq!(
                    r.status, t.status,
                    "seed {seed}: task {}: result disagrees with its outcome",
                    t.id
                );
                assert_eq!(
                    (Some(&r.worker_id), r.attempt),
                    (t.worker.as_ref(), t.attempt),
                    "seed {seed}: task {}: result from another run",
                    t.id
                );
            }
        }
        for w in self.leader().map(|m| m.workers()).unwrap_or_default() {
            assert!(
                w.allocated.fits_within(&w.capacity),
                "seed {seed}: {} allocated {} > capacity {}",
                w.id,
                w.allocated,
                w.capacity
            );
            assert_eq!(
                w.allocated.checked_add(&w.available),
                Some(w.capacity),
                "seed {seed}: {}: allocated + available ≠ capacity",
                w.id
            );
        }
        let mut violations = self.checker.violations();
        violations.extend(self.net.term_violations());
        violations.extend(self.check_ha().await);
        let workers = self.store.list_workers().await.expect("list workers");
        violations.extend(pipeline_violations(&tasks, &workers));
        if self.ha.is_none() {
            violations.extend(self.gate_progress(&tasks));
        }
        assert!(violations.is_empty(), "seed {seed}: {violations:?}");
        tasks
    }

    /// What a single master owes its gate at every instant (with one
    /// master, the one that writes an end is the one that learns it):
    /// a dependent whose parents all ended a moment ago no longer waits
    /// for them, one whose parent ended as its condition can never accept
    /// is cancelled, and no member of a throttled array is held at the
    /// limit while its array has a slot free.
    fn gate_progress(&self, tasks: &[TaskRecord]) -> Vec<String> {
        let now = self.clock.now();
        let by_id: BTreeMap<&TaskId, &TaskRecord> = tasks.iter().map(|t| (&t.id, t)).collect();
        let pending: Vec<TaskRecord> = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Pending)
            .cloned()
            .collect();
        let reasons = self.master.waiting_each(&pending);
        let mut broken = Vec::new();
        // Array → (limit, members admitted, members held at the limit).
        let mut arrays: BTreeMap<&ArrayId, (u32, usize, Vec<&TaskId>)> = BTreeMap::new();
        for t in tasks {
            if let Some(ArrayMember {
                id,
                limit: Some(limit),
                ..
            }) = &t.array
            {
                arrays.entry(id).or_insert((*limit, 0, Vec::new()));
            }
        }
        for (t, reason) in pending.iter().zip(&reasons) {
            let reason = reason.as_deref().unwrap_or("");
            let waits_for_parents = reason.starts_with(WAITING_FOR_PARENTS);
            if t.attempt == 0 && !t.spec.after.is_empty() {
                // Parents that ended long enough ago for their end to
                // have been handled (a removed parent counts as ended).
                let ended = |d: &Dependency| {
                    by_id.get(&d.task).is_none_or(|p| {
                        p.status.is_terminal()
                            && p.finished_at
                                .is_some_and(|f| now.saturating_since(f) >= GATE_GRACE)
                    })
                };
                let never = t.spec.after.iter().find(|d| {
                    ended(d)
                        && by_id
                            .get(&d.task)
                            .is_some_and(|p| verdict_of(d, p) == Some(Verdict::Never))
                });
                if let Some(d) = never {
                    broken.push(format!(
                        "task {} still pending ({reason}) though its dependency {d} can never hold",
                        t.id
                    ));
                } else if waits_for_parents && t.spec.after.iter().all(ended) {
                    broken.push(format!(
                        "task {} still waits for its dependencies ({reason}) though every parent ended",
                        t.id
                    ));
                }
            }
            if let Some(ArrayMember {
                id, limit: Some(_), ..
            }) = &t.array
            {
                let a = arrays.get_mut(id).expect("counted above");
                if reason.starts_with(ARRAY_LIMIT) {
                    a.2.push(&t.id);
                } else if !waits_for_parents {
                    a.1 += 1;
                }
            }
        }
        for t in tasks.iter().filter(|t| t.status == TaskStatus::Running) {
            if let Some(ArrayMember {
                id, limit: Some(_), ..
            }) = &t.array
            {
                arrays.get_mut(id).expect("counted above").1 += 1;
            }
        }
        for (array, (limit, admitted, held)) in arrays {
            if !held.is_empty() && admitted < limit as usize {
                broken.push(format!(
                    "array {array} holds {held:?} at its limit of {limit} with only {admitted} admitted"
                ));
            }
        }
        broken
    }

    /// Checks the end state once the cluster is quiet: every task ended
    /// exactly once, nothing is allocated, reconciliation finds nothing to
    /// fix, and no container is left running.
    pub async fn check_quiescent(&mut self) {
        let tasks = self.check().await;
        let seed = self.seed;
        // What waits for nothing that can still happen, said precisely.
        let by_id: BTreeMap<&TaskId, &TaskRecord> = tasks.iter().map(|t| (&t.id, t)).collect();
        let pending: Vec<TaskRecord> = tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Pending)
            .cloned()
            .collect();
        let reasons = self
            .leader()
            .map(|m| m.waiting_each(&pending))
            .unwrap_or_default();
        for (i, t) in pending.iter().enumerate() {
            let reason = reasons.get(i).cloned().flatten();
            let parents_ended = t
                .spec
                .after
                .iter()
                .all(|d| by_id.get(&d.task).is_none_or(|p| p.status.is_terminal()));
            assert!(
                t.attempt != 0 || t.spec.after.is_empty() || !parents_ended,
                "seed {seed}: dependent {} still pending at quiescence though every parent ended ({:?}; waiting: {reason:?}; parents: {:?})",
                t.id,
                t.reason,
                t.spec
                    .after
                    .iter()
                    .map(|d| (d.to_string(), by_id.get(&d.task).map(|p| p.status)))
                    .collect::<Vec<_>>()
            );
            if let Some(m) = t.array.as_ref().filter(|m| m.limit.is_some()) {
                panic!(
                    "seed {seed}: member {} of throttled array {} (%{:?}) left pending at quiescence ({:?}; waiting: {reason:?})",
                    t.id, m.id, m.limit, t.reason
                );
            }
        }
        for t in &tasks {
            assert!(
                t.status.is_terminal(),
                "seed {seed}: task {} never ended: {} on {:?} ({:?})",
                t.id,
                t.status,
                t.worker,
                t.reason
            );
        }
        let leader = self
            .leader()
            .expect("a master leads once the cluster is quiet");
        for w in leader.workers() {
            assert!(
                w.allocated.is_zero(),
                "seed {seed}: {} still has {} allocated for {:?}",
                w.id,
                w.allocated,
                w.tasks
            );
        }
        let r = leader.reconcile().await.expect("reconcile");
        assert!(r.is_clean(), "seed {seed}: the ledger had drifted: {r:?}");
        for (id, rt) in &self.runtimes {
            assert_eq!(
                rt.running(),
                0,
                "seed {seed}: containers left running on {id}"
            );
        }
        for (id, w) in &self.workers {
            assert!(
                w.worker.running().is_empty(),
                "seed {seed}: {id} still tracks runs"
            );
            // After takeovers, every worker follows the last leader (a
            // lossy network may have dropped its latest beat).
            if self.ha.is_some() {
                let seen = leader.workers().into_iter().find(|v| v.id == *id);
                assert!(
                    w.worker.term() == leader.term()
                        && seen.as_ref().is_some_and(|v| v.registered && v.health != crate::liveness::Health::Lost),
                    "seed {seed}: {id} does not follow the leader of term {} (its term {}; the leader sees {:?})",
                    leader.term(),
                    w.worker.term(),
                    seen.map(|v| (v.registered, v.health))
                );
            }
        }
    }

    /// Every task's status.
    pub async fn statuses(&self) -> BTreeMap<TaskId, TaskStatus> {
        let tasks = self
            .store
            .list_tasks(&TaskFilter::default())
            .await
            .expect("list");
        tasks.into_iter().map(|t| (t.id, t.status)).collect()
    }

    /// Stops the master's driver and every worker loop.
    pub async fn stop(mut self) {
        for (_, w) in std::mem::take(&mut self.workers) {
            w.worker.abort();
            w.handle.abort();
        }
        self.stop_ha();
        if self.ha.is_none() {
            self.master.shutdown().await;
        }
        self.checker.stop();
    }
}

/// How a dependent cancelled because a parent's end can never satisfy it
/// is told.
const UNMET: &str = "dependency never satisfied";
/// How a dependent held for its parents is told.
const WAITING_FOR_PARENTS: &str = "waiting for its dependencies";
/// How an array member held at its array's throttle is told.
const ARRAY_LIMIT: &str = "array limit";
/// How long after a parent's end its single master may take to decide its
/// dependents.
const GATE_GRACE: Duration = Duration::from_secs(2);

/// What dependencies, array throttles and constraints promise, read from
/// the store alone (so it holds whatever the masters did):
///
/// - a task that names parents is never assigned (any attempt, any
///   history, running or completed) unless every parent ended as its
///   condition asks;
/// - a task cancelled for an unmet dependency never ran, a parent of its
///   ended as its condition can never accept (or no longer exists), its
///   reason names that parent and its end, and a root it names is an
///   ended ancestor;
/// - no throttled array has more members running or ending than its limit;
/// - every running or ending task's worker carries labels its constraints
///   admit.
pub fn pipeline_violations(tasks: &[TaskRecord], workers: &[WorkerRecord]) -> Vec<String> {
    let by_id: BTreeMap<&TaskId, &TaskRecord> = tasks.iter().map(|t| (&t.id, t)).collect();
    let labels: BTreeMap<&WorkerId, &Labels> = workers.iter().map(|w| (&w.id, &w.labels)).collect();
    let mut broken = Vec::new();
    // Array → (limit, members running or ending).
    let mut throttled: BTreeMap<&ArrayId, (u32, Vec<&TaskId>)> = BTreeMap::new();
    for t in tasks {
        let assigned = t.attempt >= 1
            || !t.history.is_empty()
            || matches!(t.status, TaskStatus::Running | TaskStatus::Completed);
        if assigned {
            for d in &t.spec.after {
                // A parent removed by retention cannot be judged.
                let Some(p) = by_id.get(&d.task) else {
                    continue;
                };
                if verdict_of(d, p) != Some(Verdict::Met) {
                    broken.push(format!(
                        "task {} was assigned ({}, attempt {}, {} ended attempts) though its dependency {d} is {}",
                        t.id,
                        t.status,
                        t.attempt,
                        t.history.len(),
                        p.status
                    ));
                }
            }
        }
        let reason = t.reason.as_deref().unwrap_or("");
        if t.status == TaskStatus::Cancelled && reason.starts_with(UNMET) {
            broken.extend(unmet_violations(t, reason, &by_id));
        }
        if let Some(ArrayMember {
            id,
            limit: Some(limit),
            ..
        }) = &t.array
        {
            let entry = throttled.entry(id).or_insert((*limit, Vec::new()));
            if t.status == TaskStatus::Running || t.ending().is_some() {
                entry.1.push(&t.id);
            }
        }
        if !t.spec.constraints.is_empty()
            && (t.status == TaskStatus::Running || t.ending().is_some())
        {
            if let Some(w) = &t.worker {
                match labels.get(w) {
                    Some(l) if admits_all(&t.spec.constraints, l) => {}
                    found => broken.push(format!(
                        "task {} runs on {w}, whose labels {found:?} do not satisfy its constraints {:?}",
                        t.id, t.spec.constraints
                    )),
                }
            }
        }
    }
    for (array, (limit, busy)) in throttled {
        if busy.len() > limit as usize {
            broken.push(format!(
                "array {array} (limit {limit}) has {} members running or ending: {busy:?}",
                busy.len()
            ));
        }
    }
    broken
}

/// What must hold of `t`, cancelled for an unmet dependency with `reason`.
/// What `p`'s end means for a dependent: its condition's verdict, except
/// that a parent cancelled as never satisfiable never ran, so none of its
/// subtree runs, whatever the condition.
fn verdict_of(d: &Dependency, p: &TaskRecord) -> Option<Verdict> {
    let unmet = p.status == TaskStatus::Cancelled
        && p.reason.as_deref().is_some_and(|r| r.starts_with(UNMET));
    if unmet {
        return Some(Verdict::Never);
    }
    d.condition.verdict(p.status)
}

fn unmet_violations(
    t: &TaskRecord,
    reason: &str,
    by_id: &BTreeMap<&TaskId, &TaskRecord>,
) -> Vec<String> {
    let mut broken = Vec::new();
    if t.attempt != 0 || !t.history.is_empty() {
        broken.push(format!(
            "task {} was cancelled as never satisfiable, yet it was assigned (attempt {}, {} ended attempts)",
            t.id,
            t.attempt,
            t.history.len()
        ));
    }
    let never = |d: &Dependency| {
        by_id
            .get(&d.task)
            .is_none_or(|p| verdict_of(d, p) == Some(Verdict::Never))
    };
    if !t.spec.after.iter().any(never) {
        broken.push(format!(
            "task {} was cancelled ({reason}) though each of its dependencies {:?} may still hold",
            t.id, t.spec.after
        ));
    }
    // "…: <condition> and task <parent> <status>[ (root: task <root>)]"
    let named = t.spec.after.iter().find(|d| {
        by_id.get(&d.task).is_some_and(|p| {
            reason.contains(&format!("{} and task {} {}", d.condition, d.task, p.status))
        })
    });
    let gone = reason.contains("no longer exists");
    match named {
        None if !gone => broken.push(format!(
            "task {}: the reason {reason:?} names none of its parents {:?} as it ended",
            t.id, t.spec.after
        )),
        None => {}
        Some(d) => {
            let parent = by_id[&d.task];
            if never(d) {
                // The parent itself was cancelled this way: its root is
                // this chain's root, and is named.
                let transitive = parent.status == TaskStatus::Cancelled
                    && parent
                        .reason
                        .as_deref()
                        .is_some_and(|r| r.starts_with(UNMET));
                if transitive && !reason.contains("(root: task ") {
                    broken.push(format!(
                        "task {}: the reason {reason:?} names no root, though its parent {} was cancelled as never satisfiable ({:?})",
                        t.id, d.task, parent.reason
                    ));
                }
            } else {
                broken.push(format!(
                    "task {}: the reason {reason:?} names {d}, which holds",
                    t.id
                ));
            }
        }
    }
    if let Some(root) = reason
        .split_once("(root: task ")
        .and_then(|(_, r)| r.strip_suffix(')'))
    {
        let ancestors = ancestors(t, by_id);
        let ended = by_id
            .values()
            .find(|a| a.id.as_str() == root)
            .is_none_or(|a| a.status.is_terminal());
        if !ancestors.iter().any(|a| a.as_str() == root) || !ended {
            broken.push(format!(
                "task {}: the root {root} its reason names is not an ended ancestor ({ancestors:?})",
                t.id
            ));
        }
    }
    broken
}

/// Every task `t` depends on, directly or not (among those stored).
fn ancestors<'a>(
    t: &'a TaskRecord,
    by_id: &BTreeMap<&TaskId, &'a TaskRecord>,
) -> BTreeSet<&'a TaskId> {
    let mut seen = BTreeSet::new();
    let mut next: Vec<&TaskRecord> = vec![t];
    while let Some(task) = next.pop() {
        for d in &task.spec.after {
            if seen.insert(&d.task) {
                if let Some(p) = by_id.get(&d.task) {
                    next.push(p);
                }
            }
        }
    }
    seen
}

/// Watches every master's events for placements on workers that cannot
/// have been heard from within the heartbeat timeout, and for retries
/// placed before their time.
struct Checker {
    shared: Arc<Watching>,
    finals: BTreeMap<TaskId, TaskStatus>,
}

/// What the event listeners share.
struct Watching {
    unreachable_since: Mutex<BTreeMap<WorkerId, Instant>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// Each retry's not-before time, until its task is placed again.
    not_before: Mutex<BTreeMap<TaskId, Timestamp>>,
    running: Arc<RunningSet>,
    max_delay: Duration,
    timeout: Duration,
    listeners: Mutex<Vec<JoinHandle<()>>>,
}

impl Checker {
    fn new(
        timeout: Duration,
        max_delay: Duration,
        violations: Arc<Mutex<Vec<String>>>,
        running: Arc<RunningSet>,
    ) -> Checker {
        Checker {
            shared: Arc::new(Watching {
                unreachable_since: Mutex::default(),
                violations,
                not_before: Mutex::default(),
                running,
                max_delay,
                timeout,
                listeners: Mutex::default(),
            }),
            finals: BTreeMap::new(),
        }
    }

    fn violations(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.shared.violations))
    }

    fn unreachable(&self, id: &WorkerId) {
        lock(&self.shared.unreachable_since)
            .entry(id.clone())
            .or_insert_with(Instant::now);
    }

    fn reachable(&self, id: &WorkerId) {
        lock(&self.shared.unreachable_since).remove(id);
    }

    fn stop(&self) {
        for l in lock(&self.shared.listeners).drain(..) {
            l.abort();
        }
    }
}

impl Watching {
    /// Listens to `master`'s events from now on. A master that starts
    /// (a takeover) cannot know what an earlier one heard: it gives every
    /// worker a heartbeat's benefit of the doubt, so a worker counts as
    /// unreachable to it from its start at the earliest. `rate` is how
    /// fast its clock runs: a slow clock judges liveness slowly.
    fn watch(self: &Arc<Self>, master: &Master, rate: f64) {
        let mut events = master.subscribe();
        let me = self.clone();
        let started = Instant::now();
        let listener = tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => me.saw(e.at, &e.kind, started, rate),
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        lock(&self.listeners).push(listener);
    }

    fn saw(&self, at: Timestamp, event: &MasterEvent, started: Instant, rate: f64) {
        match event {
            MasterEvent::Again {
                id,
                not_before: Some(due),
                ..
            } => {
                lock(&self.not_before).insert(id.clone(), *due);
            }
            MasterEvent::Task {
                id,
                to: TaskStatus::Completed,
                ..
            } => {
                lock(&self.running.completed).insert(id.clone());
            }
            MasterEvent::Task {
                id,
                to: TaskStatus::Running,
                worker: Some(w),
                ..
            } => {
                let early = lock(&self.not_before).remove(id).filter(|due| at < *due);
                if let Some(due) = early {
                    lock(&self.violations).push(format!(
                        "task {id} placed at {at}, before its not-before time {due}"
                    ));
                }
                if let Some(since) = lock(&self.unreachable_since).get(w) {
                    let since = (*since).max(started);
                    // A heartbeat sent just before the cut may still
                    // arrive up to `max_delay` later.
                    let timeout = self.timeout.div_f64(rate);
                    if since.elapsed() > timeout + self.max_delay + Duration::from_millis(1) {
                        lock(&self.violations).push(format!(
                            "task {id} placed on {w}, unreachable for {:?}",
                            since.elapsed()
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}
