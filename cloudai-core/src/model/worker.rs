use serde::{Deserialize, Serialize};

use super::{Resources, Timestamp, WorkerId};

/// What a worker reports about itself with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Host CPU use, percent of all cores.
    pub cpu_percent: f32,
    /// Host memory in use, MB.
    pub memory_used_mb: u64,
    /// Tasks the worker is running now.
    pub running_tasks: u32,
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
