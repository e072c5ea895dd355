//! Dependencies on the master's side of the store: the parents a submit
//! names, checked and expanded to tasks; the parents of held dependents
//! read back, so that a parent which ended before its dependent was
//! registered (a submit racing the end, a master loading after a crash)
//! still decides it; and the cancellations owed when a condition can
//! never hold.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use tracing::{info, warn};

use super::Master;
use crate::apply::Applied;
use crate::lifecycle::TaskEvent;
use crate::model::{
    root_of, ArrayId, Condition, Dependency, TaskId, TaskRecord, TaskSpec, TaskStatus,
};
use crate::store::TaskFilter;
use crate::{Error, Result};

/// A parent as a submit names it: a task, or an array (every member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    /// How it must end.
    pub condition: Condition,
    /// A task id or an array id.
    pub id: String,
}

impl Master {
    /// Checks the parents a submit names (`spec.after` and `after`) and
    /// puts every one into `spec.after` as a task: an array stands for all
    /// its members. An unknown task or array is refused.
    pub(super) async fn expand_parents(
        &self,
        spec: &mut TaskSpec,
        after: &[ParentRef],
    ) -> Result<()> {
        for d in &spec.after {
            if self.inner.store.get_task(&d.task).await?.is_none() {
                return Err(self.unknown_parent(d.task.as_str()));
            }
        }
        for r in after {
            let task = TaskId::new(r.id.as_str()).ok();
            let found = match &task {
                Some(t) => self.inner.store.get_task(t).await?,
                None => None,
            };
            if let Some(parent) = found {
                spec.after.push(Dependency {
                    task: parent.id,
                    condition: r.condition,
                });
                continue;
            }
            let members = self.members(&r.id).await?;
            if members.is_empty() {
                return Err(self.unknown_parent(&r.id));
            }
            spec.after
                .extend(members.into_values().map(|task| Dependency {
                    task,
                    condition: r.condition,
                }));
        }
        // An array named twice, or a task named by itself and by its array.
        let mut seen = BTreeSet::new();
        spec.after.retain(|d| seen.insert(d.task.clone()));
        Ok(())
    }

    /// The members of the array `id`, by index (none: no such array).
    pub(super) async fn members(&self, id: &str) -> Result<BTreeMap<u32, TaskId>> {
        let Ok(array) = ArrayId::new(id) else {
            return Ok(BTreeMap::new());
        };
        let filter = TaskFilter {
            array: Some(array),
            ..TaskFilter::default()
        };
        let tasks = self.inner.store.list_tasks(&filter).await?;
        Ok(tasks
            .into_iter()
            .filter_map(|t| Some((t.array?.index, t.id)))
            .collect())
    }

    /// Reads the parents that held dependents among `tasks` still wait on
    /// and decides those that ended (or no longer exist). Called after the
    /// dependents were registered, so no parent's end is missed. Parents
    /// in `live` are known not to have ended (a load read them pending or
    /// running) and are not read again.
    pub(super) async fn resolve_from_store(&self, tasks: &[TaskRecord], live: &HashSet<&TaskId>) {
        // Most submits name no parent: no second look at the state.
        if tasks.iter().all(|t| t.spec.after.is_empty()) {
            return;
        }
        let parents: BTreeSet<TaskId> = {
            let st = self.state();
            tasks
                .iter()
                .filter(|t| t.attempt == 0 && !t.spec.after.is_empty())
                .flat_map(|t| st.unresolved_parents(&t.id))
                .filter(|p| !live.contains(p))
                .collect()
        };
        for parent in parents {
            let Some(found) = self.surely(|| self.inner.store.get_task(&parent)).await else {
                return;
            };
            let now = self.now();
            let mut st = self.state();
            match found {
                Some(p) => {
                    // A parent itself cancelled as unmet passes its root on.
                    let chain = match p.status {
                        TaskStatus::Cancelled => p.reason.as_deref().and_then(root_of),
                        _ => None,
                    };
                    st.parent_ended(&p.id, p.status, chain.as_ref(), now);
                }
                None => st.parent_gone(&parent),
            }
            self.done(st);
        }
    }

    /// The error for a parent the store does not hold: expired past the
    /// retention if its id says so, else not found.
    fn unknown_parent(&self, id: &str) -> Error {
        match TaskId::new(id).map(|t| self.missing_task(&t)) {
            Ok(expired @ Error::Expired { .. }) => expired,
            _ => Error::not_found("parent task or array", id),
        }
    }

    /// Cancels a dependent whose dependency can never hold (owed by the
    /// state; the driver runs it).
    pub(super) async fn cancel_unmet(&self, task: TaskId, reason: String) {
        let event = TaskEvent::Unmet {
            reason: reason.clone(),
        };
        match self.surely(|| self.apply(&task, event.clone())).await {
            Some(Applied::Changed { .. }) => info!(task = %task, %reason, "dependent cancelled"),
            Some(Applied::Refused { refusal, .. }) => {
                warn!(task = %task, %refusal, "dependent not cancelled")
            }
            None => {}
        }
    }
}
