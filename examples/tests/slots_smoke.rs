//! The smoke of `benches/slots.sh`: a few hundred trivial tasks through the
//! real binaries on the supervised process runtime, each completed once
//! with its one result. No time is asserted (the bench measures it).
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::*;

#[test]
fn short_tasks_all_complete_once_through_the_real_binaries() {
    const N: usize = 300;
    let mut c = Cluster::start("slots", FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let v = c.json(&[
        "task",
        "--array",
        &format!("1-{N}"),
        "--cpu",
        "0.125",
        "--mem",
        "0.01",
        "busybox",
        "--",
        "true",
    ]);
    assert_eq!(v["tasks"], N, "{v}");
    let tasks = until(Duration::from_secs(120), "every task completed", || {
        let all = c.json(&["tasks", "--all"]);
        let list = all.as_array().cloned().unwrap_or_default();
        let done = list.iter().filter(|t| t["status"] == "completed").count();
        (done == N).then_some(list)
    });
    for t in &tasks {
        assert_eq!(t["attempt"], 1, "one run each: {t}");
        assert_eq!(t["history"].as_array().map(Vec::len), Some(1), "{t}");
    }
    // One result each, the run's: a sample through `show`.
    for t in tasks.iter().step_by(37) {
        let id = t["id"].as_str().expect("id");
        let shown = c.show(id);
        assert_eq!(shown["result"]["status"], "completed", "{shown}");
        assert_eq!(shown["result"]["attempt"], 1, "{shown}");
    }
}
