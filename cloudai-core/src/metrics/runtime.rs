//! A container runtime that times its operations.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{timed, Latencies};
use crate::model::{ContainerOption, ContainerOptions};
use crate::runtime::{
    ContainerId, ContainerInfo, ContainerRuntime, ContainerSpec, ExitStatus, Follow,
};
use crate::Result;

/// Wraps a runtime, recording how long `start`, `stop`, `remove`, `list`
/// and `output` take (`wait` lasts as long as the task, so it is not
/// timed); the worker wraps its runtime in one.
#[derive(Debug)]
pub struct MeteredRuntime {
    inner: Arc<dyn ContainerRuntime>,
    latencies: Latencies,
}

impl MeteredRuntime {
    pub(crate) fn new(inner: Arc<dyn ContainerRuntime>, latencies: Latencies) -> Self {
        MeteredRuntime { inner, latencies }
    }
}

#[async_trait]
impl ContainerRuntime for MeteredRuntime {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn unsupported(&self, options: &ContainerOptions) -> Vec<ContainerOption> {
        self.inner.unsupported(options)
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<ContainerId> {
        timed(&self.latencies, "start", self.inner.start(spec)).await
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitStatus> {
        self.inner.wait(id).await
    }

    async fn output(&self, id: &ContainerId) -> Result<Follow> {
        timed(&self.latencies, "output", self.inner.output(id)).await
    }

    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        timed(&self.latencies, "stop", self.inner.stop(id, grace)).await
    }

    async fn remove(&self, id: &ContainerId) -> Result<()> {
        timed(&self.latencies, "remove", self.inner.remove(id)).await
    }

    async fn list(&self, key: &str, value: &str) -> Result<Vec<ContainerInfo>> {
        timed(&self.latencies, "list", self.inner.list(key, value)).await
    }

    async fn renew_lease(&self, lease: Duration) -> Result<()> {
        timed(
            &self.latencies,
            "renew_lease",
            self.inner.renew_lease(lease),
        )
        .await
    }
}
