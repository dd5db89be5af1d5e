//! Hand-written encoders for the hot content-bearing methods (basic.deliver,
//! basic.get-ok, basic.return): they write straight from the shared message into
//! the output buffer, without building amq-protocol method structs (which would
//! copy the consumer tag, exchange and routing key for every delivery).
use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::gen_properties;
use berth_amqp::{AmqpError, BasicProperties, ShortString};
use bytes::{BufMut, BytesMut};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
const CLASS_BASIC: u16 = 60;

/// A short string that never panics: longer text is cut at a char boundary.
pub(crate) fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&s[..end]).unwrap_or_default()
}

fn put_short(out: &mut BytesMut, s: &str) {
    let n = s.len().min(255);
    out.put_u8(n as u8);
    out.put_slice(&s.as_bytes()[..n]);
}

/// The content-bearing basic methods berth sends.
pub(crate) enum ContentMethod<'a> {
    Deliver {
        consumer_tag: &'a str,
        delivery_tag: u64,
        redelivered: bool,
        exchange: &'a str,
        routing_key: &'a str,
    },
    GetOk {
        delivery_tag: u64,
        redelivered: bool,
        exchange: &'a str,
        routing_key: &'a str,
        message_count: u32,
    },
    Return {
        reply_code: u16,
        reply_text: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
    },
}

/// Appends method frame, content header and body frames (none for an empty body).
/// `scratch` is reused for the encoded properties.
pub(crate) fn encode_content(
    out: &mut BytesMut,
    channel: u16,
    method: ContentMethod<'_>,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
    scratch: &mut Vec<u8>,
) {
    // Method frame.
    out.put_u8(FRAME_METHOD);
    out.put_u16(channel);
    let size_at = out.len();
    out.put_u32(0);
    out.put_u16(CLASS_BASIC);
    match method {
        ContentMethod::Deliver {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        } => {
            out.put_u16(60);
            put_short(out, consumer_tag);
            out.put_u64(delivery_tag);
            out.put_u8(redelivered as u8);
            put_short(out, exchange);
            put_short(out, routing_key);
        }
        ContentMethod::GetOk {
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
            message_count,
        } => {
            out.put_u16(71);
            out.put_u64(delivery_tag);
            out.put_u8(redelivered as u8);
            put_short(out, exchange);
            put_short(out, routing_key);
            out.put_u32(message_count);
        }
        ContentMethod::Return {
            reply_code,
            reply_text,
            exchange,
            routing_key,
        } => {
            out.put_u16(50);
            out.put_u16(reply_code);
            put_short(out, reply_text);
            put_short(out, exchange);
            put_short(out, routing_key);
        }
    }
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.put_u8(FRAME_END);

    // Content header.
    let mut props = std::mem::take(scratch);
    props.clear();
    props = match gen_properties(properties)(WriteContext::from(props)) {
        Ok(ctx) => ctx.write,
        // Writing into a Vec cannot fail; should it, send no properties.
        Err(_) => vec![0, 0],
    };
    out.put_u8(FRAME_HEADER);
    out.put_u16(channel);
    out.put_u32((2 + 2 + 8 + props.len()) as u32);
    out.put_u16(CLASS_BASIC);
    out.put_u16(0);
    out.put_u64(body.len() as u64);
    out.put_slice(&props);
    out.put_u8(FRAME_END);
    *scratch = props;

    // Body frames.
    let chunk = (frame_max.max(berth_amqp::codec::FRAME_MIN_SIZE) - 8) as usize;
    out.reserve(body.len() + body.len().div_ceil(chunk) * 8);
    for part in body.chunks(chunk) {
        out.put_u8(FRAME_BODY);
        out.put_u16(channel);
        out.put_u32(part.len() as u32);
        out.put_slice(part);
        out.put_u8(FRAME_END);
    }
}

pub(crate) fn encode_heartbeat(out: &mut BytesMut) {
    out.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// connection.close for an error (reply text cut to a short string).
pub(crate) fn connection_close(e: &AmqpError) -> berth_amqp::AMQPClass {
    use amq_protocol::protocol::connection;
    berth_amqp::AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
        reply_code: e.code as u16,
        reply_text: short(&e.reply_text()),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

/// channel.close for an error.
pub(crate) fn channel_close(e: &AmqpError) -> berth_amqp::AMQPClass {
    use amq_protocol::protocol::channel;
    berth_amqp::AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
        reply_code: e.code as u16,
        reply_text: short(&e.reply_text()),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_never_panics() {
        let long = "é".repeat(200);
        let s = short(&long);
        assert!(s.as_str().len() <= 255);
        assert_eq!(short("abc").as_str(), "abc");
    }

    #[test]
    fn deliver_layout() {
        let mut out = BytesMut::new();
        let mut scratch = Vec::new();
        let props = BasicProperties::default();
        let body = vec![7u8; 10000];
        let m = ContentMethod::Deliver {
            consumer_tag: "ct",
            delivery_tag: 5,
            redelivered: true,
            exchange: "ex",
            routing_key: "rk",
        };
        encode_content(&mut out, 3, m, &props, &body, 4096, &mut scratch);
        // method frame: 7 header + 4 ids + (1+2) + 8 + 1 + (1+2) + (1+2) + end
        assert_eq!(out[0], 1);
        assert_eq!(u16::from_be_bytes([out[1], out[2]]), 3);
        let msize = u32::from_be_bytes([out[3], out[4], out[5], out[6]]) as usize;
        assert_eq!(msize, 4 + 3 + 8 + 1 + 3 + 3);
        assert_eq!(out[7 + msize], FRAME_END);
        let h = 7 + msize + 1;
        assert_eq!(out[h], 2);
        let hsize = u32::from_be_bytes([out[h + 3], out[h + 4], out[h + 5], out[h + 6]]) as usize;
        assert_eq!(hsize, 14);
        // 10000 bytes in 4088-byte frames: 3 frames.
        let mut p = h + 7 + hsize + 1;
        let mut total = 0;
        let mut frames = 0;
        while p < out.len() {
            assert_eq!(out[p], 3);
            let n = u32::from_be_bytes([out[p + 3], out[p + 4], out[p + 5], out[p + 6]]) as usize;
            assert!(n <= 4088);
            total += n;
            frames += 1;
            p += 7 + n + 1;
            assert_eq!(out[p - 1], FRAME_END);
        }
        assert_eq!((total, frames), (10000, 3));
    }
}
