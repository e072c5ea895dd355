//! The retry decision: whether a task whose attempt ended runs again, and
//! after how long, or ends for good, and how.
//!
//! One pure function, [`next`], decides it from the task's policy, the
//! attempts its history already counts and how this one ended: one
//! exhaustive `match` over [`EndKind`], in the manner of Kubernetes'
//! `podFailurePolicy` and Nomad's reschedule tracker, never spread over
//! the places where tasks end. The budgets:
//!
//! - a task-caused failure (non-zero exit, signal, OOM kill, start
//!   failure) is retried while the failures number at most `retries`,
//!   after `retry_delay` doubling per retry (at most 5 min, jittered);
//! - a timeout is final, unless `retry_on_timeout` (then it counts as a
//!   task-caused failure);
//! - a worker loss requeues at once, up to `crash_limit` losses (0: no
//!   limit), unless `requeue` is off;
//! - an end an operator caused (a drain, a shutdown) requeues at once at
//!   no cost, unless `requeue` is off;
//! - a user's cancel, a success and a refusal are final;
//! - no task gets more than [`MAX_ATTEMPTS`] attempts in all.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::model::{AttemptCounts, AttemptPolicy, EndCause, EndKind, TaskStatus, MAX_ATTEMPTS};

/// What [`next`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Next {
    /// Run the task again, no sooner than `delay` from now.
    Again {
        /// How long to wait first.
        delay: Duration,
        /// Why it waits (its pending reason until placed).
        reason: String,
    },
    /// No more attempts: the task ends in `status`.
    Final {
        /// The outcome.
        status: TaskStatus,
        /// Why.
        reason: Option<String>,
    },
}

/// Decides what follows an attempt that ended with `cause`, described by
/// `what` ("exited with code 1", "worker w1 was lost"), for a task with
/// `policy` whose earlier attempts count `before`. `jitter` in `[0, 1)`
/// spreads retry delays.
pub fn next(
    policy: &AttemptPolicy,
    before: AttemptCounts,
    cause: EndCause,
    what: Option<&str>,
    jitter: f64,
) -> Next {
    let mut after = before;
    after.add(cause);
    let what = what.unwrap_or(cause.as_str());
    let fail = |reason: String| Next::Final {
        status: TaskStatus::Failed,
        reason: Some(reason),
    };
    let again = |delay: Duration, reason: String| {
        if after.total >= MAX_ATTEMPTS {
            fail(format!(
                "{what}; no attempt after the {MAX_ATTEMPTS}th, the most any task gets"
            ))
        } else {
            Next::Again { delay, reason }
        }
    };
    match cause.kind() {
        EndKind::Success => Next::Final {
            status: TaskStatus::Completed,
            reason: None,
        },
        EndKind::User => Next::Final {
            status: TaskStatus::Cancelled,
            reason: Some(what.to_string()),
        },
        EndKind::Refusal => fail(what.to_string()),
        EndKind::Timeout if !policy.retry_on_timeout => fail(what.to_string()),
        EndKind::Task | EndKind::Timeout => {
            if after.failures > policy.retries {
                return fail(match policy.retries {
                    0 => what.to_string(),
                    r => format!("{what} (attempt {}; its {r} retries are used)", after.total),
                });
            }
            let delay = Backoff {
                initial: policy.retry_delay,
                max: AttemptPolicy::MAX_RETRY_DELAY,
            }
            .delay(after.failures, jitter);
            again(
                delay,
                format!(
                    "retrying: attempt {} {what}; retry {} of {} after {}",
                    after.total,
                    after.failures,
                    policy.retries,
                    humantime::format_duration(round_ms(delay)),
                ),
            )
        }
        EndKind::Loss if !policy.requeue => fail(what.to_string()),
        EndKind::Loss => {
            let limit = policy.crash_limit;
            if limit > 0 && after.losses > limit {
                return fail(format!(
                    "{what}; lost {} times, past its crash limit of {limit}",
                    after.losses
                ));
            }
            let of = if limit > 0 {
                format!(" of {limit}")
            } else {
                String::new()
            };
            again(
                Duration::ZERO,
                format!("requeued: {what} (loss {}{of})", after.losses),
            )
        }
        EndKind::Operator if !policy.requeue => fail(what.to_string()),
        EndKind::Operator => again(Duration::ZERO, format!("requeued: {what}")),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(retries: u32, crash_limit: u32) -> AttemptPolicy {
        AttemptPolicy {
            retries,
            crash_limit,
            ..AttemptPolicy::default()
        }
    }

    #[test]
    fn a_failure_is_retried_while_retries_last_with_a_growing_delay() {
        let p = policy(2, 5);
        let mut counts = AttemptCounts::default();
        let mut delays = Vec::new();
        for _ in 0..2 {
            match next(
                &p,
                counts,
                EndCause::Exited,
                Some("exited with code 1"),
                0.0,
            ) {
                Next::Again { delay, reason } => {
                    assert!(reason.starts_with("retrying: "), "{reason}");
                    delays.push(delay);
                }
                other => panic!("{other:?}"),
            }
            counts.add(EndCause::Exited);
        }
        assert_eq!(delays, [Duration::from_secs(5), Duration::from_secs(10)]);
        assert!(matches!(
            next(&p, counts, EndCause::Exited, None, 0.0),
            Next::Final { status: TaskStatus::Failed, reason: Some(r) } if r.contains("2 retries are used")
        ));
    }

    #[test]
    fn losses_requeue_up_to_the_crash_limit_unless_requeue_is_off() {
        let p = policy(0, 1);
        let first = next(
            &p,
            AttemptCounts::default(),
            EndCause::WorkerLost,
            None,
            0.5,
        );
        assert!(matches!(first, Next::Again { delay, .. } if delay.is_zero()));
        let mut once = AttemptCounts::default();
        once.add(EndCause::WorkerLost);
        assert!(matches!(
            next(&p, once, EndCause::CutOff, None, 0.5),
            Next::Final { status: TaskStatus::Failed, reason: Some(r) } if r.contains("crash limit of 1")
        ));
        let off = AttemptPolicy {
            requeue: false,
            ..p
        };
        assert!(matches!(
            next(&off, AttemptCounts::default(), EndCause::Drained, None, 0.5),
            Next::Final {
                status: TaskStatus::Failed,
                ..
            }
        ));
    }

    #[test]
    fn a_timeout_is_final_unless_the_task_says_otherwise() {
        let p = policy(3, 5);
        assert!(matches!(
            next(&p, AttemptCounts::default(), EndCause::TimedOut, None, 0.0),
            Next::Final {
                status: TaskStatus::Failed,
                ..
            }
        ));
        let retry = AttemptPolicy {
            retry_on_timeout: true,
            ..p
        };
        assert!(matches!(
            next(
                &retry,
                AttemptCounts::default(),
                EndCause::TimedOut,
                None,
                0.0
            ),
            Next::Again { .. }
        ));
    }

    #[test]
    fn success_cancel_and_refusal_are_final() {
        let p = policy(5, 0);
        let c = AttemptCounts::default();
        for (cause, status) in [
            (EndCause::Completed, TaskStatus::Completed),
            (EndCause::Cancelled, TaskStatus::Cancelled),
            (EndCause::Refused, TaskStatus::Failed),
        ] {
            assert!(
                matches!(next(&p, c, cause, None, 0.0), Next::Final { status: s, .. } if s == status),
                "{cause}"
            );
        }
    }

    fn cause() -> impl Strategy<Value = EndCause> {
        proptest::sample::select(EndCause::ALL.to_vec())
    }

    proptest! {
        /// Run a task through any sequence of ends under any policy: the
        /// budgets hold, and "again" never follows a final decision.
        #[test]
        fn the_budgets_hold(
            retries in 0u32..MAX_ATTEMPTS,
            crash_limit in 0u32..8,
            requeue: bool,
            retry_on_timeout: bool,
            ends in proptest::collection::vec(cause(), 1..60),
            jitter in 0.0f64..1.0,
        ) {
            let p = AttemptPolicy { retries, crash_limit, requeue, retry_on_timeout, ..AttemptPolicy::default() };
            let mut counts = AttemptCounts::default();
            for cause in ends {
                let decision = next(&p, counts, cause, None, jitter);
                counts.add(cause);
                prop_assert!(counts.total <= MAX_ATTEMPTS);
                match decision {
                    Next::Again { delay, .. } => {
                        prop_assert!(counts.failures <= retries);
                        prop_assert!(crash_limit == 0 || counts.losses <= crash_limit);
                        prop_assert!(delay <= AttemptPolicy::MAX_RETRY_DELAY);
                        prop_assert!(counts.total < MAX_ATTEMPTS);
                        let k = cause.kind();
                        prop_assert!(!matches!(k, EndKind::Success | EndKind::User | EndKind::Refusal));
                        prop_assert!(requeue || !matches!(k, EndKind::Loss | EndKind::Operator));
                        prop_assert!(retry_on_timeout || k != EndKind::Timeout);
                    }
                    Next::Final { .. } => break,
                }
            }
        }
    }
}
