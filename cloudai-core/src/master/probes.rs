//! What operators scrape and probe: the metrics, and whether the master
//! is ready (its store answers).

use std::time::Duration;

use super::Master;
use crate::metrics::MasterMetrics;
use crate::model::TaskId;
use crate::{Error, Result};

/// How long the store has to answer a readiness probe, or a scrape's count
/// of tasks by status.
pub const READY_WITHIN: Duration = Duration::from_secs(2);

impl Master {
    /// The metrics, for the transport to count its calls into.
    pub fn metrics(&self) -> &MasterMetrics {
        &self.inner.metrics
    }

    /// Every metric in the Prometheus text format. Tasks by status come
    /// from the store; if it does not answer within [`READY_WITHIN`] they
    /// keep their last values and the rest is still served.
    pub async fn render_metrics(&self) -> String {
        let counts = tokio::time::timeout(READY_WITHIN, self.inner.store.count_tasks()).await;
        let mut snapshot = self.state().snapshot(self.now());
        snapshot.tasks = counts.ok().and_then(|c| c.ok());
        self.inner.metrics.render(&snapshot)
    }

    /// Ready when the store answers a read within [`READY_WITHIN`].
    pub async fn ready(&self) -> Result<()> {
        // A lookup of an id never generated: one indexed read, any backend.
        let probe = TaskId::new("readiness-probe").map_err(Error::InvalidInput)?;
        match tokio::time::timeout(READY_WITHIN, self.inner.store.get_task(&probe)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Error::Unavailable(format!("the store failed: {e}"))),
            Err(_) => Err(Error::Unavailable(format!(
                "the store did not answer within {READY_WITHIN:?}"
            ))),
        }
    }
}
