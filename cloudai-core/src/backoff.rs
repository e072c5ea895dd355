//! Reconnection backoff with jitter (reconnection to inactive workers, with the backoff the original design
//! listed as a future improvement).
//!
//! Randomness is an input (`jitter` in `[0, 1)`), so the schedule is pure
//! and a simulation replays it from a seed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{Timestamp, WorkerId};

/// Exponential backoff: `initial · 2^attempt`, capped at `max`, with "equal
/// jitter" (half fixed, half random) so retries from many masters or for
/// many workers spread out without ever retrying immediately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 1 s doubling up to the original system's 30 s reconnection interval.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Delay after `failures` consecutive failures (`failures ≥ 1`), given a
    /// random `jitter` in `[0, 1)` (values outside are clamped).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        let base = self.initial.saturating_mul(1u32 << exp).min(self.max);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        base / 2 + base.mul_f64(jitter / 2.0)
    }
}

/// When to try each inactive worker next.
#[derive(Debug, Clone, Default)]
pub struct ReconnectSchedule {
    backoff: Backoff,
    /// Per worker: consecutive failures and next attempt time.
    entries: BTreeMap<WorkerId, (u32, Timestamp)>,
}

impl ReconnectSchedule {
    /// An empty schedule.
    pub fn new(backoff: Backoff) -> Self {
        ReconnectSchedule {
            backoff,
            entries: BTreeMap::new(),
        }
    }

    /// Starts retrying `worker`, first at `now`. No-op if already scheduled.
    pub fn add(&mut self, worker: WorkerId, now: Timestamp) {
        self.entries.entry(worker).or_insert((0, now));
    }

    /// Stops retrying `worker` (it came back, or was removed).
    pub fn remove(&mut self, worker: &WorkerId) {
        self.entries.remove(worker);
    }

    /// Workers whose next attempt is due at `now`.
    pub fn due(&self, now: Timestamp) -> Vec<WorkerId> {
        self.entries
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(w, _)| w.clone())
            .collect()
    }

    /// Records a failed attempt at `now`; returns when to try next.
    pub fn failed(&mut self, worker: &WorkerId, now: Timestamp, jitter: f64) -> Option<Timestamp> {
        let (failures, at) = self.entries.get_mut(worker)?;
        *failures = failures.saturating_add(1);
        *at = now.saturating_add(self.backoff.delay(*failures, jitter));
        Some(*at)
    }

    /// Makes every scheduled worker due at `now` (the `reconnect` command).
    pub fn all_due_now(&mut self, now: Timestamp) {
        for (_, at) in self.entries.values_mut() {
            *at = now;
        }
    }

    /// The earliest scheduled attempt.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.entries.values().map(|(_, at)| *at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_jitter_bounds() {
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(2));
        assert_eq!(
            b.delay(30, 0.999).max(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(b.delay(u32::MAX, f64::NAN), Duration::from_secs(15));
    }

    #[test]
    fn schedule_backs_off_per_worker_and_can_be_forced() {
        let w = WorkerId::new("w").unwrap();
        let mut s = ReconnectSchedule::new(Backoff::default());
        s.add(w.clone(), Timestamp::from_millis(0));
        assert_eq!(s.due(Timestamp::from_millis(0)), vec![w.clone()]);
        let next = s.failed(&w, Timestamp::from_millis(0), 0.0).unwrap();
        assert_eq!(next, Timestamp::from_millis(500));
        assert!(s.due(Timestamp::from_millis(499)).is_empty());
        s.all_due_now(Timestamp::from_millis(1));
        assert_eq!(s.due(Timestamp::from_millis(1)), vec![w.clone()]);
        s.remove(&w);
        assert_eq!(s.next_deadline(), None);
    }
}
