//! `SupervisedProcessRuntime` with the worker binary as each run's
//! supervisor: the `ContainerRuntime` conformance suite, plus what only
//! supervised runs do (outlive the runtime, be found again, die when
//! orphaned).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudai_core::model::Resources;
use cloudai_core::process::SupervisedProcessRuntime;
use cloudai_core::runtime::{ContainerId, ContainerRuntime, ContainerSpec, ExitStatus, LABEL_TASK};

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_cloudai-worker");
const BOUND: Duration = Duration::from_secs(15);

/// A fresh state directory for one runtime (or two sharing it).
fn state_dir(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "cloudai-supervised-{name}-{}-{n}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn runtime(dir: &Path, orphan_timeout: Duration) -> Arc<SupervisedProcessRuntime> {
    let supervisor: Vec<OsString> = vec![WORKER_BIN.into(), "__supervise".into()];
    Arc::new(SupervisedProcessRuntime::new(dir, supervisor, orphan_timeout).expect("runtime"))
}

fn spec(task: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: task.into(),
        image: "busybox".into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        limits: Resources::ZERO,
        gpus: Vec::new(),
        options: Default::default(),
        labels: BTreeMap::from([(LABEL_TASK.to_string(), task.to_string())]),
        time_limit: None,
        grace: Duration::ZERO,
        lease: None,
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Waits until the file holds a pid (written by the task's script).
async fn pid_in(path: &Path) -> i32 {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_dead(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still alive after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A run's exit (waited for within [`BOUND`]) and its whole output, each
/// byte once from its start.
async fn ended(rt: &SupervisedProcessRuntime, id: &ContainerId) -> (ExitStatus, Vec<u8>) {
    let status = tokio::time::timeout(BOUND, rt.wait(id))
        .await
        .expect("bounded")
        .expect("wait");
    let mut output = rt.output(id).await.expect("output");
    let mut text = Vec::new();
    while let Some(c) = output.recv().await {
        let c = c.expect("a chunk");
        assert_eq!(c.offset, text.len() as u64);
        text.extend(c.data);
    }
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let dirs = std::sync::Mutex::new(Vec::new());
    cloudai_core::testing::runtime::run_all(
        || {
            let dir = state_dir("conformance");
            dirs.lock().unwrap().push(dir.clone());
            async move { runtime(&dir, Duration::from_secs(60)) as Arc<dyn ContainerRuntime> }
        },
        "busybox",
    )
    .await;
    for d in dirs.into_inner().unwrap() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Without a `--workdir`, a run starts in a directory of its own under
/// the state directory (not the worker's), which goes with the run, what
/// it wrote there included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_starts_in_a_directory_of_its_own_removed_with_it() {
    let dir = state_dir("workdir");
    let rt = runtime(&dir, Duration::from_secs(60));
    let id = rt
        .start(&spec("t-workdir", "echo left-behind > here.txt; pwd"))
        .await
        .expect("start");
    let (status, text) = ended(rt.as_ref(), &id).await;
    assert!(status.success(), "{status:?}");
    let cwd = std::path::PathBuf::from(String::from_utf8_lossy(&text).trim());
    assert!(
        cwd.starts_with(&dir),
        "{} is under {}",
        cwd.display(),
        dir.display()
    );
    assert!(cwd.join("here.txt").exists());
    rt.remove(&id).await.expect("remove");
    assert!(!cwd.exists(), "{} goes with the run", cwd.display());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run outlives the runtime that started it (a killed worker); a new
/// runtime on the same state directory finds it by label and gets its exit
/// code and its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_finds_a_run_and_its_exit() {
    let dir = state_dir("reattach");
    let first = runtime(&dir, Duration::from_secs(60));
    let id = first
        .start(&spec("t-reattach", "sleep 1; echo done; exit 7"))
        .await
        .expect("start");
    drop(first);

    let second = runtime(&dir, Duration::from_secs(60));
    let found = second.list(LABEL_TASK, "t-reattach").await.expect("list");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, id);
    assert!(found[0].running, "{found:?}");
    let (status, text) = ended(second.as_ref(), &id).await;
    assert_eq!(status.code, Some(7));
    assert_eq!(
        text, b"done\n",
        "the new runtime reads the output from its start"
    );
    assert!(!second.list(LABEL_TASK, "t-reattach").await.unwrap()[0].running);
    second.remove(&id).await.expect("remove");
    assert!(second
        .list(LABEL_TASK, "t-reattach")
        .await
        .unwrap()
        .is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// With no lease renewal for its lease, the supervisor stops the run's
/// whole group: SIGTERM to the group, SIGKILL after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_run_is_killed_by_its_supervisor() {
    let dir = state_dir("orphan");
    let pidfile = dir.join("task.pid");
    let rt = runtime(&dir, Duration::from_secs(1));
    let script = format!("sleep 300 & echo $! > '{}'; wait", pidfile.display());
    let id = rt.start(&spec("t-orphan", &script)).await.expect("start");
    let background = pid_in(&pidfile).await;
    drop(rt);
    until_dead(background, BOUND).await;
    let again = runtime(&dir, Duration::from_secs(60));
    let status = tokio::time::timeout(BOUND, again.wait(&id))
        .await
        .expect("bounded")
        .expect("wait");
    assert_eq!(status.signal, Some(15), "{status:?}");
    again.remove(&id).await.expect("remove");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A new runtime stops a run an earlier one started: the whole group goes,
/// a background grandchild included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_stops_a_run_it_did_not_start() {
    let dir = state_dir("stop");
    let pidfile = dir.join("task.pid");
    let first = runtime(&dir, Duration::from_secs(60));
    let script = format!("sleep 300 & echo $! > '{}'; sleep 300", pidfile.display());
    let id = first.start(&spec("t-stop", &script)).await.expect("start");
    let background = pid_in(&pidfile).await;
    drop(first);
    let second = runtime(&dir, Duration::from_secs(60));
    tokio::time::timeout(BOUND, second.stop(&id, Duration::from_millis(200)))
        .await
        .expect("bounded")
        .expect("stop");
    until_dead(background, BOUND).await;
    second.remove(&id).await.expect("remove");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A run whose task has exited is listed as running until its supervisor
/// has recorded the end (it first drains the output, which a process that
/// left the task's group may hold open for up to a second): a restarting
/// worker would otherwise remove the run and lose its exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_listed_running_until_its_end_is_recorded() {
    let dir = state_dir("listed");
    let rt = runtime(&dir, Duration::from_secs(60));
    let id = rt
        .start(&spec("listed", "setsid sleep 2 & exit 0"))
        .await
        .expect("start");
    let record = dir.join("runs").join(format!("{}.run", id.0));
    let ended = || std::fs::read_to_string(&record).is_ok_and(|r| r.contains("\"ended\""));
    let deadline = Instant::now() + BOUND;
    loop {
        let listed = rt.list(LABEL_TASK, "listed").await.expect("list");
        let run = listed
            .iter()
            .find(|c| c.id == id)
            .expect("the run is listed");
        if !run.running {
            assert!(ended(), "listed as not running before its end was recorded");
            break;
        }
        assert!(Instant::now() < deadline, "still listed running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rt.remove(&id).await.expect("remove");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The supervisor process serving the runs in `dir` (the worker binary in
/// its supervisor mode, named by its command line).
fn supervisor_of(dir: &Path) -> i32 {
    let wanted = format!("__supervise\0{}\0", dir.join("runs").display());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
        })
        .expect("a supervisor serves the runs")
}

/// With its supervisor killed (`kill -9`), a run's task runs on, the
/// runtime still stops it (signalling its group itself), and its wait
/// ends in an error, as no exit was recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_supervisor_was_killed_is_still_stopped() {
    let dir = state_dir("unsupervised");
    let pidfile = dir.join("task.pid");
    let rt = runtime(&dir, Duration::from_secs(60));
    let script = format!("echo $$ > '{}'; sleep 300", pidfile.display());
    let id = rt
        .start(&spec("t-unsupervised", &script))
        .await
        .expect("start");
    let task = pid_in(&pidfile).await;
    let supervisor = supervisor_of(&dir);
    let killed = std::process::Command::new("kill")
        .args(["-9", &supervisor.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -9 {supervisor}");
    until_dead(supervisor, BOUND).await;
    assert!(alive(task), "the task outlives its supervisor");
    tokio::time::timeout(BOUND, rt.stop(&id, Duration::from_millis(200)))
        .await
        .expect("bounded")
        .expect("stop");
    until_dead(task, BOUND).await;
    let waited = tokio::time::timeout(BOUND, rt.wait(&id))
        .await
        .expect("bounded");
    assert!(waited.is_err(), "no exit was recorded: {waited:?}");
    rt.remove(&id).await.expect("remove");
    let _ = std::fs::remove_dir_all(&dir);
}
