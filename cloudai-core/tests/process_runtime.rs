//! `ProcessRuntime` against the `ContainerRuntime` conformance suite, plus
//! rules only the process runtime has.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudai_core::model::{Gpu, Resources};
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
        gpus: Vec::new(),
        options: Default::default(),
        labels: BTreeMap::new(),
        time_limit: None,
        grace: Duration::ZERO,
        lease: None,
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

/// The output as it comes, until `enough` says so or it ends, with the
/// offset of its first byte.
async fn read_until(
    rt: &ProcessRuntime,
    id: &ContainerId,
    enough: impl Fn(&str) -> bool,
) -> (u64, String) {
    let mut feed = rt.output(id).await.expect("output");
    let mut first = None;
    let mut text = String::new();
    tokio::time::timeout(LONG, async {
        while let Some(c) = feed.recv().await {
            let c = c.expect("a chunk");
            first.get_or_insert(c.offset);
            text.push_str(&String::from_utf8_lossy(&c.data));
            if enough(&text) {
                return;
            }
        }
    })
    .await
    .expect("the output must arrive");
    (first.unwrap_or(0), text)
}

/// The first line of the output that is a number (a pid echoed by `$!`).
async fn echoed_pid(rt: &ProcessRuntime, id: &ContainerId) -> u32 {
    let pid = |t: &str| t.lines().find_map(|l| l.trim().parse().ok());
    let (_, text) = read_until(rt, id, |t| pid(t).is_some()).await;
    pid(&text).unwrap_or_else(|| panic!("no pid in the output: {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_is_process() {
    assert_eq!(ProcessRuntime::new().name(), "process");
    assert_eq!(ProcessRuntime::default().log_limit(), 64 << 20);
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
    let (_, text) = read_until(&rt, &id, |_| false).await;
    assert!(text.contains("home=[]"), "worker env must not leak: {text}");
    if let Ok(path) = std::env::var("PATH") {
        assert!(
            text.contains(&format!("path=[{path}]")),
            "PATH must pass: {text}"
        );
    }
    rt.remove(&id).await.expect("remove");
}

/// A run sees only its own GPUs, by UUID where all are known, else by
/// index; one without GPUs sees none (unset, CUDA would show it all), even
/// if its spec says otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_sees_only_its_own_gpus() {
    let rt = ProcessRuntime::new();
    let script = "echo \"cuda=[${CUDA_VISIBLE_DEVICES-unset}] nvidia=[${NVIDIA_VISIBLE_DEVICES-unset}] order=[$CUDA_DEVICE_ORDER]\"";
    let uuid = |i: u32| Gpu {
        index: i,
        uuid: Some(format!("GPU-{i}")),
        name: None,
    };
    for (gpus, want) in [
        (vec![uuid(1), uuid(3)], "GPU-1,GPU-3"),
        (vec![uuid(1), Gpu::indexed(3)], "1,3"),
        (vec![], ""),
    ] {
        let mut s = sh(script);
        s.env
            .insert("CUDA_VISIBLE_DEVICES".into(), "0,1,2,3".into());
        s.gpus = gpus;
        let id = rt.start(&s).await.expect("start");
        assert!(rt.wait(&id).await.expect("wait").success());
        let (_, text) = read_until(&rt, &id, |_| false).await;
        assert!(
            text.contains(&format!("cuda=[{want}] nvidia=[{want}] order=[PCI_BUS_ID]")),
            "{want:?}: {text}"
        );
        rt.remove(&id).await.expect("remove");
    }
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
    let (first, text) = read_until(&rt, &id, |_| false).await;
    assert_eq!(text.len(), 1000, "keeps exactly the bound");
    assert_eq!(
        first,
        10_008 - 1000,
        "the first offset says what was dropped"
    );
    assert!(text.ends_with("the-end\n"), "keeps the end: {text:?}");
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
