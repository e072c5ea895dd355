//! The supervisor of one supervised run: a small process (the worker binary
//! in its supervisor mode, in the manner of containerd-shim or Nomad's
//! executor) that owns the task's process group, so the task's life does
//! not hang on the worker's.
//!
//! - It leaves the worker's session (`setsid`), so neither a terminal's
//!   Ctrl-C nor the worker's death reaches it, and starts the task as the
//!   leader of a new process group, its pid and start time to `pid.json`.
//!   It reads the task's stdout and stderr and appends each read to the
//!   run's `output` file as a frame naming its stream (see `frames`).
//! - Workers attach by connecting to `supervisor.sock` and send one
//!   command per line: `stop <grace ms>` (SIGTERM to the group, SIGKILL
//!   after the grace), `kill`, or `lease <ms>` (the worker stands for the
//!   run for that much longer).
//! - The run holds a lease from its worker, renewed with every heartbeat
//!   the master answers. Once it runs out (the worker died, or lost its
//!   master) the supervisor stops the task with its grace: so no task
//!   runs on once the master may declare its worker lost and place it
//!   elsewhere (see `crate::fence`).
//! - At the run's time limit, counted from the task's start, the
//!   supervisor stops it with its grace, whether or not a worker is
//!   attached, and notes the timeout.
//! - When the leader exits, the rest of its group is killed, the output
//!   read to its end (for at most [`DRAIN_TIMEOUT`]), the exit recorded in
//!   `exit.json`, and the supervisor exits; attached workers see their
//!   connection close and read the record.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use super::frames::write_frame;
use super::record::{read_json, write_json, Ended, RunDir, RunSpec, StartError, Started};
use super::{signal_group, task_command, to_exit_status, DRAIN_TIMEOUT};
use crate::host::process_start_ticks;
use crate::output::OutputStream;
use crate::sync::lock;

/// The longest the supervisor goes without looking at its time limit and
/// lease (the task's end wakes it at once).
const CHECK: Duration = Duration::from_millis(250);

/// Runs the supervisor for the run directory `dir` until its task ended.
/// Failures go to the run's `supervisor.log`.
pub fn run(dir: &Path) -> ExitCode {
    // Its own session: terminal signals and the worker's end pass it by.
    let _ = nix::unistd::setsid();
    let dir = RunDir(dir.to_path_buf());
    match supervise(&dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.log())
                .and_then(|mut f| writeln!(f, "supervisor failed: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// How long the supervisor may wait for the task's end before it looks at
/// the time limit and the lease again: until the nearer of the two, and
/// at most [`CHECK`] (a renewal may shorten the lease).
fn next_check(spec: &RunSpec, started: Instant, lease_until: Instant, now: Instant) -> Duration {
    let limit_at = spec.time_limit.map(|l| later(started, l));
    [Some(lease_until), limit_at]
        .into_iter()
        .flatten()
        .map(|at| at.saturating_duration_since(now))
        .fold(CHECK, Duration::min)
}

/// Tells the runtime that started this supervisor that its start records
/// are written (one line on the stdout it piped); a runtime that is gone
/// does not matter.
fn say_started() {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"started\n").and_then(|()| out.flush());
}

/// Why the supervisor stops the task on its own.
fn stop_note(
    spec: &RunSpec,
    started: Instant,
    lease_until: Instant,
    now: Instant,
) -> Option<String> {
    if spec
        .time_limit
        .is_some_and(|limit| now.duration_since(started) >= limit)
    {
        let limit = spec.time_limit.unwrap_or_default();
        return Some(format!(
            "timeout: the supervisor stopped the task at its time limit of {limit:?}"
        ));
    }
    (now >= lease_until).then(|| {
        "no lease renewal from its worker in time; the supervisor stopped the task".to_string()
    })
}

fn supervise(dir: &RunDir) -> io::Result<()> {
    let spec: RunSpec = read_json(&dir.spec())?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "run.json is missing"))?;
    // Bound before the task starts, so a worker can attach as soon as it
    // sees `pid.json`.
    let (_handle, socket) = dir.socket_via()?;
    let listener = UnixListener::bind(socket)?;
    let (child, drained) = match spawn(&spec, dir) {
        Ok(started) => started,
        Err(e) => {
            let recorded = write_json(&dir.error(), &e);
            say_started();
            return recorded;
        }
    };
    let started = Instant::now();
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // Read before the child is reaped, so it is there even if it ended.
    let start_ticks = process_start_ticks(pid).unwrap_or_default();
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok());
    write_json(
        &dir.started(),
        &Started {
            pid,
            start_ticks,
            started_ms,
        },
    )?;

    // The runtime waits for this line (on the pipe it gave as stdout)
    // instead of looking for `pid.json` again and again.
    say_started();

    let ended = Arc::new(AtomicBool::new(false));
    let lease = Arc::new(Mutex::new(later(started, spec.orphan_timeout)));
    {
        let (ended, lease) = (ended.clone(), lease.clone());
        std::thread::spawn(move || accept(listener, pid, ended, lease));
    }
    // The task's end wakes the supervisor at once; the time limit and the
    // lease are looked at in between, at the latest every CHECK.
    let (exit_tx, exit_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = exit_tx.send(child.wait());
    });
    let mut note = None;
    let status = loop {
        let now = Instant::now();
        if note.is_none() {
            note = stop_note(&spec, started, *lock(&lease), now);
            if note.is_some() {
                stop_group(pid, spec.grace, &ended);
            }
        }
        let wait = next_check(&spec, started, *lock(&lease), now);
        match exit_rx.recv_timeout(wait) {
            Ok(status) => break status?,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("lost the thread waiting for the task"));
            }
        }
    };
    ended.store(true, Ordering::SeqCst);
    // What the leader left behind in its group goes with it.
    let _ = signal_group(pid, Signal::SIGKILL);
    // The output is read to its end before the exit is recorded, so a
    // reader that sees the record has seen all of it (a process that left
    // the group may hold the pipes open: not for ever).
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if drained.recv_timeout(left).is_err() {
            break;
        }
    }
    let recorded = write_json(
        &dir.ended(),
        &Ended {
            status: to_exit_status(status),
            note,
        },
    );
    // Listening until the end is recorded: a run whose supervisor answers
    // is not over (see `list`).
    let _ = std::fs::remove_file(dir.socket());
    recorded
}

/// Starts the task as the leader of a new process group, with a thread per
/// output pipe appending what it reads to the run's `output` file; each
/// thread sends on the channel returned when its pipe ends.
fn spawn(spec: &RunSpec, dir: &RunDir) -> Result<(Child, mpsc::Receiver<()>), StartError> {
    let backend = |e: io::Error| StartError {
        invalid: false,
        message: format!("cannot open the output file: {e}"),
    };
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.output())
        .map_err(backend)?;
    let output = Arc::new(Mutex::new(output));
    let Some((program, args)) = spec.command.split_first() else {
        return Err(StartError {
            invalid: true,
            message: "empty command".into(),
        });
    };
    let mut child = task_command(program, args, &spec.env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StartError {
            invalid: matches!(
                e.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::InvalidInput
            ),
            message: format!("cannot run {program:?}: {e}"),
        })?;
    let (done, drained) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        copy_frames(out, OutputStream::Stdout, output.clone(), done.clone());
    }
    if let Some(err) = child.stderr.take() {
        copy_frames(err, OutputStream::Stderr, output, done);
    }
    Ok((child, drained))
}

/// Appends what `pipe` delivers to `output` as frames of `stream` until
/// the pipe ends, then says so on `done`.
#[allow(
    clippy::print_stderr,
    reason = "the supervisor's stderr is its run's supervisor.log"
)]
fn copy_frames(
    mut pipe: impl Read + Send + 'static,
    stream: OutputStream,
    output: Arc<Mutex<File>>,
    done: mpsc::Sender<()>,
) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut failed = false;
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // On a failed write (a full disk) the pipe is still
                    // drained, so the task does not block or die of it.
                    if failed {
                        continue;
                    }
                    if let Err(e) = write_frame(&mut *lock(&output), stream, &buf[..n]) {
                        eprintln!("writing the task's output failed; dropping the rest: {e}");
                        failed = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("reading the task's output failed: {e}");
                    break;
                }
            }
        }
        let _ = done.send(());
    });
}

/// `d` after `at`, or as late as an `Instant` goes (a lease of many
/// years is as good as none).
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

/// Takes attachments until the process exits.
fn accept(listener: UnixListener, pid: i32, ended: Arc<AtomicBool>, lease: Arc<Mutex<Instant>>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (ended, lease) = (ended.clone(), lease.clone());
        std::thread::spawn(move || serve(stream, pid, &ended, &lease));
    }
}

/// SIGTERM to the group now, SIGKILL after `grace` unless it ended.
fn stop_group(pid: i32, grace: Duration, ended: &Arc<AtomicBool>) {
    let _ = signal_group(pid, Signal::SIGTERM);
    let ended = ended.clone();
    std::thread::spawn(move || {
        std::thread::sleep(grace);
        if !ended.load(Ordering::SeqCst) {
            let _ = signal_group(pid, Signal::SIGKILL);
        }
    });
}

/// Obeys one attached worker's commands until it goes away.
fn serve(stream: UnixStream, pid: i32, ended: &Arc<AtomicBool>, lease: &Mutex<Instant>) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("stop"), Some(Ok(grace_ms))) => {
                stop_group(pid, Duration::from_millis(grace_ms), ended);
            }
            (Some("lease"), Some(Ok(ms))) => {
                *lock(lease) = later(Instant::now(), Duration::from_millis(ms));
            }
            (Some("kill"), None) => {
                let _ = signal_group(pid, Signal::SIGKILL);
            }
            _ => {}
        }
    }
}
