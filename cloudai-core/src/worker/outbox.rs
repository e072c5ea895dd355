//! The outbox: every result stays here until the master acknowledges it,
//! so a report survives an outage of the master or of the network.

use std::collections::BTreeMap;

use tracing::{debug, warn};

use super::Worker;
use crate::model::{RunningTask, TaskResult};
use crate::sync::lock;
use crate::Error;

/// Results not yet acknowledged by the master, by run.
pub(super) type Outbox = BTreeMap<RunningTask, TaskResult>;

impl Worker {
    /// Puts a result in the outbox and tries to send it now; the heartbeat
    /// loop retries whatever is left.
    pub(super) async fn deliver(&self, run: RunningTask, result: TaskResult) {
        lock(&self.inner.outbox).insert(run.clone(), result.clone());
        self.send_report(run, result).await;
    }

    /// One attempt to report; `true` once the master has the result.
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
        if done {
            lock(&self.inner.outbox).remove(&run);
        }
        done
    }

    /// Sends what the outbox holds, oldest run first, until one fails.
    pub(super) async fn flush_outbox(&self) {
        for (run, result) in self.unacknowledged() {
            if !self.send_report(run, result).await {
                break;
            }
        }
    }

    /// A copy of the outbox.
    pub(super) fn unacknowledged(&self) -> Vec<(RunningTask, TaskResult)> {
        lock(&self.inner.outbox).clone().into_iter().collect()
    }
}
