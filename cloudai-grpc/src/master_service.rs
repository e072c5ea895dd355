//! The master's gRPC service: a thin shell over the [`Master`] acting
//! now. A follower answers every call `UNAVAILABLE`, naming the leader's
//! address in `x-cloudai-leader` when it knows it: it holds no liveness,
//! queue, event log or worker endpoints, so it forwards nothing.

use std::pin::Pin;
use std::time::Duration;

use cloudai_core::master::{Cursor, Master, ParentRef, Serving, SubmitOptions, MAX_PAGE};
use cloudai_core::model::{parse_label, ArraySpec, RequestId, ValidationError};
use cloudai_core::store::{PageKey, TaskFilter};
use cloudai_core::transport::Registration;
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{self, detached, to_status};
use crate::events::{self, EventReplies};
use crate::output::{self, OutputReplies};
use crate::proto::{self, master_server};

/// Serves [`Master`] over gRPC.
#[derive(Debug, Clone)]
pub struct MasterService {
    serving: Serving,
}

impl MasterService {
    /// Wraps a master, or a leadership's acting master.
    pub fn new(serving: impl Into<Serving>) -> Self {
        MasterService {
            serving: serving.into(),
        }
    }

    /// The master acting now; a follower's answer otherwise.
    fn master(&self) -> Result<Master, Status> {
        self.serving.master().map_err(to_status)
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// A task filter from the wire's fields.
struct Wanted<'a> {
    statuses: &'a [i32],
    worker: Option<&'a str>,
    array: Option<&'a str>,
    name: Option<&'a str>,
    labels: &'a [String],
}

fn filter(w: Wanted<'_>) -> Result<TaskFilter, Status> {
    Ok(TaskFilter {
        statuses: w
            .statuses
            .iter()
            .map(|s| convert::status(*s))
            .collect::<Result<_, _>>()?,
        worker: w.worker.map(convert::worker_id).transpose()?,
        array: w.array.map(convert::array_id).transpose()?,
        name: w.name.map(str::to_owned),
        labels: w
            .labels
            .iter()
            .map(|l| parse_label(l).map_err(|e| to_status(e.into())))
            .collect::<Result<_, _>>()?,
    })
}

/// A page stops before its tasks reach this many bytes on the wire, well
/// under the message limit, however large each task is.
const PAGE_BYTES: usize = 8 << 20;

#[tonic::async_trait]
impl master_server::Master for MasterService {
    async fn register(&self, req: Request<proto::RegisterRequest>) -> Reply<proto::RegisterReply> {
        let m = self.master()?;
        let r = req.into_inner();
        let registration = Registration {
            worker: convert::worker_id(&r.worker_id)?,
            instance: convert::instance(&r.instance)?,
            address: r.address,
            capacity: convert::resources(r.capacity, "capacity")?,
            gpus: r.gpus.into_iter().map(Into::into).collect(),
            allow_mounts: r.allow_mounts,
            labels: r.labels.into_iter().collect(),
            running: r
                .running
                .into_iter()
                .map(|x| convert::run(Some(x)))
                .collect::<Result<_, _>>()?,
        };
        let reply = detached(async move { m.register(registration).await }).await?;
        Ok(Response::new(proto::RegisterReply {
            stop: reply.stop.into_iter().map(Into::into).collect(),
            heartbeat_interval_ms: u64::try_from(reply.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            master_id: reply.master_id,
            term: reply.term.get(),
            lost_after_ms: u64::try_from(reply.lost_after.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    type HeartbeatsStream =
        Pin<Box<dyn Stream<Item = Result<proto::HeartbeatReply, Status>> + Send>>;

    /// Answers each beat in order. A beat only takes the state lock (its
    /// store write is batched), so it is handled inline. Each goes to the
    /// master acting when it arrives: a stream outlives a term, and a
    /// deposed master must not keep a worker in session.
    async fn heartbeats(
        &self,
        req: Request<Streaming<proto::HeartbeatRequest>>,
    ) -> Reply<Self::HeartbeatsStream> {
        self.master()?;
        let serving = self.serving.clone();
        let replies = req.into_inner().then(move |beat| {
            let serving = serving.clone();
            async move {
                let m = serving.master().map_err(to_status)?;
                let r = beat?;
                let worker = convert::identity(&r.worker_id, &r.instance)?;
                let reply = m
                    .heartbeat(&worker, convert::telemetry(r.telemetry)?)
                    .await
                    .map_err(to_status)?;
                Ok(proto::HeartbeatReply {
                    register_again: reply.register_again,
                })
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn report(&self, req: Request<proto::TaskResult>) -> Reply<proto::Empty> {
        let m = self.master()?;
        let result = convert::result(req.into_inner())?;
        detached(async move { m.report(result).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn leave(&self, req: Request<proto::LeaveRequest>) -> Reply<proto::Empty> {
        let m = self.master()?;
        let r = req.into_inner();
        let worker = convert::identity(&r.worker_id, &r.instance)?;
        m.leave(&worker).map_err(to_status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn drain(&self, req: Request<proto::DrainRequest>) -> Reply<proto::Empty> {
        let m = self.master()?;
        let r = req.into_inner();
        let worker = convert::worker_id(&r.worker_id)?;
        let deadline = r.deadline_ms.map(Duration::from_millis);
        detached(async move { m.drain(&worker, deadline).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn set_priority(&self, req: Request<proto::SetPriorityRequest>) -> Reply<proto::Task> {
        let m = self.master()?;
        let r = req.into_inner();
        let id = convert::task_id(&r.task_id)?;
        let task = detached(async move { m.set_priority(&id, r.priority).await }).await?;
        Ok(Response::new(task.into()))
    }

    async fn undrain(&self, req: Request<proto::WorkerRef>) -> Reply<proto::Empty> {
        let m = self.master()?;
        let worker = convert::worker_id(&req.into_inner().worker_id)?;
        detached(async move { m.undrain(&worker).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn submit(&self, req: Request<proto::SubmitRequest>) -> Reply<proto::SubmitReply> {
        let m = self.master()?;
        let r = req.into_inner();
        let spec = convert::spec(r.spec)?;
        let request = r
            .request_id
            .as_deref()
            .map(RequestId::new)
            .transpose()
            .map_err(|e| Status::invalid_argument(format!("request id: {e}")))?;
        let after = r
            .after
            .iter()
            .map(|p| {
                Ok(ParentRef {
                    condition: convert::condition(&p.condition)?,
                    id: p.id.clone(),
                })
            })
            .collect::<Result<_, Status>>()?;
        let after_corr = r.after_corr.as_deref().map(convert::array_id).transpose()?;
        let array: Option<ArraySpec> = r
            .array
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e: ValidationError| to_status(e.into()))?;
        let options = SubmitOptions {
            wait_for_capacity: r.wait_for_capacity,
            request,
            after,
            after_corr,
            array_limit: array.as_ref().and_then(|a| a.limit),
        };
        let Some(array) = array else {
            let id = detached(async move { m.submit_with(spec, options).await }).await?;
            return Ok(Response::new(proto::SubmitReply {
                task_id: id.into(),
                array_id: None,
                count: 1,
            }));
        };
        let (array, ids) =
            detached(async move { m.submit_array_with(spec, &array.indices, options).await })
                .await?;
        Ok(Response::new(proto::SubmitReply {
            task_id: ids.first().map(ToString::to_string).unwrap_or_default(),
            array_id: Some(array.into()),
            count: u32::try_from(ids.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn cancel(&self, req: Request<proto::CancelRequest>) -> Reply<proto::CancelOutcome> {
        let m = self.master()?;
        let r = req.into_inner();
        let id = convert::task_id(&r.task_id)?;
        let t = id.clone();
        let outcome = detached(async move {
            if r.wait {
                m.cancel_and_wait(&t, r.force).await
            } else {
                m.cancel(&t, r.force).await
            }
        })
        .await?;
        Ok(Response::new((id, outcome).into()))
    }

    async fn cancel_many(
        &self,
        req: Request<proto::CancelManyRequest>,
    ) -> Reply<proto::CancelManyReply> {
        let m = self.master()?;
        let r = req.into_inner();
        let f = filter(Wanted {
            statuses: &r.statuses,
            worker: r.worker.as_deref(),
            array: r.array.as_deref(),
            name: r.name.as_deref(),
            labels: &r.labels,
        })?;
        let done = detached(async move {
            if r.wait {
                m.cancel_all_and_wait(&f, r.force).await
            } else {
                m.cancel_all(&f, r.force).await
            }
        })
        .await?;
        Ok(Response::new(proto::CancelManyReply {
            cancelled: done.into_iter().map(Into::into).collect(),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<proto::ListTasksRequest>,
    ) -> Reply<proto::ListTasksReply> {
        let m = self.master()?;
        let r = req.into_inner();
        let f = filter(Wanted {
            statuses: &r.statuses,
            worker: r.worker.as_deref(),
            array: r.array.as_deref(),
            name: r.name.as_deref(),
            labels: &r.labels,
        })?;
        let after = r.after.as_deref().map(convert::page_key).transpose()?;
        let limit = if r.limit == 0 {
            MAX_PAGE
        } else {
            r.limit as usize
        };
        let master = m;
        let (tasks, mut next) = master
            .page(&f, after.as_ref(), limit)
            .await
            .map_err(to_status)?;
        let mut out = Vec::with_capacity(tasks.len());
        let mut bytes = 0;
        let mut last: Option<PageKey> = None;
        let waiting = master.waiting_each(&tasks);
        for (mut t, waiting) in tasks.into_iter().zip(waiting) {
            let key = PageKey::after(&t);
            // A waiting task's reason is why it waits now.
            if waiting.is_some() {
                t.reason = waiting;
            }
            let wire = proto::Task::from(t);
            bytes += wire.encoded_len();
            if bytes > PAGE_BYTES && !out.is_empty() {
                // The rest comes on the next page, after the last one sent.
                next = last;
                break;
            }
            out.push(wire);
            last = Some(key);
        }
        Ok(Response::new(proto::ListTasksReply {
            tasks: out,
            next: next.map(|k| k.to_string()),
        }))
    }

    async fn count_tasks(&self, _req: Request<proto::Empty>) -> Reply<proto::TaskCounts> {
        let m = self.master()?;
        let counts = m.task_counts().await.map_err(to_status)?;
        Ok(Response::new(counts.into()))
    }

    async fn count_matching(
        &self,
        req: Request<proto::ListTasksRequest>,
    ) -> Reply<proto::TaskCounts> {
        let m = self.master()?;
        let r = req.into_inner();
        let f = filter(Wanted {
            statuses: &r.statuses,
            worker: r.worker.as_deref(),
            array: r.array.as_deref(),
            name: r.name.as_deref(),
            labels: &r.labels,
        })?;
        let counts = m.count_matching(&f).await.map_err(to_status)?;
        Ok(Response::new(counts.into()))
    }

    async fn get_task(&self, req: Request<proto::TaskRef>) -> Reply<proto::TaskView> {
        let m = self.master()?;
        let id = convert::task_id(&req.into_inner().task_id)?;
        Ok(Response::new(m.task(&id).await.map_err(to_status)?.into()))
    }

    async fn list_workers(&self, _req: Request<proto::Empty>) -> Reply<proto::ListWorkersReply> {
        let m = self.master()?;
        let workers = m.workers().into_iter().map(Into::into).collect();
        Ok(Response::new(proto::ListWorkersReply { workers }))
    }

    async fn pre_register(&self, req: Request<proto::PreRegisterRequest>) -> Reply<proto::Empty> {
        let m = self.master()?;
        let r = req.into_inner();
        let id = convert::worker_id(&r.worker_id)?;
        detached(async move { m.pre_register(id, r.address).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn reconcile(&self, _req: Request<proto::Empty>) -> Reply<proto::ReconcileReply> {
        let m = self.master()?;
        let r = detached(async move { m.reconcile().await }).await?;
        Ok(Response::new(r.into()))
    }

    async fn reconnect(&self, _req: Request<proto::Empty>) -> Reply<proto::Empty> {
        let m = self.master()?;
        m.reconnect_now();
        Ok(Response::new(proto::Empty {}))
    }

    type FollowOutputStream = OutputReplies<proto::TaskOutputChunk>;

    async fn follow_output(
        &self,
        req: Request<proto::TaskOutputRequest>,
    ) -> Reply<Self::FollowOutputStream> {
        let m = self.master()?;
        let r = req.into_inner();
        let id = convert::task_id(&r.task_id)?;
        let (from, follow) = output::from_from_proto(r.from);
        let master = m;
        let rx = detached(async move { master.follow_output(&id, from, follow).await }).await?;
        Ok(Response::new(output::replies(rx)))
    }

    type WatchEventsStream = EventReplies;

    async fn watch_events(
        &self,
        req: Request<proto::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        let m = self.master()?;
        let cursor = req.into_inner().cursor;
        let from = if cursor.is_empty() {
            None
        } else {
            Some(
                cursor
                    .parse::<Cursor>()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        };
        let master = m;
        let watch = master
            .watch_events(from.as_ref())
            .map_err(|why| Status::failed_precondition(why.to_string()))?;
        Ok(Response::new(events::serve(watch, master.now())))
    }
}
