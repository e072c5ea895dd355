//! Driver errors mapped onto [`cloudai_core::Error`] by meaning.

use cloudai_core::Error;
use mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Server error codes that mean "this node cannot serve now, try again"
/// (shutdown, stepdown, unreachable peers) rather than a definite answer.
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Whether the write failed on a unique index (`_id`).
pub(crate) fn is_duplicate_key(e: &DriverError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        _ => false,
    }
}

fn is_unreachable(e: &DriverError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::Shutdown => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(c)) => TRANSIENT_CODES.contains(&c.code),
        _ => false,
    }
}

/// Server selection, network and shutdown errors are
/// [`Error::Unavailable`] (retry later); anything else is
/// [`Error::Backend`]. `hosts` names the servers, never the full URI, which
/// may hold a password.
pub(crate) fn map(e: DriverError, hosts: &str) -> Error {
    if is_unreachable(&e) {
        // The kind alone: the full error adds empty label and source lists.
        Error::Unavailable(format!("MongoDB unreachable at {hosts}: {}", e.kind))
    } else {
        Error::Backend {
            backend: "mongodb",
            source: Box::new(e),
        }
    }
}
