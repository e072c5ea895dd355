//! The CLI's exit codes. `run` and `monitor` exit with the task's own code
//! when it exited (128 + the signal when one killed it, as a shell says);
//! every other outcome has a code of its own, from sysexits(3) and just
//! above it, clear of the codes tasks commonly use (0–2, 126–165).

use cloudai_core::master::TaskView;
use cloudai_core::model::{EndKind, TaskStatus};
use cloudai_core::Error;

/// The command line is wrong (an unknown flag, a missing argument).
pub(crate) const USAGE: u8 = 64;
/// The request is invalid (a bad id, an impossible resource request).
pub(crate) const INVALID: u8 = 65;
/// What was named does not exist (or expired).
pub(crate) const NOT_FOUND: u8 = 66;
/// The master (or the worker behind it) cannot be reached in time.
pub(crate) const UNAVAILABLE: u8 = 69;
/// Something failed inside a backend.
pub(crate) const INTERNAL: u8 = 70;
/// The request conflicts with the state (already exists, in use, refused).
pub(crate) const CONFLICT: u8 = 73;
/// The token (or certificate) was refused.
pub(crate) const UNAUTHENTICATED: u8 = 77;
/// The task followed was cancelled.
pub(crate) const CANCELLED: u8 = 80;
/// The task followed failed because its worker was lost.
pub(crate) const WORKER_LOST: u8 = 81;
/// The task followed failed without exiting (it could not start, its
/// worker shut down under it, a drain stopped it).
pub(crate) const NO_EXIT: u8 = 82;
/// The task followed ran past its time limit (Slurm's TIMEOUT).
pub(crate) const TIMED_OUT: u8 = 83;
/// Configuration: a bad flag value, no token, an unreachable store (the
/// master could not start, or the command could not be sent).
pub(crate) const CONFIG: u8 = 78;
/// Standard output was closed (`| head`): the CLI ends quietly.
pub(crate) const CLOSED_PIPE: u8 = 141;

/// An error's code and its kind, as `--json` names it.
pub(crate) fn of_error(e: &Error) -> (u8, &'static str) {
    match e {
        Error::NotFound { .. } | Error::Expired { .. } => (NOT_FOUND, "not_found"),
        Error::AlreadyExists { .. } | Error::InUse(_) | Error::Conflict(_) => {
            (CONFLICT, "conflict")
        }
        Error::InvalidInput(_) => (INVALID, "invalid_input"),
        Error::Unavailable(_) | Error::Timeout(_) | Error::NotLeader { .. } => {
            (UNAVAILABLE, "unavailable")
        }
        Error::Unauthenticated(_) => (UNAUTHENTICATED, "unauthenticated"),
        _ => (INTERNAL, "internal"),
    }
}

/// How a followed task ended, as an exit code: its last attempt's cause
/// first (a timeout, a loss), then its exit.
pub(crate) fn of_task(v: &TaskView) -> u8 {
    let result = v.result.as_ref();
    let cause = v.task.history.last().map(|a| a.cause.kind());
    match v.task.status {
        TaskStatus::Completed => 0,
        TaskStatus::Cancelled => CANCELLED,
        _ if cause == Some(EndKind::Timeout) => TIMED_OUT,
        _ if cause == Some(EndKind::Loss)
            || v.task
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("worker lost")) =>
        {
            WORKER_LOST
        }
        _ => match (
            result.and_then(|r| r.exit_code),
            result.and_then(|r| r.signal),
        ) {
            (Some(code), _) => u8::try_from(code).unwrap_or(NO_EXIT),
            (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(NO_EXIT),
            (None, None) => NO_EXIT,
        },
    }
}
