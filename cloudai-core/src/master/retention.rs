//! Retention: finished tasks and their results are removed once they have
//! been finished for longer than the retention, in sweeps the driver runs
//! on the master's clock. A removed task's id still tells when it was
//! created, so looking it up says it expired rather than that it never was.

use tracing::{info, warn};

use super::Master;
use crate::model::{TaskId, Timestamp};
use crate::Error;

/// Tasks removed per store call; a sweep repeats until a call removes fewer.
const SWEEP_BATCH: usize = 1000;

impl Master {
    /// Removes every task finished longer than the retention ago.
    pub(super) async fn sweep_finished(&self) {
        let Some(keep) = self.inner.config.retention else {
            return;
        };
        let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        let cutoff = Timestamp::from_millis(self.now().as_millis().saturating_sub(keep_ms));
        // Parents that a dependent still waiting (or not yet placed) was
        // decided by: a master loading after a restart reads them again.
        let parents = self.state().kept_parents();
        let mut removed = 0;
        loop {
            match self
                .inner
                .store
                .remove_finished(cutoff, SWEEP_BATCH, &parents)
                .await
            {
                Ok(n) => {
                    removed += n;
                    if n < SWEEP_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "retention sweep failed; the next sweep retries");
                    break;
                }
            }
        }
        if removed > 0 {
            info!(removed, retention = ?keep, "finished tasks past the retention removed");
        }
    }

    /// The error for a task the store does not hold: expired if its id says
    /// it was created longer than the retention ago, else not found.
    pub(super) fn missing_task(&self, id: &TaskId) -> Error {
        match (self.inner.config.retention, id.created_at()) {
            (Some(keep), Some(at)) if self.now().saturating_since(at) > keep => Error::Expired {
                kind: "task",
                id: id.to_string(),
                retention: keep,
            },
            _ => Error::not_found("task", id),
        }
    }
}
