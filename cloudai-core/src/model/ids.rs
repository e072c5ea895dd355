use std::fmt;

use serde::{Deserialize, Serialize};

use super::Timestamp;

use super::ValidationError;

/// Longest id accepted, in bytes.
const MAX_ID_LEN: usize = 128;

/// Checks an id: 1..=128 bytes of ASCII letters, digits, `.`, `_`, `-`, `:`.
/// Ids end up in container names, labels, log fields and database keys, so
/// the alphabet is kept to what all of those accept unescaped.
fn validate_id(field: &'static str, s: &str) -> Result<(), ValidationError> {
    if s.is_empty() {
        return Err(ValidationError::Empty { field });
    }
    if s.len() > MAX_ID_LEN {
        return Err(ValidationError::too_large(
            field,
            format!("{} bytes", s.len()),
            format!("{MAX_ID_LEN} bytes"),
        ));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        Some(found) => Err(ValidationError::BadCharacter { field, found }),
        None => Ok(()),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
                let s = s.into();
                validate_id($field, &s)?;
                Ok(Self(s))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

id_type!(
    /// Identifies a task across the cluster.
    TaskId,
    "task id"
);
id_type!(
    /// Identifies a task array: the tasks submitted together, each with
    /// its own index.
    ArrayId,
    "array id"
);
id_type!(
    /// Identifies a worker across the cluster.
    WorkerId,
    "worker id"
);
id_type!(
    /// Identifies one installation of a worker: it is kept in the worker's
    /// state directory, so a restart keeps it and a second process given
    /// the same worker id elsewhere has another.
    InstanceId,
    "worker instance"
);

id_type!(
    /// A client's name for one submit: a submit retried with the same one
    /// makes no second task (or array).
    RequestId,
    "request id"
);

/// A master's term: how many times the lease changed hands. Term 0 is a
/// single master without a lease. Every store write carries its writer's
/// term, and a document refuses a write from a term below its fence.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(u64);

impl Term {
    /// A single master without a lease.
    pub const ZERO: Term = Term(0);

    /// The term numbered `n`.
    pub const fn new(n: u64) -> Term {
        Term(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The term after this one.
    pub const fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TaskId {
    /// The `n`th id a master generates at `at`: `task-<ms>-<n>`. The id
    /// tells when the task was created ([`TaskId::created_at`]).
    pub fn generated(at: Timestamp, n: u64) -> TaskId {
        TaskId(format!("task-{}-{n}", at.as_millis()))
    }

    /// When a task with a generated id was created; `None` for another id.
    pub fn created_at(&self) -> Option<Timestamp> {
        let rest = self.0.strip_prefix("task-")?;
        let (ms, n) = rest.split_once('-')?;
        n.parse::<u64>().ok()?;
        ms.parse().ok().map(Timestamp::from_millis)
    }
}

impl ArrayId {
    /// The `n`th array id a master generates at `at`: `array-<ms>-<n>`.
    pub fn generated(at: Timestamp, n: u64) -> ArrayId {
        ArrayId(format!("array-{}-{n}", at.as_millis()))
    }
}

impl InstanceId {
    /// An instance id unique to this process, for a worker that keeps no
    /// state directory (each start is a new instance).
    pub fn ephemeral() -> InstanceId {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        InstanceId(format!("{:x}-{nanos:x}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_task_ids_tell_when_the_task_was_created() {
        let at = Timestamp::from_millis(1_764_570_000_123);
        let id = TaskId::generated(at, 42);
        assert_eq!(id.as_str(), "task-1764570000123-42");
        assert_eq!(TaskId::new(id.as_str()).unwrap().created_at(), Some(at));
        for other in ["t-1", "task-x-1", "task-12", "task-12-x"] {
            assert_eq!(TaskId::new(other).unwrap().created_at(), None, "{other}");
        }
    }

    #[test]
    fn ids_accept_the_documented_alphabet() {
        assert!(TaskId::new("task-1763298788").is_ok());
        assert!(WorkerId::new("node1.local:50052_a").is_ok());
    }

    #[test]
    fn ids_refuse_empty_long_and_odd_text() {
        assert_eq!(
            TaskId::new(""),
            Err(ValidationError::Empty { field: "task id" })
        );
        assert!(matches!(
            TaskId::new("x".repeat(129)),
            Err(ValidationError::TooLarge { .. })
        ));
        assert_eq!(
            WorkerId::new("a b"),
            Err(ValidationError::BadCharacter {
                field: "worker id",
                found: ' '
            })
        );
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<TaskId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<TaskId>("\"no/slash\"").is_err());
    }
}
