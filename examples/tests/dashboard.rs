//! The dashboard in a real browser: headless Chromium, driven by
//! Selenium (`dashboard_browser.py`), against a real master and worker;
//! and its task list's API (an array as one row) without one.
//! `scripts/test.sh` installs Chromium and Selenium
//! (`scripts/browser-test-env.sh`) and names the venv's python in
//! `CLOUDAI_TEST_BROWSER_PYTHON`. Screenshots go to
//! `target/dashboard-screenshots/`.
#![allow(clippy::print_stderr)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard_browser.py");
const SCREENSHOTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/dashboard-screenshots"
);

#[test]
fn the_dashboard_logs_in_follows_a_task_live_and_cancels_another() {
    let python = std::env::var("CLOUDAI_TEST_BROWSER_PYTHON").expect(
        "CLOUDAI_TEST_BROWSER_PYTHON is not set: run ./scripts/test.sh, which installs Chromium and Selenium",
    );
    let mut c = Cluster::start_with("dashboard", FAST, &["--http-listen", "0"]);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let url = dashboard_url(&c);
    let mut browser = Command::new(python);
    browser
        .arg(SCRIPT)
        .args(["--url", &url, "--token", &c.token, "--cli", MASTER_BIN])
        .args(["--master", &c.address, "--worker", &w, "--out", SCREENSHOTS]);
    let out = run_bounded(&mut browser, Duration::from_secs(240)).expect("run the browser test");
    eprintln!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "the browser test failed (see above)");
}

/// The dashboard's URL, from the master's log.
fn dashboard_url(c: &Cluster) -> String {
    until(EVENTUALLY, "the HTTP listener's URL in the log", || {
        c.master_log().iter().find_map(|l| {
            l["fields"]["url"]
                .as_str()
                .and_then(|u| u.strip_suffix("/metrics"))
                .map(str::to_string)
        })
    })
}

/// `GET` of the dashboard's API with the token: the JSON it answers.
fn api(c: &Cluster, url: &str, path: &str) -> Value {
    let (code, body) = get(&format!("{url}{path}"), Some(&c.token));
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn the_task_list_shows_an_array_as_one_row_with_its_counts() {
    let mut c = Cluster::start_with("dashboard-rows", FAST, &["--http-listen", "0"]);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    let url = dashboard_url(&c);
    let v = c.json(&[
        "task",
        "--array",
        "1-12",
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
        "test \"$CLOUDAI_ARRAY_INDEX\" -ne 5",
    ]);
    let array = v["array_id"].as_str().expect("array_id").to_string();
    let single = c.submit(&[
        "--name", "single", "--label", "team=ml", "--cpu", "0.05", "--mem", "0.01", "busybox",
        "--", "true",
    ]);
    until(Duration::from_secs(60), "all 13 tasks ended", || {
        let ts = c.tasks();
        (ts.len() == 13
            && ts
                .iter()
                .all(|t| t["status"] == "completed" || t["status"] == "failed"))
        .then_some(())
    });

    // Collapsed: the single task, then the array as one row.
    let page = api(&c, &url, "/api/tasks?collapse=true");
    let rows = page["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{page}");
    assert_eq!(rows[0]["task"]["id"], single.as_str(), "{page}");
    assert_eq!(rows[0]["task"]["spec"]["name"], "single", "{page}");
    assert_eq!(rows[0]["task"]["run"]["exit_code"], 0, "{page}");
    let a = &rows[1]["array"];
    assert_eq!(a["id"], array.as_str(), "{a}");
    assert_eq!(a["indices"], "1-12", "{a}");
    assert_eq!(a["listed"], 12, "{a}");
    assert_eq!(a["name"], "sweep", "{a}");
    assert_eq!(a["counts"]["completed"], 11, "{a}");
    assert_eq!(a["counts"]["failed"], 1, "{a}");
    assert_eq!(a["failure"], "exited with code 1", "{a}");
    assert!(
        a["started_at"].as_u64().is_some() && a["started_at"].as_u64() <= a["ended_at"].as_u64(),
        "{a}"
    );
    assert!(page["next"].is_null(), "{page}");

    // One row a page: the array's row on the second.
    let first = api(&c, &url, "/api/tasks?collapse=true&limit=1");
    assert_eq!(first["rows"].as_array().map(Vec::len), Some(1), "{first}");
    let next = first["next"].as_str().expect("a next page");
    let second = api(
        &c,
        &url,
        &format!("/api/tasks?collapse=true&limit=1&after={next}"),
    );
    assert_eq!(second["rows"][0]["array"]["indices"], "1-12", "{second}");
    assert!(second["next"].is_null(), "{second}");

    // Expanded (the array asked for): each task with its index, run and exit.
    let members = api(&c, &url, &format!("/api/tasks?array={array}"));
    let tasks = members["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 12, "{members}");
    for t in tasks {
        let run = &t["run"];
        assert!(run["started_at"].as_u64().is_some(), "{t}");
        assert!(
            run["ended_at"].as_u64() >= run["started_at"].as_u64(),
            "{t}"
        );
        assert_eq!(t["requested"]["cpu"], 0.05, "{t}");
        let failed = t["array"]["index"] == 5;
        assert_eq!(run["exit_code"], if failed { 1 } else { 0 }, "{t}");
    }

    // Name and label filters.
    let named = api(&c, &url, "/api/tasks?collapse=true&name=sweep");
    assert_eq!(named["rows"].as_array().map(Vec::len), Some(1), "{named}");
    assert_eq!(named["rows"][0]["array"]["id"], array.as_str(), "{named}");
    let labelled = api(&c, &url, "/api/tasks?collapse=true&label=team%3Dml");
    assert_eq!(
        labelled["rows"].as_array().map(Vec::len),
        Some(1),
        "{labelled}"
    );
    assert_eq!(
        labelled["rows"][0]["task"]["id"],
        single.as_str(),
        "{labelled}"
    );

    // The task page's spelling of dependencies and constraints; workers'
    // labels.
    let parent = tasks[0]["id"].as_str().expect("id");
    let dependent = c.submit(&[
        "--after-any",
        parent,
        "--constraint",
        "zone!=mars",
        "busybox",
        "--",
        "true",
    ]);
    let t = api(&c, &url, &format!("/api/tasks/{dependent}"));
    assert_eq!(t["dependencies"][0]["condition"], "after-any", "{t}");
    assert_eq!(t["dependencies"][0]["task"], parent, "{t}");
    assert_eq!(t["constraints_text"][0], "zone!=mars", "{t}");
    let overview = api(&c, &url, "/api/overview");
    assert!(overview["workers"][0]["labels"].is_object(), "{overview}");
}
