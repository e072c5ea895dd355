//! # cloudai-docker
//!
//! [`DockerRuntime`]: the CloudAI-rs [`ContainerRuntime`] on the Docker
//! Engine API, through bollard. Containers get the task's labels
//! (`cloudai.task_id`, `cloudai.worker_id`), its CPU (nano-CPUs), memory
//! and GPU limits, env and command. Stop is SIGTERM, then SIGKILL after the
//! grace (a cancel's grace period). Every step is idempotent: stopping or removing a
//! container that is gone succeeds. The API version is negotiated with the
//! daemon, so daemons as old as Docker 20.10 (API 1.41) work.
//!
//! Containers run under the daemon's init by default (`docker run --init`:
//! docker-init, a tini, as PID 1, bind-mounted by the daemon, so it works in
//! a `FROM scratch` image). Without it the task's command is PID 1, and the
//! kernel drops a signal PID 1 has no handler for: SIGTERM would do nothing,
//! and every stop would wait out its grace and end by SIGKILL. Turn it off
//! with [`DockerRuntime::with_init`]; [`DockerRuntime::check_init`] tells
//! whether the daemon has an init.
//!
//! Containers outlive their worker, so a restarted worker adopts them. To
//! bound that, give the runtime a [`Watchdog`]
//! ([`DockerRuntime::with_watchdog`]): a small process per worker (see
//! [`watchdog`]) that holds the lease the worker renews
//! ([`renew_lease`](ContainerRuntime::renew_lease)) and stops the worker's
//! containers once it runs out, so a worker that dies and stays down
//! leaves nothing running by the time its master may run its tasks
//! elsewhere. Without one, leases are ignored and containers run on until
//! a worker stops them, as before.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, DeviceRequest, HostConfig, SystemInfo,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use cloudai_core::model::{ContainerOption, ContainerOptions, Gpu, Timestamp, ValidationError};
use cloudai_core::output::{OutputFrom, OutputLog, CHANNEL};
use cloudai_core::runtime::{
    ContainerId, ContainerInfo, ContainerRuntime, ContainerSpec, ExitStatus, Follow,
};
use cloudai_core::{Error, Result};
use futures_util::StreamExt;
use tracing::warn;

mod output;
mod pull;
mod usage;

/// A container this runtime started: its output, and what it used.
#[derive(Debug)]
struct Started {
    log: Arc<OutputLog>,
    usage: usage::Sampled,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
pub mod watchdog;

pub use pull::DEFAULT_PULL_TIMEOUT;
pub use watchdog::Watchdog;

/// The Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// Named in errors ("image X not present on worker W").
    worker: String,
    /// Bytes of output kept per container it started.
    log_limit: usize,
    /// How long pulling a missing image may take.
    pull_timeout: Duration,
    /// Whether containers run under the daemon's init.
    init: bool,
    /// The containers it started, until removed.
    started: Arc<Mutex<HashMap<ContainerId, Started>>>,
    /// The watchdog holding the worker's lease, if it has one.
    watchdog: Option<Arc<watchdog::Client>>,
}

/// Bytes of output kept per container unless configured otherwise (64 MiB).
pub const DEFAULT_LOG_LIMIT: usize = 64 << 20;

fn backend(e: DockerError) -> Error {
    match e {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } => Error::NotFound {
            kind: "container",
            id: message,
        },
        DockerError::IOError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::RequestTimeoutError => {
            Error::Unavailable(format!("Docker daemon unreachable: {e}"))
        }
        other => Error::Backend {
            backend: "docker",
            source: Box::new(other),
        },
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Why the daemon cannot run containers under an init, if it cannot (see
/// [`DockerRuntime::check_init`]).
fn missing_init(info: &SystemInfo) -> Option<String> {
    let binary = info.init_binary.as_deref().unwrap_or_default().trim();
    if binary.is_empty() {
        return Some("the Docker daemon names no init binary".into());
    }
    let commit = info.init_commit.as_ref().and_then(|c| c.id.as_deref());
    if commit.map(str::trim) == Some("N/A") {
        return Some(format!(
            "the Docker daemon has no working init: it could not run its init binary {binary:?}"
        ));
    }
    None
}

/// Docker container names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
fn container_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl DockerRuntime {
    /// Connects to the local daemon (`DOCKER_HOST` or the default socket),
    /// negotiates the API version and pings it. An unreachable daemon is a
    /// clear [`Error::Unavailable`].
    pub async fn connect(worker: impl Into<String>) -> Result<DockerRuntime> {
        let unreachable = |e: DockerError| {
            Error::Unavailable(format!(
                "no Docker daemon answers (is dockerd running and is DOCKER_HOST right?): {e}"
            ))
        };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| Error::Unavailable("Docker daemon did not answer within 5 s".into()))?
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(DockerRuntime {
            docker,
            worker: worker.into(),
            log_limit: DEFAULT_LOG_LIMIT,
            pull_timeout: DEFAULT_PULL_TIMEOUT,
            init: true,
            started: Arc::default(),
            watchdog: None,
        })
    }

    /// Guards the containers it starts with `watchdog` (see [`watchdog`]):
    /// each start first sends the watchdog the spec's lease (or the
    /// watchdog's default lease), and fails if no watchdog can be reached
    /// or started; each [`renew_lease`](ContainerRuntime::renew_lease)
    /// sends the new lease; containers get the label
    /// [`watchdog::LABEL_WATCHDOG`]. Once a lease runs out without a
    /// renewal, the watchdog stops them, whether this runtime (its
    /// worker) is still there or not. Without a watchdog (the default) a
    /// container runs until a worker stops it, and leases are ignored.
    pub fn with_watchdog(mut self, watchdog: Watchdog) -> Self {
        self.watchdog = Some(Arc::new(watchdog::Client::new(
            watchdog,
            self.worker.clone(),
        )));
        self
    }

    /// Reaches the watchdog now, starting it if none answers (otherwise
    /// that happens at the first start or renewal), so a watchdog that
    /// cannot start is an error at once. Without a watchdog, succeeds.
    pub async fn connect_watchdog(&self) -> Result<()> {
        match &self.watchdog {
            Some(w) => w.connect().await,
            None => Ok(()),
        }
    }

    /// Keeps the last `bytes` of each container's output (default
    /// [`DEFAULT_LOG_LIMIT`]).
    pub fn with_log_limit(mut self, bytes: usize) -> Self {
        self.log_limit = bytes;
        self
    }

    /// Gives up pulling a missing image after `timeout` (default
    /// [`DEFAULT_PULL_TIMEOUT`]); the task then fails, saying so.
    pub fn with_pull_timeout(mut self, timeout: Duration) -> Self {
        self.pull_timeout = timeout;
        self
    }

    /// Runs each container under the daemon's init when `on` (the
    /// default), as `docker run --init` does: the init is PID 1 and passes
    /// SIGTERM on to the task's command, so a stop ends the command at once
    /// instead of waiting out the grace and killing it. A command killed by
    /// SIGTERM then exits with 143 (128 + 15), as the init reports it. A
    /// command that does not exist makes the init exit with 127 instead of
    /// failing the start. Off, the command is PID 1 itself and gets the
    /// signals only if it handles them. Call [`check_init`](Self::check_init)
    /// once to learn whether the daemon has an init.
    pub fn with_init(mut self, on: bool) -> Self {
        self.init = on;
        self
    }

    /// Whether containers run under the daemon's init (see
    /// [`with_init`](Self::with_init)).
    pub fn init(&self) -> bool {
        self.init
    }

    /// With init on, asks the daemon (`docker info`) whether it has an init
    /// binary, and fails with a message telling the operator what to do when
    /// it has none. With init off, succeeds without asking.
    ///
    /// The daemon names its init binary (`InitBinary`) and runs it with
    /// `--version` for `InitCommit`: a daemon that could not run it reports
    /// the commit as `N/A` (Docker 20.10 to 22.x), which fails the check. An
    /// empty commit passes: Debian's docker-init reports no commit while it
    /// works, and newer daemons leave it empty, found or not. There a
    /// missing init shows at the first start, which fails naming
    /// `--no-init`.
    pub async fn check_init(&self) -> Result<()> {
        if !self.init {
            return Ok(());
        }
        let info = tokio::time::timeout(Duration::from_secs(5), self.docker.info())
            .await
            .map_err(|_| Error::Unavailable("Docker daemon did not answer within 5 s".into()))?
            .map_err(backend)?;
        match missing_init(&info) {
            None => Ok(()),
            Some(why) => Err(Error::Backend {
                backend: "docker",
                source: format!(
                    "{why}: containers cannot run under an init (docker run --init); \
                     install docker-init (tini) for the daemon, or run the worker with \
                     --no-init (tasks then ignore SIGTERM unless they handle it, and a \
                     cancel waits out its grace)"
                )
                .into(),
            }),
        }
    }

    fn started(&self) -> std::sync::MutexGuard<'_, HashMap<ContainerId, Started>> {
        self.started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure `image` is present, pulling it only if it is not;
    /// how long a pull took.
    async fn ensure_image(&self, image: &str) -> Result<Option<Duration>> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(None),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(backend(e)),
        }
        let missing = |why: String| {
            Error::InvalidInput(ValidationError::Invalid {
                field: "image",
                reason: format!(
                    "image {image} not present on worker {} and could not be pulled: {why}",
                    self.worker
                ),
            })
        };
        let began = std::time::Instant::now();
        pull::pull(&self.docker, image, self.pull_timeout)
            .await
            .map_err(missing)?;
        Ok(Some(began.elapsed()))
    }

    /// Creates the container for `spec` without starting it (what
    /// [`ContainerRuntime::start`] starts), for a caller that inspects it
    /// first; the image must be present.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String> {
        let limits = spec.limits;
        // The run's own devices by id: a count would make the daemon hand
        // out devices 0..n-1 to every run.
        let device_ids = Gpu::device_ids(&spec.gpus);
        let gpus = (!device_ids.is_empty()).then(|| {
            vec![DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(device_ids.clone()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            }]
        });
        // A run without GPUs gets `void`, so an image saying `all` (as the
        // CUDA images do) under an NVIDIA default runtime sees none.
        let mut env = spec.env.clone();
        env.insert(
            "NVIDIA_VISIBLE_DEVICES".into(),
            if device_ids.is_empty() {
                "void".into()
            } else {
                device_ids.join(",")
            },
        );
        let mb = |v: u64| i64::try_from(v.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let host = HostConfig {
            nano_cpus: (limits.cpu_millis > 0).then(|| {
                i64::try_from(limits.cpu_millis.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
            }),
            // Memory limit with no extra swap, so the limit is the limit.
            memory: (limits.memory_mb > 0).then(|| mb(limits.memory_mb)),
            memory_swap: (limits.memory_mb > 0).then(|| mb(limits.memory_mb)),
            device_requests: gpus,
            init: Some(self.init),
            binds: (!spec.options.mounts.is_empty()).then(|| {
                spec.options
                    .mounts
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            }),
            tmpfs: (!spec.options.tmpfs.is_empty()).then(|| {
                spec.options
                    .tmpfs
                    .iter()
                    .map(|t| {
                        let size = t
                            .size_bytes
                            .map(|b| format!("size={b}"))
                            .unwrap_or_default();
                        (t.target.clone(), size)
                    })
                    .collect()
            }),
            shm_size: spec
                .options
                .shm_size
                .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        let mut labels = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>();
        if let Some(w) = &self.watchdog {
            labels.insert(watchdog::LABEL_WATCHDOG.to_string(), w.label());
        }
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.options.workdir.clone(),
            user: spec.options.user.map(|u| u.to_string()),
            labels: Some(labels),
            host_config: Some(host),
            ..Default::default()
        };
        let name = container_name(&spec.name);
        let options = || {
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            })
        };
        match self.docker.create_container(options(), body.clone()).await {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => {
                // A container of that name is left from an earlier run of
                // this very assignment: replace it.
                warn!(%name, "replacing a leftover container with the same name");
                self.remove(&ContainerId(name.clone())).await?;
                Ok(self
                    .docker
                    .create_container(options(), body)
                    .await
                    .map_err(backend)?
                    .id)
            }
            // 400: the daemon refuses the request itself (for example a
            // memory limit under its 6 MB minimum).
            Err(DockerError::DockerResponseServerError {
                status_code: 400,
                message,
            }) => Err(Error::InvalidInput(ValidationError::Invalid {
                field: "container",
                reason: format!(
                    "Docker refused the container on worker {}: {message}",
                    self.worker
                ),
            })),
            Err(e) => Err(backend(e)),
        }
    }
}

#[async_trait]
impl ContainerRuntime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// Docker applies every container option.
    fn unsupported(&self, _: &ContainerOptions) -> Vec<ContainerOption> {
        Vec::new()
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<ContainerId> {
        // The watchdog holds the lease before the container exists; the
        // renewals keep it while the image is pulled.
        if let Some(w) = &self.watchdog {
            w.lease(spec.lease.unwrap_or(w.default_lease())).await?;
        }
        let pulled = self.ensure_image(&spec.image).await?;
        let id = self.create(spec).await?;
        let log = match output::attach(&self.docker, &id, self.log_limit).await {
            Ok(log) => log,
            Err(e) => {
                let _ = self.remove(&ContainerId(id.clone())).await;
                return Err(e);
            }
        };
        let usage = usage::sample(
            self.docker.clone(),
            id.clone(),
            pulled.map(|d| d.as_millis() as u64),
        );
        self.started()
            .insert(ContainerId(id.clone()), Started { log, usage });
        if let Err(e) = self.docker.start_container(&id, None).await {
            let _ = self.remove(&ContainerId(id.clone())).await;
            let hint = if self.init && e.to_string().contains("init") {
                " (if the daemon has no init binary: install docker-init (tini), or run the worker with --no-init)"
            } else {
                ""
            };
            return Err(match status_of(&e) {
                Some(400) | Some(404) | Some(500) => {
                    Error::InvalidInput(ValidationError::Invalid {
                        field: "command",
                        reason: format!(
                            "container did not start on worker {}: {e}{hint}",
                            self.worker
                        ),
                    })
                }
                _ => backend(e),
            });
        }
        Ok(ContainerId(id))
    }

    async fn wait(&self, id: &ContainerId) -> Result<ExitStatus> {
        let options = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut stream = self.docker.wait_container(&id.0, Some(options));
        let code = match stream.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard reports a non-zero exit as this error.
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(backend(e)),
            None => return Err(Error::Unavailable("Docker closed the wait stream".into())),
        };
        let inspected = self
            .docker
            .inspect_container(&id.0, None)
            .await
            .map_err(backend)?;
        let oom_killed = inspected.state.and_then(|s| s.oom_killed).unwrap_or(false);
        // Only for a container this runtime started and sampled.
        let usage = self.started().get(id).map(|s| *lock(&s.usage));
        Ok(ExitStatus {
            code: i32::try_from(code).ok(),
            signal: None,
            oom_killed,
            usage,
        })
    }

    /// The container's output from its start, each byte once, marked
    /// stdout or stderr, ending after the container stopped: from what this
    /// runtime copied since the start, or, for a container it did not
    /// start, from the daemon's log (see `output`).
    async fn output(&self, id: &ContainerId) -> Result<Follow> {
        if let Some(s) = self.started().get(id) {
            return Ok(s.log.follow(OutputFrom::Offset(0), true));
        }
        // Here, so an unknown id is NotFound rather than a failed stream.
        self.docker
            .inspect_container(&id.0, None)
            .await
            .map_err(backend)?;
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL);
        tokio::spawn(output::follow_log(self.docker.clone(), id.0.clone(), tx));
        Ok(rx)
    }

    /// SIGTERM, then SIGKILL once `grace` passed, to the millisecond (the
    /// daemon's own stop counts whole seconds, which would stretch a short
    /// grace past what the fence leaves a cut-off worker).
    async fn stop(&self, id: &ContainerId, grace: Duration) -> Result<()> {
        watchdog::stop_within(&self.docker, &id.0, grace)
            .await
            .map_err(|e| Error::Unavailable(format!("stopping container {id}: {e}")))
    }

    async fn remove(&self, id: &ContainerId) -> Result<()> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        self.started().remove(id);
        match self.docker.remove_container(&id.0, Some(options)).await {
            Ok(()) => Ok(()),
            // 404: gone; 409: removal already in progress.
            Err(e) if matches!(status_of(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(backend(e)),
        }
    }

    async fn list(&self, key: &str, value: &str) -> Result<Vec<ContainerInfo>> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{key}={value}")])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(backend)?;
        let mut out: Vec<ContainerInfo> = found
            .into_iter()
            .filter_map(|c| {
                Some(ContainerInfo {
                    id: ContainerId(c.id?),
                    labels: c
                        .labels
                        .unwrap_or_default()
                        .into_iter()
                        .collect::<BTreeMap<_, _>>(),
                    running: matches!(c.state, Some(ContainerSummaryStateEnum::RUNNING)),
                    // Created after its image was pulled, a moment before
                    // it started: a deadline counted from it is never late.
                    started_at: c
                        .created
                        .and_then(|s| u64::try_from(s).ok())
                        .map(|s| Timestamp::from_millis(s.saturating_mul(1000))),
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// With a watchdog, sends it the new lease (reaching or starting it
    /// again if it went away); without one, does nothing.
    async fn renew_lease(&self, lease: Duration) -> Result<()> {
        match &self.watchdog {
            Some(w) => w.lease(lease).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{Commit, SystemInfo};

    use super::missing_init;

    fn info(binary: Option<&str>, commit: Option<&str>) -> SystemInfo {
        SystemInfo {
            init_binary: binary.map(String::from),
            init_commit: Some(Commit {
                id: commit.map(String::from),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_init_binary_with_a_commit_or_none_is_there() {
        assert_eq!(
            missing_init(&info(Some("docker-init"), Some("de40ad0"))),
            None
        );
        // Debian's docker-init (tini 0.19.0) prints no commit; newer daemons
        // leave it empty whatever happened.
        assert_eq!(missing_init(&info(Some("docker-init"), Some(""))), None);
        assert_eq!(missing_init(&info(Some("docker-init"), None)), None);
    }

    #[test]
    fn no_init_binary_or_one_that_did_not_run_is_missing() {
        for (binary, commit) in [
            (None, Some("de40ad0")),
            (Some(""), Some("")),
            (Some("docker-init"), Some("N/A")),
        ] {
            let why = missing_init(&info(binary, commit));
            assert!(why.is_some(), "{binary:?} {commit:?}");
        }
        let why = missing_init(&info(Some("docker-init"), Some("N/A"))).unwrap();
        assert!(why.contains("\"docker-init\""), "{why}");
    }
}
