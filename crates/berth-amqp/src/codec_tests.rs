use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{basic, channel, connection, exchange, queue};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;

use super::*;
use crate::error::ErrorScope;

fn after_header(frame_max: u32) -> FrameDecoder {
    let mut d = FrameDecoder::new(frame_max);
    let mut buf = BytesMut::from(&PROTOCOL_HEADER[..]);
    assert!(matches!(
        d.decode(&mut buf),
        Ok(Some(Decoded::ProtocolHeader(_)))
    ));
    d
}

fn table() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    t.insert(
        "name".into(),
        AMQPValue::LongString(LongString::from("v".repeat(300))),
    );
    let mut inner = FieldTable::default();
    inner.insert("deep".into(), AMQPValue::Boolean(true));
    t.insert("nested".into(), AMQPValue::FieldTable(inner));
    t
}

fn sample_frames() -> Vec<AMQPFrame> {
    vec![
        AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat: 60,
            })),
        ),
        AMQPFrame::Method(
            7,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "q1".into(),
                durable: true,
                arguments: table(),
                ..Default::default()
            })),
        ),
        AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: "amq.topic".into(),
                routing_key: "a.b.c".into(),
                mandatory: true,
                immediate: false,
            })),
        ),
        AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: 5,
                properties: BasicProperties::default()
                    .with_content_type("text/plain".into())
                    .with_delivery_mode(2)
                    .with_headers(table()),
            },
        ),
        AMQPFrame::Body(1, b"hello".to_vec()),
        AMQPFrame::Body(1, Vec::new()),
        AMQPFrame::Heartbeat,
        AMQPFrame::Method(
            3,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
    ]
}

fn encoded(frame: &AMQPFrame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(frame, &mut out);
    out.to_vec()
}

fn expect_err(
    result: Result<Option<Decoded>, AmqpError>,
    code: ReplyCode,
    needles: &[&str],
) -> AmqpError {
    let err = match result {
        Err(e) => e,
        Ok(other) => panic!("expected {code:?}, got {other:?}"),
    };
    assert_eq!(err.code, code, "{err}");
    assert_eq!(err.scope, ErrorScope::Connection);
    for needle in needles {
        assert!(err.text.contains(needle), "{:?} lacks {needle:?}", err.text);
    }
    err
}

#[test]
fn protocol_header_cases() {
    let good: &[u8] = b"AMQP\x00\x00\x09\x01";
    let bad: &[&[u8]] = &[
        b"AMQP\x00\x00\x09\x00",
        b"AMQP\x01\x01\x00\x09",
        b"AMQP\x00\x00\x08\x00",
        b"GET / HTTP/1.1\r\n",
        b"\x01\x00\x00\x00\x00\x00\x04",
        b"AMQX",
    ];
    for input in bad {
        let mut d = FrameDecoder::new(FRAME_MIN_SIZE);
        let mut buf = BytesMut::from(*input);
        expect_err(
            d.decode(&mut buf),
            ReplyCode::FrameError,
            &["bad protocol header"],
        );
    }
    // Every strict prefix waits; the whole header decodes and is consumed.
    for cut in 0..good.len() {
        let mut d = FrameDecoder::new(FRAME_MIN_SIZE);
        let mut buf = BytesMut::from(&good[..cut]);
        assert_eq!(d.decode(&mut buf), Ok(None), "cut {cut}");
        assert_eq!(buf.len(), cut);
        buf.extend_from_slice(&good[cut..]);
        buf.extend_from_slice(&encoded(&AMQPFrame::Heartbeat));
        assert_eq!(
            d.decode(&mut buf),
            Ok(Some(Decoded::ProtocolHeader(ProtocolVersion::amqp_0_9_1())))
        );
        assert_eq!(
            d.decode(&mut buf),
            Ok(Some(Decoded::Frame(AMQPFrame::Heartbeat)))
        );
        assert!(buf.is_empty());
    }
    // A second protocol header after the first is not a frame type.
    let mut d = after_header(FRAME_MIN_SIZE);
    let mut buf = BytesMut::from(good);
    expect_err(
        d.decode(&mut buf),
        ReplyCode::FrameError,
        &["unknown frame type 65"],
    );
}

#[test]
fn round_trip_and_truncation_at_every_offset() {
    for frame in sample_frames() {
        let bytes = encoded(&frame);
        let trailer = encoded(&AMQPFrame::Heartbeat);
        for cut in 0..bytes.len() {
            let mut d = after_header(DEFAULT_FRAME_MAX);
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "{frame:?} cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed while incomplete");
            buf.extend_from_slice(&bytes[cut..]);
            buf.extend_from_slice(&trailer);
            assert_eq!(
                d.decode(&mut buf),
                Ok(Some(Decoded::Frame(frame.clone()))),
                "cut at {cut}"
            );
            assert_eq!(&buf[..], &trailer[..], "exactly one frame consumed");
        }
    }
}

#[test]
fn frame_limits() {
    let limit = FRAME_MIN_SIZE - 8;
    // (declared size, bytes after the header present, expected)
    let cases: [(u32, bool); 5] = [
        (0, true),
        (limit - 1, true),
        (limit, true),
        (limit + 1, false),
        (u32::MAX, false),
    ];
    for (size, ok) in cases {
        let mut d = after_header(FRAME_MIN_SIZE);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[3, 0, 1]);
        buf.extend_from_slice(&size.to_be_bytes());
        if ok {
            if size > 0 {
                // Waits for the payload without error.
                assert_eq!(d.decode(&mut buf), Ok(None), "size {size}");
            }
            buf.extend_from_slice(&vec![7u8; size as usize]);
            buf.extend_from_slice(&[0xCE]);
            assert_eq!(
                d.decode(&mut buf),
                Ok(Some(Decoded::Frame(AMQPFrame::Body(
                    1,
                    vec![7u8; size as usize]
                ))))
            );
        } else {
            // Rejected from the 7-byte header alone, before any payload.
            expect_err(
                d.decode(&mut buf),
                ReplyCode::FrameError,
                &[&size.to_string(), &limit.to_string()],
            );
        }
    }
    // set_frame_max raises the limit; frame-max 0 means the default.
    let mut d = after_header(FRAME_MIN_SIZE);
    d.set_frame_max(DEFAULT_FRAME_MAX);
    assert_eq!(d.frame_max(), DEFAULT_FRAME_MAX);
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 1, 0, 0][..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    let mut d = after_header(0);
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0, 2, 0, 0][..]);
    expect_err(d.decode(&mut buf), ReplyCode::FrameError, &["131064"]);
}

#[test]
fn bad_frames() {
    let body = encoded(&AMQPFrame::Body(1, b"abc".to_vec()));
    let mut bad_end = body.clone();
    *bad_end.last_mut().unwrap() = 0xCD;
    let method_ids = |class: u16, method: u16, rest: &[u8]| {
        let mut payload = Vec::new();
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(rest);
        let mut f = vec![1, 0, 1];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(&payload);
        f.push(0xCE);
        f
    };
    let mut trailing = encoded(&AMQPFrame::Method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ));
    // Grow the payload by one byte inside the frame.
    let n = trailing.len();
    trailing.insert(n - 1, 0);
    trailing[6] += 1;
    let cases: Vec<(Vec<u8>, ReplyCode, Vec<&str>)> = vec![
        (
            vec![4, 0, 1, 0, 0, 0, 0, 0xCE],
            ReplyCode::FrameError,
            vec!["unknown frame type 4"],
        ),
        (
            vec![0, 0, 0, 0, 0, 0, 0, 0xCE],
            ReplyCode::FrameError,
            vec!["unknown frame type 0"],
        ),
        (
            vec![8, 0, 1, 0, 0, 0, 0, 0xCE],
            ReplyCode::UnexpectedFrame,
            vec!["type 8"],
        ),
        (bad_end, ReplyCode::FrameError, vec!["frame end"]),
        (
            vec![1, 0, 1, 0, 0, 0, 2, 0, 20, 0xCE],
            ReplyCode::SyntaxError,
            vec!["too short"],
        ),
        (
            method_ids(99, 10, &[]),
            ReplyCode::NotImplemented,
            vec!["99", "10"],
        ),
        (
            method_ids(60, 999, &[]),
            ReplyCode::CommandInvalid,
            vec!["60", "999"],
        ),
        (
            method_ids(50, 10, &[]),
            ReplyCode::FrameError,
            vec!["50.10"],
        ),
        (
            method_ids(50, 10, &[0, 0, 200, b'q']),
            ReplyCode::FrameError,
            vec!["50.10"],
        ),
        (trailing, ReplyCode::FrameError, vec!["trailing"]),
        (
            vec![2, 0, 1, 0, 0, 0, 3, 0, 60, 0, 0xCE],
            ReplyCode::FrameError,
            vec!["content header"],
        ),
        (
            vec![
                2, 0, 1, 0, 0, 0, 14, 0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x80, 0, 0xCE,
            ],
            ReplyCode::FrameError,
            vec!["content header"],
        ),
    ];
    for (bytes, code, needles) in cases {
        let mut d = after_header(FRAME_MIN_SIZE);
        let mut buf = BytesMut::from(&bytes[..]);
        let err = expect_err(d.decode(&mut buf), code, &needles);
        if code == ReplyCode::NotImplemented || code == ReplyCode::CommandInvalid {
            assert_ne!((err.class_id, err.method_id), (0, 0));
        }
    }
}

/// exchange.declare whose arguments nest `depth` tables, each holding the next.
fn nested_declare(depth: usize) -> Vec<u8> {
    // Built inside out: innermost is an empty table.
    let mut table: Vec<u8> = vec![0, 0, 0, 0];
    for _ in 0..depth {
        let mut outer = Vec::new();
        let entry_len = 1 + 1 + 1 + table.len();
        outer.extend_from_slice(&(entry_len as u32).to_be_bytes());
        outer.extend_from_slice(&[1, b'k', b'F']);
        outer.extend_from_slice(&table);
        table = outer;
    }
    let mut payload = vec![0, 40, 0, 10, 0, 0, 1, b'e', 6];
    payload.extend_from_slice(b"direct");
    payload.push(0);
    payload.extend_from_slice(&table);
    let mut f = vec![1, 0, 1];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(&payload);
    f.push(0xCE);
    f
}

#[test]
fn nesting_is_bounded_without_recursing() {
    for (depth, ok) in [
        (3, true),
        (MAX_NESTING - 1, true),
        (MAX_NESTING + 5, false),
        (20_000, false),
    ] {
        let bytes = nested_declare(depth);
        let mut d = after_header(u32::MAX);
        let mut buf = BytesMut::from(&bytes[..]);
        let result = d.decode(&mut buf);
        if ok {
            assert!(
                matches!(
                    result,
                    Ok(Some(Decoded::Frame(AMQPFrame::Method(
                        1,
                        AMQPClass::Exchange(_)
                    ))))
                ),
                "{depth}"
            );
        } else {
            expect_err(result, ReplyCode::SyntaxError, &["nested"]);
        }
    }
    // Many 'F'/'A' bytes that are not containers do not trip the check.
    let mut t = FieldTable::default();
    t.insert(
        "k".into(),
        AMQPValue::LongString(LongString::from("FAFA".repeat(1000))),
    );
    t.insert("b".into(), AMQPValue::ByteArray(vec![b'F'; 500].into()));
    let frame = AMQPFrame::Method(
        1,
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: "e".into(),
            kind: "topic".into(),
            arguments: t,
            ..Default::default()
        })),
    );
    let mut d = after_header(DEFAULT_FRAME_MAX);
    let mut buf = BytesMut::from(&encoded(&frame)[..]);
    assert_eq!(d.decode(&mut buf), Ok(Some(Decoded::Frame(frame))));
}

#[test]
fn encode_content_splits_body() {
    let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 42,
        redelivered: false,
        exchange: "".into(),
        routing_key: "q".into(),
    }));
    let props = BasicProperties::default().with_message_id("m1".into());
    let frame_max = FRAME_MIN_SIZE;
    let chunk = (frame_max - 8) as usize;
    for (len, body_frames) in [
        (0usize, 0usize),
        (1, 1),
        (chunk, 1),
        (chunk + 1, 2),
        (3 * chunk, 3),
    ] {
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut out = BytesMut::from(&b"prefix"[..]);
        encode_content(5, &method, &props, &body, frame_max, &mut out);
        assert_eq!(&out[..6], b"prefix");
        let _ = out.split_to(6);
        let mut d = after_header(frame_max);
        let mut frames = Vec::new();
        while let Some(item) = d.decode(&mut out).unwrap() {
            match item {
                Decoded::Frame(f) => frames.push(f),
                other => panic!("{other:?}"),
            }
        }
        assert!(out.is_empty());
        assert_eq!(frames.len(), 2 + body_frames, "len {len}");
        assert_eq!(frames[0], AMQPFrame::Method(5, method.clone()));
        match &frames[1] {
            AMQPFrame::Header(5, h) => {
                assert_eq!(h.class_id, 60);
                assert_eq!(h.body_size, len as u64);
                assert_eq!(h.properties, props);
            }
            other => panic!("{other:?}"),
        }
        let mut got = Vec::new();
        for f in &frames[2..] {
            match f {
                AMQPFrame::Body(5, data) => {
                    assert!(data.len() <= chunk && !data.is_empty());
                    got.extend_from_slice(data);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, body);
    }
}

#[test]
fn encode_method_matches_gen_frame() {
    for frame in sample_frames() {
        if let AMQPFrame::Method(ch, class) = &frame {
            let mut a = BytesMut::new();
            encode_method(*ch, class, &mut a);
            let ctx =
                gen_frame(&frame)(amq_protocol::frame::WriteContext::from(Vec::new())).unwrap();
            let (want, _) = ctx.into_inner();
            assert_eq!(&a[..], &want[..]);
        }
    }
}

#[test]
fn properties_and_tables_round_trip() {
    let cases = [
        BasicProperties::default(),
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(9),
        BasicProperties::default()
            .with_headers(table())
            .with_expiration("60000".into())
            .with_timestamp(1_700_000_000)
            .with_cluster_id("c".into()),
    ];
    for props in cases {
        let mut out = vec![9u8];
        encode_properties(&props, &mut out);
        assert_eq!(out[0], 9, "appends");
        assert_eq!(decode_properties(&out[1..]), Some(props.clone()));
        for cut in 0..out.len() - 1 {
            assert_eq!(decode_properties(&out[1..1 + cut]), None, "cut {cut}");
        }
    }
    assert_eq!(decode_properties(&[0xFF, 0xFF, 1]), None);
    let mut out = Vec::new();
    encode_field_table(&table(), &mut out);
    assert_eq!(decode_field_table(&out), Some(table()));
    assert_eq!(decode_field_table(&out[..out.len() - 1]), None);
}

#[test]
fn garbage_never_panics() {
    // xorshift; deterministic pseudo-random garbage in random chunks.
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for round in 0..2000 {
        let mut d = if round % 2 == 0 {
            after_header(FRAME_MIN_SIZE)
        } else {
            FrameDecoder::new(FRAME_MIN_SIZE)
        };
        let len = (next() % 600) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if round % 3 == 0 && data.len() > 7 {
            // Plausible headers: a known type and a small size.
            data[0] = [1, 2, 3, 8][(next() % 4) as usize];
            data[3..7].copy_from_slice(&((next() % 64) as u32).to_be_bytes());
        }
        let mut buf = BytesMut::new();
        let mut pos = 0;
        while pos < data.len() {
            let take = ((next() % 17) as usize + 1).min(data.len() - pos);
            buf.extend_from_slice(&data[pos..pos + take]);
            pos += take;
            loop {
                match d.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(_) => {
                        pos = data.len();
                        break;
                    }
                }
            }
            assert!(buf.len() <= FRAME_MIN_SIZE as usize + 8);
        }
    }
}
