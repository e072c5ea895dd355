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
//!   | `start <run> <its record's first line>` (the record made) | `start <run> started <pid> <start ticks> <start ms>` once its start is recorded (the same again to a runtime asking again meanwhile); `start <run> started` if the task could not start (its record says why); `start <run> failed` if it could not take the run on (a record holding more than its spec: it was started before) |
//!   | `watch <run>` | `watch <run> ended <exit status as JSON>` once its end is recorded (without the status if it could not be), or `watch <run> ended` at once if this supervisor does not supervise it |
//!   | `stop <run> <grace ms>` | `stop <run> ok`, or `stop <run> unknown` |
//!   | `kill <run>` | `kill <run> ok`, or `kill <run> unknown` |
//!   | `lease <run> <ms>` | none |
//!   | `supervises <run>` | `supervises <run> yes` or `no` |
//!
//!   An answer carries what the run's record says, so a runtime reads the
//!   record only where the supervisor cannot answer.
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
use super::record::{plain_run_name, socket_via, Entry, RunFiles};
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
    /// The runs this supervisor took on and has not yet recorded as ended,
    /// by name.
    supervised: Mutex<HashMap<String, Claim>>,
}

/// A run the supervisor took on, until its end is recorded.
enum Claim {
    /// Being started; who else asked to start it meanwhile (a runtime
    /// whose connection closed before its answer, asking again), to be
    /// answered as the first is.
    Starting(Vec<Answers>),
    Started(Arc<Run>),
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
        let mut words = line.splitn(3, ' ');
        let (Some(request), Some(name), more) = (words.next(), words.next(), words.next()) else {
            return;
        };
        if !plain_run_name(name) {
            return;
        }
        if request == "start" {
            self.start(name, more.unwrap_or_default(), answers.clone());
            return;
        }
        let ms = more
            .and_then(|w| w.trim().parse().ok())
            .map(Duration::from_millis);
        let run = match lock(&self.supervised).get(name) {
            Some(Claim::Started(run)) => Some(run.clone()),
            _ => None,
        };
        match (request, run, ms) {
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

    /// Supervises run `name`, whose record begins with `first`, in a
    /// thread of its own, answering once its start is recorded.
    fn start(self: &Arc<Self>, name: &str, first: &str, answers: Answers) {
        let spec = match serde_json::from_str(first) {
            Ok(Entry::Spec(spec)) => spec,
            _ => return answers.say("start", name, "failed"),
        };
        let Some(files) = RunFiles::new(&self.runs, name) else {
            return answers.say("start", name, "failed");
        };
        // Once only. Asked again while this supervisor has the run, it
        // answers as it did or will; otherwise the record must hold
        // nothing past the spec (no start, by this supervisor or one that
        // died, nor why there was none).
        {
            let mut supervised = lock(&self.supervised);
            match supervised.get_mut(name) {
                Some(Claim::Starting(others)) => return others.push(answers),
                Some(Claim::Started(run)) => {
                    let word = run.started.to_words();
                    drop(supervised);
                    return answers.say("start", name, &word);
                }
                None if !files.holds_only(first) => {
                    drop(supervised);
                    return answers.say("start", name, "failed");
                }
                None => {
                    supervised.insert(name.to_owned(), Claim::Starting(Vec::new()));
                }
            }
        }
        let name = name.to_owned();
        lock(&self.kept).runs += 1;
        let run = {
            let (supervisor, files, answers, name) =
                (self.clone(), files.clone(), answers.clone(), name.clone());
            move || {
                let mut said = false;
                let supervised = supervise(&files, &spec, |run| {
                    said = true;
                    let (word, claim) = match run {
                        Some(run) => (run.started.to_words(), Claim::Started(run.clone())),
                        // Why is recorded.
                        None => ("started".to_owned(), Claim::Starting(Vec::new())),
                    };
                    let others = match lock(&supervisor.supervised).insert(name.clone(), claim) {
                        Some(Claim::Starting(others)) => others,
                        _ => Vec::new(),
                    };
                    for asked in std::iter::once(&answers).chain(&others) {
                        asked.say("start", &name, &word);
                    }
                });
                if let Err(e) = supervised {
                    files.note(&format!("supervising the run failed: {e}"));
                }
                if !said {
                    answers.say("start", &name, "failed");
                }
                supervisor.release(&name, if said { "started" } else { "failed" });
                lock(&supervisor.kept).runs -= 1;
                supervisor.exit_if_unkept();
            }
        };
        if let Err(e) = thread(run) {
            files.note(&format!("cannot start a thread for the run: {e}"));
            answers.say("start", &name, "failed");
            self.release(&name, "failed");
            lock(&self.kept).runs -= 1;
        }
    }

    /// Gives up the claim on run `name`, its end recorded (or its start
    /// failed), answering `word` to whoever still waits for its start.
    fn release(&self, name: &str, word: &str) {
        let claim = lock(&self.supervised).remove(name);
        if let Some(Claim::Starting(others)) = claim {
            for asked in others {
                asked.say("start", name, word);
            }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::BufRead;

    use super::*;
    use crate::process::record::RunSpec;

    /// A run is started once: asked again while it starts, the supervisor
    /// answers with the one start; once its record says it ran, it refuses.
    #[test]
    fn a_run_is_started_once() {
        let runs = std::env::temp_dir().join(format!("cloudai-once-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&runs);
        std::fs::create_dir_all(&runs).unwrap();
        let supervisor = Arc::new(Supervisor {
            runs: runs.clone(),
            // A runtime keeps it: it must not exit the test's process.
            kept: Mutex::new(Kept {
                runs: 0,
                runtimes: 1,
            }),
            supervised: Mutex::default(),
        });
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let answers = Answers::new(ours);
        let mut heard = BufReader::new(theirs).lines();
        let mut hear = || heard.next().expect("an answer").expect("read");
        let spec = RunSpec {
            name: "t".into(),
            image: "busybox".into(),
            command: vec!["sh".into(), "-c".into(), "sleep 0.3".into()],
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            orphan_timeout: Duration::from_secs(60),
            time_limit: None,
            grace: Duration::ZERO,
            workdir: None,
            user: None,
        };
        let first = RunFiles::new(&runs, "run-1")
            .unwrap()
            .create(&spec)
            .unwrap();
        let start = format!("start run-1 {first}");
        supervisor.obey(&start, &answers);
        supervisor.obey(&start, &answers);
        let said = [hear(), hear()];
        assert!(said[0].starts_with("start run-1 started "), "{said:?}");
        assert_eq!(said[0], said[1], "one start, told twice");
        supervisor.obey("watch run-1", &answers);
        assert!(hear().starts_with("watch run-1 ended"));
        // Watchers are told as the end is recorded; the claim goes as the
        // run's thread ends, just after.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&supervisor.supervised).contains_key("run-1") {
            assert!(std::time::Instant::now() < deadline, "the claim stays");
            std::thread::sleep(Duration::from_millis(5));
        }
        supervisor.obey(&start, &answers);
        assert_eq!(hear(), "start run-1 failed", "its record says it ran");
        let _ = std::fs::remove_dir_all(&runs);
    }
}
