//! The event stream on the wire: events with their cursors, a bookmark
//! first, and the moves between the core's watch and a gRPC stream.

use std::pin::Pin;
use std::sync::Arc;

use cloudai_core::events::{Cursor, Event, EventWatch, MasterEvent, Resync};
use cloudai_core::model::Timestamp;
use cloudai_core::Result;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::convert::{self, from_status, health, health_to_wire, status_to_wire};
use crate::proto::{self, event::Kind};
use crate::relay::{ends_on_error, relay};

/// A server's stream of events.
pub type EventReplies = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

/// An event as a watcher receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Resume from here to get the events after this one.
    pub cursor: Cursor,
    /// When the master recorded it.
    pub at: Timestamp,
    /// What happened; `None` for the bookmark that opens a watch.
    pub kind: Option<MasterEvent>,
}

fn cursor_at(epoch: &str, seq: u64) -> String {
    Cursor {
        epoch: epoch.to_string(),
        seq,
    }
    .to_string()
}

fn to_proto(epoch: &str, e: &Event) -> proto::Event {
    let kind = match &e.kind {
        MasterEvent::Submitted { id } => Kind::Submitted(proto::TaskSubmitted {
            task_id: id.to_string(),
        }),
        MasterEvent::Task {
            id,
            from,
            to,
            worker,
            attempt,
        } => Kind::Task(proto::TaskTransition {
            task_id: id.to_string(),
            from: status_to_wire(*from),
            to: status_to_wire(*to),
            worker_id: worker.as_ref().map(ToString::to_string),
            attempt: *attempt,
        }),
        MasterEvent::Worker { id, health } => Kind::Worker(proto::WorkerHealthChange {
            worker_id: id.to_string(),
            health: health_to_wire(*health),
        }),
        MasterEvent::Drain { id, draining } => Kind::Drain(proto::WorkerDrain {
            worker_id: id.to_string(),
            draining: *draining,
        }),
        MasterEvent::Again {
            id,
            attempt,
            cause,
            not_before,
        } => Kind::Again(proto::TaskAgain {
            task_id: id.to_string(),
            attempt: *attempt,
            cause: cause.as_str().into(),
            not_before_ms: not_before.map(Timestamp::as_millis),
        }),
    };
    proto::Event {
        cursor: cursor_at(epoch, e.seq),
        at_ms: e.at.as_millis(),
        kind: Some(kind),
    }
}

/// The events of `watch` as a stream; it ends with a `Resync` if the
/// watcher fell behind the buffer, or when the log is closed.
pub(crate) fn watch_stream(
    watch: EventWatch,
) -> impl Stream<Item = std::result::Result<Arc<Event>, Resync>> + Send {
    futures_util::stream::unfold(Some(watch), |watch| async move {
        let mut watch = watch?;
        match watch.next().await? {
            Ok(e) => Some((Ok(e), Some(watch))),
            Err(why) => Some((Err(why), None)),
        }
    })
}

/// Streams `watch`: a bookmark at its cursor first, then every event,
/// ending with `FAILED_PRECONDITION` if the watcher fell behind the buffer.
pub fn serve(watch: EventWatch, now: Timestamp) -> EventReplies {
    let start = watch.cursor();
    let bookmark = proto::Event {
        cursor: start.to_string(),
        at_ms: now.as_millis(),
        kind: Some(Kind::Bookmark(proto::Bookmark {})),
    };
    let events = watch_stream(watch).map(move |next| {
        next.map(|e| to_proto(&start.epoch, &e))
            .map_err(|why| Status::failed_precondition(why.to_string()))
    });
    let replies = tokio_stream::once(Ok(bookmark))
        .chain(events)
        .map(ends_on_error);
    Box::pin(ReceiverStream::new(relay(replies, 256)))
}

impl TryFrom<proto::Event> for Watched {
    type Error = Status;

    fn try_from(e: proto::Event) -> Result<Self, Status> {
        let cursor = e
            .cursor
            .parse()
            .map_err(|err: cloudai_core::model::ValidationError| {
                Status::invalid_argument(err.to_string())
            })?;
        let kind = match e.kind {
            None => return Err(Status::invalid_argument("an event names no kind")),
            Some(Kind::Bookmark(_)) => None,
            Some(Kind::Submitted(s)) => Some(MasterEvent::Submitted {
                id: convert::task_id(&s.task_id)?,
            }),
            Some(Kind::Task(t)) => Some(MasterEvent::Task {
                id: convert::task_id(&t.task_id)?,
                from: convert::status(t.from)?,
                to: convert::status(t.to)?,
                worker: t.worker_id.as_deref().map(convert::worker_id).transpose()?,
                attempt: t.attempt,
            }),
            Some(Kind::Worker(w)) => Some(MasterEvent::Worker {
                id: convert::worker_id(&w.worker_id)?,
                health: health(w.health)?,
            }),
            Some(Kind::Drain(d)) => Some(MasterEvent::Drain {
                id: convert::worker_id(&d.worker_id)?,
                draining: d.draining,
            }),
            Some(Kind::Again(a)) => Some(MasterEvent::Again {
                id: convert::task_id(&a.task_id)?,
                attempt: a.attempt,
                cause: a
                    .cause
                    .parse()
                    .map_err(|e: cloudai_core::model::ValidationError| {
                        Status::invalid_argument(e.to_string())
                    })?,
                not_before: a.not_before_ms.map(Timestamp::from_millis),
            }),
        };
        Ok(Watched {
            cursor,
            at: Timestamp::from_millis(e.at_ms),
            kind,
        })
    }
}

/// A client's view of the stream: each event, or the error that ended it.
pub fn receive(stream: tonic::Streaming<proto::Event>) -> mpsc::Receiver<Result<Watched>> {
    let events =
        stream.map(|item| ends_on_error(item.and_then(Watched::try_from).map_err(from_status)));
    relay(events, 256)
}

/// An event's fields as JSON, the one shape the CLI's `events --json` and
/// the dashboard's stream share: `kind` (`submitted`, `task`, `worker`,
/// `drain`, `again`) and what that kind names.
pub fn to_json(kind: &MasterEvent) -> serde_json::Value {
    match kind {
        MasterEvent::Submitted { id } => {
            serde_json::json!({ "kind": "submitted", "task": id.as_str() })
        }
        MasterEvent::Task {
            id,
            from,
            to,
            worker,
            attempt,
        } => serde_json::json!({
            "kind": "task", "task": id.as_str(), "from": from.as_str(), "to": to.as_str(),
            "worker": worker.as_ref().map(|w| w.as_str()), "attempt": attempt,
        }),
        MasterEvent::Worker { id, health } => {
            serde_json::json!({ "kind": "worker", "worker": id.as_str(), "health": health.as_str() })
        }
        MasterEvent::Drain { id, draining } => {
            serde_json::json!({ "kind": "drain", "worker": id.as_str(), "draining": draining })
        }
        MasterEvent::Again {
            id,
            attempt,
            cause,
            not_before,
        } => serde_json::json!({
            "kind": "again", "task": id.as_str(), "attempt": attempt, "cause": cause.as_str(),
            "not_before_ms": not_before.map(|t| t.as_millis()),
        }),
    }
}
