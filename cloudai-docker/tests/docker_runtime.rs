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
