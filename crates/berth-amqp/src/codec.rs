//! Frame decoding with the limits a server must enforce, and frame encoding.
use amq_protocol::frame::{AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{AMQPClass, BasicProperties};
use bytes::BytesMut;

use crate::error::AmqpError;

/// The smallest frame-max a peer may negotiate (spec: frame-min-size).
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The frame-max berth offers in connection.tune (RabbitMQ's default).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// The 8 bytes a 0-9-1 client sends first and a server answers a wrong header with.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";

/// One item taken off the wire.
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
    /// the spec allows frames up to [`FRAME_MIN_SIZE`].
    pub fn new(frame_max: u32) -> Self {
        Self { frame_max, header_seen: false }
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Takes one complete item off the front of `buf`. `Ok(None)`: need more bytes.
    /// Errors are connection errors: 501 frame-error for oversized frames, a bad
    /// frame-end octet or unknown frame types; 502/503/540 for undecodable or unknown
    /// methods (text names the class and method ids).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, AmqpError> {
        let _ = (buf, self.header_seen);
        todo!("berth-amqp helper")
    }
}

/// Appends one frame.
pub fn encode_frame(frame: &AMQPFrame, out: &mut BytesMut) {
    let _ = (frame, out);
    todo!("berth-amqp helper")
}

/// Appends a method frame.
pub fn encode_method(channel: u16, method: &AMQPClass, out: &mut BytesMut) {
    let _ = (channel, method, out);
    todo!("berth-amqp helper")
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
    let _ = (channel, method, properties, body, frame_max, out);
    todo!("berth-amqp helper")
}

/// Encodes properties alone (used by the broker's message store to persist them).
pub fn encode_properties(properties: &BasicProperties, out: &mut Vec<u8>) {
    let _ = (properties, out);
    todo!("berth-amqp helper")
}

/// Decodes what [`encode_properties`] wrote; `None` if malformed.
pub fn decode_properties(bytes: &[u8]) -> Option<BasicProperties> {
    let _ = bytes;
    todo!("berth-amqp helper")
}

/// Encodes a field table alone (persisted arguments, x-death headers).
pub fn encode_field_table(table: &amq_protocol::types::FieldTable, out: &mut Vec<u8>) {
    let _ = (table, out);
    todo!("berth-amqp helper")
}
