//! The worker's session with its master: registration (listing the runs it
//! still has), heartbeats with telemetry, and registering again when the
//! master asks.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::runs::StopKind;
use super::{telemetry, Worker};
use crate::sync::lock;
use crate::transport::{MasterInfo, Registration};
use crate::{Error, Result};

/// What the worker knows of its master, and its retry jitter.
#[derive(Debug)]
pub(super) struct Session {
    /// The master this worker registered with; it obeys no other.
    pub(super) master_id: Option<String>,
    /// Registered, and the last heartbeat was answered.
    pub(super) in_session: bool,
    pub(super) rng: crate::rng::SplitMix64,
}

impl Worker {
    /// The id of the master this worker is registered with, once it is.
    pub fn master_id(&self) -> Option<String> {
        lock(&self.inner.session).master_id.clone()
    }

    /// Whether this worker is registered with its master and its last
    /// heartbeat was answered: what its readiness probe reports.
    pub fn in_session(&self) -> bool {
        lock(&self.inner.session).in_session
    }

    pub(super) fn set_in_session(&self, yes: bool) {
        lock(&self.inner.session).in_session = yes;
    }

    /// The master asks this worker to register with it (it reconnects to an
    /// inactive worker, or was told of a new one).
    pub fn master_register(&self, master: &MasterInfo) {
        info!(master = %master.id, address = %master.address, "master asked us to register");
        self.inner.register_now.notify_one();
    }

    fn jitter(&self) -> f64 {
        lock(&self.inner.session).rng.next_f64()
    }

    /// Registers, then heartbeats until `shutdown` flips. Registers again
    /// when the master asks (a restarted master, or `master_register`).
    /// Ends with [`Error::InUse`] if the master refuses this instance
    /// because another one holds the worker id: this process must not run
    /// tasks under that id, and its caller should shut it down.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        loop {
            // A worker that is shutting down has told its master it left.
            if self.closing() {
                return Ok(());
            }
            let Some(interval) = self.register(&mut shutdown).await? else {
                return Ok(());
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = self.inner.register_now.notified() => break,
                    _ = shutdown.changed() => return Ok(()),
                }
                self.flush_outbox().await;
                let starting = lock(&self.inner.runs).starting();
                let telemetry = telemetry::sample(self.running().len(), starting);
                let me = self.identity();
                let call = self.inner.master.heartbeat(&me, &telemetry);
                let answered = tokio::time::timeout(self.inner.config.rpc_timeout, call).await;
                self.set_in_session(matches!(&answered, Ok(Ok(r)) if !r.register_again));
                match answered {
                    Ok(Ok(reply)) if reply.register_again => break,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => debug!(error = %e, "heartbeat failed"),
                    Err(_) => debug!("heartbeat timed out"),
                }
            }
        }
    }

    /// Registers with backoff until the master accepts; stops the runs it
    /// names. `None` if shut down meanwhile; [`Error::InUse`] if refused.
    async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Option<Duration>> {
        let cfg = &self.inner.config;
        let mut failures = 0u32;
        loop {
            // Results that ended while the master was away go first; runs
            // whose result is still unacknowledged are listed with the
            // running ones, so the master does not fail them as vanished.
            self.flush_outbox().await;
            // Assignments wait until the master has this registration, so
            // every run it does not list started after the master saw it.
            let registering = self.inner.registering.write().await;
            let mut running = self.running();
            running.extend(self.unacknowledged().into_iter().map(|(run, _)| run));
            running.sort();
            running.dedup();
            let registration = Registration {
                worker: cfg.id.clone(),
                instance: cfg.instance.clone(),
                address: cfg.advertise_address.clone(),
                capacity: cfg.capacity,
                running,
            };
            let call = self.inner.master.register(&registration);
            match tokio::time::timeout(cfg.rpc_timeout, call).await {
                Ok(Ok(reply)) => {
                    info!(worker = %cfg.id, running = registration.running.len(), stop = reply.stop.len(), "registered with master");
                    for run in reply.stop {
                        let w = self.clone();
                        tokio::spawn(async move {
                            w.stop_run(&run, StopKind::Drop, Duration::ZERO).await
                        });
                    }
                    {
                        let mut session = lock(&self.inner.session);
                        session.master_id = Some(reply.master_id.clone());
                        session.in_session = true;
                    }
                    let interval = reply.heartbeat_interval;
                    return Ok(Some(if interval.is_zero() {
                        cfg.heartbeat_interval
                    } else {
                        interval
                    }));
                }
                Ok(Err(e @ Error::InUse(_))) => {
                    self.set_in_session(false);
                    error!(worker = %cfg.id, instance = %cfg.instance, error = %e, "the master refused this worker: its id is live elsewhere");
                    return Err(e);
                }
                Ok(Err(e)) => warn!(error = %e, "registration failed"),
                Err(_) => warn!("registration timed out"),
            }
            drop(registering);
            self.set_in_session(false);
            failures += 1;
            let delay = cfg.backoff.delay(failures, self.jitter());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.inner.register_now.notified() => {}
                _ = shutdown.changed() => return Ok(None),
            }
        }
    }
}
