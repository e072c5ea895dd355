//! The documents as stored, one private struct per collection, and their
//! conversions to and from the core records.
//!
//! Every number is a BSON int64 (timestamps in milliseconds, resource
//! amounts in their integer units, attempts). bson would serialize the core
//! records' `u64` fields as int64 itself, but only while they fit and with
//! an opaque error when they do not; the explicit mapping here refuses an
//! out-of-range value as invalid input on the way in and a negative or
//! malformed one as a corrupt document on the way out, and keeps the stored
//! field names independent of the core's serde attributes.

use std::time::Duration;

use cloudai_core::model::{
    ArrayId, ArrayMember, Attempt, AttemptPolicy, Constraint, ContainerOptions, Dependency, Drain,
    EndCause, Gpu, InstanceId, Labels, RequestId, Resources, TaskId, TaskRecord, TaskResult,
    TaskSpec, TaskStatus, Telemetry, Term, Timestamp, Usage, ValidationError, WorkerId,
    WorkerRecord,
};
use cloudai_core::store::{LeaseRecord, RequestClaim, Submitted};
use cloudai_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// A stored number that did not fit the record (negative, too large).
pub(crate) fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "mongodb",
        source: format!("corrupt document: {what}").into(),
    }
}

/// `u64` → int64, refusing values above `i64::MAX`.
pub(crate) fn to_i64(field: &'static str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| {
        Error::InvalidInput(ValidationError::TooLarge {
            field,
            value: v.to_string(),
            limit: i64::MAX.to_string(),
        })
    })
}

fn to_u64(field: &str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| corrupt(format!("{field} is {v}")))
}

fn to_u32(field: &str, v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt(format!("{field} is {v}")))
}

pub(crate) fn ts(field: &'static str, t: Timestamp) -> Result<i64> {
    to_i64(field, t.as_millis())
}

fn from_ts(field: &str, v: i64) -> Result<Timestamp> {
    to_u64(field, v).map(Timestamp::from_millis)
}

fn ms(field: &'static str, d: Duration) -> Result<i64> {
    to_i64(field, u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn from_ms(field: &str, v: i64) -> Result<Duration> {
    to_u64(field, v).map(Duration::from_millis)
}

/// A task's attempt policy. A task stored before tasks had one has none,
/// and reads as [`AttemptPolicy::legacy`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PolicyDoc {
    retries: i64,
    retry_delay_ms: i64,
    crash_limit: i64,
    requeue: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_limit_ms: Option<i64>,
    #[serde(default)]
    retry_on_timeout: bool,
}

impl PolicyDoc {
    fn from_core(p: &AttemptPolicy) -> Result<Self> {
        Ok(PolicyDoc {
            retries: i64::from(p.retries),
            retry_delay_ms: ms("retry delay", p.retry_delay)?,
            crash_limit: i64::from(p.crash_limit),
            requeue: p.requeue,
            time_limit_ms: p.time_limit.map(|l| ms("time limit", l)).transpose()?,
            retry_on_timeout: p.retry_on_timeout,
        })
    }

    fn into_core(self) -> Result<AttemptPolicy> {
        Ok(AttemptPolicy {
            retries: to_u32("retries", self.retries)?,
            retry_delay: from_ms("retry_delay_ms", self.retry_delay_ms)?,
            crash_limit: to_u32("crash_limit", self.crash_limit)?,
            requeue: self.requeue,
            time_limit: self
                .time_limit_ms
                .map(|l| from_ms("time_limit_ms", l))
                .transpose()?,
            retry_on_timeout: self.retry_on_timeout,
        })
    }
}

/// An entry of a task's history as read back: a sub-document, as MongoDB
/// stores what `$push` appends, or that document's JSON text, as the
/// MongoDB-wire test server (nx-27017) stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum HistoryEntry {
    Doc(AttemptDoc),
    Text(String),
}

impl HistoryEntry {
    fn into_core(self) -> Result<Attempt> {
        match self {
            HistoryEntry::Doc(d) => d.into_core(),
            HistoryEntry::Text(t) => serde_json::from_str::<AttemptDoc>(&t)
                .map_err(|e| corrupt(format!("history entry {t:?}: {e}")))?
                .into_core(),
        }
    }
}

/// One ended attempt in a task's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AttemptDoc {
    attempt: i64,
    worker: WorkerId,
    cause: EndCause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    ended_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    logs: String,
    #[serde(default)]
    logs_offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<UsageDoc>,
}

/// What a run used, inside an attempt or a result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UsageDoc {
    #[serde(default)]
    wall_ms: i64,
    user_cpu_ms: i64,
    system_cpu_ms: i64,
    peak_memory_bytes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pull_ms: Option<i64>,
}

impl UsageDoc {
    fn from_core(u: &Usage) -> Result<Self> {
        Ok(UsageDoc {
            wall_ms: to_i64("wall_ms", u.wall_ms)?,
            user_cpu_ms: to_i64("user_cpu_ms", u.user_cpu_ms)?,
            system_cpu_ms: to_i64("system_cpu_ms", u.system_cpu_ms)?,
            peak_memory_bytes: to_i64("peak_memory_bytes", u.peak_memory_bytes)?,
            pull_ms: u.pull_ms.map(|p| to_i64("pull_ms", p)).transpose()?,
        })
    }

    fn into_core(self) -> Result<Usage> {
        Ok(Usage {
            wall_ms: to_u64("wall_ms", self.wall_ms)?,
            user_cpu_ms: to_u64("user_cpu_ms", self.user_cpu_ms)?,
            system_cpu_ms: to_u64("system_cpu_ms", self.system_cpu_ms)?,
            peak_memory_bytes: to_u64("peak_memory_bytes", self.peak_memory_bytes)?,
            pull_ms: self.pull_ms.map(|p| to_u64("pull_ms", p)).transpose()?,
        })
    }
}

impl AttemptDoc {
    pub(crate) fn from_core(a: &Attempt) -> Result<Self> {
        Ok(AttemptDoc {
            attempt: i64::from(a.attempt),
            worker: a.worker.clone(),
            cause: a.cause,
            started_at: a.started_at.map(|s| ts("started_at", s)).transpose()?,
            ended_at: ts("ended_at", a.ended_at)?,
            exit_code: a.exit_code,
            signal: a.signal,
            message: a.message.clone(),
            logs: a.logs.clone(),
            logs_offset: to_i64("logs_offset", a.logs_offset)?,
            usage: a.usage.as_ref().map(UsageDoc::from_core).transpose()?,
        })
    }

    fn into_core(self) -> Result<Attempt> {
        Ok(Attempt {
            attempt: to_u32("attempt", self.attempt)?,
            worker: self.worker,
            cause: self.cause,
            started_at: self
                .started_at
                .map(|s| from_ts("started_at", s))
                .transpose()?,
            ended_at: from_ts("ended_at", self.ended_at)?,
            exit_code: self.exit_code,
            signal: self.signal,
            message: self.message,
            logs: self.logs,
            logs_offset: to_u64("logs_offset", self.logs_offset)?,
            usage: self.usage.map(UsageDoc::into_core).transpose()?,
        })
    }
}

/// Resource amounts (capacity or request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResourcesDoc {
    cpu_millis: i64,
    memory_mb: i64,
    storage_mb: i64,
    gpus: i64,
}

impl ResourcesDoc {
    pub(crate) fn from_core(r: &Resources) -> Result<Self> {
        Ok(ResourcesDoc {
            cpu_millis: to_i64("cpu millicores", r.cpu_millis)?,
            memory_mb: to_i64("memory MB", r.memory_mb)?,
            storage_mb: to_i64("storage MB", r.storage_mb)?,
            gpus: i64::from(r.gpus),
        })
    }

    fn into_core(self) -> Result<Resources> {
        let r = Resources {
            cpu_millis: to_u64("cpu_millis", self.cpu_millis)?,
            memory_mb: to_u64("memory_mb", self.memory_mb)?,
            storage_mb: to_u64("storage_mb", self.storage_mb)?,
            gpus: to_u32("gpus", self.gpus)?,
        };
        r.validate().map_err(corrupt)?;
        Ok(r)
    }
}

/// One environment variable. The environment is stored as an array of
/// these rather than as a sub-document, because variable names may contain
/// `.` or start with `$`, which MongoDB field names should not.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnvVar {
    name: String,
    value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SpecDoc {
    image: String,
    command: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    resources: ResourcesDoc,
    cancel_grace_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pin: Option<WorkerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<PolicyDoc>,
    /// Absent when none is set (and in tasks stored before options).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    options: Option<ContainerOptions>,
    /// Indexed for `tasks --name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// `key=value` strings (keys may hold `.`, which field names should
    /// not), indexed for `tasks --label`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    labels: Vec<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    priority: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    constraints: Vec<Constraint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    after: Vec<Dependency>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A label as stored and queried: `key=value`.
pub(crate) fn label_text(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

/// Labels as stored.
pub(crate) fn label_texts(labels: &Labels) -> Vec<String> {
    labels.iter().map(|(k, v)| label_text(k, v)).collect()
}

/// Labels from their stored `key=value` texts.
fn labels_from(texts: &[String]) -> Result<Labels> {
    texts
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| corrupt(format!("label {l:?} is not key=value")))
        })
        .collect()
}

impl SpecDoc {
    fn from_core(s: &TaskSpec) -> Result<Self> {
        Ok(SpecDoc {
            image: s.image.clone(),
            command: s.command.clone(),
            env: s
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            resources: ResourcesDoc::from_core(&s.resources)?,
            cancel_grace_ms: to_i64(
                "cancel grace",
                u64::try_from(s.cancel_grace.as_millis()).unwrap_or(u64::MAX),
            )?,
            pin: s.pin.clone(),
            policy: Some(PolicyDoc::from_core(&s.policy)?),
            options: (!s.options.is_default()).then(|| s.options.clone()),
            name: s.name.clone(),
            labels: label_texts(&s.labels),
            priority: s.priority,
            constraints: s.constraints.clone(),
            after: s.after.clone(),
        })
    }

    fn into_core(self) -> Result<TaskSpec> {
        Ok(TaskSpec {
            image: self.image,
            command: self.command,
            env: self.env.into_iter().map(|v| (v.name, v.value)).collect(),
            resources: self.resources.into_core()?,
            cancel_grace: std::time::Duration::from_millis(to_u64(
                "cancel_grace_ms",
                self.cancel_grace_ms,
            )?),
            pin: self.pin,
            policy: match self.policy {
                Some(p) => p.into_core()?,
                None => AttemptPolicy::legacy(),
            },
            options: self.options.unwrap_or_default(),
            name: self.name,
            labels: labels_from(&self.labels)?,
            priority: self.priority,
            constraints: self.constraints,
            after: self.after,
        })
    }
}

/// A TASKS document: `_id` is the task id; the assignment (`worker`,
/// `attempt`) sits beside the status so both change in one write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TaskDoc {
    #[serde(rename = "_id")]
    id: TaskId,
    spec: SpecDoc,
    status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker: Option<WorkerId>,
    #[serde(default)]
    attempt: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    created_at: i64,
    updated_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished_at: Option<i64>,
    /// The array id, indexed for `tasks --array` (absent: a single task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    array: Option<ArrayId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    array_index: Option<i64>,
    /// The array's throttle (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    array_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    history: Vec<HistoryEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    assigned_at: Option<i64>,
    /// The GPU indices of the current (or last) attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gpus: Vec<i64>,
    /// The highest term that wrote it or raised it (absent: written before
    /// masters had terms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fence: Option<i64>,
}

impl TaskDoc {
    pub(crate) fn from_core(t: &TaskRecord) -> Result<Self> {
        Ok(TaskDoc {
            id: t.id.clone(),
            spec: SpecDoc::from_core(&t.spec)?,
            status: t.status,
            worker: t.worker.clone(),
            attempt: i64::from(t.attempt),
            reason: t.reason.clone(),
            created_at: ts("created_at", t.created_at)?,
            updated_at: ts("updated_at", t.updated_at)?,
            finished_at: t.finished_at.map(|f| ts("finished_at", f)).transpose()?,
            array: t.array.as_ref().map(|a| a.id.clone()),
            array_index: t.array.as_ref().map(|a| i64::from(a.index)),
            array_limit: t.array.as_ref().and_then(|a| a.limit).map(i64::from),
            history: t
                .history
                .iter()
                .map(|a| AttemptDoc::from_core(a).map(HistoryEntry::Doc))
                .collect::<Result<_>>()?,
            not_before: t.not_before.map(|n| ts("not_before", n)).transpose()?,
            assigned_at: t.assigned_at.map(|a| ts("assigned_at", a)).transpose()?,
            gpus: t.gpus.iter().map(|g| i64::from(*g)).collect(),
            fence: None,
        })
    }

    pub(crate) fn into_core(self) -> Result<TaskRecord> {
        Ok(TaskRecord {
            id: self.id,
            spec: self.spec.into_core()?,
            status: self.status,
            worker: self.worker,
            attempt: to_u32("attempt", self.attempt)?,
            reason: self.reason,
            created_at: from_ts("created_at", self.created_at)?,
            updated_at: from_ts("updated_at", self.updated_at)?,
            finished_at: self
                .finished_at
                .map(|f| from_ts("finished_at", f))
                .transpose()?,
            array: match (self.array, self.array_index) {
                (Some(id), Some(index)) => Some(ArrayMember {
                    id,
                    index: to_u32("array_index", index)?,
                    limit: self
                        .array_limit
                        .map(|l| to_u32("array_limit", l))
                        .transpose()?,
                }),
                _ => None,
            },
            history: self
                .history
                .into_iter()
                .map(HistoryEntry::into_core)
                .collect::<Result<_>>()?,
            not_before: self
                .not_before
                .map(|n| from_ts("not_before", n))
                .transpose()?,
            assigned_at: self
                .assigned_at
                .map(|a| from_ts("assigned_at", a))
                .transpose()?,
            gpus: self
                .gpus
                .into_iter()
                .map(|g| to_u32("gpus", g))
                .collect::<Result<_>>()?,
        })
    }
}

/// A RESULTS document: `_id` is the task id, so the unique `_id` index makes
/// the insert insert-if-absent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResultDoc {
    #[serde(rename = "_id")]
    task_id: TaskId,
    worker_id: WorkerId,
    #[serde(default)]
    attempt: i64,
    status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal: Option<i32>,
    logs: String,
    #[serde(default)]
    logs_offset: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    started_at: Option<i64>,
    finished_at: i64,
    /// Absent in results stored before causes: read from status and exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cause: Option<EndCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usage: Option<UsageDoc>,
}

impl ResultDoc {
    pub(crate) fn from_core(r: &TaskResult) -> Result<Self> {
        Ok(ResultDoc {
            task_id: r.task_id.clone(),
            worker_id: r.worker_id.clone(),
            attempt: i64::from(r.attempt),
            status: r.status,
            exit_code: r.exit_code,
            signal: r.signal,
            logs: r.logs.clone(),
            logs_offset: to_i64("logs_offset", r.logs_offset)?,
            message: r.message.clone(),
            started_at: r.started_at.map(|s| ts("started_at", s)).transpose()?,
            finished_at: ts("finished_at", r.finished_at)?,
            cause: Some(r.cause),
            usage: r.usage.as_ref().map(UsageDoc::from_core).transpose()?,
        })
    }

    pub(crate) fn into_core(self) -> Result<TaskResult> {
        let cause = self
            .cause
            .unwrap_or_else(|| EndCause::inferred(self.status, self.exit_code, self.signal));
        Ok(TaskResult {
            cause,
            task_id: self.task_id,
            worker_id: self.worker_id,
            attempt: to_u32("attempt", self.attempt)?,
            status: self.status,
            exit_code: self.exit_code,
            signal: self.signal,
            logs: self.logs,
            logs_offset: to_u64("logs_offset", self.logs_offset)?,
            message: self.message,
            started_at: self
                .started_at
                .map(|s| from_ts("started_at", s))
                .transpose()?,
            finished_at: from_ts("finished_at", self.finished_at)?,
            usage: self.usage.map(UsageDoc::into_core).transpose()?,
        })
    }
}

/// Heartbeat telemetry inside a WORKERS document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TelemetryDoc {
    cpu_percent: f64,
    memory_used_mb: i64,
    running_tasks: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    starting: Vec<TaskId>,
}

impl TelemetryDoc {
    pub(crate) fn from_core(t: &Telemetry) -> Result<Self> {
        Ok(TelemetryDoc {
            cpu_percent: f64::from(t.cpu_percent),
            memory_used_mb: to_i64("memory used MB", t.memory_used_mb)?,
            running_tasks: i64::from(t.running_tasks),
            starting: t.starting.clone(),
        })
    }

    fn into_core(self) -> Result<Telemetry> {
        Ok(Telemetry {
            // Stored from an f32, so the narrowing is exact.
            cpu_percent: self.cpu_percent as f32,
            memory_used_mb: to_u64("memory_used_mb", self.memory_used_mb)?,
            running_tasks: to_u32("running_tasks", self.running_tasks)?,
            starting: self.starting,
        })
    }
}

/// A WORKERS document: `_id` is the worker id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerDoc {
    #[serde(rename = "_id")]
    id: WorkerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    capacity: ResourcesDoc,
    registered_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_heartbeat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    telemetry: Option<TelemetryDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<InstanceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    drain: Option<DrainDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    gpus: Vec<GpuDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allow_mounts: Vec<String>,
    /// `key=value`, as a task's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    labels: Vec<String>,
    /// As a task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fence: Option<i64>,
}

/// One GPU inside a WORKERS document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GpuDoc {
    index: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl GpuDoc {
    pub(crate) fn from_core(g: &Gpu) -> Self {
        GpuDoc {
            index: i64::from(g.index),
            uuid: g.uuid.clone(),
            name: g.name.clone(),
        }
    }

    fn into_core(self) -> Result<Gpu> {
        Ok(Gpu {
            index: to_u32("gpu index", self.index)?,
            uuid: self.uuid,
            name: self.name,
        })
    }
}

/// An operator's drain inside a WORKERS document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DrainDoc {
    since: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
}

impl DrainDoc {
    pub(crate) fn from_core(d: &Drain) -> Result<Self> {
        Ok(DrainDoc {
            since: ts("drain since", d.since)?,
            deadline: d.deadline.map(|t| ts("drain deadline", t)).transpose()?,
        })
    }

    fn into_core(self) -> Result<Drain> {
        Ok(Drain {
            since: from_ts("drain since", self.since)?,
            deadline: self
                .deadline
                .map(|t| from_ts("drain deadline", t))
                .transpose()?,
        })
    }
}

impl WorkerDoc {
    pub(crate) fn from_core(w: &WorkerRecord) -> Result<Self> {
        Ok(WorkerDoc {
            id: w.id.clone(),
            address: w.address.clone(),
            capacity: ResourcesDoc::from_core(&w.capacity)?,
            registered_at: ts("registered_at", w.registered_at)?,
            last_heartbeat: w
                .last_heartbeat
                .map(|h| ts("last_heartbeat", h))
                .transpose()?,
            telemetry: w
                .telemetry
                .as_ref()
                .map(TelemetryDoc::from_core)
                .transpose()?,
            instance: w.instance.clone(),
            drain: w.drain.as_ref().map(DrainDoc::from_core).transpose()?,
            gpus: w.gpus.iter().map(GpuDoc::from_core).collect(),
            allow_mounts: w.allow_mounts.clone(),
            labels: label_texts(&w.labels),
            fence: None,
        })
    }

    pub(crate) fn into_core(self) -> Result<WorkerRecord> {
        Ok(WorkerRecord {
            id: self.id,
            address: self.address,
            capacity: self.capacity.into_core()?,
            registered_at: from_ts("registered_at", self.registered_at)?,
            last_heartbeat: self
                .last_heartbeat
                .map(|h| from_ts("last_heartbeat", h))
                .transpose()?,
            telemetry: self.telemetry.map(TelemetryDoc::into_core).transpose()?,
            instance: self.instance,
            drain: self.drain.map(DrainDoc::into_core).transpose()?,
            gpus: self
                .gpus
                .into_iter()
                .map(GpuDoc::into_core)
                .collect::<Result<_>>()?,
            allow_mounts: self.allow_mounts,
            labels: labels_from(&self.labels)?,
        })
    }
}

/// One ASSIGNMENTS entry: an append-only history of placements, written
/// after the TASKS update that made them and never read for decisions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AssignmentDoc {
    pub(crate) task_id: TaskId,
    pub(crate) worker: WorkerId,
    pub(crate) attempt: i64,
    pub(crate) at: i64,
    /// The writer's term (audit only).
    #[serde(default)]
    pub(crate) term: i64,
}

/// A REQUESTS document: `_id` is the client's request id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RequestDoc {
    #[serde(rename = "_id")]
    request: RequestId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    task: Option<TaskId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    array: Option<ArrayId>,
    spec_hash: String,
    at: i64,
}

impl RequestDoc {
    pub(crate) fn from_core(c: &RequestClaim) -> Result<Self> {
        let (task, array) = match &c.made {
            Submitted::Task(t) => (Some(t.clone()), None),
            Submitted::Array(a) => (None, Some(a.clone())),
        };
        Ok(RequestDoc {
            request: c.request.clone(),
            task,
            array,
            spec_hash: c.spec_hash.clone(),
            at: ts("request time", c.at)?,
        })
    }

    pub(crate) fn into_core(self) -> Result<RequestClaim> {
        let made = match (self.task, self.array) {
            (Some(t), None) => Submitted::Task(t),
            (None, Some(a)) => Submitted::Array(a),
            _ => {
                return Err(corrupt(format!(
                    "request {} names no task or array",
                    self.request
                )))
            }
        };
        Ok(RequestClaim {
            request: self.request,
            made,
            spec_hash: self.spec_hash,
            at: from_ts("request time", self.at)?,
        })
    }
}

/// The LEASE document: `_id` is always `"master"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LeaseDoc {
    #[serde(rename = "_id")]
    id: String,
    /// Absent once released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
    run: String,
    address: String,
    term: i64,
    version: i64,
    ttl_ms: i64,
}

impl LeaseDoc {
    /// The one document's id.
    pub(crate) const ID: &'static str = "master";

    pub(crate) fn from_core(r: &LeaseRecord) -> Result<Self> {
        Ok(LeaseDoc {
            id: Self::ID.into(),
            holder: r.holder.clone(),
            run: r.run.clone(),
            address: r.address.clone(),
            term: to_i64("term", r.term.get())?,
            version: to_i64("lease version", r.version)?,
            ttl_ms: ms("lease ttl", r.ttl)?,
        })
    }

    pub(crate) fn into_core(self) -> Result<LeaseRecord> {
        Ok(LeaseRecord {
            holder: self.holder,
            run: self.run,
            address: self.address,
            term: Term::new(to_u64("term", self.term)?),
            version: to_u64("lease version", self.version)?,
            ttl: Duration::from_millis(to_u64("lease ttl", self.ttl_ms)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{self, Bson};

    fn record() -> TaskRecord {
        let mut spec = TaskSpec::new(
            "busybox",
            vec!["sh".into(), "-c".into(), "echo hi".into()],
            Resources::new(1.5, 0.25, 10.0, 2).unwrap(),
        );
        spec.env.insert("A.B".into(), "dotted".into());
        spec.env.insert("$X".into(), "dollar".into());
        spec.pin = Some(WorkerId::new("w-1").unwrap());
        let mut t = TaskRecord::new(TaskId::new("t-1").unwrap(), spec, Timestamp::from_millis(7));
        t.status = TaskStatus::Running;
        t.worker = Some(WorkerId::new("w-1").unwrap());
        t.attempt = 3;
        t.reason = Some("why".into());
        t.finished_at = Some(Timestamp::from_millis(9));
        t.spec.policy.retries = 2;
        t.spec.policy.time_limit = Some(std::time::Duration::from_secs(90));
        t.not_before = Some(Timestamp::from_millis(11));
        t.assigned_at = Some(Timestamp::from_millis(8));
        let mut a = Attempt::ended(
            2,
            WorkerId::new("w-0").unwrap(),
            EndCause::Exited,
            Timestamp::from_millis(8),
            Some("exited with code 1".into()),
        );
        a.exit_code = Some(1);
        a.logs = "the end of attempt 2".into();
        t.history.push(a);
        t
    }

    #[test]
    fn task_documents_round_trip_with_int64_numbers() {
        let t = record();
        let doc = bson::serialize_to_document(&TaskDoc::from_core(&t).unwrap()).unwrap();
        assert_eq!(doc.get("_id"), Some(&Bson::String("t-1".into())));
        assert_eq!(doc.get("status"), Some(&Bson::String("running".into())));
        assert_eq!(doc.get("attempt"), Some(&Bson::Int64(3)));
        assert_eq!(doc.get("created_at"), Some(&Bson::Int64(7)));
        let res = doc
            .get_document("spec")
            .unwrap()
            .get_document("resources")
            .unwrap();
        assert_eq!(res.get("cpu_millis"), Some(&Bson::Int64(1500)));
        assert_eq!(res.get("gpus"), Some(&Bson::Int64(2)));
        let back: TaskDoc = bson::deserialize_from_document(doc).unwrap();
        assert_eq!(back.into_core().unwrap(), t);
    }

    #[test]
    fn absent_optionals_and_int32_numbers_read_back() {
        let t = TaskRecord::new(
            TaskId::new("t-2").unwrap(),
            TaskSpec::new("img", vec![], Resources::ZERO),
            Timestamp::from_millis(1),
        );
        let mut doc = bson::serialize_to_document(&TaskDoc::from_core(&t).unwrap()).unwrap();
        assert!(!doc.contains_key("worker") && !doc.contains_key("reason"));
        doc.insert("attempt", Bson::Int32(0));
        let back: TaskDoc = bson::deserialize_from_document(doc).unwrap();
        assert_eq!(back.into_core().unwrap(), t);
    }

    #[test]
    fn a_task_stored_before_policies_reads_with_the_old_behaviour() {
        let t = TaskRecord::new(
            TaskId::new("t-3").unwrap(),
            TaskSpec::new("img", vec![], Resources::ZERO),
            Timestamp::from_millis(1),
        );
        let mut doc = bson::serialize_to_document(&TaskDoc::from_core(&t).unwrap()).unwrap();
        doc.get_document_mut("spec").unwrap().remove("policy");
        let back = bson::deserialize_from_document::<TaskDoc>(doc)
            .unwrap()
            .into_core()
            .unwrap();
        assert_eq!(back.spec.policy, AttemptPolicy::legacy());
    }

    #[test]
    fn out_of_range_numbers_are_refused_both_ways() {
        let mut t = record();
        t.created_at = Timestamp::from_millis(u64::MAX);
        assert!(matches!(
            TaskDoc::from_core(&t),
            Err(Error::InvalidInput(ValidationError::TooLarge { .. }))
        ));
        let mut doc = bson::serialize_to_document(&TaskDoc::from_core(&record()).unwrap()).unwrap();
        doc.insert("attempt", Bson::Int64(-1));
        let back: TaskDoc = bson::deserialize_from_document(doc).unwrap();
        assert!(matches!(back.into_core(), Err(Error::Backend { .. })));
    }

    #[test]
    fn worker_and_result_documents_round_trip() {
        let mut w = WorkerRecord::new(
            WorkerId::new("w").unwrap(),
            Some("127.0.0.1:1".into()),
            Resources::new(4.0, 8.0, 100.0, 1).unwrap(),
            Timestamp::from_millis(3),
        );
        w.last_heartbeat = Some(Timestamp::from_millis(5));
        w.telemetry = Some(Telemetry {
            cpu_percent: 12.3,
            memory_used_mb: 1 << 40,
            running_tasks: 4,
            starting: vec![TaskId::new("s").unwrap()],
        });
        let doc = bson::serialize_to_document(&WorkerDoc::from_core(&w).unwrap()).unwrap();
        let back: WorkerDoc = bson::deserialize_from_document(doc).unwrap();
        assert_eq!(back.into_core().unwrap(), w);
        let r = TaskResult {
            task_id: TaskId::new("t").unwrap(),
            worker_id: WorkerId::new("w").unwrap(),
            attempt: 2,
            status: TaskStatus::Failed,
            cause: EndCause::OutOfMemory,
            exit_code: Some(-9),
            logs: "out".into(),
            logs_offset: 7,
            signal: Some(9),
            message: Some("m".into()),
            started_at: None,
            finished_at: Timestamp::from_millis(8),
            usage: Some(Usage {
                wall_ms: 3,
                user_cpu_ms: 2,
                system_cpu_ms: 1,
                peak_memory_bytes: 1 << 30,
                pull_ms: None,
            }),
        };
        let doc = bson::serialize_to_document(&ResultDoc::from_core(&r).unwrap()).unwrap();
        let back: ResultDoc = bson::deserialize_from_document(doc).unwrap();
        assert_eq!(back.into_core().unwrap(), r);
    }
}
