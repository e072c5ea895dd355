//! Multi-process tests: a real `cloudai-master` and real `cloudai-worker`
//! processes talking gRPC over loopback, driven through the one-shot CLI
//! (`cloudai-master --master ADDR --token T --json <command>`).
//!
//! Every test owns its cluster (ports from `:0`, ids and pid files tagged
//! with the test name and this process's id), so the tests run in parallel.
//! A [`Cluster`] kills everything it started when dropped, including the
//! `sleep` processes its tasks ran (found through their pid files), so a
//! failing test leaves nothing behind; a panicking test prints the tail of
//! every process's log.
#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const MASTER_BIN: &str = env!("CARGO_BIN_EXE_cloudai-master");
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_cloudai-worker");

/// Bound on any single CLI invocation.
const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on "eventually" (registration, completion, ...).
const EVENTUALLY: Duration = Duration::from_secs(20);
/// The message a worker reports for each running task when it is signalled.
const SHUTDOWN_MESSAGE: &str = "worker was terminated while task was running";

// ---- small helpers ---------------------------------------------------------

/// Wall-clock milliseconds since the epoch (the master's timestamps use the
/// same origin).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Removes every setting the children could inherit from the developer's
/// shell (`CLOUDAI_TOKEN`, `CLOUDAI_MASTER`, ..., and `RUST_LOG`).
fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CLOUDAI_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG")
}

/// Polls `f` every 100 ms until it yields a value; panics after `timeout`.
/// An attempt that *starts* before the deadline may still succeed.
fn until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `pid` is a live process (a zombie or a missing entry is gone).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X') | Some('x'))
}

/// Whether `pid` is (still) a `sleep` process, so the guard never kills a
/// process that merely reused the pid.
fn is_sleep(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.starts_with(b"sleep\0"))
        .unwrap_or(false)
}

/// Sends `signal` (TERM, KILL, STOP, CONT) to `pid` with the shell's `kill`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -s {signal} {pid}")])
        .stdin(Stdio::null())
        .status()
        .expect("run sh -c kill");
    assert!(status.success(), "kill -s {signal} {pid} failed");
}

/// A child's whole stderr, line by line, kept for assertions and for the
/// failure report.
type Log = Arc<Mutex<Vec<String>>>;

fn drain(
    stream: impl Read + Send + 'static,
    log: Log,
    mut on_line: impl FnMut(&str) + Send + 'static,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            on_line(&line);
            log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
}

fn log_lines(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What a CLI invocation printed, and how it exited.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with piped output, killing it (and panicking) after `timeout`.
fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::io::Result<Out> {
    clean_env(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Out {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Waits (bounded) for `child` to exit.
fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    until(timeout, what, || child.try_wait().expect("try_wait"))
}

// ---- the cluster -----------------------------------------------------------

/// Liveness settings passed to the master.
#[derive(Debug, Clone, Copy)]
struct Timing {
    heartbeat_interval: f64,
    heartbeat_timeout: f64,
    lost_after: f64,
}

const FAST: Timing = Timing {
    heartbeat_interval: 0.3,
    heartbeat_timeout: 1.5,
    lost_after: 3.0,
};

struct Proc {
    name: String,
    child: Child,
    log: Log,
}

/// A master and its workers, as separate processes; everything is killed
/// on drop.
struct Cluster {
    tag: String,
    token: String,
    address: String,
    master: Proc,
    workers: Vec<Proc>,
    pidfiles: Vec<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for p in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.master))
        {
            // SIGKILL also ends a stopped (SIGSTOP) process.
            let _ = p.child.kill();
            let _ = p.child.wait();
            if panicking {
                let lines = log_lines(&p.log);
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("---- last log lines of {} ----", p.name);
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
        for f in &self.pidfiles {
            if let Some(pid) = read_pid(f) {
                if is_sleep(pid) {
                    let _ = Command::new("sh")
                        .args(["-c", &format!("kill -9 {pid} 2>/dev/null")])
                        .status();
                }
            }
            let _ = std::fs::remove_file(f);
        }
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Cluster {
    /// Starts a master on a free port (`--listen 127.0.0.1:0`) and reads the
    /// bound address from its JSON "master listening" log line.
    fn start(test: &str, timing: Timing) -> Cluster {
        Self::start_with(test, timing, &[])
    }

    fn start_with(test: &str, timing: Timing, extra: &[&str]) -> Cluster {
        let tag = format!("{test}-{}", std::process::id());
        let token = format!("tok-{tag}");
        let mut cmd = Command::new(MASTER_BIN);
        clean_env(&mut cmd);
        cmd.args(["--listen", "127.0.0.1:0", "--token", &token, "--log-json"])
            .args([
                "--heartbeat-interval",
                &timing.heartbeat_interval.to_string(),
            ])
            .args(["--heartbeat-timeout", &timing.heartbeat_timeout.to_string()])
            .args(["--lost-after", &timing.lost_after.to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn cloudai-master");
        let log = Log::default();
        let (tx, rx) = mpsc::channel::<String>();
        drain(
            child.stderr.take().expect("piped stderr"),
            log.clone(),
            move |line| {
                let Ok(v) = serde_json::from_str::<Value>(line) else {
                    return;
                };
                if v["fields"]["message"] == "master listening" {
                    if let Some(a) = v["fields"]["address"].as_str() {
                        let _ = tx.send(a.to_string());
                    }
                }
            },
        );
        let mut cluster = Cluster {
            tag,
            token,
            address: String::new(),
            master: Proc {
                name: "master".into(),
                child,
                log,
            },
            workers: Vec::new(),
            pidfiles: Vec::new(),
        };
        // The guard exists now: a panic below still kills the master.
        cluster.address = rx
            .recv_timeout(EVENTUALLY)
            .expect("the master logs \"master listening\" with its address");
        cluster
    }

    /// A worker id unique to this test run.
    fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    /// Starts a worker process; returns its index in `workers`.
    fn spawn_worker(&mut self, id: &str, cpu: f64) -> usize {
        let token = self.token.clone();
        self.spawn_worker_with_token(id, cpu, &token)
    }

    fn spawn_worker_with_token(&mut self, id: &str, cpu: f64, token: &str) -> usize {
        let mut cmd = Command::new(WORKER_BIN);
        clean_env(&mut cmd);
        cmd.args(["--master", &self.address, "--listen", "127.0.0.1:0"])
            .args(["--id", id, "--token", token])
            .args(["--cpu", &cpu.to_string(), "--mem", "8"])
            .args(["--heartbeat-interval", "0.3", "--shutdown-timeout", "5"])
            .env("RUST_LOG", "info")
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
            name: format!("worker {id} (#{})", self.workers.len()),
            child,
            log,
        });
        self.workers.len() - 1
    }

    /// Runs `cloudai-master --master ADDR --token T <args>`.
    fn cli(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(MASTER_BIN);
        cmd.args(["--master", &self.address, "--token", &self.token])
            .args(args);
        run_bounded(&mut cmd, CLI_TIMEOUT).expect("run the CLI")
    }

    /// Runs a `--json` command that must succeed, and parses its output.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert_eq!(out.code, 0, "{args:?} failed: {out:?}");
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out:?}"))
    }

    fn workers(&self) -> Vec<Value> {
        self.json(&["workers"])
            .as_array()
            .expect("workers --json is an array")
            .clone()
    }

    fn worker(&self, id: &str) -> Value {
        self.workers()
            .into_iter()
            .find(|w| w["id"] == id)
            .unwrap_or_else(|| panic!("worker {id} is not listed"))
    }

    fn tasks(&self) -> Vec<Value> {
        self.json(&["tasks"])
            .as_array()
            .expect("tasks --json is an array")
            .clone()
    }

    fn show(&self, task: &str) -> Value {
        self.json(&["show", task])
    }

    fn status(&self, task: &str) -> String {
        self.show(task)["task"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until every worker in `ids` is registered and active.
    fn wait_active(&self, ids: &[&str]) {
        until(EVENTUALLY, &format!("workers {ids:?} active"), || {
            let ws = self.workers();
            ids.iter()
                .all(|id| {
                    ws.iter().any(|w| {
                        w["id"] == *id && w["registered"] == true && w["health"] == "active"
                    })
                })
                .then_some(())
        });
    }

    /// Submits a task; returns its id.
    fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["task"];
        all.extend_from_slice(args);
        let v = self.json(&all);
        v["task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no task_id in {v}"))
            .to_string()
    }

    /// Submits `sh -c 'echo $$ > PIDFILE; exec sleep 300'` pinned to
    /// `worker`; returns the task id and the pid file.
    fn submit_sleep(&mut self, worker: &str, grace: &str) -> (String, PathBuf) {
        let n = self.pidfiles.len();
        let file = std::env::temp_dir().join(format!("cloudai-mp-{}-{n}.pid", self.tag));
        let _ = std::fs::remove_file(&file);
        // Registered before the task exists, so the guard always sees it.
        self.pidfiles.push(file.clone());
        let f = file.display();
        let script = format!("echo $$ > '{f}.tmp' && mv '{f}.tmp' '{f}' && exec sleep 300");
        let id = self.submit(&[
            "--on", worker, "--cpu", "1", "--mem", "0.1", "--grace", grace, "busybox", "--", "sh",
            "-c", &script,
        ]);
        (id, file)
    }

    /// Waits until the task runs and its `sleep` is alive; returns its pid.
    fn wait_sleeping(&self, task: &str, pidfile: &Path) -> u32 {
        let pid = until(EVENTUALLY, &format!("pid file of {task}"), || {
            read_pid(pidfile).filter(|p| is_sleep(*p) && pid_alive(*p))
        });
        assert_eq!(self.status(task), "running", "task {task}");
        pid
    }

    fn master_log(&self) -> Vec<Value> {
        log_lines(&self.master.log)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn cpu_allocated(w: &Value) -> f64 {
    w["cpu_allocated"].as_f64().expect("cpu_allocated")
}

// ---- the tests -------------------------------------------------------------

/// A task submitted with `task` runs on one of two workers, completes, and
/// its output is kept; `run` follows a task to its end.
#[test]
fn task_runs_to_completion_with_logs() {
    let mut c = Cluster::start("complete", FAST);
    let (w1, w2) = (c.id("w1"), c.id("w2"));
    c.spawn_worker(&w1, 2.0);
    c.spawn_worker(&w2, 2.0);
    c.wait_active(&[&w1, &w2]);

    let id = c.submit(&[
        "--cpu",
        "0.5",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo hi-from-task",
    ]);
    let view = until(EVENTUALLY, "task completed", || {
        let v = c.show(&id);
        (v["task"]["status"] == "completed").then_some(v)
    });
    let result = &view["result"];
    assert_eq!(result["status"], "completed", "{view}");
    assert_eq!(result["exit_code"], 0, "{view}");
    assert!(
        result["logs"]
            .as_str()
            .unwrap_or_default()
            .contains("hi-from-task"),
        "logs: {view}"
    );
    let ran_on = view["task"]["worker"].as_str().unwrap_or_default();
    assert!(ran_on == w1 || ran_on == w2, "ran on {ran_on:?}");

    // `run` submits and follows; exit 0 iff completed.
    let out = c.cli(&["run", "busybox", "--", "sh", "-c", "echo via-run"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("via-run"), "{out:?}");
    let out = c.cli(&["run", "busybox", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.code, 1, "a failed task makes `run` exit 1: {out:?}");

    let ws = c.workers();
    assert_eq!(ws.len(), 2, "{ws:?}");
    for w in &ws {
        assert_eq!(w["health"], "active", "{w}");
        assert_eq!(w["registered"], true, "{w}");
        assert_eq!(cpu_allocated(w), 0.0, "{w}");
        assert_eq!(w["cpu_capacity"], 2.0, "{w}");
    }
    let tasks = c.tasks();
    assert_eq!(tasks.len(), 3, "{tasks:?}");
}

/// `cancel` records `cancelled`, frees the worker's CPU at once, and the
/// process is gone within the grace period.
#[test]
fn cancel_stops_the_process_and_frees_resources() {
    let mut c = Cluster::start("cancel", FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);

    let grace = 2.0;
    let (id, pidfile) = c.submit_sleep(&w, &grace.to_string());
    let pid = c.wait_sleeping(&id, &pidfile);
    assert_eq!(cpu_allocated(&c.worker(&w)), 1.0);

    let t0 = Instant::now();
    let v = c.json(&["cancel", &id]);
    let rows = v.as_array().expect("cancel --json is an array");
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["task_id"], id.as_str(), "{v}");
    assert_eq!(rows[0]["outcome"], "stopped", "{v}");
    assert_eq!(rows[0]["worker"], w.as_str(), "{v}");

    let view = c.show(&id);
    assert_eq!(view["task"]["status"], "cancelled", "{view}");
    let wv = c.worker(&w);
    assert_eq!(cpu_allocated(&wv), 0.0, "CPU released at once: {wv}");
    assert_eq!(wv["tasks"], serde_json::json!([]), "{wv}");

    let deadline = Duration::from_secs_f64(grace + 1.0).saturating_sub(t0.elapsed());
    until(deadline, "the cancelled task's sleep is gone", || {
        (!pid_alive(pid)).then_some(())
    });

    // A second cancel is a conflict, and the status does not move.
    let out = c.cli(&["cancel", &id]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("error:"), "{out:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.status(&id), "cancelled");
}

/// SIGTERM on a worker with three running tasks: each is failed with the
/// shutdown message within 5 s, the CPU is released, no `sleep` is left,
/// and the worker exits 0.
#[test]
fn sigterm_on_worker_fails_its_tasks_and_stops_them() {
    let mut c = Cluster::start("sigterm", FAST);
    let w = c.id("w");
    let idx = c.spawn_worker(&w, 4.0);
    c.wait_active(&[&w]);

    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(c.submit_sleep(&w, "10"));
    }
    let pids: Vec<u32> = runs.iter().map(|(id, f)| c.wait_sleeping(id, f)).collect();
    assert_eq!(cpu_allocated(&c.worker(&w)), 3.0);

    let signalled_ms = now_ms();
    let signalled = Instant::now();
    signal(c.workers[idx].child.id(), "TERM");

    let views = until(Duration::from_secs(10), "all three tasks failed", || {
        let views: Vec<Value> = runs.iter().map(|(id, _)| c.show(id)).collect();
        views
            .iter()
            .all(|v| v["task"]["status"] == "failed")
            .then_some(views)
    });
    let seen_after = signalled.elapsed();
    for v in &views {
        assert_eq!(v["task"]["reason"], SHUTDOWN_MESSAGE, "{v}");
        assert_eq!(v["result"]["message"], SHUTDOWN_MESSAGE, "{v}");
        let finished = v["task"]["finished_at"].as_u64().expect("finished_at");
        // The master's clock, against ours: allow a little skew.
        assert!(
            finished <= signalled_ms + 5_000 + 250,
            "failed {} ms after the signal (observed after {seen_after:?}): {v}",
            finished.saturating_sub(signalled_ms)
        );
    }
    let wv = c.worker(&w);
    assert_eq!(cpu_allocated(&wv), 0.0, "{wv}");
    assert_eq!(wv["tasks"], serde_json::json!([]), "{wv}");

    let status = wait_exit(
        &mut c.workers[idx].child,
        Duration::from_secs(15),
        "the worker exits after SIGTERM",
    );
    assert_eq!(status.code(), Some(0), "worker exit status {status:?}");
    until(Duration::from_secs(5), "no sleep left", || {
        pids.iter().all(|p| !pid_alive(*p)).then_some(())
    });
    // Stays failed.
    for (id, _) in &runs {
        assert_eq!(c.status(id), "failed");
    }
}

/// `kill -9` on a worker: inactive after the heartbeat timeout (not before),
/// its task failed as "worker lost" after `lost_after`, its CPU released;
/// restarted with the same id it registers again.
#[test]
fn killed_worker_goes_inactive_then_lost_and_can_come_back() {
    let t = FAST;
    let (timeout_ms, lost_ms) = (
        (t.heartbeat_timeout * 1000.0) as u64,
        (t.lost_after * 1000.0) as u64,
    );
    let mut c = Cluster::start("kill9", t);
    let w = c.id("w");
    let idx = c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let (id, pidfile) = c.submit_sleep(&w, "1");
    c.wait_sleeping(&id, &pidfile);

    c.workers[idx].child.kill().expect("kill -9 the worker");
    let _ = c.workers[idx].child.wait();

    // Right after the kill: still active. The master's verdict is taken
    // during the call, so it is only conclusive if the call ended before
    // the last heartbeat we see plus the timeout.
    let first = c.worker(&w);
    let seen_at = now_ms();
    let last_hb = first["last_heartbeat_ms"]
        .as_u64()
        .expect("last_heartbeat_ms");
    if seen_at + 50 < last_hb + timeout_ms {
        assert_eq!(first["health"], "active", "{first}");
    } else {
        eprintln!("note: the first look after the kill came too late to be conclusive");
    }

    // Inactive by the timeout + 1.5 s, and never before the timeout.
    let limit = Duration::from_secs_f64(t.heartbeat_timeout + 1.5);
    let inactive = until(limit, "the killed worker inactive", || {
        let v = c.worker(&w);
        let at = now_ms();
        if v["health"] == "active" {
            return None;
        }
        assert!(
            at + 50 >= last_hb + timeout_ms,
            "{} before the timeout: {v}",
            v["health"]
        );
        Some(v)
    });
    assert_eq!(inactive["health"], "inactive", "{inactive}");

    // Lost after `lost_after`: the task fails, the CPU is released.
    let view = until(EVENTUALLY, "the task failed as worker lost", || {
        let v = c.show(&id);
        (v["task"]["status"] == "failed").then_some(v)
    });
    let reason = view["task"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("worker lost"), "{view}");
    let finished = view["task"]["finished_at"].as_u64().expect("finished_at");
    assert!(
        finished + 50 >= last_hb + lost_ms,
        "failed {} ms after the last heartbeat, before lost_after: {view}",
        finished.saturating_sub(last_hb)
    );
    let wv = c.worker(&w);
    assert_eq!(wv["health"], "lost", "{wv}");
    assert_eq!(cpu_allocated(&wv), 0.0, "{wv}");
    assert_eq!(wv["tasks"], serde_json::json!([]), "{wv}");

    // Restarted with the same id, it registers again.
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let wv = c.worker(&w);
    assert_eq!(cpu_allocated(&wv), 0.0, "{wv}");
    assert_eq!(c.status(&id), "failed");
    // The old `sleep` survived the kill in its own process group; the
    // process runtime has no way to find it again (a known limitation), so
    // it is not asserted on here and the guard kills it.
}

/// A frozen worker (SIGSTOP) is declared lost and its task failed; thawed
/// (SIGCONT), it is told to register again, re-registers, and is told to
/// stop the run it still has, which then ends. The task stays failed.
#[test]
fn frozen_worker_is_lost_and_told_to_stop_its_run_when_it_thaws() {
    let mut c = Cluster::start("freeze", FAST);
    let w = c.id("w");
    let idx = c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let (id, pidfile) = c.submit_sleep(&w, "1");
    let pid = c.wait_sleeping(&id, &pidfile);
    let attempt = c.show(&id)["task"]["attempt"].clone();

    let worker_pid = c.workers[idx].child.id();
    signal(worker_pid, "STOP");
    let view = until(EVENTUALLY, "the frozen worker's task failed", || {
        let v = c.show(&id);
        (v["task"]["status"] == "failed").then_some(v)
    });
    assert!(
        view["task"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("worker lost"),
        "{view}"
    );
    assert!(pid_alive(pid), "the frozen worker's child keeps running");
    assert_eq!(c.worker(&w)["health"], "lost");

    let thawed = Instant::now();
    signal(worker_pid, "CONT");
    c.wait_active(&[&w]);
    until(
        Duration::from_secs(10).saturating_sub(thawed.elapsed()),
        "the stale run's sleep is stopped after the worker thaws",
        || (!pid_alive(pid)).then_some(()),
    );

    let view = c.show(&id);
    assert_eq!(view["task"]["status"], "failed", "{view}");
    assert_eq!(view["task"]["attempt"], attempt, "{view}");
    let wv = c.worker(&w);
    assert_eq!(wv["health"], "active", "{wv}");
    assert_eq!(cpu_allocated(&wv), 0.0, "{wv}");
    assert_eq!(wv["tasks"], serde_json::json!([]), "{wv}");
    // It registered twice: at start and after thawing.
    let registrations = c
        .master_log()
        .iter()
        .filter(|l| {
            l["fields"]["message"] == "worker registered" && l["fields"]["worker"] == w.as_str()
        })
        .count();
    assert!(registrations >= 2, "registered {registrations} time(s)");
    // The worker keeps working afterwards.
    let out = c.cli(&[
        "run",
        "--on",
        &w,
        "busybox",
        "--",
        "sh",
        "-c",
        "echo after-thaw",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("after-thaw"), "{out:?}");
}

/// Calls with a wrong or missing token are refused and change nothing; a
/// worker with a wrong token never registers.
#[test]
fn wrong_or_missing_token_is_refused() {
    let mut c = Cluster::start("auth", FAST);
    let wrong = |args: &[&str]| {
        let mut cmd = Command::new(MASTER_BIN);
        cmd.args(["--master", &c.address, "--token", "not-the-token"])
            .args(args);
        run_bounded(&mut cmd, CLI_TIMEOUT).expect("run the CLI")
    };
    for args in [
        &["workers"][..],
        &["--json", "workers"][..],
        &["task", "busybox", "--", "true"][..],
    ] {
        let out = wrong(args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains("unauthenticated"), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    // No token on the request at all.
    let mut cmd = Command::new(MASTER_BIN);
    cmd.args([
        "--master",
        &c.address,
        "--insecure",
        "task",
        "busybox",
        "--",
        "true",
    ]);
    let out = run_bounded(&mut cmd, CLI_TIMEOUT).expect("run the CLI");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("unauthenticated"), "{out:?}");
    // No token configured: the client refuses before calling.
    let mut cmd = Command::new(MASTER_BIN);
    cmd.args(["--master", &c.address, "workers"]);
    let out = run_bounded(&mut cmd, CLI_TIMEOUT).expect("run the CLI");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--token"), "{out:?}");

    assert_eq!(c.tasks(), Vec::<Value>::new(), "no task was created");

    let w = c.id("w");
    let idx = c.spawn_worker_with_token(&w, 2.0, "not-the-token");
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            c.workers(),
            Vec::<Value>::new(),
            "a wrong-token worker is not listed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        c.workers[idx].child.try_wait().expect("try_wait").is_none(),
        "the worker keeps retrying"
    );
    until(EVENTUALLY, "the worker logs its refusal", || {
        log_lines(&c.workers[idx].log)
            .iter()
            .any(|l| l.contains("unauthenticated"))
            .then_some(())
    });
    let _ = c.workers[idx].child.kill();
}

/// Malformed input through the CLI fails with a clear message and creates
/// nothing.
#[test]
fn bad_input_is_refused_with_clear_errors() {
    let c = Cluster::start("badinput", FAST);
    let check = |args: &[&str], keyword: &str| {
        let out = c.cli(args);
        assert_ne!(out.code, 0, "{args:?} should fail: {out:?}");
        assert!(out.stderr.contains("error:"), "{args:?}: {out:?}");
        assert!(
            out.stderr.to_lowercase().contains(keyword),
            "{args:?}: expected {keyword:?} in {:?}",
            out.stderr
        );
    };
    check(
        &["task", "--cpu", "-1", "busybox", "--", "true"],
        "negative",
    );
    check(&["task", "--cpu", "nan", "busybox", "--", "true"], "finite");
    check(&["task", "--mem", "inf", "busybox", "--", "true"], "finite");
    check(&["task", "", "--", "true"], "image");
    check(&["show", "no-such-task"], "not found");
    check(&["cancel", "no-such-task"], "not found");
    check(&["register", "w9", "bad address"], "address");
    check(
        &["task", "--on", "no-such-worker", "busybox", "--", "true"],
        "not found",
    );

    // A 1 MiB command, in 64 KiB arguments (one argument may not exceed
    // 128 KiB on Linux); 200 KiB if the whole does not fit in ARG_MAX.
    let big = |total: usize| {
        let chunk = "x".repeat(64 * 1024);
        let mut args: Vec<String> = ["--master", &c.address, "--token", &c.token, "task"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["busybox".to_string(), "--".to_string(), "echo".to_string()]);
        args.extend(std::iter::repeat_n(chunk, total / (64 * 1024)));
        let mut cmd = Command::new(MASTER_BIN);
        cmd.args(&args);
        run_bounded(&mut cmd, CLI_TIMEOUT)
    };
    let out = match big(1 << 20) {
        Ok(out) => out,
        Err(e) if e.raw_os_error() == Some(7) => big(200 * 1024).expect("run the CLI"),
        Err(e) => panic!("run the CLI: {e}"),
    };
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("too large"), "{:?}", out.stderr);

    assert_eq!(c.tasks(), Vec::<Value>::new(), "no task was created");
    assert_eq!(c.workers(), Vec::<Value>::new(), "no worker was recorded");
}

/// The master refuses to serve without a token (or with inconsistent
/// liveness settings): exit code 2, quickly, with a message naming the fix.
#[test]
fn master_refuses_to_start_without_a_token() {
    let started = Instant::now();
    let mut cmd = Command::new(MASTER_BIN);
    cmd.args(["--listen", "127.0.0.1:0"]);
    let out = run_bounded(&mut cmd, Duration::from_secs(10)).expect("run the master");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--token"), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let mut cmd = Command::new(MASTER_BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--token", "t"]).args([
        "--heartbeat-timeout",
        "5",
        "--lost-after",
        "2",
    ]);
    let out = run_bounded(&mut cmd, Duration::from_secs(10)).expect("run the master");
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--lost-after"), "{out:?}");
}
