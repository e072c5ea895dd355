//! [`SupervisedProcessRuntime`]: the process runtime for a worker that
//! must not leave processes behind when it dies. Each run gets a record
//! file in `<state dir>/runs/` (see `record`); the supervisor process of the
//! state directory (see [`super::supervisor`]) starts it and owns the
//! task's process group.
//!
//! The rules are [`ProcessRuntime`](super::ProcessRuntime)'s (own process
//! group; SIGTERM, grace, SIGKILL; clean environment; the image is
//! ignored; limits are not enforced), plus:
//!
//! - **Runs outlive the worker, not its absence.** A runtime attaches to
//!   every run it touches; [`list`](ContainerRuntime::list) finds the runs
//!   an earlier worker started in the same state directory, so a restarted
//!   worker adopts them. Each run holds a lease its worker renews
//!   ([`renew_lease`](ContainerRuntime::renew_lease)); once it runs out,
//!   its supervisor stops the task, as it does at the task's time limit.
//! - **Output is kept whole on disk**, each read from stdout or stderr a
//!   frame naming its stream, until the run is removed; `output` follows
//!   the file from its start until the run ended and the file is read.
//! - **When the leader exits, its group goes with it**: processes it left
//!   in the background are killed.
//! - **Against pid reuse**, the runtime signals a group directly (when its
//!   supervisor is gone) only while the recorded pid still has the recorded
//!   start time.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::follow::{follow_file, Outcome};
use super::record::{start_outcome, RunFiles, RunSpec, Started};
use super::supervisor_link::SupervisorLink;
use super::workdirs::Workdirs;
use super::{
    backend, check_command, invalid_command, run_env, signal_group, unsupported, DRAIN_TIMEOUT,
    KILL_TIMEOUT,
};
use crate::model::{ContainerOption, ContainerOptions};
use crate::output::CHANNEL;
use crate::runtime::{
    refuse_unsupported, ContainerId, ContainerInfo, ContainerRuntime, ContainerSpec, ExitStatus,
    Follow,
};
use crate::sync::lock;
use crate::{Error, Result};

/// How long `start` waits for the supervisor to start the task.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a run without a supervisor is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long an answer to `stop`, `kill` or `supervises` is waited for
/// before the runtime does without (signals the group itself, or takes the
/// run for not supervised).
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// How many times a start is asked of a supervisor that went away before
/// it answered (one on its way out as the runtime connected).
const START_TRIES: usize = 3;

/// Makes ids unique within this process (the time makes them unique
/// across restarts).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A run this runtime is attached to.
#[derive(Debug)]
struct Attached {
    started: Started,
    ended: watch::Receiver<Outcome>,
}

/// Runs each task as a local process under the supervisor process of its
/// state directory, which keeps it independent of the worker: runs survive the worker's death, a
/// restarted worker finds them with `list`, and a run whose lease from its
/// worker runs out is stopped by its supervisor, as is one past its time
/// limit. Otherwise the rules of [`ProcessRuntime`](super::ProcessRuntime)
/// apply.
#[derive(Debug)]
pub struct SupervisedProcessRuntime {
    runs: PathBuf,
    supervisor: Arc<SupervisorLink>,
    orphan_timeout: Duration,
    attached: Mutex<HashMap<ContainerId, Arc<Attached>>>,
    workdirs: Workdirs,
}

impl SupervisedProcessRuntime {
    /// A runtime keeping its runs under `<state_dir>/runs`, starting their
    /// supervisor (when none runs there) as `supervisor[0] supervisor[1..]
    /// <state_dir>/runs` (for the worker binary: its own path and its
    /// supervisor-mode argument); a run started without a lease of its own
    /// gets `orphan_timeout`.
    pub fn new(
        state_dir: &Path,
        supervisor: Vec<OsString>,
        orphan_timeout: Duration,
    ) -> Result<Self> {
        if supervisor.is_empty() {
            return Err(invalid_command("the supervisor command is empty".into()));
        }
        let runs = state_dir.join("runs");
        std::fs::create_dir_all(&runs).map_err(backend)?;
        Ok(SupervisedProcessRuntime {
            supervisor: Arc::new(SupervisorLink::new(runs.clone(), supervisor)),
            workdirs: Workdirs::new(&runs),
            runs,
            orphan_timeout,
            attached: Mutex::new(HashMap::new()),
        })
    }

    /// The files of run `id`, if `id` can name one.
    fn files(&self, id: &ContainerId) -> Option<RunFiles> {
        RunFiles::new(&self.runs, &id.0)
    }

    /// The attachment to run `id`, attaching now if this runtime has not
    /// yet (a run an earlier worker started). `None` if there is no such
    /// run.
    async fn attach(&self, id: &ContainerId) -> Result<Option<Arc<Attached>>> {
        if let Some(a) = lock(&self.attached).get(id) {
            return Ok(Some(a.clone()));
        }
        let Some(files) = self.files(id) else {
            return Ok(None);
        };
        let record = files.read().map_err(backend)?;
        Ok(record
            .and_then(|r| r.started)
            .map(|started| self.attach_started(id, files, started)))
    }

    /// The attachment to run `id`, started as `started`, attaching now if
    /// this runtime has not yet.
    fn attach_started(&self, id: &ContainerId, files: RunFiles, started: Started) -> Arc<Attached> {
        let mut map = lock(&self.attached);
        if let Some(a) = map.get(id) {
            return a.clone();
        }
        let (tx, rx) = watch::channel(None);
        let attached = Arc::new(Attached { started, ended: rx });
        let (supervisor, name) = (self.supervisor.clone(), id.0.clone());
        tokio::spawn(async move {
            // Answered once the end is recorded, with the exit; at once
            // where the supervisor does not supervise the run: then, as
            // when it is gone, the record and the process tell.
            let said = supervisor.ask("watch", &name, "").await;
            let status = said
                .ok()
                .flatten()
                .and_then(|words| serde_json::from_str(words.strip_prefix("ended ")?).ok());
            let outcome = match status {
                Some(status) => Ok(status),
                None => watch_end(&files, started).await,
            };
            tx.send_replace(Some(outcome));
        });
        map.insert(id.clone(), attached.clone());
        attached
    }

    /// Whether the supervisor still supervises run `name` (it may be
    /// draining its output after the task's exit).
    async fn supervises(&self, name: &str) -> bool {
        let answer = tokio::time::timeout(ANSWER_WAIT, self.supervisor.ask("supervises", name, ""));
        matches!(answer.await, Ok(Ok(Some(word))) if word == "yes")
    }

    /// Has the supervisor carry out `request` (`stop`, `kill`) on run
    /// `id`; false if it does not supervise the run (any more).
    async fn command(&self, id: &ContainerId, request: &str, more: &str) -> bool {
        let answer = tokio::time::timeout(ANSWER_WAIT, self.supervisor.ask(request, &id.0, more));
        matches!(answer.await, Ok(Ok(Some(word))) if word == "ok")
    }

    /// Signals the run's group directly, if its leader is still the
    /// recorded process (the supervisor is gone).
    fn signal_directly(run: &Attached, signal: Signal) -> Result<()> {
        if run.started.alive() {
            signal_group(run.started.pid, signal)?;
        }
        Ok(())
    }

    async fn start_run(
        &self,
        id: &ContainerId,
        files: &RunFiles,
        spec: &ContainerSpec,
    ) -> Result<Started> {
        let workdir = match &spec.options.workdir {
            Some(dir) => PathBuf::from(dir),
            None => {
                let dir = files.workdir();
                self.workdirs.make(dir).map_err(backend)?;
                if let Some(u) = spec.options.user {
                    std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid)).map_err(backend)?;
                }
                dir.to_path_buf()
            }
        };
        let record = RunSpec {
            workdir: Some(workdir),
            user: spec.options.user,
            name: spec.name.clone(),
            image: spec.image.clone(),
            command: spec.command.clone(),
            env: run_env(spec),
            labels: spec.labels.clone(),
            orphan_timeout: spec.lease.unwrap_or(self.orphan_timeout),
            time_limit: spec.time_limit,
            grace: spec.grace,
        };
        let first = files.create(&record).map_err(backend)?;
        // The supervisor answers once the start is recorded, carrying it
        // (or goes away: then the record decides).
        for _ in 0..START_TRIES {
            let said =
                tokio::time::timeout(START_TIMEOUT, self.supervisor.ask("start", &id.0, &first))
                    .await
                    .map_err(|_| {
                        Error::Timeout(format!(
                            "the supervisor did not start {id} within {START_TIMEOUT:?}"
                        ))
                    })??;
            match said.as_deref() {
                Some(words) if words.starts_with("started") => {
                    return match Started::from_words(words) {
                        Some(started) => Ok(started),
                        None => start_outcome(id, files, "answered"),
                    }
                }
                Some(_) => return start_outcome(id, files, "failed"),
                // Gone before it read the request, or while it started it.
                None if !files.holds_only(&first) => break,
                None => {}
            }
        }
        start_outcome(id, files, "went away")
    }
}

/// How long after the task's leader is gone its exit record may take: the
/// supervisor drains the output for up to [`DRAIN_TIMEOUT`] first (and a
/// loaded machine adds its own delay).
const RECORD_WAIT: Duration = DRAIN_TIMEOUT.saturating_add(Duration::from_secs(2));

/// Waits for the end of a run whose supervisor is gone (or about to be):
/// its recorded exit, or, if the supervisor died without one, the end of
/// the process itself.
async fn watch_end(files: &RunFiles, started: Started) -> std::result::Result<ExitStatus, String> {
    let mut gone_since = None;
    loop {
        match files.read() {
            Ok(Some(record)) => {
                if let Some(ended) = record.ended {
                    return Ok(ended.status);
                }
            }
            Ok(None) => return Err("the run's record is gone".to_string()),
            Err(e) => return Err(e.to_string()),
        }
        if gone_since.is_none() && !started.alive() {
            gone_since = Some(tokio::time::Instant::now());
        }
        if gone_since.is_some_and(|since| since.elapsed() > RECORD_WAIT) {
            return Err(format!(
                "the supervisor ended without recording the exit of the task (pid {})",
                started.pid
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the run's end is published within `within`.
async fn ended_within(ended: &mut watch::Receiver<Outcome>, within: Duration) -> bool {
    tokio::time::timeout(within, ended.wait_for(Option::is_some))
        .await
        .is_ok()
}

fn fresh_id() -> ContainerId {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    ContainerId(format!("run-{nanos:x}-{:x}-{n}", std::process::id()))
}

#[async_trait]
impl ContainerRuntime for SupervisedProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn unsupported(&self, options: &ContainerOptions) -> Vec<ContainerOption> {
        unsupported(options)
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<ContainerId> {
        check_command(spec)?;
        refuse_unsupported(self, &spec.options)?;
        let id = fresh_id();
        let files = self
            .files(&id)
            .ok_or_else(|| backend(io::Error::other(format!("bad run id {id}"))))?;
        let started = match self.start_run(&id, &files, spec).await {
            Ok(started) => started,
            Err(e) => {
                let _ = files.remove();
                return Err(e);
            }
        };
        self.attach_started(&id, files, started);
        tracing::debug!(%id, name = %spec.name, image = %spec.image, "started supervised process");
        Ok(id)
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitStatus> {
        let run = self
            .attach(id)
            .await?
            .ok_or_else(|| Error::not_found("container", id))?;
        let mut ended = run.ended.clone();
        let outcome = ended.wait_for(Option::is_some).await;
        match outcome.as_deref() {
            Ok(Some(Ok(status))) => Ok(*status),
            Ok(Some(Err(message))) => Err(backend(io::Error::other(message.clone()))),
            Ok(None) | Err(_) => Err(Error::Unavailable(format!(
                "container {id}: the task watching its supervisor is gone (runtime shut down?)"
            ))),
        }
    }

    async fn output(&self, id: &ContainerId) -> Result<Follow> {
        let (files, run) = match (self.files(id), self.attach(id).await?) {
            (Some(files), Some(run)) => (files, run),
            _ => return Err(Error::not_found("container", id)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL);
        let path = files.output().to_owned();
        tokio::spawn(follow_file(path, run.ended.clone(), tx));
        Ok(rx)
    }

    /// Unknown ids (never started, or already removed) succeed.
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        let Some(run) = self.attach(id).await? else {
            return Ok(());
        };
        let mut ended = run.ended.clone();
        if ended.borrow().is_some() {
            return Ok(());
        }
        let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        if !self.command(id, "stop", &ms.to_string()).await {
            Self::signal_directly(&run, Signal::SIGTERM)?;
        }
        if ended_within(&mut ended, grace + POLL).await {
            return Ok(());
        }
        if !self.command(id, "kill", "").await {
            Self::signal_directly(&run, Signal::SIGKILL)?;
        }
        if ended_within(&mut ended, KILL_TIMEOUT).await {
            return Ok(());
        }
        Err(Error::Timeout(format!(
            "container {id} (pid {}) still running {KILL_TIMEOUT:?} after SIGKILL",
            run.started.pid
        )))
    }

    /// Unknown ids (never started, or already removed) succeed.
    async fn remove(&self, id: &ContainerId) -> Result<()> {
        let Some(files) = self.files(id).filter(RunFiles::exists) else {
            return Ok(());
        };
        let running = match self.attach(id).await {
            Ok(run) => run.filter(|r| r.ended.borrow().is_none()),
            Err(e) => {
                // A record that cannot be read must not keep the run for
                // ever: what its supervisor runs under the name goes.
                tracing::warn!(%id, error = %e, "removing a run whose record cannot be read");
                self.command(id, "kill", "").await;
                None
            }
        };
        // Only a run that had ended leaves its directory for a next run:
        // one killed now may not be gone yet.
        let ended = running.is_none();
        if let Some(run) = running {
            if self.command(id, "kill", "").await {
                // Its supervisor records the end in the record: not
                // while the record goes.
                ended_within(&mut run.ended.clone(), KILL_TIMEOUT).await;
            } else {
                Self::signal_directly(&run, Signal::SIGKILL)?;
            }
        }
        lock(&self.attached).remove(id);
        if ended {
            self.workdirs.keep(files.workdir());
        }
        files.remove().map_err(backend)
    }

    async fn list(&self, key: &str, value: &str) -> Result<Vec<ContainerInfo>> {
        let entries = match std::fs::read_dir(&self.runs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(backend(e)),
        };
        let mut found = Vec::new();
        // Beside the records: runs' output, the supervisor's own files.
        let runs = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| RunFiles::of_record(&e.path()));
        for (name, files) in runs {
            let record = match files.read() {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(run = %name, error = %e, "skipping an unreadable run record");
                    continue;
                }
            };
            if record.spec.labels.get(key).is_none_or(|v| v != value) {
                continue;
            }
            // Until the end is recorded the run is not over: its task may
            // have exited while the supervisor still drains the output.
            let running = record.ended.is_none()
                && (record.started.is_some_and(|s| s.alive()) || self.supervises(&name).await);
            found.push(ContainerInfo {
                id: ContainerId(name),
                labels: record.spec.labels,
                running,
                started_at: record
                    .started
                    .map(|s| crate::model::Timestamp::from_millis(s.started_ms)),
            });
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    /// Tells the supervisor the new lease of every run not yet ended, in
    /// one write, less the time the telling took until then (a supervisor
    /// counts it from when it reads it).
    async fn renew_lease(&self, lease: Duration) -> Result<()> {
        let asked = tokio::time::Instant::now();
        let runs: Vec<ContainerId> = lock(&self.attached)
            .iter()
            .filter(|(_, run)| run.ended.borrow().is_none())
            .map(|(id, _)| id.clone())
            .collect();
        if runs.is_empty() {
            return Ok(());
        }
        self.supervisor
            .tell(|| {
                let left = lease.saturating_sub(asked.elapsed());
                let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
                runs.iter().map(|id| format!("lease {id} {ms}\n")).collect()
            })
            .await?;
        Ok(())
    }
}
