//! The master's driver: the one loop that performs the work state changes
//! made owed (a placement pass, assignments to send, stops to deliver), then
//! sleeps until the next deadline (liveness, reconnection, heartbeat flush,
//! periodic reconcile) or until it is woken, and acts on what is due. A
//! dead worker is noticed at its deadline, not on a coarse tick. What is
//! due and needs the store (a lost worker's failures, a drain deadline,
//! the heartbeat batch, a reconcile) runs on a task of its own, so a slow
//! store never holds up placement passes.

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Master, MasterEvent};
use crate::liveness::{Health, LivenessEvent};

pub(super) async fn run(master: Master, mut shutdown: watch::Receiver<bool>) {
    let config = master.inner.config.clone();
    let start = master.now();
    let mut next_flush = start.saturating_add(config.heartbeat_flush);
    let mut next_reconcile = config.reconcile_interval.map(|i| start.saturating_add(i));
    let mut next_sweep = config.retention_sweep().map(|i| start.saturating_add(i));
    // At most one retention sweep and one periodic reconcile in flight.
    let mut sweeping: Option<tokio::task::JoinHandle<()>> = None;
    let mut reconciling: Option<tokio::task::JoinHandle<()>> = None;
    let mut store_work = tokio::task::JoinSet::new();
    // At most one heartbeat batch in flight: beats keep coalescing meanwhile.
    let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        while store_work.try_join_next().is_some() {}
        perform_owed(&master);
        let deadline = [
            master.state().next_deadline(),
            Some(next_flush),
            next_reconcile,
            next_sweep,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(next_flush);
        tokio::select! {
            _ = tokio::time::sleep_until(master.inner.clock.instant_at(deadline)) => {}
            _ = master.inner.wake.notified() => {}
            _ = shutdown.changed() => break,
        }
        if !master.acting() {
            // Deposed or past its term: every write would be refused, and
            // owed work retried at once would spin. Its leadership shuts
            // it down; the next leader loads the work.
            info!("no longer acting; waiting to be shut down");
            let _ = shutdown.wait_for(|stopped| *stopped).await;
            break;
        }
        let now = master.now();
        let (events, due) = master.state().expire(now);
        for event in events {
            match event {
                LivenessEvent::Inactive(worker) => {
                    if master.state().left(&worker) {
                        info!(worker = %worker, "worker inactive: it left");
                    } else {
                        warn!(worker = %worker, timeout = ?config.liveness.timeout, "worker inactive: no heartbeat");
                    }
                    master.emit(MasterEvent::Worker {
                        id: worker,
                        health: Health::Inactive,
                    });
                }
                LivenessEvent::Lost(worker) => {
                    master.lose_worker(&worker);
                    let m = master.clone();
                    store_work.spawn(async move { m.fail_lost_tasks(&worker).await });
                }
            }
        }
        for worker in due {
            let m = master.clone();
            tokio::spawn(async move { m.attempt_reconnect(worker).await });
        }
        let backstops = {
            let mut st = master.state();
            st.queue_due_retries(now);
            st.backstops_due(now)
        };
        for (task, worker, attempt) in backstops {
            let m = master.clone();
            store_work.spawn(async move { m.time_out(task, worker, attempt).await });
        }
        let drains_due = master.state().drains_due(now);
        for worker in drains_due {
            let m = master.clone();
            store_work.spawn(async move { m.drain_deadline_passed(&worker).await });
        }
        if now >= next_flush {
            if flushing.as_ref().is_none_or(|f| f.is_finished()) {
                let m = master.clone();
                flushing = Some(tokio::spawn(async move { flush_heartbeats(&m).await }));
            }
            next_flush = now.saturating_add(config.heartbeat_flush);
        }
        if let (Some(at), Some(every)) = (next_sweep, config.retention_sweep()) {
            if now >= at {
                if sweeping.as_ref().is_none_or(|s| s.is_finished()) {
                    let m = master.clone();
                    sweeping = Some(tokio::spawn(async move { m.sweep_finished().await }));
                }
                next_sweep = Some(now.saturating_add(every));
            }
        }
        if let (Some(at), Some(every)) = (next_reconcile, config.reconcile_interval) {
            if now >= at {
                if reconciling.as_ref().is_none_or(|r| r.is_finished()) {
                    let m = master.clone();
                    reconciling = Some(tokio::spawn(async move { periodic_reconcile(&m).await }));
                }
                next_reconcile = Some(now.saturating_add(every));
            }
        }
    }
    while store_work.join_next().await.is_some() {}
    for background in [sweeping, reconciling].into_iter().flatten() {
        background.abort();
    }
    if let Some(f) = flushing {
        let _ = f.await;
    }
    flush_heartbeats(&master).await;
}

async fn periodic_reconcile(master: &Master) {
    match master.reconcile().await {
        Ok(r) if !r.is_clean() => info!(
            corrections = r.corrections.len(),
            "periodic reconciliation fixed allocations"
        ),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "periodic reconciliation failed"),
    }
}

/// Performs what is owed: the placement pass here, deliveries each on a
/// task of its own.
fn perform_owed(master: &Master) {
    let owed = master.state().take_owed();
    if owed.queue_pass {
        master.place_queued();
    }
    for (task, worker) in owed.sends {
        let m = master.clone();
        tokio::spawn(async move { m.send_assignment(task, worker).await });
    }
    for (worker, run, grace) in owed.stops {
        let m = master.clone();
        tokio::spawn(async move { m.deliver_stop(worker, run, grace).await });
    }
    for (task, reason) in owed.unmet {
        let m = master.clone();
        tokio::spawn(async move { m.cancel_unmet(task, reason).await });
    }
}

/// Writes the coalesced heartbeats in one batch.
async fn flush_heartbeats(master: &Master) {
    let beats = master.state().take_beats();
    if beats.is_empty() {
        return;
    }
    match master.inner.registry.record_heartbeats(&beats).await {
        Ok(unknown) if !unknown.is_empty() => {
            warn!(?unknown, "heartbeats from unregistered workers")
        }
        Ok(_) => {}
        Err(e) => {
            // Liveness lives in memory; the registry copy is for display and
            // restarts, so a failed write is retried with the next batch.
            warn!(error = %e, "could not record heartbeats");
            master.state().restore_beats(beats);
        }
    }
}
