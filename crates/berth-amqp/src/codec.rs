//! Frame decoding with the limits a server must enforce, and frame encoding.
use std::io::Cursor;

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::frame::{
    gen_frame, AMQPContentHeader, AMQPFrame, GenResult, ProtocolVersion, WriteContext,
};
use amq_protocol::protocol::basic::{gen_properties, parse_properties};
use amq_protocol::protocol::{parse_class, AMQPClass, BasicProperties};
use amq_protocol::types::generation::gen_field_table;
use bytes::{Buf, BufMut, BytesMut};

use crate::error::{AmqpError, ReplyCode};

/// The smallest frame-max a peer may negotiate (spec: frame-min-size).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The frame-max berth offers in connection.tune (RabbitMQ's default).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// The 8 bytes a 0-9-1 client sends first and a server answers a wrong header with.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// Frame type, channel and payload size precede every payload; the frame-end
/// octet follows it.
const FRAME_HEADER_LEN: usize = 7;
const FRAME_END: u8 = 0xCE;
const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;

/// One item taken off the wire.
// Not boxed: a frame is moved once from the decoder to the connection, and a
// box would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// The connection's opening header (only as the first 8 bytes).
    ProtocolHeader(ProtocolVersion),
    Frame(AMQPFrame),
}

/// Splits a byte stream into frames. Before the protocol header it expects
/// exactly `AMQP\0\0\9\1`; anything else is `Err` (the caller then writes
/// [`PROTOCOL_HEADER`] and closes). After it, every frame's declared size is
/// checked against frame-max *before* buffering its payload, so a peer cannot
/// make the server buffer more than frame-max + 8 bytes per connection.
#[derive(Debug)]
pub struct FrameDecoder {
    frame_max: u32,
    header_seen: bool,
}

impl FrameDecoder {
    /// `frame_max` applies until [`FrameDecoder::set_frame_max`]; before tune-ok
    /// the spec allows frames up to [`FRAME_MIN_SIZE`]. A frame-max of 0 ("no
    /// limit" in the spec) is treated as [`DEFAULT_FRAME_MAX`] so the buffering
    /// bound always holds.
    pub fn new(frame_max: u32) -> Self {
        Self {
            frame_max,
            header_seen: false,
        }
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// The largest payload a frame may declare: frame-max counts the 7-byte
    /// header and the frame-end octet.
    fn max_payload(&self) -> u32 {
        let frame_max = if self.frame_max == 0 {
            DEFAULT_FRAME_MAX
        } else {
            self.frame_max
        };
        frame_max.saturating_sub(8)
    }

    /// Takes one complete item off the front of `buf`. `Ok(None)`: need more bytes.
    /// Errors are connection errors: 501 frame-error for oversized frames, a bad
    /// frame-end octet or unknown frame types; 502/503/540 for undecodable or unknown
    /// methods (text names the class and method ids).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, AmqpError> {
        if !self.header_seen {
            return self.decode_protocol_header(buf);
        }
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let frame_type = buf[0];
        let channel = u16::from_be_bytes([buf[1], buf[2]]);
        let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
        if !matches!(
            frame_type,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Err(frame_error(format!(
                "unknown frame type {frame_type} on channel {channel}"
            )));
        }
        // Checked before waiting for the payload: this is what bounds buffering.
        let limit = self.max_payload();
        if size > limit {
            return Err(frame_error(format!(
                "frame size {size} on channel {channel} exceeds the negotiated frame-max payload of {limit} bytes"
            )));
        }
        if frame_type == FRAME_HEARTBEAT && channel != 0 {
            // RabbitMQ: 505 unexpected-frame.
            return Err(AmqpError::connection(
                ReplyCode::UnexpectedFrame,
                // RabbitMQ's wording.
                format!("type {frame_type}, all octets = <<>>"),
            ));
        }
        let total = FRAME_HEADER_LEN + size as usize + 1;
        if buf.len() < total {
            // Reserve once for the rest of this frame (bounded by frame-max).
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let end = buf[total - 1];
        if end != FRAME_END {
            return Err(frame_error(format!(
                "bad frame end octet {end:#04x} on channel {channel} (frame type {frame_type}, size {size})"
            )));
        }
        // Consume exactly this frame whatever the parse result.
        let mut frame = buf.split_to(total);
        frame.advance(FRAME_HEADER_LEN);
        frame.truncate(size as usize);
        let payload = &frame[..];
        let decoded = match frame_type {
            FRAME_METHOD => AMQPFrame::Method(channel, decode_method(channel, payload)?),
            FRAME_HEADER => AMQPFrame::Header(channel, decode_content_header(channel, payload)?),
            // Body and heartbeat payloads need no parsing; copying the body
            // directly avoids the byte-by-byte collect of the generic parser.
            FRAME_BODY => AMQPFrame::Body(channel, payload.to_vec()),
            _ => AMQPFrame::Heartbeat,
        };
        Ok(Some(Decoded::Frame(decoded)))
    }

    fn decode_protocol_header(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, AmqpError> {
        // Fail early on a prefix that can never become the header (e.g. an
        // HTTP request), but only decide on a full header otherwise.
        let n = buf.len().min(PROTOCOL_HEADER.len());
        if buf[..n] != PROTOCOL_HEADER[..n] {
            buf.advance(n);
            return Err(bad_protocol_header());
        }
        if n < PROTOCOL_HEADER.len() {
            return Ok(None);
        }
        buf.advance(PROTOCOL_HEADER.len());
        self.header_seen = true;
        Ok(Some(Decoded::ProtocolHeader(ProtocolVersion::amqp_0_9_1())))
    }
}

fn bad_protocol_header() -> AmqpError {
    AmqpError::connection(ReplyCode::FrameError, "bad protocol header")
}

fn frame_error(text: String) -> AmqpError {
    AmqpError::connection(ReplyCode::FrameError, text)
}

/// Whether (class, method) names a method of AMQP 0-9-1 that amq-protocol
/// knows; used only to choose between 540 and 502 when parsing fails.
fn known_method(class_id: u16, method_id: u16) -> Option<bool> {
    let methods: &[u16] = match class_id {
        10 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 61, 70, 71],
        20 => &[10, 11, 20, 21, 40, 41],
        30 => &[10, 11],
        40 => &[10, 11, 20, 21, 30, 31, 40, 51],
        50 => &[10, 11, 20, 21, 30, 31, 40, 41, 50, 51],
        60 => &[
            10, 11, 20, 21, 30, 31, 40, 50, 60, 70, 71, 72, 80, 90, 100, 110, 111, 120,
        ],
        85 => &[10, 11],
        90 => &[10, 11, 20, 21, 30, 31],
        _ => return None,
    };
    Some(methods.contains(&method_id))
}

fn decode_method(channel: u16, payload: &[u8]) -> Result<AMQPClass, AmqpError> {
    if payload.len() < 4 {
        return Err(AmqpError::connection(
            ReplyCode::SyntaxError,
            format!(
                "method frame on channel {channel} too short ({} bytes) for class and method ids",
                payload.len()
            ),
        ));
    }
    let class_id = u16::from_be_bytes([payload[0], payload[1]]);
    let method_id = u16::from_be_bytes([payload[2], payload[3]]);
    match known_method(class_id, method_id) {
        None => {
            return Err(AmqpError::connection(
                ReplyCode::NotImplemented,
                format!("unknown class {class_id} (method {method_id}) on channel {channel}"),
            )
            .caused_by(class_id, method_id))
        }
        Some(false) => {
            return Err(AmqpError::connection(
                ReplyCode::CommandInvalid,
                format!("unknown method {method_id} of class {class_id} on channel {channel}"),
            )
            .caused_by(class_id, method_id))
        }
        Some(true) => {}
    }
    check_nesting(payload).map_err(|text| {
        AmqpError::connection(
            ReplyCode::SyntaxError,
            format!("{text} in method {class_id}.{method_id}"),
        )
        .caused_by(class_id, method_id)
    })?;
    match parse_class(payload) {
        Ok(([], class)) => Ok(class),
        Ok((rest, _)) => Err(AmqpError::connection(
            ReplyCode::FrameError,
            format!(
                "{} trailing bytes after method {class_id}.{method_id} on channel {channel}",
                rest.len()
            ),
        )
        .caused_by(class_id, method_id)),
        Err(_) => Err(AmqpError::connection(
            ReplyCode::FrameError,
            format!(
                "cannot decode arguments of method {class_id}.{method_id} on channel {channel}"
            ),
        )
        .caused_by(class_id, method_id)),
    }
}

fn decode_content_header(channel: u16, payload: &[u8]) -> Result<AMQPContentHeader, AmqpError> {
    let syntax = |what: &str| {
        AmqpError::connection(
            ReplyCode::FrameError,
            format!("cannot decode content header on channel {channel}: {what}"),
        )
    };
    check_nesting(payload).map_err(|text| syntax(&text))?;
    match parse_content_header(payload) {
        Ok(([], header)) => Ok(header),
        Ok((rest, _)) => Err(syntax(&format!("{} trailing bytes", rest.len()))),
        Err(_) => Err(syntax("malformed properties")),
    }
}

/// Deepest field-table / field-array nesting accepted. amq-protocol parses
/// nested values recursively, so without a bound a frame of `F`/`A` headers
/// could exhaust the stack of a connection task. RabbitMQ clients never nest
/// more than a few levels.
pub const MAX_NESTING: usize = 64;

/// Rejects payloads whose field tables/arrays could nest deeper than
/// [`MAX_NESTING`]. Every nested container needs a type octet `F` or `A`
/// followed by a 4-byte length whose span lies inside the payload, so the
/// largest number of such candidate spans covering one offset is an upper bound
/// of the real depth; it is computed without parsing (and without recursion).
fn check_nesting(payload: &[u8]) -> Result<(), String> {
    let candidates = payload.iter().filter(|&&b| b == b'F' || b == b'A').count();
    if candidates <= MAX_NESTING {
        return Ok(());
    }
    let depth = nesting_bound(payload);
    if depth > MAX_NESTING {
        return Err(format!(
            "field tables nested up to {depth} deep exceed the limit of {MAX_NESTING}"
        ));
    }
    Ok(())
}

/// Maximum number of candidate container spans covering one offset.
fn nesting_bound(payload: &[u8]) -> usize {
    // (offset, +1 for a span start / -1 for a span end); ends sort before
    // starts at the same offset since a span ending there no longer covers it.
    let mut events: Vec<(usize, i32)> = Vec::new();
    for p in 0..payload.len().saturating_sub(4) {
        let b = payload[p];
        if b != b'F' && b != b'A' {
            continue;
        }
        let len = u32::from_be_bytes([
            payload[p + 1],
            payload[p + 2],
            payload[p + 3],
            payload[p + 4],
        ]) as usize;
        let start = p + 5;
        if len == 0 || start.saturating_add(len) > payload.len() {
            continue;
        }
        events.push((start, 1));
        events.push((start + len, -1));
    }
    events.sort_unstable();
    let mut current: i64 = 0;
    let mut deepest: i64 = 0;
    for (_, delta) in events {
        current += i64::from(delta);
        deepest = deepest.max(current);
    }
    usize::try_from(deepest).unwrap_or(usize::MAX)
}

/// A growable byte buffer that cookie-factory can write into through a
/// `Cursor<&mut [u8]>` (which never allocates and never panics when too small).
trait GrowBuf {
    fn len(&self) -> usize;
    fn resize_zeroed(&mut self, len: usize);
    fn truncate(&mut self, len: usize);
    fn tail_mut(&mut self, from: usize) -> &mut [u8];
}

impl GrowBuf for BytesMut {
    fn len(&self) -> usize {
        BytesMut::len(self)
    }
    fn resize_zeroed(&mut self, len: usize) {
        self.resize(len, 0);
    }
    fn truncate(&mut self, len: usize) {
        BytesMut::truncate(self, len);
    }
    fn tail_mut(&mut self, from: usize) -> &mut [u8] {
        &mut self[from..]
    }
}

impl GrowBuf for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn resize_zeroed(&mut self, len: usize) {
        self.resize(len, 0);
    }
    fn truncate(&mut self, len: usize) {
        Vec::truncate(self, len);
    }
    fn tail_mut(&mut self, from: usize) -> &mut [u8] {
        &mut self[from..]
    }
}

/// Runs a cookie-factory serializer straight into `out`'s tail, growing and
/// retrying if the estimate was too small. Returns false (and leaves `out`
/// unchanged) only if the serializer fails for another reason.
fn gen_into<B, F>(out: &mut B, estimate: usize, gen: F) -> bool
where
    B: GrowBuf,
    F: for<'b> Fn(WriteContext<Cursor<&'b mut [u8]>>) -> GenResult<Cursor<&'b mut [u8]>>,
{
    let start = out.len();
    let mut room = estimate.max(64);
    loop {
        out.resize_zeroed(start + room);
        let cursor = Cursor::new(out.tail_mut(start));
        match gen(WriteContext::from(cursor)) {
            Ok(ctx) => {
                let (_, written) = ctx.into_inner();
                out.truncate(start + written as usize);
                return true;
            }
            // A frame is at most 4 GiB + 8; beyond that the error is not
            // about room.
            Err(_) if room <= (u32::MAX as usize) + 8 => room = room.saturating_mul(2),
            Err(_) => {
                out.truncate(start);
                return false;
            }
        }
    }
}

/// Appends one frame.
pub fn encode_frame(frame: &AMQPFrame, out: &mut BytesMut) {
    match frame {
        AMQPFrame::Body(channel, data) => encode_body_frame(*channel, data, out),
        _ => {
            gen_into(out, 256, |ctx| gen_frame(frame)(ctx));
        }
    }
}

/// Appends a method frame.
pub fn encode_method(channel: u16, method: &AMQPClass, out: &mut BytesMut) {
    // gen_frame takes an AMQPFrame by reference; building one requires an owned
    // AMQPClass, so the method frame is framed here around amq-protocol's
    // gen_class, which is what gen_frame does internally.
    let start = out.len();
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    out.put_u32(0);
    let payload_start = out.len();
    if !gen_into(out, 128, |ctx| {
        amq_protocol::protocol::gen_class(method)(ctx)
    }) {
        out.truncate(start);
        return;
    }
    let size = (out.len() - payload_start) as u32;
    out[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
}

/// Appends a body frame without copying the body into an owned frame first.
fn encode_body_frame(channel: u16, data: &[u8], out: &mut BytesMut) {
    out.reserve(data.len() + 8);
    out.put_u8(FRAME_BODY);
    out.put_u16(channel);
    out.put_u32(data.len() as u32);
    out.extend_from_slice(data);
    out.put_u8(FRAME_END);
}

/// Appends a content-bearing method (basic.deliver, basic.get-ok, basic.return):
/// the method frame, the content header and the body split into frames of at most
/// `frame_max - 8` bytes (no body frame for an empty body).
pub fn encode_content(
    channel: u16,
    method: &AMQPClass,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    out: &mut BytesMut,
) {
    let frame_max = if frame_max == 0 {
        DEFAULT_FRAME_MAX
    } else {
        frame_max
    };
    let chunk = frame_max.saturating_sub(8).max(1) as usize;
    let frames = body.len().div_ceil(chunk);
    out.reserve(256 + body.len() + frames * 8);
    encode_method(channel, method, out);
    // The content header is framed by hand around amq-protocol's
    // gen_properties for the same reason as the method frame: gen_frame wants
    // an owned AMQPContentHeader (a clone of the properties per delivery).
    let start = out.len();
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32(0);
    out.put_u16(60);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    let payload_start = start + FRAME_HEADER_LEN;
    if !gen_into(out, 64, |ctx| gen_properties(properties)(ctx)) {
        out.truncate(start);
        return;
    }
    let size = (out.len() - payload_start) as u32;
    out[start + 3..start + 7].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);
    for piece in body.chunks(chunk) {
        encode_body_frame(channel, piece, out);
    }
}

/// Encodes properties alone (used by the broker's message store to persist them).
pub fn encode_properties(properties: &BasicProperties, out: &mut Vec<u8>) {
    gen_into(out, 64, |ctx| gen_properties(properties)(ctx));
}

/// Decodes what [`encode_properties`] wrote; `None` if malformed.
pub fn decode_properties(bytes: &[u8]) -> Option<BasicProperties> {
    check_nesting(bytes).ok()?;
    match parse_properties(bytes) {
        Ok(([], properties)) => Some(properties),
        _ => None,
    }
}

/// Encodes a field table alone (persisted arguments, x-death headers).
pub fn encode_field_table(table: &amq_protocol::types::FieldTable, out: &mut Vec<u8>) {
    gen_into(out, 64, |ctx| gen_field_table(table)(ctx));
}

/// Decodes what [`encode_field_table`] wrote; `None` if malformed.
pub fn decode_field_table(bytes: &[u8]) -> Option<amq_protocol::types::FieldTable> {
    check_nesting(bytes).ok()?;
    match amq_protocol::types::parsing::parse_field_table(bytes) {
        Ok(([], table)) => Some(table),
        _ => None,
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
