//! Conversions between the wire messages and the core model, and between
//! core errors and gRPC status codes. Everything from the wire is validated
//! here, so the services only see valid values.

use std::time::Duration;

use cloudai_core::ledger::{Correction, Reconciliation};
use cloudai_core::liveness::Health;
use cloudai_core::master::{CancelOutcome, GpuView, TaskView, WorkerView};
use cloudai_core::model::{
    ArrayId, ArrayMember, Attempt, AttemptPolicy, Condition, ContainerOptions, Dependency, Drain,
    EndCause, Gpu, InstanceId, Mount, Resources, StatusCounts, TaskId, TaskRecord, TaskResult,
    TaskSpec, TaskStatus, Telemetry, Timestamp, Tmpfs, Usage, ValidationError, WorkerId,
    WorkerIdentity,
};
use cloudai_core::store::PageKey;
use cloudai_core::transport::RunningTask;
use cloudai_core::Error;
use tonic::{Code, Status};

use crate::auth::LEADER_HEADER;
use crate::proto;

const KIND: &str = "x-cloudai-kind";
const ID: &str = "x-cloudai-id";
/// On a NOT_FOUND: the object expired; its value is the retention, seconds.
const EXPIRED: &str = "x-cloudai-expired";

/// Runs a service call on its own task. When a client gives up, tonic drops
/// the handler; a change the call started (a placement, a stop, a release)
/// still runs to its end instead of stopping halfway.
pub async fn detached<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(call)
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))?
        .map_err(to_status)
}

/// A core error as a gRPC status with the matching code.
pub fn to_status(e: Error) -> Status {
    let msg = e.to_string();
    let mut status = match &e {
        Error::NotFound { .. } | Error::Expired { .. } => Status::not_found(msg),
        Error::AlreadyExists { .. } | Error::InUse(_) => Status::already_exists(msg),
        Error::Conflict(_) => Status::failed_precondition(msg),
        Error::InvalidInput(_) => Status::invalid_argument(msg),
        // A deposed master's answer: the caller tries the leader.
        Error::Unavailable(_) | Error::NotLeader { .. } | Error::Fenced { .. } => {
            Status::unavailable(msg)
        }
        Error::Timeout(_) => Status::deadline_exceeded(msg),
        Error::Unauthenticated(_) => Status::unauthenticated(msg),
        _ => Status::internal(msg),
    };
    if let Error::NotFound { kind, id }
    | Error::AlreadyExists { kind, id }
    | Error::Expired { kind, id, .. } = &e
    {
        if let (Ok(k), Ok(i)) = (kind.parse(), id.parse()) {
            status.metadata_mut().insert(KIND, k);
            status.metadata_mut().insert(ID, i);
        }
    }
    if let Error::NotLeader {
        leader: Some(address),
    } = &e
    {
        if let Ok(v) = address.parse() {
            status.metadata_mut().insert(LEADER_HEADER, v);
        }
    }
    if let Error::Expired { retention, .. } = &e {
        if let Ok(v) = retention.as_secs().to_string().parse() {
            status.metadata_mut().insert(EXPIRED, v);
        }
    }
    status
}

fn kind_of(s: &str) -> &'static str {
    match s {
        "task" => "task",
        "worker" => "worker",
        "container" => "container",
        "running task" => "running task",
        _ => "object",
    }
}

/// A gRPC status as a core error, classified for the caller.
pub fn from_status(s: Status) -> Error {
    let meta = |k: &str| {
        s.metadata()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (kind, id) = (meta(KIND), meta(ID));
    let msg = s.message().to_string();
    // A failure below gRPC (refused or dropped connection, a TLS handshake
    // refused, plain HTTP/2 against TLS) is reported under various codes:
    // whatever the code, the peer cannot be talked to.
    if is_transport(&s) {
        return Error::Unavailable(format!("cannot talk to the peer: {}", causes(&s)));
    }
    match s.code() {
        Code::NotFound => {
            let kind = kind_of(kind.as_deref().unwrap_or(""));
            let id = id.unwrap_or(msg);
            match meta(EXPIRED).and_then(|s| s.parse().ok()) {
                Some(secs) => Error::Expired {
                    kind,
                    id,
                    retention: Duration::from_secs(secs),
                },
                None => Error::NotFound { kind, id },
            }
        }
        Code::AlreadyExists => match (kind, id) {
            (Some(kind), Some(id)) => Error::AlreadyExists {
                kind: kind_of(&kind),
                id,
            },
            _ => Error::InUse(strip(&msg, "in use: ")),
        },
        Code::FailedPrecondition => Error::Conflict(strip(&msg, "conflict: ")),
        Code::InvalidArgument | Code::OutOfRange => Error::InvalidInput(ValidationError::Invalid {
            field: "request",
            reason: strip(&msg, "invalid input: "),
        }),
        Code::Unavailable if meta(LEADER_HEADER).is_some() => Error::NotLeader {
            leader: meta(LEADER_HEADER),
        },
        Code::Unavailable | Code::Unknown | Code::ResourceExhausted | Code::Aborted => {
            Error::Unavailable(if msg.is_empty() {
                "peer unavailable".into()
            } else {
                msg
            })
        }
        Code::DeadlineExceeded | Code::Cancelled => Error::Timeout(msg),
        Code::Unauthenticated | Code::PermissionDenied => Error::Unauthenticated(msg),
        _ => Error::Backend {
            backend: "grpc",
            source: Box::new(s),
        },
    }
}

/// The messages of an error and its causes, as one line.
fn causes(s: &Status) -> String {
    let mut parts = vec![s.message().to_string()];
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.join(": ")
}

fn is_transport(s: &Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

fn strip(msg: &str, prefix: &str) -> String {
    msg.strip_prefix(prefix).unwrap_or(msg).to_string()
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Status {
    to_status(Error::InvalidInput(ValidationError::Invalid {
        field,
        reason: reason.into(),
    }))
}

fn valid<T>(r: Result<T, ValidationError>) -> Result<T, Status> {
    r.map_err(|e| to_status(e.into()))
}

/// A task id from the wire.
pub fn task_id(s: &str) -> Result<TaskId, Status> {
    valid(TaskId::new(s))
}

/// An array id from the wire.
pub fn array_id(s: &str) -> Result<ArrayId, Status> {
    valid(ArrayId::new(s))
}

/// A page cursor from the wire.
pub fn page_key(s: &str) -> Result<PageKey, Status> {
    valid(s.parse())
}

/// A worker id from the wire.
pub fn worker_id(s: &str) -> Result<WorkerId, Status> {
    valid(WorkerId::new(s))
}

/// A worker instance id from the wire.
pub fn instance(s: &str) -> Result<InstanceId, Status> {
    valid(InstanceId::new(s))
}

/// A worker's id and instance from the wire.
pub fn identity(worker: &str, instance_id: &str) -> Result<WorkerIdentity, Status> {
    Ok(WorkerIdentity {
        id: worker_id(worker)?,
        instance: instance(instance_id)?,
    })
}

impl From<TaskStatus> for proto::TaskStatus {
    fn from(s: TaskStatus) -> Self {
        match s {
            TaskStatus::Pending => proto::TaskStatus::Pending,
            TaskStatus::Running => proto::TaskStatus::Running,
            TaskStatus::Completed => proto::TaskStatus::Completed,
            TaskStatus::Failed => proto::TaskStatus::Failed,
            TaskStatus::Cancelled => proto::TaskStatus::Cancelled,
        }
    }
}

/// A task status for the wire.
pub fn status_to_wire(s: TaskStatus) -> i32 {
    proto::TaskStatus::from(s).into()
}

/// A task status from the wire.
pub fn status(v: i32) -> Result<TaskStatus, Status> {
    match proto::TaskStatus::try_from(v) {
        Ok(proto::TaskStatus::Pending) => Ok(TaskStatus::Pending),
        Ok(proto::TaskStatus::Running) => Ok(TaskStatus::Running),
        Ok(proto::TaskStatus::Completed) => Ok(TaskStatus::Completed),
        Ok(proto::TaskStatus::Failed) => Ok(TaskStatus::Failed),
        Ok(proto::TaskStatus::Cancelled) => Ok(TaskStatus::Cancelled),
        Ok(proto::TaskStatus::Unspecified) | Err(_) => {
            Err(invalid("status", format!("unknown task status {v}")))
        }
    }
}

pub(crate) fn health_to_wire(h: Health) -> i32 {
    match h {
        Health::Active => proto::WorkerHealth::Active,
        Health::Inactive => proto::WorkerHealth::Inactive,
        Health::Lost => proto::WorkerHealth::Lost,
    }
    .into()
}

pub(crate) fn health(v: i32) -> Result<Health, Status> {
    match proto::WorkerHealth::try_from(v) {
        Ok(proto::WorkerHealth::Active) => Ok(Health::Active),
        Ok(proto::WorkerHealth::Inactive) => Ok(Health::Inactive),
        Ok(proto::WorkerHealth::Lost) => Ok(Health::Lost),
        Ok(proto::WorkerHealth::Unspecified) | Err(_) => {
            Err(invalid("health", format!("unknown worker health {v}")))
        }
    }
}

impl From<Resources> for proto::Resources {
    fn from(r: Resources) -> Self {
        proto::Resources {
            cpu_millis: r.cpu_millis,
            memory_mb: r.memory_mb,
            storage_mb: r.storage_mb,
            gpus: r.gpus,
        }
    }
}

impl From<Gpu> for proto::Gpu {
    fn from(g: Gpu) -> Self {
        proto::Gpu {
            index: g.index,
            uuid: g.uuid,
            name: g.name,
        }
    }
}

impl From<proto::Gpu> for Gpu {
    fn from(g: proto::Gpu) -> Self {
        Gpu {
            index: g.index,
            uuid: g.uuid,
            name: g.name,
        }
    }
}

/// Resources from the wire (missing = invalid), range-checked.
pub fn resources(r: Option<proto::Resources>, field: &'static str) -> Result<Resources, Status> {
    let r = r.ok_or_else(|| invalid(field, "missing"))?;
    let out = Resources {
        cpu_millis: r.cpu_millis,
        memory_mb: r.memory_mb,
        storage_mb: r.storage_mb,
        gpus: r.gpus,
    };
    valid(out.validate())?;
    Ok(out)
}

impl From<TaskSpec> for proto::TaskSpec {
    fn from(s: TaskSpec) -> Self {
        proto::TaskSpec {
            image: s.image,
            command: s.command,
            env: s.env.into_iter().collect(),
            resources: Some(s.resources.into()),
            cancel_grace_ms: millis(s.cancel_grace),
            pin: s.pin.map(String::from),
            policy: Some(s.policy.into()),
            options: (!s.options.is_default()).then(|| s.options.into()),
            name: s.name,
            labels: s.labels.into_iter().collect(),
            priority: s.priority,
            constraints: s.constraints.iter().map(ToString::to_string).collect(),
            after: s
                .after
                .into_iter()
                .map(|d| proto::Dependency {
                    task: d.task.into(),
                    condition: d.condition.as_str().into(),
                })
                .collect(),
        }
    }
}

/// A condition from the wire.
pub fn condition(c: &str) -> Result<Condition, Status> {
    valid(c.parse())
}

impl From<AttemptPolicy> for proto::AttemptPolicy {
    fn from(p: AttemptPolicy) -> Self {
        proto::AttemptPolicy {
            retries: p.retries,
            retry_delay_ms: Some(millis(p.retry_delay)),
            crash_limit: Some(p.crash_limit),
            no_requeue: !p.requeue,
            time_limit_ms: p.time_limit.map(millis),
            retry_on_timeout: p.retry_on_timeout,
        }
    }
}

/// An attempt policy from the wire (absent fields: the defaults).
fn policy(p: Option<proto::AttemptPolicy>) -> AttemptPolicy {
    let Some(p) = p else {
        return AttemptPolicy::default();
    };
    let d = AttemptPolicy::default();
    AttemptPolicy {
        retries: p.retries,
        retry_delay: p
            .retry_delay_ms
            .map_or(d.retry_delay, Duration::from_millis),
        crash_limit: p.crash_limit.unwrap_or(d.crash_limit),
        requeue: !p.no_requeue,
        time_limit: p.time_limit_ms.map(Duration::from_millis),
        retry_on_timeout: p.retry_on_timeout,
    }
}

impl From<Attempt> for proto::Attempt {
    fn from(a: Attempt) -> Self {
        proto::Attempt {
            attempt: a.attempt,
            worker: a.worker.into(),
            cause: a.cause.as_str().into(),
            started_at: a.started_at.map(Timestamp::as_millis),
            ended_at: a.ended_at.as_millis(),
            exit_code: a.exit_code,
            signal: a.signal,
            message: a.message,
            logs: a.logs,
            logs_offset: a.logs_offset,
            usage: a.usage.map(Into::into),
        }
    }
}

impl From<Usage> for proto::Usage {
    fn from(u: Usage) -> Self {
        proto::Usage {
            wall_ms: u.wall_ms,
            user_cpu_ms: u.user_cpu_ms,
            system_cpu_ms: u.system_cpu_ms,
            peak_memory_bytes: u.peak_memory_bytes,
            pull_ms: u.pull_ms,
        }
    }
}

impl From<proto::Usage> for Usage {
    fn from(u: proto::Usage) -> Self {
        Usage {
            wall_ms: u.wall_ms,
            user_cpu_ms: u.user_cpu_ms,
            system_cpu_ms: u.system_cpu_ms,
            peak_memory_bytes: u.peak_memory_bytes,
            pull_ms: u.pull_ms,
        }
    }
}

fn attempt(a: proto::Attempt) -> Result<Attempt, Status> {
    Ok(Attempt {
        attempt: a.attempt,
        worker: worker_id(&a.worker)?,
        cause: valid(a.cause.parse())?,
        started_at: a.started_at.map(Timestamp::from_millis),
        ended_at: Timestamp::from_millis(a.ended_at),
        exit_code: a.exit_code,
        signal: a.signal,
        message: a.message,
        logs: a.logs,
        logs_offset: a.logs_offset,
        usage: a.usage.map(Into::into),
    })
}

impl From<ContainerOptions> for proto::ContainerOptions {
    fn from(o: ContainerOptions) -> Self {
        proto::ContainerOptions {
            workdir: o.workdir,
            mounts: o
                .mounts
                .into_iter()
                .map(|m| proto::Mount {
                    source: m.source,
                    target: m.target,
                    read_only: m.read_only,
                })
                .collect(),
            tmpfs: o
                .tmpfs
                .into_iter()
                .map(|t| proto::Tmpfs {
                    target: t.target,
                    size_bytes: t.size_bytes,
                })
                .collect(),
            user: o.user.map(|u| u.to_string()),
            shm_size: o.shm_size,
        }
    }
}

/// Container options from the wire (absent: none); the spec validates them.
fn options(o: Option<proto::ContainerOptions>) -> Result<ContainerOptions, Status> {
    let Some(o) = o else {
        return Ok(ContainerOptions::default());
    };
    Ok(ContainerOptions {
        workdir: o.workdir,
        mounts: o
            .mounts
            .into_iter()
            .map(|m| Mount {
                source: m.source,
                target: m.target,
                read_only: m.read_only,
            })
            .collect(),
        tmpfs: o
            .tmpfs
            .into_iter()
            .map(|t| Tmpfs {
                target: t.target,
                size_bytes: t.size_bytes,
            })
            .collect(),
        user: valid(o.user.as_deref().map(str::parse).transpose())?,
        shm_size: o.shm_size,
    })
}

/// A task spec from the wire, fully validated.
pub fn spec(s: Option<proto::TaskSpec>) -> Result<TaskSpec, Status> {
    let s = s.ok_or_else(|| invalid("spec", "missing"))?;
    let spec = TaskSpec {
        image: s.image,
        command: s.command,
        env: s.env.into_iter().collect(),
        resources: resources(s.resources, "resources")?,
        cancel_grace: Duration::from_millis(s.cancel_grace_ms),
        pin: s.pin.as_deref().map(worker_id).transpose()?,
        policy: policy(s.policy),
        options: options(s.options)?,
        name: s.name,
        labels: s.labels.into_iter().collect(),
        priority: s.priority,
        constraints: s
            .constraints
            .iter()
            .map(|c| valid(c.parse()))
            .collect::<Result<_, _>>()?,
        after: s
            .after
            .into_iter()
            .map(|d| {
                Ok(Dependency {
                    task: task_id(&d.task)?,
                    condition: condition(&d.condition)?,
                })
            })
            .collect::<Result<_, Status>>()?,
    };
    valid(spec.validate())?;
    Ok(spec)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<TaskRecord> for proto::Task {
    fn from(t: TaskRecord) -> Self {
        proto::Task {
            id: t.id.into(),
            spec: Some(t.spec.into()),
            status: status_to_wire(t.status),
            worker: t.worker.map(String::from),
            attempt: t.attempt,
            reason: t.reason,
            created_at: t.created_at.as_millis(),
            updated_at: t.updated_at.as_millis(),
            finished_at: t.finished_at.map(Timestamp::as_millis),
            array: t.array.as_ref().map(|a| a.id.to_string()),
            array_index: t.array.as_ref().map(|a| a.index),
            array_limit: t.array.and_then(|a| a.limit),
            history: t.history.into_iter().map(Into::into).collect(),
            not_before: t.not_before.map(Timestamp::as_millis),
            assigned_at: t.assigned_at.map(Timestamp::as_millis),
            gpus: t.gpus,
        }
    }
}

/// A task record from the wire.
pub fn task(t: proto::Task) -> Result<TaskRecord, Status> {
    Ok(TaskRecord {
        id: task_id(&t.id)?,
        spec: spec(t.spec)?,
        status: status(t.status)?,
        worker: t.worker.as_deref().map(worker_id).transpose()?,
        attempt: t.attempt,
        reason: t.reason,
        created_at: Timestamp::from_millis(t.created_at),
        updated_at: Timestamp::from_millis(t.updated_at),
        finished_at: t.finished_at.map(Timestamp::from_millis),
        array: match (t.array, t.array_index) {
            (Some(id), Some(index)) => Some(ArrayMember {
                id: valid(ArrayId::new(id))?,
                index,
                limit: t.array_limit,
            }),
            _ => None,
        },
        history: t
            .history
            .into_iter()
            .map(attempt)
            .collect::<Result<_, _>>()?,
        not_before: t.not_before.map(Timestamp::from_millis),
        assigned_at: t.assigned_at.map(Timestamp::from_millis),
        gpus: t.gpus,
    })
}

impl From<TaskResult> for proto::TaskResult {
    fn from(r: TaskResult) -> Self {
        proto::TaskResult {
            task_id: r.task_id.into(),
            worker_id: r.worker_id.into(),
            attempt: r.attempt,
            status: status_to_wire(r.status),
            exit_code: r.exit_code,
            signal: r.signal,
            logs: r.logs,
            logs_offset: r.logs_offset,
            message: r.message,
            started_at: r.started_at.map(Timestamp::as_millis),
            finished_at: r.finished_at.as_millis(),
            cause: r.cause.as_str().into(),
            usage: r.usage.map(Into::into),
        }
    }
}

/// A task result from the wire.
pub fn result(r: proto::TaskResult) -> Result<TaskResult, Status> {
    let status = status(r.status)?;
    let cause = match r.cause.as_str() {
        "" => EndCause::inferred(status, r.exit_code, r.signal),
        named => valid(named.parse())?,
    };
    Ok(TaskResult {
        task_id: task_id(&r.task_id)?,
        worker_id: worker_id(&r.worker_id)?,
        attempt: r.attempt,
        status,
        cause,
        exit_code: r.exit_code,
        signal: r.signal,
        logs: r.logs,
        logs_offset: r.logs_offset,
        message: r.message,
        started_at: r.started_at.map(Timestamp::from_millis),
        finished_at: Timestamp::from_millis(r.finished_at),
        usage: r.usage.map(Into::into),
    })
}

impl From<StatusCounts> for proto::TaskCounts {
    fn from(c: StatusCounts) -> Self {
        proto::TaskCounts {
            pending: c.pending,
            running: c.running,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

impl From<proto::TaskCounts> for StatusCounts {
    fn from(c: proto::TaskCounts) -> Self {
        StatusCounts {
            pending: c.pending,
            running: c.running,
            completed: c.completed,
            failed: c.failed,
            cancelled: c.cancelled,
        }
    }
}

impl From<Telemetry> for proto::Telemetry {
    fn from(t: Telemetry) -> Self {
        proto::Telemetry {
            cpu_percent: t.cpu_percent,
            memory_used_mb: t.memory_used_mb,
            running_tasks: t.running_tasks,
            starting: t.starting.into_iter().map(String::from).collect(),
        }
    }
}

/// Telemetry from the wire (missing = empty).
pub fn telemetry(t: Option<proto::Telemetry>) -> Result<Telemetry, Status> {
    let Some(t) = t else {
        return Ok(Telemetry::default());
    };
    Ok(Telemetry {
        cpu_percent: t.cpu_percent,
        memory_used_mb: t.memory_used_mb,
        running_tasks: t.running_tasks,
        starting: t
            .starting
            .iter()
            .map(|s| task_id(s))
            .collect::<Result<_, _>>()?,
    })
}

impl From<RunningTask> for proto::RunningTask {
    fn from(r: RunningTask) -> Self {
        proto::RunningTask {
            task_id: r.task.into(),
            attempt: r.attempt,
        }
    }
}

/// A run reference from the wire.
pub fn run(r: Option<proto::RunningTask>) -> Result<RunningTask, Status> {
    let r = r.ok_or_else(|| invalid("run", "missing"))?;
    Ok(RunningTask {
        task: task_id(&r.task_id)?,
        attempt: r.attempt,
    })
}

impl From<(TaskId, CancelOutcome)> for proto::CancelOutcome {
    fn from((id, o): (TaskId, CancelOutcome)) -> Self {
        let (outcome, worker, error) = match o {
            CancelOutcome::Dequeued => (proto::CancelResult::Dequeued, None, None),
            CancelOutcome::Stopped { worker } => {
                (proto::CancelResult::Stopped, Some(worker.into()), None)
            }
            CancelOutcome::StopPending { worker, error } => (
                proto::CancelResult::StopPending,
                Some(worker.into()),
                Some(error),
            ),
        };
        proto::CancelOutcome {
            task_id: id.into(),
            outcome: outcome.into(),
            worker,
            error,
        }
    }
}

/// A cancel outcome from the wire.
pub fn cancel_outcome(o: proto::CancelOutcome) -> Result<(TaskId, CancelOutcome), Status> {
    let worker = || {
        o.worker
            .as_deref()
            .map(worker_id)
            .transpose()?
            .ok_or_else(|| invalid("worker", "missing"))
    };
    let outcome = match proto::CancelResult::try_from(o.outcome) {
        Ok(proto::CancelResult::Dequeued) => CancelOutcome::Dequeued,
        Ok(proto::CancelResult::Stopped) => CancelOutcome::Stopped { worker: worker()? },
        Ok(proto::CancelResult::StopPending) => CancelOutcome::StopPending {
            worker: worker()?,
            error: o.error.clone().unwrap_or_default(),
        },
        Ok(proto::CancelResult::Unspecified) | Err(_) => {
            return Err(invalid(
                "outcome",
                format!("unknown cancel outcome {}", o.outcome),
            ))
        }
    };
    Ok((task_id(&o.task_id)?, outcome))
}

impl From<TaskView> for proto::TaskView {
    fn from(v: TaskView) -> Self {
        proto::TaskView {
            task: Some(v.task.into()),
            result: v.result.map(Into::into),
            waiting: v.waiting,
        }
    }
}

/// A task view from the wire.
pub fn task_view(v: proto::TaskView) -> Result<TaskView, Status> {
    Ok(TaskView {
        task: task(v.task.ok_or_else(|| invalid("task", "missing"))?)?,
        result: v.result.map(result).transpose()?,
        waiting: v.waiting,
    })
}

impl From<WorkerView> for proto::WorkerView {
    fn from(w: WorkerView) -> Self {
        let drain = w.drain_state().map(str::to_string);
        proto::WorkerView {
            id: w.id.into(),
            address: w.address,
            health: health_to_wire(w.health),
            registered: w.registered,
            capacity: Some(w.capacity.into()),
            allocated: Some(w.allocated.into()),
            available: Some(w.available.into()),
            tasks: w.tasks.into_iter().map(String::from).collect(),
            last_heartbeat: w.last_heartbeat.map(Timestamp::as_millis),
            drain,
            drain_deadline: w.drain.and_then(|d| d.deadline).map(Timestamp::as_millis),
            drain_since: w.drain.map(|d| d.since.as_millis()),
            telemetry: w.telemetry.map(Into::into),
            gpus: w
                .gpus
                .into_iter()
                .map(|g| proto::GpuUse {
                    gpu: Some(g.gpu.into()),
                    task: g.task.map(String::from),
                })
                .collect(),
            labels: w.labels.into_iter().collect(),
        }
    }
}

impl TryFrom<proto::WorkerView> for WorkerView {
    type Error = Status;

    fn try_from(w: proto::WorkerView) -> Result<Self, Status> {
        let drain = match (w.drain_since, w.drain.is_some()) {
            (Some(since), _) => Some(Drain {
                since: Timestamp::from_millis(since),
                deadline: w.drain_deadline.map(Timestamp::from_millis),
            }),
            (None, true) => return Err(invalid("drain_since", "missing")),
            (None, false) => None,
        };
        Ok(WorkerView {
            id: worker_id(&w.id)?,
            address: w.address,
            health: health(w.health)?,
            registered: w.registered,
            capacity: resources(w.capacity, "capacity")?,
            allocated: resources(w.allocated, "allocated")?,
            available: resources(w.available, "available")?,
            tasks: w
                .tasks
                .iter()
                .map(|t| task_id(t))
                .collect::<Result<_, _>>()?,
            last_heartbeat: w.last_heartbeat.map(Timestamp::from_millis),
            telemetry: w.telemetry.map(|t| telemetry(Some(t))).transpose()?,
            drain,
            gpus: w
                .gpus
                .into_iter()
                .map(|g| {
                    Ok(GpuView {
                        gpu: g.gpu.ok_or_else(|| invalid("gpu", "missing"))?.into(),
                        task: g.task.as_deref().map(task_id).transpose()?,
                    })
                })
                .collect::<Result<_, Status>>()?,
            labels: w.labels.into_iter().collect(),
        })
    }
}

impl From<Reconciliation> for proto::ReconcileReply {
    fn from(r: Reconciliation) -> Self {
        proto::ReconcileReply {
            corrections: r
                .corrections
                .into_iter()
                .map(|c| proto::Correction {
                    worker: c.worker.into(),
                    before: Some(c.before.into()),
                    after: Some(c.after.into()),
                    added: c.added.into_iter().map(String::from).collect(),
                    removed: c.removed.into_iter().map(String::from).collect(),
                })
                .collect(),
            unknown_workers: r
                .unknown_workers
                .into_iter()
                .map(|(t, w)| proto::TaskOnWorker {
                    task_id: t.into(),
                    worker: w.into(),
                })
                .collect(),
            overcommitted: r.overcommitted.into_iter().map(String::from).collect(),
        }
    }
}

impl TryFrom<proto::ReconcileReply> for Reconciliation {
    type Error = Status;

    fn try_from(r: proto::ReconcileReply) -> Result<Self, Status> {
        let ids = |ids: &[String]| {
            ids.iter()
                .map(|t| task_id(t))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Reconciliation {
            corrections: r
                .corrections
                .into_iter()
                .map(|c| {
                    Ok(Correction {
                        worker: worker_id(&c.worker)?,
                        before: resources(c.before, "before")?,
                        after: resources(c.after, "after")?,
                        added: ids(&c.added)?,
                        removed: ids(&c.removed)?,
                    })
                })
                .collect::<Result<_, Status>>()?,
            unknown_workers: r
                .unknown_workers
                .iter()
                .map(|u| Ok((task_id(&u.task_id)?, worker_id(&u.worker)?)))
                .collect::<Result<_, Status>>()?,
            overcommitted: r
                .overcommitted
                .iter()
                .map(|w| worker_id(w))
                .collect::<Result<_, _>>()?,
        })
    }
}
