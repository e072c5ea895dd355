use proptest::prelude::*;

use super::*;
use OutputStream::{Stderr, Stdout};

fn bytes(chunks: &[OutputChunk]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.data.clone()).collect()
}

async fn collect(mut f: Follow) -> Vec<OutputChunk> {
    let mut got = Vec::new();
    while let Some(c) = f.recv().await {
        got.push(c.expect("a log follower never fails"));
    }
    got
}

#[test]
fn reads_from_any_offset_with_streams() {
    let log = OutputLog::new(1 << 20);
    log.push(Stdout, b"hello ");
    log.push(Stderr, b"oops\n");
    log.push(Stdout, b"world\n");
    let all = log.read(0, u64::MAX, usize::MAX);
    assert_eq!(bytes(&all), b"hello oops\nworld\n");
    assert_eq!(
        all.iter().map(|c| (c.offset, c.stream)).collect::<Vec<_>>(),
        [(0, Stdout), (6, Stderr), (11, Stdout)]
    );
    let mid = log.read(8, u64::MAX, 5);
    assert_eq!(bytes(&mid), b"ps\nwo");
    assert_eq!(mid[0].offset, 8);
    assert!(log.read(17, u64::MAX, 10).is_empty());
}

#[test]
fn retention_drops_the_oldest_and_reads_start_at_what_is_kept() {
    let log = OutputLog::new(10);
    log.push(Stdout, b"0123456789");
    log.push(Stdout, b"abcde");
    assert_eq!(log.span(), (5, 15));
    let got = log.read(0, u64::MAX, usize::MAX);
    assert_eq!(got[0].offset, 5, "the first chunk's offset shows the gap");
    assert_eq!(bytes(&got), b"56789abcde");
    let none = OutputLog::new(0);
    none.push(Stderr, b"gone");
    assert_eq!(none.span(), (4, 4));
    assert!(none.read(0, u64::MAX, 100).is_empty());
}

#[test]
fn last_lines_starts_at_a_line() {
    let log = OutputLog::new(1 << 20);
    log.push(Stdout, b"one\ntwo\nthree\n");
    assert_eq!(log.last_lines(1), 8);
    assert_eq!(log.last_lines(2), 4);
    assert_eq!(log.last_lines(3), 0);
    assert_eq!(log.last_lines(9), 0);
    assert_eq!(log.last_lines(0), 14);
    log.push(Stdout, b"four");
    assert_eq!(log.last_lines(1), 14, "an unfinished last line counts");
}

#[test]
fn tail_keeps_the_end_and_its_offset() {
    let log = OutputLog::new(1 << 20);
    log.push(Stdout, "aé€z".as_bytes());
    assert_eq!(
        log.tail(100),
        Tail {
            text: "aé€z".into(),
            offset: 0
        }
    );
    // The last two bytes of € plus z: the cut character is skipped.
    assert_eq!(
        log.tail(3),
        Tail {
            text: "z".into(),
            offset: 6
        }
    );
}

#[tokio::test]
async fn a_follower_receives_what_is_written_until_the_close() {
    let log = OutputLog::new(1 << 20);
    log.push(Stdout, b"a");
    let f = log.follow(OutputFrom::Offset(0), true);
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..100u8 {
                log.push(if i % 3 == 0 { Stderr } else { Stdout }, &[i]);
                tokio::task::yield_now().await;
            }
            log.close();
        })
    };
    let got = collect(f).await;
    writer.await.unwrap();
    let mut want = vec![b'a'];
    want.extend(0..100u8);
    assert_eq!(bytes(&got), want);
}

#[tokio::test]
async fn a_reader_not_following_ends_at_what_was_written() {
    let log = OutputLog::new(1 << 20);
    log.push(Stdout, b"line 1\nline 2\n");
    let got = collect(log.follow(OutputFrom::LastLines(1), false)).await;
    assert_eq!(bytes(&got), b"line 2\n");
    assert_eq!(got[0].offset, 7);
    assert!(!log.closed(), "it ended without the log closing");
}

#[tokio::test]
async fn a_follower_past_the_end_waits_for_its_offset() {
    let log = OutputLog::new(1 << 20);
    let f = log.follow(OutputFrom::Offset(3), true);
    log.push(Stdout, b"abcdef");
    log.close();
    let got = collect(f).await;
    assert_eq!((got[0].offset, bytes(&got)), (3, b"def".to_vec()));
}

#[tokio::test]
async fn dropping_the_follower_stops_its_sender() {
    let log = OutputLog::new(1 << 20);
    drop(log.follow(OutputFrom::Offset(0), true));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(
        Arc::strong_count(&log),
        1,
        "the follower task let go of the log"
    );
}

fn writes() -> impl Strategy<Value = Vec<(bool, Vec<u8>)>> {
    prop::collection::vec(
        (
            any::<bool>(),
            prop::collection::vec(prop::sample::select(b"ab\n".to_vec()), 0..200),
        ),
        0..60,
    )
}

proptest! {
    /// Reading from any offset in batches of any size returns, once each
    /// and in order, exactly the written bytes from there (or from the
    /// first kept), each with the stream it was written to; the kept span
    /// never exceeds the retention.
    #[test]
    fn reads_return_each_kept_byte_once(
        ws in writes(), retain in 0usize..3000, from in 0u64..6000, batch in 1usize..700,
    ) {
        let log = OutputLog::new(retain);
        let mut model: Vec<(OutputStream, u8)> = Vec::new();
        for (err, data) in &ws {
            let stream = if *err { Stderr } else { Stdout };
            log.push(stream, data);
            model.extend(data.iter().map(|b| (stream, *b)));
            let (start, end) = log.span();
            prop_assert!(end - start <= retain as u64);
            prop_assert_eq!(end, model.len() as u64);
        }
        let (start, end) = log.span();
        let mut next = from;
        let mut got = Vec::new();
        loop {
            let chunks = log.read(next, u64::MAX, batch);
            if chunks.is_empty() { break; }
            let n: usize = chunks.iter().map(|c| c.data.len()).sum();
            prop_assert!(n <= batch);
            for c in chunks {
                prop_assert!(c.offset >= next, "never a byte twice");
                prop_assert!(c.offset == next || next < start, "gaps only before the kept span");
                got.extend(c.data.iter().map(|b| (c.stream, *b)));
                next = c.end();
            }
        }
        let want_from = from.max(start).min(end) as usize;
        prop_assert_eq!(got, model[want_from..].to_vec());
    }

    /// `last_lines(n)` starts where the model's last n lines start.
    #[test]
    fn last_lines_matches_a_model(ws in writes(), n in 0u64..30) {
        let log = OutputLog::new(1 << 20);
        let mut all = Vec::new();
        for (_, data) in &ws {
            log.push(Stdout, data);
            all.extend_from_slice(data);
        }
        let body = all.strip_suffix(b"\n").unwrap_or(&all);
        let newlines: Vec<usize> = body.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i).collect();
        let want = if n == 0 {
            all.len()
        } else if (n as usize) <= newlines.len() {
            newlines[newlines.len() - n as usize] + 1
        } else {
            0
        };
        prop_assert_eq!(log.last_lines(n), want as u64);
    }
}

#[test]
fn a_tail_with_invalid_utf8_still_ends_at_the_end() {
    let log = OutputLog::new(1 << 20);
    log.push(Stdout, b"ok \xff\n");
    let tail = log.tail(100);
    assert_eq!(
        tail.text, " \u{fffd}\n",
        "cut at the start to fit the output's 5 bytes"
    );
    assert_eq!(tail.offset, 0);
    log.push(Stdout, b"0123456789");
    let tail = log.tail(12);
    assert_eq!(tail.text, "\u{fffd}\n0123456789");
    assert_eq!(
        tail.offset + tail.text.len() as u64,
        15,
        "it ends where the output ends"
    );
}

#[test]
fn skipping_ahead_leaves_one_gap_where_it_is() {
    let log = OutputLog::new(1 << 20);
    log.push(Stdout, b"abc");
    log.skip_to(2);
    assert_eq!(log.span(), (0, 3), "not backwards");
    log.skip_to(10);
    log.push(Stderr, b"xyz");
    assert_eq!(log.span(), (10, 13));
    let got = log.read(0, u64::MAX, usize::MAX);
    assert_eq!((got[0].offset, bytes(&got)), (10, b"xyz".to_vec()));
}
