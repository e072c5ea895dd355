//! What the CLI prints: tables for people, JSON for scripts (`--json`).
//! This is the only place in the project that prints for people.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

use comfy_table::{Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};

use crate::exit;

use cloudai_core::ledger::Reconciliation;
use cloudai_core::liveness::Health;
use cloudai_core::master::{
    short_reason, CancelOutcome, MasterEvent, TaskOutput, TaskView, WorkerView,
};
use cloudai_core::model::{
    ArrayId, Attempt, Resources, StatusCounts, TaskId, TaskRecord, TaskStatus, Timestamp, Usage,
    UsageSummary,
};
use cloudai_core::output::OutputStream;
use cloudai_grpc::events::Watched;
use serde::Serialize;

/// Prints a line on stdout; a closed stdout (`| head`) ends the CLI
/// quietly.
macro_rules! say {
    () => { raw(b"\n") };
    ($($arg:tt)*) => { raw(format!("{}\n", format_args!($($arg)*)).as_bytes()) };
}

/// Writes bytes to stdout; a closed stdout ends the CLI quietly.
pub(crate) fn raw(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if out.write_all(bytes).and_then(|()| out.flush()).is_err() {
        std::process::exit(i32::from(exit::CLOSED_PIPE));
    }
}

fn json_line<T: Serialize>(value: &T) {
    say!(
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

/// An error: on stderr, or with `--json` as one JSON object on stdout.
pub(crate) fn error(json: bool, kind: &str, msg: &str) {
    if json {
        json_line(&serde_json::json!({ "error": { "kind": kind, "message": msg } }));
    } else {
        eprintln!("error: {msg}");
    }
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
        say!("{msg}");
    }
}

pub(crate) fn submitted(json: bool, id: &TaskId) {
    if json {
        json_line(&serde_json::json!({ "task_id": id }));
    } else {
        say!("task {id} submitted");
    }
}

/// Resubmitted tasks: old → new.
pub(crate) fn resubmitted(json: bool, again: &[(TaskId, TaskId)]) {
    if json {
        let rows: Vec<_> = again
            .iter()
            .map(|(old, new)| serde_json::json!({ "old": old, "new": new }))
            .collect();
        return json_line(&rows);
    }
    for (old, new) in again {
        say!("{old} -> {new}");
    }
    say!("{} tasks resubmitted", again.len());
}

/// CPU cores, memory in GB and GPUs.
fn res(r: &Resources) -> (f64, f64, u32) {
    (r.cpu_cores(), r.memory_gb(), r.gpus)
}

#[derive(Serialize)]
struct WorkerRow<'a> {
    id: &'a str,
    health: &'static str,
    /// `draining` or `drained`, if an operator drains it.
    drain: Option<&'static str>,
    drain_deadline_ms: Option<u64>,
    registered: bool,
    address: Option<&'a str>,
    cpu_allocated: f64,
    cpu_capacity: f64,
    memory_allocated_gb: f64,
    memory_capacity_gb: f64,
    gpus_allocated: u32,
    gpus_capacity: u32,
    /// Each GPU, with the task holding it.
    gpus: Vec<GpuRow<'a>>,
    tasks: &'a [TaskId],
    last_heartbeat_ms: Option<u64>,
}

#[derive(Serialize)]
struct GpuRow<'a> {
    index: u32,
    uuid: Option<&'a str>,
    name: Option<&'a str>,
    task: Option<&'a TaskId>,
}

/// The GPU cell of a worker: allocated/capacity, then a line per GPU in
/// use naming its task.
fn gpu_cell(w: &WorkerView) -> String {
    let mut cell = format!("{}/{}", w.allocated.gpus, w.capacity.gpus);
    for g in &w.gpus {
        if let Some(t) = &g.task {
            cell.push_str(&format!("\n{}: {t}", g.gpu.index));
        }
    }
    cell
}

pub(crate) fn workers(json: bool, ws: &[WorkerView]) {
    if json {
        let rows: Vec<WorkerRow<'_>> = ws
            .iter()
            .map(|w| {
                let (ca, ma, ga) = res(&w.allocated);
                let (cc, mc, gc) = res(&w.capacity);
                WorkerRow {
                    id: w.id.as_str(),
                    health: w.health.as_str(),
                    drain: w.drain_state(),
                    drain_deadline_ms: w.drain.and_then(|d| d.deadline).map(Timestamp::as_millis),
                    registered: w.registered,
                    address: w.address.as_deref(),
                    cpu_allocated: ca,
                    cpu_capacity: cc,
                    memory_allocated_gb: ma,
                    memory_capacity_gb: mc,
                    gpus_allocated: ga,
                    gpus_capacity: gc,
                    gpus: w
                        .gpus
                        .iter()
                        .map(|g| GpuRow {
                            index: g.gpu.index,
                            uuid: g.gpu.uuid.as_deref(),
                            name: g.gpu.name.as_deref(),
                            task: g.task.as_ref(),
                        })
                        .collect(),
                    tasks: &w.tasks,
                    last_heartbeat_ms: w.last_heartbeat.map(Timestamp::as_millis),
                }
            })
            .collect();
        return json_line(&rows);
    }
    if ws.is_empty() {
        say!("no workers registered");
        return;
    }
    let mut table = table(&[
        "",
        "WORKER",
        "STATUS",
        "ADDRESS",
        "CPU",
        "MEM GB",
        "GPU",
        "TASKS",
        "LAST HEARTBEAT",
    ]);
    for w in ws {
        let (marker, colour) = match w.health {
            Health::Active => ("●", Color::Green),
            Health::Lost => ("✗", Color::Red),
            Health::Inactive => ("○", Color::Yellow),
        };
        let (ca, ma, _) = res(&w.allocated);
        let (cc, mc, _) = res(&w.capacity);
        let status = match w.drain_state() {
            Some(drain) => format!("{}, {drain}", w.health.as_str()),
            None => w.health.as_str().to_string(),
        };
        table.add_row(vec![
            Cell::new(marker).fg(colour),
            Cell::new(&w.id),
            Cell::new(status).fg(colour),
            Cell::new(w.address.as_deref().unwrap_or("-")),
            right(format!("{ca}/{cc}")),
            right(format!("{ma}/{mc}")),
            right(gpu_cell(w)),
            right(w.tasks.len()),
            Cell::new(w.last_heartbeat.map(ago).unwrap_or_else(|| "never".into())),
        ]);
    }
    say!("{table}");
}

pub(crate) fn array_submitted(json: bool, id: &ArrayId, count: usize) {
    if json {
        json_line(&serde_json::json!({ "array_id": id, "tasks": count }));
    } else {
        say!("array {id} submitted: {count} tasks (tasks --array {id})");
    }
}

/// The tasks listed, newest first, after a line of counts by status.
pub(crate) fn tasks(json: bool, ts: &[TaskRecord], counts: &StatusCounts) {
    if json {
        return json_line(&ts);
    }
    say!(
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
    let mut table = table(&[
        "TASK", "STATUS", "WORKER", "IMAGE", "CPU", "MEM", "RUNS", "AGE", "REASON",
    ]);
    for t in ts {
        let reason = t.reason.as_deref().unwrap_or("");
        let reason = match t.status {
            TaskStatus::Pending | TaskStatus::Running if !reason.is_empty() => {
                short_reason(reason).to_string()
            }
            _ => reason.to_string(),
        };
        table.add_row(vec![
            Cell::new(&t.id),
            Cell::new(t.status).fg(status_colour(t.status)),
            Cell::new(t.worker.as_ref().map(|w| w.as_str()).unwrap_or("-")),
            Cell::new(&t.spec.image),
            right(t.spec.resources.cpu_cores()),
            right(t.spec.resources.memory_gb()),
            right(t.attempts_run()),
            Cell::new(ago(t.created_at)),
            Cell::new(reason),
        ]);
    }
    say!("{table}");
}

/// A table of plain columns, as wide as the terminal allows; colours only
/// on a terminal, and not with `NO_COLOR` set.
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(
            header
                .iter()
                .map(|h| Cell::new(h).add_attribute(Attribute::Bold)),
        );
    if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
        t.force_no_tty();
    }
    t
}

/// A cell aligned right (numbers).
fn right(value: impl ToString) -> Cell {
    Cell::new(value).set_alignment(CellAlignment::Right)
}

fn status_colour(s: TaskStatus) -> Color {
    match s {
        TaskStatus::Pending => Color::Yellow,
        TaskStatus::Running => Color::Blue,
        TaskStatus::Completed => Color::Green,
        TaskStatus::Failed => Color::Red,
        TaskStatus::Cancelled => Color::DarkGrey,
    }
}

pub(crate) fn task(json: bool, v: &TaskView) {
    if json {
        return json_line(
            &serde_json::json!({ "task": v.task, "result": v.result, "waiting": v.waiting }),
        );
    }
    let t = &v.task;
    say!("task      {}", t.id);
    say!("status    {}", t.status);
    say!("image     {}", t.spec.image);
    say!(
        "command   {}",
        shlex::try_join(t.spec.command.iter().map(String::as_str)).unwrap_or_default()
    );
    say!("resources {}", t.spec.resources);
    say!(
        "worker    {} (attempt {})",
        t.worker.as_ref().map(|w| w.as_str()).unwrap_or("-"),
        t.attempt
    );
    if !t.gpus.is_empty() {
        let gpus: Vec<String> = t.gpus.iter().map(u32::to_string).collect();
        say!("gpus      {}", gpus.join(","));
    }
    let o = &t.spec.options;
    if let Some(w) = &o.workdir {
        say!("workdir   {w}");
    }
    for m in &o.mounts {
        say!("mount     {m}");
    }
    for tmp in &o.tmpfs {
        say!("tmpfs     {tmp}");
    }
    if let Some(u) = &o.user {
        say!("user      {u}");
    }
    if let Some(s) = o.shm_size {
        say!("shm size  {}", bytes(s));
    }
    if let Some(r) = &t.reason {
        say!("reason    {r}");
    }
    if let Some(w) = &v.waiting {
        say!("waiting   {w}");
    }
    let p = &t.spec.policy;
    let limit = p
        .time_limit
        .map(|l| humantime::format_duration(l).to_string())
        .unwrap_or_else(|| "none".into());
    let requeue = match (p.requeue, p.crash_limit) {
        (false, _) => "no requeue".to_string(),
        (true, 0) => "requeue on worker loss".to_string(),
        (true, n) => format!("requeue on worker loss up to {n} times"),
    };
    say!(
        "policy    {} retries, {requeue}, time limit {limit}{}",
        p.retries,
        if p.retry_on_timeout {
            ", retry on timeout"
        } else {
            ""
        }
    );
    if !t.history.is_empty() {
        attempts(&t.history);
    }
    if let Some(r) = &v.result {
        say!(
            "exit code {}",
            r.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into())
        );
        if let Some(m) = &r.message {
            say!("message   {m}");
        }
        if let Some(u) = &r.usage {
            say!("usage     {}", usage_line(u));
        }
        match r.logs_offset {
            0 => say!("--- logs ---"),
            n => say!("--- logs (the end: {n} bytes before it left out) ---"),
        }
        raw(r.logs.as_bytes());
        if !r.logs.ends_with('\n') && !r.logs.is_empty() {
            say!();
        }
    }
}

/// Each ended attempt of a task: where it ran, how it ended.
/// Bytes as people read them (`210.0 MiB`).
fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().to_string()
}

/// Milliseconds as seconds (`1.25s`).
fn secs(ms: u64) -> String {
    format!("{:.2}s", ms as f64 / 1000.0)
}

/// What a run used, on one line.
fn usage_line(u: &Usage) -> String {
    let pull = u
        .pull_ms
        .map(|p| format!(", image pull {}", secs(p)))
        .unwrap_or_default();
    format!(
        "wall {}, cpu {} user + {} system, peak memory {}{pull}",
        secs(u.wall_ms),
        secs(u.user_cpu_ms),
        secs(u.system_cpu_ms),
        bytes(u.peak_memory_bytes)
    )
}

/// `tasks --array A --summary`.
pub(crate) fn usage_summary(json: bool, s: &UsageSummary) {
    if json {
        return json_line(s);
    }
    say!("{} tasks, {} with a measured attempt", s.tasks, s.measured);
    say!("cpu total    {}", secs(s.cpu_ms));
    say!(
        "peak memory  max {}, p95 {}",
        bytes(s.peak_memory_max),
        bytes(s.peak_memory_p95)
    );
    say!(
        "wall time    p50 {}, p95 {}",
        secs(s.wall_ms_p50),
        secs(s.wall_ms_p95)
    );
}

fn attempts(history: &[Attempt]) {
    let mut table = table(&[
        "ATTEMPT", "WORKER", "ENDED", "CAUSE", "EXIT", "CPU", "PEAK MEM", "MESSAGE",
    ]);
    for a in history {
        let exit = match (a.exit_code, a.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("signal {s}"),
            (None, None) => "-".into(),
        };
        table.add_row(vec![
            right(a.attempt),
            Cell::new(&a.worker),
            Cell::new(ago(a.ended_at)),
            Cell::new(a.cause),
            right(exit),
            right(a.usage.map_or("-".into(), |u| secs(u.cpu_ms()))),
            right(a.usage.map_or("-".into(), |u| bytes(u.peak_memory_bytes))),
            Cell::new(a.message.as_deref().unwrap_or("")),
        ]);
    }
    say!("--- attempts (logs --attempt N prints one's output) ---");
    say!("{table}");
}

/// What is kept of one ended attempt's output.
pub(crate) fn attempt_logs(json: bool, a: &Attempt) {
    if json {
        return json_line(&a);
    }
    if a.logs_offset > 0 {
        eprintln!(
            "[cloudai: the end of attempt {}'s output: {} bytes before it left out]",
            a.attempt, a.logs_offset
        );
    }
    raw(a.logs.as_bytes());
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
        say!("nothing to cancel");
    }
    for (id, o) in done {
        match o {
            CancelOutcome::Dequeued => say!("task {id} cancelled (it had not started)"),
            CancelOutcome::Stopped { worker } => {
                say!("task {id} cancelled; stopped on {worker}")
            }
            CancelOutcome::StopPending { worker, error } => {
                say!("task {id} cancelled; {worker} has not confirmed the stop ({error}); it goes out in the background, or when the worker is back")
            }
        }
    }
}

pub(crate) fn reconciled(json: bool, r: &Reconciliation) {
    if json {
        let fixes: Vec<_> = r
            .corrections
            .iter()
            .map(|c| serde_json::json!({ "worker": c.worker, "cpu_before": res(&c.before).0, "cpu_after": res(&c.after).0, "added": c.added, "removed": c.removed }))
            .collect();
        return json_line(&serde_json::json!({
            "corrections": fixes,
            "unknown_workers": r.unknown_workers.iter().map(|(t, w)| format!("{t}@{w}")).collect::<Vec<_>>(),
            "overcommitted": r.overcommitted,
        }));
    }
    if r.corrections.is_empty() && r.unknown_workers.is_empty() {
        say!("allocations match running tasks; nothing to fix");
    }
    for c in &r.corrections {
        let (b, a) = (res(&c.before), res(&c.after));
        say!(
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
    for (t, w) in &r.unknown_workers {
        say!("running task {t} names an unknown worker: {w}");
    }
    for w in &r.overcommitted {
        say!("overcommitted: {w} runs more than its capacity");
    }
}

/// One event of the master's stream: a line for people (the opening
/// bookmark as a note on stderr), or one JSON object per line with its
/// cursor, for scripts that resume.
/// The watch resumed on another master (a takeover), whose events are
/// another log: it goes on from now, and what happened in between is
/// for a listing to show.
pub(crate) fn resync(json: bool, why: &str) {
    if json {
        json_line(&serde_json::json!({ "kind": "resync", "reason": why }));
    } else {
        progress(&format!("resync: {why}; watching from now"));
    }
}

pub(crate) fn event(json: bool, e: &Watched) {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at.as_millis());
    let at = humantime::format_rfc3339_millis(at).to_string();
    let cursor = e.cursor.to_string();
    let Some(kind) = &e.kind else {
        if json {
            json_line(&serde_json::json!({ "kind": "bookmark", "cursor": cursor, "at": at }));
        } else {
            progress(&format!(
                "watching from cursor {cursor} (resume with --cursor {cursor})"
            ));
        }
        return;
    };
    let what = match kind {
        MasterEvent::Submitted { id } => format!("task {id} submitted"),
        MasterEvent::Task {
            id,
            from,
            to,
            worker,
            attempt,
        } => {
            let on = worker
                .as_ref()
                .map(|w| format!(" on {w}"))
                .unwrap_or_default();
            format!("task {id} {from} -> {to}{on} (attempt {attempt})")
        }
        MasterEvent::Worker { id, health } => format!("worker {id} {}", health.as_str()),
        MasterEvent::Drain { id, draining } => {
            format!(
                "worker {id} {}",
                if *draining { "drained" } else { "undrained" }
            )
        }
        MasterEvent::Again {
            id,
            attempt,
            cause,
            not_before,
        } => match not_before {
            Some(at) => format!(
                "task {id} attempt {attempt} ended {cause}; retried in {}s",
                at.saturating_since(now()).as_secs()
            ),
            None => format!("task {id} attempt {attempt} ended {cause}; requeued"),
        },
    };
    if json {
        let mut object = cloudai_grpc::events::to_json(kind);
        object["cursor"] = cursor.into();
        object["at"] = at.into();
        json_line(&object);
    } else {
        say!("{at}  {cursor}  {what}");
    }
}
