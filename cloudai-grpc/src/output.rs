//! Output on the wire: chunks and where a reader starts, and the moves
//! between the core's channels and gRPC streams.

use std::pin::Pin;

use cloudai_core::master::TaskOutput;
use cloudai_core::output::{OutputChunk, OutputFrom, OutputStream, CHANNEL};
use cloudai_core::{Error, Result};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::convert::{from_status, to_status};
use crate::proto;
use crate::relay::{ends_on_error, relay};

/// A server's stream of output messages.
pub type OutputReplies<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Where a reader starts, and whether it follows.
pub fn from_to_proto(from: OutputFrom, follow: bool) -> proto::OutputFrom {
    let (offset, last_lines) = match from {
        OutputFrom::Offset(o) => (o, None),
        OutputFrom::LastLines(n) => (0, Some(n)),
    };
    proto::OutputFrom {
        offset,
        last_lines,
        follow,
    }
}

/// The start and follow flag a request asks for (absent: from the start,
/// not following).
pub fn from_from_proto(from: Option<proto::OutputFrom>) -> (OutputFrom, bool) {
    let from = from.unwrap_or_default();
    let start = match from.last_lines {
        Some(n) => OutputFrom::LastLines(n),
        None => OutputFrom::Offset(from.offset),
    };
    (start, from.follow)
}

impl From<OutputChunk> for proto::OutputChunk {
    fn from(c: OutputChunk) -> Self {
        let stream = match c.stream {
            OutputStream::Stdout => proto::OutputStream::Stdout,
            OutputStream::Stderr => proto::OutputStream::Stderr,
        };
        proto::OutputChunk {
            offset: c.offset,
            stream: stream.into(),
            data: c.data,
        }
    }
}

impl TryFrom<proto::OutputChunk> for OutputChunk {
    type Error = Status;

    fn try_from(c: proto::OutputChunk) -> Result<Self, Status> {
        let stream = match proto::OutputStream::try_from(c.stream) {
            Ok(proto::OutputStream::Stdout) => OutputStream::Stdout,
            Ok(proto::OutputStream::Stderr) => OutputStream::Stderr,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "output chunk at {} names no stream ({})",
                    c.offset, c.stream
                )))
            }
        };
        Ok(OutputChunk {
            offset: c.offset,
            stream,
            data: c.data,
        })
    }
}

impl From<TaskOutput> for proto::TaskOutputChunk {
    fn from(o: TaskOutput) -> Self {
        proto::TaskOutputChunk {
            attempt: o.attempt,
            chunk: Some(o.chunk.into()),
        }
    }
}

impl TryFrom<proto::TaskOutputChunk> for TaskOutput {
    type Error = Status;

    fn try_from(o: proto::TaskOutputChunk) -> Result<Self, Status> {
        let chunk = o
            .chunk
            .ok_or_else(|| Status::invalid_argument("task output without its chunk"))?;
        Ok(TaskOutput {
            attempt: o.attempt,
            chunk: chunk.try_into()?,
        })
    }
}

/// A core channel of output as a server's reply stream.
pub fn replies<C, P>(rx: mpsc::Receiver<Result<C>>) -> OutputReplies<P>
where
    C: Into<P> + Send + 'static,
    P: Send + 'static,
{
    Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(|item| item.map(Into::into).map_err(to_status)),
    )
}

/// A client's reply stream as a core channel; dropping the receiver ends
/// the call.
pub fn channel<P, C>(stream: tonic::Streaming<P>) -> mpsc::Receiver<Result<C>>
where
    P: TryInto<C, Error = Status> + Send + 'static,
    C: Send + 'static,
{
    let items = stream.map(|next| {
        ends_on_error(match next {
            Ok(m) => m.try_into().map_err(bad_chunk),
            Err(s) => Err(from_status(s)),
        })
    });
    relay(items, CHANNEL)
}

fn bad_chunk(s: Status) -> Error {
    Error::Backend {
        backend: "grpc",
        source: format!("malformed output: {}", s.message()).into(),
    }
}
