//! What the CLI prints: tables for people, JSON for scripts (`--json`).
//! This is the only place in the project that prints for people.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use comfy_table::{Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};

use crate::exit;

use cloudai_core::ledger::Reconciliation;
use cloudai_core::liveness::Health;
use cloudai_core::master::{
    short_reason, CancelOutcome, MasterEvent, TaskOutput, TaskView, WorkerView,
};
use cloudai_core::model::{
    ArrayId, ArrayIndices, Attempt, Labels, Resources, StatusCounts, TaskId, TaskRecord,
    TaskStatus, Timestamp, Usage, UsageSummary, WorkerId,
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
    labels: &'a Labels,
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
                    labels: &w.labels,
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
        "LABELS",
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
            Cell::new(match labels_text(&w.labels) {
                l if l.is_empty() => "-".to_string(),
                l => clip(&l, LABELS_WIDTH),
            }),
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

/// The tasks listed, newest first, after a line of counts by status: each
/// task on a row of its own (`tasks --array A`, `--all`, `--expand`; with
/// `--json`, the records as they are).
pub(crate) fn tasks(
    json: bool,
    ts: &[TaskRecord],
    counts: &StatusCounts,
    array: Option<(&ArrayId, StatusCounts)>,
) {
    if json {
        return json_line(&ts);
    }
    let of_array = array
        .map(|(id, c)| format!("; array {id}: {}", array_counts(&c)))
        .unwrap_or_default();
    say!("{}{of_array}; showing {}", counts_line(counts), ts.len());
    if ts.is_empty() {
        return;
    }
    let now = now();
    let mut table = table(&TASK_COLUMNS);
    for t in ts {
        table.add_row(task_cells(t, now));
    }
    say!("{table}");
}

/// A row of `tasks` for people: one task, or the members of one array
/// that the listing holds, as one row with the array's counts by status
/// (as `squeue` shows an array's pending members as `123_[5-100]`).
#[derive(Debug)]
pub(crate) enum Listed {
    /// A task by itself.
    Task(Box<TaskRecord>),
    /// An array's members in the listing (at least one).
    Array {
        /// The array.
        id: ArrayId,
        /// Its members the listing holds, newest first.
        members: Vec<TaskRecord>,
        /// The whole array's tasks by status (the store's counts).
        counts: StatusCounts,
    },
}

impl Listed {
    /// The status it sorts by: the task's, or the earliest in the
    /// lifecycle among the members listed.
    pub(crate) fn status(&self) -> TaskStatus {
        match self {
            Listed::Task(t) => t.status,
            Listed::Array { members, .. } => members
                .iter()
                .map(|t| t.status)
                .min()
                .unwrap_or(TaskStatus::Pending),
        }
    }

    /// The worker it sorts by: the task's, or the one worker of the
    /// members listed (none if they ran on several).
    pub(crate) fn worker(&self) -> Option<&WorkerId> {
        match self {
            Listed::Task(t) => t.worker.as_ref(),
            Listed::Array { members, .. } => one(members.iter().map(|t| t.worker.as_ref()))?,
        }
    }

    /// How many tasks the row stands for in the listing.
    pub(crate) fn len(&self) -> usize {
        match self {
            Listed::Task(_) => 1,
            Listed::Array { members, .. } => members.len(),
        }
    }
}

/// The one value every item has, if they all have the same.
fn one<T: PartialEq>(mut items: impl Iterator<Item = T>) -> Option<T> {
    let first = items.next()?;
    items.all(|i| i == first).then_some(first)
}

/// `tasks` for people with each array's members in the listing on one
/// row: `ARRAY_[indices]`, its counts by status, the name its members
/// share.
pub(crate) fn tasks_collapsed(rows: &[Listed], counts: &StatusCounts) {
    let tasks: usize = rows.iter().map(Listed::len).sum();
    let arrays: Vec<&ArrayId> = rows
        .iter()
        .filter_map(|r| match r {
            Listed::Array { id, .. } => Some(id),
            Listed::Task(_) => None,
        })
        .collect();
    let showing = match arrays.as_slice() {
        [] => format!("showing {tasks}"),
        [a] => format!(
            "showing {tasks} in {} rows (an array's in one: tasks --array {a} lists them)",
            rows.len()
        ),
        _ => format!(
            "showing {tasks} in {} rows (an array's in one: tasks --array ID, or --expand, lists them)",
            rows.len()
        ),
    };
    say!("{}; {showing}", counts_line(counts));
    if rows.is_empty() {
        return;
    }
    let now = now();
    let mut table = table(&TASK_COLUMNS);
    for r in rows {
        table.add_row(match r {
            Listed::Task(t) => task_cells(t, now),
            Listed::Array {
                id,
                members,
                counts,
            } => array_cells(id, members, counts, now),
        });
    }
    say!("{table}");
}

/// The line of counts above a listing.
fn counts_line(counts: &StatusCounts) -> String {
    format!(
        "{} tasks: {} pending, {} running, {} completed, {} failed, {} cancelled",
        counts.total(),
        counts.pending,
        counts.running,
        counts.completed,
        counts.failed,
        counts.cancelled,
    )
}

/// An array's counts: `40 tasks: 12 running, 25 completed, 3
/// failed` (the statuses with none left out).
fn array_counts(c: &StatusCounts) -> String {
    let each: Vec<String> = TaskStatus::ALL
        .iter()
        .filter(|s| c.get(**s) > 0)
        .map(|s| format!("{} {s}", c.get(*s)))
        .collect();
    let tasks = if c.total() == 1 { "task" } else { "tasks" };
    if each.is_empty() {
        format!("{} {tasks}", c.total())
    } else {
        format!("{} {tasks}: {}", c.total(), each.join(", "))
    }
}

/// The columns of a listing of tasks.
const TASK_COLUMNS: [&str; 13] = [
    "TASK", "NAME", "INDEX", "STATUS", "WORKER", "CPU", "MEM", "GPU", "START", "END", "RUN",
    "EXIT", "REASON",
];

/// Longest name shown in a listing, in characters.
const NAME_WIDTH: usize = 24;
/// Longest labels shown in `workers`, in characters.
const LABELS_WIDTH: usize = 40;
/// Longest reason shown in a listing, in characters (`show` has it whole).
const REASON_WIDTH: usize = 48;

/// `s` cut to `max` characters, an ellipsis marking the cut.
fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// The current or last run of a task, as a listing shows it.
#[derive(Debug, Default)]
struct Run {
    start: Option<Timestamp>,
    end: Option<Timestamp>,
    exit: Option<String>,
}

impl Run {
    /// A running task's run (from its assignment), or a final task's last
    /// attempt (or, if none ran, its end alone); nothing for a pending one.
    fn of(t: &TaskRecord) -> Run {
        match t.status {
            TaskStatus::Pending => Run::default(),
            TaskStatus::Running => Run {
                start: t.assigned_at,
                ..Run::default()
            },
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled => {
                match t.history.last() {
                    Some(a) => Run {
                        start: a.started_at.or(t.assigned_at),
                        end: Some(a.ended_at)
                            .filter(|e| *e != Timestamp::ZERO)
                            .or(t.finished_at),
                        exit: exit_word(a.exit_code, a.signal),
                    },
                    None => Run {
                        end: t.finished_at,
                        ..Run::default()
                    },
                }
            }
        }
    }

    /// How long it ran: to its end, or until now while it runs.
    fn took(&self, now: Timestamp) -> Option<Duration> {
        let start = self.start?;
        Some(self.end.unwrap_or(now).saturating_since(start))
    }
}

/// An exit as a listing shows it: the code (`0`, `1`), or the signal
/// (`SIGKILL`); `None` if neither is known.
fn exit_word(code: Option<i32>, signal: Option<i32>) -> Option<String> {
    match (code, signal) {
        (Some(c), _) => Some(c.to_string()),
        (None, Some(s)) => Some(signal_name(s)),
        (None, None) => None,
    }
}

/// A signal's name as Linux numbers them (`SIGKILL`), or `signal N`.
fn signal_name(n: i32) -> String {
    let name = match n {
        1 => "HUP",
        2 => "INT",
        3 => "QUIT",
        4 => "ILL",
        5 => "TRAP",
        6 => "ABRT",
        7 => "BUS",
        8 => "FPE",
        9 => "KILL",
        10 => "USR1",
        11 => "SEGV",
        12 => "USR2",
        13 => "PIPE",
        14 => "ALRM",
        15 => "TERM",
        24 => "XCPU",
        25 => "XFSZ",
        _ => return format!("signal {n}"),
    };
    format!("SIG{name}")
}

/// A time of day in UTC (`12:03:04`), with the date (`05-01 12:03`) if
/// not today's.
fn clock(t: Timestamp, now: Timestamp) -> String {
    let rfc = |t: Timestamp| {
        // Past year 9999 RFC 3339 has no form; no task lives that long.
        let ms = t.as_millis().min(253_402_300_799_000);
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    };
    let (at, today) = (rfc(t), rfc(now));
    // `2024-05-01T12:03:04Z`
    match (
        at.get(..10) == today.get(..10),
        at.get(5..10),
        at.get(11..19),
    ) {
        (true, _, Some(time)) => time.to_string(),
        (false, Some(date), Some(time)) => format!("{date} {}", &time[..5]),
        _ => at,
    }
}

/// A run time: `0.4s`, `42s`, `3m07s`, `2h05m`, `3d04h`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=9 => format!("{:.1}s", d.as_secs_f64()),
        10..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// Why a task is where it is, for a listing: the short word while it
/// waits (`Resources`, `Dependency`), the reason it failed or was
/// cancelled (cut to [`REASON_WIDTH`]; `show` has it whole).
fn reason_cell(t: &TaskRecord) -> String {
    let reason = t.reason.as_deref().unwrap_or("");
    match t.status {
        TaskStatus::Pending | TaskStatus::Running if !reason.is_empty() => {
            short_reason(reason).to_string()
        }
        TaskStatus::Failed | TaskStatus::Cancelled => {
            let said = Some(reason)
                .filter(|r| !r.is_empty())
                .or_else(|| t.history.last().and_then(|a| a.message.as_deref()))
                .unwrap_or("");
            clip(said, REASON_WIDTH)
        }
        _ => String::new(),
    }
}

/// One task's row.
fn task_cells(t: &TaskRecord, now: Timestamp) -> Vec<Cell> {
    let run = Run::of(t);
    let r = &t.spec.resources;
    vec![
        Cell::new(&t.id),
        Cell::new(clip(t.spec.name.as_deref().unwrap_or("-"), NAME_WIDTH)),
        Cell::new(or_dash(t.array.as_ref().map(|a| format!("[{}]", a.index)))),
        Cell::new(t.status).fg(status_colour(t.status)),
        Cell::new(t.worker.as_ref().map(|w| w.as_str()).unwrap_or("-")),
        right(r.cpu_cores()),
        right(r.memory_gb()),
        right(r.gpus),
        Cell::new(or_dash(run.start.map(|s| clock(s, now)))),
        Cell::new(or_dash(run.end.map(|e| clock(e, now)))),
        right(or_dash(run.took(now).map(span))),
        right(or_dash(run.exit)),
        Cell::new(reason_cell(t)),
    ]
}

/// The value most of `items` have (the first such in order of value).
fn commonest<'a>(items: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut each: BTreeMap<&str, usize> = BTreeMap::new();
    for i in items {
        *each.entry(i).or_default() += 1;
    }
    let most = each.values().copied().max()?;
    each.into_iter().find(|(_, n)| *n == most).map(|(i, _)| i)
}

/// The indices of `members`, as Slurm writes an array's (`1-3,7`).
fn indices(members: &[TaskRecord]) -> String {
    let mut each: Vec<u32> = members
        .iter()
        .filter_map(|t| t.array.as_ref().map(|a| a.index))
        .collect();
    each.sort_unstable();
    each.dedup();
    let list: Vec<String> = each.iter().map(u32::to_string).collect();
    match list.join(",").parse::<ArrayIndices>() {
        Ok(i) => i.to_string(),
        Err(_) => list.join(","),
    }
}

/// An array's row: `ARRAY_[indices]` of the members listed, the name they
/// share, the array's counts by status; the worker and the request they
/// share; the first start and, once none listed is pending or running,
/// the last end; the commonest waiting word among them, or else the
/// commonest reason of those that failed.
fn array_cells(
    id: &ArrayId,
    members: &[TaskRecord],
    counts: &StatusCounts,
    now: Timestamp,
) -> Vec<Cell> {
    let name = one(members.iter().map(|t| t.spec.name.as_deref())).flatten();
    let workers: std::collections::BTreeSet<&WorkerId> =
        members.iter().filter_map(|t| t.worker.as_ref()).collect();
    let worker = match workers.len() {
        0 => "-".to_string(),
        1 => workers
            .iter()
            .next()
            .map(|w| w.to_string())
            .unwrap_or_default(),
        n => format!("{n} workers"),
    };
    let request = one(members.iter().map(|t| res(&t.spec.resources)));
    let runs: Vec<Run> = members.iter().map(Run::of).collect();
    let start = runs.iter().filter_map(|r| r.start).min();
    let live = members.iter().any(|t| !t.status.is_terminal());
    let end = runs
        .iter()
        .filter_map(|r| r.end)
        .max()
        .filter(|_| !live && start.is_some());
    let took = start.map(|s| end.unwrap_or(now).saturating_since(s));
    let word = commonest(
        members
            .iter()
            .filter(|t| t.status == TaskStatus::Pending)
            .filter_map(|t| t.reason.as_deref().map(short_reason)),
    )
    .map(str::to_string)
    .or_else(|| {
        let failed = members
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .filter_map(|t| t.reason.as_deref());
        commonest(failed).map(|r| clip(r, REASON_WIDTH))
    })
    .unwrap_or_default();
    let (cpu, mem, gpu) = match request {
        Some((c, m, g)) => (c.to_string(), m.to_string(), g.to_string()),
        None => ("-".into(), "-".into(), "-".into()),
    };
    vec![
        Cell::new(format!("{id}_[{}]", indices(members))).add_attribute(Attribute::Bold),
        Cell::new(clip(name.unwrap_or("-"), NAME_WIDTH)),
        Cell::new(""),
        Cell::new(array_counts(counts)),
        Cell::new(worker),
        right(cpu),
        right(mem),
        right(gpu),
        Cell::new(or_dash(start.map(|s| clock(s, now)))),
        Cell::new(or_dash(end.map(|e| clock(e, now)))),
        right(or_dash(took.map(span))),
        right(""),
        Cell::new(word),
    ]
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

/// One line of `show`: the field's name, then its value.
macro_rules! field {
    ($name:expr, $($arg:tt)*) => { say!("{:<11}{}", $name, format_args!($($arg)*)) };
}

/// Labels as `k=v,k=v`.
fn labels_text(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Dependencies `show` lists one by one; past them, how many more.
const SHOWN_DEPENDENCIES: usize = 20;

pub(crate) fn task(json: bool, v: &TaskView) {
    if json {
        return json_line(
            &serde_json::json!({ "task": v.task, "result": v.result, "waiting": v.waiting }),
        );
    }
    let t = &v.task;
    let now = now();
    field!("task", "{}", t.id);
    field!("name", "{}", t.spec.name.as_deref().unwrap_or("-"));
    if let Some(a) = &t.array {
        let limit = a
            .limit
            .map(|n| format!(", at most {n} of its tasks at once"))
            .unwrap_or_default();
        field!("array", "{}, index {}{limit}", a.id, a.index);
    }
    field!("status", "{}", t.status);
    if !t.spec.labels.is_empty() {
        field!("labels", "{}", labels_text(&t.spec.labels));
    }
    field!("priority", "{}", t.spec.priority);
    field!("image", "{}", t.spec.image);
    field!(
        "command",
        "{}",
        shlex::try_join(t.spec.command.iter().map(String::as_str)).unwrap_or_default()
    );
    field!("resources", "{}", t.spec.resources);
    for c in &t.spec.constraints {
        field!("constraint", "{c}");
    }
    for d in t.spec.after.iter().take(SHOWN_DEPENDENCIES) {
        field!("after", "{d}");
    }
    if t.spec.after.len() > SHOWN_DEPENDENCIES {
        field!(
            "after",
            "... and {} more",
            t.spec.after.len() - SHOWN_DEPENDENCIES
        );
    }
    field!(
        "worker",
        "{} (attempt {})",
        t.worker.as_ref().map(|w| w.as_str()).unwrap_or("-"),
        t.attempt
    );
    field!(
        "submitted",
        "{} ({})",
        clock(t.created_at, now),
        ago(t.created_at)
    );
    let run = match &v.result {
        // The result's run is the last attempt's, as its worker saw it.
        Some(r) => Run {
            start: r.started_at,
            end: Some(r.finished_at),
            exit: exit_word(r.exit_code, r.signal),
        },
        None => Run::of(t),
    };
    if let Some(start) = run.start {
        let end = run
            .end
            .map(|e| clock(e, now))
            .unwrap_or_else(|| "now".into());
        let took = run.took(now).map(span).unwrap_or_default();
        field!("run", "{} to {end} ({took})", clock(start, now));
    } else if let Some(end) = t.finished_at {
        field!("ended", "{} without running", clock(end, now));
    }
    if !t.gpus.is_empty() {
        let gpus: Vec<String> = t.gpus.iter().map(u32::to_string).collect();
        field!("gpus", "{}", gpus.join(","));
    }
    let o = &t.spec.options;
    if let Some(w) = &o.workdir {
        field!("workdir", "{w}");
    }
    for m in &o.mounts {
        field!("mount", "{m}");
    }
    for tmp in &o.tmpfs {
        field!("tmpfs", "{tmp}");
    }
    if let Some(u) = &o.user {
        field!("user", "{u}");
    }
    if let Some(s) = o.shm_size {
        field!("shm size", "{}", bytes(s));
    }
    if let Some(r) = &t.reason {
        field!("reason", "{r}");
    }
    if let Some(w) = &v.waiting {
        field!("waiting", "{w}");
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
    field!(
        "policy",
        "{} retries, {requeue}, time limit {limit}{}",
        p.retries,
        if p.retry_on_timeout {
            ", retry on timeout"
        } else {
            ""
        }
    );
    if !t.history.is_empty() {
        attempts(
            &t.history,
            t.assigned_at.filter(|_| t.status.is_terminal()),
            now,
        );
    }
    if let Some(r) = &v.result {
        field!("exit code", "{}", or_dash(exit_word(r.exit_code, r.signal)));
        if let Some(m) = &r.message {
            field!("message", "{m}");
        }
        if let Some(u) = &r.usage {
            field!("usage", "{}", usage_line(u));
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

/// Each ended attempt of a task: where it ran, when, how it ended. The
/// last one's start, if its worker never said, is its assignment
/// (`assigned`).
fn attempts(history: &[Attempt], assigned: Option<Timestamp>, now: Timestamp) {
    let mut table = table(&[
        "ATTEMPT", "WORKER", "START", "END", "RUN", "CAUSE", "EXIT", "CPU", "PEAK MEM", "MESSAGE",
    ]);
    for (i, a) in history.iter().enumerate() {
        let last = i + 1 == history.len();
        let start = a.started_at.or(assigned.filter(|_| last));
        let took = start.map(|s| a.ended_at.saturating_since(s));
        table.add_row(vec![
            right(a.attempt),
            Cell::new(&a.worker),
            Cell::new(or_dash(start.map(|s| clock(s, now)))),
            Cell::new(clock(a.ended_at, now)),
            right(or_dash(took.map(span))),
            Cell::new(a.cause),
            right(or_dash(exit_word(a.exit_code, a.signal))),
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
