//! The master's gRPC service: a thin shell over [`Master`].

use std::pin::Pin;
use std::time::Duration;

use cloudai_core::master::{Cursor, Master, SubmitOptions, MAX_PAGE};
use cloudai_core::model::{ArrayIndices, ValidationError};
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
    master: Master,
}

impl MasterService {
    /// Wraps a master.
    pub fn new(master: Master) -> Self {
        MasterService { master }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn filter(
    statuses: &[i32],
    worker: Option<&str>,
    array: Option<&str>,
) -> Result<TaskFilter, Status> {
    Ok(TaskFilter {
        statuses: statuses
            .iter()
            .map(|s| convert::status(*s))
            .collect::<Result<_, _>>()?,
        worker: worker.map(convert::worker_id).transpose()?,
        array: array.map(convert::array_id).transpose()?,
    })
}

/// A page stops before its tasks reach this many bytes on the wire, well
/// under the message limit, however large each task is.
const PAGE_BYTES: usize = 8 << 20;

#[tonic::async_trait]
impl master_server::Master for MasterService {
    async fn register(&self, req: Request<proto::RegisterRequest>) -> Reply<proto::RegisterReply> {
        let r = req.into_inner();
        let registration = Registration {
            worker: convert::worker_id(&r.worker_id)?,
            instance: convert::instance(&r.instance)?,
            address: r.address,
            capacity: convert::resources(r.capacity, "capacity")?,
            gpus: r.gpus.into_iter().map(Into::into).collect(),
            allow_mounts: r.allow_mounts,
            running: r
                .running
                .into_iter()
                .map(|x| convert::run(Some(x)))
                .collect::<Result<_, _>>()?,
        };
        let m = self.master.clone();
        let reply = detached(async move { m.register(registration).await }).await?;
        Ok(Response::new(proto::RegisterReply {
            stop: reply.stop.into_iter().map(Into::into).collect(),
            heartbeat_interval_ms: u64::try_from(reply.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            master_id: reply.master_id,
            lost_after_ms: u64::try_from(reply.lost_after.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    type HeartbeatsStream =
        Pin<Box<dyn Stream<Item = Result<proto::HeartbeatReply, Status>> + Send>>;

    /// Answers each beat in order. A beat only takes the state lock (its
    /// store write is batched), so it is handled inline.
    async fn heartbeats(
        &self,
        req: Request<Streaming<proto::HeartbeatRequest>>,
    ) -> Reply<Self::HeartbeatsStream> {
        let master = self.master.clone();
        let replies = req.into_inner().then(move |beat| {
            let m = master.clone();
            async move {
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
        let result = convert::result(req.into_inner())?;
        let m = self.master.clone();
        detached(async move { m.report(result).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn leave(&self, req: Request<proto::LeaveRequest>) -> Reply<proto::Empty> {
        let r = req.into_inner();
        let worker = convert::identity(&r.worker_id, &r.instance)?;
        self.master.leave(&worker).map_err(to_status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn drain(&self, req: Request<proto::DrainRequest>) -> Reply<proto::Empty> {
        let r = req.into_inner();
        let worker = convert::worker_id(&r.worker_id)?;
        let deadline = r.deadline_ms.map(Duration::from_millis);
        let m = self.master.clone();
        detached(async move { m.drain(&worker, deadline).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn undrain(&self, req: Request<proto::WorkerRef>) -> Reply<proto::Empty> {
        let worker = convert::worker_id(&req.into_inner().worker_id)?;
        let m = self.master.clone();
        detached(async move { m.undrain(&worker).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn submit(&self, req: Request<proto::SubmitRequest>) -> Reply<proto::SubmitReply> {
        let r = req.into_inner();
        let spec = convert::spec(r.spec)?;
        let options = SubmitOptions {
            wait_for_capacity: r.wait_for_capacity,
            ..SubmitOptions::default()
        };
        let m = self.master.clone();
        let Some(array) = r.array else {
            let id = detached(async move { m.submit_with(spec, options).await }).await?;
            return Ok(Response::new(proto::SubmitReply {
                task_id: id.into(),
                array_id: None,
                count: 1,
            }));
        };
        let indices: ArrayIndices = array
            .parse()
            .map_err(|e: ValidationError| to_status(e.into()))?;
        let (array, ids) =
            detached(async move { m.submit_array_with(spec, &indices, options).await }).await?;
        Ok(Response::new(proto::SubmitReply {
            task_id: ids.first().map(ToString::to_string).unwrap_or_default(),
            array_id: Some(array.into()),
            count: u32::try_from(ids.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn cancel(&self, req: Request<proto::CancelRequest>) -> Reply<proto::CancelOutcome> {
        let r = req.into_inner();
        let id = convert::task_id(&r.task_id)?;
        let (m, t) = (self.master.clone(), id.clone());
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
        let r = req.into_inner();
        let f = filter(&r.statuses, r.worker.as_deref(), r.array.as_deref())?;
        let m = self.master.clone();
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
        let r = req.into_inner();
        let f = filter(&r.statuses, r.worker.as_deref(), r.array.as_deref())?;
        let after = r.after.as_deref().map(convert::page_key).transpose()?;
        let limit = if r.limit == 0 {
            MAX_PAGE
        } else {
            r.limit as usize
        };
        let (tasks, mut next) = self
            .master
            .page(&f, after.as_ref(), limit)
            .await
            .map_err(to_status)?;
        let mut out = Vec::with_capacity(tasks.len());
        let mut bytes = 0;
        let mut last: Option<PageKey> = None;
        let waiting = self.master.waiting_each(&tasks);
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
        let counts = self.master.task_counts().await.map_err(to_status)?;
        Ok(Response::new(counts.into()))
    }

    async fn get_task(&self, req: Request<proto::TaskRef>) -> Reply<proto::TaskView> {
        let id = convert::task_id(&req.into_inner().task_id)?;
        Ok(Response::new(
            self.master.task(&id).await.map_err(to_status)?.into(),
        ))
    }

    async fn list_workers(&self, _req: Request<proto::Empty>) -> Reply<proto::ListWorkersReply> {
        let workers = self.master.workers().into_iter().map(Into::into).collect();
        Ok(Response::new(proto::ListWorkersReply { workers }))
    }

    async fn pre_register(&self, req: Request<proto::PreRegisterRequest>) -> Reply<proto::Empty> {
        let r = req.into_inner();
        let (m, id) = (self.master.clone(), convert::worker_id(&r.worker_id)?);
        detached(async move { m.pre_register(id, r.address).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn reconcile(&self, _req: Request<proto::Empty>) -> Reply<proto::ReconcileReply> {
        let m = self.master.clone();
        let r = detached(async move { m.reconcile().await }).await?;
        Ok(Response::new(r.into()))
    }

    async fn reconnect(&self, _req: Request<proto::Empty>) -> Reply<proto::Empty> {
        self.master.reconnect_now();
        Ok(Response::new(proto::Empty {}))
    }

    type FollowOutputStream = OutputReplies<proto::TaskOutputChunk>;

    async fn follow_output(
        &self,
        req: Request<proto::TaskOutputRequest>,
    ) -> Reply<Self::FollowOutputStream> {
        let r = req.into_inner();
        let id = convert::task_id(&r.task_id)?;
        let (from, follow) = output::from_from_proto(r.from);
        let master = self.master.clone();
        let rx = detached(async move { master.follow_output(&id, from, follow).await }).await?;
        Ok(Response::new(output::replies(rx)))
    }

    type WatchEventsStream = EventReplies;

    async fn watch_events(
        &self,
        req: Request<proto::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
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
        let watch = self
            .master
            .watch_events(from.as_ref())
            .map_err(|why| Status::failed_precondition(why.to_string()))?;
        Ok(Response::new(events::serve(watch, self.master.now())))
    }
}
