use serde::{Deserialize, Serialize};

use super::{InstanceId, Resources, TaskId, Timestamp, WorkerId};

/// Who answers at a worker's address: its id and instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WorkerIdentity {
    /// The worker's id.
    pub id: WorkerId,
    /// The installation (state directory) behind it.
    pub instance: InstanceId,
}

impl std::fmt::Display for WorkerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (instance {})", self.id, self.instance)
    }
}

/// An operator's drain of a worker: nothing new is placed on it; its
/// running tasks finish, or are stopped at the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// When the drain began.
    pub since: Timestamp,
    /// When tasks still running are stopped and failed as `drained`
    /// (`None`: they may run to their end).
    pub deadline: Option<Timestamp>,
}

/// What a worker reports about itself with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Host CPU use, percent of all cores.
    pub cpu_percent: f32,
    /// Host memory in use, MB.
    pub memory_used_mb: u64,
    /// Tasks the worker is running now.
    pub running_tasks: u32,
    /// Tasks it accepted and is still starting (pulling the image,
    /// creating the container).
    #[serde(default)]
    pub starting: Vec<TaskId>,
}

/// A worker as the registry keeps it. Whether it is active is not stored:
/// it is derived from `last_heartbeat` and the liveness timeout, so it can
/// never go stale the way the original `IsActive` flag did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// The worker's id.
    pub id: WorkerId,
    /// Where the master reaches it (`host:port`), if known.
    pub address: Option<String>,
    /// Everything it offers to tasks.
    pub capacity: Resources,
    /// When it was first registered.
    pub registered_at: Timestamp,
    /// Its latest heartbeat, if it ever sent one.
    pub last_heartbeat: Option<Timestamp>,
    /// Telemetry from that heartbeat.
    pub telemetry: Option<Telemetry>,
    /// The instance of its latest registration, if it ever registered.
    #[serde(default)]
    pub instance: Option<InstanceId>,
    /// Set while an operator drains it.
    #[serde(default)]
    pub drain: Option<Drain>,
}

impl WorkerRecord {
    /// A worker known by address and capacity that has not yet sent a heartbeat.
    pub fn new(id: WorkerId, address: Option<String>, capacity: Resources, now: Timestamp) -> Self {
        WorkerRecord {
            id,
            address,
            capacity,
            registered_at: now,
            last_heartbeat: None,
            telemetry: None,
            instance: None,
            drain: None,
        }
    }
}

/// One heartbeat, as the registry records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Who sent it.
    pub worker: WorkerId,
    /// When the master received it.
    pub at: Timestamp,
    /// What the worker reported.
    pub telemetry: Telemetry,
}
