//! A container's output, every byte once.
//!
//! - **Containers this runtime starts** are attached to between create and
//!   start, and the attach stream (the container's stdio as the daemon
//!   copies it, apart from its log driver) is copied into an
//!   [`OutputLog`] that `output` follows. The daemon's log is no good for
//!   this: with the common `max-size`/`max-file` options it rotates, and a
//!   follower of a rotating log skips and repeats (4 MB into a 10 MB
//!   json-file log came back with whole megabytes missing).
//! - **Containers found running** (adopted after the worker restarted) have
//!   only the daemon's log: it is followed with timestamps, and since the
//!   follow stream of Docker 20.10 can end when the container stops before
//!   it delivered the last of the output, the log is read again from a
//!   little before the newest frame sent, skipping the frames already
//!   sent, until the container has stopped and a read brings nothing new.
//!   A frame is known by its time, its stream and its place among the
//!   frames of that time and stream (the daemon stamps a whole read from
//!   the container's pipe, then splits it into lines). The log is in the
//!   order the daemon wrote it, but stdout's and stderr's times come from
//!   two copiers, so it is not quite in time order; the window covers
//!   that. What the log driver dropped or rotated away is gone.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use std::pin::Pin;
use std::sync::Arc;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{AttachContainerOptions, LogsOptions};
use bollard::Docker;
use cloudai_core::output::OutputLog;
use cloudai_core::runtime::{OutputChunk, OutputStream};
use cloudai_core::{Error, Result};
use futures_util::Stream;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use crate::backend;

/// How long after the follow ended (or a catch-up brought more) the log is
/// read again.
const SETTLE: Duration = Duration::from_millis(100);
/// At most this many catch-up reads (a container stopped and started
/// again keeps running; its output then ends here).
const CATCH_UPS: usize = 50;

/// How far before the newest frame sent a catch-up read starts, seconds.
const WINDOW: i64 = 2;

/// A log frame's time: seconds since the epoch, and nanoseconds.
type Stamp = (i64, u32);

/// Most bytes one chunk gathers from consecutive frames of a stream.
const CHUNK: usize = 64 * 1024;

/// What was sent so far.
#[derive(Debug, Default)]
struct Sent {
    offset: u64,
    /// The newest frame's second.
    newest: Option<i64>,
    /// The frames sent within the window before the newest, and the same
    /// in the order sent (to forget the oldest).
    recent: HashSet<Frame>,
    order: VecDeque<Frame>,
}

/// A frame: its time, stream, and place among the frames of both.
type Frame = (Stamp, OutputStream, usize);

impl Sent {
    /// Records `frame`; false if it was sent before.
    fn add(&mut self, frame: Frame) -> bool {
        if !self.recent.insert(frame) {
            return false;
        }
        let newest = self.newest.map_or(frame.0 .0, |n| n.max(frame.0 .0));
        self.newest = Some(newest);
        self.order.push_back(frame);
        while let Some(old) = self.order.front() {
            if old.0 .0 >= newest - WINDOW {
                break;
            }
            self.recent.remove(old);
            self.order.pop_front();
        }
        true
    }
}

/// Numbers each stream's frames among those of the same time (frames of
/// one time and stream are consecutive in that stream).
#[derive(Debug, Default)]
struct Places {
    stdout: Option<(Stamp, usize)>,
    stderr: Option<(Stamp, usize)>,
}

impl Places {
    fn frame(&mut self, stamp: Stamp, stream: OutputStream) -> Frame {
        let last = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        let place = match last {
            Some((at, n)) if *at == stamp => *n + 1,
            _ => 0,
        };
        *last = Some((stamp, place));
        (stamp, stream, place)
    }
}

/// Attaches to created container `id` (before it starts) and copies its
/// output into a log keeping `retain` bytes, closed when the output ends.
pub(crate) async fn attach(docker: &Docker, id: &str, retain: usize) -> Result<Arc<OutputLog>> {
    let options = AttachContainerOptions {
        stdout: true,
        stderr: true,
        stream: true,
        logs: false,
        ..Default::default()
    };
    let attached = docker
        .attach_container(id, Some(options))
        .await
        .map_err(backend)?;
    let log = OutputLog::new(retain);
    tokio::spawn(copy(attached.output, log.clone(), id.to_string()));
    Ok(log)
}

type Frames = Pin<Box<dyn Stream<Item = std::result::Result<LogOutput, DockerError>> + Send>>;

/// Copies an attach stream into `log` until it ends.
async fn copy(mut frames: Frames, log: Arc<OutputLog>, id: String) {
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(LogOutput::StdErr { message }) => log.push(OutputStream::Stderr, &message),
            Ok(
                LogOutput::StdOut { message }
                | LogOutput::Console { message }
                | LogOutput::StdIn { message },
            ) => log.push(OutputStream::Stdout, &message),
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "the container's output stream broke");
                break;
            }
        }
    }
    log.close();
}

/// Sends the output of container `id`, which this runtime did not start,
/// to `tx` from the start of the daemon's log until it ended.
pub(crate) async fn follow_log(docker: Docker, id: String, tx: mpsc::Sender<Result<OutputChunk>>) {
    let mut sent = Sent::default();
    let result = async {
        read(&docker, &id, true, &mut sent, &tx).await?;
        for _ in 0..CATCH_UPS {
            if tx.is_closed() {
                break;
            }
            tokio::time::sleep(SETTLE).await;
            // The daemon marks the container stopped once it copied its
            // output into the log: a read after that which brings nothing
            // new has all of it.
            let stopped = !running(&docker, &id).await?;
            if !read(&docker, &id, false, &mut sent, &tx).await? && stopped {
                break;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
}

/// Whether container `id` still runs.
async fn running(docker: &Docker, id: &str) -> Result<bool> {
    let inspected = docker.inspect_container(id, None).await.map_err(backend)?;
    Ok(inspected.state.and_then(|s| s.running).unwrap_or(false))
}

/// Reads the log (following, or what is there now) from a little before
/// the newest frame sent, sending the frames not sent yet, consecutive
/// ones of a stream gathered into one chunk. True if it sent any.
async fn read(
    docker: &Docker,
    id: &str,
    follow: bool,
    sent: &mut Sent,
    tx: &mpsc::Sender<Result<OutputChunk>>,
) -> Result<bool> {
    let since = sent.newest.map_or(0, |n| n - WINDOW).max(0);
    let options = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        timestamps: true,
        since: i32::try_from(since).unwrap_or(0),
        tail: "all".into(),
        ..Default::default()
    };
    let mut stream = docker.logs(id, Some(options));
    let mut places = Places::default();
    let mut any = false;
    let mut gathered: Option<OutputChunk> = None;
    loop {
        // While gathering, take only frames that are ready now.
        let frame = match gathered.is_some() {
            true => match stream.next().now_or_never() {
                Some(frame) => frame,
                None => {
                    if !send(tx, gathered.take()).await {
                        return Ok(any);
                    }
                    continue;
                }
            },
            false => tokio::select! {
                frame = stream.next() => frame,
                () = tx.closed() => return Ok(any),
            },
        };
        let (stream_of, message) = match frame {
            None => {
                send(tx, gathered.take()).await;
                return Ok(any);
            }
            Some(Err(e)) => return Err(backend(e)),
            Some(Ok(LogOutput::StdErr { message })) => (OutputStream::Stderr, message),
            Some(Ok(
                LogOutput::StdOut { message }
                | LogOutput::Console { message }
                | LogOutput::StdIn { message },
            )) => (OutputStream::Stdout, message),
        };
        let Some((stamp, data)) = split_stamp(&message) else {
            return Err(Error::Backend {
                backend: "docker",
                source: "a log frame without its timestamp".into(),
            });
        };
        if !sent.add(places.frame(stamp, stream_of)) || data.is_empty() {
            continue;
        }
        any = true;
        match gathered.as_mut() {
            Some(g) if g.stream == stream_of && g.data.len() < CHUNK => {
                g.data.extend_from_slice(data);
            }
            _ => {
                if !send(tx, gathered.take()).await {
                    return Ok(any);
                }
                gathered = Some(OutputChunk {
                    offset: sent.offset,
                    stream: stream_of,
                    data: data.to_vec(),
                });
            }
        }
        sent.offset += data.len() as u64;
    }
}

/// Sends a gathered chunk, if any; false if the receiver is gone.
async fn send(tx: &mpsc::Sender<Result<OutputChunk>>, chunk: Option<OutputChunk>) -> bool {
    match chunk {
        Some(c) => tx.send(Ok(c)).await.is_ok(),
        None => true,
    }
}

/// A frame with timestamps on: `2026-12-01T10:37:15.950167Z payload`.
fn split_stamp(frame: &[u8]) -> Option<(Stamp, &[u8])> {
    let space = frame.iter().position(|b| *b == b' ')?;
    let stamp = std::str::from_utf8(&frame[..space]).ok()?;
    Some((parse_stamp(stamp)?, &frame[space + 1..]))
}

/// An RFC 3339 time in UTC (`Z`) with up to nine digits of fraction.
fn parse_stamp(s: &str) -> Option<Stamp> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(str::parse::<i64>);
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = format!("{frac:0<9}").parse().ok()?;
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + sec;
    Some((secs, nanos))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_epoch_time() {
        assert_eq!(parse_stamp("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_stamp("2026-12-01T10:37:15.950167Z"),
            Some((1_796_121_435, 950_167_000))
        );
        assert_eq!(
            parse_stamp("2000-03-01T00:00:01.123456789Z"),
            Some((951_868_801, 123_456_789))
        );
        assert_eq!(parse_stamp("2026-12-01T10:37:15"), None, "UTC only");
        assert_eq!(parse_stamp("2026-12-01T10:37:15.1234567890Z"), None);
        let (stamp, data) = split_stamp(b"2026-12-01T10:37:15.5Z hello world\n").unwrap();
        assert_eq!(
            (stamp, data),
            ((1_796_121_435, 500_000_000), &b"hello world\n"[..])
        );
    }
}
