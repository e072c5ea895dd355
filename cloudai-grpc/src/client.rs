//! Clients: [`MasterClient`] (a worker's and an operator's way to the
//! master) and [`WorkerClients`] (the master's way to its workers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cloudai_core::ledger::Reconciliation;
use cloudai_core::master::{
    CancelOutcome, Cursor, SubmitOptions, TaskFollow, TaskView, WorkerView,
};
use cloudai_core::model::{
    ArrayId, ArrayIndices, StatusCounts, TaskId, TaskRecord, TaskResult, TaskSpec, Telemetry, Term,
    WorkerId, WorkerIdentity,
};
use cloudai_core::output::{Follow, OutputFrom};
use cloudai_core::store::{PageKey, TaskFilter};
use cloudai_core::transport::{
    HeartbeatReply, MasterInfo, MasterToWorker, Registration, RegistrationReply, RunningTask,
    WorkerEndpoint, WorkerToMaster,
};
use cloudai_core::{Error, Result};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Request;
use tracing::debug;

use crate::auth::{address_to, sign};
use crate::convert::{self, from_status};
use crate::events::{self, Watched};
use crate::output;
use crate::proto::{self, master_client, worker_client};
use crate::security::Security;

/// How long to wait for a TCP/TLS connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest message accepted (results carry up to 1 MiB of logs).
pub const MAX_MESSAGE: usize = 16 << 20;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn bad_reply(e: tonic::Status) -> Error {
    Error::Backend {
        backend: "grpc",
        source: format!("malformed reply: {}", e.message()).into(),
    }
}

/// A connection to the leading master among those it was given.
///
/// Every call goes to the master it follows now. A follower's answer
/// that names the leader (`x-cloudai-leader`) moves it there and the call
/// is sent again at once; any other failure to reach a master moves it
/// to the next address in its list. With [`MasterClient::leader_wait`],
/// a call is retried across the list for that long before it fails.
#[derive(Debug, Clone)]
pub struct MasterClient {
    route: Arc<Route>,
    security: Security,
    /// Open heartbeat streams not in use (a beat takes one, or opens one,
    /// and puts it back once answered; one dropped midway is closed). All
    /// go to the master followed now: they are closed when it changes.
    beats: Arc<Mutex<Vec<BeatStream>>>,
    /// How long a call is retried while no master leads or answers.
    leader_wait: Duration,
}

/// Which master the client follows, and a channel to each it knows.
#[derive(Debug)]
struct Route {
    /// The addresses it was given, in order.
    listed: Vec<String>,
    state: Mutex<Following>,
}

#[derive(Debug)]
struct Following {
    /// The address calls go to now.
    now: String,
    channels: HashMap<String, master_client::MasterClient<Channel>>,
}

/// How many times in a row a call follows a redirect at once.
const MAX_REDIRECTS: u32 = 3;
/// The pause between two rounds of a call retried while no master leads.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long one attempt of a retried call may take before the next
/// master is tried (a stopped leader holds its connections open).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for the master at `address`.
fn connect(address: &str, security: &Security) -> Result<master_client::MasterClient<Channel>> {
    let channel = security.channel(address, CONNECT_TIMEOUT)?;
    Ok(master_client::MasterClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// A call no master answered as the leader: the one answer, or each
/// address's.
fn no_leader(mut answers: Vec<(String, Error)>, waited: Duration) -> Error {
    if answers.len() == 1 {
        return answers
            .pop()
            .map_or_else(|| Error::Unavailable("no master".into()), |(_, e)| e);
    }
    let each: Vec<String> = answers.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    Error::Unavailable(format!(
        "no master answered as the leader within {waited:?} ({})",
        each.join("; ")
    ))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One `Heartbeats` stream: beats go out on `tx`, replies come back in
/// order on `rx`.
#[derive(Debug)]
struct BeatStream {
    /// The master's address.
    to: String,
    tx: mpsc::Sender<proto::HeartbeatRequest>,
    rx: tonic::Streaming<proto::HeartbeatReply>,
}

impl BeatStream {
    async fn beat(&mut self, req: proto::HeartbeatRequest) -> Result<proto::HeartbeatReply> {
        let closed = || Error::Unavailable("the master closed the heartbeat stream".into());
        self.tx.send(req).await.map_err(|_| closed())?;
        self.rx
            .message()
            .await
            .map_err(from_status)?
            .ok_or_else(closed)
    }
}

impl MasterClient {
    /// A client for the master at `address` (`host:port`), or for the
    /// leader among several (`a:1,b:2`); connects lazily.
    pub fn new(address: &str, security: Security) -> Result<MasterClient> {
        let listed: Vec<String> = address
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        let Some(first) = listed.first().cloned() else {
            return Err(Error::InvalidInput(
                cloudai_core::model::ValidationError::Invalid {
                    field: "master address",
                    reason: "names no address".into(),
                },
            ));
        };
        let mut channels = HashMap::new();
        for a in &listed {
            channels.insert(a.clone(), connect(a, &security)?);
        }
        Ok(MasterClient {
            route: Arc::new(Route {
                listed,
                state: Mutex::new(Following {
                    now: first,
                    channels,
                }),
            }),
            security,
            beats: Arc::default(),
            leader_wait: Duration::ZERO,
        })
    }

    /// The same client, retrying a call for up to `wait` while no master
    /// leads or answers (Nomad's `RPCHoldTimeout`): a takeover then shows
    /// as a slow answer rather than an error.
    #[must_use]
    pub fn leader_wait(mut self, wait: Duration) -> MasterClient {
        self.leader_wait = wait;
        self
    }

    /// The addresses it was given.
    pub fn listed(&self) -> &[String] {
        &self.route.listed
    }

    /// The address calls go to now.
    pub fn following(&self) -> String {
        lock(&self.route.state).now.clone()
    }

    /// Opens a heartbeat stream.
    async fn open_beats(&self) -> Result<BeatStream> {
        let (tx, rx) = mpsc::channel(1);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let (address, mut client) = self.c();
        let rx = client
            .heartbeats(self.req(outbound))
            .await
            .map_err(|s| self.failed(&address, s))?
            .into_inner();
        Ok(BeatStream {
            to: address,
            tx,
            rx,
        })
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        sign(&mut r, self.security.token.as_ref(), None);
        r
    }

    /// The address followed now, and its client.
    fn c(&self) -> (String, master_client::MasterClient<Channel>) {
        let state = lock(&self.route.state);
        let client = state.channels[&state.now].clone();
        (state.now.clone(), client)
    }

    /// Moves to `to`, unless a call already moved it off `from`.
    fn move_to(&self, from: &str, to: &str) {
        let mut state = lock(&self.route.state);
        if state.now != from || from == to {
            return;
        }
        if !state.channels.contains_key(to) {
            match connect(to, &self.security) {
                Ok(c) => {
                    state.channels.insert(to.to_string(), c);
                }
                Err(e) => {
                    debug!(address = %to, error = %e, "cannot follow the leader's address");
                    return;
                }
            }
        }
        debug!(from, to, "following another master");
        state.now = to.to_string();
        drop(state);
        lock(&self.beats).clear();
    }

    /// A call to `address` failed with `status`: its error, after moving
    /// to the leader it names, or, when that master could not be talked
    /// to or does not lead, to the next address listed.
    fn failed(&self, address: &str, status: tonic::Status) -> Error {
        self.routed(address, from_status(status))
    }

    /// [`MasterClient::failed`], for an error already converted.
    fn routed(&self, address: &str, e: Error) -> Error {
        match &e {
            Error::NotLeader {
                leader: Some(leader),
            } => self.move_to(address, leader),
            e if e.is_transient() => {
                let listed = &self.route.listed;
                let next = listed
                    .iter()
                    .position(|a| a == address)
                    .map_or(0, |i| (i + 1) % listed.len());
                self.move_to(address, &listed[next]);
            }
            _ => {}
        }
        e
    }

    /// Sends `msg` through `call` to the master followed now; follows a
    /// redirect to the leader at once, and retries a master that could
    /// not answer for up to [`MasterClient::leader_wait`], across the
    /// list. Every retry carries the same message (a submit's request id
    /// makes its retry return the first one's task).
    async fn call<M, R, F, Fut>(&self, msg: M, call: F) -> Result<R>
    where
        M: Clone,
        F: Fn(master_client::MasterClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        self.call_within(Some(ATTEMPT_TIMEOUT), msg, call).await
    }

    /// [`MasterClient::call`], each attempt given `bound` (`None`: a call
    /// that waits on a worker, as `cancel --wait` does, for as long as the
    /// master takes).
    async fn call_within<M, R, F, Fut>(&self, bound: Option<Duration>, msg: M, call: F) -> Result<R>
    where
        M: Clone,
        F: Fn(master_client::MasterClient<Channel>, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let until = tokio::time::Instant::now() + self.leader_wait;
        let several = self.route.listed.len() > 1;
        let mut redirects = 0;
        let mut answers: Vec<(String, Error)> = Vec::new();
        loop {
            let (address, client) = self.c();
            let attempt = call(client, self.req(msg.clone()));
            let answer = match bound.filter(|_| several && !self.leader_wait.is_zero()) {
                Some(bound) => tokio::time::timeout(bound, attempt)
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::unavailable(format!(
                            "no answer within {bound:?}"
                        )))
                    }),
                None => attempt.await,
            };
            let e = match answer {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => self.failed(&address, s),
            };
            // One master that is down fails at once, as without a list; a
            // follower, or one of several, is retried while a leader may
            // be taking over.
            let retried = several || matches!(e, Error::NotLeader { .. });
            if !e.is_transient() || !retried {
                return Err(e);
            }
            let redirected = matches!(&e, Error::NotLeader { leader: Some(l) } if *l != address);
            answers.retain(|(a, _)| *a != address);
            answers.push((address, e));
            if redirected && redirects < MAX_REDIRECTS {
                redirects += 1;
                continue;
            }
            redirects = 0;
            if tokio::time::Instant::now() + RETRY_PAUSE > until {
                return Err(no_leader(answers, self.leader_wait));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Submits a task.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskId> {
        self.submit_with(spec, SubmitOptions::default()).await
    }

    /// [`MasterClient::submit`], with options.
    pub async fn submit_with(&self, spec: TaskSpec, options: SubmitOptions) -> Result<TaskId> {
        let r = self
            .call(
                submit_request(spec, None, &options),
                |mut c, r| async move { c.submit(r).await },
            )
            .await?;
        convert::task_id(&r.task_id).map_err(bad_reply)
    }

    /// Submits one task per index of `indices` in one call; returns the
    /// array's id and how many tasks it holds.
    pub async fn submit_array(
        &self,
        spec: TaskSpec,
        indices: &ArrayIndices,
        options: SubmitOptions,
    ) -> Result<(ArrayId, usize)> {
        let r = self
            .call(
                submit_request(spec, Some(indices), &options),
                |mut c, r| async move { c.submit(r).await },
            )
            .await?;
        let id = r.array_id.ok_or_else(|| {
            bad_reply(tonic::Status::internal(
                "an array submit came back without its id",
            ))
        })?;
        Ok((convert::array_id(&id).map_err(bad_reply)?, r.count as usize))
    }

    /// Cancels a task. With `wait`, the answer waits for the worker's
    /// confirmation; without, it comes after a brief wait.
    pub async fn cancel(&self, id: &TaskId, force: bool, wait: bool) -> Result<CancelOutcome> {
        let req = proto::CancelRequest {
            task_id: id.to_string(),
            force,
            wait,
        };
        let bound = (!wait).then_some(ATTEMPT_TIMEOUT);
        let r = self
            .call_within(bound, req, |mut c, r| async move { c.cancel(r).await })
            .await?;
        Ok(convert::cancel_outcome(r).map_err(bad_reply)?.1)
    }

    /// Cancels every pending or running task passing `filter` (`wait` as
    /// for [`MasterClient::cancel`]).
    pub async fn cancel_many(
        &self,
        filter: &TaskFilter,
        force: bool,
        wait: bool,
    ) -> Result<Vec<(TaskId, CancelOutcome)>> {
        let req = proto::CancelManyRequest {
            statuses: filter
                .statuses
                .iter()
                .map(|s| convert::status_to_wire(*s))
                .collect(),
            worker: filter.worker.as_ref().map(ToString::to_string),
            force,
            wait,
            array: filter.array.as_ref().map(ToString::to_string),
            name: filter.name.clone(),
            labels: wire_labels(filter),
        };
        let bound = (!wait).then_some(ATTEMPT_TIMEOUT);
        let r = self
            .call_within(bound, req, |mut c, r| async move { c.cancel_many(r).await })
            .await?;
        r.cancelled
            .into_iter()
            .map(|o| convert::cancel_outcome(o).map_err(bad_reply))
            .collect()
    }

    /// Every task passing `filter`, newest first, read page by page (a
    /// list of any size).
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = self.page(filter, after.as_ref(), 0).await?;
            all.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// One page of tasks passing `filter`, newest first, after `after`:
    /// at most `limit` (0: the largest page the master gives). Returns the
    /// key of the next page, if there is one.
    pub async fn page(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: u32,
    ) -> Result<(Vec<TaskRecord>, Option<PageKey>)> {
        let req = list_request(filter, after, limit);
        let r = self
            .call(req, |mut c, r| async move { c.list_tasks(r).await })
            .await?;
        let tasks = r
            .tasks
            .into_iter()
            .map(|t| convert::task(t).map_err(bad_reply))
            .collect::<Result<_>>()?;
        let next = r
            .next
            .as_deref()
            .map(convert::page_key)
            .transpose()
            .map_err(bad_reply)?;
        Ok((tasks, next))
    }

    /// How many tasks are in each status.
    pub async fn task_counts(&self) -> Result<StatusCounts> {
        let r = self
            .call(
                proto::Empty {},
                |mut c, r| async move { c.count_tasks(r).await },
            )
            .await?;
        Ok(r.into())
    }

    /// How many tasks passing `filter` are in each status.
    pub async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts> {
        let req = list_request(filter, None, 0);
        let r = self
            .call(req, |mut c, r| async move { c.count_matching(r).await })
            .await?;
        Ok(r.into())
    }

    /// One task with its result.
    pub async fn task(&self, id: &TaskId) -> Result<TaskView> {
        let r = self
            .call(
                proto::TaskRef {
                    task_id: id.to_string(),
                },
                |mut c, r| async move { c.get_task(r).await },
            )
            .await?;
        convert::task_view(r).map_err(bad_reply)
    }

    /// Every worker as the master sees it.
    pub async fn workers(&self) -> Result<Vec<WorkerView>> {
        let r = self
            .call(proto::Empty {}, |mut c, r| async move {
                c.list_workers(r).await
            })
            .await?;
        r.workers
            .into_iter()
            .map(|w| WorkerView::try_from(w).map_err(bad_reply))
            .collect()
    }

    /// Pre-registers a worker by address.
    pub async fn pre_register(&self, id: &WorkerId, address: &str) -> Result<()> {
        let req = proto::PreRegisterRequest {
            worker_id: id.to_string(),
            address: address.to_string(),
        };
        self.call(req, |mut c, r| async move { c.pre_register(r).await })
            .await?;
        Ok(())
    }

    /// Drains a worker: nothing new is placed on it; with a deadline, tasks
    /// still running on it then are stopped and failed as drained.
    pub async fn drain(&self, id: &WorkerId, deadline: Option<Duration>) -> Result<()> {
        let req = proto::DrainRequest {
            worker_id: id.to_string(),
            deadline_ms: deadline.map(ms),
        };
        self.call(req, |mut c, r| async move { c.drain(r).await })
            .await?;
        Ok(())
    }

    /// Sets a pending task's priority; returns the task as it is now.
    pub async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<TaskRecord> {
        let req = proto::SetPriorityRequest {
            task_id: id.to_string(),
            priority,
        };
        let t = self
            .call(req, |mut c, r| async move { c.set_priority(r).await })
            .await?;
        convert::task(t).map_err(bad_reply)
    }

    /// Ends a worker's drain.
    pub async fn undrain(&self, id: &WorkerId) -> Result<()> {
        let req = proto::WorkerRef {
            worker_id: id.to_string(),
        };
        self.call(req, |mut c, r| async move { c.undrain(r).await })
            .await?;
        Ok(())
    }

    /// Reconciles allocations; returns the corrections.
    pub async fn reconcile(&self) -> Result<Reconciliation> {
        let r = self
            .call(
                proto::Empty {},
                |mut c, r| async move { c.reconcile(r).await },
            )
            .await?;
        Reconciliation::try_from(r).map_err(bad_reply)
    }

    /// Makes every reconnection attempt due now.
    pub async fn reconnect(&self) -> Result<()> {
        self.call(
            proto::Empty {},
            |mut c, r| async move { c.reconnect(r).await },
        )
        .await?;
        Ok(())
    }

    /// Task `id`'s output from `from`; following, until the task ended
    /// and all of it arrived (see [`cloudai_core::master::Master::follow_output`]).
    pub async fn follow_output(
        &self,
        id: &TaskId,
        from: OutputFrom,
        follow: bool,
    ) -> Result<TaskFollow> {
        let req = proto::TaskOutputRequest {
            task_id: id.to_string(),
            from: Some(output::from_to_proto(from, follow)),
        };
        let r = self
            .call(req, |mut c, r| async move { c.follow_output(r).await })
            .await;
        Ok(output::channel(r?))
    }

    /// The master's events after `cursor` (`None`: from now), a bookmark
    /// first. A cursor the master cannot resume without a gap is refused
    /// with [`Error::Conflict`], saying to list again and watch from now.
    pub async fn watch_events(
        &self,
        cursor: Option<&Cursor>,
    ) -> Result<mpsc::Receiver<Result<Watched>>> {
        let req = proto::WatchEventsRequest {
            cursor: cursor.map(ToString::to_string).unwrap_or_default(),
        };
        let r = self
            .call(req, |mut c, r| async move { c.watch_events(r).await })
            .await;
        Ok(events::receive(r?))
    }
}

#[async_trait]
impl WorkerToMaster for MasterClient {
    async fn register(&self, registration: &Registration) -> Result<RegistrationReply> {
        let req = proto::RegisterRequest {
            worker_id: registration.worker.to_string(),
            instance: registration.instance.to_string(),
            address: registration.address.clone(),
            capacity: Some(registration.capacity.into()),
            gpus: registration.gpus.iter().cloned().map(Into::into).collect(),
            allow_mounts: registration.allow_mounts.clone(),
            labels: registration
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            running: registration
                .running
                .iter()
                .cloned()
                .map(Into::into)
                .collect(),
        };
        let r = self
            .call(req, |mut c, r| async move { c.register(r).await })
            .await?;
        Ok(RegistrationReply {
            stop: r
                .stop
                .into_iter()
                .map(|x| convert::run(Some(x)).map_err(bad_reply))
                .collect::<Result<_>>()?,
            heartbeat_interval: Duration::from_millis(r.heartbeat_interval_ms),
            master_id: r.master_id,
            term: Term::new(r.term),
            lost_after: Duration::from_millis(r.lost_after_ms),
        })
    }

    async fn heartbeat(
        &self,
        worker: &WorkerIdentity,
        telemetry: &Telemetry,
    ) -> Result<HeartbeatReply> {
        let req = proto::HeartbeatRequest {
            worker_id: worker.id.to_string(),
            instance: worker.instance.to_string(),
            telemetry: Some(telemetry.clone().into()),
        };
        // An idle stream may have died with its connection (the master
        // restarted): then the beat goes once more, on a new stream.
        let idle = lock(&self.beats).pop();
        let answered = match idle {
            Some(mut s) => s.beat(req.clone()).await.ok().map(|reply| (s, reply)),
            None => None,
        };
        let (stream, reply) = match answered {
            Some(done) => done,
            None => {
                let mut s = self.open_beats().await?;
                let reply = s.beat(req).await.map_err(|e| self.routed(&s.to, e))?;
                (s, reply)
            }
        };
        lock(&self.beats).push(stream);
        Ok(HeartbeatReply {
            register_again: reply.register_again,
        })
    }

    async fn report(&self, result: &TaskResult) -> Result<()> {
        self.call(result.clone().into(), |mut c, r| async move {
            c.report(r).await
        })
        .await?;
        Ok(())
    }

    async fn leave(&self, worker: &WorkerIdentity) -> Result<()> {
        let req = proto::LeaveRequest {
            worker_id: worker.id.to_string(),
            instance: worker.instance.to_string(),
        };
        self.call(req, |mut c, r| async move { c.leave(r).await })
            .await?;
        Ok(())
    }

    fn follow(&self, address: &str) {
        let now = self.following();
        self.move_to(&now, address);
    }
}

/// The master's connections to its workers, one lazily connected channel
/// per address, every call signed with the token and the master's id and
/// term.
#[derive(Debug)]
pub struct WorkerClients {
    security: Security,
    master_id: String,
    term: Term,
    /// Shared with the handles of other terms.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl WorkerClients {
    /// Clients for a master called `master_id` (its calls carry term 0
    /// until [`MasterToWorker::fenced`] gives a handle of another term).
    pub fn new(master_id: impl Into<String>, security: Security) -> Self {
        WorkerClients {
            security,
            master_id: master_id.into(),
            term: Term::ZERO,
            channels: Arc::default(),
        }
    }

    fn client(&self, to: &WorkerEndpoint) -> Result<worker_client::WorkerClient<Channel>> {
        let mut channels = lock(&self.channels);
        let channel = match channels.get(&to.address) {
            Some(c) => c.clone(),
            None => {
                let c = self.security.channel(&to.address, CONNECT_TIMEOUT)?;
                channels.insert(to.address.clone(), c.clone());
                c
            }
        };
        Ok(worker_client::WorkerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// A request signed by this master and naming the worker it is for.
    fn req<T>(&self, to: &WorkerEndpoint, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        self.sign(&mut r);
        address_to(&mut r, &to.id, to.instance.as_ref());
        r
    }

    fn sign<T>(&self, r: &mut Request<T>) {
        sign(
            r,
            self.security.token.as_ref(),
            Some((&self.master_id, self.term)),
        );
    }
}

#[async_trait]
impl MasterToWorker for WorkerClients {
    async fn master_register(&self, to: &WorkerEndpoint, master: &MasterInfo) -> Result<()> {
        let req = proto::MasterRegisterRequest {
            master_id: master.id.clone(),
            address: master.address.clone(),
            term: master.term.get(),
        };
        self.client(to)?
            .master_register(self.req(to, req))
            .await
            .map_err(from_status)?;
        Ok(())
    }

    async fn assign(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        spec: &TaskSpec,
        gpus: &[u32],
    ) -> Result<()> {
        let req = proto::AssignRequest {
            run: Some(run.clone().into()),
            spec: Some(for_worker(spec).into()),
            gpus: gpus.to_vec(),
        };
        self.client(to)?
            .assign(self.req(to, req))
            .await
            .map_err(from_status)?;
        Ok(())
    }

    async fn cancel(&self, to: &WorkerEndpoint, run: &RunningTask, grace: Duration) -> Result<()> {
        let req = proto::StopRequest {
            run: Some(run.clone().into()),
            grace_ms: ms(grace),
        };
        self.client(to)?
            .cancel(self.req(to, req))
            .await
            .map_err(from_status)?;
        Ok(())
    }

    async fn follow_output(
        &self,
        to: &WorkerEndpoint,
        run: &RunningTask,
        from: OutputFrom,
        keep_following: bool,
    ) -> Result<Follow> {
        let req = proto::RunOutputRequest {
            run: Some(run.clone().into()),
            from: Some(output::from_to_proto(from, keep_following)),
        };
        let r = self
            .client(to)?
            .follow_output(self.req(to, req))
            .await
            .map_err(from_status)?;
        Ok(output::channel(r.into_inner()))
    }

    async fn identify(&self, to: &WorkerEndpoint) -> Result<WorkerIdentity> {
        let mut req = Request::new(proto::Empty {});
        self.sign(&mut req);
        let r = self
            .client(to)?
            .identify(req)
            .await
            .map_err(from_status)?
            .into_inner();
        convert::identity(&r.worker_id, &r.instance).map_err(bad_reply)
    }

    fn fenced(&self, term: Term) -> Arc<dyn MasterToWorker> {
        Arc::new(WorkerClients {
            security: self.security.clone(),
            master_id: self.master_id.clone(),
            term,
            channels: self.channels.clone(),
        })
    }
}

/// A submit as the wire carries it: the array's throttle follows its
/// indices after a `%`.
fn submit_request(
    spec: TaskSpec,
    indices: Option<&ArrayIndices>,
    options: &SubmitOptions,
) -> proto::SubmitRequest {
    proto::SubmitRequest {
        spec: Some(spec.into()),
        array: indices.map(|i| match options.array_limit {
            Some(n) => format!("{i}%{n}"),
            None => i.to_string(),
        }),
        wait_for_capacity: options.wait_for_capacity,
        request_id: options.request.as_ref().map(ToString::to_string),
        after: options
            .after
            .iter()
            .map(|p| proto::ParentRef {
                id: p.id.clone(),
                condition: p.condition.as_str().into(),
            })
            .collect(),
        after_corr: options.after_corr.as_ref().map(ToString::to_string),
    }
}

/// A filter's labels as the wire carries them: `k=v`.
fn wire_labels(filter: &TaskFilter) -> Vec<String> {
    filter
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

/// A spec as a worker gets it: without the dependencies, which only the
/// master uses (an `after-ok` on a large array names every member).
fn for_worker(spec: &TaskSpec) -> TaskSpec {
    TaskSpec {
        after: Vec::new(),
        ..spec.clone()
    }
}

/// A list (or count) request for `filter`.
fn list_request(
    filter: &TaskFilter,
    after: Option<&PageKey>,
    limit: u32,
) -> proto::ListTasksRequest {
    proto::ListTasksRequest {
        statuses: filter
            .statuses
            .iter()
            .map(|s| convert::status_to_wire(*s))
            .collect(),
        worker: filter.worker.as_ref().map(ToString::to_string),
        array: filter.array.as_ref().map(ToString::to_string),
        limit,
        after: after.map(ToString::to_string),
        name: filter.name.clone(),
        labels: wire_labels(filter),
    }
}
