//! Each seed's "Testing" section, and the features its "Future
//! enhancements" asked for, as scenarios on the simulated cluster (virtual
//! time, real master and worker services).

use std::time::Duration;

use cloudai_core::apply::apply_event;
use cloudai_core::lifecycle::TaskEvent;
use cloudai_core::liveness::Health;
use cloudai_core::master::{
    short_reason, CancelOutcome, MasterConfig, ParentRef, SubmitOptions, WorkerView,
};
use cloudai_core::model::{
    Condition, Dependency, EndCause, InstanceId, Labels, Resources, TaskId, TaskRecord, TaskSpec,
    TaskStatus, Term, Timestamp, WorkerId,
};
use cloudai_core::store::{TaskFilter, TaskStore, WorkerRegistry};
use cloudai_core::testing::sim::{fake_task, Faults, SimCluster};
use cloudai_core::transport::{MasterToWorker, RunningTask, WorkerEndpoint};
use cloudai_core::worker::SHUTDOWN_MESSAGE;
use cloudai_core::Error;

fn cap(cpu: f64) -> Resources {
    Resources::new(cpu, 16.0, 100.0, 0).unwrap()
}

fn wid(s: &str) -> WorkerId {
    WorkerId::new(s).unwrap()
}

/// A fake task that fails at its first loss or drain, as every task did
/// before tasks had a policy (the seeds' behaviour; `--no-requeue`).
fn no_requeue(secs: u64, cpu: f64) -> TaskSpec {
    let mut spec = fake_task(secs, 0, cpu);
    spec.policy.requeue = false;
    spec
}

async fn cluster(workers: &[(&str, f64)]) -> SimCluster {
    let mut c = SimCluster::start(1, Faults::NONE, MasterConfig::default()).await;
    for (id, cpu) in workers {
        c.start_worker(id, cap(*cpu)).await;
    }
    c.run_for(Duration::from_millis(100)).await;
    c
}

fn view(c: &SimCluster, id: &str) -> WorkerView {
    c.master
        .workers()
        .into_iter()
        .find(|w| w.id.as_str() == id)
        .expect("worker known")
}

async fn status(c: &SimCluster, t: &TaskId) -> TaskStatus {
    c.store.get_task(t).await.unwrap().unwrap().status
}

/// Polls (in virtual time) until `f` holds, or panics after `limit`.
async fn until<F: AsyncFn() -> bool>(limit: Duration, what: &str, f: F) {
    let start = tokio::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- usage ---------------------------------------------------------------

/// What a run used reaches its result and its attempt, with the wall time
/// its worker saw.
#[tokio::test(start_paused = true)]
async fn a_runs_usage_is_kept_with_its_result_and_attempt() {
    let c = cluster(&[("w", 4.0)]).await;
    let t = c.master.submit(fake_task(5, 0, 1.0)).await.unwrap();
    until(Duration::from_secs(30), "completed", async || {
        status(&c, &t).await == TaskStatus::Completed
    })
    .await;
    let view = c.master.task(&t).await.unwrap();
    let usage = view
        .result
        .and_then(|r| r.usage)
        .expect("the result's usage");
    assert_eq!(
        (usage.user_cpu_ms, usage.peak_memory_bytes),
        (5000, 1 << 20)
    );
    assert!((5000..5200).contains(&usage.wall_ms), "{usage:?}");
    assert_eq!(view.task.history[0].usage, Some(usage));
    c.stop().await;
}

// ---- bind mounts ---------------------------------------------------------

/// A task mounting a host directory goes only to a worker that allows it,
/// is refused at submit when no registered worker does, and a worker
/// refuses a mount whose resolved path leaves what it allows. (The fake
/// runtime applies no mounts: the task it is placed with fails, naming the
/// option, which is how a runtime refuses one.)
#[tokio::test(start_paused = true)]
async fn mounts_go_only_where_a_worker_allows_them() {
    let host = std::env::temp_dir().join(format!("cloudai-sim-mounts-{}", std::process::id()));
    let allowed = host.join("allowed");
    std::fs::create_dir_all(allowed.join("in")).unwrap();
    let _ = std::os::unix::fs::symlink("/etc", allowed.join("escape"));
    let allowed = allowed.to_string_lossy().into_owned();
    let mut c = SimCluster::start(1, Faults::NONE, MasterConfig::default()).await;
    c.start_worker("a-plain", cap(4.0)).await;
    c.run_for(Duration::from_millis(100)).await;
    let mounting = |sub: &str| {
        let mut spec = fake_task(1, 0, 1.0);
        spec.options.mounts = vec![format!("{allowed}/{sub}:/in:ro").parse().unwrap()];
        spec
    };
    let refused = c.master.submit(mounting("in")).await.unwrap_err();
    assert!(
        refused.to_string().contains("allows bind mounts"),
        "{refused}"
    );

    c.allow_mounts("b-open", vec![allowed.clone()]);
    c.start_worker("b-open", cap(4.0)).await;
    c.run_for(Duration::from_millis(100)).await;
    let ended = async |t: &TaskId| {
        until(Duration::from_secs(30), "the task ended", async || {
            status(&c, t).await.is_terminal()
        })
        .await;
        c.master.task(t).await.unwrap().task
    };
    for _ in 0..3 {
        let t = c.master.submit(mounting("in")).await.unwrap();
        let task = ended(&t).await;
        assert_eq!(task.worker, Some(wid("b-open")), "{task:?}");
        let reason = task.reason.unwrap_or_default();
        assert!(reason.contains("cannot apply --mount"), "{reason}");
    }
    let t = c.master.submit(mounting("escape")).await.unwrap();
    let reason = ended(&t).await.reason.unwrap_or_default();
    assert!(
        reason.contains("refuses to mount") && reason.contains("/etc"),
        "{reason}"
    );
    c.stop().await;
    let _ = std::fs::remove_dir_all(&host);
}

// ---- resource release on worker shutdown -------------------------------

async fn shutdown_with(n: usize) {
    let mut c = cluster(&[("tessa", 8.0)]).await;
    let mut tasks = Vec::new();
    for _ in 0..n {
        tasks.push(c.master.submit(no_requeue(300, 1.0)).await.unwrap());
    }
    c.run_for(Duration::from_secs(1)).await;
    assert_eq!(view(&c, "tessa").allocated.cpu_millis, 1000 * n as u64);
    let begin = tokio::time::Instant::now();
    let (summary, left_running) = c.shutdown_worker(&wid("tessa")).await.unwrap();
    assert!(
        begin.elapsed() <= Duration::from_secs(5),
        "shutdown took {:?}",
        begin.elapsed()
    );
    assert_eq!(
        (summary.reported, summary.unreported, summary.stopped),
        (n, 0, n)
    );
    assert_eq!(left_running, 0, "containers left running after shutdown");
    for t in &tasks {
        let view = c.master.task(t).await.unwrap();
        assert_eq!(view.task.status, TaskStatus::Failed);
        assert_eq!(
            view.result.unwrap().message.as_deref(),
            Some(SHUTDOWN_MESSAGE)
        );
    }
    assert!(
        view(&c, "tessa").allocated.is_zero(),
        "resources released without fix-resources"
    );
    c.check().await;
    c.stop().await;
}

/// A worker that shuts down gracefully says it is leaving: it shows as
/// inactive at once, and the room its tasks free is not placed on it again.
#[tokio::test(start_paused = true)]
async fn a_leaving_worker_is_inactive_at_once_and_gets_no_new_tasks() {
    let mut c = cluster(&[("leaving", 4.0), ("staying", 4.0)]).await;
    let running = c.master.submit(fake_task(300, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    let on = c.master.task(&running).await.unwrap().task.worker.unwrap();
    let other = if on == wid("leaving") {
        "staying"
    } else {
        "leaving"
    };
    c.shutdown_worker(&on).await.unwrap();
    let v = view(&c, on.as_str());
    assert_eq!(
        v.health,
        Health::Inactive,
        "inactive at once, not at the timeout"
    );
    assert!(!v.registered);
    for _ in 0..3 {
        let t = c.master.submit(fake_task(300, 0, 1.0)).await.unwrap();
        let task = c.master.task(&t).await.unwrap().task;
        assert_eq!(task.worker, Some(wid(other)), "{task:?}");
        assert_eq!(task.reason, None, "placed once, not requeued");
    }
    c.check().await;
    c.stop().await;
}

/// A second agent under a live worker's id (another instance, another
/// address) is refused, naming the live address; the live worker keeps
/// its task and its address. Once the live one's host is gone, the same
/// agent is taken.
#[tokio::test(start_paused = true)]
async fn an_impostor_is_refused_while_the_worker_is_live() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(60, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Running);
    let refusal = c
        .start_impostor("w1", cap(4.0), Duration::from_secs(20))
        .await
        .expect("refused");
    assert!(
        matches!(&refusal, Error::InUse(m) if m.contains("sim-w1:1")),
        "names the live address: {refusal:?}"
    );
    let v = view(&c, "w1");
    assert_eq!(v.address.as_deref(), Some("sim-w1:1"));
    assert_eq!(v.health, Health::Active);
    let live = c.worker("w1").unwrap();
    assert!(live.check_addressed(&wid("w1"), None).is_ok());
    let other = InstanceId::new("impostor-w1").unwrap();
    for (id, instance) in [(wid("w2"), None), (wid("w1"), Some(&other))] {
        let refused = live.check_addressed(&id, instance);
        assert!(
            matches!(refused, Err(Error::Unavailable(_))),
            "a call meant for {id} {instance:?}: {refused:?}"
        );
    }
    c.run_for(Duration::from_secs(61)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Completed, "kept its task");
    c.crash_worker(&wid("w1"));
    let taken = c
        .start_impostor("w1", cap(4.0), Duration::from_secs(20))
        .await;
    assert!(
        taken.is_none(),
        "a dead session does not hold the id: {taken:?}"
    );
    c.check().await;
    c.stop().await;
}

/// A drained worker gets nothing new; at the drain deadline its running
/// task is stopped and failed as drained, its room released; the drain
/// survives a master restart on the same store; undrained, it takes tasks
/// again.
#[tokio::test(start_paused = true)]
async fn a_drained_worker_finishes_or_stops_its_tasks_and_gets_no_new_ones() {
    let mut c = cluster(&[("w1", 4.0), ("w2", 4.0)]).await;
    let long = c.master.submit(no_requeue(600, 1.0)).await.unwrap();
    let short = c.master.submit(fake_task(5, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    let on = |t: &TaskId| {
        let m = c.master.clone();
        let t = t.clone();
        async move { m.task(&t).await.unwrap().task.worker.unwrap() }
    };
    let drained = on(&long).await;
    let other = if drained == wid("w1") { "w2" } else { "w1" };
    c.master
        .drain(&drained, Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(view(&c, drained.as_str()).drain_state(), Some("draining"));
    for _ in 0..3 {
        let t = c.master.submit(fake_task(600, 0, 1.0)).await.unwrap();
        assert_eq!(
            on(&t).await,
            wid(other),
            "nothing new on the drained worker"
        );
    }
    c.run_for(Duration::from_secs(10)).await;
    assert_eq!(
        status(&c, &short).await,
        TaskStatus::Completed,
        "tasks may finish"
    );
    assert_eq!(
        status(&c, &long).await,
        TaskStatus::Running,
        "until the deadline"
    );

    c.run_for(Duration::from_secs(25)).await;
    let task = c.master.task(&long).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(
        task.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("drained")),
        "{task:?}"
    );
    let v = view(&c, drained.as_str());
    assert_eq!(v.drain_state(), Some("drained"));
    assert!(v.allocated.is_zero(), "{v:?}");
    assert_eq!(c.host_containers(&drained), 0, "its run was stopped");

    let m2 = cloudai_core::master::Master::start(
        MasterConfig::default(),
        c.store.clone(),
        c.store.clone(),
        c.net.clone(),
        c.clock,
    )
    .await
    .unwrap();
    let after = m2.workers().into_iter().find(|w| w.id == drained).unwrap();
    assert_eq!(after.drain, v.drain, "the drain survives a master restart");
    m2.shutdown().await;

    c.master.undrain(&drained).await.unwrap();
    assert_eq!(view(&c, drained.as_str()).drain_state(), None);
    let t = c.master.submit(fake_task(600, 0, 1.0)).await.unwrap();
    assert_eq!(
        on(&t).await,
        drained,
        "takes tasks again (the other is fuller)"
    );
    let unknown = c.master.drain(&wid("nobody"), None).await.unwrap_err();
    assert!(matches!(unknown, Error::NotFound { .. }), "{unknown:?}");
    c.check().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed000_ctrl_c_with_one_running_task_reports_it_failed() {
    shutdown_with(1).await;
}

#[tokio::test(start_paused = true)]
async fn seed000_ctrl_c_with_three_running_tasks_reports_all_failed() {
    shutdown_with(3).await;
}

#[tokio::test(start_paused = true)]
async fn seed000_ctrl_c_with_no_tasks_and_master_unreachable_still_exits_in_time() {
    let mut c = cluster(&[("tessa", 8.0)]).await;
    let t = c.master.submit(no_requeue(300, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.partition(&wid("tessa"));
    let begin = tokio::time::Instant::now();
    let (summary, left_running) = c.shutdown_worker(&wid("tessa")).await.unwrap();
    assert!(
        begin.elapsed() <= Duration::from_secs(6),
        "bounded even when the master is unreachable"
    );
    assert_eq!((summary.reported, summary.unreported), (0, 1));
    assert_eq!(
        left_running, 0,
        "containers are stopped even when the report fails"
    );
    // The master learns at the loss deadline instead.
    c.run_for(Duration::from_secs(125)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Failed);
    c.check_quiescent().await;
    c.stop().await;
}

// ---- task cancellation --------------------------------------------------

#[tokio::test(start_paused = true)]
async fn seed001_cancel_a_running_task() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(300, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    let out = c.master.cancel(&t, false).await.unwrap();
    assert_eq!(out, CancelOutcome::Stopped { worker: wid("w1") });
    assert_eq!(status(&c, &t).await, TaskStatus::Cancelled);
    assert!(
        view(&c, "w1").allocated.is_zero(),
        "resources released at once"
    );
    c.run_for(Duration::from_secs(1)).await;
    let result = c
        .master
        .task(&t)
        .await
        .unwrap()
        .result
        .expect("one result, with the run's logs");
    assert_eq!(result.status, TaskStatus::Cancelled);
    assert!(
        result.logs.contains("started"),
        "logs up to the cancel: {:?}",
        result.logs
    );
    c.check_quiescent().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed001_cancel_a_completed_or_unknown_task_is_a_clear_error() {
    let c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(1, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(3)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Completed);
    let err = c.master.cancel(&t, false).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("already completed")),
        "{err}"
    );
    let err = c
        .master
        .cancel(&TaskId::new("task-999999").unwrap(), false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed001_cancel_with_worker_unreachable_then_late_report_keeps_cancelled() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(20, 1, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.partition(&wid("w1"));
    let out = c.master.cancel(&t, false).await.unwrap();
    assert!(matches!(out, CancelOutcome::StopPending { .. }), "{out:?}");
    assert_eq!(status(&c, &t).await, TaskStatus::Cancelled);
    assert_eq!(
        view(&c, "w1").allocated.cpu_millis,
        1000,
        "held while the stop is owed: the run may still go"
    );
    // The task fails on its own meanwhile; the worker's report arrives later.
    c.run_for(Duration::from_secs(25)).await;
    c.heal(&wid("w1"));
    c.run_for(Duration::from_secs(15)).await;
    assert_eq!(
        status(&c, &t).await,
        TaskStatus::Cancelled,
        "a late failed report overwrote cancelled"
    );
    let result = c
        .master
        .task(&t)
        .await
        .unwrap()
        .result
        .expect("the worker's logs are kept");
    assert_eq!(
        (result.status, result.exit_code),
        (TaskStatus::Cancelled, Some(1))
    );
    c.check_quiescent().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed001_stop_owed_to_an_unreachable_worker_is_delivered_when_it_returns() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(600, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.partition(&wid("w1"));
    let _ = c.master.cancel(&t, false).await.unwrap();
    c.run_for(Duration::from_secs(40)).await;
    assert_eq!(view(&c, "w1").health, Health::Inactive);
    c.heal(&wid("w1"));
    let w = c.worker("w1").unwrap();
    until(
        Duration::from_secs(20),
        "stop delivered after the worker came back",
        async || w.running().is_empty(),
    )
    .await;
    c.check_quiescent().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed001_force_cancel_skips_the_grace_period() {
    let c = cluster(&[("w1", 4.0)]).await;
    let stubborn =
        |secs: u64| TaskSpec::new("fake", vec!["stubborn".into(), secs.to_string()], cap(1.0));
    let (a, b) = (
        c.master.submit(stubborn(600)).await.unwrap(),
        c.master.submit(stubborn(600)).await.unwrap(),
    );
    c.run_for(Duration::from_secs(1)).await;
    let begin = tokio::time::Instant::now();
    c.master.cancel_and_wait(&a, false).await.unwrap();
    assert!(
        begin.elapsed() >= TaskSpec::DEFAULT_CANCEL_GRACE,
        "graceful cancel waits out the grace"
    );
    let begin = tokio::time::Instant::now();
    c.master.cancel_and_wait(&b, true).await.unwrap();
    assert!(
        begin.elapsed() < Duration::from_secs(1),
        "force cancel kills at once"
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed001_bulk_cancel_by_worker_and_by_status() {
    let c = cluster(&[("w1", 2.0), ("w2", 2.0)]).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(c.master.submit(fake_task(600, 0, 1.0)).await.unwrap());
    }
    c.run_for(Duration::from_secs(1)).await;
    let on_w1 = TaskFilter {
        statuses: vec![],
        worker: Some(wid("w1")),
        ..TaskFilter::default()
    };
    let were_on_w1 = view(&c, "w1").tasks;
    let done = c.master.cancel_all(&on_w1, false).await.unwrap();
    let mut cancelled: Vec<TaskId> = done.into_iter().map(|(t, _)| t).collect();
    cancelled.sort();
    assert_eq!(cancelled, were_on_w1, "exactly the tasks on w1");
    c.run_for(Duration::from_secs(1)).await;
    let now_on_w1 = view(&c, "w1").tasks;
    assert_eq!(
        now_on_w1.len(),
        2,
        "the freed room went to the queued tasks"
    );
    assert!(now_on_w1.iter().all(|t| !were_on_w1.contains(t)));
    // w1's room went to two queued tasks; cancel everything still pending.
    let pending = c
        .master
        .cancel_all(&TaskFilter::status([TaskStatus::Pending]), false)
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        0,
        "the two queued tasks were placed on w1 after the bulk cancel"
    );
    let all = c
        .master
        .cancel_all(&TaskFilter::default(), true)
        .await
        .unwrap();
    assert_eq!(all.len(), 4);
    let statuses = c.statuses().await;
    assert!(
        statuses.values().all(|s| *s == TaskStatus::Cancelled),
        "{statuses:?}"
    );
    c.stop().await;
}

// ---- resource reconciliation ---------------------------------------------

#[tokio::test(start_paused = true)]
async fn seed002_master_restart_reconciles_allocations_from_the_store() {
    let c = cluster(&[("tessa", 20.0)]).await;
    for _ in 0..3 {
        c.master.submit(fake_task(600, 0, 5.0 / 3.0)).await.unwrap();
    }
    c.run_for(Duration::from_secs(1)).await;
    let before = view(&c, "tessa").allocated;
    // A second master on the same store starts with an empty ledger and
    // rebuilds it from the running tasks.
    let clock = c.clock;
    let m2 = cloudai_core::master::Master::start(
        MasterConfig::default(),
        c.store.clone(),
        c.store.clone(),
        c.net.clone(),
        clock,
    )
    .await
    .unwrap();
    let after = m2
        .workers()
        .into_iter()
        .find(|w| w.id == wid("tessa"))
        .unwrap();
    assert_eq!(
        after.allocated, before,
        "allocation rebuilt from running tasks"
    );
    assert_eq!(
        m2.reconcile().await.unwrap().corrections,
        vec![],
        "reconcile is idempotent"
    );
    m2.shutdown().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed002_periodic_reconciliation_repairs_drift_behind_the_masters_back() {
    let config = MasterConfig {
        reconcile_interval: Some(Duration::from_secs(60)),
        ..MasterConfig::default()
    };
    let mut c = SimCluster::start(1, Faults::NONE, config).await;
    c.start_worker("tessa", cap(20.0)).await;
    c.run_for(Duration::from_millis(100)).await;
    let t = c.master.submit(fake_task(600, 0, 5.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    // Another writer (say, an operator's script) ends the task in the store;
    // this master never hears of it, so its ledger still holds 5 cores.
    let end = cloudai_core::lifecycle::TaskEvent::WorkerLost {
        worker: wid("tessa"),
    };
    let _ = cloudai_core::apply::apply_event(c.store.as_ref(), &t, &end, c.clock.now())
        .await
        .unwrap();
    assert_eq!(
        view(&c, "tessa").allocated.cpu_millis,
        5000,
        "drift in place"
    );
    c.run_for(Duration::from_secs(61)).await;
    assert!(
        view(&c, "tessa").allocated.is_zero(),
        "periodic reconciliation fixed it"
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed002_crashed_worker_leaves_no_phantom_allocation() {
    let mut c = cluster(&[("tessa", 20.0)]).await;
    let t = c.master.submit(no_requeue(600, 5.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.crash_worker(&wid("tessa"));
    c.run_for(Duration::from_secs(125)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.reason.unwrap().contains("worker lost"));
    assert!(
        view(&c, "tessa").allocated.is_zero(),
        "no fix-resources needed"
    );
    c.restart_worker(&wid("tessa")).await;
    c.run_for(Duration::from_secs(1)).await;
    assert_eq!(view(&c, "tessa").health, Health::Active);
    c.check_quiescent().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn killed_agent_restarts_and_adopts_its_running_containers() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(60, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.kill_agent(&wid("w1"));
    assert_eq!(
        c.host_containers(&wid("w1")),
        1,
        "the container outlives its agent"
    );
    c.run_for(Duration::from_secs(10)).await;
    let w = c.restart_worker(&wid("w1")).await.unwrap();
    assert_eq!(w.running().len(), 1, "the restarted agent adopted the run");
    c.run_for(Duration::from_secs(60)).await;
    let v = c.master.task(&t).await.unwrap();
    assert_eq!(
        v.task.status,
        TaskStatus::Completed,
        "the run survived the agent's crash: {:?}",
        v.task.reason
    );
    assert_eq!(v.task.attempt, 1, "no second run was needed");
    c.check_quiescent().await;
    c.stop().await;
}

/// A run far longer than the fence goes on while its worker's heartbeats
/// are answered: each answer renews the lease its host holds it by.
#[tokio::test(start_paused = true)]
async fn a_run_outlives_its_first_lease_while_the_master_answers() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(600, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(601)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(
        (task.status, task.attempt, task.history.len()),
        (TaskStatus::Completed, 1, 1),
        "{task:?}"
    );
    c.check_quiescent().await;
    c.stop().await;
}

/// A worker agent killed for good leaves its run to its host only until
/// the run's lease runs out, before the master may declare the worker
/// lost; then the task runs again (here on the same worker, back).
#[tokio::test(start_paused = true)]
async fn a_dead_agents_run_stops_at_its_lease_before_the_loss_and_runs_again() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(600, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.kill_agent(&wid("w1"));
    assert_eq!(
        c.host_containers(&wid("w1")),
        1,
        "the run outlives its agent"
    );
    c.run_for(Duration::from_secs(110)).await;
    assert_eq!(
        c.host_containers(&wid("w1")),
        0,
        "stopped at its lease, before lost_after"
    );
    assert_eq!(status(&c, &t).await, TaskStatus::Running, "not lost yet");
    c.run_for(Duration::from_secs(15)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Pending, "requeued: {task:?}");
    assert_eq!(task.history.len(), 1);
    c.restart_worker(&wid("w1")).await.unwrap();
    c.run_for(Duration::from_secs(5)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!((task.status, task.attempt), (TaskStatus::Running, 2));
    c.check().await;
    c.stop().await;
}

// ---- worker inactivity detection ---------------------------------------------

#[tokio::test(start_paused = true)]
async fn seed003_stopped_worker_turns_inactive_at_the_deadline_and_gets_no_tasks() {
    let mut c = cluster(&[("tessa", 8.0), ("other", 8.0)]).await;
    c.crash_worker(&wid("tessa"));
    let last = view(&c, "tessa").last_heartbeat.unwrap();
    let timeout = c.master.config().liveness.timeout;
    let deadline = last.saturating_add(timeout);
    let wait = deadline.saturating_since(c.clock.now());
    c.run_for(wait).await;
    assert_eq!(
        view(&c, "tessa").health,
        Health::Active,
        "not before the deadline"
    );
    c.run_for(Duration::from_millis(2)).await;
    assert_eq!(
        view(&c, "tessa").health,
        Health::Inactive,
        "right after the deadline"
    );
    for _ in 0..4 {
        c.master.submit(fake_task(600, 0, 1.0)).await.unwrap();
    }
    c.run_for(Duration::from_secs(1)).await;
    assert_eq!(
        view(&c, "tessa").tasks.len(),
        0,
        "no task on the inactive worker"
    );
    assert_eq!(view(&c, "other").tasks.len(), 4);
    c.check().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed003_tasks_wait_with_a_reason_when_no_worker_is_active() {
    let mut c = cluster(&[("tessa", 2.0)]).await;
    c.crash_worker(&wid("tessa"));
    c.run_for(Duration::from_secs(31)).await;
    let t = c.master.submit(fake_task(1, 0, 1.0)).await.unwrap();
    let v = c.master.task(&t).await.unwrap();
    assert_eq!(v.task.status, TaskStatus::Pending);
    assert_eq!(v.waiting.as_deref(), Some("no active workers"));
    c.restart_worker(&wid("tessa")).await;
    c.run_for(Duration::from_secs(3)).await;
    assert_eq!(
        status(&c, &t).await,
        TaskStatus::Completed,
        "placed once a worker joined"
    );
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn queued_task_is_placed_when_a_running_task_ends() {
    let c = cluster(&[("w1", 1.0)]).await;
    let first = c.master.submit(fake_task(10, 0, 1.0)).await.unwrap();
    let second = c.master.submit(fake_task(1, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    let v = c.master.task(&second).await.unwrap();
    assert_eq!(
        v.waiting.as_deref(),
        Some("no active worker has enough free resources now")
    );
    // No registered worker could ever hold 64 CPUs: refused, naming the
    // largest worker, unless told to wait for capacity.
    let refused = c.master.submit(fake_task(1, 0, 64.0)).await.unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidInput(_))
            && refused
                .to_string()
                .contains("the largest worker, w1, has cpu=1"),
        "{refused}"
    );
    let waiting = SubmitOptions {
        wait_for_capacity: true,
        ..SubmitOptions::default()
    };
    let too_big = c
        .master
        .submit_with(fake_task(1, 0, 64.0), waiting)
        .await
        .unwrap();
    c.run_for(Duration::from_secs(15)).await;
    assert_eq!(status(&c, &first).await, TaskStatus::Completed);
    assert_eq!(status(&c, &second).await, TaskStatus::Completed);
    let v = c.master.task(&too_big).await.unwrap();
    assert_eq!(
        v.waiting.as_deref(),
        Some("request exceeds the capacity of every active worker")
    );
    c.stop().await;
}

/// A pinned request is checked against its worker alone: too big for it
/// is refused naming it, though a bigger worker exists.
#[tokio::test(start_paused = true)]
async fn a_pinned_request_its_worker_could_never_hold_is_refused() {
    let c = cluster(&[("big", 4.0), ("small", 1.0)]).await;
    let mut pinned = fake_task(1, 0, 2.0);
    pinned.pin = Some(wid("small"));
    let refused = c.master.submit(pinned.clone()).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the largest (pinned) worker, small, has cpu=1"),
        "{refused}"
    );
    pinned.pin = Some(wid("big"));
    let placed = c.master.submit(pinned).await.unwrap();
    c.master.submit(fake_task(1, 0, 2.0)).await.unwrap();
    c.run_for(Duration::from_secs(3)).await;
    assert_eq!(status(&c, &placed).await, TaskStatus::Completed);
    c.stop().await;
}

// ---- worker reconnection --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn seed004_pre_registered_offline_worker_comes_back() {
    let mut c = cluster(&[]).await;
    c.master
        .pre_register(wid("w1"), "sim-w1:1".into())
        .await
        .unwrap();
    let v = view(&c, "w1");
    assert_eq!((v.health, v.registered), (Health::Inactive, false));
    c.run_for(Duration::from_secs(60)).await;
    assert_eq!(view(&c, "w1").health, Health::Inactive, "still offline");
    // The worker starts, but cannot reach the master by itself (partitioned
    // until it heals); the master's retries bring it in.
    let w1 = wid("w1");
    c.partition(&w1);
    c.start_worker("w1", cap(8.0)).await;
    c.run_for(Duration::from_secs(90)).await;
    c.heal(&w1);
    until(
        Duration::from_secs(31),
        "worker registered after coming online",
        async || {
            let v = view(&c, "w1");
            v.registered && v.health == Health::Active
        },
    )
    .await;
    assert_eq!(view(&c, "w1").capacity, cap(8.0));
    let t = c.master.submit(fake_task(1, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(3)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Completed);
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn seed004_lost_worker_re_registers_and_is_told_to_drop_failed_over_tasks() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(no_requeue(600, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.partition(&wid("w1"));
    c.run_for(Duration::from_secs(125)).await;
    assert_eq!(
        status(&c, &t).await,
        TaskStatus::Failed,
        "failed over after lost_after"
    );
    let w = c.worker("w1").unwrap();
    assert!(
        w.running().is_empty(),
        "cut off, the worker stopped the run itself before it was lost"
    );
    c.heal(&wid("w1"));
    until(
        Duration::from_secs(30),
        "worker registered again",
        async || view(&c, "w1").health == Health::Active,
    )
    .await;
    assert_eq!(
        status(&c, &t).await,
        TaskStatus::Failed,
        "the run's late report did not revive it"
    );
    c.check_quiescent().await;
    c.stop().await;
}

// ---- work that survives faults ------------------------------------------

/// A fake task with `policy` applied by `f`.
fn with_policy(
    mut spec: TaskSpec,
    f: impl FnOnce(&mut cloudai_core::model::AttemptPolicy),
) -> TaskSpec {
    f(&mut spec.policy);
    spec
}

/// A fake task that fails until its `n`th attempt, with `retries` and a
/// first retry delay of `delay`.
fn failing_until(n: u32, retries: u32, delay: Duration) -> TaskSpec {
    let spec = TaskSpec::new(
        "fake",
        vec!["fail-until".into(), n.to_string(), "1".into()],
        cap(1.0),
    );
    with_policy(spec, |p| {
        p.retries = retries;
        p.retry_delay = delay;
    })
}

/// `kill -9` of a host running three tasks: each runs again on a second
/// worker once the first is declared lost, and completes there with one
/// result; its history names the loss.
#[tokio::test(start_paused = true)]
async fn a_crashed_workers_tasks_run_again_elsewhere_with_one_result_each() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        tasks.push(c.master.submit(fake_task(30, 0, 1.0)).await.unwrap());
    }
    c.run_for(Duration::from_secs(1)).await;
    c.start_worker("w2", cap(4.0)).await;
    c.crash_worker(&wid("w1"));
    c.run_for(Duration::from_secs(200)).await;
    for t in &tasks {
        let v = c.master.task(t).await.unwrap();
        assert_eq!(v.task.status, TaskStatus::Completed, "{:?}", v.task);
        assert_eq!(v.task.worker, Some(wid("w2")));
        let causes: Vec<EndCause> = v.task.history.iter().map(|a| a.cause).collect();
        assert_eq!(causes, [EndCause::WorkerLost, EndCause::Completed]);
        let r = v.result.expect("one result");
        assert_eq!((r.worker_id, r.attempt), (wid("w2"), v.task.attempt));
    }
    c.check().await;
    c.stop().await;
}

/// With `--no-requeue` the same crash fails the tasks, as before.
#[tokio::test(start_paused = true)]
async fn without_requeue_a_crashed_workers_tasks_fail() {
    let mut c = cluster(&[("w1", 4.0), ("w2", 4.0)]).await;
    let t = c
        .master
        .submit_with(
            with_policy(fake_task(30, 0, 1.0), |p| p.requeue = false),
            SubmitOptions::default(),
        )
        .await
        .unwrap();
    c.run_for(Duration::from_secs(1)).await;
    let on = c.master.task(&t).await.unwrap().task.worker.unwrap();
    c.crash_worker(&on);
    c.run_for(Duration::from_secs(200)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed);
    assert!(task.reason.is_some_and(|r| r.starts_with("worker lost")));
    c.stop().await;
}

/// A task that fails on its first two attempts completes on the third
/// with `retries 2`, each retry after its delay.
#[tokio::test(start_paused = true)]
async fn a_task_failing_twice_completes_on_its_third_attempt() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let spec = failing_until(3, 2, Duration::from_secs(4));
    let t = c.master.submit(spec).await.unwrap();
    c.run_for(Duration::from_secs(3)).await;
    let v = c.master.task(&t).await.unwrap();
    assert_eq!(v.task.status, TaskStatus::Pending, "waits for its retry");
    assert!(
        v.waiting
            .as_deref()
            .is_some_and(|w| w.starts_with("retrying")),
        "{v:?}"
    );
    c.run_for(Duration::from_secs(60)).await;
    let v = c.master.task(&t).await.unwrap();
    assert_eq!(v.task.status, TaskStatus::Completed, "{:?}", v.task);
    let causes: Vec<EndCause> = v.task.history.iter().map(|a| a.cause).collect();
    assert_eq!(
        causes,
        [EndCause::Exited, EndCause::Exited, EndCause::Completed]
    );
    let gaps: Vec<Duration> = v
        .task
        .history
        .windows(2)
        .map(|w| w[1].started_at.unwrap().saturating_since(w[0].ended_at))
        .collect();
    assert!(
        gaps[0] >= Duration::from_secs(2) && gaps[1] >= Duration::from_secs(4),
        "each retry waits its (jittered, doubling) delay: {gaps:?}"
    );
    c.check_quiescent().await;
    c.stop().await;
}

/// A run past its time limit is stopped with its grace and fails
/// `timeout`; a timeout is final without `retry_on_timeout`.
#[tokio::test(start_paused = true)]
async fn a_time_limit_stops_a_run_and_fails_it_as_timed_out() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let spec = TaskSpec::new("fake", vec!["stubborn".into(), "300".into()], cap(1.0));
    let mut spec = with_policy(spec, |p| {
        p.time_limit = Some(Duration::from_secs(2));
        p.retries = 3;
    });
    spec.cancel_grace = Duration::from_secs(1);
    let t = c.master.submit(spec).await.unwrap();
    c.run_for(Duration::from_secs(10)).await;
    let v = c.master.task(&t).await.unwrap();
    assert_eq!(v.task.status, TaskStatus::Failed, "{:?}", v.task);
    assert!(
        v.task
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("timeout")),
        "{:?}",
        v.task.reason
    );
    assert_eq!(v.task.history.len(), 1, "a timeout is final");
    let a = &v.task.history[0];
    assert_eq!(a.cause, EndCause::TimedOut);
    let ran = a.ended_at.saturating_since(a.started_at.unwrap());
    assert!(
        ran >= Duration::from_secs(2) && ran <= Duration::from_secs(4),
        "stopped at its limit, then its grace: ran {ran:?}"
    );
    c.check_quiescent().await;
    c.stop().await;
}

/// A worker cut off from its master stops its run before the master
/// declares it lost; the task then runs on the other worker, never on
/// both at once (the running set checks every instant), and completes.
#[tokio::test(start_paused = true)]
async fn a_partitioned_workers_task_runs_again_elsewhere_never_twice_at_once() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(300, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.start_worker("w2", cap(4.0)).await;
    c.partition(&wid("w1"));
    c.run_for(Duration::from_secs(110)).await;
    assert_eq!(c.host_containers(&wid("w1")), 0, "fenced before the loss");
    assert_eq!(status(&c, &t).await, TaskStatus::Running, "not lost yet");
    c.run_for(Duration::from_secs(20)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(
        (task.status, task.worker.as_ref()),
        (TaskStatus::Running, Some(&wid("w2"))),
        "{task:?}"
    );
    c.heal(&wid("w1"));
    c.run_for(Duration::from_secs(400)).await;
    let v = c.master.task(&t).await.unwrap();
    assert_eq!(v.task.status, TaskStatus::Completed);
    assert_eq!(v.result.unwrap().worker_id, wid("w2"));
    c.check_quiescent().await;
    c.stop().await;
}

/// At a drain deadline the run is stopped with its grace; the task runs
/// again on another worker once the stop is confirmed, at no cost to its
/// crash budget.
#[tokio::test(start_paused = true)]
async fn a_drained_task_runs_again_elsewhere_once_stopped() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(60, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.start_worker("w2", cap(4.0)).await;
    c.master
        .drain(&wid("w1"), Some(Duration::from_secs(5)))
        .await
        .unwrap();
    c.run_for(Duration::from_secs(100)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.worker, Some(wid("w2")));
    assert_eq!(task.history[0].cause, EndCause::Drained);
    assert_eq!(task.counts().losses, 0, "a drain uses no crash budget");
    c.check_quiescent().await;
    c.stop().await;
}

/// A worker that shuts down reports its run ended once stopped; the task
/// runs again elsewhere, its first attempt recorded with the shutdown's
/// message.
#[tokio::test(start_paused = true)]
async fn a_shutdown_workers_task_runs_again_elsewhere() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let t = c.master.submit(fake_task(30, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.start_worker("w2", cap(4.0)).await;
    c.shutdown_worker(&wid("w1")).await.unwrap();
    c.run_for(Duration::from_secs(60)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.history[0].cause, EndCause::WorkerShutdown);
    assert_eq!(task.history[0].message.as_deref(), Some(SHUTDOWN_MESSAGE));
    c.check_quiescent().await;
    c.stop().await;
}

/// A master restarted on its store resumes a waiting retry: the task is
/// placed after its not-before time, not before and not never.
#[tokio::test(start_paused = true)]
async fn a_restarted_master_resumes_a_waiting_retry() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let spec = failing_until(2, 1, Duration::from_secs(60));
    let t = c.master.submit(spec).await.unwrap();
    c.run_for(Duration::from_secs(3)).await;
    let waiting = c.store.get_task(&t).await.unwrap().unwrap();
    let due = waiting.not_before.expect("a retry waits");
    let m2 = cloudai_core::master::Master::start(
        MasterConfig::default(),
        c.store.clone(),
        c.store.clone(),
        c.net.clone(),
        c.clock,
    )
    .await
    .unwrap();
    let old = std::mem::replace(&mut c.master, m2);
    old.shutdown().await;
    c.net.set_master(c.master.clone());
    c.master.reconnect_now();
    c.run_for(Duration::from_secs(120)).await;
    let task = c.store.get_task(&t).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert!(
        task.history[1].started_at.unwrap() >= due,
        "placed before its not-before time: {task:?}"
    );
    c.stop().await;
}

/// A time-limited run whose worker agent died and whose end is never
/// heard: the master times it out itself at its limit, grace and a
/// heartbeat timeout past its assignment, before the worker is lost.
#[tokio::test(start_paused = true)]
async fn the_master_times_out_a_run_whose_end_is_never_heard() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let mut spec = with_policy(fake_task(600, 0, 1.0), |p| {
        p.time_limit = Some(Duration::from_secs(5));
    });
    spec.cancel_grace = Duration::from_secs(1);
    let t = c.master.submit(spec).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    c.kill_agent(&wid("w1"));
    c.run_for(Duration::from_secs(40)).await;
    let task = c.master.task(&t).await.unwrap().task;
    assert_eq!(task.status, TaskStatus::Failed, "{task:?}");
    assert!(
        task.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("timeout: no end heard")),
        "{task:?}"
    );
    assert_eq!(
        view(&c, "w1").health,
        Health::Inactive,
        "timed out before the worker was lost"
    );
    c.restart_worker(&wid("w1")).await.unwrap();
    c.run_for(Duration::from_secs(10)).await;
    c.check_quiescent().await;
    c.stop().await;
}

// ---- two masters under the lease ------------------------------------------

fn ha_config() -> MasterConfig {
    MasterConfig {
        lease_ttl: Duration::from_secs(6),
        ..MasterConfig::default()
    }
}

/// Which master leads, by its id.
fn leader_id(c: &SimCluster) -> Option<String> {
    c.leader().map(|m| m.config().id.clone())
}

fn index_of(id: &str) -> usize {
    id.trim_start_matches('m').parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_crashed_leaders_work_goes_on_under_the_next_and_its_running_task_is_kept() {
    let mut c = SimCluster::start_ha(7, Faults::NONE, ha_config(), 2, None).await;
    c.start_worker("w1", cap(4.0)).await;
    c.run_for(Duration::from_millis(200)).await;
    let first = leader_id(&c).unwrap();
    let long = c
        .leader()
        .unwrap()
        .submit(fake_task(60, 0, 1.0))
        .await
        .unwrap();
    c.run_for(Duration::from_secs(1)).await;
    assert_eq!(status(&c, &long).await, TaskStatus::Running);
    c.crash_master(index_of(&first));
    let crashed = tokio::time::Instant::now();
    until(
        Duration::from_secs(30),
        "the other master leads",
        async || leader_id(&c).is_some_and(|l| l != first),
    )
    .await;
    let took = crashed.elapsed();
    assert!(
        took <= Duration::from_secs(9),
        "takeover within 1.5×TTL: {took:?}"
    );
    let next = c.leader().unwrap();
    assert_eq!(next.term().get(), 2);
    // It raised every fence before it acted: the first term can change
    // neither the running task nor the worker any more.
    let old = c.store.at_term(Term::new(1));
    let late = apply_event(
        &old,
        &long,
        &TaskEvent::Cancel { force: true },
        c.clock.now(),
    )
    .await;
    assert!(matches!(late, Err(Error::Fenced { .. })), "{late:?}");
    let late = WorkerRegistry::set_drain(&old, &wid("w1"), None).await;
    assert!(matches!(late, Err(Error::Fenced { .. })), "{late:?}");
    // The new leader pulls the worker over; from then on it refuses the
    // first term's calls.
    let w1 = c.worker("w1").unwrap();
    until(
        Duration::from_secs(10),
        "the worker follows the new leader",
        async || w1.term().get() == 2 && w1.in_session(),
    )
    .await;
    let to = WorkerEndpoint {
        id: wid("w1"),
        instance: Some(w1.identity().instance),
        address: w1.address().to_string(),
    };
    let run = RunningTask {
        task: long.clone(),
        attempt: 1,
    };
    let late = c
        .net
        .fenced(Term::new(1))
        .cancel(&to, &run, Duration::ZERO)
        .await;
    assert!(matches!(late, Err(Error::Fenced { .. })), "{late:?}");
    // New work is placed, the running task was never stopped, and both end
    // completed, once each.
    let short = next.submit(fake_task(5, 0, 1.0)).await.unwrap();
    // Its ids carry its term: none can collide with the first master's.
    let n: u64 = short.as_str().rsplit('-').next().unwrap().parse().unwrap();
    assert_eq!(n >> 32, 2, "{short}");
    c.run_for(Duration::from_secs(90)).await;
    assert_eq!(status(&c, &long).await, TaskStatus::Completed);
    assert_eq!(status(&c, &short).await, TaskStatus::Completed);
    let t = c.store.get_task(&long).await.unwrap().unwrap();
    assert_eq!(t.attempt, 1, "the takeover did not restart the run");
    c.restart_master(index_of(&first));
    c.run_for(Duration::from_secs(20)).await;
    c.check_quiescent().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_briefly_stops_acting_then_leads_again_in_its_term() {
    let mut c = SimCluster::start_ha(8, Faults::NONE, ha_config(), 2, None).await;
    c.start_worker("w1", cap(4.0)).await;
    c.run_for(Duration::from_millis(200)).await;
    let first = leader_id(&c).unwrap();
    let lapsed = c.leader().unwrap();
    // Cut for longer than its acting window (4 s past its last renewal)
    // but not the TTL the other needs from its first read of that renewal.
    c.cut_master(index_of(&first));
    c.run_for(Duration::from_millis(4_500)).await;
    assert!(
        c.leader().is_none(),
        "nobody acts while the leader cannot renew"
    );
    c.resume_master(index_of(&first));
    until(Duration::from_secs(5), "it leads again", async || {
        c.leader().is_some()
    })
    .await;
    assert_eq!(leader_id(&c).unwrap(), first, "no takeover");
    assert_eq!(c.leader().unwrap().term().get(), 1, "in its own term");
    // A new master for the new stretch: the one that lapsed, and may have
    // dropped a write meanwhile, never acts again.
    assert!(!c.leader().unwrap().is(&lapsed), "a new master");
    assert!(!lapsed.acting(), "the lapsed master does not act again");
    let t = c
        .leader()
        .unwrap()
        .submit(fake_task(2, 0, 1.0))
        .await
        .unwrap();
    c.run_for(Duration::from_secs(10)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Completed);
    c.check_quiescent().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_paused_leaders_late_writes_are_fenced_and_a_retried_submit_makes_one_task() {
    let mut c = SimCluster::start_ha(9, Faults::NONE, ha_config(), 2, None).await;
    c.start_worker("w1", cap(4.0)).await;
    c.run_for(Duration::from_millis(200)).await;
    let first = leader_id(&c).unwrap();
    let old = c.leader().unwrap();
    let running = old.submit(fake_task(30, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    // The leader's process stops; a cancel it was writing lands later.
    c.pause_master(index_of(&first));
    let late = {
        let old = old.clone();
        let t = running.clone();
        tokio::spawn(async move { old.cancel(&t, false).await })
    };
    until(
        Duration::from_secs(30),
        "the other master leads",
        async || leader_id(&c).is_some_and(|l| l != first),
    )
    .await;
    // The stopped leader answers nothing: the new one pulls the worker over.
    let w1 = c.worker("w1").unwrap();
    until(
        Duration::from_secs(10),
        "the worker registers with the new leader",
        async || {
            w1.term().get() == 2
                && w1.in_session()
                && c.leader()
                    .is_some_and(|m| m.workers().iter().any(|w| w.registered))
        },
    )
    .await;
    c.resume_master(index_of(&first));
    let refused = late.await.unwrap();
    assert!(
        refused.is_err(),
        "the deposed master's cancel was refused: {refused:?}"
    );
    assert_eq!(status(&c, &running).await, TaskStatus::Running);
    // A submit retried under one request id makes one task.
    let next = c.leader().unwrap();
    let options = SubmitOptions {
        request: Some(cloudai_core::model::RequestId::new("r-1").unwrap()),
        ..SubmitOptions::default()
    };
    let a = next
        .submit_with(fake_task(1, 0, 1.0), options.clone())
        .await
        .unwrap();
    let b = next
        .submit_with(fake_task(1, 0, 1.0), options.clone())
        .await
        .unwrap();
    assert_eq!(a, b);
    let other = next.submit_with(fake_task(2, 0, 1.0), options).await;
    assert!(matches!(other, Err(Error::Conflict(_))), "{other:?}");
    c.restart_master(index_of(&first));
    c.run_for(Duration::from_secs(60)).await;
    assert_eq!(c.statuses().await.len(), 2);
    c.check_quiescent().await;
    c.stop().await;
}

/// No master acts for longer than the worker's fence (the store is away
/// from both): the worker stops its run on its own, and the master that
/// leads next requeues it at no cost to its crash budget.
#[tokio::test(start_paused = true)]
async fn a_run_cut_off_while_no_master_led_is_requeued_without_using_its_crash_budget() {
    let mut c = SimCluster::start_ha(11, Faults::NONE, ha_config(), 2, None).await;
    c.start_worker("w1", cap(4.0)).await;
    c.run_for(Duration::from_millis(200)).await;
    let mut spec = fake_task(150, 0, 1.0);
    spec.policy.crash_limit = 1;
    let t = c.leader().unwrap().submit(spec).await.unwrap();
    c.run_for(Duration::from_secs(1)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Running);
    c.cut_master(0);
    c.cut_master(1);
    // Past the worker's fence (120 s less its 30 s grace and a margin).
    c.run_for(Duration::from_secs(95)).await;
    assert_eq!(
        c.host_containers(&wid("w1")),
        0,
        "the worker stopped its run"
    );
    c.resume_master(0);
    c.resume_master(1);
    c.run_for(Duration::from_secs(400)).await;
    let task = c.store.get_task(&t).await.unwrap().unwrap();
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    let causes: Vec<EndCause> = task.history.iter().map(|a| a.cause).collect();
    assert!(causes.contains(&EndCause::Takeover), "{causes:?}");
    assert_eq!(task.counts().losses, 0, "{causes:?}");
    c.check_quiescent().await;
    c.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_submit_stored_after_its_masters_tenure_is_refused_and_the_next_leader_adopts_it() {
    let mut c = SimCluster::start_ha(10, Faults::NONE, ha_config(), 2, None).await;
    c.start_worker("w1", cap(4.0)).await;
    c.run_for(Duration::from_millis(200)).await;
    let first = leader_id(&c).unwrap();
    let old = c.leader().unwrap();
    // The leader's process stops while its insert is on the way.
    c.pause_master(index_of(&first));
    let late = tokio::spawn(async move { old.submit(fake_task(2, 0, 1.0)).await });
    until(
        Duration::from_secs(30),
        "the other master leads",
        async || leader_id(&c).is_some_and(|l| l != first),
    )
    .await;
    c.run_for(Duration::from_secs(1)).await;
    // It resumes: the insert lands after the next leader loaded its state.
    c.resume_master(index_of(&first));
    let refused = late.await.unwrap();
    assert!(
        matches!(refused, Err(Error::Unavailable(_))),
        "not acknowledged: {refused:?}"
    );
    let stored: Vec<TaskId> = c.statuses().await.into_keys().collect();
    assert_eq!(stored.len(), 1, "the task was stored");
    // Within a TTL the next leader adopts it, and it runs once.
    c.run_for(Duration::from_secs(20)).await;
    assert_eq!(status(&c, &stored[0]).await, TaskStatus::Completed);
    c.restart_master(index_of(&first));
    c.run_for(Duration::from_secs(10)).await;
    c.check_quiescent().await;
    c.stop().await;
}

// ---- pipelines: dependencies, throttles, constraints, priorities ---------

fn after(task: &TaskId, condition: Condition) -> Dependency {
    Dependency {
        task: task.clone(),
        condition,
    }
}

/// `spec` waiting on each of `parents`.
fn waiting_on(mut spec: TaskSpec, parents: &[(&TaskId, Condition)]) -> TaskSpec {
    spec.after = parents.iter().map(|(t, c)| after(t, *c)).collect();
    spec
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn task_of(c: &SimCluster, t: &TaskId) -> TaskRecord {
    c.store.get_task(t).await.unwrap().unwrap()
}

/// The waiting reason of a pending task, in a word.
async fn reason_word(c: &SimCluster, t: &TaskId) -> &'static str {
    let waiting = c.master.task(t).await.unwrap().waiting.unwrap_or_default();
    short_reason(&waiting)
}

/// Runs until every task ended, or panics after `limit`.
async fn all_ended(c: &SimCluster, limit: Duration) {
    until(limit, "every task ended", async || {
        c.statuses().await.values().all(|s| s.is_terminal())
    })
    .await;
}

/// When `t`'s first attempt started.
fn first_start(t: &TaskRecord) -> Timestamp {
    t.history[0].started_at.expect("a start")
}

fn never_ran(t: &TaskRecord) {
    assert_eq!(
        (t.status, t.attempt, t.history.len()),
        (TaskStatus::Cancelled, 0, 0),
        "{t:?}"
    );
}

/// A → B → C, each after-ok: A fails, so B and C are cancelled without
/// ever starting, C's reason naming A as the root; while A runs, B waits
/// for its dependency.
#[tokio::test(start_paused = true)]
async fn a_failed_after_ok_parent_cancels_its_dependents_which_name_the_root() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let a = c.master.submit(fake_task(3, 1, 1.0)).await.unwrap();
    let b = c
        .master
        .submit(waiting_on(
            fake_task(1, 0, 1.0),
            &[(&a, Condition::AfterOk)],
        ))
        .await
        .unwrap();
    let options = SubmitOptions {
        after: vec![ParentRef {
            condition: Condition::AfterOk,
            id: b.to_string(),
        }],
        ..SubmitOptions::default()
    };
    let cc = c
        .master
        .submit_with(fake_task(1, 0, 1.0), options)
        .await
        .unwrap();
    c.run_for(Duration::from_secs(1)).await;
    assert_eq!(status(&c, &a).await, TaskStatus::Running);
    assert_eq!(reason_word(&c, &b).await, "Dependency");
    assert_eq!(reason_word(&c, &cc).await, "Dependency");
    c.check().await;
    all_ended(&c, Duration::from_secs(30)).await;
    assert_eq!(status(&c, &a).await, TaskStatus::Failed);
    let (tb, tc) = (task_of(&c, &b).await, task_of(&c, &cc).await);
    never_ran(&tb);
    never_ran(&tc);
    assert_eq!(
        tb.reason.as_deref(),
        Some(format!("dependency never satisfied: after-ok and task {a} failed").as_str())
    );
    assert_eq!(
        tc.reason.as_deref(),
        Some(
            format!("dependency never satisfied: after-ok and task {b} cancelled (root: task {a})")
                .as_str()
        )
    );
    assert!(
        c.store.get_result(&b).await.unwrap().is_none(),
        "no run, no result"
    );
    c.check_quiescent().await;
    c.stop().await;
}

/// A dependent submitted after its parent completed runs; one submitted
/// after its parent failed is cancelled at once, naming it.
#[tokio::test(start_paused = true)]
async fn a_dependent_of_an_ended_parent_is_decided_at_submit() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let ok = c.master.submit(fake_task(1, 0, 1.0)).await.unwrap();
    let bad = c.master.submit(fake_task(1, 1, 1.0)).await.unwrap();
    all_ended(&c, Duration::from_secs(10)).await;
    let runs = c
        .master
        .submit(waiting_on(
            fake_task(1, 0, 1.0),
            &[(&ok, Condition::AfterOk)],
        ))
        .await
        .unwrap();
    let options = SubmitOptions {
        after: vec![ParentRef {
            condition: Condition::AfterOk,
            id: bad.to_string(),
        }],
        ..SubmitOptions::default()
    };
    let never = c
        .master
        .submit_with(fake_task(1, 0, 1.0), options)
        .await
        .unwrap();
    c.run_for(Duration::from_millis(10)).await;
    assert_eq!(
        status(&c, &runs).await,
        TaskStatus::Running,
        "placed at once"
    );
    let t = task_of(&c, &never).await;
    never_ran(&t);
    assert_eq!(
        t.reason.as_deref(),
        Some(format!("dependency never satisfied: after-ok and task {bad} failed").as_str())
    );
    // An unknown parent is refused.
    let unknown = SubmitOptions {
        after: vec![ParentRef {
            condition: Condition::AfterOk,
            id: "task-999999".into(),
        }],
        ..SubmitOptions::default()
    };
    let refused = c.master.submit_with(fake_task(1, 0, 1.0), unknown).await;
    assert!(
        matches!(refused, Err(Error::NotFound { .. })),
        "{refused:?}"
    );
    all_ended(&c, Duration::from_secs(10)).await;
    assert_eq!(status(&c, &runs).await, TaskStatus::Completed);
    c.check_quiescent().await;
    c.stop().await;
}

/// after-notok runs only when its parent did not complete; after-any
/// runs after either end; none starts before its parent ended.
#[tokio::test(start_paused = true)]
async fn after_notok_runs_only_on_failure_and_after_any_after_either() {
    let mut c = cluster(&[("w1", 8.0)]).await;
    let ok = c.master.submit(fake_task(3, 0, 1.0)).await.unwrap();
    let bad = c.master.submit(fake_task(3, 1, 1.0)).await.unwrap();
    let mut dependents = Vec::new();
    for parent in [&ok, &bad] {
        for condition in [
            Condition::AfterOk,
            Condition::AfterAny,
            Condition::AfterNotOk,
        ] {
            let spec = waiting_on(fake_task(1, 0, 1.0), &[(parent, condition)]);
            let t = c.master.submit(spec).await.unwrap();
            dependents.push((parent.clone(), condition, t));
        }
    }
    c.run_for(Duration::from_secs(1)).await;
    c.check().await;
    all_ended(&c, Duration::from_secs(30)).await;
    for (parent, condition, t) in &dependents {
        let p = task_of(&c, parent).await;
        let task = task_of(&c, t).await;
        let runs = match condition {
            Condition::AfterOk => p.status == TaskStatus::Completed,
            Condition::AfterAny => true,
            Condition::AfterNotOk => p.status != TaskStatus::Completed,
        };
        if runs {
            assert_eq!(
                task.status,
                TaskStatus::Completed,
                "{condition} {parent}: {task:?}"
            );
            assert!(
                first_start(&task) >= p.finished_at.unwrap(),
                "{condition} {parent}: started before its parent ended"
            );
        } else {
            never_ran(&task);
        }
    }
    c.check_quiescent().await;
    c.stop().await;
}

/// An array followed by an array whose member i waits for member i
/// (`after_corr`; the extra member waits for none), and an evaluation
/// after-ok on the whole first array: each starts only once what it
/// waits on completed.
#[tokio::test(start_paused = true)]
async fn after_corr_members_wait_for_their_counterparts_and_an_evaluation_for_the_whole_array() {
    let mut c = cluster(&[("w1", 2.0)]).await;
    let (first, firsts) = c
        .master
        .submit_array(fake_task(2, 0, 1.0), &"0-2".parse().unwrap())
        .await
        .unwrap();
    let corr = SubmitOptions {
        after_corr: Some(first.clone()),
        ..SubmitOptions::default()
    };
    let (_, seconds) = c
        .master
        .submit_array_with(fake_task(1, 0, 1.0), &"0-3".parse().unwrap(), corr)
        .await
        .unwrap();
    let whole = SubmitOptions {
        after: vec![ParentRef {
            condition: Condition::AfterOk,
            id: first.to_string(),
        }],
        ..SubmitOptions::default()
    };
    let eval = c
        .master
        .submit_with(fake_task(1, 0, 1.0), whole)
        .await
        .unwrap();
    assert_eq!(task_of(&c, &eval).await.spec.after.len(), 3);
    assert!(task_of(&c, &seconds[3]).await.spec.after.is_empty());
    c.run_for(Duration::from_secs(1)).await;
    c.check().await;
    all_ended(&c, Duration::from_secs(60)).await;
    let mut last = Timestamp::ZERO;
    for (i, t) in firsts.iter().enumerate() {
        let parent = task_of(&c, t).await;
        assert_eq!(parent.status, TaskStatus::Completed);
        last = last.max(parent.finished_at.unwrap());
        let second = task_of(&c, &seconds[i]).await;
        assert_eq!(second.status, TaskStatus::Completed);
        assert!(
            first_start(&second) >= parent.finished_at.unwrap(),
            "{second:?}"
        );
    }
    let e = task_of(&c, &eval).await;
    assert_eq!(e.status, TaskStatus::Completed);
    assert!(first_start(&e) >= last);
    c.check_quiescent().await;
    c.stop().await;
}

/// The leader's store stalls while its worker reports a parent's end: the
/// write lands as the leader crashes, before it could wake the dependents.
/// The next leader reads the parent's end at load: the after-ok dependent
/// runs, the after-notok one is cancelled.
#[tokio::test(start_paused = true)]
async fn a_parents_end_written_as_its_master_crashed_still_decides_its_dependents() {
    let mut c = SimCluster::start_ha(12, Faults::NONE, ha_config(), 2, None).await;
    c.start_worker("w1", cap(4.0)).await;
    c.run_for(Duration::from_millis(200)).await;
    let first = leader_id(&c).unwrap();
    let m = c.leader().unwrap();
    let parent = m.submit(fake_task(5, 0, 1.0)).await.unwrap();
    let runs = m
        .submit(waiting_on(
            fake_task(1, 0, 1.0),
            &[(&parent, Condition::AfterOk)],
        ))
        .await
        .unwrap();
    let never = m
        .submit(waiting_on(
            fake_task(1, 0, 1.0),
            &[(&parent, Condition::AfterNotOk)],
        ))
        .await
        .unwrap();
    c.run_for(Duration::from_secs(4)).await;
    assert_eq!(status(&c, &parent).await, TaskStatus::Running);
    c.hold_store(index_of(&first));
    // The run ends at 5 s; its report waits at the stalled store.
    c.run_for(Duration::from_millis(1500)).await;
    assert_eq!(status(&c, &parent).await, TaskStatus::Running);
    c.crash_master(index_of(&first));
    c.run_for(Duration::from_millis(10)).await;
    assert_eq!(
        status(&c, &parent).await,
        TaskStatus::Completed,
        "the report landed as the master crashed"
    );
    let waiting = task_of(&c, &runs).await;
    assert_eq!((waiting.status, waiting.attempt), (TaskStatus::Pending, 0));
    until(
        Duration::from_secs(30),
        "the other master leads",
        async || leader_id(&c).is_some_and(|l| l != first),
    )
    .await;
    c.run_for(Duration::from_secs(20)).await;
    let r = task_of(&c, &runs).await;
    assert_eq!(r.status, TaskStatus::Completed, "{r:?}");
    let n = task_of(&c, &never).await;
    never_ran(&n);
    assert_eq!(
        n.reason.as_deref(),
        Some(
            format!("dependency never satisfied: after-notok and task {parent} completed").as_str()
        )
    );
    c.restart_master(index_of(&first));
    c.run_for(Duration::from_secs(10)).await;
    c.check_quiescent().await;
    c.stop().await;
}

/// A dependent stored by a master whose tenure ended meanwhile (its
/// insert, sent while it still led, landed after the next leader loaded)
/// is adopted by the next leader, which must still decide it though its
/// parent completed long before.
///
/// (Adopted tasks were once queued without reading their parents back:
/// this dependent waited forever; fixed in 15414cf.)
///
/// In production the deposed master's insert is in flight when its
/// process stops (after its tenure check, before the store has it). In
/// the simulation a submit's reads (the parent's check) go through the
/// same stalled store first, so that late insert is written here
/// directly, at the old term, as it lands.
#[tokio::test(start_paused = true)]
async fn a_dependent_stored_after_its_masters_tenure_is_decided_by_the_next_leader() {
    let mut c = SimCluster::start_ha(10, Faults::NONE, ha_config(), 2, None).await;
    c.start_worker("w1", cap(4.0)).await;
    c.run_for(Duration::from_millis(200)).await;
    let first = leader_id(&c).unwrap();
    let old = c.leader().unwrap();
    let parent = old.submit(fake_task(1, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(3)).await;
    assert_eq!(status(&c, &parent).await, TaskStatus::Completed);
    c.pause_master(index_of(&first));
    until(
        Duration::from_secs(30),
        "the other master leads",
        async || leader_id(&c).is_some_and(|l| l != first),
    )
    .await;
    c.run_for(Duration::from_secs(1)).await;
    let spec = waiting_on(fake_task(2, 0, 1.0), &[(&parent, Condition::AfterOk)]);
    let late = TaskRecord::new(TaskId::new("task-late-1").unwrap(), spec, c.clock.now());
    c.store
        .at_term(old.term())
        .insert_task(late.clone())
        .await
        .unwrap();
    c.resume_master(index_of(&first));
    // Within a TTL the next leader adopts it; its parent completed long
    // ago, so it runs.
    c.run_for(Duration::from_secs(30)).await;
    let dependent = task_of(&c, &late.id).await;
    let waiting = c.leader().unwrap().waiting(&dependent);
    assert_eq!(
        dependent.status,
        TaskStatus::Completed,
        "{dependent:?} waits: {waiting:?}"
    );
    c.restart_master(index_of(&first));
    c.run_for(Duration::from_secs(10)).await;
    c.check_quiescent().await;
    c.stop().await;
}

/// A → B (after-ok) fails, so B is cancelled; C, submitted after-ok B
/// once B was cancelled, is cancelled at once, and names A as the root as
/// it would had it been waiting all along.
#[tokio::test(start_paused = true)]
async fn a_dependent_of_a_parent_already_cancelled_as_unmet_names_the_root() {
    let mut c = cluster(&[("w1", 4.0)]).await;
    let a = c.master.submit(fake_task(1, 1, 1.0)).await.unwrap();
    let b = c
        .master
        .submit(waiting_on(
            fake_task(1, 0, 1.0),
            &[(&a, Condition::AfterOk)],
        ))
        .await
        .unwrap();
    all_ended(&c, Duration::from_secs(10)).await;
    let cc = c
        .master
        .submit(waiting_on(
            fake_task(1, 0, 1.0),
            &[(&b, Condition::AfterOk)],
        ))
        .await
        .unwrap();
    c.run_for(Duration::from_millis(10)).await;
    let t = task_of(&c, &cc).await;
    never_ran(&t);
    assert_eq!(
        t.reason.as_deref(),
        Some(
            format!("dependency never satisfied: after-ok and task {b} cancelled (root: task {a})")
                .as_str()
        )
    );
    c.check_quiescent().await;
    c.stop().await;
}

/// Ten members, at most two at once: never more run or end at once (the
/// simulation checks every instant it looks), the rest wait with the
/// reason, and all finish.
#[tokio::test(start_paused = true)]
async fn a_throttled_array_never_runs_more_than_its_limit_and_finishes() {
    let mut c = cluster(&[("w1", 8.0), ("w2", 8.0)]).await;
    let options = SubmitOptions {
        array_limit: Some(2),
        ..SubmitOptions::default()
    };
    let (_, members) = c
        .master
        .submit_array_with(fake_task(3, 0, 1.0), &"1-10".parse().unwrap(), options)
        .await
        .unwrap();
    let mut most = 0;
    for _ in 0..400 {
        let mut running = 0;
        let mut held = 0;
        for t in &members {
            let task = task_of(&c, t).await;
            if task.status == TaskStatus::Running || task.ending().is_some() {
                running += 1;
            } else if task.status == TaskStatus::Pending {
                assert_eq!(reason_word(&c, t).await, "ArrayLimit", "{task:?}");
                held += 1;
            }
        }
        assert!(running <= 2, "{running} members run at once");
        most = most.max(running);
        if running == 0 && held == 0 {
            break;
        }
        c.check().await;
        c.run_for(Duration::from_millis(250)).await;
    }
    assert_eq!(most, 2, "the limit is used");
    for t in &members {
        assert_eq!(status(&c, t).await, TaskStatus::Completed);
    }
    c.check_quiescent().await;
    c.stop().await;
}

/// A member that failed keeps its slot of the throttle while it waits for
/// its retry: no other member is admitted meanwhile.
#[tokio::test(start_paused = true)]
async fn a_throttled_members_retry_keeps_its_slot() {
    let mut c = cluster(&[("w1", 8.0)]).await;
    let options = SubmitOptions {
        array_limit: Some(2),
        ..SubmitOptions::default()
    };
    let (_, members) = c
        .master
        .submit_array_with(
            failing_until(2, 1, Duration::from_secs(10)),
            &"0-3".parse().unwrap(),
            options,
        )
        .await
        .unwrap();
    // The first two ran for a second and failed; they wait for their
    // retries (5 to 10 s away) and still hold both slots.
    c.run_for(Duration::from_millis(2500)).await;
    let mut words = Vec::new();
    for t in &members {
        let task = task_of(&c, t).await;
        assert_eq!(task.status, TaskStatus::Pending, "{task:?}");
        words.push(reason_word(&c, t).await);
    }
    assert_eq!(
        words,
        ["Retrying", "Retrying", "ArrayLimit", "ArrayLimit"],
        "members in index order"
    );
    c.check().await;
    all_ended(&c, Duration::from_secs(120)).await;
    for t in &members {
        let task = task_of(&c, t).await;
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(task.history.len(), 2, "{task:?}");
    }
    // The last two started only once the first two had completed.
    let ends: Vec<Timestamp> = {
        let mut v = Vec::new();
        for t in &members[..2] {
            v.push(task_of(&c, t).await.finished_at.unwrap());
        }
        v
    };
    for t in &members[2..] {
        let start = first_start(&task_of(&c, t).await);
        assert!(
            ends.iter().any(|e| start >= *e),
            "member started while both slots were held"
        );
    }
    c.check_quiescent().await;
    c.stop().await;
}

/// A task constrained to `zone=a` is refused while no registered worker
/// matches, unless it waits for capacity; then it waits (NoMatchingWorker)
/// until a worker labelled zone=a joins, and runs there, while
/// unconstrained work goes on elsewhere.
#[tokio::test(start_paused = true)]
async fn a_constrained_task_waits_for_a_matching_worker_and_runs_there() {
    let mut c = cluster(&[("plain", 4.0)]).await;
    let mut spec = fake_task(2, 0, 1.0);
    spec.constraints = vec!["zone=a".parse().unwrap(), "!spot".parse().unwrap()];
    let refused = c.master.submit(spec.clone()).await.unwrap_err();
    assert!(
        matches!(&refused, Error::InvalidInput(_)) && refused.to_string().contains("zone=a"),
        "{refused}"
    );
    let waits = SubmitOptions {
        wait_for_capacity: true,
        ..SubmitOptions::default()
    };
    let t = c.master.submit_with(spec.clone(), waits).await.unwrap();
    let free = c.master.submit(fake_task(1, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_secs(5)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Pending);
    assert_eq!(reason_word(&c, &t).await, "NoMatchingWorker");
    assert_eq!(status(&c, &free).await, TaskStatus::Completed);
    // A spot worker in zone a does not match either.
    c.label_worker("spot-a", labels(&[("zone", "a"), ("spot", "yes")]));
    c.start_worker("spot-a", cap(4.0)).await;
    c.run_for(Duration::from_secs(5)).await;
    assert_eq!(status(&c, &t).await, TaskStatus::Pending);
    assert_eq!(reason_word(&c, &t).await, "NoMatchingWorker");
    c.label_worker("zoned", labels(&[("zone", "a")]));
    c.start_worker("zoned", cap(4.0)).await;
    c.run_for(Duration::from_secs(5)).await;
    let task = task_of(&c, &t).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
    assert_eq!(task.worker, Some(wid("zoned")));
    // Now that a matching worker is registered, the same submit is taken.
    let again = c.master.submit(spec).await.unwrap();
    c.run_for(Duration::from_secs(5)).await;
    assert_eq!(task_of(&c, &again).await.worker, Some(wid("zoned")));
    c.check_quiescent().await;
    c.stop().await;
}

/// With the one slot busy, tasks of priorities 0, 5 and 1 queue; each
/// time the slot frees the highest goes next: 5, then 1, then 0.
#[tokio::test(start_paused = true)]
async fn queued_tasks_are_placed_highest_priority_first() {
    let mut c = cluster(&[("w1", 1.0)]).await;
    let busy = c.master.submit(fake_task(5, 0, 1.0)).await.unwrap();
    c.run_for(Duration::from_millis(100)).await;
    assert_eq!(status(&c, &busy).await, TaskStatus::Running);
    let mut ids = Vec::new();
    for priority in [0, 5, 1] {
        let mut spec = fake_task(2, 0, 1.0);
        spec.priority = priority;
        ids.push(c.master.submit(spec).await.unwrap());
        c.run_for(Duration::from_millis(10)).await;
    }
    all_ended(&c, Duration::from_secs(30)).await;
    let mut starts = Vec::new();
    for t in &ids {
        starts.push(first_start(&task_of(&c, t).await));
    }
    let (p0, p5, p1) = (starts[0], starts[1], starts[2]);
    assert!(p5 < p1 && p1 < p0, "placed 5, 1, 0: {starts:?}");
    c.check_quiescent().await;
    c.stop().await;
}
