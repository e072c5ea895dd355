//! What the CLI prints: tables for people, JSON for scripts (`--json`).
//! This is the only place in the project that prints for people.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use cloudai_core::master::{CancelOutcome, TaskOutput, TaskView};
use cloudai_core::model::{ArrayId, StatusCounts, TaskId, TaskRecord, Timestamp};
use cloudai_core::output::OutputStream;
use cloudai_grpc::proto;
use serde::Serialize;

fn json_line<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn ago(t: Timestamp) -> String {
    let s = now().saturating_since(t).as_secs();
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

/// An error, on stderr.
pub(crate) fn error(msg: &str) {
    eprintln!("error: {msg}");
}

/// A progress note for a long wait, on stderr.
pub(crate) fn progress(msg: &str) {
    eprintln!("{msg}");
}

/// Prints a task's output as it arrives: each chunk's bytes as they are
/// to stdout or stderr (as JSON lines on stdout with `--json`), with a note
/// on stderr where bytes were no longer kept or a new attempt begins.
#[derive(Debug)]
pub(crate) struct OutputPrinter {
    json: bool,
    /// The attempt and offset the next chunk is expected at.
    next: Option<(u32, u64)>,
}

impl OutputPrinter {
    pub(crate) fn new(json: bool) -> Self {
        OutputPrinter { json, next: None }
    }

    /// Prints one chunk; an error means the reader went away.
    pub(crate) fn print(&mut self, o: &TaskOutput) -> std::io::Result<()> {
        let c = &o.chunk;
        match self.next {
            Some((attempt, _)) if attempt != o.attempt => {
                eprintln!("[cloudai: attempt {} of the task starts]", o.attempt);
            }
            Some((_, at)) if c.offset > at => {
                eprintln!(
                    "[cloudai: {} bytes of output are no longer kept]",
                    c.offset - at
                );
            }
            None if c.offset > 0 && !self.json => {
                eprintln!("[cloudai: output from byte {}]", c.offset);
            }
            _ => {}
        }
        self.next = Some((o.attempt, c.end()));
        if self.json {
            let stream = match c.stream {
                OutputStream::Stdout => "stdout",
                OutputStream::Stderr => "stderr",
            };
            let line = serde_json::json!({
                "attempt": o.attempt,
                "offset": c.offset,
                "stream": stream,
                "text": String::from_utf8_lossy(&c.data),
            });
            return writeln!(std::io::stdout(), "{line}");
        }
        match c.stream {
            OutputStream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&c.data)?;
                out.flush()
            }
            OutputStream::Stderr => std::io::stderr().write_all(&c.data),
        }
    }
}

/// A one-line confirmation.
pub(crate) fn message(json: bool, msg: &str) {
    if json {
        json_line(&serde_json::json!({ "ok": true, "message": msg }));
    } else {
        println!("{msg}");
    }
}

pub(crate) fn submitted(json: bool, id: &TaskId) {
    if json {
        json_line(&serde_json::json!({ "task_id": id }));
    } else {
        println!("task {id} submitted");
    }
}

fn res(r: &Option<proto::Resources>) -> (f64, f64, u32) {
    r.as_ref()
        .map(|r| {
            (
                r.cpu_millis as f64 / 1000.0,
                r.memory_mb as f64 / 1000.0,
                r.gpus,
            )
        })
        .unwrap_or_default()
}

#[derive(Serialize)]
struct WorkerRow<'a> {
    id: &'a str,
    health: &'a str,
    /// `draining` or `drained`, if an operator drains it.
    drain: Option<&'a str>,
    drain_deadline_ms: Option<u64>,
    registered: bool,
    address: Option<&'a str>,
    cpu_allocated: f64,
    cpu_capacity: f64,
    memory_allocated_gb: f64,
    memory_capacity_gb: f64,
    gpus_allocated: u32,
    gpus_capacity: u32,
    tasks: &'a [String],
    last_heartbeat_ms: Option<u64>,
}

pub(crate) fn workers(json: bool, ws: &[proto::WorkerView]) {
    if json {
        let rows: Vec<WorkerRow<'_>> = ws
            .iter()
            .map(|w| {
                let (ca, ma, ga) = res(&w.allocated);
                let (cc, mc, gc) = res(&w.capacity);
                WorkerRow {
                    id: &w.id,
                    health: &w.health,
                    drain: w.drain.as_deref(),
                    drain_deadline_ms: w.drain_deadline,
                    registered: w.registered,
                    address: w.address.as_deref(),
                    cpu_allocated: ca,
                    cpu_capacity: cc,
                    memory_allocated_gb: ma,
                    memory_capacity_gb: mc,
                    gpus_allocated: ga,
                    gpus_capacity: gc,
                    tasks: &w.tasks,
                    last_heartbeat_ms: w.last_heartbeat,
                }
            })
            .collect();
        return json_line(&rows);
    }
    if ws.is_empty() {
        println!("no workers registered");
        return;
    }
    println!(
        "{:<2} {:<16} {:<18} {:<22} {:>11} {:>13} {:>7} {:>5}  LAST HEARTBEAT",
        "", "WORKER", "STATUS", "ADDRESS", "CPU", "MEM GB", "GPU", "TASKS"
    );
    for w in ws {
        let marker = match w.health.as_str() {
            "active" => "●",
            "lost" => "✗",
            _ => "○",
        };
        let (ca, ma, ga) = res(&w.allocated);
        let (cc, mc, gc) = res(&w.capacity);
        println!(
            "{marker:<2} {:<16} {:<18} {:<22} {:>11} {:>13} {:>7} {:>5}  {}",
            w.id,
            match &w.drain {
                Some(drain) => format!("{}, {drain}", w.health),
                None => w.health.clone(),
            },
            w.address.as_deref().unwrap_or("-"),
            format!("{ca}/{cc}"),
            format!("{ma}/{mc}"),
            format!("{ga}/{gc}"),
            w.tasks.len(),
            w.last_heartbeat
                .map(|t| ago(Timestamp::from_millis(t)))
                .unwrap_or_else(|| "never".into()),
        );
    }
}

pub(crate) fn array_submitted(json: bool, id: &ArrayId, count: usize) {
    if json {
        json_line(&serde_json::json!({ "array_id": id, "tasks": count }));
    } else {
        println!("array {id} submitted: {count} tasks (tasks --array {id})");
    }
}

/// The tasks listed, newest first, after a line of counts by status.
pub(crate) fn tasks(json: bool, ts: &[TaskRecord], counts: &StatusCounts) {
    if json {
        return json_line(&ts);
    }
    println!(
        "{} tasks: {} pending, {} running, {} completed, {} failed, {} cancelled; showing {}",
        counts.total(),
        counts.pending,
        counts.running,
        counts.completed,
        counts.failed,
        counts.cancelled,
        ts.len()
    );
    if ts.is_empty() {
        return;
    }
    println!(
        "{:<28} {:<10} {:<14} {:<18} {:>5} {:>6} {:<9} REASON",
        "TASK", "STATUS", "WORKER", "IMAGE", "CPU", "MEM", "AGE"
    );
    for t in ts {
        println!(
            "{:<28} {:<10} {:<14} {:<18} {:>5} {:>6} {:<9} {}",
            t.id,
            t.status,
            t.worker.as_ref().map(|w| w.as_str()).unwrap_or("-"),
            t.spec.image,
            t.spec.resources.cpu_cores(),
            t.spec.resources.memory_gb(),
            ago(t.created_at),
            t.reason.as_deref().unwrap_or(""),
        );
    }
}

pub(crate) fn task(json: bool, v: &TaskView) {
    if json {
        return json_line(
            &serde_json::json!({ "task": v.task, "result": v.result, "waiting": v.waiting }),
        );
    }
    let t = &v.task;
    println!("task      {}", t.id);
    println!("status    {}", t.status);
    println!("image     {}", t.spec.image);
    println!(
        "command   {}",
        shlex::try_join(t.spec.command.iter().map(String::as_str)).unwrap_or_default()
    );
    println!("resources {}", t.spec.resources);
    println!(
        "worker    {} (attempt {})",
        t.worker.as_ref().map(|w| w.as_str()).unwrap_or("-"),
        t.attempt
    );
    if let Some(r) = &t.reason {
        println!("reason    {r}");
    }
    if let Some(w) = &v.waiting {
        println!("waiting   {w}");
    }
    if let Some(r) = &v.result {
        println!(
            "exit code {}",
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        );
        if let Some(m) = &r.message {
            println!("message   {m}");
        }
        match r.logs_offset {
            0 => println!("--- logs ---"),
            n => println!("--- logs (the end: {n} bytes before it left out) ---"),
        }
        print!("{}", r.logs);
        if !r.logs.ends_with('\n') && !r.logs.is_empty() {
            println!();
        }
    }
}

pub(crate) fn finished(v: &TaskView) {
    let code = v
        .result
        .as_ref()
        .and_then(|r| r.exit_code)
        .map(|c| format!(", exit code {c}"))
        .unwrap_or_default();
    let why = v
        .task
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    eprintln!("task {} {}{code}{why}", v.task.id, v.task.status);
}

pub(crate) fn cancelled(json: bool, done: &[(TaskId, CancelOutcome)]) {
    if json {
        let rows: Vec<_> = done
            .iter()
            .map(|(id, o)| match o {
                CancelOutcome::Dequeued => serde_json::json!({ "task_id": id, "outcome": "dequeued" }),
                CancelOutcome::Stopped { worker } => serde_json::json!({ "task_id": id, "outcome": "stopped", "worker": worker }),
                CancelOutcome::StopPending { worker, error } => {
                    serde_json::json!({ "task_id": id, "outcome": "stop_pending", "worker": worker, "error": error })
                }
            })
            .collect();
        return json_line(&rows);
    }
    if done.is_empty() {
        println!("nothing to cancel");
    }
    for (id, o) in done {
        match o {
            CancelOutcome::Dequeued => println!("task {id} cancelled (it had not started)"),
            CancelOutcome::Stopped { worker } => {
                println!("task {id} cancelled; stopped on {worker}")
            }
            CancelOutcome::StopPending { worker, error } => {
                println!("task {id} cancelled; {worker} has not confirmed the stop ({error}); it goes out in the background, or when the worker is back")
            }
        }
    }
}

pub(crate) fn reconciled(json: bool, r: &proto::ReconcileReply) {
    if json {
        let fixes: Vec<_> = r
            .corrections
            .iter()
            .map(|c| serde_json::json!({ "worker": c.worker, "cpu_before": res(&c.before).0, "cpu_after": res(&c.after).0, "added": c.added, "removed": c.removed }))
            .collect();
        return json_line(
            &serde_json::json!({ "corrections": fixes, "unknown_workers": r.unknown_workers, "overcommitted": r.overcommitted }),
        );
    }
    if r.corrections.is_empty() && r.unknown_workers.is_empty() {
        println!("allocations match running tasks; nothing to fix");
    }
    for c in &r.corrections {
        let (b, a) = (res(&c.before), res(&c.after));
        println!(
            "fixed {}: CPU {}→{}, memory {}→{} GB (+{} -{} tasks)",
            c.worker,
            b.0,
            a.0,
            b.1,
            a.1,
            c.added.len(),
            c.removed.len()
        );
    }
    for u in &r.unknown_workers {
        println!("running task on an unknown worker: {u}");
    }
    for w in &r.overcommitted {
        println!("overcommitted: {w} runs more than its capacity");
    }
}
