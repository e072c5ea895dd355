//! A supervised run's directory, `<state dir>/runs/<id>/`, shared by the
//! runtime and the run's supervisor:
//!
//! | file | written by | holds |
//! |---|---|---|
//! | `run.json` | runtime, before the supervisor starts | what to run, labels, the orphan timeout |
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

use crate::host::process_start_ticks;
use crate::runtime::ExitStatus;

/// What to run, as the runtime hands it to the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RunSpec {
    pub(super) name: String,
    pub(super) image: String,
    pub(super) command: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) labels: BTreeMap<String, String>,
    /// How long the supervisor keeps the task with no worker attached.
    pub(super) orphan_timeout: Duration,
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
