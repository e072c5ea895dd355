//! What the stream carries: each [`Event`], the [`Cursor`] to resume
//! after it, and why a cursor may not resume ([`Resync`]).

use std::fmt;
use std::str::FromStr;

use crate::liveness::Health;
use crate::model::{EndCause, TaskId, TaskStatus, Timestamp, ValidationError, WorkerId};

/// Something observers may want to know (the CLI's `events`, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterEvent {
    /// A task was accepted, pending.
    Submitted {
        /// The task.
        id: TaskId,
    },
    /// A task changed status. A placement is the change to running: it
    /// names the worker and the attempt.
    Task {
        /// The task.
        id: TaskId,
        /// Old status.
        from: TaskStatus,
        /// New status.
        to: TaskStatus,
        /// Its worker after the change.
        worker: Option<WorkerId>,
        /// Its attempt after the change.
        attempt: u32,
    },
    /// A worker's health changed.
    Worker {
        /// The worker.
        id: WorkerId,
        /// Its new health.
        health: Health,
    },
    /// An attempt of a task ended and the task will run again: a retry
    /// after a failure, or a requeue after a loss, a drain or a shutdown.
    Again {
        /// The task.
        id: TaskId,
        /// The attempt that ended.
        attempt: u32,
        /// Why it ended.
        cause: EndCause,
        /// Not placed before this time (a retry's delay), if any.
        not_before: Option<Timestamp>,
    },
    /// A worker was drained (`true`) or undrained (`false`).
    Drain {
        /// The worker.
        id: WorkerId,
        /// Whether it is now draining.
        draining: bool,
    },
}

/// One event with its place in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its number: one more than the event before it.
    pub seq: u64,
    /// When the master recorded it.
    pub at: Timestamp,
    /// What happened.
    pub kind: MasterEvent,
}

/// Where a watcher stands: the master's epoch and the last event seen.
/// Written `epoch:seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The master run the sequence numbers belong to.
    pub epoch: String,
    /// The last event seen (0: none yet).
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ValidationError::Invalid {
            field: "cursor",
            reason: format!("{s:?}: {reason} (expected <epoch>:<seq>, as an event prints it)"),
        };
        let (epoch, seq) = s.rsplit_once(':').ok_or_else(|| bad("no ':'"))?;
        if epoch.is_empty() {
            return Err(bad("empty epoch"));
        }
        let seq = seq.parse().map_err(|_| bad("seq is not a number"))?;
        Ok(Cursor {
            epoch: epoch.to_string(),
            seq,
        })
    }
}

/// Why a cursor cannot be resumed without a gap: the watcher should list
/// the current state again and watch from now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Resync {
    /// The cursor belongs to another master run.
    #[error("cursor is from master epoch {cursor}, this master's epoch is {current}: list again and watch from now")]
    OtherEpoch {
        /// The cursor's epoch.
        cursor: String,
        /// This master's.
        current: String,
    },
    /// The events after the cursor are no longer buffered.
    #[error("events after {after} are no longer kept (the oldest kept is {oldest}): list again and watch from now")]
    TooOld {
        /// The cursor's seq.
        after: u64,
        /// The oldest event still kept.
        oldest: u64,
    },
    /// The cursor names an event this master has not recorded yet.
    #[error("cursor seq {after} is past the newest event {newest}")]
    Ahead {
        /// The cursor's seq.
        after: u64,
        /// The newest event.
        newest: u64,
    },
}
