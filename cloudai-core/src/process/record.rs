//! A supervised run's directory, `<state dir>/runs/<id>/`, shared by the
//! runtime and the run's supervisor:
//!
//! | file | written by | holds |
//! |---|---|---|
//! | `run.json` | runtime, before the supervisor starts | what to run, labels, its lease, time limit and grace |
//! | `output` | supervisor, as the task writes | its stdout and stderr, framed (see `frames`) |
//! | `pid.json` | supervisor, once the task started | its pid and start time |
//! | `error` | supervisor, if the task could not start | why |
//! | `exit.json` | supervisor, once the task ended | its exit status |
//! | `supervisor.sock` | supervisor | where workers attach |
//! | `supervisor.log` | supervisor | its own diagnostics |
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
    /// (`lease <ms>` on its socket). Its worker died, or lost its master.
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

/// The supervisor's socket, in the run directory.
const SOCKET: &str = "supervisor.sock";

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
    pub(super) fn socket(&self) -> PathBuf {
        self.0.join(SOCKET)
    }

    /// The socket's path by way of an open handle on the directory: a unix
    /// socket path must fit in 108 bytes, and a state directory's may not.
    /// Valid while the handle lives.
    pub(super) fn socket_via(&self) -> io::Result<(File, PathBuf)> {
        let handle = File::open(&self.0)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", handle.as_raw_fd()));
        Ok((handle, path))
    }
    pub(super) fn log(&self) -> PathBuf {
        self.0.join("supervisor.log")
    }
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

/// What run directory `dir` says of its start, `None` while it says
/// nothing yet. `exited` is whether its supervisor had exited, looked at
/// *before* the records: a supervisor may start a short task, record its
/// end and exit between two looks, and must not then be taken for one
/// that exited without starting it.
pub(super) fn start_outcome(
    id: &ContainerId,
    dir: &RunDir,
    exited: Option<std::process::ExitStatus>,
) -> Option<Result<()>> {
    match read_json::<StartError>(&dir.error()) {
        Ok(Some(e)) if e.invalid => return Some(Err(invalid_command(e.message))),
        Ok(Some(e)) => return Some(Err(backend(io::Error::other(e.message)))),
        Ok(None) => {}
        Err(e) => return Some(Err(backend(e))),
    }
    if dir.started().exists() {
        return Some(Ok(()));
    }
    let status = exited?;
    let said = std::fs::read_to_string(dir.log()).unwrap_or_default();
    Some(Err(backend(io::Error::other(format!(
        "the supervisor of {id} exited ({status}) before starting the task: {}",
        said.trim()
    )))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// A supervisor that started a short task and exited with it before
    /// the runtime looked counts as started (seen once in 1,000 array
    /// tasks: the run failed "exited before starting the task").
    #[test]
    fn a_supervisor_gone_after_starting_its_task_started_it() {
        use std::os::unix::process::ExitStatusExt;
        let root = std::env::temp_dir().join(format!("cloudai-start-{}", std::process::id()));
        let dir = RunDir(root.clone());
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let id = ContainerId("run-test".into());
        let exited = Some(std::process::ExitStatus::from_raw(0));
        assert!(start_outcome(&id, &dir, None).is_none(), "nothing said yet");
        let gone = start_outcome(&id, &dir, exited).expect("decided");
        assert!(
            gone.unwrap_err()
                .to_string()
                .contains("before starting the task"),
            "exited with no record"
        );
        let started = Started {
            pid: 1,
            start_ticks: 0,
            started_ms: None,
        };
        write_json(&dir.started(), &started).unwrap();
        assert!(matches!(start_outcome(&id, &dir, exited), Some(Ok(()))));
        let error = StartError {
            invalid: true,
            message: "cannot run \"nosuch\"".into(),
        };
        write_json(&dir.error(), &error).unwrap();
        assert!(matches!(
            start_outcome(&id, &dir, exited),
            Some(Err(Error::InvalidInput(_)))
        ));
        let _ = std::fs::remove_dir_all(&root);
    }
}
