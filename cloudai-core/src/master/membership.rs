//! Membership: workers registering, being named by an operator, sending
//! heartbeats, being reconnected while inactive, and being declared lost.

use std::collections::BTreeSet;

use tracing::{debug, info, warn};

use super::{Master, MasterEvent};
use crate::apply::Applied;
use crate::lifecycle::TaskEvent;
use crate::liveness::Health;
use crate::model::{
    check_labels, Gpu, Resources, RunningTask, TaskRecord, TaskStatus, Telemetry, ValidationError,
    WorkerId, WorkerIdentity, WorkerRecord,
};
use crate::store::TaskFilter;
use crate::transport::{
    HeartbeatReply, MasterInfo, Registration, RegistrationReply, WorkerEndpoint,
};
use crate::{Error, Result};

fn validate_address(address: &str) -> Result<()> {
    if address.trim().is_empty() {
        return Err(ValidationError::Empty {
            field: "worker address",
        }
        .into());
    }
    if address.len() > 256 || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ValidationError::Invalid {
            field: "worker address",
            reason: format!("{address:?} is not a host:port address"),
        }
        .into());
    }
    Ok(())
}

/// The tasks the store has running on `worker`.
pub(super) fn running_on(worker: &WorkerId) -> TaskFilter {
    TaskFilter {
        statuses: vec![TaskStatus::Running],
        worker: Some(worker.clone()),
        array: None,
        ..TaskFilter::default()
    }
}

/// The tasks whose current run may be on `worker`: running there, or
/// pending while their previous attempt there ends.
fn on_worker(worker: &WorkerId) -> TaskFilter {
    TaskFilter {
        statuses: vec![TaskStatus::Pending, TaskStatus::Running],
        ..running_on(worker)
    }
}

impl Master {
    /// Registers a worker that introduced itself (worker-initiated, or after
    /// a `master_register` call). Two-way reconciliation: of the tasks the
    /// worker lists, those not running there in the store come back in
    /// `stop`; tasks whose run the store has there that the worker no
    /// longer lists have vanished (each runs again or fails, as its
    /// policy says).
    ///
    /// A registration from another instance while the id's current session
    /// is live is refused with [`Error::InUse`] naming the live address.
    pub async fn register(&self, reg: Registration) -> Result<RegistrationReply> {
        validate_address(&reg.address)?;
        reg.capacity.validate()?;
        Gpu::validate_list(&reg.gpus, reg.capacity.gpus)?;
        check_labels(&reg.labels)?;
        self.check_identity(&reg).await?;
        let now = self.now();
        let id = reg.worker.clone();
        let who = WorkerIdentity {
            id: id.clone(),
            instance: reg.instance.clone(),
        };
        let mut record =
            WorkerRecord::new(id.clone(), Some(reg.address.clone()), reg.capacity, now);
        record.instance = Some(reg.instance.clone());
        record.gpus.clone_from(&reg.gpus);
        record.allow_mounts.clone_from(&reg.allow_mounts);
        record.labels.clone_from(&reg.labels);
        self.inner.registry.upsert_worker(record.clone()).await?;
        let on_here = self.inner.store.list_tasks(&on_worker(&id)).await?;
        let listed: BTreeSet<&RunningTask> = reg.running.iter().collect();
        let run_of = |t: &TaskRecord| RunningTask {
            task: t.id.clone(),
            attempt: t.attempt,
        };
        let here: BTreeSet<RunningTask> = on_here
            .iter()
            .filter(|t| t.status == TaskStatus::Running)
            .map(run_of)
            .collect();
        // Runs the worker has that must not run there: not (or no longer)
        // its task's current run, or one being ended.
        let mut stop: BTreeSet<RunningTask> = reg
            .running
            .iter()
            .filter(|r| !here.contains(*r))
            .cloned()
            .collect();
        let (missing, gone, revived, owed) = {
            let mut st = self.state();
            let absent = |r: &RunningTask| !listed.contains(r) && !st.in_flight(&r.task);
            let missing: Vec<RunningTask> =
                on_here.iter().map(run_of).filter(|r| absent(r)).collect();
            // Runs held for tasks already final (a stop was owed): the
            // worker no longer has them, so they ended.
            let gone: Vec<RunningTask> = st
                .runs_held_on(&id)
                .into_iter()
                .filter(|r| absent(r) && !missing.contains(r))
                .collect();
            let (revived, owed) = st.register(&who, &record, now);
            self.done(st);
            (missing, gone, revived, owed)
        };
        // Owed stops go out in the reply: the worker stops those runs, or
        // remembers them so a late assignment cannot start them. They stay
        // owed until a delivery confirms them.
        stop.extend(owed);
        if revived {
            self.emit(MasterEvent::Worker {
                id: id.clone(),
                health: Health::Active,
            });
        }
        info!(worker = %id, instance = %reg.instance, address = %reg.address, capacity = %reg.capacity, listed = reg.running.len(),
              stop = stop.len(), vanished = missing.len(), "worker registered");
        // Runs ended here as vanished are stopped too, in case their
        // assignment is still on its way to the worker.
        stop.extend(missing.iter().cloned());
        for run in missing {
            let event = TaskEvent::Vanished {
                worker: id.clone(),
                attempt: run.attempt,
            };
            let _: Applied = self.apply(&run.task, event).await?;
        }
        for run in gone {
            self.run_ended(&run.task, &id, run.attempt);
        }
        Ok(RegistrationReply {
            stop: stop.into_iter().collect(),
            heartbeat_interval: self.inner.config.heartbeat_interval,
            master_id: self.inner.config.id.clone(),
            term: self.term(),
            lost_after: self.inner.config.liveness.lost_after,
        })
    }

    /// The identity rule: a session is live while its registered address
    /// answers with its instance. A registration from the same instance
    /// (a restart with the same state directory, or a re-registration) is
    /// always taken; one from another instance only if the current
    /// session's address does not answer as that instance.
    async fn check_identity(&self, reg: &Registration) -> Result<()> {
        let (held, address) = {
            let st = self.state();
            (st.instance(&reg.worker), st.address(&reg.worker))
        };
        let (Some(held), Some(address)) = (held, address) else {
            return Ok(());
        };
        if held == reg.instance {
            return Ok(());
        }
        let to = WorkerEndpoint {
            id: reg.worker.clone(),
            instance: Some(held.clone()),
            address: address.clone(),
        };
        let probe = self.inner.transport.identify(&to);
        match tokio::time::timeout(self.inner.config.reconnect_timeout, probe).await {
            Ok(Ok(answer)) if answer.id == reg.worker && answer.instance == held => {
                warn!(worker = %reg.worker, live = %address, instance = %held, refused = %reg.instance,
                      from = %reg.address, "refused a registration: the worker id is live elsewhere");
                Err(Error::InUse(format!(
                    "worker {} is live at {address} (instance {held}); stop that worker, or give this one another id",
                    reg.worker
                )))
            }
            answer => {
                debug!(worker = %reg.worker, previous = %address, ?answer, "previous session is not live; taking the new instance");
                Ok(())
            }
        }
    }

    /// Pre-registers a worker by address (the operator's
    /// `register <id> <ip:port>`); the master then asks it to register,
    /// retrying with backoff until it answers. Refused with
    /// [`Error::InUse`] while the id is registered and active: that would
    /// re-point a live worker.
    pub async fn pre_register(&self, id: WorkerId, address: String) -> Result<()> {
        validate_address(&address)?;
        let now = self.now();
        let live_at = {
            let st = self.state();
            st.in_session(&id, now)
                .then(|| st.address(&id).unwrap_or_default())
        };
        if let Some(at) = live_at {
            return Err(Error::InUse(format!(
                "worker {id} is registered and active at {at}; it keeps its address while it is"
            )));
        }
        let record = match self.inner.registry.get_worker(&id).await? {
            Some(mut known) => {
                if known.address.as_deref() != Some(address.as_str()) {
                    // Whoever answers at the new address is a new instance.
                    known.instance = None;
                }
                known.address = Some(address.clone());
                known
            }
            None => WorkerRecord::new(id.clone(), Some(address.clone()), Resources::ZERO, now),
        };
        let stored = self.inner.registry.upsert_worker(record).await?;
        self.state().pre_register(&stored, now);
        info!(worker = %id, %address, "worker pre-registered; will connect");
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Takes a heartbeat. It costs no store write of its own: the newest
    /// beat per worker is kept and written in one batch per flush interval.
    pub async fn heartbeat(
        &self,
        who: &WorkerIdentity,
        telemetry: Telemetry,
    ) -> Result<HeartbeatReply> {
        let worker = &who.id;
        let mut st = self.state();
        let Some(revived) = st.heartbeat(who, telemetry, self.now()) else {
            return Ok(HeartbeatReply {
                register_again: true,
            });
        };
        self.done(st);
        self.inner.metrics.heartbeat();
        if revived {
            info!(worker = %worker, "worker active again");
            self.emit(MasterEvent::Worker {
                id: worker.clone(),
                health: Health::Active,
            });
        }
        Ok(HeartbeatReply::default())
    }

    /// A worker says it is shutting down: nothing more is placed on it, and
    /// it shows as inactive at once (its driver deadline fires now). Its
    /// running tasks end through its reports, or through its loss at the
    /// usual deadline if those never arrive. Only the instance holding the
    /// session may end it.
    pub fn leave(&self, who: &WorkerIdentity) -> Result<()> {
        let worker = &who.id;
        let held = {
            let st = self.state();
            if !st.knows(worker) {
                return Err(Error::not_found("worker", worker));
            }
            st.instance(worker)
        };
        if held.as_ref().is_some_and(|i| *i != who.instance) {
            return Err(Error::Conflict(format!(
                "instance {} does not hold worker {worker}'s session",
                who.instance
            )));
        }
        if self.state().leave(worker, self.now()) {
            info!(worker = %worker, "worker is leaving; placing nothing more on it");
        }
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Makes every reconnection attempt due now (the CLI's `reconnect`).
    pub fn reconnect_now(&self) {
        let now = self.now();
        self.state().reconnect_all_now(now);
        self.inner.wake.notify_one();
    }

    /// A worker was declared lost: its session ends now (the driver calls
    /// this at the deadline); [`Master::fail_lost_tasks`] follows.
    pub(super) fn lose_worker(&self, worker: &WorkerId) {
        warn!(worker = %worker, "worker lost; its runs ended");
        self.emit(MasterEvent::Worker {
            id: worker.clone(),
            health: Health::Lost,
        });
        self.state().end_session(worker);
    }

    /// Ends every run on a lost worker, unless it has registered again
    /// meanwhile (its registration settled its runs): each task runs
    /// again or fails, as its policy says, and runs already final give
    /// their resources back. By the timing rule the worker stopped them
    /// all before it could be declared lost.
    pub(super) async fn fail_lost_tasks(&self, worker: &WorkerId) {
        let filter = on_worker(worker);
        let Some(tasks) = self.surely(|| self.inner.store.list_tasks(&filter)).await else {
            return;
        };
        for t in tasks {
            if self.state().in_session(worker, self.now()) {
                info!(worker = %worker, "lost worker came back; its registration settled its runs");
                return;
            }
            let lost = TaskEvent::WorkerLost {
                worker: worker.clone(),
            };
            if self
                .surely(|| self.apply(&t.id, lost.clone()))
                .await
                .is_none()
            {
                return;
            }
        }
        if self.state().in_session(worker, self.now()) {
            return;
        }
        let held = self.state().runs_held_on(worker);
        for run in held {
            self.run_ended(&run.task, worker, run.attempt);
        }
    }

    /// Asks an inactive worker to register again.
    pub(super) async fn attempt_reconnect(&self, worker: WorkerId) {
        let Some(to) = self.endpoint(&worker) else {
            self.state().stop_reconnecting(&worker);
            return;
        };
        let master = MasterInfo {
            id: self.inner.config.id.clone(),
            address: self.inner.config.advertise_address.clone(),
            term: self.term(),
        };
        let call = self.inner.transport.master_register(&to, &master);
        match tokio::time::timeout(self.inner.config.reconnect_timeout, call).await {
            Ok(Ok(())) => {
                info!(worker = %worker, "reconnected to worker; awaiting its registration")
            }
            Ok(Err(e)) => debug!(worker = %worker, error = %e, "reconnect attempt failed"),
            Err(_) => debug!(worker = %worker, "reconnect attempt timed out"),
        }
    }
}
