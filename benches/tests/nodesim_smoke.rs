//! The worker swarm against an in-process master over real gRPC: a few
//! hundred simulated workers, a few thousand tasks with some failures, and
//! tasks parked on a worker that never answers. It asserts correctness,
//! never timing: every runnable task ended as its worker reported, only
//! the parked tasks wait, no allocation is left, reconcile finds nothing.

use std::sync::Arc;
use std::time::Duration;

use cloudai_bench::measure::{self, LoadConfig};
use cloudai_bench::swarm::SwarmConfig;
use cloudai_core::clock::Clock;
use cloudai_core::master::{Master, MasterConfig};
use cloudai_core::memory::MemoryStore;
use cloudai_core::model::Resources;
use cloudai_grpc::{serve_master, MasterClient, Security, Token, WorkerClients};
use tokio::net::TcpListener;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_runs_every_runnable_task_and_leaves_the_cluster_clean() {
    let security = Security {
        token: Some(Token::new("nodesim-smoke-token").unwrap()),
        tls: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let config = MasterConfig {
        advertise_address: address.clone(),
        heartbeat_interval: Duration::from_secs(1),
        ..MasterConfig::default()
    };
    let store = Arc::new(MemoryStore::new());
    let transport = Arc::new(WorkerClients::new(config.id.clone(), security.clone()));
    let master = Master::start(config, store.clone(), store, transport, Clock::system())
        .await
        .unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let until = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    tokio::spawn(serve_master(
        master.clone(),
        listener,
        security.clone(),
        until,
    ));

    let swarm = SwarmConfig {
        workers: 300,
        // Small workers, so that placements fill them and wait for room.
        capacity: Resources::new(1.0, 4.0, 100.0, 0).unwrap(),
        run_time: Duration::from_millis(20),
        fail_percent: 5,
        ..SwarmConfig::default()
    };
    let load = LoadConfig {
        tasks: 3000,
        concurrency: 32,
        request: Resources::new(0.5, 0.5, 0.0, 0).unwrap(),
        parked: 200,
        idle: Duration::ZERO,
        deadline: Duration::from_secs(120),
        array: false,
        retries: 0,
        pipeline: false,
        dependents: 0,
    };
    let (report, swarm) = measure::run(&address, security.clone(), swarm, &load, None)
        .await
        .unwrap();
    assert_eq!(report.workers, 300);
    let client = MasterClient::new(&address, security).unwrap();
    measure::check(&client, &report, &swarm, Some(150))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{report}"));
    swarm.stop().await;
    let _ = stop.send(true);
    master.shutdown().await;
}
