//! Store throughput: task transitions (`update_status` compare-and-set),
//! result inserts, and the heartbeats a master absorbs, on the in-memory
//! store or on MongoDB.
//!
//! ```sh
//! cargo run --release -p cloudai-bench --bin store -- --store memory
//! cargo run --release -p cloudai-bench --bin store -- --store mongodb://127.0.0.1:27017
//! ```
//!
//! With a MongoDB URI it uses a fresh database (`cloudai_bench_<pid>_<n>`)
//! and drops it at the end.
//!
//! With `--lease` it measures the master lease instead of the store phases
//! (`benches/ha-lease.sh RUNS TTL` runs it on memory and nx-27017 and
//! prints medians and maxima against the targets). On a store holding
//! `--lease-tasks` (20,000) pending tasks, with lease TTL `--ttl` (2 s):
//! 1. renewals under a raise: a renewal loop on its own task sends a
//!    `swap_lease` renewal every TTL/3 (the keeper's cadence) and times
//!    it, while takeovers raise the fence back to back, until `--renewals`
//!    renewals were in flight during a raise; prints their p50/p99/max
//!    (target p99 ≤ TTL/10);
//! 2. raise and load: one takeover's `raise_fence` and `Master::start_term`
//!    on handles fenced at its term, scaled to 10,000 tasks (target ≤ 2 s);
//! 3. takeover after a crash: a `LeaseKeeper` A leads, a `Leadership` B
//!    (fake transport) follows; A is dropped (no release) at a random phase
//!    of the cadences; the time to B's role `Leading`, then B's raise and
//!    load (target median ≤ 1.25·TTL, max ≤ 1.5·TTL), `--takeovers` times;
//! 4. takeover after a release: as 3 with `release()` (target ≤ TTL/6);
//! 5. contention (unless `--handovers 0`), always on fresh memory stores:
//!    `--contention-groups` stores with three keepers each, in real time
//!    with a short TTL (`--contention-ttl-ms`, 60 ms: tokio's paused clock
//!    needs its `test-util` feature, which this crate does not enable), a
//!    driver per store releasing or crashing the leader or restarting a
//!    follower at random and a gate before each keeper delaying its lease
//!    calls at random, until `--handovers` (1,000) handovers in all. Each
//!    keeper's acting windows are taken twice: from the writes its gate saw
//!    apply (each grant or renewal acts from the call to 2/3 TTL later),
//!    and from every `Role::Leading { until }` it published (from until −
//!    2/3 TTL, the renewal's sending, to until), both cut at the keeper's
//!    release. Prints the windows of different keepers that overlap and
//!    the terms granted to (or led by) two keepers: both must be 0 (with
//!    a timeline of the first overlap, if any). A keeper's clock counts
//!    whole milliseconds, so a published window may start up to 1 ms
//!    before its swap: overlaps of published windows within that are
//!    counted apart. `--contention-skew R` runs one keeper per store on a
//!    clock R times as fast: beyond the argument's factor of 1.5 (R > 1.5
//!    or R < 1/1.5) overlaps must show, a check of the check.
//!
//! `--json` adds one JSON line with the results (the script reads it).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use clap::Parser;
use cloudai_core::clock::Clock;
use cloudai_core::lifecycle::TaskEvent;
use cloudai_core::master::{Master, MasterConfig};
use cloudai_core::memory::MemoryStore;
use cloudai_core::model::{
    Drain, EndCause, Heartbeat, InstanceId, Resources, TaskId, TaskRecord, TaskResult, TaskSpec,
    TaskStatus, Telemetry, Term, Timestamp, WorkerId, WorkerIdentity, WorkerRecord,
};
use cloudai_core::output::{Follow, OutputFrom};
use cloudai_core::store::{CasOutcome, InsertOutcome, LeaseStore, TaskStore, WorkerRegistry};
use cloudai_core::transport::{
    MasterInfo, MasterToWorker, Registration, RunningTask, WorkerEndpoint,
};
use cloudai_core::{Error, Result};
use cloudai_mongo::{MongoConfig, MongoStore};
use tokio::task::JoinSet;

mod ha_lease;

/// Measures store operations per second.
#[derive(Debug, Parser)]
struct Args {
    /// `memory` or a `mongodb://…` URI.
    #[arg(long, default_value = "memory")]
    store: String,
    /// Operations per measured phase.
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    callers: usize,
    /// Registered workers for the heartbeat phase.
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Length of the heartbeat phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    heartbeat_secs: f64,
    /// Measure the master lease instead of the store phases.
    #[arg(long)]
    lease: bool,
    /// `--lease`: the lease TTL, seconds.
    #[arg(long, default_value_t = 2.0)]
    ttl: f64,
    /// `--lease`: pending tasks stored first.
    #[arg(long, default_value_t = 20_000)]
    lease_tasks: usize,
    /// `--lease`: renewals to time while a raise runs (at least).
    #[arg(long, default_value_t = 9)]
    renewals: usize,
    /// `--lease`: takeovers after a crash, and after a release, to time.
    #[arg(long, default_value_t = 1)]
    takeovers: usize,
    /// `--lease`: handovers to reach in the contention phase (0: skip it).
    #[arg(long, default_value_t = 1_000)]
    handovers: usize,
    /// `--lease`: the contention phase's lease TTL, milliseconds.
    #[arg(long, default_value_t = 60)]
    contention_ttl_ms: u64,
    /// `--lease`: memory stores (three keepers each) contending at once.
    #[arg(long, default_value_t = 20)]
    contention_groups: usize,
    /// `--lease`: slot 0's keepers in each contention store run their
    /// clocks this many times as fast (1: no skew; beyond 1.5 either way
    /// the lease's argument no longer holds: a check of the check).
    #[arg(long, default_value_t = 1.0)]
    contention_skew: f64,
    /// `--lease`: bound on the contention phase, seconds.
    #[arg(long, default_value_t = 120)]
    contention_cap_secs: u64,
    /// `--lease`: random seed (default: from the time).
    #[arg(long)]
    seed: Option<u64>,
    /// `--lease`: end with one JSON line of the results.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone)]
struct Stores {
    tasks: Arc<dyn TaskStore>,
    registry: Arc<dyn WorkerRegistry>,
    lease: Arc<dyn LeaseStore>,
    mongo: Option<MongoStore>,
}

async fn open(store: &str, tag: &str) -> Result<Stores, String> {
    if store == "memory" {
        let s = Arc::new(MemoryStore::new());
        return Ok(Stores {
            tasks: s.clone(),
            registry: s.clone(),
            lease: s,
            mongo: None,
        });
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000)
        .unwrap_or(0);
    let db = format!("cloudai_bench_{}_{tag}_{nanos}", std::process::id());
    let s = MongoStore::connect(MongoConfig::new(store, db))
        .await
        .map_err(|e| e.to_string())?;
    let shared = Arc::new(s.clone());
    Ok(Stores {
        tasks: shared.clone(),
        registry: shared.clone(),
        lease: shared,
        mongo: Some(s),
    })
}

async fn close(stores: Stores) {
    if let Some(m) = stores.mongo {
        let _ = m.drop_database().await;
    }
}

fn task_id(i: usize) -> TaskId {
    TaskId::new(format!("bench-{i}")).expect("valid id")
}

fn worker_id(i: usize) -> WorkerId {
    WorkerId::new(format!("bench-w{i}")).expect("valid id")
}

fn instance(i: usize) -> InstanceId {
    InstanceId::new(format!("bench-i{i}")).expect("valid instance")
}

/// Runs `op(i)` for `i in 0..n` over `callers` concurrent callers; returns
/// the elapsed time.
async fn timed<F, Fut>(n: usize, callers: usize, op: F) -> Result<Duration, String>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..callers.max(1) {
        let (op, next) = (op.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<(), String>(());
                }
                op(i).await?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed())
}

fn rate(what: &str, n: usize, d: Duration) {
    println!(
        "  {what:<44} {n:>6} ops in {:>7.3} s = {:>9.0} ops/s",
        d.as_secs_f64(),
        n as f64 / d.as_secs_f64()
    );
}

async fn store_phases(args: &Args) -> Result<(), String> {
    let stores = open(&args.store, "ops").await?;
    let (n, callers) = (args.ops, args.callers);
    let spec = TaskSpec::new(
        "busybox",
        vec!["true".into()],
        Resources::new(0.1, 0.1, 0.0, 0).map_err(|e| e.to_string())?,
    );

    let s = stores.tasks.clone();
    let d = timed(n, callers, move |i| {
        let (s, spec) = (s.clone(), spec.clone());
        async move {
            let t = TaskRecord::new(task_id(i), spec, Timestamp::from_millis(i as u64));
            s.insert_task(t).await.map_err(|e| e.to_string())
        }
    })
    .await?;
    rate("insert_task", n, d);

    let s = stores.tasks.clone();
    let d = timed(n, callers, move |i| {
        let s = s.clone();
        async move {
            let w = worker_id(i % 100);
            let change = TaskEvent::Assign {
                worker: w,
                gpus: vec![],
            }
            .blind_change(Timestamp::from_millis(10))
            .ok_or("an assignment is blind")?;
            match s.update_status(&task_id(i), &change).await {
                Ok(CasOutcome::Applied { .. }) => Ok(()),
                other => Err(format!("assign {i}: {other:?}")),
            }
        }
    })
    .await?;
    rate("update_status pending→running (assign)", n, d);

    let s = stores.tasks.clone();
    let d = timed(n, callers, move |i| {
        let s = s.clone();
        async move {
            let change = TaskEvent::report(worker_id(i % 100), 1, EndCause::Completed, None)
                .blind_change(Timestamp::from_millis(20))
                .ok_or("a success is blind")?;
            match s.update_status(&task_id(i), &change).await {
                Ok(CasOutcome::Applied { .. }) => Ok(()),
                other => Err(format!("complete {i}: {other:?}")),
            }
        }
    })
    .await?;
    rate("update_status running→completed (report)", n, d);

    let s = stores.tasks.clone();
    let d = timed(n, callers, move |i| {
        let s = s.clone();
        async move {
            // A success's change again: the task is completed, so rejected.
            let change = TaskEvent::report(worker_id(i % 100), 1, EndCause::Completed, None)
                .blind_change(Timestamp::from_millis(30))
                .ok_or("a success is blind")?;
            match s.update_status(&task_id(i), &change).await {
                Ok(CasOutcome::Rejected { .. }) => Ok(()),
                other => Err(format!("late report {i}: {other:?}")),
            }
        }
    })
    .await?;
    rate("update_status rejected (a report after the end)", n, d);

    let result = |i: usize| TaskResult {
        task_id: task_id(i),
        worker_id: worker_id(i % 100),
        attempt: 1,
        status: TaskStatus::Completed,
        cause: EndCause::Completed,
        exit_code: Some(0),
        logs: "done\n".into(),
        logs_offset: 0,
        signal: None,
        message: None,
        started_at: Some(Timestamp::from_millis(11)),
        finished_at: Timestamp::from_millis(20),
        usage: None,
    };
    let s = stores.tasks.clone();
    let d = timed(n, callers, move |i| {
        let s = s.clone();
        async move {
            match s.insert_result(result(i)).await {
                Ok(InsertOutcome::Inserted) => Ok(()),
                other => Err(format!("result {i}: {other:?}")),
            }
        }
    })
    .await?;
    rate("insert_result (first)", n, d);

    let s = stores.tasks.clone();
    let d = timed(n, callers, move |i| {
        let s = s.clone();
        async move {
            match s.insert_result(result(i)).await {
                Ok(InsertOutcome::AlreadyPresent) => Ok(()),
                other => Err(format!("duplicate result {i}: {other:?}")),
            }
        }
    })
    .await?;
    rate("insert_result (duplicate, refused)", n, d);

    let s = stores.registry.clone();
    let workers = args.workers.max(1);
    for w in 0..workers {
        s.upsert_worker(WorkerRecord::new(
            worker_id(w),
            Some("127.0.0.1:1".into()),
            Resources::new(4.0, 4.0, 0.0, 0).map_err(|e| e.to_string())?,
            Timestamp::ZERO,
        ))
        .await
        .map_err(|e| e.to_string())?;
    }
    let batches = n.div_ceil(workers);
    let started = Instant::now();
    for b in 0..batches {
        let beats: Vec<Heartbeat> = (0..workers)
            .map(|w| Heartbeat {
                worker: worker_id(w),
                at: Timestamp::from_millis(1000 + b as u64),
                telemetry: Telemetry::default(),
            })
            .collect();
        let unknown = s
            .record_heartbeats(&beats)
            .await
            .map_err(|e| e.to_string())?;
        if !unknown.is_empty() {
            return Err(format!("unknown workers: {unknown:?}"));
        }
    }
    let d = started.elapsed();
    rate(
        &format!("record_heartbeats ({workers} beats per batch)"),
        batches * workers,
        d,
    );
    println!(
        "  {:<44} {:>6} batches: {:.1} ms per batch",
        "",
        batches,
        d.as_secs_f64() * 1000.0 / batches as f64
    );
    close(stores).await;
    Ok(())
}

/// Counts what reaches the registry's heartbeat write.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn WorkerRegistry>,
    batches: AtomicU64,
    beats: AtomicU64,
    busy_micros: AtomicU64,
}

#[async_trait]
impl WorkerRegistry for Counting {
    /// Not counted: the benchmark's master runs alone, at term 0.
    fn fenced(&self, term: Term) -> Arc<dyn WorkerRegistry> {
        self.inner.fenced(term)
    }
    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        self.inner.upsert_worker(worker).await
    }
    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        self.inner.get_worker(id).await
    }
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.inner.list_workers().await
    }
    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        self.inner.remove_worker(id).await
    }
    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        self.inner.set_drain(id, drain).await
    }
    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        let started = Instant::now();
        let r = self.inner.record_heartbeats(beats).await;
        self.busy_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.beats.fetch_add(beats.len() as u64, Ordering::Relaxed);
        r
    }
}

/// A transport for workers that are never called (no tasks are submitted).
#[derive(Debug)]
struct Unreachable;

#[async_trait]
impl MasterToWorker for Unreachable {
    async fn master_register(&self, _: &WorkerEndpoint, _: &MasterInfo) -> Result<()> {
        Err(Error::Unavailable("benchmark workers take no calls".into()))
    }
    async fn assign(
        &self,
        _: &WorkerEndpoint,
        _: &RunningTask,
        _: &TaskSpec,
        _: &[u32],
    ) -> Result<()> {
        Err(Error::Unavailable("benchmark workers take no calls".into()))
    }
    async fn cancel(&self, _: &WorkerEndpoint, _: &RunningTask, _: Duration) -> Result<()> {
        Err(Error::Unavailable("benchmark workers take no calls".into()))
    }
    async fn follow_output(
        &self,
        _: &WorkerEndpoint,
        _: &RunningTask,
        _: OutputFrom,
        _: bool,
    ) -> Result<Follow> {
        Err(Error::Unavailable("benchmark workers take no calls".into()))
    }
    async fn identify(&self, _: &WorkerEndpoint) -> Result<WorkerIdentity> {
        Err(Error::Unavailable("benchmark workers take no calls".into()))
    }
    fn fenced(&self, _: cloudai_core::model::Term) -> Arc<dyn MasterToWorker> {
        Arc::new(Unreachable)
    }
}

async fn heartbeat_phase(args: &Args) -> Result<(), String> {
    let stores = open(&args.store, "hb").await?;
    let counting = Arc::new(Counting {
        inner: stores.registry.clone(),
        batches: AtomicU64::new(0),
        beats: AtomicU64::new(0),
        busy_micros: AtomicU64::new(0),
    });
    let master = Master::start(
        MasterConfig::default(),
        stores.tasks.clone(),
        counting.clone(),
        Arc::new(Unreachable),
        Clock::system(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let workers = args.workers.max(1);
    for w in 0..workers {
        master
            .register(Registration {
                worker: worker_id(w),
                instance: instance(w),
                address: format!("127.0.0.1:{}", 20_000 + w),
                capacity: Resources::new(4.0, 4.0, 0.0, 0).map_err(|e| e.to_string())?,
                gpus: vec![],
                allow_mounts: Vec::new(),
                labels: Default::default(),
                running: vec![],
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    // Start counting at a flush boundary's neighbourhood: whatever was
    // flushed before the phase is not counted.
    let (b0, n0) = (
        counting.batches.load(Ordering::Relaxed),
        counting.beats.load(Ordering::Relaxed),
    );
    let busy0 = counting.busy_micros.load(Ordering::Relaxed);
    let window = Duration::from_secs_f64(args.heartbeat_secs);
    let taken = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for k in 0..args.callers.max(1) {
        let (master, taken) = (master.clone(), taken.clone());
        set.spawn(async move {
            let mut i = k;
            while started.elapsed() < window {
                let reply = master
                    .heartbeat(
                        &WorkerIdentity {
                            id: worker_id(i % workers),
                            instance: instance(i % workers),
                        },
                        Telemetry::default(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if reply.register_again {
                    return Err(format!("worker {} unknown to the master", i % workers));
                }
                taken.fetch_add(1, Ordering::Relaxed);
                i += 1;
                // Yield so the driver (and its flushes) share the runtime.
                if i % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed();
    let batches = counting.batches.load(Ordering::Relaxed) - b0;
    let beats = counting.beats.load(Ordering::Relaxed) - n0;
    let busy = counting.busy_micros.load(Ordering::Relaxed) - busy0;
    let taken = taken.load(Ordering::Relaxed);
    println!(
        "  Master::heartbeat intake, {workers} workers, {} callers: {taken} beats in {:.2} s = {:.0} beats/s",
        args.callers,
        elapsed.as_secs_f64(),
        taken as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  store saw {batches} record_heartbeats batches ({:.2}/s), {beats} beats written ({:.0} per batch), {:.1} ms per batch",
        batches as f64 / elapsed.as_secs_f64(),
        beats as f64 / batches.max(1) as f64,
        busy as f64 / 1000.0 / batches.max(1) as f64
    );
    master.shutdown().await;
    close(stores).await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let label = if args.store == "memory" {
        "memory".to_string()
    } else {
        // Never print credentials.
        format!(
            "mongodb ({})",
            args.store
                .rsplit('@')
                .next()
                .unwrap_or_default()
                .trim_start_matches("mongodb://")
        )
    };
    if args.lease {
        return ha_lease::run(&args, &label).await;
    }
    println!(
        "store {label}: {} ops per phase, {} concurrent callers",
        args.ops, args.callers
    );
    store_phases(&args).await?;
    heartbeat_phase(&args).await?;
    Ok(())
}
