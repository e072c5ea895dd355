//! A task's attempts: how each one ended ([`EndCause`]), the record kept
//! of each ([`Attempt`]), and what its history counts ([`AttemptCounts`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{TaskResult, TaskStatus, Timestamp, Usage, ValidationError, WorkerId};

/// The most attempts any task gets, whatever its policy.
pub const MAX_ATTEMPTS: u32 = 20;
/// Bytes of each attempt's output kept in the task's history.
pub const ATTEMPT_LOG_BYTES: usize = 64 * 1024;
/// Environment variable holding the task's id in every attempt.
pub const TASK_ID_ENV: &str = "CLOUDAI_TASK_ID";
/// Environment variable holding the attempt's number in every attempt.
pub const ATTEMPT_ENV: &str = "CLOUDAI_ATTEMPT";

/// Why an attempt ended. The retry decision
/// ([`crate::attempts::next`]) is one `match` over these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndCause {
    /// Exited with code 0.
    Completed,
    /// Exited with a non-zero code.
    Exited,
    /// Ended by a signal it did not get from us.
    Signalled,
    /// Killed for exceeding its memory limit.
    OutOfMemory,
    /// Could not start (a bad command, an image that could not be had).
    StartFailed,
    /// Ran past its time limit and was stopped.
    TimedOut,
    /// Stopped at a user's request.
    Cancelled,
    /// Its worker was declared lost.
    WorkerLost,
    /// Its worker came back without it (it restarted, or its runtime lost
    /// the run).
    WorkerRestarted,
    /// Its worker stopped it on its own, cut off from the master for so
    /// long that the master would declare it lost.
    CutOff,
    /// Its worker stopped it on its own, cut off while the masters
    /// changed hands (it was placed before the master that heard of it
    /// took over): requeued at no cost to the crash budget.
    Takeover,
    /// Its worker's drain deadline passed.
    Drained,
    /// Its worker shut down under it.
    WorkerShutdown,
    /// Its worker refused the assignment for good (an invalid spec, say).
    Refused,
}

/// What kind of end a cause is, for the retry budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndKind {
    /// The task succeeded.
    Success,
    /// The task failed on its own: counts against `retries`.
    Task,
    /// The task ran out of time.
    Timeout,
    /// A user stopped it: never retried.
    User,
    /// Its worker was lost: counts against the crash limit.
    Loss,
    /// An operator ended it (a drain, a shutdown): requeued without cost.
    Operator,
    /// It can never run as asked.
    Refusal,
}

impl EndCause {
    /// Every cause.
    pub const ALL: [EndCause; 14] = [
        EndCause::Completed,
        EndCause::Exited,
        EndCause::Signalled,
        EndCause::OutOfMemory,
        EndCause::StartFailed,
        EndCause::TimedOut,
        EndCause::Cancelled,
        EndCause::WorkerLost,
        EndCause::WorkerRestarted,
        EndCause::CutOff,
        EndCause::Takeover,
        EndCause::Drained,
        EndCause::WorkerShutdown,
        EndCause::Refused,
    ];

    /// Its kind.
    pub fn kind(self) -> EndKind {
        match self {
            EndCause::Completed => EndKind::Success,
            EndCause::Exited
            | EndCause::Signalled
            | EndCause::OutOfMemory
            | EndCause::StartFailed => EndKind::Task,
            EndCause::TimedOut => EndKind::Timeout,
            EndCause::Cancelled => EndKind::User,
            EndCause::WorkerLost | EndCause::WorkerRestarted | EndCause::CutOff => EndKind::Loss,
            EndCause::Drained | EndCause::WorkerShutdown | EndCause::Takeover => EndKind::Operator,
            EndCause::Refused => EndKind::Refusal,
        }
    }

    /// The snake-case name used on the wire, in stores and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            EndCause::Completed => "completed",
            EndCause::Exited => "exited",
            EndCause::Signalled => "signalled",
            EndCause::OutOfMemory => "out_of_memory",
            EndCause::StartFailed => "start_failed",
            EndCause::TimedOut => "timed_out",
            EndCause::Cancelled => "cancelled",
            EndCause::WorkerLost => "worker_lost",
            EndCause::WorkerRestarted => "worker_restarted",
            EndCause::CutOff => "cut_off",
            EndCause::Takeover => "takeover",
            EndCause::Drained => "drained",
            EndCause::WorkerShutdown => "worker_shutdown",
            EndCause::Refused => "refused",
        }
    }

    /// The cause a report from a worker that predates causes stands for.
    pub fn inferred(status: TaskStatus, exit_code: Option<i32>, signal: Option<i32>) -> EndCause {
        match (status, exit_code, signal) {
            (TaskStatus::Completed, ..) => EndCause::Completed,
            (TaskStatus::Cancelled, ..) => EndCause::Cancelled,
            (_, _, Some(_)) => EndCause::Signalled,
            (_, Some(_), None) => EndCause::Exited,
            _ => EndCause::StartFailed,
        }
    }
}

impl fmt::Display for EndCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for EndCause {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EndCause::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ValidationError::Invalid {
                field: "end cause",
                reason: format!("{s:?} is not an end cause"),
            })
    }
}

/// One attempt of a task that a worker accepted, as kept in the task's
/// history once it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Its number (the task's `attempt` while it ran).
    pub attempt: u32,
    /// The worker it ran on.
    pub worker: WorkerId,
    /// Why it ended.
    pub cause: EndCause,
    /// When the worker started it, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When its end was recorded.
    pub ended_at: Timestamp,
    /// Its exit code, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// What the worker or the master said of its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The end of its output, at most [`ATTEMPT_LOG_BYTES`] (empty for
    /// the final attempt, whose output is in the task's result).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logs: String,
    /// Offset of the first byte of `logs` in the attempt's output.
    #[serde(default)]
    pub logs_offset: u64,
    /// What it used, where its runtime measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Attempt {
    /// An attempt that ended without a report from its worker (it was
    /// lost, drained, cancelled, timed out by the master).
    pub fn ended(
        attempt: u32,
        worker: WorkerId,
        cause: EndCause,
        at: Timestamp,
        message: Option<String>,
    ) -> Self {
        Attempt {
            attempt,
            worker,
            cause,
            started_at: None,
            ended_at: at,
            exit_code: None,
            signal: None,
            message,
            logs: String::new(),
            logs_offset: 0,
            usage: None,
        }
    }

    /// The attempt a worker's report describes, its output cut to the
    /// last [`ATTEMPT_LOG_BYTES`].
    pub fn reported(result: &TaskResult) -> Self {
        let (logs, logs_offset) = tail(&result.logs, result.logs_offset, ATTEMPT_LOG_BYTES);
        Attempt {
            attempt: result.attempt,
            worker: result.worker_id.clone(),
            cause: result.cause,
            started_at: result.started_at,
            ended_at: result.finished_at,
            exit_code: result.exit_code,
            signal: result.signal,
            message: result.message.clone(),
            logs,
            logs_offset,
            usage: result.usage,
        }
    }

    /// This attempt without its output (the final one: the result has it).
    pub fn without_logs(mut self) -> Self {
        self.logs = String::new();
        self.logs_offset = 0;
        self
    }
}

/// The last `max` bytes of `text` (whose first byte is at `offset`), cut
/// at a character boundary, with the new offset.
fn tail(text: &str, offset: u64, max: usize) -> (String, u64) {
    if text.len() <= max {
        return (text.to_string(), offset);
    }
    let mut cut = text.len() - max;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    (text[cut..].to_string(), offset + cut as u64)
}

/// How many attempts of each kind a history holds: what the budgets count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptCounts {
    /// Attempts a worker ran, in all.
    pub total: u32,
    /// Task-caused failures, timeouts included.
    pub failures: u32,
    /// Worker losses.
    pub losses: u32,
}

impl AttemptCounts {
    /// Counts a history.
    pub fn of(history: &[Attempt]) -> Self {
        let mut c = AttemptCounts::default();
        for a in history {
            c.add(a.cause);
        }
        c
    }

    /// Counts one more attempt that ended so.
    pub fn add(&mut self, cause: EndCause) {
        self.total += 1;
        match cause.kind() {
            EndKind::Task | EndKind::Timeout => self.failures += 1,
            EndKind::Loss => self.losses += 1,
            EndKind::Success | EndKind::User | EndKind::Operator | EndKind::Refusal => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cause_names_round_trip() {
        for c in EndCause::ALL {
            assert_eq!(c.as_str().parse::<EndCause>(), Ok(c));
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
    }

    #[test]
    fn the_tail_of_a_long_output_is_kept_at_a_character_boundary() {
        let text = format!("{}é{}", "a".repeat(10), "b".repeat(5));
        let (kept, offset) = tail(&text, 100, 6);
        assert_eq!(kept, "bbbbb");
        assert_eq!(offset, 100 + 12);
        assert_eq!(tail("short", 0, 6), ("short".to_string(), 0));
    }

    #[test]
    fn counts_follow_the_kinds() {
        let w = WorkerId::new("w").unwrap();
        let h: Vec<Attempt> = [
            EndCause::Exited,
            EndCause::WorkerLost,
            EndCause::Drained,
            EndCause::TimedOut,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, c)| Attempt::ended(i as u32 + 1, w.clone(), c, Timestamp::ZERO, None))
        .collect();
        assert_eq!(
            AttemptCounts::of(&h),
            AttemptCounts {
                total: 4,
                failures: 2,
                losses: 1
            }
        );
    }
}
