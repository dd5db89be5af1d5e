//! Message segment files: record format and parsing.
//!
//! A segment is a sequence of records, each
//! `[u32 length][u32 crc32][u8 type][payload]` (little endian), where `length`
//! counts the type byte and the payload and the CRC covers the same bytes.
//! Strings and byte strings are `u32` length-prefixed.
//!
//! Publishers build records with the CRC left zero ([`begin_record`],
//! [`finish_record`]); the writer thread fills the CRCs in ([`seal_records`])
//! just before writing, which keeps checksumming off the publish hot path and
//! outside the store's lock.

pub const REC_PUBLISH: u8 = 1;
pub const REC_REMOVE: u8 = 2;
pub const REC_REMOVE_QUEUE: u8 = 3;
/// Messages handed to a consumer that acks (or basic.get without no-ack): they
/// come back with redelivered=true after a restart, as in RabbitMQ.
pub const REC_DELIVERED: u8 = 4;

/// Length + CRC.
pub const HEADER_LEN: usize = 8;

/// `0000000000000042.seg`
pub fn segment_name(number: u64) -> String {
    format!("{number:016}.seg")
}

/// The number of a segment file name, `None` for other files.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Starts a record of `kind` at the end of `out`; returns its start offset for
/// [`finish_record`].
pub fn begin_record(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.push(kind);
    start
}

/// Fills in the length of the record started at `start` (the CRC stays zero
/// until [`seal_records`]).
pub fn finish_record(out: &mut [u8], start: usize) {
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Computes the CRC of every record in `buf` (a sequence of finished records).
pub fn seal_records(buf: &mut [u8]) {
    let mut pos = 0;
    while pos + HEADER_LEN <= buf.len() {
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let end = pos + HEADER_LEN + len;
        if end > buf.len() {
            // Cannot happen for buffers built with begin/finish_record.
            break;
        }
        let crc = crc32fast::hash(&buf[pos + HEADER_LEN..end]);
        buf[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Encoded size of a publish record (exact), for segment rotation and backpressure.
pub fn publish_len<'a>(
    vhost: &str,
    queues: impl Iterator<Item = &'a str>,
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) -> usize {
    let queues: usize = queues.map(|q| 4 + q.len()).sum();
    HEADER_LEN
        + 1
        + 8
        + 4
        + vhost.len()
        + 4
        + queues
        + 4
        + exchange.len()
        + 4
        + routing_key.len()
        + 4
        + properties.len()
        + 4
        + body.len()
}

/// Appends a publish record.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish<'a>(
    out: &mut Vec<u8>,
    id: u64,
    vhost: &str,
    queues: impl Iterator<Item = &'a str> + Clone,
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) {
    let start = begin_record(out, REC_PUBLISH);
    put_u64(out, id);
    put_str(out, vhost);
    put_u32(out, queues.clone().count() as u32);
    for q in queues {
        put_str(out, q);
    }
    put_str(out, exchange);
    put_str(out, routing_key);
    put_bytes(out, properties);
    put_bytes(out, body);
    finish_record(out, start);
}

pub fn remove_len(vhost: &str, queue: &str, ids: usize) -> usize {
    HEADER_LEN + 1 + 4 + vhost.len() + 4 + queue.len() + 4 + 8 * ids
}

pub fn encode_remove(out: &mut Vec<u8>, vhost: &str, queue: &str, ids: &[u64]) {
    encode_ids(out, REC_REMOVE, vhost, queue, ids)
}

/// A delivered record has the layout of a remove record.
pub fn delivered_len(vhost: &str, queue: &str, ids: usize) -> usize {
    remove_len(vhost, queue, ids)
}

pub fn encode_delivered(out: &mut Vec<u8>, vhost: &str, queue: &str, ids: &[u64]) {
    encode_ids(out, REC_DELIVERED, vhost, queue, ids)
}

fn encode_ids(out: &mut Vec<u8>, kind: u8, vhost: &str, queue: &str, ids: &[u64]) {
    let start = begin_record(out, kind);
    put_str(out, vhost);
    put_str(out, queue);
    put_u32(out, ids.len() as u32);
    for id in ids {
        put_u64(out, *id);
    }
    finish_record(out, start);
}

pub fn remove_queue_len(vhost: &str, queue: &str) -> usize {
    HEADER_LEN + 1 + 4 + vhost.len() + 4 + queue.len()
}

pub fn encode_remove_queue(out: &mut Vec<u8>, vhost: &str, queue: &str) {
    let start = begin_record(out, REC_REMOVE_QUEUE);
    put_str(out, vhost);
    put_str(out, queue);
    finish_record(out, start);
}

/// A decoded record, borrowing from the segment's bytes.
#[derive(Debug, PartialEq)]
pub enum Record<'a> {
    Publish {
        id: u64,
        vhost: &'a str,
        queues: Vec<&'a str>,
        exchange: &'a str,
        routing_key: &'a str,
        properties: &'a [u8],
        body: &'a [u8],
    },
    Remove {
        vhost: &'a str,
        queue: &'a str,
        ids: Vec<u64>,
    },
    RemoveQueue {
        vhost: &'a str,
        queue: &'a str,
    },
    Delivered {
        vhost: &'a str,
        queue: &'a str,
        ids: Vec<u64>,
    },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("record payload too short")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, String> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "string is not utf-8".to_string())
    }
    fn done(&self) -> Result<(), String> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(format!(
                "{} trailing bytes in record",
                self.buf.len() - self.pos
            ))
        }
    }
}

/// Decodes a record's type and payload (already CRC-checked).
pub fn decode(kind: u8, payload: &[u8]) -> Result<Record<'_>, String> {
    let mut r = Reader {
        buf: payload,
        pos: 0,
    };
    let rec = match kind {
        REC_PUBLISH => {
            let id = r.u64()?;
            let vhost = r.str()?;
            let n = r.u32()? as usize;
            // Each name takes at least 4 bytes: bound the allocation by the payload.
            if n > payload.len() / 4 {
                return Err(format!("queue count {n} exceeds record"));
            }
            let mut queues = Vec::with_capacity(n);
            for _ in 0..n {
                queues.push(r.str()?);
            }
            let exchange = r.str()?;
            let routing_key = r.str()?;
            let properties = r.bytes()?;
            let body = r.bytes()?;
            Record::Publish {
                id,
                vhost,
                queues,
                exchange,
                routing_key,
                properties,
                body,
            }
        }
        REC_REMOVE | REC_DELIVERED => {
            let vhost = r.str()?;
            let queue = r.str()?;
            let n = r.u32()? as usize;
            if n > payload.len() / 8 {
                return Err(format!("id count {n} exceeds record"));
            }
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(r.u64()?);
            }
            if kind == REC_REMOVE {
                Record::Remove { vhost, queue, ids }
            } else {
                Record::Delivered { vhost, queue, ids }
            }
        }
        REC_REMOVE_QUEUE => {
            let vhost = r.str()?;
            let queue = r.str()?;
            Record::RemoveQueue { vhost, queue }
        }
        other => return Err(format!("unknown record type {other}")),
    };
    r.done()?;
    Ok(rec)
}

/// A record that could not be read.
#[derive(Debug, PartialEq)]
pub struct BadRecord {
    pub offset: u64,
    pub reason: String,
    /// Looks like the torn end of an interrupted write: the record runs past the
    /// end of the file, or it is the last record, or only zero bytes follow it.
    pub tail: bool,
}

/// One framed record: its offset, type and payload (CRC verified).
#[derive(Debug)]
pub struct RawRecord<'a> {
    pub offset: u64,
    pub kind: u8,
    pub payload: &'a [u8],
}

/// Splits a segment's bytes into CRC-checked records, stopping at the first bad one.
pub fn scan(buf: &[u8]) -> (Vec<RawRecord<'_>>, Option<BadRecord>) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let bad = |reason: String, tail: bool| BadRecord {
            offset: pos as u64,
            reason,
            tail,
        };
        if buf.len() - pos < HEADER_LEN + 1 {
            return (
                out,
                Some(bad(
                    format!("short record header ({} bytes)", buf.len() - pos),
                    true,
                )),
            );
        }
        let len = u32::from_le_bytes([buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[pos + 4], buf[pos + 5], buf[pos + 6], buf[pos + 7]]);
        let zeros_after = buf[pos..].iter().all(|b| *b == 0);
        if len == 0 {
            return (
                out,
                Some(bad("zero record length".to_string(), zeros_after)),
            );
        }
        let end = match pos.checked_add(HEADER_LEN + len) {
            Some(end) if end <= buf.len() => end,
            _ => {
                return (
                    out,
                    Some(bad(
                        format!("record length {len} runs past end of file"),
                        true,
                    )),
                )
            }
        };
        let body = &buf[pos + HEADER_LEN..end];
        if crc32fast::hash(body) != crc {
            let tail = end == buf.len() || zeros_after || buf[end..].iter().all(|b| *b == 0);
            return (out, Some(bad("checksum mismatch".to_string(), tail)));
        }
        out.push(RawRecord {
            offset: pos as u64,
            kind: body[0],
            payload: &body[1..],
        });
        pos = end;
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(segment_name(42), "0000000000000042.seg");
        assert_eq!(parse_segment_name("0000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("000000000000004x.seg"), None);
        assert_eq!(parse_segment_name("0000000000000042.tmp"), None);
    }

    #[test]
    fn records_round_trip() {
        let mut buf = Vec::new();
        let queues = ["a", "bb"];
        encode_publish(
            &mut buf,
            7,
            "/",
            queues.iter().copied(),
            "ex",
            "rk",
            b"\x00\x00",
            b"hello",
        );
        assert_eq!(
            buf.len(),
            publish_len(
                "/",
                queues.iter().copied(),
                "ex",
                "rk",
                b"\x00\x00",
                b"hello"
            )
        );
        let l1 = buf.len();
        encode_remove(&mut buf, "/", "a", &[7, 8]);
        assert_eq!(buf.len() - l1, remove_len("/", "a", 2));
        let l2 = buf.len();
        encode_remove_queue(&mut buf, "v", "bb");
        assert_eq!(buf.len() - l2, remove_queue_len("v", "bb"));
        let l3 = buf.len();
        encode_delivered(&mut buf, "v", "bb", &[9, 10, 11]);
        assert_eq!(buf.len() - l3, delivered_len("v", "bb", 3));
        seal_records(&mut buf);
        let (recs, bad) = scan(&buf);
        assert!(bad.is_none());
        assert_eq!(recs.len(), 4);
        assert_eq!(
            decode(recs[0].kind, recs[0].payload).unwrap(),
            Record::Publish {
                id: 7,
                vhost: "/",
                queues: vec!["a", "bb"],
                exchange: "ex",
                routing_key: "rk",
                properties: b"\x00\x00",
                body: b"hello"
            }
        );
        assert_eq!(
            decode(recs[1].kind, recs[1].payload).unwrap(),
            Record::Remove {
                vhost: "/",
                queue: "a",
                ids: vec![7, 8]
            }
        );
        assert_eq!(
            decode(recs[2].kind, recs[2].payload).unwrap(),
            Record::RemoveQueue {
                vhost: "v",
                queue: "bb"
            }
        );
        assert_eq!(
            decode(recs[3].kind, recs[3].payload).unwrap(),
            Record::Delivered {
                vhost: "v",
                queue: "bb",
                ids: vec![9, 10, 11]
            }
        );
        assert_eq!(recs[1].offset, l1 as u64);
    }

    #[test]
    fn unsealed_record_is_bad() {
        let mut buf = Vec::new();
        encode_remove_queue(&mut buf, "v", "q");
        let (recs, bad) = scan(&buf);
        assert!(recs.is_empty());
        let bad = bad.unwrap();
        assert_eq!(bad.offset, 0);
        assert!(bad.tail);
    }

    #[test]
    fn garbage_payload_does_not_panic() {
        for kind in 0..6u8 {
            for len in 0..40usize {
                let payload: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
                let _ = decode(kind, &payload);
                let ff = vec![0xff; len];
                let _ = decode(kind, &ff);
            }
        }
    }
}
