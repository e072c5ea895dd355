//! What the master knows of each worker beyond the ledger and liveness:
//! registration, heartbeats, leaving, drains, and the views built from it.

use std::collections::BTreeMap;

use super::{State, WorkerInfo};
use crate::liveness::Health;
use crate::master::views::{GpuView, WorkerView};
use crate::metrics::Snapshot;
use crate::model::{
    admits_all, Constraint, Drain, Gpu, Heartbeat, InstanceId, Mount, Resources, RunningTask,
    TaskId, Telemetry, Timestamp, WorkerId, WorkerIdentity, WorkerRecord,
};

impl State {
    /// A worker from the registry at start: it gets the benefit of the
    /// doubt (a heartbeat now) and, if it has an address, is asked to
    /// register again.
    pub(in crate::master) fn load_worker(&mut self, w: WorkerRecord, now: Timestamp) {
        let devices = Gpu::indices(&w.gpus, w.capacity.gpus);
        self.ledger.set_capacity(w.id.clone(), w.capacity, devices);
        let _ = self.liveness.heartbeat(&w.id, now);
        if w.address.is_some() {
            self.reconnect.add(w.id.clone(), now);
        }
        if let Some(at) = w.drain.and_then(|d| d.deadline) {
            self.drain_deadlines.insert((at, w.id.clone()));
        }
        self.workers.insert(
            w.id,
            WorkerInfo {
                address: w.address,
                instance: w.instance,
                drain: w.drain,
                telemetry: w.telemetry,
                gpus: w.gpus,
                allow_mounts: w.allow_mounts,
                labels: w.labels,
                ..WorkerInfo::default()
            },
        );
    }

    /// A worker registered: it is active, placeable, and takes the stops
    /// owed to it in the reply. Returns whether it was revived, and those
    /// stops.
    pub(in crate::master) fn register(
        &mut self,
        who: &WorkerIdentity,
        record: &WorkerRecord,
        now: Timestamp,
    ) -> (bool, Vec<RunningTask>) {
        let id = &who.id;
        let devices = Gpu::indices(&record.gpus, record.capacity.gpus);
        self.ledger
            .set_capacity(id.clone(), record.capacity, devices);
        let revived = self.liveness.heartbeat(id, now);
        self.reconnect.remove(id);
        let info = self.workers.entry(id.clone()).or_default();
        info.address.clone_from(&record.address);
        info.instance = Some(who.instance.clone());
        info.gpus.clone_from(&record.gpus);
        info.allow_mounts.clone_from(&record.allow_mounts);
        info.labels.clone_from(&record.labels);
        info.left = false;
        info.session = true;
        info.unreachable = false;
        self.queue.wake_joined(id);
        self.queue_pass = true;
        (revived, self.stops.for_registration(id))
    }

    /// A worker named by an operator before it registers: the master will
    /// ask it to register, with backoff.
    pub(in crate::master) fn pre_register(&mut self, w: &WorkerRecord, now: Timestamp) {
        if self.ledger.capacity(&w.id).is_none() {
            let devices = Gpu::indices(&w.gpus, w.capacity.gpus);
            self.ledger.set_capacity(w.id.clone(), w.capacity, devices);
        }
        self.liveness.track(w.id.clone());
        self.reconnect.add(w.id.clone(), now);
        let info = self.workers.entry(w.id.clone()).or_default();
        info.address = w.address.clone();
        info.instance = w.instance.clone();
        info.allow_mounts.clone_from(&w.allow_mounts);
        info.labels.clone_from(&w.labels);
    }

    /// Takes a heartbeat. `None` if the worker must register again (unknown
    /// here, no session since the master started, or the session is
    /// another instance's); else whether it was revived. Its parked stops
    /// become due, and a revived worker may take queued tasks.
    pub(in crate::master) fn heartbeat(
        &mut self,
        who: &WorkerIdentity,
        telemetry: Telemetry,
        now: Timestamp,
    ) -> Option<bool> {
        let worker = &who.id;
        let info = self
            .workers
            .get_mut(worker)
            .filter(|i| i.session && i.instance.as_ref() == Some(&who.instance))?;
        let was_unreachable = std::mem::replace(&mut info.unreachable, false);
        info.telemetry = Some(telemetry.clone());
        // Inactive by the clock though not yet expired by the driver: a
        // pass may have seen it so, and blocked a class on it.
        let was_inactive = self.liveness.health(worker, now) != Some(Health::Active);
        let revived = self.liveness.heartbeat(worker, now);
        if revived || was_unreachable || was_inactive {
            self.queue.wake_joined(worker);
            self.queue_pass = true;
        }
        if revived {
            self.reconnect.remove(worker);
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

    /// The worker said it is leaving: no more placements there, and it is
    /// inactive from now on. Returns whether it was active.
    pub(in crate::master) fn leave(&mut self, worker: &WorkerId, now: Timestamp) -> bool {
        self.end_session(worker);
        if let Some(info) = self.workers.get_mut(worker) {
            info.left = true;
        }
        self.liveness.leave(worker, now)
    }

    /// The worker's session ended (it was declared lost, or it left).
    pub(in crate::master) fn end_session(&mut self, worker: &WorkerId) {
        if let Some(info) = self.workers.get_mut(worker) {
            info.session = false;
        }
    }

    /// A delivery to the worker failed: place nothing there until it is
    /// heard from.
    pub(in crate::master) fn mark_unreachable(&mut self, worker: &WorkerId) {
        if let Some(info) = self.workers.get_mut(worker) {
            info.unreachable = true;
        }
    }

    /// Whether the worker said it was leaving (and has not registered
    /// since).
    pub(in crate::master) fn left(&self, worker: &WorkerId) -> bool {
        self.workers.get(worker).is_some_and(|w| w.left)
    }

    /// The largest registered worker (of `pin` alone, if given), whatever
    /// its health, when none could ever hold `request`; `None` when one
    /// could, or none is registered (one only named by an operator has no
    /// capacity yet). Stops at the first that could, and copies nothing on
    /// the way: every submit asks, and a cluster may have 10,000 workers.
    pub(in crate::master) fn never_fits(
        &self,
        request: &Resources,
        pin: Option<&WorkerId>,
    ) -> Option<(WorkerId, Resources)> {
        let known = |(_, c): &(&WorkerId, Resources)| !c.is_zero();
        let (largest, capacity) = match pin {
            Some(p) => {
                let pinned = self.ledger.capacity(p).map(|c| (p, c));
                crate::placement::never_fits(request, pinned.into_iter().filter(known))?
            }
            None => crate::placement::never_fits(request, self.ledger.capacities().filter(known))?,
        };
        Some((largest.clone(), capacity))
    }

    /// Whether `worker` allows bind mounts from every one of `sources`.
    pub(in crate::master) fn allows_mounts(&self, worker: &WorkerId, sources: &[String]) -> bool {
        sources.is_empty()
            || self.workers.get(worker).is_some_and(|w| {
                sources
                    .iter()
                    .all(|s| Mount::allowed_by(s, &w.allow_mounts))
            })
    }

    /// Whether a registered worker (`pin`, if given) allows bind mounts
    /// from every one of `sources`, or none is known yet (then the task
    /// queues, as one asking for more than any worker has does).
    pub(in crate::master) fn mounts_allowed_somewhere(
        &self,
        sources: &[String],
        pin: Option<&WorkerId>,
    ) -> bool {
        match pin {
            Some(p) => !self.workers.contains_key(p) || self.allows_mounts(p, sources),
            None => {
                self.workers.is_empty()
                    || self.workers.keys().any(|w| self.allows_mounts(w, sources))
            }
        }
    }

    /// Whether `worker`'s labels satisfy every one of `constraints`.
    pub(in crate::master) fn matches(&self, worker: &WorkerId, constraints: &[Constraint]) -> bool {
        constraints.is_empty()
            || self
                .workers
                .get(worker)
                .is_some_and(|w| admits_all(constraints, &w.labels))
    }

    /// Whether a registered worker (`pin`, if given) satisfies every one
    /// of `constraints`, or none is known yet.
    pub(in crate::master) fn matched_somewhere(
        &self,
        constraints: &[Constraint],
        pin: Option<&WorkerId>,
    ) -> bool {
        match pin {
            Some(p) => !self.workers.contains_key(p) || self.matches(p, constraints),
            None => {
                self.workers.is_empty() || self.workers.keys().any(|w| self.matches(w, constraints))
            }
        }
    }

    /// Whether `worker` said in its last heartbeat that it is still
    /// starting `task`.
    pub(in crate::master) fn is_starting(&self, worker: &WorkerId, task: &TaskId) -> bool {
        self.workers
            .get(worker)
            .and_then(|w| w.telemetry.as_ref())
            .is_some_and(|t| t.starting.contains(task))
    }

    pub(in crate::master) fn knows(&self, worker: &WorkerId) -> bool {
        self.workers.contains_key(worker)
    }

    pub(in crate::master) fn address(&self, worker: &WorkerId) -> Option<String> {
        self.workers.get(worker)?.address.clone()
    }

    pub(in crate::master) fn instance(&self, worker: &WorkerId) -> Option<InstanceId> {
        self.workers.get(worker)?.instance.clone()
    }

    /// Whether the worker is registered with this master and active now.
    pub(in crate::master) fn in_session(&self, worker: &WorkerId, now: Timestamp) -> bool {
        self.workers.get(worker).is_some_and(|w| w.session)
            && self.liveness.health(worker, now) == Some(Health::Active)
    }

    /// Sets or clears a worker's drain (the registry has it already).
    /// Returns false if the worker is unknown. Undraining lets queued
    /// tasks be placed there again.
    pub(in crate::master) fn set_drain(&mut self, worker: &WorkerId, drain: Option<Drain>) -> bool {
        let Some(info) = self.workers.get_mut(worker) else {
            return false;
        };
        if let Some(at) = info.drain.and_then(|d| d.deadline) {
            self.drain_deadlines.remove(&(at, worker.clone()));
        }
        if let Some(at) = drain.and_then(|d| d.deadline) {
            self.drain_deadlines.insert((at, worker.clone()));
        }
        info.drain = drain;
        if drain.is_none() {
            self.queue.wake_joined(worker);
            self.queue_pass = true;
        }
        true
    }

    /// Whether a worker may receive new tasks now.
    pub(super) fn placeable(&self, worker: &WorkerId, now: Timestamp) -> bool {
        self.in_session(worker, now)
            && self
                .workers
                .get(worker)
                .is_some_and(|w| !w.unreachable && w.drain.is_none())
    }

    pub(in crate::master) fn worker_views(&self, now: Timestamp) -> Vec<WorkerView> {
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
                gpus: self.gpu_views(id, &info.gpus),
                last_heartbeat: self.liveness.last_heartbeat(id),
                telemetry: info.telemetry.clone(),
                drain: info.drain,
                labels: info.labels.clone(),
            })
            .collect()
    }

    /// The worker's GPUs as the ledger has them, each with its holder.
    fn gpu_views(&self, id: &WorkerId, named: &[Gpu]) -> Vec<GpuView> {
        let holders: BTreeMap<u32, &TaskId> = self
            .ledger
            .gpus_on(id)
            .flat_map(|(t, gpus)| gpus.iter().map(move |g| (*g, t)))
            .collect();
        self.ledger
            .devices(id)
            .iter()
            .map(|i| GpuView {
                gpu: named
                    .iter()
                    .find(|g| g.index == *i)
                    .cloned()
                    .unwrap_or_else(|| Gpu::indexed(*i)),
                task: holders.get(i).map(|t| (*t).clone()),
            })
            .collect()
    }

    /// What a metrics scrape reads: the queue, workers by health, and
    /// resources summed over the workers not lost.
    pub(in crate::master) fn snapshot(&self, now: Timestamp) -> Snapshot {
        let mut snap = Snapshot {
            queued: self.queue.len(),
            ..Snapshot::default()
        };
        for id in self.workers.keys() {
            let health = self.liveness.health(id, now).unwrap_or(Health::Inactive);
            snap.workers.push(health);
            if health == Health::Lost {
                continue;
            }
            let add = |sum: &mut Resources, r: Option<Resources>| {
                *sum = sum.checked_add(&r.unwrap_or_default()).unwrap_or(*sum);
            };
            add(&mut snap.allocated, self.ledger.allocated(id));
            add(&mut snap.capacity, self.ledger.capacity(id));
            let gpus = |r: Option<Resources>| r.map_or(0, |r| r.gpus);
            let capacity = gpus(self.ledger.capacity(id));
            if capacity > 0 {
                let allocated = gpus(self.ledger.allocated(id));
                snap.worker_gpus.push((id.clone(), allocated, capacity));
            }
        }
        snap
    }
}
