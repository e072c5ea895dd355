//! A worker's reports never hold up its heartbeats, and a report being
//! sent is not sent again by the outbox's retries: under a burst of task
//! ends against a slow master, a worker that waited for its reports
//! before each beat went silent, fenced itself off and ran its tasks
//! twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cloudai_core::clock::Clock;
use cloudai_core::model::{
    Resources, RunningTask, TaskId, TaskResult, Telemetry, Term, Timestamp, WorkerId,
    WorkerIdentity,
};
use cloudai_core::testing::sim::{fake_task, FakeRuntime};
use cloudai_core::transport::{HeartbeatReply, Registration, RegistrationReply, WorkerToMaster};
use cloudai_core::worker::{Worker, WorkerConfig};
use cloudai_core::{Error, Result};
use tokio::sync::watch;

/// A master that answers beats at once, refuses each task's first report
/// at once (unavailable) and takes `report_delay` to answer the next,
/// counting both.
#[derive(Debug, Default)]
struct SlowReports {
    report_delay: Duration,
    beats: AtomicUsize,
    reports: Mutex<BTreeMap<TaskId, usize>>,
}

#[async_trait]
impl WorkerToMaster for SlowReports {
    async fn register(&self, _: &Registration) -> Result<RegistrationReply> {
        Ok(RegistrationReply {
            heartbeat_interval: Duration::from_millis(200),
            master_id: "slow".into(),
            term: Term::ZERO,
            lost_after: Duration::from_secs(30),
            ..RegistrationReply::default()
        })
    }
    async fn heartbeat(&self, _: &WorkerIdentity, _: &Telemetry) -> Result<HeartbeatReply> {
        self.beats.fetch_add(1, Ordering::SeqCst);
        Ok(HeartbeatReply::default())
    }
    async fn report(&self, result: &TaskResult) -> Result<()> {
        let sent = {
            let mut reports = self.reports.lock().unwrap();
            let n = reports.entry(result.task_id.clone()).or_default();
            *n += 1;
            *n
        };
        if sent == 1 {
            return Err(Error::Unavailable("busy".into()));
        }
        tokio::time::sleep(self.report_delay).await;
        Ok(())
    }
    async fn leave(&self, _: &WorkerIdentity) -> Result<()> {
        Ok(())
    }
    fn follow(&self, _: &str) {}
}

#[tokio::test(start_paused = true)]
async fn beats_go_on_while_reports_are_slow_and_no_report_is_sent_twice_at_once() {
    let clock = Clock::starting_at(Timestamp::from_millis(1_000_000));
    let master = Arc::new(SlowReports {
        report_delay: Duration::from_secs(4),
        ..SlowReports::default()
    });
    let mut config = WorkerConfig::new(
        WorkerId::new("w").unwrap(),
        "w:1",
        Resources::new(8.0, 8.0, 0.0, 0).unwrap(),
    );
    config.rpc_timeout = Duration::from_secs(10);
    config.max_grace = Duration::from_secs(1);
    let runtime = Arc::new(FakeRuntime::new(clock));
    let worker = Worker::new(config, runtime, master.clone(), clock);
    let (_stop, rx) = watch::channel(false);
    let w = worker.clone();
    tokio::spawn(async move { w.run(rx).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Ten runs that end at once: ten reports, each refused once, then sent
    // again from the outbox and answered after 4 s.
    for i in 0..10 {
        let run = RunningTask {
            task: TaskId::new(format!("t{i}")).unwrap(),
            attempt: 1,
        };
        worker
            .assign(run, fake_task(0, 0, 0.5), Vec::new())
            .await
            .unwrap();
    }
    // A flush sends them one at a time: 40 s in all.
    let before = master.beats.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(45)).await;
    let beats = master.beats.load(Ordering::SeqCst) - before;
    assert!(
        beats >= 200,
        "a beat every 200 ms while the reports wait: {beats} in 45 s"
    );
    let reports = master.reports.lock().unwrap().clone();
    assert_eq!(reports.len(), 10, "{reports:?}");
    assert!(
        reports.values().all(|n| *n == 2),
        "refused once, sent once more, and not again while being sent: {reports:?}"
    );
}
