//! `cloudai-master`: a CloudAI-rs master with an operator CLI.
//!
//! - `cloudai-master --token T`: serve (with a `master>` prompt on a terminal);
//! - `cloudai-master --master HOST:PORT --token T <command>`: one command
//!   against a running master (add `--json` for scripts);
//! - `cloudai-master --dev [<command>]`: a master and one local worker in
//!   this process (in-memory store, process runtime, generated token), like
//!   `nomad agent -dev`; with a command, runs it and exits.

mod cli;
mod exit;
mod output;

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser};
use cloudai_core::clock::Clock;
use cloudai_core::liveness::LivenessConfig;
use cloudai_core::master::{ConfigError, Leadership, Master, MasterConfig, Serving};
use cloudai_core::memory::MemoryStore;
use cloudai_core::model::{Resources, WorkerId};
use cloudai_core::placement::Policy;
use cloudai_core::process::ProcessRuntime;
use cloudai_core::store::{LeaseRecord, LeaseStore, TaskStore, WorkerRegistry};
use cloudai_core::worker::{automatic_labels, WorkerConfig};
use cloudai_examples as common;
use cloudai_grpc::{MasterClient, Security, WorkerClients};
use tokio::net::TcpListener;
use tracing::info;

/// CloudAI-rs master: schedules container tasks across workers.
#[derive(Debug, Parser)]
#[command(name = "cloudai-master", version)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,
    /// Talk to the running master at this address instead of starting one;
    /// with several (`a:50051,b:50051`), to whichever leads.
    #[arg(long, env = "CLOUDAI_MASTER", global = true)]
    master: Option<String>,
    /// How long a command retries while no master leads or answers (a
    /// takeover), when given several masters or a follower (seconds, or
    /// `30s`); then it fails with code 69, naming each one's answer.
    #[arg(long, env = "CLOUDAI_LEADER_WAIT", global = true, default_value = "30", value_parser = common::seconds)]
    leader_wait: Duration,
    /// Print command results as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Log as JSON.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(flatten)]
    http: common::HttpArgs,
    #[command(flatten)]
    security: common::SecurityArgs,
    #[command(subcommand)]
    command: Option<cli::Command>,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Run a master and one local worker in this process (in-memory store,
    /// process runtime, generated token).
    #[arg(long)]
    dev: bool,
    /// Threads that run the master. One, the default, does most per CPU:
    /// a task's steps (a report, its transition, the next assignment) are
    /// small and come one after another, and on several threads each step
    /// wakes another thread (`benches/slots.sh`, `benches/swarm-scale.sh`).
    /// More let a slow request (a large listing, say) run beside the rest.
    #[arg(long, env = "CLOUDAI_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Address to listen on [default: 127.0.0.1:50051; --dev: a free port].
    #[arg(long, env = "CLOUDAI_LISTEN")]
    listen: Option<String>,
    /// Address workers use to reach the master (default: the listen address).
    #[arg(long, env = "CLOUDAI_ADVERTISE")]
    advertise: Option<String>,
    /// The master's id, in logs, events and the lease. Workers obey the
    /// highest master term they have seen, not an id; give each `--ha`
    /// master its own.
    #[arg(long, env = "CLOUDAI_MASTER_ID", default_value = "master")]
    id: String,
    /// Run as one of several masters on one MongoDB store: the one that
    /// holds the store's lease leads; the others follow, send clients and
    /// workers to it, and take over when it stops renewing. A lone `--ha`
    /// master works too (and is the way back to one master on a database
    /// that ran with `--ha`).
    #[arg(long, env = "CLOUDAI_HA")]
    ha: bool,
    /// With `--ha`: how long a leader's lease renewal stands (seconds, or
    /// `15s`). A takeover takes about this to 1.5 times it; a store or
    /// master that stalls for 2/3 of it causes a needless one.
    #[arg(long, env = "CLOUDAI_LEASE_TTL", default_value = "15", value_parser = common::seconds)]
    lease_ttl: Duration,
    /// Task and worker store: `memory`, or a `mongodb://…` URI.
    #[arg(long, env = "CLOUDAI_STORE", default_value = "memory")]
    store: String,
    /// MongoDB database, with `--store mongodb://…`.
    #[arg(long, env = "CLOUDAI_MONGO_DB", default_value = "cloudai")]
    mongo_db: String,
    /// Placement policy: round-robin, least-loaded, bin-pack, resource-aware.
    #[arg(long, env = "CLOUDAI_SCHEDULER", default_value = "resource-aware",
          value_parser = clap::builder::TypedValueParser::try_map(
              clap::builder::PossibleValuesParser::new(["round-robin", "least-loaded", "bin-pack", "resource-aware"]),
              |s| s.parse::<Policy>()))]
    scheduler: Policy,
    /// Seconds without a heartbeat before a worker is inactive.
    #[arg(long, default_value = "30", value_parser = common::seconds)]
    heartbeat_timeout: Duration,
    /// Seconds without a heartbeat before a worker is lost and its tasks
    /// run again elsewhere (or fail, per their policy); workers stop their
    /// runs before then when cut off.
    #[arg(long, default_value = "120", value_parser = common::seconds)]
    lost_after: Duration,
    /// Heartbeat interval workers are told to use, seconds.
    #[arg(long, default_value = "5", value_parser = common::seconds)]
    heartbeat_interval: Duration,
    /// Periodic reconciliation interval, seconds (0: off).
    #[arg(long, default_value = "300", value_parser = common::seconds)]
    reconcile_interval: Duration,
    /// How long finished tasks and their results are kept, seconds (0:
    /// for ever); then they are removed, and `show` says they expired.
    #[arg(long, default_value = "86400", value_parser = common::seconds)]
    retention: Duration,
    /// Deadline for a worker to confirm a cancel, seconds.
    #[arg(long, default_value = "30", value_parser = common::seconds)]
    cancel_timeout: Duration,
    /// Deadline for a worker to accept a task, seconds.
    #[arg(long, default_value = "10", value_parser = common::seconds)]
    assign_timeout: Duration,
    /// Deadline for one reconnection attempt, seconds.
    #[arg(long, default_value = "3", value_parser = common::seconds)]
    reconnect_timeout: Duration,
    /// Events kept for `events --cursor` to resume from.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(usize))]
    event_buffer: usize,
    /// Time limit of a task that names none (seconds, or `2h`; default:
    /// none), as a Slurm partition's DefaultTime.
    #[arg(long, value_parser = common::seconds)]
    default_time_limit: Option<Duration>,
    /// Largest time limit a task may ask for; a larger one is refused at
    /// submit (default: any), as a Slurm partition's MaxTime.
    #[arg(long, value_parser = common::seconds)]
    max_time_limit: Option<Duration>,
}

impl ServerArgs {
    fn config(&self, advertise: String) -> Result<MasterConfig, String> {
        let config = MasterConfig {
            id: self.id.clone(),
            advertise_address: advertise,
            liveness: LivenessConfig {
                timeout: self.heartbeat_timeout,
                lost_after: self.lost_after,
            },
            heartbeat_interval: self.heartbeat_interval,
            reconcile_interval: Some(self.reconcile_interval).filter(|d| !d.is_zero()),
            retention: Some(self.retention).filter(|d| !d.is_zero()),
            cancel_timeout: self.cancel_timeout,
            assign_timeout: self.assign_timeout,
            reconnect_timeout: self.reconnect_timeout,
            policy: self.scheduler,
            event_buffer: self.event_buffer,
            default_time_limit: self.default_time_limit,
            max_time_limit: self.max_time_limit,
            lease_ttl: self.lease_ttl,
            ..MasterConfig::default()
        };
        let checked = if self.ha {
            config.check_lease()
        } else {
            config.check()
        };
        checked.map_err(|e| match e {
            ConfigError::BadId => format!("--id {:?}: {e}", self.id),
            ConfigError::IntervalNotBelowTimeout { interval, timeout } => format!(
                "--heartbeat-interval ({interval:?}) must be shorter than --heartbeat-timeout ({timeout:?}): every worker would turn inactive between two beats"
            ),
            ConfigError::TimeoutNotBelowLoss { timeout, lost_after } => format!(
                "--lost-after ({lost_after:?}) must be longer than --heartbeat-timeout ({timeout:?})"
            ),
            ConfigError::NoFenceMargin(f) => format!(
                "--lost-after ({:?}) leaves a worker no time to stop its runs before it is declared lost: it must exceed a margin of {:?} and two --heartbeat-interval ({:?})",
                f.lost_after, f.margin, f.heartbeat_interval
            ),
            ConfigError::DefaultAboveMaxTimeLimit { default, max } => format!(
                "--default-time-limit ({default:?}) exceeds --max-time-limit ({max:?})"
            ),
            ConfigError::LeaseTtlTooShort(ttl) => format!(
                "--lease-ttl ({ttl:?}) must be at least 1s: the leader renews every third of it"
            ),
            ConfigError::NoTakeoverMargin {
                lost_after,
                stop_margin,
                lease_ttl,
            } => format!(
                "--lost-after ({lost_after:?}) lets a cut-off worker keep its runs for {stop_margin:?}, under two --lease-ttl ({lease_ttl:?} each): every takeover would stop the running work; raise --lost-after or lower --lease-ttl"
            ),
        })?;
        Ok(config)
    }
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(&e),
    };
    let runtime = match cli.server.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
    }
    .enable_all()
    .build();
    match runtime {
        Ok(runtime) => runtime.block_on(serve(cli)),
        Err(e) => {
            output::error(
                cli.json,
                "config",
                &format!("cannot start the runtime: {e}"),
            );
            std::process::ExitCode::from(exit::CONFIG)
        }
    }
}

async fn serve(cli: Cli) -> std::process::ExitCode {
    let quiet = cli.command.is_some() || cli.master.is_some();
    common::init_logging(cli.log_json, if quiet { "warn" } else { "info" });
    let json = cli.json;
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            output::error(json, "config", &e);
            std::process::ExitCode::from(exit::CONFIG)
        }
    }
}

/// A command line clap refused: its message (as JSON with `--json`) and
/// the usage code; `--help` and `--version` print and succeed.
fn usage(e: &clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return std::process::ExitCode::SUCCESS;
    }
    if std::env::args().any(|a| a == "--json") {
        let text = e.render().to_string();
        let message = text.trim().trim_start_matches("error: ");
        output::error(true, "usage", message);
    } else {
        let _ = e.print();
    }
    std::process::ExitCode::from(exit::USAGE)
}

async fn run(cli: Cli) -> Result<std::process::ExitCode, String> {
    if let Some(cli::Command::Completions { shell }) = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut command, "cloudai-master", &mut out);
        output::raw(&out);
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Some(address) = &cli.master {
        let security = cli.security.resolve(None)?;
        let client = MasterClient::new(address, security)
            .map_err(|e| e.to_string())?
            .leader_wait(cli.leader_wait);
        return match cli.command {
            Some(cmd) => Ok(cli::execute(&client, cmd, cli.json).await),
            None => cli::repl(&client, cli.json)
                .await
                .map(|_| std::process::ExitCode::SUCCESS),
        };
    }
    let dev = cli.server.dev;
    let generated = dev.then(common::random_token).transpose()?;
    let security = cli.security.resolve(generated)?;
    if !dev && cli.command.is_some() {
        return Err("commands need --master HOST:PORT (a running master) or --dev".into());
    }
    if cli.server.ha && dev {
        return Err(
            "--ha runs several masters on one MongoDB store: it cannot go with --dev".into(),
        );
    }
    // Configuration and store first: a bad flag or an unreachable store is
    // reported as such, before the port is taken.
    let mut config = cli.server.config(String::new())?;
    let stores = open_store(&cli.server).await?;
    let lease = match (&stores.lease, cli.server.ha) {
        (None, true) => {
            return Err(
                "--ha needs --store mongodb://…: the masters share the store and its lease".into(),
            )
        }
        (Some(lease), false) => {
            refuse_leased(lease.as_ref()).await?;
            None
        }
        (lease, _) => lease.clone(),
    };
    let listen = cli.server.listen.clone().unwrap_or_else(|| {
        if dev {
            "127.0.0.1:0"
        } else {
            "127.0.0.1:50051"
        }
        .into()
    });
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let http = cli.http.bind().await?;
    let advertise = cli
        .server
        .advertise
        .clone()
        .unwrap_or_else(|| bound.clone());
    config.advertise_address = advertise;
    let transport = Arc::new(WorkerClients::new(config.id.clone(), security.clone()));
    let master: Serving = match lease {
        Some(lease) => {
            let run = common::random_token()?;
            info!(id = %config.id, %run, ttl = ?config.lease_ttl, "following; leading when this master holds the store's lease");
            Leadership::start(
                config,
                stores.tasks,
                stores.registry,
                lease,
                transport,
                Clock::system(),
                run,
            )
            .map_err(|e| e.to_string())?
            .into()
        }
        None => Master::start(
            config,
            stores.tasks,
            stores.registry,
            transport,
            Clock::system(),
        )
        .await
        .map_err(|e| e.to_string())?
        .into(),
    };
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let http = http.map(|h| {
        h.spawn(
            cloudai_grpc::master_routes(master.clone()),
            security.clone(),
            stop_rx.clone(),
        )
    });
    let server = tokio::spawn(cloudai_grpc::serve_master(
        master.clone(),
        listener,
        security.clone(),
        async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        },
    ));
    info!(address = %bound, "master listening");
    let worker = if dev {
        Some(dev_worker(&bound, &security).await?)
    } else {
        None
    };
    if dev {
        let token = security
            .token
            .as_ref()
            .map(|t| t.header())
            .unwrap_or_default();
        info!(master = %bound, token = %token.trim_start_matches("Bearer "), "dev cluster up: one master, one local worker");
    }
    let client = MasterClient::new(&bound, security).map_err(|e| e.to_string())?;
    let session = async {
        match cli.command {
            Some(cmd) => {
                if let Some(w) = &worker {
                    cli::wait_registered(&client, w.worker.id()).await;
                }
                Ok(cli::execute(&client, cmd, cli.json).await)
            }
            None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
                cli::repl(&client, cli.json)
                    .await
                    .map(|_| std::process::ExitCode::SUCCESS)
            }
            None => {
                common::terminated().await;
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    };
    // In dev mode a signal ends the command or the REPL and shuts the
    // cluster down as the worker binary does: running tasks are reported
    // failed and their processes stopped, so none outlives the cluster.
    let signalled = if dev {
        tokio::select! {
            code = session => Err(code),
            signal = common::terminated() => Ok(signal),
        }
    } else {
        Err(session.await)
    };
    if let Ok(signal) = signalled {
        info!(signal, "signal received; shutting the dev cluster down");
    }
    if let Some(w) = worker {
        w.shutdown().await;
    }
    // With --ha, the lease goes first: the next master takes over at once,
    // and this one's open calls (every worker's heartbeat stream) are
    // answered with a redirect there, so the servers below wind down.
    if let Serving::Elected(l) = &master {
        l.shutdown().await;
    }
    let _ = stop.send(true);
    let _ = server.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    if let Serving::One(m) = &master {
        m.shutdown().await;
    }
    match signalled {
        // Exit at once, as a shell reports a signal: a REPL may still hold
        // a thread blocked reading the terminal.
        Ok(signal) => std::process::exit(128 + signal),
        Err(code) => code,
    }
}

/// The backends `--store` names.
struct Stores {
    tasks: Arc<dyn TaskStore>,
    registry: Arc<dyn WorkerRegistry>,
    /// Where masters under a lease keep it (a shared store only).
    lease: Option<Arc<dyn LeaseStore>>,
}

/// The task store and worker registry named by `--store`, and its lease.
async fn open_store(args: &ServerArgs) -> Result<Stores, String> {
    if args.store == "memory" {
        let store = Arc::new(MemoryStore::new());
        return Ok(Stores {
            tasks: store.clone(),
            registry: store,
            lease: None,
        });
    }
    if args.store.starts_with("mongodb://") || args.store.starts_with("mongodb+srv://") {
        let config = cloudai_mongo::MongoConfig::new(args.store.clone(), args.mongo_db.clone());
        let store = Arc::new(
            cloudai_mongo::MongoStore::connect(config)
                .await
                .map_err(|e| format!("cannot open the MongoDB store: {e}"))?,
        );
        info!(database = %args.mongo_db, "using the MongoDB store");
        return Ok(Stores {
            tasks: store.clone(),
            registry: store.clone(),
            lease: Some(store),
        });
    }
    Err(format!(
        "unknown store {:?}: use `memory` or a `mongodb://…` URI",
        args.store
    ))
}

/// A master without `--ha` refuses a database that masters ran on with
/// `--ha`: its writes (term 0) would meet their fences, and a live leader
/// would be acting beside it.
async fn refuse_leased(lease: &dyn LeaseStore) -> Result<(), String> {
    let record = lease
        .read_lease()
        .await
        .map_err(|e| format!("cannot read the store's lease: {e}"))?;
    match record {
        None => Ok(()),
        Some(LeaseRecord {
            holder: Some(holder),
            address,
            term,
            ..
        }) => Err(format!(
            "this database's lease is held by master {holder} at {address} (term {term}): masters on it run with --ha; start this one with --ha to follow it"
        )),
        Some(LeaseRecord { term, .. }) => Err(format!(
            "this database was run with --ha (term {term}), and its fences refuse a master without a lease: start this master with --ha (a lone --ha master works)"
        )),
    }
}

/// The dev cluster's worker: this machine's cores and memory, local processes.
async fn dev_worker(master: &str, security: &Security) -> Result<common::RunningWorker, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0);
    let capacity = Resources::new(cores, 4.0, 10.0, 0).map_err(|e| e.to_string())?;
    let mut config = WorkerConfig::new(
        WorkerId::new("dev-worker").map_err(|e| e.to_string())?,
        address,
        capacity,
    );
    config.labels = automatic_labels(&config.gpus);
    common::spawn_worker(
        config,
        Arc::new(ProcessRuntime::new()),
        master,
        listener,
        None,
        security.clone(),
    )
    .await
}
