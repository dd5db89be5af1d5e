//! Hand-made AMQP 0-9-1 frames over a std TcpStream, for the bad-input tests
//! no client library would send. Every read has a timeout, so a broker that
//! hangs fails the test instead of hanging it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
pub const FRAME_END: u8 = 0xCE;

pub struct Frame {
    pub typ: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// (class, method) of a method frame.
    pub fn method(&self) -> Option<(u16, u16)> {
        if self.typ != 1 || self.payload.len() < 4 {
            return None;
        }
        Some((
            u16::from_be_bytes([self.payload[0], self.payload[1]]),
            u16::from_be_bytes([self.payload[2], self.payload[3]]),
        ))
    }
}

/// connection.close's arguments.
#[derive(Debug)]
pub struct Close {
    pub code: u16,
    pub text: String,
    pub class: u16,
    pub method: u16,
}

pub fn shortstr(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

pub fn longstr(b: &[u8]) -> Vec<u8> {
    let mut v = (b.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(b);
    v
}

pub fn frame(typ: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![typ];
    v.extend_from_slice(&channel.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v.push(FRAME_END);
    v
}

pub fn method_frame(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    frame(1, channel, &p)
}

pub struct Raw {
    pub s: TcpStream,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw { s }
    }

    pub fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)
    }

    /// Reads whatever arrives until EOF (or `max` bytes); Err on a timeout.
    pub fn read_to_eof(&mut self, max: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    pub fn read_frame(&mut self) -> io::Result<Frame> {
        let mut h = [0u8; 7];
        self.s.read_exact(&mut h)?;
        let size = u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize;
        if size > 16 << 20 {
            return Err(io::Error::other(format!("frame of {size} bytes")));
        }
        let mut p = vec![0u8; size + 1];
        self.s.read_exact(&mut p)?;
        if p[size] != FRAME_END {
            return Err(io::Error::other("bad frame end"));
        }
        p.truncate(size);
        Ok(Frame {
            typ: h[0],
            channel: u16::from_be_bytes([h[1], h[2]]),
            payload: p,
        })
    }

    /// Reads frames until one is the method `(class, method)`.
    pub fn expect_method(&mut self, class: u16, method: u16) -> Frame {
        loop {
            let f = self
                .read_frame()
                .unwrap_or_else(|e| panic!("waiting for method {class}.{method}: {e}"));
            if let Some((10, 50)) = f.method() {
                if (class, method) != (10, 50) {
                    panic!(
                        "waiting for method {class}.{method}, got connection.close {:?}",
                        parse_close(&f.payload)
                    );
                }
            }
            if f.method() == Some((class, method)) {
                return f;
            }
        }
    }

    /// Header, start-ok (PLAIN guest), tune-ok with the server's channel-max
    /// and `frame_max` and `heartbeat`, open `/`; returns the server's
    /// proposed frame-max.
    pub fn handshake(&mut self, frame_max: u32, heartbeat: u16) -> u32 {
        self.send(HEADER).expect("send header");
        self.expect_method(10, 10);
        let mut args = 0u32.to_be_bytes().to_vec(); // empty client-properties
        args.extend(shortstr("PLAIN"));
        args.extend(longstr(b"\0guest\0guest"));
        args.extend(shortstr("en_US"));
        self.send(&method_frame(0, 10, 11, &args))
            .expect("start-ok");
        let tune = self.expect_method(10, 30);
        let p = &tune.payload[4..];
        let channel_max = u16::from_be_bytes([p[0], p[1]]);
        let server_frame_max = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
        let mut args = channel_max.to_be_bytes().to_vec();
        args.extend_from_slice(&frame_max.to_be_bytes());
        args.extend_from_slice(&heartbeat.to_be_bytes());
        self.send(&method_frame(0, 10, 31, &args)).expect("tune-ok");
        let mut args = shortstr("/");
        args.extend(shortstr(""));
        args.push(0);
        self.send(&method_frame(0, 10, 40, &args)).expect("open");
        self.expect_method(10, 41);
        server_frame_max
    }

    /// Reads until connection.close, answers close-ok, and returns it.
    pub fn expect_close(&mut self) -> Close {
        let f = self.expect_method(10, 50);
        let c = parse_close(&f.payload).expect("parsable connection.close");
        let _ = self.send(&method_frame(0, 10, 51, &[]));
        c
    }
}

pub fn parse_close(p: &[u8]) -> Option<Close> {
    let a = p.get(4..)?;
    let code = u16::from_be_bytes([*a.first()?, *a.get(1)?]);
    let n = *a.get(2)? as usize;
    let text = String::from_utf8_lossy(a.get(3..3 + n)?).into_owned();
    let r = a.get(3 + n..)?;
    Some(Close {
        code,
        text,
        class: u16::from_be_bytes([*r.first()?, *r.get(1)?]),
        method: u16::from_be_bytes([*r.get(2)?, *r.get(3)?]),
    })
}
