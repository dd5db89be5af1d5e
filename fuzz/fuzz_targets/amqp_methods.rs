//! Drives a broker connection (`berth_broker::server::connection::Connection`)
//! on an in-memory broker with a valid handshake followed by frames built from
//! the input: structurally valid methods with fuzzed fields (publishes with
//! content, consumes, acks, declares, binds, tx, confirms, channel open/close),
//! raw byte chunks, and clock jumps for the timers. Must never panic, and the
//! output of one step stays bounded.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use berth_amqp::amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use berth_amqp::amq_protocol::protocol::{
    basic, channel, confirm, connection, exchange, queue, tx,
};
use berth_amqp::codec::{encode_frame, encode_method, PROTOCOL_HEADER};
use berth_amqp::{AMQPClass, AMQPValue, BasicProperties, FieldTable, LongString, ShortString};
use berth_broker::server::connection::{Connection, Control};
use berth_broker::Broker;
use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "",
    "q",
    "q2",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "x",
    "amq.gen-1",
    "#",
];
const KINDS: &[&str] = &["direct", "fanout", "topic", "headers", "bogus"];
/// Generous: one step's output is a few deliveries of bodies from the input.
const MAX_STEP_OUTPUT: usize = 64 << 20;

fn name(u: &mut Unstructured) -> Result<ShortString> {
    Ok(ShortString::from(*u.choose(NAMES)?))
}

fn args(u: &mut Unstructured) -> Result<FieldTable> {
    let mut t = FieldTable::default();
    for _ in 0..u.int_in_range(0..=2)? {
        let key = *u.choose(&[
            "x-max-length",
            "x-message-ttl",
            "x-expires",
            "x-priority",
            "x-max-priority",
            "x-overflow",
            "x-dead-letter-exchange",
            "x-match",
            "x-queue-type",
            "k",
        ])?;
        let v = match u.int_in_range(0..=3)? {
            0 => AMQPValue::LongInt(u.arbitrary()?),
            1 => AMQPValue::LongString(LongString::from(
                u.choose(&["reject-publish", "drop-head", "all", "any", "q", "classic"])?
                    .as_bytes(),
            )),
            2 => AMQPValue::Boolean(u.arbitrary()?),
            _ => AMQPValue::ShortShortUInt(u.arbitrary()?),
        };
        t.insert(key.into(), v);
    }
    Ok(t)
}

fn method(u: &mut Unstructured) -> Result<AMQPClass> {
    Ok(match u.int_in_range(0..=24)? {
        0 => AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        1 => AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close::default())),
        2 => AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        3 => AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow {
            active: u.arbitrary()?,
        })),
        4 => AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: name(u)?,
            kind: (*u.choose(KINDS)?).into(),
            passive: u.arbitrary()?,
            durable: u.arbitrary()?,
            auto_delete: u.arbitrary()?,
            internal: u.arbitrary()?,
            nowait: u.arbitrary()?,
            arguments: args(u)?,
        })),
        5 => AMQPClass::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: name(u)?,
            if_unused: u.arbitrary()?,
            nowait: u.arbitrary()?,
        })),
        6 => AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: name(u)?,
            source: name(u)?,
            routing_key: name(u)?,
            nowait: u.arbitrary()?,
            arguments: args(u)?,
        })),
        7 => AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: name(u)?,
            passive: u.arbitrary()?,
            durable: u.arbitrary()?,
            exclusive: u.arbitrary()?,
            auto_delete: u.arbitrary()?,
            nowait: u.arbitrary()?,
            arguments: args(u)?,
        })),
        8 => AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: name(u)?,
            exchange: name(u)?,
            routing_key: name(u)?,
            nowait: u.arbitrary()?,
            arguments: args(u)?,
        })),
        9 => AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: name(u)?,
            exchange: name(u)?,
            routing_key: name(u)?,
            arguments: args(u)?,
        })),
        10 => AMQPClass::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: name(u)?,
            nowait: u.arbitrary()?,
        })),
        11 => AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: name(u)?,
            if_unused: u.arbitrary()?,
            if_empty: u.arbitrary()?,
            nowait: u.arbitrary()?,
        })),
        12 => AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: u.int_in_range(0..=5)?,
            global: u.arbitrary()?,
        })),
        13 => AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: name(u)?,
            consumer_tag: (*u.choose(&["", "a", "b"])?).into(),
            no_local: u.arbitrary()?,
            no_ack: u.arbitrary()?,
            exclusive: u.arbitrary()?,
            nowait: u.arbitrary()?,
            arguments: args(u)?,
        })),
        14 => AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: (*u.choose(&["", "a", "b"])?).into(),
            nowait: u.arbitrary()?,
        })),
        15 => AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: name(u)?,
            no_ack: u.arbitrary()?,
        })),
        16 => AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: u.int_in_range(0..=8)?,
            multiple: u.arbitrary()?,
        })),
        17 => AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: u.int_in_range(0..=8)?,
            multiple: u.arbitrary()?,
            requeue: u.arbitrary()?,
        })),
        18 => AMQPClass::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: u.int_in_range(0..=8)?,
            requeue: u.arbitrary()?,
        })),
        19 => AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover {
            requeue: u.arbitrary()?,
        })),
        20 => AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: u.arbitrary()?,
        })),
        21 => AMQPClass::Tx(match u.int_in_range(0..=2)? {
            0 => tx::AMQPMethod::Select(tx::Select {}),
            1 => tx::AMQPMethod::Commit(tx::Commit {}),
            _ => tx::AMQPMethod::Rollback(tx::Rollback {}),
        }),
        22 => AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close::default())),
        23 => AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        _ => AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: name(u)?,
            routing_key: name(u)?,
            mandatory: u.arbitrary()?,
            immediate: u.ratio(1, 20)?,
        })),
    })
}

/// One step's bytes.
fn step(u: &mut Unstructured, out: &mut BytesMut) -> Result<()> {
    match u.int_in_range(0..=9)? {
        // Raw bytes: anything the decoder may see.
        0 => {
            let n = u.int_in_range(0..=64)?;
            out.extend_from_slice(u.bytes(n)?);
        }
        // A publish with content, possibly cut short or in pieces.
        1..=3 => {
            let ch = u.int_in_range(0..=3)?;
            let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                exchange: name(u)?,
                routing_key: name(u)?,
                mandatory: u.arbitrary()?,
                immediate: u.ratio(1, 50)?,
            }));
            encode_method(ch, &m, out);
            let len = u.int_in_range(0..=300)?;
            let body = u.bytes(len.min(u.len()))?.to_vec();
            let mut props = BasicProperties::default();
            if u.arbitrary()? {
                props = props.with_delivery_mode(u.int_in_range(1..=2)?);
            }
            if u.arbitrary()? {
                props = props.with_priority(u.arbitrary()?);
            }
            if u.arbitrary()? {
                props = props.with_expiration((*u.choose(&["0", "10", "x", "-1"])?).into());
            }
            let declared = if u.ratio(1, 10)? {
                body.len() as u64 + 5
            } else {
                body.len() as u64
            };
            let h = AMQPContentHeader {
                class_id: 60,
                body_size: declared,
                properties: props,
            };
            encode_frame(&AMQPFrame::Header(ch, h), out);
            for part in body.chunks(u.int_in_range(1..=200)?) {
                encode_frame(&AMQPFrame::Body(ch, part.to_vec()), out);
            }
        }
        // A heartbeat.
        4 => encode_frame(&AMQPFrame::Heartbeat, out),
        // Any other method on a small channel number.
        _ => {
            let ch = u.int_in_range(0..=3)?;
            let m = method(u)?;
            encode_method(ch, &m, out);
        }
    }
    Ok(())
}

fn handshake(out: &mut BytesMut) {
    out.extend_from_slice(&PROTOCOL_HEADER);
    encode_method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(&b"\0guest\0guest"[..]),
            locale: "en_US".into(),
        })),
        out,
    );
    encode_method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 8,
            frame_max: 4096,
            heartbeat: 5,
        })),
        out,
    );
    encode_method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
        out,
    );
    encode_method(
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        out,
    );
}

fn run(data: &[u8]) -> Result<()> {
    let broker = Broker::in_memory();
    let peer: SocketAddr = "127.0.0.1:50000".parse().expect("literal");
    let local: SocketAddr = "127.0.0.1:5672".parse().expect("literal");
    let mut now = Instant::now();
    let mut conn = Connection::new(broker.clone(), peer, local, false, now);
    // A second connection shares the broker (exclusive queues, cross-connection consumers).
    let mut other = Connection::new(broker, peer, local, false, now);
    let mut buf = BytesMut::new();
    handshake(&mut buf);
    let mut other_buf = buf.clone();
    conn.on_input(&mut buf, now);
    other.on_input(&mut other_buf, now);
    conn.drain_output();
    other.drain_output();
    let mut u = Unstructured::new(data);
    while !u.is_empty() {
        let target = u.ratio(1, 8)?;
        let c = if target { &mut other } else { &mut conn };
        let mut bytes = BytesMut::new();
        for _ in 0..u.int_in_range(1..=4)? {
            step(&mut u, &mut bytes)?;
        }
        // Split the bytes into two reads to exercise partial frames.
        let cut = u.int_in_range(0..=bytes.len())?;
        let mut first = bytes.split_to(cut);
        let mut ctl = c.on_input(&mut first, now);
        // What the first read left unconsumed comes before the second read.
        first.unsplit(bytes);
        let mut bytes = first;
        if ctl == Control::Continue {
            ctl = c.on_input(&mut bytes, now);
        }
        if u.ratio(1, 16)? {
            now += Duration::from_millis(u.int_in_range(0..=12_000)?);
            if let Some(t) = c.next_timer() {
                if t <= now {
                    ctl = c.on_timer(now);
                }
            }
        }
        let _ = c.on_wake(now);
        let out = c.drain_output();
        assert!(
            out.len() <= MAX_STEP_OUTPUT,
            "step output {} bytes",
            out.len()
        );
        if ctl == Control::Close || c.is_closed() {
            break;
        }
        let _ = other.on_wake(now);
        other.drain_output();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
