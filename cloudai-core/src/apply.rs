//! Store-level application of lifecycle events: one compare-and-set per
//! event, with [`crate::lifecycle::decide`] explaining the outcome. This is
//! what the master runs; the conformance suites race it against itself.

use crate::lifecycle::{decide, Decision, Refusal, StatusChange, TaskEvent, Transition};
use crate::model::{
    Attempt, EndCause, TaskId, TaskRecord, TaskResult, TaskStatus, Timestamp, ValidationError,
};
use crate::results::{self, ResultDecision, ResultIgnored};
use crate::store::{CasOutcome, InsertOutcome, TaskStore};
use crate::{Error, Result};

/// What [`apply_event`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Applied {
    /// The change is stored.
    Changed {
        /// The task after the change.
        task: TaskRecord,
        /// The transition, with the effects the caller must now carry out.
        transition: Transition,
    },
    /// Nothing changed.
    Refused {
        /// The task as it is, if it exists.
        task: Option<TaskRecord>,
        /// Why.
        refusal: Refusal,
    },
}

/// How many times [`apply_event`] decides again after its write was
/// rejected by a record that changed meanwhile (a task changes only a
/// handful of times in its life, so this bounds a pathological race).
const DECIDE_AGAIN: usize = 16;

/// Applies `event` to task `id` with one compare-and-set per decision:
/// decided on the record as read (or, for an assignment or a success, on
/// the record it must be, without reading it first), written conditional
/// on that record, and decided again if the store holds another.
pub async fn apply_event(
    store: &dyn TaskStore,
    id: &TaskId,
    event: &TaskEvent,
    now: Timestamp,
) -> Result<Applied> {
    let mut change = event.blind_change(now);
    if change.is_none() {
        match decided(store, id, event, now, None).await? {
            Ok(c) => change = Some(c),
            Err(refused) => return Ok(refused),
        }
    }
    for _ in 0..DECIDE_AGAIN {
        let Some(c) = change.take() else { break };
        let outcome = match store.update_status(id, &c).await {
            Ok(outcome) => outcome,
            Err(Error::NotFound { .. }) => {
                return Ok(Applied::Refused {
                    task: None,
                    refusal: Refusal::UnknownTask,
                });
            }
            Err(e) => return Err(e),
        };
        match outcome {
            CasOutcome::Applied { before } => {
                return match decide(Some(&before), event, now) {
                    Decision::Apply(transition) if transition.change.to == c.to => {
                        let mut task = before;
                        c.apply_to(&mut task);
                        Ok(Applied::Changed { task, transition })
                    }
                    Decision::Apply(_) => Err(broken_store(
                        store,
                        id,
                        "the record written on differs from the one decided on",
                    )),
                    Decision::Refuse(r) => Err(broken_store(store, id, &r.to_string())),
                };
            }
            CasOutcome::Rejected { current } => {
                if c.admits(&current) {
                    return Err(broken_store(
                        store,
                        id,
                        "guard held but the change was rejected",
                    ));
                }
                match decided(store, id, event, now, Some(current)).await? {
                    Ok(next) => change = Some(next),
                    Err(refused) => return Ok(refused),
                }
            }
        }
    }
    Err(Error::Unavailable(format!(
        "task {id} kept changing while an event was applied; try again"
    )))
}

/// The change `event` makes to the task as `known` (or as read now, if
/// `None`), or the refusal.
async fn decided(
    store: &dyn TaskStore,
    id: &TaskId,
    event: &TaskEvent,
    now: Timestamp,
    known: Option<TaskRecord>,
) -> Result<std::result::Result<StatusChange, Applied>> {
    let task = match known {
        Some(t) => Some(t),
        None => store.get_task(id).await?,
    };
    Ok(match decide(task.as_ref(), event, now) {
        Decision::Apply(t) => Ok(t.change),
        Decision::Refuse(refusal) => Err(Applied::Refused { task, refusal }),
    })
}

fn broken_store(store: &dyn TaskStore, id: &TaskId, what: &str) -> Error {
    Error::Backend {
        backend: "task store",
        source: format!("{store:?} broke compare-and-set on task {id}: {what}").into(),
    }
}

/// What [`record_report`] did.
#[derive(Debug)]
#[must_use]
pub struct ReportOutcome {
    /// The status change (or why there was none). A change is stored even
    /// when the result write below failed, so the caller carries out its
    /// effects either way.
    pub status: Applied,
    /// `Ok(Ok(()))` if this report's result is now the task's result,
    /// `Ok(Err(why))` if it was not stored, `Err` if the store failed (the
    /// reporter retries; the retry's status event is then refused and only
    /// the result write runs again).
    pub result: Result<std::result::Result<(), ResultIgnored>>,
}

/// Records a worker's report: the status transition (a cancel that came
/// first wins), then the result, insert-if-absent (the first result wins).
/// This is the master's report path; the conformance suites race it.
/// `Err` only when the transition itself could not be written.
pub async fn record_report(
    store: &dyn TaskStore,
    result: TaskResult,
    now: Timestamp,
) -> Result<ReportOutcome> {
    let status = apply_event(store, &result.task_id, &report_event(&result)?, now).await?;
    let result = store_result(store, &status, result).await;
    Ok(ReportOutcome { status, result })
}

/// The lifecycle event a worker's report stands for.
fn report_event(result: &TaskResult) -> Result<TaskEvent> {
    if !result.status.is_terminal() {
        return Err(ValidationError::Invalid {
            field: "report status",
            reason: format!(
                "a report must say completed, failed or cancelled, not {}",
                result.status
            ),
        }
        .into());
    }
    let success = result.cause == EndCause::Completed;
    if success != (result.status == TaskStatus::Completed) {
        return Err(ValidationError::Invalid {
            field: "report cause",
            reason: format!(
                "a run that ended {} cannot be {}",
                result.cause, result.status
            ),
        }
        .into());
    }
    Ok(TaskEvent::Report(Box::new(Attempt::reported(result))))
}

/// Stores a report's result after its status event was applied (`status`),
/// insert-if-absent.
async fn store_result(
    store: &dyn TaskStore,
    status: &Applied,
    result: TaskResult,
) -> Result<std::result::Result<(), ResultIgnored>> {
    let task = match status {
        Applied::Changed { task, .. }
        | Applied::Refused {
            task: Some(task), ..
        } => task,
        Applied::Refused { task: None, .. } => return Ok(Err(ResultIgnored::UnknownTask)),
    };
    Ok(match results::decide(Some(task), None, result) {
        ResultDecision::Ignore(why) => Err(why),
        ResultDecision::Store(r) => match store.insert_result(r).await? {
            InsertOutcome::Inserted => Ok(()),
            InsertOutcome::AlreadyPresent => Err(ResultIgnored::Duplicate),
        },
    })
}
