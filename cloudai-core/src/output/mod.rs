//! A task's output as bytes at offsets: what a run wrote, kept by its
//! worker and handed to followers from any offset, each byte at most once.
//!
//! - Offsets count the bytes a run wrote, stdout and stderr together, from
//!   0 at its start; every attempt of a task starts again at 0.
//! - A chunk says which stream its bytes came from, so a client can write
//!   each to its own stream.
//! - A follower asks from an offset (or from the last lines) and receives
//!   chunks in order; a chunk starting past where the follower asked means
//!   the bytes between were dropped (the retention moved past them), and
//!   the gap says how many.
//!
//! Runtimes hand the worker a [`Follow`] of what a container writes; the
//! worker keeps it in an [`OutputLog`] bounded by its retention; the
//! master relays a [`Follow`] from the worker to its client.

use serde::{Deserialize, Serialize};

mod log;

pub use log::{OutputLog, Tail};

/// Which of a process's output streams bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Bytes of a run's output at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// Offset of the first byte in the run's output.
    pub offset: u64,
    /// The stream they were written to.
    pub stream: OutputStream,
    /// The bytes.
    pub data: Vec<u8>,
}

impl OutputChunk {
    /// The offset just past this chunk.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// Where a follower starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFrom {
    /// At this byte offset (0: from the start). Bytes before it are never
    /// sent; an offset past what was written waits for the bytes to reach it.
    Offset(u64),
    /// At the start of the last this many lines retained.
    LastLines(u64),
}

/// A run's output from where a follower asked, in order; the channel
/// closes at the end of the output (or, for a reader not following, at the
/// end of what was written when it asked). An error item ends it early;
/// dropping the receiver stops the sender. A runtime hands the worker one
/// from offset 0 (see [`ContainerRuntime::output`](crate::runtime::ContainerRuntime::output)).
pub type Follow = tokio::sync::mpsc::Receiver<crate::Result<OutputChunk>>;

/// How many chunks a follower's channel holds before its sender
/// waits for the receiver.
pub const CHANNEL: usize = 16;
