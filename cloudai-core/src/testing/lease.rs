//! The [`LeaseStore`] conformance suite, with the fencing rules it rests on:
//! the lease's conditional swaps, [`LeaseStore::raise_fence`] and
//! [`LeaseStore::adopt_pending`], the refusal of every fenced write of a
//! lower term ([`TaskStore::fenced`], [`WorkerRegistry::fenced`]) and
//! request ids ([`TaskStore::claim_request`]).
//!
//! A backend is one object that is all three stores, as a master uses it:
//!
//! ```
//! use std::sync::Arc;
//! use cloudai_core::memory::MemoryStore;
//! use cloudai_core::testing::lease::{self, LeaseBackend};
//!
//! # tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(async {
//! lease::run_all(|| async { Arc::new(MemoryStore::new()) as Arc<dyn LeaseBackend> }).await;
//! # });
//! ```

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::{pending_task, task_id, worker_id};
use crate::model::{
    ArrayId, Drain, Heartbeat, RequestId, Resources, TaskRecord, TaskStatus, Telemetry, Term,
    Timestamp, WorkerId, WorkerRecord,
};
use crate::store::{
    Assignment, CasOutcome, LeaseRecord, LeaseStore, RequestClaim, StatusChange, Submitted,
    TaskStore, WorkerGuard, WorkerRegistry,
};
use crate::{Error, Result};

/// A backend as a master uses it: tasks, workers and the lease in one.
pub trait LeaseBackend: TaskStore + WorkerRegistry + LeaseStore {}

impl<T: TaskStore + WorkerRegistry + LeaseStore> LeaseBackend for T {}

/// Racers in [`racers_win_once_per_round`].
const RACERS: usize = 6;
/// Rounds in [`racers_win_once_per_round`]: enough to interleave on a
/// multi-threaded runtime, few enough for a remote database.
const ROUNDS: u64 = 150;
/// Tasks in [`raise_covers_every_task_however_many`]: more than two of the
/// batches a backend may raise at a time.
const MANY: u64 = 2_050;

/// Runs every case, each on a fresh backend from `new_backend`.
pub async fn run_all<B, Fut>(new_backend: B)
where
    B: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn LeaseBackend>>,
{
    create_renew_and_refuse_a_stale_renewal(new_backend().await).await;
    takeover_only_on_the_value_read(new_backend().await).await;
    two_racing_takeovers_have_one_winner(new_backend().await).await;
    racers_win_once_per_round(new_backend().await).await;
    release_then_takeover(new_backend().await).await;
    raise_never_lowers_a_fence(new_backend().await).await;
    raise_covers_live_tasks_and_workers_only(new_backend().await).await;
    raise_covers_every_task_however_many(new_backend().await).await;
    adopt_pending_takes_late_tasks_once(new_backend().await).await;
    update_status_refuses_a_lower_term(new_backend().await).await;
    upsert_worker_refuses_a_lower_term(new_backend().await).await;
    set_drain_refuses_a_lower_term(new_backend().await).await;
    remove_worker_refuses_a_lower_term(new_backend().await).await;
    heartbeats_refuse_a_lower_term(new_backend().await).await;
    request_ids_are_claimed_once(new_backend().await).await;
    racing_claims_of_one_request_id(new_backend().await).await;
}

/// The task store of `b` whose writes carry `term`.
pub fn tasks_at(b: &dyn LeaseBackend, term: u64) -> Arc<dyn TaskStore> {
    TaskStore::fenced(b, Term::new(term))
}

/// The worker registry of `b` whose writes carry `term`.
pub fn workers_at(b: &dyn LeaseBackend, term: u64) -> Arc<dyn WorkerRegistry> {
    WorkerRegistry::fenced(b, Term::new(term))
}

/// Panics unless `r` is [`Error::Fenced`] of a writer at `writer` on a
/// document fenced at `fence`.
pub fn expect_fenced<T: Debug>(r: Result<T>, writer: u64, fence: u64, what: &str) {
    match r {
        Err(Error::Fenced {
            writer: w,
            fence: f,
        }) => assert_eq!(
            (w.get(), f.get()),
            (writer, fence),
            "{what}: the refusal must name the writer's term and the document's fence"
        ),
        other => panic!(
            "{what}: a write of term {writer} on a document fenced at {fence} must fail with \
             Error::Fenced and change nothing, got {other:?}"
        ),
    }
}

/// [`expect_fenced`] for `update_status`, naming a fence refusal reported
/// as a rejected compare-and-set.
fn expect_cas_fenced(r: Result<CasOutcome>, writer: u64, fence: u64, what: &str) {
    if let Ok(CasOutcome::Rejected { current }) = &r {
        panic!(
            "{what}: update_status of term {writer} on a task fenced at {fence} must be \
             Err(Error::Fenced), not Ok(Rejected) (current: {current:?})"
        );
    }
    expect_fenced(r, writer, fence, what);
}

/// Panics unless `r` applied.
fn expect_applied(r: Result<CasOutcome>, what: &str) {
    match r {
        Ok(CasOutcome::Applied { .. }) => {}
        other => {
            panic!("{what}: a write of a term at or above the fence must apply, got {other:?}")
        }
    }
}

fn lease(holder: Option<&str>, term: u64, version: u64) -> LeaseRecord {
    LeaseRecord {
        holder: holder.map(str::to_owned),
        run: format!("run-{}", holder.unwrap_or("none")),
        address: format!("127.0.0.1:{}", 7000 + term),
        term: Term::new(term),
        version,
        ttl: Duration::from_millis(3000),
    }
}

fn worker(id: &str, cpu: f64, at: u64) -> WorkerRecord {
    WorkerRecord::new(
        worker_id(id),
        Some(format!("127.0.0.1:{}", 50_000 + at)),
        Resources::new(cpu, 4.0, 10.0, 0).expect("valid"),
        Timestamp::from_millis(at),
    )
}

fn beat(id: &str, at: u64) -> Heartbeat {
    Heartbeat {
        worker: worker_id(id),
        at: Timestamp::from_millis(at),
        telemetry: Telemetry {
            running_tasks: 1,
            ..Telemetry::default()
        },
    }
}

/// Pending to running on `worker` (what an assignment writes).
fn assign(worker: &WorkerId, at: u64) -> StatusChange {
    StatusChange {
        allowed_from: vec![TaskStatus::Pending],
        expected_worker: WorkerGuard::Unassigned,
        expected_attempt: None,
        to: TaskStatus::Running,
        assignment: Assignment::Set(worker.clone(), vec![]),
        reason: None,
        not_before: None,
        push: None,
        at: Timestamp::from_millis(at),
    }
}

/// A change that keeps the task in `status` and sets its reason to `note`.
fn note(status: TaskStatus, note: &str, at: u64) -> StatusChange {
    StatusChange {
        allowed_from: vec![status],
        expected_worker: WorkerGuard::Any,
        expected_attempt: None,
        to: status,
        assignment: Assignment::Keep,
        reason: Some(note.into()),
        not_before: None,
        push: None,
        at: Timestamp::from_millis(at),
    }
}

/// Cancels a task in `from`.
fn cancel(from: TaskStatus, at: u64) -> StatusChange {
    StatusChange {
        to: TaskStatus::Cancelled,
        reason: Some("cancelled".into()),
        ..note(from, "", at)
    }
}

async fn read_task(b: &dyn LeaseBackend, id: &str) -> TaskRecord {
    b.get_task(&task_id(id))
        .await
        .expect("get task")
        .unwrap_or_else(|| panic!("task {id} must exist"))
}

async fn read_worker(b: &dyn LeaseBackend, id: &str) -> WorkerRecord {
    b.get_worker(&worker_id(id))
        .await
        .expect("get worker")
        .unwrap_or_else(|| panic!("worker {id} must exist"))
}

async fn read_lease(b: &dyn LeaseBackend) -> LeaseRecord {
    b.read_lease()
        .await
        .expect("read lease")
        .expect("the lease must exist once created")
}

/// The lease is created once; a renewal lands on the (term, version) it
/// names and a renewal naming an older version is refused.
pub async fn create_renew_and_refuse_a_stale_renewal(b: Arc<dyn LeaseBackend>) {
    assert_eq!(
        b.read_lease().await.expect("read"),
        None,
        "a new store has no lease"
    );
    let first = lease(Some("m-a"), 1, 0);
    b.create_lease(&first).await.expect("create");
    assert_eq!(
        read_lease(&*b).await,
        first,
        "the lease reads back as created"
    );

    let err = b
        .create_lease(&lease(Some("m-b"), 1, 0))
        .await
        .expect_err("a second create must fail");
    assert!(
        matches!(err, Error::AlreadyExists { .. }),
        "creating the lease twice must be AlreadyExists, got {err:?}"
    );
    assert_eq!(
        read_lease(&*b).await,
        first,
        "a refused create changes nothing"
    );

    let renewed = lease(Some("m-a"), 1, 1);
    assert!(
        b.swap_lease(Term::new(1), 0, &renewed)
            .await
            .expect("renew"),
        "a renewal on the (term, version) stored must land"
    );
    assert_eq!(read_lease(&*b).await, renewed);

    let stale = LeaseRecord {
        address: "stale".into(),
        ..lease(Some("m-a"), 1, 1)
    };
    assert!(
        !b.swap_lease(Term::new(1), 0, &stale).await.expect("swap"),
        "a renewal naming an old version must be refused"
    );
    assert!(
        !b.swap_lease(Term::new(2), 1, &stale).await.expect("swap"),
        "a swap naming another term must be refused"
    );
    assert_eq!(
        read_lease(&*b).await,
        renewed,
        "refused swaps change nothing"
    );

    let again = lease(Some("m-a"), 1, 2);
    assert!(b.swap_lease(Term::new(1), 1, &again).await.expect("renew"));
    assert_eq!(read_lease(&*b).await, again);
}

/// A takeover lands only on the (term, version) the candidate read: a
/// renewal in between defeats it, and the deposed holder's next renewal
/// is refused.
pub async fn takeover_only_on_the_value_read(b: Arc<dyn LeaseBackend>) {
    b.create_lease(&lease(Some("m-a"), 1, 0))
        .await
        .expect("create");
    let seen = read_lease(&*b).await;
    assert!(b
        .swap_lease(Term::new(1), 0, &lease(Some("m-a"), 1, 1))
        .await
        .expect("renew"));
    assert!(
        !b.swap_lease(seen.term, seen.version, &lease(Some("m-b"), 2, 0))
            .await
            .expect("takeover"),
        "a takeover on a (term, version) renewed since it was read must be refused"
    );
    assert_eq!(read_lease(&*b).await, lease(Some("m-a"), 1, 1));

    let seen = read_lease(&*b).await;
    let taken = lease(Some("m-b"), 2, 0);
    assert!(
        b.swap_lease(seen.term, seen.version, &taken)
            .await
            .expect("takeover"),
        "a takeover on the (term, version) read must land"
    );
    assert!(
        !b.swap_lease(Term::new(1), 1, &lease(Some("m-a"), 1, 2))
            .await
            .expect("renew"),
        "the deposed holder's renewal must be refused"
    );
    assert_eq!(read_lease(&*b).await, taken);
}

/// Two takeovers racing on one (term, version): exactly one lands, and the
/// lease is the winner's.
pub async fn two_racing_takeovers_have_one_winner(b: Arc<dyn LeaseBackend>) {
    b.create_lease(&lease(Some("m-a"), 1, 0))
        .await
        .expect("create");
    let mut set = JoinSet::new();
    for who in ["m-b", "m-c"] {
        let b = b.clone();
        set.spawn(async move {
            let mine = lease(Some(who), 2, 0);
            let won = b.swap_lease(Term::new(1), 0, &mine).await.expect("swap");
            (won, mine)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (won, mine) = joined.expect("racer panicked");
        if won {
            winners.push(mine);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "of two takeovers on one (term, version) exactly one must land: {winners:?}"
    );
    assert_eq!(
        read_lease(&*b).await,
        winners[0],
        "the lease is the winner's"
    );
}

/// What one racer did in one round.
#[derive(Debug)]
struct Swing {
    round: u64,
    seen: Option<(Term, u64)>,
    new: LeaseRecord,
    outcome: std::result::Result<bool, String>,
}

/// Six racers, each round reading the lease and then all swapping on what
/// they read (some renewing, some taking over): exactly one wins each
/// round, each round starts from the previous winner's record, and the
/// terms climb by one per takeover.
pub async fn racers_win_once_per_round(b: Arc<dyn LeaseBackend>) {
    b.create_lease(&lease(Some("racer-0"), 1, 0))
        .await
        .expect("create");
    let read_done = Arc::new(Barrier::new(RACERS));
    let swap_done = Arc::new(Barrier::new(RACERS));
    let mut set = JoinSet::new();
    for racer in 0..RACERS {
        let (b, read_done, swap_done) = (b.clone(), read_done.clone(), swap_done.clone());
        set.spawn(async move {
            let me = format!("racer-{racer}");
            let mut swings = Vec::new();
            // No panic in here: a racer that stopped would leave the
            // others waiting at a barrier for ever.
            for round in 0..ROUNDS {
                let seen = b.read_lease().await;
                read_done.wait().await;
                let (seen, new, outcome) = match seen {
                    Ok(Some(r)) => {
                        let renew = (round + racer as u64).is_multiple_of(3);
                        let new = if renew {
                            LeaseRecord {
                                holder: Some(me.clone()),
                                run: me.clone(),
                                version: r.version + 1,
                                ..r.clone()
                            }
                        } else {
                            lease(Some(&me), r.term.get() + 1, 0)
                        };
                        let outcome = b
                            .swap_lease(r.term, r.version, &new)
                            .await
                            .map_err(|e| e.to_string());
                        (Some((r.term, r.version)), new, outcome)
                    }
                    other => (
                        None,
                        lease(None, 0, 0),
                        Err(format!("read_lease: {other:?}")),
                    ),
                };
                swings.push(Swing {
                    round,
                    seen,
                    new,
                    outcome,
                });
                swap_done.wait().await;
            }
            swings
        });
    }
    let mut swings = Vec::new();
    while let Some(joined) = set.join_next().await {
        swings.extend(joined.expect("racer panicked"));
    }
    let failed: Vec<&Swing> = swings.iter().filter(|s| s.outcome.is_err()).collect();
    assert!(failed.is_empty(), "lease calls failed: {failed:?}");
    let mut previous: Option<LeaseRecord> = Some(lease(Some("racer-0"), 1, 0));
    for round in 0..ROUNDS {
        let this: Vec<&Swing> = swings.iter().filter(|s| s.round == round).collect();
        let expected = previous.as_ref().map(|p| (p.term, p.version));
        for s in &this {
            assert_eq!(
                s.seen, expected,
                "round {round}: every racer must read the previous round's winner"
            );
        }
        let won: Vec<&&Swing> = this.iter().filter(|s| s.outcome == Ok(true)).collect();
        assert_eq!(
            won.len(),
            1,
            "round {round}: of {RACERS} swaps on one (term, version) exactly one must land: {won:?}"
        );
        previous = Some(won[0].new.clone());
    }
    let last = previous.expect("rounds ran");
    assert_eq!(
        read_lease(&*b).await,
        last,
        "the lease is the last winner's"
    );
    let takeovers = swings
        .iter()
        .filter(|s| s.outcome == Ok(true) && s.new.version == 0)
        .count() as u64;
    assert_eq!(
        last.term.get(),
        1 + takeovers,
        "each landed takeover raises the term by exactly one"
    );
}

/// A holder releases at its own term (holder cleared, version + 1); a
/// candidate takes over from the released record; the old holder can no
/// longer renew.
pub async fn release_then_takeover(b: Arc<dyn LeaseBackend>) {
    b.create_lease(&lease(Some("m-a"), 1, 0))
        .await
        .expect("create");
    let released = lease(None, 1, 1);
    assert!(
        b.swap_lease(Term::new(1), 0, &released)
            .await
            .expect("release"),
        "a release on the (term, version) held must land"
    );
    let read = read_lease(&*b).await;
    assert_eq!(read, released, "a released lease reads back without holder");
    assert_eq!(read.holder, None);
    assert!(
        !b.swap_lease(Term::new(1), 0, &lease(Some("m-a"), 1, 1))
            .await
            .expect("renew"),
        "a renewal of the released version must be refused"
    );
    let taken = lease(Some("m-b"), 2, 0);
    assert!(
        b.swap_lease(read.term, read.version, &taken)
            .await
            .expect("takeover"),
        "a takeover from the released record must land"
    );
    assert_eq!(read_lease(&*b).await, taken);
    assert_eq!(
        read_lease(&*b).await.holder.as_deref(),
        Some("m-b"),
        "a holder set again after a release must read back"
    );
}

/// A raise to 5 then to 3 leaves the fences at 5: a write of term 4 is
/// still refused, one of term 5 lands.
pub async fn raise_never_lowers_a_fence(b: Arc<dyn LeaseBackend>) {
    b.insert_task(pending_task("t", 1)).await.expect("insert");
    b.upsert_worker(worker("w", 2.0, 1)).await.expect("upsert");
    assert_eq!(
        b.raise_fence(Term::new(5)).await.expect("raise"),
        2,
        "raise_fence returns how many live tasks and workers it covered"
    );
    assert_eq!(
        b.raise_fence(Term::new(3)).await.expect("raise"),
        2,
        "a lower raise still covers every live task and worker"
    );
    let task = read_task(&*b, "t").await;
    let w = read_worker(&*b, "w").await;
    expect_cas_fenced(
        tasks_at(&*b, 4)
            .update_status(&task_id("t"), &note(TaskStatus::Pending, "four", 5))
            .await,
        4,
        5,
        "raise_fence(3) after raise_fence(5) must not lower the task's fence",
    );
    expect_fenced(
        workers_at(&*b, 4)
            .set_drain(&worker_id("w"), Some(drain(5)))
            .await,
        4,
        5,
        "raise_fence(3) after raise_fence(5) must not lower the worker's fence",
    );
    assert_eq!(
        read_task(&*b, "t").await,
        task,
        "a refused write changes nothing"
    );
    assert_eq!(
        read_worker(&*b, "w").await,
        w,
        "a refused write changes nothing"
    );
    expect_applied(
        tasks_at(&*b, 5)
            .update_status(&task_id("t"), &note(TaskStatus::Pending, "five", 6))
            .await,
        "a write of the raised term",
    );
    workers_at(&*b, 5)
        .set_drain(&worker_id("w"), Some(drain(6)))
        .await
        .expect("a write of the raised term must land");
}

fn drain(at: u64) -> Drain {
    Drain {
        since: Timestamp::from_millis(at),
        deadline: None,
    }
}

/// A raise covers every task that has not ended and every worker, and
/// says how many; a finished task keeps its fence.
pub async fn raise_covers_live_tasks_and_workers_only(b: Arc<dyn LeaseBackend>) {
    let w = worker_id("w-1");
    for (id, at) in [("pending", 1), ("running", 2), ("done", 3), ("gone", 4)] {
        b.insert_task(pending_task(id, at)).await.expect("insert");
    }
    expect_applied(
        b.update_status(&task_id("running"), &assign(&w, 10)).await,
        "assign",
    );
    expect_applied(
        b.update_status(&task_id("done"), &cancel(TaskStatus::Pending, 11))
            .await,
        "cancel a pending task",
    );
    expect_applied(
        b.update_status(&task_id("gone"), &assign(&w, 12)).await,
        "assign",
    );
    expect_applied(
        b.update_status(&task_id("gone"), &cancel(TaskStatus::Running, 13))
            .await,
        "cancel a running task",
    );
    b.upsert_worker(worker("w-1", 2.0, 1))
        .await
        .expect("upsert");
    b.upsert_worker(worker("w-2", 2.0, 1))
        .await
        .expect("upsert");
    assert_eq!(
        b.raise_fence(Term::new(2)).await.expect("raise"),
        4,
        "raise_fence must cover the 2 tasks that have not ended and the 2 workers, and \
         return that count"
    );
    let t1 = tasks_at(&*b, 1);
    expect_cas_fenced(
        t1.update_status(&task_id("pending"), &assign(&w, 20)).await,
        1,
        2,
        "a pending task after raise_fence(2)",
    );
    expect_cas_fenced(
        t1.update_status(&task_id("running"), &cancel(TaskStatus::Running, 20))
            .await,
        1,
        2,
        "a running task after raise_fence(2)",
    );
    for id in ["w-1", "w-2"] {
        expect_fenced(
            workers_at(&*b, 1)
                .set_drain(&worker_id(id), Some(drain(20)))
                .await,
            1,
            2,
            &format!("worker {id} after raise_fence(2)"),
        );
    }
    // A finished task is not raised: a write of term 1 (one the lifecycle
    // never makes, but the store judges only guard and fence) still lands.
    for (id, status) in [
        ("done", TaskStatus::Cancelled),
        ("gone", TaskStatus::Cancelled),
    ] {
        expect_applied(
            t1.update_status(&task_id(id), &note(status, "late", 21))
                .await,
            &format!("raise_fence must leave the fence of finished task {id} as it was"),
        );
    }
    let counts = b.count_tasks().await.expect("count");
    assert_eq!(
        counts.get(TaskStatus::Cancelled),
        2,
        "raising changes no status"
    );
}

/// A raise covers every live task, however many (more than a backend's
/// batch): none is left below the term for `adopt_pending` to find.
pub async fn raise_covers_every_task_however_many(b: Arc<dyn LeaseBackend>) {
    let tasks: Vec<TaskRecord> = (0..MANY)
        .map(|i| pending_task(&format!("many-{i:05}"), i))
        .collect();
    let (first, last) = (tasks[0].id.clone(), tasks[tasks.len() - 1].id.clone());
    b.insert_tasks(tasks).await.expect("insert");
    assert_eq!(
        b.raise_fence(Term::new(2)).await.expect("raise"),
        MANY,
        "raise_fence must cover all {MANY} pending tasks"
    );
    assert_eq!(
        b.adopt_pending(Term::new(2), MANY as usize)
            .await
            .expect("adopt")
            .len(),
        0,
        "after raise_fence(2) no pending task may be fenced below 2"
    );
    for id in [first, last] {
        expect_cas_fenced(
            tasks_at(&*b, 1)
                .update_status(&id, &assign(&worker_id("w"), 10))
                .await,
            1,
            2,
            &format!("task {id} after raise_fence(2) over {MANY} tasks"),
        );
    }
}

/// `adopt_pending(T)` returns the pending tasks fenced below T (inserted
/// by an older term after the raise), at most `limit` at a time, and
/// raises them so that they are returned once and refuse the older term.
pub async fn adopt_pending_takes_late_tasks_once(b: Arc<dyn LeaseBackend>) {
    let old = tasks_at(&*b, 1);
    old.insert_task(pending_task("before-raise", 1))
        .await
        .expect("insert");
    assert_eq!(b.raise_fence(Term::new(2)).await.expect("raise"), 1);
    // The old term keeps inserting after the new one raised.
    for (id, at) in [("late-1", 11), ("late-2", 12), ("late-3", 13)] {
        old.insert_task(pending_task(id, at)).await.expect("insert");
    }
    old.insert_task(pending_task("late-running", 14))
        .await
        .expect("insert");
    expect_applied(
        old.update_status(&task_id("late-running"), &assign(&worker_id("w"), 15))
            .await,
        "the old term's write on its own late task",
    );
    tasks_at(&*b, 2)
        .insert_task(pending_task("current", 16))
        .await
        .expect("insert");
    tasks_at(&*b, 3)
        .insert_task(pending_task("newer", 17))
        .await
        .expect("insert");

    assert_eq!(
        b.adopt_pending(Term::new(2), 0).await.expect("adopt"),
        vec![],
        "adopt_pending with limit 0 returns nothing"
    );
    let late: BTreeSet<String> = ["late-1", "late-2", "late-3"]
        .into_iter()
        .map(String::from)
        .collect();
    let mut adopted = BTreeSet::new();
    let first = b.adopt_pending(Term::new(2), 2).await.expect("adopt");
    assert_eq!(
        first.len(),
        2,
        "adopt_pending must honour its limit: {first:?}"
    );
    let second = b.adopt_pending(Term::new(2), 10).await.expect("adopt");
    assert_eq!(
        second.len(),
        1,
        "after 2 of the 3 late tasks were adopted (and raised), adopt_pending must return \
         only the one left, not a task fenced at or above the term nor a running one: \
         {second:?}"
    );
    for t in first.iter().chain(&second) {
        assert_eq!(t.status, TaskStatus::Pending, "only pending tasks: {t:?}");
        assert_eq!(
            &read_task(&*b, t.id.as_str()).await,
            t,
            "an adopted task is returned as stored"
        );
        assert!(
            adopted.insert(t.id.to_string()),
            "task {} returned twice by adopt_pending",
            t.id
        );
    }
    assert_eq!(
        adopted, late,
        "adopt_pending returns exactly the pending tasks fenced below the term (not the \
         running one, nor those fenced at or above it)"
    );
    assert_eq!(
        b.adopt_pending(Term::new(2), 10).await.expect("adopt"),
        vec![],
        "an adopted task's fence is raised: it is not returned again"
    );
    for id in &late {
        let before = read_task(&*b, id).await;
        expect_cas_fenced(
            old.update_status(&task_id(id), &assign(&worker_id("w"), 20))
                .await,
            1,
            2,
            &format!("the old term on adopted task {id}"),
        );
        assert_eq!(
            read_task(&*b, id).await,
            before,
            "a refused write changes nothing"
        );
    }
    let again: BTreeSet<String> = b
        .adopt_pending(Term::new(4), 10)
        .await
        .expect("adopt")
        .into_iter()
        .map(|t| t.id.to_string())
        .collect();
    let expected: BTreeSet<String> = late
        .iter()
        .cloned()
        .chain(["before-raise".into(), "current".into(), "newer".into()])
        .collect();
    assert_eq!(
        again, expected,
        "a later term adopts every pending task fenced below it"
    );
}

/// `update_status` of a lower term than the task's fence is refused with
/// `Error::Fenced` (never `Rejected`, even when its guard fails too) and
/// changes nothing; one of an equal or higher term lands. Inserts write
/// the handle's term.
pub async fn update_status_refuses_a_lower_term(b: Arc<dyn LeaseBackend>) {
    let w = worker_id("w");
    b.insert_task(pending_task("t", 1)).await.expect("insert");
    expect_applied(
        tasks_at(&*b, 2)
            .update_status(&task_id("t"), &assign(&w, 10))
            .await,
        "a term-2 assignment on a task inserted by term 0",
    );
    let stored = read_task(&*b, "t").await;
    let t1 = tasks_at(&*b, 1);
    expect_cas_fenced(
        t1.update_status(&task_id("t"), &cancel(TaskStatus::Running, 20))
            .await,
        1,
        2,
        "update_status of term 1 after a term-2 write",
    );
    expect_cas_fenced(
        t1.update_status(&task_id("t"), &assign(&w, 20)).await,
        1,
        2,
        "update_status of term 1 with a guard that fails as well",
    );
    expect_cas_fenced(
        b.update_status(&task_id("t"), &note(TaskStatus::Running, "zero", 20))
            .await,
        0,
        2,
        "update_status of the plain (term 0) handle after a term-2 write",
    );
    assert_eq!(
        read_task(&*b, "t").await,
        stored,
        "refused writes change nothing"
    );
    expect_applied(
        tasks_at(&*b, 2)
            .update_status(&task_id("t"), &note(TaskStatus::Running, "equal", 30))
            .await,
        "a write of the fence's own term",
    );
    expect_applied(
        tasks_at(&*b, 3)
            .update_status(&task_id("t"), &note(TaskStatus::Running, "higher", 40))
            .await,
        "a write of a higher term",
    );
    expect_cas_fenced(
        tasks_at(&*b, 2)
            .update_status(&task_id("t"), &note(TaskStatus::Running, "two", 50))
            .await,
        2,
        3,
        "a term-3 write raises the fence to 3",
    );
    assert_eq!(b.raise_fence(Term::new(5)).await.expect("raise"), 1);
    let stored = read_task(&*b, "t").await;
    expect_cas_fenced(
        tasks_at(&*b, 4)
            .update_status(&task_id("t"), &cancel(TaskStatus::Running, 60))
            .await,
        4,
        5,
        "update_status of term 4 after raise_fence(5)",
    );
    assert_eq!(read_task(&*b, "t").await, stored);
    expect_applied(
        tasks_at(&*b, 5)
            .update_status(&task_id("t"), &cancel(TaskStatus::Running, 70))
            .await,
        "a write of the raised term",
    );
    assert_eq!(read_task(&*b, "t").await.status, TaskStatus::Cancelled);

    // Inserts are not fenced and write the handle's term.
    tasks_at(&*b, 7)
        .insert_task(pending_task("inserted", 2))
        .await
        .expect("an insert of any term lands");
    tasks_at(&*b, 8)
        .insert_tasks(vec![pending_task("batch-1", 3), pending_task("batch-2", 4)])
        .await
        .expect("a batch insert of any term lands");
    for (id, term) in [("inserted", 7), ("batch-1", 8), ("batch-2", 8)] {
        let before = read_task(&*b, id).await;
        expect_cas_fenced(
            tasks_at(&*b, term - 1)
                .update_status(&task_id(id), &assign(&w, 80))
                .await,
            term - 1,
            term,
            &format!("task {id} inserted by term {term} is fenced at {term}"),
        );
        assert_eq!(read_task(&*b, id).await, before);
        expect_applied(
            tasks_at(&*b, term)
                .update_status(&task_id(id), &assign(&w, 90))
                .await,
            &format!("the inserting term {term} on task {id}"),
        );
    }
}

/// Registering a known worker again (the update path of `upsert_worker`)
/// is refused below the worker's fence; a first registration is not
/// fenced and writes the handle's term.
pub async fn upsert_worker_refuses_a_lower_term(b: Arc<dyn LeaseBackend>) {
    b.upsert_worker(worker("w", 2.0, 1)).await.expect("insert");
    workers_at(&*b, 2)
        .upsert_worker(worker("w", 4.0, 2))
        .await
        .expect("a term-2 update on a worker registered by term 0 must land");
    let stored = read_worker(&*b, "w").await;
    assert_eq!(stored.capacity, worker("w", 4.0, 2).capacity);
    expect_fenced(
        workers_at(&*b, 1).upsert_worker(worker("w", 8.0, 3)).await,
        1,
        2,
        "upsert_worker (update) of term 1 after a term-2 write",
    );
    assert_eq!(
        read_worker(&*b, "w").await,
        stored,
        "a refused upsert changes nothing"
    );
    workers_at(&*b, 2)
        .upsert_worker(worker("w", 6.0, 4))
        .await
        .expect("an upsert of the fence's own term must land");
    b.raise_fence(Term::new(4)).await.expect("raise");
    let stored = read_worker(&*b, "w").await;
    expect_fenced(
        workers_at(&*b, 3).upsert_worker(worker("w", 8.0, 5)).await,
        3,
        4,
        "upsert_worker (update) of term 3 after raise_fence(4)",
    );
    assert_eq!(read_worker(&*b, "w").await, stored);
    let again = workers_at(&*b, 5)
        .upsert_worker(worker("w", 8.0, 6))
        .await
        .expect("an upsert of a higher term must land");
    assert_eq!(again.capacity, worker("w", 8.0, 6).capacity);

    // A first registration is an insert: any term, and it writes its term.
    workers_at(&*b, 1)
        .upsert_worker(worker("w-new", 1.0, 7))
        .await
        .expect("a first registration of a lower term lands");
    workers_at(&*b, 1)
        .upsert_worker(worker("w-new", 3.0, 8))
        .await
        .expect("the registering term may update its own worker");
    let stored = read_worker(&*b, "w-new").await;
    expect_fenced(
        b.upsert_worker(worker("w-new", 2.0, 9)).await,
        0,
        1,
        "a worker registered by term 1 is fenced at 1",
    );
    assert_eq!(read_worker(&*b, "w-new").await, stored);
}

/// `set_drain` below the worker's fence is refused and changes nothing.
pub async fn set_drain_refuses_a_lower_term(b: Arc<dyn LeaseBackend>) {
    let w = worker_id("w");
    b.upsert_worker(worker("w", 2.0, 1)).await.expect("insert");
    workers_at(&*b, 2)
        .set_drain(&w, Some(drain(10)))
        .await
        .expect("a term-2 drain must land");
    let stored = read_worker(&*b, "w").await;
    assert_eq!(stored.drain, Some(drain(10)));
    expect_fenced(
        workers_at(&*b, 1).set_drain(&w, None).await,
        1,
        2,
        "set_drain of term 1 after a term-2 write",
    );
    expect_fenced(
        workers_at(&*b, 1).set_drain(&w, Some(drain(20))).await,
        1,
        2,
        "set_drain of term 1 after a term-2 write",
    );
    assert_eq!(
        read_worker(&*b, "w").await,
        stored,
        "refused drains change nothing"
    );
    workers_at(&*b, 2)
        .set_drain(&w, None)
        .await
        .expect("an undrain of the fence's own term must land");
    assert_eq!(read_worker(&*b, "w").await.drain, None);
    b.raise_fence(Term::new(4)).await.expect("raise");
    expect_fenced(
        workers_at(&*b, 3).set_drain(&w, Some(drain(30))).await,
        3,
        4,
        "set_drain of term 3 after raise_fence(4)",
    );
    assert_eq!(read_worker(&*b, "w").await.drain, None);
    workers_at(&*b, 6)
        .set_drain(&w, Some(drain(40)))
        .await
        .expect("a drain of a higher term must land");
    assert_eq!(read_worker(&*b, "w").await.drain, Some(drain(40)));
    let err = workers_at(&*b, 1)
        .set_drain(&worker_id("ghost"), None)
        .await
        .expect_err("unknown worker");
    assert!(
        matches!(err, Error::NotFound { .. }),
        "draining an unknown worker is NotFound at any term, got {err:?}"
    );
}

/// `remove_worker` below the worker's fence is refused and the worker
/// stays as it was.
pub async fn remove_worker_refuses_a_lower_term(b: Arc<dyn LeaseBackend>) {
    b.upsert_worker(worker("w-a", 2.0, 1))
        .await
        .expect("insert");
    b.upsert_worker(worker("w-b", 2.0, 1))
        .await
        .expect("insert");
    workers_at(&*b, 2)
        .set_drain(&worker_id("w-a"), Some(drain(5)))
        .await
        .expect("drain");
    let stored = read_worker(&*b, "w-a").await;
    expect_fenced(
        workers_at(&*b, 1).remove_worker(&worker_id("w-a")).await,
        1,
        2,
        "remove_worker of term 1 after a term-2 write",
    );
    assert_eq!(
        read_worker(&*b, "w-a").await,
        stored,
        "a refused removal leaves the worker as it was"
    );
    workers_at(&*b, 2)
        .remove_worker(&worker_id("w-a"))
        .await
        .expect("a removal of the fence's own term must land");
    assert_eq!(b.get_worker(&worker_id("w-a")).await.expect("get"), None);

    b.raise_fence(Term::new(4)).await.expect("raise");
    let stored = read_worker(&*b, "w-b").await;
    expect_fenced(
        workers_at(&*b, 3).remove_worker(&worker_id("w-b")).await,
        3,
        4,
        "remove_worker of term 3 after raise_fence(4)",
    );
    assert_eq!(read_worker(&*b, "w-b").await, stored);
    workers_at(&*b, 5)
        .remove_worker(&worker_id("w-b"))
        .await
        .expect("a removal of a higher term must land");
    assert_eq!(b.list_workers().await.expect("list"), vec![]);
}

/// A heartbeat batch reaching a worker fenced above the handle's term
/// fails with `Error::Fenced`, and that worker keeps its last heartbeat.
pub async fn heartbeats_refuse_a_lower_term(b: Arc<dyn LeaseBackend>) {
    b.upsert_worker(worker("w", 2.0, 1)).await.expect("insert");
    b.upsert_worker(worker("w-low", 2.0, 1))
        .await
        .expect("insert");
    let unknown = workers_at(&*b, 2)
        .record_heartbeats(&[beat("w", 100)])
        .await
        .expect("a term-2 beat must land");
    assert!(unknown.is_empty());
    let stored = read_worker(&*b, "w").await;
    assert_eq!(stored.last_heartbeat, Some(Timestamp::from_millis(100)));
    let w1 = workers_at(&*b, 1);
    expect_fenced(
        w1.record_heartbeats(&[beat("w", 200)]).await,
        1,
        2,
        "record_heartbeats of term 1 after a term-2 write",
    );
    expect_fenced(
        w1.record_heartbeats(&[beat("w", 50)]).await,
        1,
        2,
        "record_heartbeats of term 1 with a beat older than the stored one",
    );
    expect_fenced(
        w1.record_heartbeats(&[beat("w-low", 200), beat("w", 200), beat("ghost", 200)])
            .await,
        1,
        2,
        "a batch of term 1 reaching one worker fenced at 2",
    );
    assert_eq!(
        read_worker(&*b, "w").await,
        stored,
        "a refused beat leaves the worker as it was"
    );
    assert_eq!(
        w1.record_heartbeats(&[beat("ghost", 300)])
            .await
            .expect("a batch reaching no fenced worker"),
        vec![worker_id("ghost")],
        "unknown senders are still named"
    );
    workers_at(&*b, 2)
        .record_heartbeats(&[beat("w", 300)])
        .await
        .expect("a beat of the fence's own term must land");
    b.raise_fence(Term::new(4)).await.expect("raise");
    let stored = read_worker(&*b, "w").await;
    assert_eq!(stored.last_heartbeat, Some(Timestamp::from_millis(300)));
    expect_fenced(
        workers_at(&*b, 3)
            .record_heartbeats(&[beat("w", 400)])
            .await,
        3,
        4,
        "record_heartbeats of term 3 after raise_fence(4)",
    );
    assert_eq!(read_worker(&*b, "w").await, stored);
    workers_at(&*b, 4)
        .record_heartbeats(&[beat("w", 500), beat("w-low", 500)])
        .await
        .expect("a batch of the raised term must land");
    for id in ["w", "w-low"] {
        assert_eq!(
            read_worker(&*b, id).await.last_heartbeat,
            Some(Timestamp::from_millis(500)),
            "{id}"
        );
    }
}

fn claim(request: &str, made: Submitted, hash: &str, at: u64) -> RequestClaim {
    RequestClaim {
        request: RequestId::new(request).expect("valid"),
        made,
        spec_hash: hash.into(),
        at: Timestamp::from_millis(at),
    }
}

/// A request id is claimed once: the first claim returns `None`, a later
/// one the claim that holds it; ids are independent; tasks, which carry
/// no request id, coexist in any number.
pub async fn request_ids_are_claimed_once(b: Arc<dyn LeaseBackend>) {
    let first = claim("req-1", Submitted::Task(task_id("t-1")), "hash-1", 10);
    assert_eq!(
        b.claim_request(first.clone()).await.expect("claim"),
        None,
        "the first claim of a request id takes it"
    );
    let held = b
        .claim_request(claim(
            "req-1",
            Submitted::Task(task_id("t-2")),
            "hash-2",
            20,
        ))
        .await
        .expect("claim")
        .expect("a second claim of a request id must return the claim that holds it");
    assert_eq!(held.made, first.made, "the first claim's task");
    assert_eq!(
        held.spec_hash, first.spec_hash,
        "the first claim's spec hash"
    );
    assert_eq!(held, first);

    let array = claim(
        "req-2",
        Submitted::Array(ArrayId::new("a-1").expect("valid")),
        "hash-a",
        30,
    );
    assert_eq!(
        b.claim_request(array.clone()).await.expect("claim"),
        None,
        "another request id is independent"
    );
    assert_eq!(
        b.claim_request(claim(
            "req-2",
            Submitted::Task(task_id("t-3")),
            "hash-a",
            40
        ))
        .await
        .expect("claim"),
        Some(array),
        "an array's claim holds its request id"
    );
    // A fenced handle claims the same ids: claims are not fenced.
    assert_eq!(
        tasks_at(&*b, 3)
            .claim_request(claim("req-1", Submitted::Task(task_id("t-9")), "h", 50))
            .await
            .expect("claim"),
        Some(first.clone())
    );

    // Many tasks without a request id.
    for i in 0..25 {
        b.insert_task(pending_task(&format!("plain-{i:02}"), 100 + i))
            .await
            .expect("tasks without a request id must not collide");
    }
    b.insert_tasks(
        (25..50)
            .map(|i| pending_task(&format!("plain-{i:02}"), 100 + i))
            .collect(),
    )
    .await
    .expect("a batch without request ids must not collide");
    for i in 0..5u64 {
        let c = claim(
            &format!("req-many-{i}"),
            Submitted::Task(task_id(&format!("plain-{i:02}"))),
            "h",
            200 + i,
        );
        assert_eq!(b.claim_request(c).await.expect("claim"), None);
    }
    assert_eq!(
        b.count_tasks()
            .await
            .expect("count")
            .get(TaskStatus::Pending),
        50,
        "every task without a request id is stored"
    );
}

/// Claims of one request id racing: exactly one takes it, and every other
/// gets that claim back.
pub async fn racing_claims_of_one_request_id(b: Arc<dyn LeaseBackend>) {
    const CLAIMERS: u64 = 8;
    let mut set = JoinSet::new();
    for i in 0..CLAIMERS {
        let b = b.clone();
        set.spawn(async move {
            let mine = claim(
                "req-race",
                Submitted::Task(task_id(&format!("t-{i}"))),
                &format!("hash-{i}"),
                i,
            );
            let held = b.claim_request(mine.clone()).await.expect("claim");
            (mine, held)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = set.join_next().await {
        outcomes.push(joined.expect("claimer panicked"));
    }
    let winners: Vec<&RequestClaim> = outcomes
        .iter()
        .filter(|(_, held)| held.is_none())
        .map(|(mine, _)| mine)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "of racing claims of one request id exactly one must take it: {outcomes:?}"
    );
    for (mine, held) in &outcomes {
        if let Some(held) = held {
            assert_eq!(
                held, winners[0],
                "claim {mine:?} must get the winning claim back"
            );
        }
    }
}
