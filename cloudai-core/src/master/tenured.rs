//! The master's calls to workers, sent only while it acts: a deposed
//! master's late assignment or stop must not reach a worker that already
//! follows the next leader.

use std::time::Duration;

use async_trait::async_trait;

use crate::lease::Tenure;
use crate::model::{TaskSpec, WorkerIdentity};
use crate::output::{Follow, OutputFrom};
use crate::transport::{MasterInfo, MasterToWorker, RunningTask, WorkerEndpoint};
use crate::{Error, Result};

/// Forwards to `inner` while `tenure` lasts; refuses unsent after.
#[derive(Debug)]
pub(super) struct Tenured<T: ?Sized> {
    pub(super) tenure: Tenure,
    pub(super) inner: std::sync::Arc<T>,
}

impl<T: ?Sized> Tenured<T> {
    fn acting(&self) -> Result<()> {
        if self.tenure.acting() {
            return Ok(());
        }
        Err(Error::Unavailable(format!(
            "this master no longer leads (its term {} ended)",
            self.tenure.term()
        )))
    }
}

#[async_trait]
impl<T: MasterToWorker + ?Sized> MasterToWorker for Tenured<T> {
    async fn master_register(&self, to: &WorkerEndpoint, master: &MasterInfo) -> Result<()> {
        self.acting()?;
        self.inner.master_register(to, master).await
    }

    async fn assign(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        spec: &TaskSpec,
        gpus: &[u32],
    ) -> Result<()> {
        self.acting()?;
        self.inner.assign(to, run, spec, gpus).await
    }

    async fn cancel(&self, to: &WorkerEndpoint, run: &RunningTask, grace: Duration) -> Result<()> {
        self.acting()?;
        self.inner.cancel(to, run, grace).await
    }

    async fn follow_output(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        from: OutputFrom,
        keep_following: bool,
    ) -> Result<Follow> {
        self.acting()?;
        self.inner
            .follow_output(to, run, from, keep_following)
            .await
    }

    async fn identify(&self, to: &WorkerEndpoint) -> Result<WorkerIdentity> {
        self.acting()?;
        self.inner.identify(to).await
    }

    fn fenced(&self, term: crate::model::Term) -> std::sync::Arc<dyn MasterToWorker> {
        std::sync::Arc::new(Tenured {
            tenure: self.tenure.clone(),
            inner: self.inner.fenced(term),
        })
    }
}
