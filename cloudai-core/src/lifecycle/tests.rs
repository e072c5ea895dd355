use super::*;
use crate::model::{TaskId, TaskSpec};

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

fn report(worker: &str, outcome: Reported) -> TaskEvent {
    TaskEvent::Report {
        worker: w(worker),
        attempt: 1,
        outcome,
        message: None,
    }
}

#[test]
fn assign_reserves_and_sends() {
    let Decision::Apply(t) = decide(
        Some(&task(TaskStatus::Pending, None)),
        &TaskEvent::Assign { worker: w("a") },
    ) else {
        panic!("assign refused")
    };
    assert_eq!((t.from, t.to), (TaskStatus::Pending, TaskStatus::Running));
    assert!(matches!(t.effects[0], Effect::Reserve { .. }));
    assert!(matches!(t.effects[1], Effect::SendAssignment { .. }));
}

#[test]
fn cancel_beats_a_later_report() {
    let cancelled = task(TaskStatus::Cancelled, Some("a"));
    for outcome in [Reported::Completed, Reported::Failed, Reported::Cancelled] {
        assert_eq!(
            decide(Some(&cancelled), &report("a", outcome)),
            Decision::Refuse(Refusal::AlreadyFinal(TaskStatus::Cancelled))
        );
    }
}

#[test]
fn terminal_states_absorb_every_event() {
    let events = [
        TaskEvent::Assign { worker: w("a") },
        TaskEvent::Requeue {
            worker: w("a"),
            attempt: 1,
            reason: "x".into(),
        },
        report("a", Reported::Failed),
        TaskEvent::Cancel { force: true },
        TaskEvent::WorkerLost { worker: w("a") },
        TaskEvent::Drained {
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
                decide(Some(&task(st, Some("a"))), e),
                Decision::Refuse(Refusal::AlreadyFinal(st))
            );
        }
    }
}

#[test]
fn cancel_of_a_running_task_releases_and_stops_with_grace() {
    let Decision::Apply(t) = decide(
        Some(&task(TaskStatus::Running, Some("a"))),
        &TaskEvent::Cancel { force: false },
    ) else {
        panic!()
    };
    assert_eq!(t.to, TaskStatus::Cancelled);
    assert_eq!(
        t.effects[1],
        Effect::StopOnWorker {
            worker: w("a"),
            attempt: 1,
            grace: TaskSpec::DEFAULT_CANCEL_GRACE
        }
    );
    let Decision::Apply(t) = decide(
        Some(&task(TaskStatus::Running, Some("a"))),
        &TaskEvent::Cancel { force: true },
    ) else {
        panic!()
    };
    assert_eq!(
        t.effects[1],
        Effect::StopOnWorker {
            worker: w("a"),
            attempt: 1,
            grace: Duration::ZERO
        }
    );
}

#[test]
fn cancel_of_a_pending_task_has_no_worker_effects() {
    let Decision::Apply(t) = decide(
        Some(&task(TaskStatus::Pending, None)),
        &TaskEvent::Cancel { force: false },
    ) else {
        panic!()
    };
    assert!(t.effects.is_empty());
}

#[test]
fn reports_from_the_wrong_worker_or_for_pending_tasks_are_refused() {
    assert_eq!(
        decide(
            Some(&task(TaskStatus::Running, Some("a"))),
            &report("b", Reported::Completed)
        ),
        Decision::Refuse(Refusal::OtherWorker {
            assigned: Some(w("a")),
            claimed: w("b")
        })
    );
    assert_eq!(
        decide(
            Some(&task(TaskStatus::Pending, None)),
            &report("a", Reported::Completed)
        ),
        { Decision::Refuse(Refusal::NotRunning) }
    );
    assert_eq!(
        decide(None, &report("a", Reported::Completed)),
        Decision::Refuse(Refusal::UnknownTask)
    );
}

#[test]
fn reports_about_an_earlier_attempt_are_refused() {
    let mut t = task(TaskStatus::Running, Some("a"));
    t.attempt = 2;
    assert_eq!(
        decide(Some(&t), &report("a", Reported::Completed)),
        Decision::Refuse(Refusal::StaleAttempt {
            current: 2,
            claimed: 1
        })
    );
}

#[test]
fn assigning_twice_is_refused() {
    assert_eq!(
        decide(
            Some(&task(TaskStatus::Running, Some("a"))),
            &TaskEvent::Assign { worker: w("b") }
        ),
        Decision::Refuse(Refusal::AlreadyAssigned(w("a")))
    );
}

#[test]
fn worker_loss_fails_only_the_lost_workers_tasks() {
    let Decision::Apply(t) = decide(
        Some(&task(TaskStatus::Running, Some("a"))),
        &TaskEvent::WorkerLost { worker: w("a") },
    ) else {
        panic!()
    };
    assert_eq!(t.to, TaskStatus::Failed);
    assert!(matches!(
        decide(
            Some(&task(TaskStatus::Running, Some("a"))),
            &TaskEvent::WorkerLost { worker: w("b") }
        ),
        Decision::Refuse(Refusal::OtherWorker { .. })
    ));
}

#[test]
fn a_drain_deadline_fails_the_current_run_with_its_grace() {
    let running = task(TaskStatus::Running, Some("a"));
    let drained = |worker: &str, attempt| TaskEvent::Drained {
        worker: w(worker),
        attempt,
    };
    let Decision::Apply(t) = decide(Some(&running), &drained("a", running.attempt)) else {
        panic!("refused")
    };
    assert_eq!(t.to, TaskStatus::Failed);
    assert!(matches!(t.effects[0], Effect::Release { .. }));
    assert!(
        matches!(&t.effects[1], Effect::StopOnWorker { grace, .. } if *grace == running.spec.cancel_grace)
    );
    let reason = drained("a", 1).change(Timestamp::from_millis(1)).reason;
    assert!(reason.is_some_and(|r| r.starts_with("drained")));
    assert!(matches!(
        decide(Some(&running), &drained("b", running.attempt)),
        Decision::Refuse(Refusal::OtherWorker { .. })
    ));
    assert!(matches!(
        decide(Some(&running), &drained("a", running.attempt + 1)),
        Decision::Refuse(Refusal::StaleAttempt { .. })
    ));
}

#[test]
fn change_matches_decide() {
    let e = report("a", Reported::Completed);
    let c = e.change(Timestamp::from_millis(7));
    assert_eq!(c.allowed_from, vec![TaskStatus::Running]);
    assert_eq!(c.expected_worker, Some(w("a")));
    assert_eq!(c.to, TaskStatus::Completed);
    for st in TaskStatus::ALL {
        let t = task(st, Some("a"));
        assert_eq!(
            c.admits(&t),
            matches!(decide(Some(&t), &e), Decision::Apply(_)),
            "{st}"
        );
    }
}
