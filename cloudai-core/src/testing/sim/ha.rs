//! Several masters on one store, each under a [`Leadership`] and through a
//! [`StoreGate`] of its own: pauses, cuts, crashes, restarts, graceful
//! handovers and a slow clock, with the lease's invariants checked.
//!
//! Each master process answers at its own address (`m0:1`, ...); worker
//! links follow redirects and new leaders' calls as real workers do.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Checker, Faults, RunningSet, SimCluster, SimNet};
use crate::clock::Clock;
use crate::lease::Role;
use crate::master::{Leadership, Master, MasterConfig};
use crate::memory::MemoryStore;
use crate::model::{Term, Timestamp};
use crate::store::{LeaseStore, TaskStore, WorkerRegistry};
use crate::sync::lock;
use crate::testing::gate::{Passage, StoreGate};

/// How fast a master's clock runs under the slow-clock fault.
const SLOW: f64 = 0.5;

/// The masters of a cluster from [`SimCluster::start_ha`].
pub(super) struct Ha {
    config: MasterConfig,
    masters: Vec<SimMaster>,
    windows: Arc<Mutex<Vec<ActingWindow>>>,
    /// The master whose clock runs at half speed, if that fault is on.
    slow: Option<usize>,
    /// The highest term seen in the lease.
    term: Term,
    /// The highest fence each document was seen to have.
    fences: BTreeMap<String, Term>,
}

struct SimMaster {
    gate: Arc<StoreGate>,
    leadership: Option<Leadership>,
    watchers: Vec<JoinHandle<()>>,
    starts: u32,
}

/// A span of virtual time in which one master could act: from its keeper
/// publishing that it leads, to its stepping down or its acting deadline,
/// whichever came first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActingWindow {
    /// Which master.
    pub master: usize,
    /// In which term.
    pub term: Term,
    /// When the stretch of leading began, on its master's clock.
    pub since: Timestamp,
    /// From when.
    pub from: Instant,
    /// Until when (for an open window, its current deadline).
    pub to: Instant,
    open: bool,
}

impl Ha {
    /// Starts master `i` (again): a new process, with a gate of its own.
    fn launch(
        &mut self,
        i: usize,
        net: &Arc<SimNet>,
        checker: &Checker,
        clock: Clock,
        store: &MemoryStore,
    ) {
        let rate = if self.slow == Some(i) { SLOW } else { 1.0 };
        let clock = clock.with_rate(rate);
        let gate = Arc::new(StoreGate::new(store));
        let m = &mut self.masters[i];
        m.starts += 1;
        m.gate = gate.clone();
        let address = format!("m{i}:1");
        let leadership = Leadership::start(
            MasterConfig {
                id: format!("m{i}"),
                advertise_address: address.clone(),
                ..self.config.clone()
            },
            gate.clone() as Arc<dyn TaskStore>,
            gate.clone() as Arc<dyn WorkerRegistry>,
            gate as Arc<dyn LeaseStore>,
            net.clone(),
            clock,
            format!("m{i}.{}", m.starts),
        )
        .expect("the simulation's master config is valid");
        for w in m.watchers.drain(..) {
            w.abort();
        }
        net.attach_master(address, leadership.clone().into());
        m.watchers.push(tokio::spawn(watch_masters(
            leadership.clone(),
            checker.shared.clone(),
            rate,
        )));
        m.watchers.push(tokio::spawn(record_windows(
            i,
            leadership.clone(),
            clock,
            self.windows.clone(),
        )));
        m.leadership = Some(leadership);
    }

    /// Checks the lease's invariants; returns what broke.
    async fn check(&mut self, store: &MemoryStore) -> Vec<String> {
        let mut broken = Vec::new();
        if let Ok(Some(lease)) = store.read_lease().await {
            if lease.term < self.term {
                broken.push(format!(
                    "the lease went back from term {} to {}",
                    self.term, lease.term
                ));
            }
            self.term = self.term.max(lease.term);
        }
        for w in store.take_writes() {
            if let Some(fence) = w.fence {
                if fence > w.term {
                    broken.push(format!(
                        "a write of term {} landed on {} fenced at {fence}",
                        w.term, w.document
                    ));
                }
                let seen = self.fences.entry(w.document.clone()).or_default();
                if fence < *seen {
                    broken.push(format!(
                        "the fence of {} went back from {seen} to {fence}",
                        w.document
                    ));
                }
            }
            let seen = self.fences.entry(w.document).or_default();
            *seen = (*seen).max(w.term).max(w.fence.unwrap_or_default());
        }
        if self.slow.is_none() {
            let windows = lock(&self.windows).clone();
            for (i, a) in windows.iter().enumerate() {
                for b in &windows[i + 1..] {
                    if a.master != b.master && a.from < b.to && b.from < a.to {
                        broken.push(format!("two masters acted at once: {a:?} and {b:?}"));
                    }
                }
            }
        }
        broken
    }
}

/// Keeps the checker watching each master `l` runs.
async fn watch_masters(l: Leadership, checker: Arc<super::Watching>, rate: f64) {
    let mut masters = l.masters();
    drop(l);
    loop {
        if let Some(m) = masters.borrow_and_update().clone() {
            checker.watch(&m, rate);
        }
        if masters.changed().await.is_err() {
            return;
        }
    }
}

/// Records master `i`'s acting windows from its role.
async fn record_windows(
    i: usize,
    l: Leadership,
    clock: Clock,
    windows: Arc<Mutex<Vec<ActingWindow>>>,
) {
    let mut role = l.role();
    drop(l);
    loop {
        let now = Instant::now();
        let current = role.borrow_and_update().clone();
        {
            let mut all = lock(&windows);
            let open = all.iter_mut().rev().find(|w| w.master == i && w.open);
            match (current, open) {
                (Role::Leading { term, since, until }, Some(w))
                    if (w.term, w.since) == (term, since) =>
                {
                    w.to = clock.instant_at(until);
                }
                (Role::Leading { term, since, until }, open) => {
                    if let Some(w) = open {
                        w.to = w.to.min(now);
                        w.open = false;
                    }
                    all.push(ActingWindow {
                        master: i,
                        term,
                        since,
                        from: now,
                        to: clock.instant_at(until),
                        open: true,
                    });
                }
                (Role::Following { .. }, Some(w)) => {
                    w.to = w.to.min(now);
                    w.open = false;
                }
                (Role::Following { .. }, None) => {}
            }
        }
        if role.changed().await.is_err() {
            return;
        }
    }
}

impl SimCluster {
    /// `count` masters with `config` sharing one store under the lease,
    /// no workers, on network faults `faults`; master `slow` (if any) has
    /// a clock at half speed. Returns once one of them leads.
    pub async fn start_ha(
        seed: u64,
        faults: Faults,
        config: MasterConfig,
        count: usize,
        slow: Option<usize>,
    ) -> SimCluster {
        let clock = Clock::starting_at(Timestamp::from_millis(1_700_000_000_000));
        let net = SimNet::new(seed, faults);
        let store = Arc::new(MemoryStore::new());
        store.log_writes();
        let violations: Arc<Mutex<Vec<String>>> = Arc::default();
        let running = Arc::new(RunningSet::new(violations.clone(), config.liveness.timeout));
        let checker = Checker::new(
            config.liveness.timeout,
            faults.max_delay,
            violations,
            running.clone(),
        );
        let mut ha = Ha {
            config,
            masters: Vec::new(),
            windows: Arc::default(),
            slow,
            term: Term::ZERO,
            fences: BTreeMap::new(),
        };
        for i in 0..count {
            ha.masters.push(SimMaster {
                gate: Arc::new(StoreGate::new(&store)),
                leadership: None,
                watchers: Vec::new(),
                starts: 0,
            });
            ha.launch(i, &net, &checker, clock, &store);
        }
        let master = loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if let Some(m) = net.current_master() {
                break m;
            }
        };
        let mut c = SimCluster::assemble(seed, net, store, master, clock, checker, running);
        c.ha = Some(ha);
        c
    }

    /// The master acting now, if any (in a single-master cluster, its
    /// master).
    pub fn leader(&self) -> Option<Master> {
        match &self.ha {
            Some(_) => self.net.current_master(),
            None => Some(self.master.clone()),
        }
    }

    fn ha(&mut self) -> &mut Ha {
        self.ha.as_mut().expect("a cluster from start_ha")
    }

    /// Every acting window so far, in the order they opened.
    pub fn acting_windows(&self) -> Vec<ActingWindow> {
        self.ha
            .as_ref()
            .map(|h| lock(&h.windows).clone())
            .unwrap_or_default()
    }

    /// How many masters there are.
    pub fn masters(&self) -> usize {
        self.ha.as_ref().map_or(1, |h| h.masters.len())
    }

    /// Master `i`'s process stops being scheduled: its store calls wait,
    /// and land when it resumes ([`SimCluster::resume_master`]).
    pub fn pause_master(&mut self, i: usize) {
        self.net.pause_master(&format!("m{i}:1"));
        self.ha().masters[i].gate.set(Passage::Held);
    }

    /// Master `i` resumes (or reaches the store again after a cut).
    pub fn resume_master(&mut self, i: usize) {
        self.net.unpause_master(&format!("m{i}:1"));
        self.ha().masters[i].gate.set(Passage::Open);
    }

    /// Master `i`'s store stalls: its process answers calls, but its store
    /// calls wait, and land when the way opens again
    /// ([`SimCluster::resume_master`], or a crash: its calls already on
    /// their way land).
    pub fn hold_store(&mut self, i: usize) {
        self.ha().masters[i].gate.set(Passage::Held);
    }

    /// Master `i` is cut off from the store: its calls fail.
    pub fn cut_master(&mut self, i: usize) {
        self.ha().masters[i].gate.set(Passage::Cut);
    }

    /// `kill -9` of master `i`: it stops at once without releasing the
    /// lease; its calls already on their way land.
    pub fn crash_master(&mut self, i: usize) {
        self.net.detach_master(&format!("m{i}:1"));
        let m = &mut self.ha().masters[i];
        if let Some(l) = m.leadership.take() {
            l.abort();
        }
        m.gate.set(Passage::Open);
    }

    /// Starts crashed master `i` again, as a new process.
    pub fn restart_master(&mut self, i: usize) {
        let (net, clock, store) = (self.net.clone(), self.clock, self.store.clone());
        let checker = &self.checker;
        let ha = self.ha.as_mut().expect("a cluster from start_ha");
        if ha.masters[i].leadership.is_none() {
            ha.launch(i, &net, checker, clock, &store);
        }
    }

    /// SIGTERM to master `i`, then a new process: it shuts down and
    /// releases the lease, so another takes over at once. (A paused
    /// process handles the signal once it runs: it is resumed first.)
    pub async fn hand_over(&mut self, i: usize) {
        if self.ha().masters[i].gate.passage() == Passage::Held {
            self.resume_master(i);
        }
        let m = &mut self.ha().masters[i];
        let l = m.leadership.take();
        if let Some(l) = l {
            l.shutdown().await;
        }
        self.restart_master(i);
    }

    /// Every master reaches the store, and every crashed one runs again.
    pub fn heal_masters(&mut self) {
        for i in 0..self.masters() {
            self.resume_master(i);
            self.restart_master(i);
        }
    }

    /// Checks the lease's invariants (with [`SimCluster::check`]).
    pub(super) async fn check_ha(&mut self) -> Vec<String> {
        let store = self.store.clone();
        match self.ha.as_mut() {
            Some(ha) => ha.check(&store).await,
            None => Vec::new(),
        }
    }

    /// Stops every master.
    pub(super) fn stop_ha(&mut self) {
        if let Some(ha) = self.ha.as_mut() {
            for m in &mut ha.masters {
                if let Some(l) = m.leadership.take() {
                    l.abort();
                }
                for w in m.watchers.drain(..) {
                    w.abort();
                }
            }
        }
    }
}
