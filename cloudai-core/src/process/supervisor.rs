//! The supervisor of a worker's supervised runs: one long-lived process
//! per state directory (the worker binary in its supervisor mode, in the
//! manner of a container runtime's shim daemon) that starts every run and
//! owns its task's process group (see `one_run`), so the tasks' lives do
//! not hang on the worker's.
//!
//! - It leaves the worker's session (`setsid`), so neither a terminal's
//!   Ctrl-C nor the worker's death reaches it.
//! - One per runs directory: it holds `supervisor-2.lock` there for its
//!   life (a second one started says `running` and exits), and says
//!   `ready` on its stdout once it listens on `supervisor-2.sock`. The
//!   names carry the version of the runs' files and of this protocol: a
//!   supervisor of an earlier version, still kept by its runs after an
//!   upgrade, keeps them under its own names and is never asked to start
//!   a run it cannot read.
//! - A worker's runtime connects there and sends requests, a line each,
//!   naming a run; the answers, in any order, repeat the request's first
//!   two words:
//!
//!   | request | answer |
//!   |---|---|
//!   | `start <run>` (its record made) | `start <run> started <pid> <start ticks> <start ms>` once its start is recorded (`start <run> started` if the task could not start: its record says why), or `start <run> failed` if it could not supervise the run or already did (its record says why) |
//!   | `watch <run>` | `watch <run> ended <exit status as JSON>` once its end is recorded (without the status if it could not be), or `watch <run> ended` at once if this supervisor does not supervise it |
//!
//!   An answer carries what the run's record says, so a runtime reads the
//!   record only where the supervisor cannot answer.
//!   | `stop <run> <grace ms>` | `stop <run> ok`, or `stop <run> unknown` |
//!   | `kill <run>` | `kill <run> ok`, or `kill <run> unknown` |
//!   | `lease <run> <ms>` | none |
//!   | `supervises <run>` | `supervises <run> yes` or `no` |
//! - It exits once it supervises no run and no runtime is connected: a
//!   worker keeps it for its life, and runs keep it past the worker's.
//!
//! Starting a run costs a thread here, where a process per run cost an
//! `exec` of the worker binary (most of a short task's overhead).

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::one_run::{supervise, thread, Run};
use super::record::{plain_run_name, socket_via, RunFiles};
use crate::runtime::ExitStatus;
use crate::sync::lock;

/// The supervisor's socket, lock and log, in the runs directory.
pub(super) const SOCKET: &str = "supervisor-2.sock";
const LOCK: &str = "supervisor-2.lock";
pub(super) const LOG: &str = "supervisor-2.log";

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
    /// The runs started and not yet recorded as ended, by name.
    supervised: Mutex<HashMap<String, Arc<Run>>>,
}

/// Where answers to one runtime go.
#[derive(Clone)]
struct Answers(Arc<Mutex<UnixStream>>);

/// How long an answer may wait for a runtime that does not read (a stopped
/// worker) before its connection is closed: the runtime then reads the
/// records instead, and no run waits on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

impl Answers {
    fn new(stream: UnixStream) -> Self {
        let _ = stream.set_write_timeout(Some(ANSWER_TIMEOUT));
        Answers(Arc::new(Mutex::new(stream)))
    }

    /// Answers `request` about `run`; a runtime that is gone does not
    /// matter, and one that does not read loses its connection.
    fn say(&self, request: &str, run: &str, word: &str) {
        let line = format!("{request} {run} {word}\n");
        let mut stream = lock(&self.0);
        if stream.write_all(line.as_bytes()).is_err() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
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
        if let Ok(answers) = stream.try_clone() {
            let answers = Answers::new(answers);
            for line in BufReader::new(&stream).lines() {
                let Ok(line) = line else { break };
                self.obey(&line, &answers);
            }
        }
        // Closed for the runs still to answer on it as well.
        let _ = stream.shutdown(Shutdown::Both);
        lock(&self.kept).runtimes -= 1;
        self.exit_if_unkept();
    }

    /// Carries out one request (see the module's table); an unknown one is
    /// ignored.
    fn obey(self: &Arc<Self>, line: &str, answers: &Answers) {
        let mut words = line.split_whitespace();
        let (Some(request), Some(name)) = (words.next(), words.next()) else {
            return;
        };
        if !plain_run_name(name) {
            return;
        }
        let ms = words
            .next()
            .and_then(|w| w.parse().ok())
            .map(Duration::from_millis);
        let run = lock(&self.supervised).get(name).cloned();
        match (request, run, ms) {
            ("start", _, None) => self.start(name, answers.clone()),
            ("watch", Some(run), None) => {
                let (answers, name) = (answers.clone(), name.to_owned());
                run.watch(Box::new(move |status| {
                    answers.say("watch", &name, &ended(status));
                }));
            }
            ("watch", None, None) => answers.say("watch", name, "ended"),
            ("stop", Some(run), Some(grace)) => {
                run.stop(grace);
                answers.say("stop", name, "ok");
            }
            ("kill", Some(run), None) => {
                run.kill();
                answers.say("kill", name, "ok");
            }
            ("stop" | "kill", None, _) => answers.say(request, name, "unknown"),
            ("lease", Some(run), Some(lease)) => run.renew(lease),
            ("supervises", run, None) => {
                answers.say(request, name, if run.is_some() { "yes" } else { "no" });
            }
            _ => {}
        }
    }

    /// Supervises run `name` in a thread of its own, answering once its
    /// start is recorded.
    fn start(self: &Arc<Self>, name: &str, answers: Answers) {
        let Some(files) = RunFiles::new(&self.runs, name) else {
            answers.say("start", name, "failed");
            return;
        };
        // Once only: a run started before (by this supervisor or one that
        // died) is what its record says.
        let spec = match files.read() {
            Ok(Some(r)) if r.started.is_none() && r.error.is_none() => r.spec,
            Ok(_) => {
                answers.say("start", name, "failed");
                return;
            }
            Err(e) => {
                files.note(&format!("cannot read the run's record: {e}"));
                answers.say("start", name, "failed");
                return;
            }
        };
        if lock(&self.supervised).contains_key(name) {
            answers.say("start", name, "failed");
            return;
        }
        let name = name.to_owned();
        lock(&self.kept).runs += 1;
        let run = {
            let (supervisor, files, answers, name) =
                (self.clone(), files.clone(), answers.clone(), name.clone());
            move || {
                let mut said = false;
                let mut ours = None;
                let supervised = supervise(&files, &spec, |run| {
                    said = true;
                    let word = match run {
                        Some(run) => {
                            lock(&supervisor.supervised).insert(name.clone(), run.clone());
                            ours = Some(run.clone());
                            let s = run.started;
                            format!("started {} {} {}", s.pid, s.start_ticks, s.started_ms)
                        }
                        // Why is recorded.
                        None => "started".to_owned(),
                    };
                    answers.say("start", &name, &word);
                });
                if let Some(ours) = ours {
                    let mut supervised = lock(&supervisor.supervised);
                    if supervised.get(&name).is_some_and(|r| Arc::ptr_eq(r, &ours)) {
                        supervised.remove(&name);
                    }
                }
                if let Err(e) = supervised {
                    files.note(&format!("supervising the run failed: {e}"));
                }
                if !said {
                    answers.say("start", &name, "failed");
                }
                lock(&supervisor.kept).runs -= 1;
                supervisor.exit_if_unkept();
            }
        };
        if let Err(e) = thread(run) {
            files.note(&format!("cannot start a thread for the run: {e}"));
            answers.say("start", &name, "failed");
            lock(&self.kept).runs -= 1;
        }
    }
}

/// The word of a `watch` answer: `ended`, and the exit recorded (as
/// JSON) if it was.
fn ended(status: Option<ExitStatus>) -> String {
    match status.and_then(|s| serde_json::to_string(&s).ok()) {
        Some(json) => format!("ended {json}"),
        None => "ended".to_owned(),
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
        supervised: Mutex::default(),
    });
    {
        let supervisor = supervisor.clone();
        thread(move || {
            std::thread::sleep(UNCLAIMED);
            supervisor.exit_if_unkept();
        })?;
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else {
            // Out of descriptors, say: not in a busy loop.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        lock(&supervisor.kept).runtimes += 1;
        let for_thread = supervisor.clone();
        if thread(move || for_thread.serve_runtime(stream)).is_err() {
            lock(&supervisor.kept).runtimes -= 1;
        }
    }
    drop(lock_file);
    Ok(())
}
