//! End-to-end load driver: trivial tasks per second through a dev-mode
//! cluster (the real `cloudai-master --dev` binary: master + one local
//! worker over gRPC on loopback, process runtime), or through any running
//! master given with `--master`.
//!
//! ```sh
//! cargo build --release -p cloudai-examples
//! cargo run --release -p cloudai-bench --bin load -- --tasks 2000 --concurrency 64
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use clap::Parser;
use cloudai_bench::master_proc;
use cloudai_bench::submit::{park, submit_all};
use cloudai_core::model::{Resources, TaskSpec};
use cloudai_grpc::{MasterClient, Security, Token};

/// Submits trivial tasks and measures how many complete per second.
#[derive(Debug, Parser)]
struct Args {
    /// How many tasks.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Submissions in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// CPU each task asks for (small, so many run at once).
    #[arg(long, default_value_t = 0.01)]
    cpu: f64,
    /// The command each task runs.
    #[arg(long, default_value = "true")]
    command: String,
    /// Memory each task asks for, GB (Docker's minimum limit is 6 MB).
    #[arg(long, default_value_t = 0.01)]
    mem: f64,
    /// The image each task names (the process runtime ignores it).
    #[arg(long, default_value = "busybox")]
    image: String,
    /// A running master to load (default: start `cloudai-master --dev`).
    #[arg(long)]
    master: Option<String>,
    /// Token for `--master`.
    #[arg(long, env = "CLOUDAI_TOKEN")]
    token: Option<String>,
    /// Tasks parked first, pinned to a worker that never answers (they
    /// wait throughout the measured run, which should not slow it).
    #[arg(long, default_value_t = 0)]
    parked: usize,
    /// The master binary for dev mode.
    #[arg(long, default_value = "target/release/cloudai-master")]
    master_bin: String,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    let token = args
        .token
        .clone()
        .unwrap_or_else(|| "load-driver-token".into());
    let (address, mut child) = match &args.master {
        Some(a) => (a.clone(), None),
        None => {
            let dev = ["--dev".to_string()];
            let (a, c) = master_proc::start(&args.master_bin, &dev, &token).await?;
            (a, Some(c))
        }
    };
    let security = Security {
        token: Some(Token::new(token)?),
        tls: None,
    };
    let client = MasterClient::new(&address, security).map_err(|e| e.to_string())?;
    wait_for_worker(&client).await?;
    let spec = task_spec(&args)?;
    park(&client, &spec, args.parked, args.concurrency).await?;
    if args.parked > 0 {
        eprintln!("{} tasks parked", args.parked);
    }
    let outcome = drive(&client, &args).await;
    if let Some(c) = child.as_mut() {
        let _ = c.start_kill();
        let _ = c.wait().await;
    }
    let (elapsed, completed, failed) = outcome?;
    let rate = completed as f64 / elapsed.as_secs_f64();
    println!(
        "{} tasks (`{}`), concurrency {}, {} parked: {completed} completed, {failed} failed in {:.2} s = {rate:.1} tasks/s",
        args.tasks,
        args.command,
        args.concurrency,
        args.parked,
        elapsed.as_secs_f64()
    );
    Ok(())
}

async fn wait_for_worker(client: &MasterClient) -> Result<(), String> {
    for _ in 0..200 {
        if let Ok(ws) = client.workers().await {
            if ws
                .iter()
                .any(|w| w.registered && w.health == cloudai_core::liveness::Health::Active)
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("no worker registered".into())
}

fn task_spec(args: &Args) -> Result<TaskSpec, String> {
    let resources = Resources::new(args.cpu, args.mem, 0.0, 0).map_err(|e| e.to_string())?;
    Ok(TaskSpec::new(
        args.image.clone(),
        vec!["sh".into(), "-c".into(), args.command.clone()],
        resources,
    ))
}

async fn drive(client: &MasterClient, args: &Args) -> Result<(Duration, u64, u64), String> {
    let spec = task_spec(args)?;
    let start = Instant::now();
    submit_all(client, &spec, args.tasks, args.concurrency).await?;
    // The store counts: no task list crosses the wire while waiting.
    loop {
        let counts = client.task_counts().await.map_err(|e| e.to_string())?;
        // Parked tasks stay pending throughout.
        let done = counts.completed + counts.failed;
        if done >= args.tasks as u64 {
            return Ok((start.elapsed(), counts.completed, counts.failed));
        }
        if start.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "only {done} of {} tasks ended within 10 minutes",
                args.tasks
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
