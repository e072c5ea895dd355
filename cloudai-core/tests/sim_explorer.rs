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
//! The same exploration runs with two masters sharing the store under the
//! lease: it also pauses, resumes, cuts off, heals, crashes, restarts and
//! gracefully hands over masters, sometimes with one master's clock at
//! half speed, submits at whichever master leads and retries a failed
//! submit there with the same request id. On top of the invariants above
//! it checks the lease's (see `SimCluster::start_ha`): no two acting
//! windows overlap (unless a clock is slow), no write lands on a document
//! fenced above its term, terms and fences never go back, no attempt
//! starts twice, and every submit made exactly one task.
//!
//! `SIM_SEEDS` sets how many seeds run (default 200); `SIM_SEED_START` the
//! first. A failure names its seed: rerun it alone with
//! `SIM_SEED_START=<seed> SIM_SEEDS=1` (and the test's name).

use std::time::Duration;

use cloudai_core::master::MasterConfig;
use cloudai_core::master::{Master, SubmitOptions};
use cloudai_core::model::{
    AttemptPolicy, RequestId, Resources, TaskId, TaskSpec, TaskStatus, WorkerId,
};
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
    explore_seeds(1);
}

#[test]
fn two_masters_under_random_faults_never_break_the_invariants() {
    explore_seeds(2);
}

fn explore_seeds(masters: usize) {
    let start = env("SIM_SEED_START", 0);
    let count = env("SIM_SEEDS", 200);
    for seed in start..start + count {
        let run = std::panic::catch_unwind(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime")
                .block_on(explore(seed, masters))
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

/// A client's call: run on a task of its own (as the gRPC layer runs each
/// call), given up after a while (its master may be paused). `None`: no
/// answer in time.
async fn answered<T: Send + 'static>(
    call: impl std::future::Future<Output = T> + Send + 'static,
) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(10), tokio::spawn(call))
        .await
        .ok()
        .map(|joined| joined.expect("the call does not panic"))
}

/// Submits at whichever master leads, each under its request id until one
/// is acknowledged.
#[derive(Default)]
struct Submits {
    waiting: Vec<(RequestId, TaskSpec)>,
    made: Vec<TaskId>,
    requests: usize,
}

impl Submits {
    async fn submit(&mut self, leader: Option<Master>, spec: TaskSpec, seed: u64) {
        self.requests += 1;
        let request = RequestId::new(format!("req-{}", self.requests)).expect("valid id");
        self.waiting.push((request, spec));
        self.retry(leader, seed).await;
    }

    async fn retry(&mut self, leader: Option<Master>, seed: u64) {
        let Some(m) = leader else { return };
        let mut still = Vec::new();
        for (request, spec) in std::mem::take(&mut self.waiting) {
            let options = SubmitOptions {
                request: Some(request.clone()),
                ..SubmitOptions::default()
            };
            let submit = {
                let (m, spec) = (m.clone(), spec.clone());
                answered(async move { m.submit_with(spec, options).await }).await
            };
            match submit {
                // No answer in time: the outcome is unknown; retried.
                None => still.push((request, spec)),
                Some(Ok(id)) => self.made.push(id),
                Some(Err(e))
                    if e.is_transient() || matches!(e, cloudai_core::Error::Fenced { .. }) =>
                {
                    still.push((request, spec))
                }
                Some(Err(e)) => panic!("seed {seed}: submit under {request} refused: {e}"),
            }
        }
        self.waiting = still;
    }
}

async fn explore(seed: u64, masters: usize) {
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
        lease_ttl: Duration::from_secs(6),
        ..MasterConfig::default()
    };
    let ha = masters > 1;
    let mut c = if ha {
        let slow = rng.chance(0.15).then_some(1);
        SimCluster::start_ha(seed, faults, config, masters, slow).await
    } else {
        SimCluster::start(seed, faults, config).await
    };
    let mut submits = Submits::default();
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
        let leader = c.leader();
        submits.retry(leader.clone(), seed).await;
        let op = rng.below(if ha { 112 } else { 100 });
        match op {
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
                if ha {
                    submits.submit(leader, spec, seed).await;
                } else {
                    tasks.push(c.master.submit(spec).await.expect("submit"));
                }
            }
            30..=41 => {
                let known: Vec<TaskId> = tasks.iter().chain(&submits.made).cloned().collect();
                if let (Some(t), Some(m)) = (pick(&mut rng, &known), leader.clone()) {
                    let force = rng.chance(0.3);
                    let id = t.clone();
                    let done = answered(async move { m.cancel(&id, force).await }).await;
                    if matches!(done, Some(Ok(_))) {
                        cancelled.push(t);
                    }
                }
            }
            42..=45 => {
                if let Some(w) = pick(&mut rng, &all) {
                    let on_w = TaskFilter {
                        statuses: vec![],
                        worker: Some(w),
                        ..TaskFilter::default()
                    };
                    let force = rng.chance(0.5);
                    if let Some(m) = leader.clone() {
                        let done = answered(async move { m.cancel_all(&on_w, force).await }).await;
                        let done = match done {
                            Some(done) if ha => done.unwrap_or_default(),
                            Some(done) => done.expect("bulk cancel"),
                            None if ha => Vec::new(),
                            None => panic!("seed {seed}: bulk cancel unanswered"),
                        };
                        cancelled.extend(done.into_iter().map(|(t, _)| t));
                    }
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
                if let Some(m) = leader.clone() {
                    let done = answered(async move { m.reconcile().await.map(drop) }).await;
                    assert!(
                        ha || matches!(done, Some(Ok(()))),
                        "seed {seed}: reconcile failed"
                    );
                }
            }
            82..=83 => {
                if let Some(m) = &leader {
                    m.reconnect_now();
                }
            }
            84..=88 => {
                if let Some(w) = pick(&mut rng, &live) {
                    c.kill_agent(&w);
                }
            }
            100..=102 => c.pause_master(rng.below(masters as u64) as usize),
            103..=104 => c.resume_master(rng.below(masters as u64) as usize),
            105 => c.cut_master(rng.below(masters as u64) as usize),
            106..=107 => c.crash_master(rng.below(masters as u64) as usize),
            108..=109 => c.restart_master(rng.below(masters as u64) as usize),
            110..=111 => c.hand_over(rng.below(masters as u64) as usize).await,
            _ => {}
        }
        c.run_for(Duration::from_millis(rng.below(20_000))).await;
        c.check().await;
    }
    if ha {
        c.heal_masters();
    }
    for w in c.all_workers() {
        c.heal(&w);
        c.restart_worker(&w).await;
    }
    // Every submit not yet acknowledged is retried at the leader until it is.
    for _ in 0..60 {
        if submits.waiting.is_empty() {
            break;
        }
        c.run_for(Duration::from_secs(5)).await;
        submits.retry(c.leader(), seed).await;
    }
    assert!(
        submits.waiting.is_empty(),
        "seed {seed}: {} submits never acknowledged",
        submits.waiting.len()
    );
    c.run_for(Duration::from_secs(900)).await;
    c.check_quiescent().await;
    if ha {
        let stored = c.statuses().await;
        assert_eq!(
            stored.len(),
            submits.requests,
            "seed {seed}: {} submits made {} tasks",
            submits.requests,
            stored.len()
        );
        for t in &submits.made {
            assert!(
                stored.contains_key(t),
                "seed {seed}: acknowledged task {t} is not stored"
            );
        }
    }
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
