//! A supervised run's files in `<state dir>/runs/`, shared by the runtime
//! and the supervisor of the runs (see `supervisor`):
//!
//! | file | written by | holds |
//! |---|---|---|
//! | `<run>.run` | runtime (its first line), then supervisor (appended) | the run's record, a JSON [`Entry`] a line: what to run, then its start (or why it could not start), its end, and the supervisor's notes on it |
//! | `<run>.out` | supervisor, from the task's first byte | its stdout and stderr, framed (see `frames`) |
//! | `<run>.wd/` | runtime, unless the task names a `--workdir` | the directory the task starts in, removed with the run (kept for a next run, renamed, when empty: see `workdirs`) |
//!
//! One record file a run, appended to, rather than a directory of records
//! each written aside and renamed: a short task then costs one inode (its
//! output aside), where a directory and three records cost four, each
//! made and unlinked again (on ext4 without a journal a new inode is
//! looked for past every inode freed in the last seconds, so the cost of
//! each grew with the task rate).
//!
//! Only whole lines are read: a line without its newline is being written,
//! or was cut short by a crash, and reads as not written yet. An appended
//! entry begins with a newline too, so a line cut short by a failed write
//! (a full disk) is closed off by the next entry and skipped, rather than
//! spoiling it; blank lines are skipped.
//!
//! Beside the runs, `runs/` holds the supervisor's own `supervisor-2.sock`,
//! `supervisor-2.lock` and `supervisor-2.log`; no run is named like them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{backend, invalid_command};
use crate::host::process_start_ticks;
use crate::model::User;
use crate::runtime::{ContainerId, ExitStatus};
use crate::Result;

/// What to run, as the runtime hands it to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RunSpec {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) command: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) labels: BTreeMap<String, String>,
    /// The run's lease at its start: the supervisor stops the task (with
    /// its grace) once this passes without a worker renewing the lease
    /// (a `lease` request to the supervisor). Its worker died, or lost its
    /// master.
    pub(super) orphan_timeout: Duration,
    /// Longest the task may run, from its start.
    #[serde(default)]
    pub(super) time_limit: Option<Duration>,
    /// SIGTERM→SIGKILL grace of the stops the supervisor makes itself.
    #[serde(default)]
    pub(super) grace: Duration,
    /// The directory the task starts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) workdir: Option<PathBuf>,
    /// Whom the task runs as (the supervisor's user if not set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<User>,
}

/// The task's process, as its supervisor started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Started {
    /// The leader's pid, which is also the process group id.
    pub(super) pid: i32,
    /// The leader's start time in clock ticks since boot.
    pub(super) start_ticks: u64,
    /// Its start on the wall clock, in milliseconds since the Unix epoch.
    pub(super) started_ms: u64,
}

impl Started {
    /// The start as a `start` answer carries it: `started <pid> <start
    /// ticks> <start ms>`.
    pub(super) fn to_words(self) -> String {
        format!(
            "started {} {} {}",
            self.pid, self.start_ticks, self.started_ms
        )
    }

    /// The start a `start` answer carries; `None` for a bare `started`
    /// (the task could not start) or anything else.
    pub(super) fn from_words(words: &str) -> Option<Self> {
        let mut numbers = words.strip_prefix("started ")?.split(' ');
        let started = Started {
            pid: numbers.next()?.parse().ok()?,
            start_ticks: numbers.next()?.parse().ok()?,
            started_ms: numbers.next()?.parse().ok()?,
        };
        numbers.next().is_none().then_some(started)
    }

    /// Whether the recorded process still exists (and is not a later
    /// process that reused its pid).
    pub(super) fn alive(&self) -> bool {
        process_start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Why the task could not start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StartError {
    /// The command itself is at fault (not found, not executable).
    pub(super) invalid: bool,
    pub(super) message: String,
}

/// How the task ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Ended {
    pub(super) status: ExitStatus,
    /// Why the supervisor ended it, if it did on its own.
    pub(super) note: Option<String>,
}

/// One line of a run's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Entry {
    /// The first line, the runtime's.
    Spec(RunSpec),
    Started(Started),
    Error(StartError),
    Ended(Ended),
    /// Something the supervisor has to say of the run (why it could not
    /// supervise it, a failed write of its output).
    Note(String),
}

/// A run's record as far as it is written.
#[derive(Debug, Clone)]
pub(super) struct Record {
    pub(super) spec: RunSpec,
    pub(super) started: Option<Started>,
    pub(super) error: Option<StartError>,
    pub(super) ended: Option<Ended>,
    pub(super) notes: Vec<String>,
}

/// The files of run `name` in a runs directory.
#[derive(Debug, Clone)]
pub(super) struct RunFiles {
    record: PathBuf,
    output: PathBuf,
    workdir: PathBuf,
}

impl RunFiles {
    /// The files of run `name` in `runs`, if `name` can name a run.
    pub(super) fn new(runs: &Path, name: &str) -> Option<Self> {
        plain_run_name(name).then(|| RunFiles {
            record: runs.join(format!("{name}.{RECORD}")),
            output: runs.join(format!("{name}.out")),
            workdir: runs.join(format!("{name}.wd")),
        })
    }

    /// The run named by record file `path`, if it is one.
    pub(super) fn of_record(path: &Path) -> Option<(String, Self)> {
        let name = path
            .file_name()?
            .to_str()?
            .strip_suffix(RECORD)?
            .strip_suffix('.')?;
        Some((name.to_owned(), Self::new(path.parent()?, name)?))
    }

    pub(super) fn output(&self) -> &Path {
        &self.output
    }

    /// The directory a run starts in unless its spec names one; it goes
    /// with the run.
    pub(super) fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// Whether the run's record exists.
    pub(super) fn exists(&self) -> bool {
        self.record.exists()
    }

    /// Makes the run's record with its spec (fails if it exists), and
    /// returns that first line without its newline: a `start` request
    /// carries it.
    pub(super) fn create(&self, spec: &RunSpec) -> io::Result<String> {
        let mut line =
            serde_json::to_string(&Entry::Spec(spec.clone())).map_err(io::Error::other)?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.record)?;
        file.write_all(line.as_bytes())?;
        line.pop();
        Ok(line)
    }

    /// Whether the record holds `first` and nothing after it: the run is
    /// not started yet (nor was it tried), found with a `stat`.
    pub(super) fn holds_only(&self, first: &str) -> bool {
        std::fs::metadata(&self.record).is_ok_and(|m| m.len() == first.len() as u64 + 1)
    }

    /// Appends `entry` to the run's record, which must exist (a removed
    /// run is not made again).
    pub(super) fn append(&self, entry: &Entry) -> io::Result<()> {
        let mut line = vec![b'\n'];
        line.extend(serde_json::to_vec(entry).map_err(io::Error::other)?);
        line.push(b'\n');
        OpenOptions::new()
            .append(true)
            .open(&self.record)?
            .write_all(&line)
    }

    /// Appends a note, as far as it can: the supervisor's diagnostics.
    pub(super) fn note(&self, what: &str) {
        let _ = self.append(&Entry::Note(what.to_owned()));
    }

    /// The run's record; `Ok(None)` if there is none, or its spec is not
    /// written yet.
    pub(super) fn read(&self) -> io::Result<Option<Record>> {
        let bytes = match std::fs::read(&self.record) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |e: serde_json::Error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", self.record.display()),
            )
        };
        // Only whole lines: the last one may be being written.
        let Some(end) = bytes.iter().rposition(|b| *b == b'\n') else {
            return Ok(None);
        };
        let mut lines = bytes[..end].split(|b| *b == b'\n');
        let spec = match lines.next().map(serde_json::from_slice::<Entry>) {
            Some(Ok(Entry::Spec(spec))) => spec,
            Some(Err(e)) => return Err(bad(e)),
            Some(Ok(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: does not start with the run's spec",
                        self.record.display()
                    ),
                ))
            }
            None => return Ok(None),
        };
        let mut record = Record {
            spec,
            started: None,
            error: None,
            ended: None,
            notes: Vec::new(),
        };
        // A line a failed write cut short is no entry.
        let entries = lines.filter_map(|l| serde_json::from_slice::<Entry>(l).ok());
        for entry in entries {
            match entry {
                Entry::Spec(_) => {}
                Entry::Started(s) => record.started = Some(s),
                Entry::Error(e) => record.error = Some(e),
                Entry::Ended(e) => record.ended = Some(e),
                Entry::Note(n) => record.notes.push(n),
            }
        }
        Ok(Some(record))
    }

    /// Removes the run's files: its output first, so that what is left
    /// after a crash between the two is still a run (found and removed
    /// again), never output nobody knows of.
    pub(super) fn remove(&self) -> io::Result<()> {
        // Most runs leave their directory empty: one `rmdir`, then the walk.
        let removed = std::fs::remove_dir(&self.workdir).or_else(|e| match e.kind() {
            io::ErrorKind::DirectoryNotEmpty => std::fs::remove_dir_all(&self.workdir),
            _ => Err(e),
        });
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        for path in [&self.output, &self.record] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The extension of a run's record file.
const RECORD: &str = "run";

/// The path of socket `name` in `dir` by way of an open handle on the
/// directory: a unix socket path must fit in 108 bytes, and a state
/// directory's may not. Valid while the handle lives.
pub(super) fn socket_via(dir: &Path, name: &str) -> io::Result<(File, PathBuf)> {
    let handle = File::open(dir)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{name}", handle.as_raw_fd()));
    Ok((handle, path))
}

/// Whether `name` can name a run: letters, digits, `-` and `_`, so never
/// a path elsewhere, nor one of the supervisor's own files.
pub(super) fn plain_run_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What run `files` says of its start, once its supervisor answered or
/// went away (`how`, for the error if neither is recorded): the start, or
/// why there was none.
pub(super) fn start_outcome(id: &ContainerId, files: &RunFiles, how: &str) -> Result<Started> {
    let record = files.read().map_err(backend)?;
    match record.as_ref().and_then(|r| r.error.as_ref()) {
        Some(e) if e.invalid => return Err(invalid_command(e.message.clone())),
        Some(e) => return Err(backend(io::Error::other(e.message.clone()))),
        None => {}
    }
    if let Some(started) = record.as_ref().and_then(|r| r.started) {
        return Ok(started);
    }
    let said = record.map(|r| r.notes.join("; ")).unwrap_or_default();
    Err(backend(io::Error::other(format!(
        "the supervisor {how} without starting {id}: {said}"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn spec() -> RunSpec {
        RunSpec {
            name: "t".into(),
            image: "busybox".into(),
            command: vec!["true".into()],
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            orphan_timeout: Duration::from_secs(60),
            time_limit: None,
            grace: Duration::ZERO,
            workdir: None,
            user: None,
        }
    }

    fn runs_dir(name: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("cloudai-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    /// The records decide, whatever the supervisor said: a supervisor may
    /// start a short task, record its end and be gone before the runtime
    /// reads its answer.
    #[test]
    fn the_records_decide_a_start() {
        let root = runs_dir("start");
        let files = RunFiles::new(&root, "run-test").unwrap();
        let id = ContainerId("run-test".into());
        files.create(&spec()).unwrap();
        files.note("cannot bind");
        let gone = start_outcome(&id, &files, "went away")
            .unwrap_err()
            .to_string();
        assert!(
            gone.contains("went away without starting run-test: cannot bind"),
            "{gone}"
        );
        let started = Started {
            pid: 1,
            start_ticks: 0,
            started_ms: 0,
        };
        files.append(&Entry::Started(started)).unwrap();
        assert!(start_outcome(&id, &files, "went away").is_ok());
        let error = StartError {
            invalid: true,
            message: "cannot run \"nosuch\"".into(),
        };
        files.append(&Entry::Error(error)).unwrap();
        assert!(matches!(
            start_outcome(&id, &files, "answered"),
            Err(Error::InvalidInput(_))
        ));
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A line not yet ended by its newline is not read; a removed run is
    /// not made again by an append.
    #[test]
    fn a_record_is_read_by_whole_lines_and_not_made_again() {
        let root = runs_dir("record");
        let files = RunFiles::new(&root, "run-1").unwrap();
        assert!(files.read().unwrap().is_none());
        std::fs::write(&files.record, b"{\"spec\":").unwrap();
        assert!(files.read().unwrap().is_none(), "half a spec is none yet");
        std::fs::remove_file(&files.record).unwrap();
        let first = files.create(&spec()).unwrap();
        assert!(files.holds_only(&first), "not started yet");
        assert!(files.create(&spec()).is_err(), "made once");
        let mut file = OpenOptions::new().append(true).open(&files.record).unwrap();
        file.write_all(b"\n{\"note\":\"cut sh").unwrap();
        let record = files.read().unwrap().expect("a record");
        assert!(record.notes.is_empty(), "a line being written is not read");
        assert!(!files.holds_only(&first), "more than the spec");
        files.note("after a write cut short");
        let record = files.read().unwrap().expect("a record");
        assert_eq!(
            record.notes,
            ["after a write cut short"],
            "the next entry is whole"
        );
        assert_eq!(record.spec.command, ["true"]);
        std::fs::write(files.output(), b"x").unwrap();
        files.remove().unwrap();
        assert!(!files.output().exists() && !files.exists());
        assert!(files.append(&Entry::Note("late".into())).is_err());
        assert!(
            !files.exists(),
            "an append does not make a removed run again"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_start_answer_carries_the_start_or_nothing() {
        let started = Started::from_words("started 42 1234 1700000000000").expect("a start");
        assert_eq!(
            (started.pid, started.start_ticks, started.started_ms),
            (42, 1234, 1_700_000_000_000)
        );
        assert_eq!(started.to_words(), "started 42 1234 1700000000000");
        for nothing in [
            "started",
            "started 42 1234",
            "started 42 x 5",
            "started 1 2 3 4",
        ] {
            assert!(Started::from_words(nothing).is_none(), "{nothing}");
        }
    }

    #[test]
    fn run_names_are_plain() {
        assert!(plain_run_name("run-18f3a-2b-7"));
        for bad in ["", "..", "a/b", "supervisor.sock", "x y"] {
            assert!(!plain_run_name(bad), "{bad:?}");
        }
        let runs = Path::new("/state/runs");
        let (name, files) = RunFiles::of_record(&runs.join("run-1.run")).unwrap();
        assert_eq!(
            (name.as_str(), files.output()),
            ("run-1", &*runs.join("run-1.out"))
        );
        for other in ["run-1.out", "supervisor-2.sock", "a.b.run", ".run"] {
            assert!(RunFiles::of_record(&runs.join(other)).is_none(), "{other}");
        }
    }
}
