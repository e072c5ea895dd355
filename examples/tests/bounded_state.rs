//! Bounded state through the real binaries: task arrays (each task sees
//! its own index; cancel by array), and retention (a finished task is
//! removed with its result, and `show` then says it expired), on the
//! memory store and on MongoDB.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A scratch directory for the tasks of one test; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cloudai-bounded-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Generous liveness: a thousand task starts must not make a loaded
/// machine's worker look dead.
const PATIENT: Timing = Timing {
    heartbeat_interval: 0.5,
    heartbeat_timeout: 10.0,
    lost_after: 30.0,
};

fn array_tasks(c: &Cluster, array: &str) -> Vec<Value> {
    c.json(&["tasks", "--array", array, "--all"])
        .as_array()
        .expect("tasks --json is an array")
        .clone()
}

/// Prints every supervised run's record under `root` that names task
/// `id` (its spec, start and end, and the supervisor's notes), and its
/// output, for a task that did not end.
fn show_run_records(root: &std::path::Path, id: &str) {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let record = std::fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_some_and(|e| e == "run") && record.contains(id) {
                eprintln!("  {}: {record}", path.display());
                let output = std::fs::read(path.with_extension("out")).unwrap_or_default();
                let shown = String::from_utf8_lossy(&output[..output.len().min(2048)]);
                eprintln!("  output: {shown}");
            }
        }
    }
}

/// `task --array 1-1000` submits 1,000 tasks in one call; each runs with
/// its own CLOUDAI_ARRAY_INDEX, and `tasks --array` lists exactly them.
#[test]
fn an_array_runs_each_task_with_its_own_index() {
    let mut c = Cluster::start("array", PATIENT);
    let w = c.id("w");
    c.spawn_worker(&w, 4.0);
    c.wait_active(&[&w]);
    let dir = Scratch::new(&c.tag);
    let script = format!(
        "echo \"$CLOUDAI_ARRAY_INDEX\" > '{}/'\"$CLOUDAI_ARRAY_INDEX\"",
        dir.0.display()
    );
    let v = c.json(&[
        "task", "--array", "1-1000", "--cpu", "0.05", "--mem", "0.01", "busybox", "--", "sh", "-c",
        &script,
    ]);
    assert_eq!(v["tasks"], 1000, "{v}");
    let array = v["array_id"].as_str().expect("array id").to_string();
    // Done in seconds. A task that ended otherwise can never complete: the
    // test stops at once. The tasks not completed (then, or past 30 s) are
    // shown with every log line of the master and the worker that names
    // them, and their run directories, for the one who looks next.
    let started = std::time::Instant::now();
    let mut shown = false;
    let done = until(
        Duration::from_secs(120),
        "every array task completed",
        || {
            let ts = array_tasks(&c, &array);
            let completed = ts.iter().filter(|t| t["status"] == "completed").count();
            let ended_otherwise = ts
                .iter()
                .any(|t| t["status"] == "failed" || t["status"] == "cancelled");
            let late = started.elapsed() > Duration::from_secs(30);
            if completed < ts.len() && (ended_otherwise || late) && !shown {
                shown = true;
                eprintln!(
                    "array: {completed} of {} completed after {:?}",
                    ts.len(),
                    started.elapsed()
                );
                for t in ts.iter().filter(|t| t["status"] != "completed") {
                    let id = t["id"].as_str().unwrap_or_default();
                    eprintln!("not completed: {}", c.show(id));
                    for p in std::iter::once(&c.master).chain(&c.workers) {
                        for line in log_lines(&p.log).iter().filter(|l| l.contains(id)) {
                            eprintln!("  {}: {line}", p.name);
                        }
                    }
                    show_run_records(&c.state_root, id);
                }
            }
            assert!(!ended_otherwise, "an array task ended without completing");
            (completed == ts.len()).then_some(ts)
        },
    );
    assert_eq!(done.len(), 1000);
    let indices: BTreeSet<u64> = done
        .iter()
        .map(|t| t["array"]["index"].as_u64().expect("index"))
        .collect();
    assert_eq!(indices, (1..=1000).collect(), "each index once");
    for i in 1..=1000 {
        let wrote = std::fs::read_to_string(dir.0.join(i.to_string()))
            .unwrap_or_else(|e| panic!("task {i} wrote nothing: {e}"));
        assert_eq!(wrote.trim(), i.to_string(), "task {i} saw another index");
    }
    let newest = c.json(&["tasks", "--array", &array, "--limit", "5"]);
    assert_eq!(newest.as_array().map(Vec::len), Some(5), "{newest}");
    let out = c.cli(&["task", "--array", "5-1", "busybox"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("runs backwards"), "{out:?}");
}

/// `cancel --array` cancels every pending and running task of the array,
/// stops the running ones, and touches no other task.
#[test]
fn cancel_by_array_stops_every_task_of_the_array() {
    let mut c = Cluster::start("array-cancel", FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let dir = Scratch::new(&c.tag);
    for i in 1..=6 {
        c.pidfiles.push(dir.0.join(format!("{i}.pid")));
    }
    let script = format!(
        "echo $$ > '{}/'\"$CLOUDAI_ARRAY_INDEX\".pid; exec sleep 300",
        dir.0.display()
    );
    let other = c.submit(&["--cpu", "0.5", "busybox", "--", "sleep", "300"]);
    let v = c.json(&[
        "task", "--array", "1-6", "--cpu", "0.5", "--grace", "1", "busybox", "--", "sh", "-c",
        &script,
    ]);
    let array = v["array_id"].as_str().expect("array id").to_string();
    // Three of the six fit beside the other task; three wait.
    let running = until(EVENTUALLY, "three array tasks sleeping", || {
        let pids: Vec<u32> = (1..=6)
            .filter_map(|i| read_pid(&dir.0.join(format!("{i}.pid"))))
            .filter(|p| is_sleep(*p))
            .collect();
        (pids.len() == 3).then_some(pids)
    });
    let rows = c.json(&["cancel", "--array", &array]);
    assert_eq!(rows.as_array().map(Vec::len), Some(6), "{rows}");
    for t in array_tasks(&c, &array) {
        assert_eq!(t["status"], "cancelled", "{t}");
    }
    for pid in running {
        until_gone(
            pid,
            Duration::from_secs(5),
            "a cancelled array task's sleep",
        );
    }
    assert_eq!(
        c.status(&other),
        "running",
        "a task outside the array runs on"
    );
    let cancel = c.json(&["cancel", &other]);
    assert_eq!(cancel[0]["task_id"], other.as_str(), "{cancel}");
}

/// With `--retention 2`, a finished task is removed with its result about
/// two seconds after it ends; `show` then says it expired (a failing exit
/// code), `tasks` no longer counts it, and an id never issued is still
/// "not found".
fn a_finished_task_expires(test: &str, store: &[&str]) {
    let mut extra = vec!["--retention", "2"];
    extra.extend_from_slice(store);
    let mut c = Cluster::start_with(test, FAST, &extra);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let out = c.cli(&["run", "busybox", "--", "sh", "-c", "echo kept-for-a-while"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = c.tasks()[0]["id"].as_str().expect("id").to_string();
    let view = c.show(&id);
    assert_eq!(view["task"]["status"], "completed", "{view}");
    assert!(view["result"]["logs"]
        .as_str()
        .unwrap_or_default()
        .contains("kept-for-a-while"));
    let expired = until(Duration::from_secs(15), "the task expired", || {
        let out = c.cli(&["show", &id]);
        (out.code != 0).then_some(out)
    });
    assert!(
        expired.stderr.contains("has expired") && expired.stderr.contains("kept for 2s"),
        "{expired:?}"
    );
    assert!(c.tasks().is_empty(), "nothing left to list");
    let never = format!("task-{}-999999999", now_ms());
    let out = c.cli(&["show", &never]);
    assert!(out.stderr.contains("not found"), "{out:?}");
}

#[test]
fn a_finished_task_expires_on_the_memory_store() {
    a_finished_task_expires("expire-memory", &[]);
}

#[test]
fn a_finished_task_expires_on_mongodb() {
    let uri = std::env::var("CLOUDAI_TEST_MONGO_URI").expect(
        "CLOUDAI_TEST_MONGO_URI is not set: run ./scripts/test.sh, which starts a MongoDB-wire server",
    );
    let db = format!("expire_{}", std::process::id());
    a_finished_task_expires("expire-mongo", &["--store", &uri, "--mongo-db", &db]);
}
