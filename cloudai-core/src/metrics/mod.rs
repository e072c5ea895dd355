//! Prometheus metrics of a master and of a worker, each in a registry of
//! its own (no global recorder: one process may embed several masters, as
//! the simulation does), rendered in the text exposition format.
//!
//! Counters and latency histograms are updated as things happen; the
//! gauges that describe current state (tasks by status, queue depth,
//! workers by health, resources) are set from the live state when scraped.
//! Every name is listed in the README, section "Metrics".

mod lease;
mod master;
mod runtime;
mod store;
mod worker;

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use lease::LeaseMetrics;
pub use master::MasterMetrics;
pub(crate) use master::Snapshot;
pub use runtime::MeteredRuntime;
pub(crate) use store::FenceAlarm;
pub use store::MeteredStore;
pub use worker::WorkerMetrics;

/// The `Content-Type` of the rendered metrics.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `N` labels, each a name and a value, all fixed strings: looking a
/// series up copies nothing (this runs on every store call and RPC).
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Latency histograms by one label (the operation).
pub(crate) type Latencies = Family<Labels<1>, Histogram, fn() -> Histogram>;

/// A histogram of durations from 1 ms to about 65 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn latencies() -> Latencies {
    Family::new_with_constructor(latency)
}

/// Records one operation's duration under `operation`.
fn observe(family: &Latencies, operation: &'static str, took: Duration) {
    family
        .get_or_create(&[("operation", operation)])
        .observe(took.as_secs_f64());
}

/// Runs `call`, recording how long it took under `operation`, also when
/// it is dropped unfinished (a caller's timeout gave up on it): the
/// slowest calls are the ones that must not go missing.
pub(crate) async fn timed<T>(
    family: &Latencies,
    operation: &'static str,
    call: impl std::future::Future<Output = T>,
) -> T {
    struct Clock<'a> {
        family: &'a Latencies,
        operation: &'static str,
        began: tokio::time::Instant,
    }
    impl Drop for Clock<'_> {
        fn drop(&mut self) {
            observe(self.family, self.operation, self.began.elapsed());
        }
    }
    let _clock = Clock {
        family,
        operation,
        began: tokio::time::Instant::now(),
    };
    call.await
}

/// RPCs served, by method and gRPC status code: filled by the transport
/// (the gRPC layer counts every call it answers).
#[derive(Debug, Clone, Default)]
pub struct Rpcs(Family<Labels<2>, Counter>);

impl Rpcs {
    /// Counts one call to `method` answered with `code` (its gRPC name,
    /// `OK`, `NOT_FOUND`, …).
    pub fn record(&self, method: &'static str, code: &'static str) {
        self.0
            .get_or_create(&[("method", method), ("code", code)])
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "rpcs",
            "gRPC calls answered, by method and status code",
            self.0.clone(),
        );
    }
}

/// The registry in the text exposition format.
fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcs_and_latencies_render_under_the_cloudai_prefix() {
        let mut registry = Registry::with_prefix("cloudai");
        let rpcs = Rpcs::default();
        rpcs.register(&mut registry);
        let ops = latencies();
        registry.register("store_operation_seconds", "store", ops.clone());
        rpcs.record("/cloudai.Master/Submit", "OK");
        rpcs.record("/cloudai.Master/Submit", "OK");
        observe(&ops, "get_task", Duration::from_millis(3));
        let text = render(&registry);
        assert!(
            text.contains(r#"cloudai_rpcs_total{method="/cloudai.Master/Submit",code="OK"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"cloudai_store_operation_seconds_count{operation="get_task"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
