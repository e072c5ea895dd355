use serde::{Deserialize, Serialize};

use super::{InstanceId, Labels, Resources, TaskId, Timestamp, ValidationError, WorkerId};

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

/// Environment variable holding, in every run, the indices of the GPUs
/// its worker gave it (comma-separated; empty for none).
pub const GPUS_ENV: &str = "CLOUDAI_GPUS";

/// One GPU a worker offers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gpu {
    /// Its index on the worker (as `nvidia-smi` numbers it).
    pub index: u32,
    /// Its UUID (`GPU-…`), if known: stable across reboots and driver
    /// renumbering, so runs are pointed at it where a runtime can.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Its model name, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Gpu {
    /// A GPU known only by its index.
    pub fn indexed(index: u32) -> Self {
        Gpu {
            index,
            uuid: None,
            name: None,
        }
    }

    /// Checks a worker's GPUs against the count it offers: as many as
    /// that (or none named), each index once.
    pub fn validate_list(gpus: &[Gpu], count: u32) -> Result<(), ValidationError> {
        let distinct: std::collections::BTreeSet<u32> = gpus.iter().map(|g| g.index).collect();
        if !gpus.is_empty() && (gpus.len() != count as usize || distinct.len() != gpus.len()) {
            return Err(ValidationError::Invalid {
                field: "gpus",
                reason: format!(
                    "{} GPUs offered but {} distinct indices named",
                    count,
                    distinct.len()
                ),
            });
        }
        Ok(())
    }

    /// Those of `gpus` with the indices `assigned` (distinct, `want` of
    /// them, each one of `gpus`), in that order.
    pub fn pick(gpus: &[Gpu], assigned: &[u32], want: u32) -> Result<Vec<Gpu>, ValidationError> {
        let invalid = |reason: String| ValidationError::Invalid {
            field: "assigned gpus",
            reason,
        };
        if assigned.len() != want as usize {
            return Err(invalid(format!(
                "the task asks for {want} GPUs but {} were assigned",
                assigned.len()
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        assigned
            .iter()
            .map(|i| {
                let gpu = gpus.iter().find(|g| g.index == *i);
                match gpu {
                    Some(g) if seen.insert(*i) => Ok(g.clone()),
                    Some(_) => Err(invalid(format!("GPU {i} assigned twice"))),
                    None => Err(invalid(format!("this worker has no GPU {i}"))),
                }
            })
            .collect()
    }

    /// How a runtime names `gpus` to the driver: by UUID where every one
    /// has one (a UUID names a device whatever order the driver counts
    /// them in), else by index.
    pub fn device_ids(gpus: &[Gpu]) -> Vec<String> {
        match gpus
            .iter()
            .map(|g| g.uuid.clone())
            .collect::<Option<Vec<_>>>()
        {
            Some(uuids) => uuids,
            None => gpus.iter().map(|g| g.index.to_string()).collect(),
        }
    }

    /// The indices of a worker's GPUs: those of `gpus`, or `0..count` for
    /// a worker that named none (it registered before GPUs had indices).
    pub fn indices(gpus: &[Gpu], count: u32) -> Vec<u32> {
        if gpus.is_empty() {
            (0..count).collect()
        } else {
            gpus.iter().map(|g| g.index).collect()
        }
    }
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
    /// Its GPUs, by index (empty: `capacity.gpus` GPUs numbered from 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// Host directories under which its tasks may bind-mount.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_mounts: Vec<String>,
    /// Its labels (`--label`, and the automatic ones), which tasks'
    /// constraints must match.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
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
            gpus: Vec::new(),
            allow_mounts: Vec::new(),
            labels: Labels::new(),
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
