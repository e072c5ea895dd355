//! Serving the master and worker services on a TCP listener, with the
//! token checked on every call and optional TLS.

use std::future::Future;

use cloudai_core::master::Master;
use cloudai_core::worker::Worker;
use cloudai_core::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptorLayer;
use tonic::service::{Interceptor, Routes};
use tonic::transport::Server;
use tonic::{Request, Status};

use crate::auth::{self, Token};
use crate::client::MAX_MESSAGE;
use crate::master_service::MasterService;
use crate::proto::{master_server::MasterServer, worker_server::WorkerServer};
use crate::security::Security;
use crate::worker_service::WorkerService;

/// Refuses every call that does not carry the token.
#[derive(Clone)]
struct TokenCheck(Option<Token>);

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        auth::check(self.0.as_ref(), req.metadata())?;
        Ok(req)
    }
}

/// Serves `routes` on `listener` with the token checked on every call,
/// until `shutdown` completes: the one serve path of both services, and of
/// any other implementation of them (the worker swarm bench serves many
/// simulated workers on one listener through it).
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let mut builder = Server::builder().tcp_nodelay(true);
    if let Some(tls) = security.server_tls() {
        builder = builder.tls_config(tls).map_err(|e| Error::Backend {
            backend: "tls",
            source: Box::new(e),
        })?;
    }
    builder
        .layer(InterceptorLayer::new(TokenCheck(security.token.clone())))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("gRPC server failed: {e}")))
}

/// Serves `master` on `listener` until `shutdown` completes.
pub async fn serve_master(
    master: Master,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let service = MasterServer::new(MasterService::new(master))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    serve(Routes::new(service), listener, security, shutdown).await
}

/// Serves `worker` on `listener` until `shutdown` completes.
pub async fn serve_worker(
    worker: Worker,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let service = WorkerServer::new(WorkerService::new(worker))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    serve(Routes::new(service), listener, security, shutdown).await
}
