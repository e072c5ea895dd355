//! Dependencies between tasks (Slurm's `--dependency`, HyperQueue's task
//! dependencies): a dependent waits until every parent has ended in a way
//! its condition accepts, and is cancelled as soon as one cannot.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{TaskId, TaskStatus, ValidationError};

/// The most parents one task may wait on (an `after-ok` on a whole array
/// names each member).
pub const MAX_PARENTS: usize = super::MAX_ARRAY_TASKS;

/// How a parent must end for its dependent to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// It completed (exit code 0).
    AfterOk,
    /// It ended, however.
    AfterAny,
    /// It failed or was cancelled.
    AfterNotOk,
}

impl Condition {
    /// The verdict once the parent reached `status`: `None` while it has
    /// not ended (a parent waiting for its next attempt has not).
    pub fn verdict(self, status: TaskStatus) -> Option<Verdict> {
        if !status.is_terminal() {
            return None;
        }
        let ok = status == TaskStatus::Completed;
        let met = match self {
            Condition::AfterOk => ok,
            Condition::AfterAny => true,
            Condition::AfterNotOk => !ok,
        };
        Some(if met { Verdict::Met } else { Verdict::Never })
    }

    /// The CLI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::AfterOk => "after-ok",
            Condition::AfterAny => "after-any",
            Condition::AfterNotOk => "after-notok",
        }
    }
}

impl std::str::FromStr for Condition {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, ValidationError> {
        [
            Condition::AfterOk,
            Condition::AfterAny,
            Condition::AfterNotOk,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| ValidationError::Invalid {
            field: "dependency",
            reason: format!("{s:?} is not after-ok, after-any or after-notok"),
        })
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a parent's end means for its dependent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The condition holds.
    Met,
    /// The condition can never hold: the dependent is cancelled.
    Never,
}

/// One parent a task waits on, and how it must end.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dependency {
    /// The parent task.
    pub task: TaskId,
    /// How it must end.
    pub condition: Condition,
}

impl fmt::Display for Dependency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.condition, self.task)
    }
}

/// Checks a task's dependencies: at most [`MAX_PARENTS`], each parent
/// once.
pub(super) fn check_dependencies(after: &[Dependency]) -> Result<(), ValidationError> {
    if after.len() > MAX_PARENTS {
        return Err(ValidationError::too_large(
            "dependencies",
            after.len(),
            MAX_PARENTS,
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for d in after {
        if !seen.insert(&d.task) {
            return Err(ValidationError::Invalid {
                field: "dependencies",
                reason: format!("task {} is named twice", d.task),
            });
        }
    }
    Ok(())
}

/// The reason a dependent is cancelled because `root` ended as
/// `status`: its condition on `parent` can never hold. `root` is the task
/// whose end started the chain (the parent itself, or an ancestor).
pub fn never_reason(dependency: &Dependency, status: TaskStatus, root: &TaskId) -> String {
    if &dependency.task == root {
        format!(
            "dependency never satisfied: {} and task {} {status}",
            dependency.condition, dependency.task
        )
    } else {
        format!(
            "dependency never satisfied: {} and task {} {status} (root: task {root})",
            dependency.condition, dependency.task
        )
    }
}

/// The root a dependent cancelled with [`never_reason`] names: the task
/// whose end began the chain. `None` for any other reason.
pub fn root_of(reason: &str) -> Option<TaskId> {
    let rest = reason.strip_prefix("dependency never satisfied: ")?;
    if let Some((_, root)) = rest.rsplit_once(" (root: task ") {
        return TaskId::new(root.strip_suffix(')')?).ok();
    }
    // `<condition> and task <parent> <status>`, or `task <parent> no
    // longer exists`: the parent is the root.
    let parent = match rest.split_once(" and task ") {
        Some((_, parent)) => parent,
        None => rest.strip_prefix("task ")?,
    };
    TaskId::new(parent.split(' ').next()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_slurm() {
        use Condition::*;
        use TaskStatus::*;
        for (c, s, v) in [
            (AfterOk, Completed, Some(Verdict::Met)),
            (AfterOk, Failed, Some(Verdict::Never)),
            (AfterOk, Cancelled, Some(Verdict::Never)),
            (AfterAny, Failed, Some(Verdict::Met)),
            (AfterAny, Cancelled, Some(Verdict::Met)),
            (AfterNotOk, Completed, Some(Verdict::Never)),
            (AfterNotOk, Failed, Some(Verdict::Met)),
            (AfterNotOk, Cancelled, Some(Verdict::Met)),
            (AfterOk, Pending, None),
            (AfterAny, Running, None),
        ] {
            assert_eq!(c.verdict(s), v, "{c} {s}");
        }
    }

    #[test]
    fn the_root_reads_back_from_the_reason() {
        let (a, b) = (
            TaskId::new("task-1-1").unwrap(),
            TaskId::new("task-1-2").unwrap(),
        );
        let on_a = Dependency {
            task: a.clone(),
            condition: Condition::AfterOk,
        };
        let on_b = Dependency {
            task: b.clone(),
            condition: Condition::AfterOk,
        };
        let direct = never_reason(&on_a, TaskStatus::Failed, &a);
        assert_eq!(root_of(&direct), Some(a.clone()));
        let chained = never_reason(&on_b, TaskStatus::Cancelled, &a);
        assert_eq!(root_of(&chained), Some(a));
        assert_eq!(root_of("cancelled by user"), None);
        let gone = "dependency never satisfied: task task-1-1 no longer exists";
        assert_eq!(root_of(gone), Some(TaskId::new("task-1-1").unwrap()));
    }

    #[test]
    fn a_parent_named_twice_is_refused() {
        let t = TaskId::new("t1").unwrap();
        let d = |c| Dependency {
            task: t.clone(),
            condition: c,
        };
        assert!(check_dependencies(&[d(Condition::AfterOk)]).is_ok());
        assert!(check_dependencies(&[d(Condition::AfterOk), d(Condition::AfterAny)]).is_err());
    }
}
