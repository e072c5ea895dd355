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
