//! Framing of attach, exec and logs streams.
//!
//! Each frame is an 8-byte header `[kind, 0, 0, 0, len (u32 big-endian)]`
//! followed by `len` bytes, like Docker's multiplexed stream but with extra
//! kinds for control messages so one connection carries stdin, output,
//! signals, terminal size and the exit status.

use std::io::{self, Read, Write};

/// Frames larger than this are a protocol error, so a peer cannot make us
/// allocate without bound.
pub const MAX_FRAME: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    /// Payload: the exit code in decimal, then " oom" when OOM-killed.
    Exit = 3,
    /// Payload: a signal number in decimal, to deliver to the process.
    Signal = 4,
    /// Payload: "ROWS COLS".
    Resize = 5,
    /// First frame from a client; payload: what to replay from the log
    /// ("all", "none" or a number of lines).
    Hello = 6,
    /// Payload: an error message; the stream ends after it.
    Error = 7,
    /// Stdin reached end of file.
    StdinEof = 8,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::Stdin,
            1 => Self::Stdout,
            2 => Self::Stderr,
            3 => Self::Exit,
            4 => Self::Signal,
            5 => Self::Resize,
            6 => Self::Hello,
            7 => Self::Error,
            8 => Self::StdinEof,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub data: Vec<u8>,
}

impl Frame {
    pub fn new(kind: FrameKind, data: impl Into<Vec<u8>>) -> Self {
        Self {
            kind,
            data: data.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.data.len());
        encode_into(self.kind, &self.data, &mut out);
        out
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// Parses an Exit frame's payload into (code, oom_killed).
    pub fn exit_status(&self) -> Option<(i32, bool)> {
        let text = self.text();
        let mut parts = text.split(' ');
        let code = parts.next()?.parse().ok()?;
        Some((code, parts.next() == Some("oom")))
    }

    pub fn exit(code: i32, oom: bool) -> Self {
        Self::new(
            FrameKind::Exit,
            if oom {
                format!("{code} oom")
            } else {
                code.to_string()
            },
        )
    }
}

pub fn encode_into(kind: FrameKind, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&[kind as u8, 0, 0, 0]);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

pub fn write_frame(w: &mut impl Write, kind: FrameKind, data: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(8 + data.len());
    encode_into(kind, data, &mut buf);
    w.write_all(&buf)
}

/// Incremental decoder: feed bytes as they arrive, take frames out.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < 8 {
            return Ok(None);
        }
        let kind = FrameKind::from_u8(self.buf[0])
            .ok_or_else(|| invalid(format!("unknown frame kind {}", self.buf[0])))?;
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > MAX_FRAME {
            return Err(invalid(format!(
                "frame of {len} bytes exceeds the limit of {MAX_FRAME}"
            )));
        }
        if self.buf.len() < 8 + len {
            return Ok(None);
        }
        let data = self.buf[8..8 + len].to_vec();
        self.buf.drain(..8 + len);
        Ok(Some(Frame { kind, data }))
    }
}

/// Reads one frame from a blocking reader; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 8];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let kind = FrameKind::from_u8(header[0])
        .ok_or_else(|| invalid(format!("unknown frame kind {}", header[0])))?;
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_FRAME {
        return Err(invalid(format!(
            "frame of {len} bytes exceeds the limit of {MAX_FRAME}"
        )));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some(Frame { kind, data }))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut bytes = Frame::new(FrameKind::Stdout, b"hello".to_vec()).encode();
        bytes.extend(Frame::exit(137, true).encode());
        let mut r = FrameReader::new();
        let mut got = vec![];
        for b in bytes {
            r.feed(&[b]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got[0].data, b"hello");
        assert_eq!(got[1].exit_status(), Some((137, true)));
    }

    #[test]
    fn rejects_unknown_and_oversized() {
        let mut r = FrameReader::new();
        r.feed(&[99, 0, 0, 0, 0, 0, 0, 0]);
        assert!(r.next_frame().is_err());
        let mut r = FrameReader::new();
        r.feed(&[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(r.next_frame().is_err());
        let mut cursor = io::Cursor::new(vec![1u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(read_frame(&mut cursor).is_err());
    }
}
