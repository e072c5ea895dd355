//! Host telemetry for heartbeats, read from `/proc` where it exists.

use crate::model::Telemetry;

/// CPU load (1-minute load average over cores, percent) and memory in use,
/// best effort: zero where `/proc` cannot be read.
pub(super) fn sample(running_tasks: usize) -> Telemetry {
    Telemetry {
        cpu_percent: cpu_percent().unwrap_or(0.0),
        memory_used_mb: memory_used_mb().unwrap_or(0),
        running_tasks: u32::try_from(running_tasks).unwrap_or(u32::MAX),
    }
}

fn cpu_percent() -> Option<f32> {
    let load: f32 = std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f32;
    Some((load / cores * 100.0).min(100.0 * cores))
}

fn memory_used_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) / 1000)
}
