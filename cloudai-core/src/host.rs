//! Facts about the host a worker runs on, read from `/proc` where it
//! exists (Linux): `None` where it cannot be read. Used for a worker's
//! detected capacity and its heartbeat telemetry.

/// Cores this process may use (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Total memory, in kB (`MemTotal`).
pub fn memory_total_kb() -> Option<u64> {
    meminfo_kb("MemTotal:")
}

/// Memory in use, in kB (`MemTotal − MemAvailable`).
pub fn memory_used_kb() -> Option<u64> {
    Some(memory_total_kb()?.saturating_sub(meminfo_kb("MemAvailable:")?))
}

/// The 1-minute load average.
pub fn load_average() -> Option<f32> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The host's name.
pub fn name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_string()).filter(|n| !n.is_empty())
}

fn meminfo_kb(field: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, it names one process even after the
/// pid is reused. `None` if there is no such process.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields from the last ')'. Field 3 is the first after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_host() {
        assert!(cores() >= 1);
        if std::path::Path::new("/proc/meminfo").exists() {
            let total = memory_total_kb().expect("MemTotal");
            assert!(memory_used_kb().expect("MemAvailable") <= total);
            assert!(load_average().expect("loadavg") >= 0.0);
            let me = i32::try_from(std::process::id()).expect("pid");
            let started = process_start_ticks(me).expect("our own start time");
            assert_eq!(process_start_ticks(me), Some(started), "stable");
        }
    }
}
