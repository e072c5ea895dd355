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

/// Fields `first..=last` (1-based, as `proc(5)` numbers them) of
/// `/proc/<pid>/stat`. The command name (field 2) may hold spaces and
/// parentheses: fields are counted from the last ')', field 3 first.
fn stat_fields(pid: i32, first: usize, last: usize) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace()
        .skip(first.checked_sub(3)?)
        .take(last + 1 - first)
        .map(|f| f.parse().ok())
        .collect()
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`): with the pid, it names one process even after the
/// pid is reused. `None` if there is no such process.
pub fn process_start_ticks(pid: i32) -> Option<u64> {
    stat_fields(pid, 22, 22)?.first().copied()
}

/// CPU time process `pid` has used, user plus system (fields 14 and 15 of
/// `/proc/<pid>/stat`, in `USER_HZ` ticks: 100 a second on Linux).
pub fn process_cpu_ticks(pid: i32) -> Option<u64> {
    Some(stat_fields(pid, 14, 15)?.iter().sum())
}

/// Resident memory of process `pid`, kB (`VmRSS` in `/proc/<pid>/status`).
pub fn process_rss_kb(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
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
            let used = process_cpu_ticks(me).expect("our own CPU time");
            // Burn a little CPU: the count never goes back.
            let spin = std::time::Instant::now();
            while spin.elapsed() < std::time::Duration::from_millis(30) {}
            assert!(process_cpu_ticks(me).expect("again") >= used);
            assert!(process_rss_kb(me).expect("our own RSS") > 0);
        }
    }
}
