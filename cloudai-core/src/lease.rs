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
            until: Timestamp::from_millis(u64::MAX),
        }
    }

    /// Whether it may act at `term` at time `now`.
    pub fn acts(&self, term: Term, now: Timestamp) -> bool {
        matches!(self, Role::Leading { term: t, until } if *t == term && now < *until)
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
/// master's [`Role`]. Dropping it stops the keeping without a release (as
/// a crash would); [`LeaseKeeper::release`] hands the lease on at once.
#[derive(Debug)]
pub struct LeaseKeeper {
    role: watch::Receiver<Role>,
    held: Arc<Mutex<Option<(Term, u64)>>>,
    shared: Arc<Keeping>,
    task: JoinHandle<()>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
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

    /// Stops keeping the lease and, if this master holds it, clears its
    /// holder so that a candidate takes over at once. Publishes
    /// [`Role::Following`] first: nothing acts on the lease any more.
    pub async fn release(&self) -> Result<()> {
        self.task.abort();
        self.shared.step_down(None);
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
        self.role.send_replace(Role::Leading {
            term: lead.term,
            until: lead.until,
        });
        self.metrics.leading(lead.term);
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
                self.sleep_until(next).await;
                let renewed = self.record(lead.term, lead.version.saturating_add(1));
                let began = tokio::time::Instant::now();
                let outcome = tokio::select! {
                    outcome = self.swap(lead.term, lead.version, renewed) => outcome,
                    _ = self.sleep_until(lead.until) => {
                        warn!(term = %lead.term, "no lease renewal in time: stopped acting");
                        self.step_down(None);
                        return lead.term;
                    }
                };
                match outcome {
                    Ok(Some(renewed)) => {
                        self.metrics.renewed(began.elapsed());
                        break renewed;
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
    role: watch::Receiver<Role>,
    clock: Clock,
}

impl Tenure {
    /// A single master without a lease: term 0, for ever.
    pub fn single(clock: Clock) -> Tenure {
        Tenure::new(Term::ZERO, watch::channel(Role::single()).1, clock)
    }

    /// Term `term`, while `role` says this master leads it.
    pub fn new(term: Term, role: watch::Receiver<Role>, clock: Clock) -> Tenure {
        Tenure { term, role, clock }
    }

    /// The term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The clock it is judged on.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Whether the master may act now: it still leads its term and the
    /// acting deadline has not passed.
    pub fn acting(&self) -> bool {
        self.role.borrow().acts(self.term, self.clock.now())
    }
}
