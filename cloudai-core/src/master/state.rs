//! The master's in-memory state: the caches and schedules around the store.
//!
//! Everything here is synchronous and lives under one `std::sync::Mutex`
//! that is never held across an `.await`. The store stays the truth for
//! task status; the ledger is a cache that reconciliation can rebuild.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::backoff::ReconnectSchedule;
use crate::ledger::Ledger;
use crate::liveness::{Health, Liveness};
use crate::model::{Heartbeat, Resources, TaskId, TaskRecord, Telemetry, Timestamp, WorkerId};
use crate::placement::{place, Candidate, Placement, Scheduler};
use crate::rng::SplitMix64;
use crate::transport::RunningTask;

/// What the master knows about a worker beyond the ledger and liveness.
#[derive(Debug, Clone)]
pub(super) struct WorkerInfo {
    pub(super) address: Option<String>,
    /// Registered with this master since it started (so it knows its tasks).
    pub(super) session: bool,
    /// An assignment or stop just failed to reach it: no placements until
    /// it is heard from again (avoids a requeue loop on a dead link).
    pub(super) unreachable: bool,
    pub(super) telemetry: Option<Telemetry>,
}

/// A pending task waiting for room.
#[derive(Debug, Clone)]
pub(super) struct Queued {
    pub(super) resources: Resources,
    pub(super) pin: Option<WorkerId>,
    pub(super) reason: Option<String>,
}

#[derive(Debug)]
pub(super) struct State {
    pub(super) ledger: Ledger,
    pub(super) liveness: Liveness,
    pub(super) reconnect: ReconnectSchedule,
    pub(super) workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Pending tasks, oldest first.
    pub(super) queue: BTreeMap<(Timestamp, TaskId), Queued>,
    /// Reserved in the ledger, `Assign` not yet stored.
    pub(super) placing: BTreeSet<TaskId>,
    /// Assignment RPCs under way (the worker may not list these yet).
    pub(super) sending: BTreeSet<TaskId>,
    /// Stops not yet acknowledged by their worker, with their grace.
    pub(super) stops: BTreeMap<WorkerId, BTreeMap<RunningTask, Duration>>,
    /// Stop deliveries under way, per worker.
    pub(super) delivering: BTreeSet<WorkerId>,
    /// Latest heartbeat per worker since the last flush (coalesced).
    pub(super) beats: BTreeMap<WorkerId, Heartbeat>,
    /// Bumped on every ledger change; reconcile retries if it moves.
    pub(super) epoch: u64,
    pub(super) scheduler: Box<dyn Scheduler>,
    pub(super) rng: SplitMix64,
}

impl State {
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

    pub(super) fn dequeue(&mut self, task: &TaskRecord) {
        self.queue.remove(&(task.created_at, task.id.clone()));
    }

    pub(super) fn release(&mut self, task: &TaskId) -> Option<(WorkerId, Resources)> {
        let released = self.ledger.release(task);
        if released.is_some() {
            self.epoch += 1;
        }
        released
    }

    /// Whether a worker may receive new tasks now.
    pub(super) fn placeable(&self, worker: &WorkerId, now: Timestamp) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|w| w.session && !w.unreachable)
            && self.liveness.health(worker, now) == Some(Health::Active)
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

    /// Picks a worker for every queued task that fits now, oldest first, and
    /// reserves its resources at once so concurrent passes cannot
    /// double-book. Tasks that do not fit keep their place with the reason.
    pub(super) fn pick_placements(&mut self, now: Timestamp) -> Vec<(TaskId, WorkerId)> {
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
        picks
    }

    /// A random number in `[0, 1)` for backoff jitter.
    pub(super) fn jitter(&mut self) -> f64 {
        self.rng.next_f64()
    }
}
