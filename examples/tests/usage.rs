//! What a run used, through the real binaries on the supervised process
//! runtime: a task that holds about 200 MB and burns about a second of CPU
//! reports both, within 25%, in `show` and in its array's summary.
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;

/// Holds 200 MiB for a second (dd's buffer, blocked on a pipe nobody
/// reads), burns CPU in the shell, then prints the CPU the shell and its
/// children used as the kernel counts it (clock ticks), the figure the
/// run's usage must match.
pub const HOG: &str = r#"dd if=/dev/zero bs=200M count=1 2>/dev/null | sleep 1
i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done
set -- $(cat /proc/$$/stat); echo "ticks $(( ${14} + ${15} + ${16} + ${17} ))""#;

const MIB_200: f64 = 200.0 * 1024.0 * 1024.0;

fn within(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 0.25 * want,
        "{what}: {got} is not within 25% of {want}"
    );
}

#[test]
fn a_task_reports_its_peak_memory_and_cpu_time() {
    let mut c = Cluster::start("usage", FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let v = c.json(&[
        "task", "--array", "1-2", "--cpu", "1", "--mem", "0.5", "busybox", "--", "sh", "-c", HOG,
    ]);
    let array = v["array_id"].as_str().expect("array id").to_string();
    let tasks = until(Duration::from_secs(120), "both tasks completed", || {
        let list = c.json(&["tasks", "--array", &array, "--all"]);
        let list = list.as_array().cloned().unwrap_or_default();
        (list.len() == 2 && list.iter().all(|t| t["status"] == "completed")).then_some(list)
    });
    let hz = 100.0; // USER_HZ on Linux
    let mut peaks = Vec::new();
    for t in &tasks {
        let shown = c.show(t["id"].as_str().expect("id"));
        let r = &shown["result"];
        let ticks: f64 = r["logs"]
            .as_str()
            .and_then(|l| l.trim().strip_prefix("ticks "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no ticks line in {shown}"));
        let u = &r["usage"];
        let cpu_ms = u["user_cpu_ms"].as_f64().unwrap() + u["system_cpu_ms"].as_f64().unwrap();
        eprintln!("usage {u}, the task counted {ticks} ticks");
        within("cpu ms", cpu_ms, ticks * 1000.0 / hz);
        let peak = u["peak_memory_bytes"].as_f64().unwrap();
        within("peak memory", peak, MIB_200);
        peaks.push(peak);
        let wall = u["wall_ms"].as_f64().unwrap();
        assert!(wall >= 1000.0 && wall >= cpu_ms * 0.9, "wall {wall} ms");
        // Kept with the attempt too.
        assert_eq!(&shown["task"]["history"][0]["usage"], u, "{shown}");
    }
    let summary = c.json(&["tasks", "--array", &array, "--summary"]);
    assert_eq!(
        (summary["tasks"].as_u64(), summary["measured"].as_u64()),
        (Some(2), Some(2))
    );
    let max = peaks.iter().copied().fold(0.0, f64::max);
    assert_eq!(summary["peak_memory_max"].as_f64(), Some(max), "{summary}");
    assert!(summary["cpu_ms"].as_u64().unwrap() > 0, "{summary}");
}
