//! One run of a task on a worker: which assignment it is and how it ended.

use serde::{Deserialize, Serialize};

use super::{TaskId, Usage};

/// One assignment of a task: the task and its attempt number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunningTask {
    /// The task.
    pub task: TaskId,
    /// Which assignment of it (see [`crate::model::TaskRecord::attempt`]).
    pub attempt: u32,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, if it exited normally.
    pub code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// Whether it was killed for exceeding its memory limit.
    pub oom_killed: bool,
    /// What it used, where the runtime measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl ExitStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}
