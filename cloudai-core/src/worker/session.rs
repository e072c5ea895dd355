//! The worker's session with its master: registration (listing the runs it
//! still has), heartbeats with telemetry, registering again when the
//! master asks, and which master to obey: none of a term below the
//! highest this worker has seen.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::runs::StopKind;
use super::{telemetry, Worker};
use crate::fence;
use crate::model::{Term, ValidationError};
use crate::sync::lock;
use crate::transport::{MasterInfo, Registration};
use crate::{Error, Result};

/// Aborts a background task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the worker knows of its master, and its retry jitter.
#[derive(Debug)]
pub(super) struct Session {
    /// The id of the master this worker registered with (for the logs).
    pub(super) master_id: Option<String>,
    /// The term of the master this worker registered with.
    pub(super) registered: Term,
    /// The highest term seen: calls of a lower one are refused.
    pub(super) term: Term,
    /// Registered, and the last heartbeat was answered.
    pub(super) in_session: bool,
    pub(super) rng: crate::rng::SplitMix64,
    /// How long past the sending of its last answered heartbeat the worker
    /// stops its runs (from its master's timings; see [`crate::fence`]).
    pub(super) fence_after: Option<Duration>,
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

    /// The highest master term this worker has seen.
    pub fn term(&self) -> Term {
        lock(&self.inner.session).term
    }

    /// Whether to obey a call from a master of `term`: refused
    /// ([`Error::Fenced`]) below the highest term seen, which a higher
    /// one raises. A deposed master's late calls stop here.
    pub fn check_master(&self, term: Term) -> Result<()> {
        let mut session = lock(&self.inner.session);
        if term < session.term {
            return Err(Error::Fenced {
                writer: term,
                fence: session.term,
            });
        }
        session.term = term;
        Ok(())
    }

    /// The master asks this worker to register with it (it reconnects to an
    /// inactive worker, or was told of a new one). One of a higher term
    /// than the master this worker registered with has taken over: every
    /// later call goes to it. (The caller checked the term first.)
    pub fn master_register(&self, master: &MasterInfo) {
        info!(master = %master.id, address = %master.address, term = %master.term, "master asked us to register");
        let moves = master.term > lock(&self.inner.session).registered;
        if moves && !master.address.is_empty() {
            self.inner.master.follow(&master.address);
        }
        self.inner.register_now.notify_one();
    }

    fn jitter(&self) -> f64 {
        lock(&self.inner.session).rng.next_f64()
    }

    /// Registers, then heartbeats until `shutdown` flips. Registers again
    /// when the master asks (a restarted master, or `master_register`).
    /// Ends with [`Error::InUse`] if the master refuses this instance
    /// because another one holds the worker id: this process must not run
    /// tasks under that id, and its caller should shut it down; and with
    /// [`Error::InvalidInput`] if the master's timings leave this worker
    /// no time to stop its runs before it could be declared lost.
    ///
    /// Meanwhile it fences itself: once no heartbeat sent in the last
    /// [`crate::fence::fence_after`] was answered, it stops every run.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let fence = AbortOnDrop(tokio::spawn({
            let w = self.clone();
            async move { w.fence_loop().await }
        }));
        let ended = self.session_loop(&mut shutdown).await;
        drop(fence);
        ended
    }

    async fn session_loop(&self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        loop {
            // A worker that is shutting down has told its master it left.
            if self.closing() {
                return Ok(());
            }
            let Some(interval) = self.register(shutdown).await? else {
                return Ok(());
            };
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = self.inner.register_now.notified() => break,
                    _ = shutdown.changed() => return Ok(()),
                }
                // Reports go on their own task: a beat never waits behind
                // them.
                self.flush_in_background();
                let starting = lock(&self.inner.runs).starting();
                let telemetry = telemetry::sample(self.running().len(), starting);
                let me = self.identity();
                let sent = Instant::now();
                let call = self.inner.master.heartbeat(&me, &telemetry);
                let answered = tokio::time::timeout(self.inner.config.rpc_timeout, call).await;
                let in_session = matches!(&answered, Ok(Ok(r)) if !r.register_again);
                self.set_in_session(in_session);
                if in_session {
                    self.answered(sent, Answer::Beat).await;
                }
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
                gpus: cfg.gpus.clone(),
                allow_mounts: cfg.allow_mounts.clone(),
                labels: cfg.labels.clone(),
                running,
            };
            let sent = Instant::now();
            let call = self.inner.master.register(&registration);
            match tokio::time::timeout(cfg.rpc_timeout, call).await {
                Ok(Ok(reply)) if self.check_master(reply.term).is_err() => {
                    warn!(master = %reply.master_id, term = %reply.term, seen = %self.term(), "a master of an older term answered the registration; trying again");
                }
                Ok(Ok(reply)) => {
                    info!(worker = %cfg.id, running = registration.running.len(), stop = reply.stop.len(), "registered with master");
                    let interval = if reply.heartbeat_interval.is_zero() {
                        cfg.heartbeat_interval
                    } else {
                        reply.heartbeat_interval
                    };
                    let fence_after = match reply.lost_after {
                        // An older master names none: it fails a silent
                        // worker's runs at its default loss threshold.
                        d if d.is_zero() => Some(fence::UNNAMED_LOSS),
                        lost_after => {
                            match fence::fence_after(lost_after, interval, cfg.max_grace) {
                                Ok(f) => Some(f),
                                Err(e) => {
                                    self.set_in_session(false);
                                    error!(worker = %cfg.id, error = %e, "this worker cannot keep the master's timings");
                                    return Err(Error::InvalidInput(ValidationError::Invalid {
                                        field: "worker timings",
                                        reason: e.to_string(),
                                    }));
                                }
                            }
                        }
                    };
                    // Marked stopped (or tombstoned) before an assignment
                    // waiting for this registration can admit the run.
                    for run in reply.stop {
                        let container =
                            lock(&self.inner.runs).stop(&run, StopKind::Drop, Duration::ZERO);
                        if let Some(c) = container {
                            let rt = self.inner.runtime.clone();
                            tokio::spawn(async move { rt.stop(&c, Duration::ZERO).await });
                        }
                    }
                    {
                        let mut session = lock(&self.inner.session);
                        session.master_id = Some(reply.master_id.clone());
                        session.registered = reply.term;
                        session.in_session = true;
                        session.fence_after = fence_after;
                    }
                    self.answered(sent, Answer::Registered).await;
                    return Ok(Some(interval));
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

/// What the master answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// A registration: a session with its own timings begins.
    Registered,
    /// A heartbeat of the current session.
    Beat,
}

impl Worker {
    /// The master answered a call sent at `sent`: the fence moves to
    /// `sent` + the fence time, and the runs' lease with it. A
    /// registration sets it outright (its master's timings may be
    /// shorter than the last one's); a heartbeat only moves it later.
    async fn answered(&self, sent: Instant, answer: Answer) {
        let Some(after) = lock(&self.inner.session).fence_after else {
            return;
        };
        let deadline = sent + after;
        self.inner.fence.send_if_modified(|d| {
            let moves = answer == Answer::Registered || d.is_none_or(|d| d < deadline);
            if moves {
                *d = Some(deadline);
            }
            moves
        });
        if let Some(lease) = self.lease() {
            if let Err(e) = self.inner.runtime.renew_lease(lease).await {
                warn!(error = %e, "could not renew the runs' lease");
            }
        }
    }

    /// Whether the fence passed: this worker may be declared lost any
    /// moment, so it starts nothing and its runs are being stopped.
    pub(super) fn fenced(&self) -> bool {
        self.inner
            .fence
            .borrow()
            .is_some_and(|d| Instant::now() >= d)
    }

    /// What is left until the fence, for the runs' lease (`None` before
    /// the master named its timings).
    pub(super) fn lease(&self) -> Option<Duration> {
        let deadline = (*self.inner.fence.borrow())?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// Stops every run at the fence, unless a heartbeat moved it first.
    async fn fence_loop(&self) {
        let mut deadline = self.inner.fence.subscribe();
        loop {
            let at = *deadline.borrow_and_update();
            let fired = match at {
                None => false,
                Some(at) => tokio::select! {
                    () = tokio::time::sleep_until(at) => true,
                    changed = deadline.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                },
            };
            if fired {
                self.cut_off();
            }
            if deadline.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops every run with its grace: no heartbeat was answered for so
    /// long that the master may soon declare this worker lost and run
    /// its tasks elsewhere. Each is reported as ended by the loss once
    /// the master is heard again.
    fn cut_off(&self) {
        let runs = lock(&self.inner.runs).stop_all(StopKind::CutOff, None);
        if runs.is_empty() {
            return;
        }
        warn!(
            runs = runs.len(),
            "no answer from the master for too long; stopping every run before it may declare this worker lost"
        );
        for (run, container, grace) in runs {
            let Some(c) = container else { continue };
            let rt = self.inner.runtime.clone();
            tokio::spawn(async move {
                if let Err(e) = rt.stop(&c, grace).await {
                    warn!(task = %run.task, error = %e, "could not stop a run at the fence");
                }
            });
        }
    }
}
