//! The process runtime's output buffer: bounded, keeping the end.

use std::collections::VecDeque;

use crate::model::Logs;

/// A bounded byte buffer that keeps the most recent `limit` bytes.
#[derive(Debug)]
pub(super) struct LogBuffer {
    data: VecDeque<u8>,
    limit: usize,
    truncated: bool,
}

impl LogBuffer {
    pub(super) fn new(limit: usize) -> Self {
        LogBuffer {
            data: VecDeque::new(),
            limit,
            truncated: false,
        }
    }

    /// Appends `chunk`, dropping the oldest bytes past the limit.
    pub(super) fn push(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        if chunk.len() >= self.limit {
            if !self.data.is_empty() || chunk.len() > self.limit {
                self.truncated = true;
            }
            self.data.clear();
            self.data.extend(&chunk[chunk.len() - self.limit..]);
            return;
        }
        let overflow = (self.data.len() + chunk.len()).saturating_sub(self.limit);
        if overflow > 0 {
            self.data.drain(..overflow);
            self.truncated = true;
        }
        self.data.extend(chunk);
    }

    /// The last `max_bytes` bytes as text; `truncated` if anything before
    /// them was ever dropped.
    pub(super) fn tail(&self, max_bytes: usize) -> Logs {
        let len = self.data.len();
        let n = len.min(max_bytes);
        let bytes: Vec<u8> = self.data.range(len - n..).copied().collect();
        as_text(bytes, self.truncated || n < len)
    }
}

/// Output bytes as [`Logs`]. When `truncated`, a character cut in half at
/// the start is skipped rather than replaced.
pub(super) fn as_text(mut bytes: Vec<u8>, truncated: bool) -> Logs {
    if truncated {
        let cut = bytes
            .iter()
            .take(3)
            .take_while(|b| (**b & 0b1100_0000) == 0b1000_0000)
            .count();
        bytes.drain(..cut);
    }
    Logs {
        text: String::from_utf8_lossy(&bytes).into_owned(),
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_limit() {
        let mut b = LogBuffer::new(10);
        b.push(b"abc");
        b.push(b"def");
        assert_eq!(
            b.tail(usize::MAX),
            Logs {
                text: "abcdef".into(),
                truncated: false
            }
        );
    }

    #[test]
    fn exactly_the_limit_is_not_truncated() {
        let mut b = LogBuffer::new(6);
        b.push(b"abcdef");
        assert_eq!(b.tail(100).text, "abcdef");
        assert!(!b.tail(100).truncated);
        b.push(b"");
        assert!(!b.tail(100).truncated, "empty pushes drop nothing");
    }

    #[test]
    fn keeps_the_end_and_flags_truncation() {
        let mut b = LogBuffer::new(5);
        b.push(b"abc");
        b.push(b"defg");
        let logs = b.tail(usize::MAX);
        assert_eq!(logs.text, "cdefg");
        assert!(logs.truncated);
        assert!(b.data.len() <= 5);
        // The flag sticks.
        b.push(b"");
        assert!(b.tail(usize::MAX).truncated);
    }

    #[test]
    fn a_chunk_larger_than_the_limit_keeps_its_end() {
        let mut b = LogBuffer::new(4);
        b.push(b"0123456789");
        let logs = b.tail(usize::MAX);
        assert_eq!(logs.text, "6789");
        assert!(logs.truncated);

        let mut b = LogBuffer::new(4);
        b.push(b"x");
        b.push(b"wxyz");
        assert_eq!(b.tail(10).text, "wxyz");
        assert!(b.tail(10).truncated, "the earlier x was dropped");
    }

    #[test]
    fn bound_holds_over_many_pushes() {
        let mut b = LogBuffer::new(1000);
        for i in 0..1000 {
            b.push(format!("line {i}\n").as_bytes());
            assert!(b.data.len() <= 1000);
        }
        let logs = b.tail(usize::MAX);
        assert!(logs.truncated);
        assert!(logs.text.ends_with("line 999\n"));
    }

    #[test]
    fn max_bytes_keeps_the_end_and_flags_truncation() {
        let mut b = LogBuffer::new(100);
        b.push(b"hello world");
        let logs = b.tail(5);
        assert_eq!(logs.text, "world");
        assert!(logs.truncated);
        let all = b.tail(11);
        assert_eq!(all.text, "hello world");
        assert!(!all.truncated);
    }

    #[test]
    fn zero_limit_keeps_nothing() {
        let mut b = LogBuffer::new(0);
        b.push(b"abc");
        let logs = b.tail(100);
        assert_eq!(logs.text, "");
        assert!(logs.truncated);
    }

    #[test]
    fn a_character_cut_at_the_start_is_skipped() {
        let mut b = LogBuffer::new(100);
        b.push("aé€z".as_bytes()); // a, é (2 bytes), € (3 bytes), z
        let logs = b.tail(3); // the last two bytes of € plus z
        assert_eq!(logs.text, "z");
        assert!(logs.truncated);
        assert_eq!(b.tail(4).text, "€z");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut b = LogBuffer::new(100);
        b.push(b"ok \xff\n");
        assert_eq!(b.tail(100).text, "ok \u{fffd}\n");
    }
}
