//! The multi-process test harness: a real `cloudai-master` and real
//! `cloudai-worker` processes talking gRPC over loopback, driven through the
//! one-shot CLI. Shared by `multi_process.rs` (process runtime),
//! `docker_cluster.rs` (Docker runtime) and others; `partition.rs` runs the
//! processes in network namespaces of its own (see [`netns`]).
#![allow(clippy::print_stderr, dead_code, unreachable_pub)]

pub mod netns;
pub mod output;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const MASTER_BIN: &str = env!("CARGO_BIN_EXE_cloudai-master");
pub const WORKER_BIN: &str = env!("CARGO_BIN_EXE_cloudai-worker");

/// Bound on any single CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on "eventually" (registration, completion, ...).
pub const EVENTUALLY: Duration = Duration::from_secs(20);
/// The message a worker reports for each running task when it is signalled.
pub const SHUTDOWN_MESSAGE: &str = "worker was terminated while task was running";

// ---- small helpers ---------------------------------------------------------

/// The MongoDB-wire server the Mongo tests use (`./scripts/test.sh` starts
/// one); they fail without it.
pub fn mongo_uri() -> String {
    match std::env::var("CLOUDAI_TEST_MONGO_URI") {
        Ok(uri) if !uri.trim().is_empty() => uri,
        _ => panic!(
            "CLOUDAI_TEST_MONGO_URI is not set: run ./scripts/test.sh, which starts a \
             MongoDB-wire server, or set CLOUDAI_TEST_MONGO_URI=mongodb://HOST:PORT"
        ),
    }
}

/// Wall-clock milliseconds since the epoch (the master's timestamps use the
/// same origin).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A command running `bin`, inside network namespace `netns` when one is
/// given (`ip netns exec NS bin`, which execs `bin`: the child is `bin`
/// itself, with its own pid).
pub fn command(bin: &str, netns: Option<&str>) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new(netns::tool("ip"));
            cmd.args(["netns", "exec", ns, bin]);
            cmd
        }
        None => Command::new(bin),
    }
}

/// Removes every setting the children could inherit from the developer's
/// shell (`CLOUDAI_TOKEN`, `CLOUDAI_MASTER`, ..., and `RUST_LOG`).
pub fn clean_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CLOUDAI_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG")
}

/// Polls `f` every 100 ms until it yields a value; panics after `timeout`.
/// An attempt that *starts* before the deadline may still succeed.
pub fn until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
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
pub fn pid_alive(pid: u32) -> bool {
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
/// Waits until process `pid` is gone.
pub fn until_gone(pid: u32, timeout: Duration, what: &str) {
    until(timeout, what, || (!pid_alive(pid)).then_some(()));
}

pub fn is_sleep(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.starts_with(b"sleep\0"))
        .unwrap_or(false)
}

/// Sends `signal` (TERM, KILL, STOP, CONT) to `pid` with the shell's `kill`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -s {signal} {pid}")])
        .stdin(Stdio::null())
        .status()
        .expect("run sh -c kill");
    assert!(status.success(), "kill -s {signal} {pid} failed");
}

/// A child's whole stderr, line by line, kept for assertions and for the
/// failure report.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn drain(
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

pub fn log_lines(log: &Log) -> Vec<String> {
    log.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What a CLI invocation printed, and how it exited.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout as the bytes it was.
    pub raw: Vec<u8>,
}

/// Runs `cmd` with piped output, killing it (and panicking) after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::io::Result<Out> {
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
            buf
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
    let raw = out.join().unwrap_or_default();
    Ok(Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&raw).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
        raw,
    })
}

/// Waits (bounded) for `child` to exit.
pub fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    until(timeout, what, || child.try_wait().expect("try_wait"))
}

// ---- the cluster -----------------------------------------------------------

/// Liveness settings passed to the master.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat_interval: f64,
    pub heartbeat_timeout: f64,
    pub lost_after: f64,
}

impl Timing {
    /// A grace for the workers under these timings (so they can stop
    /// their runs before the master declares them lost; see
    /// `cloudai_core::fence`): half the room the rule leaves, so that the
    /// other half keeps a busy test machine's slow heartbeats from
    /// fencing a worker; at most the workers' default of 30 s.
    pub fn max_grace(&self) -> f64 {
        let margin = 0.5 + self.lost_after / 20.0;
        let room = self.lost_after - margin - 2.0 * self.heartbeat_interval;
        ((room * 5.0).floor() / 10.0).clamp(0.0, 30.0)
    }
}

pub const FAST: Timing = Timing {
    heartbeat_interval: 0.3,
    heartbeat_timeout: 1.5,
    lost_after: 3.0,
};

pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: Log,
}

/// A master and its workers, as separate processes; everything is killed
/// on drop.
pub struct Cluster {
    pub tag: String,
    pub token: String,
    pub address: String,
    pub master: Proc,
    pub workers: Vec<Proc>,
    pub pidfiles: Vec<PathBuf>,
    /// The worker runtime (`--runtime`): `process` unless a test says otherwise.
    pub runtime: &'static str,
    /// Extra flags for every worker started from now on.
    pub worker_args: Vec<String>,
    /// Extra environment for every worker started from now on.
    pub worker_env: Vec<(String, String)>,
    /// The master's timings (workers get a `--max-grace` that fits them).
    pub timing: Timing,
    /// Holds each worker's `--state-dir` (`<root>/<worker id>` unless a
    /// test names another); removed with the cluster.
    pub state_root: PathBuf,
    /// The network namespace the master and the CLI run in (`None`: the
    /// test's own).
    pub netns: Option<String>,
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
        let _ = std::fs::remove_dir_all(&self.state_root);
    }
}

pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Cluster {
    /// Starts a master on a free port (`--listen 127.0.0.1:0`) and reads the
    /// bound address from its JSON "master listening" log line.
    pub fn start(test: &str, timing: Timing) -> Cluster {
        Self::start_with(test, timing, &[])
    }

    pub fn start_with(test: &str, timing: Timing, extra: &[&str]) -> Cluster {
        Self::start_at(test, timing, extra, None, "127.0.0.1")
    }

    /// Starts a master inside network namespace `netns` (when given),
    /// listening on a free port of `ip`; the CLI runs there too.
    pub fn start_at(
        test: &str,
        timing: Timing,
        extra: &[&str],
        netns: Option<&str>,
        ip: &str,
    ) -> Cluster {
        let tag = format!("{test}-{}", std::process::id());
        let token = format!("tok-{tag}");
        let (master, address) =
            spawn_master_in(netns, &token, &format!("{ip}:0"), timing, extra, "master");
        Cluster {
            token,
            address,
            master,
            workers: Vec::new(),
            pidfiles: Vec::new(),
            runtime: "process",
            worker_args: Vec::new(),
            worker_env: Vec::new(),
            timing,
            state_root: std::env::temp_dir().join(format!("cloudai-state-{tag}")),
            tag,
            netns: netns.map(str::to_string),
        }
    }

    /// A worker id unique to this test run.
    pub fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.tag)
    }

    /// Starts a worker process with its own state directory; returns its
    /// index in `workers`.
    pub fn spawn_worker(&mut self, id: &str, cpu: f64) -> usize {
        let token = self.token.clone();
        self.spawn_worker_with_token(id, cpu, &token)
    }

    pub fn spawn_worker_with_token(&mut self, id: &str, cpu: f64, token: &str) -> usize {
        let state = self.state_root.join(id);
        self.spawn_worker_in(id, cpu, token, &state)
    }

    /// Starts a worker process with state directory `state`.
    pub fn spawn_worker_in(&mut self, id: &str, cpu: f64, token: &str, state: &Path) -> usize {
        self.spawn_worker_at(id, cpu, token, state, None, "127.0.0.1")
    }

    /// Starts a worker process with state directory `state` inside network
    /// namespace `netns` (when given), listening on a free port of `ip`
    /// (which it advertises).
    pub fn spawn_worker_at(
        &mut self,
        id: &str,
        cpu: f64,
        token: &str,
        state: &Path,
        netns: Option<&str>,
        ip: &str,
    ) -> usize {
        let mut cmd = command(WORKER_BIN, netns);
        clean_env(&mut cmd);
        cmd.args(["--master", &self.address, "--listen", &format!("{ip}:0")])
            .args(["--id", id, "--token", token, "--runtime", self.runtime])
            .arg("--state-dir")
            .arg(state)
            .args(&self.worker_args)
            .args(
                Some([
                    "--max-grace".to_string(),
                    self.timing.max_grace().to_string(),
                ])
                .filter(|_| !self.worker_args.iter().any(|a| a == "--max-grace"))
                .into_iter()
                .flatten(),
            )
            .args(["--cpu", &cpu.to_string(), "--mem", "8"])
            .args(["--heartbeat-interval", "0.3", "--shutdown-timeout", "5"])
            .envs(self.worker_env.iter().map(|(k, v)| (k, v)))
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

    /// `kill -9` on worker process `idx`, reaped.
    pub fn kill_worker(&mut self, idx: usize) {
        let child = &mut self.workers[idx].child;
        child.kill().expect("kill -9 the worker");
        let _ = child.wait();
    }

    /// Runs `cloudai-master --master ADDR --token T <args>`.
    pub fn cli(&self, args: &[&str]) -> Out {
        let mut cmd = command(MASTER_BIN, self.netns.as_deref());
        cmd.args(["--master", &self.address, "--token", &self.token])
            .args(args);
        run_bounded(&mut cmd, CLI_TIMEOUT).expect("run the CLI")
    }

    /// Runs a `--json` command that must succeed, and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert_eq!(out.code, 0, "{args:?} failed: {out:?}");
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out:?}"))
    }

    pub fn workers(&self) -> Vec<Value> {
        self.json(&["workers"])
            .as_array()
            .expect("workers --json is an array")
            .clone()
    }

    pub fn worker(&self, id: &str) -> Value {
        self.workers()
            .into_iter()
            .find(|w| w["id"] == id)
            .unwrap_or_else(|| panic!("worker {id} is not listed"))
    }

    pub fn tasks(&self) -> Vec<Value> {
        self.json(&["tasks", "--all"])
            .as_array()
            .expect("tasks --json is an array")
            .clone()
    }

    pub fn show(&self, task: &str) -> Value {
        self.json(&["show", task])
    }

    pub fn status(&self, task: &str) -> String {
        self.show(task)["task"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits until every worker in `ids` is registered and active.
    pub fn wait_active(&self, ids: &[&str]) {
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

    /// Waits until `tasks` lists `task` with the short reason `word`, then
    /// checks that `show` gives the sentence, holding `sentence`.
    pub fn wait_reason(&self, task: &str, word: &str, sentence: &str) {
        until(EVENTUALLY, &format!("{task} listed as {word}"), || {
            let out = self.cli(&["tasks"]);
            out.stdout
                .lines()
                .any(|l| l.contains(task) && l.contains(word))
                .then_some(())
        });
        let shown = self.show(task);
        let waiting = shown["waiting"].as_str().unwrap_or_default();
        assert!(
            waiting.contains(sentence),
            "show gives the sentence: {shown}"
        );
    }

    /// Submits a task; returns its id.
    pub fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["task"];
        all.extend_from_slice(args);
        let v = self.json(&all);
        v["task_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no task_id in {v}"))
            .to_string()
    }

    /// Submits `sh -c 'echo $$ > PIDFILE; exec sleep 300'` pinned to
    /// `worker`, with `--no-requeue` (it fails at its worker's loss,
    /// drain or shutdown, as every task did before requeues: what the
    /// tests using it check); returns the task id and the pid file.
    pub fn submit_sleep(&mut self, worker: &str, grace: &str) -> (String, PathBuf) {
        let n = self.pidfiles.len();
        let file = std::env::temp_dir().join(format!("cloudai-mp-{}-{n}.pid", self.tag));
        let _ = std::fs::remove_file(&file);
        // Registered before the task exists, so the guard always sees it.
        self.pidfiles.push(file.clone());
        let f = file.display();
        let script = format!("echo $$ > '{f}.tmp' && mv '{f}.tmp' '{f}' && exec sleep 300");
        let id = self.submit(&[
            "--on",
            worker,
            "--cpu",
            "1",
            "--mem",
            "0.1",
            "--grace",
            grace,
            "--no-requeue",
            "busybox",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        (id, file)
    }

    /// Waits until the task runs and its `sleep` is alive; returns its pid.
    pub fn wait_sleeping(&self, task: &str, pidfile: &Path) -> u32 {
        let pid = until(EVENTUALLY, &format!("pid file of {task}"), || {
            read_pid(pidfile).filter(|p| is_sleep(*p) && pid_alive(*p))
        });
        assert_eq!(self.status(task), "running", "task {task}");
        pid
    }

    pub fn master_log(&self) -> Vec<Value> {
        log_lines(&self.master.log)
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

pub fn cpu_allocated(w: &Value) -> f64 {
    w["cpu_allocated"].as_f64().expect("cpu_allocated")
}

// ---- the tests -------------------------------------------------------------

/// Starts `cloudai-master` on `listen` with `timing` and `extra` flags and
/// returns it with the address it logs in its "master listening" line. A
/// master that does not start listening is killed and its log shown.
pub fn spawn_master(
    token: &str,
    listen: &str,
    timing: Timing,
    extra: &[&str],
    name: &str,
) -> (Proc, String) {
    spawn_master_in(None, token, listen, timing, extra, name)
}

/// [`spawn_master`] inside network namespace `netns`, when given.
pub fn spawn_master_in(
    netns: Option<&str>,
    token: &str,
    listen: &str,
    timing: Timing,
    extra: &[&str],
    name: &str,
) -> (Proc, String) {
    let mut cmd = command(MASTER_BIN, netns);
    clean_env(&mut cmd);
    cmd.args(["--listen", listen, "--token", token, "--log-json"])
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
    let mut proc = Proc {
        name: name.into(),
        child,
        log,
    };
    match rx.recv_timeout(EVENTUALLY) {
        Ok(address) => (proc, address),
        Err(_) => {
            let lines = log_lines(&proc.log);
            let _ = proc.child.kill();
            let _ = proc.child.wait();
            panic!("{name} did not start listening: {lines:#?}");
        }
    }
}

/// An HTTP/1.1 client, enough for the probes and the dashboard's API:
/// `GET url` (`http://host:port/path`), with the token if given: the
/// status code and the body.
pub fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = std::net::TcpStream::connect(host).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(CLI_TIMEOUT)).expect("timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read the reply");
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}
