//! A network partition between two hosts of the test's own (two network
//! namespaces joined by a veth pair; see `common/netns.rs`): the master
//! and worker A on one side, worker B on the other. A task runs on B; the
//! link is cut both ways with `iptables`; B must stop its run (it fences
//! itself) before the master declares it lost and runs the task again on
//! A, so the two attempts never run at the same time. Each attempt
//! appends a timestamp to a file of its own every 50 ms, in a directory
//! both sides see (namespaces split only the network), which is how the
//! test tells when each ran.
//!
//! Skipped, saying why, without root or without `ip` and `iptables`
//! (`scripts/test.sh` installs them).
#![allow(clippy::print_stderr)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::netns::{self, Pair};
use common::*;

/// Short timings: B is inactive 1.5 s and lost 4 s after its last beat.
const TIMING: Timing = Timing {
    heartbeat_interval: 0.3,
    heartbeat_timeout: 1.5,
    lost_after: 4.0,
};
/// The workers' `--max-grace` (and the task's grace): a worker stops its
/// runs `lost_after − max_grace − margin` = 4 − 1 − 0.7 = 2.3 s after
/// sending its last answered heartbeat.
const GRACE: &str = "1";
/// That fence time, in ms.
const FENCE_AFTER_MS: f64 = 2300.0;

/// The task: appends `date +%s.%N` to `DIR/$CLOUDAI_ATTEMPT` every 50 ms;
/// attempt 1 for up to about 30 s (it is meant to be stopped), any later
/// one for about a second, then exits 0.
fn script(dir: &Path) -> String {
    format!(
        "f='{}'/$CLOUDAI_ATTEMPT; n=20; [ \"$CLOUDAI_ATTEMPT\" = 1 ] && n=600; i=0; \
         while [ $i -lt $n ]; do date +%s.%N >> \"$f\"; sleep 0.05; i=$((i+1)); done",
        dir.display()
    )
}

/// The timestamps attempt `n` wrote, in ms since the epoch (whole lines
/// only: a line being written is left out).
fn stamps(dir: &Path, n: u32) -> Vec<f64> {
    let text = std::fs::read_to_string(dir.join(n.to_string())).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| {
            l.trim()
                .parse::<f64>()
                .map(|s| s * 1000.0)
                .unwrap_or_else(|e| panic!("attempt {n} wrote {l:?}: {e}"))
        })
        .collect()
}

/// Runs inside one side's namespace whose command line names `dir`: the
/// task's shell, if it still runs there.
fn task_processes(ns: &str, dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    Pair::pids(ns)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_partitioned_worker_stops_its_run_before_the_task_runs_again_elsewhere() {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED partition test: {why}");
        return;
    }
    // Declared first, dropped last: the cluster's processes are killed
    // before the namespaces go.
    let net = Pair::create("part");
    let mut c = Cluster::start_at("partition", TIMING, &[], Some(&net.a.ns), &net.a.addr);
    c.worker_args = vec!["--max-grace".into(), GRACE.into()];
    let (a, b) = (c.id("a"), c.id("b"));
    let token = c.token.clone();
    let dir = c.state_root.join("attempts");
    std::fs::create_dir_all(&dir).expect("create the attempts directory");

    // B alone at first, so attempt 1 lands there.
    let state = c.state_root.join(&b);
    let wb = c.spawn_worker_at(&b, 2.0, &token, &state, Some(&net.b.ns), &net.b.addr);
    c.wait_active(&[&b]);
    let task = c.submit(&[
        "--cpu",
        "1",
        "--mem",
        "0.1",
        "--grace",
        GRACE,
        "busybox",
        "--",
        "sh",
        "-c",
        &script(&dir),
    ]);
    until(EVENTUALLY, "attempt 1 writes on B", || {
        (stamps(&dir, 1).len() >= 3).then_some(())
    });
    let v = c.show(&task);
    assert_eq!(v["task"]["status"], "running", "{v}");
    assert_eq!(v["task"]["worker"], b.as_str(), "{v}");
    assert_eq!(v["task"]["attempt"], 1, "{v}");

    // A joins on the master's side, with room for the task.
    let state = c.state_root.join(&a);
    c.spawn_worker_at(&a, 2.0, &token, &state, Some(&net.a.ns), &net.a.addr);
    c.wait_active(&[&a, &b]);

    // Attempt 1 outlives the lease it got at its start (its worker renews
    // it with every answered heartbeat): still running, still writing.
    let first1 = stamps(&dir, 1)[0];
    let outlive = FENCE_AFTER_MS + 1000.0;
    std::thread::sleep(Duration::from_millis(
        (first1 + outlive - now_ms() as f64).max(0.0) as u64,
    ));
    let v = c.show(&task);
    let last = *stamps(&dir, 1).last().expect("attempt 1 wrote");
    assert!(
        v["task"]["status"] == "running" && now_ms() as f64 - last < 1000.0,
        "attempt 1 still runs {outlive:.0} ms after its start, past the lease it started \
         with (the last stamp is {:.0} ms old): {v}",
        now_ms() as f64 - last
    );

    let cut = now_ms() as f64;
    net.cut();
    let done = until(Duration::from_secs(20), "the task completed on A", || {
        let v = c.show(&task);
        matches!(v["task"]["status"].as_str(), Some("completed" | "failed")).then_some(v)
    });
    let (one, two) = (stamps(&dir, 1), stamps(&dir, 2));
    let last1 = *one.last().expect("attempt 1 wrote");
    let first2 = *two.first().expect("attempt 2 wrote");
    let history = done["task"]["history"].as_array().expect("history").clone();
    let lost_at = history
        .first()
        .and_then(|h| h["ended_at"].as_f64())
        .unwrap_or(f64::NAN);
    let completed_at = done["result"]["finished_at"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "partition: from the cut (ms): attempt 1's last stamp {:.0}, B declared lost {:.0}, \
         attempt 2's first stamp {:.0}, completed {:.0}; gap between the attempts {:.0} ms",
        last1 - cut,
        lost_at - cut,
        first2 - cut,
        completed_at - cut,
        first2 - last1,
    );

    // How B saw its run end (the worker's fence: `cause=cut_off`; its
    // supervisor's lease, the same deadline, may come first: `signalled`).
    for l in log_lines(&c.workers[wb].log) {
        if l.contains("task ended") || l.contains("stopping every run") {
            eprintln!("partition: B: {l}");
        }
    }

    assert_eq!(done["task"]["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(
        result["attempt"], 2,
        "the one result is attempt 2's: {done}"
    );
    assert_eq!(result["worker_id"], a.as_str(), "{done}");
    assert_eq!(result["exit_code"], 0, "{done}");
    assert_eq!(history.len(), 2, "attempt 1 and attempt 2: {done}");
    assert_eq!(history[0]["attempt"], 1, "{done}");
    assert_eq!(history[0]["worker"], b.as_str(), "{done}");
    assert_eq!(history[0]["cause"], "worker_lost", "{done}");
    // B stopped its run on its own, before the master declared it lost,
    // and attempt 2 started after attempt 1's last stamp.
    assert!(
        last1 < lost_at,
        "attempt 1 wrote at {last1:.0}, after the master declared B lost at {lost_at:.0} \
         (cut at {cut:.0})"
    );
    assert!(
        last1 < first2,
        "the attempts overlap: attempt 1 wrote until {last1:.0}, attempt 2 from {first2:.0} \
         (cut at {cut:.0}, B declared lost at {lost_at:.0})"
    );
    assert!(
        task_processes(&net.b.ns, &dir).is_empty(),
        "nothing of the task runs on B"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .expect("read the attempts directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "two attempts ran: {names:?}");

    // Healed, B comes back, with nothing of the task, and the task keeps
    // its one result.
    net.heal();
    c.wait_active(&[&b]);
    let wv = c.worker(&b);
    assert_eq!(wv["tasks"], serde_json::json!([]), "{wv}");
    assert_eq!(cpu_allocated(&wv), 0.0, "{wv}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        task_processes(&net.b.ns, &dir).is_empty(),
        "nothing of the task runs on B after the heal"
    );
    assert_eq!(stamps(&dir, 1).len(), one.len(), "attempt 1 wrote no more");
    let v = c.show(&task);
    assert_eq!(v["task"]["status"], "completed", "{v}");
    assert_eq!(v["result"]["attempt"], 2, "{v}");
    assert_eq!(v["task"]["history"], done["task"]["history"], "{v}");
}
