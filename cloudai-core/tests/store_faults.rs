//! Behaviour under store faults the memory store never shows: a slow
//! assignment write (a cancel lands meanwhile) and a failing result write
//! (the report path keeps the transition); and under a takeover, writes
//! refused by a later term's fence.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudai_core::apply::{apply_event, record_report, Applied};
use cloudai_core::clock::Clock;
use cloudai_core::lease::{Role, Tenure};
use cloudai_core::lifecycle::TaskEvent;
use cloudai_core::master::{CancelOutcome, Master, MasterConfig};
use cloudai_core::memory::MemoryStore;
use cloudai_core::model::{
    EndCause, InstanceId, Resources, RunningTask, StatusCounts, TaskId, TaskRecord, TaskResult,
    TaskSpec, TaskStatus, Term, Timestamp, WorkerId, WorkerIdentity,
};
use cloudai_core::output::{Follow, OutputFrom};
use cloudai_core::store::{
    CasOutcome, InsertOutcome, LeaseStore, PageKey, RequestClaim, StatusChange, TaskFilter,
    TaskStore,
};
use cloudai_core::transport::{MasterInfo, MasterToWorker, Registration, WorkerEndpoint};
use cloudai_core::{Error, Result};

/// A memory store with injected faults.
#[derive(Debug, Default)]
struct Faulty {
    store: MemoryStore,
    /// Assignment writes take a second.
    slow_assignments: bool,
    /// Result writes fail, as in an outage.
    results_down: bool,
}

#[async_trait]
impl TaskStore for Faulty {
    fn fenced(&self, term: Term) -> Arc<dyn TaskStore> {
        Arc::new(Faulty {
            store: self.store.at_term(term),
            ..*self
        })
    }
    async fn claim_request(&self, claim: RequestClaim) -> Result<Option<RequestClaim>> {
        self.store.claim_request(claim).await
    }
    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        self.store.insert_task(task).await
    }
    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.store.get_task(id).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        self.store.list_tasks(filter).await
    }
    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome> {
        if self.slow_assignments && change.to == TaskStatus::Running {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.store.update_status(id, change).await
    }
    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        if self.results_down {
            return Err(Error::Unavailable("results collection is down".into()));
        }
        self.store.insert_result(result).await
    }
    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        self.store.get_result(id).await
    }
    async fn count_tasks(&self) -> Result<StatusCounts> {
        self.store.count_tasks().await
    }
    async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts> {
        self.store.count_matching(filter).await
    }
    async fn insert_tasks(&self, tasks: Vec<TaskRecord>) -> Result<()> {
        self.store.insert_tasks(tasks).await
    }
    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        self.store.page_tasks(filter, after, limit).await
    }
    async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<CasOutcome> {
        self.store.set_priority(id, priority).await
    }
    async fn remove_finished(
        &self,
        before: Timestamp,
        limit: usize,
        keep: &[TaskId],
    ) -> Result<usize> {
        self.store.remove_finished(before, limit, keep).await
    }
}

/// Workers that accept everything (counting the assignments).
#[derive(Debug, Default)]
struct Accepting {
    assigned: Arc<AtomicUsize>,
}

#[async_trait]
impl MasterToWorker for Accepting {
    async fn master_register(&self, _: &WorkerEndpoint, _: &MasterInfo) -> Result<()> {
        Ok(())
    }
    async fn assign(
        &self,
        _: &WorkerEndpoint,
        _: &RunningTask,
        _: &TaskSpec,
        _: &[u32],
    ) -> Result<()> {
        self.assigned.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn cancel(&self, _: &WorkerEndpoint, _: &RunningTask, _: Duration) -> Result<()> {
        Ok(())
    }
    async fn follow_output(
        &self,
        _: &WorkerEndpoint,
        _: &RunningTask,
        _: OutputFrom,
        _: bool,
    ) -> Result<Follow> {
        Ok(tokio::sync::mpsc::channel(1).1)
    }
    async fn identify(&self, to: &WorkerEndpoint) -> Result<WorkerIdentity> {
        Ok(WorkerIdentity {
            id: to.id.clone(),
            instance: InstanceId::new("accepting").expect("valid"),
        })
    }
    fn fenced(&self, _: cloudai_core::model::Term) -> Arc<dyn MasterToWorker> {
        Arc::new(Accepting {
            assigned: self.assigned.clone(),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_cancelled_while_its_assignment_is_written_gives_its_room_back() {
    let registry = Arc::new(MemoryStore::new());
    let master = Master::start(
        MasterConfig::default(),
        Arc::new(Faulty {
            slow_assignments: true,
            ..Faulty::default()
        }),
        registry,
        Arc::new(Accepting::default()),
        Clock::starting_at(Timestamp::from_millis(1_700_000_000_000)),
    )
    .await
    .unwrap();
    let worker = WorkerId::new("w1").unwrap();
    let _ = master
        .register(Registration {
            worker: worker.clone(),
            instance: InstanceId::new("w1-instance").unwrap(),
            address: "w1:1".into(),
            capacity: Resources::new(2.0, 2.0, 0.0, 0).unwrap(),
            gpus: Vec::new(),
            allow_mounts: Vec::new(),
            labels: Default::default(),
            running: Vec::new(),
        })
        .await
        .unwrap();
    let spec = TaskSpec::new("img", vec![], Resources::new(1.0, 1.0, 0.0, 0).unwrap());
    let id = master.submit(spec).await.unwrap();
    // Placed: its room is reserved while the assignment is being written.
    assert_eq!(master.workers()[0].tasks, vec![id.clone()]);

    let out = master.cancel(&id, false).await.unwrap();
    assert_eq!(
        out,
        CancelOutcome::Dequeued,
        "the assignment had not landed"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let task = master.task(&id).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Cancelled);
    let w = &master.workers()[0];
    assert_eq!(
        w.allocated,
        Resources::ZERO,
        "the reservation was given back"
    );
    assert!(w.tasks.is_empty(), "{:?}", w.tasks);
    master.shutdown().await;
}

#[tokio::test]
async fn a_failed_result_write_keeps_the_stored_transition_and_its_effects() {
    let store = Faulty {
        results_down: true,
        ..Faulty::default()
    };
    let id = TaskId::new("t").unwrap();
    let worker = WorkerId::new("w").unwrap();
    let spec = TaskSpec::new("img", vec![], Resources::new(1.0, 1.0, 0.0, 0).unwrap());
    store
        .insert_task(TaskRecord::new(id.clone(), spec, Timestamp::ZERO))
        .await
        .unwrap();
    let assign = TaskEvent::Assign {
        worker: worker.clone(),
        gpus: vec![],
    };
    let _: Applied = apply_event(&store, &id, &assign, Timestamp::ZERO)
        .await
        .unwrap();
    let report = completed(&id, worker);
    let out = record_report(&store, report, Timestamp::from_millis(5))
        .await
        .expect("the transition was written");
    let Applied::Changed { transition, .. } = &out.status else {
        panic!("the report applies: {:?}", out.status)
    };
    assert_eq!(transition.to, TaskStatus::Completed);
    assert!(!transition.effects.is_empty(), "the release is handed back");
    assert!(
        matches!(out.result, Err(Error::Unavailable(_))),
        "the reporter is told to retry: {:?}",
        out.result
    );
}

fn w1() -> Registration {
    Registration {
        worker: WorkerId::new("w1").unwrap(),
        instance: InstanceId::new("w1-instance").unwrap(),
        address: "w1:1".into(),
        capacity: Resources::new(2.0, 2.0, 0.0, 0).unwrap(),
        gpus: Vec::new(),
        allow_mounts: Vec::new(),
        labels: Default::default(),
        running: Vec::new(),
    }
}

fn one_cpu() -> TaskSpec {
    TaskSpec::new("img", vec![], Resources::new(1.0, 1.0, 0.0, 0).unwrap())
}

/// A master leading term 1 of `store` for ever (as far as its lease goes).
async fn term_one(store: &MemoryStore, config: MasterConfig, workers: Arc<Accepting>) -> Master {
    let clock = Clock::starting_at(Timestamp::from_millis(1_700_000_000_000));
    let role = Role::Leading {
        term: Term::new(1),
        since: Timestamp::ZERO,
        until: Timestamp::from_millis(u64::MAX / 2),
    };
    // The sender must outlive the master: a tenure ends with it only by
    // its deadline, which is far away here.
    let (tx, rx) = tokio::sync::watch::channel(role);
    std::mem::forget(tx);
    Master::start_term(
        config,
        Arc::new(store.at_term(Term::new(1))),
        Arc::new(store.at_term(Term::new(1))),
        workers,
        Tenure::new(Term::new(1), Timestamp::ZERO, rx, clock),
    )
    .await
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_fenced_assignment_write_sends_nothing_and_deposes_the_master() {
    let store = MemoryStore::new();
    let workers = Arc::new(Accepting::default());
    let master = term_one(&store, MasterConfig::default(), workers.clone()).await;
    // Stored at term 1, waiting for a worker.
    let id = master.submit(one_cpu()).await.unwrap();
    // Another master takes over: term 2 raises every fence.
    store.raise_fence(Term::new(2)).await.unwrap();
    // A worker joins (its first registration is an insert, which no fence
    // can refuse); placing the task is refused.
    let _ = master.register(w1()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        *master.deposed().borrow(),
        "a fenced write deposes the master"
    );
    assert!(!master.acting());
    assert_eq!(
        workers.assigned.load(Ordering::SeqCst),
        0,
        "nothing was sent"
    );
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!((task.status, task.worker), (TaskStatus::Pending, None));
    // It sends no further write: a submit is now refused unsent.
    assert!(master.submit(one_cpu()).await.is_err());
    assert_eq!(store.count_tasks().await.unwrap().total(), 1);
    master.shutdown().await;
}

#[tokio::test]
async fn a_fenced_report_stores_no_result_and_the_worker_is_told_to_retry() {
    let store = MemoryStore::new();
    let id = TaskId::new("t").unwrap();
    let worker = WorkerId::new("w").unwrap();
    let old = store.at_term(Term::new(1));
    old.insert_task(TaskRecord::new(id.clone(), one_cpu(), Timestamp::ZERO))
        .await
        .unwrap();
    let assign = TaskEvent::Assign {
        worker: worker.clone(),
        gpus: vec![],
    };
    let _: Applied = apply_event(&old, &id, &assign, Timestamp::ZERO)
        .await
        .unwrap();
    store.raise_fence(Term::new(2)).await.unwrap();
    let report = completed(&id, worker);
    let refused = record_report(&old, report, Timestamp::from_millis(5)).await;
    assert!(
        matches!(refused, Err(Error::Fenced { .. })),
        "the reporter is told to retry, at the next leader: {refused:?}"
    );
    assert!(
        store.get_result(&id).await.unwrap().is_none(),
        "no result stored"
    );
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Running);
}

#[tokio::test(start_paused = true)]
async fn a_fenced_write_ends_a_write_that_must_not_be_lost_and_the_master_steps_down() {
    let store = MemoryStore::new();
    let mut config = MasterConfig::default();
    config.liveness.timeout = Duration::from_secs(10);
    config.liveness.lost_after = Duration::from_secs(20);
    config.heartbeat_interval = Duration::from_secs(2);
    let master = term_one(&store, config, Arc::new(Accepting::default())).await;
    let _ = master.register(w1()).await.unwrap();
    let id = master.submit(one_cpu()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        store.get_task(&id).await.unwrap().unwrap().status,
        TaskStatus::Running
    );
    store.raise_fence(Term::new(2)).await.unwrap();
    // The worker goes silent: its loss must be written (a write retried
    // until the store answers), but the store refuses this term for good.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(*master.deposed().borrow(), "the fenced write deposed it");
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(
        task.status,
        TaskStatus::Running,
        "the old term changed nothing"
    );
    tokio::time::timeout(Duration::from_secs(5), master.shutdown())
        .await
        .expect("no write is left retrying: the master stops");
}

/// Attempt 1 of `id` on `worker` reported completed.
fn completed(id: &TaskId, worker: WorkerId) -> TaskResult {
    TaskResult {
        task_id: id.clone(),
        worker_id: worker,
        attempt: 1,
        status: TaskStatus::Completed,
        exit_code: Some(0),
        logs: String::new(),
        logs_offset: 0,
        signal: None,
        message: None,
        cause: EndCause::Completed,
        started_at: None,
        finished_at: Timestamp::from_millis(5),
        usage: None,
    }
}
