//! The multi-process scenarios with `--runtime docker`: real master and
//! worker processes, tasks in real containers of the `FROM scratch` busybox
//! image that `scripts/docker-test-image.sh` builds (`./scripts/test.sh`
//! runs it first).
#![allow(clippy::print_stderr)]

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::*;

const IMAGE: &str = "cloudai-test-busybox:latest";

/// Containers carrying this worker's label; with `all`, stopped ones too.
fn listed(worker: &str, all: bool) -> Vec<String> {
    let flags = if all { "-aq" } else { "-q" };
    let out = Command::new("docker")
        .args([
            "ps",
            flags,
            "--filter",
            &format!("label=cloudai.worker_id={worker}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn containers(worker: &str) -> Vec<String> {
    listed(worker, true)
}

fn running(worker: &str) -> Vec<String> {
    listed(worker, false)
}

/// Removes whatever a failed test left behind.
struct Sweep(String);

impl Drop for Sweep {
    fn drop(&mut self) {
        for id in containers(&self.0) {
            let _ = Command::new("docker")
                .args(["rm", "-f", &id])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// `docker inspect`'s `.State.<field>` (`FinishedAt`, `StartedAt`) of
/// container `id`, in milliseconds since the epoch.
fn state_ms(id: &str, field: &str) -> u64 {
    let out = Command::new("docker")
        .args(["inspect", "-f", &format!("{{{{.State.{field}}}}}"), id])
        .stdin(Stdio::null())
        .output()
        .expect("docker inspect");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let at = humantime::parse_rfc3339(&text)
        .unwrap_or_else(|e| panic!("{field} of {id}: {text:?}: {e}"));
    at.duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// `docker inspect`'s `.State.ExitCode` of container `id`.
fn exit_code(id: &str) -> i64 {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.State.ExitCode}}", id])
        .stdin(Stdio::null())
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(-1)
}

/// Counts, every few tens of milliseconds until stopped, the running
/// containers of one task, and keeps the most seen at once.
struct Overlap {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

impl Overlap {
    fn watch(task: &str) -> Overlap {
        let stop = Arc::new(AtomicBool::new(false));
        let filter = format!("label=cloudai.task_id={task}");
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let (mut most, mut samples) = (0, 0);
                while !stop.load(Ordering::SeqCst) {
                    let out = Command::new("docker")
                        .args(["ps", "-q", "--filter", &filter])
                        .stdin(Stdio::null())
                        .output()
                        .expect("docker ps");
                    let n = String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .count();
                    most = most.max(n);
                    samples += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                (most, samples)
            }
        });
        Overlap { stop, thread }
    }

    /// The most running at once, and how many looks that took.
    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the overlap watcher")
    }
}

fn docker_cluster(test: &str) -> (Cluster, String, usize, Sweep) {
    docker_cluster_with(test, FAST, &[])
}

/// [`docker_cluster`] with the master's `timing` and extra worker flags.
fn docker_cluster_with(
    test: &str,
    timing: Timing,
    worker_args: &[&str],
) -> (Cluster, String, usize, Sweep) {
    let mut c = Cluster::start(test, timing);
    c.worker_args = worker_args.iter().map(|a| a.to_string()).collect();
    c.runtime = "docker";
    let w = c.id("d");
    let idx = c.spawn_worker(&w, 4.0);
    c.wait_active(&[&w]);
    let sweep = Sweep(w.clone());
    (c, w, idx, sweep)
}

/// Submits `sh -c script` pinned to `worker`, with `--no-requeue` (it
/// fails at its worker's loss or shutdown, as every task did before
/// requeues: what the tests using it check).
fn submit(c: &Cluster, worker: &str, mem: &str, script: &str) -> String {
    c.submit(&[
        "--on",
        worker,
        "--cpu",
        "0.5",
        "--mem",
        mem,
        "--grace",
        "1",
        "--no-requeue",
        IMAGE,
        "--",
        "sh",
        "-c",
        script,
    ])
}

#[test]
fn docker_cancel_stops_and_removes_the_container() {
    let (c, w, _, _sweep) = docker_cluster("dcancel");
    let t = submit(&c, &w, "0.1", "sleep 300");
    until(EVENTUALLY, "container running", || {
        (running(&w).len() == 1).then_some(())
    });
    let begin = Instant::now();
    let out = c.cli(&["cancel", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(c.status(&t), "cancelled");
    assert_eq!(
        cpu_allocated(&c.worker(&w)),
        0.0,
        "resources released once the worker confirmed the stop"
    );
    until(
        Duration::from_secs(4),
        "container removed within grace + 3 s",
        || containers(&w).is_empty().then_some(()),
    );
    assert!(
        begin.elapsed() < Duration::from_secs(5),
        "{:?}",
        begin.elapsed()
    );
}

/// Cancels `sh -c 'sleep 300'` with a `grace`-second grace on worker `w`;
/// returns the task's view once its run's end is recorded, and the time
/// from the cancel to then.
fn cancel_sleep(c: &Cluster, w: &str, grace: &str) -> (serde_json::Value, Duration) {
    let t = c.submit(&[
        "--on",
        w,
        "--cpu",
        "0.5",
        "--mem",
        "0.1",
        "--grace",
        grace,
        IMAGE,
        "--",
        "sh",
        "-c",
        "sleep 300",
    ]);
    until(EVENTUALLY, "container running", || {
        (running(w).len() == 1).then_some(())
    });
    let begin = Instant::now();
    let out = c.cli(&["cancel", &t]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = until(Duration::from_secs(40), "the run's end recorded", || {
        let v = c.show(&t);
        v["result"]["exit_code"].is_number().then_some(v)
    });
    let took = begin.elapsed();
    until(Duration::from_secs(5), "container removed", || {
        containers(w).is_empty().then_some(())
    });
    (v, took)
}

/// Under the daemon's init (the default) a cancel's SIGTERM reaches the
/// command: `sh -c 'sleep 300'` ends at once, far inside a 20 s grace, by
/// SIGTERM (the init exits 143 = 128 + 15), not by SIGKILL (137).
#[test]
fn docker_cancel_reaches_the_command_through_the_init_well_before_the_grace() {
    let (c, w, _, _sweep) = docker_cluster("dinit");
    let (v, took) = cancel_sleep(&c, &w, "20");
    assert_eq!(v["task"]["status"], "cancelled", "{v}");
    assert_eq!(v["result"]["status"], "cancelled", "{v}");
    assert_eq!(v["result"]["exit_code"], 143, "ended by SIGTERM: {v}");
    assert_eq!(v["result"]["signal"], serde_json::Value::Null, "{v}");
    assert_eq!(v["result"]["message"], "stopped on cancel", "{v}");
    assert!(
        took < Duration::from_secs(5),
        "the cancel must not wait out the 20 s grace; took {took:?}"
    );
}

/// With `--no-init` the command is PID 1 and the kernel drops the SIGTERM it
/// does not handle: the cancel waits out the grace and ends by SIGKILL.
#[test]
fn docker_no_init_cancel_waits_out_the_grace_and_kills() {
    // Timings that allow workers a grace of a few seconds.
    let timing = Timing {
        lost_after: 12.0,
        ..FAST
    };
    let (mut c, _, _, _sweep) = docker_cluster_with("dnoinit", timing, &[]);
    c.worker_args = vec!["--no-init".into()];
    let w = c.id("noinit");
    let idx = c.spawn_worker(&w, 1.0);
    c.wait_active(&[&w]);
    let _sweep_noinit = Sweep(w.clone());
    let log = log_lines(&c.workers[idx].log).join("\n");
    assert!(log.contains("without an init (--no-init)"), "{log}");
    let (v, took) = cancel_sleep(&c, &w, "2");
    assert_eq!(v["result"]["status"], "cancelled", "{v}");
    assert_eq!(v["result"]["exit_code"], 137, "ended by SIGKILL: {v}");
    assert!(
        took >= Duration::from_secs(2),
        "SIGTERM did nothing, so the whole grace passed; took {took:?}"
    );
}

/// A stand-in Docker daemon on a Unix socket that answers `/_ping`,
/// `/version` and `/info` as Docker 20.10 does when it cannot run its init
/// binary (`InitCommit` `N/A`); everything else is a 404.
fn daemon_without_init(socket: &std::path::Path) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind the socket");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut header = String::new();
                    while reader.read_line(&mut header).unwrap_or(0) > 2 {
                        header.clear();
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or_default();
                    let path = path.split('?').next().unwrap_or_default();
                    let (status, body) = if path.ends_with("/_ping") {
                        ("200 OK", "OK")
                    } else if path.ends_with("/version") {
                        ("200 OK", r#"{"ApiVersion":"1.41","Version":"20.10.24"}"#)
                    } else if path.ends_with("/info") {
                        (
                            "200 OK",
                            r#"{"InitBinary":"docker-init","InitCommit":{"ID":"N/A","Expected":"N/A"}}"#,
                        )
                    } else {
                        ("404 Not Found", r#"{"message":"not here"}"#)
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// On a daemon that has no init the worker does not start (with `--runtime
/// docker` or `auto`): it exits 2 saying so and naming `--no-init`; with
/// `--no-init` it passes the check.
#[test]
fn worker_refuses_a_daemon_without_init_unless_no_init() {
    let dir = std::env::temp_dir().join(format!("cloudai-noinit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("docker.sock");
    daemon_without_init(&socket);
    let worker = |runtime: &str, extra: &[&str]| {
        let mut cmd = Command::new(WORKER_BIN);
        cmd.args([
            "--insecure",
            "--listen",
            "127.0.0.1:0",
            "--runtime",
            runtime,
        ])
        .args(["--id", "noinit", "--state-dir"])
        .arg(dir.join(format!("state-{runtime}")))
        .args(extra)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()));
        cmd
    };
    for runtime in ["docker", "auto"] {
        let out = run_bounded(&mut worker(runtime, &[]), Duration::from_secs(20)).expect("run");
        assert_eq!(out.code, 2, "--runtime {runtime}: {out:?}");
        assert!(
            out.stderr.contains("has no working init")
                && out.stderr.contains("--no-init")
                && out.stderr.contains("docker-init"),
            "--runtime {runtime}: the error says what to do: {}",
            out.stderr
        );
    }
    // With --no-init there is no check: the worker starts (and is killed).
    let mut cmd = worker("docker", &["--no-init", "--master", "127.0.0.1:1"]);
    clean_env(&mut cmd);
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let log = Log::default();
    drain(child.stderr.take().expect("piped"), log.clone(), |_| {});
    let started = until(EVENTUALLY, "worker starting", || {
        let lines = log_lines(&log).join("\n");
        lines.contains("worker starting").then_some(lines)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(started.contains("without an init (--no-init)"), "{started}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn docker_sigterm_fails_running_tasks_and_removes_their_containers() {
    let (mut c, w, idx, _sweep) = docker_cluster("dsigterm");
    let tasks: Vec<String> = (0..3).map(|_| submit(&c, &w, "0.1", "sleep 300")).collect();
    until(EVENTUALLY, "three containers running", || {
        (running(&w).len() == 3).then_some(())
    });
    signal(c.workers[idx].child.id(), "TERM");
    let status = wait_exit(
        &mut c.workers[idx].child,
        Duration::from_secs(15),
        "worker exits",
    );
    assert!(status.success(), "{status:?}");
    for t in &tasks {
        let v = c.show(t);
        assert_eq!(v["task"]["status"], "failed", "{v}");
        assert_eq!(v["result"]["message"], SHUTDOWN_MESSAGE, "{v}");
    }
    assert_eq!(cpu_allocated(&c.worker(&w)), 0.0);
    assert!(
        containers(&w).is_empty(),
        "containers left: {:?}",
        containers(&w)
    );
}

/// `kill -9` on a worker and a restart at once: the new worker adopts the
/// container and reports its end. The restart has to renew the lease
/// before the watchdog stops the container at the fence, so the master's
/// timings leave it several seconds (under `FAST` and the largest grace
/// the fence is 0.65 s past the last heartbeat).
#[test]
fn docker_worker_killed_and_restarted_adopts_its_running_container() {
    let timing = Timing {
        lost_after: 10.0,
        ..FAST
    };
    let (mut c, w, idx, _sweep) = docker_cluster_with("dadopt", timing, &["--max-grace", "1"]);
    let t = submit(&c, &w, "0.1", "sleep 4; echo finished-after-restart");
    until(EVENTUALLY, "container running", || {
        (running(&w).len() == 1).then_some(())
    });
    c.kill_worker(idx);
    assert_eq!(running(&w).len(), 1, "the container outlives the worker");
    c.spawn_worker(&w, 4.0);
    c.wait_active(&[&w]);
    let v = until(EVENTUALLY, "task completed", || {
        let v = c.show(&t);
        (v["task"]["status"] != "running").then_some(v)
    });
    assert_eq!(v["task"]["status"], "completed", "{v}");
    assert_eq!(
        v["task"]["attempt"], 1,
        "the adopted run finished; no second run: {v}"
    );
    assert!(
        v["result"]["logs"]
            .as_str()
            .unwrap_or("")
            .contains("finished-after-restart"),
        "{v}"
    );
    until(Duration::from_secs(5), "no container left", || {
        containers(&w).is_empty().then_some(())
    });
}

/// The container of a task whose worker died is stopped by the watchdog
/// (see the next test) and left for the worker: when it returns, it
/// removes it.
#[test]
fn docker_orphan_of_a_failed_over_task_is_removed_when_the_worker_returns() {
    let (mut c, w, idx, _sweep) = docker_cluster("dorphan");
    let t = submit(&c, &w, "0.1", "sleep 300");
    until(EVENTUALLY, "container running", || {
        (running(&w).len() == 1).then_some(())
    });
    c.kill_worker(idx);
    until(EVENTUALLY, "task failed over", || {
        (c.status(&t) == "failed").then_some(())
    });
    assert_eq!(running(&w).len(), 0, "the watchdog stopped the orphan");
    assert_eq!(containers(&w).len(), 1, "and left it for the worker");
    c.spawn_worker(&w, 4.0);
    c.wait_active(&[&w]);
    until(EVENTUALLY, "orphan stopped and removed", || {
        containers(&w).is_empty().then_some(())
    });
    assert_eq!(c.status(&t), "failed");
}

/// `kill -9` on a Docker worker that stays down: its watchdog stops the
/// container (SIGTERM, through the init) once the worker's lease runs out,
/// at its fence, while the master still counts the worker in; after
/// `lost_after` the master requeues the task and it runs on a second
/// worker. Two containers of the task never run at once: the first
/// finished before the master declared its worker lost, and before the
/// second started.
#[test]
fn docker_a_dead_workers_container_is_stopped_before_the_master_may_run_its_task_again() {
    let (mut c, w, idx, _sweep) = docker_cluster("dlease");
    let lost_ms = (c.timing.lost_after * 1000.0) as u64;
    let t = c.submit(&[
        "--cpu",
        "0.5",
        "--mem",
        "0.1",
        "--grace",
        "1",
        IMAGE,
        "--",
        "sh",
        "-c",
        "sleep 300",
    ]);
    let first = until(EVENTUALLY, "the container running", || {
        running(&w).into_iter().next()
    });
    // The second worker comes once the task is placed on the first.
    let w2 = c.id("d2");
    c.spawn_worker(&w2, 4.0);
    c.wait_active(&[&w2]);
    let _sweep2 = Sweep(w2.clone());
    let overlap = Overlap::watch(&t);

    c.kill_worker(idx);
    let killed = Instant::now();
    until(
        Duration::from_secs_f64(c.timing.lost_after),
        "the dead worker's container stopped",
        || (!running(&w).contains(&first)).then_some(()),
    );
    let seen_stopped = now_ms();
    let stopped_after = killed.elapsed();
    let health = c.worker(&w)["health"].clone();
    assert!(
        health == "active" || health == "inactive",
        "stopped before the master declared the worker lost: {health}"
    );

    let v = until(EVENTUALLY, "attempt 2 running on the second worker", || {
        let v = c.show(&t);
        (v["task"]["attempt"] == 2
            && v["task"]["status"] == "running"
            && v["task"]["worker"] == *w2)
            .then_some(v)
    });
    let second = until(EVENTUALLY, "its container running", || {
        running(&w2).into_iter().next()
    });
    let second_seen = Instant::now();
    let lost = &v["task"]["history"][0];
    assert_eq!(lost["worker"], *w, "{v}");
    assert_eq!(lost["cause"], "worker_lost", "{v}");
    let lost_at = lost["ended_at"].as_u64().expect("ended_at");
    let last_hb = c.worker(&w)["last_heartbeat_ms"]
        .as_u64()
        .expect("last_heartbeat_ms");
    assert!(
        seen_stopped < last_hb + lost_ms,
        "docker ps showed it stopped {} ms after the last heartbeat, past lost_after",
        seen_stopped - last_hb
    );
    let finished = state_ms(&first, "FinishedAt");
    let started = state_ms(&second, "StartedAt");
    eprintln!(
        "container stopped {} ms after the last heartbeat ({stopped_after:?} after the kill, seen by docker ps);          worker lost {} ms after it; attempt 2 started {} ms after the stop",
        finished as i64 - last_hb as i64,
        lost_at as i64 - last_hb as i64,
        started as i64 - finished as i64
    );
    assert!(
        finished < lost_at,
        "the first container finished ({finished}) before the master declared its worker lost ({lost_at})"
    );
    assert!(
        finished < started,
        "the first ended before the second started"
    );
    assert_eq!(
        exit_code(&first),
        143,
        "stopped by SIGTERM through the init"
    );
    // The live worker's renewals keep its run going past its first lease
    // (0.65 s here) and several more.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(second_seen.elapsed()));
    assert!(
        running(&w2).contains(&second),
        "the second worker renews its lease: its container runs on"
    );
    let (most, samples) = overlap.finish();
    assert_eq!(
        most, 1,
        "never two containers of the task running at once ({samples} looks)"
    );
    let out = c.cli(&["cancel", &t]);
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn docker_memory_limit_is_enforced_and_reported() {
    let (c, w, _, _sweep) = docker_cluster("doom");
    // `tail` keeps the whole newline-free stream in memory: far over 20 MB.
    let t = submit(
        &c,
        &w,
        "0.02",
        "head -c 200000000 /dev/zero | tail > /dev/null",
    );
    // Reaching the limit can take a while under cgroup v1 on a loaded
    // host (seen: 20–43 s with the other Docker tests running).
    let v = until(Duration::from_secs(120), "task ended", || {
        let v = c.show(&t);
        (v["task"]["status"] != "running" && v["task"]["status"] != "pending").then_some(v)
    });
    assert_eq!(v["task"]["status"], "failed", "{v}");
    let message = v["result"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("memory limit"),
        "the reason names the limit: {v}"
    );
}

/// The output scenario in containers: the worker follows the daemon's log
/// stream, and `run`, `monitor --offset`, `logs` and `monitor --tail` get
/// every byte once with stdout and stderr apart.
#[test]
fn docker_task_output_comes_back_byte_for_byte() {
    let (c, w, _, _sweep) = docker_cluster("doutput");
    output::follows_every_byte_once(&c, &|script| {
        [
            "--on", &w, "--cpu", "0.5", "--mem", "0.1", IMAGE, "--", "sh", "-c", script,
        ]
        .map(String::from)
        .to_vec()
    });
}

/// The test registry's address (`./scripts/test.sh` starts one).
fn registry() -> String {
    std::env::var("CLOUDAI_TEST_REGISTRY")
        .expect("CLOUDAI_TEST_REGISTRY is not set: run ./scripts/test.sh, which starts a registry")
}

/// Pushes the test image to the registry as `name:tag` and removes the
/// local tag, so a worker must pull it. Returns the image reference.
fn pushed(name: &str, tag: &str) -> String {
    let image = format!("{}/{name}:{tag}", registry());
    for args in [
        vec!["tag", IMAGE, image.as_str()],
        vec!["push", image.as_str()],
        vec!["rmi", image.as_str()],
    ] {
        let out = Command::new("docker")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("docker");
        assert!(out.status.success(), "docker {args:?}: {out:?}");
    }
    image
}

/// A missing image is pulled from a real registry, with its progress in
/// the worker's log; a pull that outlasts `--pull-timeout` fails its task
/// with a reason that says so.
#[test]
fn docker_pulls_a_missing_image_and_a_slow_pull_fails_its_task_clearly() {
    let (mut c, w, idx, _sweep) = docker_cluster("dpull");
    let image = pushed(&format!("cloudai-pull-{}", c.tag), "1");
    let t = c.submit(&[
        "--on",
        &w,
        "--cpu",
        "0.5",
        "--mem",
        "0.1",
        &image,
        "--",
        "sh",
        "-c",
        "echo pulled-and-ran",
    ]);
    let v = until(EVENTUALLY, "the task ran from the pulled image", || {
        let v = c.show(&t);
        (v["task"]["status"] == "completed").then_some(v)
    });
    assert!(
        v["result"]["logs"]
            .as_str()
            .unwrap_or_default()
            .contains("pulled-and-ran"),
        "{v}"
    );
    let log = log_lines(&c.workers[idx].log).join("\n");
    assert!(
        log.contains("pulling it") && log.contains("image pulled"),
        "the pull is in the log: {log}"
    );
    assert!(
        v["result"]["usage"]["pull_ms"].as_u64().is_some(),
        "the pull's time is in the run's usage: {v}"
    );

    c.worker_args = vec!["--pull-timeout".into(), "1ms".into()];
    let slow = c.id("slow");
    c.spawn_worker(&slow, 1.0);
    c.wait_active(&[&slow]);
    let _sweep_slow = Sweep(slow.clone());
    let image = pushed(&format!("cloudai-pull-{}", c.tag), "2");
    let t = c.submit(&[
        "--on", &slow, "--cpu", "0.5", "--mem", "0.1", &image, "--", "true",
    ]);
    let v = until(EVENTUALLY, "the task failed", || {
        let v = c.show(&t);
        (v["task"]["status"] == "failed").then_some(v)
    });
    let reason = v["task"]["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("could not be pulled")
            && reason.contains("within 1ms")
            && reason.contains("--pull-timeout"),
        "the reason says the pull timed out: {v}"
    );
    for tag in ["1", "2"] {
        let _ = Command::new("docker")
            .args([
                "rmi",
                &format!("{}/cloudai-pull-{}:{tag}", registry(), c.tag),
            ])
            .output();
    }
}

/// While a pull hangs (a "registry" that accepts connections and never
/// answers), `tasks` says `Pulling` and `show` says why; at the pull
/// timeout the task fails, saying so.
#[test]
fn docker_a_hanging_pull_shows_pulling_until_its_timeout() {
    let (mut c, _, _, _sweep) = docker_cluster("dhang");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    c.worker_args = vec!["--pull-timeout".into(), "6s".into()];
    let w = c.id("hang");
    c.spawn_worker(&w, 1.0);
    c.wait_active(&[&w]);
    let _sweep_hang = Sweep(w.clone());
    let image = format!("127.0.0.1:{port}/never:1");
    let t = c.submit(&[
        "--on", &w, "--cpu", "0.5", "--mem", "0.1", &image, "--", "true",
    ]);
    c.wait_reason(&t, "Pulling", "pulling its image");
    let v = until(EVENTUALLY, "the task failed at the pull timeout", || {
        let v = c.show(&t);
        (v["task"]["status"] == "failed").then_some(v)
    });
    let reason = v["task"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("within 6s"), "{v}");
}

/// Bind mounts only from directories a worker allows: a task mounting
/// from a directory no worker allows is refused at submit (exit 65); with
/// one worker allowing it, the task is placed there and reads the file; a
/// symbolic link inside the allowed directory that leads out of it is
/// refused by the worker, which judges the resolved path.
#[test]
fn docker_bind_mounts_only_from_directories_a_worker_allows() {
    let (mut c, plain, _, _sweep) = docker_cluster("dmount");
    let allowed = c.state_root.join("allowed");
    std::fs::create_dir_all(allowed.join("in")).expect("mkdir");
    std::fs::write(allowed.join("in/data.txt"), "from the host\n").expect("write");
    std::os::unix::fs::symlink("/etc", allowed.join("escape")).expect("symlink");
    let mount = |sub: &str| format!("{}:/in:ro", allowed.join(sub).display());
    let task = |c: &Cluster, mount: &str| {
        c.cli(&[
            "--json",
            "task",
            "--cpu",
            "0.5",
            "--mem",
            "0.1",
            "--mount",
            mount,
            IMAGE,
            "--",
            "cat",
            "/in/data.txt",
        ])
    };

    let out = task(&c, &mount("in"));
    assert_eq!(out.code, 65, "no worker allows it: {out:?}");
    assert!(out.stdout.contains("allows bind mounts"), "{out:?}");

    c.worker_args = vec!["--allow-mount".into(), allowed.display().to_string()];
    let open = c.id("open");
    c.spawn_worker(&open, 4.0);
    c.wait_active(&[&open]);
    let _sweep_open = Sweep(open.clone());
    let out = task(&c, &mount("in"));
    assert_eq!(out.code, 0, "{out:?}");
    let id: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let id = id["task_id"].as_str().expect("task id").to_string();
    let v = until(EVENTUALLY, "the mounting task completed", || {
        let v = c.show(&id);
        (v["task"]["status"] == "completed").then_some(v)
    });
    assert_eq!(
        v["task"]["worker"],
        open.as_str(),
        "placed where allowed, not on {plain}: {v}"
    );
    assert_eq!(v["result"]["logs"], "from the host\n", "{v}");

    let out = task(&c, &mount("escape"));
    assert_eq!(
        out.code, 0,
        "lexically under the allowed directory: {out:?}"
    );
    let id: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let id = id["task_id"].as_str().expect("task id").to_string();
    let v = until(EVENTUALLY, "the escaping task failed", || {
        let v = c.show(&id);
        (v["task"]["status"] == "failed").then_some(v)
    });
    let reason = v["task"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refuses to mount") && reason.contains("/etc"),
        "{v}"
    );
}
