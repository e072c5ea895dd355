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
