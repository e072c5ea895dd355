//! The domain model: ids, resources, task and worker records, runs,
//! timestamps.
//!
//! Everything here is plain data with serde support; validation happens once,
//! at construction, so the rest of the crate handles only valid values.

mod array;
mod attempt;
mod container;
mod counts;
mod dependency;
mod ids;
mod labels;
mod policy;
mod resources;
mod run;
mod task;
mod time;
mod usage;
mod validation;
mod worker;

pub use array::{
    ArrayIndices, ArrayMember, ArraySpec, ARRAY_ID_ENV, ARRAY_INDEX_ENV, MAX_ARRAY_TASKS,
};
pub use attempt::{
    Attempt, AttemptCounts, EndCause, EndKind, ATTEMPT_ENV, ATTEMPT_LOG_BYTES, MAX_ATTEMPTS,
    TASK_ID_ENV,
};
pub use container::{
    parse_size, ContainerOption, ContainerOptions, Mount, Tmpfs, User, MAX_MOUNTS,
};
pub use counts::StatusCounts;
pub use dependency::{never_reason, root_of, Condition, Dependency, Verdict, MAX_PARENTS};
pub use ids::{ArrayId, InstanceId, RequestId, TaskId, Term, WorkerId};
pub use labels::{
    admits_all, check_label_key, check_labels, parse_label, Constraint, Labels, MAX_CONSTRAINTS,
    MAX_LABELS,
};
pub use policy::AttemptPolicy;
pub use resources::Resources;
pub use run::{ExitStatus, RunningTask};
pub use task::{TaskRecord, TaskResult, TaskSpec, TaskStatus, MAX_COMMAND_BYTES};
pub use time::{parse_duration, Timestamp};
pub use usage::{Usage, UsageSummary};
pub use validation::ValidationError;
pub use worker::{Drain, Gpu, Heartbeat, Telemetry, WorkerIdentity, WorkerRecord, GPUS_ENV};
