//! Each task gets its own GPUs, through the real binaries: a worker whose
//! `PATH` starts with a fake `nvidia-smi` reporting four GPUs, on the
//! supervised process runtime. (This machine has no GPU: what a real one
//! would see is in the README's GPU section.)
#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

/// A directory holding an `nvidia-smi` that reports four GPUs, in both
/// formats the worker reads.
fn fake_nvidia_smi(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let script = r#"#!/bin/sh
case "$1" in
  --query-gpu=*) for i in 0 1 2 3; do echo "$i, GPU-fake-000$i, Fake GPU"; done ;;
  -L) for i in 0 1 2 3; do echo "GPU $i: Fake GPU (UUID: GPU-fake-000$i)"; done ;;
  *) exit 9 ;;
esac
"#;
    let path = dir.join("nvidia-smi");
    std::fs::write(&path, script).expect("write nvidia-smi");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir.to_path_buf()
}

/// Submits a one-GPU task that writes what it sees to `out`, then sleeps.
fn submit_gpu_task(c: &Cluster, out: &Path) -> String {
    let o = out.display();
    let script = format!(
        "echo \"$CUDA_VISIBLE_DEVICES $CLOUDAI_GPUS\" > '{o}.tmp' && mv '{o}.tmp' '{o}' && exec sleep 300"
    );
    c.submit(&[
        "--cpu", "0.5", "--mem", "0.1", "--gpus", "1", "--grace", "1", "busybox", "--", "sh", "-c",
        &script,
    ])
}

/// What a task wrote: (CUDA_VISIBLE_DEVICES, CLOUDAI_GPUS).
fn seen(out: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(out).ok()?;
    let (cuda, ours) = text.trim().split_once(' ')?;
    Some((cuda.to_string(), ours.to_string()))
}

#[test]
fn four_one_gpu_tasks_each_get_their_own_and_a_fifth_gets_the_freed_one() {
    let mut c = Cluster::start_with("gpus", FAST, &["--http-listen", "0"]);
    let bin = fake_nvidia_smi(&c.state_root.join("bin"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.worker_env.push(("PATH".into(), path));
    let w = c.id("w");
    c.spawn_worker(&w, 8.0);
    c.wait_active(&[&w]);
    assert_eq!(c.worker(&w)["gpus_capacity"], 4, "{}", c.worker(&w));

    let outs: Vec<PathBuf> = (0..5)
        .map(|i| c.state_root.join(format!("seen-{i}")))
        .collect();
    let tasks: Vec<String> = outs[..4].iter().map(|o| submit_gpu_task(&c, o)).collect();
    let first: Vec<(String, String)> = until(EVENTUALLY, "four GPU tasks running", || {
        outs[..4].iter().map(|o| seen(o)).collect()
    });
    let indices: BTreeSet<&str> = first.iter().map(|(_, i)| i.as_str()).collect();
    assert_eq!(
        indices,
        BTreeSet::from(["0", "1", "2", "3"]),
        "each task its own GPU: {first:?}"
    );
    for (cuda, index) in &first {
        assert_eq!(
            cuda,
            &format!("GPU-fake-000{index}"),
            "CUDA sees its GPU by UUID"
        );
    }
    for (t, (_, index)) in tasks.iter().zip(&first) {
        assert_eq!(
            c.show(t)["task"]["gpus"],
            serde_json::json!([index.parse::<u32>().unwrap()])
        );
    }
    // `workers` says which GPU runs what.
    let listed = c.worker(&w);
    for (t, (cuda, index)) in tasks.iter().zip(&first) {
        let gpu = &listed["gpus"][index.parse::<usize>().unwrap()];
        assert_eq!(
            (gpu["task"].as_str(), gpu["uuid"].as_str()),
            (Some(t.as_str()), Some(cuda.as_str())),
            "{listed}"
        );
    }

    // So does the dashboard.
    let url = until(EVENTUALLY, "the HTTP listener's URL in the log", || {
        c.master_log().iter().find_map(|l| {
            l["fields"]["url"]
                .as_str()
                .and_then(|u| u.strip_suffix("/metrics"))
                .map(str::to_string)
        })
    });
    let (code, body) = get(&format!("{url}/api/overview"), Some(&c.token));
    assert_eq!(code, 200, "{body}");
    let overview: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let devices = &overview["workers"][0]["gpu_devices"];
    for (t, (_, index)) in tasks.iter().zip(&first) {
        assert_eq!(
            devices[index.parse::<usize>().unwrap()]["task"],
            t.as_str(),
            "{devices}"
        );
    }

    // A fifth waits for a GPU; when one task ends, it gets that one.
    let fifth = submit_gpu_task(&c, &outs[4]);
    c.wait_reason(&fifth, "Resources", "free resources");
    let (ended, (_, freed)) = (&tasks[2], &first[2]);
    c.cli(&["cancel", ended]);
    let (cuda, index) = until(EVENTUALLY, "the fifth task running", || seen(&outs[4]));
    assert_eq!(&index, freed, "the fifth task gets the freed GPU");
    assert_eq!(cuda, format!("GPU-fake-000{freed}"));

    for t in tasks.iter().chain([&fifth]) {
        c.cli(&["cancel", t]);
    }
}
