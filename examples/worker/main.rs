//! `cloudai-worker`: a CloudAI-rs worker. Registers with a master, runs the
//! tasks it is given, and on SIGINT/SIGTERM reports its running tasks as
//! failed and stops them before exiting.

use std::sync::Arc;
use std::time::Duration;

mod gpus;

use clap::Parser;
use cloudai_core::host;
use cloudai_core::model::{Resources, WorkerId};
use cloudai_core::process::{supervisor, SupervisedProcessRuntime};
use cloudai_core::runtime::ContainerRuntime;
use cloudai_core::worker::{automatic_labels, WorkerConfig};
use cloudai_docker::{watchdog, DockerRuntime, Watchdog};
use cloudai_examples as common;
use tracing::info;

/// Runs CloudAI-rs tasks for a master.
#[derive(Debug, Parser)]
#[command(name = "cloudai-worker", version)]
struct Cli {
    /// The master's address (host:port), or several masters' (`a:50051,b:50051`):
    /// the worker follows whichever leads.
    #[arg(long, env = "CLOUDAI_MASTER", default_value = "127.0.0.1:50051")]
    master: String,
    /// Address to listen on for the master's calls.
    #[arg(long, env = "CLOUDAI_WORKER_LISTEN", default_value = "127.0.0.1:50052")]
    listen: String,
    /// Address the master should use to reach this worker (default: the listen address).
    #[arg(long, env = "CLOUDAI_WORKER_ADVERTISE")]
    advertise: Option<String>,
    /// This worker's id (default: the host name).
    #[arg(long, env = "CLOUDAI_WORKER_ID")]
    id: Option<String>,
    /// Directory holding this worker's instance id and its runs' records;
    /// one process at a time (default:
    /// `$XDG_STATE_HOME/cloudai/worker-<id>`, else
    /// `~/.local/state/cloudai/worker-<id>`).
    #[arg(long, env = "CLOUDAI_WORKER_STATE_DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// How tasks run: `docker`, `process` (local processes), or `auto`
    /// (Docker when a daemon answers, else processes).
    #[arg(long, env = "CLOUDAI_RUNTIME", default_value = "auto", value_parser = clap::builder::PossibleValuesParser::new(["auto", "docker", "process"]))]
    runtime: String,
    /// CPU cores offered (default: detected).
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory offered, GB (default: detected).
    #[arg(long)]
    mem: Option<f64>,
    /// Disk offered, GB (default: 100).
    #[arg(long, default_value_t = 100.0)]
    disk: f64,
    /// GPUs offered: the first N that `nvidia-smi` finds (default: all of
    /// them, else 0). Without `nvidia-smi`, GPUs 0..N.
    #[arg(long)]
    gpus: Option<u32>,
    /// The GPUs to offer, by `nvidia-smi` index (`0,2`): each task gets
    /// its own of these.
    #[arg(long, value_delimiter = ',')]
    gpu_ids: Option<Vec<u32>>,
    /// Host directories under which tasks may bind-mount (`--mount`),
    /// comma-separated absolute paths (`/data,/scratch`); none by default.
    #[arg(long, value_delimiter = ',')]
    allow_mount: Vec<String>,
    /// A label `KEY=VALUE` that tasks' `--constraint` can match
    /// (repeatable). `hostname`, `os`, `arch` and `gpu` (the GPU model)
    /// are set on their own; a label given here wins.
    #[arg(long = "label", value_parser = label_pair)]
    label: Vec<(String, String)>,
    /// Heartbeat interval until the master names one, seconds.
    #[arg(long, default_value = "5", value_parser = common::seconds)]
    heartbeat_interval: Duration,
    /// Longest cancel grace honoured, seconds.
    #[arg(long, default_value = "30", value_parser = common::seconds)]
    max_grace: Duration,
    /// Bound on reporting running tasks at shutdown, seconds.
    #[arg(long, default_value = "5", value_parser = common::seconds)]
    shutdown_timeout: Duration,
    /// Output kept per task for followers (`logs`, `monitor`, `run`), the
    /// oldest bytes dropped past it (64MiB, 512KiB, 1GB, ...).
    #[arg(long, default_value = "64MiB", value_parser = common::bytes)]
    log_retain: usize,
    /// With Docker: how long pulling a missing image may take before its
    /// task fails saying so (`10m`, `90s`, seconds).
    #[arg(long, default_value = "10m", value_parser = common::seconds)]
    pull_timeout: Duration,
    /// With Docker: run tasks without the daemon's init. By default each
    /// container's PID 1 is the daemon's init (`docker run --init`:
    /// docker-init, a tini), which passes SIGTERM on to the task's command,
    /// so a cancel stops it at once (exit code 143). Without it the command
    /// is PID 1, the kernel drops a SIGTERM it does not handle, and a cancel
    /// waits out its grace and ends by SIGKILL (exit code 137). The worker
    /// refuses to start on a daemon that has no init unless this is set.
    #[arg(long, env = "CLOUDAI_NO_INIT")]
    no_init: bool,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
    #[command(flatten)]
    http: common::HttpArgs,
    #[command(flatten)]
    security: common::SecurityArgs,
}

fn detected_cores() -> f64 {
    host::cores() as f64
}

fn detected_memory_gb() -> f64 {
    host::memory_total_kb()
        .map(|kb| (kb as f64 / 1e6 * 10.0).floor() / 10.0)
        .unwrap_or(1.0)
}

fn host_name() -> String {
    host::name().unwrap_or_else(|| "worker".into())
}

/// How long a supervised run (or a Docker run under the watchdog) goes
/// without its worker when the master named no loss threshold to derive
/// its lease from (a master older than leases): the master's default
/// `--lost-after`. Otherwise every run's lease follows from the master's
/// timings (see `cloudai_core::fence`).
const UNLEASED_RUN: Duration = Duration::from_secs(120);

/// The first argument that puts the binary in its supervisor mode (the
/// supervisor of a state directory's runs, named as the next argument; see
/// `cloudai_core::process::supervisor`).
const SUPERVISOR_MODE: &str = "__supervise";

/// The first argument that puts the binary in its Docker watchdog mode (one
/// per worker, stopping its containers once its lease runs out; see
/// `cloudai_docker::watchdog`).
const WATCHDOG_MODE: &str = "__docker_watchdog";

fn label_pair(s: &str) -> Result<(String, String), String> {
    cloudai_core::model::parse_label(s).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os();
    match args.nth(1) {
        Some(mode) if mode == SUPERVISOR_MODE => match args.next() {
            Some(dir) => supervisor::run(std::path::Path::new(&dir)),
            None => std::process::ExitCode::from(2),
        },
        Some(mode) if mode == WATCHDOG_MODE => {
            // Its stderr is its log file.
            common::init_logging(false, "info");
            watchdog::main(args)
        }
        _ => serve(),
    }
}

/// One scheduler thread: a worker's work per task is small and comes a
/// step at a time (an assignment, a start, an exit, a report), and across
/// threads each step would cost a wake-up of another thread (`benches/slots.sh`:
/// ~0.1 ms of CPU per task at 2 slots). HyperQueue's worker runs on one
/// thread too.
#[tokio::main(flavor = "current_thread")]
async fn serve() -> std::process::ExitCode {
    let cli = Cli::parse();
    common::init_logging(cli.log_json, "info");
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let security = cli.security.resolve(None)?;

    let id = WorkerId::new(cli.id.clone().unwrap_or_else(host_name)).map_err(|e| e.to_string())?;
    let state_path = cli
        .state_dir
        .clone()
        .unwrap_or_else(|| common::default_state_dir(&id));
    let state = common::StateDir::open(&state_path)?;
    let gpus = gpus::resolve(gpus::detect(), cli.gpus, cli.gpu_ids.as_deref())?;
    let capacity = Resources::new(
        cli.cpu.unwrap_or_else(detected_cores),
        cli.mem.unwrap_or_else(detected_memory_gb),
        cli.disk,
        u32::try_from(gpus.len()).map_err(|_| "too many GPUs")?,
    )
    .map_err(|e| format!("capacity: {e}"))?;
    let runtime = choose_runtime(&cli, id.as_str(), state.path()).await?;
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let bound = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let http = cli.http.bind().await?;
    let mut config = WorkerConfig::new(
        id.clone(),
        cli.advertise.clone().unwrap_or(bound.clone()),
        capacity,
    );
    config.instance = state.instance().clone();
    let indices: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
    config.gpus = gpus;
    if let Some(bad) = cli.allow_mount.iter().find(|p| !p.starts_with('/')) {
        return Err(format!("--allow-mount {bad}: not an absolute path"));
    }
    config.allow_mounts = cli.allow_mount.clone();
    config.labels = automatic_labels(&config.gpus);
    config.labels.extend(cli.label.iter().cloned());
    config.heartbeat_interval = cli.heartbeat_interval;
    config.max_grace = cli.max_grace;
    config.shutdown_timeout = cli.shutdown_timeout;
    config.log_retain = cli.log_retain;
    info!(worker = %id, instance = %state.instance(), state_dir = %state.path().display(), listen = %bound,
          master = %cli.master, %capacity, gpus = %indices.join(","), runtime = runtime.name(), "worker starting");
    let mut worker =
        common::spawn_worker(config, runtime, &cli.master, listener, http, security).await?;
    let refusal = tokio::select! {
        _ = common::terminated() => {
            info!("signal received; shutting down");
            None
        }
        refusal = worker.refused() => Some(refusal),
    };
    let summary = worker.shutdown().await;
    info!(
        reported = summary.reported,
        unreported = summary.unreported,
        stopped = summary.stopped,
        "worker stopped"
    );
    match refusal {
        Some(e @ cloudai_core::Error::InUse(_)) => {
            Err(format!("the master refused this worker: {e}"))
        }
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

/// The runtime named by `--runtime`; `auto` takes Docker when a daemon
/// answers and local processes otherwise. Local processes run under
/// supervisors, with their records in the state directory. Docker runs
/// tasks under the daemon's init unless `--no-init`, and a daemon with no
/// init is an error then (with `auto` too: it does not fall back); its
/// containers are guarded by a watchdog (this binary in its watchdog mode,
/// on a socket in the state directory) that stops them once the worker's
/// lease runs out, and one that cannot start is an error too.
async fn choose_runtime(
    cli: &Cli,
    worker: &str,
    state: &std::path::Path,
) -> Result<Arc<dyn ContainerRuntime>, String> {
    let me = || std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"));
    let processes = || -> Result<Arc<dyn ContainerRuntime>, String> {
        let me = me()?;
        let runtime = SupervisedProcessRuntime::new(
            state,
            vec![me.into_os_string(), SUPERVISOR_MODE.into()],
            UNLEASED_RUN,
        )
        .map_err(|e| e.to_string())?;
        Ok(Arc::new(runtime))
    };
    // The daemon's init on unless --no-init, and the daemon must have one.
    let docker = |runtime: DockerRuntime| async move {
        let runtime = runtime
            .with_log_limit(cli.log_retain)
            .with_pull_timeout(cli.pull_timeout)
            .with_init(!cli.no_init);
        runtime.check_init().await.map_err(|e| e.to_string())?;
        if runtime.init() {
            info!("Docker tasks run under the daemon's init");
        } else {
            info!("Docker tasks run without an init (--no-init): a task gets SIGTERM only if it handles it");
        }
        let watchdog = Watchdog::in_state_dir(
            state,
            vec![me()?.into_os_string(), WATCHDOG_MODE.into()],
            UNLEASED_RUN,
        )
        .map_err(|e| e.to_string())?;
        let socket = watchdog.socket().display().to_string();
        let runtime = runtime.with_watchdog(watchdog);
        runtime
            .connect_watchdog()
            .await
            .map_err(|e| e.to_string())?;
        info!(%socket, "the Docker watchdog holds this worker's lease: it stops the containers if the worker stops renewing it");
        Ok::<Arc<dyn ContainerRuntime>, String>(Arc::new(runtime))
    };
    match cli.runtime.as_str() {
        "process" => processes(),
        "docker" => {
            docker(
                DockerRuntime::connect(worker)
                    .await
                    .map_err(|e| e.to_string())?,
            )
            .await
        }
        "auto" => match DockerRuntime::connect(worker).await {
            Ok(runtime) => {
                info!("runtime: docker (a Docker daemon answers)");
                docker(runtime).await
            }
            Err(e) => {
                info!(reason = %e, "runtime: process (no Docker daemon)");
                processes()
            }
        },
        other => Err(format!(
            "unknown runtime {other:?}: use docker, process or auto"
        )),
    }
}
