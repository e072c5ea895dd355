//! Result dedup: at most one result per task, and the first one wins.
//!
//! The pure [`decide`] says whether a report's result may be stored and in
//! what form; the store's insert-if-absent makes "first wins" hold when two
//! reports race (see [`crate::store::TaskStore::insert_result`]).

use std::fmt;

use crate::model::{TaskRecord, TaskResult, TaskStatus, WorkerId};

/// Why a reported result is not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultIgnored {
    /// No such task.
    UnknownTask,
    /// The task has not ended, so there is no outcome to attach it to.
    NotFinal(TaskStatus),
    /// The reporter is not the worker the task was assigned to.
    OtherWorker {
        /// The assigned worker.
        assigned: Option<WorkerId>,
        /// The reporter.
        reporter: WorkerId,
    },
    /// The result is from an earlier assignment of the task.
    StaleAttempt {
        /// The task's current attempt.
        current: u32,
        /// The result's attempt.
        reported: u32,
    },
    /// A result is stored already; the first one wins.
    Duplicate,
}

impl fmt::Display for ResultIgnored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResultIgnored::UnknownTask => f.write_str("unknown task"),
            ResultIgnored::NotFinal(s) => write!(f, "task is still {s}"),
            ResultIgnored::OtherWorker { reporter, .. } => {
                write!(f, "task was not assigned to {reporter}")
            }
            ResultIgnored::StaleAttempt { current, reported } => {
                write!(
                    f,
                    "result is from attempt {reported}, the task is on attempt {current}"
                )
            }
            ResultIgnored::Duplicate => f.write_str("a result is already stored"),
        }
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ResultDecision {
    /// Store this result (its status set to the task's recorded outcome).
    Store(TaskResult),
    /// Do not store, and why.
    Ignore(ResultIgnored),
}

/// Decides whether `incoming` may be stored for `task` (as it is after the
/// report's own transition), given the result already stored, if any.
///
/// The stored status is the task's, not the report's: when a cancel beat the
/// report, the result keeps the worker's logs and exit code but says
/// `cancelled`, so the task has exactly one recorded outcome.
pub fn decide(
    task: Option<&TaskRecord>,
    existing: Option<&TaskResult>,
    incoming: TaskResult,
) -> ResultDecision {
    let Some(task) = task else {
        return ResultDecision::Ignore(ResultIgnored::UnknownTask);
    };
    if !task.status.is_terminal() {
        return ResultDecision::Ignore(ResultIgnored::NotFinal(task.status));
    }
    if task.worker.as_ref() != Some(&incoming.worker_id) {
        return ResultDecision::Ignore(ResultIgnored::OtherWorker {
            assigned: task.worker.clone(),
            reporter: incoming.worker_id,
        });
    }
    if incoming.attempt != task.attempt {
        return ResultDecision::Ignore(ResultIgnored::StaleAttempt {
            current: task.attempt,
            reported: incoming.attempt,
        });
    }
    if existing.is_some() {
        return ResultDecision::Ignore(ResultIgnored::Duplicate);
    }
    // When the recorded outcome is not what the worker saw (a cancel or a
    // worker loss came first), the message explains the recorded outcome.
    let message = if incoming.status == task.status {
        incoming.message
    } else {
        task.reason.clone().or(incoming.message)
    };
    ResultDecision::Store(TaskResult {
        status: task.status,
        message,
        ..incoming
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EndCause, Resources, TaskId, TaskSpec, Timestamp};

    fn task(status: TaskStatus) -> TaskRecord {
        let spec = TaskSpec::new("img", vec![], Resources::ZERO);
        let mut t = TaskRecord::new(TaskId::new("t").unwrap(), spec, Timestamp::ZERO);
        t.status = status;
        t.reason = Some(format!("{status} by user"));
        t.worker = Some(WorkerId::new("a").unwrap());
        t.attempt = 1;
        t
    }

    fn result(worker: &str, status: TaskStatus, logs: &str) -> TaskResult {
        TaskResult {
            task_id: TaskId::new("t").unwrap(),
            worker_id: WorkerId::new(worker).unwrap(),
            attempt: 1,
            status,
            exit_code: Some(0),
            logs: logs.into(),
            logs_offset: 0,
            signal: None,
            message: None,
            cause: EndCause::inferred(status, Some(0), None),
            started_at: None,
            finished_at: Timestamp::ZERO,
            usage: None,
        }
    }

    #[test]
    fn a_cancelled_task_keeps_cancelled_with_the_workers_logs() {
        let ResultDecision::Store(r) = decide(
            Some(&task(TaskStatus::Cancelled)),
            None,
            result("a", TaskStatus::Completed, "real logs"),
        ) else {
            panic!()
        };
        assert_eq!(
            (r.status, r.logs.as_str()),
            (TaskStatus::Cancelled, "real logs")
        );
        assert_eq!(
            r.message.as_deref(),
            Some("cancelled by user"),
            "the message explains the recorded outcome"
        );
    }

    #[test]
    fn the_first_result_wins() {
        let first = result("a", TaskStatus::Completed, "first");
        assert_eq!(
            decide(
                Some(&task(TaskStatus::Completed)),
                Some(&first),
                result("a", TaskStatus::Cancelled, "second")
            ),
            ResultDecision::Ignore(ResultIgnored::Duplicate)
        );
    }

    #[test]
    fn results_of_an_earlier_attempt_are_ignored() {
        let mut t = task(TaskStatus::Completed);
        t.attempt = 2;
        assert_eq!(
            decide(
                Some(&t),
                None,
                result("a", TaskStatus::Completed, "old run")
            ),
            ResultDecision::Ignore(ResultIgnored::StaleAttempt {
                current: 2,
                reported: 1
            })
        );
    }

    #[test]
    fn unknown_running_and_foreign_reports_are_ignored() {
        let r = || result("a", TaskStatus::Completed, "");
        assert_eq!(
            decide(None, None, r()),
            ResultDecision::Ignore(ResultIgnored::UnknownTask)
        );
        assert_eq!(
            decide(Some(&task(TaskStatus::Running)), None, r()),
            ResultDecision::Ignore(ResultIgnored::NotFinal(TaskStatus::Running))
        );
        assert!(matches!(
            decide(
                Some(&task(TaskStatus::Failed)),
                None,
                result("b", TaskStatus::Failed, "")
            ),
            ResultDecision::Ignore(ResultIgnored::OtherWorker { .. })
        ));
    }
}
