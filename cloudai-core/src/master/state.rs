//! The master's in-memory state: the caches and schedules around the store,
//! and the work that state changes made owed.
//!
//! Everything here is synchronous and lives under one `std::sync::Mutex`
//! that is never held across an `.await`. The store stays the truth for
//! task status; the ledger is a cache that reconciliation can rebuild.
//! Fields are private: each method keeps its own invariants (a ledger
//! change bumps the reconcile epoch; a task is in `placing` exactly while
//! its placement holds an unconfirmed reservation).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tracing::warn;

use super::owed_stops::{Delivery, OwedStops, Wait};
use super::views::WorkerView;
use crate::backoff::ReconnectSchedule;
use crate::ledger::{Ledger, LedgerError, Reconciliation};
use crate::liveness::{Health, Liveness, LivenessEvent};
use crate::model::{
    Heartbeat, Resources, RunningTask, TaskId, TaskRecord, Telemetry, Timestamp, WorkerId,
    WorkerRecord,
};
use crate::placement::{place, Candidate, Placement, Scheduler};
use crate::rng::SplitMix64;

use super::MasterConfig;

/// What the master knows about a worker beyond the ledger and liveness.
#[derive(Debug, Clone, Default)]
struct WorkerInfo {
    address: Option<String>,
    /// Registered with this master since it started (so it knows its tasks).
    session: bool,
    /// An assignment or stop just failed to reach it: no placements until
    /// it is heard from again (avoids a requeue loop on a dead link).
    unreachable: bool,
    telemetry: Option<Telemetry>,
}

/// A pending task waiting for room.
#[derive(Debug, Clone)]
struct Queued {
    resources: Resources,
    pin: Option<WorkerId>,
    reason: Option<String>,
}

/// Work that state changes made owed; the driver performs it.
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// Queued tasks may fit now: run a placement pass.
    pub(super) queue_pass: bool,
    /// Assignments stored and not yet sent.
    pub(super) sends: Vec<(TaskRecord, WorkerId)>,
    /// Stops to deliver now.
    pub(super) stops: Vec<(WorkerId, RunningTask, Duration)>,
}

#[derive(Debug)]
pub(super) struct State {
    ledger: Ledger,
    liveness: Liveness,
    reconnect: ReconnectSchedule,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Pending tasks, oldest first.
    queue: BTreeMap<(Timestamp, TaskId), Queued>,
    /// Reserved in the ledger, `Assign` not yet stored.
    placing: BTreeSet<TaskId>,
    /// Assignments stored and not yet acknowledged (the worker may not list
    /// these yet).
    sending: BTreeSet<TaskId>,
    /// Assignments stored and not yet handed to the driver.
    sends: Vec<(TaskRecord, WorkerId)>,
    stops: OwedStops,
    queue_pass: bool,
    /// Placement passes run so far.
    passes: u64,
    /// Latest heartbeat per worker since the last flush (coalesced).
    beats: BTreeMap<WorkerId, Heartbeat>,
    /// Bumped on every ledger change; reconcile retries if it moves.
    epoch: u64,
    scheduler: Box<dyn Scheduler>,
    rng: SplitMix64,
}

impl State {
    pub(super) fn new(config: &MasterConfig) -> State {
        State {
            ledger: Ledger::new(),
            liveness: Liveness::new(config.liveness),
            reconnect: ReconnectSchedule::new(config.backoff),
            workers: BTreeMap::new(),
            queue: BTreeMap::new(),
            placing: BTreeSet::new(),
            sending: BTreeSet::new(),
            sends: Vec::new(),
            stops: OwedStops::default(),
            queue_pass: false,
            passes: 0,
            beats: BTreeMap::new(),
            epoch: 0,
            scheduler: config.policy.build(),
            rng: SplitMix64::new(config.seed),
        }
    }

    // ---- workers --------------------------------------------------------

    /// A worker from the registry at start: it gets the benefit of the
    /// doubt (a heartbeat now) and, if it has an address, is asked to
    /// register again.
    pub(super) fn load_worker(&mut self, w: WorkerRecord, now: Timestamp) {
        self.ledger.set_capacity(w.id.clone(), w.capacity);
        let _ = self.liveness.heartbeat(&w.id, now);
        if w.address.is_some() {
            self.reconnect.add(w.id.clone(), now);
        }
        self.workers.insert(
            w.id,
            WorkerInfo {
                address: w.address,
                telemetry: w.telemetry,
                ..WorkerInfo::default()
            },
        );
    }

    /// A worker registered: it is active, placeable, and takes the stops
    /// owed to it in the reply. Returns whether it was revived, and those
    /// stops.
    pub(super) fn register(
        &mut self,
        id: &WorkerId,
        address: &str,
        capacity: Resources,
        now: Timestamp,
    ) -> (bool, Vec<RunningTask>) {
        self.ledger.set_capacity(id.clone(), capacity);
        let revived = self.liveness.heartbeat(id, now);
        self.reconnect.remove(id);
        let info = self.workers.entry(id.clone()).or_default();
        info.address = Some(address.to_string());
        info.session = true;
        info.unreachable = false;
        self.queue_pass = true;
        (revived, self.stops.take_for_registration(id))
    }

    /// A worker named by an operator before it registers: the master will
    /// ask it to register, with backoff.
    pub(super) fn pre_register(&mut self, w: &WorkerRecord, now: Timestamp) {
        if self.ledger.capacity(&w.id).is_none() {
            self.ledger.set_capacity(w.id.clone(), w.capacity);
        }
        self.liveness.track(w.id.clone());
        self.reconnect.add(w.id.clone(), now);
        self.workers.entry(w.id.clone()).or_default().address = w.address.clone();
    }

    /// Takes a heartbeat. `None` if the worker must register again (unknown
    /// here, or no session since the master started); else whether it was
    /// revived. Its parked stops become due, and a revived worker may take
    /// queued tasks.
    pub(super) fn heartbeat(
        &mut self,
        worker: &WorkerId,
        telemetry: Telemetry,
        now: Timestamp,
    ) -> Option<bool> {
        let info = self.workers.get_mut(worker).filter(|i| i.session)?;
        info.unreachable = false;
        info.telemetry = Some(telemetry.clone());
        let revived = self.liveness.heartbeat(worker, now);
        if revived {
            self.reconnect.remove(worker);
            self.queue_pass = true;
        }
        self.beats.insert(
            worker.clone(),
            Heartbeat {
                worker: worker.clone(),
                at: now,
                telemetry,
            },
        );
        self.stops.retry(worker);
        Some(revived)
    }

    /// The worker's session ended (it was declared lost).
    pub(super) fn end_session(&mut self, worker: &WorkerId) {
        if let Some(info) = self.workers.get_mut(worker) {
            info.session = false;
        }
    }

    /// A delivery to the worker failed: place nothing there until it is
    /// heard from.
    pub(super) fn mark_unreachable(&mut self, worker: &WorkerId) {
        if let Some(info) = self.workers.get_mut(worker) {
            info.unreachable = true;
        }
    }

    pub(super) fn knows(&self, worker: &WorkerId) -> bool {
        self.workers.contains_key(worker)
    }

    pub(super) fn address(&self, worker: &WorkerId) -> Option<String> {
        self.workers.get(worker)?.address.clone()
    }

    /// Whether a worker may receive new tasks now.
    fn placeable(&self, worker: &WorkerId, now: Timestamp) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|w| w.session && !w.unreachable)
            && self.liveness.health(worker, now) == Some(Health::Active)
    }

    pub(super) fn worker_views(&self, now: Timestamp) -> Vec<WorkerView> {
        self.workers
            .iter()
            .map(|(id, info)| WorkerView {
                id: id.clone(),
                address: info.address.clone(),
                health: self.liveness.health(id, now).unwrap_or(Health::Inactive),
                registered: info.session,
                capacity: self.ledger.capacity(id).unwrap_or_default(),
                allocated: self.ledger.allocated(id).unwrap_or_default(),
                available: self.ledger.available(id).unwrap_or_default(),
                tasks: self.ledger.tasks_on(id).cloned().collect(),
                last_heartbeat: self.liveness.last_heartbeat(id),
                telemetry: info.telemetry.clone(),
            })
            .collect()
    }

    // ---- deadlines: liveness, reconnection, heartbeat batches ----------

    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        [
            self.liveness.next_deadline(),
            self.reconnect.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Liveness events due at `now`, and the workers due a reconnection
    /// attempt (each rescheduled with backoff until it registers). A worker
    /// turning inactive starts being reconnected.
    pub(super) fn expire(&mut self, now: Timestamp) -> (Vec<LivenessEvent>, Vec<WorkerId>) {
        let events = self.liveness.expire(now);
        let due = self.reconnect.due(now);
        for worker in &due {
            // Keep retrying until the worker registers (which removes it).
            let jitter = self.jitter();
            let _ = self.reconnect.failed(worker, now, jitter);
        }
        for e in &events {
            if let LivenessEvent::Inactive(worker) = e {
                self.reconnect.add(worker.clone(), now);
            }
        }
        (events, due)
    }

    pub(super) fn stop_reconnecting(&mut self, worker: &WorkerId) {
        self.reconnect.remove(worker);
    }

    pub(super) fn reconnect_all_now(&mut self, now: Timestamp) {
        self.reconnect.all_due_now(now);
    }

    pub(super) fn take_beats(&mut self) -> Vec<Heartbeat> {
        std::mem::take(&mut self.beats).into_values().collect()
    }

    /// Puts back beats whose write failed, unless newer ones arrived.
    pub(super) fn restore_beats(&mut self, beats: Vec<Heartbeat>) {
        for b in beats {
            self.beats.entry(b.worker.clone()).or_insert(b);
        }
    }

    /// A random number in `[0, 1)` for backoff jitter.
    pub(super) fn jitter(&mut self) -> f64 {
        self.rng.next_f64()
    }

    // ---- the queue and the ledger ---------------------------------------

    /// Keeps the queue a mirror of the store's pending tasks across a
    /// change from `from` to `task.status`.
    pub(super) fn track_queue(&mut self, task: &TaskRecord, from: crate::model::TaskStatus) {
        use crate::model::TaskStatus::Pending;
        if from == Pending {
            self.queue.remove(&(task.created_at, task.id.clone()));
        }
        if task.status == Pending {
            self.enqueue(task, None);
            self.queue_pass = true;
        }
    }

    pub(super) fn enqueue(&mut self, task: &TaskRecord, reason: Option<String>) {
        self.queue.insert(
            (task.created_at, task.id.clone()),
            Queued {
                resources: task.spec.resources,
                pin: task.spec.pin.clone(),
                reason,
            },
        );
    }

    /// Why a pending task still waits, if a placement pass said.
    pub(super) fn waiting_reason(&self, task: &TaskRecord) -> Option<String> {
        self.queue
            .get(&(task.created_at, task.id.clone()))?
            .reason
            .clone()
    }

    /// Whether the task's assignment is being placed or sent, so the worker
    /// may not list it yet.
    pub(super) fn in_flight(&self, task: &TaskId) -> bool {
        self.sending.contains(task) || self.placing.contains(task)
    }

    /// The number of the first placement pass that will see a task queued
    /// now.
    pub(super) fn next_pass(&self) -> u64 {
        self.passes + 1
    }

    /// A placement pass: picks a worker for every queued task that fits now,
    /// oldest first, and reserves its resources at once so concurrent passes
    /// cannot double-book. Tasks that do not fit keep their place with the
    /// reason. Returns the picks and the pass's number.
    pub(super) fn pick_placements(&mut self, now: Timestamp) -> (Vec<(TaskId, WorkerId)>, u64) {
        self.passes += 1;
        let mut picks = Vec::new();
        let keys: Vec<(Timestamp, TaskId)> = self.queue.keys().cloned().collect();
        for key in keys {
            let (resources, pin) = {
                let q = &self.queue[&key];
                (q.resources, q.pin.clone())
            };
            let candidates = self.candidates(now, pin.as_ref());
            match place(self.scheduler.as_mut(), &resources, &candidates) {
                Placement::On(worker) => {
                    if self.ledger.reserve(&worker, &key.1, resources).is_ok() {
                        self.epoch += 1;
                        self.queue.remove(&key);
                        self.placing.insert(key.1.clone());
                        picks.push((key.1, worker));
                    }
                }
                Placement::Wait(reason) => {
                    let reason = match &pin {
                        Some(p) => format!("waiting for worker {p}: {reason}"),
                        None => reason.to_string(),
                    };
                    if let Some(q) = self.queue.get_mut(&key) {
                        q.reason = Some(reason);
                    }
                }
            }
        }
        (picks, self.passes)
    }

    fn candidates(&self, now: Timestamp, pin: Option<&WorkerId>) -> Vec<Candidate> {
        self.workers
            .keys()
            .filter(|id| pin.is_none_or(|p| p == *id))
            .filter_map(|id| {
                Some(Candidate {
                    id: id.clone(),
                    active: self.placeable(id, now),
                    capacity: self.ledger.capacity(id)?,
                    available: self.ledger.available(id)?,
                })
            })
            .collect()
    }

    /// The ledger holds `task`'s resources on `worker` from now on: the
    /// reservation its placement made is confirmed, or one is made (an
    /// assignment whose write was uncertain). Either way the reservation
    /// now stands for a stored assignment, so a concurrent reconcile must
    /// retry.
    pub(super) fn hold(
        &mut self,
        task: &TaskId,
        worker: &WorkerId,
        resources: Resources,
    ) -> Result<(), LedgerError> {
        self.placing.remove(task);
        self.epoch += 1;
        match self.ledger.reservation(task) {
            Some((w, _)) if w == worker => Ok(()),
            _ => self.ledger.reserve(worker, task, resources),
        }
    }

    /// A placement whose assignment was not stored gives its reservation
    /// back.
    pub(super) fn unreserve(&mut self, task: &TaskId) {
        if self.placing.remove(task) {
            self.release(task);
        }
    }

    /// Frees the task's resources; `Some` if it held any.
    pub(super) fn release(&mut self, task: &TaskId) -> Option<(WorkerId, Resources)> {
        let released = self.ledger.release(task);
        if released.is_some() {
            self.epoch += 1;
            self.queue_pass = true;
        }
        released
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Rebuilds allocations from the store's running tasks, read when the
    /// epoch was `epoch`; `None` if the ledger changed since (retry).
    pub(super) fn reconcile(
        &mut self,
        epoch: u64,
        running: Vec<TaskRecord>,
    ) -> Option<Reconciliation> {
        if self.epoch != epoch {
            return None;
        }
        let mut truth: Vec<(TaskId, WorkerId, Resources)> = running
            .into_iter()
            .filter_map(|t| Some((t.id, t.worker?, t.spec.resources)))
            .collect();
        // Reservations whose `Assign` is not stored yet are real too.
        for id in &self.placing {
            if let Some((w, req)) = self.ledger.reservation(id) {
                truth.push((id.clone(), w.clone(), req));
            }
        }
        let report = self.ledger.reconcile(truth);
        self.epoch += 1;
        if !report.corrections.is_empty() {
            self.queue_pass = true;
        }
        for c in &report.corrections {
            warn!(worker = %c.worker, correction = %c, "allocation corrected");
        }
        for (task, worker) in &report.unknown_workers {
            warn!(task = %task, worker = %worker, "running task on an unknown worker");
        }
        Some(report)
    }

    // ---- owed work -------------------------------------------------------

    pub(super) fn owe_queue_pass(&mut self) {
        self.queue_pass = true;
    }

    /// A stored assignment is owed to its worker.
    pub(super) fn owe_send(&mut self, task: TaskRecord, worker: WorkerId) {
        self.sending.insert(task.id.clone());
        self.sends.push((task, worker));
    }

    /// The assignment's delivery ended, either way.
    pub(super) fn sent(&mut self, task: &TaskId) {
        self.sending.remove(task);
    }

    pub(super) fn owe_stop(&mut self, worker: WorkerId, run: RunningTask, grace: Duration) {
        self.stops.owe(worker, run, grace);
    }

    pub(super) fn settle_stop(&mut self, worker: &WorkerId, run: &RunningTask, outcome: Delivery) {
        self.stops.settle(worker, run, outcome);
    }

    pub(super) fn wait_for_stop(&mut self, worker: &WorkerId, run: &RunningTask) -> Wait {
        self.stops.wait(worker, run)
    }

    /// Whether anything is owed that the driver should perform now.
    pub(super) fn owes_work(&self) -> bool {
        self.queue_pass || !self.sends.is_empty() || self.stops.any_due()
    }

    /// Everything owed now, for the driver.
    pub(super) fn take_owed(&mut self) -> Owed {
        Owed {
            queue_pass: std::mem::take(&mut self.queue_pass),
            sends: std::mem::take(&mut self.sends),
            stops: self.stops.take_due(),
        }
    }
}
