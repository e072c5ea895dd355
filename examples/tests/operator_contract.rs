//! The operator's contract, against the binaries: exit codes, JSON errors,
//! closed pipes, escape codes, valid values, waiting reasons, impossible
//! requests, durations and global flags.
#![allow(clippy::print_stderr)]

mod common;

use std::process::{Command, Stdio};

use cloudai_core::model::Term;
use cloudai_core::store::{LeaseRecord, LeaseStore};
use cloudai_mongo::{MongoConfig, MongoStore};
use common::*;

fn cluster(test: &str) -> (Cluster, String) {
    let mut c = Cluster::start(test, FAST);
    let w = c.id("w");
    c.spawn_worker(&w, 2.0);
    c.wait_active(&[&w]);
    (c, w)
}

#[test]
fn run_exits_with_the_tasks_code_and_documented_codes_otherwise() {
    let (c, _) = cluster("codes");
    let out = c.cli(&["run", "busybox", "--", "sh", "-c", "echo out; exit 3"]);
    assert_eq!(out.code, 3, "the task's own code: {out:?}");
    let out = c.cli(&["run", "busybox", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(
        out.code,
        128 + 9,
        "128 + the signal, as a shell says: {out:?}"
    );

    // A cancelled task: the documented code (80).
    let mut run = Command::new(MASTER_BIN);
    clean_env(&mut run);
    run.args(["--master", &c.address, "--token", &c.token, "--json"])
        .args(["run", "busybox", "--", "sh", "-c", "sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut run = run.spawn().expect("run");
    let id = until(EVENTUALLY, "the task runs", || {
        c.tasks()
            .into_iter()
            .find(|t| t["status"] == "running" && t["spec"]["command"][2] == "sleep 60")
            .and_then(|t| t["id"].as_str().map(str::to_string))
    });
    assert_eq!(c.cli(&["cancel", &id]).code, 0);
    let status = wait_exit(&mut run, EVENTUALLY, "run of a cancelled task");
    assert_eq!(status.code(), Some(80), "cancelled");

    // Client-side failures.
    let out = c.cli(&["--json", "show", "task-nosuch"]);
    assert_eq!(out.code, 66, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object");
    assert_eq!(v["error"]["kind"], "not_found", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("task-nosuch"),
        "{v}"
    );
    let mut wrong = Command::new(MASTER_BIN);
    wrong.args(["--master", &c.address, "--token", "wrong-token", "tasks"]);
    let out = run_bounded(&mut wrong, CLI_TIMEOUT).expect("run the CLI");
    assert_eq!(out.code, 77, "unauthenticated: {out:?}");
    let out = c.cli(&["tasks", "--status", "bogus"]);
    assert_eq!(out.code, 64, "usage: {out:?}");
    assert!(
        out.stderr
            .contains("pending, running, completed, failed, cancelled"),
        "the valid values are listed: {}",
        out.stderr
    );
    let out = c.cli(&["--json", "tasks", "--status", "bogus"]);
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("a JSON usage error");
    assert_eq!(
        (out.code, v["error"]["kind"].as_str()),
        (64, Some("usage")),
        "{v}"
    );
}

#[test]
fn an_impossible_request_is_refused_unless_told_to_wait_and_lists_a_short_reason() {
    let (c, w) = cluster("fit");
    let out = c.cli(&["task", "--cpu", "8", "busybox", "--", "true"]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("the largest worker, {w}, has cpu=2")),
        "the message names the largest worker: {}",
        out.stderr
    );
    let gpu = c.cli(&["task", "--gpus", "1", "busybox", "--", "true"]);
    assert_eq!(gpu.code, 65, "no GPU anywhere: {gpu:?}");
    let id = c.submit(&["--cpu", "8", "--wait-for-capacity", "busybox", "--", "true"]);
    c.wait_reason(&id, "TooLarge", "exceeds");
}

#[test]
fn pipes_durations_colours_and_global_flags() {
    let (c, _) = cluster("pipes");
    // `--grace 2s` is a duration.
    let id = c.submit(&["--grace", "2s", "busybox", "--", "true"]);
    assert_eq!(c.show(&id)["task"]["spec"]["cancel_grace_ms"], 2000);
    // Enough tasks that `tasks` writes more than `head` reads.
    let v = c.json(&[
        "task", "--array", "1-300", "--cpu", "0.01", "busybox", "--", "true",
    ]);
    assert_eq!(v["tasks"], 300);
    let script = format!(
        "{MASTER_BIN} --master {} --token {} tasks --all | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
        c.address, c.token
    );
    let mut piped = Command::new("bash");
    piped.args(["-c", &script]);
    let out = run_bounded(&mut piped, CLI_TIMEOUT).expect("bash");
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let status = out.stdout.lines().last().unwrap_or_default();
    assert!(
        status == "status 141" || status == "status 0",
        "a closed pipe ends the CLI quietly: {out:?}"
    );
    // No escape codes into a pipe, with or without NO_COLOR.
    let listed = c.cli(&["tasks", "--all"]);
    assert!(
        !listed.stdout.contains('\u{1b}') && !listed.stderr.contains('\u{1b}'),
        "{listed:?}"
    );
    let mut no_color = Command::new(MASTER_BIN);
    no_color
        .args(["--master", &c.address, "--token", &c.token, "workers"])
        .env("NO_COLOR", "1");
    let out = run_bounded(&mut no_color, CLI_TIMEOUT).expect("workers");
    assert!(!out.stdout.contains('\u{1b}'), "{out:?}");
    // Global flags after the subcommand.
    let mut after = Command::new(MASTER_BIN);
    after.args([
        "workers", "--master", &c.address, "--token", &c.token, "--json",
    ]);
    let out = run_bounded(&mut after, CLI_TIMEOUT).expect("workers");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.trim_start().starts_with('['), "{out:?}");
}

/// A master that cannot run as asked under `--ha` says why and exits 78:
/// `--ha` needs a shared MongoDB store and does not go with `--dev`; its
/// `--lost-after` must let workers keep their runs through a takeover; and
/// a master without `--ha` will not start on a database whose lease is
/// held, naming the holder.
#[test]
fn ha_misconfigurations_are_refused_with_the_reason() {
    let refused = |args: &[&str], says: &[&str]| {
        let mut cmd = Command::new(MASTER_BIN);
        clean_env(&mut cmd);
        cmd.args(["--listen", "127.0.0.1:0", "--token", "t"])
            .args(args);
        let out = run_bounded(&mut cmd, CLI_TIMEOUT).expect("run the master");
        assert_eq!(out.code, 78, "{args:?}: {out:?}");
        for s in says {
            assert!(out.stderr.contains(s), "{args:?} should say {s:?}: {out:?}");
        }
    };
    refused(&["--ha"], &["--ha", "--store mongodb://"]);
    refused(&["--ha", "--dev"], &["--ha", "--dev"]);
    let uri = mongo_uri();
    let db = format!("contract-ha-{}-{}", std::process::id(), now_ms());
    refused(
        &[
            "--ha",
            "--store",
            &uri,
            "--mongo-db",
            &db,
            "--lease-ttl",
            "60",
        ],
        &["--lost-after", "--lease-ttl"],
    );

    // Another master holds this database's lease.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let store = MongoStore::connect(MongoConfig::new(uri.clone(), db.clone()))
            .await
            .expect("the test store");
        let held = LeaseRecord {
            holder: Some("m-elsewhere".into()),
            run: "r1".into(),
            address: "10.0.0.9:50051".into(),
            term: Term::new(4),
            version: 0,
            ttl: std::time::Duration::from_secs(15),
        };
        store.create_lease(&held).await.expect("a lease");
    });
    refused(
        &["--store", &uri, "--mongo-db", &db],
        &["m-elsewhere", "10.0.0.9:50051", "--ha"],
    );
}

/// With no master answering, a command given several waits
/// `--leader-wait`, then exits 69 naming each master's answer.
#[test]
fn no_master_answering_fails_after_the_leader_wait_naming_each() {
    let gone = |_| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        l.local_addr().expect("its address").to_string()
    };
    let addresses: Vec<String> = (0..2).map(gone).collect();
    let mut cmd = Command::new(MASTER_BIN);
    clean_env(&mut cmd);
    cmd.args(["--master", &addresses.join(","), "--token", "t"])
        .args(["--leader-wait", "1", "tasks"]);
    let out = run_bounded(&mut cmd, CLI_TIMEOUT).expect("run the CLI");
    assert_eq!(out.code, 69, "{out:?}");
    for a in &addresses {
        assert!(out.stderr.contains(a.as_str()), "names {a}: {out:?}");
    }
}
