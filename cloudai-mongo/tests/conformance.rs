//! `MongoStore` against a real MongoDB-wire server: the shared conformance
//! suites (a fresh database per case), the Mongo-specific parts (placement
//! history, int64 numbers, reconnecting), and the error mapping.
//!
//! The server comes from `CLOUDAI_TEST_MONGO_URI`; `./scripts/test.sh`
//! starts one (nx-27017) and sets it. Without it these tests fail: a store
//! test that passes without a store would prove nothing.

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudai_core::lifecycle::TaskEvent;
use cloudai_core::model::{
    Drain, Heartbeat, Resources, TaskStatus, Telemetry, Term, Timestamp, WorkerRecord,
};
use cloudai_core::store::{LeaseStore, TaskStore, WorkerRegistry};
use cloudai_core::testing::lease::{self, expect_fenced, tasks_at, workers_at, LeaseBackend};
use cloudai_core::testing::{pending_task, task_id, task_store, worker_id, worker_registry};
use cloudai_core::Error;
use cloudai_mongo::{MongoConfig, MongoStore, TASKS, WORKERS};
use mongodb::bson::{doc, Bson, Document};

fn test_uri() -> String {
    match std::env::var("CLOUDAI_TEST_MONGO_URI") {
        Ok(uri) if !uri.trim().is_empty() => uri,
        _ => panic!(
            "CLOUDAI_TEST_MONGO_URI is not set: run ./scripts/test.sh, which starts a \
             MongoDB-wire server, or set CLOUDAI_TEST_MONGO_URI=mongodb://HOST:PORT"
        ),
    }
}

/// `cloudai_test_<pid>_<counter>_<nanos>`: unique across processes and runs.
fn fresh_db() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "cloudai_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

async fn connect(uri: &str, database: &str) -> MongoStore {
    MongoStore::connect(MongoConfig::new(uri, database))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {uri} (database {database}): {e}"))
}

/// Stores made by a builder, dropped (with their databases) at the end.
#[derive(Default, Clone)]
struct Made(Arc<Mutex<Vec<MongoStore>>>);

impl Made {
    async fn fresh(&self, uri: &str) -> MongoStore {
        let store = connect(uri, &fresh_db()).await;
        self.0.lock().unwrap().push(store.clone());
        store
    }

    async fn drop_all(&self) {
        let stores = std::mem::take(&mut *self.0.lock().unwrap());
        for s in stores {
            let _ = s.drop_database().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_task_store_conforms() {
    let uri = test_uri();
    let made = Made::default();
    task_store::run_all(|| {
        let (made, uri) = (made.clone(), uri.clone());
        async move { Arc::new(made.fresh(&uri).await) as Arc<dyn TaskStore> }
    })
    .await;
    made.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_worker_registry_conforms() {
    let uri = test_uri();
    let made = Made::default();
    worker_registry::run_all(|| {
        let (made, uri) = (made.clone(), uri.clone());
        async move { Arc::new(made.fresh(&uri).await) as Arc<dyn WorkerRegistry> }
    })
    .await;
    made.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_lease_store_conforms() {
    let uri = test_uri();
    let made = Made::default();
    lease::run_all(|| {
        let (made, uri) = (made.clone(), uri.clone());
        async move { Arc::new(made.fresh(&uri).await) as Arc<dyn LeaseBackend> }
    })
    .await;
    made.drop_all().await;
}

/// MongoStore writes int64. A real mongod hands int64 back; nx-27017 keeps
/// documents as JSON in SQLite and hands small numbers back as int32. Either
/// way, never a double or a string.
fn is_integer(v: Option<&Bson>) -> bool {
    matches!(v, Some(Bson::Int64(_) | Bson::Int32(_)))
}

/// A raw view of the database, to check what is actually stored.
async fn raw_collection(uri: &str, db: &str, name: &str) -> mongodb::Collection<Document> {
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    client.database(db).collection(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_are_in_the_task_document_and_in_the_history() {
    let uri = test_uri();
    let made = Made::default();
    let store = made.fresh(&uri).await;
    store
        .insert_task(pending_task("t", 1))
        .await
        .expect("insert");
    let (a, b) = (worker_id("w-a"), worker_id("w-b"));
    let assign = |w: &cloudai_core::model::WorkerId| TaskEvent::Assign {
        worker: w.clone(),
        gpus: vec![],
    };
    let requeue = TaskEvent::Requeue {
        worker: a.clone(),
        attempt: 1,
        reason: "timeout".into(),
    };
    let ended = TaskEvent::StopConfirmed {
        worker: a.clone(),
        attempt: 1,
    };
    for (event, at, what) in [
        (assign(&a), 10, "assign a"),
        (requeue, 20, "requeue"),
        (ended, 25, "stop confirmed"),
        (assign(&b), 30, "assign b"),
    ] {
        let outcome = cloudai_core::apply::apply_event(
            &store,
            &task_id("t"),
            &event,
            Timestamp::from_millis(at),
        )
        .await
        .expect(what);
        assert!(
            matches!(outcome, cloudai_core::apply::Applied::Changed { .. }),
            "{what}: {outcome:?}"
        );
    }
    let history = store
        .assignment_history(&task_id("t"))
        .await
        .expect("history");
    let seen: Vec<_> = history
        .iter()
        .map(|e| (e.worker.to_string(), e.attempt, e.at.as_millis()))
        .collect();
    assert_eq!(seen, [("w-a".into(), 1, 10), ("w-b".into(), 2, 30)]);

    let raw = raw_collection(&uri, store.database_name(), TASKS).await;
    let doc = raw
        .find_one(doc! { "_id": "t" })
        .await
        .expect("find")
        .expect("stored");
    assert_eq!(doc.get_str("status").ok(), Some("running"));
    assert_eq!(doc.get_str("worker").ok(), Some("w-b"));
    assert!(
        !doc.contains_key("reason"),
        "Assign clears the reason: {doc}"
    );
    for field in ["attempt", "created_at", "updated_at"] {
        assert!(
            is_integer(doc.get(field)),
            "{field} must be an integer: {doc}"
        );
    }
    made.drop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_new_connection() {
    let uri = test_uri();
    let made = Made::default();
    let first = made.fresh(&uri).await;
    first
        .insert_task(pending_task("kept", 1))
        .await
        .expect("insert");
    let w = WorkerRecord::new(
        worker_id("w"),
        Some("127.0.0.1:9".into()),
        Resources::new(2.0, 2.0, 0.0, 0).expect("valid"),
        Timestamp::from_millis(1),
    );
    first.upsert_worker(w.clone()).await.expect("upsert");
    // Connecting again (a restarted master) re-creates the indexes
    // idempotently and sees everything.
    let second = connect(&uri, first.database_name()).await;
    assert_eq!(
        second.get_task(&task_id("kept")).await.expect("get"),
        Some(pending_task("kept", 1))
    );
    assert_eq!(second.list_workers().await.expect("list"), vec![w]);
    let raw = raw_collection(&uri, first.database_name(), WORKERS).await;
    let doc = raw
        .find_one(doc! { "_id": "w" })
        .await
        .expect("find")
        .expect("stored");
    let capacity = doc.get_document("capacity").expect("capacity");
    assert!(is_integer(capacity.get("cpu_millis")), "{doc}");
    let cpu = match capacity.get("cpu_millis") {
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Int32(v)) => i64::from(*v),
        other => panic!("cpu_millis: {other:?}"),
    };
    assert_eq!(cpu, 2000);
    made.drop_all().await;
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_quickly() {
    let started = Instant::now();
    let err = MongoStore::connect(MongoConfig::new(
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500",
        "cloudai",
    ))
    .await
    .expect_err("nothing listens on port 1");
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains("127.0.0.1:1")),
        "expected Unavailable naming the host, got {err:?}"
    );
    assert!(err.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    // The config's own bound applies when the URI sets none.
    let mut config = MongoConfig::new("mongodb://127.0.0.1:1", "cloudai");
    config.server_selection_timeout = Duration::from_millis(300);
    let started = Instant::now();
    assert!(matches!(
        MongoStore::connect(config).await,
        Err(Error::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn malformed_uri_and_database_names_are_invalid_input() {
    for (uri, db) in [
        ("http://127.0.0.1:27017", "cloudai"),
        ("mongodb://127.0.0.1:1", "bad.name"),
        ("mongodb://127.0.0.1:1", ""),
    ] {
        let err = MongoStore::connect(MongoConfig::new(uri, db))
            .await
            .expect_err("refused");
        assert!(
            matches!(err, Error::InvalidInput(_)),
            "{uri} {db:?}: {err:?}"
        );
    }
}

#[tokio::test]
async fn passwords_stay_out_of_error_messages() {
    let err = MongoStore::connect(MongoConfig::new(
        "mongodb://user:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=200",
        "cloudai",
    ))
    .await
    .expect_err("nothing listens on port 1");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// A private nx-27017 started by the project's script, on a port we choose,
/// so that the test can stop and restart it.
struct PrivateServer {
    pid_file: std::path::PathBuf,
}

impl PrivateServer {
    fn script() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mongo-test-server.sh")
    }

    fn start(port: Option<u16>, data_dir: &std::path::Path, pid_file: &std::path::Path) -> String {
        let mut cmd = Command::new(Self::script());
        cmd.arg("--data-dir")
            .arg(data_dir)
            .arg("--pid-file")
            .arg(pid_file);
        if let Some(p) = port {
            cmd.arg("--port").arg(p.to_string());
        }
        let out = cmd.output().expect("run scripts/mongo-test-server.sh");
        assert!(
            out.status.success(),
            "mongo-test-server.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    fn stop(&self) {
        let _ = Command::new(Self::script())
            .arg("--stop")
            .arg(&self.pid_file)
            .status();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_unavailable_while_the_server_is_down_and_recover_after() {
    // Needs no CLOUDAI_TEST_MONGO_URI: it runs its own nx-27017.
    let dir = std::env::temp_dir().join(format!("cloudai-mongo-outage-{}", fresh_db()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let data = dir.join("data");
    let server = PrivateServer {
        pid_file: dir.join("server.pid"),
    };
    let uri = PrivateServer::start(None, &data, &server.pid_file);
    let port: u16 = uri.rsplit(':').next().unwrap().parse().expect("port");
    let mut config = MongoConfig::new(uri.clone(), "outage");
    config.server_selection_timeout = Duration::from_millis(800);
    let store = MongoStore::connect(config).await.expect("connect");
    let w = WorkerRecord::new(
        worker_id("w"),
        Some("127.0.0.1:9".into()),
        Resources::ZERO,
        Timestamp::from_millis(1),
    );
    store.upsert_worker(w.clone()).await.expect("upsert");

    server.stop();
    let started = Instant::now();
    let err = store.list_workers().await.expect_err("server is down");
    assert!(
        matches!(err, Error::Unavailable(_)),
        "expected Unavailable, got {err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let beat = Heartbeat {
        worker: worker_id("w"),
        at: Timestamp::from_millis(5),
        telemetry: Telemetry::default(),
    };
    assert!(matches!(
        store.record_heartbeats(std::slice::from_ref(&beat)).await,
        Err(Error::Unavailable(_))
    ));

    // Same port, same data: the same store object recovers by itself.
    PrivateServer::start(Some(port), &data, &server.pid_file);
    let deadline = Instant::now() + Duration::from_secs(20);
    let workers = loop {
        match store.list_workers().await {
            Ok(ws) => break ws,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("store did not recover: {e:?}"),
        }
    };
    assert_eq!(workers, vec![w]);
    assert!(store
        .record_heartbeats(&[beat])
        .await
        .expect("beat")
        .is_empty());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Removes the `fence` field from document `id` of `collection`, as a
/// document written before masters had terms lacks it.
async fn unset_fence(raw: &mongodb::Collection<Document>, id: &str) {
    let r = raw
        .update_one(doc! { "_id": id }, doc! { "$unset": { "fence": "" } })
        .await
        .expect("unset fence");
    assert_eq!(r.matched_count, 1, "{id} must exist");
    let d = raw
        .find_one(doc! { "_id": id })
        .await
        .expect("find")
        .expect("stored");
    assert!(!d.contains_key("fence"), "the fence must be gone: {d}");
}

/// The fence of raw document `d` (`None`: it has none).
fn fence_of(d: &Document) -> Option<i64> {
    match d.get("fence") {
        Some(Bson::Int64(f)) => Some(*f),
        Some(Bson::Int32(f)) => Some(i64::from(*f)),
        None => None,
        Some(other) => panic!("fence must be an integer, got {other:?} in {d}"),
    }
}

async fn raw_fence(raw: &mongodb::Collection<Document>, id: &str) -> Option<i64> {
    let d = raw
        .find_one(doc! { "_id": id })
        .await
        .expect("find")
        .expect("stored");
    fence_of(&d)
}

/// Documents written before masters had terms have no `fence`: every
/// write lands on them (and fences them), `adopt_pending` leaves them
/// alone, and `raise_fence` covers them, after which a lower term is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_without_a_fence_take_writes_until_a_raise() {
    let uri = test_uri();
    let made = Made::default();
    let store = made.fresh(&uri).await;
    let db = store.database_name().to_owned();
    let tasks = raw_collection(&uri, &db, TASKS).await;
    let workers = raw_collection(&uri, &db, WORKERS).await;
    store
        .insert_task(pending_task("t", 1))
        .await
        .expect("insert");
    store
        .insert_task(pending_task("old-pending", 2))
        .await
        .expect("insert");
    let w = WorkerRecord::new(
        worker_id("w"),
        Some("127.0.0.1:9".into()),
        Resources::new(2.0, 2.0, 0.0, 0).expect("valid"),
        Timestamp::from_millis(1),
    );
    store.upsert_worker(w.clone()).await.expect("upsert");
    assert_eq!(
        raw_fence(&tasks, "t").await,
        Some(0),
        "an insert writes its term"
    );
    assert_eq!(
        raw_fence(&workers, "w").await,
        Some(0),
        "an insert writes its term"
    );

    // Term 0 and term 1 writes land on documents without a fence.
    for (term, at) in [(0, 10), (1, 20)] {
        unset_fence(&tasks, "t").await;
        unset_fence(&workers, "w").await;
        let reason = format!("term {term}");
        let change = cloudai_core::store::StatusChange {
            allowed_from: vec![TaskStatus::Pending],
            expected_worker: cloudai_core::store::WorkerGuard::Any,
            expected_attempt: None,
            to: TaskStatus::Pending,
            assignment: cloudai_core::store::Assignment::Keep,
            reason: Some(reason.clone()),
            not_before: None,
            push: None,
            at: Timestamp::from_millis(at),
        };
        let outcome = tasks_at(&store, term)
            .update_status(&task_id("t"), &change)
            .await
            .unwrap_or_else(|e| panic!("term {term} on a task without a fence: {e:?}"));
        assert!(
            matches!(outcome, cloudai_core::store::CasOutcome::Applied { .. }),
            "term {term} on a task without a fence must apply: {outcome:?}"
        );
        let t = store
            .get_task(&task_id("t"))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(t.reason.as_deref(), Some(reason.as_str()));
        assert_eq!(
            raw_fence(&tasks, "t").await,
            Some(term as i64),
            "a write sets the fence to its term"
        );
        let drain = Drain {
            since: Timestamp::from_millis(at),
            deadline: None,
        };
        let workers_t = workers_at(&store, term);
        workers_t
            .set_drain(&w.id, Some(drain))
            .await
            .unwrap_or_else(|e| panic!("term {term} drain on a worker without a fence: {e:?}"));
        assert_eq!(raw_fence(&workers, "w").await, Some(term as i64));
        unset_fence(&workers, "w").await;
        let beat = Heartbeat {
            worker: w.id.clone(),
            at: Timestamp::from_millis(at),
            telemetry: Telemetry::default(),
        };
        assert!(workers_t
            .record_heartbeats(&[beat])
            .await
            .unwrap_or_else(|e| panic!("term {term} beat on a worker without a fence: {e:?}"))
            .is_empty());
        unset_fence(&workers, "w").await;
        let stored = workers_t
            .upsert_worker(w.clone())
            .await
            .unwrap_or_else(|e| panic!("term {term} upsert on a worker without a fence: {e:?}"));
        assert_eq!(stored.drain, Some(drain));
        assert_eq!(stored.last_heartbeat, Some(Timestamp::from_millis(at)));
        assert_eq!(raw_fence(&workers, "w").await, Some(term as i64));
    }

    // adopt_pending takes only tasks with a fence below its term.
    unset_fence(&tasks, "old-pending").await;
    let adopted: Vec<String> = store
        .adopt_pending(Term::new(5), 10)
        .await
        .expect("adopt")
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    assert_eq!(
        adopted,
        vec!["t".to_owned()],
        "adopt_pending must skip a task without a fence"
    );
    assert_eq!(raw_fence(&tasks, "old-pending").await, None);

    // raise_fence covers documents without a fence.
    unset_fence(&tasks, "t").await;
    unset_fence(&workers, "w").await;
    assert_eq!(
        store.raise_fence(Term::new(2)).await.expect("raise"),
        3,
        "raise_fence covers the two pending tasks and the worker"
    );
    for (raw, id) in [(&tasks, "t"), (&tasks, "old-pending"), (&workers, "w")] {
        assert_eq!(
            raw_fence(raw, id).await,
            Some(2),
            "raise_fence(2) must fence {id}, which had no fence"
        );
    }
    let before = store.get_task(&task_id("t")).await.expect("get");
    let t1 = tasks_at(&store, 1);
    let cancel = cloudai_core::store::StatusChange {
        allowed_from: vec![TaskStatus::Pending],
        expected_worker: cloudai_core::store::WorkerGuard::Any,
        expected_attempt: None,
        to: TaskStatus::Cancelled,
        assignment: cloudai_core::store::Assignment::Keep,
        reason: None,
        not_before: None,
        push: None,
        at: Timestamp::from_millis(90),
    };
    expect_fenced(
        t1.update_status(&task_id("t"), &cancel).await,
        1,
        2,
        "a term-1 write on a task raised from no fence",
    );
    expect_fenced(
        t1.update_status(&task_id("old-pending"), &cancel).await,
        1,
        2,
        "a term-1 write on a task raised from no fence",
    );
    assert_eq!(store.get_task(&task_id("t")).await.expect("get"), before);
    let before = store.get_worker(&w.id).await.expect("get");
    let w1 = workers_at(&store, 1);
    expect_fenced(
        w1.set_drain(&w.id, None).await,
        1,
        2,
        "a term-1 drain on a worker raised from no fence",
    );
    expect_fenced(
        w1.upsert_worker(w.clone()).await,
        1,
        2,
        "a term-1 upsert on a worker raised from no fence",
    );
    expect_fenced(
        w1.remove_worker(&w.id).await,
        1,
        2,
        "a term-1 removal of a worker raised from no fence",
    );
    assert_eq!(store.get_worker(&w.id).await.expect("get"), before);
    made.drop_all().await;
}
