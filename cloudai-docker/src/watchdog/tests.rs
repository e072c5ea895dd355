//! The watchdog's lease logic, its line protocol, and its loop against a
//! stand-in for the daemon over a real Unix socket.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;

const MS: Duration = Duration::from_millis(1);

fn container(id: &str, grace_ms: Option<&str>) -> Guarded {
    let mut labels = HashMap::new();
    if let Some(g) = grace_ms {
        labels.insert(LABEL_GRACE.to_string(), g.to_string());
    }
    Guarded::from_labels(id.into(), &labels, Some(1_700_000_000))
}

// ---- the pure guard ----------------------------------------------------------

#[test]
fn the_lease_holds_until_its_deadline_and_a_renewal_moves_it() {
    let t0 = Instant::now();
    let mut g = Guard::new(t0, 1000 * MS, DEFAULT_IDLE_EXIT);
    assert!(!g.expired(t0 + 999 * MS));
    assert!(g.expired(t0 + 1000 * MS));
    g.renew(t0 + 500 * MS, 1000 * MS);
    assert!(!g.expired(t0 + 1499 * MS));
    assert!(g.expired(t0 + 1500 * MS));
    // What the worker says goes, shorter too.
    g.renew(t0 + 600 * MS, Duration::ZERO);
    assert!(g.expired(t0 + 600 * MS));
}

#[test]
fn a_huge_lease_does_not_overflow() {
    let t0 = Instant::now();
    let mut g = Guard::new(t0, Duration::MAX, DEFAULT_IDLE_EXIT);
    assert!(!g.expired(t0 + Duration::from_secs(3600 * 24 * 300)));
    g.renew(t0, Duration::MAX);
    assert!(!g.expired(t0 + Duration::from_secs(3600)));
    let _ = g.next_look(t0);
}

#[test]
fn before_the_deadline_nothing_is_stopped_after_it_everything_with_its_grace() {
    let t0 = Instant::now();
    let wall = SystemTime::now();
    let mut g = Guard::new(t0, 1000 * MS, DEFAULT_IDLE_EXIT);
    g.joined();
    let running = vec![
        container("a", Some("1500")),
        container("b", None),
        container("c", Some("not a number")),
        container("d", Some("999999999999")),
    ];
    assert_eq!(g.due(t0 + 999 * MS, wall, &running), vec![]);
    let due = g.due(t0 + 1000 * MS, wall, &running);
    let graces: Vec<(&str, Duration)> = due.iter().map(|s| (s.id.as_str(), s.grace)).collect();
    assert_eq!(
        graces,
        vec![
            ("a", 1500 * MS),
            ("b", DEFAULT_GRACE),
            ("c", DEFAULT_GRACE),
            ("d", MAX_GRACE),
        ]
    );
    assert!(due.iter().all(|s| s.why == Why::Lease));
    // Alone makes no difference to the lease.
    g.left(t0);
    assert_eq!(g.due(t0 + 1000 * MS, wall, &running).len(), 4);
}

#[test]
fn time_limits_are_enforced_only_while_no_worker_is_connected() {
    let t0 = Instant::now();
    let created = 1_700_000_000i64;
    let mut labels = HashMap::from([
        (LABEL_TIME_LIMIT.to_string(), "60000".to_string()),
        (LABEL_GRACE.to_string(), "2000".to_string()),
    ]);
    let limited = Guarded::from_labels("limited".into(), &labels, Some(created));
    labels.remove(LABEL_TIME_LIMIT);
    let unlimited = Guarded::from_labels("free".into(), &labels, Some(created));
    let no_start = Guarded {
        created: None,
        ..limited.clone()
    };
    let running = vec![limited, unlimited, no_start];
    let at = |s: u64| UNIX_EPOCH + Duration::from_secs(created as u64 + s);
    let mut g = Guard::new(t0, Duration::from_secs(3600), DEFAULT_IDLE_EXIT);
    assert_eq!(g.due(t0, at(59), &running), vec![]);
    assert_eq!(
        g.due(t0, at(60), &running),
        vec![Stop {
            id: "limited".into(),
            grace: 2000 * MS,
            why: Why::TimeLimit(Duration::from_secs(60)),
        }]
    );
    g.joined();
    assert_eq!(
        g.due(t0, at(120), &running),
        vec![],
        "the connected worker enforces its limits itself"
    );
}

#[test]
fn it_looks_at_the_deadline_when_served_and_polls_when_alone_or_expired() {
    let t0 = Instant::now();
    let mut g = Guard::new(t0, Duration::from_secs(60), DEFAULT_IDLE_EXIT);
    assert!(g.watching(t0), "alone");
    assert_eq!(g.next_look(t0), t0 + POLL_ALONE);
    g.joined();
    assert!(!g.watching(t0));
    assert_eq!(g.next_look(t0), t0 + Duration::from_secs(60));
    g.renew(t0, 300 * MS);
    assert_eq!(g.next_look(t0), t0 + 300 * MS);
    let late = t0 + 300 * MS;
    assert!(g.watching(late));
    assert_eq!(g.next_look(late), late + POLL_EXPIRED);
}

#[test]
fn it_exits_only_alone_for_the_idle_time_with_nothing_running() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(30);
    let mut g = Guard::new(t0, Duration::from_secs(3600), idle);
    assert!(!g.may_exit(t0 + idle - MS, Some(0)), "not idle long enough");
    assert!(g.may_exit(t0 + idle, Some(0)));
    assert!(!g.may_exit(t0 + idle, Some(1)), "something runs");
    g.joined();
    assert!(!g.may_exit(t0 + 10 * idle, Some(0)), "a worker is there");
    let left = t0 + 5 * idle;
    g.left(left);
    assert!(
        !g.may_exit(left + idle - MS, Some(0)),
        "counted from the leaving"
    );
    assert!(g.may_exit(left + idle, Some(0)));
    // A connection that never said hello does not count; two that did
    // both have to leave.
    g.joined();
    g.joined();
    g.left(left);
    assert!(!g.may_exit(left + 10 * idle, Some(0)));
    g.left(left);
    g.left(left);
    assert!(g.may_exit(left + idle, Some(0)), "no underflow");
}

#[test]
fn with_the_daemon_silent_it_stays_until_the_lease_ran_out_and_the_idle_time_passed() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(30);
    let mut g = Guard::new(t0, Duration::from_secs(100), idle);
    g.looked(t0, false);
    assert!(
        !g.may_exit(t0 + 2 * idle, None),
        "the lease still holds: it may have to stop something"
    );
    assert!(
        !g.may_exit(t0 + Duration::from_secs(129), None),
        "the idle time counts from the lease's end"
    );
    assert!(g.may_exit(t0 + Duration::from_secs(130), None));
    g.looked(t0 + Duration::from_secs(129), true);
    g.looked(t0 + Duration::from_secs(130), false);
    assert!(
        !g.may_exit(t0 + Duration::from_secs(131), None),
        "silent for a second only"
    );
    assert!(g.may_exit(t0 + Duration::from_secs(160), None));
}

// ---- the line protocol -------------------------------------------------------

#[test]
fn lines_parse_and_garbage_is_an_error_not_a_panic() {
    assert_eq!(parse(b"hello w-1\n"), Ok(Request::Hello("w-1".into())));
    assert_eq!(parse(b"  lease 1500 \r\n"), Ok(Request::Lease(1500 * MS)));
    assert_eq!(parse(b"lease 0"), Ok(Request::Lease(Duration::ZERO)));
    assert_eq!(parse(b"ping\n"), Ok(Request::Ping));
    assert_eq!(
        parse(b"lease 18446744073709551615\n"),
        Ok(Request::Lease(MAX_LEASE))
    );
    for bad in [
        &b"lease\n"[..],
        b"lease -5\n",
        b"lease 1.5\n",
        b"lease 99999999999999999999999\n",
        b"lease 1 2\n",
        b"hello\n",
        b"hello a b\n",
        b"stop 100\n",
        b"\n",
        b"",
        b"\xff\xfe lease 10\n",
        b"\0\0\0",
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn options_survive_the_command_line() {
    let o = Options {
        socket: PathBuf::from("/tmp/some dir/docker-watchdog.sock"),
        worker: "w-1".into(),
        lease: 1234 * MS,
        idle_exit: Duration::from_secs(30),
    };
    assert_eq!(Options::from_args(o.to_args()), Ok(o));
    for bad in [
        vec![],
        vec!["/s", "w", "10"],
        vec!["/s", "w", "ten", "10"],
        vec!["/s", "w", "10", "-1"],
        vec!["/s", "", "10", "10"],
        vec!["/s", "a b", "10", "10"],
        vec!["/s", "w", "10", "10", "extra"],
    ] {
        let args = bad.iter().map(OsString::from);
        assert!(Options::from_args(args).is_err(), "{bad:?}");
    }
}

// ---- the loop, against a stand-in daemon -------------------------------------

/// A daemon stand-in: the containers "running", the stops made.
#[derive(Default)]
struct Fake {
    running: Mutex<Vec<Guarded>>,
    stops: Mutex<Vec<(String, Duration, Instant)>>,
    down: AtomicBool,
}

impl Fake {
    fn with(running: Vec<Guarded>) -> Arc<Fake> {
        Arc::new(Fake {
            running: Mutex::new(running),
            ..Fake::default()
        })
    }

    fn stops(&self) -> Vec<(String, Duration, Instant)> {
        self.stops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl Containers for Fake {
    async fn running(&self) -> std::result::Result<Vec<Guarded>, String> {
        if self.down.load(Ordering::SeqCst) {
            return Err("daemon down".into());
        }
        Ok(self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone())
    }

    async fn stop(&self, id: &str, grace: Duration) -> std::result::Result<(), String> {
        self.stops.lock().unwrap_or_else(|p| p.into_inner()).push((
            id.to_string(),
            grace,
            Instant::now(),
        ));
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| c.id != id);
        Ok(())
    }
}

struct Served {
    dir: PathBuf,
    socket: PathBuf,
    done: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.done.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves `fake` for worker `w` on a fresh socket, holding `lease` from
/// now.
fn serve_fake(name: &str, fake: Arc<Fake>, lease: Duration, idle: Duration) -> Served {
    let dir = std::env::temp_dir().join(format!("cloudai-wd-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join(SOCKET_FILE);
    let listener = UnixListener::bind(&socket).expect("bind");
    let guard = Guard::new(Instant::now(), lease, idle);
    let done = tokio::spawn(serve(listener, "w".into(), guard, fake, || true));
    Served { dir, socket, done }
}

/// A raw connection: sends lines, reads answers.
struct Line {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Line {
    async fn open(socket: &Path) -> Line {
        let (read, write) = UnixStream::connect(socket)
            .await
            .expect("connect")
            .into_split();
        Line {
            read: BufReader::new(read),
            write,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> String {
        self.write.write_all(bytes).await.expect("write");
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.read.read_line(&mut answer))
            .await
            .expect("an answer in time")
            .expect("read");
        answer
    }
}

async fn until_stopped(fake: &Fake, within: Duration) -> Vec<(String, Duration, Instant)> {
    let deadline = Instant::now() + within;
    loop {
        let stops = fake.stops();
        if !stops.is_empty() {
            return stops;
        }
        assert!(Instant::now() < deadline, "no stop within {within:?}");
        tokio::time::sleep(10 * MS).await;
    }
}

#[tokio::test]
async fn containers_are_stopped_once_the_lease_runs_out_not_before() {
    let fake = Fake::with(vec![container("c1", Some("1500")), container("c2", None)]);
    let served = serve_fake(
        "expiry",
        fake.clone(),
        Duration::from_secs(60),
        DEFAULT_IDLE_EXIT,
    );
    let mut w = Line::open(&served.socket).await;
    assert_eq!(w.send(b"hello w\n").await, "ok\n");
    // Renewed for 1.2 s by three renewals of 600 ms, 400 ms apart.
    let mut last = Instant::now();
    for _ in 0..3 {
        last = Instant::now();
        assert_eq!(w.send(b"lease 600\n").await, "ok\n");
        tokio::time::sleep(400 * MS).await;
        assert!(fake.stops().is_empty(), "stopped while the lease held");
    }
    let stops = until_stopped(&fake, Duration::from_secs(5)).await;
    tokio::time::sleep(300 * MS).await;
    let mut stops: Vec<_> = fake.stops().into_iter().chain(stops).collect();
    stops.sort_by(|a, b| a.0.cmp(&b.0));
    stops.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(stops.len(), 2, "each stopped once: {stops:?}");
    assert_eq!((stops[0].0.as_str(), stops[0].1), ("c1", 1500 * MS));
    assert_eq!((stops[1].0.as_str(), stops[1].1), ("c2", DEFAULT_GRACE));
    for (_, _, at) in &stops {
        assert!(*at >= last + 600 * MS, "stopped before the lease ran out");
    }
    assert_eq!(fake.stops().len(), 2, "no stop made twice");
    // A container that shows up while the lease is out is stopped too;
    // after a renewal, one is left alone.
    fake.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(container("late", None));
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.stops().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the late container was not stopped"
        );
        tokio::time::sleep(10 * MS).await;
    }
    assert_eq!(w.send(b"lease 60000\n").await, "ok\n");
    fake.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(container("renewed", None));
    tokio::time::sleep(700 * MS).await;
    assert_eq!(fake.stops().len(), 3, "{:?}", fake.stops());
}

#[tokio::test]
async fn a_worker_that_goes_away_leaves_the_lease_running() {
    let fake = Fake::with(vec![container("c1", Some("100"))]);
    let served = serve_fake(
        "gone",
        fake.clone(),
        Duration::from_secs(60),
        DEFAULT_IDLE_EXIT,
    );
    let mut w = Line::open(&served.socket).await;
    assert_eq!(w.send(b"hello w\n").await, "ok\n");
    let sent = Instant::now();
    assert_eq!(w.send(b"lease 800\n").await, "ok\n");
    drop(w);
    // A restarted worker connects, does not renew (yet).
    let mut again = Line::open(&served.socket).await;
    assert_eq!(again.send(b"hello w\n").await, "ok\n");
    let stops = until_stopped(&fake, Duration::from_secs(5)).await;
    assert!(stops[0].2 >= sent + 800 * MS, "{stops:?}");
    assert_eq!(stops[0].1, 100 * MS);
}

#[tokio::test]
async fn bad_lines_are_answered_with_an_error_and_the_watchdog_keeps_serving() {
    let fake = Fake::with(vec![container("c1", None)]);
    let served = serve_fake(
        "garbage",
        fake.clone(),
        Duration::from_secs(60),
        DEFAULT_IDLE_EXIT,
    );
    let mut w = Line::open(&served.socket).await;
    let refused = w.send(b"lease 0\n").await;
    assert!(refused.starts_with("error say hello"), "{refused}");
    let other = w.send(b"hello someone-else\n").await;
    assert!(
        other.starts_with("error this watchdog guards worker w"),
        "{other}"
    );
    for bad in [
        &b"lease ten\n"[..],
        b"\xff\xfe\n",
        b"stop 5\n",
        b"\n",
        b"lease 1 2 3\n",
    ] {
        let answer = w.send(bad).await;
        assert!(answer.starts_with("error "), "{bad:?}: {answer}");
    }
    assert_eq!(w.send(b"ping\n").await, "ok\n");
    assert_eq!(w.send(b"hello w\n").await, "ok\n");
    // A line longer than any command is refused and the connection closed.
    let long = vec![b'x'; 5000];
    let answer = w.send(&long).await;
    assert!(answer.starts_with("error line longer"), "{answer}");
    let mut rest = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), w.read.read_line(&mut rest))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed: {rest:?}");
    // Others are still served; nothing was stopped: the lease holds.
    let mut w2 = Line::open(&served.socket).await;
    assert_eq!(w2.send(b"hello w\n").await, "ok\n");
    assert_eq!(w2.send(b"lease 60000\n").await, "ok\n");
    assert!(fake.stops().is_empty());
    assert!(!served.done.is_finished());
}

#[tokio::test]
async fn it_exits_once_idle_with_nothing_running_not_while_something_runs() {
    let fake = Fake::with(vec![container("c1", Some("0"))]);
    let mut served = serve_fake("idle", fake.clone(), Duration::from_secs(60), 300 * MS);
    // Something runs and the lease holds: it stays.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!served.done.is_finished(), "exited while a container ran");
    // A worker is connected: it stays, whatever runs.
    let mut w = Line::open(&served.socket).await;
    assert_eq!(w.send(b"hello w\n").await, "ok\n");
    fake.running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!served.done.is_finished(), "exited with a worker connected");
    // The worker goes: it exits after the idle time.
    drop(w);
    let done = tokio::time::timeout(Duration::from_secs(5), &mut served.done).await;
    assert!(matches!(done, Ok(Ok(()))), "{done:?}");
    assert!(fake.stops().is_empty());
}

#[tokio::test]
async fn with_no_worker_connected_it_enforces_time_limits() {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let labels = HashMap::from([
        (LABEL_TIME_LIMIT.to_string(), "1000".to_string()),
        (LABEL_GRACE.to_string(), "250".to_string()),
    ]);
    let c = Guarded::from_labels("limited".into(), &labels, i64::try_from(created).ok());
    let fake = Fake::with(vec![c]);
    let _served = serve_fake(
        "limit",
        fake.clone(),
        Duration::from_secs(60),
        DEFAULT_IDLE_EXIT,
    );
    let stops = until_stopped(&fake, Duration::from_secs(5)).await;
    assert_eq!((stops[0].0.as_str(), stops[0].1), ("limited", 250 * MS));
}

#[tokio::test]
async fn a_runtime_client_reaches_a_running_watchdog_and_renews() {
    let fake = Fake::with(vec![container("c1", None)]);
    let served = serve_fake(
        "client",
        fake.clone(),
        Duration::from_secs(60),
        DEFAULT_IDLE_EXIT,
    );
    // The command is never run: a watchdog answers.
    let watchdog = Watchdog::new(
        &served.socket,
        vec!["/nonexistent/watchdog".into()],
        Duration::from_secs(120),
    )
    .expect("watchdog");
    let client = Client::new(watchdog, "w".into());
    client.connect().await.expect("connect");
    let sent = Instant::now();
    client.lease(400 * MS).await.expect("lease");
    let stops = until_stopped(&fake, Duration::from_secs(5)).await;
    // What is left of the lease goes in whole milliseconds, rounded down
    // (a lease never outlasts the worker's fence): up to 1 ms early.
    assert!(
        stops[0].2 + MS >= sent + 400 * MS,
        "stopped {:?} before the lease's end",
        (sent + 400 * MS).saturating_duration_since(stops[0].2)
    );
    // Another worker's runtime is refused, and says so.
    let watchdog = Watchdog::new(
        &served.socket,
        vec!["/nonexistent/watchdog".into()],
        Duration::from_secs(120),
    )
    .expect("watchdog");
    let other = Client::new(watchdog, "x".into());
    let e = other.lease(MS).await.expect_err("refused");
    assert!(e.to_string().contains("guards worker w"), "{e}");
}

#[tokio::test]
async fn a_runtime_client_that_cannot_start_its_watchdog_says_so() {
    let dir = std::env::temp_dir().join(format!("cloudai-wd-{}-nostart", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let watchdog = Watchdog::in_state_dir(
        &dir,
        vec!["/nonexistent/watchdog".into()],
        Duration::from_secs(120),
    )
    .expect("watchdog");
    let client = Client::new(watchdog, "w".into());
    let e = client.lease(MS).await.expect_err("no watchdog");
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("/nonexistent/watchdog"), "{e}");
    // One that exits without answering.
    let watchdog = Watchdog::in_state_dir(&dir, vec!["false".into()], Duration::from_secs(120))
        .expect("watchdog");
    let e = Client::new(watchdog, "w".into())
        .connect()
        .await
        .expect_err("no watchdog");
    assert!(e.to_string().contains("exited"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_long_socket_path_is_reached_through_its_directory() {
    let long = std::env::temp_dir().join(format!(
        "cloudai-wd-{}-{}",
        std::process::id(),
        "x".repeat(120)
    ));
    let _ = std::fs::remove_dir_all(&long);
    std::fs::create_dir_all(&long).expect("temp dir");
    let socket = long.join(SOCKET_FILE);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bound = Bound::take(&socket)
            .await
            .expect("bind")
            .expect("the lock is free");
        assert!(still_ours(&socket, bound.identity));
        assert!(
            Bound::take(&socket).await.expect("no error").is_none(),
            "a second watchdog on the socket gives way"
        );
        let accept = tokio::spawn(async move {
            let _ = bound.listener.accept().await;
            bound
        });
        connect(&socket)
            .await
            .expect("connect through the directory");
        let _ = accept.await;
    });
    let _ = std::fs::remove_dir_all(&long);
}
