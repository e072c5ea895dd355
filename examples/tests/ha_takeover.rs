//! Two `--ha` masters on one MongoDB store take over from each other under
//! a steady stream of submits: the leader is `kill -9`ed, stopped past its
//! lease (`SIGSTOP`, then `SIGCONT`), or terminated (SIGTERM). Through each
//! takeover every acknowledged submit makes exactly one task that
//! completes once, no retry of a submit makes a second task, no attempt
//! starts twice, and the cluster ends with nothing allocated and nothing
//! for `reconcile` to fix.
//!
//! Needs `CLOUDAI_TEST_MONGO_URI` (`./scripts/test.sh` starts a
//! MongoDB-wire server and sets it); without it the tests fail.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudai_mongo::{MongoConfig, MongoStore};
use common::*;
use serde_json::Value;

/// Workers keep their runs through a takeover: cut off, they stop them
/// only past their fence (20 s − a 2 s grace − a 1.5 s margin), far beyond
/// the 4.5 s a takeover may take; `--ha` accepts these with a 3 s lease.
const TIMING: Timing = Timing {
    heartbeat_interval: 0.3,
    heartbeat_timeout: 2.0,
    lost_after: 20.0,
};
/// The masters' `--lease-ttl`, seconds.
const LEASE_TTL: u64 = 3;
/// The workers' `--max-grace`, seconds.
const WORKER_GRACE: &str = "2";
/// Bound on one CLI invocation (its `--leader-wait` is 30 s).
const CLI_BOUND: Duration = Duration::from_secs(40);
/// Bound on every "eventually" of these tests.
const SETTLE: Duration = Duration::from_secs(60);
/// How long the submits run before the fault.
const BEFORE_FAULT: Duration = Duration::from_secs(2);
/// How long they keep running once the new leader answers.
const AFTER_TAKEOVER: Duration = Duration::from_secs(4);
/// The pause between two submits.
const SUBMIT_PAUSE: Duration = Duration::from_millis(50);
/// The environment variable naming, in each task, the submit that made it.
const SUBMIT_LABEL: &str = "HA_SUBMIT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9` the leader.
    Kill,
    /// `SIGSTOP` the leader for three lease TTLs, then `SIGCONT`.
    Stop,
    /// SIGTERM the leader (it releases the lease).
    Term,
}

/// One `--ha` master process.
struct HaMaster {
    id: String,
    proc: Proc,
    /// Its gRPC address (as it advertises it).
    address: String,
    /// Its HTTP listener's base URL (`http://host:port`).
    http: String,
    /// Killed or exited: not probed any more.
    gone: bool,
}

/// Two `--ha` masters and two workers; everything is killed on drop.
struct Ha {
    tag: String,
    token: String,
    uri: String,
    db: String,
    masters: Vec<HaMaster>,
    workers: Vec<Proc>,
    worker_ids: Vec<String>,
    /// The workers' state directories and the tasks' marker file.
    root: PathBuf,
    /// Each run appends `<task id> <attempt>` here.
    marks: PathBuf,
}

impl Drop for Ha {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let procs = self
            .workers
            .iter_mut()
            .chain(self.masters.iter_mut().map(|m| &mut m.proc));
        for p in procs {
            // SIGKILL also ends a stopped (SIGSTOP) process.
            let _ = p.child.kill();
            let _ = p.child.wait();
            if panicking {
                let lines = log_lines(&p.log);
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!("---- last log lines of {} ----", p.name);
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let (uri, db) = (self.uri.clone(), self.db.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let store = MongoStore::connect(MongoConfig::new(uri, db)).await.ok()?;
                store.drop_database().await.ok()
            })
        });
        let _ = dropped.join();
    }
}

/// A JSON log line's message.
fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or_default()
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `GET base/path` with the token, bounded (a stopped master accepts the
/// connection and never answers): the status code and body, or `None`.
fn probe(base: &str, path: &str, token: &str) -> Option<(u16, String)> {
    let host = base.strip_prefix("http://")?;
    let addr: SocketAddr = host.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let code = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// One sample of a Prometheus text scrape; it must be there.
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(s, _)| *s == series)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the scrape:\n{scrape}"))
}

/// A master's fenced store writes, from its `/metrics`.
fn fenced_writes(ha: &Ha, i: usize) -> f64 {
    let m = &ha.masters[i];
    let (code, scrape) = probe(&m.http, "/metrics", &ha.token)
        .unwrap_or_else(|| panic!("no answer from {}'s /metrics", m.id));
    assert_eq!(code, 200, "{scrape}");
    sample(&scrape, "cloudai_store_writes_fenced_total")
}

/// The term a master's log line names.
fn term(v: &Value) -> Option<u64> {
    v["fields"]["term"].as_str()?.parse().ok()
}

/// The term of this master's last "leading" line, if it led.
fn led_term(lines: &[Value]) -> Option<u64> {
    lines
        .iter()
        .filter(|v| message(v) == "leading")
        .filter_map(term)
        .next_back()
}

/// One submit of the submitter: how the CLI answered.
struct Submit {
    label: String,
    code: i32,
    /// The task id, when the submit was acknowledged.
    task: Option<String>,
    stderr: String,
}

impl Ha {
    fn start(case: &str) -> Ha {
        let uri = mongo_uri();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000_000)
            .unwrap_or(0);
        let tag = format!("ha-{case}-{}", std::process::id());
        let db = format!("cloudai_ha_{case}_{}_{nanos}", std::process::id());
        let root = std::env::temp_dir().join(format!("cloudai-{tag}-{nanos}"));
        std::fs::create_dir_all(&root).expect("create the test's directory");
        let marks = root.join("marks");
        let mut ha = Ha {
            token: format!("tok-{tag}"),
            tag,
            uri,
            db,
            masters: Vec::new(),
            workers: Vec::new(),
            worker_ids: Vec::new(),
            root,
            marks,
        };
        // The first leads (so the fault hits the master the clients try
        // first); the second follows it.
        ha.spawn_master("a");
        until(SETTLE, "master a leads", || {
            (ha.readyz(0).map(|r| r.0) == Some(200)).then_some(())
        });
        ha.spawn_master("b");
        ha.wait_roles(0);
        ha.spawn_worker("w1");
        ha.spawn_worker("w2");
        ha.wait_workers_active();
        ha
    }

    fn spawn_master(&mut self, name: &str) {
        let id = format!("{name}-{}", self.tag);
        let ttl = LEASE_TTL.to_string();
        let (proc, address) = spawn_master(
            &self.token,
            "127.0.0.1:0",
            TIMING,
            &[
                "--ha",
                "--lease-ttl",
                &ttl,
                "--store",
                &self.uri,
                "--mongo-db",
                &self.db,
                "--id",
                &id,
                "--http-listen",
                "0",
            ],
            &format!("master {id}"),
        );
        let http = until(EVENTUALLY, "the master's HTTP listener", || {
            json_lines(&log_lines(&proc.log))
                .iter()
                .filter(|v| message(v) == "HTTP listening")
                .find_map(|v| {
                    v["fields"]["url"]
                        .as_str()?
                        .strip_suffix("/metrics")
                        .map(str::to_string)
                })
        });
        self.masters.push(HaMaster {
            id,
            proc,
            address,
            http,
            gone: false,
        });
    }

    /// `--master a,b` for workers and the CLI.
    fn master_list(&self) -> String {
        self.masters
            .iter()
            .map(|m| m.address.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A worker on the process runtime following both masters, logging
    /// JSON with its "task accepted" lines (debug).
    fn spawn_worker(&mut self, name: &str) {
        let id = format!("{name}-{}", self.tag);
        let mut cmd = Command::new(WORKER_BIN);
        clean_env(&mut cmd);
        cmd.args(["--master", &self.master_list(), "--listen", "127.0.0.1:0"])
            .args(["--id", &id, "--token", &self.token, "--runtime", "process"])
            .arg("--state-dir")
            .arg(self.root.join(&id))
            .args(["--max-grace", WORKER_GRACE, "--cpu", "4", "--mem", "8"])
            .args(["--heartbeat-interval", "0.3", "--shutdown-timeout", "5"])
            .arg("--log-json")
            .env("RUST_LOG", "info,cloudai_core::worker::supervise=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn cloudai-worker");
        let log = Log::default();
        drain(
            child.stderr.take().expect("piped stderr"),
            log.clone(),
            |_| {},
        );
        self.workers.push(Proc {
            name: format!("worker {id}"),
            child,
            log,
        });
        self.worker_ids.push(id);
    }

    /// The CLI against both masters.
    fn cli(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(MASTER_BIN);
        cmd.args(["--master", &self.master_list(), "--token", &self.token])
            .args(args);
        run_bounded(&mut cmd, CLI_BOUND).expect("run the CLI")
    }

    /// A `--json` command that must succeed, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert_eq!(out.code, 0, "{args:?} failed: {out:?}");
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out:?}"))
    }

    fn list(&self, args: &[&str]) -> Vec<Value> {
        self.json(args)
            .as_array()
            .unwrap_or_else(|| panic!("{args:?} --json is not an array"))
            .clone()
    }

    fn wait_workers_active(&self) {
        until(SETTLE, "both workers registered and active", || {
            let ws = self.list(&["workers"]);
            self.worker_ids
                .iter()
                .all(|id| {
                    ws.iter().any(|w| {
                        w["id"] == id.as_str() && w["registered"] == true && w["health"] == "active"
                    })
                })
                .then_some(())
        });
    }

    fn readyz(&self, i: usize) -> Option<(u16, String)> {
        probe(&self.masters[i].http, "/readyz", &self.token)
    }

    /// Waits until master `leader` answers ready and every other master
    /// still running answers that it follows `leader`.
    fn wait_roles(&self, leader: usize) {
        let l = &self.masters[leader];
        let named = format!("follower; leader {} at {}", l.id, l.address);
        until(
            SETTLE,
            &format!("{} leads, the others follow it", l.id),
            || {
                if self.readyz(leader)? != (200, "ready\n".to_string()) {
                    return None;
                }
                self.masters
                    .iter()
                    .enumerate()
                    .filter(|(i, m)| *i != leader && !m.gone)
                    .all(|(i, _)| {
                        self.readyz(i)
                            .is_some_and(|(code, body)| code == 503 && body.contains(&named))
                    })
                    .then_some(())
            },
        );
    }

    /// The one master answering ready now (panics if two do).
    fn leader(&self) -> Option<usize> {
        let ready: Vec<usize> = (0..self.masters.len())
            .filter(|i| !self.masters[*i].gone)
            .filter(|i| self.readyz(*i).is_some_and(|(code, _)| code == 200))
            .collect();
        assert!(ready.len() <= 1, "two masters answer ready: {ready:?}");
        ready.first().copied()
    }

    /// Submits one task after another (each a shell command appending its
    /// `<task id> <attempt>` to the marker file, then sleeping 0.5 s)
    /// until `stop`; counts the acknowledged ones in `acked`.
    fn submitter(&self, stop: Arc<AtomicBool>, acked: Arc<AtomicUsize>) -> JoinHandle<Vec<Submit>> {
        let (list, token, tag) = (self.master_list(), self.token.clone(), self.tag.clone());
        let script = format!(
            "printf '%s %s\\n' \"$CLOUDAI_TASK_ID\" \"$CLOUDAI_ATTEMPT\" >> '{}'; sleep 0.5",
            self.marks.display()
        );
        std::thread::spawn(move || {
            let mut submits = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let label = format!("{tag}-{}", submits.len());
                let env = format!("{SUBMIT_LABEL}={label}");
                let mut cmd = Command::new(MASTER_BIN);
                cmd.args(["--master", &list, "--token", &token, "--json", "task"])
                    .args(["--cpu", "0.5", "--mem", "0.1", "--env", &env])
                    .args(["busybox", "--", "sh", "-c", &script]);
                let out = run_bounded(&mut cmd, CLI_BOUND).expect("run the CLI");
                let task = (out.code == 0)
                    .then(|| serde_json::from_str::<Value>(out.stdout.trim()).ok())
                    .flatten()
                    .and_then(|v| v["task_id"].as_str().map(str::to_string));
                if task.is_some() {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                submits.push(Submit {
                    label,
                    code: out.code,
                    task,
                    stderr: out.stderr,
                });
                std::thread::sleep(SUBMIT_PAUSE);
            }
            submits
        })
    }
}

/// The (task, attempt) of each "task accepted" line of a worker's log.
fn accepted(log: &Log) -> Vec<(String, u64)> {
    json_lines(&log_lines(log))
        .iter()
        .filter(|v| message(v) == "task accepted")
        .map(|v| {
            let task = v["fields"]["task"].as_str().unwrap_or_default().to_string();
            let attempt = v["fields"]["attempt"].as_u64().unwrap_or(0);
            (task, attempt)
        })
        .collect()
}

/// The values that occur more than once.
fn repeated<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut seen = BTreeMap::<&T, usize>::new();
    for i in items {
        *seen.entry(i).or_default() += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(i, _)| i.clone())
        .collect()
}

/// The causes of a task's ended attempts, oldest first.
fn causes(task: &Value) -> Vec<String> {
    task["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|a| a["cause"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn takeover_under_load(case: &str, fault: Fault) {
    let began = Instant::now();
    let mut ha = Ha::start(case);

    // Submits, some before the fault.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let submitter = ha.submitter(stop.clone(), acked.clone());
    until(SETTLE, "a first submit acknowledged", || {
        (acked.load(Ordering::SeqCst) > 0).then_some(())
    });
    std::thread::sleep(BEFORE_FAULT);
    let old = until(SETTLE, "a leader before the fault", || ha.leader());
    let new = 1 - old;
    let old_id = ha.masters[old].id.clone();
    let old_term = led_term(&json_lines(&log_lines(&ha.masters[old].proc.log)))
        .expect("the leader logged its term");

    // The fault, and the takeover.
    let pid = ha.masters[old].proc.child.id();
    let stopped_at = Instant::now();
    match fault {
        Fault::Kill => {
            ha.masters[old]
                .proc
                .child
                .kill()
                .expect("kill -9 the leader");
            let _ = ha.masters[old].proc.child.wait();
            ha.masters[old].gone = true;
        }
        Fault::Stop => signal(pid, "STOP"),
        Fault::Term => signal(pid, "TERM"),
    }
    eprintln!(
        "{case}: fault on {old_id} after {} submits acknowledged",
        acked.load(Ordering::SeqCst)
    );
    until(SETTLE, "the other master leads", || {
        (probe(&ha.masters[new].http, "/readyz", &ha.token).map(|r| r.0) == Some(200)).then_some(())
    });
    eprintln!(
        "{case}: {} leads, {:?} after the fault",
        ha.masters[new].id,
        stopped_at.elapsed()
    );
    // In the stop case: how far the stopped master's log went before it
    // resumed (a stopped process writes nothing; the pipe is drained by
    // the time it resumes).
    let mut resumed_from = None;
    match fault {
        Fault::Kill => {}
        Fault::Stop => {
            let stop_for = Duration::from_secs(3 * LEASE_TTL);
            if let Some(rest) = stop_for.checked_sub(stopped_at.elapsed()) {
                std::thread::sleep(rest);
            }
            resumed_from = Some(log_lines(&ha.masters[old].proc.log).len());
            signal(pid, "CONT");
        }
        Fault::Term => {
            let status = wait_exit(
                &mut ha.masters[old].proc.child,
                SETTLE,
                "the terminated master exits",
            );
            ha.masters[old].gone = true;
            assert!(
                status.success(),
                "a master stopped by SIGTERM exits 0: {status:?}"
            );
        }
    }
    // The new leader leads; a resumed master follows it.
    ha.wait_roles(new);

    // More submits, through the new leader.
    let after = acked.load(Ordering::SeqCst);
    let since = Instant::now();
    until(SETTLE, "submits acknowledged by the new leader", || {
        (acked.load(Ordering::SeqCst) >= after + 3 && since.elapsed() >= AFTER_TAKEOVER)
            .then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let submits = match submitter.join() {
        Ok(s) => s,
        Err(e) => std::panic::resume_unwind(e),
    };
    let acked: Vec<(&str, &str)> = submits
        .iter()
        .filter_map(|s| Some((s.label.as_str(), s.task.as_deref()?)))
        .collect();
    eprintln!(
        "{case}: {} submits, {} acknowledged",
        submits.len(),
        acked.len()
    );

    // Everything settles: every task final, nothing allocated.
    let tasks = until(SETTLE, "every task final, nothing allocated", || {
        let tasks = ha.list(&["tasks", "--all"]);
        let done = tasks.iter().all(|t| {
            matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        });
        let listed: BTreeSet<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
        let all_there = acked.iter().all(|(_, id)| listed.contains(id));
        let free = ha.list(&["workers"]).iter().all(|w| {
            w["cpu_allocated"].as_f64() == Some(0.0)
                && w["memory_allocated_gb"].as_f64() == Some(0.0)
        });
        let settled = done && all_there && free;
        drop(listed);
        settled.then_some(tasks)
    });
    assert_eq!(ha.leader(), Some(new), "the new leader still leads");
    if fault == Fault::Stop {
        let (code, body) = ha.readyz(old).expect("the resumed master answers");
        assert!(
            code == 503 && body.contains("follower"),
            "the resumed master still follows: {code} {body}"
        );
    }

    // One task per submit: ids unique, each labelled by one submit.
    let ids: Vec<&str> = tasks.iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids.len(), tasks.len(), "every task has an id");
    assert!(
        repeated(&ids).is_empty(),
        "a task listed twice: {:?}",
        repeated(&ids)
    );
    let labels: Vec<&str> = tasks
        .iter()
        .map(|t| t["spec"]["env"][SUBMIT_LABEL].as_str().unwrap_or_default())
        .collect();
    let known: BTreeSet<&str> = submits.iter().map(|s| s.label.as_str()).collect();
    for (t, label) in tasks.iter().zip(&labels) {
        assert!(known.contains(label), "a task no submit made: {t}");
    }
    assert!(
        repeated(&labels).is_empty(),
        "one submit made several tasks: {:?}",
        repeated(&labels)
            .iter()
            .map(|l| ids
                .iter()
                .zip(&labels)
                .filter(|(_, m)| *m == l)
                .map(|(i, _)| *i)
                .collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );

    // Every acknowledged submit's task completed, once.
    let by_id: BTreeMap<&str, &Value> = ids.iter().copied().zip(tasks.iter()).collect();
    for (label, id) in &acked {
        let t = by_id[id];
        assert_eq!(
            t["spec"]["env"][SUBMIT_LABEL], *label,
            "the acknowledged task is its submit's: {t}"
        );
        assert_eq!(t["status"], "completed", "acknowledged task {id}: {t}");
        let c = causes(t);
        assert_eq!(
            c.iter().filter(|c| c.as_str() == "completed").count(),
            1,
            "task {id} completed once: {t}"
        );
        assert_eq!(c.last().map(String::as_str), Some("completed"), "{t}");
    }

    // No attempt started twice: in the workers' logs, and in what the runs
    // wrote.
    let starts: Vec<(String, u64)> = ha.workers.iter().flat_map(|w| accepted(&w.log)).collect();
    assert!(
        repeated(&starts).is_empty(),
        "attempts accepted twice: {:?}",
        repeated(&starts)
    );
    let marks: Vec<String> = std::fs::read_to_string(&ha.marks)
        .expect("the marker file")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        repeated(&marks).is_empty(),
        "attempts that ran twice: {:?}",
        repeated(&marks)
    );
    let started: BTreeSet<String> = starts.iter().map(|(t, a)| format!("{t} {a}")).collect();
    for (_, id) in &acked {
        let t = by_id[id];
        let run = format!("{id} {}", t["attempt"]);
        assert!(marks.contains(&run), "{run} ran: {t}");
        assert!(started.contains(&run), "{run} was accepted: {t}");
    }

    eprintln!(
        "{case}: {} tasks, {} runs accepted, {} marker lines",
        tasks.len(),
        starts.len(),
        marks.len()
    );

    // Nothing allocated, nothing to fix.
    let workers = ha.list(&["workers"]);
    assert_eq!(workers.len(), 2, "{workers:?}");
    for w in &workers {
        assert_eq!(w["health"], "active", "{w}");
        assert_eq!(w["cpu_allocated"].as_f64(), Some(0.0), "{w}");
        assert_eq!(w["memory_allocated_gb"].as_f64(), Some(0.0), "{w}");
    }
    let fixes = ha.json(&["reconcile"]);
    for field in ["corrections", "unknown_workers", "overcommitted"] {
        assert_eq!(
            fixes[field].as_array().map(Vec::len),
            Some(0),
            "reconcile found {field}: {fixes}"
        );
    }

    // The new leader took a later term, and no store write of its was
    // fenced (no master acted after it).
    let new_log = json_lines(&log_lines(&ha.masters[new].proc.log));
    let new_term = led_term(&new_log).expect("the new leader logged its term");
    assert!(new_term > old_term, "term {new_term} after {old_term}");
    assert_eq!(
        fenced_writes(&ha, new),
        0.0,
        "the new leader's writes were fenced"
    );
    // It took over the old one's lease once it expired, or at once when
    // it was released.
    let took_over = new_log.iter().any(|v| {
        message(v) == "took the lease over"
            && v["fields"]["from"]
                .as_str()
                .is_some_and(|f| f.contains(&old_id))
    });
    assert_eq!(
        took_over,
        fault != Fault::Term,
        "the new leader took over {old_id}'s expired lease (not after a release)"
    );
    let old_log = json_lines(&log_lines(&ha.masters[old].proc.log));
    match fault {
        Fault::Kill => {}
        Fault::Term => assert!(
            old_log.iter().any(|v| message(v) == "released the lease"),
            "the terminated master released the lease"
        ),
        Fault::Stop => {
            // The resumed master stepped down from its term, took no
            // submit and did not lead again.
            let resumed: Vec<Value> =
                json_lines(&log_lines(&ha.masters[old].proc.log)[resumed_from.unwrap_or(0)..]);
            assert!(
                resumed
                    .iter()
                    .any(|v| message(v) == "stopped acting" && term(v) == Some(old_term)),
                "the resumed master stepped down from term {old_term}"
            );
            let acted: Vec<&Value> = resumed
                .iter()
                .filter(|v| matches!(message(v), "leading" | "task submitted"))
                .collect();
            assert!(acted.is_empty(), "the resumed master acted: {acted:#?}");
            // What else it did is told, not asserted: a write or a call in
            // flight when it stopped completes as it resumes, and its line
            // cannot be told from one of a write sent after; one sent after
            // is refused unsent ("no longer leads") or fenced by the store.
            let count = |m: &str| resumed.iter().filter(|v| message(v) == m).count();
            let refused = resumed
                .iter()
                .filter(|v| {
                    v["fields"]["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("no longer leads"))
                })
                .count();
            eprintln!(
                "{case}: after resuming, {} store writes fenced, {refused} writes or calls \
                 refused unsent; lines: {} task placed, {} task finished, {} assignment delivered",
                fenced_writes(&ha, old),
                count("task placed"),
                count("task finished"),
                count("assignment delivered"),
            );
        }
    }

    // Every submit was acknowledged (the CLI waits up to 30 s for a leader).
    let refused: Vec<String> = submits
        .iter()
        .filter(|s| s.task.is_none())
        .map(|s| format!("{} exited {}: {}", s.label, s.code, s.stderr.trim()))
        .collect();
    assert!(refused.is_empty(), "submits not acknowledged: {refused:#?}");
    eprintln!("{case}: passed in {:?}", began.elapsed());
}

#[test]
fn kill_9_of_the_leader_loses_and_duplicates_nothing() {
    takeover_under_load("kill", Fault::Kill);
}

#[test]
fn a_leader_stopped_past_its_lease_steps_down_and_loses_nothing() {
    takeover_under_load("stop", Fault::Stop);
}

#[test]
fn sigterm_of_the_leader_hands_over_and_loses_nothing() {
    takeover_under_load("term", Fault::Term);
}
