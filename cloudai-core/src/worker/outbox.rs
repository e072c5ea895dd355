//! The outbox: every result stays here until the master acknowledges it,
//! so a report survives an outage of the master or of the network.
//!
//! A report being sent is marked so: a flush sends only the ones nobody is
//! sending, so a burst of task ends is not sent twice over, and the
//! heartbeat loop flushes on a task of its own, so its beats never wait
//! behind reports (a late beat fences the worker off).

use std::collections::BTreeMap;

use tracing::{debug, warn};

use super::Worker;
use crate::model::{RunningTask, TaskResult};
use crate::sync::lock;
use crate::Error;

/// A result not yet acknowledged, and whether a send of it is under way.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    result: TaskResult,
    sending: bool,
}

/// Results not yet acknowledged by the master, by run.
pub(super) type Outbox = BTreeMap<RunningTask, Outgoing>;

impl Worker {
    /// Puts a result in the outbox and tries to send it now; the heartbeat
    /// loop retries whatever is left.
    pub(super) async fn deliver(&self, run: RunningTask, result: TaskResult) {
        let outgoing = Outgoing {
            result: result.clone(),
            sending: true,
        };
        lock(&self.inner.outbox).insert(run.clone(), outgoing);
        self.send_report(run, result).await;
    }

    /// One attempt to report; `true` once the master has the result. The
    /// report is left unmarked (for the next flush) if the attempt failed.
    pub(super) async fn send_report(&self, run: RunningTask, result: TaskResult) -> bool {
        let call = self.inner.master.report(&result);
        let answer = tokio::time::timeout(self.inner.config.rpc_timeout, call).await;
        let done = match answer {
            Ok(Ok(())) => true,
            // Only a definite refusal drops the report; a master-side
            // failure (its store, say) is retried like an outage.
            Ok(Err(e @ (Error::InvalidInput(_) | Error::NotFound { .. } | Error::Conflict(_)))) => {
                warn!(task = %run.task, error = %e, "master refused the report; dropping it");
                true
            }
            Ok(Err(e)) => {
                debug!(task = %run.task, error = %e, "report not delivered; will retry");
                false
            }
            Err(_) => false,
        };
        let mut outbox = lock(&self.inner.outbox);
        if done {
            outbox.remove(&run);
        } else if let Some(o) = outbox.get_mut(&run) {
            o.sending = false;
        }
        done
    }

    /// Sends what the outbox holds and nobody is sending, oldest run
    /// first, until one fails.
    pub(super) async fn flush_outbox(&self) {
        let idle: Vec<(RunningTask, TaskResult)> = {
            let mut outbox = lock(&self.inner.outbox);
            outbox
                .iter_mut()
                .filter(|(_, o)| !o.sending)
                .map(|(run, o)| {
                    o.sending = true;
                    (run.clone(), o.result.clone())
                })
                .collect()
        };
        let mut sent = idle.into_iter();
        for (run, result) in sent.by_ref() {
            if !self.send_report(run, result).await {
                break;
            }
        }
        // Not tried after a failure: the next flush sends them.
        let mut outbox = lock(&self.inner.outbox);
        for (run, _) in sent {
            if let Some(o) = outbox.get_mut(&run) {
                o.sending = false;
            }
        }
    }

    /// Flushes the outbox on a task of its own, so the caller (the
    /// heartbeat loop) does not wait for the reports.
    pub(super) fn flush_in_background(&self) {
        let w = self.clone();
        tokio::spawn(async move { w.flush_outbox().await });
    }

    /// A copy of the outbox: every result not yet acknowledged, sent or
    /// not.
    pub(super) fn unacknowledged(&self) -> Vec<(RunningTask, TaskResult)> {
        lock(&self.inner.outbox)
            .iter()
            .map(|(run, o)| (run.clone(), o.result.clone()))
            .collect()
    }
}
