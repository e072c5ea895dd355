//! Criterion benches of the pure core: the operations on the master's hot
//! path. `cargo bench -p cloudai-bench --bench core`.

use std::hint::black_box;

use cloudai_core::ledger::Ledger;
use cloudai_core::lifecycle::{decide, TaskEvent};
use cloudai_core::liveness::{Liveness, LivenessConfig};
use cloudai_core::model::{
    EndCause, Resources, TaskId, TaskRecord, TaskSpec, TaskStatus, Timestamp, WorkerId,
};
use cloudai_core::placement::{place, sample, walk_from, Candidate, Placement, Policy};
use criterion::{criterion_group, criterion_main, Criterion};

fn lifecycle(c: &mut Criterion) {
    let spec = TaskSpec::new("img", vec![], Resources::new(1.0, 1.0, 0.0, 0).unwrap());
    let mut task = TaskRecord::new(TaskId::new("t").unwrap(), spec, Timestamp::ZERO);
    task.status = TaskStatus::Running;
    task.worker = Some(WorkerId::new("w").unwrap());
    task.attempt = 1;
    let report = TaskEvent::report(WorkerId::new("w").unwrap(), 1, EndCause::Completed, None);
    c.bench_function("lifecycle::decide report", |b| {
        b.iter(|| decide(black_box(Some(&task)), black_box(&report), Timestamp::ZERO))
    });
}

fn ledger(c: &mut Criterion) {
    let mut l = Ledger::new();
    let w = WorkerId::new("w").unwrap();
    l.set_capacity(w.clone(), Resources::new(1e6, 1e6, 0.0, 0).unwrap(), vec![]);
    let t = TaskId::new("t").unwrap();
    let req = Resources::new(1.0, 1.0, 0.0, 0).unwrap();
    c.bench_function("ledger reserve+release", |b| {
        b.iter(|| {
            l.reserve(&w, &t, req).unwrap();
            black_box(l.release(&t));
        })
    });
}

fn placement(c: &mut Criterion) {
    let candidates: Vec<Candidate> = (0..100)
        .map(|i| Candidate {
            id: WorkerId::new(format!("w{i:03}")).unwrap(),
            active: i % 10 != 0,
            capacity: Resources::new(64.0, 256.0, 1000.0, 4).unwrap(),
            available: Resources::new((i % 64) as f64, 128.0, 500.0, (i % 5) as u32).unwrap(),
        })
        .collect();
    let req = Resources::new(2.0, 4.0, 10.0, 0).unwrap();
    for policy in Policy::ALL {
        let mut s = policy.build();
        c.bench_function(&format!("place among 100 workers: {}", s.name()), |b| {
            b.iter(|| black_box(place(s.as_mut(), &req, &candidates)))
        });
    }
}

/// The master's decision for an unpinned task among 10,000 workers: a
/// sample walked from the worker placed on last through the ledger's
/// free-capacity index, ranked by the policy. 9,000 workers are full (they
/// are not in the index); each decision reserves its pick and releases the
/// oldest reservation, so the cluster stays as full.
fn placement_at_scale(c: &mut Criterion) {
    let mut ledger = Ledger::new();
    let capacity = Resources::new(4.0, 16.0, 100.0, 0).unwrap();
    let req = Resources::new(0.5, 0.5, 0.0, 0).unwrap();
    let ids: Vec<WorkerId> = (0..10_000)
        .map(|i| WorkerId::new(format!("w{i:05}")).unwrap())
        .collect();
    let mut held = std::collections::VecDeque::new();
    for (i, id) in ids.iter().enumerate() {
        ledger.set_capacity(id.clone(), capacity, vec![]);
        let slots = if i % 10 == 0 { 4 } else { 8 };
        for s in 0..slots {
            let t = TaskId::new(format!("t{i}-{s}")).unwrap();
            ledger.reserve(id, &t, req).unwrap();
            if slots == 4 {
                held.push_back(t);
            }
        }
    }
    // Placements so far, across policies: each names a task of its own.
    let mut n = 0u64;
    for policy in Policy::ALL {
        let mut s = policy.build();
        let mut cursor: Option<WorkerId> = None;
        c.bench_function(
            &format!("place among 10,000 workers (9,000 full): {}", s.name()),
            |b| {
                b.iter(|| {
                    let walk = walk_from(ledger.open(), cursor.as_ref()).filter_map(|(id, _)| {
                        Some(Candidate {
                            id: id.clone(),
                            active: true,
                            capacity: ledger.capacity(id)?,
                            available: ledger.available(id)?,
                        })
                    });
                    let room = sample(&req, walk);
                    let Placement::On(w) = place(s.as_mut(), &req, &room) else {
                        panic!("no placement");
                    };
                    n += 1;
                    let t = TaskId::new(format!("p{n}")).unwrap();
                    ledger.reserve(&w, &t, req).unwrap();
                    held.push_back(t);
                    if let Some(old) = held.pop_front() {
                        black_box(ledger.release(&old));
                    }
                    cursor = Some(w);
                })
            },
        );
    }
}

fn liveness(c: &mut Criterion) {
    let mut l = Liveness::new(LivenessConfig::default());
    let ids: Vec<WorkerId> = (0..1000)
        .map(|i| WorkerId::new(format!("w{i}")).unwrap())
        .collect();
    let mut now = 0u64;
    c.bench_function("liveness heartbeat (1000 workers tracked)", |b| {
        b.iter(|| {
            now += 1;
            let w = &ids[(now % 1000) as usize];
            black_box(l.heartbeat(w, Timestamp::from_millis(now)))
        })
    });
}

criterion_group!(
    benches,
    lifecycle,
    ledger,
    placement,
    placement_at_scale,
    liveness
);
criterion_main!(benches);
