//! Worker liveness from heartbeat deadlines.
//!
//! A worker is active while `now − last_heartbeat ≤ timeout`, inactive
//! after that, and lost once `now − last_heartbeat > lost_after`. The
//! tracker keeps one pending deadline per worker in order, so a driver can
//! sleep until [`Liveness::next_deadline`] and call [`Liveness::expire`]
//! exactly then: detection happens at the deadline, not on a polling tick
//! up to 30 s late as in the original.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::model::{Timestamp, WorkerId};

/// Liveness timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Silence after which a worker is inactive and gets no new tasks.
    pub timeout: Duration,
    /// Silence after which a worker is lost and its tasks fail.
    pub lost_after: Duration,
}

impl Default for LivenessConfig {
    /// The original system's values: inactive after 30 s; lost after 2 min.
    fn default() -> Self {
        LivenessConfig {
            timeout: Duration::from_secs(30),
            lost_after: Duration::from_secs(120),
        }
    }
}

/// A worker's health at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// Heartbeats arrive within the timeout.
    Active,
    /// Silent past the timeout (or never heard from).
    Inactive,
    /// Silent past `lost_after`.
    Lost,
}

impl Health {
    /// Every health, best first.
    pub const ALL: [Health; 3] = [Health::Active, Health::Inactive, Health::Lost];

    /// Its lower-case name, as the CLI, the metrics and the events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Active => "active",
            Health::Inactive => "inactive",
            Health::Lost => "lost",
        }
    }
}

/// A health change found by [`Liveness::expire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessEvent {
    /// The worker passed its heartbeat timeout.
    Inactive(WorkerId),
    /// The worker passed `lost_after`.
    Lost(WorkerId),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    last: Option<Timestamp>,
    /// Health as of the last `expire`/`heartbeat`; the pending deadline
    /// moves it one step further.
    health: Health,
    deadline: Option<Timestamp>,
    /// Said it is leaving and has not sent a heartbeat since.
    left: bool,
}

/// Heartbeat deadlines for every tracked worker.
#[derive(Debug, Clone)]
pub struct Liveness {
    config: LivenessConfig,
    workers: HashMap<WorkerId, Entry>,
    deadlines: BTreeSet<(Timestamp, WorkerId)>,
}

impl Liveness {
    /// A tracker with the given timeouts.
    pub fn new(config: LivenessConfig) -> Self {
        Liveness {
            config,
            workers: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// The timeouts in force.
    pub fn config(&self) -> LivenessConfig {
        self.config
    }

    /// Starts tracking a worker that has not sent a heartbeat (for example a
    /// pre-registered one): inactive, with no deadline. No-op if tracked.
    pub fn track(&mut self, worker: WorkerId) {
        self.workers.entry(worker).or_insert(Entry {
            last: None,
            health: Health::Inactive,
            deadline: None,
            left: false,
        });
    }

    /// Records a heartbeat at `now`. Returns `true` when this made a
    /// not-active worker active again. An older timestamp than the latest
    /// seen is ignored.
    pub fn heartbeat(&mut self, worker: &WorkerId, now: Timestamp) -> bool {
        if !self.workers.contains_key(worker) {
            self.track(worker.clone());
        }
        let entry = self.workers.get_mut(worker).expect("tracked above");
        if entry.last.is_some_and(|last| last > now) {
            return false;
        }
        let revived = entry.health != Health::Active;
        if let Some(d) = entry.deadline.take() {
            self.deadlines.remove(&(d, worker.clone()));
        }
        entry.last = Some(now);
        entry.health = Health::Active;
        entry.left = false;
        let d = past(now, self.config.timeout);
        entry.deadline = Some(d);
        self.deadlines.insert((d, worker.clone()));
        revived
    }

    /// The worker said it is leaving: it turns inactive now (the deadline
    /// moves to `now`, so [`Liveness::expire`] reports it at once) and is
    /// still lost at its usual time if it is not heard from again. Returns
    /// whether it was active.
    pub fn leave(&mut self, worker: &WorkerId, now: Timestamp) -> bool {
        let Some(entry) = self.workers.get_mut(worker) else {
            return false;
        };
        if entry.health != Health::Active {
            return false;
        }
        if let Some(d) = entry.deadline.replace(now) {
            self.deadlines.remove(&(d, worker.clone()));
        }
        entry.left = true;
        self.deadlines.insert((now, worker.clone()));
        true
    }

    /// Stops tracking a worker.
    pub fn remove(&mut self, worker: &WorkerId) {
        if let Some(Entry {
            deadline: Some(d), ..
        }) = self.workers.remove(worker)
        {
            self.deadlines.remove(&(d, worker.clone()));
        }
    }

    /// The worker's health at `now`, computed from its last heartbeat (so it
    /// is right even between calls to [`Liveness::expire`]).
    pub fn health(&self, worker: &WorkerId, now: Timestamp) -> Option<Health> {
        let entry = self.workers.get(worker)?;
        Some(match entry.last {
            None => Health::Inactive,
            Some(last) if now.saturating_since(last) > self.config.lost_after => Health::Lost,
            Some(last) if now.saturating_since(last) > self.config.timeout => Health::Inactive,
            Some(_) if entry.left => Health::Inactive,
            Some(_) => Health::Active,
        })
    }

    /// The last heartbeat seen from the worker.
    pub fn last_heartbeat(&self, worker: &WorkerId) -> Option<Timestamp> {
        self.workers.get(worker)?.last
    }

    /// The earliest instant at which [`Liveness::expire`] has news.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Every health change due at or before `now`, in deadline order.
    #[must_use]
    pub fn expire(&mut self, now: Timestamp) -> Vec<LivenessEvent> {
        let mut events = Vec::new();
        while let Some((d, worker)) = self.deadlines.first().cloned() {
            if d > now {
                break;
            }
            self.deadlines.remove(&(d, worker.clone()));
            let entry = self
                .workers
                .get_mut(&worker)
                .expect("deadlines only for tracked workers");
            let last = entry.last.expect("deadlines only after a heartbeat");
            entry.deadline = None;
            match entry.health {
                Health::Active => {
                    entry.health = Health::Inactive;
                    let lost_at = past(last, self.config.lost_after);
                    entry.deadline = Some(lost_at);
                    self.deadlines.insert((lost_at, worker.clone()));
                    events.push(LivenessEvent::Inactive(worker));
                }
                Health::Inactive => {
                    entry.health = Health::Lost;
                    events.push(LivenessEvent::Lost(worker));
                }
                Health::Lost => {}
            }
        }
        events
    }
}

/// The first instant strictly more than `d` after `t`.
fn past(t: Timestamp, d: Duration) -> Timestamp {
    t.saturating_add(d).saturating_add(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaving_worker_is_inactive_at_once_and_lost_on_time() {
        let mut l = tracker();
        let _ = l.heartbeat(&w("a"), at(0));
        assert!(l.leave(&w("a"), at(10)));
        assert_eq!(l.health(&w("a"), at(10)), Some(Health::Inactive));
        assert_eq!(l.next_deadline(), Some(at(10)));
        assert_eq!(l.expire(at(10)), vec![LivenessEvent::Inactive(w("a"))]);
        let lost_at = past(at(0), l.config().lost_after);
        assert_eq!(l.next_deadline(), Some(lost_at));
        assert_eq!(l.expire(lost_at), vec![LivenessEvent::Lost(w("a"))]);
        // Coming back makes it active again.
        assert!(l.heartbeat(&w("a"), lost_at));
        assert_eq!(l.health(&w("a"), lost_at), Some(Health::Active));
        assert!(!l.leave(&w("b"), lost_at), "unknown workers are ignored");
    }

    fn w(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }
    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }
    fn tracker() -> Liveness {
        Liveness::new(LivenessConfig {
            timeout: Duration::from_millis(30_000),
            lost_after: Duration::from_millis(120_000),
        })
    }

    #[test]
    fn inactive_exactly_past_the_timeout() {
        let mut l = tracker();
        assert!(l.heartbeat(&w("a"), at(1_000)));
        assert_eq!(l.next_deadline(), Some(at(31_001)));
        assert!(l.expire(at(31_000)).is_empty());
        assert_eq!(l.health(&w("a"), at(31_000)), Some(Health::Active));
        assert_eq!(l.expire(at(31_001)), vec![LivenessEvent::Inactive(w("a"))]);
        assert_eq!(l.health(&w("a"), at(31_001)), Some(Health::Inactive));
        assert_eq!(l.next_deadline(), Some(at(121_001)));
        assert_eq!(l.expire(at(121_001)), vec![LivenessEvent::Lost(w("a"))]);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn a_late_expire_reports_both_steps_in_order() {
        let mut l = tracker();
        let _ = l.heartbeat(&w("a"), at(0));
        assert_eq!(
            l.expire(at(1_000_000)),
            vec![LivenessEvent::Inactive(w("a")), LivenessEvent::Lost(w("a"))]
        );
    }

    #[test]
    fn heartbeats_push_the_deadline_and_revive() {
        let mut l = tracker();
        let _ = l.heartbeat(&w("a"), at(0));
        assert!(!l.heartbeat(&w("a"), at(20_000)), "already active");
        assert!(l.expire(at(40_000)).is_empty());
        assert_eq!(l.expire(at(50_001)), vec![LivenessEvent::Inactive(w("a"))]);
        assert!(l.heartbeat(&w("a"), at(60_000)), "came back");
        assert!(!l.heartbeat(&w("a"), at(10)), "stale heartbeat ignored");
        assert_eq!(l.last_heartbeat(&w("a")), Some(at(60_000)));
    }

    #[test]
    fn pre_registered_workers_are_inactive_without_deadlines() {
        let mut l = tracker();
        l.track(w("later"));
        assert_eq!(l.health(&w("later"), at(0)), Some(Health::Inactive));
        assert_eq!(l.next_deadline(), None);
        l.remove(&w("later"));
        assert_eq!(l.health(&w("later"), at(0)), None);
    }
}
