//! Connection state machine driven by bytes, on an in-memory broker.
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::frame::{parse_frame, AMQPContentHeader};
use amq_protocol::protocol::{basic, channel, confirm, connection, queue, tx};
use berth_amqp::codec::{encode_frame, encode_method, PROTOCOL_HEADER};
use berth_amqp::{AMQPClass, AMQPFrame, AMQPValue, BasicProperties, FieldTable, LongString};
use bytes::BytesMut;

use super::connection::{Connection, Control};
use crate::{Broker, BrokerConfig};

struct Client {
    conn: Connection,
    now: Instant,
    frames: VecDeque<AMQPFrame>,
    last: Control,
    /// Input the connection left unprocessed (held while blocked by an alarm).
    input: BytesMut,
}

struct Msg {
    method: AMQPClass,
    props: BasicProperties,
    body: Vec<u8>,
}

fn plain(user: &str, pass: &str) -> LongString {
    LongString::from(format!("\0{user}\0{pass}").into_bytes())
}

fn caps() -> FieldTable {
    let mut c = FieldTable::default();
    c.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
    c.insert("connection.blocked".into(), AMQPValue::Boolean(true));
    let mut t = FieldTable::default();
    t.insert("capabilities".into(), AMQPValue::FieldTable(c));
    t
}

impl Client {
    fn new(broker: &Arc<Broker>) -> Self {
        let now = Instant::now();
        let conn = Connection::new(
            broker.clone(),
            "127.0.0.1:40000".parse().unwrap(),
            "127.0.0.1:5672".parse().unwrap(),
            false,
            now,
        );
        Self {
            conn,
            now,
            frames: VecDeque::new(),
            last: Control::Continue,
            input: BytesMut::new(),
        }
    }

    fn raw(&mut self, bytes: &[u8]) -> Control {
        self.input.extend_from_slice(bytes);
        self.resume()
    }

    /// Feeds the held input again, as the socket task does when an alarm clears.
    fn resume(&mut self) -> Control {
        self.last = self.conn.on_input(&mut self.input, self.now);
        self.collect();
        self.last
    }

    fn collect(&mut self) {
        let ctl = self.conn.on_wake(self.now);
        if ctl == Control::Close {
            self.last = ctl;
        }
        let out = self.conn.drain_output();
        let mut rest: &[u8] = &out;
        if rest.starts_with(b"AMQP") {
            self.frames.push_back(AMQPFrame::ProtocolHeader(
                amq_protocol::frame::ProtocolVersion::amqp_0_9_1(),
            ));
            rest = &rest[8..];
        }
        while !rest.is_empty() {
            let (r, f) = parse_frame(rest).expect("server output parses");
            self.frames.push_back(f);
            rest = r;
        }
    }

    fn send(&mut self, ch: u16, m: AMQPClass) -> Control {
        let mut b = BytesMut::new();
        encode_method(ch, &m, &mut b);
        self.raw(&b)
    }

    fn publish_props(
        &mut self,
        ch: u16,
        exchange: &str,
        rk: &str,
        props: BasicProperties,
        body: &[u8],
        mandatory: bool,
    ) {
        let mut b = BytesMut::new();
        let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: rk.into(),
            mandatory,
            immediate: false,
        }));
        encode_method(ch, &m, &mut b);
        let h = AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: props,
        };
        encode_frame(&AMQPFrame::Header(ch, h), &mut b);
        for part in body.chunks(131_064) {
            encode_frame(&AMQPFrame::Body(ch, part.to_vec()), &mut b);
        }
        self.raw(&b);
    }

    fn publish(&mut self, ch: u16, exchange: &str, rk: &str, body: &[u8]) {
        self.publish_props(ch, exchange, rk, BasicProperties::default(), body, false)
    }

    fn next(&mut self) -> AMQPFrame {
        self.collect();
        self.frames.pop_front().expect("a frame from the server")
    }

    fn method(&mut self) -> (u16, AMQPClass) {
        match self.next() {
            AMQPFrame::Method(ch, m) => (ch, m),
            other => panic!("expected a method, got {other:?}"),
        }
    }

    fn content(&mut self) -> Msg {
        let (_, method) = self.method();
        let AMQPFrame::Header(_, h) = self.next() else {
            panic!("expected a content header")
        };
        let mut body = Vec::new();
        while (body.len() as u64) < h.body_size {
            match self.next() {
                AMQPFrame::Body(_, b) => body.extend_from_slice(&b),
                other => panic!("expected a body frame, got {other:?}"),
            }
        }
        Msg {
            method,
            props: h.properties,
            body,
        }
    }

    fn nothing(&mut self) {
        self.collect();
        assert!(
            self.frames.is_empty(),
            "unexpected frames: {:?}",
            self.frames
        );
    }

    fn handshake_as(&mut self, user: &str, pass: &str) -> (u16, AMQPClass) {
        self.raw(&PROTOCOL_HEADER);
        let (_, start) = self.method();
        assert!(matches!(
            start,
            AMQPClass::Connection(connection::AMQPMethod::Start(_))
        ));
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: caps(),
                mechanism: "PLAIN".into(),
                response: plain(user, pass),
                locale: "en_US".into(),
            })),
        );
        self.method()
    }

    fn open(broker: &Arc<Broker>) -> Self {
        let mut c = Client::new(broker);
        let (_, tune) = c.handshake_as("guest", "guest");
        let AMQPClass::Connection(connection::AMQPMethod::Tune(t)) = tune else {
            panic!("expected tune, got {tune:?}")
        };
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: t.channel_max,
                frame_max: t.frame_max,
                heartbeat: 0,
            })),
        );
        c.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: "/".into(),
            })),
        );
        let (_, ok) = c.method();
        assert!(
            matches!(ok, AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))),
            "{ok:?}"
        );
        c
    }

    fn open_channel(&mut self, n: u16) {
        self.send(
            n,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        );
        let (ch, m) = self.method();
        assert_eq!(ch, n);
        assert!(matches!(
            m,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
        ));
    }

    fn declare(&mut self, ch: u16, name: &str) -> queue::DeclareOk {
        self.send(
            ch,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: name.into(),
                ..Default::default()
            })),
        );
        match self.method() {
            (_, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => ok,
            other => panic!("expected declare-ok, got {other:?}"),
        }
    }

    fn consume(&mut self, ch: u16, q: &str, tag: &str, no_ack: bool) {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: q.into(),
                consumer_tag: tag.into(),
                no_ack,
                ..Default::default()
            })),
        );
        let (_, m) = self.method();
        assert!(
            matches!(m, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))),
            "{m:?}"
        );
    }

    fn ack(&mut self, ch: u16, tag: u64, multiple: bool) {
        self.send(
            ch,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: tag,
                multiple,
            })),
        );
    }

    fn expect_channel_close(&mut self, code: u16, text_prefix: &str) -> channel::Close {
        match self.method() {
            (_, AMQPClass::Channel(channel::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, code, "{c:?}");
                assert!(c.reply_text.as_str().starts_with(text_prefix), "{c:?}");
                c
            }
            other => panic!("expected channel.close, got {other:?}"),
        }
    }

    fn expect_connection_close(&mut self, code: u16, text_prefix: &str) -> connection::Close {
        match self.method() {
            (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
                assert_eq!(c.reply_code, code, "{c:?}");
                assert!(c.reply_text.as_str().starts_with(text_prefix), "{c:?}");
                c
            }
            other => panic!("expected connection.close, got {other:?}"),
        }
    }
}

fn deliver(m: &Msg) -> &basic::Deliver {
    match &m.method {
        AMQPClass::Basic(basic::AMQPMethod::Deliver(d)) => d,
        other => panic!("expected deliver, got {other:?}"),
    }
}

#[test]
fn handshake_offers_capabilities_and_opens() {
    let broker = Broker::in_memory();
    let mut c = Client::new(&broker);
    c.raw(&PROTOCOL_HEADER);
    let (_, m) = c.method();
    let AMQPClass::Connection(connection::AMQPMethod::Start(s)) = m else {
        panic!()
    };
    assert_eq!((s.version_major, s.version_minor), (0, 9));
    assert_eq!(s.mechanisms.as_bytes(), b"PLAIN AMQPLAIN");
    assert_eq!(s.locales.as_bytes(), b"en_US");
    let props = s.server_properties.inner();
    assert!(
        matches!(props.get("product"), Some(AMQPValue::LongString(p)) if p.as_bytes() == b"berth")
    );
    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!()
    };
    for cap in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "per_consumer_qos",
        "connection.blocked",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "{cap}"
        );
    }
    drop(c);
    let mut c = Client::open(&broker);
    assert_eq!(broker.registry.connections().len(), 1);
    let info = &broker.registry.connections()[0];
    assert_eq!(
        (info.user.as_str(), info.vhost.as_str(), info.state.as_str()),
        ("guest", "/", "running")
    );
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close::default())),
    );
    let (_, m) = c.method();
    assert!(matches!(
        m,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
    ));
    assert_eq!(c.last, Control::Close);
    assert!(broker.registry.connections().is_empty());
}

#[test]
fn wrong_header_gets_ours_and_close() {
    let broker = Broker::in_memory();
    let mut c = Client::new(&broker);
    let mut b = BytesMut::from(&b"AMQP\x00\x00\x08\x00"[..]);
    assert_eq!(c.conn.on_input(&mut b, c.now), Control::Close);
    assert_eq!(&c.conn.drain_output()[..], &PROTOCOL_HEADER);
    let mut c = Client::new(&broker);
    let mut b = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    assert_eq!(c.conn.on_input(&mut b, c.now), Control::Close);
    assert_eq!(&c.conn.drain_output()[..], &PROTOCOL_HEADER);
}

#[test]
fn bad_credentials_are_refused() {
    let broker = Broker::in_memory();
    let mut c = Client::new(&broker);
    let (_, m) = c.handshake_as("guest", "wrong");
    let AMQPClass::Connection(connection::AMQPMethod::Close(cl)) = m else {
        panic!("{m:?}")
    };
    assert_eq!(cl.reply_code, 403);
    assert_eq!(
        cl.reply_text.as_str(),
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
    assert_eq!(c.last, Control::Close);

    let mut c = Client::new(&broker);
    c.raw(&PROTOCOL_HEADER);
    c.method();
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            mechanism: "EXTERNAL".into(),
            ..Default::default()
        })),
    );
    let cl = c.expect_connection_close(
        403,
        "ACCESS_REFUSED - unsupported authentication mechanism 'EXTERNAL'",
    );
    assert_eq!((cl.class_id, cl.method_id), (10, 11));
}

#[test]
fn tune_and_open_are_checked() {
    let broker = Broker::in_memory();
    let mut c = Client::new(&broker);
    c.handshake_as("guest", "guest");
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 1 << 30,
            heartbeat: 0,
        })),
    );
    c.expect_connection_close(
        530,
        "NOT_ALLOWED - negotiated frame_max = 1073741824 is higher",
    );

    let mut c = Client::new(&broker);
    c.handshake_as("guest", "guest");
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        })),
    );
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "nope".into(),
        })),
    );
    c.expect_connection_close(530, "NOT_ALLOWED - vhost nope not found");

    // Out of order: open before tune-ok.
    let mut c = Client::new(&broker);
    c.handshake_as("guest", "guest");
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    );
    c.expect_connection_close(503, "COMMAND_INVALID");
}

#[test]
fn handshake_times_out() {
    let broker = Broker::in_memory();
    let mut c = Client::new(&broker);
    c.raw(&PROTOCOL_HEADER);
    let t = c.conn.next_timer().unwrap();
    assert!(t <= c.now + Duration::from_secs(10));
    assert_eq!(c.conn.on_timer(t), Control::Close);
}

#[test]
fn heartbeats_are_sent_and_missing_ones_close() {
    let broker = Broker::in_memory();
    let mut c = Client::new(&broker);
    c.handshake_as("guest", "guest");
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 10,
        })),
    );
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    );
    c.method();
    let t = c.conn.next_timer().unwrap();
    assert_eq!(t, c.now + Duration::from_secs(5));
    assert_eq!(c.conn.on_timer(t), Control::Continue);
    assert!(matches!(c.next(), AMQPFrame::Heartbeat));
    assert_eq!(
        c.conn.on_timer(c.now + Duration::from_secs(21)),
        Control::Close
    );
}

#[test]
fn publish_consume_ack() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "q1");
    for i in 0..3 {
        c.publish(1, "", "q1", format!("m{i}").as_bytes());
    }
    assert_eq!(c.declare(1, "q1").message_count, 3);
    c.consume(1, "q1", "ct", false);
    for i in 0..3u64 {
        let m = c.content();
        let d = deliver(&m);
        assert_eq!(
            (
                d.delivery_tag,
                d.consumer_tag.as_str(),
                d.routing_key.as_str()
            ),
            (i + 1, "ct", "q1")
        );
        assert_eq!(m.body, format!("m{i}").as_bytes());
    }
    c.nothing();
    let ch = &broker.registry.channels()[0];
    assert_eq!((ch.consumers, ch.unacked), (1, 3));
    c.ack(1, 2, true);
    c.ack(1, 3, false);
    c.nothing();
    assert_eq!(broker.registry.channels()[0].unacked, 0);
    // Double ack is an unknown tag.
    c.ack(1, 3, false);
    let cl = c.expect_channel_close(406, "PRECONDITION_FAILED - unknown delivery tag 3");
    assert_eq!((cl.class_id, cl.method_id), (60, 80));
}

#[test]
fn large_bodies_span_frames_and_properties_survive() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "big");
    let body: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_delivery_mode(2);
    c.publish_props(1, "", "big", props.clone(), &body, false);
    c.consume(1, "big", "", true);
    let m = c.content();
    assert!(deliver(&m).consumer_tag.as_str().starts_with("amq.ctag-"));
    assert_eq!(m.body, body);
    assert_eq!(m.props, props);
}

#[test]
fn prefetch_limits_unacked() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "pq");
    for i in 0..5 {
        c.publish(1, "", "pq", &[i]);
    }
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 2,
            global: false,
        })),
    );
    assert!(matches!(
        c.method().1,
        AMQPClass::Basic(basic::AMQPMethod::QosOk(_))
    ));
    c.consume(1, "pq", "ct", false);
    assert_eq!(deliver(&c.content()).delivery_tag, 1);
    assert_eq!(deliver(&c.content()).delivery_tag, 2);
    c.nothing();
    c.ack(1, 1, false);
    assert_eq!(deliver(&c.content()).delivery_tag, 3);
    c.nothing();
    // Requeue via nack: redelivered.
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: 3,
            multiple: false,
            requeue: true,
        })),
    );
    let m = c.content();
    assert!(deliver(&m).redelivered);
    assert_eq!(m.body, [2]);
    c.nothing();
}

#[test]
fn global_prefetch_limits_channel() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "g1");
    c.declare(1, "g2");
    for i in 0..3 {
        c.publish(1, "", "g1", &[i]);
        c.publish(1, "", "g2", &[i]);
    }
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 3,
            global: true,
        })),
    );
    c.method();
    c.consume(1, "g1", "a", false);
    for _ in 0..3 {
        assert_eq!(deliver(&c.content()).consumer_tag.as_str(), "a");
    }
    c.consume(1, "g2", "b", false);
    c.nothing();
    c.ack(1, 0, true);
    for _ in 0..3 {
        c.content();
    }
    c.nothing();
    assert_eq!(broker.registry.channels()[0].unacked, 3);
}

#[test]
fn confirms_are_coalesced_and_returns_precede_them() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "cq");
    c.send(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    );
    assert!(matches!(
        c.method().1,
        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
    ));
    let mut b = BytesMut::new();
    for _ in 0..3 {
        let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "cq".into(),
            ..Default::default()
        }));
        encode_method(1, &m, &mut b);
        let h = AMQPContentHeader {
            class_id: 60,
            body_size: 1,
            properties: Default::default(),
        };
        encode_frame(&AMQPFrame::Header(1, h), &mut b);
        encode_frame(&AMQPFrame::Body(1, vec![1]), &mut b);
    }
    c.raw(&b);
    match c.method().1 {
        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
            assert_eq!((a.delivery_tag, a.multiple), (3, true))
        }
        other => panic!("{other:?}"),
    }
    c.publish_props(1, "", "nowhere", BasicProperties::default(), b"x", true);
    let r = c.content();
    match r.method {
        AMQPClass::Basic(basic::AMQPMethod::Return(r)) => {
            assert_eq!(
                (r.reply_code, r.reply_text.as_str(), r.routing_key.as_str()),
                (312, "NO_ROUTE", "nowhere")
            )
        }
        other => panic!("{other:?}"),
    }
    match c.method().1 {
        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
            assert_eq!((a.delivery_tag, a.multiple), (4, false))
        }
        other => panic!("{other:?}"),
    }
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})));
    c.expect_channel_close(
        406,
        "PRECONDITION_FAILED - cannot switch from confirm to tx mode",
    );
}

#[test]
fn transactions_buffer_until_commit() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "tq");
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})));
    assert!(matches!(
        c.method().1,
        AMQPClass::Tx(tx::AMQPMethod::SelectOk(_))
    ));
    c.publish(1, "", "tq", b"a");
    assert_eq!(c.declare(1, "tq").message_count, 0);
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})));
    c.method();
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})));
    c.method();
    assert_eq!(c.declare(1, "tq").message_count, 0);
    c.publish(1, "", "tq", b"b");
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})));
    assert!(matches!(
        c.method().1,
        AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))
    ));
    assert_eq!(c.declare(1, "tq").message_count, 1);
    // An ack in a transaction waits for commit too.
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "tq".into(),
            no_ack: false,
        })),
    );
    let m = c.content();
    assert!(
        matches!(m.method, AMQPClass::Basic(basic::AMQPMethod::GetOk(ref g)) if g.delivery_tag == 1)
    );
    c.ack(1, 1, false);
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})));
    c.method();
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
    );
    assert!(matches!(
        c.method().1,
        AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_))
    ));
    assert_eq!(c.declare(1, "tq").message_count, 1);
    c.send(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    );
    c.expect_channel_close(
        406,
        "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
    );
}

#[test]
fn errors_carry_channel_and_method() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(7);
    c.send(
        7,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "missing".into(),
            passive: true,
            ..Default::default()
        })),
    );
    let (ch, m) = c.method();
    assert_eq!(ch, 7);
    let AMQPClass::Channel(channel::AMQPMethod::Close(cl)) = m else {
        panic!("{m:?}")
    };
    assert_eq!((cl.reply_code, cl.class_id, cl.method_id), (404, 50, 10));
    assert!(cl.reply_text.as_str().starts_with("NOT_FOUND - "), "{cl:?}");
    // Until close-ok everything else on the channel is ignored.
    c.declare_nowait_ignored();
    c.send(
        7,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    );
    c.nothing();
    c.open_channel(7);
    // Methods on a channel that is not open: connection error.
    c.send(
        9,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 1,
            global: false,
        })),
    );
    c.expect_connection_close(504, "CHANNEL_ERROR - expected 'channel.open'");
}

impl Client {
    fn declare_nowait_ignored(&mut self) {
        self.send(
            7,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "x".into(),
                ..Default::default()
            })),
        );
        self.nothing();
    }
}

#[test]
fn protocol_violations_close_the_connection() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    );
    // The method alone completes nothing; the header brings the publish.
    let mut b = BytesMut::new();
    let h = AMQPContentHeader {
        class_id: 60,
        body_size: 0,
        properties: Default::default(),
    };
    encode_frame(&AMQPFrame::Header(1, h), &mut b);
    c.raw(&b);
    c.expect_connection_close(540, "NOT_IMPLEMENTED - immediate=true");

    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "dup");
    c.consume(1, "dup", "same", false);
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "dup".into(),
            consumer_tag: "same".into(),
            ..Default::default()
        })),
    );
    c.expect_connection_close(530, "NOT_ALLOWED - attempt to reuse consumer tag 'same'");

    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.send(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    );
    c.expect_connection_close(504, "CHANNEL_ERROR");
}

#[test]
fn oversized_message_is_a_channel_error() {
    let config = BrokerConfig {
        listen: None,
        data_dir: None,
        max_message_size: 100,
        ..BrokerConfig::default()
    };
    let broker = Broker::open(config).unwrap();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.publish(1, "", "q", &[0u8; 101]);
    c.expect_channel_close(
        406,
        "PRECONDITION_FAILED - message size 101 is larger than configured max size 100",
    );
}

#[test]
fn channel_close_requeues_and_cancel_notifies() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.open_channel(2);
    c.declare(1, "rq");
    c.publish(1, "", "rq", b"hello");
    c.consume(1, "rq", "c1", false);
    assert!(!deliver(&c.content()).redelivered);
    c.send(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close::default())),
    );
    assert!(matches!(
        c.method(),
        (1, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)))
    ));
    c.consume(2, "rq", "c2", false);
    let m = c.content();
    assert!(deliver(&m).redelivered);
    assert_eq!(m.body, b"hello");
    // Deleting the queue cancels the consumer (consumer_cancel_notify).
    c.open_channel(3);
    c.send(
        3,
        AMQPClass::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "rq".into(),
            ..Default::default()
        })),
    );
    let mut saw_cancel = false;
    let mut saw_ok = false;
    for _ in 0..2 {
        match c.method() {
            (2, AMQPClass::Basic(basic::AMQPMethod::Cancel(x))) => {
                assert_eq!(x.consumer_tag.as_str(), "c2");
                saw_cancel = true;
            }
            (3, AMQPClass::Queue(queue::AMQPMethod::DeleteOk(_))) => saw_ok = true,
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_cancel && saw_ok);
    assert_eq!(broker.registry.totals(), (1, 2, 0));
}

#[test]
fn connection_drop_requeues_unacked() {
    let broker = Broker::in_memory();
    let mut a = Client::open(&broker);
    a.open_channel(1);
    a.declare(1, "dq");
    a.publish(1, "", "dq", b"x");
    a.consume(1, "dq", "c", false);
    a.content();
    drop(a);
    let mut b = Client::open(&broker);
    b.open_channel(1);
    assert_eq!(b.declare(1, "dq").message_count, 1);
}

#[test]
fn forced_close_and_alarms() {
    let broker = Broker::in_memory();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.declare(1, "aq");
    c.publish(1, "", "aq", b"before");
    assert!(c.conn.wants_read());
    broker.flow.set_readings(u64::MAX, u64::MAX);
    c.conn.on_alarm(broker.flow.alarm(), c.now);
    // Having published before the alarm blocks nothing: RabbitMQ's "blocking".
    c.nothing();
    assert!(c.conn.wants_read());
    assert_eq!(broker.registry.connections()[0].state, "blocking");
    assert_eq!(c.declare(1, "aq").message_count, 1);
    // The next publish blocks the connection; it and what follows are held.
    c.publish(1, "", "aq", b"held");
    match c.method() {
        (0, AMQPClass::Connection(connection::AMQPMethod::Blocked(b))) => {
            assert_eq!(b.reason.as_str(), "low on memory")
        }
        other => panic!("{other:?}"),
    }
    c.send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "aq".into(),
            passive: true,
            ..Default::default()
        })),
    );
    c.nothing();
    assert!(!c.conn.wants_read());
    assert_eq!(broker.registry.connections()[0].state, "blocked");
    broker.flow.set_readings(0, u64::MAX);
    c.conn.on_alarm(broker.flow.alarm(), c.now);
    assert!(matches!(
        c.method().1,
        AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
    ));
    assert!(c.conn.wants_read());
    assert_eq!(broker.registry.connections()[0].state, "running");
    c.resume();
    match c.method() {
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            assert_eq!(ok.message_count, 2)
        }
        other => panic!("{other:?}"),
    }
    assert!(c.input.is_empty());

    let name = broker.registry.connections()[0].name.clone();
    assert!(broker.registry.close(&name, "bye"));
    c.expect_connection_close(320, "CONNECTION_FORCED - bye");
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
    assert_eq!(c.last, Control::Close);
}

/// The frames of one publish of `body` to the default exchange: (method, header + body).
fn publish_frames(ch: u16, rk: &str, body: &[u8]) -> (BytesMut, BytesMut) {
    let mut m = BytesMut::new();
    encode_method(
        ch,
        &AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: rk.into(),
            mandatory: false,
            immediate: false,
        })),
        &mut m,
    );
    let mut content = BytesMut::new();
    let h = AMQPContentHeader {
        class_id: 60,
        body_size: body.len() as u64,
        properties: BasicProperties::default(),
    };
    encode_frame(&AMQPFrame::Header(ch, h), &mut content);
    encode_frame(&AMQPFrame::Body(ch, body.to_vec()), &mut content);
    (m, content)
}

#[test]
fn alarm_blocks_only_publishers() {
    let broker = Broker::in_memory();
    broker.flow.set_readings(u64::MAX, u64::MAX);
    // Connections opened during the alarm are not told they are blocked
    // (Client::open checks open-ok comes alone), and consumers keep working.
    let mut cons = Client::open(&broker);
    cons.nothing();
    cons.open_channel(1);
    cons.declare(1, "cq");
    cons.consume(1, "cq", "c", false);
    let mut publ = Client::open(&broker);
    publ.nothing();
    publ.open_channel(1);
    assert_eq!(broker.registry.connections()[1].state, "blocking");
    // The method frame alone blocks; the content is held unread.
    let (method, content) = publish_frames(1, "cq", b"m1");
    publ.raw(&method);
    assert!(matches!(
        publ.method().1,
        AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
    ));
    assert!(!publ.conn.wants_read());
    publ.raw(&content);
    publ.nothing();
    cons.nothing();
    assert!(cons.conn.wants_read());
    assert_eq!(broker.registry.connections()[0].state, "blocking");
    assert_eq!(broker.registry.connections()[1].state, "blocked");

    broker.flow.set_readings(0, u64::MAX);
    cons.conn.on_alarm(broker.flow.alarm(), cons.now);
    cons.nothing();
    publ.conn.on_alarm(broker.flow.alarm(), publ.now);
    assert!(matches!(
        publ.method().1,
        AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
    ));
    publ.resume();
    assert_eq!(cons.content().body, b"m1");
    cons.ack(1, 1, false);
    cons.nothing();

    // An alarm in the middle of a publish lets its content through; the next
    // publish blocks.
    let (method, content) = publish_frames(1, "cq", b"m2");
    publ.raw(&method);
    broker.flow.set_readings(u64::MAX, u64::MAX);
    publ.conn.on_alarm(broker.flow.alarm(), publ.now);
    cons.conn.on_alarm(broker.flow.alarm(), cons.now);
    publ.raw(&content);
    assert_eq!(cons.content().body, b"m2");
    cons.ack(1, 2, false);
    let (method, content) = publish_frames(1, "cq", b"m3");
    publ.raw(&method);
    publ.raw(&content);
    assert!(matches!(
        publ.method().1,
        AMQPClass::Connection(connection::AMQPMethod::Blocked(_))
    ));
    cons.nothing();
    // Received bytes are counted once, held or not.
    let recv = broker.registry.connections()[1].recv_bytes;
    publ.resume();
    assert_eq!(broker.registry.connections()[1].recv_bytes, recv);
    // A forced close is still answered while blocked: close-ok is read.
    publ.conn.shared().force_close("bye");
    publ.expect_connection_close(320, "CONNECTION_FORCED - bye");
    assert!(publ.conn.wants_read());
    publ.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    );
    assert_eq!(publ.last, Control::Close);
    cons.nothing();
}

#[test]
fn permissions_are_checked() {
    let broker = Broker::in_memory();
    broker.put_user("u", Some("p"), vec![]).unwrap();
    broker
        .set_permission(crate::definitions::PermissionDef {
            user: "u".into(),
            vhost: "/".into(),
            configure: "^mine".into(),
            write: "^mine".into(),
            read: "^mine".into(),
        })
        .unwrap();
    let mut c = Client::new(&broker);
    c.handshake_as("u", "p");
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        })),
    );
    c.send(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    );
    c.method();
    c.open_channel(1);
    c.declare(1, "mine.q");
    c.send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "theirs".into(),
            ..Default::default()
        })),
    );
    c.expect_channel_close(
        403,
        "ACCESS_REFUSED - access to queue 'theirs' in vhost '/' refused for user 'u'",
    );
    c.send(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    );
    c.open_channel(1);
    c.publish(1, "", "mine.q", b"x");
    c.expect_channel_close(
        403,
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'",
    );
}

#[tokio::test]
async fn serves_over_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::in_memory();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(super::serve(broker.clone(), Some(listener), None, stop_rx));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Everything a client sends up to a consume, in one go.
    let mut b = BytesMut::from(&PROTOCOL_HEADER[..]);
    let m = |c| AMQPClass::Connection(c);
    encode_method(
        0,
        &m(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: caps(),
            mechanism: "PLAIN".into(),
            response: plain("guest", "guest"),
            locale: "en_US".into(),
        })),
        &mut b,
    );
    encode_method(
        0,
        &m(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        })),
        &mut b,
    );
    encode_method(
        0,
        &m(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
        &mut b,
    );
    encode_method(
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        &mut b,
    );
    encode_method(
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "tcpq".into(),
            ..Default::default()
        })),
        &mut b,
    );
    for i in 0..100u8 {
        let p = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "tcpq".into(),
            ..Default::default()
        }));
        encode_method(1, &p, &mut b);
        encode_frame(
            &AMQPFrame::Header(
                1,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 1,
                    properties: Default::default(),
                },
            ),
            &mut b,
        );
        encode_frame(&AMQPFrame::Body(1, vec![i]), &mut b);
    }
    encode_method(
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "tcpq".into(),
            consumer_tag: "t".into(),
            no_ack: true,
            ..Default::default()
        })),
        &mut b,
    );
    s.write_all(&b).await.unwrap();
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 100 {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("deliveries in time")
            .unwrap();
        assert!(n > 0, "server closed");
        buf.extend_from_slice(&chunk[..n]);
        let mut rest: &[u8] = &buf;
        while let Ok((r, f)) = parse_frame(rest) {
            if let AMQPFrame::Body(_, body) = f {
                got.push(body[0]);
            }
            rest = r;
        }
        buf = rest.to_vec();
    }
    assert_eq!(got, (0..100).collect::<Vec<u8>>());
    assert_eq!(broker.registry.connections().len(), 1);
    stop_tx.send(true).unwrap();
    // The server says goodbye with 320 and we answer close-ok.
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
        .await
        .unwrap()
        .unwrap();
    let (_, f) = parse_frame(&chunk[..n]).unwrap();
    match f {
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => {
            assert_eq!(c.reply_code, 320);
            assert_eq!(c.reply_text.as_str(), "CONNECTION_FORCED - broker shutdown");
        }
        other => panic!("{other:?}"),
    }
    let mut b = BytesMut::new();
    encode_method(
        0,
        &m(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        &mut b,
    );
    s.write_all(&b).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(broker.registry.connections().is_empty());
}

/// Rough CPU cost of the transient path without sockets:
/// `cargo test --release -p berth-broker throughput -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a test (no peer): cargo test -p berth-broker throughput_in_process -- --ignored --nocapture"]
fn throughput_in_process() {
    let broker = Broker::in_memory();
    let mut p = Client::open(&broker);
    let mut s = Client::open(&broker);
    p.open_channel(1);
    s.open_channel(1);
    p.declare(1, "bench");
    s.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 500,
            global: false,
        })),
    );
    s.method();
    s.consume(1, "bench", "c", false);
    let mut batch = BytesMut::new();
    for _ in 0..100 {
        let m = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "bench".into(),
            ..Default::default()
        }));
        encode_method(1, &m, &mut batch);
        let h = AMQPContentHeader {
            class_id: 60,
            body_size: 16,
            properties: Default::default(),
        };
        encode_frame(&AMQPFrame::Header(1, h), &mut batch);
        encode_frame(&AMQPFrame::Body(1, vec![0; 16]), &mut batch);
    }
    let total = 500_000u64;
    let start = Instant::now();
    let mut received = 0u64;
    let mut acked_to = 0u64;
    while received < total {
        let mut b = batch.clone();
        p.conn.on_input(&mut b, p.now);
        p.conn.drain_output();
        s.conn.on_wake(s.now);
        let out = s.conn.drain_output();
        // Count deliveries by method frames (type 1, class 60, method 60).
        let mut rest: &[u8] = &out;
        while rest.len() >= 7 {
            let size = u32::from_be_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
            if rest[0] == 1 && rest[7..9] == [0, 60] && rest[9..11] == [0, 60] {
                received += 1;
            }
            rest = &rest[8 + size..];
        }
        if received > acked_to {
            let mut a = BytesMut::new();
            encode_method(
                1,
                &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: received,
                    multiple: true,
                })),
                &mut a,
            );
            s.conn.on_input(&mut a, s.now);
            acked_to = received;
        }
    }
    let el = start.elapsed();
    println!(
        "{total} msgs in {el:?}: {:.0} msgs/s",
        total as f64 / el.as_secs_f64()
    );
}

/// Memory per idle, open connection (one channel), through the real socket task:
/// `cargo test --release -p berth-broker idle_connection_memory -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, not a test: berth-bench broker measures this against RabbitMQ"]
fn idle_connection_memory() {
    fn rss() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::in_memory();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    rt.spawn(super::serve(broker.clone(), Some(listener), None, stop_rx));
    let mut hello = BytesMut::from(&PROTOCOL_HEADER[..]);
    let m = AMQPClass::Connection;
    encode_method(
        0,
        &m(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: caps(),
            mechanism: "PLAIN".into(),
            response: plain("guest", "guest"),
            locale: "en_US".into(),
        })),
        &mut hello,
    );
    encode_method(
        0,
        &m(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 60,
        })),
        &mut hello,
    );
    encode_method(
        0,
        &m(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
        &mut hello,
    );
    encode_method(
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        &mut hello,
    );
    let connect = |n: usize, keep: &mut Vec<std::net::TcpStream>| {
        use std::io::Write;
        for _ in 0..n {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(&hello).unwrap();
            keep.push(s);
        }
        while broker
            .registry
            .connections()
            .iter()
            .filter(|c| c.state == "running")
            .count()
            < keep.len()
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut keep = Vec::new();
    connect(100, &mut keep); // warm up allocator and runtime
    let before = rss();
    let n = 800;
    connect(n, &mut keep);
    let after = rss();
    println!(
        "{} bytes per idle connection ({n} connections)",
        (after - before) / n as u64
    );
}

/// The socket task keeps the input behind a blocked publish and processes it
/// when the alarm clears.
#[tokio::test]
async fn alarm_holds_publish_over_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = Broker::in_memory();
    broker.flow.set_readings(u64::MAX, u64::MAX);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(super::serve(broker.clone(), Some(listener), None, stop_rx));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut b = BytesMut::from(&PROTOCOL_HEADER[..]);
    let m = |c| AMQPClass::Connection(c);
    encode_method(
        0,
        &m(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: caps(),
            mechanism: "PLAIN".into(),
            response: plain("guest", "guest"),
            locale: "en_US".into(),
        })),
        &mut b,
    );
    encode_method(
        0,
        &m(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 0,
            frame_max: 0,
            heartbeat: 0,
        })),
        &mut b,
    );
    encode_method(
        0,
        &m(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
        &mut b,
    );
    encode_method(
        1,
        &AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        &mut b,
    );
    let declare = |passive| {
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "tq".into(),
            passive,
            ..Default::default()
        }))
    };
    encode_method(1, &declare(false), &mut b);
    let (method, content) = publish_frames(1, "tq", b"held");
    b.extend_from_slice(&method);
    b.extend_from_slice(&content);
    encode_method(1, &declare(true), &mut b);
    s.write_all(&b).await.unwrap();

    let mut buf = Vec::new();
    let mut frames = VecDeque::new();
    // Reads until `want` matches a frame (returned with what came before), or `wait` passes.
    async fn read_until(
        s: &mut tokio::net::TcpStream,
        buf: &mut Vec<u8>,
        frames: &mut VecDeque<AMQPFrame>,
        wait: Duration,
        want: impl Fn(&AMQPFrame) -> bool,
    ) -> Option<AMQPFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(f) = frames.pop_front() {
                if want(&f) {
                    return Some(f);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(r) => r.unwrap(),
                Err(_) => return None,
            };
            assert!(n > 0, "server closed");
            buf.extend_from_slice(&chunk[..n]);
            if buf.starts_with(b"AMQP") {
                buf.drain(..8);
            }
            let mut rest: &[u8] = buf;
            while let Ok((r, f)) = parse_frame(rest) {
                frames.push_back(f);
                rest = r;
            }
            let used = buf.len() - rest.len();
            buf.drain(..used);
        }
    }
    let count = |f: &AMQPFrame| match f {
        AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
            Some(ok.message_count)
        }
        _ => None,
    };
    let first = read_until(
        &mut s,
        &mut buf,
        &mut frames,
        Duration::from_secs(10),
        |f| count(f).is_some(),
    )
    .await
    .expect("declare-ok during the alarm");
    assert_eq!(count(&first), Some(0));
    let blocked = read_until(
        &mut s,
        &mut buf,
        &mut frames,
        Duration::from_secs(10),
        |f| {
            matches!(
                f,
                AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(_)))
            )
        },
    )
    .await;
    assert!(blocked.is_some(), "no connection.blocked");
    let early = read_until(
        &mut s,
        &mut buf,
        &mut frames,
        Duration::from_millis(300),
        |_| true,
    )
    .await;
    assert!(early.is_none(), "answered while blocked: {early:?}");

    broker.flow.set_readings(0, u64::MAX);
    let unblocked = read_until(
        &mut s,
        &mut buf,
        &mut frames,
        Duration::from_secs(10),
        |f| {
            matches!(
                f,
                AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
                )
            )
        },
    )
    .await;
    assert!(unblocked.is_some(), "no connection.unblocked");
    let second = read_until(
        &mut s,
        &mut buf,
        &mut frames,
        Duration::from_secs(10),
        |f| count(f).is_some(),
    )
    .await
    .expect("held input processed after the alarm");
    assert_eq!(count(&second), Some(1));
    stop_tx.send(true).unwrap();
    server.await.unwrap().unwrap();
}

/// Collects output until a frame arrives (the store syncs on its own thread).
fn await_frame(c: &mut Client) -> AMQPFrame {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        c.collect();
        if let Some(f) = c.frames.pop_front() {
            return f;
        }
        assert!(Instant::now() < deadline, "no frame from the server");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// (delivery tag, ack?) of the next confirm, waiting for the store.
fn await_confirm(c: &mut Client) -> (u64, bool) {
    match await_frame(c) {
        AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
            assert!(!a.multiple, "{a:?}");
            (a.delivery_tag, true)
        }
        AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => {
            assert!(!n.multiple, "{n:?}");
            (n.delivery_tag, false)
        }
        other => panic!("expected a confirm, got {other:?}"),
    }
}

#[test]
fn failed_store_nacks_persistent_confirms_and_keeps_the_rest_working() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        listen: None,
        data_dir: Some(dir.path().to_path_buf()),
        ..BrokerConfig::default()
    };
    let persistent = BasicProperties::default().with_delivery_mode(2);
    {
        let broker = Broker::open(config.clone()).unwrap();
        let mut c = Client::open(&broker);
        c.open_channel(1);
        c.send(
            1,
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "dq".into(),
                durable: true,
                ..Default::default()
            })),
        );
        assert!(matches!(
            c.method().1,
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
        ));
        c.declare(1, "tq");
        c.send(
            1,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
                nowait: false,
            })),
        );
        assert!(matches!(
            c.method().1,
            AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))
        ));
        c.publish_props(1, "", "dq", persistent.clone(), b"kept", false);
        assert_eq!(await_confirm(&mut c), (1, true));
        // A real failure: the segment is unlinked; its next sync notices.
        std::fs::remove_dir_all(dir.path().join("messages")).unwrap();
        c.publish_props(1, "", "dq", persistent.clone(), b"lost1", false);
        assert_eq!(await_confirm(&mut c), (2, false));
        assert!(broker.log.failed());
        // Later persistent publishes are nacked at once, in order with the rest.
        c.publish_props(1, "", "dq", persistent.clone(), b"lost2", false);
        c.publish(1, "", "dq", b"transient");
        c.publish_props(1, "", "tq", persistent.clone(), b"non-durable queue", false);
        c.publish_props(1, "", "dq", persistent.clone(), b"lost3", false);
        let got: Vec<_> = (0..4).map(|_| await_confirm(&mut c)).collect();
        assert_eq!(got, vec![(3, false), (4, true), (5, true), (6, false)]);
        c.nothing();
        // Non-confirm publishes (warned once) and transactions go on in memory.
        c.open_channel(2);
        c.publish_props(2, "", "dq", persistent.clone(), b"unconfirmed", false);
        c.send(2, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})));
        c.method();
        c.publish_props(2, "", "dq", persistent.clone(), b"in tx", false);
        c.send(2, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})));
        // commit-ok would promise the message is on disk: a channel error.
        match await_frame(&mut c) {
            AMQPFrame::Method(2, AMQPClass::Channel(channel::AMQPMethod::Close(cl))) => {
                assert_eq!(cl.reply_code, 541, "{cl:?}");
                assert!(
                    cl.reply_text
                        .as_str()
                        .starts_with("INTERNAL_ERROR - message store failed"),
                    "{cl:?}"
                );
                assert_eq!((cl.class_id, cl.method_id), (90, 20));
            }
            other => panic!("expected channel.close, got {other:?}"),
        }
        // Everything stays deliverable from memory, and acks work.
        c.consume(1, "dq", "ct", false);
        let bodies: Vec<Vec<u8>> = (0..7).map(|_| c.content().body).collect();
        assert_eq!(
            bodies,
            [
                &b"kept"[..],
                b"lost1",
                b"lost2",
                b"transient",
                b"lost3",
                b"unconfirmed",
                b"in tx"
            ]
            .map(|b| b.to_vec())
        );
        c.ack(1, 7, true);
        c.nothing();
        let started = Instant::now();
        c.conn.finish();
        drop(c);
        broker.close();
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // Only what was synced before the failure (nothing: its file was removed).
    let broker = Broker::open(config).unwrap();
    assert!(!broker.log.failed());
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.publish_props(1, "", "dq", persistent, b"after restart", false);
    c.send(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "dq".into(),
            no_ack: true,
        })),
    );
    assert_eq!(c.content().body, b"after restart");
}

#[test]
fn tx_commit_ok_waits_until_the_messages_are_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig {
        listen: None,
        data_dir: Some(dir.path().to_path_buf()),
        ..BrokerConfig::default()
    };
    let broker = Broker::open(config).unwrap();
    let synced = broker.log.synced();
    let mut c = Client::open(&broker);
    c.open_channel(1);
    c.send(
        1,
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "dq".into(),
            durable: true,
            ..Default::default()
        })),
    );
    c.method();
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Select(tx::Select {})));
    c.method();
    let before = *synced.borrow();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    c.publish_props(1, "", "dq", persistent, b"committed", false);
    c.send(1, AMQPClass::Tx(tx::AMQPMethod::Commit(tx::Commit {})));
    match await_frame(&mut c) {
        AMQPFrame::Method(1, AMQPClass::Tx(tx::AMQPMethod::CommitOk(_))) => {}
        other => panic!("expected tx.commit-ok, got {other:?}"),
    }
    // The publish took a ticket above `before`; commit-ok came after its sync
    // (before the fix it was sent at once, ahead of the writer's fdatasync).
    assert!(*synced.borrow() > before, "commit-ok before the fsync");
}
