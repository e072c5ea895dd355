//! Shutting down: every running task is stopped and its container
//! removed, and each is reported as failed once stopped, within a bound,
//! whether or not the master answers.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::runs::StopKind;
use super::Worker;
use crate::model::RunningTask;
use crate::sync::lock;

/// What [`Worker::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownSummary {
    /// Reports (running tasks as failed, plus results still in the outbox)
    /// the master acknowledged, or that were not owed after all.
    pub reported: usize,
    /// Reports that did not get through in time.
    pub unreported: usize,
    /// Runs stopped and removed before the bound.
    pub stopped: usize,
}

impl Worker {
    /// Stops every run (with the shutdown grace) and reports each as
    /// failed ("worker was terminated while task was running") once it
    /// stopped, within the shutdown bound, even when the master is
    /// unreachable. Reported after the stop, so the master may run the
    /// task again elsewhere at once: never while this run still goes.
    pub async fn shutdown(&self) -> ShutdownSummary {
        let cfg = &self.inner.config;
        self.inner.closing.store(true, Ordering::SeqCst);
        let grace = cfg.shutdown_grace.min(cfg.max_grace);
        let runs = lock(&self.inner.runs).stop_all(StopKind::Shutdown, Some(grace));
        info!(
            running = runs.len(),
            "worker shutting down; stopping its runs and reporting each as it stops"
        );
        let mut expected: BTreeSet<RunningTask> =
            self.unacknowledged().into_iter().map(|(r, _)| r).collect();
        expected.extend(runs.iter().map(|(r, _, _)| r.clone()));
        let start = tokio::time::Instant::now();
        let (reports_by, stops_by) = (
            start + cfg.shutdown_timeout,
            start + cfg.shutdown_timeout + grace,
        );
        // First say we are leaving, so the resources the reports free
        // are not placed here again.
        let me = self.identity();
        let leave = self.inner.master.leave(&me);
        self.set_in_session(false);
        match tokio::time::timeout(cfg.shutdown_timeout / 4, leave).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not tell the master we are leaving"),
            Err(_) => warn!("the master did not answer our leaving in time"),
        }
        // Stop every container, including runs still starting (their
        // supervisor stops them as soon as they start), and wait, bounded,
        // until every supervisor has reported its run and removed it.
        let stop_all = async {
            let mut stopping = BTreeSet::new();
            let mut set = JoinSet::new();
            loop {
                let left = lock(&self.inner.runs).containers();
                if left.is_empty() || tokio::time::Instant::now() >= stops_by {
                    break left;
                }
                for (run, container) in left {
                    if let Some(c) = container.filter(|_| stopping.insert(run.clone())) {
                        let rt = self.inner.runtime.clone();
                        set.spawn(async move { rt.stop(&c, grace).await });
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // Meanwhile the reports (each run's, once it stopped, and those
        // the master had not acknowledged yet) go again until the bound.
        let report_all = async {
            loop {
                let unacked = self.unacknowledged();
                let idle = unacked.is_empty() && lock(&self.inner.runs).list().is_empty();
                if idle || tokio::time::Instant::now() >= reports_by {
                    return;
                }
                let mut sends = JoinSet::new();
                for (run, result) in unacked {
                    let w = self.clone();
                    sends.spawn(async move { w.send_report(run, result).await });
                }
                let _ = tokio::time::timeout_at(reports_by, async {
                    while sends.join_next().await.is_some() {}
                })
                .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let (left, ()) = tokio::join!(stop_all, report_all);
        let stopped = runs.len().saturating_sub(left.len());
        // Followers of runs still here at the bound end now, so the
        // worker's server can finish its open streams.
        for output in lock(&self.inner.runs).outputs() {
            output.close();
        }
        let mut pending: BTreeSet<RunningTask> =
            self.unacknowledged().into_iter().map(|(r, _)| r).collect();
        pending.extend(left.into_iter().map(|(r, _)| r));
        let unreported = expected.intersection(&pending).count();
        let summary = ShutdownSummary {
            reported: expected.len() - unreported,
            unreported,
            stopped,
        };
        info!(?summary, "worker shut down");
        summary
    }

    /// Ends every supervisor at once without reporting or stopping anything,
    /// as `kill -9` would (containers are left to the runtime). For tests.
    pub fn abort(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        lock(&self.inner.runs).abort_supervisors();
    }
}
