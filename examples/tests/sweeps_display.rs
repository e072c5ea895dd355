//! Sweeps at a glance, against the binaries: `tasks` shows an array as
//! one row (`ARRAY_[indices]` with the array's counts by status), `tasks
//! --array A` shows each of its tasks with its index, run times, exit and
//! reason; `show` and `workers` show names, labels and runs; `--json`
//! keeps its shape.
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// The rows of a `tasks` listing: the lines after the line of counts and
/// the header.
fn rows(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn words(row: &str) -> Vec<&str> {
    row.split_whitespace().collect()
}

/// A time as a listing shows one: `12:03:04` (or `05-01 12:03` on
/// another day than today's, in UTC).
fn is_time(word: &str) -> bool {
    let b = word.as_bytes();
    (b.len() == 8 && b[2] == b':' && b[5] == b':') || (b.len() == 5 && b[2] == b':')
}

fn is_final(t: &Value) -> bool {
    matches!(
        t["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

#[test]
fn an_array_is_one_row_with_its_counts_and_its_tasks_are_listed_on_request() {
    let mut c = Cluster::start("sweeps", FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    // 40 tasks, the 7th of which fails; and a named task killed by a signal.
    let v = c.json(&[
        "task",
        "--array",
        "1-40",
        "--name",
        "sweep",
        "--cpu",
        "0.05",
        "--mem",
        "0.01",
        "busybox",
        "--",
        "sh",
        "-c",
        "test \"$CLOUDAI_ARRAY_INDEX\" -ne 7",
    ]);
    assert_eq!(v["tasks"], 40, "{v}");
    let array = v["array_id"].as_str().expect("array_id").to_string();
    let lonely = c.submit(&[
        "--name",
        "lonely",
        "--label",
        "team=ml",
        "--cpu",
        "0.05",
        "--mem",
        "0.01",
        "busybox",
        "--",
        "sh",
        "-c",
        "kill -9 $$",
    ]);
    let all = until(Duration::from_secs(60), "all 41 tasks ended", || {
        let ts = c.tasks();
        (ts.len() == 41 && ts.iter().all(is_final)).then_some(ts)
    });
    let members: Vec<String> = all
        .iter()
        .filter(|t| t["array"]["id"] == array.as_str())
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(members.len(), 40);

    // `tasks`: the array is one row with its counts; the named task its own.
    let out = c.cli(&["tasks"]);
    assert_eq!(out.code, 0, "{out:?}");
    eprintln!("{}", out.stdout);
    let first = out.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("41 tasks: 0 pending, 0 running, 39 completed, 2 failed, 0 cancelled")
            && first.contains("in 2 rows")
            && first.contains(&format!("tasks --array {array}")),
        "the line of counts, and how to list the array: {first}"
    );
    let listed = rows(&out.stdout);
    assert_eq!(
        listed.len(),
        2,
        "one row for the array, one for the task: {listed:#?}"
    );
    let array_row = listed
        .iter()
        .find(|l| l.contains(&format!("{array}_[1-40]")))
        .unwrap_or_else(|| panic!("no row for {array}_[1-40]: {listed:#?}"));
    assert!(
        array_row.contains("sweep") && array_row.contains("40 tasks: 39 completed, 1 failed"),
        "the array's name and counts: {array_row}"
    );
    assert!(
        array_row.contains("exited with code 1"),
        "the reason its failed task failed: {array_row}"
    );
    for m in &members {
        assert!(!out.stdout.contains(m.as_str()), "{m} listed by itself");
    }
    let lonely_row = listed
        .iter()
        .find(|l| l.contains(&lonely))
        .unwrap_or_else(|| panic!("no row for {lonely}: {listed:#?}"));
    let w_lonely = words(lonely_row);
    for want in ["lonely", "-", "failed", "SIGKILL"] {
        assert!(w_lonely.contains(&want), "{want} in {lonely_row}");
    }
    assert!(
        lonely_row.contains("killed by signal 9"),
        "the failure's reason: {lonely_row}"
    );
    assert_eq!(
        w_lonely.iter().filter(|w| is_time(w)).count(),
        2,
        "its start and end: {lonely_row}"
    );

    // `tasks --array A`: every task of the array, each with its index.
    let out = c.cli(&["tasks", "--array", &array]);
    assert_eq!(out.code, 0, "{out:?}");
    eprintln!("{}", out.stdout);
    let listed = rows(&out.stdout);
    assert_eq!(listed.len(), 40, "{listed:#?}");
    for i in 1..=40 {
        let index = format!("[{i}]");
        let row: Vec<&&str> = listed
            .iter()
            .filter(|l| words(l).contains(&index.as_str()))
            .collect();
        assert_eq!(row.len(), 1, "one row with index {index}: {listed:#?}");
        let w = words(row[0]);
        assert!(w.contains(&"sweep"), "its name: {}", row[0]);
        assert_eq!(
            w.iter().filter(|w| is_time(w)).count(),
            2,
            "its start and end: {}",
            row[0]
        );
        assert!(
            w.iter()
                .any(|w| w.ends_with('s') && w[..w.len() - 1].parse::<f64>().is_ok()),
            "its run time: {}",
            row[0]
        );
        if i == 7 {
            assert!(
                w.contains(&"failed") && w.contains(&"1") && row[0].contains("exited with code 1"),
                "the failed task's exit code and reason: {}",
                row[0]
            );
        } else {
            assert!(
                w.contains(&"completed") && w.contains(&"0"),
                "a completed task's exit code: {}",
                row[0]
            );
        }
    }

    // `--expand` lists the newest tasks one by one, as before.
    let out = c.cli(&["tasks", "--expand"]);
    assert_eq!(rows(&out.stdout).len(), 20, "{}", out.stdout);

    // `--json` keeps every record, with its name and labels.
    let json = c.json(&["tasks"]);
    let records = json.as_array().expect("tasks --json is an array");
    assert_eq!(records.len(), 20, "the newest 20 records, not rows");
    let record = records
        .iter()
        .find(|t| t["id"] == lonely.as_str())
        .expect("the named task's record");
    assert_eq!(record["spec"]["name"], "lonely", "{record}");
    assert_eq!(record["spec"]["labels"]["team"], "ml", "{record}");
    assert_eq!(
        c.json(&["tasks", "--array", &array])
            .as_array()
            .map(Vec::len),
        Some(40),
        "--array lists the whole array"
    );

    // `show`: the name, the array and index, each attempt's run and exit.
    let failed = all
        .iter()
        .find(|t| t["array"]["index"] == 7)
        .and_then(|t| t["id"].as_str())
        .expect("member 7");
    let out = c.cli(&["show", failed]);
    assert_eq!(out.code, 0, "{out:?}");
    eprintln!("{}", out.stdout);
    for want in [
        "name       sweep".to_string(),
        format!("array      {array}, index 7"),
        "exit code  1".to_string(),
        "priority   0".to_string(),
    ] {
        assert!(out.stdout.contains(&want), "{want:?} in {}", out.stdout);
    }
    let run = out
        .stdout
        .lines()
        .find(|l| l.starts_with("run "))
        .unwrap_or_else(|| panic!("a run line: {}", out.stdout));
    assert_eq!(words(run).iter().filter(|w| is_time(w)).count(), 2, "{run}");
    let out = c.cli(&["show", &lonely]);
    assert!(
        out.stdout.contains("labels     team=ml") && out.stdout.contains("exit code  SIGKILL"),
        "{}",
        out.stdout
    );

    // A dependent shows its dependencies and constraints.
    let dependent = c.submit(&[
        "--after-ok",
        failed,
        "--constraint",
        "zone!=mars",
        "--priority",
        "3",
        "busybox",
        "--",
        "true",
    ]);
    let out = c.cli(&["show", &dependent]);
    for want in [
        format!("after      after-ok {failed}"),
        "constraint zone!=mars".to_string(),
        "priority   3".to_string(),
    ] {
        assert!(out.stdout.contains(&want), "{want:?} in {}", out.stdout);
    }

    // `workers` shows each worker's labels.
    let out = c.cli(&["workers"]);
    assert!(out.stdout.contains("LABELS"), "{}", out.stdout);
    let labels = c.worker(&w)["labels"].clone();
    assert!(
        labels.is_object(),
        "workers --json has the labels: {labels}"
    );
}
