//! Submitting many tasks at a bounded concurrency, and parking tasks on a
//! worker that never answers (or dependents on such a task).

use std::sync::Arc;
use std::time::Instant;

use cloudai_core::master::{ParentRef, SubmitOptions};
use cloudai_core::model::{ArrayIndices, Condition, TaskId, TaskSpec, ValidationError, WorkerId};
use cloudai_grpc::MasterClient;
use tokio::sync::Semaphore;

/// Submits `n` copies of `spec`, `concurrency` at a time. Returns each
/// task's id with the moment its submit was sent.
pub async fn submit_all(
    client: &MasterClient,
    spec: &TaskSpec,
    n: usize,
    concurrency: usize,
) -> Result<Vec<(TaskId, Instant)>, String> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut submits = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (c, s) = (client.clone(), spec.clone());
        submits.spawn(async move {
            let sent = Instant::now();
            let r = c.submit(s).await;
            drop(permit);
            r.map(|id| (id, sent))
        });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(r) = submits.join_next().await {
        ids.push(r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?);
    }
    Ok(ids)
}

/// The worker parked tasks are pinned to: registered by address, where
/// nothing listens, so it never answers.
pub const PARKED_WORKER: &str = "parked-nowhere";

/// Submits one task pinned to [`PARKED_WORKER`] and, as one array, `n`
/// tasks that wait for it to complete (`after-ok`): dependents that wait
/// throughout a measured run, which should not slow it.
pub async fn park_dependents(
    client: &MasterClient,
    spec: &TaskSpec,
    n: usize,
) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let nowhere = WorkerId::new(PARKED_WORKER).map_err(|e| e.to_string())?;
    client
        .pre_register(&nowhere, "127.0.0.1:9")
        .await
        .map_err(|e| e.to_string())?;
    let mut parent = spec.clone();
    parent.pin = Some(nowhere);
    let parent = client
        .submit_with(parent, SubmitOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let indices: ArrayIndices = format!("1-{n}")
        .parse()
        .map_err(|e: ValidationError| e.to_string())?;
    let options = SubmitOptions {
        after: vec![ParentRef {
            condition: Condition::AfterOk,
            id: parent.to_string(),
        }],
        ..SubmitOptions::default()
    };
    client
        .submit_array(spec.clone(), &indices, options)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Submits `n` copies of `spec` pinned to [`PARKED_WORKER`] (pre-registered
/// at an address nothing listens on): they wait throughout a measured run,
/// which should not slow it.
pub async fn park(
    client: &MasterClient,
    spec: &TaskSpec,
    n: usize,
    concurrency: usize,
) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let nowhere = WorkerId::new(PARKED_WORKER).map_err(|e| e.to_string())?;
    client
        .pre_register(&nowhere, "127.0.0.1:9")
        .await
        .map_err(|e| e.to_string())?;
    let mut spec = spec.clone();
    spec.pin = Some(nowhere);
    submit_all(client, &spec, n, concurrency).await?;
    Ok(())
}
