//! The timing rule behind "at most one attempt runs at a time": a worker
//! cut off from its master stops its runs before the master can declare
//! it lost and place their tasks elsewhere.
//!
//! The master declares a worker lost `lost_after` past the last heartbeat
//! it received. That heartbeat was sent no earlier than the last one the
//! worker saw answered, so a worker that starts stopping its runs
//! [`fence_after`] past the *sending* of its last answered heartbeat, and
//! gives each at most its grace, has them stopped before the master may
//! act, with a [`margin`] to spare for a SIGKILL to land and for two
//! clocks that run at slightly different rates. The same deadline is the
//! lease a worker hands whatever keeps its runs going without it (a
//! run's supervisor, a watchdog), so a worker that dies is covered too.
//!
//! A host whose clock stops while it is suspended is outside the rule: it
//! resumes with its runs going and its deadline not yet passed.

use std::time::Duration;

/// How long a worker keeps its runs without an answer from a master that
/// named no loss threshold (one that predates the rule): that master's
/// default `lost_after`, at which it fails the runs anyway.
pub const UNNAMED_LOSS: Duration = Duration::from_secs(120);

/// What is left after the longest grace for a SIGKILL to land and for
/// clock drift: half a second and 5% of `lost_after`.
pub fn margin(lost_after: Duration) -> Duration {
    Duration::from_millis(500) + lost_after / 20
}

/// Timings under which a worker cannot fence itself in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a worker with --max-grace {max_grace:?} cannot stop its runs before the master declares it lost: \
     the master's --lost-after ({lost_after:?}) must exceed the grace, a margin of {margin:?} and two \
     heartbeat intervals (the master's --heartbeat-interval, {heartbeat_interval:?}); lower --max-grace \
     or raise the master's --lost-after"
)]
pub struct NoFenceMargin {
    /// The master's loss threshold.
    pub lost_after: Duration,
    /// The master's heartbeat interval.
    pub heartbeat_interval: Duration,
    /// The worker's longest grace.
    pub max_grace: Duration,
    /// The margin the rule keeps.
    pub margin: Duration,
}

/// How long past the sending of its last answered heartbeat a worker
/// starts stopping its runs, given the master's `lost_after` and
/// `heartbeat_interval` and its own `max_grace`; an error when that leaves
/// less than two heartbeat intervals (a worker would stop its runs over a
/// beat or two that were merely slow).
pub fn fence_after(
    lost_after: Duration,
    heartbeat_interval: Duration,
    max_grace: Duration,
) -> Result<Duration, NoFenceMargin> {
    let margin = margin(lost_after);
    lost_after
        .checked_sub(max_grace + margin)
        .filter(|f| *f >= heartbeat_interval * 2)
        .ok_or(NoFenceMargin {
            lost_after,
            heartbeat_interval,
            max_grace,
            margin,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_defaults_leave_room() {
        let f = fence_after(
            Duration::from_secs(120),
            Duration::from_secs(5),
            Duration::from_secs(30),
        );
        assert_eq!(f, Ok(Duration::from_millis(83_500)));
    }

    #[test]
    fn a_grace_too_long_for_the_loss_threshold_is_refused_naming_the_flags() {
        let e = fence_after(
            Duration::from_secs(8),
            Duration::from_secs(1),
            Duration::from_secs(30),
        )
        .unwrap_err();
        let text = e.to_string();
        for flag in ["--max-grace", "--lost-after", "--heartbeat-interval"] {
            assert!(text.contains(flag), "{text}");
        }
    }

    proptest! {
        /// Whenever the rule admits timings, a worker that starts
        /// stopping at the fence and takes its whole grace is done a
        /// margin before the master may declare it lost.
        #[test]
        fn stopping_ends_before_the_loss(lost in 1u64..600_000, beat in 1u64..60_000, grace in 0u64..600_000) {
            let (lost, beat, grace) = (
                Duration::from_millis(lost),
                Duration::from_millis(beat),
                Duration::from_millis(grace),
            );
            if let Ok(f) = fence_after(lost, beat, grace) {
                prop_assert!(f + grace + margin(lost) <= lost);
                prop_assert!(f >= beat * 2);
            }
        }
    }
}
