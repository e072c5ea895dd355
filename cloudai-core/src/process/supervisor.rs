//! The supervisor of a worker's supervised runs: one long-lived process
//! per state directory (the worker binary in its supervisor mode, in the
//! manner of a container runtime's shim daemon) that starts every run and
//! owns its task's process group (see `one_run`), so the tasks' lives do
//! not hang on the worker's.
//!
//! - It leaves the worker's session (`setsid`), so neither a terminal's
//!   Ctrl-C nor the worker's death reaches it.
//! - One per runs directory: it holds `supervisor.lock` there for its life
//!   (a second one started says `running` and exits), and says `ready` on
//!   its stdout once it listens on `supervisor.sock`.
//! - A worker's runtime connects there and sends `start <run>` for a run
//!   whose `run.json` it wrote; the supervisor answers `started <run>`
//!   once the run's start records are written, or `failed <run>` (why is
//!   in the run's `supervisor.log`).
//! - It exits once it supervises no run and no runtime is connected: a
//!   worker keeps it for its life, and runs keep it past the worker's.
//!
//! Starting a run costs a few threads here, where a process per run cost
//! an `exec` of the worker binary (most of a short task's overhead).

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::one_run::{note, supervise, thread};
use super::record::{plain_run_name, socket_via, RunDir};
use crate::sync::lock;

/// The supervisor's socket, lock and log, in the runs directory.
pub(super) const SOCKET: &str = "supervisor.sock";
const LOCK: &str = "supervisor.lock";
pub(super) const LOG: &str = "supervisor.log";

/// How long a supervisor that nobody connected to waits before it exits
/// (its runtime went away as it started it).
const UNCLAIMED: Duration = Duration::from_secs(10);

/// Runs the supervisor of the runs directory `runs` until it has no run
/// and no runtime. Its stderr is its log.
#[allow(
    clippy::print_stderr,
    reason = "the supervisor's stderr is its log file"
)]
pub fn run(runs: &Path) -> ExitCode {
    // Its own session: terminal signals and the worker's end pass it by.
    let _ = nix::unistd::setsid();
    match serve(runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("supervisor of {} failed: {e}", runs.display());
            ExitCode::FAILURE
        }
    }
}

/// Says one line to the runtime that started this process (on the stdout
/// it piped); a runtime that is gone does not matter.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// How many runs and runtimes keep the supervisor.
#[derive(Default)]
struct Kept {
    runs: usize,
    runtimes: usize,
}

struct Supervisor {
    runs: PathBuf,
    kept: Mutex<Kept>,
}

impl Supervisor {
    /// Exits the process if nothing keeps it. The socket goes first, so a
    /// runtime connecting now fails to and starts another supervisor
    /// (which waits for this one's lock).
    fn exit_if_unkept(&self) {
        let kept = lock(&self.kept);
        if kept.runs == 0 && kept.runtimes == 0 {
            let _ = std::fs::remove_file(self.runs.join(SOCKET));
            std::process::exit(0);
        }
    }

    /// Serves one runtime's connection until it closes.
    fn serve_runtime(self: &Arc<Self>, stream: UnixStream) {
        let replies = stream.try_clone().map(|s| Arc::new(Mutex::new(s)));
        if let Ok(replies) = &replies {
            for line in BufReader::new(&stream).lines() {
                let Ok(line) = line else { break };
                if let Some(name) = line.strip_prefix("start ").filter(|n| plain_run_name(n)) {
                    self.start(name, replies.clone());
                }
            }
        }
        // Closed for the runs still to answer on it as well.
        let _ = stream.shutdown(Shutdown::Both);
        lock(&self.kept).runtimes -= 1;
        self.exit_if_unkept();
    }

    /// Supervises run `name` in a thread of its own, answering on
    /// `replies` once its start records are written.
    fn start(self: &Arc<Self>, name: &str, replies: Arc<Mutex<UnixStream>>) {
        let dir = RunDir(self.runs.join(name));
        let name = name.to_owned();
        let reply = move |word: &str| {
            let _ = lock(&replies).write_all(format!("{word} {name}\n").as_bytes());
        };
        lock(&self.kept).runs += 1;
        let run = {
            let (supervisor, dir, reply) = (self.clone(), dir.clone(), reply.clone());
            move || {
                let mut said = false;
                let supervised = supervise(&dir, || {
                    said = true;
                    reply("started");
                });
                if let Err(e) = supervised {
                    note(&dir, &format!("supervising the run failed: {e}"));
                }
                if !said {
                    reply("failed");
                }
                lock(&supervisor.kept).runs -= 1;
                supervisor.exit_if_unkept();
            }
        };
        if let Err(e) = thread(run) {
            note(&dir, &format!("cannot start a thread for the run: {e}"));
            reply("failed");
            lock(&self.kept).runs -= 1;
        }
    }
}

fn serve(runs: &Path) -> io::Result<()> {
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(runs.join(LOCK))?;
    match lock_file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            say("running");
            return Ok(());
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    // Held for the process's life; a socket left by one that died goes.
    let (_handle, socket) = socket_via(runs, SOCKET)?;
    let _ = std::fs::remove_file(runs.join(SOCKET));
    let listener = UnixListener::bind(socket)?;
    say("ready");
    let supervisor = Arc::new(Supervisor {
        runs: runs.to_owned(),
        kept: Mutex::default(),
    });
    {
        let supervisor = supervisor.clone();
        thread(move || {
            std::thread::sleep(UNCLAIMED);
            supervisor.exit_if_unkept();
        })?;
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        lock(&supervisor.kept).runtimes += 1;
        let for_thread = supervisor.clone();
        if thread(move || for_thread.serve_runtime(stream)).is_err() {
            lock(&supervisor.kept).runtimes -= 1;
        }
    }
    drop(lock_file);
    Ok(())
}
