//! [`OutputLog`]: one run's output, kept up to a retention in segments by
//! offset, read from any offset, followed as it grows.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::{Follow, OutputChunk, OutputFrom, OutputStream, CHANNEL};
use crate::sync::lock;

/// Bytes a segment grows to before the next write starts another (writes
/// to the same stream share a segment, so many small writes cost little).
const SEGMENT: usize = 64 * 1024;

/// Bytes a follower takes from the log at a time.
const BATCH: usize = 256 * 1024;

/// Output written to one stream from `offset` on; of the first segment,
/// the first `skip` bytes are already dropped.
#[derive(Debug)]
struct Segment {
    offset: u64,
    stream: OutputStream,
    data: Vec<u8>,
    skip: usize,
}

impl Segment {
    fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

#[derive(Debug)]
struct State {
    segments: VecDeque<Segment>,
    /// Offset of the first byte still kept.
    start: u64,
    /// Offset just past the last byte written.
    end: u64,
    retain: u64,
    /// No more output will come.
    closed: bool,
}

/// The end of a run's output as text, for its stored result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tail {
    /// stdout and stderr in write order (invalid UTF-8 replaced).
    pub text: String,
    /// Offset of the tail's first byte in the output.
    pub offset: u64,
}

/// One run's output, its last `retain` bytes kept, indexed by offset.
#[derive(Debug)]
pub struct OutputLog {
    state: Mutex<State>,
    /// Bumped on every write and on close, to wake followers.
    changed: watch::Sender<u64>,
}

impl OutputLog {
    /// An empty log keeping the last `retain` bytes.
    pub fn new(retain: usize) -> Arc<OutputLog> {
        Self::starting_at(0, retain)
    }

    /// An empty log whose first byte will be at `offset` (the bytes before
    /// it counted as dropped): for a tail of an output kept elsewhere.
    pub fn starting_at(offset: u64, retain: usize) -> Arc<OutputLog> {
        Arc::new(OutputLog {
            state: Mutex::new(State {
                segments: VecDeque::new(),
                start: offset,
                end: offset,
                retain: retain as u64,
                closed: false,
            }),
            changed: watch::channel(0).0,
        })
    }

    /// Appends `data` written to `stream`, dropping the oldest bytes past
    /// the retention. Ignored once the log is closed.
    pub fn push(&self, stream: OutputStream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        {
            let mut s = lock(&self.state);
            if s.closed {
                return;
            }
            let end = s.end;
            match s.segments.back_mut() {
                Some(last) if last.stream == stream && last.data.len() < SEGMENT => {
                    last.data.extend_from_slice(data);
                }
                _ => s.segments.push_back(Segment {
                    offset: end,
                    stream,
                    data: data.to_vec(),
                    skip: 0,
                }),
            }
            s.end += data.len() as u64;
            s.trim();
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Moves the end on to `offset`, past bytes that never arrived (a
    /// runtime dropped them). What was kept goes too, so each kept byte
    /// stays at its offset and a reader sees one gap, where it is.
    pub fn skip_to(&self, offset: u64) {
        {
            let mut s = lock(&self.state);
            if s.closed || offset <= s.end {
                return;
            }
            s.segments.clear();
            s.start = offset;
            s.end = offset;
        }
        self.changed.send_modify(|v| *v += 1);
    }

    /// Marks the end of the output: followers finish once they have read it.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the output has ended.
    pub fn closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Offsets of the first byte kept and just past the last written.
    pub fn span(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.start, s.end)
    }

    /// The kept bytes from `from` up to `until` (at most `max` of them), a
    /// chunk per segment. Starts at the first byte kept if `from` is older.
    pub fn read(&self, from: u64, until: u64, max: usize) -> Vec<OutputChunk> {
        let s = lock(&self.state);
        let begin = from.max(s.start);
        let until = until.min(s.end);
        let first = s.segments.partition_point(|seg| seg.end() <= begin);
        let mut left = max as u64;
        let mut chunks = Vec::new();
        for seg in s.segments.range(first..) {
            let lo = begin.max(seg.offset + seg.skip as u64);
            let hi = seg.end().min(until).min(lo.saturating_add(left));
            if hi <= lo {
                break;
            }
            let (a, b) = ((lo - seg.offset) as usize, (hi - seg.offset) as usize);
            chunks.push(OutputChunk {
                offset: lo,
                stream: seg.stream,
                data: seg.data[a..b].to_vec(),
            });
            left -= hi - lo;
        }
        chunks
    }

    /// The offset where the last `lines` kept lines start (a final line
    /// without its newline counts as one); the first byte kept if fewer
    /// are kept.
    pub fn last_lines(&self, lines: u64) -> u64 {
        let s = lock(&self.state);
        if lines == 0 {
            return s.end;
        }
        let mut seen = 0;
        let mut at = s.end;
        for seg in s.segments.iter().rev() {
            for (i, b) in seg.data[seg.skip..].iter().enumerate().rev() {
                let offset = seg.offset + (seg.skip + i) as u64;
                // The newline ending the output closes the last line; it
                // does not start another.
                if *b == b'\n' && offset + 1 != s.end {
                    seen += 1;
                    if seen == lines {
                        return offset + 1;
                    }
                }
                at = offset;
            }
        }
        at.max(s.start)
    }

    /// The last `max_bytes` kept, as text; a character cut in half at the
    /// start is skipped rather than replaced. The text ends where the
    /// output ends, at the same offset: exact for UTF-8 output; for other
    /// output (an invalid byte becomes a 3-byte U+FFFD) the text is placed
    /// to end there too, its start cut if it would reach before offset 0,
    /// so a reader resuming at the output's end gets nothing twice.
    pub fn tail(&self, max_bytes: usize) -> Tail {
        let (start, end) = self.span();
        let from = start.max(end.saturating_sub(max_bytes as u64));
        let mut bytes = Vec::with_capacity((end - from) as usize);
        for c in self.read(from, end, usize::MAX) {
            bytes.extend_from_slice(&c.data);
        }
        let cut = if from > 0 {
            bytes
                .iter()
                .take(3)
                .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
                .count()
        } else {
            0
        };
        let mut text = String::from_utf8_lossy(&bytes[cut..]).into_owned();
        let excess = text
            .len()
            .saturating_sub(usize::try_from(end).unwrap_or(usize::MAX));
        if let Some(keep) = (excess..=text.len()).find(|i| text.is_char_boundary(*i)) {
            text.drain(..keep);
        }
        Tail {
            offset: end.saturating_sub(text.len() as u64),
            text,
        }
    }

    /// A follower from `from`. Following, it waits for more output until
    /// the log is closed; otherwise it ends at what is written now. It
    /// stops when its receiver is dropped.
    pub fn follow(self: &Arc<Self>, from: OutputFrom, keep_following: bool) -> Follow {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let log = self.clone();
        let mut changed = self.changed.subscribe();
        let mut next = match from {
            OutputFrom::Offset(o) => o,
            OutputFrom::LastLines(n) => self.last_lines(n),
        };
        let until = if keep_following {
            u64::MAX
        } else {
            self.span().1
        };
        tokio::spawn(async move {
            loop {
                changed.borrow_and_update();
                let closed = log.closed();
                let chunks = log.read(next, until, BATCH);
                if chunks.is_empty() {
                    // Closed before the read, or not following: all sent.
                    if closed || !keep_following {
                        return;
                    }
                    tokio::select! {
                        _ = changed.changed() => {}
                        () = tx.closed() => return,
                    }
                    continue;
                }
                for c in chunks {
                    next = c.end();
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

impl State {
    /// Drops the oldest bytes past the retention.
    fn trim(&mut self) {
        let keep_from = self.end.saturating_sub(self.retain);
        while let Some(first) = self.segments.front_mut() {
            if first.end() <= keep_from {
                self.segments.pop_front();
            } else {
                first.skip = first
                    .skip
                    .max((keep_from.saturating_sub(first.offset)) as usize);
                break;
            }
        }
        self.start = self.start.max(keep_from);
    }
}

#[cfg(test)]
mod tests;
