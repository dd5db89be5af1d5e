//! What an AMQP 0-9-1 client sends the broker: the protocol header and frames,
//! fed to berth_amqp's FrameDecoder in arbitrary chunks and then to one
//! ContentAssembler per channel. Nothing may panic, the decoder's buffer may
//! never grow past frame-max + 8 plus one chunk, and every decoded frame must
//! re-encode to bytes that decode again. The SASL parser and the topic matcher
//! get the same bytes.
#![no_main]

use std::collections::HashMap;

use berth_amqp::codec::{
    decode_properties, encode_frame, Decoded, FrameDecoder, FRAME_MIN_SIZE, PROTOCOL_HEADER,
};
use berth_amqp::{matching, sasl, AMQPFrame, ContentAssembler, ErrorScope};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

const MAX_CHUNK: usize = 64;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (control, stream) = (data[0], &data[2..]);
    let mut seed = u32::from(data[1]) | 1;
    let frame_max = FRAME_MIN_SIZE + u32::from(control >> 4) * 97;

    let mut decoder = FrameDecoder::new(frame_max);
    let mut buf = BytesMut::new();
    if control & 1 == 1 {
        // Start as a client that sent a correct header.
        buf.extend_from_slice(&PROTOCOL_HEADER);
    }
    let mut assemblers: HashMap<u16, ContentAssembler> = HashMap::new();
    let mut pos = 0;
    'feed: while pos < stream.len() || !buf.is_empty() {
        // xorshift-chosen chunk lengths of 1..=MAX_CHUNK bytes.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let take = (seed as usize % MAX_CHUNK + 1).min(stream.len() - pos);
        buf.extend_from_slice(&stream[pos..pos + take]);
        pos += take;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::ProtocolHeader(_))) => {}
                Ok(Some(Decoded::Frame(frame))) => {
                    check_reencodes(&frame);
                    let channel = frame.channel_id();
                    if channel == 0 || matches!(frame, AMQPFrame::Heartbeat) {
                        continue;
                    }
                    let assembler = assemblers
                        .entry(channel)
                        .or_insert_with(|| ContentAssembler::new(1 << 16));
                    match assembler.on_frame(channel, frame) {
                        Ok(_) => {}
                        Err(e) => {
                            let _ = (e.reply_text(), e.close_method());
                            assert!(e.reply_text().len() <= 255);
                            if e.scope == ErrorScope::Connection {
                                break 'feed;
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(e.scope == ErrorScope::Connection);
                    assert!(e.reply_text().len() <= 255);
                    break 'feed;
                }
            }
        }
        assert!(
            buf.len() <= frame_max as usize + 8,
            "buffered {} bytes with frame-max {frame_max}",
            buf.len()
        );
        if pos >= stream.len() {
            break;
        }
    }

    let _ = decode_properties(stream);
    let _ = sasl::parse_response("PLAIN", stream);
    let _ = sasl::parse_response("AMQPLAIN", stream);
    let text = String::from_utf8_lossy(stream);
    let (pattern, key) = text.split_once('|').unwrap_or((&text, ""));
    let _ = matching::topic_matches(pattern, key);
});

/// A decoded frame re-encodes to one frame that decodes again.
fn check_reencodes(frame: &AMQPFrame) {
    let mut out = BytesMut::new();
    out.extend_from_slice(&PROTOCOL_HEADER);
    encode_frame(frame, &mut out);
    let mut d = FrameDecoder::new(u32::MAX);
    assert!(matches!(
        d.decode(&mut out),
        Ok(Some(Decoded::ProtocolHeader(_)))
    ));
    match d.decode(&mut out) {
        Ok(Some(Decoded::Frame(_))) => {}
        other => panic!("re-encoded {frame:?} decodes as {other:?}"),
    }
    assert!(out.is_empty());
}
