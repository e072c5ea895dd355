//! The framing of a supervised run's `output` file: the supervisor appends
//! each read from the task's stdout or stderr as one frame, a byte naming
//! the stream, the length as 4 bytes little-endian, then the bytes. So the
//! file keeps the order the supervisor read them in and which stream each
//! came from, and a reader can tell a frame still being written (too short
//! yet) from a whole one.

use std::io::{self, Write};

use crate::output::OutputStream;

const HEADER: usize = 5;
/// Longest frame a reader accepts (the supervisor writes at most 64 KiB):
/// a longer length means the file is not a frame file, or is damaged.
const MAX_FRAME: usize = 1 << 20;

fn tag(stream: OutputStream) -> u8 {
    match stream {
        OutputStream::Stdout => 1,
        OutputStream::Stderr => 2,
    }
}

/// Appends one frame with a single write (the file is opened to append).
pub(super) fn write_frame(w: &mut impl Write, stream: OutputStream, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(HEADER + data.len());
    frame.push(tag(stream));
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(data);
    w.write_all(&frame)
}

/// The first whole frame in `buf`: its stream, its bytes, and the length
/// of the frame. `Ok(None)` if `buf` holds only part of one.
pub(super) fn next_frame(buf: &[u8]) -> io::Result<Option<(OutputStream, &[u8], usize)>> {
    let Some(header) = buf.get(..HEADER) else {
        return Ok(None);
    };
    let stream = match header[0] {
        1 => OutputStream::Stdout,
        2 => OutputStream::Stderr,
        t => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("output frame with unknown stream {t}"),
            ))
        }
    };
    let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("output frame of {len} bytes"),
        ));
    }
    Ok(buf
        .get(HEADER..HEADER + len)
        .map(|data| (stream, data, HEADER + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_whole_and_not_before() {
        let mut file = Vec::new();
        write_frame(&mut file, OutputStream::Stdout, b"out").unwrap();
        write_frame(&mut file, OutputStream::Stderr, b"").unwrap();
        write_frame(&mut file, OutputStream::Stderr, b"err\n").unwrap();
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((stream, data, used)) = next_frame(&file[at..]).unwrap() {
            got.push((stream, data.to_vec()));
            at += used;
        }
        assert_eq!(at, file.len());
        assert_eq!(
            got,
            [
                (OutputStream::Stdout, b"out".to_vec()),
                (OutputStream::Stderr, vec![]),
                (OutputStream::Stderr, b"err\n".to_vec())
            ]
        );
        for cut in 0..8 {
            assert!(
                next_frame(&file[..cut]).unwrap().is_none(),
                "part of a frame at {cut}"
            );
        }
        assert!(next_frame(&[7, 0, 0, 0, 0]).is_err());
        assert!(next_frame(&[1, 0, 0, 0, 1]).is_err(), "16 MiB is no frame");
    }
}
