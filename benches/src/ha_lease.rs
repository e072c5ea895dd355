//! `store --lease`: the master lease's timings and safety (the store
//! binary's module doc lists the phases; `benches/ha-lease.sh` runs them
//! and prints the table).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cloudai_core::clock::Clock;
use cloudai_core::lease::{Candidate, LeaseKeeper, Role, Tenure};
use cloudai_core::master::{Leadership, Master, MasterConfig};
use cloudai_core::memory::MemoryStore;
use cloudai_core::metrics::LeaseMetrics;
use cloudai_core::model::{Resources, TaskRecord, TaskSpec, Term, Timestamp};
use cloudai_core::rng::SplitMix64;
use cloudai_core::store::{LeaseRecord, LeaseStore};
use tokio::sync::watch;

use crate::{close, open, task_id, Args, Stores, Unreachable};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile `p` (0–100) of `v`, `None` when empty.
fn percentile(v: &[Duration], p: f64) -> Option<Duration> {
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.clamp(1, s.len().max(1)) - 1).copied()
}

fn median(v: &[Duration]) -> Option<Duration> {
    percentile(v, 50.0)
}

/// A lease record for the benchmark's own (keeper-less) lease calls.
fn record(holder: &str, term: Term, version: u64, ttl: Duration) -> LeaseRecord {
    LeaseRecord {
        holder: Some(holder.into()),
        run: "bench".into(),
        address: "127.0.0.1:1".into(),
        term,
        version,
        ttl,
    }
}

/// The lease as `holder` holds it.
#[derive(Debug, Clone, Copy)]
struct Held {
    term: Term,
    version: u64,
}

/// Creates the lease for `holder`, or takes it over at the next term
/// (whoever holds it: the phases run one after the other).
async fn take_next(lease: &dyn LeaseStore, holder: &str, ttl: Duration) -> Result<Held, String> {
    match lease.read_lease().await.map_err(err)? {
        None => {
            let term = Term::new(1);
            lease
                .create_lease(&record(holder, term, 0, ttl))
                .await
                .map_err(err)?;
            Ok(Held { term, version: 0 })
        }
        Some(r) => {
            let term = r.term.next();
            if !lease
                .swap_lease(r.term, r.version, &record(holder, term, 0, ttl))
                .await
                .map_err(err)?
            {
                return Err("the lease moved under a benchmark takeover".into());
            }
            Ok(Held { term, version: 0 })
        }
    }
}

/// Clears the lease's holder (if any), as a release would.
async fn free_lease(lease: &dyn LeaseStore) -> Result<(), String> {
    if let Some(r) = lease.read_lease().await.map_err(err)? {
        if r.holder.is_some() {
            let mut cleared = r.clone();
            cleared.holder = None;
            cleared.version = r.version.saturating_add(1);
            lease
                .swap_lease(r.term, r.version, &cleared)
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}

fn master_config(id: &str, ttl: Duration) -> MasterConfig {
    MasterConfig {
        id: id.into(),
        advertise_address: "127.0.0.1:1".into(),
        lease_ttl: ttl,
        ..MasterConfig::default()
    }
}

fn run_id(rng: &mut SplitMix64) -> String {
    format!("run-{:016x}", rng.next_u64())
}

fn leading(r: &Role) -> bool {
    matches!(r, Role::Leading { .. })
}

fn leads(k: &LeaseKeeper) -> bool {
    leading(&k.role().borrow())
}

/// Waits until `role` satisfies `f`, at most `within`.
async fn wait_role(
    mut role: watch::Receiver<Role>,
    within: Duration,
    what: &str,
    f: impl FnMut(&Role) -> bool,
) -> Result<(), String> {
    match tokio::time::timeout(within, async { role.wait_for(f).await.map(|_| ()) }).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(format!("{what}: the keeper stopped")),
        Err(_) => Err(format!("{what}: not within {within:?}")),
    }
}

/// Stores `n` pending tasks, 1,000 per `insert_tasks`.
async fn insert_pending(stores: &Stores, n: usize) -> Result<Duration, String> {
    let spec = TaskSpec::new(
        "busybox",
        vec!["true".into()],
        Resources::new(0.1, 0.1, 0.0, 0).map_err(err)?,
    );
    let started = Instant::now();
    for from in (0..n).step_by(1_000) {
        let batch = (from..(from + 1_000).min(n))
            .map(|i| TaskRecord::new(task_id(i), spec.clone(), Timestamp::from_millis(i as u64)))
            .collect();
        stores.tasks.insert_tasks(batch).await.map_err(err)?;
    }
    Ok(started.elapsed())
}

/// Phase 1's numbers.
#[derive(Debug, Default)]
struct Renewals {
    /// Latencies of the renewals in flight while a raise ran.
    during: Vec<Duration>,
    /// Renewals while no raise ran.
    other: usize,
    refused: u64,
    errors: u64,
    raises: Vec<Duration>,
    raised: u64,
}

/// Renews the lease every TTL/3 (the keeper's cadence) on its own task,
/// timing each `swap_lease`, while takeovers raise the fence back to back,
/// until `want` renewals were in flight during a raise.
async fn renewals_under_raise(
    lease: Arc<dyn LeaseStore>,
    ttl: Duration,
    want: usize,
) -> Result<Renewals, String> {
    const WHO: &str = "bench-raiser";
    let held = Arc::new(tokio::sync::Mutex::new(take_next(&*lease, WHO, ttl).await?));
    // Odd while a raise runs.
    let generation = Arc::new(AtomicU64::new(0));
    let under = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (lease, held, generation, under, stop) = (
            lease.clone(),
            held.clone(),
            generation.clone(),
            under.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let period = ttl / 3;
            let mut out = Renewals::default();
            let mut next = tokio::time::Instant::now() + period;
            loop {
                tokio::time::sleep_until(next).await;
                if stop.load(Ordering::SeqCst) {
                    return out;
                }
                let mut h = held.lock().await;
                let g0 = generation.load(Ordering::SeqCst);
                let sent = tokio::time::Instant::now();
                next = sent + period;
                let renewed = record(WHO, h.term, h.version + 1, ttl);
                let r = lease.swap_lease(h.term, h.version, &renewed).await;
                let took = sent.elapsed();
                let g1 = generation.load(Ordering::SeqCst);
                match r {
                    Ok(true) => h.version += 1,
                    Ok(false) => out.refused += 1,
                    Err(_) => out.errors += 1,
                }
                drop(h);
                if g0 % 2 == 1 || g1 != g0 {
                    out.during.push(took);
                    under.fetch_add(1, Ordering::SeqCst);
                } else {
                    out.other += 1;
                }
            }
        })
    };
    let began = Instant::now();
    let cap = ttl * 3 * u32::try_from(want.max(1)).unwrap_or(u32::MAX) + Duration::from_secs(60);
    let mut raises = Vec::new();
    let mut raised = 0;
    let outcome = loop {
        let term = {
            let mut h = held.lock().await;
            let next = h.term.next();
            match lease
                .swap_lease(h.term, h.version, &record(WHO, next, 0, ttl))
                .await
            {
                Ok(true) => {}
                Ok(false) => break Err("the lease moved under the raise phase".to_string()),
                Err(e) => break Err(err(e)),
            }
            *h = Held {
                term: next,
                version: 0,
            };
            next
        };
        generation.fetch_add(1, Ordering::SeqCst);
        let t = Instant::now();
        let r = lease.raise_fence(term).await;
        raises.push(t.elapsed());
        generation.fetch_add(1, Ordering::SeqCst);
        match r {
            Ok(n) => raised = n,
            Err(e) => break Err(err(e)),
        }
        if under.load(Ordering::SeqCst) as usize >= want || began.elapsed() > cap {
            break Ok(());
        }
    };
    stop.store(true, Ordering::SeqCst);
    let mut out = renewer.await.map_err(err)?;
    outcome?;
    out.raises = raises;
    out.raised = raised;
    Ok(out)
}

/// Phase 2: one takeover's raise and `Master::start_term` (load and
/// reconcile) on fenced handles. Returns (raise, load, documents raised).
async fn raise_and_load(
    stores: &Stores,
    ttl: Duration,
) -> Result<(Duration, Duration, u64), String> {
    let held = take_next(&*stores.lease, "bench-loader", ttl).await?;
    let began = Instant::now();
    let raised = stores.lease.raise_fence(held.term).await.map_err(err)?;
    let raise = began.elapsed();
    let (_role, rx) = watch::channel(Role::Leading {
        term: held.term,
        since: Timestamp::ZERO,
        until: Timestamp::from_millis(u64::MAX),
    });
    let clock = Clock::system();
    let began = Instant::now();
    let master = Master::start_term(
        master_config("bench-loader", ttl),
        stores.tasks.fenced(held.term),
        stores.registry.fenced(held.term),
        Arc::new(Unreachable),
        Tenure::new(held.term, Timestamp::ZERO, rx, clock),
    )
    .await
    .map_err(err)?;
    let load = began.elapsed();
    master.shutdown().await;
    Ok((raise, load, raised))
}

/// One takeover's numbers.
#[derive(Debug, Clone, Copy)]
struct Takeover {
    /// From A's crash or release to B's role becoming `Leading`.
    took: Duration,
    /// B's `raise_fence`.
    raise: Duration,
    /// B's `Master::start_term` (load and reconcile), roughly: from its
    /// role leading to its master serving, less the raise.
    load: Duration,
}

/// A keeper A leads; a [`Leadership`] B follows on the same store; A
/// crashes (its keeper dropped) or releases at a random phase of the
/// cadences; times B's takeover, raise and load.
async fn takeover(
    stores: &Stores,
    ttl: Duration,
    crash: bool,
    rng: &mut SplitMix64,
) -> Result<Takeover, String> {
    free_lease(&*stores.lease).await?;
    let clock = Clock::system();
    let a = LeaseKeeper::spawn(
        stores.lease.clone(),
        Candidate {
            id: "bench-a".into(),
            run: run_id(rng),
            address: "127.0.0.1:2".into(),
        },
        ttl,
        clock,
        LeaseMetrics::new(),
    );
    wait_role(a.role(), ttl * 3, "A to lead", leading).await?;
    let gate = Arc::new(Gate::new(
        stores.lease.clone(),
        0,
        None,
        Recorder::new(Arc::default()),
    ));
    let b = Leadership::start(
        master_config("bench-b", ttl),
        stores.tasks.clone(),
        stores.registry.clone(),
        gate.clone(),
        Arc::new(Unreachable),
        clock,
        run_id(rng),
    )
    .map_err(err)?;
    let result = async {
        wait_role(b.role(), ttl * 3, "B to follow A", |r| {
            matches!(r, Role::Following { leader: Some(_) })
        })
        .await?;
        // A random phase of A's renewals (every TTL/3) and B's reads
        // (every TTL/6).
        tokio::time::sleep(ttl / 3 + ttl.mul_f64(rng.next_f64() / 3.0)).await;
        let t0 = Instant::now();
        let a = if crash {
            drop(a);
            None
        } else {
            a.release().await.map_err(err)?;
            Some(a)
        };
        wait_role(b.role(), ttl * 4, "B to take over", leading).await?;
        let took = t0.elapsed();
        let mut masters = b.masters();
        let serving = tokio::time::timeout(Duration::from_secs(600), async {
            masters.wait_for(|m| m.is_some()).await.map(|_| ())
        })
        .await;
        if !matches!(serving, Ok(Ok(()))) {
            return Err("B leads but its master did not start".to_string());
        }
        let ready = t0.elapsed();
        drop(a);
        let raise = lock(&gate.raise).unwrap_or_default();
        Ok(Takeover {
            took,
            raise,
            load: ready.saturating_sub(took).saturating_sub(raise),
        })
    }
    .await;
    b.shutdown().await;
    result
}

// ---------------------------------------------------------------- gate

/// What a gate saw land for its keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A create or a takeover (a new term) that applied.
    Grant,
    /// A renewal (same term, next version) that applied.
    Renew,
    /// A release sent (applied or not): its keeper stopped acting before.
    Release,
}

/// A lease write of one keeper, with when the call entered the gate.
/// Times are microseconds of tokio's clock since the recorder's base.
#[derive(Debug, Clone, Copy)]
struct Write {
    owner: usize,
    term: Term,
    kind: Kind,
    at: u64,
    /// Two thirds of the TTL on the keeper's clock.
    acts: u64,
}

/// A `Role::Leading { term, until }` a keeper published: it acts from
/// `start` (until − 2/3 TTL on its clock: its swap's sending) to `end`
/// (until), in microseconds since the recorder's base.
#[derive(Debug, Clone, Copy)]
struct Published {
    owner: usize,
    term: Term,
    start: u64,
    end: u64,
}

/// What a group's gates and observers record.
#[derive(Debug, Clone)]
struct Recorder {
    base: tokio::time::Instant,
    writes: Arc<Mutex<Vec<Write>>>,
    roles: Arc<Mutex<Vec<Published>>>,
    handovers: Arc<AtomicU64>,
}

impl Recorder {
    fn new(handovers: Arc<AtomicU64>) -> Recorder {
        Recorder {
            base: tokio::time::Instant::now(),
            writes: Arc::default(),
            roles: Arc::default(),
            handovers,
        }
    }

    fn micros(&self, at: tokio::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }
}

/// Random delays before and after a lease call.
#[derive(Debug)]
struct Chaos {
    rng: Mutex<SplitMix64>,
    max: Duration,
    before: f64,
    after: f64,
}

/// A [`LeaseStore`] in front of one keeper: logs its writes, times its
/// raises and (with [`Chaos`]) delays its calls at random.
#[derive(Debug)]
struct Gate {
    inner: Arc<dyn LeaseStore>,
    owner: usize,
    /// What the keeper's 2/3 TTL lasts in tokio's time, µs.
    acts: u64,
    chaos: Option<Chaos>,
    rec: Recorder,
    raise: Mutex<Option<Duration>>,
}

impl Gate {
    fn new(inner: Arc<dyn LeaseStore>, owner: usize, chaos: Option<Chaos>, rec: Recorder) -> Gate {
        Gate {
            inner,
            owner,
            acts: 0,
            chaos,
            rec,
            raise: Mutex::new(None),
        }
    }

    async fn delay(&self, after: bool) {
        let d = self.chaos.as_ref().and_then(|c| {
            let mut rng = lock(&c.rng);
            let p = if after { c.after } else { c.before };
            rng.chance(p).then(|| c.max.mul_f64(rng.next_f64()))
        });
        if let Some(d) = d {
            tokio::time::sleep(d).await;
        }
    }

    fn log(&self, term: Term, kind: Kind, at: tokio::time::Instant) {
        lock(&self.rec.writes).push(Write {
            owner: self.owner,
            term,
            kind,
            at: self.rec.micros(at),
            acts: self.acts,
        });
    }
}

#[async_trait]
impl LeaseStore for Gate {
    async fn read_lease(&self) -> cloudai_core::Result<Option<LeaseRecord>> {
        self.delay(false).await;
        let r = self.inner.read_lease().await;
        self.delay(true).await;
        r
    }

    async fn create_lease(&self, record: &LeaseRecord) -> cloudai_core::Result<()> {
        let at = tokio::time::Instant::now();
        self.delay(false).await;
        let r = self.inner.create_lease(record).await;
        if r.is_ok() {
            self.log(record.term, Kind::Grant, at);
        }
        self.delay(true).await;
        r
    }

    async fn swap_lease(
        &self,
        term: Term,
        version: u64,
        new: &LeaseRecord,
    ) -> cloudai_core::Result<bool> {
        let at = tokio::time::Instant::now();
        if new.holder.is_none() {
            self.log(term, Kind::Release, at);
        }
        self.delay(false).await;
        let r = self.inner.swap_lease(term, version, new).await;
        if matches!(r, Ok(true)) && new.holder.is_some() {
            if new.term == term {
                self.log(new.term, Kind::Renew, at);
            } else {
                self.log(new.term, Kind::Grant, at);
                self.rec.handovers.fetch_add(1, Ordering::SeqCst);
            }
        }
        self.delay(true).await;
        r
    }

    async fn raise_fence(&self, term: Term) -> cloudai_core::Result<u64> {
        let began = Instant::now();
        let r = self.inner.raise_fence(term).await;
        *lock(&self.raise) = Some(began.elapsed());
        r
    }

    async fn adopt_pending(
        &self,
        term: Term,
        limit: usize,
    ) -> cloudai_core::Result<Vec<TaskRecord>> {
        self.inner.adopt_pending(term, limit).await
    }
}

// ---------------------------------------------------------- contention

/// One store with three keeper slots, restarted at random.
struct Group {
    store: Arc<dyn LeaseStore>,
    clock: Clock,
    /// Slot 0's keepers run their clocks this many times as fast.
    skew: f64,
    ttl: Duration,
    rng: SplitMix64,
    rec: Recorder,
    next_owner: usize,
    slots: Vec<usize>,
    observers: Vec<tokio::task::JoinHandle<()>>,
}

/// What one group saw.
#[derive(Debug, Default, Clone)]
struct GroupOut {
    writes: Vec<Write>,
    roles: Vec<Published>,
    releases: u64,
    crashes: u64,
    restarts: u64,
    /// Keepers whose role still said `Leading` after `release()`.
    leading_after_release: u64,
    /// The driver's acts: (owner, what, µs).
    acts: Vec<(usize, &'static str, u64)>,
    /// Each owner's slot (its master id `m{slot}`).
    slots: Vec<usize>,
}

impl Group {
    /// A new keeper (a new run of master `m{slot}`) behind its own gate,
    /// and a task logging every `Leading` it publishes.
    fn spawn(&mut self, slot: usize) -> LeaseKeeper {
        let owner = self.next_owner;
        self.next_owner += 1;
        self.slots.push(slot);
        let chaos = Chaos {
            rng: Mutex::new(SplitMix64::new(self.rng.next_u64())),
            max: self.ttl / 2,
            before: 0.05,
            after: 0.03,
        };
        let rate = if slot == 0 { self.skew } else { 1.0 };
        let reference = self.clock;
        let own = if rate == 1.0 {
            reference
        } else {
            reference.with_rate(rate)
        };
        let acts = u64::try_from((self.ttl * 2 / 3).div_f64(rate).as_micros()).unwrap_or(u64::MAX);
        // As the keeper counts it: whole milliseconds of its clock.
        let acts_ms = u64::try_from((self.ttl * 2 / 3).as_millis()).unwrap_or(u64::MAX);
        let mut gate = Gate::new(self.store.clone(), owner, Some(chaos), self.rec.clone());
        gate.acts = acts;
        let keeper = LeaseKeeper::spawn(
            Arc::new(gate),
            Candidate {
                id: format!("m{slot}"),
                run: format!("run{owner}"),
                address: format!("127.0.0.1:{}", 10_000 + slot),
            },
            self.ttl,
            own,
            LeaseMetrics::new(),
        );
        let mut role = keeper.role();
        let rec = self.rec.clone();
        self.observers.push(tokio::spawn(async move {
            while role.changed().await.is_ok() {
                let seen = match &*role.borrow_and_update() {
                    Role::Leading { term, until, .. } => {
                        let sent =
                            Timestamp::from_millis(until.as_millis().saturating_sub(acts_ms));
                        Some(Published {
                            owner,
                            term: *term,
                            start: rec.micros(own.instant_at(sent)),
                            end: rec.micros(own.instant_at(*until)),
                        })
                    }
                    Role::Following { .. } => None,
                };
                if let Some(p) = seen {
                    lock(&rec.roles).push(p);
                }
            }
        }));
        keeper
    }

    fn pause(&mut self, up_to: Duration) -> Duration {
        up_to.mul_f64(self.rng.next_f64())
    }
}

async fn run_group(
    ttl: Duration,
    skew: f64,
    clock: Clock,
    seed: u64,
    stop: Arc<AtomicBool>,
    handovers: Arc<AtomicU64>,
) -> GroupOut {
    let mut g = Group {
        store: Arc::new(MemoryStore::new()),
        clock,
        skew,
        ttl,
        rng: SplitMix64::new(seed),
        rec: Recorder::new(handovers),
        next_owner: 0,
        slots: Vec::new(),
        observers: Vec::new(),
    };
    let mut out = GroupOut::default();
    let mut slots: Vec<Option<(usize, LeaseKeeper)>> =
        (0..3).map(|s| Some((g.next_owner, g.spawn(s)))).collect();
    let now = |g: &Group| g.rec.micros(tokio::time::Instant::now());
    while !stop.load(Ordering::SeqCst) {
        let wait = ttl / 2 + g.pause(ttl * 3 / 2);
        tokio::time::sleep(wait).await;
        let leader = slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|(_, k)| leads(k)));
        let x = g.rng.next_f64();
        match leader {
            Some(i) if x < 0.35 => {
                if let Some((o, k)) = slots[i].take() {
                    out.acts.push((o, "release() called", now(&g)));
                    let _ = k.release().await;
                    out.acts.push((o, "release() returned", now(&g)));
                    out.releases += 1;
                    let wait = g.pause(ttl / 2);
                    tokio::time::sleep(wait).await;
                    if leads(&k) {
                        out.leading_after_release += 1;
                    }
                }
                slots[i] = Some((g.next_owner, g.spawn(i)));
            }
            Some(i) if x < 0.7 => {
                if let Some((o, k)) = slots[i].take() {
                    out.acts.push((o, "dropped (crash)", now(&g)));
                    drop(k);
                }
                out.crashes += 1;
                let wait = g.pause(ttl);
                tokio::time::sleep(wait).await;
                slots[i] = Some((g.next_owner, g.spawn(i)));
            }
            _ if x < 0.85 => {
                let j = g.rng.below(3) as usize;
                if let Some((o, k)) = slots[j].take() {
                    out.acts.push((o, "dropped (restart)", now(&g)));
                    drop(k);
                }
                out.restarts += 1;
                slots[j] = Some((g.next_owner, g.spawn(j)));
            }
            _ => {}
        }
    }
    drop(slots);
    for o in g.observers.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(1), o).await;
    }
    out.writes = lock(&g.rec.writes).clone();
    out.roles = lock(&g.rec.roles).clone();
    out.slots = g.slots.clone();
    out
}

/// Prints what owners `a` and `b` of `out` did from `from` to `to` (µs):
/// the first overlap's neighbourhood.
fn timeline(out: &GroupOut, a: usize, b: usize, from: u64, to: u64) {
    let mut lines: Vec<(u64, String)> = Vec::new();
    let slot = |o: usize| out.slots.get(o).copied().unwrap_or(usize::MAX);
    for w in &out.writes {
        if (w.owner == a || w.owner == b) && (from..=to).contains(&w.at) {
            lines.push((
                w.at,
                format!(
                    "owner {} (m{}): {:?} term {} entered (acts {:.3} ms)",
                    w.owner,
                    slot(w.owner),
                    w.kind,
                    w.term,
                    w.acts as f64 / 1000.0
                ),
            ));
        }
    }
    for p in &out.roles {
        if (p.owner == a || p.owner == b) && p.end >= from && p.start <= to {
            lines.push((
                p.start,
                format!(
                    "owner {} (m{}): published Leading term {}, acting {:.3} .. {:.3} ms",
                    p.owner,
                    slot(p.owner),
                    p.term,
                    p.start as f64 / 1000.0,
                    p.end as f64 / 1000.0
                ),
            ));
        }
    }
    for (o, what, at) in &out.acts {
        if (*o == a || *o == b) && (from..=to).contains(at) {
            lines.push((*at, format!("owner {o} (m{}): {what}", slot(*o))));
        }
    }
    lines.sort();
    let skip = lines.len().saturating_sub(40);
    for (at, l) in lines.into_iter().skip(skip) {
        println!("    {:>12.3} ms  {l}", at as f64 / 1000.0);
    }
}

/// Acting windows `(owner, start, end)` in µs, each cut at its owner's
/// first release.
fn cut(windows: Vec<(usize, u64, u64)>, released: &HashMap<usize, u64>) -> Vec<(usize, u64, u64)> {
    windows
        .into_iter()
        .filter_map(|(o, s, e)| {
            let e = released.get(&o).map_or(e, |r| e.min(*r));
            (s < e).then_some((o, s, e))
        })
        .collect()
}

/// What [`overlaps`] found.
#[derive(Debug, Default, Clone, Copy)]
struct Sweep {
    /// Windows starting more than the tolerance before another owner's
    /// earlier window ended.
    overlaps: u64,
    /// Overlaps within the tolerance.
    shallow: u64,
    /// The deepest overlap.
    deepest: u64,
    /// The first overlap beyond the tolerance: the earlier owner and its
    /// end, the later owner and its start.
    first: Option<(usize, u64, usize, u64)>,
    /// The smallest gap from a window cut by its owner's release to the
    /// next owner's.
    after_release: Option<u64>,
    /// The smallest gap from any other window's end (its deadline) to the
    /// next owner's: the argument leaves at least TTL/3.
    after_expiry: Option<u64>,
}

fn min_into(slot: &mut Option<u64>, v: u64) {
    *slot = Some(slot.map_or(v, |m| m.min(v)));
}

/// Windows of different owners that overlap by more than `tolerance`
/// (after merging each owner's own), and the smallest gaps between one
/// owner's window and the next owner's.
fn overlaps(
    mut w: Vec<(usize, u64, u64)>,
    released: &HashMap<usize, u64>,
    tolerance: u64,
) -> Sweep {
    w.sort_unstable_by_key(|&(o, s, _)| (o, s));
    let mut merged: Vec<(usize, u64, u64)> = Vec::new();
    for (o, s, e) in w {
        match merged.last_mut() {
            Some(last) if last.0 == o && s <= last.2 => last.2 = last.2.max(e),
            _ => merged.push((o, s, e)),
        }
    }
    merged.sort_unstable_by_key(|&(_, s, _)| s);
    let mut out = Sweep::default();
    let mut latest: Option<(usize, u64)> = None;
    for (o, s, e) in merged {
        if let Some((lo, le)) = latest {
            // An owner's merged windows are disjoint: an earlier end past
            // this start is another owner's.
            if s < le {
                // Of the earlier windows, the latest-ending overlaps this
                // one most.
                let depth = e.min(le) - s;
                if depth > tolerance {
                    out.overlaps += 1;
                    out.first.get_or_insert((lo, le, o, s));
                } else {
                    out.shallow += 1;
                }
                out.deepest = out.deepest.max(depth);
            } else if lo != o {
                // After its release (which may come after its deadline
                // passed), or after its deadline.
                if released.get(&lo).is_some_and(|r| s >= *r) {
                    min_into(&mut out.after_release, s - le);
                } else {
                    min_into(&mut out.after_expiry, s - le);
                }
            }
        }
        if latest.is_none_or(|(_, le)| e > le) {
            latest = Some((o, e));
        }
    }
    out
}

/// Terms that more than one keeper was granted (or published as led).
fn double_grants(pairs: impl Iterator<Item = (Term, usize)>) -> u64 {
    let mut by_term: HashMap<u64, BTreeSet<usize>> = HashMap::new();
    for (t, o) in pairs {
        by_term.entry(t.get()).or_default().insert(o);
    }
    by_term.values().filter(|o| o.len() > 1).count() as u64
}

/// The contention phase's totals.
#[derive(Debug, Default)]
struct Contention {
    secs: f64,
    handovers: u64,
    releases: u64,
    crashes: u64,
    restarts: u64,
    windows_store: u64,
    windows_roles: u64,
    overlaps_store: u64,
    overlaps_roles: u64,
    /// Published roles' overlaps within the keepers' clock resolution.
    shallow_roles: u64,
    double_store: u64,
    double_roles: u64,
    leading_after_release: u64,
    /// The deepest overlap, µs (store writes' view, published roles').
    deepest_store_us: u64,
    deepest_roles_us: u64,
    /// The smallest gaps between acting windows (store writes' view), µs.
    gap_release_us: Option<u64>,
    gap_expiry_us: Option<u64>,
}

/// Three keepers per memory store, `groups` stores at once, real time
/// with a short TTL: a driver per store releases or crashes the leader,
/// or restarts a follower, at random, and each keeper's gate delays its
/// calls at random, until `target` handovers in all.
async fn contention(args: &Args, seed: u64) -> Result<Contention, String> {
    let ttl = Duration::from_millis(args.contention_ttl_ms);
    let ttl_us = args.contention_ttl_ms * 1000;
    let clock = Clock::system();
    let stop = Arc::new(AtomicBool::new(false));
    let handovers = Arc::new(AtomicU64::new(0));
    let mut seeds = SplitMix64::new(seed ^ 0xc0_47e7_7104);
    let started = Instant::now();
    let groups: Vec<_> = (0..args.contention_groups.max(1))
        .map(|_| {
            tokio::spawn(run_group(
                ttl,
                args.contention_skew,
                clock,
                seeds.next_u64(),
                stop.clone(),
                handovers.clone(),
            ))
        })
        .collect();
    let cap = Duration::from_secs(args.contention_cap_secs);
    while (handovers.load(Ordering::SeqCst) as usize) < args.handovers && started.elapsed() < cap {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut c = Contention::default();
    for (gi, g) in groups.into_iter().enumerate() {
        let out = g.await.map_err(err)?;
        c.releases += out.releases;
        c.crashes += out.crashes;
        c.restarts += out.restarts;
        c.leading_after_release += out.leading_after_release;
        c.handovers += out
            .writes
            .iter()
            .filter(|w| w.kind == Kind::Grant && w.term.get() > 1)
            .count() as u64;
        let mut released: HashMap<usize, u64> = HashMap::new();
        for w in out.writes.iter().filter(|w| w.kind == Kind::Release) {
            let r = released.entry(w.owner).or_insert(w.at);
            *r = (*r).min(w.at);
        }
        // From the store's side: each applied grant or renewal lets its
        // keeper act from the call's entry to two thirds of a TTL later
        // (the keeper counts from just before the call).
        let store_windows = cut(
            out.writes
                .iter()
                .filter(|w| w.kind != Kind::Release)
                .map(|w| (w.owner, w.at, w.at + w.acts))
                .collect(),
            &released,
        );
        // From the keepers' side: each published Leading{until} acts from
        // its renewal's sending (until − 2/3 TTL) to until.
        let role_windows = cut(
            out.roles
                .iter()
                .map(|p| (p.owner, p.start, p.end))
                .collect(),
            &released,
        );
        c.windows_store += store_windows.len() as u64;
        c.windows_roles += role_windows.len() as u64;
        // Exact: the windows run from the calls' entries, in µs.
        let sweep = overlaps(store_windows, &released, 0);
        if let Some((a, le, b, s)) = sweep.first {
            println!("  overlap (store writes) in store {gi}: owner {a} acts until {:.3} ms, owner {b} from {:.3} ms", le as f64 / 1000.0, s as f64 / 1000.0);
            timeline(&out, a, b, s.saturating_sub(ttl_us * 2), le + ttl_us / 3);
        }
        c.overlaps_store += sweep.overlaps;
        c.deepest_store_us = c.deepest_store_us.max(sweep.deepest);
        if let Some(g) = sweep.after_release {
            min_into(&mut c.gap_release_us, g);
        }
        if let Some(g) = sweep.after_expiry {
            min_into(&mut c.gap_expiry_us, g);
        }
        // A keeper counts whole milliseconds of its clock: the start
        // (until − 2/3 TTL) is its swap's sending floored to one, up to
        // 1 ms (on a slow clock, 1/rate ms) early.
        let resolution = (1_000.0 / args.contention_skew.min(1.0)).ceil() as u64;
        let sweep = overlaps(role_windows, &released, resolution);
        if let Some((a, le, b, s)) = sweep.first {
            println!("  overlap (published roles) in store {gi}: owner {a} acts until {:.3} ms, owner {b} from {:.3} ms", le as f64 / 1000.0, s as f64 / 1000.0);
            timeline(&out, a, b, s.saturating_sub(ttl_us * 2), le + ttl_us / 3);
        }
        c.overlaps_roles += sweep.overlaps;
        c.shallow_roles += sweep.shallow;
        c.deepest_roles_us = c.deepest_roles_us.max(sweep.deepest);
        c.double_store += double_grants(
            out.writes
                .iter()
                .filter(|w| w.kind == Kind::Grant)
                .map(|w| (w.term, w.owner)),
        );
        c.double_roles += double_grants(out.roles.iter().map(|p| (p.term, p.owner)));
    }
    c.secs = started.elapsed().as_secs_f64();
    Ok(c)
}

// ---------------------------------------------------------------- run

/// Everything but contention, on one store.
#[derive(Debug, Default)]
struct Measured {
    insert: Duration,
    renewals: Renewals,
    raise: Duration,
    load: Duration,
    raised: u64,
    crash: Vec<Takeover>,
    release: Vec<Takeover>,
}

async fn measure(
    stores: &Stores,
    args: &Args,
    ttl: Duration,
    rng: &mut SplitMix64,
) -> Result<Measured, String> {
    let n = args.lease_tasks;
    let mut m = Measured {
        insert: insert_pending(stores, n).await?,
        ..Measured::default()
    };
    println!(
        "  stored {n} pending tasks in {:.2} s",
        m.insert.as_secs_f64()
    );

    m.renewals = renewals_under_raise(stores.lease.clone(), ttl, args.renewals).await?;
    let r = &m.renewals;
    println!(
        "  renewals under a raise: {} in flight during {} raises of {} documents (median raise {:.0} ms): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} outside raises, {} refused, {} errors",
        r.during.len(),
        r.raises.len(),
        r.raised,
        median(&r.raises).map_or(f64::NAN, ms),
        median(&r.during).map_or(f64::NAN, ms),
        percentile(&r.during, 99.0).map_or(f64::NAN, ms),
        percentile(&r.during, 100.0).map_or(f64::NAN, ms),
        r.other,
        r.refused,
        r.errors,
    );

    (m.raise, m.load, m.raised) = raise_and_load(stores, ttl).await?;
    let per = 10_000.0 / n.max(1) as f64;
    println!(
        "  raise + load: raise {:.3} s ({} documents), start_term {:.3} s: {:.3} s per 10,000 tasks",
        m.raise.as_secs_f64(),
        m.raised,
        m.load.as_secs_f64(),
        (m.raise + m.load).as_secs_f64() * per,
    );

    for crash in [true, false] {
        for _ in 0..args.takeovers {
            let t = takeover(stores, ttl, crash, rng).await?;
            println!(
                "  takeover after a {}: {:.3} s ({:.2} TTL), then raise {:.3} s, load {:.3} s",
                if crash { "crash" } else { "release" },
                t.took.as_secs_f64(),
                t.took.as_secs_f64() / ttl.as_secs_f64(),
                t.raise.as_secs_f64(),
                t.load.as_secs_f64(),
            );
            if crash {
                m.crash.push(t);
            } else {
                m.release.push(t);
            }
        }
    }
    Ok(m)
}

fn secs(v: &[Takeover], f: impl Fn(&Takeover) -> Duration) -> Vec<f64> {
    v.iter().map(|t| f(t).as_secs_f64()).collect()
}

/// `store --lease`.
pub(crate) async fn run(args: &Args, label: &str) -> Result<(), String> {
    if !(args.ttl > 0.0 && args.contention_skew > 0.0) {
        return Err("--ttl and --contention-skew must be positive".into());
    }
    let ttl = Duration::from_secs_f64(args.ttl);
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id())
    });
    let mut rng = SplitMix64::new(seed);
    println!(
        "lease on {label}: TTL {:.3} s, {} non-final tasks, seed {seed}",
        ttl.as_secs_f64(),
        args.lease_tasks
    );
    let stores = open(&args.store, "lease").await?;
    let measured = measure(&stores, args, ttl, &mut rng).await;
    close(stores).await;
    let m = measured?;

    let contention = if args.handovers > 0 {
        let c = contention(args, seed).await?;
        println!(
            "  contention: {} stores x 3 keepers, TTL {} ms (real time): {} handovers in {:.1} s ({} releases, {} leader crashes, {} follower restarts)",
            args.contention_groups,
            args.contention_ttl_ms,
            c.handovers,
            c.secs,
            c.releases,
            c.crashes,
            c.restarts,
        );
        let ms_of = |us: u64| us as f64 / 1000.0;
        println!(
            "  acting windows: {} from store writes, {} from published roles; overlapping: {} / {} (deepest {:.3} / {:.3} ms; {} more within the roles' clock resolution); double grants: {} / {}; Leading after release(): {}",
            c.windows_store,
            c.windows_roles,
            c.overlaps_store,
            c.overlaps_roles,
            ms_of(c.deepest_store_us),
            ms_of(c.deepest_roles_us),
            c.shallow_roles,
            c.double_store,
            c.double_roles,
            c.leading_after_release,
        );
        let show = |g: Option<u64>| g.map_or("-".to_string(), |g| format!("{:.3} ms", ms_of(g)));
        println!(
            "  closest handovers (store writes): after a release {}, after an expiry {} (the argument leaves TTL/3 = {:.1} ms)",
            show(c.gap_release_us),
            show(c.gap_expiry_us),
            args.contention_ttl_ms as f64 / 3.0,
        );
        Some(c)
    } else {
        None
    };

    if args.json {
        let r = &m.renewals;
        let per = 10_000.0 / args.lease_tasks.max(1) as f64;
        let line = serde_json::json!({
            "store": if args.store == "memory" { "memory" } else { "mongodb" },
            "ttl_s": ttl.as_secs_f64(),
            "tasks": args.lease_tasks,
            "renew_n": r.during.len(),
            "renew_p99_ms": percentile(&r.during, 99.0).map(ms),
            "renew_max_ms": percentile(&r.during, 100.0).map(ms),
            "raises": r.raises.len(),
            "raise_load_per_10k_s": (m.raise + m.load).as_secs_f64() * per,
            "raise_per_10k_s": m.raise.as_secs_f64() * per,
            "load_per_10k_s": m.load.as_secs_f64() * per,
            "crash_s": secs(&m.crash, |t| t.took),
            "crash_raise_s": secs(&m.crash, |t| t.raise),
            "crash_load_s": secs(&m.crash, |t| t.load),
            "release_s": secs(&m.release, |t| t.took),
            "release_raise_s": secs(&m.release, |t| t.raise),
            "release_load_s": secs(&m.release, |t| t.load),
            "contention": contention.map(|c| serde_json::json!({
                "ttl_ms": args.contention_ttl_ms,
                "secs": c.secs,
                "handovers": c.handovers,
                "overlaps_store": c.overlaps_store,
                "overlaps_roles": c.overlaps_roles,
                "shallow_roles": c.shallow_roles,
                "double_store": c.double_store,
                "double_roles": c.double_roles,
                "leading_after_release": c.leading_after_release,
                "deepest_store_ms": c.deepest_store_us as f64 / 1000.0,
                "deepest_roles_ms": c.deepest_roles_us as f64 / 1000.0,
                "gap_release_ms": c.gap_release_us.map(|g| g as f64 / 1000.0),
                "gap_expiry_ms": c.gap_expiry_us.map(|g| g as f64 / 1000.0),
            })),
        });
        println!("{line}");
    }
    Ok(())
}
