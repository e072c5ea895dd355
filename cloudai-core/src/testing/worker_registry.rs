//! The [`WorkerRegistry`] conformance suite.

use std::future::Future;
use std::sync::Arc;

use tokio::task::JoinSet;

use super::worker_id;
use crate::model::{
    Drain, Gpu, Heartbeat, InstanceId, Resources, Telemetry, Timestamp, WorkerRecord,
};
use crate::store::WorkerRegistry;
use crate::Error;

/// Runs every case, each on a fresh registry from `new_registry`.
pub async fn run_all<B, Fut>(new_registry: B)
where
    B: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn WorkerRegistry>>,
{
    register_get_list_remove(new_registry().await).await;
    reregistration_keeps_history(new_registry().await).await;
    remove_unknown_is_not_found(new_registry().await).await;
    heartbeat_batches(new_registry().await).await;
    race_heartbeats(new_registry().await).await;
    instance_and_drain_are_kept(new_registry().await).await;
}

fn worker(id: &str, cpu: f64, at: u64) -> WorkerRecord {
    WorkerRecord::new(
        worker_id(id),
        Some(format!("127.0.0.1:{}", 50_000 + at)),
        Resources::new(cpu, 8.0, 100.0, 0).expect("valid"),
        Timestamp::from_millis(at),
    )
}

fn beat(id: &str, at: u64, running: u32) -> Heartbeat {
    Heartbeat {
        worker: worker_id(id),
        at: Timestamp::from_millis(at),
        telemetry: Telemetry {
            cpu_percent: 12.5,
            memory_used_mb: 1024,
            running_tasks: running,
            starting: Vec::new(),
        },
    }
}

/// Registered workers read back, list in id order, and can be removed.
pub async fn register_get_list_remove(reg: Arc<dyn WorkerRegistry>) {
    let b = worker("w-b", 4.0, 1);
    let a = worker("w-a", 2.0, 2);
    assert_eq!(reg.upsert_worker(b.clone()).await.expect("upsert"), b);
    reg.upsert_worker(a.clone()).await.expect("upsert");
    assert_eq!(reg.get_worker(&a.id).await.expect("get"), Some(a.clone()));
    assert_eq!(
        reg.list_workers().await.expect("list"),
        vec![a.clone(), b.clone()],
        "list is by id"
    );
    reg.remove_worker(&a.id).await.expect("remove");
    assert_eq!(reg.get_worker(&a.id).await.expect("get"), None);
    assert_eq!(reg.list_workers().await.expect("list"), vec![b]);
}

/// Registering a known worker again updates address and capacity but keeps
/// when it first registered and its last heartbeat.
pub async fn reregistration_keeps_history(reg: Arc<dyn WorkerRegistry>) {
    reg.upsert_worker(worker("w", 2.0, 1))
        .await
        .expect("upsert");
    let unknown = reg
        .record_heartbeats(&[beat("w", 500, 1)])
        .await
        .expect("beats");
    assert!(unknown.is_empty());
    let mut again = worker("w", 16.0, 900);
    again.capacity.gpus = 2;
    again.gpus = vec![
        Gpu {
            index: 1,
            uuid: Some("GPU-b".into()),
            name: Some("Test GPU".into()),
        },
        Gpu::indexed(3),
    ];
    again.allow_mounts = vec!["/data".into(), "/scratch".into()];
    let stored = reg.upsert_worker(again.clone()).await.expect("upsert");
    assert_eq!(stored.capacity, again.capacity, "capacity must update");
    assert_eq!(stored.gpus, again.gpus, "GPUs must update");
    assert_eq!(
        stored.allow_mounts, again.allow_mounts,
        "allowed mounts must update"
    );
    assert_eq!(stored.address, again.address, "address must update");
    assert_eq!(
        stored.registered_at,
        Timestamp::from_millis(1),
        "first registration time kept"
    );
    assert_eq!(
        stored.last_heartbeat,
        Some(Timestamp::from_millis(500)),
        "heartbeat kept"
    );
    assert_eq!(reg.get_worker(&again.id).await.expect("get"), Some(stored));
}

/// Removing an unknown worker is `NotFound`.
pub async fn remove_unknown_is_not_found(reg: Arc<dyn WorkerRegistry>) {
    let err = reg
        .remove_worker(&worker_id("ghost"))
        .await
        .expect_err("unknown");
    assert!(
        matches!(err, Error::NotFound { .. }),
        "expected NotFound, got {err:?}"
    );
}

/// A batch updates each known worker to its newest beat, never backwards,
/// and names the unknown senders once each.
pub async fn heartbeat_batches(reg: Arc<dyn WorkerRegistry>) {
    reg.upsert_worker(worker("w-1", 2.0, 0))
        .await
        .expect("upsert");
    reg.upsert_worker(worker("w-2", 2.0, 0))
        .await
        .expect("upsert");
    let unknown = reg
        .record_heartbeats(&[
            beat("w-1", 100, 1),
            beat("ghost", 100, 0),
            beat("w-2", 90, 2),
            beat("ghost", 110, 0),
            beat("w-1", 120, 3),
        ])
        .await
        .expect("beats");
    assert_eq!(
        unknown,
        vec![worker_id("ghost")],
        "unknown senders, once each"
    );
    let w1 = reg
        .get_worker(&worker_id("w-1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(w1.last_heartbeat, Some(Timestamp::from_millis(120)));
    assert_eq!(w1.telemetry.map(|t| t.running_tasks), Some(3));
    reg.record_heartbeats(&[beat("w-1", 50, 9)])
        .await
        .expect("beats");
    let w1 = reg
        .get_worker(&worker_id("w-1"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        w1.last_heartbeat,
        Some(Timestamp::from_millis(120)),
        "an older beat must not move it back"
    );
    assert_eq!(w1.telemetry.map(|t| t.running_tasks), Some(3));
    let w2 = reg
        .get_worker(&worker_id("w-2"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(w2.last_heartbeat, Some(Timestamp::from_millis(90)));
    assert!(reg
        .record_heartbeats(&[])
        .await
        .expect("empty batch")
        .is_empty());
}

/// Concurrent heartbeat batches: each worker ends at its newest beat.
pub async fn race_heartbeats(reg: Arc<dyn WorkerRegistry>) {
    const WORKERS: u64 = 8;
    const BEATS: u64 = 16;
    for w in 0..WORKERS {
        reg.upsert_worker(worker(&format!("w-{w}"), 1.0, 0))
            .await
            .expect("upsert");
    }
    let mut set = JoinSet::new();
    for b in 0..BEATS {
        let reg = reg.clone();
        set.spawn(async move {
            let beats: Vec<_> = (0..WORKERS)
                .map(|w| beat(&format!("w-{w}"), 1000 + b * 10 + w, 0))
                .collect();
            reg.record_heartbeats(&beats).await.expect("beats")
        });
    }
    while let Some(joined) = set.join_next().await {
        assert!(joined.expect("beat task panicked").is_empty());
    }
    for w in 0..WORKERS {
        let rec = reg
            .get_worker(&worker_id(&format!("w-{w}")))
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            rec.last_heartbeat,
            Some(Timestamp::from_millis(1000 + (BEATS - 1) * 10 + w)),
            "w-{w}"
        );
    }
}

/// The instance follows each upsert; a drain is set and cleared on its own,
/// survives upserts, and draining an unknown worker is not found.
pub async fn instance_and_drain_are_kept(reg: Arc<dyn WorkerRegistry>) {
    let mut w = worker("w-drain", 2.0, 1);
    w.instance = Some(InstanceId::new("inst-1").expect("valid"));
    reg.upsert_worker(w.clone()).await.expect("upsert");
    let drain = Drain {
        since: Timestamp::from_millis(5),
        deadline: Some(Timestamp::from_millis(65)),
    };
    reg.set_drain(&w.id, Some(drain)).await.expect("drain");
    w.instance = Some(InstanceId::new("inst-2").expect("valid"));
    let stored = reg.upsert_worker(w.clone()).await.expect("upsert");
    assert_eq!(stored.instance, w.instance, "upsert takes the new instance");
    assert_eq!(stored.drain, Some(drain), "upsert keeps the drain");
    let read = reg.get_worker(&w.id).await.expect("get").expect("known");
    assert_eq!(
        (read.instance, read.drain),
        (w.instance.clone(), Some(drain))
    );
    let open_ended = Drain {
        since: Timestamp::from_millis(7),
        deadline: None,
    };
    reg.set_drain(&w.id, Some(open_ended)).await.expect("drain");
    let read = reg.get_worker(&w.id).await.expect("get").expect("known");
    assert_eq!(read.drain, Some(open_ended));
    reg.set_drain(&w.id, None).await.expect("undrain");
    let read = reg.get_worker(&w.id).await.expect("get").expect("known");
    assert_eq!(read.drain, None);
    let err = reg
        .set_drain(&super::worker_id("w-nobody"), Some(drain))
        .await
        .expect_err("unknown worker");
    assert!(matches!(err, Error::NotFound { .. }), "got {err:?}");
}
