//! Seeded random fault explorer: a master and three workers under random
//! submits (with random attempt policies: retries, requeue or not, crash
//! limits, time limits, tasks that fail until a given attempt), cancels
//! (single, bulk, forced), partitions, crashes, graceful shutdowns,
//! restarts, reconciles and a lossy, slow, duplicating network.
//! After every step the always-true invariants are checked; after healing
//! everything and letting the cluster settle, the end state is checked:
//! every task ended exactly once, no allocation leaked, reconciliation has
//! nothing to fix, no container is left running, and every cancel that
//! succeeded left its task `cancelled`.
//!
//! `SIM_SEEDS` sets how many seeds run (default 200); `SIM_SEED_START` the
//! first. A failure names its seed: rerun it alone with
//! `SIM_SEED_START=<seed> SIM_SEEDS=1`.

use std::time::Duration;

use cloudai_core::master::MasterConfig;
use cloudai_core::model::{AttemptPolicy, Resources, TaskId, TaskSpec, TaskStatus, WorkerId};
use cloudai_core::placement::Policy;
use cloudai_core::rng::SplitMix64;
use cloudai_core::store::{TaskFilter, TaskStore};
use cloudai_core::testing::sim::{fake_task, Faults, SimCluster};

const STEPS: usize = 40;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn random_faults_never_break_the_invariants() {
    let start = env("SIM_SEED_START", 0);
    let count = env("SIM_SEEDS", 200);
    for seed in start..start + count {
        let run = std::panic::catch_unwind(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime")
                .block_on(explore(seed))
        });
        if let Err(panic) = run {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("seed {seed} failed (rerun: SIM_SEED_START={seed} SIM_SEEDS=1): {msg}");
        }
    }
}

fn pick<T: Clone>(rng: &mut SplitMix64, items: &[T]) -> Option<T> {
    (!items.is_empty()).then(|| items[rng.below(items.len() as u64) as usize].clone())
}

async fn explore(seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let faults = if rng.chance(0.5) {
        Faults::HOSTILE
    } else {
        Faults {
            max_delay: Duration::from_millis(50),
            ..Faults::NONE
        }
    };
    let config = MasterConfig {
        policy: pick(&mut rng, &Policy::ALL).expect("policies"),
        // No periodic repair: the services alone must keep the ledger exact.
        reconcile_interval: None,
        seed,
        ..MasterConfig::default()
    };
    let mut c = SimCluster::start(seed, faults, config).await;
    for i in 0..3 {
        let cpu = 2.0 + rng.below(4) as f64;
        c.start_worker(
            &format!("w{i}"),
            Resources::new(cpu, 16.0, 100.0, 2).expect("valid"),
        )
        .await;
    }
    let mut tasks: Vec<TaskId> = Vec::new();
    let mut cancelled: Vec<TaskId> = Vec::new();
    for _ in 0..STEPS {
        let live = c.live_workers();
        let all = c.all_workers();
        match rng.below(100) {
            0..=29 => {
                let secs = 1 + rng.below(60);
                let cpu = 0.5 * (1 + rng.below(4)) as f64;
                let mut spec = match rng.below(10) {
                    0 => TaskSpec::new(
                        "fake",
                        vec!["stubborn".into(), secs.to_string()],
                        Resources::new(cpu, 0.5, 0.0, 0).expect("valid"),
                    ),
                    1 | 2 => TaskSpec::new(
                        "fake",
                        vec![
                            "fail-until".into(),
                            (1 + rng.below(3)).to_string(),
                            secs.to_string(),
                        ],
                        Resources::new(cpu, 0.5, 0.0, 0).expect("valid"),
                    ),
                    _ => fake_task(secs, rng.below(2) as i32, cpu),
                };
                // Some ask for GPUs: each run must get its own.
                if rng.chance(0.3) {
                    spec.resources.gpus = 1 + rng.below(2) as u32;
                }
                spec.policy = AttemptPolicy {
                    retries: rng.below(3) as u32,
                    retry_delay: Duration::from_secs(rng.below(20)),
                    crash_limit: rng.below(4) as u32,
                    requeue: rng.chance(0.8),
                    time_limit: rng
                        .chance(0.3)
                        .then(|| Duration::from_secs(1 + rng.below(40))),
                    retry_on_timeout: rng.chance(0.3),
                };
                tasks.push(c.master.submit(spec).await.expect("submit"));
            }
            30..=41 => {
                if let Some(t) = pick(&mut rng, &tasks) {
                    if c.master.cancel(&t, rng.chance(0.3)).await.is_ok() {
                        cancelled.push(t);
                    }
                }
            }
            42..=45 => {
                if let Some(w) = pick(&mut rng, &all) {
                    let on_w = TaskFilter {
                        statuses: vec![],
                        worker: Some(w),
                        array: None,
                    };
                    let done = c
                        .master
                        .cancel_all(&on_w, rng.chance(0.5))
                        .await
                        .expect("bulk cancel");
                    cancelled.extend(done.into_iter().map(|(t, _)| t));
                }
            }
            46..=53 => {
                if let Some(w) = pick(&mut rng, &live) {
                    c.partition(&w);
                }
            }
            54..=61 => {
                if let Some(w) = pick(&mut rng, &all) {
                    c.heal(&w);
                }
            }
            62..=66 => {
                if let Some(w) = pick(&mut rng, &live) {
                    c.crash_worker(&w);
                }
            }
            67..=74 => {
                let down: Vec<WorkerId> =
                    all.iter().filter(|w| !live.contains(w)).cloned().collect();
                if let Some(w) = pick(&mut rng, &down) {
                    c.restart_worker(&w).await;
                }
            }
            75..=78 => {
                if let Some(w) = pick(&mut rng, &live) {
                    c.shutdown_worker(&w).await;
                }
            }
            79..=81 => {
                let _ = c.master.reconcile().await.expect("reconcile");
            }
            82..=83 => c.master.reconnect_now(),
            84..=88 => {
                if let Some(w) = pick(&mut rng, &live) {
                    c.kill_agent(&w);
                }
            }
            _ => {}
        }
        c.run_for(Duration::from_millis(rng.below(20_000))).await;
        c.check().await;
    }
    for w in c.all_workers() {
        c.heal(&w);
        c.restart_worker(&w).await;
    }
    c.run_for(Duration::from_secs(900)).await;
    c.check_quiescent().await;
    for t in &cancelled {
        let task = c.store.get_task(t).await.expect("get").expect("exists");
        assert_eq!(
            task.status,
            TaskStatus::Cancelled,
            "seed {seed}: cancel of {t} succeeded but it ended {}",
            task.status
        );
    }
    c.stop().await;
}
