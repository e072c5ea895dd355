//! The master's metrics.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{latencies, render, Labels, Latencies, Rpcs};
use crate::liveness::Health;
use crate::model::{EndCause, Resources, StatusCounts, TaskStatus, Usage, WorkerId};

type Level = Gauge<f64, AtomicU64>;

/// One resource's cluster-wide allocated and capacity gauges, in base
/// units.
#[derive(Debug, Default)]
struct Resource {
    allocated: Level,
    capacity: Level,
}

impl Resource {
    fn register(&self, registry: &mut Registry, name: &str, unit: &str, what: &str) {
        registry.register(
            format!("{name}_allocated{unit}"),
            format!("{what} held by running tasks, summed over the workers"),
            self.allocated.clone(),
        );
        registry.register(
            format!("{name}_capacity{unit}"),
            format!("{what} the workers offer, summed over the workers not lost"),
            self.capacity.clone(),
        );
    }

    fn set(&self, allocated: f64, capacity: f64) {
        self.allocated.set(allocated);
        self.capacity.set(capacity);
    }
}

/// What a scrape reads from the master's live state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Tasks by status; `None` when the store did not answer in time (the
    /// gauges then keep their last values).
    pub(crate) tasks: Option<StatusCounts>,
    /// Tasks waiting in the queue.
    pub(crate) queued: usize,
    /// Workers by health.
    pub(crate) workers: Vec<Health>,
    /// Summed over the workers not lost.
    pub(crate) allocated: Resources,
    /// Summed over the workers not lost.
    pub(crate) capacity: Resources,
    /// GPUs allocated and offered, by worker not lost that has any.
    pub(crate) worker_gpus: Vec<(WorkerId, u32, u32)>,
}

/// A series by worker.
type ByWorker = [(&'static str, String); 1];

/// Buckets of a use over a request: a tenth used up to four times over.
const USE_RATIO: [f64; 10] = [0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.5, 2.0, 4.0];

#[derive(Debug)]
struct Series {
    registry: Registry,
    submitted: Counter,
    placed: Counter,
    completed: Counter,
    failed: Counter,
    cancelled: Counter,
    heartbeats: Counter,
    fenced: Counter,
    start: Histogram,
    stop: Histogram,
    memory_use: Histogram,
    cpu_use: Histogram,
    store: Latencies,
    rpcs: Rpcs,
    tasks: Family<Labels<1>, Gauge>,
    attempts_ended: Family<Labels<2>, Counter>,
    queue_depth: Gauge,
    workers: Family<Labels<1>, Gauge>,
    cpu: Resource,
    memory: Resource,
    storage: Resource,
    gpus: Resource,
    worker_gpus_allocated: Family<ByWorker, Gauge>,
    worker_gpus_capacity: Family<ByWorker, Gauge>,
}

/// A master's metrics. Cheap to clone; clones share the series.
#[derive(Debug, Clone)]
pub struct MasterMetrics(Arc<Series>);

impl Default for MasterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl MasterMetrics {
    /// Every series at zero, registered under the `cloudai_` prefix.
    pub fn new() -> Self {
        let mut s = Series {
            registry: Registry::with_prefix("cloudai"),
            submitted: Counter::default(),
            placed: Counter::default(),
            completed: Counter::default(),
            failed: Counter::default(),
            cancelled: Counter::default(),
            heartbeats: Counter::default(),
            fenced: Counter::default(),
            start: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            stop: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
            memory_use: Histogram::new(USE_RATIO),
            cpu_use: Histogram::new(USE_RATIO),
            store: latencies(),
            rpcs: Rpcs::default(),
            tasks: Family::default(),
            attempts_ended: Family::default(),
            queue_depth: Gauge::default(),
            workers: Family::default(),
            cpu: Resource::default(),
            memory: Resource::default(),
            storage: Resource::default(),
            gpus: Resource::default(),
            worker_gpus_allocated: Family::default(),
            worker_gpus_capacity: Family::default(),
        };
        let r = &mut s.registry;
        let counters = [
            ("tasks_submitted", "Tasks accepted", &s.submitted),
            (
                "tasks_placed",
                "Placements: a task assigned to a worker (each attempt)",
                &s.placed,
            ),
            (
                "tasks_completed",
                "Tasks that ended completed",
                &s.completed,
            ),
            ("tasks_failed", "Tasks that ended failed", &s.failed),
            (
                "tasks_cancelled",
                "Tasks that ended cancelled",
                &s.cancelled,
            ),
            (
                "heartbeats_received",
                "Worker heartbeats taken",
                &s.heartbeats,
            ),
            (
                "store_writes_fenced",
                "Store writes refused because a later term fenced the document (this master was deposed)",
                &s.fenced,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "task_start_seconds",
            "From a task's submission to its first placement",
            s.start.clone(),
        );
        r.register(
            "task_stop_seconds",
            "From a stop being owed (a cancel, a requeue, a drain deadline) to its worker confirming it",
            s.stop.clone(),
        );
        r.register(
            "attempt_memory_use_ratio",
            "An ended attempt's peak memory over the memory its task asked for",
            s.memory_use.clone(),
        );
        r.register(
            "attempt_cpu_use_ratio",
            "An ended attempt's CPU time over its wall time and the cores its task asked for",
            s.cpu_use.clone(),
        );
        r.register(
            "store_operation_seconds",
            "Task store and worker registry calls, by operation",
            s.store.clone(),
        );
        s.rpcs.register(r);
        r.register("tasks", "Tasks in the store, by status", s.tasks.clone());
        r.register(
            "attempts_ended",
            "Attempts that ended, by cause and what followed (retry, requeue, or final)",
            s.attempts_ended.clone(),
        );
        r.register(
            "queue_depth",
            "Pending tasks waiting in the master's queue",
            s.queue_depth.clone(),
        );
        r.register(
            "workers",
            "Registered workers, by health",
            s.workers.clone(),
        );
        s.cpu.register(r, "cpu", "_cores", "CPU");
        s.memory.register(r, "memory", "_bytes", "Memory");
        s.storage.register(r, "storage", "_bytes", "Storage");
        s.gpus.register(r, "gpus", "", "GPUs");
        r.register(
            "worker_gpus_allocated",
            "GPUs held by running tasks on each worker that has GPUs",
            s.worker_gpus_allocated.clone(),
        );
        r.register(
            "worker_gpus_capacity",
            "GPUs each worker that has GPUs offers",
            s.worker_gpus_capacity.clone(),
        );
        MasterMetrics(Arc::new(s))
    }

    /// The RPC counters, for the transport to fill.
    pub fn rpcs(&self) -> Rpcs {
        self.0.rpcs.clone()
    }

    pub(crate) fn store(&self) -> &Latencies {
        &self.0.store
    }

    pub(crate) fn fenced(&self) -> &Counter {
        &self.0.fenced
    }

    pub(crate) fn submitted(&self, n: usize) {
        self.0.submitted.inc_by(n as u64);
    }

    pub(crate) fn heartbeat(&self) {
        self.0.heartbeats.inc();
    }

    pub(crate) fn stopped(&self, took: Duration) {
        self.0.stop.observe(took.as_secs_f64());
    }

    /// An attempt that ended having used `used` of `asked`: how well the
    /// request fitted (what a user sizing `--mem` for a sweep needs).
    pub(crate) fn used(&self, asked: &Resources, used: &Usage) {
        if asked.memory_mb > 0 {
            let asked_bytes = asked.memory_mb as f64 * 1e6;
            self.0
                .memory_use
                .observe(used.peak_memory_bytes as f64 / asked_bytes);
        }
        if let (true, Some(cores)) = (asked.cpu_millis > 0, used.cores()) {
            self.0.cpu_use.observe(cores / asked.cpu_cores());
        }
    }

    /// A stored transition to `to`; `waited` is how long a first placement
    /// waited since the task's submission.
    pub(crate) fn transition(&self, to: TaskStatus, waited: Option<Duration>) {
        let s = &self.0;
        match to {
            TaskStatus::Pending => {}
            TaskStatus::Running => {
                s.placed.inc();
                if let Some(w) = waited {
                    s.start.observe(w.as_secs_f64());
                }
            }
            TaskStatus::Completed => {
                s.completed.inc();
            }
            TaskStatus::Failed => {
                s.failed.inc();
            }
            TaskStatus::Cancelled => {
                s.cancelled.inc();
            }
        }
    }

    /// An attempt ended with `cause`, and `next` followed (`retry`,
    /// `requeue` or `final`).
    pub(crate) fn attempt_ended(&self, cause: EndCause, next: &'static str) {
        self.0
            .attempts_ended
            .get_or_create(&[("cause", cause.as_str()), ("next", next)])
            .inc();
    }

    /// Sets the state gauges from `now` and renders every series.
    pub(crate) fn render(&self, now: &Snapshot) -> String {
        let s = &self.0;
        if let Some(counts) = &now.tasks {
            for status in TaskStatus::ALL {
                let n = i64::try_from(counts.get(status)).unwrap_or(i64::MAX);
                s.tasks.get_or_create(&[("status", status.as_str())]).set(n);
            }
        }
        s.queue_depth
            .set(i64::try_from(now.queued).unwrap_or(i64::MAX));
        for health in Health::ALL {
            let n = now.workers.iter().filter(|h| **h == health).count();
            s.workers
                .get_or_create(&[("health", health.as_str())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let (a, c) = (&now.allocated, &now.capacity);
        s.cpu.set(a.cpu_cores(), c.cpu_cores());
        s.memory.set(megabytes(a.memory_mb), megabytes(c.memory_mb));
        s.storage
            .set(megabytes(a.storage_mb), megabytes(c.storage_mb));
        s.gpus.set(f64::from(a.gpus), f64::from(c.gpus));
        // Workers come and go: only those of this scrape are listed.
        s.worker_gpus_allocated.clear();
        s.worker_gpus_capacity.clear();
        for (w, allocated, capacity) in &now.worker_gpus {
            let by = [("worker", w.to_string())];
            s.worker_gpus_allocated
                .get_or_create(&by)
                .set(i64::from(*allocated));
            s.worker_gpus_capacity
                .get_or_create(&by)
                .set(i64::from(*capacity));
        }
        render(&s.registry)
    }
}

/// Megabytes (1000 = one GB) in bytes.
fn megabytes(mb: u64) -> f64 {
    mb as f64 * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    #[test]
    fn transitions_move_their_counters_and_scrapes_set_the_gauges() {
        let m = MasterMetrics::new();
        m.submitted(3);
        m.transition(TaskStatus::Running, Some(Duration::from_millis(20)));
        m.transition(TaskStatus::Running, None);
        m.transition(TaskStatus::Completed, None);
        m.transition(TaskStatus::Cancelled, None);
        let counts = StatusCounts {
            pending: 1,
            completed: 1,
            cancelled: 1,
            ..StatusCounts::default()
        };
        let text = m.render(&Snapshot {
            tasks: Some(counts),
            queued: 1,
            workers: vec![Health::Active, Health::Active, Health::Lost],
            allocated: Resources::new(0.5, 0.25, 0.0, 1).unwrap(),
            capacity: Resources::new(4.0, 8.0, 10.0, 2).unwrap(),
            worker_gpus: vec![(WorkerId::new("g1").unwrap(), 1, 2)],
        });
        assert_eq!(
            line(&text, "cloudai_tasks_submitted_total"),
            "cloudai_tasks_submitted_total 3"
        );
        assert_eq!(
            line(&text, "cloudai_tasks_placed_total"),
            "cloudai_tasks_placed_total 2"
        );
        assert_eq!(
            line(&text, "cloudai_tasks_completed_total"),
            "cloudai_tasks_completed_total 1"
        );
        assert_eq!(
            line(&text, "cloudai_tasks_failed_total"),
            "cloudai_tasks_failed_total 0"
        );
        assert_eq!(
            line(&text, "cloudai_task_start_seconds_count"),
            "cloudai_task_start_seconds_count 1"
        );
        assert_eq!(
            line(&text, r#"cloudai_tasks{status="pending"}"#),
            r#"cloudai_tasks{status="pending"} 1"#
        );
        assert_eq!(
            line(&text, r#"cloudai_workers{health="active"}"#),
            r#"cloudai_workers{health="active"} 2"#
        );
        assert_eq!(line(&text, "cloudai_queue_depth"), "cloudai_queue_depth 1");
        assert_eq!(
            line(&text, "cloudai_cpu_capacity_cores"),
            "cloudai_cpu_capacity_cores 4.0"
        );
        assert_eq!(
            line(&text, "cloudai_memory_allocated_bytes"),
            "cloudai_memory_allocated_bytes 250000000.0"
        );
        assert_eq!(
            line(&text, "cloudai_gpus_allocated"),
            "cloudai_gpus_allocated 1.0"
        );
        assert_eq!(
            line(&text, r#"cloudai_worker_gpus_allocated{worker="g1"}"#),
            r#"cloudai_worker_gpus_allocated{worker="g1"} 1"#
        );
        assert_eq!(
            line(&text, r#"cloudai_worker_gpus_capacity{worker="g1"}"#),
            r#"cloudai_worker_gpus_capacity{worker="g1"} 2"#
        );
        // A worker gone by the next scrape is no longer listed.
        let text = m.render(&Snapshot::default());
        assert!(!text.contains(r#"worker="g1""#), "{text}");
    }

    #[test]
    fn a_scrape_without_the_store_keeps_the_last_task_counts() {
        let m = MasterMetrics::new();
        let with = Snapshot {
            tasks: Some(StatusCounts {
                running: 4,
                ..StatusCounts::default()
            }),
            ..Snapshot::default()
        };
        m.render(&with);
        let text = m.render(&Snapshot::default());
        assert_eq!(
            line(&text, r#"cloudai_tasks{status="running"}"#),
            r#"cloudai_tasks{status="running"} 4"#
        );
    }

    #[test]
    fn use_over_request_lands_in_its_bucket() {
        let m = MasterMetrics::new();
        let asked = Resources::new(2.0, 1.0, 0.0, 0).unwrap();
        // Half the memory asked for, one of two cores for a second.
        let used = Usage {
            wall_ms: 1000,
            user_cpu_ms: 900,
            system_cpu_ms: 100,
            peak_memory_bytes: 500_000_000,
            pull_ms: None,
        };
        m.used(&asked, &used);
        // No request, no ratio.
        m.used(&Resources::ZERO, &used);
        let text = m.render(&Snapshot::default());
        for (series, want) in [
            ("cloudai_attempt_memory_use_ratio_bucket{le=\"0.25\"}", "0"),
            ("cloudai_attempt_memory_use_ratio_bucket{le=\"0.5\"}", "1"),
            ("cloudai_attempt_memory_use_ratio_count", "1"),
            ("cloudai_attempt_cpu_use_ratio_bucket{le=\"0.25\"}", "0"),
            ("cloudai_attempt_cpu_use_ratio_bucket{le=\"0.5\"}", "1"),
            ("cloudai_attempt_cpu_use_ratio_count", "1"),
        ] {
            assert_eq!(line(&text, series), format!("{series} {want}"));
        }
    }
}
