//! Cancellation and the delivery of owed stops.
//!
//! A cancel is optimistic: `cancelled` and the released resources are
//! recorded first; the stop it makes owed is then delivered by the driver
//! like every other stop. The cancel answers once the worker confirms, or
//! after a brief wait ([`super::MasterConfig::cancel_wait`]) with the stop
//! still owed; the `…_and_wait` variants wait for the delivery's outcome
//! (bounded by the cancel deadline). A stop that cannot be delivered stays
//! owed until its worker is heard from again.

use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::owed_stops::Wait;
use super::Master;
use crate::apply::Applied;
use crate::lifecycle::{Effect, Refusal, TaskEvent};
use crate::model::{RunningTask, TaskId, TaskStatus, WorkerId};
use crate::store::TaskFilter;
use crate::{Error, Result};

/// What a cancel achieved beyond recording `cancelled`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The task was still queued; nothing ran.
    Dequeued,
    /// The worker confirmed it stopped the task.
    Stopped {
        /// The worker.
        worker: WorkerId,
    },
    /// The worker has not confirmed: it could not be reached (the stop is
    /// delivered when it is heard from again, or when it re-registers), or
    /// it did not answer within the wait (the stop is still on its way).
    StopPending {
        /// The worker.
        worker: WorkerId,
        /// Why delivery failed.
        error: String,
    },
}

impl Master {
    /// Cancels a task: `cancelled` is recorded and resources are released
    /// first; then the worker is told to stop it. Answers once the worker
    /// confirms, or after the brief cancel wait with the stop owed: an
    /// unreachable worker never holds the caller up, and gets the stop when
    /// it is heard from again.
    pub async fn cancel(&self, id: &TaskId, force: bool) -> Result<CancelOutcome> {
        self.cancel_one(id, force, Some(self.inner.config.cancel_wait))
            .await
    }

    /// [`Master::cancel`], waiting for the worker's confirmation (or the
    /// failure of its delivery, at the cancel deadline).
    pub async fn cancel_and_wait(&self, id: &TaskId, force: bool) -> Result<CancelOutcome> {
        self.cancel_one(id, force, None).await
    }

    /// Cancels every pending or running task passing `filter` (bulk cancel:
    /// all tasks on a worker, all tasks in a status). All cancels are
    /// recorded first; their stops go out in parallel, each answered as by
    /// [`Master::cancel`].
    pub async fn cancel_all(
        &self,
        filter: &TaskFilter,
        force: bool,
    ) -> Result<Vec<(TaskId, CancelOutcome)>> {
        self.cancel_many(filter, force, Some(self.inner.config.cancel_wait))
            .await
    }

    /// [`Master::cancel_all`], waiting for every worker's confirmation.
    pub async fn cancel_all_and_wait(
        &self,
        filter: &TaskFilter,
        force: bool,
    ) -> Result<Vec<(TaskId, CancelOutcome)>> {
        self.cancel_many(filter, force, None).await
    }

    /// One cancel; `wait` bounds the wait for the stop (`None`: until its
    /// delivery ends).
    async fn cancel_one(
        &self,
        id: &TaskId,
        force: bool,
        wait: Option<Duration>,
    ) -> Result<CancelOutcome> {
        match self.record_cancel(id, force).await? {
            None => Ok(CancelOutcome::Dequeued),
            Some((worker, run)) => Ok(self.stop_outcome(worker, &run, wait).await),
        }
    }

    async fn cancel_many(
        &self,
        filter: &TaskFilter,
        force: bool,
        wait: Option<Duration>,
    ) -> Result<Vec<(TaskId, CancelOutcome)>> {
        let live = [TaskStatus::Pending, TaskStatus::Running];
        let statuses: Vec<TaskStatus> = if filter.statuses.is_empty() {
            live.to_vec()
        } else {
            filter
                .statuses
                .iter()
                .copied()
                .filter(|s| live.contains(s))
                .collect()
        };
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let tasks = self
            .inner
            .store
            .list_tasks(&TaskFilter {
                statuses,
                ..filter.clone()
            })
            .await?;
        let mut done = Vec::new();
        let mut stops = JoinSet::new();
        for t in tasks {
            match self.record_cancel(&t.id, force).await {
                Ok(None) => done.push((t.id, CancelOutcome::Dequeued)),
                Ok(Some((worker, run))) => {
                    let m = self.clone();
                    stops.spawn(async move { (t.id, m.stop_outcome(worker, &run, wait).await) });
                }
                // Finished meanwhile: nothing to cancel.
                Err(Error::Conflict(_)) | Err(Error::NotFound { .. }) => {}
                // Stops already owed are delivered whatever happens here.
                Err(e) => return Err(e),
            }
        }
        while let Some(joined) = stops.join_next().await {
            if let Ok(pair) = joined {
                done.push(pair);
            }
        }
        Ok(done)
    }

    /// Records the cancel; returns the stop it made owed, if the task ran.
    async fn record_cancel(
        &self,
        id: &TaskId,
        force: bool,
    ) -> Result<Option<(WorkerId, RunningTask)>> {
        match self.apply(id, TaskEvent::Cancel { force }).await? {
            Applied::Refused {
                refusal: Refusal::UnknownTask,
                ..
            } => Err(self.missing_task(id)),
            Applied::Refused {
                refusal: Refusal::AlreadyFinal(s),
                ..
            } => Err(Error::Conflict(format!(
                "task {id} already {s}; nothing to cancel"
            ))),
            Applied::Refused { refusal, .. } => Err(Error::Conflict(format!(
                "cannot cancel task {id}: {refusal}"
            ))),
            Applied::Changed { transition, .. } => {
                info!(task = %id, from = %transition.from, force, "task cancelled");
                Ok(transition.effects.iter().find_map(|e| match e {
                    Effect::StopOnWorker {
                        worker, attempt, ..
                    } => Some((
                        worker.clone(),
                        RunningTask {
                            task: id.clone(),
                            attempt: *attempt,
                        },
                    )),
                    _ => None,
                }))
            }
        }
    }

    /// Waits, at most `limit` (`None`: until it ends), for the first
    /// delivery of an owed stop.
    async fn stop_outcome(
        &self,
        worker: WorkerId,
        run: &RunningTask,
        limit: Option<Duration>,
    ) -> CancelOutcome {
        let wait = self.state().wait_for_stop(&worker, run);
        let delivery = match wait {
            Wait::Delivered => Ok(()),
            Wait::Parked(why) => Err(why),
            Wait::Pending(rx) => {
                let delivered = async {
                    match self.until_shutdown(rx).await {
                        Some(Ok(delivery)) => delivery,
                        _ => Err("the master is shutting down".into()),
                    }
                };
                match limit {
                    None => delivered.await,
                    Some(limit) => {
                        tokio::time::timeout(limit, delivered)
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!(
                                    "not confirmed within {limit:?}; the stop is on its way"
                                ))
                            })
                    }
                }
            }
        };
        match delivery {
            Ok(()) => CancelOutcome::Stopped { worker },
            Err(error) => CancelOutcome::StopPending { worker, error },
        }
    }

    /// No end of a run with a time limit was heard by its limit, grace and
    /// a heartbeat timeout (run by the driver): the master stops it and
    /// records the timeout itself, fenced by its attempt.
    pub(super) async fn time_out(&self, task: TaskId, worker: WorkerId, attempt: u32) {
        warn!(task = %task, worker = %worker, attempt, "no end heard by the time limit; stopping the run");
        let event = TaskEvent::TimedOut { worker, attempt };
        let _: Option<Applied> = self.surely(|| self.apply(&task, event.clone())).await;
    }

    /// Delivers one owed stop within the cancel deadline (run by the
    /// driver on a task of its own); a failed delivery stays owed.
    pub(super) async fn deliver_stop(&self, worker: WorkerId, run: RunningTask, grace: Duration) {
        let outcome = match self.endpoint(&worker) {
            None => Err("worker has no address".to_string()),
            Some(to) => {
                let call = self.inner.transport.cancel(&to, &run, grace);
                match tokio::time::timeout(self.inner.config.cancel_timeout, call).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "no answer within {:?}",
                        self.inner.config.cancel_timeout
                    )),
                }
            }
        };
        if let Err(error) = &outcome {
            warn!(task = %run.task, worker = %worker, %error, "stop not delivered; will retry when the worker is heard from");
        }
        let confirmed = outcome.is_ok();
        let owed_since = self.state().settle_stop(&worker, &run, outcome);
        if let Some(since) = owed_since {
            self.inner
                .metrics
                .stopped(self.now().saturating_since(since));
        }
        if confirmed {
            // The run is over: its resources go back, and a task waiting
            // for it to end may be placed again.
            self.run_ended(&run.task, &worker, run.attempt);
            let ended = TaskEvent::StopConfirmed {
                worker: worker.clone(),
                attempt: run.attempt,
            };
            let _: Option<Applied> = self.surely(|| self.apply(&run.task, ended.clone())).await;
        }
    }
}
