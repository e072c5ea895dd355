//! The master's driver: one task that sleeps until the next deadline
//! (liveness, reconnection, heartbeat flush, periodic reconcile) and acts on
//! it, so a dead worker is noticed at its deadline, not on a coarse tick.

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Master, MasterEvent};
use crate::liveness::{Health, LivenessEvent};

pub(super) async fn run(master: Master, mut shutdown: watch::Receiver<bool>) {
    let config = master.inner.config.clone();
    let start = master.now();
    let mut next_flush = start.saturating_add(config.heartbeat_flush);
    let mut next_reconcile = config.reconcile_interval.map(|i| start.saturating_add(i));
    loop {
        let deadline = {
            let st = master.state();
            [
                st.liveness.next_deadline(),
                st.reconnect.next_deadline(),
                Some(next_flush),
                next_reconcile,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_flush)
        };
        tokio::select! {
            _ = tokio::time::sleep_until(master.inner.clock.instant_at(deadline)) => {}
            _ = master.inner.wake.notified() => {}
            _ = shutdown.changed() => break,
        }
        let now = master.now();
        let (events, due) = {
            let mut st = master.state();
            (st.liveness.expire(now), st.reconnect.due(now))
        };
        for event in events {
            match event {
                LivenessEvent::Inactive(worker) => {
                    warn!(worker = %worker, timeout = ?config.liveness.timeout, "worker inactive: no heartbeat");
                    master.state().reconnect.add(worker.clone(), now);
                    master.emit(MasterEvent::Worker {
                        id: worker,
                        health: Health::Inactive,
                    });
                }
                LivenessEvent::Lost(worker) => master.worker_lost(&worker).await,
            }
        }
        for worker in due {
            {
                // Keep retrying until the worker registers (which removes it).
                let mut st = master.state();
                let jitter = st.jitter();
                let _ = st.reconnect.failed(&worker, now, jitter);
            }
            let m = master.clone();
            tokio::spawn(async move { m.attempt_reconnect(worker).await });
        }
        if now >= next_flush {
            flush_heartbeats(&master).await;
            next_flush = now.saturating_add(config.heartbeat_flush);
        }
        if let (Some(at), Some(every)) = (next_reconcile, config.reconcile_interval) {
            if now >= at {
                match master.reconcile().await {
                    Ok(r) if !r.is_clean() => info!(
                        corrections = r.corrections.len(),
                        "periodic reconciliation fixed allocations"
                    ),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "periodic reconciliation failed"),
                }
                next_reconcile = Some(now.saturating_add(every));
            }
        }
    }
    flush_heartbeats(&master).await;
}

/// Writes the coalesced heartbeats in one batch.
async fn flush_heartbeats(master: &Master) {
    let beats: Vec<_> = std::mem::take(&mut master.state().beats)
        .into_values()
        .collect();
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
            let mut st = master.state();
            for b in beats {
                st.beats.entry(b.worker.clone()).or_insert(b);
            }
        }
    }
}
