//! Shutting down: every running task is reported as failed within a bound
//! and its container stopped and removed, whether or not the master
//! answers.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{Worker, SHUTDOWN_MESSAGE};
use crate::model::TaskStatus;
use crate::sync::lock;

/// What [`Worker::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownSummary {
    /// Reports (running tasks as failed, plus results still in the outbox)
    /// the master acknowledged.
    pub reported: usize,
    /// Reports that did not get through in time.
    pub unreported: usize,
    /// Runs stopped and removed before the bound.
    pub stopped: usize,
}

impl Worker {
    /// Reports every running task as failed ("worker was terminated
    /// while task was running") within the shutdown bound, and stops and
    /// removes their containers, even when the master is unreachable.
    pub async fn shutdown(&self) -> ShutdownSummary {
        let cfg = &self.inner.config;
        self.inner.closing.store(true, Ordering::SeqCst);
        let runs = lock(&self.inner.runs).stop_all_for_shutdown(cfg.shutdown_grace);
        info!(
            running = runs.len(),
            "worker shutting down; reporting running tasks as failed"
        );
        let mut reports = self.unacknowledged();
        for (run, started_at) in &runs {
            let r = self.result(
                run,
                TaskStatus::Failed,
                None,
                crate::output::Tail::default(),
                Some(SHUTDOWN_MESSAGE.into()),
                Some(*started_at),
            );
            reports.push((run.clone(), r));
        }
        let total = reports.len();
        let reported_by = tokio::time::Instant::now() + cfg.shutdown_timeout;
        let me = self.identity();
        let report_all = async {
            // First say we are leaving, so the resources the reports free
            // are not placed here again; a master that does not answer
            // soon gets the reports anyway, within the same bound.
            let leave = self.inner.master.leave(&me);
            self.set_in_session(false);
            match tokio::time::timeout(cfg.shutdown_timeout / 4, leave).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "could not tell the master we are leaving"),
                Err(_) => warn!("the master did not answer our leaving in time"),
            }
            let mut set = JoinSet::new();
            for (run, result) in reports {
                let w = self.clone();
                set.spawn(async move { w.send_report(run, result).await });
            }
            let mut acked = 0;
            let bounded = tokio::time::timeout_at(reported_by, async {
                while let Some(done) = set.join_next().await {
                    if matches!(done, Ok(true)) {
                        acked += 1;
                    }
                }
            });
            let _ = bounded.await;
            acked
        };
        // Stop every container, including runs still starting (their
        // supervisor stops them as soon as they start), and wait, bounded,
        // until every supervisor has removed its run.
        let stop_all = async {
            let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout + cfg.shutdown_grace;
            let mut stopping = BTreeSet::new();
            let mut set = JoinSet::new();
            loop {
                let left = lock(&self.inner.runs).containers();
                if left.is_empty() || tokio::time::Instant::now() >= deadline {
                    break runs.len().saturating_sub(left.len());
                }
                for (run, container) in left {
                    if let Some(c) = container.filter(|_| stopping.insert(run.clone())) {
                        let (rt, grace) = (self.inner.runtime.clone(), cfg.shutdown_grace);
                        set.spawn(async move { rt.stop(&c, grace).await });
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let (reported, stopped) = tokio::join!(report_all, stop_all);
        // Followers of runs still here at the bound end now, so the
        // worker's server can finish its open streams.
        for output in lock(&self.inner.runs).outputs() {
            output.close();
        }
        let summary = ShutdownSummary {
            reported,
            unreported: total - reported,
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
