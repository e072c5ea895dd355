//! A task's output for a follower: relayed from the worker that runs (or
//! ran) it, as a stream; once the worker no longer has it, the end kept
//! with the result. Offsets are per attempt: when the task runs again the
//! follower is handed the new attempt's output from its start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use super::{Event, Master, MasterEvent};
use crate::model::{RunningTask, TaskId, TaskResult};
use crate::output::{Follow, OutputChunk, OutputFrom, OutputLog, OutputStream, CHANNEL};
use crate::{Error, Result};

/// How long a follower waits for news of its task before looking again
/// (the event channel may have dropped one).
const RECHECK: Duration = Duration::from_secs(1);
/// How long a follower that missed events waits before looking again.
const LAGGED_PAUSE: Duration = Duration::from_millis(100);

/// A chunk of one attempt's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutput {
    /// The attempt that wrote it.
    pub attempt: u32,
    /// The bytes, at their offset in that attempt's output.
    pub chunk: OutputChunk,
}

/// A task's output as a follower receives it; the channel closes at the
/// end. Dropping it stops the relay.
pub type TaskFollow = mpsc::Receiver<Result<TaskOutput>>;

impl Master {
    /// Task `id`'s output from `from`. Following, it waits for the task to
    /// start and relays its output until the task ended and all of it was
    /// sent; otherwise it sends what is kept now and ends.
    pub async fn follow_output(
        &self,
        id: &TaskId,
        from: OutputFrom,
        keep_following: bool,
    ) -> Result<TaskFollow> {
        self.task(id).await?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let (master, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            if let Err(e) = master.relay_output(&id, from, keep_following, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn relay_output(
        &self,
        id: &TaskId,
        mut from: OutputFrom,
        keep_following: bool,
        tx: &mpsc::Sender<Result<TaskOutput>>,
    ) -> Result<()> {
        let mut events = self.subscribe();
        let mut attempt = None;
        loop {
            if tx.is_closed() {
                return Ok(());
            }
            let view = self.task(id).await?;
            let ended = view.task.status.is_terminal();
            let run = match (&view.result, &view.task.worker) {
                (Some(r), _) => Some((r.worker_id.clone(), r.attempt)),
                (None, Some(w)) if !ended => Some((w.clone(), view.task.attempt)),
                _ => None,
            };
            if let Some((worker, a)) = run {
                if attempt.is_some_and(|seen| seen != a) {
                    from = OutputFrom::Offset(0);
                }
                attempt = Some(a);
                let run = RunningTask {
                    task: id.clone(),
                    attempt: a,
                };
                let follow = keep_following && !ended;
                match self.worker_output(&worker, &run, from, follow).await {
                    Ok(output) => {
                        // While the task runs, news of it (it ended, or was
                        // failed over from a worker that stopped answering)
                        // ends this relay: the next resumes at `from`, so
                        // nothing is lost or repeated.
                        let news = (!ended).then_some((&mut events, id));
                        match relay(output, a, &mut from, tx, news).await {
                            Ok(false) => return Ok(()),
                            Ok(true) if ended || !keep_following => return Ok(()),
                            // The run's output ended (its result is on its
                            // way), or something happened to it: look again.
                            Ok(true) => continue,
                            Err(e) if !keep_following => return Err(e),
                            Err(_) => {}
                        }
                    }
                    Err(e) => match &view.result {
                        Some(r) => {
                            let tail = stored_tail(r, from);
                            return relay(tail, a, &mut from, tx, None).await.map(drop);
                        }
                        None if !keep_following => return Err(e),
                        None => {}
                    },
                }
            } else if ended || !keep_following {
                return Ok(());
            }
            tokio::select! {
                () = news_of(&mut events, id) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    }

    /// Run `run`'s output from its worker.
    async fn worker_output(
        &self,
        worker: &crate::model::WorkerId,
        run: &RunningTask,
        from: OutputFrom,
        keep_following: bool,
    ) -> Result<Follow> {
        let to = self
            .endpoint(worker)
            .ok_or_else(|| Error::not_found("worker", worker))?;
        let call = self
            .inner
            .transport
            .follow_output(&to, run, from, keep_following);
        tokio::time::timeout(self.inner.config.reconnect_timeout, call)
            .await
            .map_err(|_| Error::Timeout(format!("worker {worker} did not send output in time")))?
    }
}

/// Sends what `output` holds as `attempt`'s, moving `from` past what was
/// sent, until it ends or, given `news`, something happens to the task.
/// False if the follower went away.
async fn relay(
    mut output: Follow,
    attempt: u32,
    from: &mut OutputFrom,
    tx: &mpsc::Sender<Result<TaskOutput>>,
    mut news: Option<(&mut broadcast::Receiver<Arc<Event>>, &TaskId)>,
) -> Result<bool> {
    loop {
        let happened = async {
            match news.as_mut() {
                Some((events, id)) => changed(events, id).await,
                None => std::future::pending().await,
            }
        };
        let chunk = tokio::select! {
            chunk = output.recv() => chunk,
            () = tx.closed() => return Ok(false),
            () = happened => return Ok(true),
        };
        let Some(chunk) = chunk else {
            return Ok(true);
        };
        let chunk = chunk?;
        *from = OutputFrom::Offset(chunk.end());
        if tx.send(Ok(TaskOutput { attempt, chunk })).await.is_err() {
            return Ok(false);
        }
    }
}

/// The end of the output stored with result `r`, from `from` (as stdout:
/// the stored tail does not tell the streams apart).
fn stored_tail(r: &TaskResult, from: OutputFrom) -> Follow {
    let log = OutputLog::starting_at(r.logs_offset, usize::MAX);
    log.push(OutputStream::Stdout, r.logs.as_bytes());
    log.close();
    log.follow(from, false)
}

/// Waits until something happened to task `id`, or a while.
async fn news_of(events: &mut broadcast::Receiver<Arc<Event>>, id: &TaskId) {
    let _ = tokio::time::timeout(RECHECK, changed(events, id)).await;
}

/// Waits until something may have happened to task `id`: an event about
/// it, or events dropped unseen (then after a pause, so the followers of a
/// busy master do not spin).
async fn changed(events: &mut broadcast::Receiver<Arc<Event>>, id: &TaskId) {
    loop {
        match events.recv().await {
            Ok(e) if matches!(&e.kind, MasterEvent::Task { id: changed, .. } if changed == id) => {
                return
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                tokio::time::sleep(LAGGED_PAUSE).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}
