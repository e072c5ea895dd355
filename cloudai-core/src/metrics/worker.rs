//! A worker's metrics.

use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{latencies, render, Latencies, Rpcs};

#[derive(Debug)]
struct Series {
    registry: Registry,
    runtime: Latencies,
    rpcs: Rpcs,
    running: Gauge,
    outbox: Gauge,
}

/// A worker's metrics. Cheap to clone; clones share the series.
#[derive(Debug, Clone)]
pub struct WorkerMetrics(Arc<Series>);

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WorkerMetrics {
    /// Every series at zero, registered under the `cloudai_worker_` prefix.
    pub fn new() -> Self {
        let mut s = Series {
            registry: Registry::with_prefix("cloudai_worker"),
            runtime: latencies(),
            rpcs: Rpcs::default(),
            running: Gauge::default(),
            outbox: Gauge::default(),
        };
        let r = &mut s.registry;
        r.register(
            "runtime_operation_seconds",
            "Container runtime calls (start, stop, remove, list, output), by operation",
            s.runtime.clone(),
        );
        s.rpcs.register(r);
        r.register(
            "running_tasks",
            "Runs this worker has now",
            s.running.clone(),
        );
        r.register(
            "outbox_depth",
            "Results not yet acknowledged by the master",
            s.outbox.clone(),
        );
        WorkerMetrics(Arc::new(s))
    }

    /// The RPC counters, for the transport to fill.
    pub fn rpcs(&self) -> Rpcs {
        self.0.rpcs.clone()
    }

    pub(crate) fn runtime(&self) -> &Latencies {
        &self.0.runtime
    }

    /// Sets the state gauges and renders every series.
    pub(crate) fn render(&self, running: usize, outbox: usize) -> String {
        let s = &self.0;
        s.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        s.outbox.set(i64::try_from(outbox).unwrap_or(i64::MAX));
        render(&s.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_sets_the_running_and_outbox_gauges() {
        let m = WorkerMetrics::new();
        let text = m.render(3, 1);
        assert!(
            text.contains("\ncloudai_worker_running_tasks 3\n"),
            "{text}"
        );
        assert!(text.contains("\ncloudai_worker_outbox_depth 1\n"), "{text}");
    }
}
