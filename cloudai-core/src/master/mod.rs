//! The master service, generic over the backend traits.
//!
//! Written once here so an embedding service and the example binary run the
//! same code. The store is the truth for every task's status; each change is
//! one compare-and-set through [`crate::apply`], so precedence holds with
//! any number of concurrent callers. The in-memory [`state`] (ledger,
//! liveness, queue, reconnection schedule) sits under one mutex that is never
//! held across an `.await`.
//!
//! Let each call run to completion: dropping one of its futures midway (a
//! caller that gives up) can leave a multi-step change half done. The gRPC
//! layer runs every call on its own task for this reason.

mod driver;
mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::apply::{apply_event, Applied};
use crate::backoff::{Backoff, ReconnectSchedule};
use crate::clock::Clock;
use crate::ledger::{Ledger, Reconciliation};
use crate::lifecycle::{Effect, Refusal, Reported, TaskEvent};
use crate::liveness::{Health, Liveness, LivenessConfig};
use crate::model::{
    Resources, TaskId, TaskRecord, TaskResult, TaskSpec, TaskStatus, Telemetry, Timestamp,
    ValidationError, WorkerId, WorkerRecord,
};
use crate::placement::Policy;
use crate::rng::SplitMix64;
use crate::store::{TaskFilter, TaskStore, WorkerRegistry};
use crate::transport::{
    HeartbeatReply, MasterInfo, MasterToWorker, Registration, RegistrationReply, RunningTask,
    WorkerEndpoint,
};
use crate::{Error, Result};

use state::{State, WorkerInfo};

/// Master settings. Every timeout of the seeds is here, with their values
/// as defaults.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// The master's id, sent to workers.
    pub id: String,
    /// Where workers reach the master.
    pub advertise_address: String,
    /// Heartbeat timeout and loss threshold.
    pub liveness: LivenessConfig,
    /// Heartbeat interval workers are told to use (5 s).
    pub heartbeat_interval: Duration,
    /// How often coalesced heartbeats are written to the registry (1 s).
    pub heartbeat_flush: Duration,
    /// Periodic reconciliation interval (`None`: only on start and demand).
    pub reconcile_interval: Option<Duration>,
    /// Deadline for a worker to confirm a cancel (30 s).
    pub cancel_timeout: Duration,
    /// Deadline for a worker to accept an assignment (10 s).
    pub assign_timeout: Duration,
    /// Deadline for one reconnection attempt (3 s).
    pub reconnect_timeout: Duration,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Placement policy.
    pub policy: Policy,
    /// Seed for backoff jitter.
    pub seed: u64,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            id: "master".into(),
            advertise_address: "127.0.0.1:50051".into(),
            liveness: LivenessConfig::default(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_flush: Duration::from_secs(1),
            reconcile_interval: Some(Duration::from_secs(300)),
            cancel_timeout: Duration::from_secs(30),
            assign_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(3),
            backoff: Backoff::default(),
            policy: Policy::default(),
            seed: 0x5eed,
        }
    }
}

/// What a cancel achieved beyond recording `cancelled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was still queued; nothing ran.
    Dequeued,
    /// The worker confirmed it stopped the task.
    Stopped {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker could not be reached; the stop is delivered when it is
    /// heard from again (or when it re-registers).
    StopPending {
        /// The worker.
        worker: WorkerId,
        /// Why delivery failed.
        error: String,
    },
}

/// A worker as the master sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerView {
    /// The worker.
    pub id: WorkerId,
    /// Where it is reached.
    pub address: Option<String>,
    /// Health from heartbeat deadlines, at the time of the call.
    pub health: Health,
    /// Whether it registered with this master since the master started.
    pub registered: bool,
    /// Everything it offers.
    pub capacity: Resources,
    /// Sum of its running tasks' requests.
    pub allocated: Resources,
    /// What is free.
    pub available: Resources,
    /// Tasks holding resources on it.
    pub tasks: Vec<TaskId>,
    /// Its last heartbeat.
    pub last_heartbeat: Option<Timestamp>,
    /// Telemetry from that heartbeat.
    pub telemetry: Option<Telemetry>,
}

/// A task with its result and, if queued, why it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    /// The task.
    pub task: TaskRecord,
    /// Its result, once reported.
    pub result: Option<TaskResult>,
    /// Why it is still pending.
    pub waiting: Option<String>,
}

/// Something observers may want to know (the CLI's `monitor`, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterEvent {
    /// A task changed status.
    Task {
        /// The task.
        id: TaskId,
        /// Old status.
        from: TaskStatus,
        /// New status.
        to: TaskStatus,
        /// Its worker after the change.
        worker: Option<WorkerId>,
    },
    /// A worker's health changed.
    Worker {
        /// The worker.
        id: WorkerId,
        /// Its new health.
        health: Health,
    },
}

pub(crate) struct Inner {
    config: MasterConfig,
    store: Arc<dyn TaskStore>,
    registry: Arc<dyn WorkerRegistry>,
    transport: Arc<dyn MasterToWorker>,
    clock: Clock,
    state: Mutex<State>,
    wake: Notify,
    events: broadcast::Sender<MasterEvent>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

/// A running master. Cheap to clone; all clones drive the same master.
#[derive(Clone)]
pub struct Master {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("id", &self.inner.config.id)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn validate_address(address: &str) -> Result<()> {
    if address.trim().is_empty() {
        return Err(ValidationError::Empty {
            field: "worker address",
        }
        .into());
    }
    if address.len() > 256 || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::Invalid {
            field: "worker address",
            reason: format!("{address:?} is not a host:port address"),
        }
        .into());
    }
    Ok(())
}

impl Master {
    /// Starts a master: loads workers and pending tasks from the backends,
    /// reconciles allocations, and spawns the driver that fires liveness
    /// deadlines, reconnections, heartbeat flushes and periodic reconciles.
    pub async fn start(
        config: MasterConfig,
        store: Arc<dyn TaskStore>,
        registry: Arc<dyn WorkerRegistry>,
        transport: Arc<dyn MasterToWorker>,
        clock: Clock,
    ) -> Result<Master> {
        let state = State {
            ledger: Ledger::new(),
            liveness: Liveness::new(config.liveness),
            reconnect: ReconnectSchedule::new(config.backoff),
            workers: BTreeMap::new(),
            queue: BTreeMap::new(),
            placing: BTreeSet::new(),
            sending: BTreeSet::new(),
            stops: BTreeMap::new(),
            delivering: BTreeSet::new(),
            beats: BTreeMap::new(),
            epoch: 0,
            scheduler: config.policy.build(),
            rng: SplitMix64::new(config.seed),
        };
        let master = Master {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(
                    SplitMix64::new(config.seed ^ clock.now().as_millis()).below(1 << 20),
                ),
                config,
                store,
                registry,
                transport,
                clock,
                state: Mutex::new(state),
                wake: Notify::new(),
                events: broadcast::channel(1024).0,
                shutdown: watch::channel(false).0,
                driver: Mutex::new(None),
            }),
        };
        master.load().await?;
        let report = master.reconcile().await?;
        if !report.is_clean() {
            info!(
                corrections = report.corrections.len(),
                "reconciled allocations on start"
            );
        }
        let handle = tokio::spawn(driver::run(
            master.clone(),
            master.inner.shutdown.subscribe(),
        ));
        *master
            .inner
            .driver
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(handle);
        master.schedule().await;
        Ok(master)
    }

    /// Known workers get the benefit of the doubt (a heartbeat at start) and
    /// are asked to re-register so that each lists the tasks it still runs.
    async fn load(&self) -> Result<()> {
        let workers = self.inner.registry.list_workers().await?;
        let pending = self
            .inner
            .store
            .list_tasks(&TaskFilter::status([TaskStatus::Pending]))
            .await?;
        let now = self.now();
        let mut st = self.state();
        for w in workers {
            st.ledger.set_capacity(w.id.clone(), w.capacity);
            let _ = st.liveness.heartbeat(&w.id, now);
            if w.address.is_some() {
                st.reconnect.add(w.id.clone(), now);
            }
            st.workers.insert(
                w.id,
                WorkerInfo {
                    address: w.address,
                    session: false,
                    unreachable: false,
                    telemetry: w.telemetry,
                },
            );
        }
        for t in &pending {
            st.enqueue(t, None);
        }
        info!(
            workers = st.workers.len(),
            pending = pending.len(),
            "master loaded state"
        );
        Ok(())
    }

    /// Stops the driver and writes pending heartbeats. Safe to call twice.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let handle = self
            .inner
            .driver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    /// Events about tasks and workers, for observers.
    pub fn subscribe(&self) -> broadcast::Receiver<MasterEvent> {
        self.inner.events.subscribe()
    }

    /// The settings in force.
    pub fn config(&self) -> &MasterConfig {
        &self.inner.config
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    fn endpoint(&self, worker: &WorkerId) -> Option<WorkerEndpoint> {
        let address = self.state().workers.get(worker)?.address.clone()?;
        Some(WorkerEndpoint {
            id: worker.clone(),
            address,
        })
    }

    fn emit(&self, event: MasterEvent) {
        let _ = self.inner.events.send(event);
    }

    // ---- workers -------------------------------------------------------

    /// Registers a worker that introduced itself (worker-initiated, or after
    /// a `master_register` call). Two-way reconciliation: of the tasks the
    /// worker lists, those not running there in the store come back in
    /// `stop`; tasks the store has running there that the worker no longer
    /// lists are failed.
    pub async fn register(&self, reg: Registration) -> Result<RegistrationReply> {
        validate_address(&reg.address)?;
        reg.capacity.validate()?;
        let now = self.now();
        let id = reg.worker.clone();
        self.inner
            .registry
            .upsert_worker(WorkerRecord::new(
                id.clone(),
                Some(reg.address.clone()),
                reg.capacity,
                now,
            ))
            .await?;
        let running_here = self
            .inner
            .store
            .list_tasks(&TaskFilter {
                statuses: vec![TaskStatus::Running],
                worker: Some(id.clone()),
            })
            .await?;
        let run_of = |t: &TaskRecord| RunningTask {
            task: t.id.clone(),
            attempt: t.attempt,
        };
        let listed: BTreeSet<&RunningTask> = reg.running.iter().collect();
        let here: BTreeSet<RunningTask> = running_here.iter().map(run_of).collect();
        let mut stop: BTreeSet<RunningTask> = reg
            .running
            .iter()
            .filter(|r| !here.contains(*r))
            .cloned()
            .collect();
        let missing: Vec<RunningTask> = {
            let st = self.state();
            here.iter()
                .filter(|r| {
                    !listed.contains(r)
                        && !st.sending.contains(&r.task)
                        && !st.placing.contains(&r.task)
                })
                .cloned()
                .collect()
        };
        {
            let mut st = self.state();
            st.ledger.set_capacity(id.clone(), reg.capacity);
            let revived = st.liveness.heartbeat(&id, now);
            st.reconnect.remove(&id);
            // Owed stops go out in the reply: the worker stops those runs,
            // or remembers them so a late assignment cannot start them.
            stop.extend(st.stops.remove(&id).unwrap_or_default().into_keys());
            let info = st.workers.entry(id.clone()).or_insert(WorkerInfo {
                address: None,
                session: false,
                unreachable: false,
                telemetry: None,
            });
            info.address = Some(reg.address.clone());
            info.session = true;
            info.unreachable = false;
            if revived {
                self.emit(MasterEvent::Worker {
                    id: id.clone(),
                    health: Health::Active,
                });
            }
        }
        self.inner.wake.notify_one();
        info!(worker = %id, address = %reg.address, capacity = %reg.capacity, listed = reg.running.len(),
              stop = stop.len(), failed = missing.len(), "worker registered");
        // Runs failed here as vanished are stopped too, in case their
        // assignment is still on its way to the worker.
        stop.extend(missing.iter().cloned());
        for run in missing {
            let event = TaskEvent::Report {
                worker: id.clone(),
                attempt: run.attempt,
                outcome: Reported::Failed,
                message: Some(format!(
                    "worker {id} re-registered without this task (it restarted)"
                )),
            };
            let _: Applied = self.apply(&run.task, event).await?;
        }
        self.schedule().await;
        Ok(RegistrationReply {
            stop: stop.into_iter().collect(),
            heartbeat_interval: self.inner.config.heartbeat_interval,
            master_id: self.inner.config.id.clone(),
        })
    }

    /// Pre-registers a worker by address (seed: `register <id> <ip:port>`);
    /// the master then asks it to register, retrying with backoff until it
    /// answers.
    pub async fn pre_register(&self, id: WorkerId, address: String) -> Result<()> {
        validate_address(&address)?;
        let now = self.now();
        let record = match self.inner.registry.get_worker(&id).await? {
            Some(mut known) => {
                known.address = Some(address.clone());
                known
            }
            None => WorkerRecord::new(id.clone(), Some(address.clone()), Resources::ZERO, now),
        };
        let stored = self.inner.registry.upsert_worker(record).await?;
        {
            let mut st = self.state();
            if st.ledger.capacity(&id).is_none() {
                st.ledger.set_capacity(id.clone(), stored.capacity);
            }
            st.liveness.track(id.clone());
            st.reconnect.add(id.clone(), now);
            let info = st.workers.entry(id.clone()).or_insert(WorkerInfo {
                address: None,
                session: false,
                unreachable: false,
                telemetry: None,
            });
            info.address = Some(address.clone());
        }
        info!(worker = %id, %address, "worker pre-registered; will connect");
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Takes a heartbeat. It costs no store write of its own: the newest
    /// beat per worker is kept and written in one batch per flush interval.
    pub async fn heartbeat(
        &self,
        worker: &WorkerId,
        telemetry: Telemetry,
    ) -> Result<HeartbeatReply> {
        let now = self.now();
        let (revived, has_stops) = {
            let mut st = self.state();
            match st.workers.get_mut(worker) {
                Some(info) if info.session => {
                    info.unreachable = false;
                    info.telemetry = Some(telemetry.clone());
                }
                _ => {
                    return Ok(HeartbeatReply {
                        register_again: true,
                    })
                }
            }
            let revived = st.liveness.heartbeat(worker, now);
            if revived {
                st.reconnect.remove(worker);
            }
            st.beats.insert(
                worker.clone(),
                crate::model::Heartbeat {
                    worker: worker.clone(),
                    at: now,
                    telemetry,
                },
            );
            (
                revived,
                st.stops.contains_key(worker) && !st.delivering.contains(worker),
            )
        };
        if has_stops {
            self.spawn_stop_delivery(worker.clone());
        }
        if revived {
            info!(worker = %worker, "worker active again");
            self.emit(MasterEvent::Worker {
                id: worker.clone(),
                health: Health::Active,
            });
            self.schedule().await;
        }
        Ok(HeartbeatReply::default())
    }

    /// Every known worker with its live status and allocation.
    pub fn workers(&self) -> Vec<WorkerView> {
        let now = self.now();
        let st = self.state();
        st.workers
            .iter()
            .map(|(id, info)| WorkerView {
                id: id.clone(),
                address: info.address.clone(),
                health: st.liveness.health(id, now).unwrap_or(Health::Inactive),
                registered: info.session,
                capacity: st.ledger.capacity(id).unwrap_or_default(),
                allocated: st.ledger.allocated(id).unwrap_or_default(),
                available: st.ledger.available(id).unwrap_or_default(),
                tasks: st.ledger.tasks_on(id).cloned().collect(),
                last_heartbeat: st.liveness.last_heartbeat(id),
                telemetry: info.telemetry.clone(),
            })
            .collect()
    }

    /// Makes every reconnection attempt due now (the CLI's `reconnect`).
    pub fn reconnect_now(&self) {
        let now = self.now();
        self.state().reconnect.all_due_now(now);
        self.inner.wake.notify_one();
    }

    // ---- tasks ---------------------------------------------------------

    fn new_task_id(&self, now: Timestamp) -> TaskId {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        TaskId::new(format!("task-{}-{n}", now.as_millis())).expect("generated ids are valid")
    }

    /// Accepts a task. With `spec.pin` it runs only on that worker; else the
    /// scheduler places it. Either way it waits in the queue, with a reason,
    /// until a worker has room.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskId> {
        spec.validate()?;
        if let Some(pin) = &spec.pin {
            if !self.state().workers.contains_key(pin) {
                return Err(Error::not_found("worker", pin));
            }
        }
        let now = self.now();
        let task = loop {
            let task = TaskRecord::new(self.new_task_id(now), spec.clone(), now);
            match self.inner.store.insert_task(task.clone()).await {
                Ok(()) => break task,
                Err(Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        };
        info!(task = %task.id, image = %spec.image, resources = %spec.resources, "task submitted");
        self.state().enqueue(&task, None);
        self.schedule().await;
        Ok(task.id)
    }

    /// The task with its result and queue reason.
    pub async fn task(&self, id: &TaskId) -> Result<TaskView> {
        let task = self
            .inner
            .store
            .get_task(id)
            .await?
            .ok_or_else(|| Error::not_found("task", id))?;
        let result = self.inner.store.get_result(id).await?;
        let waiting = (task.status == TaskStatus::Pending)
            .then(|| {
                self.state()
                    .queue
                    .get(&(task.created_at, task.id.clone()))
                    .and_then(|q| q.reason.clone())
            })
            .flatten();
        Ok(TaskView {
            task,
            result,
            waiting,
        })
    }

    /// A task's output: live from its worker while it runs, else from its
    /// stored result. `None` while it is pending or when nothing was kept.
    pub async fn logs(
        &self,
        id: &TaskId,
        max_bytes: usize,
    ) -> Result<Option<crate::runtime::Logs>> {
        let view = self.task(id).await?;
        if let Some(r) = view.result {
            return Ok(Some(crate::runtime::Logs {
                text: r.logs,
                truncated: r.logs_truncated,
            }));
        }
        let (TaskStatus::Running, Some(worker)) = (view.task.status, view.task.worker) else {
            return Ok(None);
        };
        let Some(to) = self.endpoint(&worker) else {
            return Ok(None);
        };
        let run = RunningTask {
            task: id.clone(),
            attempt: view.task.attempt,
        };
        let call = self.inner.transport.logs(&to, &run, max_bytes);
        match tokio::time::timeout(self.inner.config.reconnect_timeout, call).await {
            Ok(Ok(logs)) => Ok(Some(logs)),
            Ok(Err(Error::NotFound { .. })) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout(format!(
                "worker {worker} did not send logs in time"
            ))),
        }
    }

    /// Tasks passing `filter`, oldest first.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.inner.store.list_tasks(filter).await
    }

    /// Cancels a task (seed 001): `cancelled` is recorded and resources are
    /// released first; then the worker is told to stop it within the cancel
    /// deadline. An unreachable worker does not fail the cancel: the stop is
    /// delivered when the worker is heard from again.
    pub async fn cancel(&self, id: &TaskId, force: bool) -> Result<CancelOutcome> {
        match self.record_cancel(id, force).await? {
            (outcome, None) => Ok(outcome),
            (_, Some((worker, run, grace))) => Ok(self.deliver_stop(&worker, &run, grace).await),
        }
    }

    /// Cancels every pending or running task passing `filter` (bulk cancel:
    /// all tasks on a worker, all tasks in a status). All cancels are
    /// recorded first; stops go out in parallel.
    pub async fn cancel_all(
        &self,
        filter: &TaskFilter,
        force: bool,
    ) -> Result<Vec<(TaskId, CancelOutcome)>> {
        let live = [TaskStatus::Pending, TaskStatus::Running];
        let statuses = if filter.statuses.is_empty() {
            live.to_vec()
        } else {
            filter
                .statuses
                .iter()
                .copied()
                .filter(|s| live.contains(s))
                .collect()
        };
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let tasks = self
            .inner
            .store
            .list_tasks(&TaskFilter {
                statuses,
                worker: filter.worker.clone(),
            })
            .await?;
        let mut done = Vec::new();
        let mut stops = tokio::task::JoinSet::new();
        for t in tasks {
            match self.record_cancel(&t.id, force).await {
                Ok((outcome, None)) => done.push((t.id, outcome)),
                Ok((_, Some((worker, run, grace)))) => {
                    let m = self.clone();
                    stops.spawn(async move {
                        let outcome = m.deliver_stop(&worker, &run, grace).await;
                        (t.id, outcome)
                    });
                }
                // Finished meanwhile: nothing to cancel.
                Err(Error::Conflict(_)) | Err(Error::NotFound { .. }) => {}
                Err(e) => {
                    // Stops already under way still finish (and are kept
                    // for retry if they fail).
                    stops.detach_all();
                    return Err(e);
                }
            }
        }
        while let Some(joined) = stops.join_next().await {
            if let Ok(pair) = joined {
                done.push(pair);
            }
        }
        Ok(done)
    }

    /// Records the cancel; returns the outcome so far and the stop to send.
    async fn record_cancel(
        &self,
        id: &TaskId,
        force: bool,
    ) -> Result<(CancelOutcome, Option<(WorkerId, RunningTask, Duration)>)> {
        match self.apply(id, TaskEvent::Cancel { force }).await? {
            Applied::Refused {
                refusal: Refusal::UnknownTask,
                ..
            } => Err(Error::not_found("task", id)),
            Applied::Refused {
                refusal: Refusal::AlreadyFinal(s),
                ..
            } => Err(Error::Conflict(format!(
                "task {id} already {s}; nothing to cancel"
            ))),
            Applied::Refused { refusal, .. } => Err(Error::Conflict(format!(
                "cannot cancel task {id}: {refusal}"
            ))),
            Applied::Changed { task, transition } => {
                info!(task = %id, from = %transition.from, force, "task cancelled");
                let stop = transition.effects.iter().find_map(|e| match e {
                    Effect::StopOnWorker {
                        worker,
                        attempt,
                        grace,
                    } => Some((
                        worker.clone(),
                        RunningTask {
                            task: id.clone(),
                            attempt: *attempt,
                        },
                        *grace,
                    )),
                    _ => None,
                });
                debug!(task = %task.id, "cancel recorded");
                Ok((CancelOutcome::Dequeued, stop))
            }
        }
    }

    /// Sends one stop within the cancel deadline; on failure keeps it for
    /// later delivery.
    async fn deliver_stop(
        &self,
        worker: &WorkerId,
        run: &RunningTask,
        grace: Duration,
    ) -> CancelOutcome {
        let task = &run.task;
        let Some(to) = self.endpoint(worker) else {
            self.state()
                .stops
                .entry(worker.clone())
                .or_default()
                .insert(run.clone(), grace);
            return CancelOutcome::StopPending {
                worker: worker.clone(),
                error: "worker has no address".into(),
            };
        };
        let call = self.inner.transport.cancel(&to, run, grace);
        let error = match tokio::time::timeout(self.inner.config.cancel_timeout, call).await {
            Ok(Ok(())) => {
                let mut st = self.state();
                if let Some(m) = st.stops.get_mut(worker) {
                    m.remove(run);
                    if m.is_empty() {
                        st.stops.remove(worker);
                    }
                }
                return CancelOutcome::Stopped {
                    worker: worker.clone(),
                };
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.inner.config.cancel_timeout),
        };
        warn!(task = %task, worker = %worker, %error, "stop not delivered; will retry when the worker is heard from");
        self.state()
            .stops
            .entry(worker.clone())
            .or_default()
            .insert(run.clone(), grace);
        CancelOutcome::StopPending {
            worker: worker.clone(),
            error,
        }
    }

    /// Re-sends every stop owed to `worker`, one delivery run at a time.
    fn spawn_stop_delivery(&self, worker: WorkerId) {
        let owed = {
            let mut st = self.state();
            if !st.delivering.insert(worker.clone()) {
                return;
            }
            st.stops.remove(&worker).unwrap_or_default()
        };
        let m = self.clone();
        tokio::spawn(async move {
            for (run, grace) in owed {
                let _ = m.deliver_stop(&worker, &run, grace).await;
            }
            m.state().delivering.remove(&worker);
        });
    }

    /// Takes a worker's report: the transition (a cancel that came first
    /// wins) and the result (the first one wins). Repeats are harmless.
    pub async fn report(&self, result: TaskResult) -> Result<()> {
        let (task, worker) = (result.task_id.clone(), result.worker_id.clone());
        let event = crate::apply::report_event(&result)?;
        // The transition and its effects (the release) first; the result
        // after, so a failed result write cannot strand the allocation.
        let status = self.apply(&task, event).await?;
        match &status {
            Applied::Changed { transition, .. } => {
                info!(task = %task, worker = %worker, status = %transition.to, "task finished")
            }
            Applied::Refused { refusal, .. } => {
                debug!(task = %task, worker = %worker, %refusal, "report ignored")
            }
        }
        if let Err(why) =
            crate::apply::store_result(self.inner.store.as_ref(), &status, result).await?
        {
            debug!(task = %task, worker = %worker, %why, "result not stored");
        }
        Ok(())
    }

    /// Recomputes every allocation from the tasks the store says are running
    /// (seed 002's `fix-resources`) and returns the corrections made.
    pub async fn reconcile(&self) -> Result<Reconciliation> {
        for _ in 0..16 {
            let epoch = self.state().epoch;
            let running = self
                .inner
                .store
                .list_tasks(&TaskFilter::status([TaskStatus::Running]))
                .await?;
            let Some(report) = self.reconcile_with(epoch, running) else {
                continue;
            };
            if !report.corrections.is_empty() {
                self.schedule().await;
            }
            return Ok(report);
        }
        Err(Error::Unavailable(
            "tasks kept changing during reconciliation; try again".into(),
        ))
    }

    /// Applies a reconciliation unless the ledger changed since `epoch`.
    fn reconcile_with(&self, epoch: u64, running: Vec<TaskRecord>) -> Option<Reconciliation> {
        let mut st = self.state();
        if st.epoch != epoch {
            return None;
        }
        let mut truth: Vec<(TaskId, WorkerId, Resources)> = running
            .into_iter()
            .filter_map(|t| Some((t.id, t.worker?, t.spec.resources)))
            .collect();
        // Reservations whose `Assign` is not stored yet are real too.
        for id in &st.placing {
            if let Some((w, req)) = st.ledger.reservation(id) {
                truth.push((id.clone(), w.clone(), req));
            }
        }
        let report = st.ledger.reconcile(truth);
        st.epoch += 1;
        for c in &report.corrections {
            warn!(worker = %c.worker, correction = %c, "allocation corrected");
        }
        for (task, worker) in &report.unknown_workers {
            warn!(task = %task, worker = %worker, "running task on an unknown worker");
        }
        Some(report)
    }

    // ---- internals -----------------------------------------------------

    /// Applies an event and carries out its effects.
    async fn apply(&self, id: &TaskId, event: TaskEvent) -> Result<Applied> {
        let applied = apply_event(self.inner.store.as_ref(), id, &event, self.now()).await?;
        if let Applied::Changed { task, transition } = &applied {
            self.after_change(task, transition.from, &transition.effects)
                .await;
        }
        Ok(applied)
    }

    /// The effects of a stored transition, except `SendAssignment` (the
    /// placement path sends) and the result (stored by `record_report`).
    async fn after_change(&self, task: &TaskRecord, from: TaskStatus, effects: &[Effect]) {
        self.emit(MasterEvent::Task {
            id: task.id.clone(),
            from,
            to: task.status,
            worker: task.worker.clone(),
        });
        let mut freed = false;
        let mut stop_now = Vec::new();
        {
            let mut st = self.state();
            if from == TaskStatus::Pending {
                st.dequeue(task);
            }
            if task.status == TaskStatus::Pending {
                st.enqueue(task, None);
            }
            for effect in effects {
                match effect {
                    Effect::Release { .. } => freed |= st.release(&task.id).is_some(),
                    Effect::StopOnWorker {
                        worker,
                        attempt,
                        grace,
                    } if task.status != TaskStatus::Cancelled => {
                        // Requeue or loss: best effort now, owed until acknowledged.
                        let run = RunningTask {
                            task: task.id.clone(),
                            attempt: *attempt,
                        };
                        st.stops
                            .entry(worker.clone())
                            .or_default()
                            .insert(run, *grace);
                        stop_now.push(worker.clone());
                    }
                    _ => {}
                }
            }
        }
        for worker in stop_now {
            self.spawn_stop_delivery(worker);
        }
        if freed || task.status == TaskStatus::Pending {
            self.schedule().await;
        }
    }

    /// Places every queued task that fits, and sends the assignments.
    async fn schedule(&self) {
        let now = self.now();
        let picks = self.state().pick_placements(now);
        for (id, worker) in picks {
            let event = TaskEvent::Assign {
                worker: worker.clone(),
            };
            let applied = apply_event(self.inner.store.as_ref(), &id, &event, now).await;
            let assigned = {
                let mut st = self.state();
                st.placing.remove(&id);
                match &applied {
                    Ok(Applied::Changed { .. }) => {
                        st.sending.insert(id.clone());
                        // The reservation moves from `placing` to the store's
                        // running set: a concurrent reconcile must retry.
                        st.epoch += 1;
                    }
                    // Cancelled while being placed, or the store failed.
                    _ => {
                        st.release(&id);
                    }
                }
                applied
            };
            match assigned {
                Ok(Applied::Changed { task, transition }) => {
                    self.emit(MasterEvent::Task {
                        id: id.clone(),
                        from: transition.from,
                        to: task.status,
                        worker: task.worker.clone(),
                    });
                    debug!(task = %id, worker = %worker, "task assigned");
                    self.spawn_send(task, worker);
                }
                Ok(Applied::Refused { .. }) => {}
                Err(e) => {
                    // The write may or may not have landed: read until the
                    // store answers, then send (it landed) or requeue.
                    warn!(task = %id, error = %e, "assignment write failed; checking whether it landed");
                    let task = self.surely(|| self.inner.store.get_task(&id)).await;
                    match task {
                        Some(t)
                            if t.status == TaskStatus::Running
                                && t.worker.as_ref() == Some(&worker) =>
                        {
                            self.state()
                                .ledger
                                .reserve(&worker, &t.id, t.spec.resources)
                                .ok();
                            self.state().sending.insert(id.clone());
                            self.spawn_send(t, worker);
                        }
                        Some(t) if t.status == TaskStatus::Pending => {
                            self.state().enqueue(&t, Some(format!("store error: {e}")));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Spawns `send_assignment`. Boxed: the send can lead back to
    /// `schedule`, and the box breaks that cycle for the `Send` check.
    fn spawn_send(&self, task: TaskRecord, worker: WorkerId) {
        let m = self.clone();
        let send: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            Box::pin(async move { m.send_assignment(task, worker).await });
        tokio::spawn(send);
    }

    /// Sends an assignment. A definite refusal fails the task; no answer
    /// puts it back in the queue (and tells the worker to drop it, in case
    /// it did arrive).
    async fn send_assignment(&self, task: TaskRecord, worker: WorkerId) {
        let id = task.id.clone();
        let run = RunningTask {
            task: id.clone(),
            attempt: task.attempt,
        };
        let result = match self.endpoint(&worker) {
            None => Err(Error::Unavailable(format!(
                "worker {worker} has no address"
            ))),
            Some(to) => {
                let call = self.inner.transport.assign(&to, &run, &task.spec);
                match tokio::time::timeout(self.inner.config.assign_timeout, call).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout(format!(
                        "worker {worker} did not accept the task in time"
                    ))),
                }
            }
        };
        self.state().sending.remove(&id);
        let event = match result {
            Ok(()) => return,
            Err(e) if e.is_transient() => {
                warn!(task = %id, worker = %worker, error = %e, "assignment not delivered; requeueing");
                if let Some(info) = self.state().workers.get_mut(&worker) {
                    info.unreachable = true;
                }
                TaskEvent::Requeue {
                    worker,
                    attempt: run.attempt,
                    reason: e.to_string(),
                }
            }
            Err(e) => {
                warn!(task = %id, worker = %worker, error = %e, "worker refused the task");
                TaskEvent::Report {
                    worker: worker.clone(),
                    attempt: run.attempt,
                    outcome: Reported::Failed,
                    message: Some(format!("worker {worker} refused the task: {e}")),
                }
            }
        };
        let _: Applied = self.surely(|| self.apply(&id, event.clone())).await;
    }

    /// Retries a store operation that must not be dropped (a requeue, a
    /// failure, a worker loss) with backoff until the store answers.
    async fn surely<T, F, Fut>(&self, op: F) -> T
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Ok(v) => return v,
                Err(e) => {
                    failures += 1;
                    let delay = {
                        let mut st = self.state();
                        let jitter = st.jitter();
                        self.inner.config.backoff.delay(failures, jitter)
                    };
                    warn!(error = %e, retry_in = ?delay, "store write must not be lost; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Fails every task still running on a lost worker.
    async fn worker_lost(&self, worker: &WorkerId) {
        warn!(worker = %worker, "worker lost; failing its tasks");
        self.emit(MasterEvent::Worker {
            id: worker.clone(),
            health: Health::Lost,
        });
        if let Some(info) = self.state().workers.get_mut(worker) {
            info.session = false;
        }
        let filter = TaskFilter {
            statuses: vec![TaskStatus::Running],
            worker: Some(worker.clone()),
        };
        let tasks = self.surely(|| self.inner.store.list_tasks(&filter)).await;
        for t in tasks {
            let lost = TaskEvent::WorkerLost {
                worker: worker.clone(),
            };
            let _: Applied = self.surely(|| self.apply(&t.id, lost.clone())).await;
        }
    }

    /// Asks an inactive worker to register again.
    async fn attempt_reconnect(&self, worker: WorkerId) {
        let Some(to) = self.endpoint(&worker) else {
            self.state().reconnect.remove(&worker);
            return;
        };
        let master = MasterInfo {
            id: self.inner.config.id.clone(),
            address: self.inner.config.advertise_address.clone(),
        };
        let call = self.inner.transport.master_register(&to, &master);
        match tokio::time::timeout(self.inner.config.reconnect_timeout, call).await {
            Ok(Ok(())) => {
                info!(worker = %worker, "reconnected to worker; awaiting its registration")
            }
            Ok(Err(e)) => debug!(worker = %worker, error = %e, "reconnect attempt failed"),
            Err(_) => debug!(worker = %worker, "reconnect attempt timed out"),
        }
    }
}
