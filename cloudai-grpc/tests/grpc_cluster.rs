//! The service-level scenarios over real gRPC on 127.0.0.1 (ports chosen by
//! the OS): a real master on the memory store and real workers running
//! local processes, talking through the tonic clients with token auth.

use std::sync::Arc;
use std::time::Duration;

use cloudai_core::clock::Clock;
use cloudai_core::master::{CancelOutcome, Leadership, Master, MasterConfig, SubmitOptions};
use cloudai_core::memory::MemoryStore;
use cloudai_core::model::{
    InstanceId, RequestId, Resources, TaskId, TaskSpec, TaskStatus, Term, WorkerId,
};
use cloudai_core::process::ProcessRuntime;
use cloudai_core::store::TaskFilter;
use cloudai_core::transport::{MasterInfo, MasterToWorker, RunningTask, WorkerEndpoint};
use cloudai_core::worker::{Worker, WorkerConfig, SHUTDOWN_MESSAGE};
use cloudai_core::Error;
use cloudai_grpc::proto::{self, master_client};
use cloudai_grpc::{serve_master, serve_worker, MasterClient, Security, Token, WorkerClients};
use tokio::net::TcpListener;
use tokio::sync::watch;

const TOKEN: &str = "test-token-123";

fn secure() -> Security {
    Security {
        token: Some(Token::new(TOKEN).unwrap()),
        tls: None,
    }
}

struct Cluster {
    master: Master,
    address: String,
    stop: watch::Sender<bool>,
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

async fn until_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn start_master() -> Cluster {
    let (l, address) = listener().await;
    let store = Arc::new(MemoryStore::new());
    let config = MasterConfig {
        advertise_address: address.clone(),
        ..MasterConfig::default()
    };
    let transport = Arc::new(WorkerClients::new(config.id.clone(), secure()));
    let master = Master::start(config, store.clone(), store, transport, Clock::system())
        .await
        .unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve_master(master.clone(), l, secure(), until_stopped(rx)));
    Cluster {
        master,
        address,
        stop,
    }
}

struct RunningWorker {
    worker: Worker,
    address: String,
    stop: watch::Sender<bool>,
}

async fn start_worker(c: &Cluster, id: &str, cpu: f64) -> RunningWorker {
    start_worker_with(c, id, cpu, |_| {}).await
}

async fn start_worker_with(
    c: &Cluster,
    id: &str,
    cpu: f64,
    adjust: impl FnOnce(&mut WorkerConfig),
) -> RunningWorker {
    let (l, address) = listener().await;
    let capacity = Resources::new(cpu, 4.0, 10.0, 0).unwrap();
    let mut config = WorkerConfig::new(WorkerId::new(id).unwrap(), address.clone(), capacity);
    adjust(&mut config);
    let link = Arc::new(MasterClient::new(&c.address, secure()).unwrap());
    let worker = Worker::new(
        config,
        Arc::new(ProcessRuntime::new()),
        link,
        Clock::system(),
    );
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve_worker(
        worker.clone(),
        l,
        secure(),
        until_stopped(rx.clone()),
    ));
    let w = worker.clone();
    tokio::spawn(async move { w.run(rx).await });
    let rw = RunningWorker {
        worker,
        address,
        stop,
    };
    until(Duration::from_secs(10), "worker registered", || async {
        c.master
            .workers()
            .iter()
            .any(|w| w.id.as_str() == id && w.registered)
    })
    .await;
    rw
}

async fn until<F, Fut>(limit: Duration, what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sh(script: &str) -> TaskSpec {
    TaskSpec::new(
        "busybox",
        vec!["sh".into(), "-c".into(), script.into()],
        Resources::new(1.0, 0.5, 0.0, 0).unwrap(),
    )
}

fn client(c: &Cluster) -> MasterClient {
    MasterClient::new(&c.address, secure()).unwrap()
}

async fn wait_status(cl: &MasterClient, t: &TaskId, want: TaskStatus) {
    until(
        Duration::from_secs(15),
        &format!("{t} reaches {want}"),
        || async { cl.task(t).await.unwrap().task.status == want },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_to_completion_with_its_logs() {
    let c = start_master().await;
    let _w = start_worker(&c, "w1", 2.0).await;
    let cl = client(&c);
    let t = cl
        .submit(sh("echo hello from $0; echo oops >&2"))
        .await
        .unwrap();
    wait_status(&cl, &t, TaskStatus::Completed).await;
    let view = cl.task(&t).await.unwrap();
    let result = view.result.expect("result stored");
    assert_eq!(result.exit_code, Some(0));
    assert!(
        result.logs.contains("hello from sh") && result.logs.contains("oops"),
        "{:?}",
        result.logs
    );
    let workers = cl.workers().await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].health, cloudai_core::liveness::Health::Active);
    let _ = c.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_process_and_frees_resources_at_once() {
    let c = start_master().await;
    let w = start_worker(&c, "w1", 2.0).await;
    let cl = client(&c);
    let t = cl.submit(sh("echo $$; exec sleep 300")).await.unwrap();
    wait_status(&cl, &t, TaskStatus::Running).await;
    until(Duration::from_secs(5), "process started", || async {
        !w.worker.running().is_empty()
    })
    .await;
    let out = cl.cancel(&t, false, true).await.unwrap();
    assert_eq!(
        out,
        CancelOutcome::Stopped {
            worker: WorkerId::new("w1").unwrap()
        }
    );
    assert_eq!(
        cl.task(&t).await.unwrap().task.status,
        TaskStatus::Cancelled
    );
    assert!(
        c.master.workers()[0].allocated.is_zero(),
        "released at once"
    );
    assert!(w.worker.running().is_empty(), "stopped when cancel returns");
    let err = cl.cancel(&t, false, false).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict(m) if m.contains("already cancelled")),
        "{err:?}"
    );
    let err = cl
        .cancel(&TaskId::new("task-999999").unwrap(), false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NotFound { kind: "task", .. }),
        "{err:?}"
    );
    let _ = c.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_shutdown_reports_three_running_tasks_failed_within_five_seconds() {
    let c = start_master().await;
    let w = start_worker(&c, "w1", 4.0).await;
    let cl = client(&c);
    let mut ids = Vec::new();
    for _ in 0..3 {
        // Failed at the shutdown, as before requeues (`--no-requeue`).
        let mut spec = sh("sleep 300");
        spec.policy.requeue = false;
        ids.push(cl.submit(spec).await.unwrap());
    }
    until(Duration::from_secs(10), "three runs", || async {
        w.worker.running().len() == 3
    })
    .await;
    let begin = std::time::Instant::now();
    let summary = w.worker.shutdown().await;
    assert!(
        begin.elapsed() < Duration::from_secs(5),
        "{:?}",
        begin.elapsed()
    );
    assert_eq!((summary.reported, summary.stopped), (3, 3));
    for t in &ids {
        let v = cl.task(t).await.unwrap();
        assert_eq!(v.task.status, TaskStatus::Failed);
        assert_eq!(v.result.unwrap().message.as_deref(), Some(SHUTDOWN_MESSAGE));
    }
    assert!(c.master.workers()[0].allocated.is_zero());
    let _ = w.stop.send(true);
    let _ = c.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_token_is_rejected_and_changes_nothing() {
    let c = start_master().await;
    for security in [
        Security::default(),
        Security {
            token: Some(Token::new("wrong").unwrap()),
            tls: None,
        },
    ] {
        let bad = MasterClient::new(&c.address, security).unwrap();
        let err = bad.submit(sh("true")).await.unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
        let err = bad.tasks(&TaskFilter::default()).await.unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
    }
    assert!(
        client(&c)
            .tasks(&TaskFilter::default())
            .await
            .unwrap()
            .is_empty(),
        "nothing was submitted"
    );
    let _ = c.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_invalid_argument_and_no_state_change() {
    let c = start_master().await;
    let cl = client(&c);
    let mut empty_image = sh("true");
    empty_image.image = String::new();
    let mut huge_command = sh("true");
    huge_command.command = vec!["x".repeat(1 << 20)];
    let mut huge_cpu = sh("true");
    huge_cpu.resources.cpu_millis = u64::MAX;
    let mut bad_env = sh("true");
    bad_env.env.insert("A=B".into(), "x".into());
    for spec in [empty_image, huge_command, huge_cpu, bad_env] {
        let err = cl.submit(spec).await.unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
    let err = cl.task(&TaskId::new("nope").unwrap()).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    let err = cl
        .pre_register(&WorkerId::new("w9").unwrap(), "bad address")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(cl.tasks(&TaskFilter::default()).await.unwrap().is_empty());
    assert!(cl.workers().await.unwrap().is_empty());
    let _ = c.stop.send(true);
}

/// Workers obey the highest term they have seen: a call of a lower one
/// (a deposed master's) is refused, whoever sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_a_lower_terms_assign_cancel_and_master_register() {
    let c = start_master().await;
    let w = start_worker(&c, "w1", 2.0).await;
    let to = WorkerEndpoint {
        id: WorkerId::new("w1").unwrap(),
        instance: None,
        address: w.address.clone(),
    };
    let run = RunningTask {
        task: TaskId::new("t-x").unwrap(),
        attempt: 1,
    };
    // A term-3 caller is obeyed (a cancel of a run it does not have is
    // harmless) and raises the worker's term.
    let later = WorkerClients::new("master", secure()).fenced(Term::new(3));
    later
        .cancel(&to, &run, Duration::ZERO)
        .await
        .expect("a higher term is obeyed");
    assert_eq!(w.worker.term(), Term::new(3));
    let older = WorkerClients::new("master", secure()).fenced(Term::new(2));
    let err = older.assign(&to, &run, &sh("true"), &[]).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
    let err = older.cancel(&to, &run, Duration::ZERO).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
    let info = MasterInfo {
        id: "master".into(),
        address: "127.0.0.1:9".into(),
        term: Term::new(2),
    };
    let err = older.master_register(&to, &info).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
    assert!(w.worker.running().is_empty());
    assert_eq!(w.worker.term(), Term::new(3));
    let _ = c.stop.send(true);
}

/// Two masters under a lease on one store, each serving its own port.
struct Pair {
    leaderships: Vec<Leadership>,
    addresses: Vec<String>,
    stops: Vec<watch::Sender<bool>>,
}

impl Pair {
    async fn start() -> Pair {
        let store = Arc::new(MemoryStore::new());
        let mut pair = Pair {
            leaderships: Vec::new(),
            addresses: Vec::new(),
            stops: Vec::new(),
        };
        for i in 0..2 {
            let (l, address) = listener().await;
            let config = MasterConfig {
                id: format!("m{i}"),
                advertise_address: address.clone(),
                lease_ttl: Duration::from_secs(1),
                ..MasterConfig::default()
            };
            let transport = Arc::new(WorkerClients::new(config.id.clone(), secure()));
            let leadership = Leadership::start(
                config,
                store.clone(),
                store.clone(),
                store.clone(),
                transport,
                Clock::system(),
                format!("run{i}"),
            )
            .unwrap();
            let (stop, rx) = watch::channel(false);
            tokio::spawn(serve_master(
                leadership.clone(),
                l,
                secure(),
                until_stopped(rx),
            ));
            pair.leaderships.push(leadership);
            pair.addresses.push(address);
            pair.stops.push(stop);
        }
        pair
    }

    /// The index of the master acting now, once one does.
    async fn leader(&self) -> usize {
        let found = std::cell::Cell::new(None);
        until(Duration::from_secs(10), "a master leads", || {
            let i = self.leaderships.iter().position(|l| l.acting().is_ok());
            found.set(i);
            std::future::ready(i.is_some())
        })
        .await;
        found.get().unwrap()
    }
}

/// A follower answers every master RPC but health `UNAVAILABLE`, naming
/// the leader's address; a client given only the follower follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_redirects_each_rpc_to_the_leader() {
    let pair = Pair::start().await;
    let leader = pair.leader().await;
    let follower = 1 - leader;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", pair.addresses[follower]))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut raw = master_client::MasterClient::new(channel);
    fn signed<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
        r
    }
    let empty = || proto::Empty {};
    let answers = vec![
        (
            "submit",
            raw.submit(signed(proto::SubmitRequest::default()))
                .await
                .err(),
        ),
        ("count_tasks", raw.count_tasks(signed(empty())).await.err()),
        (
            "list_tasks",
            raw.list_tasks(signed(proto::ListTasksRequest::default()))
                .await
                .err(),
        ),
        (
            "get_task",
            raw.get_task(signed(proto::TaskRef::default())).await.err(),
        ),
        (
            "set_priority",
            raw.set_priority(signed(proto::SetPriorityRequest::default()))
                .await
                .err(),
        ),
        (
            "cancel",
            raw.cancel(signed(proto::CancelRequest::default()))
                .await
                .err(),
        ),
        (
            "list_workers",
            raw.list_workers(signed(empty())).await.err(),
        ),
        (
            "register",
            raw.register(signed(proto::RegisterRequest::default()))
                .await
                .err(),
        ),
        (
            "report",
            raw.report(signed(proto::TaskResult::default())).await.err(),
        ),
        (
            "drain",
            raw.drain(signed(proto::DrainRequest::default()))
                .await
                .err(),
        ),
        ("reconcile", raw.reconcile(signed(empty())).await.err()),
        (
            "watch_events",
            raw.watch_events(signed(proto::WatchEventsRequest::default()))
                .await
                .err(),
        ),
        (
            "follow_output",
            raw.follow_output(signed(proto::TaskOutputRequest::default()))
                .await
                .err(),
        ),
    ];
    for (rpc, answer) in answers {
        let status = answer.unwrap_or_else(|| panic!("{rpc}: a follower answered"));
        assert_eq!(status.code(), tonic::Code::Unavailable, "{rpc}: {status:?}");
        let leader_at = status
            .metadata()
            .get("x-cloudai-leader")
            .and_then(|v| v.to_str().ok());
        assert_eq!(leader_at, Some(pair.addresses[leader].as_str()), "{rpc}");
    }
    let cl = MasterClient::new(&pair.addresses[follower], secure()).unwrap();
    cl.task_counts().await.expect("the redirect is followed");
    assert_eq!(cl.following(), pair.addresses[leader]);
    for s in pair.stops {
        let _ = s.send(true);
    }
}

/// A worker registered with the leader moves to the next one when it
/// crashes: the new leader's higher term pulls it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_terms_master_register_moves_the_worker() {
    let pair = Pair::start().await;
    let first = pair.leader().await;
    let (l, address) = listener().await;
    let capacity = Resources::new(2.0, 4.0, 10.0, 0).unwrap();
    let config = WorkerConfig::new(WorkerId::new("w1").unwrap(), address, capacity);
    let link = Arc::new(MasterClient::new(&pair.addresses.join(","), secure()).unwrap());
    let worker = Worker::new(
        config,
        Arc::new(ProcessRuntime::new()),
        link.clone(),
        Clock::system(),
    );
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve_worker(
        worker.clone(),
        l,
        secure(),
        until_stopped(rx.clone()),
    ));
    let w = worker.clone();
    tokio::spawn(async move { w.run(rx).await });
    until(
        Duration::from_secs(10),
        "registered with the leader",
        || std::future::ready(worker.in_session()),
    )
    .await;
    let term = worker.term();
    pair.leaderships[first].abort();
    let _ = pair.stops[first].send(true);
    let second = 1 - first;
    until(
        Duration::from_secs(20),
        "registered with the new leader",
        || {
            let registered = pair.leaderships[second].acting().is_ok_and(|m| {
                m.workers()
                    .iter()
                    .any(|v| v.id.as_str() == "w1" && v.registered)
            });
            std::future::ready(registered && worker.in_session())
        },
    )
    .await;
    assert!(worker.term() > term, "{} after {term}", worker.term());
    assert_eq!(link.following(), pair.addresses[second]);
    let _ = stop.send(true);
    let _ = pair.stops[second].send(true);
}

/// A submit retried under its request id returns the task the first one
/// made; the same id with another spec is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_retried_with_its_request_id_returns_the_same_task() {
    let c = start_master().await;
    let cl = client(&c);
    let options = SubmitOptions {
        request: Some(RequestId::new("req-1").unwrap()),
        ..SubmitOptions::default()
    };
    let first = cl.submit_with(sh("true"), options.clone()).await.unwrap();
    let again = cl.submit_with(sh("true"), options.clone()).await.unwrap();
    assert_eq!(first, again);
    let err = cl.submit_with(sh("false"), options).await.unwrap_err();
    assert!(matches!(err, Error::Conflict(_)), "{err:?}");
    assert_eq!(cl.tasks(&TaskFilter::default()).await.unwrap().len(), 1);
    let _ = c.stop.send(true);
}

/// Every call names the worker it is for: one meant for another worker,
/// or for another instance of this one, is refused (UNAVAILABLE: the
/// worker the caller wants is not here), and the probe says who is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_calls_meant_for_another() {
    let c = start_master().await;
    let w = start_worker(&c, "w1", 2.0).await;
    let me = w.worker.identity();
    let link = WorkerClients::new("master", secure());
    let run = RunningTask {
        task: TaskId::new("t-x").unwrap(),
        attempt: 1,
    };
    let at = |id: &str, instance: Option<&str>| WorkerEndpoint {
        id: WorkerId::new(id).unwrap(),
        instance: instance.map(|i| InstanceId::new(i).unwrap()),
        address: w.address.clone(),
    };
    for to in [at("w2", None), at("w1", Some("another-instance"))] {
        let err = link.assign(&to, &run, &sh("true"), &[]).await.unwrap_err();
        assert!(
            matches!(&err, Error::Unavailable(m) if m.contains("this address serves worker w1")),
            "{to:?}: {err:?}"
        );
    }
    assert!(w.worker.running().is_empty(), "nothing started");
    let answer = link.identify(&at("w2", None)).await.expect("identify");
    assert_eq!(answer, me);
    let _ = c.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_with_the_worker_unreachable_succeeds_with_stop_pending() {
    let c = start_master().await;
    let w = start_worker(&c, "w1", 2.0).await;
    let cl = client(&c);
    let t = cl.submit(sh("sleep 300")).await.unwrap();
    until(Duration::from_secs(10), "running", || async {
        !w.worker.running().is_empty()
    })
    .await;
    let _ = w.stop.send(true);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = cl.cancel(&t, false, false).await.unwrap();
    assert!(matches!(out, CancelOutcome::StopPending { .. }), "{out:?}");
    assert_eq!(
        cl.task(&t).await.unwrap().task.status,
        TaskStatus::Cancelled
    );
    assert_eq!(
        c.master.workers()[0].allocated.cpu_millis,
        1000,
        "held while the stop is owed: the run may still go"
    );
    w.worker.shutdown().await;
    let _ = c.stop.send(true);
}

/// Everything a follower of task `t` from `from` receives, as (attempt,
/// offset, stream, text).
async fn output_of(
    cl: &MasterClient,
    t: &TaskId,
    from: cloudai_core::output::OutputFrom,
    follow: bool,
) -> Vec<(u32, u64, cloudai_core::output::OutputStream, String)> {
    let mut f = cl.follow_output(t, from, follow).await.unwrap();
    let mut got = Vec::new();
    while let Some(o) = f.recv().await {
        let o = o.unwrap();
        let text = String::from_utf8(o.chunk.data.clone()).unwrap();
        got.push((o.attempt, o.chunk.offset, o.chunk.stream, text));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_by_offset_with_its_streams_until_the_task_ends() {
    use cloudai_core::output::{
        OutputFrom,
        OutputStream::{Stderr, Stdout},
    };

    let c = start_master().await;
    let _w = start_worker(&c, "w1", 2.0).await;
    let cl = client(&c);
    let t = cl
        .submit(sh(
            "echo first; sleep 1; echo oops >&2; sleep 0.2; echo second",
        ))
        .await
        .unwrap();
    let got = output_of(&cl, &t, OutputFrom::Offset(0), true).await;
    assert_eq!(
        cl.task(&t).await.unwrap().task.status,
        TaskStatus::Completed,
        "the follower ends once the task ended"
    );
    let joined: Vec<_> = got
        .iter()
        .map(|(a, o, s, t)| (*a, *o, *s, t.as_str()))
        .collect();
    assert_eq!(
        joined,
        [
            (1, 0, Stdout, "first\n"),
            (1, 6, Stderr, "oops\n"),
            (1, 11, Stdout, "second\n")
        ]
    );
    // After the end: from an offset, and the last line, from the worker.
    let later = output_of(&cl, &t, OutputFrom::Offset(8), true).await;
    assert_eq!(later[0].1, 8);
    assert_eq!(
        later.iter().map(|x| x.3.as_str()).collect::<String>(),
        "ps\nsecond\n"
    );
    let last = output_of(&cl, &t, OutputFrom::LastLines(1), false).await;
    assert_eq!(
        last.iter().map(|x| x.3.as_str()).collect::<String>(),
        "second\n"
    );
    let _ = c.stop.send(true);
}

/// Once the worker no longer keeps an ended run's output, a follower gets
/// the end stored with the result, at its offsets, from where it asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_worker_lets_go_the_stored_end_is_read_from_its_offset() {
    use cloudai_core::output::{OutputFrom, OutputStream::Stdout};

    let c = start_master().await;
    let _w = start_worker_with(&c, "w1", 2.0, |cfg| {
        cfg.output_linger = Duration::ZERO;
        cfg.result_log_limit = 10;
    })
    .await;
    let cl = client(&c);
    let t = cl
        .submit(sh("echo 0123456789; echo abcdefghij"))
        .await
        .unwrap();
    wait_status(&cl, &t, TaskStatus::Completed).await;
    let stored = cl.task(&t).await.unwrap().result.unwrap();
    assert_eq!(
        (stored.logs.as_str(), stored.logs_offset),
        ("bcdefghij\n", 12)
    );
    let got = output_of(&cl, &t, OutputFrom::Offset(0), true).await;
    assert_eq!(
        got,
        [(1, 12, Stdout, "bcdefghij\n".to_string())],
        "from the first byte kept"
    );
    let got = output_of(&cl, &t, OutputFrom::Offset(15), true).await;
    assert_eq!(got, [(1, 15, Stdout, "efghij\n".to_string())]);
    let got = output_of(&cl, &t, OutputFrom::LastLines(5), false).await;
    assert_eq!(got[0].1, 12);
    let _ = c.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_report_answers_failed_precondition_with_the_reason() {
    use cloudai_core::model::{TaskResult, Timestamp};
    use cloudai_core::transport::WorkerToMaster;

    let c = start_master().await;
    let _w = start_worker(&c, "w1", 2.0).await;
    let cl = client(&c);
    let t = cl.submit(sh("sleep 30")).await.unwrap();
    wait_status(&cl, &t, TaskStatus::Running).await;
    let report = |task: &TaskId, worker: &str, attempt: u32| TaskResult {
        task_id: task.clone(),
        worker_id: WorkerId::new(worker).unwrap(),
        attempt,
        status: TaskStatus::Failed,
        cause: cloudai_core::model::EndCause::Exited,
        exit_code: Some(1),
        logs: "forged".into(),
        logs_offset: 0,
        signal: None,
        message: None,
        started_at: None,
        finished_at: Timestamp::from_millis(1),
        usage: None,
    };
    let unknown = TaskId::new("task-0-0").unwrap();
    for (r, reason) in [
        (report(&unknown, "w1", 1), "unknown task"),
        (report(&t, "w2", 1), "assigned to w1, not w2"),
        (report(&t, "w1", 0), "attempt 0, the task is on attempt 1"),
    ] {
        // Only FAILED_PRECONDITION comes back as `Conflict`.
        match cl.report(&r).await {
            Err(Error::Conflict(msg)) => assert!(msg.contains(reason), "{msg}"),
            other => panic!("report {r:?} answered {other:?}"),
        }
    }
    let view = cl.task(&t).await.unwrap();
    assert_eq!(view.task.status, TaskStatus::Running, "nothing changed");
    assert!(view.result.is_none());
    cl.cancel(&t, true, false).await.unwrap();
    let _ = c.stop.send(true);
}

/// More tasks than fit one 16 MiB message (150 tasks of a 120 KiB command,
/// about 18 MB) page through completely: every task once, newest first,
/// each page under the message limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_larger_than_a_message_pages_through_completely() {
    let c = start_master().await;
    let cl = client(&c);
    let big = "x".repeat(120 * 1024);
    let mut submitted = Vec::new();
    for i in 0..150 {
        let spec = TaskSpec::new(
            "busybox",
            vec!["echo".into(), format!("{i}"), big.clone()],
            Resources::new(1.0, 0.5, 0.0, 0).unwrap(),
        );
        submitted.push(cl.submit(spec).await.unwrap());
    }
    let (first, next) = cl.page(&TaskFilter::default(), None, 0).await.unwrap();
    assert!(
        first.len() < 150 && next.is_some(),
        "one page stops short of the message limit ({} tasks)",
        first.len()
    );
    let all = cl.tasks(&TaskFilter::default()).await.unwrap();
    let listed: std::collections::BTreeSet<TaskId> = all.iter().map(|t| t.id.clone()).collect();
    assert_eq!(listed.len(), all.len(), "each task once");
    assert_eq!(listed, submitted.iter().cloned().collect(), "every task");
    let keys: Vec<_> = all.iter().map(|t| (t.created_at, t.id.clone())).collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "newest first");
    assert!(all.iter().all(|t| t.spec.command[2].len() == big.len()));
    let bytes: usize = all.iter().map(|t| t.spec.command[2].len()).sum();
    assert!(
        bytes > 16 << 20,
        "the list is larger than one message: {bytes} bytes"
    );
    let counts = cl.task_counts().await.unwrap();
    assert_eq!((counts.pending, counts.total()), (150, 150));
    c.stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_orders_the_queue_and_update_moves_a_pending_task() {
    let c = start_master().await;
    let _w = start_worker(&c, "w1", 1.0).await;
    let cl = client(&c);
    let dir = std::env::temp_dir().join(format!("cloudai-priority-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (gate, order) = (dir.join("go"), dir.join("order"));
    let blocker = cl
        .submit(sh(&format!(
            "while [ ! -e {} ]; do sleep 0.05; done",
            gate.display()
        )))
        .await
        .unwrap();
    wait_status(&cl, &blocker, TaskStatus::Running).await;
    let mut ids = Vec::new();
    for (name, priority) in [("low", 0), ("mid", 1), ("high", 5)] {
        let mut spec = sh(&format!("echo {name} >> {}", order.display()));
        spec.priority = priority;
        ids.push(cl.submit(spec).await.unwrap());
    }
    let waiting = cl.task(&ids[1]).await.unwrap().waiting.unwrap_or_default();
    assert!(
        waiting.contains("behind 1 queued tasks of higher priority"),
        "{waiting}"
    );
    let moved = cl.set_priority(&ids[0], 9).await.unwrap();
    assert_eq!(moved.spec.priority, 9);
    let refused = cl.set_priority(&blocker, 9).await.unwrap_err();
    assert!(refused.to_string().contains("running"), "{refused}");
    std::fs::write(&gate, "").unwrap();
    for t in &ids {
        wait_status(&cl, t, TaskStatus::Completed).await;
    }
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "low\nhigh\nmid\n",
        "the raised task first, then by priority"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = c.stop.send(true);
}
