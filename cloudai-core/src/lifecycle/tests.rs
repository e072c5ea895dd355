use super::*;
use crate::model::{AttemptPolicy, TaskId, TaskSpec};

const NOW: Timestamp = Timestamp::from_millis(1_000);

fn w(s: &str) -> WorkerId {
    WorkerId::new(s).unwrap()
}

fn task(status: TaskStatus, worker: Option<&str>) -> TaskRecord {
    let spec = TaskSpec::new("img", vec![], Resources::new(1.0, 1.0, 0.0, 0).unwrap());
    let mut t = TaskRecord::new(TaskId::new("t").unwrap(), spec, Timestamp::ZERO);
    t.status = status;
    t.worker = worker.map(w);
    t.attempt = u32::from(worker.is_some());
    t
}

fn report(worker: &str, cause: EndCause) -> TaskEvent {
    TaskEvent::report(w(worker), 1, cause, None)
}

fn apply(t: &TaskRecord, e: &TaskEvent) -> Transition {
    match decide(Some(t), e, NOW) {
        Decision::Apply(tr) => tr,
        Decision::Refuse(r) => panic!("{e:?} refused: {r}"),
    }
}

/// The record after `e` applies to `t`.
fn after(t: &TaskRecord, e: &TaskEvent) -> TaskRecord {
    let mut t = t.clone();
    apply(&t, e).change.apply_to(&mut t);
    t
}

#[test]
fn assign_reserves_and_sends() {
    let t = apply(
        &task(TaskStatus::Pending, None),
        &TaskEvent::Assign {
            worker: w("a"),
            gpus: vec![],
        },
    );
    assert_eq!((t.from, t.to), (TaskStatus::Pending, TaskStatus::Running));
    assert!(matches!(t.effects[0], Effect::Reserve { attempt: 1, .. }));
    assert!(matches!(t.effects[1], Effect::SendAssignment { .. }));
}

#[test]
fn cancel_beats_a_later_report() {
    let cancelled = task(TaskStatus::Cancelled, Some("a"));
    for cause in [EndCause::Completed, EndCause::Exited, EndCause::Cancelled] {
        assert_eq!(
            decide(Some(&cancelled), &report("a", cause), NOW),
            Decision::Refuse(Refusal::AlreadyFinal(TaskStatus::Cancelled))
        );
    }
}

#[test]
fn terminal_states_absorb_every_event() {
    let events = [
        TaskEvent::Assign {
            worker: w("a"),
            gpus: vec![],
        },
        TaskEvent::Requeue {
            worker: w("a"),
            attempt: 1,
            reason: "x".into(),
        },
        report("a", EndCause::Exited),
        TaskEvent::Cancel { force: true },
        TaskEvent::WorkerLost { worker: w("a") },
        TaskEvent::Vanished {
            worker: w("a"),
            attempt: 1,
        },
        TaskEvent::Drained {
            worker: w("a"),
            attempt: 1,
        },
        TaskEvent::TimedOut {
            worker: w("a"),
            attempt: 1,
        },
        TaskEvent::StopConfirmed {
            worker: w("a"),
            attempt: 1,
        },
    ];
    for st in [
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ] {
        for e in &events {
            assert_eq!(
                decide(Some(&task(st, Some("a"))), e, NOW),
                Decision::Refuse(Refusal::AlreadyFinal(st))
            );
        }
    }
}

#[test]
fn cancel_of_a_running_task_stops_it_with_grace_and_holds_its_resources() {
    let running = task(TaskStatus::Running, Some("a"));
    let t = apply(&running, &TaskEvent::Cancel { force: false });
    assert_eq!(t.to, TaskStatus::Cancelled);
    assert_eq!(
        t.effects,
        vec![Effect::StopOnWorker {
            worker: w("a"),
            attempt: 1,
            grace: TaskSpec::DEFAULT_CANCEL_GRACE
        }],
        "the resources go back once the stop is confirmed, not before"
    );
    assert_eq!(
        t.change.push.map(|a| a.cause),
        Some(EndCause::Cancelled),
        "the attempt is in the history"
    );
    let t = apply(&running, &TaskEvent::Cancel { force: true });
    assert_eq!(
        t.effects,
        vec![Effect::StopOnWorker {
            worker: w("a"),
            attempt: 1,
            grace: Duration::ZERO
        }]
    );
}

#[test]
fn cancel_of_a_pending_task_has_no_worker_effects() {
    let t = apply(
        &task(TaskStatus::Pending, None),
        &TaskEvent::Cancel { force: false },
    );
    assert!(t.effects.is_empty());
}

#[test]
fn reports_from_the_wrong_worker_or_for_queued_tasks_are_refused() {
    assert_eq!(
        decide(
            Some(&task(TaskStatus::Running, Some("a"))),
            &report("b", EndCause::Completed),
            NOW
        ),
        Decision::Refuse(Refusal::OtherWorker {
            assigned: Some(w("a")),
            claimed: w("b")
        })
    );
    assert_eq!(
        decide(
            Some(&task(TaskStatus::Pending, None)),
            &report("a", EndCause::Completed),
            NOW
        ),
        Decision::Refuse(Refusal::NotRunning)
    );
    assert_eq!(
        decide(None, &report("a", EndCause::Completed), NOW),
        Decision::Refuse(Refusal::UnknownTask)
    );
}

#[test]
fn reports_about_an_earlier_attempt_are_refused() {
    let mut t = task(TaskStatus::Running, Some("a"));
    t.attempt = 2;
    assert_eq!(
        decide(Some(&t), &report("a", EndCause::Completed), NOW),
        Decision::Refuse(Refusal::StaleAttempt {
            current: 2,
            claimed: 1
        })
    );
}

#[test]
fn assigning_twice_or_while_the_last_attempt_ends_is_refused() {
    assert_eq!(
        decide(
            Some(&task(TaskStatus::Running, Some("a"))),
            &TaskEvent::Assign {
                worker: w("b"),
                gpus: vec![],
            },
            NOW
        ),
        Decision::Refuse(Refusal::AlreadyAssigned(w("a")))
    );
    assert_eq!(
        decide(
            Some(&task(TaskStatus::Pending, Some("a"))),
            &TaskEvent::Assign {
                worker: w("b"),
                gpus: vec![],
            },
            NOW
        ),
        Decision::Refuse(Refusal::Ending(w("a")))
    );
}

#[test]
fn a_lost_workers_task_is_requeued_by_default_and_fails_without_requeue() {
    let running = task(TaskStatus::Running, Some("a"));
    let lost = TaskEvent::WorkerLost { worker: w("a") };
    let t = apply(&running, &lost);
    assert_eq!(t.to, TaskStatus::Pending);
    assert_eq!(t.change.assignment, Assignment::Clear);
    assert_eq!(
        t.effects,
        vec![Effect::Release {
            worker: w("a"),
            attempt: 1
        }]
    );
    let mut legacy = running.clone();
    legacy.spec.policy = AttemptPolicy::legacy();
    assert_eq!(apply(&legacy, &lost).to, TaskStatus::Failed);
    assert!(matches!(
        decide(
            Some(&running),
            &TaskEvent::WorkerLost { worker: w("b") },
            NOW
        ),
        Decision::Refuse(Refusal::OtherWorker { .. })
    ));
}

#[test]
fn a_failure_is_retried_after_its_delay_with_the_attempt_in_the_history() {
    let mut running = task(TaskStatus::Running, Some("a"));
    running.spec.policy.retries = 1;
    let queued = after(&running, &report("a", EndCause::Exited));
    assert_eq!(
        (queued.status, queued.worker.as_ref()),
        (TaskStatus::Pending, None)
    );
    assert!(queued.not_before.is_some_and(|at| at > NOW));
    assert_eq!(queued.history.len(), 1);
    // The second attempt fails too: its retry is used, it is final.
    let mut second = after(
        &queued,
        &TaskEvent::Assign {
            worker: w("b"),
            gpus: vec![],
        },
    );
    assert_eq!(second.attempt, 2);
    second.not_before = None;
    let failed = after(
        &second,
        &TaskEvent::report(
            w("b"),
            2,
            EndCause::Exited,
            Some("exited with code 1".into()),
        ),
    );
    assert_eq!(failed.status, TaskStatus::Failed);
    assert_eq!(failed.history.len(), 2);
}

#[test]
fn a_requeue_waits_for_the_stop_before_the_task_is_placed_again() {
    let running = task(TaskStatus::Running, Some("a"));
    let requeue = TaskEvent::Requeue {
        worker: w("a"),
        attempt: 1,
        reason: "no answer".into(),
    };
    let t = apply(&running, &requeue);
    assert_eq!(t.to, TaskStatus::Pending);
    assert_eq!(t.change.assignment, Assignment::Keep, "still ending on a");
    assert!(
        !t.effects
            .iter()
            .any(|e| matches!(e, Effect::Release { .. })),
        "resources stay held while the stop is owed"
    );
    assert!(t.change.push.is_none(), "an undelivered run uses no budget");
    let ending = after(&running, &requeue);
    let confirmed = TaskEvent::StopConfirmed {
        worker: w("a"),
        attempt: 1,
    };
    let t = apply(&ending, &confirmed);
    assert_eq!(t.change.assignment, Assignment::Clear);
    assert!(matches!(t.effects[..], [Effect::Release { .. }]));
    // A report of the same run ends the wait too.
    assert_eq!(
        apply(&ending, &report("a", EndCause::Completed))
            .change
            .assignment,
        Assignment::Clear
    );
}

#[test]
fn a_drain_deadline_stops_the_run_with_its_grace_and_requeues_it_once_stopped() {
    let running = task(TaskStatus::Running, Some("a"));
    let drained = |worker: &str, attempt| TaskEvent::Drained {
        worker: w(worker),
        attempt,
    };
    let t = apply(&running, &drained("a", running.attempt));
    assert_eq!(t.to, TaskStatus::Pending);
    assert_eq!(t.change.assignment, Assignment::Keep);
    assert!(
        matches!(&t.effects[..], [Effect::StopOnWorker { grace, .. }] if *grace == running.spec.cancel_grace)
    );
    assert!(t
        .change
        .reason
        .is_some_and(|r| r.starts_with("requeued: drained")));
    let mut no_requeue = running.clone();
    no_requeue.spec.policy.requeue = false;
    let t = apply(&no_requeue, &drained("a", 1));
    assert_eq!(t.to, TaskStatus::Failed);
    assert!(t.change.reason.is_some_and(|r| r.starts_with("drained")));
    assert!(matches!(
        decide(Some(&running), &drained("b", running.attempt), NOW),
        Decision::Refuse(Refusal::OtherWorker { .. })
    ));
    assert!(matches!(
        decide(Some(&running), &drained("a", running.attempt + 1), NOW),
        Decision::Refuse(Refusal::StaleAttempt { .. })
    ));
}

#[test]
fn a_blind_change_is_what_deciding_on_the_record_writes() {
    let running = task(TaskStatus::Running, Some("a"));
    let done = report("a", EndCause::Completed);
    let blind = done.blind_change(NOW).expect("a success is blind");
    assert_eq!(apply(&running, &done).change, blind);
    let pending = task(TaskStatus::Pending, None);
    let assign = TaskEvent::Assign {
        worker: w("a"),
        gpus: vec![],
    };
    let mut decided = apply(&pending, &assign).change;
    decided.expected_attempt = None;
    assert_eq!(assign.blind_change(NOW), Some(decided));
    for st in TaskStatus::ALL {
        let t = task(st, Some("a"));
        assert_eq!(
            blind.admits(&t),
            matches!(decide(Some(&t), &done, NOW), Decision::Apply(tr) if tr.to == TaskStatus::Completed),
            "{st}"
        );
    }
    assert_eq!(
        report("a", EndCause::Exited).blind_change(NOW),
        None,
        "a failure's outcome depends on the record"
    );
}

#[test]
fn an_unmet_dependency_cancels_only_a_task_that_never_ran() {
    let unmet = TaskEvent::Unmet {
        reason: "dependency never satisfied: after-ok and task p failed".into(),
    };
    let waiting = task(TaskStatus::Pending, None);
    let t = apply(&waiting, &unmet);
    assert_eq!(t.to, TaskStatus::Cancelled);
    assert!(t.effects.is_empty(), "nothing ran: nothing to stop");
    assert_eq!(
        after(&waiting, &unmet).reason.as_deref(),
        Some("dependency never satisfied: after-ok and task p failed")
    );
    // Requeued after a run: its dependencies held once, and that stands.
    let mut requeued = task(TaskStatus::Pending, None);
    requeued.attempt = 1;
    assert!(matches!(
        decide(Some(&requeued), &unmet, NOW),
        Decision::Refuse(Refusal::StaleAttempt {
            current: 1,
            claimed: 0
        })
    ));
    for t in [
        task(TaskStatus::Running, Some("a")),
        task(TaskStatus::Pending, Some("a")),
        task(TaskStatus::Completed, Some("a")),
    ] {
        assert!(
            matches!(decide(Some(&t), &unmet, NOW), Decision::Refuse(_)),
            "{t:?}"
        );
    }
}
