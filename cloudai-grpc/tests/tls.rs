//! Mutual TLS: a master that requires client certificates signed by the
//! cluster CA accepts a client holding one and refuses one signed by another
//! CA, or speaking plain HTTP/2. Certificates come from rcgen.

use std::sync::Arc;
use std::time::Duration;

use cloudai_core::clock::Clock;
use cloudai_core::master::{Master, MasterConfig};
use cloudai_core::memory::MemoryStore;
use cloudai_core::model::{Resources, TaskSpec, TaskStatus};
use cloudai_core::store::TaskFilter;
use cloudai_core::Error;
use cloudai_grpc::{serve_master, MasterClient, Security, Tls, Token, WorkerClients};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A node's TLS settings: a certificate for `localhost` signed by `signer`,
/// trusting `trusted`.
fn node(signer: &Ca, trusted: &Ca) -> Tls {
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &signer.issuer).unwrap();
    Tls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_pem: Some(trusted.pem.clone()),
        domain: Some("localhost".into()),
    }
}

fn spec() -> TaskSpec {
    TaskSpec::new(
        "busybox",
        vec!["true".into()],
        Resources::new(0.1, 0.1, 0.0, 0).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_cluster_certificate() {
    let cluster = ca("cluster CA");
    let stranger = ca("another CA");
    let token = Some(Token::new("tls-token").unwrap());
    let server = Security {
        token: token.clone(),
        tls: Some(node(&cluster, &cluster)),
    };

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let store = Arc::new(MemoryStore::new());
    let config = MasterConfig::default();
    let transport = Arc::new(WorkerClients::new(config.id.clone(), server.clone()));
    let master = Master::start(config, store.clone(), store, transport, Clock::system())
        .await
        .unwrap();
    tokio::spawn(serve_master(
        master.clone(),
        listener,
        server,
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let member = MasterClient::new(
        &address,
        Security {
            token: token.clone(),
            tls: Some(node(&cluster, &cluster)),
        },
    )
    .unwrap();
    let id = member
        .submit(spec())
        .await
        .expect("a cluster certificate is admitted");
    assert_eq!(
        member.task(&id).await.unwrap().task.status,
        TaskStatus::Pending
    );

    let outsider = MasterClient::new(
        &address,
        Security {
            token: token.clone(),
            tls: Some(node(&stranger, &cluster)),
        },
    )
    .unwrap();
    let err = outsider
        .submit(spec())
        .await
        .expect_err("a certificate from another CA is refused");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    let plain = MasterClient::new(&address, Security { token, tls: None }).unwrap();
    let err = plain
        .submit(spec())
        .await
        .expect_err("plain HTTP/2 is refused");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");

    assert_eq!(
        member.tasks(&TaskFilter::default()).await.unwrap().len(),
        1,
        "only the member's task exists"
    );
    master.shutdown().await;
}

/// `GET path` over TLS with `client` (its certificate, if any, and the
/// cluster CA), offering only HTTP/1.1: the status line, or the error.
async fn https_get(
    address: &str,
    client: &Tls,
    with_cert: bool,
    path: &str,
) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client.ca_pem.as_deref().unwrap().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if with_cert {
        let certs = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap();
        builder.with_client_auth_cert(certs, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer tls-token\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    tls.read_to_end(&mut reply)
        .await
        .map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&reply).into_owned();
    Ok(reply.lines().next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_speaks_the_same_mutual_tls() {
    let cluster = ca("cluster CA");
    let server = Security {
        token: Some(Token::new("tls-token").unwrap()),
        tls: Some(node(&cluster, &cluster)),
    };
    let store = Arc::new(MemoryStore::new());
    let config = MasterConfig::default();
    let transport = Arc::new(WorkerClients::new(config.id.clone(), server.clone()));
    let master = Master::start(config, store.clone(), store, transport, Clock::system())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let routes = cloudai_grpc::master_routes(master);
    tokio::spawn(async move {
        cloudai_grpc::serve_http(routes, listener, &server, false, std::future::pending()).await
    });

    let client = node(&cluster, &cluster);
    let line = https_get(&address, &client, true, "/readyz").await.unwrap();
    assert_eq!(line, "HTTP/1.1 200 OK", "HTTP/1.1 over mutual TLS");
    assert!(
        https_get(&address, &client, false, "/readyz")
            .await
            .is_err(),
        "a client without a certificate is refused"
    );
    let stranger = ca("another CA");
    let outsider = node(&stranger, &cluster);
    assert!(
        https_get(&address, &outsider, true, "/readyz")
            .await
            .is_err(),
        "a certificate from another CA is refused"
    );
}
