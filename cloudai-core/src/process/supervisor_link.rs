//! A runtime's link to the supervisor of its runs (see `supervisor`): one
//! connection, kept for the runtime's life (and so keeping the supervisor
//! as well), on which it sends requests about its runs and hears the
//! answers. Where no supervisor answers, it starts one.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use super::backend;
use super::record::socket_via;
use super::supervisor::{LOG, SOCKET};
use crate::sync::lock;
use crate::{Error, Result};

/// How long the runtime tries to reach a supervisor, starting one.
const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Between tries to reach a supervisor that says another one runs (it
/// may be on its way out).
const RETRY: Duration = Duration::from_millis(10);

/// Answers awaited, by the request's first two words; `None` once the
/// connection closed.
type Waiting = Arc<Mutex<Option<HashMap<String, Vec<oneshot::Sender<String>>>>>>;

#[derive(Debug)]
struct Connection {
    requests: OwnedWriteHalf,
    waiting: Waiting,
}

/// The runtime's end of its link to the supervisor.
#[derive(Debug)]
pub(super) struct SupervisorLink {
    runs: PathBuf,
    command: Vec<OsString>,
    connection: tokio::sync::Mutex<Option<Connection>>,
}

impl SupervisorLink {
    /// A link to the supervisor of `runs`, started (when none answers) as
    /// `command[0] command[1..] <runs>`; `command` is not empty.
    pub(super) fn new(runs: PathBuf, command: Vec<OsString>) -> Self {
        SupervisorLink {
            runs,
            command,
            connection: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends `request` about run `run` (with `more` words after it) and
    /// waits for the answer's words; `None` if the supervisor went away
    /// first.
    pub(super) async fn ask(&self, request: &str, run: &str, more: &str) -> Result<Option<String>> {
        let key = format!("{request} {run}");
        let answer = {
            let mut connection = self.connection.lock().await;
            let c = self.connected(&mut connection).await?;
            let (tx, rx) = oneshot::channel();
            match lock(&c.waiting).as_mut() {
                Some(waiting) => waiting.entry(key.clone()).or_default().push(tx),
                None => return Ok(None),
            };
            let line = format!("{key} {more}\n");
            if c.requests.write_all(line.as_bytes()).await.is_err() {
                *connection = None;
                return Ok(None);
            }
            rx
        };
        Ok(answer.await.ok())
    }

    /// Sends requests that get no answer (`lease`), a line each, made by
    /// `lines` once the connection is there; false if the supervisor is
    /// gone.
    pub(super) async fn tell(&self, lines: impl FnOnce() -> String) -> Result<bool> {
        let mut connection = self.connection.lock().await;
        let c = self.connected(&mut connection).await?;
        if c.requests.write_all(lines().as_bytes()).await.is_err() {
            *connection = None;
            return Ok(false);
        }
        Ok(true)
    }

    /// The open connection, connecting anew if there is none.
    async fn connected<'a>(
        &self,
        connection: &'a mut Option<Connection>,
    ) -> Result<&'a mut Connection> {
        let open = connection
            .as_ref()
            .is_some_and(|c| lock(&c.waiting).is_some());
        if !open {
            *connection = None;
        }
        match connection {
            Some(c) => Ok(c),
            None => Ok(connection.insert(self.connect().await?)),
        }
    }

    /// Connects to the supervisor, starting it if none answers.
    async fn connect(&self) -> Result<Connection> {
        let reached = tokio::time::timeout(REACH_TIMEOUT, async {
            loop {
                if let Some(stream) = self.try_connect().await {
                    return Ok(listen(stream));
                }
                self.start_supervisor().await?;
            }
        });
        reached.await.unwrap_or_else(|_| {
            Err(Error::Timeout(format!(
                "no supervisor of {} answered within {REACH_TIMEOUT:?}",
                self.runs.display()
            )))
        })
    }

    async fn try_connect(&self) -> Option<UnixStream> {
        let (_handle, socket) = socket_via(&self.runs, SOCKET).ok()?;
        UnixStream::connect(socket).await.ok()
    }

    /// Starts a supervisor and waits for its word: it listens, or another
    /// one runs.
    async fn start_supervisor(&self) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.runs.join(LOG))
            .map_err(backend)?;
        let mut supervisor = tokio::process::Command::new(&self.command[0])
            .args(&self.command[1..])
            .arg(&self.runs)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| {
                backend(io::Error::new(
                    e.kind(),
                    format!("cannot start the supervisor {:?}: {e}", self.command[0]),
                ))
            })?;
        let mut word = String::new();
        if let Some(out) = supervisor.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut word).await;
        }
        // Tokio reaps the supervisor once it exits; it is not waited for
        // unless it said nothing.
        match word.trim() {
            "ready" => Ok(()),
            "running" => {
                tokio::time::sleep(RETRY).await;
                Ok(())
            }
            _ => {
                let status = supervisor.wait().await.map_err(backend)?;
                Err(backend(io::Error::other(format!(
                    "the supervisor of {} exited ({status}) without listening; see {}",
                    self.runs.display(),
                    self.runs.join(LOG).display()
                ))))
            }
        }
    }
}

/// Hears the supervisor's answers on `stream` until it closes.
fn listen(stream: UnixStream) -> Connection {
    let (answers, requests) = stream.into_split();
    let waiting: Waiting = Arc::new(Mutex::new(Some(HashMap::new())));
    let heard = waiting.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(answers).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            // `<request> <run> <words…>`: the words go to who asked.
            let Some((key, word)) = line
                .match_indices(' ')
                .nth(1)
                .map(|(at, _)| (&line[..at], &line[at + 1..]))
            else {
                continue;
            };
            let waiters = lock(&heard).as_mut().and_then(|w| w.remove(key));
            for waiter in waiters.into_iter().flatten() {
                let _ = waiter.send(word.to_owned());
            }
        }
        // Whoever still waits hears that it is gone.
        lock(&heard).take();
    });
    Connection { requests, waiting }
}
