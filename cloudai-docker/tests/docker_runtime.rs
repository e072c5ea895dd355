//! The `ContainerRuntime` conformance suite against the real Docker daemon,
//! with the `FROM scratch` busybox image that `scripts/docker-test-image.sh`
//! builds (`./scripts/test.sh` runs it first).

use std::sync::Arc;

use cloudai_core::runtime::ContainerRuntime;
use cloudai_docker::DockerRuntime;

fn image() -> String {
    std::env::var("CLOUDAI_TEST_IMAGE").unwrap_or_else(|_| "cloudai-test-busybox:latest".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_conforms() {
    let image = image();
    DockerRuntime::connect("test-worker")
        .await
        .expect("a Docker daemon (run ./scripts/test.sh)");
    cloudai_core::testing::runtime::run_all(
        || async {
            Arc::new(DockerRuntime::connect("test-worker").await.expect("docker"))
                as Arc<dyn ContainerRuntime>
        },
        &image,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_a_clear_error_naming_the_worker() {
    use cloudai_core::runtime::ContainerSpec;
    let rt = DockerRuntime::connect("w-7")
        .await
        .expect("a Docker daemon (run ./scripts/test.sh)");
    let spec = ContainerSpec {
        name: format!("cloudai-missing-image-{}", std::process::id()),
        image: "cloudai-no-such-image:never".into(),
        command: vec!["true".into()],
        env: Default::default(),
        limits: cloudai_core::model::Resources::new(0.1, 0.01, 0.0, 0).unwrap(),
        gpus: Vec::new(),
        options: Default::default(),
        labels: Default::default(),
        time_limit: None,
        grace: std::time::Duration::ZERO,
        lease: None,
    };
    let err = rt.start(&spec).await.expect_err("no such image");
    assert!(
        matches!(err, cloudai_core::Error::InvalidInput(_)),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("image cloudai-no-such-image:never not present on worker w-7"),
        "{msg}"
    );
}

/// A run's container names its own GPUs to the daemon by id (a count
/// would make the daemon give every run devices 0..n-1), and a run
/// without GPUs is told it has none. This machine has no GPU: the test
/// inspects the created containers and stops short of starting them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_run_asks_the_daemon_for_its_own_devices_by_id() {
    use cloudai_core::model::{Gpu, Resources};
    use cloudai_core::runtime::{ContainerId, ContainerSpec};
    let rt = DockerRuntime::connect("w-gpu")
        .await
        .expect("a Docker daemon (run ./scripts/test.sh)");
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
    let gpu = |index: u32| Gpu {
        index,
        uuid: Some(format!("GPU-test-{index}")),
        name: None,
    };
    for (gpus, visible) in [
        (vec![gpu(1), gpu(3)], Some("GPU-test-1,GPU-test-3")),
        (vec![Gpu::indexed(1), Gpu::indexed(3)], Some("1,3")),
        (vec![], None),
    ] {
        let spec = ContainerSpec {
            name: format!("cloudai-gpu-request-{}", std::process::id()),
            image: image(),
            command: vec!["true".into()],
            env: Default::default(),
            limits: Resources::new(0.1, 0.01, 0.0, gpus.len() as u32).unwrap(),
            gpus,
            options: Default::default(),
            labels: Default::default(),
            time_limit: None,
            grace: std::time::Duration::ZERO,
            lease: None,
        };
        let id = rt.create(&spec).await.expect("create");
        let inspected = docker.inspect_container(&id, None).await.expect("inspect");
        rt.remove(&ContainerId(id)).await.expect("remove");
        let requests = inspected
            .host_config
            .and_then(|h| h.device_requests)
            .unwrap_or_default();
        let env = inspected.config.and_then(|c| c.env).unwrap_or_default();
        match visible {
            Some(ids) => {
                assert_eq!(requests.len(), 1, "{requests:?}");
                let ids: Vec<String> = ids.split(',').map(String::from).collect();
                assert_eq!(requests[0].device_ids.as_ref(), Some(&ids), "{requests:?}");
                // The daemon stores an unset count as 0.
                assert!(
                    matches!(requests[0].count, None | Some(0)),
                    "by id, never a count: {requests:?}"
                );
                assert_eq!(
                    requests[0].capabilities,
                    Some(vec![vec!["gpu".to_string()]])
                );
                let want = format!("NVIDIA_VISIBLE_DEVICES={}", ids.join(","));
                assert!(env.contains(&want), "{env:?}");
            }
            None => {
                assert!(requests.is_empty(), "{requests:?}");
                assert!(
                    env.contains(&"NVIDIA_VISIBLE_DEVICES=void".to_string()),
                    "{env:?}"
                );
            }
        }
    }
}

/// A container that holds 200 MiB and burns CPU reports what it used,
/// within 25%, though its cgroup is gone once it stops: its stats are
/// sampled while it runs. It idles a second at the end, so the last sample
/// before its end sees all its CPU (a run loses what it burns in its last
/// quarter second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_reports_its_peak_memory_and_cpu_time() {
    use cloudai_core::model::Resources;
    use cloudai_core::runtime::{ContainerSpec, LABEL_TASK};
    let rt = DockerRuntime::connect("w-usage")
        .await
        .expect("a Docker daemon (run ./scripts/test.sh)");
    let script = r#"dd if=/dev/zero bs=200M count=1 2>/dev/null | sleep 1
i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done
set -- $(cat /proc/$$/stat); echo "ticks $(( ${14} + ${15} + ${16} + ${17} ))"
sleep 1"#;
    let spec = ContainerSpec {
        name: format!("cloudai-usage-{}", std::process::id()),
        image: image(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: Default::default(),
        limits: Resources::new(1.0, 0.5, 0.0, 0).unwrap(),
        gpus: Vec::new(),
        options: Default::default(),
        labels: [(LABEL_TASK.to_string(), "usage".to_string())].into(),
        time_limit: None,
        grace: std::time::Duration::ZERO,
        lease: None,
    };
    let id = rt.start(&spec).await.expect("start");
    let exit = rt.wait(&id).await.expect("wait");
    let mut out = rt.output(&id).await.expect("output");
    let mut text = Vec::new();
    while let Some(c) = out.recv().await {
        text.extend_from_slice(&c.expect("chunk").data);
    }
    rt.remove(&id).await.expect("remove");
    let text = String::from_utf8_lossy(&text);
    let ticks: f64 = text
        .trim()
        .strip_prefix("ticks ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ticks line in {text:?}"));
    let u = exit.usage.expect("a started container's usage");
    let cpu_ms = u.cpu_ms() as f64;
    let want_ms = ticks * 10.0;
    assert!(
        (cpu_ms - want_ms).abs() <= 0.25 * want_ms,
        "cpu {cpu_ms} ms, the container counted {want_ms} ms: {u:?}"
    );
    let mib_200 = 200.0 * 1024.0 * 1024.0;
    let peak = u.peak_memory_bytes as f64;
    assert!(
        (peak - mib_200).abs() <= 0.25 * mib_200,
        "peak {peak} bytes: {u:?}"
    );
    assert_eq!(u.pull_ms, None, "the image was there");
}
