//! One supervised run, inside the supervisor process of its state
//! directory (see [`super::supervisor`]): a few threads that own the
//! task's process group, so the task's life does not hang on the worker's.
//!
//! - The task starts as the leader of a new process group, its pid and
//!   start time to `pid.json`. Its stdout and stderr are appended to the
//!   run's `output` file, each read a frame naming its stream (see
//!   `frames`).
//! - Workers attach by connecting to the run's `supervisor.sock` and send
//!   one command per line: `stop <grace ms>` (SIGTERM to the group,
//!   SIGKILL after the grace), `kill`, or `lease <ms>` (the worker stands
//!   for the run for that much longer).
//! - The run holds a lease from its worker, renewed with every heartbeat
//!   the master answers. Once it runs out (the worker died, or lost its
//!   master) the task is stopped with its grace: so no task runs on once
//!   the master may declare its worker lost and place it elsewhere (see
//!   `crate::fence`).
//! - At the run's time limit, counted from the task's start, the task is
//!   stopped with its grace, whether or not a worker is attached, and the
//!   timeout noted.
//! - When the leader exits, the rest of its group is killed, the output
//!   read to its end (for at most [`DRAIN_TIMEOUT`]), the exit recorded in
//!   `exit.json`, and then the attached workers' connections are closed
//!   and the socket removed: a worker that sees its connection close reads
//!   the record. Every thread of the run ends with it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, ChildStderr, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::frames::write_frame;
use super::record::{read_json, write_json, Ended, RunDir, RunSpec, StartError, Started};
use super::{signal_group, task_command, to_exit_status, DRAIN_TIMEOUT};
use crate::host::process_start_ticks;
use crate::output::OutputStream;
use crate::sync::lock;

/// The longest a run goes without looking at its time limit and lease
/// (the task's end wakes it at once).
const CHECK: Duration = Duration::from_millis(250);

/// Stack of each of a run's threads: they copy through heap buffers and
/// call nothing deep, and a run starts several.
const STACK: usize = 256 * 1024;

/// Starts a thread of a run.
pub(super) fn thread(f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .map(drop)
}

/// Appends a line to the run's `supervisor.log`, its diagnostics.
pub(super) fn note(dir: &RunDir, what: &str) {
    let _ = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())
        .and_then(|mut f| writeln!(f, "{what}"));
}

/// What the run's threads share.
struct Shared {
    pid: i32,
    /// The leader has exited (and was reaped).
    ended: AtomicBool,
    lease: Mutex<Instant>,
    /// The attached workers' connections; `None` once the end is recorded.
    attached: Mutex<Option<Vec<UnixStream>>>,
}

/// Supervises the run in `dir` until its task ended and its end is
/// recorded. `said_started` is called once its start records (`pid.json`,
/// or `error` if it could not start) are written.
pub(super) fn supervise(dir: &RunDir, said_started: impl FnOnce()) -> io::Result<()> {
    let spec: RunSpec = read_json(&dir.spec())?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "run.json is missing"))?;
    // Bound before the task starts, so a worker can attach as soon as it
    // sees `pid.json`.
    let (_handle, socket) = dir.socket_via()?;
    let listener = UnixListener::bind(&socket)?;
    let (child, drained, give_up) = match spawn(&spec, dir) {
        Ok(started) => started,
        Err(e) => {
            let recorded = write_json(&dir.error(), &e);
            let _ = std::fs::remove_file(dir.socket());
            said_started();
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
    let shared = Arc::new(Shared {
        pid,
        ended: AtomicBool::new(false),
        lease: Mutex::new(later(started, spec.orphan_timeout)),
        attached: Mutex::new(Some(Vec::new())),
    });
    // The task's end wakes the run at once; the time limit and the lease
    // are looked at in between, at the latest every CHECK.
    let (exit_tx, exit_rx) = mpsc::channel();
    thread(move || {
        let mut child = child;
        let _ = exit_tx.send(child.wait());
    })?;
    write_json(
        &dir.started(),
        &Started {
            pid,
            start_ticks,
            started_ms,
        },
    )?;
    said_started();
    {
        let shared = shared.clone();
        thread(move || accept(&listener, &shared))?;
    }

    let mut note = None;
    let status = loop {
        let now = Instant::now();
        if note.is_none() {
            note = stop_note(&spec, started, *lock(&shared.lease), now);
            if note.is_some() {
                stop_group(&shared, spec.grace);
            }
        }
        let wait = next_check(&spec, started, *lock(&shared.lease), now);
        match exit_rx.recv_timeout(wait) {
            Ok(status) => break status,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(io::Error::other("lost the thread waiting for the task"));
            }
        }
    };
    shared.ended.store(true, Ordering::SeqCst);
    // What the leader left behind in its group goes with it.
    let _ = signal_group(pid, Signal::SIGKILL);
    // The output is read to its end before the exit is recorded, so a
    // reader that sees the record has seen all of it (a process that left
    // the group may hold the pipes open: not for ever).
    let _ = drained.recv_timeout(DRAIN_TIMEOUT);
    drop(give_up);
    let recorded = status.and_then(|status| {
        write_json(
            &dir.ended(),
            &Ended {
                status: to_exit_status(status),
                note,
            },
        )
    });
    // Listening until the end is recorded: a run whose supervisor answers
    // is not over (see `list`). Then every attached worker sees its
    // connection close, and the listener's thread is woken to end.
    for stream in lock(&shared.attached).take().into_iter().flatten() {
        let _ = stream.shutdown(Shutdown::Both);
    }
    let _ = UnixStream::connect(&socket);
    let _ = std::fs::remove_file(dir.socket());
    recorded
}

/// How long the run may wait for the task's end before it looks at the
/// time limit and the lease again: until the nearer of the two, and at
/// most [`CHECK`] (a renewal may shorten the lease).
fn next_check(spec: &RunSpec, started: Instant, lease_until: Instant, now: Instant) -> Duration {
    let limit_at = spec.time_limit.map(|l| later(started, l));
    [Some(lease_until), limit_at]
        .into_iter()
        .flatten()
        .map(|at| at.saturating_duration_since(now))
        .fold(CHECK, Duration::min)
}

/// Why the run stops the task on its own.
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

/// Starts the task as the leader of a new process group, with a thread
/// appending what its pipes deliver to the run's `output` file. The
/// channel returned says when both pipes ended; dropping the stream
/// returned makes the thread give up on them.
fn spawn(
    spec: &RunSpec,
    dir: &RunDir,
) -> Result<(Child, mpsc::Receiver<()>, UnixStream), StartError> {
    let backend = |what: &str, e: io::Error| StartError {
        invalid: false,
        message: format!("{what}: {e}"),
    };
    let output = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.output())
        .map_err(|e| backend("cannot open the output file", e))?;
    let (give_up, given_up) =
        UnixStream::pair().map_err(|e| backend("cannot make a socket pair", e))?;
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
    let pipes = (child.stdout.take(), child.stderr.take());
    let dir = dir.clone();
    let copying = thread(move || {
        copy_frames(pipes, output, &given_up, &dir);
        let _ = done.send(());
    });
    if let Err(e) = copying {
        let _ = child.kill();
        let _ = child.wait();
        return Err(backend("cannot start a thread", e));
    }
    Ok((child, drained, give_up))
}

/// Appends what the task's pipes deliver to `output` as frames naming
/// their stream, until both ended or `given_up` is readable or closed.
fn copy_frames(
    (stdout, stderr): (Option<ChildStdout>, Option<ChildStderr>),
    mut output: File,
    given_up: &UnixStream,
    dir: &RunDir,
) {
    let file = |fd: OwnedFd| File::from(fd);
    let mut pipes = [
        (stdout.map(OwnedFd::from).map(file), OutputStream::Stdout),
        (stderr.map(OwnedFd::from).map(file), OutputStream::Stderr),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    let mut failed = false;
    while pipes.iter().any(|(pipe, _)| pipe.is_some()) {
        // Whether `given_up`, then each open pipe, has something to say.
        let ready: Vec<bool> = {
            let mut fds = vec![PollFd::new(given_up.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                pipes
                    .iter()
                    .filter_map(|(pipe, _)| pipe.as_ref())
                    .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => fds.iter().map(|f| f.any() == Some(true)).collect(),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    note(dir, &format!("watching the task's output failed: {e}"));
                    return;
                }
            }
        };
        if ready[0] {
            return;
        }
        let open = pipes.iter_mut().filter(|(pipe, _)| pipe.is_some());
        for ((pipe, stream), _) in open.zip(&ready[1..]).filter(|(_, ready)| **ready) {
            let Some(p) = pipe.as_mut() else { continue };
            match p.read(&mut buf) {
                Ok(0) => *pipe = None,
                // On a failed write (a full disk) the pipe is still
                // drained, so the task does not block or die of it.
                Ok(n) if !failed => {
                    if let Err(e) = write_frame(&mut output, *stream, &buf[..n]) {
                        note(
                            dir,
                            &format!("writing the task's output failed; dropping the rest: {e}"),
                        );
                        failed = true;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    note(dir, &format!("reading the task's output failed: {e}"));
                    *pipe = None;
                }
            }
        }
    }
}

/// `d` after `at`, or as late as an `Instant` goes (a lease of many
/// years is as good as none).
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

/// Takes attachments until the end is recorded.
fn accept(listener: &UnixListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        {
            let mut attached = lock(&shared.attached);
            // Ended: this is the wake-up, or a worker just too late; either
            // sees the connection close.
            let Some(list) = attached.as_mut() else {
                return;
            };
            match stream.try_clone() {
                Ok(clone) => list.push(clone),
                Err(_) => continue,
            }
        }
        let shared = shared.clone();
        if thread(move || serve(stream, &shared)).is_err() {
            continue;
        }
    }
}

/// SIGTERM to the group now, SIGKILL after `grace` unless it ended.
fn stop_group(shared: &Arc<Shared>, grace: Duration) {
    if shared.ended.load(Ordering::SeqCst) {
        return;
    }
    let _ = signal_group(shared.pid, Signal::SIGTERM);
    let waits = shared.clone();
    let killer = thread(move || {
        std::thread::sleep(grace);
        if !waits.ended.load(Ordering::SeqCst) {
            let _ = signal_group(waits.pid, Signal::SIGKILL);
        }
    });
    if killer.is_err() {
        // No thread to wait the grace with: the stop cannot wait.
        let _ = signal_group(shared.pid, Signal::SIGKILL);
    }
}

/// Obeys one attached worker's commands until it goes away or the run's
/// end closes its connection.
fn serve(stream: UnixStream, shared: &Arc<Shared>) {
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<u64>)) {
            (Some("stop"), Some(Ok(grace_ms))) => {
                stop_group(shared, Duration::from_millis(grace_ms));
            }
            (Some("lease"), Some(Ok(ms))) => {
                *lock(&shared.lease) = later(Instant::now(), Duration::from_millis(ms));
            }
            (Some("kill"), None) if !shared.ended.load(Ordering::SeqCst) => {
                let _ = signal_group(shared.pid, Signal::SIGKILL);
            }
            _ => {}
        }
    }
}
