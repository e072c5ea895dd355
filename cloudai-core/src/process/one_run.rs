//! One supervised run, inside the supervisor process of its state
//! directory (see [`super::supervisor`]): a thread that owns the task's
//! process group, so the task's life does not hang on the worker's.
//!
//! - The task starts as the leader of a new process group, its pid and
//!   start time to the run's record. Its stdout and stderr are appended to
//!   the run's output file (made at the first byte), each read a frame
//!   naming its stream (see `frames`).
//! - Workers command the run through the supervisor ([`Run`]): stop it
//!   (SIGTERM to the group, SIGKILL after the grace), kill it, renew its
//!   lease, or watch for its end.
//! - The run holds a lease from its worker, renewed with every heartbeat
//!   the master answers. Once it runs out (the worker died, or lost its
//!   master) the task is stopped with its grace: so no task runs on once
//!   the master may declare its worker lost and place it elsewhere (see
//!   `crate::fence`).
//! - At the run's time limit, counted from the task's start, the task is
//!   stopped with its grace, whether or not a worker is attached, and the
//!   timeout noted.
//! - When the leader exits, the rest of its group is killed, the output
//!   read to its end (for at most [`DRAIN_TIMEOUT`]), the exit recorded,
//!   and then the watchers told. The run's thread ends with
//!   it.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use wait4::{ResUse, Wait4};

use super::frames::write_frame;
use super::record::{Ended, Entry, RunFiles, RunSpec, StartError, Started};
use super::{signal_group, task_command, to_exit_status, DRAIN_TIMEOUT};
use crate::host::process_start_ticks;
use crate::model::Usage;
use crate::output::OutputStream;
use crate::runtime::ExitStatus as Exit;
use crate::sync::lock;

/// The longest a run goes without looking at its time limit and lease
/// (the task's end wakes it at once).
const CHECK: Duration = Duration::from_millis(250);

/// Stack of the supervisor's threads: they copy through heap buffers and
/// call nothing deep, and there is one per run.
const STACK: usize = 256 * 1024;

/// Starts a thread of a run.
pub(super) fn thread(f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .map(drop)
}

/// Called once a run's end is recorded, with the exit recorded (`None`
/// if it could not be).
pub(super) type Watcher = Box<dyn FnOnce(Option<Exit>) + Send>;

/// A run's watchers until its end is recorded, then that end.
enum Watchers {
    Waiting(Vec<Watcher>),
    Told(Option<Exit>),
}

/// A running task, as its supervisor's threads and workers' commands
/// share it.
pub(super) struct Run {
    /// The task's start, as recorded.
    pub(super) started: Started,
    /// The leader is not reaped yet, so its pid (the group's id) cannot
    /// have been reused: signals are sent only under this lock, while it
    /// holds true.
    running: Mutex<bool>,
    lease: Mutex<Instant>,
    watchers: Mutex<Watchers>,
}

impl Run {
    /// SIGTERM to the group now, SIGKILL after `grace` unless it ended.
    pub(super) fn stop(self: &Arc<Self>, grace: Duration) {
        if !self.signal(Signal::SIGTERM) {
            return;
        }
        let waits = self.clone();
        let killer = thread(move || {
            std::thread::sleep(grace);
            waits.signal(Signal::SIGKILL);
        });
        if killer.is_err() {
            // No thread to wait the grace with: the stop cannot wait.
            self.signal(Signal::SIGKILL);
        }
    }

    /// SIGKILL to the group, unless it ended.
    pub(super) fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Signals the group unless its leader was reaped; whether it was not.
    fn signal(&self, signal: Signal) -> bool {
        let running = lock(&self.running);
        if *running {
            let _ = signal_group(self.started.pid, signal);
        }
        *running
    }

    /// The worker stands for the run for `lease` from now.
    pub(super) fn renew(&self, lease: Duration) {
        *lock(&self.lease) = later(Instant::now(), lease);
    }

    /// Tells `watcher` once the run's end is recorded (now, if it is).
    pub(super) fn watch(&self, watcher: Watcher) {
        let mut watchers = lock(&self.watchers);
        match &mut *watchers {
            Watchers::Waiting(waiting) => waiting.push(watcher),
            Watchers::Told(status) => {
                let status = *status;
                drop(watchers);
                watcher(status);
            }
        }
    }

    /// Records that the run's end is recorded and tells its watchers.
    fn tell(&self, status: Option<Exit>) {
        let told = std::mem::replace(&mut *lock(&self.watchers), Watchers::Told(status));
        if let Watchers::Waiting(watchers) = told {
            for watcher in watchers {
                watcher(status);
            }
        }
    }
}

/// Supervises run `files`, which is to run `spec`, until its task ended
/// and its end is recorded. `started` is called once its start is
/// recorded: with the run, or with `None` if it could not start (and why
/// is recorded).
///
/// One thread does it all, woken by whichever comes first: output on the
/// task's pipes, the task's exit (a pidfd), or its time limit or lease.
pub(super) fn supervise(
    files: &RunFiles,
    spec: &RunSpec,
    started: impl FnOnce(Option<&Arc<Run>>),
) -> io::Result<()> {
    let (child, pipes) = match spawn(spec) {
        Ok(spawned) => spawned,
        Err(e) => {
            let recorded = files.append(&Entry::Error(e));
            started(None);
            return recorded;
        }
    };
    let began = Instant::now();
    let pid = i32::try_from(child.id()).map_err(io::Error::other)?;
    // Read before the child is reaped, so it is there even if it ended.
    let start_ticks = process_start_ticks(pid).unwrap_or_default();
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .unwrap_or_default();
    let run = Arc::new(Run {
        started: Started {
            pid,
            start_ticks,
            started_ms,
        },
        running: Mutex::new(true),
        lease: Mutex::new(later(began, spec.orphan_timeout)),
        watchers: Mutex::new(Watchers::Waiting(Vec::new())),
    });
    let exit = ExitWatch::new(child).inspect_err(|_| {
        let _ = signal_group(pid, Signal::SIGKILL);
    })?;
    let recorded = files.append(&Entry::Started(run.started));
    if let Err(e) = recorded {
        // Unrecorded, nobody could find the task again: it must not run.
        let _ = signal_group(pid, Signal::SIGKILL);
        let _ = exit.status();
        return Err(e);
    }
    started(Some(&run));

    let mut output = Output {
        files,
        pipes,
        file: None,
        failed: false,
        buf: vec![0u8; 64 * 1024],
    };
    let mut note = None;
    let mut exit = Some(exit);
    let mut status = None;
    // Once the leader exited: until when the output may still drain.
    let mut drain_until = None;
    loop {
        let now = Instant::now();
        let timeout = match drain_until {
            Some(until) if now >= until || output.ended() => break,
            Some(until) => until - now,
            // Stopping: the exit wakes it.
            None if note.is_some() => CHECK,
            None => {
                note = stop_note(spec, began, *lock(&run.lease), now);
                if note.is_some() {
                    run.stop(spec.grace);
                }
                next_check(spec, began, *lock(&run.lease), now)
            }
        };
        let exited = match output.wait(exit.as_ref().map(ExitWatch::fd), timeout) {
            Ok(exited) => exited,
            Err(_) if drain_until.is_some() => break,
            Err(e) => {
                // Blind to the task, the run ends it rather than let it
                // run unwatched.
                note = Some(format!(
                    "the supervisor could no longer watch the task: {e}"
                ));
                run.kill();
                true
            }
        };
        if let Some(watch) = exit.take_if(|_| exited) {
            // What the leader left behind in its group goes with it, while
            // the leader, unreaped, keeps the group's id from reuse.
            {
                let mut running = lock(&run.running);
                let _ = signal_group(pid, Signal::SIGKILL);
                *running = false;
            }
            status = Some(watch.status());
            // The output is read to its end before the exit is recorded,
            // so a reader that sees the record has seen all of it (a
            // process that left the group may hold the pipes open: not
            // for ever).
            drain_until = Some(Instant::now() + DRAIN_TIMEOUT);
        }
    }
    let status = status.unwrap_or_else(|| Err(io::Error::other("the task's exit was not seen")));
    let recorded = status.and_then(|status| {
        let status = used(status);
        files
            .append(&Entry::Ended(Ended { status, note }))
            .map(|()| status)
    });
    run.tell(recorded.as_ref().ok().copied());
    recorded.map(drop)
}

/// What tells of the task's exit: a pidfd, readable once it exited, or
/// (on kernels before 5.3) a thread waiting for it that closes a socket.
enum ExitWatch {
    Pidfd(OwnedFd, Child),
    Thread(UnixStream, mpsc::Receiver<io::Result<ResUse>>),
}

impl ExitWatch {
    fn new(child: Child) -> io::Result<Self> {
        match pidfd_open(Pid::from_child(&child), PidfdFlags::empty()) {
            Ok(fd) => Ok(ExitWatch::Pidfd(fd, child)),
            Err(_) => {
                let (told, tells) = UnixStream::pair()?;
                let (tx, rx) = mpsc::channel();
                thread(move || {
                    let mut child = child;
                    let _ = tx.send(child.wait4());
                    drop(tells);
                })?;
                Ok(ExitWatch::Thread(told, rx))
            }
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            ExitWatch::Pidfd(fd, _) => fd.as_fd(),
            ExitWatch::Thread(told, _) => told.as_fd(),
        }
    }

    /// The exit and what the task used (with the children it waited
    /// for), once [`fd`](Self::fd) is readable.
    fn status(self) -> io::Result<ResUse> {
        match self {
            ExitWatch::Pidfd(_, mut child) => child.wait4(),
            ExitWatch::Thread(_, rx) => rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("lost the thread waiting for the task"))),
        }
    }
}

/// The exit and what the task used, as the run records it.
fn used(res: ResUse) -> Exit {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Exit {
        usage: Some(Usage {
            user_cpu_ms: ms(res.rusage.utime),
            system_cpu_ms: ms(res.rusage.stime),
            peak_memory_bytes: res.rusage.maxrss,
            ..Usage::default()
        }),
        ..to_exit_status(res.status)
    }
}

/// The task's stdout and stderr, each until it ended.
type Pipes = [(Option<File>, OutputStream); 2];

/// The task's output pipes, appended to the run's output file as frames
/// naming their stream. The file is made at the first byte: a silent task
/// costs no file.
struct Output<'a> {
    files: &'a RunFiles,
    pipes: Pipes,
    file: Option<File>,
    /// A write failed (a full disk): the pipes are still drained, so the
    /// task does not block or die of it.
    failed: bool,
    buf: Vec<u8>,
}

impl Output<'_> {
    /// Both pipes ended.
    fn ended(&self) -> bool {
        self.pipes.iter().all(|(pipe, _)| pipe.is_none())
    }

    /// Waits up to `timeout` for output, or for `exit` to be readable,
    /// copying what came; whether `exit` is.
    fn wait(&mut self, exit: Option<BorrowedFd<'_>>, timeout: Duration) -> io::Result<bool> {
        let ms = u16::try_from(timeout.as_millis().max(1)).unwrap_or(u16::MAX);
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = exit
                .into_iter()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            fds.extend(
                self.pipes
                    .iter()
                    .filter_map(|(pipe, _)| pipe.as_ref())
                    .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(_) => fds.iter().map(|f| f.any() == Some(true)).collect(),
                Err(nix::errno::Errno::EINTR) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        };
        let (exited, pipes_ready) = match exit {
            Some(_) => (ready[0], &ready[1..]),
            None => (false, &ready[..]),
        };
        let open = self.pipes.iter_mut().filter(|(pipe, _)| pipe.is_some());
        for ((pipe, stream), _) in open.zip(pipes_ready).filter(|(_, ready)| **ready) {
            let Some(p) = pipe.as_mut() else { continue };
            match p.read(&mut self.buf) {
                Ok(0) => *pipe = None,
                Ok(n) if !self.failed => {
                    let written = append_frame(&mut self.file, self.files, *stream, &self.buf[..n]);
                    if let Err(e) = written {
                        self.files.note(&format!(
                            "writing the task's output failed; dropping the rest: {e}"
                        ));
                        self.failed = true;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.files
                        .note(&format!("reading the task's output failed: {e}"));
                    *pipe = None;
                }
            }
        }
        Ok(exited)
    }
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

/// Starts the task as the leader of a new process group, its stdout and
/// stderr piped.
fn spawn(spec: &RunSpec) -> Result<(Child, Pipes), StartError> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(StartError {
            invalid: true,
            message: "empty command".into(),
        });
    };
    let mut child = task_command(program, args, &spec.env, spec.workdir.as_deref(), spec.user)
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
    let file = |fd: OwnedFd| File::from(fd);
    let pipes = [
        (
            child.stdout.take().map(OwnedFd::from).map(file),
            OutputStream::Stdout,
        ),
        (
            child.stderr.take().map(OwnedFd::from).map(file),
            OutputStream::Stderr,
        ),
    ];
    Ok((child, pipes))
}

/// Appends a frame to the run's output file, opening it first if need be.
fn append_frame(
    output: &mut Option<File>,
    files: &RunFiles,
    stream: OutputStream,
    data: &[u8],
) -> io::Result<()> {
    let file = match output {
        Some(file) => file,
        None => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(files.output())?;
            // Made after its run was removed (its worker stopped waiting
            // for the end): not left behind.
            if !files.exists() {
                let _ = std::fs::remove_file(files.output());
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the run was removed",
                ));
            }
            output.insert(file)
        }
    };
    write_frame(file, stream, data)
}

/// `d` after `at`, or as late as an `Instant` goes (a lease of many
/// years is as good as none).
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::*;
    use crate::process::frames::next_frame;

    /// A fresh run whose record runs `script` with `sh -c`, alone in its
    /// runs directory.
    fn run_files(script: &str, lease: Duration, time_limit: Option<Duration>) -> RunFiles {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let runs = std::env::temp_dir().join(format!("cloudai-one-run-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&runs);
        std::fs::create_dir_all(&runs).unwrap();
        let files = RunFiles::new(&runs, "run-t").unwrap();
        let spec = RunSpec {
            name: "t".into(),
            image: "busybox".into(),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            orphan_timeout: lease,
            time_limit,
            grace: Duration::ZERO,
            workdir: None,
            user: None,
        };
        files.create(&spec).unwrap();
        files
    }

    fn spec_of(files: &RunFiles) -> RunSpec {
        files.read().unwrap().expect("a record").spec
    }

    fn ended(files: &RunFiles) -> Ended {
        files
            .read()
            .unwrap()
            .expect("a record")
            .ended
            .expect("its end")
    }

    fn clean(files: &RunFiles) {
        let _ = std::fs::remove_dir_all(files.output().parent().unwrap());
    }

    /// The output file's text by stream (stdout, stderr).
    fn output(files: &RunFiles) -> (String, String) {
        let bytes = std::fs::read(files.output()).unwrap_or_default();
        let (mut out, mut err, mut at) = (Vec::new(), Vec::new(), 0);
        while let Some((stream, data, len)) = next_frame(&bytes[at..]).unwrap() {
            match stream {
                OutputStream::Stdout => out.extend_from_slice(data),
                OutputStream::Stderr => err.extend_from_slice(data),
            }
            at += len;
        }
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (text(out), text(err))
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn a_run_records_its_output_then_its_exit_then_tells_its_watchers() {
        let files = run_files("echo out; echo err >&2; exit 3", LONG, None);
        let told = Arc::new(AtomicBool::new(false));
        let saw = told.clone();
        let told_files = files.clone();
        supervise(&files, &spec_of(&files), |run| {
            let watcher = Box::new(move |status: Option<Exit>| {
                let recorded = told_files.read().unwrap().unwrap().ended;
                let same = recorded.is_some_and(|r| Some(r.status) == status);
                saw.store(same, Ordering::SeqCst);
            });
            run.expect("started").watch(watcher);
        })
        .unwrap();
        assert_eq!(ended(&files).status.code, Some(3));
        assert_eq!(output(&files), ("out\n".into(), "err\n".into()));
        assert!(
            told.load(Ordering::SeqCst),
            "told, once the end was recorded, the exit recorded"
        );
        clean(&files);
    }

    /// Output a process that left the task's group writes after the
    /// leader's exit is kept, within the drain; a pipe it holds open for
    /// longer is given up on.
    #[test]
    fn output_after_the_exit_is_drained_and_then_given_up() {
        let script = "setsid sh -c 'sleep 0.3; echo late; sleep 5' & sleep 0.1; exit 0";
        let files = run_files(script, LONG, None);
        let began = Instant::now();
        supervise(&files, &spec_of(&files), |_| {}).unwrap();
        assert!(
            began.elapsed() < DRAIN_TIMEOUT + Duration::from_secs(2),
            "gave up on the pipe after {:?}",
            began.elapsed()
        );
        assert_eq!(ended(&files).status.code, Some(0));
        assert_eq!(output(&files).0, "late\n");
        clean(&files);
    }

    #[test]
    fn a_run_whose_lease_runs_out_is_stopped() {
        let files = run_files("sleep 30", Duration::from_millis(300), None);
        supervise(&files, &spec_of(&files), |_| {}).unwrap();
        let ended = ended(&files);
        assert_eq!(ended.status.signal, Some(15), "{ended:?}");
        assert!(ended.note.is_some_and(|n| n.contains("lease")));
        clean(&files);
    }

    #[test]
    fn a_renewed_lease_keeps_the_run() {
        let files = run_files("sleep 0.6", Duration::from_millis(300), None);
        supervise(&files, &spec_of(&files), |run| {
            let run = run.expect("started").clone();
            thread(move || {
                for _ in 0..6 {
                    run.renew(Duration::from_millis(300));
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .unwrap();
        })
        .unwrap();
        assert_eq!(ended(&files).status.code, Some(0));
        clean(&files);
    }

    #[test]
    fn a_run_past_its_time_limit_is_stopped() {
        let files = run_files("sleep 30", LONG, Some(Duration::from_millis(300)));
        supervise(&files, &spec_of(&files), |_| {}).unwrap();
        let ended = ended(&files);
        assert_eq!(ended.status.signal, Some(15), "{ended:?}");
        assert!(ended.note.is_some_and(|n| n.starts_with("timeout")));
        clean(&files);
    }
}
