//! Serving the master and worker services on a TCP listener, with the
//! token checked on every call and optional TLS.

use std::future::Future;
use std::time::Duration;

use cloudai_core::master::Serving;
use cloudai_core::metrics::Rpcs;
use cloudai_core::worker::Worker;
use cloudai_core::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptorLayer;
use tonic::service::{Interceptor, Routes};
use tonic::transport::Server;
use tonic::{Request, Status};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::auth::{self, Token};
use crate::client::MAX_MESSAGE;
use crate::master_service::MasterService;
use crate::proto::{master_server::MasterServer, worker_server::WorkerServer};
use crate::rpc_metrics::CountRpcs;
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

/// Serves `routes` on `listener` with the token checked on every call and
/// every call counted into `rpcs`, until `shutdown` completes: the one
/// serve path of both services, and of any other implementation of them
/// (the worker swarm bench serves many simulated workers on one listener
/// through it).
pub async fn serve(
    routes: Routes,
    listener: TcpListener,
    security: Security,
    rpcs: Rpcs,
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
        // Outermost, so calls the token check refuses are counted too.
        .layer(CountRpcs(rpcs))
        .layer(InterceptorLayer::new(TokenCheck(security.token.clone())))
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| Error::Unavailable(format!("gRPC server failed: {e}")))
}

/// Serves `master` (a [`cloudai_core::master::Master`], or a
/// [`cloudai_core::master::Leadership`]'s acting master) on `listener`
/// until `shutdown` completes, with the standard gRPC health service
/// beside it: serving while this process leads and its store answers.
pub async fn serve_master(
    master: impl Into<Serving>,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let serving: Serving = master.into();
    let service = MasterServer::new(MasterService::new(serving.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (reporter, health) = tonic_health::server::health_reporter();
    let rpcs = serving.metrics().rpcs();
    let watches = serving.clone();
    let probe = tokio::spawn(report_health(
        reporter,
        <MasterServer<MasterService> as NamedService>::NAME,
        move || {
            let s = serving.clone();
            async move { s.ready().await.is_ok() }
        },
    ));
    let routes = Routes::new(service).add_service(health);
    // Open event streams end when shutdown begins, or the graceful
    // shutdown would wait for their clients to leave.
    let shutdown = async move {
        shutdown.await;
        watches.close_watches();
    };
    let served = serve(routes, listener, security, rpcs, shutdown).await;
    probe.abort();
    served
}

/// Serves `worker` on `listener` until `shutdown` completes, with the
/// standard gRPC health service beside it: serving while the worker is
/// registered with its master.
pub async fn serve_worker(
    worker: Worker,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let service = WorkerServer::new(WorkerService::new(worker.clone()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (reporter, health) = tonic_health::server::health_reporter();
    let rpcs = worker.metrics().rpcs();
    let probe = tokio::spawn(report_health(
        reporter,
        <WorkerServer<WorkerService> as NamedService>::NAME,
        move || std::future::ready(worker.in_session()),
    ));
    let routes = Routes::new(service).add_service(health);
    let served = serve(routes, listener, security, rpcs, shutdown).await;
    probe.abort();
    served
}

/// How often the health service's status is brought up to date.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// Keeps the health status of the server ("") and of `service` at what
/// `ready` says, checked every [`HEALTH_EVERY`].
async fn report_health<F, Fut>(reporter: HealthReporter, service: &'static str, ready: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut last = None;
    loop {
        let now = ready().await;
        if last != Some(now) {
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(service, status).await;
            last = Some(now);
        }
        tokio::time::sleep(HEALTH_EVERY).await;
    }
}
