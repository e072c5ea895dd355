//! Serving the master and worker services on a TCP listener, with the
//! token checked on every call and optional TLS.

use std::future::Future;

use cloudai_core::master::Master;
use cloudai_core::worker::Worker;
use cloudai_core::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::auth;
use crate::client::MAX_MESSAGE;
use crate::master_service::MasterService;
use crate::proto::{master_server::MasterServer, worker_server::WorkerServer};
use crate::security::Security;
use crate::worker_service::WorkerService;

fn builder(security: &Security) -> Result<Server, Error> {
    let mut b = Server::builder().tcp_nodelay(true);
    if let Some(tls) = security.server_tls() {
        b = b.tls_config(tls).map_err(|e| Error::Backend {
            backend: "tls",
            source: Box::new(e),
        })?;
    }
    Ok(b)
}

fn serve_error(e: tonic::transport::Error) -> Error {
    Error::Unavailable(format!("gRPC server failed: {e}"))
}

/// Serves `master` on `listener` until `shutdown` completes.
pub async fn serve_master(
    master: Master,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let token = security.token.clone();
    let inner = MasterServer::new(MasterService::new(master))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let service = InterceptedService::new(inner, move |req: tonic::Request<()>| {
        auth::check(token.as_ref(), req.metadata())?;
        Ok(req)
    });
    builder(&security)?
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(serve_error)
}

/// Serves `worker` on `listener` until `shutdown` completes.
pub async fn serve_worker(
    worker: Worker,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let token = security.token.clone();
    let inner = WorkerServer::new(WorkerService::new(worker))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let service = InterceptedService::new(inner, move |req: tonic::Request<()>| {
        auth::check(token.as_ref(), req.metadata())?;
        Ok(req)
    });
    builder(&security)?
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(serve_error)
}
