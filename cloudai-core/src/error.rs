//! One error type for every backend trait, classified by what the caller
//! should do about it (retry, fix the input, give up), as object_store does.

use crate::model::{Term, ValidationError};

/// A boxed error from a backend library (driver, daemon client, codec).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used by every trait in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors by meaning. Adapters map their native errors onto these so that the
/// services (and the gRPC layer) can react without knowing the backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named object does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked up (`"task"`, `"worker"`, `"container"`, ...).
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The object existed and was removed after the retention period
    /// (a finished task: its id tells when it was created).
    #[error("{kind} {id} has expired: finished {kind}s are kept for {}s", retention.as_secs())]
    Expired {
        /// What was looked up (`"task"`).
        kind: &'static str,
        /// Its id.
        id: String,
        /// How long finished ones are kept.
        retention: std::time::Duration,
    },
    /// An object with this id exists already.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// What was created (`"task"`, `"worker"`, ...).
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The identity is held by someone live (a worker id whose current
    /// session answers from another instance); the message names who.
    #[error("in use: {0}")]
    InUse(String),
    /// The request is valid but the current state forbids it
    /// (for example, cancelling a task that already completed).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A master's write was refused because the document it would change
    /// was fenced by a later term: another master has taken over, and this
    /// one must stop acting.
    #[error("fenced: a write of term {writer} reached a document fenced at term {fence}")]
    Fenced {
        /// The writer's term.
        writer: Term,
        /// The document's fence.
        fence: Term,
    },
    /// This master does not lead: the call goes to the leader, whose
    /// advertised address is given when this master knows it.
    #[error("not the leader: {}", match leader {
        Some(a) => format!("the leader is at {a}"),
        None => "no master leads right now; retry shortly".to_string(),
    })]
    NotLeader {
        /// Where the leader is reached, if one leads.
        leader: Option<String>,
    },
    /// The request itself is malformed; retrying it cannot help.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] ValidationError),
    /// The backend or peer cannot be reached now; back off and retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed before an answer came; the outcome is unknown.
    #[error("deadline exceeded: {0}")]
    Timeout(String),
    /// The caller's credentials were missing or wrong.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Any other failure inside a backend.
    #[error("{backend} error: {source}")]
    Backend {
        /// Which backend failed (`"mongodb"`, `"docker"`, ...).
        backend: &'static str,
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(kind: &'static str, id: impl ToString) -> Self {
        Error::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    /// Whether trying again later may succeed (the peer or backend was
    /// unreachable or slow), as opposed to a definite answer.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::Timeout(_) | Error::NotLeader { .. }
        )
    }
}
