//! The master's event stream: every task transition, worker health change
//! and drain, numbered, kept in a bounded buffer so a watcher can resume
//! from a cursor.
//!
//! A cursor names the master's epoch (its identity for this run) and the
//! last sequence number seen. A cursor from another epoch (a restart, a
//! takeover) or one older than the buffer cannot be resumed without a gap:
//! [`EventLog::watch`] says so with a [`Resync`] instead of skipping
//! silently, as a Kubernetes watch answers `410 Gone`.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch};

use crate::model::Timestamp;
use crate::sync::lock;

mod event;

pub use event::{Cursor, Event, MasterEvent, Resync};

struct Ring {
    last: u64,
    kept: VecDeque<Arc<Event>>,
}

impl Ring {
    /// The kept events after `seq`, or why they are not all kept.
    fn after(&self, seq: u64) -> Result<VecDeque<Arc<Event>>, Resync> {
        if seq > self.last {
            return Err(Resync::Ahead {
                after: seq,
                newest: self.last,
            });
        }
        let oldest = self.kept.front().map_or(self.last + 1, |e| e.seq);
        if seq + 1 < oldest {
            return Err(Resync::TooOld { after: seq, oldest });
        }
        let skip = usize::try_from(seq + 1 - oldest).unwrap_or(usize::MAX);
        Ok(self.kept.iter().skip(skip).cloned().collect())
    }
}

/// The numbered, bounded event buffer with live delivery.
pub struct EventLog {
    epoch: String,
    capacity: usize,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
    /// Set when the master stops: every watch ends, so no open stream
    /// holds a server's graceful shutdown.
    closed: watch::Sender<bool>,
}

impl fmt::Debug for EventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("epoch", &self.epoch)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// A log for the master run `epoch`, keeping the last `capacity`
    /// events (at least one).
    pub fn new(epoch: impl Into<String>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        EventLog {
            epoch: epoch.into(),
            capacity,
            ring: Mutex::new(Ring {
                last: 0,
                kept: VecDeque::with_capacity(capacity.min(4096)),
            }),
            live: broadcast::channel(1024).0,
            closed: watch::channel(false).0,
        }
    }

    /// Ends every watch (now and later): the master is stopping.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// This master run's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The cursor after the newest event.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch.clone(),
            seq: lock(&self.ring).last,
        }
    }

    /// Records an event and hands it to the live watchers.
    pub fn push(&self, at: Timestamp, kind: MasterEvent) -> Arc<Event> {
        let mut ring = lock(&self.ring);
        ring.last += 1;
        let event = Arc::new(Event {
            seq: ring.last,
            at,
            kind,
        });
        if ring.kept.len() == self.capacity {
            ring.kept.pop_front();
        }
        ring.kept.push_back(event.clone());
        // Sent under the lock, so live delivery is in seq order.
        let _ = self.live.send(event.clone());
        event
    }

    /// Live events only, from now on; a slow receiver may lag.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// A watch of every event after `from` (`None`: after the newest),
    /// or why `from` cannot be resumed without a gap.
    pub fn watch(self: &Arc<Self>, from: Option<&Cursor>) -> Result<EventWatch, Resync> {
        let ring = lock(&self.ring);
        let after = match from {
            None => ring.last,
            Some(c) if c.epoch != self.epoch => {
                return Err(Resync::OtherEpoch {
                    cursor: c.epoch.clone(),
                    current: self.epoch.clone(),
                })
            }
            Some(c) => c.seq,
        };
        let backlog = ring.after(after)?;
        // Subscribed under the lock: nothing falls between the backlog
        // and the live stream.
        let live = self.live.subscribe();
        drop(ring);
        Ok(EventWatch {
            log: self.clone(),
            last: after,
            backlog,
            live,
            closed: self.closed.subscribe(),
        })
    }
}

/// Events after a cursor, each once, in order.
pub struct EventWatch {
    log: Arc<EventLog>,
    last: u64,
    backlog: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    closed: watch::Receiver<bool>,
}

impl fmt::Debug for EventWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventWatch")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl EventWatch {
    /// The next event; `Err` if this watcher fell so far behind that the
    /// buffer no longer has what it missed. `None` once the log is closed.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>, Resync>> {
        loop {
            if *self.closed.borrow() {
                return None;
            }
            if let Some(e) = self.backlog.pop_front() {
                self.last = e.seq;
                return Some(Ok(e));
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.closed.changed() => return None,
            };
            match received {
                Ok(e) if e.seq <= self.last => {}
                Ok(e) => {
                    self.last = e.seq;
                    return Some(Ok(e));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    match lock(&self.log.ring).after(self.last) {
                        Ok(missed) => self.backlog = missed,
                        Err(why) => return Some(Err(why)),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The cursor after the last event returned.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.log.epoch.clone(),
            seq: self.last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskId;
    use proptest::prelude::*;

    fn submitted(n: u64) -> MasterEvent {
        MasterEvent::Submitted {
            id: TaskId::new(format!("t{n}")).unwrap(),
        }
    }

    fn log_with(capacity: usize, events: u64) -> Arc<EventLog> {
        let log = Arc::new(EventLog::new("m-1", capacity));
        for n in 1..=events {
            log.push(Timestamp::from_millis(n), submitted(n));
        }
        log
    }

    async fn take(w: &mut EventWatch, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        for _ in 0..n {
            seqs.push(w.next().await.unwrap().unwrap().seq);
        }
        seqs
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_say_why() {
        let c: Cursor = "m-1:a:42".parse().unwrap();
        assert_eq!((c.epoch.as_str(), c.seq), ("m-1:a", 42));
        assert_eq!(c.to_string(), "m-1:a:42");
        for bad in ["", "42", ":4", "m:x", "m:-1"] {
            let e = bad.parse::<Cursor>().unwrap_err().to_string();
            assert!(e.contains("cursor"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_cursor_from_another_epoch_or_past_the_buffer_is_told_to_resync() {
        let log = log_with(3, 10);
        let other = Cursor {
            epoch: "m-0".into(),
            seq: 9,
        };
        assert!(matches!(
            log.watch(Some(&other)),
            Err(Resync::OtherEpoch { .. })
        ));
        let old = Cursor {
            epoch: "m-1".into(),
            seq: 6,
        };
        assert_eq!(
            log.watch(Some(&old)).unwrap_err(),
            Resync::TooOld {
                after: 6,
                oldest: 8
            }
        );
        let ahead = Cursor {
            epoch: "m-1".into(),
            seq: 11,
        };
        assert!(matches!(log.watch(Some(&ahead)), Err(Resync::Ahead { .. })));
    }

    #[tokio::test]
    async fn closing_the_log_ends_every_watch() {
        let log = log_with(8, 2);
        let mut waiting = log.watch(None).unwrap();
        let mut behind = log.watch(Some(&log.cursor())).unwrap();
        log.close();
        assert!(waiting.next().await.is_none());
        assert!(behind.next().await.is_none());
        assert!(log.watch(None).unwrap().next().await.is_none());
    }

    #[tokio::test]
    async fn a_watch_from_now_sees_only_new_events() {
        let log = log_with(8, 5);
        let mut w = log.watch(None).unwrap();
        log.push(Timestamp::from_millis(6), submitted(6));
        assert_eq!(take(&mut w, 1).await, vec![6]);
        assert_eq!(w.cursor().to_string(), "m-1:6");
    }

    #[tokio::test]
    async fn a_lagging_watcher_catches_up_from_the_buffer_or_is_told_to_resync() {
        let log = Arc::new(EventLog::new("m-1", 5000));
        let mut w = log.watch(None).unwrap();
        for n in 1..=2000 {
            log.push(Timestamp::from_millis(n), submitted(n));
        }
        // The live channel holds 1024: the rest comes from the buffer.
        let seqs = take(&mut w, 2000).await;
        assert_eq!(seqs, (1..=2000).collect::<Vec<_>>());

        let small = Arc::new(EventLog::new("m-1", 10));
        let mut w = small.watch(None).unwrap();
        for n in 1..=2000 {
            small.push(Timestamp::from_millis(n), submitted(n));
        }
        assert!(matches!(w.next().await, Some(Err(Resync::TooOld { .. }))));
    }

    proptest! {
        /// Resuming from any kept cursor yields exactly the events after
        /// it, each once, in order, then the live ones.
        #[test]
        fn resuming_from_a_kept_cursor_has_no_gap_and_no_repeat(
            capacity in 1usize..20, events in 0u64..40, back in 0u64..40, more in 0u64..5,
        ) {
            let log = log_with(capacity, events);
            let seq = events.saturating_sub(back);
            let cursor = Cursor { epoch: "m-1".into(), seq };
            let kept_from = events.saturating_sub(capacity as u64) ;
            match log.watch(Some(&cursor)) {
                Ok(mut w) => {
                    prop_assert!(seq >= kept_from);
                    for n in events + 1..=events + more {
                        log.push(Timestamp::from_millis(n), submitted(n));
                    }
                    let want: Vec<u64> = (seq + 1..=events + more).collect();
                    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                    let got = rt.block_on(take(&mut w, want.len()));
                    prop_assert_eq!(got, want);
                }
                Err(Resync::TooOld { .. }) => prop_assert!(seq < kept_from),
                Err(other) => prop_assert!(false, "unexpected {other}"),
            }
        }
    }
}
