//! The [`ContainerRuntime`] conformance suite.
//!
//! Every command is a plain POSIX `sh` command available in busybox, so the
//! suite runs against the local process runtime as well as a container
//! runtime whose test image holds only a static busybox. Each case uses
//! unique names and labels and removes what it started, so cases can share
//! one daemon (and run concurrently with other test runs against it).
//!
//! Long-running programs bound themselves (at most about a minute), so a case
//! that panics before its cleanup leaves nothing running for long. Every wait
//! is bounded by a timeout, so a broken runtime fails instead of hanging.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::model::{ContainerOption, ContainerOptions, Resources};
use crate::runtime::{
    ContainerId, ContainerRuntime, ContainerSpec, ExitStatus, OutputChunk, OutputStream,
    LABEL_TASK, LABEL_WORKER,
};
use crate::Error;

/// Bound on anything that should finish quickly (a start, a short program,
/// a log read), generous enough for a slow container daemon.
const QUICK: Duration = Duration::from_secs(60);

/// A loop body that sleeps for up to about a minute and then ends, so that a
/// case that panics before cleanup leaves nothing running for long.
const SLEEP_LOOP: &str = "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";

/// Runs every case, each on a fresh runtime from `new_runtime`. `image` is the
/// image to run the busybox commands in (ignored by runtimes that run local
/// processes).
pub async fn run_all<B, Fut>(new_runtime: B, image: &str)
where
    B: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn ContainerRuntime>>,
{
    wait_reports_the_exit_code(new_runtime().await, image).await;
    output_keeps_stdout_and_stderr_apart(new_runtime().await, image).await;
    output_is_whole_and_read_again_from_the_start(new_runtime().await, image).await;
    output_is_followed_while_it_runs(new_runtime().await, image).await;
    stop_sends_sigterm_first(new_runtime().await, image).await;
    stop_kills_after_the_grace_period(new_runtime().await, image).await;
    stop_and_remove_are_idempotent(new_runtime().await, image).await;
    list_finds_containers_by_label(new_runtime().await, image).await;
    env_is_passed(new_runtime().await, image).await;
    container_options_are_applied_or_refused(new_runtime().await, image).await;
    unknown_program_fails_cleanly(new_runtime().await, image).await;
    unknown_id_is_not_found(new_runtime().await, image).await;
}

/// A suffix unique across cases, runtimes, processes and (practically) test
/// runs sharing one daemon.
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000_000
    )
}

/// A spec running `sh -c script` with unique name and task label, worker
/// label `conformance`.
fn sh(case: &str, image: &str, script: &str) -> ContainerSpec {
    let u = unique();
    ContainerSpec {
        name: format!("cloudai-conf-{case}-{u}"),
        image: image.to_string(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        limits: Resources::ZERO,
        gpus: Vec::new(),
        options: ContainerOptions::default(),
        labels: BTreeMap::from([
            (LABEL_TASK.to_string(), format!("{case}-{u}")),
            (LABEL_WORKER.to_string(), "conformance".to_string()),
        ]),
        time_limit: None,
        grace: Duration::ZERO,
        lease: None,
    }
}

async fn start(rt: &dyn ContainerRuntime, spec: &ContainerSpec) -> ContainerId {
    match tokio::time::timeout(QUICK, rt.start(spec)).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => panic!("{}: start {:?} failed: {e:?}", rt.name(), spec.command),
        Err(_) => panic!(
            "{}: start {:?} did not return in {QUICK:?}",
            rt.name(),
            spec.command
        ),
    }
}

async fn wait(rt: &dyn ContainerRuntime, id: &ContainerId) -> ExitStatus {
    match tokio::time::timeout(QUICK, rt.wait(id)).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => panic!("{}: wait {id} failed: {e:?}", rt.name()),
        Err(_) => panic!("{}: wait {id} did not return in {QUICK:?}", rt.name()),
    }
}

/// The container's whole output (it must have exited, or exit soon),
/// checking that each chunk starts where the one before ended.
async fn output(rt: &dyn ContainerRuntime, id: &ContainerId) -> Vec<OutputChunk> {
    let read = async {
        let mut feed = rt.output(id).await?;
        let mut got: Vec<OutputChunk> = Vec::new();
        while let Some(c) = feed.recv().await {
            let c = c?;
            let expected = got.last().map_or(0, OutputChunk::end);
            assert_eq!(
                c.offset,
                expected,
                "{}: {id}: a chunk out of place",
                rt.name()
            );
            got.push(c);
        }
        Ok::<_, Error>(got)
    };
    match tokio::time::timeout(QUICK, read).await {
        Ok(Ok(got)) => got,
        Ok(Err(e)) => panic!("{}: output {id} failed: {e:?}", rt.name()),
        Err(_) => panic!("{}: output {id} did not end in {QUICK:?}", rt.name()),
    }
}

/// The text of `chunks` written to `stream` (or to either).
fn text_of(chunks: &[OutputChunk], stream: Option<OutputStream>) -> String {
    let bytes: Vec<u8> = chunks
        .iter()
        .filter(|c| stream.is_none_or(|s| s == c.stream))
        .flat_map(|c| c.data.iter().copied())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

async fn stop(rt: &dyn ContainerRuntime, id: &ContainerId, grace: Duration) {
    match tokio::time::timeout(grace + QUICK, rt.stop(id, grace)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{}: stop {id} failed: {e:?}", rt.name()),
        Err(_) => panic!(
            "{}: stop {id} did not return in {:?}",
            rt.name(),
            grace + QUICK
        ),
    }
}

async fn remove(rt: &dyn ContainerRuntime, id: &ContainerId) {
    match tokio::time::timeout(QUICK, rt.remove(id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{}: remove {id} failed: {e:?}", rt.name()),
        Err(_) => panic!("{}: remove {id} did not return in {QUICK:?}", rt.name()),
    }
}

/// Follows the output until it contains `needle` (a program announcing it
/// is ready, for example after installing its signal handler).
async fn wait_for_output(rt: &dyn ContainerRuntime, id: &ContainerId, needle: &str) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(QUICK, async {
        let mut feed = rt.output(id).await.expect("output");
        while let Some(c) = feed.recv().await {
            seen.push(c.expect("a chunk"));
            if text_of(&seen, None).contains(needle) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "{}: {id} did not print {needle:?} within {QUICK:?}; output so far: {:?}",
        rt.name(),
        text_of(&seen, None)
    );
}

/// `wait` reports the exit code; concurrent waiters all get it; waiting again
/// after the exit returns at once; exit 0 is `success()`.
pub async fn wait_reports_the_exit_code(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let id = start(rt, &sh("exit3", image, "sleep 0.3; exit 3")).await;
    let (a, b) = tokio::join!(wait(rt, &id), wait(rt, &id));
    assert_eq!(a.code, Some(3), "wait must report exit code 3: {a:?}");
    assert_eq!(b, a, "concurrent waiters must all get the same status");
    assert!(!a.success(), "exit 3 is not success");
    let again = tokio::time::timeout(Duration::from_secs(10), rt.wait(&id))
        .await
        .expect("waiting on an exited container must return promptly")
        .expect("wait after exit");
    assert_eq!(
        again, a,
        "waiting after the exit must report the same status"
    );
    remove(rt, &id).await;

    let id = start(rt, &sh("exit0", image, "exit 0")).await;
    let status = wait(rt, &id).await;
    assert!(status.success(), "exit 0 must be success: {status:?}");
    assert_eq!(
        status.signal, None,
        "a normal exit has no signal: {status:?}"
    );
    assert!(!status.oom_killed, "exit 0 was not an OOM kill");
    remove(rt, &id).await;
}

/// stdout and stderr are both captured, each chunk marked with its stream,
/// at offsets that run on from 0 without a gap.
pub async fn output_keeps_stdout_and_stderr_apart(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let script = "echo to-stdout; sleep 0.2; echo to-stderr >&2; sleep 0.2; echo again";
    let id = start(rt, &sh("streams", image, script)).await;
    let status = wait(rt, &id).await;
    assert!(status.success(), "echo must succeed: {status:?}");
    let got = output(rt, &id).await;
    assert_eq!(
        text_of(&got, Some(OutputStream::Stdout)),
        "to-stdout\nagain\n",
        "stdout, in order: {got:?}"
    );
    assert_eq!(
        text_of(&got, Some(OutputStream::Stderr)),
        "to-stderr\n",
        "stderr apart: {got:?}"
    );
    assert_eq!(
        text_of(&got, None),
        "to-stdout\nto-stderr\nagain\n",
        "the streams interleave in write order: {got:?}"
    );
    remove(rt, &id).await;
}

/// The output comes whole and in order, each byte once at its offset, and
/// a second reader from the start gets the same.
pub async fn output_is_whole_and_read_again_from_the_start(
    rt: Arc<dyn ContainerRuntime>,
    image: &str,
) {
    let rt = rt.as_ref();
    let script = "i=1; while [ $i -le 20000 ]; do echo line-$i; i=$((i+1)); done";
    let id = start(rt, &sh("whole", image, script)).await;
    let first = output(rt, &id).await;
    let status = wait(rt, &id).await;
    assert!(
        status.success(),
        "the printing loop must succeed: {status:?}"
    );
    let want: String = (1..=20000).map(|i| format!("line-{i}\n")).collect();
    let got = text_of(&first, None);
    assert!(
        got == want,
        "every line once, in order: {} bytes of {}",
        got.len(),
        want.len()
    );
    let again = text_of(&output(rt, &id).await, None);
    assert!(
        again == want,
        "a second reader from the start gets the same: {} bytes",
        again.len()
    );
    remove(rt, &id).await;
}

/// The output arrives while the program runs, not only at its end.
pub async fn output_is_followed_while_it_runs(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let script = "echo first; sleep 1; echo second";
    let id = start(rt, &sh("live", image, script)).await;
    let mut feed = match tokio::time::timeout(QUICK, rt.output(&id)).await {
        Ok(Ok(feed)) => feed,
        Ok(Err(e)) => panic!("{}: output {id} failed: {e:?}", rt.name()),
        Err(_) => panic!("{}: output {id} did not return in {QUICK:?}", rt.name()),
    };
    let chunk = tokio::time::timeout(QUICK, feed.recv())
        .await
        .expect("the first line must arrive")
        .expect("the feed must not end before the first line")
        .expect("the first chunk");
    assert_eq!(chunk.offset, 0);
    assert_eq!(
        String::from_utf8_lossy(&chunk.data),
        "first\n",
        "the first line arrives alone, before the program ends"
    );
    let mut rest = vec![chunk];
    while let Some(c) = tokio::time::timeout(QUICK, feed.recv())
        .await
        .expect("the feed must end after the program")
    {
        rest.push(c.expect("a chunk"));
    }
    assert_eq!(text_of(&rest, None), "first\nsecond\n");
    assert!(wait(rt, &id).await.success());
    remove(rt, &id).await;
}

/// `stop` sends SIGTERM first: a program that exits on TERM ends well before a
/// long grace period, and its handler ran.
pub async fn stop_sends_sigterm_first(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let script = format!("trap 'echo got-term; exit 0' TERM; echo ready; {SLEEP_LOOP}");
    let id = start(rt, &sh("term", image, &script)).await;
    wait_for_output(rt, &id, "ready").await;
    let grace = Duration::from_secs(10);
    let began = Instant::now();
    stop(rt, &id, grace).await;
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stop must send SIGTERM and return once the program exits, not wait out the {grace:?} grace; took {took:?}"
    );
    let status = wait(rt, &id).await;
    assert_eq!(
        status.code,
        Some(0),
        "the TERM handler exits 0, so the program was not killed: {status:?}"
    );
    let got = text_of(&output(rt, &id).await, None);
    assert!(
        got.contains("got-term"),
        "the TERM handler's output must be in the output: {got:?}"
    );
    remove(rt, &id).await;
}

/// A program that ignores SIGTERM is killed once the grace period is over.
pub async fn stop_kills_after_the_grace_period(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let script = format!("trap '' TERM; echo ready; {SLEEP_LOOP}");
    let id = start(rt, &sh("kill", image, &script)).await;
    wait_for_output(rt, &id, "ready").await;
    let grace = Duration::from_millis(500);
    let began = Instant::now();
    stop(rt, &id, grace).await;
    let took = began.elapsed();
    assert!(
        took >= grace,
        "stop must give a TERM-ignoring program the whole grace ({grace:?}); returned after {took:?}"
    );
    assert!(
        took < grace + Duration::from_secs(5),
        "stop must SIGKILL once the grace ({grace:?}) is over; took {took:?}"
    );
    let status = wait(rt, &id).await;
    assert!(
        status.signal == Some(9) || status.code == Some(137),
        "the program must have ended by SIGKILL (signal 9 or exit code 137): {status:?}"
    );
    assert!(!status.success(), "a killed program is not a success");
    remove(rt, &id).await;
}

/// Stopping twice, stopping after the exit, removing twice and stopping a
/// removed container all succeed.
pub async fn stop_and_remove_are_idempotent(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let grace = Duration::from_secs(1);

    let id = start(rt, &sh("idem-run", image, SLEEP_LOOP)).await;
    stop(rt, &id, grace).await;
    stop(rt, &id, grace).await;
    let status = wait(rt, &id).await;
    assert!(
        !status.success(),
        "a stopped sleep loop is not a success: {status:?}"
    );
    remove(rt, &id).await;
    remove(rt, &id).await;
    stop(rt, &id, grace).await;

    let id = start(rt, &sh("idem-exit", image, "exit 0")).await;
    assert!(wait(rt, &id).await.success());
    let began = Instant::now();
    stop(rt, &id, Duration::from_secs(10)).await;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "stopping an exited container must return at once, took {:?}",
        began.elapsed()
    );
    stop(rt, &id, grace).await;
    let status = wait(rt, &id).await;
    assert!(
        status.success(),
        "stop after the exit must not change the status: {status:?}"
    );
    remove(rt, &id).await;
    remove(rt, &id).await;
}

/// `list` finds containers by label, reports whether they run, and forgets
/// removed ones.
pub async fn list_finds_containers_by_label(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let u = unique();
    let worker = format!("w-{u}");
    let (task_a, task_b) = (format!("a-{u}"), format!("b-{u}"));
    let mut spec_a = sh("list-a", image, SLEEP_LOOP);
    spec_a.labels = BTreeMap::from([
        (LABEL_TASK.to_string(), task_a.clone()),
        (LABEL_WORKER.to_string(), worker.clone()),
    ]);
    let mut spec_b = sh("list-b", image, "exit 0");
    spec_b.labels = BTreeMap::from([
        (LABEL_TASK.to_string(), task_b.clone()),
        (LABEL_WORKER.to_string(), worker.clone()),
    ]);
    let a = start(rt, &spec_a).await;
    let b = start(rt, &spec_b).await;
    assert_ne!(a, b, "ids must be unique");
    wait(rt, &b).await;

    let list = |key: &'static str, value: String| async move {
        let mut found = tokio::time::timeout(QUICK, rt.list(key, &value))
            .await
            .unwrap_or_else(|_| panic!("list {key}={value} did not return in {QUICK:?}"))
            .unwrap_or_else(|e| panic!("list {key}={value} failed: {e:?}"));
        found.sort_by(|x, y| x.id.cmp(&y.id));
        found
    };

    let by_worker = list(LABEL_WORKER, worker.clone()).await;
    let mut ids: Vec<_> = by_worker.iter().map(|c| c.id.clone()).collect();
    ids.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(
        ids, want,
        "listing by worker label must find both: {by_worker:?}"
    );
    for c in &by_worker {
        assert_eq!(
            c.running,
            c.id == a,
            "running must be true for the sleeper and false for the exited one: {c:?}"
        );
        assert_eq!(
            c.labels.get(LABEL_WORKER),
            Some(&worker),
            "labels must be reported: {c:?}"
        );
    }

    let by_task = list(LABEL_TASK, task_a.clone()).await;
    assert_eq!(
        by_task.len(),
        1,
        "listing by task label must find one: {by_task:?}"
    );
    assert_eq!(by_task[0].id, a);
    assert_eq!(by_task[0].labels.get(LABEL_TASK), Some(&task_a));
    assert!(by_task[0].running, "the sleeper is running: {by_task:?}");

    let none = list(LABEL_TASK, format!("none-{u}")).await;
    assert!(none.is_empty(), "no container carries this label: {none:?}");

    remove(rt, &a).await;
    remove(rt, &b).await;
    let after = list(LABEL_WORKER, worker.clone()).await;
    assert!(
        after.is_empty(),
        "removed containers must not be listed: {after:?}"
    );
}

/// The spec's environment reaches the program.
pub async fn env_is_passed(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let mut spec = sh("env", image, "echo \"FOO=$FOO\"");
    spec.env.insert("FOO".into(), "bar".into());
    let id = start(rt, &spec).await;
    assert!(wait(rt, &id).await.success());
    let got = text_of(&output(rt, &id).await, None);
    assert!(
        got.contains("FOO=bar"),
        "env FOO=bar must be passed: {got:?}"
    );
    remove(rt, &id).await;
}

/// Each container option is applied by a runtime that claims it (the run
/// sees its effect) and refused at `start` by one that does not, naming
/// its flag: never silently ignored.
pub async fn container_options_are_applied_or_refused(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let host = std::env::temp_dir().join(format!("cloudai-conf-mount-{}", unique()));
    std::fs::create_dir_all(&host).expect("mkdir");
    std::fs::write(host.join("hello"), "mounted\n").expect("write");
    let source = host.to_string_lossy().into_owned();
    for option in ContainerOption::ALL {
        let mut options = ContainerOptions::default();
        let (script, want): (&str, &[&str]) = match option {
            ContainerOption::Workdir => {
                options.workdir = Some("/tmp".into());
                ("pwd", &["/tmp"])
            }
            ContainerOption::Mount => {
                options.mounts = vec![format!("{source}:/cloudai-in:ro").parse().expect("mount")];
                (
                    "cat /cloudai-in/hello; touch /cloudai-in/x 2>/dev/null && echo writable || echo read-only",
                    &["mounted", "read-only"],
                )
            }
            ContainerOption::Tmpfs => {
                options.tmpfs = vec!["/cloudai-scratch:8MiB".parse().expect("tmpfs")];
                (
                    "grep ' /cloudai-scratch ' /proc/mounts",
                    &["tmpfs", "size=8192k"],
                )
            }
            ContainerOption::User => {
                options.user = Some("1234:4321".parse().expect("user"));
                ("echo \"uid=$(id -u) gid=$(id -g)\"", &["uid=1234 gid=4321"])
            }
            ContainerOption::ShmSize => {
                options.shm_size = Some(16 << 20);
                ("grep ' /dev/shm ' /proc/mounts", &["size=16384k"])
            }
        };
        let mut spec = sh("options", image, script);
        spec.options = options;
        if rt.unsupported(&spec.options).contains(&option) {
            let refused = tokio::time::timeout(QUICK, rt.start(&spec))
                .await
                .unwrap_or_else(|_| panic!("{}: start did not return", rt.name()));
            match refused {
                Err(Error::InvalidInput(e)) => assert!(
                    e.to_string().contains(option.flag()),
                    "{}: the refusal names {option}: {e}",
                    rt.name()
                ),
                other => panic!(
                    "{}: {option} is not applied, yet start gave {other:?}",
                    rt.name()
                ),
            }
            continue;
        }
        let id = start(rt, &spec).await;
        let status = wait(rt, &id).await;
        let got = text_of(&output(rt, &id).await, None);
        remove(rt, &id).await;
        assert!(
            status.success(),
            "{}: {option}: {status:?} {got:?}",
            rt.name()
        );
        for w in want {
            assert!(
                got.contains(w),
                "{}: {option} must show {w:?}: {got:?}",
                rt.name()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&host);
}

/// A command naming a program that does not exist fails at `start` or exits
/// non-zero; it neither panics nor hangs.
pub async fn unknown_program_fails_cleanly(rt: Arc<dyn ContainerRuntime>, image: &str) {
    let rt = rt.as_ref();
    let mut spec = sh("noprog", image, "");
    spec.command = vec!["/nonexistent/prog".into()];
    let started = tokio::time::timeout(QUICK, rt.start(&spec))
        .await
        .unwrap_or_else(|_| panic!("start of a missing program did not return in {QUICK:?}"));
    match started {
        Err(_) => {}
        Ok(id) => {
            let status = wait(rt, &id).await;
            assert!(
                !status.success(),
                "a missing program must not exit successfully: {status:?}"
            );
            remove(rt, &id).await;
        }
    }
}

/// `wait` and `output` on an id the runtime never handed out are `NotFound`.
pub async fn unknown_id_is_not_found(rt: Arc<dyn ContainerRuntime>, _image: &str) {
    let rt = rt.as_ref();
    let id = ContainerId(format!("cloudai-conf-missing-{}", unique()));
    let waited = tokio::time::timeout(QUICK, rt.wait(&id))
        .await
        .expect("wait on an unknown id must not hang");
    assert!(
        matches!(waited, Err(Error::NotFound { .. })),
        "wait on an unknown id must be NotFound: {waited:?}"
    );
    let got = tokio::time::timeout(QUICK, rt.output(&id))
        .await
        .expect("output on an unknown id must not hang");
    assert!(
        matches!(got, Err(Error::NotFound { .. })),
        "output on an unknown id must be NotFound: {:?}",
        got.err()
    );
}
