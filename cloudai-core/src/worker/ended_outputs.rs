//! The output of runs that ended, kept a while for a follower that comes
//! late (`run` of a task that ends at once, `logs` soon after the end):
//! each for the linger time at most, together within a byte budget, the
//! oldest dropped first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{RunningTask, Timestamp};
use crate::output::OutputLog;

#[derive(Debug)]
pub(super) struct EndedOutputs {
    linger: Duration,
    budget: u64,
    /// Oldest first, with when each run ended and its size.
    kept: VecDeque<(RunningTask, Arc<OutputLog>, Timestamp, u64)>,
    bytes: u64,
}

impl EndedOutputs {
    pub(super) fn new(linger: Duration, budget: usize) -> Self {
        EndedOutputs {
            linger,
            budget: budget as u64,
            kept: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Keeps the output of `run`, which ended at `now`.
    pub(super) fn keep(&mut self, run: RunningTask, output: Arc<OutputLog>, now: Timestamp) {
        self.expire(now);
        let (start, end) = output.span();
        let size = end - start;
        self.kept.push_back((run, output, now, size));
        self.bytes += size;
        while self.bytes > self.budget {
            let Some((_, _, _, size)) = self.kept.pop_front() else {
                break;
            };
            self.bytes -= size;
        }
    }

    /// The output of ended run `run`, if still kept.
    pub(super) fn get(&mut self, run: &RunningTask, now: Timestamp) -> Option<Arc<OutputLog>> {
        self.expire(now);
        self.kept
            .iter()
            .rev()
            .find(|(r, ..)| r == run)
            .map(|(_, o, ..)| o.clone())
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some((_, _, ended, size)) = self.kept.front() {
            if now.saturating_since(*ended) < self.linger {
                break;
            }
            self.bytes -= size;
            self.kept.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskId;
    use crate::output::OutputStream;

    fn run(t: &str) -> RunningTask {
        RunningTask {
            task: TaskId::new(t).unwrap(),
            attempt: 1,
        }
    }

    fn output(bytes: usize) -> Arc<OutputLog> {
        let log = OutputLog::new(1 << 20);
        log.push(OutputStream::Stdout, &vec![b'x'; bytes]);
        log
    }

    #[test]
    fn outputs_go_after_the_linger_time() {
        let mut e = EndedOutputs::new(Duration::from_secs(60), 1000);
        e.keep(run("a"), output(10), Timestamp::from_millis(0));
        e.keep(run("b"), output(10), Timestamp::from_millis(30_000));
        assert!(e.get(&run("a"), Timestamp::from_millis(59_999)).is_some());
        assert!(e.get(&run("a"), Timestamp::from_millis(60_000)).is_none());
        assert!(e.get(&run("b"), Timestamp::from_millis(60_000)).is_some());
        assert_eq!(e.bytes, 10);
    }

    #[test]
    fn the_oldest_go_first_past_the_budget() {
        let mut e = EndedOutputs::new(Duration::from_secs(60), 100);
        let t = Timestamp::from_millis(0);
        e.keep(run("a"), output(60), t);
        e.keep(run("b"), output(30), t);
        e.keep(run("c"), output(30), t);
        assert!(e.get(&run("a"), t).is_none());
        assert!(e.get(&run("b"), t).is_some() && e.get(&run("c"), t).is_some());
        assert_eq!(e.bytes, 60);
    }
}
