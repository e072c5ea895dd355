//! The master's in-memory state: the caches and schedules around the store,
//! and the work that state changes made owed.
//!
//! Everything here is synchronous and lives under one `std::sync::Mutex`
//! that is never held across an `.await`. The store stays the truth for
//! task status; the ledger is a cache that reconciliation can rebuild.
//! Fields are private: each method keeps its own invariants (a ledger
//! change bumps the reconcile epoch; a task is in `placing` exactly while
//! its placement holds an unconfirmed reservation).

mod gate;
mod placement;
mod queue;
mod runs;
mod workers;

pub(in crate::master) use placement::constraint_list;
use queue::Queue;
pub(in crate::master) use runs::BackstopSlack;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::owed_stops::{Delivery, OwedStops, Wait};
use crate::backoff::ReconnectSchedule;
use crate::ledger::Ledger;
use crate::liveness::{Liveness, LivenessEvent};
use crate::model::{
    Drain, Gpu, Heartbeat, InstanceId, Labels, RunningTask, TaskId, TaskRecord, Telemetry,
    Timestamp, WorkerId,
};

use crate::placement::Scheduler;
use crate::rng::SplitMix64;

use crate::master::config::MasterConfig;

/// What the master knows about a worker beyond the ledger and liveness.
#[derive(Debug, Clone, Default)]
struct WorkerInfo {
    address: Option<String>,
    /// The instance of its latest registration.
    instance: Option<InstanceId>,
    /// Set while an operator drains it: nothing new is placed there.
    drain: Option<Drain>,
    /// It said it was leaving, and has not registered since.
    left: bool,
    /// Registered with this master since it started (so it knows its tasks).
    session: bool,
    /// An assignment or stop just failed to reach it: no placements until
    /// it is heard from again (avoids a requeue loop on a dead link).
    unreachable: bool,
    telemetry: Option<Telemetry>,
    /// Its GPUs as it named them (empty: numbered from 0).
    gpus: Vec<Gpu>,
    /// Host directories under which its tasks may bind-mount.
    allow_mounts: Vec<String>,
    /// Its labels, which tasks' constraints must match.
    labels: Labels,
}

/// Work that state changes made owed; the driver performs it.
#[derive(Debug, Default)]
pub(in crate::master) struct Owed {
    /// Queued tasks may fit now: run a placement pass.
    pub(in crate::master) queue_pass: bool,
    /// Assignments stored and not yet sent.
    pub(in crate::master) sends: Vec<(TaskRecord, WorkerId)>,
    /// Stops to deliver now.
    pub(in crate::master) stops: Vec<(WorkerId, RunningTask, Duration)>,
    /// Dependents to cancel: their dependencies can never hold.
    pub(in crate::master) unmet: Vec<(TaskId, String)>,
}

#[derive(Debug)]
pub(in crate::master) struct State {
    ledger: Ledger,
    liveness: Liveness,
    reconnect: ReconnectSchedule,
    workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Pending tasks, by class.
    queue: Queue,
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
    /// Drain deadlines not yet acted on.
    drain_deadlines: BTreeSet<(Timestamp, WorkerId)>,
    /// The worker placed on last: the next unpinned placement looks from
    /// there on.
    cursor: Option<WorkerId>,
    /// Bumped on every ledger change; reconcile retries if it moves.
    epoch: u64,
    scheduler: Box<dyn Scheduler>,
    rng: SplitMix64,
    runs: runs::Runs,
    gate: gate::Gate,
}

impl State {
    pub(in crate::master) fn new(config: &MasterConfig) -> State {
        State {
            ledger: Ledger::new(),
            liveness: Liveness::new(config.liveness),
            reconnect: ReconnectSchedule::new(config.backoff),
            workers: BTreeMap::new(),
            queue: Queue::default(),
            placing: BTreeSet::new(),
            sending: BTreeSet::new(),
            sends: Vec::new(),
            stops: OwedStops::default(),
            queue_pass: false,
            passes: 0,
            beats: BTreeMap::new(),
            drain_deadlines: BTreeSet::new(),
            cursor: None,
            epoch: 0,
            scheduler: config.policy.build(),
            rng: SplitMix64::new(config.seed),
            runs: runs::Runs::default(),
            gate: gate::Gate::default(),
        }
    }

    // ---- deadlines: liveness, reconnection, heartbeat batches ----------

    pub(in crate::master) fn next_deadline(&self) -> Option<Timestamp> {
        [
            self.liveness.next_deadline(),
            self.reconnect.next_deadline(),
            self.drain_deadlines.first().map(|(at, _)| *at),
            self.next_run_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Liveness events due at `now`, and the workers due a reconnection
    /// attempt (each rescheduled with backoff until it registers). A worker
    /// turning inactive starts being reconnected.
    pub(in crate::master) fn expire(
        &mut self,
        now: Timestamp,
    ) -> (Vec<LivenessEvent>, Vec<WorkerId>) {
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

    /// Workers whose drain deadline passed by `now` (each reported once).
    pub(in crate::master) fn drains_due(&mut self, now: Timestamp) -> Vec<WorkerId> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.drain_deadlines.first() {
            if *at > now {
                break;
            }
            if let Some((_, worker)) = self.drain_deadlines.pop_first() {
                due.push(worker);
            }
        }
        due
    }

    pub(in crate::master) fn stop_reconnecting(&mut self, worker: &WorkerId) {
        self.reconnect.remove(worker);
    }

    pub(in crate::master) fn reconnect_all_now(&mut self, now: Timestamp) {
        self.reconnect.all_due_now(now);
    }

    pub(in crate::master) fn take_beats(&mut self) -> Vec<Heartbeat> {
        std::mem::take(&mut self.beats).into_values().collect()
    }

    /// Puts back beats whose write failed, unless newer ones arrived.
    pub(in crate::master) fn restore_beats(&mut self, beats: Vec<Heartbeat>) {
        for b in beats {
            self.beats.entry(b.worker.clone()).or_insert(b);
        }
    }

    /// A random number in `[0, 1)` for backoff jitter.
    pub(in crate::master) fn jitter(&mut self) -> f64 {
        self.rng.next_f64()
    }

    // ---- owed work -------------------------------------------------------

    pub(in crate::master) fn owe_queue_pass(&mut self) {
        self.queue_pass = true;
    }

    /// A stored assignment is owed to its worker.
    pub(in crate::master) fn owe_send(&mut self, task: TaskRecord, worker: WorkerId) {
        self.sending.insert(task.id.clone());
        self.sends.push((task, worker));
    }

    /// The assignment's delivery ended, either way.
    pub(in crate::master) fn sent(&mut self, task: &TaskId) {
        self.sending.remove(task);
    }

    pub(in crate::master) fn owe_stop(
        &mut self,
        worker: WorkerId,
        run: RunningTask,
        grace: Duration,
        now: Timestamp,
    ) {
        self.stops.owe(worker, run, grace, now);
    }

    /// Records how a stop's delivery went; when it was owed, if delivered.
    pub(in crate::master) fn settle_stop(
        &mut self,
        worker: &WorkerId,
        run: &RunningTask,
        outcome: Delivery,
    ) -> Option<Timestamp> {
        self.stops.settle(worker, run, outcome)
    }

    pub(in crate::master) fn wait_for_stop(
        &mut self,
        worker: &WorkerId,
        run: &RunningTask,
    ) -> Wait {
        self.stops.wait(worker, run)
    }

    /// Whether anything is owed that the driver should perform now.
    pub(in crate::master) fn owes_work(&self) -> bool {
        self.queue_pass || !self.sends.is_empty() || self.stops.any_due() || self.owes_unmet()
    }

    /// Everything owed now, for the driver.
    pub(in crate::master) fn take_owed(&mut self) -> Owed {
        Owed {
            queue_pass: std::mem::take(&mut self.queue_pass),
            sends: std::mem::take(&mut self.sends),
            stops: self.stops.take_due(),
            unmet: self.take_unmet(),
        }
    }
}
