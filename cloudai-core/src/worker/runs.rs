//! The worker's table of runs: what runs here, what was stopped before it
//! started, and the supervisors that follow each run.
//!
//! One lock guards all three, so an assignment and a stop that race see
//! each other: the stop either finds the slot or leaves a tombstone the
//! assignment sees.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::model::{RunningTask, TaskId, Timestamp};
use crate::output::OutputLog;
use crate::runtime::ContainerId;

/// How many stopped-before-started runs the worker remembers, so a late
/// assignment for one of them is not run.
const TOMBSTONES: usize = 4096;

/// Why a run is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopKind {
    /// The user cancelled: report `cancelled` with the logs.
    Cancel,
    /// The master says the run is not (or no longer) this worker's: no report.
    Drop,
    /// The worker is shutting down: report it failed by the shutdown.
    Shutdown,
    /// The run went past its time limit: report it timed out.
    Timeout,
    /// The worker heard nothing from its master for so long that the
    /// master may declare it lost: report it ended by the loss.
    CutOff,
}

/// One run.
#[derive(Debug)]
pub(super) struct Slot {
    /// Set once the runtime started it.
    pub(super) container: Option<ContainerId>,
    /// The first stop asked for, if any.
    pub(super) stop: Option<(StopKind, Duration)>,
    pub(super) started_at: Timestamp,
    /// What it wrote, kept from its admission so a follower may come early.
    pub(super) output: Arc<OutputLog>,
    /// Its SIGTERM→SIGKILL grace for stops the worker decides itself.
    pub(super) grace: Duration,
    /// When its time limit runs out, once it started (if it has one).
    pub(super) deadline: Option<Timestamp>,
}

/// A run as the table first knows it.
#[derive(Debug)]
pub(super) struct NewRun {
    /// Set if it was found started (adopted after a restart).
    pub(super) container: Option<ContainerId>,
    pub(super) output: Arc<OutputLog>,
    pub(super) grace: Duration,
    /// Its time-limit deadline, if known already (an adopted run's).
    pub(super) deadline: Option<Timestamp>,
}

/// What [`Runs::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// A new run: start it.
    Start,
    /// Already here (a repeated assignment).
    Repeat,
    /// Stopped before its assignment arrived: do not start it.
    Tombstoned,
}

#[derive(Debug, Default)]
pub(super) struct Runs {
    slots: BTreeMap<RunningTask, Slot>,
    tombstones: BTreeSet<RunningTask>,
    /// Tombstones oldest first, to forget the oldest past the bound.
    tombstone_order: VecDeque<RunningTask>,
    supervisors: JoinSet<()>,
}

impl Runs {
    /// Admits assignment `run`, made by `new` if it is new.
    pub(super) fn admit(
        &mut self,
        run: &RunningTask,
        now: Timestamp,
        new: impl FnOnce() -> NewRun,
    ) -> Admit {
        if self.slots.contains_key(run) {
            return Admit::Repeat;
        }
        if self.tombstones.contains(run) {
            return Admit::Tombstoned;
        }
        self.insert(run.clone(), new(), now);
        Admit::Start
    }

    /// A run admitted, or found already running (adopted after a restart).
    pub(super) fn insert(&mut self, run: RunningTask, new: NewRun, now: Timestamp) {
        self.slots.insert(
            run,
            Slot {
                container: new.container,
                stop: None,
                started_at: now,
                output: new.output,
                grace: new.grace,
                deadline: new.deadline,
            },
        );
    }

    /// Asks for `run` to stop (the first request wins). Returns its
    /// container if it started; a run not here is tombstoned.
    pub(super) fn stop(
        &mut self,
        run: &RunningTask,
        kind: StopKind,
        grace: Duration,
    ) -> Option<ContainerId> {
        match self.slots.get_mut(run) {
            None => {
                self.tombstone(run.clone());
                None
            }
            Some(slot) => {
                slot.stop.get_or_insert((kind, grace));
                slot.container.clone()
            }
        }
    }

    fn tombstone(&mut self, run: RunningTask) {
        if self.tombstones.insert(run.clone()) {
            self.tombstone_order.push_back(run);
            if self.tombstone_order.len() > TOMBSTONES {
                if let Some(old) = self.tombstone_order.pop_front() {
                    self.tombstones.remove(&old);
                }
            }
        }
    }

    /// The runtime started `run` (at `now`, its time limit `limit`):
    /// returns a stop asked for meanwhile, and its deadline.
    pub(super) fn started(
        &mut self,
        run: &RunningTask,
        container: ContainerId,
        now: Timestamp,
        limit: Option<Duration>,
    ) -> (Option<(StopKind, Duration)>, Option<Timestamp>) {
        let Some(slot) = self.slots.get_mut(run) else {
            return (None, None);
        };
        slot.container = Some(container);
        if let Some(l) = limit {
            slot.deadline = Some(now.saturating_add(l));
        }
        (slot.stop, slot.deadline)
    }

    /// The run ended; its slot, if it was still here.
    pub(super) fn finish(&mut self, run: &RunningTask) -> Option<Slot> {
        self.slots.remove(run)
    }

    /// The grace of `run` (zero if it is not here).
    pub(super) fn grace(&self, run: &RunningTask) -> Duration {
        self.slots.get(run).map_or(Duration::ZERO, |s| s.grace)
    }

    pub(super) fn contains(&self, run: &RunningTask) -> bool {
        self.slots.contains_key(run)
    }

    pub(super) fn output(&self, run: &RunningTask) -> Option<Arc<OutputLog>> {
        Some(self.slots.get(run)?.output.clone())
    }

    /// The tasks accepted and not started yet (their image pulling, their
    /// container being created).
    pub(super) fn starting(&self) -> Vec<TaskId> {
        self.slots
            .iter()
            .filter(|(_, s)| s.container.is_none() && s.stop.is_none())
            .map(|(r, _)| r.task.clone())
            .collect()
    }

    /// The output of every run still here.
    pub(super) fn outputs(&self) -> Vec<Arc<OutputLog>> {
        self.slots.values().map(|s| s.output.clone()).collect()
    }

    pub(super) fn list(&self) -> Vec<RunningTask> {
        self.slots.keys().cloned().collect()
    }

    /// Every run with its container, if started.
    pub(super) fn containers(&self) -> Vec<(RunningTask, Option<ContainerId>)> {
        self.slots
            .iter()
            .map(|(r, s)| (r.clone(), s.container.clone()))
            .collect()
    }

    /// Marks every run as stopping for `kind` (unless a stop was already
    /// asked for), with `grace` or, if `None`, each run's own; returns
    /// the runs started so far, each with its container and grace.
    pub(super) fn stop_all(
        &mut self,
        kind: StopKind,
        grace: Option<Duration>,
    ) -> Vec<(RunningTask, Option<ContainerId>, Duration)> {
        self.slots
            .iter_mut()
            .map(|(run, slot)| {
                let (_, grace) = *slot.stop.get_or_insert((kind, grace.unwrap_or(slot.grace)));
                (run.clone(), slot.container.clone(), grace)
            })
            .collect()
    }

    /// Spawns a run's supervisor, reaping the finished ones first so the
    /// set does not grow with every task the worker ever ran.
    pub(super) fn supervise(&mut self, f: impl Future<Output = ()> + Send + 'static) {
        while self.supervisors.try_join_next().is_some() {}
        self.supervisors.spawn(f);
    }

    pub(super) fn abort_supervisors(&mut self) {
        self.supervisors.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskId;

    fn run(t: &str) -> RunningTask {
        RunningTask {
            task: TaskId::new(t).unwrap(),
            attempt: 1,
        }
    }

    fn new() -> NewRun {
        NewRun {
            container: None,
            output: OutputLog::new(0),
            grace: Duration::ZERO,
            deadline: None,
        }
    }

    #[test]
    fn a_stop_before_the_assignment_keeps_it_from_starting() {
        let mut r = Runs::default();
        assert_eq!(r.stop(&run("t"), StopKind::Cancel, Duration::ZERO), None);
        assert_eq!(r.admit(&run("t"), Timestamp::ZERO, new), Admit::Tombstoned);
    }

    #[test]
    fn a_stop_while_starting_is_handed_to_the_supervisor() {
        let mut r = Runs::default();
        assert_eq!(r.admit(&run("t"), Timestamp::ZERO, new), Admit::Start);
        assert_eq!(r.admit(&run("t"), Timestamp::ZERO, new), Admit::Repeat);
        assert_eq!(r.stop(&run("t"), StopKind::Cancel, Duration::ZERO), None);
        let (pending, deadline) = r.started(
            &run("t"),
            ContainerId("c".into()),
            Timestamp::from_millis(5),
            Some(Duration::from_secs(2)),
        );
        assert_eq!(pending, Some((StopKind::Cancel, Duration::ZERO)));
        assert_eq!(deadline, Some(Timestamp::from_millis(2005)));
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut r = Runs::default();
        for i in 0..=TOMBSTONES {
            let _ = r.stop(&run(&format!("t{i}")), StopKind::Drop, Duration::ZERO);
        }
        assert_eq!(r.tombstones.len(), TOMBSTONES);
        assert_eq!(r.admit(&run("t0"), Timestamp::ZERO, new), Admit::Start);
    }
}
