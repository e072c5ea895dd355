//! What operators scrape, probe and watch, against the binaries: metrics
//! that move by the right amounts, probes with and without the token,
//! readiness that follows the store, the event stream and its cursor, and
//! one task's path through the master's JSON log.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Every sample of a scrape, by series (`name{labels}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn scrape(base: &str, token: &str) -> BTreeMap<String, f64> {
    let (code, body) = get(&format!("{base}/metrics"), Some(token));
    assert_eq!(code, 200, "{body}");
    samples(&body)
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// The base URL (`http://host:port`) a process logged in its "HTTP
/// listening" line (JSON or text).
fn http_base(log: &Log) -> String {
    until(EVENTUALLY, "the HTTP listener's URL in the log", || {
        log_lines(log).iter().find_map(|l| {
            let at = l.find("http://")?;
            let url: String = l[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect();
            url.strip_suffix("/metrics").map(str::to_string)
        })
    })
}

// ---- metrics, probes, spans -------------------------------------------------

#[test]
fn metrics_move_by_what_ran_and_probes_need_the_token() {
    let mut c = Cluster::start_with("metrics", FAST, &["--http-listen", "0"]);
    c.worker_args = vec!["--http-listen".into(), "0".into()];
    let w = c.id("w");
    let idx = c.spawn_worker(&w, 4.0);
    c.wait_active(&[&w]);
    let master = http_base(&c.master.log);
    let worker = http_base(&c.workers[idx].log);

    for base in [&master, &worker] {
        for path in ["/metrics", "/healthz", "/readyz", "/api/overview"] {
            let (code, body) = get(&format!("{base}{path}"), None);
            assert_eq!(code, 401, "{base}{path} without the token: {body}");
        }
        assert_eq!(get(&format!("{base}/healthz"), Some(&c.token)).0, 200);
        // The worker is ready once it has its registration's reply, a
        // moment after the master lists it active.
        until(EVENTUALLY, &format!("{base}/readyz"), || {
            let (code, body) = get(&format!("{base}/readyz"), Some(&c.token));
            (code == 200 && body == "ready\n").then_some(())
        });
    }

    let before = scrape(&master, &c.token);
    let mut wrong = Command::new(MASTER_BIN);
    wrong.args(["--master", &c.address, "--token", "not-it", "workers"]);
    assert_eq!(run_bounded(&mut wrong, CLI_TIMEOUT).expect("run").code, 77);
    let ok: Vec<String> = (0..3)
        .map(|_| c.submit(&["busybox", "--", "true"]))
        .collect();
    let failed = c.submit(&["busybox", "--", "false"]);
    let (cancelled, pidfile) = c.submit_sleep(&w, "1");
    c.wait_sleeping(&cancelled, &pidfile);
    assert_eq!(c.cli(&["cancel", "--wait", &cancelled]).code, 0);
    for t in ok.iter().chain([&failed, &cancelled]) {
        until(EVENTUALLY, &format!("{t} finished"), || {
            let s = c.status(t);
            (s != "pending" && s != "running").then_some(())
        });
    }
    // A counter moves just after the store write a status read sees:
    // scrape until the last of them moved, then check every one exactly.
    let after = until(EVENTUALLY, "the counters caught up", || {
        let m = scrape(&master, &c.token);
        let ended = ["completed", "failed", "cancelled"]
            .iter()
            .map(|s| {
                value(&m, &format!("cloudai_tasks_{s}_total"))
                    - value(&before, &format!("cloudai_tasks_{s}_total"))
            })
            .sum::<f64>();
        let stops = value(&m, "cloudai_task_stop_seconds_count")
            - value(&before, "cloudai_task_stop_seconds_count");
        (ended >= 5.0 && stops >= 1.0).then_some(m)
    });
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(moved("cloudai_tasks_submitted_total"), 5.0);
    assert_eq!(moved("cloudai_tasks_placed_total"), 5.0);
    assert_eq!(moved("cloudai_tasks_completed_total"), 3.0);
    assert_eq!(moved("cloudai_tasks_failed_total"), 1.0);
    assert_eq!(moved("cloudai_tasks_cancelled_total"), 1.0);
    assert_eq!(moved("cloudai_task_start_seconds_count"), 5.0);
    assert_eq!(
        moved("cloudai_task_stop_seconds_count"),
        1.0,
        "the cancel's stop"
    );
    assert_eq!(
        moved(r#"cloudai_rpcs_total{method="/cloudai.v1.Master/Submit",code="OK"}"#),
        5.0
    );
    assert_eq!(
        moved(r#"cloudai_store_operation_seconds_count{operation="insert_task"}"#),
        5.0
    );
    assert!(moved("cloudai_heartbeats_received_total") > 0.0);
    assert_eq!(
        moved(
            r#"cloudai_rpcs_total{method="/cloudai.v1.Master/ListWorkers",code="UNAUTHENTICATED"}"#
        ),
        1.0,
        "a refused call is counted with its code"
    );
    assert_eq!(value(&after, r#"cloudai_tasks{status="completed"}"#), 3.0);
    assert_eq!(value(&after, r#"cloudai_tasks{status="running"}"#), 0.0);
    assert_eq!(value(&after, r#"cloudai_workers{health="active"}"#), 1.0);
    assert_eq!(value(&after, "cloudai_cpu_capacity_cores"), 4.0);
    assert_eq!(value(&after, "cloudai_cpu_allocated_cores"), 0.0);
    assert_eq!(value(&after, "cloudai_queue_depth"), 0.0);

    let on_worker = scrape(&worker, &c.token);
    assert_eq!(value(&on_worker, "cloudai_worker_running_tasks"), 0.0);
    assert_eq!(value(&on_worker, "cloudai_worker_outbox_depth"), 0.0);
    assert_eq!(
        value(
            &on_worker,
            r#"cloudai_worker_runtime_operation_seconds_count{operation="start"}"#
        ),
        5.0
    );
    assert!(
        value(
            &on_worker,
            r#"cloudai_worker_rpcs_total{method="/cloudai.v1.Worker/Assign",code="OK"}"#
        ) >= 5.0
    );

    // One task's path through the master's JSON log, by the spans of its
    // lines (a line names every span it is in, outermost first).
    let task = &ok[0];
    let spans: Vec<String> = c
        .master_log()
        .iter()
        .filter_map(|l| l["spans"].as_array())
        .filter(|s| s.iter().any(|s| s["task"] == task.as_str()))
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    for step in ["submit", "place", "assign", "report", "result"] {
        assert!(spans.iter().any(|s| s == step), "{step} in {spans:?}");
    }
}

#[test]
fn open_probes_skip_the_token_and_nothing_else_does() {
    let c = Cluster::start_with(
        "open-probes",
        FAST,
        &["--http-listen", "0", "--http-open-probes"],
    );
    let base = http_base(&c.master.log);
    for path in ["/metrics", "/healthz", "/readyz"] {
        let (code, body) = get(&format!("{base}{path}"), None);
        assert_eq!(code, 200, "{path}: {body}");
    }
    assert_eq!(get(&format!("{base}/api/overview"), None).0, 401);
    assert_eq!(get(&format!("{base}/api/overview"), Some(&c.token)).0, 200);
    // A page asked for without the token is sent to the login form.
    assert_eq!(get(&format!("{base}/"), None).0, 303);
    assert_eq!(get(&format!("{base}/"), Some(&c.token)).0, 200);
}

// ---- readiness follows the store --------------------------------------------

const MONGO_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/mongo-test-server.sh"
);

/// A MongoDB-wire server of this test's own, on `port` with data in `dir`.
fn start_mongo(port: u16, dir: &Path, pid_file: &Path) {
    let out = Command::new(MONGO_SCRIPT)
        .args(["--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir)
        .arg("--pid-file")
        .arg(pid_file)
        .stderr(Stdio::inherit())
        .output()
        .expect("start the test's MongoDB-wire server");
    assert!(out.status.success(), "mongo-test-server.sh failed");
}

fn stop_mongo(pid_file: &Path) {
    let status = Command::new(MONGO_SCRIPT)
        .arg("--stop")
        .arg(pid_file)
        .status()
        .expect("stop the test's MongoDB-wire server");
    assert!(status.success());
}

/// Stops the test's server and removes its data, however the test ends.
struct PrivateMongo {
    pid_file: PathBuf,
    dir: PathBuf,
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        if self.pid_file.exists() {
            stop_mongo(&self.pid_file);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn readyz_follows_a_private_store_down_and_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let tag = format!("readyz-{}", std::process::id());
    let mongo = PrivateMongo {
        pid_file: std::env::temp_dir().join(format!("cloudai-{tag}.pid")),
        dir: std::env::temp_dir().join(format!("cloudai-{tag}-data")),
    };
    start_mongo(port, &mongo.dir, &mongo.pid_file);
    let uri = format!("mongodb://127.0.0.1:{port}");
    let db = format!("cloudai_{}", tag.replace('-', "_"));
    let c = Cluster::start_with(
        "readyz",
        FAST,
        &["--store", &uri, "--mongo-db", &db, "--http-listen", "0"],
    );
    let readyz = format!("{}/readyz", http_base(&c.master.log));
    assert_eq!(get(&readyz, Some(&c.token)).0, 200);

    stop_mongo(&mongo.pid_file);
    let (_, why) = until(
        Duration::from_secs(10),
        "not ready once the store is down",
        || {
            let (code, body) = get(&readyz, Some(&c.token));
            (code == 503).then_some((code, body))
        },
    );
    assert!(why.contains("store"), "{why}");
    // Still alive: only readiness depends on the store.
    assert_eq!(
        get(
            &format!("{}/healthz", http_base(&c.master.log)),
            Some(&c.token)
        )
        .0,
        200
    );

    start_mongo(port, &mongo.dir, &mongo.pid_file);
    until(
        Duration::from_secs(30),
        "ready again once the store is back",
        || (get(&readyz, Some(&c.token)).0 == 200).then_some(()),
    );
}

// ---- the event stream -------------------------------------------------------

/// `events --json` (after `cursor`, if given) as a child, its lines
/// parsed as they come.
fn watch(c: &Cluster, cursor: Option<&str>) -> (Child, mpsc::Receiver<Value>) {
    let mut cmd = Command::new(MASTER_BIN);
    clean_env(&mut cmd);
    cmd.args([
        "--master", &c.address, "--token", &c.token, "--json", "events",
    ]);
    if let Some(cur) = cursor {
        cmd.args(["--cursor", cur]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn events");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: Value = serde_json::from_str(&line).expect("one JSON object a line");
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn seq(e: &Value) -> u64 {
    let cursor = e["cursor"].as_str().expect("a cursor");
    cursor
        .rsplit_once(':')
        .expect("epoch:seq")
        .1
        .parse()
        .expect("seq")
}

/// Events until `task` completed; checks they are numbered without a gap.
fn until_completed(rx: &mpsc::Receiver<Value>, task: &str, mut last: u64) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let e = rx.recv_timeout(EVENTUALLY).expect("an event in time");
        assert_eq!(seq(&e), last + 1, "no gap, no repeat: {e}");
        last = seq(&e);
        let done = e["task"] == task && e["to"] == "completed";
        seen.push(e);
        if done {
            return seen;
        }
    }
}

/// The kinds of `task`'s events, in order.
fn life(events: &[Value], task: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["task"] == task)
        .map(|e| match e["kind"].as_str() {
            Some("task") => format!(
                "{}->{}",
                e["from"].as_str().unwrap_or("?"),
                e["to"].as_str().unwrap_or("?")
            ),
            other => other.unwrap_or("?").to_string(),
        })
        .collect()
}

#[test]
fn events_follow_a_task_once_each_and_resume_from_a_cursor() {
    let mut c = Cluster::start("events", FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);

    let (mut watcher, rx) = watch(&c, None);
    let bookmark = rx.recv_timeout(EVENTUALLY).expect("the bookmark first");
    assert_eq!(bookmark["kind"], "bookmark", "{bookmark}");
    let first = c.submit(&["busybox", "--", "true"]);
    let seen = until_completed(&rx, &first, seq(&bookmark));
    assert_eq!(
        life(&seen, &first),
        ["submitted", "pending->running", "running->completed"],
        "each transition once: {seen:?}"
    );
    let placed = seen.iter().find(|e| e["to"] == "running").expect("placed");
    assert_eq!(
        (placed["worker"].as_str(), placed["attempt"].as_u64()),
        (Some(w.as_str()), Some(1))
    );
    let _ = watcher.kill();
    let _ = watcher.wait();

    // While nobody watches, a second task runs; resuming gets all of it.
    let cursor = seen.last().expect("events")["cursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    let second = c.submit(&["busybox", "--", "true"]);
    until(EVENTUALLY, "the second task completed", || {
        (c.status(&second) == "completed").then_some(())
    });
    let (mut resumed, rx) = watch(&c, Some(&cursor));
    let bookmark = rx.recv_timeout(EVENTUALLY).expect("the bookmark first");
    assert_eq!(
        bookmark["cursor"],
        cursor.as_str(),
        "the watch starts at the cursor"
    );
    let seen = until_completed(&rx, &second, seq(&bookmark));
    assert_eq!(
        life(&seen, &second),
        ["submitted", "pending->running", "running->completed"]
    );
    let _ = resumed.kill();
    let _ = resumed.wait();

    // A cursor from another master run is refused, not silently skipped.
    let out = c.cli(&["events", "--cursor", "another-master.1:5"]);
    assert_eq!(out.code, 73, "{out:?}");
    assert!(out.stderr.contains("list again"), "{out:?}");
    let out = c.cli(&["events", "--cursor", "no-seq"]);
    assert_eq!(out.code, 65, "{out:?}");
}

#[test]
fn tasks_watch_lists_again_when_a_task_changes() {
    let mut c = Cluster::start("tasks-watch", FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let mut cmd = Command::new(MASTER_BIN);
    clean_env(&mut cmd);
    let mut child = cmd
        .args(["--master", &c.address, "--token", &c.token, "--json"])
        .args(["tasks", "--watch"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tasks --watch");
    let (tx, rx) = mpsc::channel::<Value>();
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let empty = rx.recv_timeout(EVENTUALLY).expect("the first listing");
    assert_eq!(empty.as_array().map(Vec::len), Some(0), "{empty}");
    let id = c.submit(&["busybox", "--", "true"]);
    let listed_completed = |v: &Value| {
        v.as_array().is_some_and(|ts| {
            ts.iter()
                .any(|t| t["id"] == id.as_str() && t["status"] == "completed")
        })
    };
    loop {
        let listing = rx
            .recv_timeout(EVENTUALLY)
            .expect("a listing after a change");
        if listed_completed(&listing) {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn an_open_event_stream_does_not_hold_up_the_masters_shutdown() {
    let mut c = Cluster::start("events-shutdown", FAST);
    let (mut watcher, rx) = watch(&c, None);
    rx.recv_timeout(EVENTUALLY).expect("the bookmark");
    signal(c.master.child.id(), "TERM");
    let status = wait_exit(&mut c.master.child, EVENTUALLY, "the master after SIGTERM");
    assert!(status.success(), "{status:?}");
    let ended = wait_exit(&mut watcher, EVENTUALLY, "the watcher once the stream ends");
    assert_eq!(ended.code(), Some(69), "the stream ended: unavailable");
}
