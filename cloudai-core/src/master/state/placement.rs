//! The queue and the ledger: placement passes, reservations and their
//! confirmation, releases, and reconciliation. Every ledger change bumps
//! the epoch here, so a reconcile that read the store before it retries.

use tracing::warn;

use super::queue::{Blocked, Class};
use super::{BackstopSlack, State};
use crate::ledger::Reconciliation;
use crate::model::{Constraint, Resources, TaskId, TaskRecord, Timestamp, WorkerId};
use crate::placement::{no_room, place, sample, walk_from, Candidate, NoCapacity, Placement};

/// Why a class waits: only busy workers can be ended by a freed slot;
/// otherwise a worker must join, return or be undrained.
fn blocked(reason: &NoCapacity, pin: Option<&WorkerId>) -> Blocked {
    let text = match pin {
        Some(p) => format!("waiting for worker {p}: {reason}"),
        None => reason.to_string(),
    };
    Blocked::new(text, *reason != NoCapacity::AllBusy)
}

/// A class no active worker allows the mounts of, or matches the
/// constraints of: only a worker joining, returning or being undrained can
/// help.
fn needs_worker(reason: String, pin: Option<&WorkerId>) -> Blocked {
    let text = match pin {
        Some(p) => format!("waiting for worker {p}: {reason}"),
        None => reason,
    };
    Blocked::new(text, true)
}

impl State {
    /// Why a pending task still waits, if known.
    pub(in crate::master) fn waiting_reason(&self, task: &TaskRecord) -> Option<String> {
        self.queue
            .reason(&task.id)
            .or_else(|| self.gate_reason(task))
    }

    /// Whether the task's assignment is being placed or sent, so the worker
    /// may not list it yet.
    pub(in crate::master) fn in_flight(&self, task: &TaskId) -> bool {
        self.sending.contains(task) || self.placing.contains(task)
    }

    /// The number of the first placement pass that will see a task queued
    /// now.
    pub(in crate::master) fn next_pass(&self) -> u64 {
        self.passes + 1
    }

    /// A placement pass: picks a worker for the oldest task of every class
    /// of queued tasks that may fit, oldest first, and reserves its
    /// resources at once so concurrent passes cannot double-book. A class
    /// whose oldest task does not fit waits, with the reason, until room
    /// appears where it could run (see `queue`). Returns the picks and the
    /// pass's number.
    pub(in crate::master) fn pick_placements(
        &mut self,
        now: Timestamp,
    ) -> (Vec<(TaskId, WorkerId, Vec<u32>)>, u64) {
        self.passes += 1;
        let mut queue = std::mem::take(&mut self.queue);
        let mut picks = Vec::new();
        queue.pass(|task, class| {
            let r = &class.resources;
            if !class.mounts.is_empty() && !self.any_active_suits(now, class, &[]) {
                let reason = format!(
                    "no active worker allows bind mounts from {}",
                    class.mounts.join(", ")
                );
                return Err(needs_worker(reason, class.pin.as_ref()));
            }
            if !class.constraints.is_empty()
                && !self.any_active_suits(now, class, &class.constraints)
            {
                let reason = format!(
                    "no active worker matches the constraints {}",
                    constraint_list(&class.constraints)
                );
                return Err(needs_worker(reason, class.pin.as_ref()));
            }
            let room = sample(r, self.candidates(now, class, false));
            if room.is_empty() {
                let reason = no_room(r, self.candidates(now, class, true));
                return Err(blocked(&reason, class.pin.as_ref()));
            }
            match place(self.scheduler.as_mut(), r, &room) {
                Placement::On(worker) => {
                    let gpus = self
                        .ledger
                        .reserve(&worker, task, class.resources)
                        .map_err(|e| Blocked::new(e.to_string(), false))?;
                    self.epoch += 1;
                    self.cursor = Some(worker.clone());
                    self.placing.insert(task.clone());
                    picks.push((task.clone(), worker, gpus));
                    Ok(())
                }
                Placement::Wait(reason) => Err(blocked(&reason, class.pin.as_ref())),
            }
        });
        self.queue = queue;
        (picks, self.passes)
    }

    /// The workers a placement of `class` walks. A pinned task sees its
    /// worker. Otherwise the walk starts after the worker placed on last
    /// and goes round every worker if `all`, else round the ledger's
    /// free-capacity index (workers with some CPU and memory free) when the
    /// request asks for both; [`sample`] stops it at the sample's size.
    fn candidates<'a>(
        &'a self,
        now: Timestamp,
        class: &'a Class,
        all: bool,
    ) -> Box<dyn Iterator<Item = Candidate> + 'a> {
        let candidate = move |id: &WorkerId| {
            // Only workers that allow its mounts and match its
            // constraints are candidates at all.
            if !self.allows_mounts(id, &class.mounts) || !self.matches(id, &class.constraints) {
                return None;
            }
            Some(Candidate {
                id: id.clone(),
                active: self.placeable(id, now),
                capacity: self.ledger.capacity(id)?,
                available: self.ledger.available(id)?,
            })
        };
        if let Some(pin) = &class.pin {
            return Box::new(candidate(pin).into_iter());
        }
        let r = &class.resources;
        let cursor = self.cursor.as_ref();
        if !all && r.cpu_millis > 0 && r.memory_mb > 0 {
            Box::new(walk_from(self.ledger.open(), cursor).filter_map(move |(id, _)| candidate(id)))
        } else {
            Box::new(walk_from(&self.workers, cursor).filter_map(move |(id, _)| candidate(id)))
        }
    }

    /// Whether an active worker (its pin, if it has one) allows every bind
    /// mount of `class` and satisfies `constraints`.
    fn any_active_suits(&self, now: Timestamp, class: &Class, constraints: &[Constraint]) -> bool {
        let suits = |w: &WorkerId| {
            self.placeable(w, now)
                && self.allows_mounts(w, &class.mounts)
                && self.matches(w, constraints)
        };
        match &class.pin {
            Some(p) => suits(p),
            None => self.workers.keys().any(suits),
        }
    }

    pub(in crate::master) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Rebuilds allocations from the store's running tasks, read when the
    /// epoch was `epoch`, and the runs whose stop is still owed; `None` if
    /// the ledger changed since (retry).
    pub(in crate::master) fn reconcile(
        &mut self,
        epoch: u64,
        running: Vec<TaskRecord>,
        slack: BackstopSlack,
    ) -> Option<Reconciliation> {
        if self.epoch != epoch {
            return None;
        }
        let mut truth: Vec<(TaskId, WorkerId, Resources, Vec<u32>)> = Vec::new();
        let mut held: Vec<(TaskId, u32)> = Vec::new();
        for t in running {
            // A master restarted on its store keeps enforcing time limits.
            self.ensure_backstop(&t, slack);
            if let Some(w) = t.worker {
                held.push((t.id.clone(), t.attempt));
                truth.push((t.id, w, t.spec.resources, t.gpus));
            }
        }
        // A run whose stop is owed may still run: it holds its resources
        // and GPUs until the stop lands (a cancel, a requeue, a drain).
        for (worker, run) in self.stops.owed() {
            if let (true, Some((_, req, gpus))) = (
                self.holds(&worker, &run),
                self.ledger.reservation(&run.task),
            ) {
                let gpus = gpus.to_vec();
                held.push((run.task.clone(), run.attempt));
                truth.push((run.task, worker, req, gpus));
            }
        }
        // Reservations whose `Assign` is not stored yet are real too.
        for id in &self.placing {
            if let Some((w, req, gpus)) = self.ledger.reservation(id) {
                truth.push((id.clone(), w.clone(), req, gpus.to_vec()));
            }
        }
        let report = self.ledger.reconcile(truth);
        self.set_held(held);
        self.epoch += 1;
        if !report.corrections.is_empty() {
            self.queue.wake_all();
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
}

/// Constraints as a user writes them, ANDed: `zone=a, gpu`.
pub(in crate::master) fn constraint_list(constraints: &[Constraint]) -> String {
    let all: Vec<String> = constraints.iter().map(ToString::to_string).collect();
    all.join(", ")
}
