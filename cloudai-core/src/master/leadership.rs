//! Leadership: a [`Master`] that runs only while it holds the lease.
//!
//! Several masters share one store; each runs a [`Leadership`]. The one
//! whose [`LeaseKeeper`] takes the lease at term T raises every fence to
//! T, then starts a master on store handles fenced at T, which loads and
//! reconciles as after a restart. When the lease is lost, its acting
//! deadline passes or one of its writes is fenced, that master shuts
//! down and this one follows again. While it leads it adopts, every TTL,
//! the pending tasks an older term stored after the raise.

use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Master, MasterConfig};
use crate::clock::Clock;
use crate::lease::{Candidate, LeaseKeeper, Role, Tenure};
use crate::metrics::{LeaseMetrics, MasterMetrics};
use crate::model::{Term, Timestamp, ValidationError};
use crate::store::{LeaseRecord, LeaseStore, TaskStore, WorkerRegistry};
use crate::sync::lock;
use crate::transport::MasterToWorker;
use crate::{Error, Result};

/// How many pending tasks one adoption round takes.
const ADOPT_BATCH: usize = 1_000;

/// What a master needs to start in a term.
#[derive(Debug, Clone)]
struct Office {
    config: MasterConfig,
    store: Arc<dyn TaskStore>,
    registry: Arc<dyn WorkerRegistry>,
    lease: Arc<dyn LeaseStore>,
    transport: Arc<dyn MasterToWorker>,
    clock: Clock,
    /// Shared by every term's master.
    metrics: MasterMetrics,
}

/// A master that acts only while it holds the lease. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keeper: LeaseKeeper,
    current: watch::Sender<Option<Master>>,
    task: Mutex<Option<JoinHandle<()>>>,
    metrics: LeaseMetrics,
    master_metrics: MasterMetrics,
}

impl Leadership {
    /// Starts following (and leading when it takes the lease) as the
    /// master `config` describes. `run` names this process start; `store`,
    /// `registry` and `lease` are one backend's handles.
    pub fn start(
        config: MasterConfig,
        store: Arc<dyn TaskStore>,
        registry: Arc<dyn WorkerRegistry>,
        lease: Arc<dyn LeaseStore>,
        transport: Arc<dyn MasterToWorker>,
        clock: Clock,
        run: String,
    ) -> Result<Leadership> {
        config.check_lease().map_err(|e| ValidationError::Invalid {
            field: "master config",
            reason: e.to_string(),
        })?;
        let me = Candidate {
            id: config.id.clone(),
            run,
            address: config.advertise_address.clone(),
        };
        let metrics = LeaseMetrics::new();
        let keeper =
            LeaseKeeper::spawn(lease.clone(), me, config.lease_ttl, clock, metrics.clone());
        let role = keeper.role();
        let master_metrics = MasterMetrics::new();
        let inner = Arc::new(Inner {
            keeper,
            current: watch::channel(None).0,
            task: Mutex::new(None),
            metrics,
            master_metrics: master_metrics.clone(),
        });
        let office = Office {
            config,
            store,
            registry,
            lease,
            transport,
            clock,
            metrics: master_metrics,
        };
        let task = tokio::spawn(lead(inner.clone(), office, role));
        *lock(&inner.task) = Some(task);
        Ok(Leadership { inner })
    }

    /// The master acting now, if this one leads.
    pub fn current(&self) -> Option<Master> {
        self.inner.current.borrow().clone()
    }

    /// The acting master, now and as it changes.
    pub fn masters(&self) -> watch::Receiver<Option<Master>> {
        self.inner.current.subscribe()
    }

    /// This master's role, now and as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.inner.keeper.role()
    }

    /// Who leads, as far as this master knows: itself, or the holder of
    /// the lease it last read.
    pub fn leader(&self) -> Option<LeaseRecord> {
        match &*self.inner.keeper.role().borrow() {
            Role::Leading { .. } => self.inner.keeper.held(),
            Role::Following { leader } => leader.clone(),
        }
    }

    /// The master to answer a call with: the one acting now.
    /// [`Error::NotLeader`] on a follower, naming the leader's address
    /// when it knows one; [`Error::Unavailable`] while this one is taking
    /// over (raising the fences, loading, reconciling) or stepping down.
    pub fn acting(&self) -> Result<Master> {
        if let Some(m) = self.current().filter(Master::acting) {
            return Ok(m);
        }
        match &*self.inner.keeper.role().borrow() {
            Role::Leading { term, .. } => Err(Error::Unavailable(format!(
                "taking over as the leader (term {term}); retry shortly"
            ))),
            Role::Following { leader } => Err(Error::NotLeader {
                leader: leader
                    .as_ref()
                    .filter(|l| l.holder.is_some())
                    .map(|l| l.address.clone()),
            }),
        }
    }

    /// On a follower, what its probes say:
    /// `follower; leader <id> at <address>`. `None` while this master leads.
    pub fn following(&self) -> Option<String> {
        match &*self.inner.keeper.role().borrow() {
            Role::Leading { .. } => None,
            Role::Following { leader } => Some(match leader {
                Some(LeaseRecord {
                    holder: Some(holder),
                    address,
                    ..
                }) => format!("follower; leader {holder} at {address}"),
                _ => "follower; no master leads right now".to_string(),
            }),
        }
    }

    /// The lease metrics, kept across terms.
    pub fn metrics(&self) -> &LeaseMetrics {
        &self.inner.metrics
    }

    /// The masters' metrics, shared by every term's master.
    pub fn master_metrics(&self) -> &MasterMetrics {
        &self.inner.master_metrics
    }

    /// Stops at once without releasing the lease, as a crashed process
    /// would: the master stops acting now (its driver winds down in the
    /// background, sending nothing), and the lease expires by itself.
    pub fn abort(&self) {
        if let Some(t) = lock(&self.inner.task).take() {
            t.abort();
        }
        self.inner.keeper.abort();
        if let Some(m) = self.inner.current.send_replace(None) {
            tokio::spawn(async move { m.shutdown().await });
        }
    }

    /// Graceful stop: the lease is released so that another master takes
    /// over at once, then the master that acted shuts down. Releasing ends
    /// its tenure before the lease is cleared, so it sends nothing more;
    /// calls it had sent meet the next leader's fences, as a crashed
    /// master's do. (Shutting down first held the lease while a slow
    /// store drained the master's last writes: 17 s on nx-27017 under
    /// 1,000 workers.)
    pub async fn shutdown(&self) {
        if let Some(t) = lock(&self.inner.task).take() {
            t.abort();
        }
        if let Err(e) = self.inner.keeper.release().await {
            warn!(error = %e, "could not release the lease; it expires by itself");
        }
        if let Some(m) = self.inner.current.send_replace(None) {
            m.shutdown().await;
        }
    }
}

/// Follows until the keeper says this master leads, serves the term, and
/// again.
async fn lead(inner: Arc<Inner>, office: Office, mut role: watch::Receiver<Role>) {
    while let Some((term, since)) = acting_stretch(&mut role, office.clock).await {
        let master = match take_office(&office, term, since, role.clone()).await {
            Ok(master) => master,
            Err(e) => {
                warn!(%term, error = %e, "could not take office; retrying");
                tokio::time::sleep(office.config.lease_ttl / 6).await;
                continue;
            }
        };
        inner.current.send_replace(Some(master.clone()));
        serve(&office, &master, (term, since), &mut role).await;
        inner.current.send_replace(None);
        let deposed = *master.deposed().borrow();
        master.shutdown().await;
        info!(%term, deposed, "stopped acting");
        if deposed {
            // Fenced: a later term exists, and the keeper is about to find
            // its renewal refused. Lead again only in another term.
            while matches!(*role.borrow_and_update(), Role::Leading { term: t, .. } if t == term) {
                if role.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits until the keeper says this master leads and may act; the
/// stretch of leading, `(term, since)`. (A role still leading past its
/// deadline waits for the keeper to renew or step down.) `None` once the
/// keeper is gone.
async fn acting_stretch(
    role: &mut watch::Receiver<Role>,
    clock: Clock,
) -> Option<(Term, Timestamp)> {
    loop {
        if let Role::Leading { term, since, until } = *role.borrow_and_update() {
            if clock.now() < until {
                return Some((term, since));
            }
        }
        role.changed().await.ok()?;
    }
}

/// Raises the fences to `term` and starts a master fenced at it, acting
/// in the stretch that began at `since`.
async fn take_office(
    office: &Office,
    term: Term,
    since: Timestamp,
    role: watch::Receiver<Role>,
) -> Result<Master> {
    let began = StdInstant::now();
    let raised = office.lease.raise_fence(term).await?;
    let raise = began.elapsed();
    let tenure = Tenure::new(term, since, role, office.clock);
    let master = Master::start_metered(
        office.config.clone(),
        office.store.fenced(term),
        office.registry.fenced(term),
        office.transport.clone(),
        tenure,
        office.metrics.clone(),
    )
    .await?;
    let took = began.elapsed();
    info!(%term, raised, raise = ?raise, load = ?(took - raise), "leading");
    let takeover = office.config.lease_ttl * 3 / 2 + took;
    if takeover >= office.config.stop_margin() {
        warn!(
            ?took,
            stop_margin = ?office.config.stop_margin(),
            "this takeover's raise and load leave workers too little time: those cut off for 1.5 lease TTLs plus this long stop their runs; raise --lost-after"
        );
    }
    Ok(master)
}

/// Serves the stretch `(term, since)` until the master stops acting (its
/// stretch ends: a later one, even in the same term, gets a new master),
/// adopting every TTL the pending tasks an older term stored after the
/// raise.
async fn serve(
    office: &Office,
    master: &Master,
    stretch: (Term, Timestamp),
    role: &mut watch::Receiver<Role>,
) {
    let term = stretch.0;
    let mut deposed = master.deposed();
    let ttl = office.config.lease_ttl;
    let mut next_adopt = office.clock.now().saturating_add(ttl);
    loop {
        let until = match *role.borrow() {
            Role::Leading { until, .. } if role.borrow().stretch() == Some(stretch) => until,
            _ => return,
        };
        if !master.acting() {
            return;
        }
        tokio::select! {
            changed = role.changed() => if changed.is_err() { return },
            _ = deposed.changed() => {}
            _ = tokio::time::sleep_until(office.clock.instant_at(until)) => {}
            _ = tokio::time::sleep_until(office.clock.instant_at(next_adopt)) => {
                next_adopt = office.clock.now().saturating_add(ttl);
                if master.acting() {
                    match office.lease.adopt_pending(term, ADOPT_BATCH).await {
                        Ok(tasks) if !tasks.is_empty() => {
                            info!(%term, tasks = tasks.len(), "adopted tasks an older term stored");
                            master.adopt_stored(&tasks).await;
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "could not adopt pending tasks"),
                    }
                }
            }
        }
    }
}
