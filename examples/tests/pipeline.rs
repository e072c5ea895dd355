//! Multi-process tests of pipelines, on the process runtime: a real
//! master and real workers, arrays chained with `--after-corr` and
//! `--after-ok`, a failure cancelling what depends on it, names and labels
//! (`tasks --name`, `tasks --label`, `cancel --label`), constraints on
//! worker labels, array throttles (`--array 1-6%2`) and `resubmit`.
//!
//! The tasks write into a scratch directory of the test's own (removed at
//! the end), and append one line per run to its `runs` file, so that what
//! each stage read and how often each task ran are checked on disk as well
//! as in the master's records.
#![allow(clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A directory of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(c: &Cluster) -> Scratch {
        let dir = std::env::temp_dir().join(format!("cloudai-pipeline-{}", c.tag));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }

    /// The directory, for a shell script (the tests' paths hold no `'`).
    fn sh(&self) -> String {
        let d = self.0.display().to_string();
        assert!(!d.contains('\''), "{d}");
        d
    }

    fn read(&self, name: &str) -> String {
        let p = self.0.join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
    }

    fn exists(&self, name: &str) -> bool {
        self.0.join(name).exists()
    }

    /// Each line of the `runs` file (one per run a task made), counted.
    fn runs(&self) -> BTreeMap<String, usize> {
        let mut runs = BTreeMap::new();
        if !self.exists("runs") {
            return runs;
        }
        for line in self.read("runs").lines() {
            *runs.entry(line.to_string()).or_insert(0) += 1;
        }
        runs
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cluster on FAST timings with one worker of `cpu` cores, active.
fn cluster(test: &str, cpu: f64) -> (Cluster, String) {
    let mut c = Cluster::start(test, FAST);
    let w = c.id("w");
    c.spawn_worker(&w, cpu);
    c.wait_active(&[&w]);
    (c, w)
}

/// Submits an array (`task --array ... args`) of `n` tasks; its id.
fn submit_array(c: &Cluster, args: &[&str], n: usize) -> String {
    let mut all = vec!["task"];
    all.extend_from_slice(args);
    let v = c.json(&all);
    assert_eq!(v["tasks"], n, "{args:?}: {v}");
    v["array_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no array_id in {v}"))
        .to_string()
}

/// The tasks `tasks --json ARGS --all` lists.
fn list(c: &Cluster, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["tasks"];
    all.extend_from_slice(args);
    all.push("--all");
    c.json(&all)
        .as_array()
        .unwrap_or_else(|| panic!("tasks {args:?} --json is an array"))
        .clone()
}

/// The ids of `tasks`.
fn ids(tasks: &[Value]) -> BTreeSet<String> {
    tasks
        .iter()
        .map(|t| t["id"].as_str().expect("id").to_string())
        .collect()
}

/// The members of array `array`, by index.
fn members(c: &Cluster, array: &str) -> BTreeMap<u64, Value> {
    list(c, &["--array", array])
        .into_iter()
        .map(|t| {
            assert_eq!(t["array"]["id"], array, "{t}");
            (t["array"]["index"].as_u64().expect("index"), t)
        })
        .collect()
}

fn is_final(t: &Value) -> bool {
    matches!(
        t["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

/// Waits until each of the `n` members of `array` is final; returns them.
fn final_members(c: &Cluster, array: &str, n: usize, within: Duration) -> BTreeMap<u64, Value> {
    until(within, &format!("the {n} members of {array} final"), || {
        let m = members(c, array);
        (m.len() == n && m.values().all(is_final)).then_some(m)
    })
}

/// Waits until `task` is final; returns its view (`show --json`).
fn final_view(c: &Cluster, task: &str, within: Duration) -> Value {
    until(within, &format!("{task} final"), || {
        let v = c.show(task);
        is_final(&v["task"]).then_some(v)
    })
}

fn id(t: &Value) -> &str {
    t["id"].as_str().expect("id")
}

/// The one run a completed task made: when its worker started it and when
/// it ended (the worker's clock, which is ours). Checks that it completed
/// on its first and only attempt.
fn one_run(t: &Value) -> (u64, u64) {
    assert_eq!(t["status"], "completed", "{t}");
    assert_eq!(t["attempt"], 1, "one assignment: {t}");
    let history = t["history"].as_array().expect("history");
    assert_eq!(history.len(), 1, "one attempt: {t}");
    let a = &history[0];
    assert_eq!(a["cause"], "completed", "{t}");
    let started = a["started_at"].as_u64().expect("the attempt's started_at");
    let ended = a["ended_at"].as_u64().expect("the attempt's ended_at");
    assert!(started <= ended, "{t}");
    (started, ended)
}

/// Checks that each of `tasks` was assigned once and ran once, naming
/// every one that was not with the causes of its attempts (a worker that
/// fenced itself ends its runs `cut_off`, and they run again).
fn ran_once<'a>(tasks: impl IntoIterator<Item = &'a Value>) {
    let again: Vec<String> = tasks
        .into_iter()
        .filter(|t| t["attempt"] != 1 || t["history"].as_array().map(Vec::len) != Some(1))
        .map(|t| {
            let causes: Vec<&str> = t["history"]
                .as_array()
                .map(|h| h.iter().filter_map(|a| a["cause"].as_str()).collect())
                .unwrap_or_default();
            format!("{} (attempt {}, causes {causes:?})", id(t), t["attempt"])
        })
        .collect();
    assert!(
        again.is_empty(),
        "{} tasks were not run exactly once: {again:#?}",
        again.len()
    );
}

/// Checks that a task never ran: no assignment, no attempt.
fn never_ran(t: &Value) {
    assert_eq!(t["attempt"], 0, "never assigned: {t}");
    assert!(
        t["history"].is_null() || t["history"] == serde_json::json!([]),
        "no attempt: {t}"
    );
}

/// The three stages' scripts, in `dir`: `prepare` member i writes
/// `prep-<i>` (and if its index is `fail`, then waits until the file `go`
/// exists, for at most 30 s, and fails), `train` member i reads it and
/// writes `train-<i>` with a line of its own, `evaluate` reads `train-1`
/// .. `train-<n>` into `summary`. Each appends a line to `runs` when it
/// starts.
fn stage_scripts(dir: &str, n: usize, fail: Option<u32>) -> [String; 3] {
    let fail = fail.map_or(String::new(), |i| {
        format!(
            " && if [ \"$i\" -eq {i} ]; then n=0; \
             while [ ! -e '{dir}/go' ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; \
             exit 1; fi"
        )
    });
    let prepare = format!(
        "i=$CLOUDAI_ARRAY_INDEX; echo \"prepare $i\" >> '{dir}/runs'; \
         echo \"prep $i\" > '{dir}/prep-'$i.tmp && mv '{dir}/prep-'$i.tmp '{dir}/prep-'$i{fail}"
    );
    let train = format!(
        "i=$CLOUDAI_ARRAY_INDEX; echo \"train $i\" >> '{dir}/runs'; \
         {{ cat '{dir}/prep-'$i && echo \"train $i\"; }} > '{dir}/train-'$i.tmp \
         && mv '{dir}/train-'$i.tmp '{dir}/train-'$i"
    );
    let evaluate = format!(
        "echo evaluate >> '{dir}/runs'; i=1; \
         while [ $i -le {n} ]; do cat '{dir}/train-'$i || exit 1; i=$((i+1)); done \
         > '{dir}/summary.tmp' && mv '{dir}/summary.tmp' '{dir}/summary'"
    );
    [prepare, train, evaluate]
}

/// Small tasks: many fit on one worker at once.
const SMALL: [&str; 4] = ["--cpu", "0.1", "--mem", "0.01"];

/// Submits the three stages (`n` + `n` + 1); the two arrays' ids and the
/// evaluate task's.
fn submit_pipeline(c: &Cluster, scripts: &[String; 3], n: usize) -> (String, String, String) {
    let range = format!("1-{n}");
    let with = |head: &[&str], script: &str| {
        let mut args: Vec<String> = head.iter().map(|s| s.to_string()).collect();
        args.extend(SMALL.iter().map(|s| s.to_string()));
        args.extend(["busybox", "--", "sh", "-c", script].map(String::from));
        args
    };
    let args = with(&["--array", &range, "--name", "prepare"], &scripts[0]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let prepare = submit_array(c, &args, n);
    let args = with(
        &[
            "--array",
            &range,
            "--name",
            "train",
            "--after-corr",
            &prepare,
        ],
        &scripts[1],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let train = submit_array(c, &args, n);
    let args = with(&["--name", "evaluate", "--after-ok", &train], &scripts[2]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let evaluate = c.submit(&args);
    (prepare, train, evaluate)
}

/// prepare (100) → train (100, member i after member i) → evaluate (after
/// every train member): each stage reads what the one before wrote, every
/// task runs once, and no task starts before what it waits on ended.
#[test]
fn a_three_stage_pipeline_runs_each_stage_after_the_one_before() {
    const N: usize = 100;
    let begin = Instant::now();
    let (c, w) = cluster("pipeline", 4.0);
    let dir = Scratch::new(&c);
    let scripts = stage_scripts(&dir.sh(), N, None);
    let (prepare, train, evaluate) = submit_pipeline(&c, &scripts, N);

    let ev = final_view(&c, &evaluate, Duration::from_secs(90));
    assert_eq!(ev["task"]["status"], "completed", "{ev}");
    let prep = final_members(&c, &prepare, N, EVENTUALLY);
    let trained = final_members(&c, &train, N, EVENTUALLY);

    // What each stage read is what the one before wrote.
    let mut summary = String::new();
    for i in 1..=N {
        assert_eq!(dir.read(&format!("prep-{i}")), format!("prep {i}\n"));
        let t = format!("prep {i}\ntrain {i}\n");
        assert_eq!(dir.read(&format!("train-{i}")), t, "train-{i}");
        summary.push_str(&t);
    }
    assert_eq!(dir.read("summary"), summary);

    // Every task ran once: in the records and on disk.
    ran_once(prep.values().chain(trained.values()).chain([&ev["task"]]));
    let mut expected: BTreeMap<String, usize> = (1..=N)
        .flat_map(|i| [format!("prepare {i}"), format!("train {i}")])
        .map(|l| (l, 1))
        .collect();
    expected.insert("evaluate".into(), 1);
    assert_eq!(dir.runs(), expected, "each task ran exactly once");
    assert_eq!(ev["result"]["attempt"], 1, "{ev}");
    assert_eq!(ev["task"]["worker"], w.as_str(), "{ev}");
    assert_eq!(ev["task"]["spec"]["name"], "evaluate", "{ev}");

    // No train member started before its prepare member ended; evaluate
    // started after every train member ended.
    let mut last_train_end = 0;
    for i in 1..=N as u64 {
        let (p, t) = (&prep[&i], &trained[&i]);
        assert_eq!(p["spec"]["name"], "prepare", "{p}");
        assert_eq!(t["spec"]["name"], "train", "{t}");
        let (_, prep_end) = one_run(p);
        let (train_start, train_end) = one_run(t);
        assert!(
            train_start >= prep_end,
            "train member {i} started at {train_start}, before its prepare member ended at \
             {prep_end}:\n{p}\n{t}"
        );
        last_train_end = last_train_end.max(train_end);
    }
    let (eval_start, _) = one_run(&ev["task"]);
    assert!(
        eval_start >= last_train_end,
        "evaluate started at {eval_start}, before the last train member ended at \
         {last_train_end}"
    );
    assert_eq!(c.tasks().len(), 2 * N + 1);
    eprintln!("pipeline of {} tasks: {:?}", 2 * N + 1, begin.elapsed());
}

/// The same pipeline (5 + 5 + 1) where prepare member 3 fails: train
/// member 3 and evaluate are cancelled without running, saying why (the
/// failed prepare task, evaluate naming it as the root); the other train
/// members complete.
#[test]
fn a_failed_stage_cancels_what_depends_on_it_and_nothing_else() {
    const N: usize = 5;
    let (c, _) = cluster("pipeline-fail", 2.0);
    let dir = Scratch::new(&c);
    let scripts = stage_scripts(&dir.sh(), N, Some(3));
    let (prepare, train, evaluate) = submit_pipeline(&c, &scripts, N);
    // Every stage waits on the one before while prepare member 3 runs;
    // then it fails.
    c.wait_reason(
        &evaluate,
        "Dependency",
        "waiting for its dependencies: after-ok",
    );
    until(EVENTUALLY, "prepare member 3 running", || {
        (members(&c, &prepare)[&3]["status"] == "running").then_some(())
    });
    std::fs::write(dir.0.join("go"), b"").expect("write go");

    let ev = final_view(&c, &evaluate, Duration::from_secs(30));
    let prep = final_members(&c, &prepare, N, EVENTUALLY);
    let trained = final_members(&c, &train, N, Duration::from_secs(30));

    let failed = id(&prep[&3]).to_string();
    assert_eq!(prep[&3]["status"], "failed", "{}", prep[&3]);
    let t3 = &trained[&3];
    assert_eq!(t3["status"], "cancelled", "{t3}");
    never_ran(t3);
    assert_eq!(
        t3["reason"],
        format!("dependency never satisfied: after-ok and task {failed} failed"),
        "{t3}"
    );
    let e = &ev["task"];
    assert_eq!(e["status"], "cancelled", "{ev}");
    never_ran(e);
    assert!(ev["result"].is_null(), "no result: {ev}");
    assert_eq!(
        e["reason"],
        format!(
            "dependency never satisfied: after-ok and task {} cancelled (root: task {failed})",
            id(t3)
        ),
        "{ev}"
    );

    for i in (1..=N as u64).filter(|i| *i != 3) {
        let (_, prep_end) = one_run(&prep[&i]);
        let (train_start, _) = one_run(&trained[&i]);
        assert!(train_start >= prep_end, "member {i}");
        assert_eq!(
            dir.read(&format!("train-{i}")),
            format!("prep {i}\ntrain {i}\n")
        );
    }
    assert!(!dir.exists("train-3"), "train member 3 never ran");
    assert!(!dir.exists("summary"), "evaluate never ran");
    let expected: BTreeMap<String, usize> = (1..=N)
        .map(|i| (format!("prepare {i}"), 1))
        .chain(
            (1..=N)
                .filter(|i| *i != 3)
                .map(|i| (format!("train {i}"), 1)),
        )
        .collect();
    assert_eq!(dir.runs(), expected);
    // Still so a moment later: nothing ran late.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.status(id(t3)), "cancelled");
    assert_eq!(c.status(&evaluate), "cancelled");
    assert_eq!(dir.runs(), expected);
}

/// `tasks --name` and `tasks --label` list exactly the tasks submitted
/// with them (each filter given is required), and `cancel --label`
/// cancels exactly the pending ones among them.
#[test]
fn names_and_labels_find_and_cancel_exactly_their_tasks() {
    let (mut c, w) = cluster("named", 1.0);
    let sub = |c: &Cluster, head: &[&str]| {
        let mut args = head.to_vec();
        args.extend_from_slice(&["--cpu", "0.5", "--mem", "0.01", "busybox", "--", "true"]);
        c.submit(&args)
    };
    // A red task that runs and completes now.
    let red_done = sub(&c, &["--label", "team=red"]);
    final_view(&c, &red_done, EVENTUALLY);
    assert_eq!(c.status(&red_done), "completed");
    // The worker's one core taken, so the rest wait.
    let (blocker, pidfile) = c.submit_sleep(&w, "1");
    c.wait_sleeping(&blocker, &pidfile);

    let alpha: Vec<String> = (0..2).map(|_| sub(&c, &["--name", "alpha"])).collect();
    let red: Vec<String> = (0..2).map(|_| sub(&c, &["--label", "team=red"])).collect();
    let both = sub(
        &c,
        &[
            "--name",
            "alpha",
            "--label",
            "team=red",
            "--label",
            "tier=gold",
        ],
    );
    let blue = sub(&c, &["--label", "team=blue", "--name", "alphabet"]);
    let plain = sub(&c, &[]);
    let beta = submit_array(
        &c,
        &[
            "--array", "1-3", "--name", "beta", "--cpu", "0.5", "--mem", "0.01", "busybox", "--",
            "true",
        ],
        3,
    );
    let beta_members: BTreeSet<String> =
        members(&c, &beta).values().map(|t| id(t).into()).collect();

    let set = |ids: &[&String]| -> BTreeSet<String> { ids.iter().map(|s| s.to_string()).collect() };
    let found = list(&c, &["--name", "alpha"]);
    assert_eq!(
        ids(&found),
        set(&[&alpha[0], &alpha[1], &both]),
        "{found:?}"
    );
    for t in &found {
        assert_eq!(t["spec"]["name"], "alpha", "{t}");
    }
    let found = list(&c, &["--label", "team=red"]);
    assert_eq!(
        ids(&found),
        set(&[&red_done, &red[0], &red[1], &both]),
        "{found:?}"
    );
    for t in &found {
        assert_eq!(t["spec"]["labels"]["team"], "red", "{t}");
    }
    let found = list(&c, &["--label", "team=red", "--label", "tier=gold"]);
    assert_eq!(ids(&found), set(&[&both]), "{found:?}");
    assert_eq!(
        found[0]["spec"]["labels"],
        serde_json::json!({"team": "red", "tier": "gold"}),
        "{found:?}"
    );
    let found = list(&c, &["--name", "alpha", "--label", "team=red"]);
    assert_eq!(ids(&found), set(&[&both]), "{found:?}");
    let found = list(&c, &["--label", "team=blue"]);
    assert_eq!(ids(&found), set(&[&blue]), "{found:?}");
    assert_eq!(found[0]["spec"]["name"], "alphabet", "{found:?}");
    assert_eq!(ids(&list(&c, &["--name", "beta"])), beta_members);
    assert!(list(&c, &["--name", "gamma"]).is_empty());
    assert!(list(&c, &["--label", "team=green"]).is_empty());
    let unnamed = list(&c, &[]);
    assert_eq!(unnamed.len(), 2 + 2 + 2 + 1 + 1 + 1 + 3, "{unnamed:?}");

    // Everything but the first and the blocker waits.
    let pending = ids(&list(&c, &["--status", "pending"]));
    let mut waiting = set(&[&alpha[0], &alpha[1], &red[0], &red[1], &both, &blue, &plain]);
    waiting.extend(beta_members.iter().cloned());
    assert_eq!(pending, waiting);

    let rows = c.json(&["cancel", "--label", "team=red"]);
    let rows = rows.as_array().expect("cancel --json is an array").clone();
    let cancelled: BTreeSet<String> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["outcome"], "dequeued", "{r}");
            r["task_id"].as_str().expect("task_id").to_string()
        })
        .collect();
    assert_eq!(cancelled, set(&[&red[0], &red[1], &both]), "{rows:?}");
    for t in &cancelled {
        assert_eq!(c.status(t), "cancelled", "{t}");
    }
    assert_eq!(
        c.status(&red_done),
        "completed",
        "a completed task stays so"
    );
    assert_eq!(c.status(&blocker), "running");
    let mut still = set(&[&alpha[0], &alpha[1], &blue, &plain]);
    still.extend(beta_members.iter().cloned());
    assert_eq!(ids(&list(&c, &["--status", "pending"])), still);
    // Again: nothing left to cancel.
    let again = c.json(&["cancel", "--label", "team=red"]);
    assert_eq!(again, serde_json::json!([]), "{again}");
}

/// A task constrained to `gpu=fake` waits (`NoMatchingWorker`) while only
/// an unlabelled worker runs; the same submit without
/// `--wait-for-capacity` is refused naming the constraint; a worker
/// labelled `gpu=fake` joins and the task completes there.
#[test]
fn a_constrained_task_waits_for_a_matching_worker_and_runs_there() {
    let (mut c, plain) = cluster("constraint", 2.0);
    let task_args = |wait: bool| {
        let mut a = vec!["--constraint", "gpu=fake"];
        if wait {
            a.push("--wait-for-capacity");
        }
        a.extend_from_slice(&SMALL);
        a.extend_from_slice(&["busybox", "--", "sh", "-c", "echo on-the-gpu-worker"]);
        a
    };
    let t = c.submit(&task_args(true));
    c.wait_reason(
        &t,
        "NoMatchingWorker",
        "no active worker matches the constraints gpu=fake",
    );
    assert_eq!(c.status(&t), "pending");

    let mut refused = vec!["task"];
    refused.extend(task_args(false));
    let out = c.cli(&refused);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stderr.contains("gpu=fake"),
        "names the constraint: {out:?}"
    );
    assert_eq!(c.tasks().len(), 1, "the refused submit made no task");
    // Still waiting, and not on the plain worker.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.status(&t), "pending");

    let gpu = c.id("gpu");
    c.worker_args = vec!["--label".into(), "gpu=fake".into()];
    c.spawn_worker(&gpu, 2.0);
    c.wait_active(&[&gpu]);
    let v = final_view(&c, &t, EVENTUALLY);
    assert_eq!(v["task"]["status"], "completed", "{v}");
    assert_eq!(v["task"]["worker"], gpu.as_str(), "{v}");
    assert_ne!(v["task"]["worker"], plain.as_str(), "{v}");
    assert_eq!(v["result"]["worker_id"], gpu.as_str(), "{v}");
    assert_eq!(v["result"]["logs"], "on-the-gpu-worker\n", "{v}");
}

/// `--array 1-6%2` of half-second tasks: never more than two members
/// running at a sampled moment, nor in their recorded runs; all complete.
#[test]
fn a_throttled_array_never_runs_more_than_its_limit() {
    let (c, _) = cluster("throttle", 4.0);
    let mut args = vec!["--array", "1-6%2"];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&["busybox", "--", "sleep", "0.5"]);
    let array = submit_array(&c, &args, 6);

    let mut most = 0;
    let mut samples = 0;
    let mut held = false;
    let done = until(Duration::from_secs(60), "all six completed", || {
        let m = members(&c, &array);
        samples += 1;
        let running = m.values().filter(|t| t["status"] == "running").count();
        assert!(
            running <= 2,
            "{running} members running at once: {:#?}",
            m.values().collect::<Vec<_>>()
        );
        most = most.max(running);
        held |= m.values().any(|t| {
            t["status"] == "pending"
                && t["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("array limit"))
        });
        (m.len() == 6 && m.values().all(|t| t["status"] == "completed")).then_some(m)
    });
    assert!(most >= 1, "a member was seen running ({samples} samples)");
    assert!(
        held,
        "a member was seen waiting for the limit ({samples} samples)"
    );

    // The recorded runs: at most two overlap at any time.
    let mut edges: Vec<(u64, i32)> = Vec::new();
    for t in done.values() {
        let (start, end) = one_run(t);
        edges.push((start, 1));
        edges.push((end, -1));
    }
    // At the same millisecond an end comes before a start.
    edges.sort();
    let mut now = 0;
    for (at, step) in &edges {
        now += step;
        assert!(now <= 2, "{now} runs at {at}: {edges:?}");
    }
}

/// `resubmit --array A` submits each failed member again as a new task
/// with the old one's name and labels, printing `old -> new`.
#[test]
fn resubmit_of_an_array_submits_its_failed_members_again() {
    let (c, _) = cluster("resubmit", 2.0);
    let mut args = vec![
        "--array",
        "1-4",
        "--name",
        "rs",
        "--label",
        "team=green",
        "--label",
        "stage=fit",
    ];
    args.extend_from_slice(&SMALL);
    let script = "test $((CLOUDAI_ARRAY_INDEX % 2)) -eq 1";
    args.extend_from_slice(&["busybox", "--", "sh", "-c", script]);
    let array = submit_array(&c, &args, 4);
    let m = final_members(&c, &array, 4, EVENTUALLY);
    for (i, t) in &m {
        let want = if i % 2 == 1 { "completed" } else { "failed" };
        assert_eq!(t["status"], want, "{t}");
    }

    let out = c.cli(&["resubmit", "--array", &array]);
    assert_eq!(out.code, 0, "{out:?}");
    let again: BTreeMap<String, String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(old, new)| (old.trim().to_string(), new.trim().to_string()))
        .collect();
    let failed: BTreeSet<String> = [2, 4].iter().map(|i| id(&m[i]).to_string()).collect();
    assert_eq!(
        again.keys().cloned().collect::<BTreeSet<_>>(),
        failed,
        "one line per failed member: {out:?}"
    );
    for (old, new) in &again {
        assert_ne!(old, new);
        let before = &m.values().find(|t| id(t) == old).expect("old")["spec"];
        let v = c.show(new);
        let spec = &v["task"]["spec"];
        assert_eq!(spec["name"], "rs", "{v}");
        assert_eq!(
            spec["labels"],
            serde_json::json!({"team": "green", "stage": "fit"}),
            "{v}"
        );
        assert_eq!(spec["command"], before["command"], "{v}");
    }
    // The new tasks are found by the old name and labels.
    let named = ids(&list(&c, &["--name", "rs", "--label", "team=green"]));
    let mut want: BTreeSet<String> = m.values().map(|t| id(t).to_string()).collect();
    want.extend(again.values().cloned());
    assert_eq!(named, want);
    // Nothing of the array was cancelled.
    let out = c.cli(&["resubmit", "--array", &array, "--status", "cancelled"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(" -> "), "{out:?}");
}

/// A dependent submitted after the chain of cancellations already ran
/// (prepare member 2 failed, so train member 2 was cancelled) is cancelled
/// at once with the same kind of reason as one that waited: naming the
/// parent it waited on and the root of the chain. One on the failed task
/// itself names just that task.
#[test]
fn a_dependent_submitted_after_the_chain_ended_names_its_root_too() {
    const N: usize = 2;
    let (c, _) = cluster("pipeline-late", 2.0);
    let dir = Scratch::new(&c);
    let scripts = stage_scripts(&dir.sh(), N, Some(2));
    std::fs::write(dir.0.join("go"), b"").expect("write go");
    let range = format!("1-{N}");
    let mut args = vec!["--array", &range];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&["busybox", "--", "sh", "-c", &scripts[0]]);
    let prepare = submit_array(&c, &args, N);
    let mut args = vec!["--array", &range, "--after-corr", &prepare];
    args.extend_from_slice(&SMALL);
    args.extend_from_slice(&["busybox", "--", "sh", "-c", &scripts[1]]);
    let train = submit_array(&c, &args, N);
    let prep = final_members(&c, &prepare, N, EVENTUALLY);
    let trained = final_members(&c, &train, N, EVENTUALLY);
    let failed = id(&prep[&2]).to_string();
    assert_eq!(prep[&2]["status"], "failed", "{}", prep[&2]);
    let t2 = &trained[&2];
    assert_eq!(t2["status"], "cancelled", "{t2}");
    assert_eq!(trained[&1]["status"], "completed", "{}", trained[&1]);

    let late = |after: &str| {
        let mut args = vec!["--after-ok", after];
        args.extend_from_slice(&SMALL);
        args.extend_from_slice(&["busybox", "--", "true"]);
        let t = c.submit(&args);
        let v = final_view(&c, &t, EVENTUALLY);
        assert_eq!(v["task"]["status"], "cancelled", "{v}");
        never_ran(&v["task"]);
        v["task"]["reason"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(
        late(&failed),
        format!("dependency never satisfied: after-ok and task {failed} failed")
    );
    assert_eq!(
        late(&train),
        format!(
            "dependency never satisfied: after-ok and task {} cancelled (root: task {failed})",
            id(t2)
        ),
        "a dependent submitted after the cancellation names the root as one that waited does"
    );
}
