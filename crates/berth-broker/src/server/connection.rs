//! The connection state machine (sans-I/O): handshake, heartbeats, channels.
//!
//! A [`Connection`] is driven by its owner (the socket task in `net.rs`, the
//! unit tests, the `amqp_methods` fuzz target) through:
//! - [`Connection::on_input`]: bytes from the client;
//! - [`Connection::on_wake`]: after [`ConnShared::notify`] fired (deliveries,
//!   cancels, a forced close) or the store's synced watermark moved (or the
//!   store failed: waiting confirms become nacks);
//! - [`Connection::on_timer`] at [`Connection::next_timer`]: handshake timeout, heartbeats;
//! - [`Connection::on_alarm`]: memory/disk alarm changes (when an alarm clears,
//!   call [`Connection::on_input`] again with the input left in the buffer);
//! - [`Connection::take_output`] / [`Connection::written`]: bytes for the client
//!   and the output credit they release.
//!
//! Every entry point returns [`Control::Close`] once the socket should be closed
//! (after writing what is in the output buffer).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx};
use berth_amqp::codec::{encode_method, FRAME_MIN_SIZE, PROTOCOL_HEADER};
use berth_amqp::{
    AMQPClass, AMQPFrame, AMQPValue, AmqpError, Assembled, BasicProperties, Decoded, ErrorScope,
    FieldTable, FrameDecoder, LongString, ReplyCode,
};
use bytes::{Bytes, BytesMut};

use super::channel::{ChanState, Channel, Confirm, TxOp, Unacked};
use super::shared::{estimate, ConnShared, ConsumerShared, Event, Sink, OUTPUT_BUDGET};
use super::wire::{self, short, ContentMethod};
use crate::auth::{Access, User};
use crate::model::{ConsumerSpec, ExchangeDecl, GetResult, Queue, QueueDecl, Vhost};
use crate::types::{Message, MessageId};
use crate::Broker;

/// A handshake that has not finished after this long is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for close-ok after sending connection.close.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Write the pending output, then close the socket.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitHeader,
    AwaitStartOk,
    AwaitTuneOk,
    AwaitOpen,
    Open,
    /// connection.close sent; waiting for close-ok until the deadline.
    Closing(Instant),
    Closed,
}

/// One client connection.
pub struct Connection {
    core: Core,
    channels: HashMap<u16, Channel>,
    decoder: FrameDecoder,
}

/// Everything but the channel table, so handlers can borrow one channel and the
/// rest of the connection at once.
struct Core {
    broker: Arc<Broker>,
    shared: Arc<ConnShared>,
    peer: SocketAddr,
    state: State,
    out: BytesMut,
    /// How much of `out` has been counted as pending output.
    out_mark: usize,
    scratch: Vec<u8>,
    user: Option<Arc<User>>,
    vhost: Option<Arc<Vhost>>,
    mechanism: String,
    channel_max: u16,
    frame_max: u32,
    heartbeat: u16,
    cap_cancel_notify: bool,
    cap_blocked: bool,
    connected: Instant,
    last_recv: Instant,
    last_send: Instant,
    alarm: Option<&'static str>,
    /// A basic.publish arrived while an alarm was on: input stops at it until the
    /// alarm clears. Like RabbitMQ's `blocked` state; connections that do not
    /// publish ("blocking") keep working.
    blocked: bool,
    blocked_sent: bool,
    /// Bytes left in the caller's input buffer by the last `on_input`, already
    /// counted in `recv_bytes`.
    in_counted: usize,
    synced: tokio::sync::watch::Receiver<u64>,
    awaiting_sync: bool,
    confirms_dirty: bool,
    /// Warned that this connection publishes persistent messages without
    /// confirms (or in a transaction) while the message store is failed.
    warned_unsaved: bool,
    to_dispatch: Vec<Arc<Queue>>,
    /// Granted (access, is_exchange, name) checks; RabbitMQ caches a few per channel too.
    perm_cache: Vec<(Access, bool, String)>,
    settle_buf: Vec<Unacked>,
    ids_buf: Vec<MessageId>,
    spare_mailbox: std::collections::VecDeque<Event>,
    cleaned: bool,
}

fn frame_kind(frame: &AMQPFrame) -> &'static str {
    match frame {
        AMQPFrame::ProtocolHeader(_) => "protocol header",
        AMQPFrame::Method(..) => "method",
        AMQPFrame::Header(..) => "content header",
        AMQPFrame::Body(..) => "content body",
        AMQPFrame::Heartbeat | AMQPFrame::InvalidHeartbeat(_) => "heartbeat",
    }
}

fn method_name(m: &AMQPClass) -> String {
    format!("{}/{}", m.get_amqp_class_id(), m.get_amqp_method_id())
}

/// The model reports errors on channel 0; they belong to the channel and method at hand.
fn scoped(mut e: AmqpError, channel: u16, class_id: u16, method_id: u16) -> AmqpError {
    if let ErrorScope::Channel(_) = e.scope {
        e.scope = ErrorScope::Channel(channel);
    }
    if e.class_id == 0 && e.method_id == 0 {
        e = e.caused_by(class_id, method_id);
    }
    e
}

fn random_name(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 16] = rand::random();
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn int_arg(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(x) => *x as i64,
        AMQPValue::ShortShortUInt(x) => *x as i64,
        AMQPValue::ShortInt(x) => *x as i64,
        AMQPValue::ShortUInt(x) => *x as i64,
        AMQPValue::LongInt(x) => *x as i64,
        AMQPValue::LongUInt(x) => *x as i64,
        AMQPValue::LongLongInt(x) => *x,
        _ => return None,
    })
}

/// A field table as JSON (client properties in listings).
pub fn table_to_json(t: &FieldTable) -> crate::definitions::JsonMap {
    crate::definitions::field_table_to_json(t)
}

fn capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(caps)) => {
            matches!(caps.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut t = FieldTable::default();
    t.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    t.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("berth")),
    );
    t.insert(
        "version".into(),
        AMQPValue::LongString(LongString::from(env!("CARGO_PKG_VERSION"))),
    );
    t.insert(
        "platform".into(),
        AMQPValue::LongString(LongString::from("Rust")),
    );
    t.insert(
        "cluster_name".into(),
        AMQPValue::LongString(LongString::from("berth")),
    );
    t.insert(
        "information".into(),
        AMQPValue::LongString(LongString::from("berth: a self-hosted cloud in one binary")),
    );
    t
}

impl Connection {
    /// A new connection from `peer` accepted on `local`; registered with the broker's registry.
    pub fn new(
        broker: Arc<Broker>,
        peer: SocketAddr,
        local: SocketAddr,
        tls: bool,
        now: Instant,
    ) -> Self {
        let id = broker.registry.next_id();
        let shared = Arc::new(ConnShared::new(
            id,
            format!("{peer} -> {local}"),
            peer.to_string(),
            tls,
        ));
        broker.registry.register(shared.clone());
        let synced = broker.log.synced();
        let alarm = broker.flow.alarm();
        let config = &broker.config;
        let core = Core {
            channel_max: config.channel_max,
            frame_max: config.frame_max,
            heartbeat: config.heartbeat,
            broker: broker.clone(),
            shared,
            peer,
            state: State::AwaitHeader,
            out: BytesMut::new(),
            out_mark: 0,
            scratch: Vec::new(),
            user: None,
            vhost: None,
            mechanism: String::new(),
            cap_cancel_notify: false,
            cap_blocked: false,
            connected: now,
            last_recv: now,
            last_send: now,
            alarm,
            blocked: false,
            blocked_sent: false,
            in_counted: 0,
            synced,
            awaiting_sync: false,
            confirms_dirty: false,
            warned_unsaved: false,
            to_dispatch: Vec::new(),
            perm_cache: Vec::new(),
            settle_buf: Vec::new(),
            ids_buf: Vec::new(),
            spare_mailbox: std::collections::VecDeque::new(),
            cleaned: false,
        };
        Self {
            core,
            channels: HashMap::new(),
            decoder: FrameDecoder::new(FRAME_MIN_SIZE),
        }
    }

    /// The state queues and the registry share with this connection; its
    /// `notify` wakes the driver (then call [`Connection::on_wake`]).
    pub fn shared(&self) -> &Arc<ConnShared> {
        &self.core.shared
    }

    pub fn id(&self) -> u64 {
        self.core.shared.id
    }

    /// Whether the socket should be read now: false once closed, while the output
    /// owed to the client is over budget, and while blocked by an alarm (a publish
    /// arrived during it; the publish and what follows wait in the input buffer).
    pub fn wants_read(&self) -> bool {
        !matches!(self.core.state, State::Closed)
            && self.core.shared.pending_output() < OUTPUT_BUDGET
            && !self.core.input_blocked()
    }

    /// Whether a publisher confirm waits for the store's synced watermark
    /// (the driver then also wakes on its changes).
    pub fn awaiting_sync(&self) -> bool {
        self.core.awaiting_sync
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.core.state, State::Closed)
    }

    /// The buffered output (for drivers that write from it in place; call
    /// [`Connection::written`] for what was written).
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.core.out
    }

    /// Moves the output into `dst` if `dst` is empty (no copy: the buffers swap).
    pub fn take_output(&mut self, dst: &mut BytesMut) {
        self.core.account(Instant::now());
        if dst.is_empty() {
            std::mem::swap(dst, &mut self.core.out);
            self.core.out_mark = 0;
        }
    }

    /// Takes all output and counts it as written (tests, fuzzing).
    pub fn drain_output(&mut self) -> BytesMut {
        let mut b = BytesMut::new();
        self.take_output(&mut b);
        self.written(b.len());
        b
    }

    /// `n` bytes reached the socket: releases output credit; consumers that were
    /// refused for lack of it are dispatched again.
    pub fn written(&mut self, n: usize) {
        let s = &self.core.shared;
        // SeqCst pairs with Sink::try_reserve's flag-then-recheck.
        let _ = s
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
        s.send_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if s.pending.load(Ordering::SeqCst) < OUTPUT_BUDGET / 2
            && s.starved.swap(false, Ordering::SeqCst)
        {
            for ch in self.channels.values() {
                ch.consumer_queues(&mut self.core.to_dispatch);
            }
            self.core.flush_dispatch();
        }
    }

    /// When [`Connection::on_timer`] must be called next.
    pub fn next_timer(&self) -> Option<Instant> {
        let c = &self.core;
        match c.state {
            State::Closed => None,
            State::Closing(deadline) => Some(deadline),
            State::Open => {
                if c.heartbeat == 0 {
                    return None;
                }
                let hb = Duration::from_secs(c.heartbeat as u64);
                Some((c.last_send + hb / 2).min(c.last_recv + hb * 2))
            }
            _ => Some(c.connected + HANDSHAKE_TIMEOUT),
        }
    }

    pub fn on_timer(&mut self, now: Instant) -> Control {
        let c = &mut self.core;
        match c.state {
            State::Closed => return Control::Close,
            State::Closing(deadline) => {
                if now >= deadline {
                    self.finish();
                    return Control::Close;
                }
            }
            State::Open => {
                if c.heartbeat > 0 {
                    let hb = Duration::from_secs(c.heartbeat as u64);
                    if !self.wants_read() {
                        // We are not reading: the client's heartbeats wait in the socket.
                        self.core.last_recv = now;
                    }
                    let c = &mut self.core;
                    if now >= c.last_recv + hb * 2 {
                        tracing::info!(connection = %c.shared.name, "missed heartbeats from client, closing");
                        self.finish();
                        return Control::Close;
                    }
                    if now >= c.last_send + hb / 2 {
                        wire::encode_heartbeat(&mut c.out);
                    }
                }
            }
            _ => {
                if now >= c.connected + HANDSHAKE_TIMEOUT {
                    tracing::info!(peer = %c.peer, "handshake timeout, closing");
                    self.finish();
                    return Control::Close;
                }
            }
        }
        self.core.account(now);
        Control::Continue
    }

    /// The memory/disk alarm changed. Nothing is blocked yet when an alarm
    /// starts: a connection blocks (and is told so with connection.blocked) at
    /// its next basic.publish, as in RabbitMQ, so consumers keep working. When
    /// the alarm clears, blocked connections get connection.unblocked and the
    /// driver must call [`Connection::on_input`] with the input it kept: the
    /// held publish is processed then.
    pub fn on_alarm(&mut self, alarm: Option<&'static str>, now: Instant) {
        let c = &mut self.core;
        c.alarm = alarm;
        if alarm.is_none() {
            c.blocked = false;
            if c.blocked_sent {
                c.blocked_sent = false;
                if matches!(c.state, State::Open) {
                    c.send(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                            connection::Unblocked {},
                        )),
                    );
                }
            }
        }
        c.update_state_meta();
        c.account(now);
    }

    /// Processes every complete frame in `buf` (partial frames stay in it).
    /// Stops early, leaving the rest in `buf`, at a basic.publish during an
    /// alarm; call again once [`Connection::wants_read`] turns true.
    pub fn on_input(&mut self, buf: &mut BytesMut, now: Instant) -> Control {
        // Drivers append to what the last call left, which was counted then.
        let fresh = buf.len().saturating_sub(self.core.in_counted);
        if fresh > 0 {
            self.core.last_recv = now;
            self.core
                .shared
                .recv_bytes
                .fetch_add(fresh as u64, Ordering::Relaxed);
        }
        let now_ms = crate::types::now_ms();
        loop {
            if matches!(self.core.state, State::Closed) {
                buf.clear();
                break;
            }
            if self.core.input_blocked() {
                break;
            }
            if self.core.alarm.is_some()
                && matches!(self.core.state, State::Open)
                && is_publish_frame(buf)
            {
                // Held unread, like RabbitMQ, which stops reading at the publish.
                self.core.block();
                break;
            }
            let item = match self.decoder.decode(buf) {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(e) => {
                    buf.clear();
                    if self.core.state == State::AwaitHeader {
                        self.core.out.extend_from_slice(&PROTOCOL_HEADER);
                        self.finish();
                    } else {
                        // The stream is out of sync: report and close at once.
                        self.connection_error(e, now);
                        self.finish();
                    }
                    break;
                }
            };
            if let Err(e) = self.on_item(item, now, now_ms) {
                self.connection_error(e, now);
            }
        }
        self.core.in_counted = buf.len();
        self.after_work(now, now_ms)
    }

    /// Drains the mailbox (deliveries, cancels), sends confirms the store has
    /// synced, and honours a forced close.
    pub fn on_wake(&mut self, now: Instant) -> Control {
        let forced = self.core.shared.forced.lock().take();
        if let Some(reason) = forced {
            match self.core.state {
                State::Open => {
                    self.connection_error(
                        AmqpError::connection(ReplyCode::ConnectionForced, reason),
                        now,
                    );
                }
                State::Closing(_) | State::Closed => {}
                _ => self.finish(),
            }
        }
        let now_ms = crate::types::now_ms();
        self.confirms_dirty_if_waiting();
        self.after_work(now, now_ms)
    }

    fn confirms_dirty_if_waiting(&mut self) {
        if self.core.awaiting_sync {
            self.core.confirms_dirty = true;
        }
    }

    fn after_work(&mut self, now: Instant, now_ms: u64) -> Control {
        self.core.flush_dispatch_at(now_ms);
        self.drain_mailbox(now_ms);
        if self.core.confirms_dirty {
            self.flush_confirms();
        }
        self.core.account(now);
        if matches!(self.core.state, State::Closed) {
            Control::Close
        } else {
            Control::Continue
        }
    }

    /// Closes everything now (socket gone, shutdown): consumers are removed,
    /// unacked messages requeued, exclusive queues deleted, the registry entry
    /// dropped. Idempotent; also run on drop.
    pub fn finish(&mut self) {
        self.core.state = State::Closed;
        if self.core.cleaned {
            return;
        }
        self.core.cleaned = true;
        self.core.shared.closed.store(true, Ordering::Relaxed);
        let now_ms = crate::types::now_ms();
        let mut chans: Vec<Channel> = self.channels.drain().map(|(_, c)| c).collect();
        for ch in &mut chans {
            self.core.release_channel(ch, now_ms);
        }
        // Deliveries that raced with the close go back to their queues.
        self.drain_mailbox(now_ms);
        if let Some(v) = &self.core.vhost {
            v.connection_closed(self.core.shared.id);
        }
        self.core.flush_dispatch_at(now_ms);
        self.core.broker.registry.unregister(self.core.shared.id);
        self.core.shared.meta.lock().state = "closed";
    }

    fn flush_confirms(&mut self) {
        // In this order: once failed, the watermark read after it is final.
        let failed = self.core.broker.log.failed();
        let synced = *self.core.synced.borrow();
        let mut waiting = false;
        let mut failed_commits = Vec::new();
        let c = &mut self.core;
        for ch in self.channels.values_mut() {
            if (ch.confirms.is_empty() && ch.commit_wait.is_none()) || ch.state != ChanState::Open {
                continue;
            }
            if let Some(t) = ch.commit_wait {
                if t <= synced {
                    ch.commit_wait = None;
                    let ok = AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {}));
                    encode_method(ch.number, &ok, &mut c.out);
                } else if failed {
                    ch.commit_wait = None;
                    failed_commits.push(ch.number);
                }
            }
            let n = ch.number;
            let out = &mut c.out;
            ch.flush_confirms(synced, failed, |seq, ack, multiple| {
                let m = if ack {
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: seq,
                        multiple,
                    }))
                } else {
                    AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                        delivery_tag: seq,
                        multiple,
                        requeue: false,
                    }))
                };
                encode_method(n, &m, out);
            });
            waiting |= ch.awaits_sync();
        }
        c.confirms_dirty = false;
        c.awaiting_sync = waiting;
        for n in failed_commits {
            let e = AmqpError::channel(
                n,
                ReplyCode::InternalError,
                "message store failed: the transaction's persistent messages may not be on disk",
            )
            .caused_by(90, 20);
            self.channel_error(n, e);
        }
    }

    fn drain_mailbox(&mut self, now_ms: u64) {
        let mut events = std::mem::take(&mut self.core.spare_mailbox);
        std::mem::swap(&mut *self.core.shared.mailbox.lock(), &mut events);
        if events.is_empty() {
            self.core.spare_mailbox = events;
            return;
        }
        let mut orphans: Vec<(Arc<Queue>, crate::types::MessageRef)> = Vec::new();
        let open = !matches!(self.core.state, State::Closed | State::Closing(_));
        for ev in events.drain(..) {
            match ev {
                Event::Deliver(c, d) => {
                    let est = estimate(&d);
                    let _ = self.core.shared.pending.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |v| Some(v.saturating_sub(est)),
                    );
                    let ch = self.channels.get_mut(&c.channel.number).filter(|ch| {
                        Arc::ptr_eq(&ch.shared, &c.channel) && ch.state == ChanState::Open
                    });
                    let ch = match ch {
                        Some(ch) if open && !c.cancelled.load(Ordering::Relaxed) => ch,
                        _ => {
                            if !c.no_ack {
                                c.release(1);
                                orphans.push((c.queue.clone(), d.message));
                            }
                            continue;
                        }
                    };
                    let tag = ch.next_delivery_tag();
                    let m = &d.message;
                    wire::encode_content(
                        &mut self.core.out,
                        ch.number,
                        ContentMethod::Deliver {
                            consumer_tag: &c.tag,
                            delivery_tag: tag,
                            redelivered: d.redelivered,
                            exchange: &m.exchange,
                            routing_key: &m.routing_key,
                        },
                        &m.properties,
                        &m.body,
                        self.core.frame_max,
                        &mut self.core.scratch,
                    );
                    if !c.no_ack {
                        ch.unacked.push_back(Unacked {
                            tag,
                            queue: c.queue.clone(),
                            message: d.message,
                            consumer: Some(c),
                        });
                    }
                }
                Event::Cancelled(c) => {
                    let Some(ch) = self.channels.get_mut(&c.channel.number) else {
                        continue;
                    };
                    if !Arc::ptr_eq(&ch.shared, &c.channel) {
                        continue;
                    }
                    let is_current = ch.consumers.get(&c.tag).is_some_and(|x| Arc::ptr_eq(x, &c));
                    if !is_current {
                        continue;
                    }
                    ch.consumers.remove(&c.tag);
                    c.cancelled.store(true, Ordering::Relaxed);
                    ch.shared.consumers.fetch_sub(1, Ordering::Relaxed);
                    if open && ch.state == ChanState::Open && self.core.cap_cancel_notify {
                        let m = AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                            consumer_tag: short(&c.tag),
                            nowait: true,
                        }));
                        encode_method(ch.number, &m, &mut self.core.out);
                    }
                }
            }
        }
        self.core.spare_mailbox = events;
        if !orphans.is_empty() {
            requeue_grouped(orphans, now_ms, &mut self.core.to_dispatch);
            self.core.flush_dispatch_at(now_ms);
        }
    }

    fn connection_error(&mut self, e: AmqpError, now: Instant) {
        let c = &mut self.core;
        match c.state {
            State::Closing(_) | State::Closed => return,
            State::AwaitHeader => {
                self.finish();
                return;
            }
            _ => {}
        }
        tracing::debug!(connection = %c.shared.name, error = %e, "connection error");
        c.send(0, wire::connection_close(&e));
        c.state = State::Closing(now + CLOSE_TIMEOUT);
        c.shared.meta.lock().state = "closing";
        let now_ms = crate::types::now_ms();
        let mut chans: Vec<Channel> = self.channels.drain().map(|(_, c)| c).collect();
        for ch in &mut chans {
            self.core.release_channel(ch, now_ms);
        }
    }

    fn channel_error(&mut self, n: u16, e: AmqpError) {
        let now_ms = crate::types::now_ms();
        let Some(ch) = self.channels.get_mut(&n) else {
            return;
        };
        tracing::debug!(connection = %self.core.shared.name, channel = n, error = %e, "channel error");
        self.core.send(n, wire::channel_close(&e));
        self.core.release_channel(ch, now_ms);
        ch.state = ChanState::Closing;
    }

    fn on_item(&mut self, item: Decoded, now: Instant, now_ms: u64) -> Result<(), AmqpError> {
        let frame = match item {
            Decoded::ProtocolHeader(_) => {
                if self.core.state != State::AwaitHeader {
                    return Err(AmqpError::connection(
                        ReplyCode::UnexpectedFrame,
                        "unexpected protocol header",
                    ));
                }
                let start = connection::Start {
                    version_major: 0,
                    version_minor: 9,
                    server_properties: server_properties(),
                    mechanisms: "PLAIN AMQPLAIN".into(),
                    locales: "en_US".into(),
                };
                self.core.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Start(start)),
                );
                self.core.state = State::AwaitStartOk;
                return Ok(());
            }
            Decoded::Frame(f) => f,
        };
        match self.core.state {
            State::Closed => Ok(()),
            State::Closing(_) => {
                match frame {
                    AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)),
                    ) => self.finish(),
                    AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Close(_)),
                    ) => {
                        self.core.send(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        self.finish();
                    }
                    _ => {}
                }
                Ok(())
            }
            State::Open => self.on_frame_open(frame, now, now_ms),
            _ => self.on_handshake_frame(frame, now),
        }
    }

    fn on_handshake_frame(&mut self, frame: AMQPFrame, _now: Instant) -> Result<(), AmqpError> {
        let method = match frame {
            AMQPFrame::Heartbeat => return Ok(()),
            AMQPFrame::Method(0, AMQPClass::Connection(m)) => m,
            AMQPFrame::Method(_, m) => {
                return Err(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!(
                        "method {} is not allowed before the connection is open",
                        method_name(&m)
                    ),
                )
                .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id()));
            }
            other => {
                return Err(AmqpError::connection(
                    ReplyCode::UnexpectedFrame,
                    format!(
                        "unexpected {} frame during the handshake",
                        frame_kind(&other)
                    ),
                ))
            }
        };
        let c = &mut self.core;
        match (c.state, method) {
            (State::AwaitStartOk, connection::AMQPMethod::StartOk(m)) => c.start_ok(m),
            (State::AwaitTuneOk, connection::AMQPMethod::TuneOk(m)) => {
                c.tune_ok(m)?;
                self.decoder.set_frame_max(self.core.frame_max);
                Ok(())
            }
            (State::AwaitOpen, connection::AMQPMethod::Open(m)) => c.open(m),
            (_, connection::AMQPMethod::Close(_)) => {
                c.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.finish();
                Ok(())
            }
            (state, m) => {
                let expected = match state {
                    State::AwaitStartOk => "connection.start_ok",
                    State::AwaitTuneOk => "connection.tune_ok",
                    _ => "connection.open",
                };
                let m = AMQPClass::Connection(m);
                Err(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!("expected '{expected}', got method {}", method_name(&m)),
                )
                .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id()))
            }
        }
    }

    fn on_frame_open(
        &mut self,
        frame: AMQPFrame,
        now: Instant,
        now_ms: u64,
    ) -> Result<(), AmqpError> {
        let n = match &frame {
            AMQPFrame::Heartbeat => return Ok(()),
            AMQPFrame::InvalidHeartbeat(ch) => {
                return Err(AmqpError::connection(
                    ReplyCode::FrameError,
                    format!("heartbeat frame on channel {ch}"),
                ))
            }
            AMQPFrame::ProtocolHeader(_) => {
                return Err(AmqpError::connection(
                    ReplyCode::UnexpectedFrame,
                    "unexpected protocol header",
                ))
            }
            AMQPFrame::Method(n, _) | AMQPFrame::Header(n, _) | AMQPFrame::Body(n, _) => *n,
        };
        if n == 0 {
            return self.on_channel0(frame, now);
        }
        if let AMQPFrame::Method(_, AMQPClass::Connection(m)) = &frame {
            let m = AMQPClass::Connection(m.clone());
            return Err(AmqpError::connection(
                ReplyCode::CommandInvalid,
                format!("connection method {} on channel {n}", method_name(&m)),
            )
            .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id()));
        }
        let Some(ch) = self.channels.get_mut(&n) else {
            return match frame {
                AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Open(_))) => {
                    self.open_channel(n)
                }
                // A late close-ok for a channel we already forgot.
                AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => Ok(()),
                AMQPFrame::Method(_, m) => Err(AmqpError::connection(
                    ReplyCode::ChannelError,
                    "expected 'channel.open'",
                )
                .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id())),
                _ => Err(AmqpError::connection(
                    ReplyCode::ChannelError,
                    "expected 'channel.open'",
                )),
            };
        };
        if ch.state == ChanState::Closing {
            match frame {
                AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
                    self.remove_channel(n);
                }
                AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                    self.core.send(
                        n,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                    self.remove_channel(n);
                }
                _ => {}
            }
            return Ok(());
        }
        match &frame {
            AMQPFrame::Header(_, h) if h.body_size > self.core.broker.config.max_message_size => {
                let e = AmqpError::channel(
                    n,
                    ReplyCode::PreconditionFailed,
                    format!(
                        "message size {} is larger than configured max size {}",
                        h.body_size, self.core.broker.config.max_message_size
                    ),
                )
                .caused_by(60, 40);
                self.channel_error(n, e);
                return Ok(());
            }
            AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(_))) => {
                self.core.release_channel(ch, now_ms);
                self.remove_channel(n);
                self.core.send(
                    n,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                return Ok(());
            }
            AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Open(_))) => {
                return Err(AmqpError::connection(
                    ReplyCode::ChannelError,
                    "second 'channel.open' seen",
                )
                .caused_by(20, 10));
            }
            _ => {}
        }
        let assembled = match ch.assembler.on_frame(n, frame) {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(()),
            Err(e) => return self.fail(n, e),
        };
        let res = match assembled {
            Assembled::Method(m) => self.core.channel_method(ch, m, now_ms),
            Assembled::Publish {
                method,
                properties,
                body,
            } => self.core.publish(ch, method, properties, body, now_ms),
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) => self.fail(n, e),
        }
    }

    /// Routes an error by its scope.
    fn fail(&mut self, n: u16, e: AmqpError) -> Result<(), AmqpError> {
        match e.scope {
            ErrorScope::Channel(_) => {
                let mut e = e;
                e.scope = ErrorScope::Channel(n);
                self.channel_error(n, e);
                Ok(())
            }
            ErrorScope::Connection => Err(e),
        }
    }

    fn remove_channel(&mut self, n: u16) {
        if let Some(ch) = self.channels.remove(&n) {
            ch.shared.closed.store(true, Ordering::Relaxed);
            self.core
                .shared
                .channels
                .lock()
                .retain(|c| !Arc::ptr_eq(c, &ch.shared));
        }
    }

    fn open_channel(&mut self, n: u16) -> Result<(), AmqpError> {
        if n > self.core.channel_max {
            return Err(AmqpError::connection(
                ReplyCode::ChannelError,
                format!(
                    "channel number {n} is higher than the negotiated channel_max ({})",
                    self.core.channel_max
                ),
            )
            .caused_by(20, 10));
        }
        let ch = Channel::new(n, self.core.broker.config.max_message_size);
        self.core.shared.channels.lock().push(ch.shared.clone());
        self.channels.insert(n, ch);
        self.core.send(
            n,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        );
        Ok(())
    }

    fn on_channel0(&mut self, frame: AMQPFrame, _now: Instant) -> Result<(), AmqpError> {
        let m = match frame {
            AMQPFrame::Method(_, AMQPClass::Connection(m)) => m,
            AMQPFrame::Method(_, m) => {
                return Err(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!("method {} on channel 0", method_name(&m)),
                )
                .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id()))
            }
            other => {
                return Err(AmqpError::connection(
                    ReplyCode::UnexpectedFrame,
                    format!("unexpected {} frame on channel 0", frame_kind(&other)),
                ))
            }
        };
        match m {
            connection::AMQPMethod::Close(_) => {
                let now_ms = crate::types::now_ms();
                let mut chans: Vec<Channel> = self.channels.drain().map(|(_, c)| c).collect();
                for ch in &mut chans {
                    self.core.release_channel(ch, now_ms);
                }
                self.core.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.finish();
                Ok(())
            }
            // Clients may tell us they are blocked; nothing to do.
            connection::AMQPMethod::Blocked(_) | connection::AMQPMethod::Unblocked(_) => Ok(()),
            connection::AMQPMethod::UpdateSecret(_) => Err(AmqpError::connection(
                ReplyCode::NotImplemented,
                "connection.update-secret is not supported",
            )
            .caused_by(10, 70)),
            other => {
                let m = AMQPClass::Connection(other);
                Err(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!(
                        "unexpected method {} on an open connection",
                        method_name(&m)
                    ),
                )
                .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id()))
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Whether `buf` starts with a basic.publish method frame (its 7-byte frame
/// header and class/method ids suffice; the rest may not have arrived).
fn is_publish_frame(buf: &[u8]) -> bool {
    const FRAME_METHOD: u8 = 1;
    buf.len() >= 11 && buf[0] == FRAME_METHOD && buf[7..11] == [0, 60, 0, 40]
}

/// Requeues (queue, message) pairs, one call per queue.
fn requeue_grouped(
    items: Vec<(Arc<Queue>, crate::types::MessageRef)>,
    now_ms: u64,
    to_dispatch: &mut Vec<Arc<Queue>>,
) {
    let mut groups: Vec<(Arc<Queue>, Vec<crate::types::MessageRef>)> = Vec::new();
    for (q, m) in items {
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, &q)) {
            Some((_, v)) => v.push(m),
            None => groups.push((q, vec![m])),
        }
    }
    for (q, msgs) in groups {
        q.requeue(msgs, now_ms);
        if !to_dispatch.iter().any(|x| Arc::ptr_eq(x, &q)) {
            to_dispatch.push(q);
        }
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

impl Core {
    fn send(&mut self, channel: u16, method: AMQPClass) {
        encode_method(channel, &method, &mut self.out);
    }

    /// Counts new output as pending (credit) and as traffic (heartbeats).
    fn account(&mut self, now: Instant) {
        let len = self.out.len();
        if len > self.out_mark {
            self.shared
                .pending
                .fetch_add(len - self.out_mark, Ordering::Relaxed);
            self.out_mark = len;
            self.last_send = now;
        } else if len < self.out_mark {
            self.out_mark = len;
        }
    }

    /// Input stops: blocked by an alarm and not closing (close-ok must still be read).
    fn input_blocked(&self) -> bool {
        self.blocked && matches!(self.state, State::Open)
    }

    /// A publish arrived during an alarm: stop reading, and tell clients that
    /// understand connection.blocked why.
    fn block(&mut self) {
        self.blocked = true;
        if let (Some(a), true, false) = (self.alarm, self.cap_blocked, self.blocked_sent) {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: super::flow::blocked_reason(a).into(),
                })),
            );
            self.blocked_sent = true;
        }
        self.update_state_meta();
    }

    fn update_state_meta(&self) {
        let mut m = self.shared.meta.lock();
        if self.state == State::Open {
            // RabbitMQ's names: "blocking" until the connection publishes.
            m.state = match (self.alarm, self.blocked) {
                (Some(_), true) => "blocked",
                (Some(_), false) => "blocking",
                (None, _) => "running",
            };
        }
    }

    fn flush_dispatch(&mut self) {
        self.flush_dispatch_at(crate::types::now_ms());
    }

    fn flush_dispatch_at(&mut self, now_ms: u64) {
        if self.to_dispatch.is_empty() {
            return;
        }
        let mut qs = std::mem::take(&mut self.to_dispatch);
        for q in qs.drain(..) {
            q.dispatch(now_ms);
        }
        if self.to_dispatch.is_empty() {
            self.to_dispatch = qs;
        }
    }

    fn schedule(&mut self, q: &Arc<Queue>) {
        if !self.to_dispatch.iter().any(|x| Arc::ptr_eq(x, q)) {
            self.to_dispatch.push(q.clone());
        }
    }

    // ---- handshake ----

    fn refused(&self) -> AmqpError {
        AmqpError::connection(
            ReplyCode::AccessRefused,
            format!(
                "Login was refused using authentication mechanism {}. For details see the broker logfile.",
                self.mechanism
            ),
        )
        .caused_by(10, 11)
    }

    fn start_ok(&mut self, m: connection::StartOk) -> Result<(), AmqpError> {
        let mech = m.mechanism.as_str();
        if mech != "PLAIN" && mech != "AMQPLAIN" {
            return Err(AmqpError::connection(
                ReplyCode::AccessRefused,
                format!("unsupported authentication mechanism '{mech}'; supported: PLAIN AMQPLAIN"),
            )
            .caused_by(10, 11));
        }
        self.mechanism = mech.to_string();
        self.cap_cancel_notify = capability(&m.client_properties, "consumer_cancel_notify");
        self.cap_blocked = capability(&m.client_properties, "connection.blocked");
        self.shared.meta.lock().client_properties = table_to_json(&m.client_properties);
        let creds = match berth_amqp::sasl::parse_response(mech, m.response.as_bytes()) {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(peer = %self.peer, mechanism = mech, "login refused: {why}");
                return Err(self.refused());
            }
        };
        match self
            .broker
            .users
            .authenticate(&creds.username, &creds.password, self.peer.ip())
        {
            Ok(user) => {
                self.shared.meta.lock().user = user.name.clone();
                self.user = Some(user);
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, "login refused: {e}");
                return Err(self.refused());
            }
        }
        let tune = connection::Tune {
            channel_max: self.channel_max,
            frame_max: self.frame_max,
            heartbeat: self.heartbeat,
        };
        self.send(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)));
        self.state = State::AwaitTuneOk;
        Ok(())
    }

    fn tune_ok(&mut self, m: connection::TuneOk) -> Result<(), AmqpError> {
        let err = |text: String| {
            Err(AmqpError::connection(ReplyCode::NotAllowed, text).caused_by(10, 31))
        };
        let server_frame = self.frame_max;
        let frame_max = if m.frame_max == 0 {
            server_frame
        } else {
            m.frame_max
        };
        if frame_max > server_frame {
            return err(format!(
                "negotiated frame_max = {frame_max} is higher than the maximum allowed value ({server_frame})"
            ));
        }
        if frame_max < FRAME_MIN_SIZE {
            return err(format!(
                "negotiated frame_max = {frame_max} is lower than the minimum allowed value ({FRAME_MIN_SIZE})"
            ));
        }
        let channel_max = if m.channel_max == 0 {
            self.channel_max
        } else {
            m.channel_max
        };
        if channel_max > self.channel_max {
            return err(format!(
                "negotiated channel_max = {channel_max} is higher than the maximum allowed value ({})",
                self.channel_max
            ));
        }
        self.frame_max = frame_max;
        self.channel_max = channel_max;
        self.heartbeat = m.heartbeat;
        {
            let mut meta = self.shared.meta.lock();
            meta.frame_max = frame_max;
            meta.heartbeat = m.heartbeat;
        }
        self.state = State::AwaitOpen;
        Ok(())
    }

    fn open(&mut self, m: connection::Open) -> Result<(), AmqpError> {
        let name = m.virtual_host.as_str();
        let user = self
            .user
            .as_ref()
            .map(|u| u.name.clone())
            .unwrap_or_default();
        let Some(vhost) = self.broker.vhost(name) else {
            return Err(AmqpError::connection(
                ReplyCode::NotAllowed,
                format!("vhost {name} not found"),
            )
            .caused_by(10, 40));
        };
        if !self.broker.users.can_access_vhost(&user, name) {
            return Err(AmqpError::connection(
                ReplyCode::NotAllowed,
                format!("access to vhost '{name}' refused for user '{user}'"),
            )
            .caused_by(10, 40));
        }
        self.shared.meta.lock().vhost = name.to_string();
        self.vhost = Some(vhost);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        self.state = State::Open;
        // No connection.blocked here even during an alarm: clients such as lapin
        // stop sending everything once blocked, so a consumer could not even
        // open a channel. It is sent at the first publish instead (RabbitMQ too).
        self.update_state_meta();
        Ok(())
    }

    // ---- channels ----

    /// Drops a channel's consumers and requeues its unacked deliveries.
    fn release_channel(&mut self, ch: &mut Channel, now_ms: u64) {
        ch.shared.closed.store(true, Ordering::Relaxed);
        for (tag, c) in ch.consumers.drain() {
            c.cancelled.store(true, Ordering::Relaxed);
            c.queue.remove_consumer(self.shared.id, ch.number, &tag);
        }
        ch.shared.consumers.store(0, Ordering::Relaxed);
        let mut items = std::mem::take(&mut self.settle_buf);
        items.extend(ch.unacked.drain(..));
        self.settle(&mut items, Settle::Requeue, now_ms);
        self.settle_buf = items;
        ch.tx = None;
        ch.confirms.clear();
        self.shared
            .channels
            .lock()
            .retain(|c| !Arc::ptr_eq(c, &ch.shared));
    }

    fn vhost_name(&self) -> &str {
        self.vhost.as_ref().map(|v| &*v.name).unwrap_or("/")
    }

    fn vhost(&self) -> &Arc<Vhost> {
        // Channel methods only run in State::Open, which requires a vhost.
        self.vhost
            .as_ref()
            .expect("channel method before connection.open")
    }

    fn check(
        &mut self,
        access: Access,
        exchange: bool,
        name: &str,
        ch: u16,
        ids: (u16, u16),
    ) -> Result<(), AmqpError> {
        let resource = if exchange && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        if self
            .perm_cache
            .iter()
            .any(|(a, e, n)| *a == access && *e == exchange && n == resource)
        {
            return Ok(());
        }
        let user = self.user.as_ref().map(|u| u.name.as_str()).unwrap_or("");
        if self
            .broker
            .users
            .check(user, self.vhost_name(), access, resource)
        {
            if self.perm_cache.len() >= 16 {
                self.perm_cache.remove(0);
            }
            self.perm_cache
                .push((access, exchange, resource.to_string()));
            return Ok(());
        }
        let kind = if exchange { "exchange" } else { "queue" };
        Err(AmqpError::channel(
            ch,
            ReplyCode::AccessRefused,
            format!(
                "access to {kind} '{resource}' in vhost '{}' refused for user '{user}'",
                self.vhost_name()
            ),
        )
        .caused_by(ids.0, ids.1))
    }

    /// An empty queue name means the channel's last declared queue.
    fn queue_name(&self, ch: &Channel, name: &str, ids: (u16, u16)) -> Result<String, AmqpError> {
        if !name.is_empty() {
            return Ok(name.to_string());
        }
        ch.last_queue.clone().ok_or_else(|| {
            AmqpError::channel(
                ch.number,
                ReplyCode::NotFound,
                "no previously declared queue",
            )
            .caused_by(ids.0, ids.1)
        })
    }

    fn channel_method(
        &mut self,
        ch: &mut Channel,
        m: AMQPClass,
        now_ms: u64,
    ) -> Result<(), AmqpError> {
        let ids = (m.get_amqp_class_id(), m.get_amqp_method_id());
        let n = ch.number;
        let id = self.shared.id;
        let sc = |e: AmqpError| scoped(e, n, ids.0, ids.1);
        match m {
            AMQPClass::Channel(channel::AMQPMethod::Flow(f)) => {
                ch.shared.flow_active.store(f.active, Ordering::Relaxed);
                if f.active {
                    let mut qs = std::mem::take(&mut self.to_dispatch);
                    ch.consumer_queues(&mut qs);
                    self.to_dispatch = qs;
                }
                self.send(
                    n,
                    AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                        active: f.active,
                    })),
                );
            }
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(_))
            | AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => {}
            AMQPClass::Access(_) => {
                // access.request is obsolete; RabbitMQ answers it with request-ok.
                self.send(
                    n,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(
                        Default::default(),
                    )),
                );
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
                if !d.passive {
                    self.check(Access::Configure, true, d.exchange.as_str(), n, ids)?;
                }
                let decl = ExchangeDecl {
                    name: d.exchange.to_string(),
                    kind: d.kind.to_string(),
                    passive: d.passive,
                    durable: d.durable,
                    auto_delete: d.auto_delete,
                    internal: d.internal,
                    arguments: d.arguments,
                };
                self.vhost().declare_exchange(decl).map_err(sc)?;
                if !d.nowait {
                    self.send(
                        n,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                            exchange::DeclareOk {},
                        )),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => {
                self.check(Access::Configure, true, d.exchange.as_str(), n, ids)?;
                self.vhost()
                    .delete_exchange(d.exchange.as_str(), d.if_unused)
                    .map_err(sc)?;
                if !d.nowait {
                    self.send(
                        n,
                        AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(b)) => {
                self.check(Access::Write, true, b.destination.as_str(), n, ids)?;
                self.check(Access::Read, true, b.source.as_str(), n, ids)?;
                self.vhost()
                    .bind_exchange(
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        &b.arguments,
                    )
                    .map_err(sc)?;
                if !b.nowait {
                    self.send(
                        n,
                        AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
                    );
                }
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(b)) => {
                self.check(Access::Write, true, b.destination.as_str(), n, ids)?;
                self.check(Access::Read, true, b.source.as_str(), n, ids)?;
                self.vhost()
                    .unbind_exchange(
                        b.destination.as_str(),
                        b.source.as_str(),
                        b.routing_key.as_str(),
                        &b.arguments,
                    )
                    .map_err(sc)?;
                if !b.nowait {
                    self.send(
                        n,
                        AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => {
                let name = if d.queue.as_str().is_empty() && !d.passive {
                    random_name(crate::model::vhost::SERVER_NAMED_PREFIX)
                } else {
                    // As RabbitMQ: a client may not (re)declare an `amq.` name,
                    // not even a server-named queue's; the model exempts
                    // `amq.gen-` only for the names generated just above.
                    if !d.passive && d.queue.as_str().starts_with("amq.") {
                        return Err(sc(crate::model::args::access_refused(format!(
                            "queue name '{}' contains reserved prefix 'amq.*'",
                            d.queue
                        ))));
                    }
                    self.queue_name(ch, d.queue.as_str(), ids)?
                };
                if !d.passive {
                    self.check(Access::Configure, false, &name, n, ids)?;
                }
                let decl = QueueDecl {
                    name,
                    passive: d.passive,
                    durable: d.durable,
                    exclusive: d.exclusive,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments,
                };
                let (q, messages, consumers) = self.vhost().declare_queue(decl, id).map_err(sc)?;
                ch.last_queue = Some(q.name.to_string());
                if !d.nowait {
                    self.send(
                        n,
                        AMQPClass::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
                            queue: short(&q.name),
                            message_count: messages,
                            consumer_count: consumers,
                        })),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Bind(b)) => {
                let qn = self.queue_name(ch, b.queue.as_str(), ids)?;
                self.check(Access::Write, false, &qn, n, ids)?;
                self.check(Access::Read, true, b.exchange.as_str(), n, ids)?;
                self.vhost()
                    .bind_queue(
                        &qn,
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        &b.arguments,
                        id,
                    )
                    .map_err(sc)?;
                if !b.nowait {
                    self.send(
                        n,
                        AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(b)) => {
                let qn = self.queue_name(ch, b.queue.as_str(), ids)?;
                self.check(Access::Write, false, &qn, n, ids)?;
                self.check(Access::Read, true, b.exchange.as_str(), n, ids)?;
                self.vhost()
                    .unbind_queue(
                        &qn,
                        b.exchange.as_str(),
                        b.routing_key.as_str(),
                        &b.arguments,
                        id,
                    )
                    .map_err(sc)?;
                self.send(
                    n,
                    AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
                );
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(p)) => {
                let qn = self.queue_name(ch, p.queue.as_str(), ids)?;
                self.check(Access::Read, false, &qn, n, ids)?;
                let count = self.vhost().purge_queue(&qn, id).map_err(sc)?;
                if !p.nowait {
                    self.send(
                        n,
                        AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
                            message_count: count,
                        })),
                    );
                }
            }
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => {
                let qn = self.queue_name(ch, d.queue.as_str(), ids)?;
                self.check(Access::Configure, false, &qn, n, ids)?;
                let count = self
                    .vhost()
                    .delete_queue(&qn, d.if_unused, d.if_empty, id)
                    .map_err(sc)?;
                if !d.nowait {
                    self.send(
                        n,
                        AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                            message_count: count,
                        })),
                    );
                }
            }
            AMQPClass::Basic(b) => self.basic_method(ch, b, ids, now_ms)?,
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if ch.tx.is_some() {
                    return Err(AmqpError::channel(
                        n,
                        ReplyCode::PreconditionFailed,
                        "cannot switch from tx to confirm mode",
                    )
                    .caused_by(ids.0, ids.1));
                }
                ch.confirm = true;
                ch.shared.confirm.store(true, Ordering::Relaxed);
                if !s.nowait {
                    self.send(
                        n,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
            }
            AMQPClass::Tx(t) => match t {
                tx::AMQPMethod::Select(_) => {
                    if ch.confirm {
                        return Err(AmqpError::channel(
                            n,
                            ReplyCode::PreconditionFailed,
                            "cannot switch from confirm to tx mode",
                        )
                        .caused_by(ids.0, ids.1));
                    }
                    if ch.tx.is_none() {
                        ch.tx = Some(Vec::new());
                    }
                    ch.shared.tx.store(true, Ordering::Relaxed);
                    self.send(n, AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
                }
                tx::AMQPMethod::Commit(_) => {
                    let Some(ops) = ch.tx.as_mut().map(std::mem::take) else {
                        return Err(AmqpError::channel(
                            n,
                            ReplyCode::PreconditionFailed,
                            "channel is not transactional",
                        )
                        .caused_by(ids.0, ids.1));
                    };
                    for op in ops {
                        match op {
                            TxOp::Publish(p) => {
                                let (method, properties, body) = *p;
                                self.do_publish(ch, method, properties, body, now_ms)?
                            }
                            TxOp::Ack { tag, multiple } => {
                                self.settle_tags(ch, tag, multiple, Settle::Ack, now_ms, (60, 80))?
                            }
                            TxOp::Nack {
                                tag,
                                multiple,
                                requeue,
                            } => {
                                let how = if requeue {
                                    Settle::Requeue
                                } else {
                                    Settle::Reject
                                };
                                self.settle_tags(ch, tag, multiple, how, now_ms, (60, 120))?
                            }
                            TxOp::Reject { tag, requeue } => {
                                let how = if requeue {
                                    Settle::Requeue
                                } else {
                                    Settle::Reject
                                };
                                self.settle_tags(ch, tag, false, how, now_ms, (60, 90))?
                            }
                        }
                    }
                    if ch.commit_wait.is_some() {
                        // Sent by flush_confirms once the store has synced.
                        self.confirms_dirty = true;
                    } else {
                        self.send(n, AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})));
                    }
                }
                tx::AMQPMethod::Rollback(_) => {
                    let Some(ops) = ch.tx.as_mut() else {
                        return Err(AmqpError::channel(
                            n,
                            ReplyCode::PreconditionFailed,
                            "channel is not transactional",
                        )
                        .caused_by(ids.0, ids.1));
                    };
                    ops.clear();
                    self.send(
                        n,
                        AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
                    );
                }
                other => {
                    let m = AMQPClass::Tx(other);
                    return Err(AmqpError::connection(
                        ReplyCode::CommandInvalid,
                        format!("unexpected method {} from a client", method_name(&m)),
                    )
                    .caused_by(ids.0, ids.1));
                }
            },
            other => {
                return Err(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!("unexpected method {} from a client", method_name(&other)),
                )
                .caused_by(ids.0, ids.1));
            }
        }
        Ok(())
    }

    fn basic_method(
        &mut self,
        ch: &mut Channel,
        m: basic::AMQPMethod,
        ids: (u16, u16),
        now_ms: u64,
    ) -> Result<(), AmqpError> {
        let n = ch.number;
        let id = self.shared.id;
        let sc = |e: AmqpError| scoped(e, n, ids.0, ids.1);
        match m {
            basic::AMQPMethod::Qos(q) => {
                // prefetch-size is dropped by the parser; RabbitMQ rejects non-zero
                // values, which we cannot see.
                let count = q.prefetch_count as u32;
                if q.global {
                    let old = ch.shared.prefetch_global.swap(count, Ordering::Relaxed);
                    if count == 0 || count > old {
                        let mut qs = std::mem::take(&mut self.to_dispatch);
                        ch.consumer_queues(&mut qs);
                        self.to_dispatch = qs;
                    }
                } else {
                    ch.shared.prefetch_consumer.store(count, Ordering::Relaxed);
                }
                self.send(
                    n,
                    AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                );
            }
            basic::AMQPMethod::Consume(c) => {
                let qn = self.queue_name(ch, c.queue.as_str(), ids)?;
                self.check(Access::Read, false, &qn, n, ids)?;
                let tag: Arc<str> = if c.consumer_tag.as_str().is_empty() {
                    random_name("amq.ctag-").into()
                } else {
                    c.consumer_tag.as_str().into()
                };
                if ch.consumers.contains_key(&tag) {
                    return Err(AmqpError::connection(
                        ReplyCode::NotAllowed,
                        format!("attempt to reuse consumer tag '{tag}'"),
                    )
                    .caused_by(ids.0, ids.1));
                }
                let q = self.vhost().queue_for(&qn, id).map_err(sc)?;
                let priority = c
                    .arguments
                    .inner()
                    .get("x-priority")
                    .and_then(int_arg)
                    .map(|p| p.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
                    .unwrap_or(0);
                let consumer = Arc::new(ConsumerShared {
                    tag: tag.clone(),
                    queue: q.clone(),
                    no_ack: c.no_ack,
                    prefetch: ch.shared.prefetch_consumer.load(Ordering::Relaxed),
                    unacked: Default::default(),
                    cancelled: Default::default(),
                    channel: ch.shared.clone(),
                    conn: self.shared.clone(),
                });
                let spec = ConsumerSpec {
                    tag: tag.clone(),
                    connection: id,
                    channel: n,
                    exclusive: c.exclusive,
                    no_ack: c.no_ack,
                    priority,
                    sink: Arc::new(Sink(consumer.clone())),
                };
                // Deliveries made during add_consumer wait in the mailbox, which is
                // drained after this batch of input: consume-ok goes out first.
                q.add_consumer(spec).map_err(sc)?;
                ch.consumers.insert(tag.clone(), consumer);
                ch.shared.consumers.fetch_add(1, Ordering::Relaxed);
                if !c.nowait {
                    self.send(
                        n,
                        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                            consumer_tag: short(&tag),
                        })),
                    );
                }
            }
            basic::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.as_str();
                if let Some(cons) = ch.consumers.remove(tag) {
                    cons.cancelled.store(true, Ordering::Relaxed);
                    ch.shared.consumers.fetch_sub(1, Ordering::Relaxed);
                    cons.queue.remove_consumer(id, n, tag);
                }
                if !c.nowait {
                    self.send(
                        n,
                        AMQPClass::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
            }
            basic::AMQPMethod::Get(g) => {
                let qn = self.queue_name(ch, g.queue.as_str(), ids)?;
                self.check(Access::Read, false, &qn, n, ids)?;
                let q = self.vhost().queue_for(&qn, id).map_err(sc)?;
                match q.get(g.no_ack, now_ms) {
                    GetResult::Empty => {
                        self.send(
                            n,
                            AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
                        );
                    }
                    GetResult::Message {
                        message,
                        redelivered,
                        remaining,
                    } => {
                        let tag = ch.next_delivery_tag();
                        wire::encode_content(
                            &mut self.out,
                            n,
                            ContentMethod::GetOk {
                                delivery_tag: tag,
                                redelivered,
                                exchange: &message.exchange,
                                routing_key: &message.routing_key,
                                message_count: remaining,
                            },
                            &message.properties,
                            &message.body,
                            self.frame_max,
                            &mut self.scratch,
                        );
                        if !g.no_ack {
                            ch.unacked.push_back(Unacked {
                                tag,
                                queue: q,
                                message,
                                consumer: None,
                            });
                        }
                    }
                }
            }
            basic::AMQPMethod::Ack(a) => {
                if let Some(tx) = ch.tx.as_mut() {
                    tx.push(TxOp::Ack {
                        tag: a.delivery_tag,
                        multiple: a.multiple,
                    });
                } else {
                    self.settle_tags(ch, a.delivery_tag, a.multiple, Settle::Ack, now_ms, ids)?;
                }
            }
            basic::AMQPMethod::Nack(a) => {
                if let Some(tx) = ch.tx.as_mut() {
                    tx.push(TxOp::Nack {
                        tag: a.delivery_tag,
                        multiple: a.multiple,
                        requeue: a.requeue,
                    });
                } else {
                    let how = if a.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Reject
                    };
                    self.settle_tags(ch, a.delivery_tag, a.multiple, how, now_ms, ids)?;
                }
            }
            basic::AMQPMethod::Reject(a) => {
                if let Some(tx) = ch.tx.as_mut() {
                    tx.push(TxOp::Reject {
                        tag: a.delivery_tag,
                        requeue: a.requeue,
                    });
                } else {
                    let how = if a.requeue {
                        Settle::Requeue
                    } else {
                        Settle::Reject
                    };
                    self.settle_tags(ch, a.delivery_tag, false, how, now_ms, ids)?;
                }
            }
            basic::AMQPMethod::Recover(r) => {
                self.recover(ch, r.requeue, now_ms, ids)?;
                self.send(
                    n,
                    AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
                );
            }
            basic::AMQPMethod::RecoverAsync(r) => self.recover(ch, r.requeue, now_ms, ids)?,
            other => {
                let m = AMQPClass::Basic(other);
                return Err(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!("unexpected method {} from a client", method_name(&m)),
                )
                .caused_by(ids.0, ids.1));
            }
        }
        Ok(())
    }

    fn recover(
        &mut self,
        ch: &mut Channel,
        requeue: bool,
        now_ms: u64,
        ids: (u16, u16),
    ) -> Result<(), AmqpError> {
        if !requeue {
            return Err(
                AmqpError::connection(ReplyCode::NotImplemented, "requeue=false")
                    .caused_by(ids.0, ids.1),
            );
        }
        let mut items = std::mem::take(&mut self.settle_buf);
        items.extend(ch.unacked.drain(..));
        self.settle(&mut items, Settle::Requeue, now_ms);
        self.settle_buf = items;
        Ok(())
    }

    fn settle_tags(
        &mut self,
        ch: &mut Channel,
        tag: u64,
        multiple: bool,
        how: Settle,
        now_ms: u64,
        ids: (u16, u16),
    ) -> Result<(), AmqpError> {
        let mut items = std::mem::take(&mut self.settle_buf);
        let res = ch.take_unacked(tag, multiple, &mut items);
        if res.is_ok() {
            if ch.shared.prefetch_global.load(Ordering::Relaxed) > 0 {
                let mut qs = std::mem::take(&mut self.to_dispatch);
                ch.consumer_queues(&mut qs);
                self.to_dispatch = qs;
            }
            self.settle(&mut items, how, now_ms);
        }
        items.clear();
        self.settle_buf = items;
        res.map_err(|e| e.caused_by(ids.0, ids.1))
    }

    /// Acks, requeues or rejects deliveries, one queue call per run of the same queue.
    fn settle(&mut self, items: &mut Vec<Unacked>, how: Settle, now_ms: u64) {
        let mut i = 0;
        while i < items.len() {
            let q = items[i].queue.clone();
            let mut j = i;
            while j < items.len() && Arc::ptr_eq(&items[j].queue, &q) {
                if let Some(c) = &items[j].consumer {
                    c.release(1);
                }
                j += 1;
            }
            match how {
                Settle::Ack => {
                    self.ids_buf.clear();
                    self.ids_buf
                        .extend(items[i..j].iter().map(|u| u.message.id));
                    q.ack(&self.ids_buf);
                }
                Settle::Requeue => q.requeue(
                    items[i..j].iter().map(|u| u.message.clone()).collect(),
                    now_ms,
                ),
                Settle::Reject => q.reject(
                    items[i..j].iter().map(|u| u.message.clone()).collect(),
                    now_ms,
                ),
            }
            self.schedule(&q);
            i = j;
        }
        items.clear();
    }

    // ---- publishing ----

    fn publish(
        &mut self,
        ch: &mut Channel,
        method: basic::Publish,
        properties: BasicProperties,
        body: Bytes,
        now_ms: u64,
    ) -> Result<(), AmqpError> {
        let n = ch.number;
        if method.immediate {
            return Err(
                AmqpError::connection(ReplyCode::NotImplemented, "immediate=true")
                    .caused_by(60, 40),
            );
        }
        let max = self.broker.config.max_message_size;
        if body.len() as u64 > max {
            return Err(AmqpError::channel(
                n,
                ReplyCode::PreconditionFailed,
                format!(
                    "message size {} is larger than configured max size {max}",
                    body.len()
                ),
            )
            .caused_by(60, 40));
        }
        self.check(Access::Write, true, method.exchange.as_str(), n, (60, 40))?;
        if let Some(tx) = ch.tx.as_mut() {
            tx.push(TxOp::Publish(Box::new((method, properties, body))));
            return Ok(());
        }
        self.do_publish(ch, method, properties, body, now_ms)
    }

    fn do_publish(
        &mut self,
        ch: &mut Channel,
        method: basic::Publish,
        properties: BasicProperties,
        body: Bytes,
        now_ms: u64,
    ) -> Result<(), AmqpError> {
        let n = ch.number;
        let returned = method.mandatory.then(|| (properties.clone(), body.clone()));
        let message = Message {
            id: self.broker.log.next_id(),
            exchange: method.exchange.to_string(),
            routing_key: method.routing_key.to_string(),
            properties,
            body,
        };
        let outcome = self
            .vhost()
            .publish(method.exchange.as_str(), message, now_ms)
            .map_err(|e| scoped(e, n, 60, 40))?;
        if !outcome.routed {
            if let Some((props, body)) = returned {
                wire::encode_content(
                    &mut self.out,
                    n,
                    ContentMethod::Return {
                        reply_code: ReplyCode::NoRoute as u16,
                        reply_text: "NO_ROUTE",
                        exchange: method.exchange.as_str(),
                        routing_key: method.routing_key.as_str(),
                    },
                    &props,
                    &body,
                    self.frame_max,
                    &mut self.scratch,
                );
            }
        }
        if let (Some(_), Some(t)) = (&ch.tx, outcome.ticket) {
            // Publishing during tx.commit: commit-ok waits for this ticket.
            ch.commit_wait = Some(ch.commit_wait.map_or(t.0, |w| w.max(t.0)));
        }
        if ch.confirm {
            ch.next_seq += 1;
            let c = if outcome.rejected {
                Confirm::Nack
            } else if let Some(t) = outcome.ticket {
                Confirm::Wait(t.0)
            } else {
                Confirm::Ack
            };
            ch.confirms.push_back((ch.next_seq, c));
            self.confirms_dirty = true;
        } else if outcome.ticket.is_some() && !self.warned_unsaved && self.broker.log.failed() {
            // Confirm channels get nacks; these publishers would learn nothing.
            self.warned_unsaved = true;
            tracing::warn!(
                peer = %self.peer,
                channel = n,
                transactional = ch.tx.is_some(),
                "persistent message published without confirms while the message store is failed: \
                 kept in memory only, lost at restart (warned once per connection)"
            );
        }
        Ok(())
    }
}
