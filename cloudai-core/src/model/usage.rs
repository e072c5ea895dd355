//! What a run used: the first thing a user sizing `--mem` or `--cpu` for a
//! sweep asks (Slurm's `sacct` MaxRSS and TotalCPU).

use serde::{Deserialize, Serialize};

use super::TaskRecord;

/// A run's use of its host, as its runtime measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// From its start to its end, ms (0 until its worker knows both).
    #[serde(default)]
    pub wall_ms: u64,
    /// CPU time in user mode, ms.
    pub user_cpu_ms: u64,
    /// CPU time in the kernel, ms.
    pub system_cpu_ms: u64,
    /// Peak resident memory, bytes.
    pub peak_memory_bytes: u64,
    /// Time spent pulling its image, ms (`None`: it was there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_ms: Option<u64>,
}

impl Usage {
    /// User and kernel CPU time together, ms.
    pub fn cpu_ms(&self) -> u64 {
        self.user_cpu_ms.saturating_add(self.system_cpu_ms)
    }

    /// Cores used on average over its wall time (`None` before it is known).
    pub fn cores(&self) -> Option<f64> {
        (self.wall_ms > 0).then(|| self.cpu_ms() as f64 / self.wall_ms as f64)
    }
}

/// What the tasks of an array (or any list of tasks) used, from their
/// attempts' usage: `tasks --array A --summary`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSummary {
    /// Tasks looked at.
    pub tasks: usize,
    /// Of those, tasks with a measured attempt.
    pub measured: usize,
    /// CPU time of every measured attempt, retries included, ms.
    pub cpu_ms: u64,
    /// Peak memory of each task's last measured attempt: the largest, bytes.
    pub peak_memory_max: u64,
    /// The same, 95th percentile.
    pub peak_memory_p95: u64,
    /// Wall time of each task's last measured attempt: the median, ms.
    pub wall_ms_p50: u64,
    /// The same, 95th percentile.
    pub wall_ms_p95: u64,
}

impl UsageSummary {
    /// The summary of `tasks`.
    pub fn of(tasks: &[TaskRecord]) -> Self {
        let mut cpu_ms = 0u64;
        let (mut peaks, mut walls) = (Vec::new(), Vec::new());
        for t in tasks {
            let mut measured = t.history.iter().filter_map(|a| a.usage.as_ref());
            cpu_ms = measured
                .clone()
                .fold(cpu_ms, |sum, u| sum.saturating_add(u.cpu_ms()));
            if let Some(last) = measured.next_back() {
                peaks.push(last.peak_memory_bytes);
                walls.push(last.wall_ms);
            }
        }
        peaks.sort_unstable();
        walls.sort_unstable();
        UsageSummary {
            tasks: tasks.len(),
            measured: peaks.len(),
            cpu_ms,
            peak_memory_max: peaks.last().copied().unwrap_or(0),
            peak_memory_p95: percentile(&peaks, 95),
            wall_ms_p50: percentile(&walls, 50),
            wall_ms_p95: percentile(&walls, 95),
        }
    }
}

/// The nearest-rank `p`th percentile of `sorted` (0 when empty).
fn percentile(sorted: &[u64], p: usize) -> u64 {
    match sorted.len() {
        0 => 0,
        n => sorted[(n * p).div_ceil(100).clamp(1, n) - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Attempt, EndCause, Resources, TaskId, TaskSpec, Timestamp, WorkerId};

    fn task(i: usize, runs: &[(u64, u64, u64)]) -> TaskRecord {
        let spec = TaskSpec::new("img", vec![], Resources::ZERO);
        let mut t = TaskRecord::new(TaskId::new(format!("t{i}")).unwrap(), spec, Timestamp::ZERO);
        for (n, (cpu, mem, wall)) in runs.iter().enumerate() {
            let mut a = Attempt::ended(
                n as u32 + 1,
                WorkerId::new("w").unwrap(),
                EndCause::Completed,
                Timestamp::ZERO,
                None,
            );
            a.usage = Some(Usage {
                wall_ms: *wall,
                user_cpu_ms: *cpu,
                system_cpu_ms: 0,
                peak_memory_bytes: *mem,
                pull_ms: None,
            });
            t.history.push(a);
        }
        t
    }

    #[test]
    fn a_summary_adds_every_attempts_cpu_and_ranks_the_last_ones() {
        // 20 tasks: task i peaks at i MB and runs i s; task 0 ran twice.
        let mut tasks: Vec<TaskRecord> = (1..=20)
            .map(|i| task(i as usize, &[(100, i << 20, i * 1000)]))
            .collect();
        tasks.push(task(0, &[(500, 999 << 20, 9), (50, 0, 0)]));
        tasks.push(task(99, &[]));
        let s = UsageSummary::of(&tasks);
        assert_eq!((s.tasks, s.measured), (22, 21));
        assert_eq!(s.cpu_ms, 20 * 100 + 550);
        assert_eq!(s.peak_memory_max, 20 << 20, "the last attempt's peak");
        assert_eq!(s.peak_memory_p95, 19 << 20);
        assert_eq!((s.wall_ms_p50, s.wall_ms_p95), (10_000, 19_000));
        assert_eq!(UsageSummary::of(&[]), UsageSummary::default());
    }
}
