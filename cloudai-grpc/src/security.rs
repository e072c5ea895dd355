//! How nodes prove who they are: a shared token on every call, and
//! optionally TLS (rustls), mutual when a CA is given.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudai_core::model::ValidationError;
use cloudai_core::Error;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig,
};

use crate::auth::Token;

/// How often an open connection with calls in flight is pinged.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// A node's TLS material (PEM): its own certificate and key, and the
/// cluster CA. With a CA, servers require client certificates signed by it
/// (mutual TLS) and clients verify servers against it.
#[derive(Clone)]
pub struct Tls {
    /// This node's certificate chain.
    pub cert_pem: String,
    /// This node's private key.
    pub key_pem: String,
    /// The cluster CA.
    pub ca_pem: Option<String>,
    /// Name to expect in the peer's certificate (clients), if not the host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("mutual", &self.ca_pem.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::InvalidInput(ValidationError::Invalid {
            field: "tls file",
            reason: format!("{}: {e}", path.display()),
        })
    })
}

impl Tls {
    /// Loads PEM files.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        ca: Option<&Path>,
        domain: Option<String>,
    ) -> Result<Tls, Error> {
        Ok(Tls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: ca.map(read).transpose()?,
            domain,
        })
    }

    fn server(&self) -> ServerTlsConfig {
        let mut c =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.ca_pem {
            c = c.client_ca_root(Certificate::from_pem(ca));
        }
        c
    }

    /// The same identity and client CA as a rustls server configuration,
    /// for the HTTP listener (HTTP/2 and HTTP/1.1 offered by ALPN).
    pub(crate) fn rustls_server(&self) -> Result<rustls::ServerConfig, Error> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let bad = |what: &str, e: &dyn std::fmt::Display| {
            Error::InvalidInput(ValidationError::Invalid {
                field: "tls",
                reason: format!("{what}: {e}"),
            })
        };
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad("private key", &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?;
        let builder = match &self.ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots
                        .add(c.map_err(|e| bad("CA", &e))?)
                        .map_err(|e| bad("CA", &e))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| bad("client verifier", &e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    fn client(&self) -> ClientTlsConfig {
        let mut c =
            ClientTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if let Some(ca) = &self.ca_pem {
            c = c.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// Token and TLS settings for servers and clients.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// Required on every call; `None` disables auth (dev mode only).
    pub token: Option<Token>,
    /// TLS, if enabled.
    pub tls: Option<Tls>,
}

impl Security {
    /// Server-side TLS configuration.
    pub(crate) fn server_tls(&self) -> Option<ServerTlsConfig> {
        self.tls.as_ref().map(Tls::server)
    }

    /// A lazily connecting channel to `address` (`host:port`).
    pub fn channel(&self, address: &str, connect_timeout: Duration) -> Result<Channel, Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let bad = |e: &dyn std::fmt::Display| {
            Error::InvalidInput(ValidationError::Invalid {
                field: "address",
                reason: format!("{address:?}: {e}"),
            })
        };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| bad(&e))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // A peer that stopped answering ends the streams open to it
            // (an output relay, heartbeats) within half a minute.
            .http2_keep_alive_interval(KEEP_ALIVE)
            .keep_alive_timeout(KEEP_ALIVE * 2);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client()).map_err(|e| bad(&e))?;
        }
        Ok(endpoint.connect_lazy())
    }
}
