//! The resource ledger: what each worker has allocated, derived from the
//! tasks it runs.
//!
//! A worker's allocation is the sum of its running tasks' requests, kept
//! beside the per-task map it is computed from and changed only together
//! with it. There is no free-standing counter to drift, and
//! [`Ledger::reconcile`] rebuilds everything from the store's list of
//! running tasks, returning each correction it made (the operator's `fix-resources`).
//!
//! It also keeps a free-capacity index, [`Ledger::open`]: the workers with
//! some CPU and some memory free, so that placement among thousands of
//! full workers visits only those that can take anything.

use std::collections::BTreeMap;
use std::fmt;

use crate::model::{Resources, TaskId, WorkerId};

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The worker is not in the ledger.
    #[error("worker {0} is not registered")]
    UnknownWorker(WorkerId),
    /// The task already holds a reservation.
    #[error("task {task} already holds resources on {worker}")]
    AlreadyReserved {
        /// The task.
        task: TaskId,
        /// Where it holds them.
        worker: WorkerId,
    },
    /// The worker lacks room for the request.
    #[error("worker {worker} has {available} free, task needs {requested}")]
    Insufficient {
        /// The worker.
        worker: WorkerId,
        /// What the task asked for.
        requested: Resources,
        /// What the worker has free.
        available: Resources,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Account {
    capacity: Resources,
    tasks: BTreeMap<TaskId, Resources>,
    /// Sum of `tasks`; maintained only by `insert` and `remove` below.
    allocated: Resources,
}

impl Account {
    fn insert(&mut self, task: TaskId, req: Resources) {
        self.allocated = self
            .allocated
            .checked_add(&req)
            .expect("bounded resources cannot overflow");
        self.tasks.insert(task, req);
    }

    fn remove(&mut self, task: &TaskId) -> Option<Resources> {
        let req = self.tasks.remove(task)?;
        self.allocated = self
            .allocated
            .checked_sub(&req)
            .expect("allocation includes every task's request");
        Some(req)
    }
}

/// A correction made by [`Ledger::reconcile`] to one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// The worker.
    pub worker: WorkerId,
    /// Allocation before.
    pub before: Resources,
    /// Allocation after.
    pub after: Resources,
    /// Tasks that were running on it but missing from the ledger.
    pub added: Vec<TaskId>,
    /// Tasks the ledger held that are not running there.
    pub removed: Vec<TaskId>,
}

impl fmt::Display for Correction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: allocated {} -> {} (+{} -{} tasks)",
            self.worker,
            self.before,
            self.after,
            self.added.len(),
            self.removed.len()
        )
    }
}

/// What [`Ledger::reconcile`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Reconciliation {
    /// One entry per worker whose allocation changed.
    pub corrections: Vec<Correction>,
    /// Running tasks that name a worker the ledger does not know.
    pub unknown_workers: Vec<(TaskId, WorkerId)>,
    /// Workers whose running tasks now need more than their capacity
    /// (possible when a worker re-registers smaller).
    pub overcommitted: Vec<WorkerId>,
}

impl Reconciliation {
    /// Whether nothing needed fixing.
    pub fn is_clean(&self) -> bool {
        self.corrections.is_empty()
            && self.unknown_workers.is_empty()
            && self.overcommitted.is_empty()
    }
}

/// Per-worker capacity and allocation.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    accounts: BTreeMap<WorkerId, Account>,
    holder: BTreeMap<TaskId, WorkerId>,
    /// Workers with some CPU and some memory free, with what is free;
    /// kept by `refresh` after every change to an account.
    open: BTreeMap<WorkerId, Resources>,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a worker, or changes the capacity of a known one (its tasks stay).
    pub fn set_capacity(&mut self, worker: WorkerId, capacity: Resources) {
        self.accounts.entry(worker.clone()).or_default().capacity = capacity;
        self.refresh(&worker);
    }

    /// Puts `worker` in the free-capacity index, or takes it out, as its
    /// account now stands.
    fn refresh(&mut self, worker: &WorkerId) {
        let free = self.available(worker).unwrap_or_default();
        if free.cpu_millis == 0 || free.memory_mb == 0 {
            self.open.remove(worker);
        } else if let Some(known) = self.open.get_mut(worker) {
            *known = free;
        } else {
            self.open.insert(worker.clone(), free);
        }
    }

    /// The workers with some CPU and some memory free, in id order, with
    /// what is free: the only ones a request for both can fit.
    pub fn open(&self) -> &BTreeMap<WorkerId, Resources> {
        &self.open
    }

    /// Forgets a worker and returns the tasks that held resources on it.
    pub fn remove_worker(&mut self, worker: &WorkerId) -> Vec<TaskId> {
        let tasks: Vec<TaskId> = self
            .accounts
            .remove(worker)
            .map(|a| a.tasks.into_keys().collect())
            .unwrap_or_default();
        for t in &tasks {
            self.holder.remove(t);
        }
        self.open.remove(worker);
        tasks
    }

    /// Reserves `req` on `worker` for `task`, if it fits.
    pub fn reserve(
        &mut self,
        worker: &WorkerId,
        task: &TaskId,
        req: Resources,
    ) -> Result<(), LedgerError> {
        if let Some(w) = self.holder.get(task) {
            return Err(LedgerError::AlreadyReserved {
                task: task.clone(),
                worker: w.clone(),
            });
        }
        let account = self
            .accounts
            .get_mut(worker)
            .ok_or_else(|| LedgerError::UnknownWorker(worker.clone()))?;
        let available = account.capacity.saturating_sub(&account.allocated);
        if !req.fits_within(&available) {
            return Err(LedgerError::Insufficient {
                worker: worker.clone(),
                requested: req,
                available,
            });
        }
        account.insert(task.clone(), req);
        self.holder.insert(task.clone(), worker.clone());
        self.refresh(worker);
        Ok(())
    }

    /// Releases whatever `task` holds; `None` if it holds nothing (so a
    /// second release is a harmless no-op, never a negative allocation).
    pub fn release(&mut self, task: &TaskId) -> Option<(WorkerId, Resources)> {
        let worker = self.holder.remove(task)?;
        let req = self
            .accounts
            .get_mut(&worker)
            .and_then(|a| a.remove(task))?;
        self.refresh(&worker);
        Some((worker, req))
    }

    /// The worker's capacity.
    pub fn capacity(&self, worker: &WorkerId) -> Option<Resources> {
        self.accounts.get(worker).map(|a| a.capacity)
    }

    /// The sum of the worker's running tasks' requests.
    pub fn allocated(&self, worker: &WorkerId) -> Option<Resources> {
        self.accounts.get(worker).map(|a| a.allocated)
    }

    /// Capacity minus allocation (zero where overcommitted).
    pub fn available(&self, worker: &WorkerId) -> Option<Resources> {
        self.accounts
            .get(worker)
            .map(|a| a.capacity.saturating_sub(&a.allocated))
    }

    /// The tasks holding resources on the worker.
    pub fn tasks_on(&self, worker: &WorkerId) -> impl Iterator<Item = &TaskId> {
        self.accounts
            .get(worker)
            .into_iter()
            .flat_map(|a| a.tasks.keys())
    }

    /// Where `task` holds resources, and how much.
    pub fn reservation(&self, task: &TaskId) -> Option<(&WorkerId, Resources)> {
        let worker = self.holder.get(task)?;
        let req = *self.accounts.get(worker)?.tasks.get(task)?;
        Some((worker, req))
    }

    /// The worker `task` holds resources on.
    pub fn holder(&self, task: &TaskId) -> Option<&WorkerId> {
        self.holder.get(task)
    }

    /// Known workers, in id order.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerId> {
        self.accounts.keys()
    }

    /// Every worker with its capacity, by id.
    pub fn capacities(&self) -> impl Iterator<Item = (&WorkerId, Resources)> {
        self.accounts.iter().map(|(w, a)| (w, a.capacity))
    }

    /// Rebuilds every allocation from the tasks the store says are running
    /// (task, its worker, its request) and returns what changed. Idempotent:
    /// a second call with the same input returns a clean result.
    pub fn reconcile(
        &mut self,
        running: impl IntoIterator<Item = (TaskId, WorkerId, Resources)>,
    ) -> Reconciliation {
        let mut truth: BTreeMap<WorkerId, BTreeMap<TaskId, Resources>> = BTreeMap::new();
        let mut out = Reconciliation::default();
        for (task, worker, req) in running {
            if self.accounts.contains_key(&worker) {
                truth.entry(worker).or_default().insert(task, req);
            } else {
                out.unknown_workers.push((task, worker));
            }
        }
        for (worker, account) in &mut self.accounts {
            let want = truth.remove(worker).unwrap_or_default();
            if want == account.tasks {
                continue;
            }
            let added = want
                .keys()
                .filter(|t| !account.tasks.contains_key(*t))
                .cloned()
                .collect();
            let removed: Vec<TaskId> = account
                .tasks
                .keys()
                .filter(|t| !want.contains_key(*t))
                .cloned()
                .collect();
            let before = account.allocated;
            *account = Account {
                capacity: account.capacity,
                ..Account::default()
            };
            for (t, req) in want {
                account.insert(t, req);
            }
            out.corrections.push(Correction {
                worker: worker.clone(),
                before,
                after: account.allocated,
                added,
                removed,
            });
        }
        self.holder = self
            .accounts
            .iter()
            .flat_map(|(w, a)| a.tasks.keys().map(move |t| (t.clone(), w.clone())))
            .collect();
        for c in &out.corrections {
            self.refresh(&c.worker);
        }
        out.overcommitted = self
            .accounts
            .iter()
            .filter(|(_, a)| !a.allocated.fits_within(&a.capacity))
            .map(|(w, _)| w.clone())
            .collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> WorkerId {
        WorkerId::new(s).unwrap()
    }
    fn t(s: &str) -> TaskId {
        TaskId::new(s).unwrap()
    }
    fn cpu(c: f64) -> Resources {
        Resources::new(c, 0.0, 0.0, 0).unwrap()
    }

    #[test]
    fn reserve_and_release_keep_the_books_exact() {
        let mut l = Ledger::new();
        l.set_capacity(w("a"), cpu(2.0));
        l.reserve(&w("a"), &t("1"), cpu(1.5)).unwrap();
        assert_eq!(l.available(&w("a")), Some(cpu(0.5)));
        assert!(matches!(
            l.reserve(&w("a"), &t("2"), cpu(1.0)),
            Err(LedgerError::Insufficient { .. })
        ));
        assert!(matches!(
            l.reserve(&w("a"), &t("1"), cpu(0.1)),
            Err(LedgerError::AlreadyReserved { .. })
        ));
        assert_eq!(l.release(&t("1")), Some((w("a"), cpu(1.5))));
        assert_eq!(l.release(&t("1")), None, "a second release is a no-op");
        assert_eq!(l.allocated(&w("a")), Some(Resources::ZERO));
    }

    #[test]
    fn reserve_on_unknown_worker_is_refused() {
        assert_eq!(
            Ledger::new().reserve(&w("x"), &t("1"), cpu(1.0)),
            Err(LedgerError::UnknownWorker(w("x")))
        );
    }

    #[test]
    fn reconcile_fixes_phantom_allocations_and_reports_them() {
        // Seed 002: Tessa shows 5 CPU allocated with 0 running tasks.
        let mut l = Ledger::new();
        l.set_capacity(w("tessa"), cpu(20.0));
        l.reserve(&w("tessa"), &t("gone"), cpu(5.0)).unwrap();
        let r = l.reconcile([]);
        assert_eq!(r.corrections.len(), 1);
        assert_eq!(r.corrections[0].before, cpu(5.0));
        assert_eq!(r.corrections[0].after, Resources::ZERO);
        assert_eq!(r.corrections[0].removed, vec![t("gone")]);
        assert_eq!(l.available(&w("tessa")), Some(cpu(20.0)));
        assert!(l.reconcile([]).is_clean(), "reconcile is idempotent");
    }

    #[test]
    fn reconcile_adds_missing_tasks_and_flags_unknown_workers_and_overcommit() {
        let mut l = Ledger::new();
        l.set_capacity(w("a"), cpu(1.0));
        let r = l.reconcile([(t("1"), w("a"), cpu(2.0)), (t("2"), w("zz"), cpu(1.0))]);
        assert_eq!(r.corrections[0].added, vec![t("1")]);
        assert_eq!(r.unknown_workers, vec![(t("2"), w("zz"))]);
        assert_eq!(r.overcommitted, vec![w("a")]);
        assert_eq!(l.holder(&t("1")), Some(&w("a")));
        assert_eq!(l.available(&w("a")), Some(Resources::ZERO));
    }

    #[test]
    fn removing_a_worker_returns_its_tasks() {
        let mut l = Ledger::new();
        l.set_capacity(w("a"), cpu(4.0));
        l.reserve(&w("a"), &t("1"), cpu(1.0)).unwrap();
        assert_eq!(l.remove_worker(&w("a")), vec![t("1")]);
        assert_eq!(l.holder(&t("1")), None);
    }
}
