//! Stops the master owes its workers, each kept until its worker
//! acknowledges it.
//!
//! A stop is owed when a transition says so (a cancel, a requeue, a lost
//! worker). It is *due* (the driver sends it now), *in flight* (a delivery
//! is under way), or *parked* after a failed delivery until its worker is
//! heard from again. A cancel that wants to know how its stop went waits on
//! it; every waiter hears the first delivery's outcome.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::model::{RunningTask, Timestamp, WorkerId};

/// How a delivery went: `Err` holds why the stop did not get through.
pub(super) type Delivery = Result<(), String>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Due,
    InFlight,
    Parked(String),
}

#[derive(Debug)]
struct Owed {
    grace: Duration,
    /// When it was first owed.
    since: Timestamp,
    phase: Phase,
    waiters: Vec<oneshot::Sender<Delivery>>,
}

impl Owed {
    fn settle(&mut self, outcome: &Delivery) {
        for w in self.waiters.drain(..) {
            let _ = w.send(outcome.clone());
        }
    }
}

/// What [`OwedStops::wait`] found.
#[derive(Debug)]
pub(super) enum Wait {
    /// The stop is no longer owed: it was delivered.
    Delivered,
    /// Its last delivery failed; it stays owed until the worker is heard from.
    Parked(String),
    /// A delivery is due or under way; its outcome arrives here.
    Pending(oneshot::Receiver<Delivery>),
}

/// The stops owed, per worker.
#[derive(Debug, Default)]
pub(super) struct OwedStops {
    by_worker: BTreeMap<WorkerId, BTreeMap<RunningTask, Owed>>,
}

impl OwedStops {
    /// Owes `run`'s stop to `worker`, due now. Owing it again keeps a
    /// delivery under way and makes a parked one due.
    pub(super) fn owe(
        &mut self,
        worker: WorkerId,
        run: RunningTask,
        grace: Duration,
        now: Timestamp,
    ) {
        let owed = self
            .by_worker
            .entry(worker)
            .or_default()
            .entry(run)
            .or_insert(Owed {
                grace,
                since: now,
                phase: Phase::Due,
                waiters: Vec::new(),
            });
        if matches!(owed.phase, Phase::Parked(_)) {
            owed.phase = Phase::Due;
        }
    }

    /// Whether any stop is due.
    pub(super) fn any_due(&self) -> bool {
        self.by_worker
            .values()
            .any(|runs| runs.values().any(|o| o.phase == Phase::Due))
    }

    /// Every due stop, now in flight: the driver delivers each.
    pub(super) fn take_due(&mut self) -> Vec<(WorkerId, RunningTask, Duration)> {
        let mut due = Vec::new();
        for (worker, runs) in &mut self.by_worker {
            for (run, owed) in runs.iter_mut().filter(|(_, o)| o.phase == Phase::Due) {
                owed.phase = Phase::InFlight;
                due.push((worker.clone(), run.clone(), owed.grace));
            }
        }
        due
    }

    /// Records how a delivery went: a delivered stop is no longer owed (and
    /// when it was first owed is returned); a failed one is parked until
    /// its worker is heard from.
    pub(super) fn settle(
        &mut self,
        worker: &WorkerId,
        run: &RunningTask,
        outcome: Delivery,
    ) -> Option<Timestamp> {
        let runs = self.by_worker.get_mut(worker)?;
        let owed = runs.get_mut(run)?;
        owed.settle(&outcome);
        match outcome {
            Ok(()) => {
                let since = owed.since;
                runs.remove(run);
                if runs.is_empty() {
                    self.by_worker.remove(worker);
                }
                Some(since)
            }
            Err(why) => {
                owed.phase = Phase::Parked(why);
                None
            }
        }
    }

    /// The worker was heard from: its parked stops are due again. Returns
    /// whether any became due.
    pub(super) fn retry(&mut self, worker: &WorkerId) -> bool {
        let mut any = false;
        for owed in self
            .by_worker
            .get_mut(worker)
            .into_iter()
            .flat_map(|r| r.values_mut())
        {
            if matches!(owed.phase, Phase::Parked(_)) {
                owed.phase = Phase::Due;
                any = true;
            }
        }
        any
    }

    /// The stops owed to `worker`, for its registration reply: the worker
    /// stops those runs, or remembers them so a late assignment cannot
    /// start them. They stay owed (parked ones due again): only a
    /// delivery's answer confirms that a run has stopped.
    pub(super) fn for_registration(&mut self, worker: &WorkerId) -> Vec<RunningTask> {
        self.retry(worker);
        self.by_worker
            .get(worker)
            .map(|runs| runs.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Every stop owed, in any phase.
    pub(super) fn owed(&self) -> Vec<(WorkerId, RunningTask)> {
        self.by_worker
            .iter()
            .flat_map(|(w, runs)| runs.keys().map(move |r| (w.clone(), r.clone())))
            .collect()
    }

    /// Where `run`'s stop stands, with a receiver for its delivery if one
    /// is due or under way.
    pub(super) fn wait(&mut self, worker: &WorkerId, run: &RunningTask) -> Wait {
        match self.by_worker.get_mut(worker).and_then(|r| r.get_mut(run)) {
            None => Wait::Delivered,
            Some(Owed {
                phase: Phase::Parked(why),
                ..
            }) => Wait::Parked(why.clone()),
            Some(owed) => {
                let (tx, rx) = oneshot::channel();
                owed.waiters.push(tx);
                Wait::Pending(rx)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskId;

    fn w(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }

    fn run(t: &str) -> RunningTask {
        RunningTask {
            task: TaskId::new(t).unwrap(),
            attempt: 1,
        }
    }

    #[test]
    fn a_due_stop_is_taken_once() {
        let mut s = OwedStops::default();
        s.owe(w("a"), run("t"), Duration::ZERO, Timestamp::ZERO);
        assert_eq!(s.take_due().len(), 1);
        assert!(s.take_due().is_empty());
    }

    #[test]
    fn a_failed_delivery_is_parked_until_the_worker_is_heard_from() {
        let mut s = OwedStops::default();
        s.owe(w("a"), run("t"), Duration::ZERO, Timestamp::ZERO);
        let _ = s.take_due();
        s.settle(&w("a"), &run("t"), Err("down".into()));
        assert!(s.take_due().is_empty());
        assert!(matches!(s.wait(&w("a"), &run("t")), Wait::Parked(why) if why == "down"));
        assert!(s.retry(&w("a")));
        assert_eq!(s.take_due().len(), 1);
    }

    #[test]
    fn a_delivered_stop_is_no_longer_owed_and_its_waiter_hears() {
        let mut s = OwedStops::default();
        s.owe(w("a"), run("t"), Duration::ZERO, Timestamp::ZERO);
        let Wait::Pending(mut rx) = s.wait(&w("a"), &run("t")) else {
            panic!("a due stop is pending")
        };
        let _ = s.take_due();
        assert_eq!(s.settle(&w("a"), &run("t"), Ok(())), Some(Timestamp::ZERO));
        assert_eq!(rx.try_recv(), Ok(Ok(())));
        assert!(matches!(s.wait(&w("a"), &run("t")), Wait::Delivered));
        assert!(!s.retry(&w("a")));
    }

    #[test]
    fn a_registration_names_every_stop_and_keeps_it_owed() {
        let mut s = OwedStops::default();
        s.owe(w("a"), run("flying"), Duration::ZERO, Timestamp::ZERO);
        let _ = s.take_due();
        s.owe(w("a"), run("parked"), Duration::ZERO, Timestamp::ZERO);
        let _ = s.take_due();
        s.settle(&w("a"), &run("parked"), Err("down".into()));
        assert_eq!(
            s.for_registration(&w("a")),
            vec![run("flying"), run("parked")]
        );
        assert!(matches!(s.wait(&w("a"), &run("flying")), Wait::Pending(_)));
        assert_eq!(s.take_due(), vec![(w("a"), run("parked"), Duration::ZERO)]);
    }
}
