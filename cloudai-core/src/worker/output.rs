//! Each run's output: pumped from the runtime into the run's log while it
//! runs, handed to followers from any offset, and kept a while after the
//! run ended.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::warn;

use super::Worker;
use crate::model::RunningTask;
use crate::output::{Follow, OutputFrom, OutputLog};
use crate::runtime::ContainerId;
use crate::sync::lock;
use crate::{Error, Result};

/// How long, after the container exited, the output may go without
/// progress before the result is reported without the rest.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

impl Worker {
    /// The output of run `run` from `from`: while it runs, or for a while
    /// after it ended (see [`super::WorkerConfig::output_linger`]).
    /// Following, the reader waits for more until the output ends.
    pub fn follow_output(
        &self,
        run: &RunningTask,
        from: OutputFrom,
        keep_following: bool,
    ) -> Result<Follow> {
        let live = lock(&self.inner.runs).output(run);
        let log = match live {
            Some(log) => log,
            None => lock(&self.inner.ended)
                .get(run, self.inner.clock.now())
                .ok_or_else(|| Error::not_found("output of run", &run.task))?,
        };
        Ok(log.follow(from, keep_following))
    }

    /// Copies what the runtime says `container` writes into `log`.
    pub(super) async fn pump_output(
        &self,
        run: &RunningTask,
        container: &ContainerId,
        log: &Arc<OutputLog>,
    ) -> Option<JoinHandle<()>> {
        let mut feed = match self.inner.runtime.output(container).await {
            Ok(feed) => feed,
            Err(e) => {
                warn!(task = %run.task, error = %e, "cannot follow the task's output");
                return None;
            }
        };
        let (log, task) = (log.clone(), run.task.clone());
        Some(tokio::spawn(async move {
            while let Some(chunk) = feed.recv().await {
                match chunk {
                    Ok(c) => {
                        let (_, end) = log.span();
                        if c.offset > end {
                            warn!(%task, expected = end, got = c.offset, "the runtime dropped output");
                            log.skip_to(c.offset);
                        }
                        // Bytes the log has already are not kept twice.
                        let repeated =
                            usize::try_from(end.saturating_sub(c.offset)).unwrap_or(usize::MAX);
                        log.push(c.stream, c.data.get(repeated..).unwrap_or_default());
                    }
                    Err(e) => {
                        warn!(%task, error = %e, "following the task's output failed");
                        return;
                    }
                }
            }
        }))
    }

    /// Waits for the output pump to reach the end of the container's
    /// output (while it makes progress: a large output may still be on its
    /// way from the runtime), then closes the log.
    pub(super) async fn end_output(&self, pump: Option<JoinHandle<()>>, log: &OutputLog) {
        if let Some(mut pump) = pump {
            let mut seen = log.span().1;
            while tokio::time::timeout(DRAIN_WAIT, &mut pump).await.is_err() {
                let now = log.span().1;
                if now == seen {
                    warn!("no more of the task's output came in {DRAIN_WAIT:?} after it exited; reporting without the rest");
                    pump.abort();
                    break;
                }
                seen = now;
            }
        }
        log.close();
    }

    /// Keeps the output of ended run `run` for late followers.
    pub(super) fn keep_ended_output(&self, run: RunningTask, log: Arc<OutputLog>) {
        lock(&self.inner.ended).keep(run, log, self.inner.clock.now());
    }
}
