//! A supervised run's directory, `<state dir>/runs/<id>/`, shared by the
//! runtime and the supervisor of the runs (see `supervisor`):
//!
//! | file | written by | holds |
//! |---|---|---|
//! | `run.json` | runtime, before it asks the supervisor to start the run | what to run, labels, its lease, time limit and grace |
//! | `output` | supervisor, from the task's first byte | its stdout and stderr, framed (see `frames`) |
//! | `pid.json` | supervisor, once the task started | its pid and start time |
//! | `error` | supervisor, if the task could not start | why |
//! | `exit.json` | supervisor, once the task ended | its exit status |
//! | `supervisor.log` | supervisor, if something went wrong | the run's diagnostics |
//!
//! Beside the runs, `runs/` holds the supervisor's own `supervisor.sock`,
//! `supervisor.lock` and `supervisor.log`; no run is named like them.
//!
//! Records are written aside and renamed, so a reader never sees half of
//! one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{backend, invalid_command};
use crate::host::process_start_ticks;
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
    /// The output file is framed by stream (false: a run an earlier
    /// version started, whose task wrote the file itself).
    #[serde(default)]
    pub(super) framed_output: bool,
}

/// The task's process, as its supervisor started it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Started {
    /// The leader's pid, which is also the process group id.
    pub(super) pid: i32,
    /// The leader's start time in clock ticks since boot.
    pub(super) start_ticks: u64,
    /// Its start on the wall clock, in milliseconds since the Unix epoch
    /// (a run an earlier version started has none).
    #[serde(default)]
    pub(super) started_ms: Option<u64>,
}

impl Started {
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

/// Paths of one run's directory.
#[derive(Debug, Clone)]
pub(super) struct RunDir(pub(super) PathBuf);

impl RunDir {
    pub(super) fn spec(&self) -> PathBuf {
        self.0.join("run.json")
    }
    pub(super) fn output(&self) -> PathBuf {
        self.0.join("output")
    }
    pub(super) fn started(&self) -> PathBuf {
        self.0.join("pid.json")
    }
    pub(super) fn error(&self) -> PathBuf {
        self.0.join("error")
    }
    pub(super) fn ended(&self) -> PathBuf {
        self.0.join("exit.json")
    }
    pub(super) fn log(&self) -> PathBuf {
        self.0.join("supervisor.log")
    }
}

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

/// Writes `value` as JSON to `path`, aside first and then renamed.
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let text = serde_json::to_vec(value).map_err(io::Error::other)?;
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)
}

/// Reads a JSON record; `Ok(None)` if it does not exist (yet).
pub(super) fn read_json<T: DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// What run directory `dir` says of its start, once its supervisor
/// answered or went away (`how`, for the error if neither record is
/// there): started, or why not.
pub(super) fn start_outcome(id: &ContainerId, dir: &RunDir, how: &str) -> Result<()> {
    match read_json::<StartError>(&dir.error()) {
        Ok(Some(e)) if e.invalid => return Err(invalid_command(e.message)),
        Ok(Some(e)) => return Err(backend(io::Error::other(e.message))),
        Ok(None) => {}
        Err(e) => return Err(backend(e)),
    }
    if dir.started().exists() {
        return Ok(());
    }
    let said = std::fs::read_to_string(dir.log()).unwrap_or_default();
    Err(backend(io::Error::other(format!(
        "the supervisor {how} without starting {id}: {}",
        said.trim()
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// The records decide, whatever the supervisor said: a supervisor may
    /// start a short task, record its end and be gone before the runtime
    /// reads its answer.
    #[test]
    fn the_records_decide_a_start() {
        let root = std::env::temp_dir().join(format!("cloudai-start-{}", std::process::id()));
        let dir = RunDir(root.clone());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let id = ContainerId("run-test".into());
        std::fs::write(dir.log(), "cannot bind\n").unwrap();
        let gone = start_outcome(&id, &dir, "went away")
            .unwrap_err()
            .to_string();
        assert!(
            gone.contains("went away without starting run-test: cannot bind"),
            "{gone}"
        );
        let started = Started {
            pid: 1,
            start_ticks: 0,
            started_ms: None,
        };
        write_json(&dir.started(), &started).unwrap();
        assert!(start_outcome(&id, &dir, "went away").is_ok());
        let error = StartError {
            invalid: true,
            message: "cannot run \"nosuch\"".into(),
        };
        write_json(&dir.error(), &error).unwrap();
        assert!(matches!(
            start_outcome(&id, &dir, "answered"),
            Err(Error::InvalidInput(_))
        ));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn run_names_are_plain() {
        assert!(plain_run_name("run-18f3a-2b-7"));
        for bad in ["", "..", "a/b", "supervisor.sock", "x y"] {
            assert!(!plain_run_name(bad), "{bad:?}");
        }
    }
}
