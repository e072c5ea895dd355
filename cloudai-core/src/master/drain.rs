//! Draining: an operator takes a worker out of placement. Its running tasks
//! may finish; those still running at the drain's deadline are stopped
//! (with their grace) and failed as drained, their resources released.
//! The drain is written to the registry first, so it survives a master
//! restart.

use std::time::Duration;

use tracing::{info, warn};

use super::membership::running_on;
use super::{Master, MasterEvent};
use crate::lifecycle::TaskEvent;
use crate::model::{Drain, WorkerId};
use crate::{Error, Result};

impl Master {
    /// Drains `worker`: nothing new is placed on it from now on. With a
    /// `deadline`, tasks still running on it that long from now are
    /// stopped and failed as drained. Draining again replaces the deadline.
    pub async fn drain(&self, worker: &WorkerId, deadline: Option<Duration>) -> Result<Drain> {
        if !self.state().knows(worker) {
            return Err(Error::not_found("worker", worker));
        }
        let now = self.now();
        let drain = Drain {
            since: now,
            deadline: deadline.map(|d| now.saturating_add(d)),
        };
        self.inner.registry.set_drain(worker, Some(drain)).await?;
        self.state().set_drain(worker, Some(drain));
        self.emit(MasterEvent::Drain {
            id: worker.clone(),
            draining: true,
        });
        info!(worker = %worker, ?deadline, "worker drained; placing nothing more on it");
        self.inner.wake.notify_one();
        Ok(drain)
    }

    /// Ends the drain of `worker`: it takes tasks again.
    pub async fn undrain(&self, worker: &WorkerId) -> Result<()> {
        if !self.state().knows(worker) {
            return Err(Error::not_found("worker", worker));
        }
        self.inner.registry.set_drain(worker, None).await?;
        let mut st = self.state();
        st.set_drain(worker, None);
        self.done(st);
        self.emit(MasterEvent::Drain {
            id: worker.clone(),
            draining: false,
        });
        info!(worker = %worker, "worker undrained; it takes tasks again");
        Ok(())
    }

    /// The drain deadline of `worker` passed: every task still running
    /// there is stopped with its grace, and runs again elsewhere once
    /// stopped (or fails as drained, if it asked not to be requeued).
    pub(super) async fn drain_deadline_passed(&self, worker: &WorkerId) {
        let filter = running_on(worker);
        let Some(tasks) = self.surely(|| self.inner.store.list_tasks(&filter)).await else {
            return;
        };
        if !tasks.is_empty() {
            warn!(worker = %worker, tasks = tasks.len(), "drain deadline passed; stopping the tasks still running");
        }
        for t in tasks {
            let drained = TaskEvent::Drained {
                worker: worker.clone(),
                attempt: t.attempt,
            };
            if self
                .surely(|| self.apply(&t.id, drained.clone()))
                .await
                .is_none()
            {
                return;
            }
        }
    }
}
