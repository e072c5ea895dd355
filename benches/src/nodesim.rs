//! The worker swarm bench: N simulated workers (default 10,000) in one
//! process, each a distinct worker to a real master over the real gRPC
//! protocol, measuring the master: registration, heartbeats absorbed while
//! idle, then submit, placement and completion rates with submit→running
//! and submit→completed latencies, and the master's CPU and RSS.
//!
//! ```sh
//! cargo build --release -p cloudai-examples -p cloudai-bench
//! target/release/nodesim --workers 10000 --tasks 20000
//! target/release/nodesim --workers 10000 --tasks 20000 --store mongodb://127.0.0.1:27017
//! ```
//!
//! With `--rate`, a steady load instead, for master takeovers
//! (`benches/ha-takeover.sh`): the workers against running masters
//! (`--master a:1,b:2`, following the leader), a submitter at that many
//! submits a second until `--stop-file` appears, then every acknowledged
//! task checked in the store (see `cloudai_bench::steady`):
//!
//! ```sh
//! target/release/nodesim --master 127.0.0.1:7001,127.0.0.1:7002 --workers 1000 \
//!     --rate 20 --run-ms 2000 --stop-file /tmp/stop --check-store mongodb://… --check-db db
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Duration;

use clap::Parser;
use cloudai_bench::master_proc;
use cloudai_bench::measure::{self, LoadConfig};
use cloudai_bench::steady::{self, SteadyConfig};
use cloudai_bench::swarm::SwarmConfig;
use cloudai_core::model::Resources;
use cloudai_grpc::{MasterClient, Security, Token};

/// Simulated workers against a real master.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated workers.
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    /// Workers sharing one listener.
    #[arg(long, default_value_t = 100)]
    per_listener: usize,
    /// CPU each worker offers.
    #[arg(long, default_value_t = 4.0)]
    worker_cpu: f64,
    /// Memory each worker offers, GB.
    #[arg(long, default_value_t = 16.0)]
    worker_mem: f64,
    /// Runnable tasks submitted.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// CPU each task asks for.
    #[arg(long, default_value_t = 0.5)]
    task_cpu: f64,
    /// Memory each task asks for, GB.
    #[arg(long, default_value_t = 0.5)]
    task_mem: f64,
    /// How long a task runs on its simulated worker, ms (0: reported at once).
    #[arg(long, default_value_t = 0)]
    run_ms: u64,
    /// Percent of runs reported failed.
    #[arg(long, default_value_t = 0)]
    fail_percent: u8,
    /// Retries each task asks for (with no delay): a failed run is run
    /// again, and the run ends when the master has every task final.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Submit the tasks as one array (`task --array 1-N`) instead of one
    /// call each.
    #[arg(long)]
    array: bool,
    /// Submit the tasks as a two-stage pipeline: an array of half, then an
    /// array of the other half `--after-corr` the first.
    #[arg(long, conflicts_with = "array")]
    pipeline: bool,
    /// Dependents parked first: an array of this many waiting on a parked
    /// task.
    #[arg(long, default_value_t = 0)]
    dependents: usize,
    /// Worker ids are `<prefix><n>` (two swarms on one master need two).
    #[arg(long, default_value = "sim-")]
    id_prefix: String,
    /// Tasks parked first on a worker that never answers.
    #[arg(long, default_value_t = 0)]
    parked: usize,
    /// Seconds of heartbeats only, measured, before the load.
    #[arg(long, default_value_t = 10.0)]
    idle_secs: f64,
    /// Heartbeat interval the master names, seconds.
    #[arg(long, default_value = "1")]
    heartbeat_interval: String,
    /// The master's store: `memory` or a `mongodb://` URI.
    #[arg(long, default_value = "memory")]
    store: String,
    /// The master binary to start.
    #[arg(long, default_value = "target/release/cloudai-master")]
    master_bin: String,
    /// A flag more for the master started here (repeat it; e.g.
    /// `--master-arg=--ha --master-arg=--lease-ttl=5`).
    #[arg(long, allow_hyphen_values = true)]
    master_arg: Vec<String>,
    /// Load a running master instead (its pid, for CPU and RSS, with
    /// `--master-pid`), or the leader among several (`a:1,b:2`).
    #[arg(long)]
    master: Option<String>,
    /// The running master's pid.
    #[arg(long)]
    master_pid: Option<i32>,
    /// Token (generated for a master started here).
    #[arg(long, env = "CLOUDAI_TOKEN")]
    token: Option<String>,
    /// Afterwards, check that every runnable task ended, no allocation is
    /// left and reconcile finds nothing (exit 1 if not).
    #[arg(long)]
    check: bool,
    /// Print the figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// Steady load instead: this many submits a second (one task each,
    /// running `--run-ms`), until `--stop-file` appears or
    /// `--duration-secs` pass; then every acknowledged task is checked.
    #[arg(long)]
    rate: Option<f64>,
    /// Steady load: no submit while this many tasks are non-final.
    #[arg(long, default_value_t = 2_000)]
    max_pending: usize,
    /// Steady load: stop submitting once this file exists.
    #[arg(long)]
    stop_file: Option<std::path::PathBuf>,
    /// Steady load: create this file once the workers are registered and a
    /// first submit was acknowledged.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Steady load: stop submitting after this many seconds.
    #[arg(long)]
    duration_secs: Option<f64>,
    /// Steady load: how long a submit call is retried while no master
    /// leads (then it is sent again under its request id), seconds.
    #[arg(long, default_value_t = 30.0)]
    leader_wait_secs: f64,
    /// Steady load: how long to wait for the acknowledged tasks to end,
    /// seconds.
    #[arg(long, default_value_t = 120.0)]
    drain_secs: f64,
    /// Steady load: the store (`mongodb://` URI) to read the tasks from at
    /// the end (with `--check-db`); default: list them through the leader.
    #[arg(long, requires = "check_db")]
    check_store: Option<String>,
    /// Steady load: the database of `--check-store`.
    #[arg(long)]
    check_db: Option<String>,
    /// Only submit this many pending tasks, as arrays of `--array-size`
    /// (with no workers: `--workers 0`), and exit.
    #[arg(long)]
    submit_pending: Option<usize>,
    /// Tasks in each array of `--submit-pending`.
    #[arg(long, default_value_t = 10_000)]
    array_size: usize,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let token = args.token.clone().unwrap_or_else(|| "nodesim-token".into());
    let (address, pid, _child) = match &args.master {
        Some(a) => (a.clone(), args.master_pid, None),
        None => {
            // A fresh database each run: a master on MongoDB loads the
            // workers an earlier run registered.
            let db = format!("nodesim-{}", std::process::id());
            let mut flags: Vec<String> = [
                "--mongo-db",
                &db,
                "--store",
                &args.store,
                "--heartbeat-interval",
                &args.heartbeat_interval,
                "--heartbeat-timeout",
                "30",
                "--lost-after",
                "120",
            ]
            .map(String::from)
            .to_vec();
            flags.extend(args.master_arg.iter().cloned());
            let (a, child) = master_proc::start(&args.master_bin, &flags, &token).await?;
            let pid = child.id().and_then(|p| i32::try_from(p).ok());
            (a, pid, Some(child))
        }
    };
    let security = Security {
        token: Some(Token::new(token)?),
        tls: None,
    };
    let swarm = SwarmConfig {
        workers: args.workers,
        per_listener: args.per_listener,
        capacity: Resources::new(args.worker_cpu, args.worker_mem, 100.0, 0)
            .map_err(|e| e.to_string())?,
        run_time: Duration::from_millis(args.run_ms),
        fail_percent: args.fail_percent.min(100),
        id_prefix: args.id_prefix.clone(),
    };
    let request =
        Resources::new(args.task_cpu, args.task_mem, 0.0, 0).map_err(|e| e.to_string())?;
    if let Some(n) = args.submit_pending {
        let client = MasterClient::new(&address, security)
            .map_err(|e| e.to_string())?
            .leader_wait(Duration::from_secs_f64(args.leader_wait_secs.max(0.0)));
        let took = steady::submit_pending(&client, request, n, args.array_size).await?;
        // The master's count, if one answers (a leader that lost the lease
        // meanwhile is still taking office again).
        let pending = match client.task_counts().await {
            Ok(c) => Some(c.pending),
            Err(e) => {
                eprintln!("no task count: {e}");
                None
            }
        };
        println!(
            "{}",
            serde_json::json!({
                "mode": "pending",
                "submitted": n,
                "secs": took.as_secs_f64(),
                "pending": pending,
            })
        );
        return Ok(());
    }
    if let Some(rate) = args.rate {
        let load = SteadyConfig {
            rate,
            max_pending: args.max_pending,
            request,
            stop_file: args.stop_file.clone(),
            ready_file: args.ready_file.clone(),
            duration: args
                .duration_secs
                .map(|s| Duration::from_secs_f64(s.max(0.0))),
            leader_wait: Duration::from_secs_f64(args.leader_wait_secs.max(0.0)),
            drain: Duration::from_secs_f64(args.drain_secs.max(0.0)),
            store: args.check_store.clone().zip(args.check_db.clone()),
        };
        eprintln!("masters at {address}; {} workers joining", args.workers);
        let report = steady::run(&address, security, swarm, &load).await?;
        if args.json {
            println!("{}", report.to_json());
        } else {
            println!("{report}");
        }
        return Ok(());
    }
    let load = LoadConfig {
        tasks: args.tasks,
        concurrency: args.concurrency,
        request,
        parked: args.parked,
        idle: Duration::from_secs_f64(args.idle_secs.max(0.0)),
        deadline: Duration::from_secs(600),
        array: args.array,
        retries: args.retries,
        pipeline: args.pipeline,
        dependents: args.dependents,
    };
    eprintln!(
        "master at {address} ({}); {} workers joining",
        args.store, args.workers
    );
    let (report, swarm) = measure::run(&address, security.clone(), swarm, &load, pid).await?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    if args.check {
        let client = MasterClient::new(&address, security).map_err(|e| e.to_string())?;
        let failed = (args.retries == 0)
            .then(|| (args.tasks as u64) * u64::from(args.fail_percent.min(100)) / 100);
        measure::check(&client, &report, &swarm, failed).await?;
        eprintln!("check: every runnable task ended, no allocation left, reconcile found nothing");
    }
    swarm.stop().await;
    Ok(())
}
