//! A master on the MongoDB store survives `kill -9`: restarted on the same
//! port and database, it loads the workers and pending tasks, reconciles
//! allocations, the workers come back, and every task still ends exactly
//! once.
//!
//! Needs `CLOUDAI_TEST_MONGO_URI` (`./scripts/test.sh` starts a
//! MongoDB-wire server and sets it); without it the test fails.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudai_core::model::TaskId;
use cloudai_core::store::{TaskFilter, TaskStore, WorkerRegistry};
use cloudai_mongo::{MongoConfig, MongoStore};
use common::*;
use serde_json::Value;

const TASKS: usize = 6;

/// Workers keep their runs through the master's few seconds away: they
/// stop them only past their fence, some 9 s without an answer here.
const TIMING: Timing = Timing {
    heartbeat_interval: 0.3,
    heartbeat_timeout: 2.0,
    lost_after: 20.0,
};

/// A master on the Mongo store `uri`/`db`, listening on `listen`.
fn spawn_mongo_master(
    c: &Cluster,
    listen: &str,
    uri: &str,
    db: &str,
    name: &str,
) -> (Proc, String) {
    spawn_master(
        &c.token,
        listen,
        TIMING,
        &["--store", uri, "--mongo-db", db],
        name,
    )
}

fn log_has(lines: &[String], message: &str) -> Option<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["fields"]["message"] == message)
}

#[test]
fn master_restarts_on_mongo_without_losing_or_duplicating_tasks() {
    let uri = mongo_uri();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    let db = format!("cloudai_restart_{}_{nanos}", std::process::id());

    // A first master on a free port, on MongoDB. The cluster's own master is
    // replaced so that its guard kills whichever master runs at the end.
    let mut c = Cluster::start_with(
        "mongo-restart",
        TIMING,
        &["--store", &uri, "--mongo-db", &db],
    );
    let address = c.address.clone();
    let (w1, w2, w3) = (c.id("w1"), c.id("w2"), c.id("w3"));
    c.spawn_worker(&w1, 2.0);
    c.spawn_worker(&w2, 2.0);
    c.spawn_worker(&w3, 2.0);
    c.wait_active(&[&w1, &w2, &w3]);
    // w3 is drained: no task may run there, before or after the restart.
    assert_eq!(c.cli(&["drain", &w3]).code, 0);

    // 6 one-core tasks on 4 cores. The first four run: two long ones that
    // outlive the master's outage and two short ones that end during it;
    // the last two queue and start only after the restart.
    let specs: [(&str, u32); TASKS] = [
        ("long", 6),
        ("short", 1),
        ("long", 6),
        ("short", 1),
        ("queued", 1),
        ("queued", 1),
    ];
    let ids: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, secs))| {
            c.submit(&[
                "--cpu",
                "1",
                "--mem",
                "0.1",
                "busybox",
                "--",
                "sh",
                "-c",
                &format!("sleep {secs}; echo done-{i}"),
            ])
        })
        .collect();
    until(EVENTUALLY, "4 tasks running", || {
        let running = c
            .tasks()
            .iter()
            .filter(|t| t["status"] == "running")
            .count();
        (running == 4).then_some(())
    });

    // kill -9 mid-run; the short tasks end while no master is there; then
    // the same port and database again.
    c.master.child.kill().expect("kill -9 the master");
    let _ = c.master.child.wait();
    std::thread::sleep(Duration::from_millis(2500));
    let (master, again) = spawn_mongo_master(&c, &address, &uri, &db, "master (restarted)");
    assert_eq!(again, address, "restarted on the same address");
    c.master = master;

    let loaded = until(EVENTUALLY, "the restarted master loaded its state", || {
        log_has(&log_lines(&c.master.log), "master loaded state")
    });
    assert_eq!(
        loaded["fields"]["workers"], 3,
        "the workers come from the store: {loaded}"
    );
    assert_eq!(
        c.worker(&w3)["drain"],
        "drained",
        "the drain survives the restart"
    );
    assert_eq!(
        loaded["fields"]["pending"], 2,
        "the queued tasks come from the store: {loaded}"
    );

    // Every task ends, exactly once, with one result that carries its status.
    let views: Vec<Value> = until(
        Duration::from_secs(60),
        "every task terminal with its result",
        || {
            let views: Vec<Value> = ids.iter().map(|id| c.show(id)).collect();
            views
                .iter()
                .all(|v| {
                    matches!(
                        v["task"]["status"].as_str(),
                        Some("completed" | "failed" | "cancelled")
                    ) && !v["result"].is_null()
                })
                .then_some(views)
        },
    );
    for (i, (v, (kind, _))) in views.iter().zip(specs).enumerate() {
        assert_eq!(v["result"]["status"], v["task"]["status"], "{v}");
        let logs = v["result"]["logs"].as_str().unwrap_or_default();
        assert_eq!(
            logs.matches(&format!("done-{i}")).count(),
            1,
            "ran to its end exactly once: {v}"
        );
        // Runs that ended while no master was up are reported from the
        // worker's outbox after the restart: every task completes.
        assert_eq!(
            v["task"]["status"], "completed",
            "{kind} task {i} must complete: {v}"
        );
    }

    // Workers are back and hold nothing; nothing ran on the drained one.
    c.wait_active(&[&w1, &w2, &w3]);
    for v in &views {
        assert_ne!(
            v["task"]["worker"],
            w3.as_str(),
            "placed on a drained worker: {v}"
        );
    }
    until(EVENTUALLY, "allocations back to zero", || {
        c.workers()
            .iter()
            .all(|w| cpu_allocated(w) == 0.0)
            .then_some(())
    });

    // What the store holds: one record and one result per task, no
    // duplicates, nothing left running.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = MongoStore::connect(MongoConfig::new(uri.clone(), db.clone()))
            .await
            .expect("connect");
        let all = store
            .list_tasks(&TaskFilter::default())
            .await
            .expect("list");
        assert_eq!(all.len(), TASKS, "{all:?}");
        assert!(all.iter().all(|t| t.status.is_terminal()), "{all:?}");
        for task in &all {
            assert_eq!(task.attempt, 1, "placed once: {task:?}");
        }
        for id in &ids {
            let id = TaskId::new(id.as_str()).expect("id");
            let task = store.get_task(&id).await.expect("get").expect("task");
            let result = store.get_result(&id).await.expect("get").expect("result");
            assert_eq!(result.status, task.status);
            let history = store.assignment_history(&id).await.expect("history");
            assert_eq!(history.len(), 1, "{id}: one placement: {history:?}");
        }
        let workers = store.list_workers().await.expect("workers");
        assert_eq!(workers.len(), 3);
        let drained: Vec<_> = workers.iter().filter(|w| w.drain.is_some()).collect();
        assert_eq!(drained.len(), 1, "{workers:?}");
        assert_eq!(drained[0].id.as_str(), w3);
        let _ = store.drop_database().await;
    });
}
