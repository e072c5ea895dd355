//! Following a supervised run's output file from its start, frame by frame,
//! until the run ended and the file is read to its end.

use std::io::{self, Read};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::backend;
use super::frames::next_frame;
use crate::output::OutputChunk;
use crate::runtime::ExitStatus;
use crate::Result;

/// How a run ended, as its watcher publishes it.
pub(super) type Outcome = Option<std::result::Result<ExitStatus, String>>;

/// How long a follower of a run's output file waits at its end before
/// looking again.
const FOLLOW_IDLE: Duration = Duration::from_millis(20);

/// Most bytes a follower reads from the file at once.
const FOLLOW_READ: u64 = 1 << 20;

/// Follows a run's output file from its start, sending each frame as a
/// chunk, until the run ended and the file is read to its end.
pub(super) async fn follow_file(
    path: PathBuf,
    mut ended: watch::Receiver<Outcome>,
    tx: tokio::sync::mpsc::Sender<Result<OutputChunk>>,
) {
    let mut file = None;
    let mut pending = Vec::new();
    let mut offset = 0u64;
    loop {
        // Looked at before reading: once ended, one more read gets all.
        let done = ended.borrow_and_update().is_some();
        if file.is_none() {
            file = match std::fs::File::open(&path) {
                Ok(f) => Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => {
                    let _ = tx.send(Err(backend(e))).await;
                    return;
                }
            };
        }
        let read = match file.as_mut() {
            Some(f) => f.take(FOLLOW_READ).read_to_end(&mut pending),
            None => Ok(0),
        };
        let read = match read {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(backend(e))).await;
                return;
            }
        };
        let mut used = 0;
        loop {
            match next_frame(&pending[used..]) {
                Ok(Some((stream, data, len))) => {
                    used += len;
                    if data.is_empty() {
                        continue;
                    }
                    let chunk = OutputChunk {
                        offset,
                        stream,
                        data: data.to_vec(),
                    };
                    offset = chunk.end();
                    if tx.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(backend(e))).await;
                    return;
                }
            }
        }
        pending.drain(..used);
        if read > 0 {
            continue;
        }
        if done {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(FOLLOW_IDLE) => {}
            _ = ended.changed() => {}
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::OutputStream;
    use crate::output::CHANNEL;
    use crate::process::frames::write_frame;

    async fn follow(path: PathBuf) -> Vec<OutputChunk> {
        let (_ended_tx, ended) = watch::channel(Some(Ok(ExitStatus::default())));
        let (tx, mut rx) = tokio::sync::mpsc::channel(CHANNEL);
        tokio::spawn(follow_file(path, ended, tx));
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            got.push(c.expect("a chunk"));
        }
        got
    }

    #[tokio::test]
    async fn an_ended_runs_file_is_read_frame_by_frame() {
        let dir = std::env::temp_dir().join(format!("cloudai-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let framed = dir.join("framed");
        let mut file = Vec::new();
        write_frame(&mut file, OutputStream::Stdout, b"out\n").unwrap();
        write_frame(&mut file, OutputStream::Stderr, b"err\n").unwrap();
        std::fs::write(&framed, &file).unwrap();
        let got = follow(framed).await;
        let seen: Vec<_> = got
            .iter()
            .map(|c| (c.offset, c.stream, c.data.as_slice()))
            .collect();
        assert_eq!(
            seen,
            [
                (0, OutputStream::Stdout, &b"out\n"[..]),
                (4, OutputStream::Stderr, &b"err\n"[..])
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
