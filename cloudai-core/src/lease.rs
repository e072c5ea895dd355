//! The leader lease, kept on the master's [`Clock`]: which of several
//! masters sharing one store may act, and until when.
//!
//! The timing argument (`ttl` is [`crate::master::MasterConfig::lease_ttl`]):
//! - The leader renews every `ttl/3` and acts only until the *sending* of
//!   its last successful renewal plus `2/3·ttl`, then stops without waiting
//!   for any answer.
//! - A candidate takes over only with a [`LeaseStore::swap_lease`] on a
//!   (term, version) it has read unchanged for at least `max(own ttl,
//!   record ttl)`, counted from the *return* of the first read that showed
//!   it.
//! - The renewal that wrote that (term, version) landed after the leader
//!   sent it and before the candidate's first read returned. So the leader
//!   stops by that read + `2/3·ttl` on its clock, and the candidate swaps
//!   no earlier than that read + `ttl` on its own: their acting windows
//!   cannot overlap while the clocks run within a factor of 1.5 of each
//!   other. If the leader renewed meanwhile, the candidate's swap fails.
//!
//! Whatever the clocks do, the fences ([`crate::store::TaskStore::fenced`])
//! keep a deposed master's late writes off every document the new term
//! raised.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::clock::Clock;
use crate::metrics::LeaseMetrics;
use crate::model::{Term, Timestamp};
use crate::store::{LeaseRecord, LeaseStore};
use crate::sync::lock;
use crate::{Error, Result};

/// What this master may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the lease at `term` and may act until `until` on its clock.
    Leading {
        /// The term it leads.
        term: Term,
        /// When this stretch of leading began (a master that stopped for
        /// want of renewals and leads again in the same term starts a new
        /// stretch: what acted in the old one must not act on).
        since: Timestamp,
        /// When it must stop acting unless a renewal succeeds first.
        until: Timestamp,
    },
    /// Another master leads (the record as last read), or nobody is known
    /// to.
    Following {
        /// The lease as last read, when someone holds it.
        leader: Option<LeaseRecord>,
    },
}

impl Role {
    /// A single master without a lease: term 0, acting for ever.
    pub fn single() -> Role {
        Role::Leading {
            term: Term::ZERO,
            since: Timestamp::ZERO,
            until: Timestamp::from_millis(u64::MAX),
        }
    }

    /// The stretch of leading it describes, `(term, since)`; `None` while
    /// following.
    pub fn stretch(&self) -> Option<(Term, Timestamp)> {
        match self {
            Role::Leading { term, since, .. } => Some((*term, *since)),
            Role::Following { .. } => None,
        }
    }

    /// Whether it may act in stretch `(term, since)` at time `now`.
    pub fn acts(&self, stretch: (Term, Timestamp), now: Timestamp) -> bool {
        matches!(self, Role::Leading { until, .. } if self.stretch() == Some(stretch) && now < *until)
    }
}

/// Who is asking for the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The master's id.
    pub id: String,
    /// A nonce for this process start: the same id started again is
    /// another run, and waits out the old run's lease like anyone else.
    pub run: String,
    /// Where its clients and workers reach it.
    pub address: String,
}

/// Keeps (or waits for) the lease in the background and publishes this
/// master's [`Role`]. Dropping it (or [`LeaseKeeper::abort`]) stops the
/// keeping without a release, as a crash would: nothing acts on it any
/// more, and the lease expires by itself. [`LeaseKeeper::release`] hands
/// the lease on at once.
#[derive(Debug)]
pub struct LeaseKeeper {
    role: watch::Receiver<Role>,
    held: Arc<Mutex<Option<(Term, u64)>>>,
    shared: Arc<Keeping>,
    task: JoinHandle<()>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.abort();
    }
}

/// What the keeping task and the handle share.
#[derive(Debug)]
struct Keeping {
    store: Arc<dyn LeaseStore>,
    me: Candidate,
    ttl: Duration,
    clock: Clock,
    metrics: LeaseMetrics,
    role: watch::Sender<Role>,
    /// Set once the keeping stopped (aborted or released): the keeping
    /// task, which may still be running its last step on another thread,
    /// publishes nothing after.
    stopped: std::sync::atomic::AtomicBool,
}

/// A (term, version) a candidate saw, and when the first read that showed
/// it returned.
#[derive(Debug, Clone, Copy)]
struct Seen {
    term: Term,
    version: u64,
    since: Timestamp,
}

/// The leader's state between renewals.
#[derive(Debug, Clone, Copy)]
struct Lead {
    term: Term,
    /// When this stretch of leading began.
    since: Timestamp,
    version: u64,
    /// When the last successful renewal was sent.
    sent: Timestamp,
    until: Timestamp,
}

impl LeaseKeeper {
    /// Starts keeping the lease for `me` with `ttl` on `store`.
    pub fn spawn(
        store: Arc<dyn LeaseStore>,
        me: Candidate,
        ttl: Duration,
        clock: Clock,
        metrics: LeaseMetrics,
    ) -> LeaseKeeper {
        let (role, rx) = watch::channel(Role::Following { leader: None });
        let shared = Arc::new(Keeping {
            store,
            me,
            ttl,
            clock,
            metrics,
            role,
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let held = Arc::new(Mutex::new(None));
        let task = tokio::spawn(keep(shared.clone(), held.clone()));
        LeaseKeeper {
            role: rx,
            held,
            shared,
            task,
        }
    }

    /// This master's role, now and as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The lease as this master last wrote it, while it holds it.
    pub fn held(&self) -> Option<LeaseRecord> {
        let (term, version) = (*lock(&self.held))?;
        Some(self.shared.record(term, version))
    }

    /// Stops keeping the lease without releasing it.
    pub fn abort(&self) {
        self.shared.stop();
        self.task.abort();
    }

    /// Stops keeping the lease and, if this master holds it, clears its
    /// holder so that a candidate takes over at once. Publishes
    /// [`Role::Following`] first: nothing acts on the lease any more.
    pub async fn release(&self) -> Result<()> {
        self.shared.stop();
        self.task.abort();
        let Some((term, version)) = lock(&self.held).take() else {
            return Ok(());
        };
        let k = &self.shared;
        let mut cleared = k.record(term, version.saturating_add(1));
        cleared.holder = None;
        let released = k
            .bounded(k.store.swap_lease(term, version, &cleared))
            .await?;
        if released {
            info!(%term, "released the lease");
        }
        Ok(())
    }
}

impl Keeping {
    fn record(&self, term: Term, version: u64) -> LeaseRecord {
        LeaseRecord {
            holder: Some(self.me.id.clone()),
            run: self.me.run.clone(),
            address: self.me.address.clone(),
            term,
            version,
            ttl: self.ttl,
        }
    }

    /// One lease call, given at most a third of the TTL.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.ttl / 3, call)
            .await
            .map_err(|_| Error::Timeout(format!("lease call took over {:?}", self.ttl / 3)))?
    }

    async fn sleep_until(&self, t: Timestamp) {
        tokio::time::sleep_until(self.clock.instant_at(t)).await;
    }

    fn lead(&self, lead: &Lead) {
        // Checked under the role's lock: once `stop` has published
        // `Following`, nothing publishes `Leading` again.
        let published = self.role.send_if_modified(|role| {
            if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return false;
            }
            *role = Role::Leading {
                term: lead.term,
                since: lead.since,
                until: lead.until,
            };
            true
        });
        if published {
            self.metrics.leading(lead.term);
        }
    }

    /// Stops the keeping for good and publishes `Following`.
    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.step_down(None);
    }

    fn step_down(&self, leader: Option<LeaseRecord>) {
        self.role.send_replace(Role::Following { leader });
        self.metrics.following();
    }

    /// Tries to write `new` over (`term`, `version`): the lead it gives
    /// when it applied, `None` when the lease had moved on.
    async fn swap(&self, term: Term, version: u64, new: LeaseRecord) -> Result<Option<Lead>> {
        let sent = self.clock.now();
        let applied = self
            .bounded(self.store.swap_lease(term, version, &new))
            .await?;
        Ok(applied.then(|| Lead {
            term: new.term,
            since: sent,
            version: new.version,
            sent,
            until: sent.saturating_add(self.ttl * 2 / 3),
        }))
    }

    /// [`Keeping::swap`] for a candidate: a failure is logged and takes
    /// nothing.
    async fn try_swap(&self, term: Term, version: u64, new: LeaseRecord) -> Option<Lead> {
        self.swap(term, version, new).await.unwrap_or_else(|e| {
            warn!(error = %e, "lease swap failed");
            None
        })
    }

    /// One candidate's look at the lease: the lead it took, if any.
    async fn try_acquire(&self, seen: &mut Option<Seen>, own: Option<Term>) -> Option<Lead> {
        let read = self.bounded(self.store.read_lease()).await;
        let returned = self.clock.now();
        let record = match read {
            Ok(Some(r)) => r,
            Ok(None) => {
                let sent = self.clock.now();
                let first = self.record(Term::new(1), 0);
                return match self.bounded(self.store.create_lease(&first)).await {
                    Ok(()) => Some(Lead {
                        term: first.term,
                        since: sent,
                        version: 0,
                        sent,
                        until: sent.saturating_add(self.ttl * 2 / 3),
                    }),
                    Err(Error::AlreadyExists { .. }) => None,
                    Err(e) => {
                        warn!(error = %e, "could not create the lease");
                        None
                    }
                };
            }
            Err(e) => {
                warn!(error = %e, "could not read the lease; following");
                return None;
            }
        };
        let mine = record.holder.as_deref() == Some(self.me.id.as_str())
            && record.run == self.me.run
            && own == Some(record.term);
        if mine {
            // This run's own record, unchanged since it stopped renewing:
            // nobody took over, so it leads again at the same term.
            let renewed = self.record(record.term, record.version.saturating_add(1));
            return self.try_swap(record.term, record.version, renewed).await;
        }
        let next = self.record(record.term.next(), 0);
        if record.holder.is_none() {
            return self.try_swap(record.term, record.version, next).await;
        }
        let wait = self.ttl.max(record.ttl);
        match seen {
            Some(s) if s.term == record.term && s.version == record.version => {
                if returned >= s.since.saturating_add(wait) {
                    let lead = self.try_swap(record.term, record.version, next).await;
                    if lead.is_some() {
                        self.metrics.took_over();
                        info!(from = ?record.holder, term = %record.term.next(), "took the lease over");
                    }
                    return lead;
                }
            }
            _ => {
                if record.holder.as_deref() == Some(self.me.id.as_str())
                    && record.run != self.me.run
                    && seen.is_none_or(|s| s.term != record.term)
                {
                    // Allowed (terms decide), but logs and events cannot
                    // tell the two apart.
                    warn!(id = %self.me.id, address = %record.address, "another master holds the lease under this master's id; give each master its own --id");
                }
                *seen = Some(Seen {
                    term: record.term,
                    version: record.version,
                    since: returned,
                });
            }
        }
        self.step_down(Some(record));
        None
    }

    /// Renews `lead` until a renewal is refused or none succeeds before
    /// the acting deadline; returns the term it held. (A refusal may be a
    /// renewal that landed unanswered: the next look finds this run's own
    /// record and leads again.)
    async fn renew(&self, mut lead: Lead, held: &Mutex<Option<(Term, u64)>>) -> Term {
        loop {
            *lock(held) = Some((lead.term, lead.version));
            self.lead(&lead);
            let mut next = lead.sent.saturating_add(self.ttl / 3);
            lead = loop {
                self.sleep_until(next.min(lead.until)).await;
                let renewed = self.record(lead.term, lead.version.saturating_add(1));
                let began = tokio::time::Instant::now();
                // The deadline first: a failure that answers at once must
                // not keep a leader past it.
                let outcome = tokio::select! {
                    biased;
                    _ = self.sleep_until(lead.until) => {
                        warn!(term = %lead.term, "no lease renewal in time: stopped acting");
                        self.step_down(None);
                        return lead.term;
                    }
                    outcome = self.swap(lead.term, lead.version, renewed) => outcome,
                };
                match outcome {
                    Ok(Some(renewed)) => {
                        self.metrics.renewed(began.elapsed());
                        break Lead {
                            since: lead.since,
                            ..renewed
                        };
                    }
                    Ok(None) => {
                        info!(term = %lead.term, "the lease moved on: following");
                        self.step_down(None);
                        return lead.term;
                    }
                    Err(e) => {
                        warn!(term = %lead.term, error = %e, "lease renewal failed; retrying");
                        next = self.clock.now().saturating_add(self.ttl / 6);
                    }
                }
            };
        }
    }
}

/// The keeping loop: candidate until it takes the lease, leader until it
/// loses it, and again.
async fn keep(k: Arc<Keeping>, held: Arc<Mutex<Option<(Term, u64)>>>) {
    let mut seen = None;
    // The term this run led last, while it may still find its own record.
    let mut own: Option<Term> = None;
    loop {
        let began = k.clock.now();
        if let Some(lead) = k.try_acquire(&mut seen, own).await {
            seen = None;
            own = Some(k.renew(lead, &held).await);
            *lock(&held) = None;
            continue;
        }
        k.sleep_until(began.saturating_add(k.ttl / 6)).await;
    }
}

/// A master's right to act: its term, and the role that says until when.
/// A single master's never ends.
#[derive(Debug, Clone)]
pub struct Tenure {
    term: Term,
    since: Timestamp,
    role: watch::Receiver<Role>,
    clock: Clock,
}

impl Tenure {
    /// A single master without a lease: term 0, for ever.
    pub fn single(clock: Clock) -> Tenure {
        let role = Role::single();
        let (term, since) = role.stretch().unwrap_or_default();
        Tenure::new(term, since, watch::channel(role).1, clock)
    }

    /// The stretch of leading `term` that began at `since`, while `role`
    /// says this master is still in it.
    pub fn new(term: Term, since: Timestamp, role: watch::Receiver<Role>, clock: Clock) -> Tenure {
        Tenure {
            term,
            since,
            role,
            clock,
        }
    }

    /// The term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// When this stretch of leading began, on its clock.
    pub fn since(&self) -> Timestamp {
        self.since
    }

    /// The clock it is judged on.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Whether the master may act now: it still leads its term and the
    /// acting deadline has not passed.
    pub fn acting(&self) -> bool {
        self.role
            .borrow()
            .acts((self.term, self.since), self.clock.now())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;
    use tokio::time::Instant;

    use super::*;
    use crate::memory::MemoryStore;
    use crate::model::TaskRecord;

    const TTL: Duration = Duration::from_secs(6);

    /// The memory store's lease behind a switch (a store outage) and a
    /// delay on every call, with the send time of each swap.
    #[derive(Debug, Default)]
    struct Gate {
        store: MemoryStore,
        down: AtomicBool,
        delay: Mutex<Duration>,
        /// Each swap's sending, and whether it applied.
        swaps: Mutex<Vec<(Instant, bool)>>,
    }

    impl Gate {
        /// When the last swap that applied was sent.
        fn last_renewal(&self) -> Instant {
            lock(&self.swaps)
                .iter()
                .rev()
                .find(|(_, ok)| *ok)
                .expect("renewed")
                .0
        }
    }

    impl Gate {
        async fn pass(&self) -> Result<()> {
            let delay = *lock(&self.delay);
            tokio::time::sleep(delay).await;
            if self.down.load(Ordering::SeqCst) {
                return Err(Error::Unavailable("store down".into()));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl LeaseStore for Gate {
        async fn read_lease(&self) -> Result<Option<LeaseRecord>> {
            self.pass().await?;
            self.store.read_lease().await
        }
        async fn create_lease(&self, record: &LeaseRecord) -> Result<()> {
            self.pass().await?;
            self.store.create_lease(record).await
        }
        async fn swap_lease(&self, term: Term, version: u64, new: &LeaseRecord) -> Result<bool> {
            let sent = Instant::now();
            let passed = self.pass().await;
            let applied = match passed {
                Ok(()) => self.store.swap_lease(term, version, new).await?,
                Err(_) => false,
            };
            lock(&self.swaps).push((sent, applied));
            passed.map(|()| applied)
        }
        async fn raise_fence(&self, term: Term) -> Result<u64> {
            self.store.raise_fence(term).await
        }
        async fn adopt_pending(&self, term: Term, limit: usize) -> Result<Vec<TaskRecord>> {
            self.store.adopt_pending(term, limit).await
        }
    }

    fn keeper(gate: &Arc<Gate>, id: &str, ttl: Duration) -> LeaseKeeper {
        let me = Candidate {
            id: id.into(),
            run: format!("{id}-run"),
            address: format!("{id}:1"),
        };
        let clock = Clock::starting_at(Timestamp::from_millis(1_000_000));
        LeaseKeeper::spawn(gate.clone(), me, ttl, clock, LeaseMetrics::new())
    }

    /// When `k` next leads: its term and the instant.
    async fn leads(k: &LeaseKeeper) -> (Term, Instant) {
        let mut role = k.role();
        let term = match &*role
            .wait_for(|r| matches!(r, Role::Leading { .. }))
            .await
            .expect("keeper runs")
        {
            Role::Leading { term, .. } => *term,
            Role::Following { .. } => unreachable!(),
        };
        (term, Instant::now())
    }

    async fn follows(k: &LeaseKeeper) -> Instant {
        let mut role = k.role();
        role.wait_for(|r| matches!(r, Role::Following { .. }))
            .await
            .expect("keeper runs");
        Instant::now()
    }

    fn until(k: &LeaseKeeper) -> Duration {
        match *k.role().borrow() {
            Role::Leading { until, .. } => {
                until.saturating_since(Timestamp::from_millis(1_000_000))
            }
            Role::Following { .. } => Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_renews_every_third_and_acts_until_two_thirds_past_the_send() {
        let gate = Arc::new(Gate::default());
        *lock(&gate.delay) = Duration::from_millis(300);
        let start = Instant::now();
        let a = keeper(&gate, "a", TTL);
        let (term, _) = leads(&a).await;
        assert_eq!(term, Term::new(1));
        // Mid-interval: the last renewal has been answered.
        tokio::time::sleep(TTL * 3 + TTL / 6).await;
        let swaps = lock(&gate.swaps).clone();
        assert!(swaps.len() >= 8, "renewals every TTL/3: {}", swaps.len());
        for pair in swaps.windows(2) {
            assert_eq!(pair[1].0 - pair[0].0, TTL / 3, "renewal cadence");
        }
        // The deadline counts from the last renewal's sending, not from
        // its answer 300 ms later.
        let last = gate.last_renewal();
        assert_eq!(until(&a), (last - start) + TTL * 2 / 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_takes_over_no_earlier_than_a_ttl_after_its_first_read() {
        let gate = Arc::new(Gate::default());
        let a = keeper(&gate, "a", TTL);
        leads(&a).await;
        let b = keeper(&gate, "b", TTL);
        tokio::time::sleep(TTL * 2).await;
        assert!(matches!(*b.role().borrow(), Role::Following { .. }));
        let crashed = Instant::now();
        drop(a);
        let last = gate.last_renewal();
        let (term, led) = leads(&b).await;
        assert_eq!(term, Term::new(2));
        // B's first read of A's last record returned after that renewal
        // was sent, and B waited a full TTL from it.
        assert!(
            led - last >= TTL,
            "took over {:?} after the last renewal",
            led - last
        );
        assert!(
            led - crashed <= TTL + TTL / 6 + TTL / 3,
            "took {:?}",
            led - crashed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_candidate_with_a_shorter_ttl_waits_the_holders() {
        let gate = Arc::new(Gate::default());
        let a = keeper(&gate, "a", TTL * 2);
        leads(&a).await;
        let b = keeper(&gate, "b", TTL);
        tokio::time::sleep(TTL).await;
        drop(a);
        let last = gate.last_renewal();
        let (_, led) = leads(&b).await;
        assert!(
            led - last >= TTL * 2,
            "took over {:?} after the last renewal",
            led - last
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_cut_off_stops_at_its_deadline_and_leads_again_at_the_same_term() {
        let gate = Arc::new(Gate::default());
        let a = keeper(&gate, "a", TTL);
        leads(&a).await;
        tokio::time::sleep(TTL).await;
        gate.down.store(true, Ordering::SeqCst);
        let cut = Instant::now();
        let stopped = follows(&a).await;
        let last = gate.last_renewal();
        assert!(last <= cut);
        assert_eq!(
            stopped - last,
            TTL * 2 / 3,
            "stops at its deadline, not later"
        );
        tokio::time::sleep(TTL * 2).await;
        gate.down.store(false, Ordering::SeqCst);
        let (term, _) = leads(&a).await;
        assert_eq!(
            term,
            Term::new(1),
            "its own unchanged record: the same term"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once() {
        let gate = Arc::new(Gate::default());
        let a = keeper(&gate, "a", TTL);
        leads(&a).await;
        let b = keeper(&gate, "b", TTL);
        tokio::time::sleep(TTL).await;
        let released = Instant::now();
        a.release().await.expect("released");
        assert!(matches!(*a.role().borrow(), Role::Following { .. }));
        let (term, led) = leads(&b).await;
        assert_eq!(term, Term::new(2));
        assert!(led - released <= TTL / 6, "took {:?}", led - released);
    }
}
