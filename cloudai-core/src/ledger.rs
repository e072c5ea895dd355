//! The resource ledger: what each worker has allocated, derived from the
//! tasks it runs.
//!
//! A worker's allocation is the sum of its running tasks' requests, kept
//! beside the per-task map it is computed from and changed only together
//! with it. There is no free-standing counter to drift, and
//! [`Ledger::reconcile`] rebuilds everything from the store's list of
//! running tasks, returning each correction it made (the operator's `fix-resources`).
//!
//! GPUs are handed out by index: a worker's account lists its devices,
//! each hold names the ones it got, and the devices in use are the union
//! of the holds, kept beside them like the allocation (never a counter of
//! its own), so the device sets of a worker's holds are pairwise disjoint.
//!
//! It also keeps a free-capacity index, [`Ledger::open`]: the workers with
//! some CPU and some memory free, so that placement among thousands of
//! full workers visits only those that can take anything.

use std::collections::{BTreeMap, BTreeSet};
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
    /// The devices named for the task are not the worker's or are taken.
    #[error("GPUs {gpus:?} are not free on worker {worker}")]
    DevicesTaken {
        /// The worker.
        worker: WorkerId,
        /// The devices asked for.
        gpus: Vec<u32>,
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

/// What one task holds on a worker: its request and the GPUs it got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Hold {
    req: Resources,
    gpus: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Account {
    capacity: Resources,
    /// The worker's GPU indices, ascending.
    devices: Vec<u32>,
    tasks: BTreeMap<TaskId, Hold>,
    /// Sum of `tasks`' requests; maintained only by `insert` and `remove`.
    allocated: Resources,
    /// How many of `tasks` hold each GPU (one, unless a reconcile found
    /// two runs on one device); maintained only by `insert` and `remove`.
    in_use: BTreeMap<u32, u32>,
}

impl Account {
    fn insert(&mut self, task: TaskId, hold: Hold) {
        self.allocated = self
            .allocated
            .checked_add(&hold.req)
            .expect("bounded resources cannot overflow");
        for g in &hold.gpus {
            *self.in_use.entry(*g).or_default() += 1;
        }
        self.tasks.insert(task, hold);
    }

    fn remove(&mut self, task: &TaskId) -> Option<Resources> {
        let hold = self.tasks.remove(task)?;
        self.allocated = self
            .allocated
            .checked_sub(&hold.req)
            .expect("allocation includes every task's request");
        for g in &hold.gpus {
            if let Some(n) = self.in_use.get_mut(g) {
                *n -= 1;
                if *n == 0 {
                    self.in_use.remove(g);
                }
            }
        }
        Some(hold.req)
    }

    /// The first `n` of the worker's devices no hold has, if there are so many.
    fn pick(&self, n: u32) -> Option<Vec<u32>> {
        let free: Vec<u32> = self
            .devices
            .iter()
            .copied()
            .filter(|g| !self.in_use.contains_key(g))
            .take(n as usize)
            .collect();
        (free.len() == n as usize).then_some(free)
    }

    /// Whether `gpus` are distinct devices of the worker that no hold has.
    fn are_free(&self, gpus: &[u32]) -> bool {
        let distinct: BTreeSet<&u32> = gpus.iter().collect();
        distinct.len() == gpus.len()
            && gpus
                .iter()
                .all(|g| self.devices.binary_search(g).is_ok() && !self.in_use.contains_key(g))
    }
}

impl Account {
    /// This account as `holds` make it: holds naming their GPUs first,
    /// then those naming none.
    fn rebuilt(&self, holds: BTreeMap<TaskId, Hold>) -> Account {
        let mut fresh = Account {
            capacity: self.capacity,
            devices: self.devices.clone(),
            ..Account::default()
        };
        let (named, unnamed): (Vec<_>, Vec<_>) = holds
            .into_iter()
            .partition(|(_, h)| h.gpus.len() >= h.req.gpus as usize);
        for (t, h) in named {
            fresh.insert(t, h);
        }
        // Those that keep what the ledger gave them first, so that none
        // takes a device another unnamed one already has.
        let mut rest = Vec::new();
        for (t, mut h) in unnamed {
            let kept = self
                .tasks
                .get(&t)
                .map(|old| old.gpus.clone())
                .filter(|g| g.len() == h.req.gpus as usize && fresh.are_free(g));
            match kept {
                Some(g) => {
                    h.gpus = g;
                    fresh.insert(t, h);
                }
                None => rest.push((t, h)),
            }
        }
        for (t, mut h) in rest {
            h.gpus = fresh.pick(h.req.gpus).unwrap_or_default();
            fresh.insert(t, h);
        }
        fresh
    }

    /// Whether the holds need more than the worker has: more than its
    /// capacity, a GPU it lacks, or one GPU twice.
    fn overcommitted(&self) -> bool {
        !self.allocated.fits_within(&self.capacity)
            || self
                .in_use
                .iter()
                .any(|(g, n)| *n > 1 || self.devices.binary_search(g).is_err())
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

    /// Adds a worker, or changes the capacity and GPU indices of a known
    /// one (its tasks stay).
    pub fn set_capacity(&mut self, worker: WorkerId, capacity: Resources, devices: Vec<u32>) {
        let account = self.accounts.entry(worker.clone()).or_default();
        account.capacity = capacity;
        account.devices = devices;
        account.devices.sort_unstable();
        account.devices.dedup();
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

    /// Reserves `req` on `worker` for `task`, if it fits, with the first
    /// `req.gpus` of the worker's free GPUs; returns their indices.
    pub fn reserve(
        &mut self,
        worker: &WorkerId,
        task: &TaskId,
        req: Resources,
    ) -> Result<Vec<u32>, LedgerError> {
        self.book(worker, task, req, None)
    }

    /// Reserves `req` on `worker` for `task` with exactly the GPUs `gpus`
    /// (an assignment already stored with them), if they are free.
    pub fn reserve_devices(
        &mut self,
        worker: &WorkerId,
        task: &TaskId,
        req: Resources,
        gpus: &[u32],
    ) -> Result<(), LedgerError> {
        self.book(worker, task, req, Some(gpus)).map(drop)
    }

    fn book(
        &mut self,
        worker: &WorkerId,
        task: &TaskId,
        req: Resources,
        gpus: Option<&[u32]>,
    ) -> Result<Vec<u32>, LedgerError> {
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
        let insufficient = || LedgerError::Insufficient {
            worker: worker.clone(),
            requested: req,
            available,
        };
        if !req.fits_within(&available) {
            return Err(insufficient());
        }
        let gpus = match gpus {
            None => account.pick(req.gpus).ok_or_else(insufficient)?,
            Some(named) if named.len() == req.gpus as usize && account.are_free(named) => {
                named.to_vec()
            }
            Some(named) => {
                return Err(LedgerError::DevicesTaken {
                    worker: worker.clone(),
                    gpus: named.to_vec(),
                })
            }
        };
        account.insert(
            task.clone(),
            Hold {
                req,
                gpus: gpus.clone(),
            },
        );
        self.holder.insert(task.clone(), worker.clone());
        self.refresh(worker);
        Ok(gpus)
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

    /// The worker's GPU indices, ascending.
    pub fn devices(&self, worker: &WorkerId) -> &[u32] {
        self.accounts.get(worker).map_or(&[], |a| &a.devices)
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

    /// The tasks holding GPUs on the worker, with their indices.
    pub fn gpus_on(&self, worker: &WorkerId) -> impl Iterator<Item = (&TaskId, &[u32])> {
        self.accounts
            .get(worker)
            .into_iter()
            .flat_map(|a| a.tasks.iter())
            .filter(|(_, h)| !h.gpus.is_empty())
            .map(|(t, h)| (t, h.gpus.as_slice()))
    }

    /// Where `task` holds resources, how much, and which GPUs.
    pub fn reservation(&self, task: &TaskId) -> Option<(&WorkerId, Resources, &[u32])> {
        let worker = self.holder.get(task)?;
        let hold = self.accounts.get(worker)?.tasks.get(task)?;
        Some((worker, hold.req, &hold.gpus))
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
    /// (task, its worker, its request, its GPUs) and returns what changed.
    /// A task that asked for GPUs but names none (stored before GPUs had
    /// indices) keeps the ones the ledger gave it, or gets free ones.
    /// Idempotent: a second call with the same input returns a clean result.
    pub fn reconcile(
        &mut self,
        running: impl IntoIterator<Item = (TaskId, WorkerId, Resources, Vec<u32>)>,
    ) -> Reconciliation {
        // By task: a task listed twice (stored, and still being placed)
        // holds once.
        let mut truth: BTreeMap<WorkerId, BTreeMap<TaskId, Hold>> = BTreeMap::new();
        let mut out = Reconciliation::default();
        for (task, worker, req, gpus) in running {
            if self.accounts.contains_key(&worker) {
                truth
                    .entry(worker)
                    .or_default()
                    .insert(task, Hold { req, gpus });
            } else {
                out.unknown_workers.push((task, worker));
            }
        }
        for (worker, account) in &mut self.accounts {
            let want = account.rebuilt(truth.remove(worker).unwrap_or_default());
            if want.tasks == account.tasks {
                continue;
            }
            let added = want
                .tasks
                .keys()
                .filter(|t| !account.tasks.contains_key(*t))
                .cloned()
                .collect();
            let removed: Vec<TaskId> = account
                .tasks
                .keys()
                .filter(|t| !want.tasks.contains_key(*t))
                .cloned()
                .collect();
            let before = account.allocated;
            *account = want;
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
            .filter(|(_, a)| a.overcommitted())
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
        l.set_capacity(w("a"), cpu(2.0), vec![]);
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
        l.set_capacity(w("tessa"), cpu(20.0), vec![]);
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
        l.set_capacity(w("a"), cpu(1.0), vec![]);
        let r = l.reconcile([
            (t("1"), w("a"), cpu(2.0), vec![]),
            (t("2"), w("zz"), cpu(1.0), vec![]),
        ]);
        assert_eq!(r.corrections[0].added, vec![t("1")]);
        assert_eq!(r.unknown_workers, vec![(t("2"), w("zz"))]);
        assert_eq!(r.overcommitted, vec![w("a")]);
        assert_eq!(l.holder(&t("1")), Some(&w("a")));
        assert_eq!(l.available(&w("a")), Some(Resources::ZERO));
    }

    #[test]
    fn removing_a_worker_returns_its_tasks() {
        let mut l = Ledger::new();
        l.set_capacity(w("a"), cpu(4.0), vec![]);
        l.reserve(&w("a"), &t("1"), cpu(1.0)).unwrap();
        assert_eq!(l.remove_worker(&w("a")), vec![t("1")]);
        assert_eq!(l.holder(&t("1")), None);
    }

    fn gpus(n: u32) -> Resources {
        Resources::new(0.1, 0.1, 0.0, n).unwrap()
    }
    fn with_gpus(n: u32) -> Resources {
        Resources::new(8.0, 8.0, 0.0, n).unwrap()
    }

    /// Every worker's holds name distinct devices of that worker, and the
    /// GPU count allocated is the number of devices held.
    fn assert_devices_disjoint(l: &Ledger) {
        for (w, a) in &l.accounts {
            let mut seen = BTreeSet::new();
            for (t, h) in &a.tasks {
                assert_eq!(h.gpus.len(), h.req.gpus as usize, "{t} on {w}");
                for g in &h.gpus {
                    assert!(a.devices.contains(g), "{t} holds {g}, not a GPU of {w}");
                    assert!(seen.insert(*g), "GPU {g} of {w} held twice");
                }
            }
            assert_eq!(a.allocated.gpus as usize, seen.len());
        }
    }

    #[test]
    fn gpus_are_handed_out_by_index_and_come_back() {
        let mut l = Ledger::new();
        l.set_capacity(w("a"), with_gpus(4), vec![0, 1, 2, 3]);
        let picks: Vec<Vec<u32>> = ["1", "2", "3", "4"]
            .iter()
            .map(|id| l.reserve(&w("a"), &t(id), gpus(1)).unwrap())
            .collect();
        assert_eq!(picks, vec![vec![0], vec![1], vec![2], vec![3]]);
        assert!(matches!(
            l.reserve(&w("a"), &t("5"), gpus(1)),
            Err(LedgerError::Insufficient { .. })
        ));
        l.release(&t("2"));
        assert_eq!(l.reserve(&w("a"), &t("5"), gpus(1)), Ok(vec![1]));
        assert_devices_disjoint(&l);
    }

    #[test]
    fn named_devices_are_reserved_only_when_free_and_the_workers() {
        let mut l = Ledger::new();
        l.set_capacity(w("a"), with_gpus(2), vec![2, 7]);
        assert_eq!(l.reserve(&w("a"), &t("1"), gpus(1)), Ok(vec![2]));
        for (id, named) in [("2", vec![2]), ("3", vec![0]), ("4", vec![7, 7])] {
            assert!(
                matches!(
                    l.reserve_devices(&w("a"), &t(id), gpus(named.len() as u32), &named),
                    Err(LedgerError::DevicesTaken { .. } | LedgerError::Insufficient { .. })
                ),
                "{named:?}"
            );
        }
        l.reserve_devices(&w("a"), &t("2"), gpus(1), &[7]).unwrap();
        assert_eq!(l.reservation(&t("2")).unwrap().2, &[7]);
        assert_devices_disjoint(&l);
    }

    #[test]
    fn reconcile_keeps_stored_devices_and_gives_unnamed_holds_free_ones() {
        let mut l = Ledger::new();
        l.set_capacity(w("a"), with_gpus(3), vec![0, 1, 2]);
        l.reserve(&w("a"), &t("old"), gpus(1)).unwrap();
        // "old" was stored before GPUs had indices: it keeps GPU 0; "new"
        // names GPU 2; "legacy" names none and gets the free GPU 1.
        let r = l.reconcile([
            (t("old"), w("a"), gpus(1), vec![]),
            (t("new"), w("a"), gpus(1), vec![2]),
            (t("legacy"), w("a"), gpus(1), vec![]),
        ]);
        assert!(r.overcommitted.is_empty());
        assert_eq!(l.reservation(&t("old")).unwrap().2, &[0]);
        assert_eq!(l.reservation(&t("new")).unwrap().2, &[2]);
        assert_eq!(l.reservation(&t("legacy")).unwrap().2, &[1]);
        assert_devices_disjoint(&l);
        // A task listed twice (stored, and still being placed) holds once.
        let before = l.allocated(&w("a"));
        let twice = l.reconcile([
            (t("old"), w("a"), gpus(1), vec![0]),
            (t("old"), w("a"), gpus(1), vec![0]),
            (t("new"), w("a"), gpus(1), vec![2]),
            (t("legacy"), w("a"), gpus(1), vec![1]),
        ]);
        assert!(twice.is_clean(), "{twice:?}");
        assert_eq!(l.allocated(&w("a")), before);
        // Unnamed holds keep what they had, whatever their order: "a-first"
        // sorts before "z-had-0" and must not take its GPU 0.
        let mut m = Ledger::new();
        m.set_capacity(w("a"), with_gpus(2), vec![0, 1]);
        m.reserve(&w("a"), &t("z-had-0"), gpus(1)).unwrap();
        let r = m.reconcile([
            (t("a-first"), w("a"), gpus(1), vec![]),
            (t("z-had-0"), w("a"), gpus(1), vec![]),
        ]);
        assert!(r.overcommitted.is_empty());
        assert_eq!(m.reservation(&t("z-had-0")).unwrap().2, &[0]);
        assert_eq!(m.reservation(&t("a-first")).unwrap().2, &[1]);
        // One device named twice is flagged, not hidden.
        let r = l.reconcile([
            (t("x"), w("a"), gpus(1), vec![1]),
            (t("y"), w("a"), gpus(1), vec![1]),
        ]);
        assert_eq!(r.overcommitted, vec![w("a")]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Reserve { task: u8, worker: u8, gpus: u32 },
            Release { task: u8 },
            Resize { worker: u8, devices: Vec<u32> },
            Reconcile { forget: u8 },
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u8..12, 0u8..3, 0u32..4)
                    .prop_map(|(task, worker, gpus)| Op::Reserve { task, worker, gpus }),
                3 => (0u8..12).prop_map(|task| Op::Release { task }),
                1 => (0u8..3, proptest::collection::vec(0u32..8, 0..6))
                    .prop_map(|(worker, devices)| Op::Resize { worker, devices }),
                1 => (0u8..12).prop_map(|forget| Op::Reconcile { forget }),
            ]
        }

        proptest! {
            /// After any sequence of reservations, releases, workers
            /// re-registering with other devices and reconciles that drop
            /// a task's GPU indices, a worker's holds name distinct devices
            /// of its own, unless a reconcile reports it overcommitted.
            #[test]
            fn device_sets_stay_disjoint(ops in proptest::collection::vec(op(), 1..80)) {
                let mut l = Ledger::new();
                for i in 0..3u8 {
                    l.set_capacity(w(&format!("w{i}")), Resources::new(64.0, 64.0, 0.0, 4).unwrap(), vec![0, 1, 2, 3]);
                }
                let mut flagged = BTreeSet::new();
                for op in ops {
                    match op {
                        Op::Reserve { task, worker, gpus: n } => {
                            let (wid, tid) = (w(&format!("w{worker}")), t(&format!("t{task}")));
                            if let Ok(got) = l.reserve(&wid, &tid, gpus(n)) {
                                // A reservation never hands out a device that
                                // is not the worker's or that another holds.
                                let a = &l.accounts[&wid];
                                prop_assert_eq!(got.len(), n as usize);
                                for g in &got {
                                    prop_assert!(a.devices.contains(g));
                                    prop_assert_eq!(a.in_use[g], 1);
                                }
                            }
                        }
                        Op::Release { task } => {
                            l.release(&t(&format!("t{task}")));
                        }
                        Op::Resize { worker, devices } => {
                            let mut d = devices.clone();
                            d.sort_unstable();
                            d.dedup();
                            let cap = Resources::new(64.0, 64.0, 0.0, d.len() as u32).unwrap();
                            l.set_capacity(w(&format!("w{worker}")), cap, d);
                        }
                        Op::Reconcile { forget } => {
                            let truth: Vec<_> = l.accounts.iter().flat_map(|(wid, a)| {
                                a.tasks.iter().map(move |(tid, h)| {
                                    let gpus = if tid.as_str() == format!("t{forget}") { vec![] } else { h.gpus.clone() };
                                    (tid.clone(), wid.clone(), h.req, gpus)
                                })
                            }).collect();
                            flagged = l.reconcile(truth).overcommitted.into_iter().collect();
                        }
                    }
                    for (wid, a) in &l.accounts {
                        if flagged.contains(wid) || a.overcommitted() {
                            continue;
                        }
                        let mut seen = BTreeSet::new();
                        for h in a.tasks.values() {
                            for g in &h.gpus {
                                prop_assert!(a.devices.contains(g));
                                prop_assert!(seen.insert(*g));
                            }
                        }
                    }
                }
            }
        }
    }
}
