//! How many tasks are in each status: [`StatusCounts`].

use serde::{Deserialize, Serialize};

use super::TaskStatus;

/// How many tasks are in each status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Waiting for a worker.
    pub pending: u64,
    /// Assigned to a worker.
    pub running: u64,
    /// Exited with code 0.
    pub completed: u64,
    /// Failed.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl StatusCounts {
    fn slot(&mut self, status: TaskStatus) -> &mut u64 {
        match status {
            TaskStatus::Pending => &mut self.pending,
            TaskStatus::Running => &mut self.running,
            TaskStatus::Completed => &mut self.completed,
            TaskStatus::Failed => &mut self.failed,
            TaskStatus::Cancelled => &mut self.cancelled,
        }
    }

    /// Tasks in `status`.
    pub fn get(&self, status: TaskStatus) -> u64 {
        match status {
            TaskStatus::Pending => self.pending,
            TaskStatus::Running => self.running,
            TaskStatus::Completed => self.completed,
            TaskStatus::Failed => self.failed,
            TaskStatus::Cancelled => self.cancelled,
        }
    }

    /// Counts `n` more tasks in `status`.
    pub fn add(&mut self, status: TaskStatus, n: u64) {
        *self.slot(status) += n;
    }

    /// Counts one task fewer in `status` (never below zero).
    pub fn remove(&mut self, status: TaskStatus) {
        let slot = self.slot(status);
        *slot = slot.saturating_sub(1);
    }

    /// Tasks in any status.
    pub fn total(&self) -> u64 {
        TaskStatus::ALL.iter().map(|s| self.get(*s)).sum()
    }

    /// Tasks in a final status.
    pub fn ended(&self) -> u64 {
        self.completed + self.failed + self.cancelled
    }
}
