//! Dispatch: accepting tasks, placing queued ones on workers, writing the
//! assignments and delivering them.
//!
//! A placement pass runs in the driver; each pick's assignment is written
//! and sent on a task of its own, so a slow store or worker holds up
//! neither the driver nor other placements.

use std::sync::atomic::Ordering;

use tracing::{info, info_span, warn, Instrument};

use super::dependencies::ParentRef;
use super::state::constraint_list;
use super::{Master, MasterEvent};
use crate::apply::Applied;
use crate::lifecycle::{assignment_effects, TaskEvent};
use std::collections::BTreeMap;

use crate::model::{
    ArrayId, ArrayIndices, ArrayMember, Attempt, Condition, Dependency, EndCause, RequestId,
    RunningTask, TaskId, TaskRecord, TaskSpec, TaskStatus, Timestamp, ValidationError, WorkerId,
    ARRAY_ID_ENV, ARRAY_INDEX_ENV,
};
use crate::store::{RequestClaim, Submitted, TaskFilter};
use crate::{Error, Result};

/// How a submit treats its task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    /// Queue it even if no registered worker could ever hold it (it waits
    /// for a bigger worker to join). Without it such a submit is refused
    /// once any worker has registered.
    pub wait_for_capacity: bool,
    /// The client's name for this submit: retried under the same one (with
    /// the same spec), it returns what the first made instead of making it
    /// again, whichever master answers.
    pub request: Option<RequestId>,
    /// Parents named by id (a task, or an array: every member), beside
    /// the tasks already in `spec.after`.
    pub after: Vec<ParentRef>,
    /// For an array: member `i` waits for member `i` of this array to
    /// complete (Slurm's `aftercorr`); a member without a counterpart
    /// waits for none.
    pub after_corr: Option<ArrayId>,
    /// For an array: at most this many members assigned or running at
    /// once.
    pub array_limit: Option<u32>,
}

impl SubmitOptions {
    /// What a retried submit must repeat besides the spec (empty for a
    /// plain submit, so its digest is the spec's alone).
    fn digest_suffix(&self) -> String {
        if self.after.is_empty() && self.after_corr.is_none() && self.array_limit.is_none() {
            return String::new();
        }
        let after: Vec<String> = self
            .after
            .iter()
            .map(|r| format!("{} {}", r.condition, r.id))
            .collect();
        format!(
            "/{}/{:?}/{:?}",
            after.join(","),
            self.after_corr.as_ref().map(ArrayId::as_str),
            self.array_limit
        )
    }
}

/// Ids of one term never collide with another's: the term is in the
/// high bits of each id's number.
const TERM_SHIFT: u32 = 32;

impl Master {
    fn next_n(&self) -> u64 {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed) & ((1 << TERM_SHIFT) - 1);
        self.term()
            .get()
            .saturating_mul(1 << TERM_SHIFT)
            .saturating_add(n)
    }

    /// A submit is acknowledged only while this master still acts when its
    /// task is stored: after that, the next leader may have loaded its
    /// state without the task (it adopts it within a TTL).
    pub(super) fn acknowledge<T>(&self, made: T) -> Result<T> {
        if self.acting() {
            return Ok(made);
        }
        Err(Error::Unavailable(
            "no longer the leader: the task may have been stored; retry with the same request id"
                .into(),
        ))
    }

    /// Claims `request` for what a submit is about to make; `Some` with
    /// the claim that holds it when an earlier submit made it, refused
    /// when that one had another spec.
    async fn claim(
        &self,
        request: &Option<RequestId>,
        made: Submitted,
        digest: &str,
        now: Timestamp,
    ) -> Result<Option<RequestClaim>> {
        let Some(request) = request else {
            return Ok(None);
        };
        let claim = RequestClaim {
            request: request.clone(),
            made,
            spec_hash: digest.to_owned(),
            at: now,
        };
        match self.inner.store.claim_request(claim).await? {
            Some(held) if held.spec_hash != digest => Err(Error::Conflict(format!(
                "request id {request} was used for another submit ({})",
                match &held.made {
                    Submitted::Task(t) => format!("task {t}"),
                    Submitted::Array(a) => format!("array {a}"),
                }
            ))),
            held => Ok(held),
        }
    }

    /// Queues stored pending tasks this master is not already placing:
    /// what a retried submit finds, or what an older term stored after
    /// this one's raise (adopted by [`super::Leadership`]).
    pub(crate) async fn adopt_stored(&self, tasks: &[TaskRecord]) {
        let now = self.now();
        {
            let mut st = self.state();
            for t in tasks {
                st.adopt(t, now);
            }
            self.done(st);
        }
        // A dependent among them may wait on a parent that already ended.
        self.resolve_from_store(tasks, &Default::default()).await;
    }

    /// What every submit checks first: a valid spec within the time
    /// limits in force (the default filled in), a pin to a worker this
    /// master knows, and (unless told to wait for capacity) a request some
    /// registered worker could hold.
    fn check_submit(&self, spec: &mut TaskSpec, options: &SubmitOptions) -> Result<()> {
        let config = &self.inner.config;
        if spec.policy.time_limit.is_none() {
            spec.policy.time_limit = config.default_time_limit;
        }
        if let (Some(asked), Some(max)) = (spec.policy.time_limit, config.max_time_limit) {
            if asked > max {
                return Err(ValidationError::too_large(
                    "time limit",
                    humantime::format_duration(asked),
                    format!(
                        "{} (this master's --max-time-limit)",
                        humantime::format_duration(max)
                    ),
                )
                .into());
            }
        }
        spec.validate()?;
        if let Some(pin) = &spec.pin {
            if !self.state().knows(pin) {
                return Err(Error::not_found("worker", pin));
            }
        }
        if options.wait_for_capacity {
            return Ok(());
        }
        // Most tasks mount nothing: no second look at the state for them.
        let sources = spec.options.sources();
        if !sources.is_empty()
            && !self
                .state()
                .mounts_allowed_somewhere(&sources, spec.pin.as_ref())
        {
            return Err(ValidationError::Invalid {
                field: "mount",
                reason: format!(
                    "no registered worker{} allows bind mounts from {} (a worker allows them with --allow-mount); submit with --wait-for-capacity to queue it for one that does",
                    if spec.pin.is_some() { " (pinned)" } else { "" },
                    sources.join(", "),
                ),
            }
            .into());
        }
        if !spec.constraints.is_empty()
            && !self
                .state()
                .matched_somewhere(&spec.constraints, spec.pin.as_ref())
        {
            return Err(ValidationError::Invalid {
                field: "constraint",
                reason: format!(
                    "no registered worker{} matches {} (`workers` lists their labels); submit with --wait-for-capacity to queue it for one that does",
                    if spec.pin.is_some() { " (pinned)" } else { "" },
                    constraint_list(&spec.constraints),
                ),
            }
            .into());
        }
        let never_fits = self.state().never_fits(&spec.resources, spec.pin.as_ref());
        match never_fits {
            None => Ok(()),
            Some((largest, capacity)) => Err(ValidationError::Invalid {
                field: "resources",
                reason: format!(
                    "no registered worker could ever run it: it asks for {}, and the largest{} worker, {largest}, has {capacity}; submit with --wait-for-capacity to queue it for a bigger worker",
                    spec.resources,
                    if spec.pin.is_some() { " (pinned)" } else { "" },
                ),
            }
            .into()),
        }
    }

    /// Accepts a task (refusing one no registered worker could ever hold).
    /// With `spec.pin` it runs only on that worker; else the scheduler
    /// places it. Either way it waits in the queue, with a reason, until a
    /// worker has room.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskId> {
        self.submit_with(spec, SubmitOptions::default()).await
    }

    /// [`Master::submit`], with options.
    pub async fn submit_with(&self, mut spec: TaskSpec, options: SubmitOptions) -> Result<TaskId> {
        // Hashed only for a request id: most submits name none.
        let digest = options
            .request
            .as_ref()
            .map(|_| format!("{}{}", spec.digest(), options.digest_suffix()))
            .unwrap_or_default();
        if options.after_corr.is_some() || options.array_limit.is_some() {
            return Err(ValidationError::Invalid {
                field: "array",
                reason: "--after-corr and a %limit apply to arrays only".into(),
            }
            .into());
        }
        self.expand_parents(&mut spec, &options.after).await?;
        self.check_submit(&mut spec, &options)?;
        let now = self.now();
        let fresh = TaskId::generated(now, self.next_n());
        let claimed = self
            .claim(
                &options.request,
                Submitted::Task(fresh.clone()),
                &digest,
                now,
            )
            .await?;
        let task = match claimed {
            None => self.insert_fresh(fresh, &spec, now).await?,
            Some(held) => {
                let Submitted::Task(id) = held.made else {
                    return Err(Error::Conflict(format!(
                        "request id {} made an array, not a task",
                        held.request
                    )));
                };
                return self.replay_task(id, spec, held.at).await;
            }
        };
        self.acknowledge(())?;
        let span = info_span!("submit", task = %task.id);
        async {
            info!(image = %spec.image, resources = %spec.resources, "task submitted");
            self.queue_and_wait(std::slice::from_ref(&task)).await;
        }
        .instrument(span)
        .await;
        Ok(task.id)
    }

    /// Stores a new task under `id` (or, taken, the next generated id).
    async fn insert_fresh(
        &self,
        mut id: TaskId,
        spec: &TaskSpec,
        now: Timestamp,
    ) -> Result<TaskRecord> {
        loop {
            let task = TaskRecord::new(id, spec.clone(), now);
            match self.inner.store.insert_task(task.clone()).await {
                Ok(()) => return Ok(task),
                Err(Error::AlreadyExists { .. }) => id = TaskId::generated(now, self.next_n()),
                Err(e) => return Err(e),
            }
        }
    }

    /// A submit retried under a request id that made task `id`: the task
    /// as stored (queued if placeable and new to this master), or stored
    /// now if the first submit's insert never landed.
    async fn replay_task(&self, id: TaskId, spec: TaskSpec, at: Timestamp) -> Result<TaskId> {
        let task = match self.inner.store.get_task(&id).await? {
            Some(t) => t,
            None => {
                let t = TaskRecord::new(id.clone(), spec, at);
                match self.inner.store.insert_task(t.clone()).await {
                    Ok(()) => {
                        self.acknowledge(())?;
                        self.queue_and_wait(std::slice::from_ref(&t)).await;
                        return Ok(id);
                    }
                    // Another retry stored it meanwhile: take it as stored.
                    Err(Error::AlreadyExists { .. }) => self
                        .inner
                        .store
                        .get_task(&id)
                        .await?
                        .ok_or_else(|| Error::not_found("task", &id))?,
                    Err(e) => return Err(e),
                }
            }
        };
        info!(task = %id, "submit retried under its request id; returning its task");
        self.adopt_stored(std::slice::from_ref(&task)).await;
        self.acknowledge(id)
    }

    /// Accepts one task per index, in one store batch: each is `spec` with
    /// its index in `CLOUDAI_ARRAY_INDEX` (and the array in
    /// `CLOUDAI_ARRAY_ID`), stored and placed on its own. Returns the array
    /// id and the tasks' ids, in index order.
    pub async fn submit_array(
        &self,
        spec: TaskSpec,
        indices: &ArrayIndices,
    ) -> Result<(ArrayId, Vec<TaskId>)> {
        self.submit_array_with(spec, indices, SubmitOptions::default())
            .await
    }

    /// [`Master::submit_array`], with options.
    pub async fn submit_array_with(
        &self,
        mut spec: TaskSpec,
        indices: &ArrayIndices,
        options: SubmitOptions,
    ) -> Result<(ArrayId, Vec<TaskId>)> {
        let digest = options
            .request
            .as_ref()
            .map(|_| format!("{}/{indices}{}", spec.digest(), options.digest_suffix()))
            .unwrap_or_default();
        self.expand_parents(&mut spec, &options.after).await?;
        self.check_submit(&mut spec, &options)?;
        if indices.is_empty() {
            return Err(ValidationError::Empty { field: "array" }.into());
        }
        if options.array_limit == Some(0) {
            return Err(ValidationError::Invalid {
                field: "array",
                reason: "a %limit must let at least 1 task run at once".into(),
            }
            .into());
        }
        let corr = match &options.after_corr {
            None => BTreeMap::new(),
            Some(a) => {
                let members = self.members(a.as_str()).await?;
                if members.is_empty() {
                    return Err(Error::not_found("array (--after-corr)", a));
                }
                members
            }
        };
        let now = self.now();
        let mut array = ArrayId::generated(now, self.next_n());
        let claimed = self
            .claim(
                &options.request,
                Submitted::Array(array.clone()),
                &digest,
                now,
            )
            .await?;
        let mut wanted: Vec<u32> = indices.iter().collect();
        let mut stored = Vec::new();
        if let Some(held) = claimed {
            let Submitted::Array(id) = held.made else {
                return Err(Error::Conflict(format!(
                    "request id {} made a task, not an array",
                    held.request
                )));
            };
            array = id;
            stored = self.inner.store.list_tasks(&in_array(&array)).await?;
            wanted.retain(|i| {
                !stored
                    .iter()
                    .any(|t| t.array.as_ref().is_some_and(|m| m.index == *i))
            });
            info!(array = %array, stored = stored.len(), missing = wanted.len(), "array submit retried under its request id");
            self.adopt_stored(&stored).await;
        }
        let tasks: Vec<TaskRecord> = wanted
            .into_iter()
            .map(|index| {
                let mut s = spec.clone();
                s.env.insert(ARRAY_INDEX_ENV.into(), index.to_string());
                s.env.insert(ARRAY_ID_ENV.into(), array.to_string());
                if let Some(parent) = corr.get(&index) {
                    if !s.after.iter().any(|d| &d.task == parent) {
                        s.after.push(Dependency {
                            task: parent.clone(),
                            condition: Condition::AfterOk,
                        });
                    }
                }
                let mut t = TaskRecord::new(TaskId::generated(now, self.next_n()), s, now);
                t.array = Some(ArrayMember {
                    id: array.clone(),
                    index,
                    limit: options.array_limit,
                });
                t
            })
            .collect();
        if !tasks.is_empty() {
            if let Err(e) = self.inner.store.insert_tasks(tasks.clone()).await {
                return Err(self.partial_array(&array, indices.len(), e).await);
            }
            self.acknowledge(())?;
            info!(array = %array, tasks = tasks.len(), indices = %indices, image = %spec.image, "array submitted");
            self.queue_and_wait(&tasks).await;
        }
        self.acknowledge(())?;
        stored.extend(tasks);
        stored.sort_by_key(|t| t.array.as_ref().map(|m| m.index));
        Ok((array, stored.into_iter().map(|t| t.id).collect()))
    }

    /// A batch that failed may have been stored in part (a backend that
    /// cannot undo one): the tasks that landed are queued, so they run, and
    /// the error says how many did.
    async fn partial_array(&self, array: &ArrayId, wanted: usize, e: Error) -> Error {
        let landed = match self.inner.store.list_tasks(&in_array(array)).await {
            Ok(landed) if !landed.is_empty() => landed,
            _ => return e,
        };
        warn!(array = %array, stored = landed.len(), wanted, error = %e, "array stored in part; queueing what landed");
        // Only those still waiting to be placed (a retried submit lists
        // members that may have run already).
        let placeable: Vec<TaskRecord> = landed
            .iter()
            .filter(|t| t.status == TaskStatus::Pending && t.worker.is_none())
            .cloned()
            .collect();
        self.queue_and_wait(&placeable).await;
        Error::Unavailable(format!(
            "array {array}: {} of {wanted} tasks were stored before the store failed ({e}); \
             those run (tasks --array {array}); submit the rest again",
            landed.len()
        ))
    }

    /// Queues stored tasks and returns once a placement pass has seen them,
    /// so that `task` shows where each went or why it waits.
    async fn queue_and_wait(&self, tasks: &[TaskRecord]) {
        self.inner.metrics.submitted(tasks.len());
        for t in tasks {
            self.emit(MasterEvent::Submitted { id: t.id.clone() });
        }
        let pass = {
            let now = self.now();
            let mut st = self.state();
            for t in tasks {
                st.enqueue_when_due(t, now);
            }
            st.owe_queue_pass();
            let pass = st.next_pass();
            self.done(st);
            pass
        };
        self.resolve_from_store(tasks, &Default::default()).await;
        let mut passes = self.inner.passes.subscribe();
        self.until_shutdown(passes.wait_for(|done| *done >= pass))
            .await;
    }

    /// A placement pass (run by the driver): reserves room for every queued
    /// task that fits and starts writing each assignment.
    pub(super) fn place_queued(&self) {
        let (picks, pass) = self.state().pick_placements(self.now());
        self.inner.passes.send_replace(pass);
        for (id, worker, gpus) in picks {
            let m = self.clone();
            let span = info_span!("place", task = %id, worker = %worker);
            tokio::spawn(async move { m.assign(id, worker, gpus).await }.instrument(span));
        }
    }

    /// Writes one placement's assignment. Executing the stored transition
    /// confirms the reservation and owes the send.
    async fn assign(&self, id: TaskId, worker: WorkerId, gpus: Vec<u32>) {
        let event = TaskEvent::Assign {
            worker: worker.clone(),
            gpus,
        };
        match self.apply(&id, event.clone()).await {
            Ok(Applied::Changed { task, .. }) => {
                info!(attempt = task.attempt, "task placed");
            }
            // Cancelled while being placed.
            Ok(Applied::Refused { .. }) => self.state().unreserve(&id),
            Err(e) => {
                // The write may or may not have landed: read until the
                // store answers, then carry it out (it landed) or requeue.
                warn!(task = %id, error = %e, "assignment write failed; checking whether it landed");
                let Some(task) = self.surely(|| self.inner.store.get_task(&id)).await else {
                    return;
                };
                match task {
                    Some(t)
                        if t.status == TaskStatus::Running
                            && t.worker.as_ref() == Some(&worker) =>
                    {
                        // An assignment's effects depend only on the task's
                        // request, the worker and the attempt, all known here.
                        self.execute(&t, TaskStatus::Pending, &assignment_effects(&t));
                    }
                    Some(t) if t.status == TaskStatus::Pending => {
                        let mut st = self.state();
                        st.unreserve(&id);
                        if t.worker.is_none() {
                            let now = self.now();
                            st.enqueue(&t, now, Some(format!("store error: {e}")));
                        }
                    }
                    _ => self.state().unreserve(&id),
                }
            }
        }
    }

    /// Sends a stored assignment (run by the driver on a task of its own).
    /// A definite refusal fails the task; no answer puts it back in the
    /// queue once the worker confirms it dropped the run (in case the
    /// assignment did arrive), or is lost: never two runs at once.
    pub(super) async fn send_assignment(&self, task: TaskRecord, worker: WorkerId) {
        let span = info_span!("assign", task = %task.id, worker = %worker, attempt = task.attempt);
        self.deliver_assignment(task, worker).instrument(span).await;
    }

    async fn deliver_assignment(&self, task: TaskRecord, worker: WorkerId) {
        let id = task.id.clone();
        let run = RunningTask {
            task: id.clone(),
            attempt: task.attempt,
        };
        let result = match self.endpoint(&worker) {
            None => Err(Error::Unavailable(format!(
                "worker {worker} has no address"
            ))),
            Some(to) => {
                let call = self
                    .inner
                    .transport
                    .assign(&to, &run, &task.spec, &task.gpus);
                match tokio::time::timeout(self.inner.config.assign_timeout, call).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout(format!(
                        "worker {worker} did not accept the task in time"
                    ))),
                }
            }
        };
        self.state().sent(&id);
        let event = match result {
            Ok(()) => {
                info!("assignment delivered");
                return;
            }
            Err(e) if e.is_transient() => {
                warn!(task = %id, worker = %worker, error = %e, "assignment not delivered; requeueing");
                self.state().mark_unreachable(&worker);
                TaskEvent::Requeue {
                    reason: format!(
                        "worker {worker} {}: the task is placed again",
                        match e {
                            Error::Timeout(_) => "did not accept it in time",
                            _ => "could not be reached",
                        }
                    ),
                    worker,
                    attempt: run.attempt,
                }
            }
            Err(e) => {
                warn!(task = %id, worker = %worker, error = %e, "worker refused the task");
                TaskEvent::Report(Box::new(Attempt::ended(
                    run.attempt,
                    worker.clone(),
                    EndCause::Refused,
                    self.now(),
                    Some(format!("worker {worker} refused the task: {e}")),
                )))
            }
        };
        let _: Option<Applied> = self.surely(|| self.apply(&id, event.clone())).await;
    }
}

/// Every task of `array`.
fn in_array(array: &ArrayId) -> TaskFilter {
    TaskFilter {
        array: Some(array.clone()),
        ..TaskFilter::default()
    }
}
