//! Runs and the waits around them: which attempt holds resources where
//! (until its end is known), tasks waiting out a retry delay, and the
//! master's backstop for time limits.
//!
//! A run's resources are held from its placement until its end is known:
//! its worker reported it, confirmed its stop, came back without it, or
//! was declared lost. A stop still owed keeps them held, so what the
//! ledger allocates never falls below what may still run.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::gate::Entry;
use super::queue::Rank;
use super::State;
use crate::ledger::LedgerError;
use crate::model::{Resources, RunningTask, TaskId, TaskRecord, TaskStatus, Timestamp, WorkerId};

/// A pending task waiting out its retry delay, out of the queue so that it
/// never blocks its class.
#[derive(Debug, Clone)]
pub(super) struct Delayed {
    due: Timestamp,
    entry: Entry,
}

/// A run with a time limit, and when the master stops it itself if no end
/// was heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Backstop {
    at: Timestamp,
    worker: WorkerId,
    attempt: u32,
    /// The run's limit, grace and slack: how far past its start it goes.
    span: Duration,
}

/// The runs part of the state.
#[derive(Debug, Default)]
pub(super) struct Runs {
    /// The attempt each confirmed hold in the ledger is for.
    held: HashMap<TaskId, u32>,
    /// Tasks waiting for their retry delay, by due time.
    delayed: BTreeSet<(Timestamp, TaskId)>,
    delayed_info: HashMap<TaskId, Delayed>,
    /// Backstops by time.
    backstops: BTreeSet<(Timestamp, TaskId)>,
    backstop_info: HashMap<TaskId, Backstop>,
}

/// What the state needs from the master's config to set a backstop: the
/// slack after a run's limit and grace (a heartbeat timeout).
#[derive(Debug, Clone, Copy)]
pub(in crate::master) struct BackstopSlack(pub(in crate::master) Duration);

impl State {
    /// The ledger holds `task`'s resources and GPUs `gpus` on `worker`
    /// for `attempt` from now on: the reservation its placement made is
    /// confirmed, or one is made (an assignment whose write was
    /// uncertain). Either way the reservation now stands for a stored
    /// assignment, so a concurrent reconcile must retry.
    pub(in crate::master) fn hold(
        &mut self,
        task: &TaskId,
        worker: &WorkerId,
        resources: Resources,
        gpus: &[u32],
        attempt: u32,
    ) -> Result<(), LedgerError> {
        self.placing.remove(task);
        self.epoch += 1;
        let held = match self.ledger.reservation(task) {
            Some((w, _, held)) if w == worker && held == gpus => Ok(()),
            // Stored before GPUs had indices: any free ones.
            _ if gpus.len() < resources.gpus as usize => {
                self.ledger.reserve(worker, task, resources).map(drop)
            }
            _ => self.ledger.reserve_devices(worker, task, resources, gpus),
        };
        if held.is_ok() {
            self.runs.held.insert(task.clone(), attempt);
        }
        held
    }

    /// A placement whose assignment was not stored gives its reservation
    /// back.
    pub(in crate::master) fn unreserve(&mut self, task: &TaskId) {
        if self.placing.remove(task) {
            self.free(task);
        }
    }

    /// Attempt `attempt` of `task` on `worker` is known to have ended:
    /// its resources go back, if it held them. True if it did.
    pub(in crate::master) fn release_run(
        &mut self,
        task: &TaskId,
        worker: &WorkerId,
        attempt: u32,
    ) -> bool {
        let holds =
            self.ledger.holder(task) == Some(worker) && self.runs.held.get(task) == Some(&attempt);
        if holds {
            self.runs.held.remove(task);
            self.clear_backstop(task);
            self.free(task);
        }
        holds
    }

    /// The runs held on a lost worker: each is known to have ended.
    pub(in crate::master) fn runs_held_on(&self, worker: &WorkerId) -> Vec<RunningTask> {
        self.ledger
            .tasks_on(worker)
            .filter_map(|t| {
                Some(RunningTask {
                    task: t.clone(),
                    attempt: *self.runs.held.get(t)?,
                })
            })
            .collect()
    }

    /// Whether the ledger holds `run` (its end is not known yet).
    pub(in crate::master) fn holds(&self, worker: &WorkerId, run: &RunningTask) -> bool {
        self.ledger.holder(&run.task) == Some(worker)
            && self.runs.held.get(&run.task) == Some(&run.attempt)
    }

    fn free(&mut self, task: &TaskId) {
        if let Some((worker, _)) = self.ledger.release(task) {
            self.epoch += 1;
            self.queue.wake(&worker);
            self.queue_pass = true;
        }
    }

    /// Keeps the queue a mirror of the store's placeable tasks across a
    /// change from `from` to `task.status`: a pending task joins it unless
    /// its previous attempt is still ending, or it waits out a retry
    /// delay first.
    pub(in crate::master) fn track_queue(
        &mut self,
        task: &TaskRecord,
        from: TaskStatus,
        now: Timestamp,
    ) {
        if from == TaskStatus::Pending {
            self.queue.remove(&task.id);
            self.forget_delayed(&task.id);
            self.gate_forget_pending(task);
        }
        if task.status == TaskStatus::Pending && task.worker.is_none() {
            self.enqueue_when_due(task, now);
        }
        if task.status.is_terminal() {
            self.gate_ended(task, now);
        }
    }

    /// Queues a stored pending task this master may not have seen (one
    /// an older term stored, a submit retried under its request id): only
    /// if it is placeable and this master is not already placing, sending
    /// or holding it. Returns whether it was queued.
    pub(in crate::master) fn adopt(&mut self, task: &TaskRecord, now: Timestamp) -> bool {
        let placeable = task.status == TaskStatus::Pending && task.worker.is_none();
        if !placeable || self.in_flight(&task.id) || self.ledger.holder(&task.id).is_some() {
            return false;
        }
        self.forget_delayed(&task.id);
        self.enqueue_when_due(task, now);
        true
    }

    /// Holds a task that passed the gate until its not-before time.
    pub(super) fn delay(&mut self, entry: Entry, due: Timestamp) {
        self.runs.delayed.insert((due, entry.id.clone()));
        self.runs
            .delayed_info
            .insert(entry.id.clone(), Delayed { due, entry });
    }

    /// A delayed task's new rank, for when it joins the queue.
    pub(super) fn redelay(&mut self, task: &TaskId, rank: Rank) {
        if let Some(d) = self.runs.delayed_info.get_mut(task) {
            d.entry.rank = rank;
        }
    }

    fn forget_delayed(&mut self, task: &TaskId) {
        if let Some(d) = self.runs.delayed_info.remove(task) {
            self.runs.delayed.remove(&(d.due, task.clone()));
        }
    }

    /// When `task` may be placed, while it waits out a retry delay.
    pub(in crate::master) fn delayed_until(&self, task: &TaskId) -> Option<Timestamp> {
        self.runs.delayed_info.get(task).map(|d| d.due)
    }

    /// Moves the tasks whose retry delay passed by `now` into the queue.
    pub(in crate::master) fn queue_due_retries(&mut self, now: Timestamp) {
        while let Some((due, _)) = self.runs.delayed.first() {
            if *due > now {
                break;
            }
            let Some((_, id)) = self.runs.delayed.pop_first() else {
                break;
            };
            if let Some(d) = self.runs.delayed_info.remove(&id) {
                self.queue.insert(id, d.entry.rank, d.entry.class, None);
                self.queue_pass = true;
            }
        }
    }

    /// Sets the master's backstop for a run of a task with a time limit:
    /// from its assignment, its limit and grace, then `slack`.
    pub(in crate::master) fn set_backstop(&mut self, task: &TaskRecord, slack: BackstopSlack) {
        let (Some(limit), Some(worker), Some(assigned)) = (
            task.spec.policy.time_limit,
            task.worker.clone(),
            task.assigned_at,
        ) else {
            return;
        };
        self.clear_backstop(&task.id);
        let span = limit
            .saturating_add(task.spec.cancel_grace)
            .saturating_add(slack.0);
        let at = assigned.saturating_add(span);
        self.runs.backstops.insert((at, task.id.clone()));
        self.runs.backstop_info.insert(
            task.id.clone(),
            Backstop {
                at,
                worker,
                attempt: task.attempt,
                span,
            },
        );
    }

    /// Sets `task`'s backstop unless it has one.
    pub(super) fn ensure_backstop(&mut self, task: &TaskRecord, slack: BackstopSlack) {
        if !self.runs.backstop_info.contains_key(&task.id) {
            self.set_backstop(task, slack);
        }
    }

    pub(in crate::master) fn clear_backstop(&mut self, task: &TaskId) {
        if let Some(b) = self.runs.backstop_info.remove(task) {
            self.runs.backstops.remove(&(b.at, task.clone()));
        }
    }

    /// Runs whose backstop passed by `now`: each is stopped and recorded
    /// as timed out, unless its worker said it is still starting it (an
    /// image pull does not count), which moves its backstop to its limit,
    /// grace and slack from now.
    pub(in crate::master) fn backstops_due(
        &mut self,
        now: Timestamp,
    ) -> Vec<(TaskId, WorkerId, u32)> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.runs.backstops.first() {
            if *at > now {
                break;
            }
            let Some((_, id)) = self.runs.backstops.pop_first() else {
                break;
            };
            let Some(mut b) = self.runs.backstop_info.remove(&id) else {
                continue;
            };
            if self.is_starting(&b.worker, &id) {
                b.at = now.saturating_add(b.span);
                self.runs.backstops.insert((b.at, id.clone()));
                self.runs.backstop_info.insert(id, b);
            } else {
                due.push((id, b.worker, b.attempt));
            }
        }
        due
    }

    /// The earliest retry or backstop due.
    pub(super) fn next_run_deadline(&self) -> Option<Timestamp> {
        let retry = self.runs.delayed.first().map(|(at, _)| *at);
        let backstop = self.runs.backstops.first().map(|(at, _)| *at);
        retry.into_iter().chain(backstop).min()
    }

    /// Rebuilds the attempts of the holds from the runs reconcile kept.
    pub(super) fn set_held(&mut self, held: impl IntoIterator<Item = (TaskId, u32)>) {
        self.runs.held = held.into_iter().collect();
    }
}
