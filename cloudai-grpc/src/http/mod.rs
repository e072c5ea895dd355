//! The HTTP listener of a master or worker: `/metrics` (Prometheus text),
//! `/healthz` (alive) and `/readyz` (ready), and on the master the
//! dashboard; the cluster token (or a session opened with it) required on
//! every route unless the probes are explicitly opened, and the same TLS
//! as the gRPC port (HTTP/1.1 and HTTP/2, by ALPN).

mod dashboard;
mod gate;

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cloudai_core::master::Serving;
use cloudai_core::metrics::CONTENT_TYPE;
use cloudai_core::worker::Worker;
use cloudai_core::Error;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::security::Security;
use gate::Gate;

/// The most connections open at once; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// The pause after a failed accept.
const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// How long a client has to finish a TLS handshake, or to send a
/// request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The routes a probe or scraper may be let through without the token.
pub const PROBES: [&str; 3] = ["/metrics", "/healthz", "/readyz"];

/// `/metrics`, `/healthz` and `/readyz` of a master (ready while it leads
/// and its store answers within [`cloudai_core::master::READY_WITHIN`]),
/// and its dashboard at `/`. `master` is a
/// [`cloudai_core::master::Master`], or a
/// [`cloudai_core::master::Leadership`] whose acting master answers.
pub fn master_routes(master: impl Into<Serving>) -> Router {
    let master: Serving = master.into();
    let (m, r) = (master.clone(), master.clone());
    dashboard::routes(master)
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { metrics(m.render_metrics().await) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move { readiness(r.ready().await) }
            }),
        )
}

/// `/metrics`, `/healthz` and `/readyz` of a worker: ready while it is
/// registered with its master and its heartbeats are answered.
pub fn worker_routes(worker: Worker) -> Router {
    let (m, r) = (worker.clone(), worker);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || std::future::ready(metrics(m.render_metrics()))),
        )
        .route(
            "/readyz",
            get(move || {
                let answer = if r.in_session() {
                    Ok(())
                } else {
                    Err(Error::Unavailable(
                        "not registered with a master, or its heartbeats go unanswered".into(),
                    ))
                };
                std::future::ready(readiness(answer))
            }),
        )
}

fn metrics(text: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

fn readiness(answer: Result<(), Error>) -> Response {
    match answer {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

/// Serves `routes` on `listener` until `shutdown` completes: the token
/// checked on every route (but the probes, with `open_probes`), TLS when
/// `security` has it.
pub async fn serve_http(
    routes: Router,
    listener: TcpListener,
    security: &Security,
    open_probes: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    let gate = Gate::new(security.token.clone(), open_probes, security.tls.is_some());
    let app = routes
        .merge(gate::routes(gate.clone()))
        .layer(middleware::from_fn_with_state(gate, gate::check));
    let tls = security
        .tls
        .as_ref()
        .map(|t| t.rustls_server().map(|c| TlsAcceptor::from(Arc::new(c))))
        .transpose()?;
    let mut connections = JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: do not spin on it.
                    debug!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "HTTP connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let (app, tls) = (app.clone(), tls.clone());
        connections.spawn(async move {
            let _slot = slot;
            let service = TowerToHyperService::new(app);
            let mut server = auto::Builder::new(TokioExecutor::new());
            // A client that sends its headers this slowly holds a connection
            // for no request.
            server
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let served = match tls {
                None => server.serve_connection(TokioIo::new(tcp), service).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            server.serve_connection(TokioIo::new(stream), service).await
                        }
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
}
