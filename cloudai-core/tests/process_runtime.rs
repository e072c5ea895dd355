//! `ProcessRuntime` against the `ContainerRuntime` conformance suite, plus
//! rules only the process runtime has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudai_core::model::Resources;
use cloudai_core::process::ProcessRuntime;
use cloudai_core::runtime::{ContainerId, ContainerRuntime, ContainerSpec};
use cloudai_core::Error;

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    cloudai_core::testing::runtime::run_all(
        || async { Arc::new(ProcessRuntime::new()) as Arc<dyn ContainerRuntime> },
        "busybox",
    )
    .await;
}

fn spec(command: &[&str]) -> ContainerSpec {
    ContainerSpec {
        name: "test".into(),
        image: "busybox".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        limits: Resources::ZERO,
        labels: BTreeMap::new(),
    }
}

fn sh(script: &str) -> ContainerSpec {
    spec(&["sh", "-c", script])
}

/// Whether `pid` is still a live process (a zombie waiting for a reaper that
/// never comes, as under some container inits, counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')),
            None => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        },
    }
}

async fn eventually_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} must be gone within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the logs for the first line that is a number (a pid echoed by `$!`).
async fn echoed_pid(rt: &ProcessRuntime, id: &ContainerId) -> u32 {
    let deadline = Instant::now() + LONG;
    loop {
        let logs = rt.logs(id, 4096).await.expect("logs");
        if let Some(pid) = logs.text.lines().find_map(|l| l.trim().parse().ok()) {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in the logs: {logs:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_is_process() {
    assert_eq!(ProcessRuntime::new().name(), "process");
    assert_eq!(ProcessRuntime::default().log_limit(), 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_command_is_invalid_input() {
    let rt = ProcessRuntime::new();
    let err = rt.start(&spec(&[])).await.expect_err("empty command");
    assert!(matches!(err, Error::InvalidInput(_)), "got {err:?}");
    assert!(
        err.to_string().contains("needs a command"),
        "message must say a command is needed: {err}"
    );
    let err = rt.start(&spec(&[""])).await.expect_err("empty program");
    assert!(matches!(err, Error::InvalidInput(_)), "got {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_program_is_invalid_input_naming_it() {
    let rt = ProcessRuntime::new();
    let err = rt
        .start(&spec(&["/nonexistent/prog", "x"]))
        .await
        .expect_err("missing program");
    assert!(matches!(err, Error::InvalidInput(_)), "got {err:?}");
    assert!(err.to_string().contains("/nonexistent/prog"), "{err}");
    let err = rt
        .start(&spec(&["cloudai-no-such-program-on-path"]))
        .await
        .expect_err("missing program");
    assert!(matches!(err, Error::InvalidInput(_)), "got {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_is_clean_but_has_path() {
    let rt = ProcessRuntime::new();
    let mut s = sh("echo \"home=[$HOME] path=[$PATH]\"");
    s.env.insert("X".into(), "1".into());
    let id = rt.start(&s).await.expect("start");
    assert!(rt.wait(&id).await.expect("wait").success());
    let text = rt.logs(&id, 4096).await.expect("logs").text;
    assert!(text.contains("home=[]"), "worker env must not leak: {text}");
    if let Ok(path) = std::env::var("PATH") {
        assert!(
            text.contains(&format!("path=[{path}]")),
            "PATH must pass: {text}"
        );
    }
    rt.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_reaches_background_grandchildren() {
    let rt = ProcessRuntime::new();
    let id = rt
        .start(&sh("sleep 100 & echo $!; wait"))
        .await
        .expect("start");
    let pid = echoed_pid(&rt, &id).await;
    assert!(alive(pid), "the background sleep {pid} must be running");
    tokio::time::timeout(LONG, rt.stop(&id, Duration::from_secs(5)))
        .await
        .expect("stop must not hang")
        .expect("stop");
    eventually_gone(pid).await;
    let status = tokio::time::timeout(LONG, rt.wait(&id))
        .await
        .expect("wait")
        .expect("wait");
    assert!(!status.success(), "{status:?}");
    rt.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_is_reported_although_a_background_process_holds_the_pipes() {
    let rt = ProcessRuntime::new();
    let id = rt.start(&sh("sleep 100 & echo $!")).await.expect("start");
    let began = Instant::now();
    let status = tokio::time::timeout(LONG, rt.wait(&id))
        .await
        .expect("wait must not hang on the open pipe")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "wait took {:?}",
        began.elapsed()
    );
    let pid = echoed_pid(&rt, &id).await;
    assert!(alive(pid), "the leftover sleep {pid} outlives its leader");
    let listed = rt.list("k", "v").await.expect("list");
    assert!(listed.is_empty());
    rt.remove(&id).await.expect("remove");
    eventually_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_kills_leftovers_that_outlived_the_leader() {
    let rt = ProcessRuntime::new();
    let id = rt
        .start(&sh("sleep 100 >/dev/null 2>&1 & echo $!"))
        .await
        .expect("start");
    let status = tokio::time::timeout(LONG, rt.wait(&id))
        .await
        .expect("wait")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let pid = echoed_pid(&rt, &id).await;
    assert!(alive(pid), "the leftover sleep {pid} outlives its leader");
    // Stopping an exited container is a no-op...
    rt.stop(&id, Duration::from_secs(1)).await.expect("stop");
    assert!(alive(pid));
    // ...removing it cleans up the whole group.
    rt.remove(&id).await.expect("remove");
    eventually_gone(pid).await;
    assert!(matches!(rt.wait(&id).await, Err(Error::NotFound { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_kills_a_running_container() {
    let rt = ProcessRuntime::new();
    let id = rt.start(&sh("echo $$; sleep 100")).await.expect("start");
    let pid = echoed_pid(&rt, &id).await;
    assert!(alive(pid));
    rt.remove(&id).await.expect("remove");
    eventually_gone(pid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_bounds_what_it_keeps() {
    let rt = ProcessRuntime::with_log_limit(1000);
    assert_eq!(rt.log_limit(), 1000);
    // 1000 lines of 10 bytes. (One stream only: the order across stdout and
    // stderr is the order the reader tasks see them, not the write order.)
    let id = rt
        .start(&sh(
            "i=0; while [ $i -lt 1000 ]; do echo 123456789; i=$((i+1)); done; echo the-end",
        ))
        .await
        .expect("start");
    let status = tokio::time::timeout(LONG, rt.wait(&id))
        .await
        .expect("wait")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let logs = rt.logs(&id, usize::MAX).await.expect("logs");
    assert!(logs.text.len() <= 1000, "kept {} bytes", logs.text.len());
    assert!(
        logs.text.len() >= 900,
        "keeps up to the bound: {}",
        logs.text.len()
    );
    assert!(logs.truncated, "10k bytes into 1000 must be truncated");
    assert!(
        logs.text.ends_with("the-end\n"),
        "keeps the end: {:?}",
        logs.text
    );
    rt.remove(&id).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_unique_and_signals_are_reported() {
    let rt = ProcessRuntime::new();
    let a = rt.start(&sh("kill -9 $$")).await.expect("start");
    let b = rt.start(&sh("exit 0")).await.expect("start");
    assert_ne!(a, b);
    let status = tokio::time::timeout(LONG, rt.wait(&a))
        .await
        .expect("wait")
        .expect("wait");
    assert_eq!(status.signal, Some(9), "{status:?}");
    assert_eq!(status.code, None, "{status:?}");
    assert!(!status.oom_killed);
    for id in [a, b] {
        rt.remove(&id).await.expect("remove");
    }
}
