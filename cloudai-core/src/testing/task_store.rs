//! The [`TaskStore`] conformance suite.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::{pending_task, task_id, worker_id};
use crate::apply::{apply_event, record_report, Applied};
use crate::lifecycle::TaskEvent;
use crate::model::{
    ArrayId, ArrayMember, AttemptPolicy, Condition, ContainerOptions, Dependency, EndCause,
    StatusCounts, TaskResult, TaskStatus, Timestamp, Usage, WorkerId,
};
use crate::store::{
    Assignment, CasOutcome, InsertOutcome, PageKey, StatusChange, TaskFilter, TaskStore,
    WorkerGuard,
};
use crate::Error;

/// Tasks per race case: enough to interleave on a multi-threaded runtime,
/// small enough for a remote database.
const RACE_TASKS: usize = 48;

/// Runs every case, each on a fresh store from `new_store`.
pub async fn run_all<B, Fut>(new_store: B)
where
    B: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn TaskStore>>,
{
    insert_and_get(new_store().await).await;
    a_full_spec_round_trips(new_store().await).await;
    names_and_labels_filter_lists_and_pages(new_store().await).await;
    priority_changes_only_while_pending(new_store().await).await;
    duplicate_insert_is_refused(new_store().await).await;
    list_filters_and_orders(new_store().await).await;
    counts_follow_inserts_and_changes(new_store().await).await;
    a_batch_is_stored_whole(new_store().await).await;
    pages_list_every_task_once_newest_first(new_store().await).await;
    retention_removes_old_finished_tasks_with_their_results(new_store().await).await;
    cas_applies_when_the_guard_holds(new_store().await).await;
    cas_rejects_a_status_outside_the_guard(new_store().await).await;
    cas_rejects_the_wrong_worker(new_store().await).await;
    cas_on_unknown_task_is_not_found(new_store().await).await;
    cas_rejects_a_stale_attempt(new_store().await).await;
    requeue_clears_the_assignment(new_store().await).await;
    attempts_are_kept_with_the_task(new_store().await).await;
    result_insert_is_insert_if_absent(new_store().await).await;
    race_cancel_against_reports(new_store().await).await;
    race_result_inserts(new_store().await).await;
    race_assignments(new_store().await).await;
}

fn result(task: &str, worker: &WorkerId, status: TaskStatus, logs: &str) -> TaskResult {
    TaskResult {
        task_id: task_id(task),
        worker_id: worker.clone(),
        attempt: 1,
        status,
        exit_code: Some(if status == TaskStatus::Completed {
            0
        } else {
            1
        }),
        logs: logs.into(),
        logs_offset: 0,
        signal: None,
        message: None,
        cause: EndCause::inferred(status, Some(1), None),
        started_at: Some(Timestamp::from_millis(1)),
        finished_at: Timestamp::from_millis(2),
        usage: Some(Usage {
            wall_ms: 1,
            user_cpu_ms: 700,
            system_cpu_ms: 50,
            peak_memory_bytes: 200 << 20,
            pull_ms: Some(30),
        }),
    }
}

/// A change from `from` to `to` guarded by `worker`, setting nothing else.
fn change(
    from: TaskStatus,
    worker: WorkerGuard,
    to: TaskStatus,
    assignment: Assignment,
    at: u64,
) -> StatusChange {
    StatusChange {
        allowed_from: vec![from],
        expected_worker: worker,
        expected_attempt: None,
        to,
        assignment,
        reason: None,
        not_before: None,
        push: None,
        at: Timestamp::from_millis(at),
    }
}

/// Assigns `task` to `worker`, with the worker's GPU 0.
async fn assign(store: &dyn TaskStore, task: &str, worker: &WorkerId) {
    let event = TaskEvent::Assign {
        worker: worker.clone(),
        gpus: vec![0],
    };
    let applied = apply_event(store, &task_id(task), &event, Timestamp::from_millis(10))
        .await
        .expect("assign");
    assert!(
        matches!(applied, Applied::Changed { .. }),
        "assigning a pending task must apply: {applied:?}"
    );
}

/// A stored task reads back equal; an unknown id reads back as `None`.
pub async fn insert_and_get(store: Arc<dyn TaskStore>) {
    let t = pending_task("t-1", 5);
    store.insert_task(t.clone()).await.expect("insert");
    assert_eq!(
        store.get_task(&t.id).await.expect("get"),
        Some(t),
        "task must read back as stored"
    );
    assert_eq!(store.get_task(&task_id("nope")).await.expect("get"), None);
    assert_eq!(
        store.get_result(&task_id("t-1")).await.expect("get result"),
        None
    );
}

/// Every field of a spec and of an array membership reads back as
/// stored: name, labels (keys with `.` and `/`), priority, constraints,
/// dependencies and the array's throttle.
pub async fn a_full_spec_round_trips(store: Arc<dyn TaskStore>) {
    let mut t = pending_task("full", 5);
    t.spec.name = Some("train step".into());
    t.spec.labels = [("team", "ml"), ("cloudai.io/stage", "2"), ("empty", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    t.spec.priority = -3;
    t.spec.constraints = ["zone=a", "gpu in (a100,h100)", "!spot", "ssd", "rack!=7"]
        .iter()
        .map(|c| c.parse().expect("constraint"))
        .collect();
    t.spec.after = vec![
        Dependency {
            task: task_id("p1"),
            condition: Condition::AfterOk,
        },
        Dependency {
            task: task_id("p2"),
            condition: Condition::AfterNotOk,
        },
    ];
    t.array = Some(ArrayMember {
        id: ArrayId::new("arr-full").expect("valid"),
        index: 4,
        limit: Some(3),
    });
    store.insert_task(t.clone()).await.expect("insert");
    assert_eq!(store.get_task(&t.id).await.expect("get"), Some(t));
}

/// `name` and `labels` filters select exactly the tasks that carry them
/// (every label given), in lists and in pages.
pub async fn names_and_labels_filter_lists_and_pages(store: Arc<dyn TaskStore>) {
    let labelled = |id: &str, at: u64, name: Option<&str>, labels: &[(&str, &str)]| {
        let mut t = pending_task(id, at);
        t.spec.name = name.map(str::to_owned);
        t.spec.labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        t
    };
    for t in [
        labelled("n1", 1, Some("prep"), &[("team", "ml"), ("run", "a")]),
        labelled("n2", 2, Some("prep"), &[("team", "ml"), ("run", "b")]),
        labelled("n3", 3, Some("eval"), &[("team", "db")]),
        labelled("n4", 4, None, &[]),
    ] {
        store.insert_task(t).await.expect("insert");
    }
    let ids = |tasks: Vec<crate::model::TaskRecord>| -> Vec<String> {
        tasks.into_iter().map(|t| t.id.to_string()).collect()
    };
    let label = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    for (filter, want) in [
        (
            TaskFilter {
                name: Some("prep".into()),
                ..TaskFilter::default()
            },
            vec!["n1", "n2"],
        ),
        (
            TaskFilter {
                labels: vec![label("team", "ml")],
                ..TaskFilter::default()
            },
            vec!["n1", "n2"],
        ),
        (
            TaskFilter {
                labels: vec![label("team", "ml"), label("run", "b")],
                ..TaskFilter::default()
            },
            vec!["n2"],
        ),
        (
            TaskFilter {
                name: Some("eval".into()),
                labels: vec![label("team", "ml")],
                ..TaskFilter::default()
            },
            vec![],
        ),
        (
            TaskFilter {
                labels: vec![label("team", "")],
                ..TaskFilter::default()
            },
            vec![],
        ),
    ] {
        let listed = ids(store.list_tasks(&filter).await.expect("list"));
        assert_eq!(listed, want, "list {filter:?}");
        let mut paged = ids(store.page_tasks(&filter, None, 100).await.expect("page"));
        paged.reverse();
        assert_eq!(paged, want, "page {filter:?}");
        let counts = store.count_matching(&filter).await.expect("count");
        assert_eq!(counts.pending as usize, want.len(), "count {filter:?}");
        assert_eq!(counts.total() as usize, want.len(), "count {filter:?}");
    }
}

/// A pending task's priority changes; a running one's is refused with
/// the record as it is; an unknown task is `NotFound`.
pub async fn priority_changes_only_while_pending(store: Arc<dyn TaskStore>) {
    let w = worker_id("w-p");
    for id in ["pr-wait", "pr-run"] {
        store
            .insert_task(pending_task(id, 1))
            .await
            .expect("insert");
    }
    assign(store.as_ref(), "pr-run", &w).await;
    match store
        .set_priority(&task_id("pr-wait"), 7)
        .await
        .expect("set")
    {
        CasOutcome::Applied { before } => assert_eq!(before.spec.priority, 0),
        other => panic!("a pending task's priority must change: {other:?}"),
    }
    let stored = store
        .get_task(&task_id("pr-wait"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(stored.spec.priority, 7);
    match store
        .set_priority(&task_id("pr-run"), 7)
        .await
        .expect("set")
    {
        CasOutcome::Rejected { current } => {
            assert_eq!(current.status, TaskStatus::Running);
            assert_eq!(current.spec.priority, 0);
        }
        other => panic!("a running task's priority must not change: {other:?}"),
    }
    assert!(matches!(
        store.set_priority(&task_id("pr-none"), 1).await,
        Err(Error::NotFound { .. })
    ));
}

/// Inserting an existing id fails with `AlreadyExists` and keeps the original.
pub async fn duplicate_insert_is_refused(store: Arc<dyn TaskStore>) {
    let t = pending_task("dup", 1);
    store.insert_task(t.clone()).await.expect("insert");
    let mut other = pending_task("dup", 2);
    other.spec.image = "other".into();
    let err = store
        .insert_task(other)
        .await
        .expect_err("second insert must fail");
    assert!(
        matches!(err, Error::AlreadyExists { .. }),
        "expected AlreadyExists, got {err:?}"
    );
    assert_eq!(
        store.get_task(&t.id).await.expect("get"),
        Some(t),
        "original must be kept"
    );
}

/// Filters by status set and worker; results are oldest first, ties by id.
pub async fn list_filters_and_orders(store: Arc<dyn TaskStore>) {
    let (a, b) = (worker_id("w-a"), worker_id("w-b"));
    for (id, created) in [
        ("t-3", 30),
        ("t-1", 10),
        ("t-2b", 20),
        ("t-2a", 20),
        ("t-4", 40),
    ] {
        store
            .insert_task(pending_task(id, created))
            .await
            .expect("insert");
    }
    assign(store.as_ref(), "t-1", &a).await;
    assign(store.as_ref(), "t-2a", &b).await;
    assign(store.as_ref(), "t-3", &a).await;
    let ids = |v: Vec<crate::model::TaskRecord>| {
        v.into_iter().map(|t| t.id.to_string()).collect::<Vec<_>>()
    };
    let all = store
        .list_tasks(&TaskFilter::default())
        .await
        .expect("list");
    assert_eq!(
        ids(all),
        ["t-1", "t-2a", "t-2b", "t-3", "t-4"],
        "oldest first, ties by id"
    );
    let running = store
        .list_tasks(&TaskFilter::status([TaskStatus::Running]))
        .await
        .expect("list");
    assert_eq!(ids(running), ["t-1", "t-2a", "t-3"]);
    let on_a = TaskFilter {
        statuses: vec![],
        worker: Some(a.clone()),
        array: None,
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(store.list_tasks(&on_a).await.expect("list")),
        ["t-1", "t-3"]
    );
    let running_on_a = TaskFilter {
        statuses: vec![TaskStatus::Running],
        worker: Some(a.clone()),
        array: None,
        ..TaskFilter::default()
    };
    assert_eq!(
        ids(store.list_tasks(&running_on_a).await.expect("list")),
        ["t-1", "t-3"],
        "running on a worker, oldest first"
    );
    let running_on_a_in_an_array = TaskFilter {
        array: Some(ArrayId::new("no-such-array").expect("valid")),
        ..running_on_a.clone()
    };
    assert!(
        store
            .list_tasks(&running_on_a_in_an_array)
            .await
            .expect("list")
            .is_empty(),
        "every part of the filter holds"
    );
    let cancel = TaskEvent::Cancel { force: false };
    let at = Timestamp::from_millis(90);
    let cancelled = apply_event(store.as_ref(), &task_id("t-1"), &cancel, at)
        .await
        .expect("cancel");
    assert!(matches!(cancelled, Applied::Changed { .. }));
    assert_eq!(
        ids(store.list_tasks(&running_on_a).await.expect("list")),
        ["t-3"],
        "a task that ended is no longer running there"
    );
    assert_eq!(
        ids(store.list_tasks(&on_a).await.expect("list")),
        ["t-1", "t-3"],
        "it still ran there"
    );
    let pending_on_a = TaskFilter {
        statuses: vec![TaskStatus::Pending],
        worker: Some(a),
        array: None,
        ..TaskFilter::default()
    };
    assert!(store
        .list_tasks(&pending_on_a)
        .await
        .expect("list")
        .is_empty());
    let either = TaskFilter::status([TaskStatus::Pending, TaskStatus::Running]);
    assert_eq!(store.list_tasks(&either).await.expect("list").len(), 4);
}

/// A batch of tasks is stored whole; a batch holding a taken id fails with
/// `AlreadyExists` and leaves the task that held it as it was.
pub async fn a_batch_is_stored_whole(store: Arc<dyn TaskStore>) {
    let array = ArrayId::new("array-1").expect("valid");
    let batch: Vec<_> = (0..5)
        .map(|i| {
            let mut t = pending_task(&format!("b-{i}"), 7);
            t.array = Some(ArrayMember {
                id: array.clone(),
                index: i,
                limit: None,
            });
            t
        })
        .collect();
    store.insert_tasks(batch.clone()).await.expect("batch");
    for t in &batch {
        assert_eq!(store.get_task(&t.id).await.expect("get").as_ref(), Some(t));
    }
    let in_array = TaskFilter {
        array: Some(array),
        ..TaskFilter::default()
    };
    assert_eq!(store.list_tasks(&in_array).await.expect("list").len(), 5);
    let mut again = pending_task("b-new", 8);
    again.spec.image = "other".into();
    let mut taken = pending_task("b-2", 9);
    taken.spec.image = "other".into();
    let err = store
        .insert_tasks(vec![again, taken])
        .await
        .expect_err("a taken id fails the batch");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(
        store.get_task(&task_id("b-2")).await.expect("get").as_ref(),
        Some(&batch[2]),
        "the task that held the id is kept"
    );
}

/// Pages of any size, newest first (ties by id, descending), list every
/// task passing the filter exactly once; a filter by status or array pages
/// the same way.
pub async fn pages_list_every_task_once_newest_first(store: Arc<dyn TaskStore>) {
    let array = ArrayId::new("array-p").expect("valid");
    let mut want = Vec::new();
    for i in 0..23u32 {
        // Three tasks share each creation time, to exercise the tie order.
        let mut t = pending_task(&format!("p-{i:02}"), u64::from(i / 3));
        if i % 2 == 0 {
            t.array = Some(ArrayMember {
                id: array.clone(),
                index: i,
                limit: None,
            });
        }
        store.insert_task(t.clone()).await.expect("insert");
        want.push(t);
    }
    let w = worker_id("w-p");
    for i in [1, 4, 9, 16] {
        assign(store.as_ref(), &format!("p-{i:02}"), &w).await;
    }
    want.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
    let ids =
        |v: &[crate::model::TaskRecord]| v.iter().map(|t| t.id.to_string()).collect::<Vec<_>>();
    for (filter, expect) in [
        (TaskFilter::default(), ids(&want)),
        (
            TaskFilter::status([TaskStatus::Running]),
            vec!["p-16", "p-09", "p-04", "p-01"]
                .into_iter()
                .map(String::from)
                .collect(),
        ),
        (
            TaskFilter {
                array: Some(array.clone()),
                ..TaskFilter::default()
            },
            ids(&want
                .iter()
                .filter(|t| t.array.is_some())
                .cloned()
                .collect::<Vec<_>>()),
        ),
    ] {
        for limit in [1, 5, 100] {
            let mut got = Vec::new();
            let mut after: Option<PageKey> = None;
            loop {
                assert!(
                    got.len() <= expect.len(),
                    "{filter:?}, pages of {limit}: more tasks than stored: {got:?}"
                );
                let page = store
                    .page_tasks(&filter, after.as_ref(), limit)
                    .await
                    .expect("page");
                assert!(page.len() <= limit, "a page holds at most the limit");
                let Some(last) = page.last() else { break };
                after = Some(PageKey::after(last));
                got.extend(ids(&page));
            }
            assert_eq!(got, expect, "{filter:?}, pages of {limit}");
        }
    }
}

/// Removing finished tasks takes those finished before the cutoff, oldest
/// first, with their results; nothing else changes.
pub async fn retention_removes_old_finished_tasks_with_their_results(store: Arc<dyn TaskStore>) {
    let w = worker_id("w-r");
    for (id, done_at) in [("r-old", Some(10)), ("r-new", Some(30)), ("r-open", None)] {
        store
            .insert_task(pending_task(id, 1))
            .await
            .expect("insert");
        assign(store.as_ref(), id, &w).await;
        if let Some(at) = done_at {
            let r = record_report(
                store.as_ref(),
                result(id, &w, TaskStatus::Completed, "out"),
                Timestamp::from_millis(at),
            )
            .await
            .expect("report");
            assert!(matches!(r.status, Applied::Changed { .. }));
        }
    }
    assert_eq!(
        store
            .remove_finished(Timestamp::from_millis(20), 100, &[task_id("r-old")])
            .await
            .expect("remove"),
        0,
        "a task named to keep stays"
    );
    assert!(store
        .get_task(&task_id("r-old"))
        .await
        .expect("get")
        .is_some());
    assert_eq!(
        store
            .remove_finished(Timestamp::from_millis(20), 100, &[])
            .await
            .expect("remove"),
        1
    );
    assert_eq!(store.get_task(&task_id("r-old")).await.expect("get"), None);
    assert_eq!(
        store.get_result(&task_id("r-old")).await.expect("get"),
        None
    );
    assert!(store
        .get_task(&task_id("r-new"))
        .await
        .expect("get")
        .is_some());
    assert!(store
        .get_result(&task_id("r-new"))
        .await
        .expect("get")
        .is_some());
    assert!(store
        .get_task(&task_id("r-open"))
        .await
        .expect("get")
        .is_some());
    assert_eq!(
        store
            .remove_finished(Timestamp::from_millis(1000), 100, &[])
            .await
            .expect("remove"),
        1,
        "a running task is never removed"
    );
    assert_counts_agree_with_the_list(store.as_ref()).await;
}

/// The counts by status agree with what a full list holds.
async fn assert_counts_agree_with_the_list(store: &dyn TaskStore) {
    let mut listed = StatusCounts::default();
    for t in store
        .list_tasks(&TaskFilter::default())
        .await
        .expect("list")
    {
        listed.add(t.status, 1);
    }
    assert_eq!(
        store.count_tasks().await.expect("count"),
        listed,
        "counts by status must agree with the tasks stored"
    );
}

/// Counts by status follow inserts and applied changes; a rejected change
/// and a refused insert count nothing.
pub async fn counts_follow_inserts_and_changes(store: Arc<dyn TaskStore>) {
    assert_eq!(
        store.count_tasks().await.expect("count"),
        StatusCounts::default()
    );
    for (id, at) in [("c-1", 1), ("c-2", 2), ("c-3", 3)] {
        store
            .insert_task(pending_task(id, at))
            .await
            .expect("insert");
    }
    let _ = store.insert_task(pending_task("c-1", 9)).await;
    let w = worker_id("w-c");
    assign(store.as_ref(), "c-1", &w).await;
    assign(store.as_ref(), "c-2", &w).await;
    let r = record_report(
        store.as_ref(),
        result("c-1", &w, TaskStatus::Completed, "ok"),
        Timestamp::from_millis(20),
    )
    .await
    .expect("report");
    assert!(matches!(r.status, Applied::Changed { .. }));
    // Already completed: the second report is refused and counts nothing.
    let _ = record_report(
        store.as_ref(),
        result("c-1", &w, TaskStatus::Failed, "late"),
        Timestamp::from_millis(30),
    )
    .await
    .expect("report");
    let counts = store.count_tasks().await.expect("count");
    assert_eq!(
        (
            counts.pending,
            counts.running,
            counts.completed,
            counts.total()
        ),
        (1, 1, 1, 3),
        "{counts:?}"
    );
    assert_counts_agree_with_the_list(store.as_ref()).await;
}

/// A change whose guard holds is stored whole and returns the prior record.
pub async fn cas_applies_when_the_guard_holds(store: Arc<dyn TaskStore>) {
    let t = pending_task("cas", 1);
    store.insert_task(t.clone()).await.expect("insert");
    let w = worker_id("w-1");
    let change = StatusChange {
        reason: Some("placed".into()),
        ..self::change(
            TaskStatus::Pending,
            WorkerGuard::Unassigned,
            TaskStatus::Running,
            Assignment::Set(w.clone(), vec![1, 3]),
            50,
        )
    };
    let CasOutcome::Applied { before } = store.update_status(&t.id, &change).await.expect("cas")
    else {
        panic!("guard holds, change must apply");
    };
    assert_eq!(before, t, "Applied must carry the record as it was before");
    let now = store.get_task(&t.id).await.expect("get").expect("exists");
    assert_eq!(now.status, TaskStatus::Running);
    assert_eq!(now.worker, Some(w.clone()));
    assert_eq!(now.attempt, 1, "an assignment bumps the attempt");
    assert_eq!(now.gpus, vec![1, 3], "an assignment stores its GPUs");
    assert_eq!(now.reason.as_deref(), Some("placed"));
    assert_eq!(now.updated_at, Timestamp::from_millis(50));
    assert_eq!(
        now.assigned_at,
        Some(Timestamp::from_millis(50)),
        "an assignment stamps its time"
    );
    assert_eq!(now.finished_at, None);
    let done = self::change(
        TaskStatus::Running,
        WorkerGuard::Is(w.clone()),
        TaskStatus::Completed,
        Assignment::Keep,
        60,
    );
    assert!(matches!(
        store.update_status(&t.id, &done).await.expect("cas"),
        CasOutcome::Applied { .. }
    ));
    let now = store.get_task(&t.id).await.expect("get").expect("exists");
    assert_eq!(
        (now.status, now.worker, now.reason),
        (TaskStatus::Completed, Some(w), None)
    );
    assert_eq!(
        now.gpus,
        vec![1, 3],
        "a final task keeps the GPUs it ran on"
    );
    assert_eq!(
        now.finished_at,
        Some(Timestamp::from_millis(60)),
        "terminal change sets finished_at"
    );
}

/// A change from a status outside the guard is rejected and changes nothing:
/// once `cancelled`, a report's `running → completed` cannot apply.
pub async fn cas_rejects_a_status_outside_the_guard(store: Arc<dyn TaskStore>) {
    let t = pending_task("cancelled", 1);
    store.insert_task(t.clone()).await.expect("insert");
    let w = worker_id("w-1");
    assign(store.as_ref(), "cancelled", &w).await;
    let cancel = change(
        TaskStatus::Running,
        WorkerGuard::Any,
        TaskStatus::Cancelled,
        Assignment::Keep,
        20,
    );
    assert!(matches!(
        store.update_status(&t.id, &cancel).await.expect("cas"),
        CasOutcome::Applied { .. }
    ));
    let stored = store.get_task(&t.id).await.expect("get").expect("exists");
    let report = StatusChange {
        reason: Some("late".into()),
        ..change(
            TaskStatus::Running,
            WorkerGuard::Is(w),
            TaskStatus::Failed,
            Assignment::Keep,
            30,
        )
    };
    match store.update_status(&t.id, &report).await.expect("cas") {
        CasOutcome::Rejected { current } => {
            assert_eq!(current, stored, "Rejected must carry the current record")
        }
        other => panic!("a late report overwrote cancelled: {other:?}"),
    }
    assert_eq!(
        store.get_task(&t.id).await.expect("get"),
        Some(stored),
        "nothing may change"
    );
}

/// The worker condition is part of the guard.
pub async fn cas_rejects_the_wrong_worker(store: Arc<dyn TaskStore>) {
    store
        .insert_task(pending_task("mine", 1))
        .await
        .expect("insert");
    assign(store.as_ref(), "mine", &worker_id("w-a")).await;
    let change = change(
        TaskStatus::Running,
        WorkerGuard::Is(worker_id("w-b")),
        TaskStatus::Completed,
        Assignment::Keep,
        9,
    );
    let outcome = store
        .update_status(&task_id("mine"), &change)
        .await
        .expect("cas");
    assert!(
        matches!(outcome, CasOutcome::Rejected { .. }),
        "report from another worker applied: {outcome:?}"
    );
}

/// The attempt is part of the guard: after a requeue and a new assignment
/// to the same worker, a report about the first attempt cannot apply.
pub async fn cas_rejects_a_stale_attempt(store: Arc<dyn TaskStore>) {
    store
        .insert_task(pending_task("again", 1))
        .await
        .expect("insert");
    let w = worker_id("w-a");
    assign(store.as_ref(), "again", &w).await;
    let requeue = TaskEvent::Requeue {
        worker: w.clone(),
        attempt: 1,
        reason: "timeout".into(),
    };
    let applied = apply_event(
        store.as_ref(),
        &task_id("again"),
        &requeue,
        Timestamp::from_millis(2),
    )
    .await;
    assert!(
        matches!(applied, Ok(Applied::Changed { .. })),
        "{applied:?}"
    );
    confirm_stop(store.as_ref(), "again", &w, 1).await;
    assign(store.as_ref(), "again", &w).await;
    let stale = TaskEvent::report(w.clone(), 1, EndCause::Completed, None)
        .blind_change(Timestamp::from_millis(3))
        .expect("a success needs no read");
    let outcome = store
        .update_status(&task_id("again"), &stale)
        .await
        .expect("cas");
    assert!(
        matches!(outcome, CasOutcome::Rejected { .. }),
        "a report about attempt 1 applied to attempt 2: {outcome:?}"
    );
    let t = store
        .get_task(&task_id("again"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((t.status, t.attempt), (TaskStatus::Running, 2));
}

/// A change to an unknown task is `NotFound`.
pub async fn cas_on_unknown_task_is_not_found(store: Arc<dyn TaskStore>) {
    let change = change(
        TaskStatus::Pending,
        WorkerGuard::Any,
        TaskStatus::Cancelled,
        Assignment::Keep,
        0,
    );
    let err = store
        .update_status(&task_id("ghost"), &change)
        .await
        .expect_err("unknown task");
    assert!(
        matches!(err, Error::NotFound { .. }),
        "expected NotFound, got {err:?}"
    );
}

/// The worker confirms the stop of `task`'s attempt `attempt`: the task,
/// requeued, is assigned to nobody again.
async fn confirm_stop(store: &dyn TaskStore, task: &str, worker: &WorkerId, attempt: u32) {
    let ended = TaskEvent::StopConfirmed {
        worker: worker.clone(),
        attempt,
    };
    let applied = apply_event(store, &task_id(task), &ended, Timestamp::from_millis(4)).await;
    assert!(
        matches!(applied, Ok(Applied::Changed { .. })),
        "{applied:?}"
    );
}

/// A requeue keeps the assignment until the stop it owes is confirmed
/// (no second run before the first is known to have ended); then
/// `Assignment::Clear` unassigns, and the task can be placed again.
pub async fn requeue_clears_the_assignment(store: Arc<dyn TaskStore>) {
    store
        .insert_task(pending_task("rq", 1))
        .await
        .expect("insert");
    let w_a = worker_id("w-a");
    assign(store.as_ref(), "rq", &w_a).await;
    let requeue = TaskEvent::Requeue {
        attempt: 1,
        worker: w_a.clone(),
        reason: "unreachable".into(),
    };
    let applied = apply_event(
        store.as_ref(),
        &task_id("rq"),
        &requeue,
        Timestamp::from_millis(3),
    )
    .await;
    assert!(
        matches!(applied, Ok(Applied::Changed { .. })),
        "{applied:?}"
    );
    let t = store
        .get_task(&task_id("rq"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (t.status, t.worker.as_ref(), t.gpus.as_slice()),
        (TaskStatus::Pending, Some(&w_a), &[0][..]),
        "the ending attempt keeps its worker and GPUs"
    );
    let early = apply_event(
        store.as_ref(),
        &task_id("rq"),
        &TaskEvent::Assign {
            worker: worker_id("w-b"),
            gpus: vec![],
        },
        Timestamp::from_millis(4),
    )
    .await;
    assert!(
        matches!(early, Ok(Applied::Refused { .. })),
        "placed again before the first run ended: {early:?}"
    );
    confirm_stop(store.as_ref(), "rq", &w_a, 1).await;
    let t = store
        .get_task(&task_id("rq"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((t.status, t.worker), (TaskStatus::Pending, None));
    assert!(t.gpus.is_empty(), "its GPUs went with the assignment");
    assign(store.as_ref(), "rq", &worker_id("w-b")).await;
}

/// A retry's change writes the ended attempt into the history, the
/// not-before time and the cleared assignment in one write; the policy
/// and every counter read back as written.
pub async fn attempts_are_kept_with_the_task(store: Arc<dyn TaskStore>) {
    let mut t = pending_task("retry", 1);
    t.spec.policy = AttemptPolicy {
        retries: 2,
        crash_limit: 3,
        time_limit: Some(std::time::Duration::from_millis(2500)),
        ..AttemptPolicy::default()
    };
    t.spec.options = ContainerOptions {
        workdir: Some("/work".into()),
        mounts: vec!["/data/in:/in:ro".parse().expect("mount")],
        tmpfs: vec!["/scratch:64MiB".parse().expect("tmpfs")],
        user: Some("1000:100".parse().expect("user")),
        shm_size: Some(1 << 30),
    };
    store.insert_task(t.clone()).await.expect("insert");
    assert_eq!(
        store
            .get_task(&t.id)
            .await
            .expect("get")
            .map(|r| (r.spec.policy, r.spec.options)),
        Some((t.spec.policy, t.spec.options.clone())),
        "the policy and container options read back"
    );
    let w = worker_id("w-a");
    assign(store.as_ref(), "retry", &w).await;
    let mut failed = result("retry", &w, TaskStatus::Failed, "attempt 1 said this");
    failed.cause = EndCause::Exited;
    failed.message = Some("exited with code 1".into());
    let out = record_report(store.as_ref(), failed, Timestamp::from_millis(20))
        .await
        .expect("report");
    assert!(
        matches!(out.status, Applied::Changed { .. }),
        "{:?}",
        out.status
    );
    let now = store.get_task(&t.id).await.expect("get").expect("exists");
    assert_eq!(
        (now.status, now.worker.as_ref()),
        (TaskStatus::Pending, None)
    );
    assert!(
        now.not_before
            .is_some_and(|at| at > Timestamp::from_millis(20)),
        "a retry waits: {:?}",
        now.not_before
    );
    assert_eq!(now.history.len(), 1);
    let a = &now.history[0];
    assert_eq!(
        (a.attempt, &a.worker, a.cause, a.exit_code, a.logs.as_str()),
        (1, &w, EndCause::Exited, Some(1), "attempt 1 said this")
    );
    assert_eq!(now.counts().failures, 1);
    let waiting = store
        .list_tasks(&TaskFilter::status([TaskStatus::Pending]))
        .await
        .expect("list");
    assert_eq!(waiting, vec![now], "lists read the same record");
}

/// The first result is kept; later ones are dropped with `AlreadyPresent`.
pub async fn result_insert_is_insert_if_absent(store: Arc<dyn TaskStore>) {
    let w = worker_id("w-1");
    let first = result("r", &w, TaskStatus::Cancelled, "real logs up to the cancel");
    let second = result(
        "r",
        &w,
        TaskStatus::Cancelled,
        "Task was cancelled by user request",
    );
    assert_eq!(
        store.insert_result(first.clone()).await.expect("insert"),
        InsertOutcome::Inserted
    );
    assert_eq!(
        store.insert_result(second).await.expect("insert"),
        InsertOutcome::AlreadyPresent
    );
    assert_eq!(
        store.get_result(&task_id("r")).await.expect("get"),
        Some(first),
        "first result must win"
    );
}

/// Many tasks, each raced by a user cancel and the worker's reports
/// (completed, then a duplicate, then a late cancellation confirmation).
/// Every task ends with exactly one terminal status; if the cancel applied,
/// that status is `cancelled`; exactly one of the competing transitions
/// applied; at most one result exists and it carries the task's status.
pub async fn race_cancel_against_reports(store: Arc<dyn TaskStore>) {
    let w = worker_id("w-race");
    for i in 0..RACE_TASKS {
        store
            .insert_task(pending_task(&format!("race-{i}"), i as u64))
            .await
            .expect("insert");
        assign(store.as_ref(), &format!("race-{i}"), &w).await;
    }
    let mut set = JoinSet::new();
    for i in 0..RACE_TASKS {
        let id = format!("race-{i}");
        let s = store.clone();
        set.spawn(async move {
            let cancel = TaskEvent::Cancel { force: false };
            let a = apply_event(
                s.as_ref(),
                &task_id(&id),
                &cancel,
                Timestamp::from_millis(100),
            )
            .await;
            (
                id,
                "cancel",
                matches!(a.expect("cancel"), Applied::Changed { .. }),
            )
        });
        for (kind, status, logs) in [
            ("complete", TaskStatus::Completed, "done"),
            ("dup", TaskStatus::Completed, "done again"),
            (
                "confirm",
                TaskStatus::Cancelled,
                "Task was cancelled by user request",
            ),
        ] {
            let (s, w, id) = (store.clone(), w.clone(), format!("race-{i}"));
            set.spawn(async move {
                let r = record_report(
                    s.as_ref(),
                    result(&id, &w, status, logs),
                    Timestamp::from_millis(100),
                )
                .await
                .expect("report");
                assert!(r.result.is_ok(), "result write failed: {:?}", r.result);
                (id, kind, matches!(r.status, Applied::Changed { .. }))
            });
        }
    }
    let mut changed: std::collections::HashMap<String, Vec<&str>> = Default::default();
    while let Some(joined) = set.join_next().await {
        let (id, kind, did) = joined.expect("race task panicked");
        if did {
            changed.entry(id).or_default().push(kind);
        }
    }
    for i in 0..RACE_TASKS {
        let id = format!("race-{i}");
        let t = store
            .get_task(&task_id(&id))
            .await
            .expect("get")
            .expect("exists");
        let winners = changed.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            winners.len(),
            1,
            "{id}: exactly one transition must win, got {winners:?}"
        );
        assert!(
            t.status.is_terminal(),
            "{id}: must end terminal, is {}",
            t.status
        );
        if winners == ["cancel"] {
            assert_eq!(
                t.status,
                TaskStatus::Cancelled,
                "{id}: a recorded cancel was overwritten"
            );
        }
        if let Some(r) = store.get_result(&task_id(&id)).await.expect("get result") {
            assert_eq!(
                r.status, t.status,
                "{id}: result must carry the task's one outcome"
            );
        }
    }
    assert_counts_agree_with_the_list(store.as_ref()).await;
}

/// Concurrent inserts of results for the same tasks: exactly one wins each.
pub async fn race_result_inserts(store: Arc<dyn TaskStore>) {
    const WRITERS: usize = 4;
    let w = worker_id("w-1");
    let mut set = JoinSet::new();
    for i in 0..RACE_TASKS {
        for k in 0..WRITERS {
            let (s, r) = (
                store.clone(),
                result(
                    &format!("res-{i}"),
                    &w,
                    TaskStatus::Completed,
                    &format!("writer {k}"),
                ),
            );
            set.spawn(async move { (i, s.insert_result(r).await.expect("insert")) });
        }
    }
    let mut inserted = vec![0usize; RACE_TASKS];
    while let Some(joined) = set.join_next().await {
        let (i, outcome) = joined.expect("insert task panicked");
        if outcome == InsertOutcome::Inserted {
            inserted[i] += 1;
        }
    }
    assert!(
        inserted.iter().all(|n| *n == 1),
        "each task must get exactly one result: {inserted:?}"
    );
}

/// Concurrent assignments of one pending task to different workers: exactly
/// one applies, and the task ends on that worker.
pub async fn race_assignments(store: Arc<dyn TaskStore>) {
    const WORKERS: usize = 6;
    for i in 0..RACE_TASKS / 4 {
        let id = format!("place-{i}");
        store
            .insert_task(pending_task(&id, 0))
            .await
            .expect("insert");
        let mut set = JoinSet::new();
        for k in 0..WORKERS {
            let (s, id) = (store.clone(), id.clone());
            set.spawn(async move {
                let w = worker_id(&format!("w-{k}"));
                let e = TaskEvent::Assign {
                    worker: w.clone(),
                    gpus: vec![],
                };
                let a = apply_event(s.as_ref(), &task_id(&id), &e, Timestamp::ZERO)
                    .await
                    .expect("assign");
                matches!(a, Applied::Changed { .. }).then_some(w)
            });
        }
        let mut winners = Vec::new();
        while let Some(joined) = set.join_next().await {
            winners.extend(joined.expect("assign task panicked"));
        }
        assert_eq!(
            winners.len(),
            1,
            "{id}: exactly one assignment must win: {winners:?}"
        );
        let t = store
            .get_task(&task_id(&id))
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            t.worker.as_ref(),
            winners.first(),
            "{id}: task must sit on the winning worker"
        );
    }
}
