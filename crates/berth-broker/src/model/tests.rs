//! Model tests with a recording consumer sink, message log and metadata log.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use berth_amqp::{AMQPValue, BasicProperties, ErrorScope, FieldTable, ReplyCode};
use bytes::Bytes;
use parking_lot::Mutex;

use super::args::longstr;
use super::*;
use crate::definitions::PolicyDef;
use crate::types::{
    ConsumerSink, Delivery, Message, MessageId, MessageLog, MetaLog, MetaOp, WriteTicket,
};

// ---- fakes ----

/// A consumer with an optional number of free slots (None: unlimited).
struct Sink {
    room: Mutex<Option<usize>>,
    delivered: Mutex<Vec<Delivery>>,
    cancelled: Mutex<Vec<String>>,
}

impl Sink {
    fn new(room: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            room: Mutex::new(room),
            delivered: Mutex::new(Vec::new()),
            cancelled: Mutex::new(Vec::new()),
        })
    }
    fn bodies(&self) -> Vec<String> {
        self.delivered
            .lock()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.message.body).into_owned())
            .collect()
    }
    fn count(&self) -> usize {
        self.delivered.lock().len()
    }
    fn give(&self, n: usize) {
        let mut r = self.room.lock();
        *r = Some(r.unwrap_or(0) + n);
    }
}

impl ConsumerSink for Sink {
    fn try_reserve(&self) -> bool {
        let mut r = self.room.lock();
        match r.as_mut() {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
    fn deliver(&self, delivery: Delivery) {
        self.delivered.lock().push(delivery);
    }
    fn cancelled(&self, consumer_tag: &str) {
        self.cancelled.lock().push(consumer_tag.to_string());
    }
}

#[derive(Default)]
struct RecLog {
    next: AtomicU64,
    published: Mutex<Vec<(Vec<String>, MessageId)>>,
    removed: Mutex<Vec<(String, MessageId)>>,
    removed_queues: Mutex<Vec<String>>,
    /// One entry per `delivered` call: (queue, ids).
    delivered: Mutex<Vec<(String, Vec<MessageId>)>>,
    synced: Mutex<Option<tokio::sync::watch::Sender<u64>>>,
}

impl MessageLog for RecLog {
    fn next_id(&self) -> MessageId {
        1_000_000 + self.next.fetch_add(1, Ordering::Relaxed)
    }
    fn publish(&self, _vhost: &str, queues: &[&str], message: &Message) -> WriteTicket {
        let mut p = self.published.lock();
        p.push((queues.iter().map(|q| q.to_string()).collect(), message.id));
        WriteTicket(p.len() as u64)
    }
    fn remove(&self, _vhost: &str, queue: &str, ids: &[MessageId]) {
        self.removed
            .lock()
            .extend(ids.iter().map(|id| (queue.to_string(), *id)));
    }
    fn remove_queue(&self, _vhost: &str, queue: &str) {
        self.removed_queues.lock().push(queue.to_string());
    }
    fn delivered(&self, _vhost: &str, queue: &str, ids: &[MessageId]) {
        self.delivered
            .lock()
            .push((queue.to_string(), ids.to_vec()));
    }
    fn synced(&self) -> tokio::sync::watch::Receiver<u64> {
        self.synced
            .lock()
            .get_or_insert_with(|| tokio::sync::watch::Sender::new(0))
            .subscribe()
    }
}

#[derive(Default)]
struct RecMeta {
    ops: Mutex<Vec<MetaOp>>,
    fail: AtomicBool,
}

impl MetaLog for RecMeta {
    fn append(&self, op: &MetaOp) -> std::io::Result<()> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("disk full"));
        }
        self.ops.lock().push(op.clone());
        Ok(())
    }
}

impl RecMeta {
    fn kinds(&self) -> Vec<String> {
        self.ops
            .lock()
            .iter()
            .map(|op| match op {
                MetaOp::PutExchange(d) => format!("put exchange {}", d.name),
                MetaOp::DeleteExchange { name, .. } => format!("delete exchange {name}"),
                MetaOp::PutQueue(d) => format!("put queue {}", d.name),
                MetaOp::DeleteQueue { name, .. } => format!("delete queue {name}"),
                MetaOp::PutBinding(b) => format!(
                    "put binding {}->{}:{}",
                    b.source, b.destination, b.routing_key
                ),
                MetaOp::DeleteBinding(b) => format!(
                    "delete binding {}->{}:{}",
                    b.source, b.destination, b.routing_key
                ),
                MetaOp::PutPolicy(p) => format!("put policy {}", p.name),
                MetaOp::DeletePolicy { name, .. } => format!("delete policy {name}"),
                other => format!("{other:?}"),
            })
            .collect()
    }
}

// ---- helpers ----

struct Env {
    vhost: Arc<Vhost>,
    log: Arc<RecLog>,
    meta: Arc<RecMeta>,
}

fn env() -> Env {
    let log = Arc::new(RecLog::default());
    let meta = Arc::new(RecMeta::default());
    let vhost = Vhost::new("/", log.clone(), meta.clone());
    Env { vhost, log, meta }
}

static IDS: AtomicU64 = AtomicU64::new(1);

fn message(routing_key: &str, body: &str, props: BasicProperties) -> Message {
    Message {
        id: IDS.fetch_add(1, Ordering::Relaxed),
        exchange: String::new(),
        routing_key: routing_key.to_string(),
        properties: props,
        body: Bytes::from(body.to_string()),
    }
}

fn plain(routing_key: &str, body: &str) -> Message {
    message(routing_key, body, BasicProperties::default())
}

fn table(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn int(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

fn qdecl(name: &str) -> QueueDecl {
    QueueDecl {
        name: name.into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: FieldTable::default(),
    }
}

fn qargs(name: &str, args: &[(&str, AMQPValue)]) -> QueueDecl {
    QueueDecl {
        arguments: table(args),
        ..qdecl(name)
    }
}

fn xdecl(name: &str, kind: &str) -> ExchangeDecl {
    ExchangeDecl {
        name: name.into(),
        kind: kind.into(),
        passive: false,
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
    }
}

fn consumer(tag: &str, sink: &Arc<Sink>) -> ConsumerSpec {
    ConsumerSpec {
        tag: tag.into(),
        connection: 1,
        channel: 1,
        exclusive: false,
        no_ack: false,
        priority: 0,
        sink: sink.clone(),
    }
}

impl Env {
    fn queue(&self, name: &str) -> Arc<Queue> {
        self.vhost.declare_queue(qdecl(name), 1).unwrap().0
    }
    fn exchange(&self, name: &str, kind: &str) {
        self.vhost.declare_exchange(xdecl(name, kind)).unwrap();
    }
    fn bind(&self, q: &str, x: &str, key: &str) {
        self.vhost
            .bind_queue(q, x, key, &FieldTable::default(), 1)
            .unwrap();
    }
    fn publish(&self, x: &str, key: &str, body: &str) -> PublishOutcome {
        self.vhost.publish(x, plain(key, body), 0).unwrap()
    }
    fn get_body(&self, q: &str, now: u64) -> Option<String> {
        match self.vhost.queue_for(q, 1).unwrap().get(true, now) {
            GetResult::Empty => None,
            GetResult::Message { message, .. } => {
                Some(String::from_utf8_lossy(&message.body).into_owned())
            }
        }
    }
    fn drain(&self, q: &str, now: u64) -> Vec<String> {
        std::iter::from_fn(|| self.get_body(q, now)).collect()
    }
}

fn err_of<T: std::fmt::Debug>(r: Result<T, berth_amqp::AmqpError>) -> (ReplyCode, String) {
    let e = r.unwrap_err();
    (e.code, e.text)
}

// ---- routing ----

#[test]
fn routing_per_exchange_type() {
    struct Case {
        kind: &'static str,
        bindings: Vec<(&'static str, &'static str, FieldTable)>,
        key: &'static str,
        headers: Option<FieldTable>,
        want: Vec<&'static str>,
    }
    let none = FieldTable::default;
    let cases = vec![
        Case {
            kind: "direct",
            bindings: vec![("a", "k", none()), ("b", "other", none())],
            key: "k",
            headers: None,
            want: vec!["a"],
        },
        Case {
            kind: "direct",
            bindings: vec![("a", "k", none()), ("b", "k", none())],
            key: "k",
            headers: None,
            want: vec!["a", "b"],
        },
        Case {
            kind: "direct",
            bindings: vec![("a", "k", none())],
            key: "nope",
            headers: None,
            want: vec![],
        },
        Case {
            kind: "fanout",
            bindings: vec![("a", "x", none()), ("b", "y", none())],
            key: "whatever",
            headers: None,
            want: vec!["a", "b"],
        },
        Case {
            kind: "topic",
            bindings: vec![
                ("a", "*.orange.*", none()),
                ("b", "*.*.rabbit", none()),
                ("b", "lazy.#", none()),
            ],
            key: "quick.orange.rabbit",
            headers: None,
            want: vec!["a", "b"],
        },
        Case {
            kind: "topic",
            bindings: vec![("a", "*.orange.*", none()), ("b", "lazy.#", none())],
            key: "lazy.pink.rabbit",
            headers: None,
            want: vec!["b"],
        },
        Case {
            kind: "topic",
            bindings: vec![("a", "#", none())],
            key: "",
            headers: None,
            want: vec!["a"],
        },
        Case {
            kind: "headers",
            bindings: vec![
                (
                    "a",
                    "",
                    table(&[
                        ("x-match", longstr("all")),
                        ("f", longstr("pdf")),
                        ("t", longstr("report")),
                    ]),
                ),
                (
                    "b",
                    "",
                    table(&[
                        ("x-match", longstr("any")),
                        ("f", longstr("zip")),
                        ("t", longstr("report")),
                    ]),
                ),
                ("c", "", table(&[("f", longstr("zip"))])),
            ],
            key: "",
            headers: Some(table(&[("f", longstr("pdf")), ("t", longstr("report"))])),
            want: vec!["a", "b"],
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let e = env();
        e.exchange("x", case.kind);
        for name in ["a", "b", "c"] {
            e.queue(name);
        }
        for (q, key, args) in &case.bindings {
            e.vhost.bind_queue(q, "x", key, args, 1).unwrap();
        }
        let props = match case.headers {
            Some(h) => BasicProperties::default().with_headers(h),
            None => BasicProperties::default(),
        };
        let out = e
            .vhost
            .publish("x", message(case.key, "m", props), 0)
            .unwrap();
        let got: Vec<&str> = ["a", "b", "c"]
            .into_iter()
            .filter(|q| e.vhost.queue_for(q, 1).unwrap().message_count() == 1)
            .collect();
        assert_eq!(got, case.want, "case {i} ({})", case.kind);
        assert_eq!(out.routed, !case.want.is_empty(), "case {i}");
        assert_eq!(out.queues as usize, case.want.len(), "case {i}");
    }
}

#[test]
fn default_exchange_routes_by_queue_name() {
    let e = env();
    e.queue("q");
    assert!(e.publish("", "q", "hi").routed);
    assert!(!e.publish("", "missing", "hi").routed);
    assert_eq!(e.drain("q", 0), vec!["hi"]);
    let names: Vec<String> = e.vhost.exchanges().into_iter().map(|x| x.name).collect();
    assert_eq!(
        names,
        vec![
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.topic"
        ]
    );
}

#[test]
fn exchange_to_exchange_cycles_alternates_and_dedup() {
    let e = env();
    e.exchange("a", "fanout");
    e.exchange("b", "fanout");
    e.exchange("c", "direct");
    e.queue("q");
    e.queue("r");
    // a -> b -> a (cycle), b -> q, a -> q (same queue twice)
    e.vhost
        .bind_exchange("b", "a", "", &FieldTable::default())
        .unwrap();
    e.vhost
        .bind_exchange("a", "b", "", &FieldTable::default())
        .unwrap();
    e.bind("q", "b", "");
    e.bind("q", "a", "");
    // same queue via two bindings of one exchange
    e.bind("r", "c", "k");
    e.vhost
        .bind_queue("r", "c", "k", &table(&[("z", int(1))]), 1)
        .unwrap();
    let out = e.publish("a", "", "m1");
    assert_eq!(out.queues, 1);
    assert_eq!(e.drain("q", 0), vec!["m1"]);
    assert_eq!(e.publish("c", "k", "m2").queues, 1);
    assert_eq!(e.drain("r", 0), vec!["m2"]);

    // alternate exchanges, recursively: ae1 (direct, no match) -> ae2 (fanout) -> r
    let mut d = xdecl("main", "direct");
    d.arguments = table(&[("alternate-exchange", longstr("ae1"))]);
    e.vhost.declare_exchange(d).unwrap();
    let mut d = xdecl("ae1", "direct");
    d.arguments = table(&[("alternate-exchange", longstr("ae2"))]);
    e.vhost.declare_exchange(d).unwrap();
    e.exchange("ae2", "fanout");
    e.bind("r", "ae2", "");
    e.bind("q", "main", "known");
    assert_eq!(e.publish("main", "unknown", "m3").queues, 1);
    assert_eq!(e.publish("main", "known", "m4").queues, 1);
    assert_eq!(e.drain("r", 0), vec!["m3"]);
    assert_eq!(e.drain("q", 0), vec!["m4"]);
    // an alternate pointing back at itself terminates
    let mut d = xdecl("selfae", "direct");
    d.arguments = table(&[("alternate-exchange", longstr("selfae"))]);
    e.vhost.declare_exchange(d).unwrap();
    assert!(!e.publish("selfae", "x", "m5").routed);
}

#[test]
fn publish_errors() {
    let e = env();
    assert_eq!(
        err_of(e.vhost.publish("nope", plain("k", "b"), 0)),
        (
            ReplyCode::NotFound,
            "no exchange 'nope' in vhost '/'".into()
        )
    );
    let mut d = xdecl("int", "fanout");
    d.internal = true;
    e.vhost.declare_exchange(d).unwrap();
    assert_eq!(
        err_of(e.vhost.publish("int", plain("k", "b"), 0)),
        (
            ReplyCode::AccessRefused,
            "cannot publish to internal exchange 'int' in vhost '/'".into()
        )
    );
}

// ---- declarations ----

#[test]
fn exchange_declare_errors() {
    let e = env();
    e.exchange("e", "direct");
    let passive = |name: &str| ExchangeDecl {
        passive: true,
        ..xdecl(name, "")
    };
    let durable = ExchangeDecl {
        durable: true,
        ..xdecl("e", "direct")
    };
    let cases: Vec<(ExchangeDecl, Option<(ReplyCode, &str)>)> = vec![
        (xdecl("e", "direct"), None),
        (ExchangeDecl { durable: true, ..xdecl("amq.direct", "direct") }, None),
        (passive("e"), None),
        (passive("nope"), Some((ReplyCode::NotFound, "no exchange 'nope' in vhost '/'"))),
        (
            xdecl("e", "fanout"),
            Some((ReplyCode::PreconditionFailed, "inequivalent arg 'type' for exchange 'e' in vhost '/': received 'fanout' but current is 'direct'")),
        ),
        (
            durable,
            Some((ReplyCode::PreconditionFailed, "inequivalent arg 'durable' for exchange 'e' in vhost '/': received 'true' but current is 'false'")),
        ),
        (
            ExchangeDecl { durable: true, ..xdecl("amq.direct", "fanout") },
            Some((
                ReplyCode::PreconditionFailed,
                "inequivalent arg 'type' for exchange 'amq.direct' in vhost '/': received 'fanout' but current is 'direct'",
            )),
        ),
        (xdecl("amq.mine", "direct"), Some((ReplyCode::AccessRefused, "exchange name 'amq.mine' contains reserved prefix 'amq.*'"))),
        (xdecl("", "direct"), Some((ReplyCode::AccessRefused, "operation not permitted on the default exchange"))),
        (xdecl("x", "bogus"), Some((ReplyCode::CommandInvalid, "unknown exchange type 'bogus'"))),
    ];
    for (decl, want) in cases {
        let name = decl.name.clone();
        let got = e.vhost.declare_exchange(decl).err();
        assert_eq!(
            got.as_ref().map(|e| (e.code, e.text.as_str())),
            want,
            "{name}"
        );
        if let Some(err) = got {
            let scope = if err.code == ReplyCode::CommandInvalid {
                ErrorScope::Connection
            } else {
                ErrorScope::Channel(0)
            };
            assert_eq!(err.scope, scope, "{name}");
        }
    }
}

#[test]
fn exchange_delete() {
    let e = env();
    e.exchange("e", "direct");
    e.queue("q");
    e.bind("q", "e", "k");
    assert_eq!(
        err_of(e.vhost.delete_exchange("e", true)),
        (
            ReplyCode::PreconditionFailed,
            "exchange 'e' in vhost '/' in use".into()
        )
    );
    assert_eq!(
        err_of(e.vhost.delete_exchange("", false)).0,
        ReplyCode::AccessRefused
    );
    assert_eq!(
        err_of(e.vhost.delete_exchange("amq.topic", false)).0,
        ReplyCode::AccessRefused
    );
    e.vhost.delete_exchange("missing", false).unwrap();
    e.vhost.delete_exchange("e", false).unwrap();
    assert!(e.vhost.bindings().iter().all(|b| b.source != "e"));
    // bindings as destination go too
    e.exchange("src", "fanout");
    e.exchange("dst", "fanout");
    e.vhost
        .bind_exchange("dst", "src", "", &FieldTable::default())
        .unwrap();
    e.vhost.delete_exchange("dst", false).unwrap();
    assert!(e.vhost.bindings().iter().all(|b| b.source != "src"));
}

#[test]
fn queue_declare_errors_and_equivalence() {
    let e = env();
    e.vhost
        .declare_queue(
            qargs("q", &[("x-message-ttl", AMQPValue::LongInt(1000))]),
            1,
        )
        .unwrap();
    let exclusive = QueueDecl {
        exclusive: true,
        ..qdecl("ex")
    };
    e.vhost.declare_queue(exclusive.clone(), 1).unwrap();
    let locked_text = "cannot obtain exclusive access to locked queue 'ex' in vhost '/'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";
    type Case = (QueueDecl, u64, Option<(ReplyCode, String)>);
    let cases: Vec<Case> = vec![
        // the same TTL as another integer type is equivalent
        (qargs("q", &[("x-message-ttl", AMQPValue::LongLongInt(1000))]), 1, None),
        (QueueDecl { passive: true, ..qdecl("q") }, 1, None),
        (QueueDecl { passive: true, ..qdecl("nope") }, 1, Some((ReplyCode::NotFound, "no queue 'nope' in vhost '/'".into()))),
        (qdecl("amq.q"), 1, Some((ReplyCode::AccessRefused, "queue name 'amq.q' contains reserved prefix 'amq.*'".into()))),
        (
            QueueDecl { durable: true, ..qargs("q", &[("x-message-ttl", int(1000))]) },
            1,
            Some((
                ReplyCode::PreconditionFailed,
                "inequivalent arg 'durable' for queue 'q' in vhost '/': received 'true' but current is 'false'".into(),
            )),
        ),
        (
            qargs("q", &[("x-message-ttl", int(2000))]),
            1,
            Some((
                ReplyCode::PreconditionFailed,
                "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '2000' but current is '1000'"
                    .into(),
            )),
        ),
        (
            qdecl("q"),
            1,
            Some((
                ReplyCode::PreconditionFailed,
                "inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is the value '1000' of type 'signedint'".into(),
            )),
        ),
        (
            qargs("bad", &[("x-max-length", int(-1))]),
            1,
            Some((ReplyCode::PreconditionFailed, "invalid arg 'x-max-length' for queue 'bad' in vhost '/': {value_negative,-1}".into())),
        ),
        (exclusive.clone(), 1, None),
        (exclusive.clone(), 2, Some((ReplyCode::ResourceLocked, locked_text.into()))),
        (qdecl("ex"), 1, Some((ReplyCode::ResourceLocked, locked_text.into()))),
        (QueueDecl { passive: true, ..qdecl("ex") }, 2, Some((ReplyCode::ResourceLocked, locked_text.into()))),
    ];
    for (i, (decl, owner, want)) in cases.into_iter().enumerate() {
        let got = e
            .vhost
            .declare_queue(decl, owner)
            .err()
            .map(|e| (e.code, e.text));
        assert_eq!(got, want, "case {i}");
    }
    assert!(
        e.vhost.queue_for("bad", 1).is_err(),
        "invalid declare created nothing"
    );

    let (q, _, _) = e.vhost.declare_queue(qdecl(""), 1).unwrap();
    assert!(q.name.starts_with("amq.gen-"));
    assert_eq!(q.name.len(), "amq.gen-".len() + 22);
    assert!(q.name["amq.gen-".len()..]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
}

#[test]
fn queue_delete_and_purge() {
    let e = env();
    let q = e.queue("q");
    e.publish("", "q", "1");
    e.publish("", "q", "2");
    assert_eq!(
        err_of(e.vhost.delete_queue("q", false, true, 1)),
        (
            ReplyCode::PreconditionFailed,
            "queue 'q' in vhost '/' not empty".into()
        )
    );
    let sink = Sink::new(Some(0));
    q.add_consumer(consumer("c1", &sink)).unwrap();
    assert_eq!(
        err_of(e.vhost.delete_queue("q", true, false, 1)),
        (
            ReplyCode::PreconditionFailed,
            "queue 'q' in vhost '/' in use".into()
        )
    );
    assert_eq!(e.vhost.purge_queue("q", 1).unwrap(), 2);
    e.publish("", "q", "3");
    assert_eq!(e.vhost.delete_queue("q", false, false, 1).unwrap(), 1);
    assert_eq!(*sink.cancelled.lock(), vec!["c1"]);
    assert!(q.is_deleted());
    assert_eq!(
        e.vhost.delete_queue("q", false, false, 1).unwrap(),
        0,
        "missing queue: delete-ok"
    );
    assert_eq!(err_of(e.vhost.purge_queue("q", 1)).0, ReplyCode::NotFound);
    assert!(!e.publish("", "q", "4").routed);
}

#[test]
fn binding_errors_and_idempotence() {
    let e = env();
    e.exchange("e", "direct");
    e.exchange("h", "headers");
    e.queue("q");
    let none = FieldTable::default();
    assert_eq!(
        err_of(e.vhost.bind_queue("q", "nope", "k", &none, 1)),
        (
            ReplyCode::NotFound,
            "no exchange 'nope' in vhost '/'".into()
        )
    );
    assert_eq!(
        err_of(e.vhost.bind_queue("nope", "e", "k", &none, 1)),
        (ReplyCode::NotFound, "no queue 'nope' in vhost '/'".into())
    );
    assert_eq!(
        err_of(e.vhost.bind_queue("q", "", "k", &none, 1)),
        (
            ReplyCode::AccessRefused,
            "operation not permitted on the default exchange".into()
        )
    );
    assert_eq!(
        err_of(e.vhost.bind_exchange("e", "nope", "k", &none)).1,
        "no exchange 'nope' in vhost '/'"
    );
    assert_eq!(
        err_of(
            e.vhost
                .bind_queue("q", "h", "", &table(&[("x-match", longstr("some"))]), 1)
        )
        .0,
        ReplyCode::PreconditionFailed
    );
    e.bind("q", "e", "k");
    e.bind("q", "e", "k");
    let explicit: Vec<_> = e
        .vhost
        .bindings()
        .into_iter()
        .filter(|b| b.source == "e")
        .collect();
    assert_eq!(explicit.len(), 1);
    e.vhost.unbind_queue("q", "e", "other", &none, 1).unwrap();
    e.vhost.unbind_queue("q", "e", "k", &none, 1).unwrap();
    assert!(!e.publish("e", "k", "m").routed);
    assert_eq!(
        err_of(e.vhost.unbind_queue("nope", "e", "k", &none, 1)).0,
        ReplyCode::NotFound
    );
}

#[test]
fn listings_include_default_bindings() {
    let e = env();
    e.queue("q");
    e.exchange("e", "topic");
    e.bind("q", "e", "a.#");
    let b = e.vhost.bindings();
    assert_eq!(b.len(), 2);
    assert_eq!(
        (
            b[0].source.as_str(),
            b[0].destination.as_str(),
            b[0].routing_key.as_str()
        ),
        ("", "q", "q")
    );
    assert_eq!(
        (
            b[1].source.as_str(),
            b[1].routing_key.as_str(),
            b[1].destination_type
        ),
        ("e", "a.#", "queue")
    );
    let mut d = xdecl("withargs", "direct");
    d.arguments = table(&[("alternate-exchange", longstr("ae"))]);
    e.vhost.declare_exchange(d).unwrap();
    let x = e
        .vhost
        .exchanges()
        .into_iter()
        .find(|x| x.name == "withargs")
        .unwrap();
    assert_eq!(x.arguments["alternate-exchange"], "ae");
    assert_eq!(x.kind, "direct");
}

// ---- TTL, limits, dead-lettering ----

fn with_expiration(key: &str, body: &str, ms: &str) -> Message {
    message(
        key,
        body,
        BasicProperties::default().with_expiration(ms.into()),
    )
}

#[test]
fn message_ttl_queue_and_per_message() {
    let e = env();
    e.vhost
        .declare_queue(qargs("q", &[("x-message-ttl", int(100))]), 1)
        .unwrap();
    e.vhost.publish("", plain("q", "queue-ttl"), 1000).unwrap();
    e.vhost
        .publish("", with_expiration("q", "short", "10"), 1000)
        .unwrap();
    // the head lives until 1100; the short one behind it waits for the head (RabbitMQ expires at the head)
    assert_eq!(e.drain("q", 1050), vec!["queue-ttl"]);
    let q = e.vhost.queue_for("q", 1).unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "the short one expired once at the head"
    );

    e.vhost
        .publish("", with_expiration("q", "long", "5000"), 2000)
        .unwrap(); // min(100, 5000)
    e.vhost.tick(2099);
    assert_eq!(q.message_count(), 1);
    e.vhost.tick(2100);
    assert_eq!(q.message_count(), 0);
}

#[test]
fn ttl_zero_needs_a_waiting_consumer() {
    let e = env();
    e.exchange("dlx", "fanout");
    e.queue("dead");
    e.bind("dead", "dlx", "");
    let q = e
        .vhost
        .declare_queue(
            qargs(
                "q",
                &[
                    ("x-message-ttl", int(0)),
                    ("x-dead-letter-exchange", longstr("dlx")),
                ],
            ),
            1,
        )
        .unwrap()
        .0;
    e.publish("", "q", "nobody");
    assert_eq!(q.message_count(), 0);
    let sink = Sink::new(None);
    q.add_consumer(consumer("c", &sink)).unwrap();
    e.publish("", "q", "taken");
    assert_eq!(sink.bodies(), vec!["taken"]);
    assert_eq!(e.drain("dead", 0), vec!["nobody"]);
}

#[test]
fn max_length_overflow_modes() {
    struct Case {
        args: Vec<(&'static str, AMQPValue)>,
        rejected: Vec<bool>,
        left: Vec<&'static str>,
        dead: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            args: vec![("x-max-length", int(2))],
            rejected: vec![false; 3],
            left: vec!["2", "3"],
            dead: vec!["1"],
        },
        Case {
            args: vec![
                ("x-max-length", int(2)),
                ("x-overflow", longstr("reject-publish")),
            ],
            rejected: vec![false, false, true],
            left: vec!["1", "2"],
            dead: vec![],
        },
        Case {
            args: vec![
                ("x-max-length", int(2)),
                ("x-overflow", longstr("reject-publish-dlx")),
            ],
            rejected: vec![false, false, true],
            left: vec!["1", "2"],
            dead: vec!["3"],
        },
        // bodies are one byte each
        Case {
            args: vec![("x-max-length-bytes", int(1))],
            rejected: vec![false; 3],
            left: vec!["3"],
            dead: vec!["1", "2"],
        },
        Case {
            args: vec![("x-max-length", int(0))],
            rejected: vec![false; 3],
            left: vec![],
            dead: vec!["1", "2", "3"],
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let e = env();
        e.exchange("dlx", "fanout");
        e.queue("dead");
        e.bind("dead", "dlx", "");
        let mut args = case.args.clone();
        args.push(("x-dead-letter-exchange", longstr("dlx")));
        e.vhost.declare_queue(qargs("q", &args), 1).unwrap();
        let rejected: Vec<bool> = ["1", "2", "3"]
            .iter()
            .map(|b| e.publish("", "q", b).rejected)
            .collect();
        assert_eq!(rejected, case.rejected, "case {i}");
        assert_eq!(e.drain("q", 0), case.left, "case {i}");
        assert_eq!(e.drain("dead", 0), case.dead, "case {i}");
    }
}

fn x_death(m: &Message) -> Vec<FieldTable> {
    match m.header("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry {other:?}"),
            })
            .collect(),
        other => panic!("x-death {other:?}"),
    }
}

#[test]
fn reject_dead_letters_with_x_death() {
    let e = env();
    e.exchange("dlx", "direct");
    e.queue("dead");
    e.bind("dead", "dlx", "dead-key");
    let q = e
        .vhost
        .declare_queue(
            qargs(
                "work",
                &[
                    ("x-dead-letter-exchange", longstr("dlx")),
                    ("x-dead-letter-routing-key", longstr("dead-key")),
                ],
            ),
            1,
        )
        .unwrap()
        .0;
    e.exchange("in", "direct");
    e.bind("work", "in", "job");
    let m = message(
        "job",
        "payload",
        BasicProperties::default().with_expiration("60000".into()),
    );
    e.vhost.publish("in", m, 5_000).unwrap();
    let GetResult::Message { message, .. } = q.get(false, 5_000) else {
        panic!("empty")
    };
    q.reject(vec![message.clone()], 7_000);
    assert_eq!(q.stats().messages_unacked, 0);
    let dq = e.vhost.queue_for("dead", 1).unwrap();
    let GetResult::Message { message: dead, .. } = dq.get(true, 7_000) else {
        panic!("not dead-lettered")
    };
    assert_ne!(dead.id, message.id);
    assert_eq!(dead.routing_key, "dead-key");
    assert_eq!(dead.exchange, "dlx");
    assert!(dead.properties.expiration().is_none());
    let deaths = x_death(&dead);
    assert_eq!(deaths.len(), 1);
    let d = deaths[0].inner();
    assert_eq!(d.get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(d.get("reason"), Some(&longstr("rejected")));
    assert_eq!(d.get("queue"), Some(&longstr("work")));
    assert_eq!(d.get("exchange"), Some(&longstr("in")));
    assert_eq!(d.get("time"), Some(&AMQPValue::Timestamp(7)));
    assert_eq!(d.get("original-expiration"), Some(&longstr("60000")));
    assert_eq!(
        d.get("routing-keys"),
        Some(&AMQPValue::FieldArray(vec![longstr("job")].into()))
    );
    assert_eq!(
        dead.header("x-first-death-reason"),
        Some(&longstr("rejected"))
    );

    // without a DLX a rejected message is dropped
    let plainq = e.queue("plain");
    e.publish("", "plain", "x");
    let GetResult::Message { message, .. } = plainq.get(false, 0) else {
        panic!()
    };
    plainq.reject(vec![message], 0);
    assert_eq!(
        plainq.stats().messages_unacked + plainq.stats().messages_ready,
        0
    );
}

#[test]
fn dead_letter_cycles_are_dropped() {
    let e = env();
    // q expires into dlx, which routes back to q: the second expiry is a cycle.
    e.exchange("dlx", "fanout");
    let q = e
        .vhost
        .declare_queue(
            qargs(
                "q",
                &[
                    ("x-message-ttl", int(10)),
                    ("x-dead-letter-exchange", longstr("dlx")),
                ],
            ),
            1,
        )
        .unwrap()
        .0;
    e.bind("q", "dlx", "");
    e.vhost.publish("", plain("q", "m"), 0).unwrap();
    e.vhost.tick(10);
    assert_eq!(
        q.message_count(),
        0,
        "dead-lettered back into the same queue: a cycle, dropped"
    );

    // with a rejection in the cycle the message keeps going round
    let r = e
        .vhost
        .declare_queue(
            qargs("r", &[("x-dead-letter-exchange", longstr("rdlx"))]),
            1,
        )
        .unwrap()
        .0;
    e.exchange("rdlx", "fanout");
    e.bind("r", "rdlx", "");
    e.publish("", "r", "again");
    for round in 1..=3i64 {
        let GetResult::Message { message, .. } = r.get(false, 0) else {
            panic!("round {round}")
        };
        r.reject(vec![message], 0);
        let GetResult::Message { message, .. } = r.get(false, 0) else {
            panic!("round {round}: not back")
        };
        assert_eq!(
            x_death(&message)[0].inner().get("count"),
            Some(&AMQPValue::LongLongInt(round))
        );
        r.requeue(vec![message], 0);
    }
}

#[test]
fn dead_letter_exchange_from_policy() {
    let e = env();
    e.exchange("pdlx", "fanout");
    e.queue("dead");
    e.bind("dead", "pdlx", "");
    let q = e.queue("work.1");
    e.vhost
        .put_policy(PolicyDef {
            vhost: "/".into(),
            name: "dl".into(),
            pattern: "^work\\.".into(),
            apply_to: "queues".into(),
            definition: serde_json::from_str(
                r#"{"dead-letter-exchange": "pdlx", "max-length": 1}"#,
            )
            .unwrap(),
            priority: 0,
        })
        .unwrap();
    assert_eq!(q.config().max_length, Some(1));
    e.publish("", "work.1", "a");
    e.publish("", "work.1", "b");
    assert_eq!(e.drain("dead", 0), vec!["a"]);
    e.vhost.delete_policy("dl").unwrap();
    assert_eq!(q.config(), super::args::QueueConfig::default());
    assert_eq!(err_of(e.vhost.delete_policy("dl")).0, ReplyCode::NotFound);
}

#[test]
fn declared_arguments_win_over_policy() {
    let e = env();
    e.vhost
        .put_policy(PolicyDef {
            vhost: "/".into(),
            name: "ttl".into(),
            pattern: ".*".into(),
            apply_to: "all".into(),
            definition: serde_json::from_str(r#"{"message-ttl": 5, "alternate-exchange": "ae"}"#)
                .unwrap(),
            priority: 0,
        })
        .unwrap();
    let q = e
        .vhost
        .declare_queue(qargs("q", &[("x-message-ttl", int(50))]), 1)
        .unwrap()
        .0;
    assert_eq!(q.config().message_ttl, Some(50));
    assert_eq!(e.queue("p").config().message_ttl, Some(5));
    // alternate-exchange via policy
    e.exchange("ae", "fanout");
    e.bind("p", "ae", "");
    e.exchange("main", "direct");
    assert_eq!(e.publish("main", "nothing", "m").queues, 1);
    assert_eq!(e.vhost.policies().len(), 1);
}

// ---- consumers and dispatch ----

#[test]
fn priorities_higher_first_capped_at_max() {
    let e = env();
    e.vhost
        .declare_queue(
            qargs("q", &[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
            1,
        )
        .unwrap();
    for (body, prio) in [
        ("low", 1u8),
        ("none", 0),
        ("high", 5),
        ("huge", 200),
        ("mid", 3),
    ] {
        let props = if prio > 0 {
            BasicProperties::default().with_priority(prio)
        } else {
            BasicProperties::default()
        };
        e.vhost.publish("", message("q", body, props), 0).unwrap();
    }
    assert_eq!(e.drain("q", 0), vec!["high", "huge", "mid", "low", "none"]);
}

#[test]
fn round_robin_consumer_priority_and_reservation() {
    let e = env();
    let q = e.queue("q");
    let a = Sink::new(None);
    let b = Sink::new(None);
    q.add_consumer(consumer("a", &a)).unwrap();
    q.add_consumer(consumer("b", &b)).unwrap();
    for i in 0..4 {
        e.publish("", "q", &i.to_string());
    }
    assert_eq!(a.bodies(), vec!["0", "2"]);
    assert_eq!(b.bodies(), vec!["1", "3"]);

    // a high-priority consumer with room takes everything; without room the others do
    let hi = Sink::new(Some(1));
    q.add_consumer(ConsumerSpec {
        priority: 10,
        ..consumer("hi", &hi)
    })
    .unwrap();
    e.publish("", "q", "4");
    e.publish("", "q", "5");
    assert_eq!(hi.bodies(), vec!["4"]);
    assert_eq!(a.count() + b.count(), 5);

    // nobody has room: messages wait, then flow when credit comes back
    let e = env();
    let q = e.queue("w");
    let s = Sink::new(Some(1));
    q.add_consumer(consumer("s", &s)).unwrap();
    for i in 0..3 {
        e.publish("", "w", &i.to_string());
    }
    assert_eq!(s.bodies(), vec!["0"]);
    assert_eq!(q.stats().messages_ready, 2);
    assert_eq!(q.stats().messages_unacked, 1);
    s.give(5);
    q.dispatch(0);
    assert_eq!(s.bodies(), vec!["0", "1", "2"]);
    let ids: Vec<MessageId> = s.delivered.lock().iter().map(|d| d.message.id).collect();
    q.ack(&ids);
    let st = q.stats();
    assert_eq!(
        (
            st.messages_ready,
            st.messages_unacked,
            st.acked_total,
            st.delivered_total,
            st.published_total
        ),
        (0, 0, 3, 3, 3)
    );
}

#[test]
fn requeue_keeps_order_and_marks_redelivered() {
    let e = env();
    let q = e.queue("q");
    for b in ["1", "2", "3"] {
        e.publish("", "q", b);
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let GetResult::Message {
            message,
            redelivered,
            remaining,
        } = q.get(false, 0)
        else {
            panic!()
        };
        assert!(!redelivered);
        got.push(message);
        let _ = remaining;
    }
    q.requeue(got, 0);
    let mut order = Vec::new();
    while let GetResult::Message {
        message,
        redelivered,
        ..
    } = q.get(true, 0)
    {
        order.push((
            String::from_utf8_lossy(&message.body).into_owned(),
            redelivered,
        ));
    }
    assert_eq!(
        order,
        vec![("1".into(), true), ("2".into(), true), ("3".into(), false)]
    );
}

#[test]
fn exclusive_consumers_and_queues() {
    let e = env();
    let q = e.queue("q");
    let s = Sink::new(None);
    q.add_consumer(ConsumerSpec {
        exclusive: true,
        ..consumer("x", &s)
    })
    .unwrap();
    assert_eq!(
        err_of(q.add_consumer(consumer("y", &s))),
        (
            ReplyCode::AccessRefused,
            "queue 'q' in vhost '/' in exclusive use".into()
        )
    );
    assert!(q.remove_consumer(1, 1, "x"));
    q.add_consumer(consumer("y", &s)).unwrap();
    assert_eq!(
        err_of(q.add_consumer(ConsumerSpec {
            exclusive: true,
            ..consumer("z", &s)
        }))
        .0,
        ReplyCode::AccessRefused
    );
    assert!(!q.remove_consumer(1, 2, "y"), "other channel");

    let ex = e
        .vhost
        .declare_queue(
            QueueDecl {
                exclusive: true,
                ..qdecl("mine")
            },
            7,
        )
        .unwrap()
        .0;
    assert_eq!(
        err_of(e.vhost.queue_for("mine", 8)).0,
        ReplyCode::ResourceLocked
    );
    assert_eq!(
        err_of(
            e.vhost
                .bind_queue("mine", "amq.direct", "k", &FieldTable::default(), 8)
        )
        .0,
        ReplyCode::ResourceLocked
    );
    assert_eq!(
        err_of(e.vhost.delete_queue("mine", false, false, 8)).0,
        ReplyCode::ResourceLocked
    );
    e.vhost
        .bind_queue("mine", "amq.direct", "k", &FieldTable::default(), 7)
        .unwrap();
    e.vhost.connection_closed(8);
    assert!(!ex.is_deleted());
    e.vhost.connection_closed(7);
    assert!(ex.is_deleted());
    assert!(e.vhost.queue_for("mine", 7).is_err());
    assert!(e.vhost.bindings().iter().all(|b| b.destination != "mine"));
}

#[test]
fn auto_delete_queues_and_exchanges() {
    let e = env();
    let q = e
        .vhost
        .declare_queue(
            QueueDecl {
                auto_delete: true,
                ..qdecl("ad")
            },
            1,
        )
        .unwrap()
        .0;
    // never had a consumer: stays
    e.vhost.tick(0);
    assert!(!q.is_deleted());
    let s = Sink::new(None);
    q.add_consumer(consumer("a", &s)).unwrap();
    q.add_consumer(consumer("b", &s)).unwrap();
    q.remove_consumer(1, 1, "a");
    assert!(!q.is_deleted());
    q.remove_consumer(1, 1, "b");
    assert!(q.is_deleted());
    assert!(e.vhost.queue_for("ad", 1).is_err());

    let mut d = xdecl("adx", "fanout");
    d.auto_delete = true;
    e.vhost.declare_exchange(d).unwrap();
    e.queue("q1");
    e.queue("q2");
    e.bind("q1", "adx", "");
    e.bind("q2", "adx", "");
    e.vhost
        .unbind_queue("q1", "adx", "", &FieldTable::default(), 1)
        .unwrap();
    assert!(e.vhost.exchanges().iter().any(|x| x.name == "adx"));
    // deleting the last bound queue removes the exchange
    e.vhost.delete_queue("q2", false, false, 1).unwrap();
    assert!(!e.vhost.exchanges().iter().any(|x| x.name == "adx"));
}

#[test]
fn x_expires_deletes_unused_queues() {
    let e = env();
    let q = e
        .vhost
        .declare_queue(qargs("q", &[("x-expires", int(1000))]), 1)
        .unwrap()
        .0;
    e.vhost.tick(10_000); // starts the idle clock
    e.vhost.tick(10_500);
    q.get(true, 10_600); // use resets it
    e.vhost.tick(10_700);
    e.vhost.tick(11_600);
    assert!(!q.is_deleted());
    let s = Sink::new(None);
    q.add_consumer(consumer("c", &s)).unwrap();
    e.vhost.tick(50_000);
    assert!(!q.is_deleted(), "has a consumer");
    q.remove_consumer(1, 1, "c");
    e.vhost.tick(60_000);
    e.vhost.tick(61_000);
    assert!(q.is_deleted());
    assert_eq!(
        *s.cancelled.lock(),
        Vec::<String>::new(),
        "no consumer left to cancel"
    );
}

// ---- persistence ----

fn persistent(key: &str, body: &str) -> Message {
    message(key, body, BasicProperties::default().with_delivery_mode(2))
}

#[test]
fn persistent_messages_in_durable_queues_are_logged() {
    let e = env();
    e.vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                ..qdecl("d1")
            },
            1,
        )
        .unwrap();
    e.vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                ..qdecl("d2")
            },
            1,
        )
        .unwrap();
    e.queue("t");
    e.vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                exclusive: true,
                ..qdecl("dx")
            },
            1,
        )
        .unwrap();
    e.exchange("f", "fanout");
    for q in ["d1", "d2", "t", "dx"] {
        e.bind(q, "f", "");
    }
    let m = persistent("", "p");
    let id = m.id;
    let out = e.vhost.publish("f", m, 0).unwrap();
    assert_eq!(out.queues, 4);
    assert!(out.ticket.is_some());
    assert_eq!(
        *e.log.published.lock(),
        vec![(vec!["d1".to_string(), "d2".to_string()], id)]
    );
    // transient messages and transient queues are not logged
    assert!(e
        .vhost
        .publish("f", plain("", "t"), 0)
        .unwrap()
        .ticket
        .is_none());
    assert!(e
        .vhost
        .publish("", persistent("t", "x"), 0)
        .unwrap()
        .ticket
        .is_none());
    assert_eq!(e.log.published.lock().len(), 1);

    // leaving: ack in d1, no-ack get in d2, then purge/delete
    let d1 = e.vhost.queue_for("d1", 1).unwrap();
    let GetResult::Message { message, .. } = d1.get(false, 0) else {
        panic!()
    };
    assert!(e.log.removed.lock().is_empty(), "not yet acked");
    d1.ack(&[message.id]);
    let d2 = e.vhost.queue_for("d2", 1).unwrap();
    assert!(matches!(d2.get(true, 0), GetResult::Message { .. }));
    assert_eq!(
        *e.log.removed.lock(),
        vec![("d1".to_string(), id), ("d2".to_string(), id)]
    );
    let p2 = persistent("d2", "again");
    let id2 = p2.id;
    e.vhost.publish("", p2, 0).unwrap();
    e.vhost.purge_queue("d2", 1).unwrap();
    assert_eq!(e.log.removed.lock().last(), Some(&("d2".to_string(), id2)));
    e.vhost.delete_queue("d2", false, false, 1).unwrap();
    assert_eq!(*e.log.removed_queues.lock(), vec!["d2"]);
}

#[test]
fn reject_publish_removes_the_log_record() {
    let e = env();
    e.vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                ..qargs(
                    "d",
                    &[
                        ("x-max-length", int(0)),
                        ("x-overflow", longstr("reject-publish")),
                    ],
                )
            },
            1,
        )
        .unwrap();
    let m = persistent("d", "x");
    let id = m.id;
    let out = e.vhost.publish("", m, 0).unwrap();
    assert!(out.rejected && out.routed && out.ticket.is_none());
    assert_eq!(*e.log.removed.lock(), vec![("d".to_string(), id)]);
}

#[test]
fn durable_metadata_is_logged() {
    let e = env();
    e.vhost
        .declare_exchange(ExchangeDecl {
            durable: true,
            ..xdecl("dx", "direct")
        })
        .unwrap();
    e.exchange("tx", "direct");
    e.vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                ..qdecl("dq")
            },
            1,
        )
        .unwrap();
    e.queue("tq");
    e.vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                exclusive: true,
                ..qdecl("ex")
            },
            1,
        )
        .unwrap();
    e.bind("dq", "dx", "k");
    e.bind("tq", "dx", "k");
    e.bind("dq", "tx", "k");
    e.bind("ex", "dx", "k");
    e.vhost
        .unbind_queue("dq", "dx", "k", &FieldTable::default(), 1)
        .unwrap();
    e.bind("dq", "dx", "k2");
    e.vhost.delete_queue("dq", false, false, 1).unwrap();
    e.vhost.delete_exchange("dx", false).unwrap();
    assert_eq!(
        e.meta.kinds(),
        vec![
            "put exchange dx",
            "put queue dq",
            "put binding dx->dq:k",
            "delete binding dx->dq:k",
            "put binding dx->dq:k2",
            "delete queue dq",
            "delete binding dx->dq:k2",
            "delete exchange dx",
        ]
    );
    let q = e.meta.ops.lock()[1].clone();
    assert!(matches!(q, MetaOp::PutQueue(ref d) if d.durable && d.vhost == "/"));

    // a failing metadata log refuses the change with 541 and changes nothing
    e.meta.fail.store(true, Ordering::Relaxed);
    let err = e
        .vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                ..qdecl("later")
            },
            1,
        )
        .unwrap_err();
    assert_eq!(err.code, ReplyCode::InternalError);
    assert!(
        err.text.contains("queue 'later' in vhost '/'"),
        "{}",
        err.text
    );
    assert!(e.vhost.queue_for("later", 1).is_err());
    // transient things do not touch the log
    e.queue("still-fine");
}

#[test]
fn restore_puts_messages_back_without_logging() {
    let e = env();
    let q = e
        .vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                ..qdecl("d")
            },
            1,
        )
        .unwrap()
        .0;
    e.vhost
        .restore_message("d", persistent("d", "old"), false, 0);
    e.vhost
        .restore_message("d", persistent("d", "seen"), true, 0);
    e.vhost
        .restore_message("missing", persistent("d", "lost"), false, 0);
    assert!(e.log.published.lock().is_empty());
    assert_eq!(q.message_count(), 2);
    let mut got = Vec::new();
    while let GetResult::Message {
        message,
        redelivered,
        ..
    } = q.get(false, 0)
    {
        got.push((
            String::from_utf8_lossy(&message.body).into_owned(),
            redelivered,
        ));
    }
    assert_eq!(got, vec![("old".into(), false), ("seen".into(), true)]);
    // Only the one never delivered before needs a delivered record.
    assert_eq!(e.log.delivered.lock().len(), 1);
}

#[test]
fn first_unacked_delivery_of_logged_messages_is_recorded_once() {
    let e = env();
    let durable = |name: &str| {
        e.vhost
            .declare_queue(
                QueueDecl {
                    durable: true,
                    ..qdecl(name)
                },
                1,
            )
            .unwrap()
            .0
    };
    let d = durable("d");
    let t = e.queue("t");
    let x = e
        .vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                exclusive: true,
                ..qdecl("x")
            },
            1,
        )
        .unwrap()
        .0;
    let ids: Vec<MessageId> = (0..3)
        .map(|i| {
            let m = persistent("d", &format!("p{i}"));
            let id = m.id;
            e.vhost.publish("", m, 0).unwrap();
            id
        })
        .collect();
    e.vhost.publish("", plain("d", "transient"), 0).unwrap();
    e.vhost.publish("", persistent("t", "tq"), 0).unwrap();
    e.vhost.publish("", persistent("x", "xq"), 0).unwrap();

    // One ack-mode consumer dispatch of everything ready: one call, the
    // persistent ids only.
    let s = Sink::new(None);
    d.add_consumer(consumer("c", &s)).unwrap();
    assert_eq!(s.count(), 4);
    assert_eq!(
        *e.log.delivered.lock(),
        vec![("d".to_string(), ids.clone())]
    );
    // Requeued and delivered again: already recorded.
    let msgs: Vec<crate::types::MessageRef> = s
        .delivered
        .lock()
        .iter()
        .map(|d| d.message.clone())
        .collect();
    s.delivered.lock().clear();
    assert!(d.remove_consumer(1, 1, "c"));
    d.requeue(msgs, 0);
    let s2 = Sink::new(None);
    d.add_consumer(consumer("c2", &s2)).unwrap();
    assert_eq!(s2.count(), 4);
    assert!(s2.delivered.lock().iter().all(|d| d.redelivered));
    assert_eq!(e.log.delivered.lock().len(), 1);
    // A later publish goes straight to the waiting consumer: its own record.
    let m = persistent("d", "late");
    let late = m.id;
    e.vhost.publish("", m, 0).unwrap();
    assert_eq!(
        e.log.delivered.lock().last(),
        Some(&("d".to_string(), vec![late]))
    );
    assert_eq!(e.log.delivered.lock().len(), 2);

    // basic.get: recorded without no-ack only; never for unlogged queues.
    let d2 = durable("d2");
    let m = persistent("d2", "g");
    let gid = m.id;
    e.vhost.publish("", m, 0).unwrap();
    e.vhost.publish("", persistent("d2", "g-noack"), 0).unwrap();
    assert!(matches!(d2.get(false, 0), GetResult::Message { .. }));
    assert!(matches!(d2.get(true, 0), GetResult::Message { .. }));
    assert!(matches!(t.get(false, 0), GetResult::Message { .. }));
    assert!(matches!(x.get(false, 0), GetResult::Message { .. }));
    assert_eq!(e.log.delivered.lock().len(), 3);
    assert_eq!(
        e.log.delivered.lock().last(),
        Some(&("d2".to_string(), vec![gid]))
    );

    // no-ack consumers: the message leaves, nothing to flag.
    let s3 = Sink::new(None);
    d2.add_consumer(ConsumerSpec {
        no_ack: true,
        ..consumer("n", &s3)
    })
    .unwrap();
    e.vhost.publish("", persistent("d2", "n"), 0).unwrap();
    assert_eq!(s3.count(), 1);
    assert_eq!(e.log.delivered.lock().len(), 3);
}

#[test]
fn no_ack_consumers_release_at_once() {
    let e = env();
    let q = e
        .vhost
        .declare_queue(
            QueueDecl {
                durable: true,
                ..qdecl("d")
            },
            1,
        )
        .unwrap()
        .0;
    let s = Sink::new(None);
    q.add_consumer(ConsumerSpec {
        no_ack: true,
        ..consumer("c", &s)
    })
    .unwrap();
    let m = persistent("d", "x");
    let id = m.id;
    e.vhost.publish("", m, 0).unwrap();
    assert_eq!(s.count(), 1);
    assert_eq!(q.stats().messages_unacked, 0);
    assert_eq!(*e.log.removed.lock(), vec![("d".to_string(), id)]);
}

#[test]
fn concurrent_publish_get_ack_and_tick() {
    let e = env();
    e.exchange("f", "fanout");
    for q in ["a", "b"] {
        e.vhost
            .declare_queue(
                QueueDecl {
                    durable: true,
                    ..qdecl(q)
                },
                1,
            )
            .unwrap();
        e.bind(q, "f", "");
    }
    e.vhost
        .declare_queue(qargs("c", &[("x-max-length", int(10))]), 1)
        .unwrap();
    e.bind("c", "f", "");
    let sink = Sink::new(None);
    e.vhost
        .queue_for("b", 1)
        .unwrap()
        .add_consumer(consumer("cb", &sink))
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..3 {
            let v = e.vhost.clone();
            s.spawn(move || {
                for i in 0..500 {
                    v.publish("f", persistent("", &format!("{t}-{i}")), 0)
                        .unwrap();
                }
            });
        }
        let v = e.vhost.clone();
        s.spawn(move || {
            let a = v.queue_for("a", 1).unwrap();
            let mut got = 0;
            while got < 1500 {
                if let GetResult::Message { message, .. } = a.get(false, 0) {
                    a.ack(&[message.id]);
                    got += 1;
                }
                v.tick(0);
            }
        });
    });
    assert_eq!(sink.count(), 1500);
    assert_eq!(e.vhost.queue_for("c", 1).unwrap().message_count(), 10);
    let a = e.vhost.queue_for("a", 1).unwrap().stats();
    assert_eq!(
        (a.acked_total, a.messages_ready, a.messages_unacked),
        (1500, 0, 0)
    );
    assert_eq!(e.log.published.lock().len(), 1500);
    assert_eq!(
        e.log
            .removed
            .lock()
            .iter()
            .filter(|(q, _)| q == "a")
            .count(),
        1500
    );
}

// ---- single active consumer ----

fn sac_on() -> (&'static str, AMQPValue) {
    ("x-single-active-consumer", AMQPValue::Boolean(true))
}

/// A consumer on its own channel (`channel`), with a priority.
fn consumer_on(tag: &str, sink: &Arc<Sink>, channel: u16, priority: i32) -> ConsumerSpec {
    ConsumerSpec {
        channel,
        priority,
        ..consumer(tag, sink)
    }
}

fn delivered(s: &Sink) -> Vec<(String, bool)> {
    s.delivered
        .lock()
        .iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.message.body).into_owned(),
                d.redelivered,
            )
        })
        .collect()
}

fn fresh(bodies: &[&str]) -> Vec<(String, bool)> {
    bodies.iter().map(|b| (b.to_string(), false)).collect()
}

#[test]
fn single_active_consumer_takes_turns() {
    let e = env();
    let q = e
        .vhost
        .declare_queue(qargs("sac", &[sac_on()]), 1)
        .unwrap()
        .0;
    assert!(q.config().single_active_consumer);
    // RabbitMQ refuses exclusive consumers on such a queue, even the first.
    let x = Sink::new(None);
    assert_eq!(
        err_of(q.add_consumer(ConsumerSpec {
            exclusive: true,
            ..consumer("x", &x)
        })),
        (
            ReplyCode::AccessRefused,
            "queue 'sac' in vhost '/' in exclusive use".into()
        )
    );

    let a = Sink::new(Some(2));
    let b = Sink::new(None);
    let c = Sink::new(Some(1));
    let d = Sink::new(None);
    q.add_consumer(consumer_on("a", &a, 1, 0)).unwrap();
    q.add_consumer(consumer_on("b", &b, 2, 0)).unwrap();
    // A higher priority does not take over from the active consumer...
    q.add_consumer(consumer_on("c", &c, 3, 5)).unwrap();
    q.add_consumer(consumer_on("d", &d, 4, 5)).unwrap();
    for i in 0..5 {
        e.publish("", "sac", &format!("m{i}"));
    }
    assert_eq!(delivered(&a), fresh(&["m0", "m1"]));
    assert_eq!((b.count(), c.count(), d.count()), (0, 0, 0));
    let st = q.stats();
    assert_eq!(
        (st.consumers, st.messages_ready, st.messages_unacked),
        (4, 3, 2)
    );

    // ...but it is first in line: a's channel closes (consumer removed,
    // then its unacked requeued) and c, the earliest of the highest
    // priority, becomes active and gets them back first.
    assert!(q.remove_consumer(1, 1, "a"));
    let a_msgs: Vec<crate::types::MessageRef> = a
        .delivered
        .lock()
        .iter()
        .map(|d| d.message.clone())
        .collect();
    q.requeue(a_msgs, 0);
    assert_eq!(delivered(&c), vec![("m0".to_string(), true)]);
    assert_eq!((b.count(), d.count()), (0, 0));

    // Cancelling the active consumer while it has unacked deliveries: the
    // next one (d: same priority as c, registered before b's turn comes)
    // waits for them to be settled, so that a channel close's requeue
    // reaches it before the newer messages.
    assert!(q.remove_consumer(1, 3, "c"));
    assert_eq!((b.count(), d.count()), (0, 0));
    let c_msgs: Vec<crate::types::MessageRef> = c
        .delivered
        .lock()
        .iter()
        .map(|d| d.message.clone())
        .collect();
    q.requeue(c_msgs, 0);
    assert_eq!(
        delivered(&d),
        vec![
            ("m0".to_string(), true),
            ("m1".to_string(), true),
            ("m2".to_string(), false),
            ("m3".to_string(), false),
            ("m4".to_string(), false),
        ]
    );
    e.publish("", "sac", "m5");
    assert_eq!(delivered(&d)[5..], [("m5".to_string(), false)]);
    assert_eq!(b.count(), 0);
    // The old consumer's late settles do not count against the new one.
    let d_ids: Vec<MessageId> = d.delivered.lock().iter().map(|x| x.message.id).collect();
    q.ack(&d_ids);
    assert_eq!(q.stats().messages_unacked, 0);

    // A waiting consumer leaving changes nothing; the last one left gets all.
    let f = Sink::new(None);
    q.add_consumer(consumer_on("f", &f, 5, 0)).unwrap();
    assert!(q.remove_consumer(1, 5, "f"));
    assert!(q.remove_consumer(1, 4, "d"));
    e.publish("", "sac", "m6");
    assert_eq!(delivered(&b), fresh(&["m6"]));
    let g = Sink::new(None);
    q.add_consumer(consumer_on("g", &g, 6, 10)).unwrap();
    e.publish("", "sac", "m7");
    assert_eq!(delivered(&b), fresh(&["m6", "m7"]));
    assert_eq!(g.count(), 0);
    assert_eq!(q.consumer_count(), 2);

    // An active consumer that goes with nothing unacked (here: no room, as a
    // connection whose output is full) hands the backlog over at once.
    let (r0, r1) = (Sink::new(Some(0)), Sink::new(None));
    let qr = e
        .vhost
        .declare_queue(qargs("sacr", &[sac_on()]), 1)
        .unwrap()
        .0;
    qr.add_consumer(consumer_on("r0", &r0, 1, 0)).unwrap();
    qr.add_consumer(consumer_on("r1", &r1, 2, 0)).unwrap();
    e.publish("", "sacr", "k0");
    e.publish("", "sacr", "k1");
    assert_eq!((r0.count(), r1.count()), (0, 0));
    assert!(qr.remove_consumer(1, 1, "r0"));
    assert_eq!(delivered(&r1), fresh(&["k0", "k1"]));
    // Acks from a basic.get do not count as the active consumer's.
    e.publish("", "sacr", "k2");
    assert_eq!(r1.count(), 3);

    // Two consumers of one channel go in its close: the one that takes over
    // in between must not take newer messages ahead of the requeued one.
    let (s1, s2, s3) = (Sink::new(Some(1)), Sink::new(None), Sink::new(None));
    let qm = e
        .vhost
        .declare_queue(qargs("sacm", &[sac_on()]), 1)
        .unwrap()
        .0;
    qm.add_consumer(consumer_on("a1", &s1, 1, 0)).unwrap();
    qm.add_consumer(consumer_on("a2", &s2, 1, 0)).unwrap();
    qm.add_consumer(consumer_on("b", &s3, 2, 0)).unwrap();
    for k in ["j0", "j1", "j2"] {
        e.publish("", "sacm", k);
    }
    assert_eq!(delivered(&s1), fresh(&["j0"]));
    assert!(qm.remove_consumer(1, 1, "a1"));
    assert!(qm.remove_consumer(1, 1, "a2"));
    assert_eq!((s2.count(), s3.count()), (0, 0));
    let held: Vec<crate::types::MessageRef> = s1
        .delivered
        .lock()
        .iter()
        .map(|d| d.message.clone())
        .collect();
    qm.requeue(held, 0);
    assert_eq!(
        delivered(&s3),
        vec![
            ("j0".to_string(), true),
            ("j1".to_string(), false),
            ("j2".to_string(), false)
        ]
    );

    // Once all consumers are gone a new turn starts: deliveries still held
    // from before (p1's) do not hold up later hand-overs.
    let (p1, p2, p3) = (Sink::new(Some(1)), Sink::new(Some(0)), Sink::new(None));
    let qt = e
        .vhost
        .declare_queue(qargs("sact", &[sac_on()]), 1)
        .unwrap()
        .0;
    qt.add_consumer(consumer_on("p1", &p1, 1, 0)).unwrap();
    e.publish("", "sact", "t0");
    e.publish("", "sact", "t1");
    assert!(qt.remove_consumer(1, 1, "p1"));
    qt.add_consumer(consumer_on("p2", &p2, 2, 0)).unwrap();
    qt.add_consumer(consumer_on("p3", &p3, 3, 0)).unwrap();
    assert_eq!((p1.count(), p2.count(), p3.count()), (1, 0, 0));
    assert!(qt.remove_consumer(1, 2, "p2"));
    assert_eq!(delivered(&p3), fresh(&["t1"]));

    // basic.get is not a consumer: it takes ready messages as usual.
    let (h, i) = (Sink::new(Some(0)), Sink::new(None));
    let q2 = e
        .vhost
        .declare_queue(qargs("sac2", &[sac_on()]), 1)
        .unwrap()
        .0;
    q2.add_consumer(consumer_on("h", &h, 1, 0)).unwrap();
    q2.add_consumer(consumer_on("i", &i, 2, 0)).unwrap();
    e.publish("", "sac2", "n0");
    assert_eq!(
        (h.count(), i.count()),
        (0, 0),
        "blocked active: nobody else"
    );
    assert_eq!(e.get_body("sac2", 0).as_deref(), Some("n0"));
    // No-ack deliveries to the active consumer leave the queue at once.
    let n = Sink::new(None);
    let q3 = e
        .vhost
        .declare_queue(qargs("sac3", &[sac_on()]), 1)
        .unwrap()
        .0;
    q3.add_consumer(ConsumerSpec {
        no_ack: true,
        ..consumer_on("n", &n, 1, 0)
    })
    .unwrap();
    q3.add_consumer(consumer_on("o", &i, 2, 0)).unwrap();
    e.publish("", "sac3", "p0");
    assert_eq!(delivered(&n), fresh(&["p0"]));
    assert_eq!(q3.stats().messages_unacked, 0);
}

#[test]
fn single_active_consumer_argument() {
    let e = env();
    e.vhost.declare_queue(qargs("sac", &[sac_on()]), 1).unwrap();
    e.vhost
        .declare_queue(
            qargs(
                "off",
                &[("x-single-active-consumer", AMQPValue::Boolean(false))],
            ),
            1,
        )
        .unwrap();
    // RabbitMQ 3.10.8's texts, checked against it.
    let cases: Vec<(QueueDecl, Option<String>)> = vec![
        (qargs("sac", &[sac_on()]), None),
        (
            qargs("sac", &[("x-single-active-consumer", AMQPValue::Boolean(false))]),
            Some("inequivalent arg 'x-single-active-consumer' for queue 'sac' in vhost '/': received 'false' but current is 'true'".into()),
        ),
        (
            qdecl("sac"),
            Some("inequivalent arg 'x-single-active-consumer' for queue 'sac' in vhost '/': received none but current is the value 'true' of type 'bool'".into()),
        ),
        (
            qdecl("off"),
            Some("inequivalent arg 'x-single-active-consumer' for queue 'off' in vhost '/': received none but current is the value 'false' of type 'bool'".into()),
        ),
        (
            qargs("bad", &[("x-single-active-consumer", longstr("true"))]),
            Some("invalid arg 'x-single-active-consumer' for queue 'bad' in vhost '/': {unacceptable_type,longstr}".into()),
        ),
        (
            qargs("bad", &[("x-single-active-consumer", int(1))]),
            Some("invalid arg 'x-single-active-consumer' for queue 'bad' in vhost '/': {unacceptable_type,long}".into()),
        ),
    ];
    for (i, (decl, want)) in cases.into_iter().enumerate() {
        let got = e.vhost.declare_queue(decl, 1).err().map(|e| {
            assert_eq!(e.code, ReplyCode::PreconditionFailed);
            e.text
        });
        assert_eq!(got, want, "case {i}");
    }

    // Not a policy key in RabbitMQ 3.10, and a policy change keeps it.
    e.vhost
        .put_policy(PolicyDef {
            name: "p".into(),
            vhost: "/".into(),
            pattern: ".*".into(),
            apply_to: "queues".into(),
            definition: serde_json::from_str(
                r#"{"single-active-consumer": true, "max-length": 9}"#,
            )
            .unwrap(),
            priority: 0,
        })
        .unwrap();
    let off = e.vhost.queue_for("off", 1).unwrap();
    assert!(!off.config().single_active_consumer);
    assert_eq!(off.config().max_length, Some(9));
    let sac = e.vhost.queue_for("sac", 1).unwrap();
    assert!(sac.config().single_active_consumer);
    let plain_q = e.queue("plain");
    assert!(!plain_q.config().single_active_consumer);
    // Without the argument consumers share as before.
    let (a, b) = (Sink::new(None), Sink::new(None));
    plain_q.add_consumer(consumer_on("a", &a, 1, 0)).unwrap();
    plain_q.add_consumer(consumer_on("b", &b, 2, 0)).unwrap();
    e.publish("", "plain", "1");
    e.publish("", "plain", "2");
    assert_eq!((a.count(), b.count()), (1, 1));
}

// ---- broker-wide totals ----

#[test]
fn message_totals_survive_queue_deletion() {
    let e = env();
    let q1 = e.queue("q1");
    e.queue("q2");
    for i in 0..3 {
        e.publish("", "q1", &i.to_string());
    }
    e.publish("", "q2", "x");
    e.publish("", "q2", "y");
    assert!(e.get_body("q1", 0).is_some());
    assert_eq!(e.vhost.message_totals(), (5, 1));

    e.vhost.delete_queue("q1", false, false, 1).unwrap();
    assert_eq!(e.vhost.message_totals(), (5, 1), "queue.delete");
    // A deleted queue a channel still holds takes nothing more.
    q1.requeue(Vec::new(), 0);
    assert!(matches!(q1.get(true, 0), GetResult::Empty));
    assert_eq!(e.vhost.message_totals(), (5, 1));

    // auto-delete after the last consumer, exclusive queue of a closed
    // connection, x-expires.
    let ad = e
        .vhost
        .declare_queue(
            QueueDecl {
                auto_delete: true,
                ..qdecl("ad")
            },
            1,
        )
        .unwrap()
        .0;
    let s = Sink::new(None);
    ad.add_consumer(consumer("c", &s)).unwrap();
    e.publish("", "ad", "z");
    ad.remove_consumer(1, 1, "c");
    assert!(ad.is_deleted());
    e.vhost
        .declare_queue(
            QueueDecl {
                exclusive: true,
                ..qdecl("ex")
            },
            9,
        )
        .unwrap();
    e.publish("", "ex", "w");
    e.vhost.connection_closed(9);
    e.vhost
        .declare_queue(qargs("exp", &[("x-expires", int(10))]), 1)
        .unwrap();
    e.publish("", "exp", "v");
    e.vhost.tick(1_000);
    e.vhost.tick(2_000);
    assert!(e.vhost.queue_for("exp", 1).is_err());
    assert_eq!(e.vhost.message_totals(), (8, 2));
    // The same name again starts its own count on top.
    e.queue("q1");
    e.publish("", "q1", "again");
    assert_eq!(e.vhost.message_totals(), (9, 2));
    assert_eq!(
        e.vhost.queue_for("q1", 1).unwrap().stats().published_total,
        1
    );
}

#[test]
fn message_totals_never_drop_under_concurrent_deletes() {
    let e = env();
    let writers_done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..2 {
            let v = e.vhost.clone();
            let done = &writers_done;
            s.spawn(move || {
                for i in 0..300 {
                    let name = format!("t{t}-{}", i % 3);
                    v.declare_queue(qdecl(&name), 1).unwrap();
                    v.publish("", plain(&name, "m"), 0).unwrap();
                    let q = v.queue_for(&name, 1).unwrap();
                    assert!(matches!(q.get(true, 0), GetResult::Message { .. }));
                    if i % 2 == 0 {
                        v.delete_queue(&name, false, false, 1).unwrap();
                    }
                }
                done.fetch_add(1, Ordering::Release);
            });
        }
        let mut last = (0, 0);
        let mut reads = 0u64;
        while writers_done.load(Ordering::Acquire) < 2 {
            let now = e.vhost.message_totals();
            assert!(now.0 >= last.0 && now.1 >= last.1, "{last:?} -> {now:?}");
            last = now;
            reads += 1;
        }
        assert!(reads > 0);
    });
    assert_eq!(e.vhost.message_totals(), (600, 600));
}
