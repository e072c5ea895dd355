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
    ArrayId, ArrayIndices, StatusCounts, TaskId, TaskRecord, TaskResult, TaskSpec, Telemetry,
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

/// A connection to a master.
#[derive(Debug, Clone)]
pub struct MasterClient {
    client: master_client::MasterClient<Channel>,
    security: Security,
    /// Open heartbeat streams not in use (a beat takes one, or opens one,
    /// and puts it back once answered; one dropped midway is closed).
    beats: Arc<Mutex<Vec<BeatStream>>>,
}

/// One `Heartbeats` stream: beats go out on `tx`, replies come back in
/// order on `rx`.
#[derive(Debug)]
struct BeatStream {
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
    /// A client for the master at `address` (`host:port`); connects lazily.
    pub fn new(address: &str, security: Security) -> Result<MasterClient> {
        let channel = security.channel(address, CONNECT_TIMEOUT)?;
        let client = master_client::MasterClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(MasterClient {
            client,
            security,
            beats: Arc::default(),
        })
    }

    /// Opens a heartbeat stream.
    async fn open_beats(&self) -> Result<BeatStream> {
        let (tx, rx) = mpsc::channel(1);
        let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
        let rx = self
            .c()
            .heartbeats(self.req(outbound))
            .await
            .map_err(from_status)?
            .into_inner();
        Ok(BeatStream { tx, rx })
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        sign(&mut r, self.security.token.as_ref(), None);
        r
    }

    fn c(&self) -> master_client::MasterClient<Channel> {
        self.client.clone()
    }

    /// Submits a task.
    pub async fn submit(&self, spec: TaskSpec) -> Result<TaskId> {
        self.submit_with(spec, SubmitOptions::default()).await
    }

    /// [`MasterClient::submit`], with options.
    pub async fn submit_with(&self, spec: TaskSpec, options: SubmitOptions) -> Result<TaskId> {
        let r = self
            .c()
            .submit(self.req(proto::SubmitRequest {
                spec: Some(spec.into()),
                array: None,
                wait_for_capacity: options.wait_for_capacity,
            }))
            .await
            .map_err(from_status)?;
        convert::task_id(&r.into_inner().task_id).map_err(bad_reply)
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
            .c()
            .submit(self.req(proto::SubmitRequest {
                spec: Some(spec.into()),
                array: Some(indices.to_string()),
                wait_for_capacity: options.wait_for_capacity,
            }))
            .await
            .map_err(from_status)?
            .into_inner();
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
        let r = self.c().cancel(self.req(req)).await.map_err(from_status)?;
        Ok(convert::cancel_outcome(r.into_inner())
            .map_err(bad_reply)?
            .1)
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
        };
        let r = self
            .c()
            .cancel_many(self.req(req))
            .await
            .map_err(from_status)?;
        r.into_inner()
            .cancelled
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
        let req = proto::ListTasksRequest {
            statuses: filter
                .statuses
                .iter()
                .map(|s| convert::status_to_wire(*s))
                .collect(),
            worker: filter.worker.as_ref().map(ToString::to_string),
            array: filter.array.as_ref().map(ToString::to_string),
            limit,
            after: after.map(ToString::to_string),
        };
        let r = self
            .c()
            .list_tasks(self.req(req))
            .await
            .map_err(from_status)?
            .into_inner();
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
            .c()
            .count_tasks(self.req(proto::Empty {}))
            .await
            .map_err(from_status)?;
        Ok(r.into_inner().into())
    }

    /// One task with its result.
    pub async fn task(&self, id: &TaskId) -> Result<TaskView> {
        let r = self
            .c()
            .get_task(self.req(proto::TaskRef {
                task_id: id.to_string(),
            }))
            .await
            .map_err(from_status)?;
        convert::task_view(r.into_inner()).map_err(bad_reply)
    }

    /// Every worker as the master sees it.
    pub async fn workers(&self) -> Result<Vec<WorkerView>> {
        let r = self
            .c()
            .list_workers(self.req(proto::Empty {}))
            .await
            .map_err(from_status)?;
        r.into_inner()
            .workers
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
        self.c()
            .pre_register(self.req(req))
            .await
            .map_err(from_status)?;
        Ok(())
    }

    /// Drains a worker: nothing new is placed on it; with a deadline, tasks
    /// still running on it then are stopped and failed as drained.
    pub async fn drain(&self, id: &WorkerId, deadline: Option<Duration>) -> Result<()> {
        let req = proto::DrainRequest {
            worker_id: id.to_string(),
            deadline_ms: deadline.map(ms),
        };
        self.c().drain(self.req(req)).await.map_err(from_status)?;
        Ok(())
    }

    /// Ends a worker's drain.
    pub async fn undrain(&self, id: &WorkerId) -> Result<()> {
        let req = proto::WorkerRef {
            worker_id: id.to_string(),
        };
        self.c().undrain(self.req(req)).await.map_err(from_status)?;
        Ok(())
    }

    /// Reconciles allocations; returns the corrections.
    pub async fn reconcile(&self) -> Result<Reconciliation> {
        let r = self
            .c()
            .reconcile(self.req(proto::Empty {}))
            .await
            .map_err(from_status)?;
        Reconciliation::try_from(r.into_inner()).map_err(bad_reply)
    }

    /// Makes every reconnection attempt due now.
    pub async fn reconnect(&self) -> Result<()> {
        self.c()
            .reconnect(self.req(proto::Empty {}))
            .await
            .map_err(from_status)?;
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
        let r = self.c().follow_output(self.req(req)).await;
        Ok(output::channel(r.map_err(from_status)?.into_inner()))
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
        let r = self.c().watch_events(self.req(req)).await;
        Ok(events::receive(r.map_err(from_status)?.into_inner()))
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
            running: registration
                .running
                .iter()
                .cloned()
                .map(Into::into)
                .collect(),
        };
        let r = self
            .c()
            .register(self.req(req))
            .await
            .map_err(from_status)?
            .into_inner();
        Ok(RegistrationReply {
            stop: r
                .stop
                .into_iter()
                .map(|x| convert::run(Some(x)).map_err(bad_reply))
                .collect::<Result<_>>()?,
            heartbeat_interval: Duration::from_millis(r.heartbeat_interval_ms),
            master_id: r.master_id,
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
        let idle = self.beats.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let answered = match idle {
            Some(mut s) => s.beat(req.clone()).await.ok().map(|reply| (s, reply)),
            None => None,
        };
        let (stream, reply) = match answered {
            Some(done) => done,
            None => {
                let mut s = self.open_beats().await?;
                let reply = s.beat(req).await?;
                (s, reply)
            }
        };
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
        Ok(HeartbeatReply {
            register_again: reply.register_again,
        })
    }

    async fn report(&self, result: &TaskResult) -> Result<()> {
        self.c()
            .report(self.req(result.clone().into()))
            .await
            .map_err(from_status)?;
        Ok(())
    }

    async fn leave(&self, worker: &WorkerIdentity) -> Result<()> {
        let req = proto::LeaveRequest {
            worker_id: worker.id.to_string(),
            instance: worker.instance.to_string(),
        };
        self.c().leave(self.req(req)).await.map_err(from_status)?;
        Ok(())
    }
}

/// The master's connections to its workers, one lazily connected channel
/// per address, every call signed with the token and the master's id.
#[derive(Debug)]
pub struct WorkerClients {
    security: Security,
    master_id: String,
    channels: Mutex<HashMap<String, Channel>>,
}

impl WorkerClients {
    /// Clients for a master called `master_id`.
    pub fn new(master_id: impl Into<String>, security: Security) -> Self {
        WorkerClients {
            security,
            master_id: master_id.into(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, to: &WorkerEndpoint) -> Result<worker_client::WorkerClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
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
        sign(&mut r, self.security.token.as_ref(), Some(&self.master_id));
        address_to(&mut r, &to.id, to.instance.as_ref());
        r
    }
}

#[async_trait]
impl MasterToWorker for WorkerClients {
    async fn master_register(&self, to: &WorkerEndpoint, master: &MasterInfo) -> Result<()> {
        let req = proto::MasterRegisterRequest {
            master_id: master.id.clone(),
            address: master.address.clone(),
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
            spec: Some(spec.clone().into()),
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
        sign(
            &mut req,
            self.security.token.as_ref(),
            Some(&self.master_id),
        );
        let r = self
            .client(to)?
            .identify(req)
            .await
            .map_err(from_status)?
            .into_inner();
        convert::identity(&r.worker_id, &r.instance).map_err(bad_reply)
    }
}
