//! The master service, generic over the backend traits.
//!
//! Written once here so an embedding service and the example binary run the
//! same code. The store is the truth for every task's status; each change is
//! one compare-and-set through [`crate::apply`], so precedence holds with
//! any number of concurrent callers.
//!
//! | module | responsibility |
//! |---|---|
//! | `membership` | register (and the identity rule), pre-register, heartbeat, leave, reconnect, worker lost |
//! | `drain` | drain and undrain; the drain deadline |
//! | `dispatch` | submit, placement passes, assignments and their delivery |
//! | `stops` | cancel, bulk cancel, delivery of owed stops |
//! | `transitions` | applying an event and executing every effect it returns; reports; reconcile |
//! | `views` | read models: workers, tasks |
//! | `output` | a task's output relayed from its worker, or from its stored result |
//! | `probes` | metrics and readiness, for operators |
//! | `driver` | the one loop: deadlines, and the work state changes made owed |
//! | `state` | the in-memory caches (ledger, liveness, queue) and owed work, under one mutex never held across an `.await` |
//!
//! Nothing calls back up: a state change records the work it makes owed (a
//! placement pass, an assignment to send, a stop to deliver) and wakes the
//! driver, which performs it.
//!
//! Let each call run to completion: dropping one of its futures midway (a
//! caller that gives up) can leave a multi-step change half done. The gRPC
//! layer runs every call on its own task for this reason.

mod config;
mod dependencies;
mod dispatch;
mod drain;
mod driver;
mod leadership;
mod membership;
mod output;
mod owed_stops;
mod probes;
mod retention;
mod serving;
mod state;
mod stops;
mod tenured;
mod transitions;
mod update;
mod views;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch, Notify};

use crate::events::EventLog;
use crate::lease::Tenure;
use crate::ledger::LedgerError;
use crate::metrics::{FenceAlarm, MasterMetrics, MeteredStore};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::apply::Applied;
use crate::clock::Clock;
use crate::lifecycle::TaskEvent;
use crate::model::{RunningTask, TaskStatus, Term, Timestamp, ValidationError, WorkerId};
use crate::rng::SplitMix64;
use crate::store::{TaskFilter, TaskStore, WorkerRegistry};
use crate::sync::lock;
use crate::transport::{MasterToWorker, WorkerEndpoint};
use crate::Result;

pub use config::{ConfigError, MasterConfig};
pub use dependencies::ParentRef;
pub use dispatch::SubmitOptions;
pub use leadership::Leadership;
pub use output::{TaskFollow, TaskOutput};
pub use probes::READY_WITHIN;
pub use serving::Serving;
pub use stops::CancelOutcome;
pub use views::{short_reason, GpuView, TaskView, WorkerView, MAX_PAGE};

pub use crate::events::{Cursor, Event, EventWatch, MasterEvent, Resync};

use state::State;

struct Inner {
    config: MasterConfig,
    metrics: MasterMetrics,
    store: Arc<dyn TaskStore>,
    registry: Arc<dyn WorkerRegistry>,
    transport: Arc<dyn MasterToWorker>,
    clock: Clock,
    /// The term it acts in, and until when.
    tenure: Tenure,
    /// Flips when a write was fenced: another master took over.
    deposed: watch::Receiver<bool>,
    state: Mutex<State>,
    /// Wakes the driver: a deadline moved or work became owed.
    wake: Notify,
    events: Arc<EventLog>,
    /// The number of the last placement pass the driver ran.
    passes: watch::Sender<u64>,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    driver: Mutex<Option<JoinHandle<()>>>,
}

/// A running master. Cheap to clone; all clones drive the same master.
#[derive(Clone)]
pub struct Master {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Master {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Master")
            .field("id", &self.inner.config.id)
            .finish_non_exhaustive()
    }
}

impl Master {
    /// Starts a master: loads workers and pending tasks from the backends,
    /// reconciles allocations, and spawns the driver that fires liveness
    /// deadlines, reconnections, heartbeat flushes and periodic reconciles,
    /// and performs placements and stop deliveries.
    pub async fn start(
        config: MasterConfig,
        store: Arc<dyn TaskStore>,
        registry: Arc<dyn WorkerRegistry>,
        transport: Arc<dyn MasterToWorker>,
        clock: Clock,
    ) -> Result<Master> {
        Self::start_term(config, store, registry, transport, Tenure::single(clock)).await
    }

    /// [`Master::start`] for one term of a leader: `store` and `registry`
    /// are handles fenced at `tenure`'s term, and the master sends no write
    /// once the tenure ends. A fenced write flips [`Master::deposed`].
    pub async fn start_term(
        config: MasterConfig,
        store: Arc<dyn TaskStore>,
        registry: Arc<dyn WorkerRegistry>,
        transport: Arc<dyn MasterToWorker>,
        tenure: Tenure,
    ) -> Result<Master> {
        let metrics = MasterMetrics::new();
        Self::start_metered(config, store, registry, transport, tenure, metrics).await
    }

    /// [`Master::start_term`] into `metrics`: a process's terms share
    /// one set, so its counters do not start over at each takeover.
    pub(crate) async fn start_metered(
        config: MasterConfig,
        store: Arc<dyn TaskStore>,
        registry: Arc<dyn WorkerRegistry>,
        transport: Arc<dyn MasterToWorker>,
        tenure: Tenure,
        metrics: MasterMetrics,
    ) -> Result<Master> {
        config.check().map_err(|e| ValidationError::Invalid {
            field: "master config",
            reason: e.to_string(),
        })?;
        let clock = tenure.clock();
        // Every store and registry call is timed, whatever the backend.
        let alarm = FenceAlarm::new(metrics.fenced().clone());
        let store: Arc<dyn TaskStore> = Arc::new(MeteredStore::new(
            store,
            metrics.store().clone(),
            alarm.clone(),
            tenure.clone(),
        ));
        let registry: Arc<dyn WorkerRegistry> = Arc::new(MeteredStore::new(
            registry,
            metrics.store().clone(),
            alarm.clone(),
            tenure.clone(),
        ));
        // Every call to a worker carries the term, sent only while it acts.
        let transport = Arc::new(tenured::Tenured {
            tenure: tenure.clone(),
            inner: transport.fenced(tenure.term()),
        });
        let mut rng = SplitMix64::new(config.seed ^ clock.now().as_millis());
        // Its own epoch per run: a watcher's cursor from an earlier run (or
        // another master) is told to resync rather than read as this one's.
        let epoch = format!("{}.{:012x}", config.id, rng.below(1 << 48));
        let master = Master {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(rng.below(1 << 20)),
                events: Arc::new(EventLog::new(epoch, config.event_buffer)),
                state: Mutex::new(State::new(&config)),
                config,
                metrics,
                store,
                registry,
                transport,
                clock,
                deposed: alarm.subscribe(),
                tenure,
                wake: Notify::new(),
                passes: watch::channel(0).0,
                shutdown: watch::channel(false).0,
                driver: Mutex::new(None),
            }),
        };
        master.load().await?;
        let report = master.reconcile().await?;
        if !report.is_clean() {
            info!(
                corrections = report.corrections.len(),
                "reconciled allocations on start"
            );
        }
        let handle = tokio::spawn(driver::run(
            master.clone(),
            master.inner.shutdown.subscribe(),
        ));
        *lock(&master.inner.driver) = Some(handle);
        Ok(master)
    }

    /// Known workers get the benefit of the doubt (a heartbeat at start) and
    /// are asked to re-register so that each lists the tasks it still runs.
    /// Pending tasks join the queue (or wait out their retry delay); one
    /// whose previous attempt was still ending holds its resources there
    /// and is owed its stop again, and one whose worker is unknown has
    /// nothing left to end.
    async fn load(&self) -> Result<()> {
        let workers = self.inner.registry.list_workers().await?;
        let pending = self
            .inner
            .store
            .list_tasks(&TaskFilter::status([TaskStatus::Pending]))
            .await?;
        // Members that run hold their array's throttle before any
        // pending one is admitted.
        let running = self
            .inner
            .store
            .list_tasks(&TaskFilter::status([TaskStatus::Running]))
            .await?;
        let now = self.now();
        let count = workers.len();
        let mut orphaned = Vec::new();
        {
            let mut st = self.state();
            for w in workers {
                st.load_worker(w, now);
            }
            for t in running
                .iter()
                .chain(pending.iter().filter(|t| t.ending().is_some()))
            {
                st.count_admitted(t);
            }
            for t in &pending {
                match t.ending() {
                    None => st.enqueue_when_due(t, now),
                    Some((w, attempt)) => {
                        let run = RunningTask {
                            task: t.id.clone(),
                            attempt,
                        };
                        match st.hold(&t.id, w, t.spec.resources, &t.gpus, attempt) {
                            Err(LedgerError::UnknownWorker(_)) => {
                                orphaned.push((t.id.clone(), w.clone(), run));
                            }
                            held => {
                                // A worker now too small for it still has
                                // the run to stop; reconcile reports the
                                // overcommit.
                                if let Err(e) = held {
                                    warn!(task = %t.id, error = %e, "an ending run does not fit its worker's ledger");
                                }
                                st.owe_stop(w.clone(), run, Duration::ZERO, now);
                            }
                        }
                    }
                }
            }
            st.owe_queue_pass();
        }
        // Parents that ended while no master was there to see it.
        let live = pending.iter().chain(&running).map(|t| &t.id).collect();
        self.resolve_from_store(&pending, &live).await;
        for (id, worker, run) in orphaned {
            let ended = TaskEvent::StopConfirmed {
                worker,
                attempt: run.attempt,
            };
            let _: Applied = self.apply(&id, ended).await?;
        }
        info!(
            workers = count,
            pending = pending.len(),
            "master loaded state"
        );
        Ok(())
    }

    /// Stops the driver and writes pending heartbeats, and ends every
    /// event watch. Safe to call twice.
    pub async fn shutdown(&self) {
        self.close_watches();
        let _ = self.inner.shutdown.send(true);
        let handle = lock(&self.inner.driver).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    /// Live events about tasks and workers, from now on (a slow receiver
    /// may lag; [`Master::watch_events`] catches up instead).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.events.subscribe()
    }

    /// Every event after `from` (`None`: from now), each once and in
    /// order, or why `from` cannot be resumed without a gap.
    pub fn watch_events(&self, from: Option<&Cursor>) -> std::result::Result<EventWatch, Resync> {
        self.inner.events.watch(from)
    }

    /// Ends every event watch, now and later (a server shutting down calls
    /// it, so open streams do not hold it up).
    pub fn close_watches(&self) {
        self.inner.events.close();
    }

    /// The cursor after the newest event: where a watch from now starts.
    pub fn event_cursor(&self) -> Cursor {
        self.inner.events.cursor()
    }

    /// The settings in force.
    pub fn config(&self) -> &MasterConfig {
        &self.inner.config
    }

    /// The time on the master's clock.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// The term this master acts in (0: a single master without a lease).
    pub fn term(&self) -> Term {
        self.inner.tenure.term()
    }

    /// Whether it may act now: its tenure has not ended and no write of
    /// its was fenced.
    pub fn acting(&self) -> bool {
        !*self.inner.deposed.borrow() && self.inner.tenure.acting()
    }

    /// Whether `other` is this very master (not another one, or another
    /// term's).
    pub fn is(&self, other: &Master) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Flips to `true` once a write of this master's was fenced: another
    /// master took over, and this one must stop.
    pub fn deposed(&self) -> watch::Receiver<bool> {
        self.inner.deposed.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Releases the state and wakes the driver if the change made work owed.
    fn done(&self, st: MutexGuard<'_, State>) {
        let owed = st.owes_work();
        drop(st);
        if owed {
            self.inner.wake.notify_one();
        }
    }

    fn endpoint(&self, worker: &WorkerId) -> Option<WorkerEndpoint> {
        let st = self.state();
        Some(WorkerEndpoint {
            id: worker.clone(),
            instance: st.instance(worker),
            address: st.address(worker)?,
        })
    }

    fn emit(&self, event: MasterEvent) {
        self.inner.events.push(self.now(), event);
    }

    /// Waits for work the driver performs; `None` if the master stops
    /// first.
    async fn until_shutdown<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        let mut shutdown = self.inner.shutdown.subscribe();
        tokio::select! {
            done = work => Some(done),
            _ = shutdown.wait_for(|stopped| *stopped) => None,
        }
    }

    /// Retries a store operation that must not be dropped (a requeue, a
    /// failure, a worker loss) with backoff until the store answers; `None`
    /// once this master no longer acts (a fenced write, or its term
    /// ended): the next leader loads the work from the store instead.
    async fn surely<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut failures = 0;
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) if matches!(e, crate::Error::Fenced { .. }) || !self.acting() => {
                    warn!(error = %e, "store write given up: this master no longer acts");
                    return None;
                }
                Err(e) => {
                    failures += 1;
                    let jitter = self.state().jitter();
                    let delay = self.inner.config.backoff.delay(failures, jitter);
                    warn!(error = %e, retry_in = ?delay, "store write must not be lost; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
