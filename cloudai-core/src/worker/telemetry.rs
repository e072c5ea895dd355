//! Host telemetry for heartbeats.

use crate::host;
use crate::model::{TaskId, Telemetry};

/// CPU load (1-minute load average over cores, percent) and memory in use,
/// best effort: zero where the host cannot tell.
pub(super) fn sample(running_tasks: usize, starting: Vec<TaskId>) -> Telemetry {
    let cores = host::cores() as f32;
    Telemetry {
        cpu_percent: host::load_average()
            .map(|load| (load / cores * 100.0).min(100.0 * cores))
            .unwrap_or(0.0),
        memory_used_mb: host::memory_used_kb().map_or(0, |kb| kb / 1000),
        running_tasks: u32::try_from(running_tasks).unwrap_or(u32::MAX),
        starting,
    }
}
