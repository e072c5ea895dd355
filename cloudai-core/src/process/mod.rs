//! [`ProcessRuntime`]: the embedded default [`ContainerRuntime`], which runs a
//! task's command as a local child process instead of a container.
//!
//! - **Own process group.** Every child is started as the leader of a new
//!   process group, so signals sent by [`stop`](ContainerRuntime::stop) and
//!   [`remove`](ContainerRuntime::remove) reach everything it started
//!   (shell pipelines, background jobs), not just the leader.
//! - **SIGTERM, grace, SIGKILL.** `stop` sends SIGTERM to the group, waits up
//!   to the grace period for the leader to exit, then sends SIGKILL to the
//!   group. `remove` sends SIGKILL to the group (which also reaches
//!   leftovers that outlived the leader; Linux does not reuse the leader's
//!   pid while its group has members) and forgets the container. Stopping
//!   or removing an id this runtime does not know succeeds.
//! - **Bounded output keeps the end.** stdout and stderr go into one
//!   [`OutputLog`] that keeps the last [`DEFAULT_LOG_LIMIT`] bytes (see
//!   [`ProcessRuntime::with_log_limit`]), each chunk marked with its
//!   stream. Each stream keeps its own order; the two are interleaved in the
//!   order their readers receive the bytes, which is close to, but not
//!   exactly, the order the program wrote them. Output
//!   that arrives more than [`DRAIN_TIMEOUT`] after the leader exited (from a
//!   background process still holding the pipes) is not captured.
//! - **The image is ignored.** It is recorded for diagnostics only; the
//!   command must name a program on the worker (resolved through the
//!   worker's own `PATH` unless the spec sets `PATH`). An empty command is
//!   refused, as there is no image default to fall back to.
//! - **Limits are not enforced.** The spec's resource limits are accepted
//!   (the scheduler still accounts for them) but not applied to the
//!   process; OOM kills are never reported.
//! - **Clean environment.** The child gets only `PATH` (from the worker's
//!   environment, if set) and the spec's variables.
//!
//! Ids handed out by this runtime are only meaningful to the instance that
//! started them: nothing survives a restart of the worker.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod command;
mod follow;
mod frames;
mod one_run;
mod record;
mod supervised;
pub mod supervisor;
mod supervisor_link;
mod workdirs;

pub use supervised::SupervisedProcessRuntime;

use command::{
    backend, check_command, invalid_command, run_env, signal_group, task_command, to_exit_status,
    unsupported,
};

use crate::model::{ContainerOption, ContainerOptions};
use crate::output::{OutputFrom, OutputLog, OutputStream};
use crate::runtime::{
    refuse_unsupported, ContainerId, ContainerInfo, ContainerRuntime, ContainerSpec, ExitStatus,
    Follow,
};
use crate::sync::lock;
use crate::{Error, Result};

/// Bytes of output kept per container unless configured otherwise (64 MiB).
pub const DEFAULT_LOG_LIMIT: usize = 64 << 20;

/// How long, after the leader exited, the output readers may keep draining
/// the pipes before the exit is reported anyway (a background process can
/// hold the pipes open indefinitely).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// How long `stop` waits for the exit after SIGKILL before giving up with
/// [`Error::Timeout`] (a process stuck in uninterruptible sleep).
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// Name used in errors.
const BACKEND: &str = "process";

/// Makes ids unique across every runtime instance in this process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Where a child is in its life, as published by its reaper task.
#[derive(Debug, Clone)]
enum State {
    Running,
    Exited(ExitStatus),
    /// Waiting for the child failed; the message says why.
    Failed(String),
}

impl State {
    fn is_running(&self) -> bool {
        matches!(self, State::Running)
    }
}

/// What the runtime keeps per container.
#[derive(Debug)]
struct Entry {
    name: String,
    image: String,
    labels: BTreeMap<String, String>,
    /// The leader's pid, which is also the process group id.
    pid: i32,
    state: watch::Receiver<State>,
    output: Arc<OutputLog>,
}

/// Runs each container's command as a local child process in its own process
/// group. See the [module documentation](self) for the rules.
#[derive(Debug)]
pub struct ProcessRuntime {
    log_limit: usize,
    entries: Mutex<HashMap<ContainerId, Entry>>,
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessRuntime {
    /// A runtime keeping [`DEFAULT_LOG_LIMIT`] bytes of output per container.
    pub fn new() -> Self {
        Self::with_log_limit(DEFAULT_LOG_LIMIT)
    }

    /// A runtime keeping the last `bytes` bytes of output per container.
    pub fn with_log_limit(bytes: usize) -> Self {
        ProcessRuntime {
            log_limit: bytes,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Bytes of output kept per container.
    pub fn log_limit(&self) -> usize {
        self.log_limit
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<ContainerId, Entry>> {
        lock(&self.entries)
    }

    /// The pid and state receiver of `id`, if known.
    fn handle(&self, id: &ContainerId) -> Option<(i32, watch::Receiver<State>)> {
        self.entries().get(id).map(|e| (e.pid, e.state.clone()))
    }
}

/// Waits until the state leaves `Running`. A reaper that went away without
/// publishing (its tokio runtime shut down) counts as exited.
async fn exited(state: &mut watch::Receiver<State>) {
    let _ = state.wait_for(|s| !s.is_running()).await;
}

/// Copies a pipe into the output log until EOF or a read error.
fn spawn_reader<R>(mut pipe: R, stream: OutputStream, output: Arc<OutputLog>) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => output.push(stream, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading process output failed");
                    break;
                }
            }
        }
    })
}

#[async_trait]
impl ContainerRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn unsupported(&self, options: &ContainerOptions) -> Vec<ContainerOption> {
        unsupported(options)
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<ContainerId> {
        check_command(spec)?;
        refuse_unsupported(self, &spec.options)?;
        let Some((program, args)) = spec.command.split_first() else {
            return Err(invalid_command("empty command".into()));
        };
        let workdir = spec.options.workdir.as_deref().map(Path::new);
        let mut cmd = Command::from(task_command(
            program,
            args,
            &run_env(spec),
            workdir,
            spec.options.user,
        ));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::InvalidInput => {
                invalid_command(format!("cannot run {program:?}: {e}"))
            }
            _ => backend(io::Error::new(
                e.kind(),
                format!("spawning {program:?} failed: {e}"),
            )),
        })?;
        let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
            // Only possible if the child was already reaped, which nobody
            // else can do; report rather than panic.
            return Err(backend(io::Error::other(format!(
                "{program:?} started without a pid"
            ))));
        };

        let output = OutputLog::new(self.log_limit);
        let mut readers = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            readers.push(spawn_reader(out, OutputStream::Stdout, output.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(spawn_reader(err, OutputStream::Stderr, output.clone()));
        }
        let drained = output.clone();

        let (tx, rx) = watch::channel(State::Running);
        let label = program.clone();
        tokio::spawn(async move {
            let waited = child.wait().await;
            // Let the readers reach EOF so the logs are complete when the
            // exit is published, but not forever: a background process may
            // hold the pipes open.
            let drain = async {
                for reader in readers.iter_mut() {
                    let _ = reader.await;
                }
            };
            if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
                tracing::debug!(pid, program = %label, "output still open after exit; not capturing more");
                for reader in &readers {
                    reader.abort();
                }
            }
            drained.close();
            let state = match waited {
                Ok(status) => State::Exited(to_exit_status(status)),
                Err(e) => {
                    tracing::warn!(pid, program = %label, error = %e, "waiting for process failed");
                    State::Failed(format!("waiting for {label:?} (pid {pid}) failed: {e}"))
                }
            };
            tx.send_replace(state);
        });

        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let id = ContainerId(format!("proc-{pid}-{n}"));
        tracing::debug!(%id, pid, name = %spec.name, image = %spec.image, "started process");
        self.entries().insert(
            id.clone(),
            Entry {
                name: spec.name.clone(),
                image: spec.image.clone(),
                labels: spec.labels.clone(),
                pid,
                state: rx,
                output,
            },
        );
        Ok(id)
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitStatus> {
        let (_, mut state) = self
            .handle(id)
            .ok_or_else(|| Error::not_found("container", id))?;
        let result = state.wait_for(|s| !s.is_running()).await;
        match result.as_deref() {
            Ok(State::Exited(status)) => Ok(*status),
            Ok(State::Failed(message)) => Err(backend(io::Error::other(message.clone()))),
            Ok(State::Running) | Err(_) => Err(Error::Unavailable(format!(
                "container {id}: the task watching the process is gone (runtime shut down?)"
            ))),
        }
    }

    async fn output(&self, id: &ContainerId) -> Result<Follow> {
        let output = self
            .entries()
            .get(id)
            .map(|e| e.output.clone())
            .ok_or_else(|| Error::not_found("container", id))?;
        Ok(output.follow(OutputFrom::Offset(0), true))
    }

    /// Unknown ids (never started here, or already removed) succeed.
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        let Some((pid, mut state)) = self.handle(id) else {
            return Ok(());
        };
        if !state.borrow().is_running() {
            return Ok(());
        }
        tracing::debug!(%id, pid, ?grace, "stopping process group");
        signal_group(pid, Signal::SIGTERM)?;
        if tokio::time::timeout(grace, exited(&mut state))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tracing::debug!(%id, pid, "grace period over; killing process group");
        signal_group(pid, Signal::SIGKILL)?;
        tokio::time::timeout(KILL_TIMEOUT, exited(&mut state))
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "container {id} (pid {pid}) still running {KILL_TIMEOUT:?} after SIGKILL"
                ))
            })
    }

    /// Unknown ids (never started here, or already removed) succeed.
    async fn remove(&self, id: &ContainerId) -> Result<()> {
        let Some(entry) = self.entries().remove(id) else {
            return Ok(());
        };
        tracing::debug!(
            %id,
            pid = entry.pid,
            name = %entry.name,
            image = %entry.image,
            running = entry.state.borrow().is_running(),
            "removing process"
        );
        // Also reaches background processes that outlived the leader. The
        // reaper task still owns the child and reaps it.
        if let Err(e) = signal_group(entry.pid, Signal::SIGKILL) {
            tracing::warn!(%id, pid = entry.pid, error = %e, "killing process group failed");
        }
        Ok(())
    }

    async fn list(&self, key: &str, value: &str) -> Result<Vec<ContainerInfo>> {
        let mut found: Vec<ContainerInfo> = self
            .entries()
            .iter()
            .filter(|(_, e)| e.labels.get(key).is_some_and(|v| v == value))
            .map(|(id, e)| ContainerInfo {
                id: id.clone(),
                labels: e.labels.clone(),
                running: e.state.borrow().is_running(),
                started_at: None,
            })
            .collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::command::resolve;

    #[test]
    fn programs_are_found_in_the_path_given() {
        let dir = std::env::temp_dir().join(format!("cloudai-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("not-executable");
        std::fs::write(&plain, "").unwrap();
        let path = std::env::join_paths([dir.clone(), "/bin".into(), "/usr/bin".into()]).unwrap();
        let sh = resolve("sh", Some(&path));
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            resolve("not-executable", Some(&path)),
            std::path::PathBuf::from("not-executable")
        );
        assert_eq!(
            resolve("./x/y", Some(&path)),
            std::path::PathBuf::from("./x/y")
        );
        assert_eq!(
            resolve("no-such-program", None),
            std::path::PathBuf::from("no-such-program")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
