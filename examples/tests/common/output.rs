//! The output scenario both runtimes pass: a task writing megabytes of
//! distinct numbered lines to stdout between two lines on stderr, followed
//! from its start through `run`, attached mid-run by `monitor --offset`,
//! and read back after its end with `logs` and `monitor --tail`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use super::*;

/// Lines of `numbered line NNNNNN\n` (21 bytes each): 4.2 MB in all.
const LINES: usize = 200_000;
const FIRST_ON_STDERR: &[u8] = b"err-start\n";

/// The numbered lines `from..=to`, as the task writes them.
fn numbered(from: usize, to: usize) -> Vec<u8> {
    (from..=to)
        .flat_map(|i| format!("numbered line {i:06}\n").into_bytes())
        .collect()
}

/// The task: a line on stderr, the first half of the lines, a pause, the
/// second half, a line on stderr.
fn script(pause_secs: u32) -> String {
    let half = LINES / 2;
    let lines = |a: usize, b: usize| {
        format!(
            "awk 'BEGIN {{ for (i = {a}; i <= {b}; i++) printf \"numbered line %06d\\n\", i }}'"
        )
    };
    format!(
        "echo err-start >&2; {}; sleep {pause_secs}; {}; echo err-end >&2",
        lines(1, half),
        lines(half + 1, LINES)
    )
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Asserts `got` is exactly `want`, saying how it differs without printing
/// megabytes.
fn same_bytes(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        let near = |b: &[u8]| {
            String::from_utf8_lossy(&b[at.saturating_sub(40).min(b.len())..(at + 40).min(b.len())])
                .into_owned()
        };
        panic!(
            "{what}: {} bytes (hash {:x}), expected {} bytes (hash {:x}); first difference at byte {at}: got {:?}, expected {:?}",
            got.len(),
            digest(got),
            want.len(),
            digest(want),
            near(got),
            near(want)
        );
    }
}

/// Runs the scenario; `task(script)` gives the CLI arguments that submit
/// `sh -c script` on the runtime under test.
pub fn follows_every_byte_once(c: &Cluster, task: &dyn Fn(&str) -> Vec<String>) {
    let all = numbered(1, LINES);

    // From the start, through `run`: every stdout byte once, in order, on
    // stdout; the stderr lines on stderr.
    let mut run = vec!["run".to_string()];
    run.extend(task(&script(0)));
    let args: Vec<&str> = run.iter().map(String::as_str).collect();
    let out = c.cli(&args);
    assert_eq!(out.code, 0, "run must exit 0: {}", out.stderr);
    same_bytes("run's stdout", &out.raw, &all);
    for line in ["err-start\n", "err-end\n"] {
        assert!(
            out.stderr.contains(line),
            "run's stderr must hold {line:?}: {}",
            out.stderr
        );
    }

    // Attached mid-run at an offset: exactly the bytes from there.
    let mut submit = task(&script(3));
    submit.insert(0, "task".into());
    let args: Vec<&str> = submit.iter().map(String::as_str).collect();
    let id = c.json(&args)["task_id"]
        .as_str()
        .expect("task id")
        .to_string();
    let first_half = FIRST_ON_STDERR.len() + numbered(1, LINES / 2).len();
    until(EVENTUALLY, "the first half of the output", || {
        let logs = c.cli(&["logs", &id]);
        (logs.raw.len() + FIRST_ON_STDERR.len() >= first_half).then_some(())
    });
    assert_eq!(c.status(&id), "running", "the follower attaches mid-run");
    let offset = first_half - 1000;
    let mid = c.cli(&["monitor", &id, "--offset", &offset.to_string()]);
    assert_eq!(
        mid.code, 0,
        "monitor of a task that completes exits 0: {}",
        mid.stderr
    );
    same_bytes(
        "monitor --offset's stdout",
        &mid.raw,
        &all[offset - FIRST_ON_STDERR.len()..],
    );
    assert!(
        mid.stderr.contains("err-end") && !mid.stderr.contains("err-start"),
        "{}",
        mid.stderr
    );

    // After the end: `logs` prints it all, `monitor --tail` the last lines.
    let logs = c.cli(&["logs", &id]);
    assert_eq!(logs.code, 0, "{}", logs.stderr);
    same_bytes("logs' stdout", &logs.raw, &all);
    // The last lines: stdout's end, and err-end among them or just before
    // (a container runtime copies the two streams apart, so err-end may
    // land a little before stdout's last lines).
    let tail = c.cli(&["monitor", &id, "--tail", "3"]);
    assert_eq!(tail.code, 0, "{}", tail.stderr);
    let on_stderr = tail.stderr.lines().filter(|l| *l == "err-end").count();
    assert_eq!(
        tail.stdout.lines().count() + on_stderr,
        3,
        "three lines in all: {tail:?}"
    );
    assert!(
        all.ends_with(tail.raw.as_slice()),
        "stdout's last lines: {:?}",
        tail.stdout
    );
    assert!(
        tail.stdout
            .ends_with(&format!("numbered line {LINES:06}\n")),
        "{:?}",
        tail.stdout
    );
    let shown = c.show(&id);
    let stored = shown["result"]["logs_offset"]
        .as_u64()
        .expect("logs_offset");
    assert!(stored > 0, "the stored result keeps only the end: {shown}");
}
