//! The worker's gRPC service: a thin shell over [`Worker`]. Orders are
//! obeyed from no master of a term below the highest the worker has seen.

use std::time::Duration;

use cloudai_core::transport::MasterInfo;
use cloudai_core::worker::Worker;
use tonic::{Request, Response, Status};

use crate::auth::{addressee, caller_term, MASTER_HEADER};
use crate::convert::{self, detached, to_status};
use crate::output::{self, OutputReplies};
use crate::proto::{self, worker_server};

/// Serves [`Worker`] over gRPC.
#[derive(Debug, Clone)]
pub struct WorkerService {
    worker: Worker,
}

impl WorkerService {
    /// Wraps a worker agent.
    pub fn new(worker: Worker) -> Self {
        WorkerService { worker }
    }

    /// Refuses calls meant for another worker (see
    /// [`Worker::check_addressed`]) and calls from a master of a term
    /// below the highest this worker has seen ([`Worker::check_master`]):
    /// a deposed master's late orders. Any caller holding the token may
    /// otherwise order (the master may assign work while its registration
    /// reply is still in flight); a higher term is remembered.
    fn check_master<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let (worker, instance) = addressee(req.metadata())?;
        self.worker
            .check_addressed(&worker, instance.as_ref())
            .map_err(to_status)?;
        let term = caller_term(req.metadata())?;
        self.worker.check_master(term).map_err(|e| {
            let caller = req
                .metadata()
                .get(MASTER_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(unnamed)");
            Status::permission_denied(format!(
                "worker {} refuses master {caller}: {e}",
                self.worker.id()
            ))
        })
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl worker_server::Worker for WorkerService {
    async fn identify(&self, _req: Request<proto::Empty>) -> Reply<proto::Identity> {
        let me = self.worker.identity();
        Ok(Response::new(proto::Identity {
            worker_id: me.id.into(),
            instance: me.instance.into(),
        }))
    }

    async fn master_register(
        &self,
        req: Request<proto::MasterRegisterRequest>,
    ) -> Reply<proto::Empty> {
        self.check_master(&req)?;
        let r = req.into_inner();
        self.worker.master_register(&MasterInfo {
            id: r.master_id,
            address: r.address,
            term: cloudai_core::model::Term::new(r.term),
        });
        Ok(Response::new(proto::Empty {}))
    }

    async fn assign(&self, req: Request<proto::AssignRequest>) -> Reply<proto::Empty> {
        self.check_master(&req)?;
        let r = req.into_inner();
        let run = convert::run(r.run)?;
        let spec = convert::spec(r.spec)?;
        self.worker
            .assign(run, spec, r.gpus)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn cancel(&self, req: Request<proto::StopRequest>) -> Reply<proto::Empty> {
        self.check_master(&req)?;
        let r = req.into_inner();
        let run = convert::run(r.run)?;
        let w = self.worker.clone();
        detached(async move { w.cancel(&run, Duration::from_millis(r.grace_ms)).await }).await?;
        Ok(Response::new(proto::Empty {}))
    }

    type FollowOutputStream = OutputReplies<proto::OutputChunk>;

    async fn follow_output(
        &self,
        req: Request<proto::RunOutputRequest>,
    ) -> Reply<Self::FollowOutputStream> {
        self.check_master(&req)?;
        let r = req.into_inner();
        let run = convert::run(r.run)?;
        let (from, follow) = output::from_from_proto(r.from);
        let rx = self
            .worker
            .follow_output(&run, from, follow)
            .map_err(to_status)?;
        Ok(Response::new(output::replies(rx)))
    }
}
