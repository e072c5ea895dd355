//! The leader lease's metrics: one set per master process, kept across
//! its terms (each term's [`super::MasterMetrics`] starts afresh).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::render;
use crate::model::Term;

#[derive(Debug)]
struct Series {
    registry: Registry,
    leader: Gauge,
    term: Gauge,
    takeovers: Counter,
    renew: Histogram,
}

/// A master process's lease metrics. Cheap to clone; clones share the
/// series.
#[derive(Debug, Clone)]
pub struct LeaseMetrics(Arc<Series>);

impl Default for LeaseMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseMetrics {
    /// Every series at zero, registered under the `cloudai_` prefix.
    pub fn new() -> Self {
        let mut s = Series {
            registry: Registry::with_prefix("cloudai"),
            leader: Gauge::default(),
            term: Gauge::default(),
            takeovers: Counter::default(),
            // 1 ms to about 16 s.
            renew: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        };
        let r = &mut s.registry;
        r.register(
            "master_leader",
            "1 while this master holds the lease and acts, else 0",
            s.leader.clone(),
        );
        r.register(
            "master_term",
            "The term this master last led in (0: never led)",
            s.term.clone(),
        );
        r.register(
            "master_takeovers",
            "Terms this master began by taking the lease over",
            s.takeovers.clone(),
        );
        r.register(
            "lease_renew_seconds",
            "From sending a lease renewal to its answer",
            s.renew.clone(),
        );
        LeaseMetrics(Arc::new(s))
    }

    pub(crate) fn leading(&self, term: Term) {
        self.0.leader.set(1);
        self.0
            .term
            .set(i64::try_from(term.get()).unwrap_or(i64::MAX));
    }

    pub(crate) fn following(&self) {
        self.0.leader.set(0);
    }

    pub(crate) fn took_over(&self) {
        self.0.takeovers.inc();
    }

    pub(crate) fn renewed(&self, took: Duration) {
        self.0.renew.observe(took.as_secs_f64());
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        render(&self.0.registry)
    }
}
