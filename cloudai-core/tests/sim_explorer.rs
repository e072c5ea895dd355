//! Seeded random fault explorer: a master and three workers under random
//! submits (with random attempt policies: retries, requeue or not, crash
//! limits, time limits, tasks that fail until a given attempt), cancels
//! (single, bulk, forced), partitions, crashes, graceful shutdowns,
//! restarts, reconciles and a lossy, slow, duplicating network.
//!
//! Submits also build pipelines (see `submit_pipeline`): chains and
//! diamonds of after-ok / after-any / after-notok dependencies, arrays
//! followed by an `after_corr` array or by an evaluation after-ok on the
//! whole array, throttled arrays, and dependents of tasks submitted
//! earlier (which may have ended already); some tasks carry a priority,
//! some constraints on the labels two of the three workers carry (then
//! mostly waiting for capacity), and a submit no worker could ever match
//! must be refused. Whole arrays are cancelled at once too.
//!
//! After every step the always-true invariants are checked (among them,
//! `SimCluster::check`'s: no dependent assigned before its parents ended
//! as it asks, a dependent cancelled as never satisfiable never ran and
//! names why, no throttled array over its limit, no constrained task on a
//! worker its constraints refuse; with one master, no dependent left
//! waiting on parents that ended); after healing everything and letting
//! the cluster settle, the end state is checked:
//! every task ended exactly once (no dependent waits on ended parents, no
//! throttled array is left unfinished), no allocation leaked,
//! reconciliation has nothing to fix, no container is left running, and
//! every cancel that succeeded left its task `cancelled`.
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
use cloudai_core::master::{Master, ParentRef, SubmitOptions};
use cloudai_core::model::{
    ArrayId, ArrayIndices, AttemptPolicy, Condition, Constraint, Dependency, Labels, RequestId,
    Resources, TaskId, TaskSpec, TaskStatus, WorkerId,
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

/// What one submit asks for: a task, or an array of tasks.
#[derive(Debug, Clone)]
enum Shape {
    Task(TaskSpec),
    Array(TaskSpec, ArrayIndices),
}

impl Shape {
    /// How many tasks it makes.
    fn tasks(&self) -> usize {
        match self {
            Shape::Task(_) => 1,
            Shape::Array(_, indices) => indices.len(),
        }
    }
}

/// What an acknowledged submit made.
#[derive(Debug, Clone)]
enum Made {
    Task(TaskId),
    Array(ArrayId, Vec<TaskId>),
}

/// One submit, under its request id (with two masters) until one is
/// acknowledged.
#[derive(Debug, Clone)]
struct Request {
    shape: Shape,
    options: SubmitOptions,
}

/// Submits at whichever master leads, each under its request id until one
/// is acknowledged (with one master, without one: its answer is sure).
#[derive(Default)]
struct Submits {
    ha: bool,
    waiting: Vec<Request>,
    /// Every task an acknowledged submit made.
    made: Vec<TaskId>,
    /// Every array an acknowledged submit made.
    arrays: Vec<ArrayId>,
    requests: usize,
    /// How many tasks the submits not refused make.
    expected: usize,
}

impl Submits {
    fn new(ha: bool) -> Submits {
        Submits {
            ha,
            ..Submits::default()
        }
    }

    /// Submits `shape` with `options`; what it made, if acknowledged now
    /// (else it is retried with the others).
    async fn submit(
        &mut self,
        leader: Option<Master>,
        shape: Shape,
        mut options: SubmitOptions,
        seed: u64,
    ) -> Option<Made> {
        self.requests += 1;
        self.expected += shape.tasks();
        if self.ha {
            let request = RequestId::new(format!("req-{}", self.requests)).expect("valid id");
            options.request = Some(request);
        }
        let request = Request { shape, options };
        let Some(m) = leader else {
            self.waiting.push(request);
            return None;
        };
        match self.attempt(&m, &request, seed).await {
            Some(Some(made)) => Some(made),
            Some(None) => None,
            None => {
                self.waiting.push(request);
                None
            }
        }
    }

    /// Tries `request` at `m` once: `Some(Some(_))` made, `Some(None)`
    /// refused as it may be (a constraint no registered worker matches
    /// yet), `None` unknown (retried).
    async fn attempt(&mut self, m: &Master, request: &Request, seed: u64) -> Option<Option<Made>> {
        let answer = {
            let (m, r) = (m.clone(), request.clone());
            answered(async move {
                match r.shape {
                    Shape::Task(spec) => m.submit_with(spec, r.options).await.map(Made::Task),
                    Shape::Array(spec, indices) => m
                        .submit_array_with(spec, &indices, r.options)
                        .await
                        .map(|(a, ids)| Made::Array(a, ids)),
                }
            })
            .await
        };
        let unanswered = || {
            assert!(
                self.ha,
                "seed {seed}: a submit to the one master went unanswered"
            );
            None
        };
        match answer {
            None => unanswered(),
            Some(Ok(made)) => {
                match &made {
                    Made::Task(t) => self.made.push(t.clone()),
                    Made::Array(a, ids) => {
                        self.arrays.push(a.clone());
                        self.made.extend(ids.iter().cloned());
                    }
                }
                Some(Some(made))
            }
            Some(Err(e))
                if self.ha
                    && (e.is_transient() || matches!(e, cloudai_core::Error::Fenced { .. })) =>
            {
                None
            }
            Some(Err(e)) if refusable(request) && refused_for_constraints(&e) => {
                self.expected -= request.shape.tasks();
                Some(None)
            }
            Some(Err(e)) => panic!(
                "seed {seed}: submit {:?} refused: {e}",
                request.options.request
            ),
        }
    }

    async fn retry(&mut self, leader: Option<Master>, seed: u64) {
        let Some(m) = leader else { return };
        let mut still = Vec::new();
        for request in std::mem::take(&mut self.waiting) {
            if self.attempt(&m, &request, seed).await.is_none() {
                still.push(request);
            }
        }
        self.waiting = still;
    }
}

/// Whether a submit may be refused because no registered worker matches
/// its constraints (it does not wait for capacity, and a worker that
/// matches may not have registered yet).
fn refusable(request: &Request) -> bool {
    let spec = match &request.shape {
        Shape::Task(spec) | Shape::Array(spec, _) => spec,
    };
    !spec.constraints.is_empty() && !request.options.wait_for_capacity
}

fn refused_for_constraints(e: &cloudai_core::Error) -> bool {
    matches!(e, cloudai_core::Error::InvalidInput(_))
        && e.to_string().contains("no registered worker")
        && e.to_string().contains("matches")
}

// ---- pipelines ------------------------------------------------------------

/// The explorer's workers' labels: w0 and w1 carry some, w2 none.
fn worker_labels(i: usize) -> Labels {
    let pairs: &[(&str, &str)] = match i {
        0 => &[("zone", "a"), ("gpu", "a100")],
        1 => &[("zone", "b"), ("spot", "yes")],
        _ => &[],
    };
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Constraints, each satisfied by at least one of the workers (some by
/// one alone, so its tasks wait while it is down).
const SATISFIABLE: &[&[&str]] = &[
    &["zone=a"],
    &["zone=b"],
    &["gpu"],
    &["!spot"],
    &["zone in (a,b)"],
    &["zone!=a"],
    &["spot"],
    &["gpu", "zone=a"],
];

/// Constraints no worker satisfies.
const UNSATISFIABLE: &[&[&str]] = &[&["zone=c"], &["gpu", "spot"], &["gpu in (h100)"]];

fn constraints(texts: &[&str]) -> Vec<Constraint> {
    texts
        .iter()
        .map(|c| c.parse().expect("valid constraint"))
        .collect()
}

const CONDITIONS: [Condition; 3] = [
    Condition::AfterOk,
    Condition::AfterAny,
    Condition::AfterNotOk,
];

/// A random fake program, resources and attempt policy, its runs at most
/// `max_secs` long.
fn random_spec(rng: &mut SplitMix64, max_secs: u64) -> TaskSpec {
    let secs = 1 + rng.below(max_secs);
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
    spec
}

/// Some tasks get a priority in -2..=3, some constraints on their worker's
/// labels (and then mostly wait for a matching worker rather than be
/// refused if none registered yet).
fn decorate(rng: &mut SplitMix64, spec: &mut TaskSpec, options: &mut SubmitOptions) {
    if rng.chance(0.3) {
        spec.priority = rng.below(6) as i32 - 2;
    }
    if rng.chance(0.25) {
        spec.constraints = constraints(pick(rng, SATISFIABLE).expect("constraints"));
        options.wait_for_capacity = rng.chance(0.7);
    }
}

/// A task with random decorations.
fn node(rng: &mut SplitMix64, max_secs: u64) -> (TaskSpec, SubmitOptions) {
    let mut spec = random_spec(rng, max_secs);
    let mut options = SubmitOptions::default();
    decorate(rng, &mut spec, &mut options);
    (spec, options)
}

/// Makes `spec` wait on `parent` under `condition`: in the spec itself or
/// named in the submit's options, either way.
fn depend(
    rng: &mut SplitMix64,
    spec: &mut TaskSpec,
    options: &mut SubmitOptions,
    parent: &TaskId,
    condition: Condition,
) {
    if rng.chance(0.5) {
        spec.after.push(Dependency {
            task: parent.clone(),
            condition,
        });
    } else {
        options.after.push(ParentRef {
            condition,
            id: parent.to_string(),
        });
    }
}

fn indices(n: u64) -> ArrayIndices {
    format!("0-{}", n.max(1) - 1)
        .parse()
        .expect("valid indices")
}

/// Submits a random dependency graph (or throttled array): a chain, a
/// diamond, an array followed by an `after_corr` array, an array followed
/// by an evaluation after-ok on all of it, a throttled array alone, or a
/// dependent of a task submitted earlier. Stops at the first submit not
/// acknowledged at once (its dependents could not name it).
async fn submit_pipeline(
    rng: &mut SplitMix64,
    submits: &mut Submits,
    leader: Option<Master>,
    seed: u64,
) {
    let task = |made: Option<Made>| match made {
        Some(Made::Task(t)) => Some(t),
        _ => None,
    };
    match rng.below(6) {
        // A chain A → B → C (→ D), each link's condition random.
        0 => {
            let (spec, options) = node(rng, 20);
            let shape = Shape::Task(spec);
            let Some(mut parent) = task(submits.submit(leader.clone(), shape, options, seed).await)
            else {
                return;
            };
            for _ in 0..1 + rng.below(3) {
                let (mut spec, mut options) = node(rng, 20);
                let condition = pick(rng, &CONDITIONS).expect("conditions");
                depend(rng, &mut spec, &mut options, &parent, condition);
                let made = submits.submit(leader.clone(), Shape::Task(spec), options, seed);
                let Some(next) = task(made.await) else {
                    return;
                };
                parent = next;
            }
        }
        // A diamond: A; B and C after A; D after B and C.
        1 => {
            let (spec, options) = node(rng, 20);
            let made = submits.submit(leader.clone(), Shape::Task(spec), options, seed);
            let Some(a) = task(made.await) else { return };
            let mut middle = Vec::new();
            for _ in 0..2 {
                let (mut spec, mut options) = node(rng, 20);
                let condition = pick(rng, &CONDITIONS).expect("conditions");
                depend(rng, &mut spec, &mut options, &a, condition);
                let made = submits.submit(leader.clone(), Shape::Task(spec), options, seed);
                let Some(t) = task(made.await) else { return };
                middle.push(t);
            }
            let (mut spec, mut options) = node(rng, 20);
            for t in &middle {
                let condition = pick(rng, &CONDITIONS).expect("conditions");
                depend(rng, &mut spec, &mut options, t, condition);
            }
            submits
                .submit(leader, Shape::Task(spec), options, seed)
                .await;
        }
        // An array, then an array whose member i waits for member i (one
        // index more or fewer: a member without a counterpart waits for
        // none); either may be throttled.
        2 => {
            let n = 2 + rng.below(4);
            let (spec, mut options) = node(rng, 15);
            options.array_limit = rng.chance(0.5).then(|| 1 + rng.below(3) as u32);
            let shape = Shape::Array(spec, indices(n));
            let Some(Made::Array(first, _)) =
                submits.submit(leader.clone(), shape, options, seed).await
            else {
                return;
            };
            let (spec, mut options) = node(rng, 15);
            options.after_corr = Some(first);
            options.array_limit = rng.chance(0.5).then(|| 1 + rng.below(3) as u32);
            let m = (n + rng.below(3)).saturating_sub(1);
            submits
                .submit(leader, Shape::Array(spec, indices(m)), options, seed)
                .await;
        }
        // An array, then an evaluation after-ok on every member.
        3 => {
            let (spec, mut options) = node(rng, 15);
            options.array_limit = rng.chance(0.5).then(|| 1 + rng.below(3) as u32);
            let shape = Shape::Array(spec, indices(2 + rng.below(4)));
            let Some(Made::Array(array, _)) =
                submits.submit(leader.clone(), shape, options, seed).await
            else {
                return;
            };
            let (spec, mut options) = node(rng, 15);
            let condition = if rng.chance(0.8) {
                Condition::AfterOk
            } else {
                pick(rng, &CONDITIONS).expect("conditions")
            };
            options.after.push(ParentRef {
                condition,
                id: array.to_string(),
            });
            submits
                .submit(leader, Shape::Task(spec), options, seed)
                .await;
        }
        // A throttled array alone.
        4 => {
            let (spec, mut options) = node(rng, 20);
            options.array_limit = Some(1 + rng.below(3) as u32);
            let shape = Shape::Array(spec, indices(3 + rng.below(6)));
            submits.submit(leader, shape, options, seed).await;
        }
        // A dependent of one or two tasks submitted earlier, which may have
        // ended already (or of a whole earlier array).
        _ => {
            let (mut spec, mut options) = node(rng, 20);
            if rng.chance(0.3) {
                if let Some(array) = pick(rng, &submits.arrays) {
                    options.after.push(ParentRef {
                        condition: pick(rng, &CONDITIONS).expect("conditions"),
                        id: array.to_string(),
                    });
                }
            }
            for _ in 0..1 + rng.below(2) {
                if let Some(parent) = pick(rng, &submits.made) {
                    let named = spec.after.iter().any(|d| d.task == parent)
                        || options.after.iter().any(|r| r.id == parent.as_str());
                    if !named {
                        let condition = pick(rng, &CONDITIONS).expect("conditions");
                        depend(rng, &mut spec, &mut options, &parent, condition);
                    }
                }
            }
            submits
                .submit(leader, Shape::Task(spec), options, seed)
                .await;
        }
    }
}

/// A submit no worker's labels could ever match, without waiting for
/// capacity, is refused once a worker is known (and never stored).
async fn probe_unmatchable(rng: &mut SplitMix64, leader: Option<Master>, ha: bool, seed: u64) {
    let Some(m) = leader else { return };
    if m.workers().is_empty() {
        return;
    }
    let mut spec = fake_task(1, 0, 0.5);
    spec.constraints = constraints(pick(rng, UNSATISFIABLE).expect("constraints"));
    let shown = format!("{:?}", spec.constraints);
    let answer = answered(async move { m.submit(spec).await }).await;
    match answer {
        None if ha => {}
        None => panic!("seed {seed}: a submit to the one master went unanswered"),
        Some(Err(e)) if ha && e.is_transient() => {}
        Some(Err(e)) => assert!(
            refused_for_constraints(&e),
            "seed {seed}: an unmatchable submit ({shown}) was refused otherwise: {e}"
        ),
        Some(Ok(t)) => {
            panic!("seed {seed}: task {t} was accepted though no worker matches {shown}")
        }
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
    let mut submits = Submits::new(ha);
    for i in 0..3 {
        let cpu = 2.0 + rng.below(4) as f64;
        c.label_worker(&format!("w{i}"), worker_labels(i));
        c.start_worker(
            &format!("w{i}"),
            Resources::new(cpu, 16.0, 100.0, 2).expect("valid"),
        )
        .await;
    }
    let mut cancelled: Vec<TaskId> = Vec::new();
    for _ in 0..STEPS {
        let live = c.live_workers();
        let all = c.all_workers();
        let leader = c.leader();
        submits.retry(leader.clone(), seed).await;
        let op = rng.below(if ha { 112 } else { 100 });
        match op {
            0..=17 => {
                let (spec, options) = node(&mut rng, 60);
                submits
                    .submit(leader, Shape::Task(spec), options, seed)
                    .await;
            }
            18..=28 => submit_pipeline(&mut rng, &mut submits, leader, seed).await,
            29 => probe_unmatchable(&mut rng, leader, ha, seed).await,
            30..=32 if !submits.arrays.is_empty() => {
                // A whole array at once.
                let array = pick(&mut rng, &submits.arrays);
                if let (Some(array), Some(m)) = (array, leader.clone()) {
                    let members = TaskFilter {
                        array: Some(array),
                        ..TaskFilter::default()
                    };
                    let force = rng.chance(0.3);
                    let done = answered(async move { m.cancel_all(&members, force).await }).await;
                    match done {
                        Some(Ok(done)) => cancelled.extend(done.into_iter().map(|(t, _)| t)),
                        Some(Err(e)) => assert!(ha, "seed {seed}: array cancel failed: {e}"),
                        None => assert!(ha, "seed {seed}: array cancel unanswered"),
                    }
                }
            }
            30..=41 => {
                if let (Some(t), Some(m)) = (pick(&mut rng, &submits.made), leader.clone()) {
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
    // Pipelines (chains of retried tasks behind throttled arrays) may take
    // longer: wait until every task ended, then for the stops to land.
    for _ in 0..60 {
        if c.statuses().await.values().all(|s| s.is_terminal()) {
            break;
        }
        c.run_for(Duration::from_secs(60)).await;
    }
    c.run_for(Duration::from_secs(120)).await;
    c.check_quiescent().await;
    if ha {
        let stored = c.statuses().await;
        assert_eq!(
            stored.len(),
            submits.expected,
            "seed {seed}: {} submits, to make {} tasks, made {}",
            submits.requests,
            submits.expected,
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
