//! What the example binaries share: security flags, logging, small parsers,
//! and starting a worker (the worker binary and the master's `--dev` mode).

/// The README's Rust examples, compiled and run as doc-tests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod state_dir;

use std::path::PathBuf;

pub use state_dir::{default_path as default_state_dir, StateDir};

use clap::Args;
use cloudai_grpc::{Security, Tls, Token};

/// Token and TLS flags.
#[derive(Debug, Clone, Args)]
pub struct SecurityArgs {
    /// Shared cluster token; every call must carry it.
    #[arg(long, env = "CLOUDAI_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Read the token from this file instead.
    #[arg(
        long,
        env = "CLOUDAI_TOKEN_FILE",
        conflicts_with = "token",
        global = true
    )]
    pub token_file: Option<PathBuf>,
    /// Run without a token (anyone who can connect is obeyed).
    #[arg(long, global = true)]
    pub insecure: bool,
    /// This node's TLS certificate (PEM); enables TLS.
    #[arg(long, env = "CLOUDAI_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// This node's TLS key (PEM).
    #[arg(long, env = "CLOUDAI_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
    /// Cluster CA (PEM): verify peers with it and require client certificates (mutual TLS).
    #[arg(long, env = "CLOUDAI_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Name expected in the peer's certificate, if not its host name.
    #[arg(long, env = "CLOUDAI_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
}

/// The HTTP listener's flags: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Serve /metrics, /healthz and /readyz over HTTP on this address (a
    /// port alone binds 127.0.0.1); the TLS flags apply to it too.
    #[arg(long, env = "CLOUDAI_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Serve /metrics, /healthz and /readyz without the token (for a
    /// scraper or a probe that cannot send one); every other route on the
    /// HTTP listener still needs it.
    #[arg(long, env = "CLOUDAI_HTTP_OPEN_PROBES", requires = "http_listen")]
    pub http_open_probes: bool,
}

/// An HTTP listener bound, not yet serving.
#[derive(Debug)]
pub struct HttpListener {
    listener: tokio::net::TcpListener,
    open_probes: bool,
    /// Where it listens.
    pub address: std::net::SocketAddr,
}

impl HttpArgs {
    /// Binds the HTTP listener, if `--http-listen` asks for one.
    pub async fn bind(&self) -> Result<Option<HttpListener>, String> {
        let Some(listen) = &self.http_listen else {
            return Ok(None);
        };
        let address = if listen.parse::<u16>().is_ok() {
            format!("127.0.0.1:{listen}")
        } else {
            listen.clone()
        };
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| format!("cannot listen for HTTP on {address}: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        Ok(Some(HttpListener {
            listener,
            open_probes: self.http_open_probes,
            address,
        }))
    }
}

impl HttpListener {
    /// Serves `routes` until `stop` turns true.
    pub fn spawn(
        self,
        routes: axum::Router,
        security: Security,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let scheme = if security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(url = %format!("{scheme}://{}/metrics", self.address), open_probes = self.open_probes, "HTTP listening");
        tokio::spawn(async move {
            let until = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let served =
                cloudai_grpc::serve_http(routes, self.listener, &security, self.open_probes, until);
            if let Err(e) = served.await {
                tracing::error!(error = %e, "HTTP listener stopped");
            }
        })
    }
}

impl SecurityArgs {
    /// The security settings; refuses to run without a token unless
    /// `insecure` (or dev mode, which passes a generated token) says so.
    pub fn resolve(&self, generated: Option<String>) -> Result<Security, String> {
        let secret = match (&self.token, &self.token_file, generated) {
            (Some(t), _, _) => Some(t.clone()),
            (None, Some(path), _) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            (None, None, g) => g,
        };
        let token = match secret {
            Some(s) => Some(Token::new(s)?),
            None if self.insecure => None,
            None => {
                return Err("no token: pass --token, --token-file or CLOUDAI_TOKEN (or --insecure to run without auth, or --dev)".into())
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(
                Tls::from_files(cert, key, self.tls_ca.as_deref(), self.tls_domain.clone())
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        Ok(Security { token, tls })
    }
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `json` for machines.
pub fn init_logging(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal, and not with NO_COLOR set.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Parses a duration: seconds (fractions allowed) or humantime (`30s`, `5m`, `1h30m`).
pub use cloudai_core::model::parse_duration as seconds;

/// A size in bytes, as a number with an optional unit (`64MiB`, `512 KB`).
pub fn bytes(s: &str) -> Result<usize, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("{s:?} is not a size (64MiB, 512KiB, 1000): {e}"))?;
    usize::try_from(size.as_u64()).map_err(|_| format!("{s:?} is too large"))
}

/// A random hex token from the OS random source (dev mode). There is no
/// fallback: a guessable token is worse than none starting.
pub fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| format!("cannot make a dev token: the OS random source failed: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A worker agent served over gRPC and registered with its master.
pub struct RunningWorker {
    /// The agent.
    pub worker: cloudai_core::worker::Worker,
    /// Where it listens.
    pub address: String,
    stop: tokio::sync::watch::Sender<bool>,
    refused: tokio::sync::oneshot::Receiver<cloudai_core::Error>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Serves a worker on `listener`, adopts the containers a previous run of
/// it left behind, and starts its registration/heartbeat loop.
pub async fn spawn_worker(
    config: cloudai_core::worker::WorkerConfig,
    runtime: std::sync::Arc<dyn cloudai_core::runtime::ContainerRuntime>,
    master_address: &str,
    listener: tokio::net::TcpListener,
    http: Option<HttpListener>,
    security: Security,
) -> Result<RunningWorker, String> {
    use std::sync::Arc;
    let link = Arc::new(
        cloudai_grpc::MasterClient::new(master_address, security.clone())
            .map_err(|e| e.to_string())?,
    );
    let address = config.advertise_address.clone();
    let worker = cloudai_core::worker::Worker::new(
        config,
        runtime,
        link,
        cloudai_core::clock::Clock::system(),
    );
    let adopted = worker
        .adopt_orphans()
        .await
        .map_err(|e| format!("cannot list leftover containers: {e}"))?;
    if adopted > 0 {
        tracing::info!(adopted, "adopted running containers from a previous run");
    }
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut server_rx = rx.clone();
    let http = http.map(|h| {
        h.spawn(
            cloudai_grpc::worker_routes(worker.clone()),
            security.clone(),
            rx.clone(),
        )
    });
    let serve = cloudai_grpc::serve_worker(worker.clone(), listener, security, async move {
        let _ = server_rx.wait_for(|s| *s).await;
    });
    let served = tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "worker server stopped");
        }
    });
    let w = worker.clone();
    let (refusal, refused) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(async move {
        if let Err(e) = w.run(rx).await {
            let _ = refusal.send(e);
        }
    });
    Ok(RunningWorker {
        worker,
        address,
        stop,
        refused,
        tasks: [served, run].into_iter().chain(http).collect(),
    })
}

impl RunningWorker {
    /// Resolves with the master's refusal if it refuses this worker (its id
    /// is live from another instance); pends while it is accepted.
    pub async fn refused(&mut self) -> cloudai_core::Error {
        match (&mut self.refused).await {
            Ok(refusal) => refusal,
            Err(_) => std::future::pending().await,
        }
    }

    /// Seed 000: report running tasks as failed, stop their containers,
    /// then stop serving.
    pub async fn shutdown(self) -> cloudai_core::worker::ShutdownSummary {
        let summary = self.worker.shutdown().await;
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        summary
    }
}

/// Waits for SIGINT or SIGTERM; returns the signal's number.
pub async fn terminated() -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => 2,
        _ = term.recv() => 15,
    }
}
