//! Changing a task after its submit: a pending task's priority (its place
//! in the queue), as Slurm's `scontrol update` and HyperQueue's priority
//! changes allow.

use tracing::info;

use super::Master;
use crate::model::{TaskId, TaskRecord};
use crate::store::CasOutcome;
use crate::{Error, Result};

impl Master {
    /// Sets a pending task's priority; returns the task as it is now. A
    /// task that is no longer pending is refused: its place in the queue
    /// is behind it.
    pub async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<TaskRecord> {
        match self.inner.store.set_priority(id, priority).await {
            Ok(CasOutcome::Applied { before }) => {
                let mut task = before;
                task.spec.priority = priority;
                self.acknowledge(())?;
                {
                    let mut st = self.state();
                    st.reprioritize(&task);
                    self.done(st);
                }
                // A task an older term stored that this master has not
                // adopted yet (the write raised its fence past adoption's).
                self.adopt_stored(std::slice::from_ref(&task)).await;
                info!(task = %id, priority, "priority changed");
                Ok(task)
            }
            Ok(CasOutcome::Rejected { current }) => Err(Error::Conflict(format!(
                "task {id} is {}; only a pending task's priority can change",
                current.status
            ))),
            Err(Error::NotFound { .. }) => Err(self.missing_task(id)),
            Err(e) => Err(e),
        }
    }
}
