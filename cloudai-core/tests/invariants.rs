//! Property tests: random event sequences (submit with random attempt
//! policies, place, complete, fail, duplicate and late reports, cancel,
//! requeue, stop confirmations, worker lost, master restart, reconcile)
//! drive the pure machines together, as the master does, and every
//! invariant is checked after every step: among them, a task is never
//! placed while an earlier attempt may still run, the retry budgets hold,
//! and a run's resources stay held until its end is known. The same sequences then run
//! through the in-memory store with the store-level helpers, and must end
//! in the same statuses and results.
//!
//! `PROPTEST_CASES` raises the number of sequences (default 256).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cloudai_core::apply::{apply_event, record_report, Applied};
use cloudai_core::ledger::Ledger;
use cloudai_core::lifecycle::{decide, Decision, Effect, TaskEvent};
use cloudai_core::memory::MemoryStore;
use cloudai_core::model::{
    AttemptPolicy, EndCause, Resources, RunningTask, TaskId, TaskRecord, TaskResult, TaskSpec,
    TaskStatus, Timestamp, WorkerId, MAX_ATTEMPTS,
};
use cloudai_core::placement::{place, Candidate, Placement, Policy, Scheduler};
use cloudai_core::results::{self, ResultDecision};
use cloudai_core::store::TaskStore;
use proptest::prelude::*;

const WORKERS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    AddWorker {
        w: usize,
        cpu_halves: u64,
        gpus: u32,
    },
    Submit {
        cpu_halves: u64,
        gpus: u32,
        retries: u32,
        crash_limit: u32,
        requeue: bool,
    },
    Place {
        t: usize,
    },
    Report {
        t: usize,
        cause: EndCause,
        from_assigned: bool,
        w: usize,
        stale: bool,
    },
    Cancel {
        t: usize,
        force: bool,
    },
    Requeue {
        t: usize,
    },
    /// A worker confirms one owed stop.
    StopConfirmed {
        t: usize,
    },
    WorkerLost {
        w: usize,
    },
    MasterRestart,
    Reconcile,
}

fn cause() -> impl Strategy<Value = EndCause> {
    prop::sample::select(EndCause::ALL.to_vec())
}

fn step() -> impl Strategy<Value = Step> {
    let t = 0usize..12;
    let w = 0..WORKERS;
    prop_oneof![
        1 => (w.clone(), 1u64..16, 0u32..2).prop_map(|(w, cpu_halves, gpus)| Step::AddWorker { w, cpu_halves, gpus }),
        3 => (0u64..6, 0u32..2, 0u32..3, 0u32..3, any::<bool>()).prop_map(|(cpu_halves, gpus, retries, crash_limit, requeue)| {
            Step::Submit { cpu_halves, gpus, retries, crash_limit, requeue }
        }),
        4 => t.clone().prop_map(|t| Step::Place { t }),
        4 => (t.clone(), cause(), prop::bool::weighted(0.8), w.clone(), prop::bool::weighted(0.15))
            .prop_map(|(t, cause, from_assigned, w, stale)| Step::Report { t, cause, from_assigned, w, stale }),
        2 => (t.clone(), any::<bool>()).prop_map(|(t, force)| Step::Cancel { t, force }),
        1 => t.clone().prop_map(|t| Step::Requeue { t }),
        2 => t.prop_map(|t| Step::StopConfirmed { t }),
        1 => w.prop_map(|w| Step::WorkerLost { w }),
        1 => Just(Step::MasterRestart),
        1 => Just(Step::Reconcile),
    ]
}

fn wid(i: usize) -> WorkerId {
    WorkerId::new(format!("w{i}")).unwrap()
}

fn tid(i: usize) -> TaskId {
    TaskId::new(format!("t{i}")).unwrap()
}

fn report(task: &TaskId, worker: &WorkerId, attempt: u32, cause: EndCause, n: usize) -> TaskResult {
    let status = match cause {
        EndCause::Completed => TaskStatus::Completed,
        EndCause::Cancelled => TaskStatus::Cancelled,
        _ => TaskStatus::Failed,
    };
    TaskResult {
        task_id: task.clone(),
        worker_id: worker.clone(),
        attempt,
        status,
        cause,
        exit_code: Some(i32::from(cause != EndCause::Completed)),
        logs: format!("report #{n}"),
        logs_offset: 0,
        signal: None,
        message: None,
        started_at: None,
        finished_at: Timestamp::from_millis(n as u64),
        usage: None,
    }
}

/// A task-level event the model decided on, replayed later against the store.
#[derive(Debug, Clone)]
enum Replay {
    Submit(Box<TaskRecord>),
    Event(TaskId, TaskEvent),
    Report(TaskResult),
}

/// The pure machines wired together the way the master wires them.
struct Model {
    tasks: BTreeMap<TaskId, TaskRecord>,
    results: BTreeMap<TaskId, TaskResult>,
    ledger: Ledger,
    /// The attempt each hold in the ledger is for.
    held: BTreeMap<TaskId, u32>,
    /// Stops owed, by task: the worker and the attempt.
    owed: BTreeMap<TaskId, (WorkerId, u32)>,
    capacity: BTreeMap<WorkerId, Resources>,
    lost: BTreeSet<WorkerId>,
    scheduler: Box<dyn Scheduler>,
    replay: Vec<Replay>,
    n: usize,
}

impl Model {
    fn new(policy: Policy) -> Self {
        Model {
            tasks: BTreeMap::new(),
            results: BTreeMap::new(),
            ledger: Ledger::new(),
            held: BTreeMap::new(),
            owed: BTreeMap::new(),
            capacity: BTreeMap::new(),
            lost: BTreeSet::new(),
            scheduler: policy.build(),
            replay: Vec::new(),
            n: 0,
        }
    }

    fn nth_task(&self, t: usize) -> Option<TaskId> {
        let ids: Vec<_> = self.tasks.keys().cloned().collect();
        (!ids.is_empty()).then(|| ids[t % ids.len()].clone())
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.n as u64)
    }

    /// The run `attempt` of `id` on `worker` is known to have ended.
    fn release_run(&mut self, id: &TaskId, worker: &WorkerId, attempt: u32) {
        if self.ledger.holder(id) == Some(worker) && self.held.get(id) == Some(&attempt) {
            self.ledger.release(id);
            self.held.remove(id);
            self.owed.remove(id);
        }
    }

    /// Decides and applies one lifecycle event, carrying out its effects.
    fn event(&mut self, id: &TaskId, event: TaskEvent, result: Option<TaskResult>) {
        let now = self.now();
        let before = self.tasks.get(id).cloned();
        match decide(before.as_ref(), &event, now) {
            Decision::Refuse(_) => {
                // A refused report still says its run is over.
                if let (TaskEvent::Report(a), Some(t)) = (&event, &before) {
                    if t.worker.as_ref() == Some(&a.worker) && t.attempt == a.attempt {
                        self.release_run(id, &a.worker, a.attempt);
                    }
                }
            }
            Decision::Apply(transition) => {
                let task = self.tasks.get_mut(id).unwrap();
                transition.change.apply_to(task);
                assert_eq!(task.status, transition.to);
                for effect in transition.effects {
                    match effect {
                        Effect::Reserve {
                            worker,
                            resources,
                            gpus,
                            attempt,
                        } => {
                            self.ledger
                                .reserve_devices(&worker, id, resources, &gpus)
                                .unwrap_or_else(|e| {
                                    panic!(
                                        "placed while a run holds resources, or without room: {e}"
                                    )
                                });
                            self.held.insert(id.clone(), attempt);
                        }
                        Effect::Release { worker, attempt } => {
                            assert_eq!(
                                self.ledger.holder(id),
                                Some(&worker),
                                "release must match reserve"
                            );
                            assert_eq!(self.held.get(id), Some(&attempt), "released another run");
                            self.release_run(id, &worker, attempt);
                        }
                        Effect::StopOnWorker {
                            worker, attempt, ..
                        } => {
                            self.owed.insert(id.clone(), (worker, attempt));
                        }
                        Effect::SendAssignment { .. } => {}
                    }
                }
            }
        }
        if let Some(r) = result {
            let replayed = r.clone();
            let after = self.tasks.get(id).cloned();
            if let ResultDecision::Store(r) =
                results::decide(after.as_ref(), self.results.get(id), r)
            {
                self.results.insert(id.clone(), r);
            }
            self.replay.push(Replay::Report(replayed));
        } else {
            self.replay.push(Replay::Event(id.clone(), event));
        }
    }

    fn candidates(&self) -> Vec<Candidate> {
        self.capacity
            .iter()
            .map(|(w, cap)| Candidate {
                id: w.clone(),
                active: !self.lost.contains(w),
                capacity: *cap,
                available: self.ledger.available(w).unwrap(),
            })
            .collect()
    }

    fn step(&mut self, step: &Step) {
        self.n += 1;
        match *step {
            Step::AddWorker {
                w,
                cpu_halves,
                gpus,
            } => {
                let cap = Resources::new(cpu_halves as f64 / 2.0, 16.0, 100.0, gpus).unwrap();
                // Capacity never shrinks below what runs there in this model.
                let cap = match self.capacity.get(&wid(w)) {
                    Some(old) if !cap.fits_within(old) || old == &cap => *old,
                    Some(old) => *old,
                    None => cap,
                };
                self.capacity.insert(wid(w), cap);
                self.ledger
                    .set_capacity(wid(w), cap, (0..cap.gpus).collect());
                self.lost.remove(&wid(w));
            }
            Step::Submit {
                cpu_halves,
                gpus,
                retries,
                crash_limit,
                requeue,
            } => {
                let mut spec = TaskSpec::new(
                    "img",
                    vec![],
                    Resources::new(cpu_halves as f64 / 2.0, 0.5, 0.0, gpus).unwrap(),
                );
                spec.policy = AttemptPolicy {
                    retries,
                    crash_limit,
                    requeue,
                    ..AttemptPolicy::default()
                };
                let task = TaskRecord::new(tid(self.tasks.len()), spec, self.now());
                self.replay.push(Replay::Submit(Box::new(task.clone())));
                self.tasks.insert(task.id.clone(), task);
            }
            Step::Place { t } => {
                let Some(id) = self.nth_task(t) else { return };
                // The master places a task only once its retry delay passed.
                if self.tasks[&id].not_before.is_some_and(|at| at > self.now()) {
                    return;
                }
                let req = self.tasks[&id].spec.resources;
                let cands = self.candidates();
                if let Placement::On(worker) = place(self.scheduler.as_mut(), &req, &cands) {
                    assert!(!self.lost.contains(&worker), "placed on an inactive worker");
                    // The ledger picks the GPUs, as in the master's pass (a
                    // task holding resources gets none: its assignment must
                    // be refused).
                    let gpus = match self.ledger.reserve(&worker, &id, req) {
                        Ok(gpus) => {
                            self.ledger.release(&id);
                            gpus
                        }
                        Err(_) => Vec::new(),
                    };
                    self.event(&id, TaskEvent::Assign { worker, gpus }, None);
                }
            }
            Step::Report {
                t,
                cause,
                from_assigned,
                w,
                stale,
            } => {
                let Some(id) = self.nth_task(t) else { return };
                let worker = match (&self.tasks[&id].worker, from_assigned) {
                    (Some(assigned), true) => assigned.clone(),
                    _ => wid(w),
                };
                let current = self.tasks[&id].attempt;
                let attempt = if stale {
                    current.saturating_sub(1)
                } else {
                    current
                };
                let r = report(&id, &worker, attempt, cause, self.n);
                let event = TaskEvent::Report(Box::new(cloudai_core::model::Attempt::reported(&r)));
                self.event(&id, event, Some(r));
            }
            Step::Cancel { t, force } => {
                let Some(id) = self.nth_task(t) else { return };
                self.event(&id, TaskEvent::Cancel { force }, None);
            }
            Step::Requeue { t } => {
                let Some(id) = self.nth_task(t) else { return };
                if let Some(worker) = self.tasks[&id].worker.clone() {
                    let attempt = self.tasks[&id].attempt;
                    self.event(
                        &id,
                        TaskEvent::Requeue {
                            worker,
                            attempt,
                            reason: "unreachable".into(),
                        },
                        None,
                    );
                }
            }
            Step::StopConfirmed { t } => {
                let Some(id) = self.nth_task(t) else { return };
                let Some((worker, attempt)) = self.owed.remove(&id) else {
                    return;
                };
                let confirmed = TaskEvent::StopConfirmed {
                    worker: worker.clone(),
                    attempt,
                };
                self.event(&id, confirmed, None);
                // A final task's run ends with its stop too.
                self.release_run(&id, &worker, attempt);
            }
            Step::WorkerLost { w } => {
                let worker = wid(w);
                self.lost.insert(worker.clone());
                let on_it: Vec<TaskId> = self.ledger.tasks_on(&worker).cloned().collect();
                for id in on_it {
                    self.event(
                        &id,
                        TaskEvent::WorkerLost {
                            worker: worker.clone(),
                        },
                        None,
                    );
                    // Runs already final end with their worker too.
                    if let Some(attempt) = self.held.get(&id).copied() {
                        self.release_run(&id, &worker, attempt);
                    }
                }
            }
            Step::MasterRestart => {
                // The in-memory ledger and owed stops are gone; the ledger
                // is rebuilt from the store, and a task still ending is
                // owed its stop again (what the master's load does).
                self.ledger = Ledger::new();
                for (w, cap) in &self.capacity {
                    self.ledger
                        .set_capacity(w.clone(), *cap, (0..cap.gpus).collect());
                }
                self.owed.clear();
                for t in self.tasks.values() {
                    if let (TaskStatus::Pending, Some(w)) = (t.status, &t.worker) {
                        self.owed.insert(t.id.clone(), (w.clone(), t.attempt));
                    }
                }
                let open = self.open_runs();
                self.held = open
                    .iter()
                    .map(|(r, _, _, _)| (r.task.clone(), r.attempt))
                    .collect();
                let r = self.ledger.reconcile(
                    open.into_iter()
                        .map(|(r, w, req, gpus)| (r.task, w, req, gpus)),
                );
                assert!(
                    r.unknown_workers.is_empty() && r.overcommitted.is_empty(),
                    "{r:?}"
                );
            }
            Step::Reconcile => {
                let open = self.open_runs();
                let r = self.ledger.reconcile(
                    open.into_iter()
                        .map(|(r, w, req, gpus)| (r.task, w, req, gpus)),
                );
                assert!(
                    r.is_clean(),
                    "effects kept the ledger exact, yet reconcile corrected it: {r:?}"
                );
            }
        }
    }

    /// The runs whose end is not known: running tasks, and the runs whose
    /// stop is still owed (a pending task's ending attempt, a cancelled
    /// task's last run), each with its worker, request and GPUs.
    fn open_runs(&self) -> Vec<(RunningTask, WorkerId, Resources, Vec<u32>)> {
        let run = |t: &TaskRecord, w: &WorkerId| {
            (
                RunningTask {
                    task: t.id.clone(),
                    attempt: t.attempt,
                },
                w.clone(),
                t.spec.resources,
                t.gpus.clone(),
            )
        };
        let mut open: Vec<_> = self
            .tasks
            .values()
            .filter(|t| t.status == TaskStatus::Running)
            .map(|t| run(t, t.worker.as_ref().unwrap()))
            .collect();
        for (id, (w, attempt)) in &self.owed {
            let t = &self.tasks[id];
            if t.status != TaskStatus::Running && t.attempt == *attempt {
                open.push(run(t, w));
            }
        }
        open
    }

    fn check(&self, before: &BTreeMap<TaskId, TaskRecord>) {
        for (id, old) in before {
            let now = &self.tasks[id];
            if old.status.is_terminal() {
                assert_eq!(
                    now.status, old.status,
                    "{id}: terminal status {} changed",
                    old.status
                );
                assert_eq!(now.worker, old.worker, "{id}: finished task moved");
            }
        }
        for t in self.tasks.values() {
            let counts = t.counts();
            let p = &t.spec.policy;
            assert!(counts.total <= MAX_ATTEMPTS, "{}: {counts:?}", t.id);
            assert!(
                counts.failures <= p.retries + 1,
                "{}: failures past the retries: {counts:?}",
                t.id
            );
            assert!(
                p.crash_limit == 0 || counts.losses <= p.crash_limit + 1,
                "{}: losses past the crash limit: {counts:?}",
                t.id
            );
            assert!(
                p.requeue || counts.losses <= 1,
                "{}: requeued against its policy",
                t.id
            );
            match t.status {
                TaskStatus::Pending => match &t.worker {
                    None => {}
                    Some(w) => assert_eq!(
                        self.owed.get(&t.id),
                        Some(&(w.clone(), t.attempt)),
                        "{}: ending, but its stop is not owed",
                        t.id
                    ),
                },
                TaskStatus::Running => {
                    assert!(t.worker.is_some(), "{}: running but unassigned", t.id)
                }
                _ => {}
            }
            assert_eq!(
                t.status.is_terminal(),
                t.finished_at.is_some(),
                "{}: finished_at",
                t.id
            );
        }
        for (id, r) in &self.results {
            let t = &self.tasks[id];
            assert!(
                t.status.is_terminal(),
                "{id}: result for an unfinished task"
            );
            assert_eq!(
                r.status, t.status,
                "{id}: result disagrees with the recorded outcome"
            );
            assert_eq!(
                Some(&r.worker_id),
                t.worker.as_ref(),
                "{id}: result from a worker it was not assigned to"
            );
        }
        let mut want: BTreeMap<WorkerId, Resources> = self
            .capacity
            .keys()
            .map(|w| (w.clone(), Resources::ZERO))
            .collect();
        let mut devices: BTreeMap<WorkerId, BTreeSet<u32>> = BTreeMap::new();
        for (run, w, req, gpus) in self.open_runs() {
            let sum = want.get_mut(&w).expect("running on a known worker");
            *sum = sum.checked_add(&req).unwrap();
            // A run not known ended holds exactly its GPUs: as many as it
            // asked for, each a GPU of its worker no other such run holds.
            assert_eq!(gpus.len(), req.gpus as usize, "{}: GPUs", run.task);
            let held = devices.entry(w.clone()).or_default();
            for g in gpus {
                assert!(
                    g < self.capacity[&w].gpus,
                    "{}: GPU {g} is not {w}'s",
                    run.task
                );
                assert!(held.insert(g), "{}: GPU {g} of {w} held twice", run.task);
            }
        }
        for (w, cap) in &self.capacity {
            let allocated = self.ledger.allocated(w).unwrap();
            let available = self.ledger.available(w).unwrap();
            assert_eq!(
                allocated, want[w],
                "{w}: allocation ≠ Σ requests of runs not known ended"
            );
            assert!(
                allocated.fits_within(cap),
                "{w}: allocated {allocated} exceeds capacity {cap}"
            );
            assert_eq!(
                allocated.checked_add(&available),
                Some(*cap),
                "{w}: allocated + available ≠ capacity"
            );
            let has_room = available.cpu_millis > 0 && available.memory_mb > 0;
            assert_eq!(
                self.ledger.open().get(w),
                has_room.then_some(&available),
                "{w}: the free-capacity index disagrees with the ledger ({available} free)"
            );
        }
    }
}

fn policy() -> impl Strategy<Value = Policy> {
    prop::sample::select(Policy::ALL.to_vec())
}

/// Replays the model's task-level history through the in-memory store.
async fn replay(history: &[Replay]) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for (n, item) in history.iter().enumerate() {
        let now = Timestamp::from_millis(n as u64);
        match item {
            Replay::Submit(t) => store.insert_task((**t).clone()).await.unwrap(),
            Replay::Event(id, e) => {
                let _: Applied = apply_event(store.as_ref(), id, e, now).await.unwrap();
            }
            Replay::Report(r) => {
                let out = record_report(store.as_ref(), r.clone(), now).await.unwrap();
                let _ = out.result.expect("result write");
            }
        }
    }
    store
}

proptest! {
    // The default config honours PROPTEST_CASES.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(policy in policy(), steps in prop::collection::vec(step(), 1..80)) {
        let mut model = Model::new(policy);
        for s in &steps {
            let before = model.tasks.clone();
            model.step(s);
            model.check(&before);
        }
    }

    #[test]
    fn the_store_agrees_with_the_pure_model(policy in policy(), steps in prop::collection::vec(step(), 1..60)) {
        let mut model = Model::new(policy);
        for s in &steps {
            model.step(s);
        }
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let store = rt.block_on(replay(&model.replay));
        for (id, t) in &model.tasks {
            let stored = rt.block_on(store.get_task(id)).unwrap().unwrap();
            prop_assert_eq!((stored.status, &stored.worker), (t.status, &t.worker), "{}", id);
            let result = rt.block_on(store.get_result(id)).unwrap();
            prop_assert_eq!(result.map(|r| r.status), model.results.get(id).map(|r| r.status), "{}", id);
        }
    }
}
