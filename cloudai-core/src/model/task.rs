use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::dependency::check_dependencies;
use super::labels::{check_constraints, check_labels};
use super::{
    ArrayMember, Attempt, AttemptCounts, AttemptPolicy, Constraint, ContainerOptions, Dependency,
    EndCause, Labels, Resources, TaskId, Timestamp, Usage, ValidationError, WorkerId,
};

/// Largest command line accepted (all arguments together), in bytes. Far
/// below the kernel's `ARG_MAX`, so a too-long command fails at submit time
/// with a clear error instead of at `exec` on a worker.
pub const MAX_COMMAND_BYTES: usize = 128 * 1024;
/// Largest image reference accepted, in bytes.
const MAX_IMAGE_BYTES: usize = 512;
/// Largest environment (keys and values together), in bytes.
const MAX_ENV_BYTES: usize = 128 * 1024;
/// Longest cancel grace period a task may ask for.
const MAX_GRACE: Duration = Duration::from_secs(3600);

/// What to run: the user's request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Container image (recorded but unused by the local-process runtime).
    pub image: String,
    /// Program and arguments; empty means the image's default command.
    pub command: Vec<String>,
    /// Environment variables for the task.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resources reserved on the worker while the task runs.
    pub resources: Resources,
    /// How long a cancelled task gets between SIGTERM and SIGKILL.
    #[serde(with = "duration_ms", rename = "cancel_grace_ms")]
    pub cancel_grace: Duration,
    /// Run only on this worker (the CLI's `task <worker> <image>`); `None`
    /// lets the scheduler choose.
    #[serde(default)]
    pub pin: Option<WorkerId>,
    /// Retries, requeues and the time limit (a record stored before tasks
    /// had a policy reads as [`AttemptPolicy::legacy`]).
    #[serde(default = "AttemptPolicy::legacy")]
    pub policy: AttemptPolicy,
    /// Working directory, mounts, user and `/dev/shm` of its container.
    #[serde(default, skip_serializing_if = "ContainerOptions::is_default")]
    pub options: ContainerOptions,
    /// A name the user gives it (`tasks --name` finds it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The user's labels (`tasks --label k=v` finds it).
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Higher runs first among tasks that fit (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// What its worker's labels must satisfy (all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// The parents it waits on, and how each must end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Dependency>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// Longest task name, in bytes.
const MAX_NAME_BYTES: usize = 253;

impl TaskSpec {
    /// Default grace between SIGTERM and SIGKILL on cancel (10 s, as in the original system).
    pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(10);

    /// A digest of the whole spec (SHA-256 of its JSON, in hex): a submit
    /// retried under one request id must carry the same spec.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        // Every map in a spec is ordered, so the JSON is canonical.
        let json = serde_json::to_vec(self).unwrap_or_default();
        sha2::Sha256::digest(&json)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A spec with no env and the default grace.
    pub fn new(image: impl Into<String>, command: Vec<String>, resources: Resources) -> Self {
        TaskSpec {
            image: image.into(),
            command,
            env: BTreeMap::new(),
            resources,
            cancel_grace: Self::DEFAULT_CANCEL_GRACE,
            pin: None,
            policy: AttemptPolicy::default(),
            options: ContainerOptions::default(),
            name: None,
            labels: Labels::new(),
            priority: 0,
            constraints: Vec::new(),
            after: Vec::new(),
        }
    }

    /// Checks every field; a spec that passes can be stored, sent and run.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.image.trim().is_empty() {
            return Err(ValidationError::Empty { field: "image" });
        }
        if self.image.len() > MAX_IMAGE_BYTES {
            return Err(ValidationError::too_large(
                "image",
                format!("{} bytes", self.image.len()),
                MAX_IMAGE_BYTES,
            ));
        }
        if let Some(found) = self
            .image
            .chars()
            .find(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValidationError::BadCharacter {
                field: "image",
                found,
            });
        }
        let command_bytes: usize = self.command.iter().map(|a| a.len() + 1).sum();
        if command_bytes > MAX_COMMAND_BYTES {
            return Err(ValidationError::too_large(
                "command",
                format!("{command_bytes} bytes"),
                MAX_COMMAND_BYTES,
            ));
        }
        if self.command.iter().any(|a| a.contains('\0')) {
            return Err(ValidationError::BadCharacter {
                field: "command",
                found: '\0',
            });
        }
        let env_bytes: usize = self.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if env_bytes > MAX_ENV_BYTES {
            return Err(ValidationError::too_large(
                "env",
                format!("{env_bytes} bytes"),
                MAX_ENV_BYTES,
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() {
                return Err(ValidationError::Empty { field: "env name" });
            }
            if let Some(found) = k.chars().find(|c| *c == '=' || *c == '\0') {
                return Err(ValidationError::BadCharacter {
                    field: "env name",
                    found,
                });
            }
            if v.contains('\0') {
                return Err(ValidationError::BadCharacter {
                    field: "env value",
                    found: '\0',
                });
            }
        }
        if self.cancel_grace > MAX_GRACE {
            return Err(ValidationError::too_large(
                "cancel grace",
                format!("{:?}", self.cancel_grace),
                format!("{MAX_GRACE:?}"),
            ));
        }
        if let Some(name) = &self.name {
            if name.trim().is_empty() {
                return Err(ValidationError::Empty { field: "name" });
            }
            if name.len() > MAX_NAME_BYTES {
                return Err(ValidationError::too_large(
                    "name",
                    format!("{} bytes", name.len()),
                    MAX_NAME_BYTES,
                ));
            }
            if let Some(found) = name.chars().find(|c| c.is_control()) {
                return Err(ValidationError::BadCharacter {
                    field: "name",
                    found,
                });
            }
        }
        check_labels(&self.labels)?;
        check_constraints(&self.constraints)?;
        check_dependencies(&self.after)?;
        self.policy.validate()?;
        self.options.validate()?;
        self.resources.validate()
    }
}

/// Where a task is in its life. `completed`, `failed` and `cancelled` are
/// terminal: once reached, nothing changes the status again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Accepted, waiting for a worker with room.
    Pending,
    /// Assigned to a worker, which holds its resources.
    Running,
    /// Exited with code 0.
    Completed,
    /// Exited non-zero, could not start, or its worker was lost.
    Failed,
    /// Stopped at a user's request.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    /// Whether this status is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The lowercase name used in stores, on the wire and in the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ValidationError::BadCharacter {
                field: "task status",
                found: s.chars().next().unwrap_or(' '),
            })
    }
}

/// A task as the store keeps it. The assignment (which worker runs it) lives
/// in the same record as the status, so both change in one atomic write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task's id.
    pub id: TaskId,
    /// What to run.
    pub spec: TaskSpec,
    /// Current status.
    pub status: TaskStatus,
    /// The worker it is (or was last) assigned to.
    pub worker: Option<WorkerId>,
    /// How many times it has been assigned: the current assignment's number.
    /// Reports and stops name the attempt they concern, so a late message
    /// about an earlier assignment can never touch the current one (a
    /// fencing token, like a Nomad allocation id).
    #[serde(default)]
    pub attempt: u32,
    /// Why it is in its status (queue reason, failure reason, ...).
    pub reason: Option<String>,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When its status last changed.
    pub updated_at: Timestamp,
    /// When it reached a terminal status.
    pub finished_at: Option<Timestamp>,
    /// Its array and index, if it was submitted as one of many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<ArrayMember>,
    /// Every attempt a worker ran that has ended, oldest first (at most
    /// [`super::MAX_ATTEMPTS`]); the retry budgets count it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Attempt>,
    /// While pending for a retry: not placed before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// When the current attempt was assigned (its run starts no earlier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned_at: Option<Timestamp>,
    /// The GPU indices on `worker` that the current (or last) attempt got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
}

impl TaskRecord {
    /// A new pending task.
    pub fn new(id: TaskId, spec: TaskSpec, now: Timestamp) -> Self {
        TaskRecord {
            id,
            spec,
            status: TaskStatus::Pending,
            worker: None,
            attempt: 0,
            reason: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
            array: None,
            history: Vec::new(),
            not_before: None,
            assigned_at: None,
            gpus: Vec::new(),
        }
    }

    /// How many attempts a worker ran or runs: the ended ones, and the
    /// current one while it runs.
    pub fn attempts_run(&self) -> usize {
        self.history.len() + usize::from(self.status == TaskStatus::Running)
    }

    /// What the retry budgets have used so far.
    pub fn counts(&self) -> AttemptCounts {
        AttemptCounts::of(&self.history)
    }

    /// Pending, but its previous attempt is not known to have ended yet:
    /// the attempt and the worker it may still run on. It is not placed
    /// again until that end is known.
    pub fn ending(&self) -> Option<(&WorkerId, u32)> {
        match (&self.worker, self.status) {
            (Some(w), TaskStatus::Pending) => Some((w, self.attempt)),
            _ => None,
        }
    }
}

/// The one recorded result of a task: what its worker reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The task.
    pub task_id: TaskId,
    /// The worker that ran it.
    pub worker_id: WorkerId,
    /// Which assignment of the task this run was (see [`TaskRecord::attempt`]).
    #[serde(default)]
    pub attempt: u32,
    /// The task's final status (a cancelled task keeps `cancelled` even when
    /// its worker saw the process exit on its own).
    pub status: TaskStatus,
    /// The exit code, when the process exited.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// The end of the run's stdout and stderr in write order, bounded by
    /// the worker.
    pub logs: String,
    /// Offset of the first byte of `logs` in the run's output: how many
    /// bytes before it were left out (0: `logs` is the whole output).
    #[serde(default)]
    pub logs_offset: u64,
    /// A short explanation (for example "worker was terminated while task was running").
    pub message: Option<String>,
    /// Why the run ended (stores and the wire read a result that predates
    /// causes as [`EndCause::inferred`] from its status and exit).
    pub cause: EndCause,
    /// When the worker started the task.
    pub started_at: Option<Timestamp>,
    /// When the worker saw it end.
    pub finished_at: Timestamp,
    /// What the run used, where its runtime measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

pub(crate) mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TaskSpec {
        TaskSpec::new(
            "busybox:latest",
            vec!["sleep".into(), "1".into()],
            Resources::new(1.0, 0.5, 0.0, 0).unwrap(),
        )
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn empty_image_and_huge_command_are_refused() {
        let mut s = spec();
        s.image = " ".into();
        assert_eq!(s.validate(), Err(ValidationError::Empty { field: "image" }));
        let mut s = spec();
        s.command = vec!["x".repeat(1 << 20)];
        assert!(matches!(
            s.validate(),
            Err(ValidationError::TooLarge {
                field: "command",
                ..
            })
        ));
    }

    #[test]
    fn bad_env_and_grace_are_refused() {
        let mut s = spec();
        s.env.insert("A=B".into(), "v".into());
        assert!(matches!(
            s.validate(),
            Err(ValidationError::BadCharacter {
                field: "env name",
                ..
            })
        ));
        let mut s = spec();
        s.cancel_grace = Duration::from_secs(7200);
        assert!(matches!(
            s.validate(),
            Err(ValidationError::TooLarge { .. })
        ));
    }

    #[test]
    fn status_names_round_trip() {
        for st in TaskStatus::ALL {
            assert_eq!(st.as_str().parse::<TaskStatus>(), Ok(st));
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn records_round_trip_through_serde() {
        let rec = TaskRecord::new(
            TaskId::new("t1").unwrap(),
            spec(),
            Timestamp::from_millis(5),
        );
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains("\"cancel_grace_ms\":10000"));
        assert_eq!(serde_json::from_str::<TaskRecord>(&json).unwrap(), rec);
    }
}
