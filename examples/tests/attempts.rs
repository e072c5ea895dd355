//! Multi-process tests of work that survives faults, on the process
//! runtime: a real master and real workers, `kill -9`, retries that read
//! `CLOUDAI_ATTEMPT`, and time limits that hold across a worker restart.
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// A cluster on FAST timings with one 2-CPU worker, active; its id and
/// index.
fn one_worker(test: &str) -> (Cluster, String, usize) {
    let mut c = Cluster::start(test, FAST);
    let w = c.id("w");
    let idx = c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    (c, w, idx)
}

/// The causes of a task's ended attempts, oldest first.
fn causes(view: &Value) -> Vec<String> {
    view["task"]["history"]
        .as_array()
        .map(|h| {
            h.iter()
                .map(|a| a["cause"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `task` is final; returns its view.
fn final_view(c: &Cluster, task: &str, within: Duration) -> Value {
    until(within, &format!("{task} final"), || {
        let v = c.show(task);
        matches!(
            v["task"]["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        )
        .then_some(v)
    })
}

/// Three tasks on a worker that is `kill -9`ed and stays down. By
/// default each runs again on a second worker once the first is declared
/// lost, and completes there with one result; with `--no-requeue` each
/// fails.
fn kill_9_with(requeue: bool) {
    let mut c = Cluster::start(if requeue { "requeue" } else { "norequeue" }, FAST);
    let (a, b) = (c.id("a"), c.id("b"));
    let first = c.spawn_worker(&a, 3.0);
    c.wait_active(&[&a]);
    let flags: &[&str] = if requeue { &[] } else { &["--no-requeue"] };
    let tasks: Vec<String> = (0..3)
        .map(|i| {
            let script = format!("sleep 2; echo done-{i}");
            let mut args = vec!["--cpu", "1"];
            args.extend_from_slice(flags);
            args.extend_from_slice(&["busybox", "--", "sh", "-c", &script]);
            c.submit(&args)
        })
        .collect();
    until(EVENTUALLY, "three tasks running on a", || {
        tasks
            .iter()
            .all(|t| c.show(t)["task"]["worker"] == a.as_str() && c.status(t) == "running")
            .then_some(())
    });
    c.spawn_worker(&b, 3.0);
    c.wait_active(&[&b]);
    c.kill_worker(first);
    for (i, t) in tasks.iter().enumerate() {
        let v = final_view(&c, t, Duration::from_secs(30));
        if requeue {
            assert_eq!(v["task"]["status"], "completed", "{v}");
            assert_eq!(v["task"]["worker"], b.as_str(), "{v}");
            assert_eq!(causes(&v), ["worker_lost", "completed"], "{v}");
            assert_eq!(
                v["result"]["worker_id"],
                b.as_str(),
                "one result, from b: {v}"
            );
            assert_eq!(v["result"]["logs"], format!("done-{i}\n"), "{v}");
        } else {
            assert_eq!(v["task"]["status"], "failed", "{v}");
            let reason = v["task"]["reason"].as_str().unwrap_or_default();
            assert!(reason.starts_with("worker lost"), "{v}");
        }
    }
}

#[test]
fn a_killed_workers_tasks_run_again_on_another_with_one_result_each() {
    kill_9_with(true);
}

#[test]
fn without_requeue_a_killed_workers_tasks_fail() {
    kill_9_with(false);
}

/// A task that fails on its first two attempts (it reads
/// `CLOUDAI_ATTEMPT`) completes on its third with `--retries 2`; `logs
/// --attempt 1` prints what the first attempt said.
#[test]
fn a_task_failing_twice_completes_on_its_third_attempt() {
    let (c, _, _) = one_worker("retries");
    let t = c.submit(&[
        "--retries",
        "2",
        "--retry-delay",
        "0.2",
        "busybox",
        "--",
        "sh",
        "-c",
        "echo attempt $CLOUDAI_ATTEMPT of $CLOUDAI_TASK_ID; test $CLOUDAI_ATTEMPT -ge 3",
    ]);
    let v = final_view(&c, &t, EVENTUALLY);
    assert_eq!(v["task"]["status"], "completed", "{v}");
    assert_eq!(v["task"]["attempt"], 3, "{v}");
    assert_eq!(causes(&v), ["exited", "exited", "completed"], "{v}");
    assert_eq!(
        v["result"]["logs"],
        format!("attempt 3 of {t}\n"),
        "the result is the final attempt's: {v}"
    );
    let first = c.cli(&["logs", &t, "--attempt", "1"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.stdout, format!("attempt 1 of {t}\n"));
    let none = c.cli(&["logs", &t, "--attempt", "7"]);
    assert_eq!(none.code, 66, "{none:?}");
}

/// `sleep 300` with `--time-limit 2s` is stopped at its limit and fails
/// with the timeout reason; `run` exits 83.
#[test]
fn a_run_past_its_time_limit_is_stopped_and_fails_timed_out() {
    let (c, _, _) = one_worker("timelimit");
    let begin = std::time::Instant::now();
    let out = c.cli(&[
        "run",
        "--time-limit",
        "2s",
        "--grace",
        "0.5",
        "busybox",
        "--",
        "sleep",
        "300",
    ]);
    assert_eq!(out.code, 83, "{out:?}");
    assert!(
        begin.elapsed() < Duration::from_secs(15),
        "{:?}",
        begin.elapsed()
    );
    let t = c.tasks()[0]["id"].as_str().expect("id").to_string();
    let v = c.show(&t);
    assert_eq!(v["task"]["status"], "failed", "{v}");
    let reason = v["task"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("timeout"), "{v}");
    assert_eq!(causes(&v), ["timed_out"], "{v}");
}

/// The time limit holds when the worker is killed and restarted during
/// the run: the run's supervisor and the restarted worker both know its
/// deadline.
#[test]
fn a_time_limit_holds_across_a_worker_restart() {
    let (mut c, w, idx) = one_worker("timelimit-restart");
    let t = c.submit(&[
        "--time-limit",
        "3s",
        "--grace",
        "0.5",
        "busybox",
        "--",
        "sleep",
        "300",
    ]);
    until(EVENTUALLY, "running", || {
        (c.status(&t) == "running").then_some(())
    });
    c.kill_worker(idx);
    c.spawn_worker(&w, 2.0);
    let v = final_view(&c, &t, Duration::from_secs(20));
    assert_eq!(v["task"]["status"], "failed", "{v}");
    assert_eq!(causes(&v), ["timed_out"], "{v}");
    assert_eq!(v["task"]["attempt"], 1, "one run, adopted: {v}");
}

/// Bad policy flags are refused with clear errors, and so is a time limit
/// above the master's `--max-time-limit`.
#[test]
fn bad_policies_are_refused() {
    let c = Cluster::start_with("badpolicy", FAST, &["--max-time-limit", "1h"]);
    for (args, says) in [
        (&["--retries", "20"][..], "retries"),
        (&["--retry-delay", "10m"][..], "retry delay"),
        (&["--time-limit", "0"][..], "time limit"),
        (&["--time-limit", "2h"][..], "max-time-limit"),
    ] {
        let mut all = vec!["task"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["busybox", "--", "true"]);
        let out = c.cli(&all);
        assert_eq!(out.code, 65, "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}
