//! What a container used. Its cgroup goes with it when it stops, so its
//! stats are sampled while it runs (at most every [`EVERY`]); the last
//! sample before its end stands for the end.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use bollard::Docker;
use cloudai_core::model::Usage;
use futures_util::StreamExt;

use crate::lock;

/// How often a running container's stats are read.
pub(crate) const EVERY: Duration = Duration::from_millis(250);

/// A container's usage as sampled so far, shared with its sampler.
pub(crate) type Sampled = Arc<Mutex<Usage>>;

/// Samples container `id` until it is gone or `Sampled` is dropped.
pub(crate) fn sample(docker: Docker, id: String, pull_ms: Option<u64>) -> Sampled {
    let sampled = Arc::new(Mutex::new(Usage {
        pull_ms,
        ..Usage::default()
    }));
    let weak = Arc::downgrade(&sampled);
    tokio::spawn(run(docker, id, weak));
    sampled
}

async fn run(docker: Docker, id: String, sampled: Weak<Mutex<Usage>>) {
    let options = StatsOptions {
        stream: false,
        one_shot: true,
    };
    loop {
        let read = docker.stats(&id, Some(options.clone())).next().await;
        let Some(into) = sampled.upgrade() else {
            return;
        };
        match read {
            Some(Ok(stats)) => merge(&mut lock(&into), &stats),
            // Gone (removed), or the daemon is away: nothing more to read.
            _ => return,
        }
        drop(into);
        tokio::time::sleep(EVERY).await;
    }
}

/// Takes what `stats` adds: CPU time only grows (a stopped container
/// reads zero) and memory keeps its peak.
fn merge(usage: &mut Usage, stats: &ContainerStatsResponse) {
    let ms = |ns: Option<u64>| ns.unwrap_or(0) / 1_000_000;
    if let Some(cpu) = stats.cpu_stats.as_ref().and_then(|c| c.cpu_usage.as_ref()) {
        usage.user_cpu_ms = usage.user_cpu_ms.max(ms(cpu.usage_in_usermode));
        usage.system_cpu_ms = usage.system_cpu_ms.max(ms(cpu.usage_in_kernelmode));
    }
    if let Some(m) = &stats.memory_stats {
        // cgroup v1 keeps the peak itself; v2 only the current use.
        let peak = m.max_usage.unwrap_or(0).max(m.usage.unwrap_or(0));
        usage.peak_memory_bytes = usage.peak_memory_bytes.max(peak);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    fn stats(user_ns: u64, kernel_ns: u64, memory: u64) -> ContainerStatsResponse {
        ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    usage_in_usermode: Some(user_ns),
                    usage_in_kernelmode: Some(kernel_ns),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(memory),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_only_grows_and_memory_keeps_its_peak() {
        let mut u = Usage::default();
        merge(&mut u, &stats(500_000_000, 20_000_000, 200 << 20));
        merge(&mut u, &stats(900_000_000, 30_000_000, 50 << 20));
        // A stopped container reads zero.
        merge(&mut u, &stats(0, 0, 0));
        assert_eq!(
            (u.user_cpu_ms, u.system_cpu_ms, u.peak_memory_bytes),
            (900, 30, 200 << 20)
        );
    }
}
