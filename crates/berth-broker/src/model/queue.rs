//! A queue: ready messages (with priorities), consumers and their dispatch,
//! TTLs, length limits with overflow, dead-lettering.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use berth_amqp::{AmqpError, FieldTable, ReplyCode};
use parking_lot::Mutex;

use super::args::{self, Overflow, QueueConfig};
use super::deadletter::{DeadLetter, Reason};
use super::vhost::Vhost;
use crate::types::{ConnectionId, ConsumerSink, Delivery, MessageId, MessageLog, MessageRef};

/// queue.declare's fields.
#[derive(Debug, Clone)]
pub struct QueueDecl {
    /// Empty: the server names it (`amq.gen-...`).
    pub name: String,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// basic.consume's fields, plus where deliveries go.
pub struct ConsumerSpec {
    pub tag: Arc<str>,
    /// Connection and channel of the consumer, for exclusive-use checks and cleanup.
    pub connection: ConnectionId,
    pub channel: u16,
    pub exclusive: bool,
    pub no_ack: bool,
    pub priority: i32,
    pub sink: Arc<dyn ConsumerSink>,
}

/// basic.get's answer.
#[derive(Debug)]
pub enum GetResult {
    Empty,
    Message {
        message: MessageRef,
        redelivered: bool,
        remaining: u32,
    },
}

/// Counters for listings, the management API and metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStats {
    pub messages_ready: u64,
    pub messages_unacked: u64,
    pub message_bytes: u64,
    pub consumers: u64,
    pub published_total: u64,
    pub delivered_total: u64,
    pub acked_total: u64,
}

/// A queue. All methods lock internally; see the module docs for lock order.
pub struct Queue {
    pub name: Arc<str>,
    pub vhost: Arc<str>,
    pub durable: bool,
    pub auto_delete: bool,
    /// The owning connection of an exclusive queue.
    pub exclusive_owner: Option<ConnectionId>,
    /// The arguments given at declare (policies are applied on top).
    pub arguments: FieldTable,
    log: Arc<dyn MessageLog>,
    /// For dead-lettering and auto-delete, done after this queue's lock is released.
    owner: Weak<Vhost>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .field("durable", &self.durable)
            .field("auto_delete", &self.auto_delete)
            .field("exclusive_owner", &self.exclusive_owner)
            .finish_non_exhaustive()
    }
}

/// A ready message.
struct Entry {
    msg: MessageRef,
    redelivered: bool,
    /// Absolute expiry (ms since epoch) from the queue's and the message's TTL.
    expires_at: Option<u64>,
}

/// A delivered message awaiting ack; keeps its expiry for a requeue. The
/// expiry is packed so that `turn` fits in the same 24 bytes.
struct Unacked {
    msg: MessageRef,
    /// Absolute expiry, [`NO_EXPIRY`] for none.
    expires_at: u64,
    /// Single active consumer: the [`State::turn`] it was delivered in; 0
    /// otherwise (basic.get, queues without it).
    turn: u32,
}

const NO_EXPIRY: u64 = u64::MAX;

// The unacked map holds one per delivery in flight: keep it at 24 bytes.
const _: () = assert!(std::mem::size_of::<Unacked>() == 24);

impl Unacked {
    fn new(entry: &Entry, turn: u32) -> Self {
        Self {
            msg: entry.msg.clone(),
            expires_at: entry.expires_at.unwrap_or(NO_EXPIRY),
            turn,
        }
    }

    fn expires_at(&self) -> Option<u64> {
        (self.expires_at != NO_EXPIRY).then_some(self.expires_at)
    }
}

struct Consumer {
    tag: Arc<str>,
    connection: ConnectionId,
    channel: u16,
    exclusive: bool,
    no_ack: bool,
    priority: i32,
    sink: Arc<dyn ConsumerSink>,
}

struct State {
    cfg: QueueConfig,
    /// One deque per priority level (index = priority); one level without x-max-priority.
    levels: Vec<VecDeque<Entry>>,
    ready: usize,
    ready_bytes: u64,
    unacked: HashMap<MessageId, Unacked>,
    unacked_bytes: u64,
    /// Sorted by priority, highest first; a consumer moves to the back of its
    /// priority group after a delivery (round-robin). With single active
    /// consumer the first one is the active one (the first registered, whatever
    /// its priority) and the others wait in the order they take over: highest
    /// priority first, then registration order (RabbitMQ 3.10's choice).
    consumers: Vec<Consumer>,
    /// Single active consumer: a turn runs from a consumer's registration on
    /// a queue without consumers, through every hand-over, until all have
    /// gone; `turn_unacked` counts its deliveries still unsettled. When the
    /// active consumer goes with none outstanding the next one is served at
    /// once; otherwise once they are settled (a channel close requeues them,
    /// and they must come first) or at the next publish. Never 0.
    turn: u32,
    turn_unacked: u64,
    had_consumer: bool,
    /// Since when the queue is unused (x-expires); set by `tick`, cleared by use.
    idle_since: Option<u64>,
    /// Removed from its vhost: takes no messages, delivers none, and its
    /// totals no longer change (the vhost folded them into its own).
    deleted: bool,
    /// `mark_deleted` dropped the messages and cancelled the consumers.
    cleared: bool,
    published_total: u64,
    delivered_total: u64,
    acked_total: u64,
}

/// Work to do once the queue's lock is released.
#[derive(Default)]
struct Effects {
    /// Persistent messages that left this durable queue for good.
    removed: Vec<MessageId>,
    /// Persistent messages of this durable queue delivered for the first time
    /// to a consumer that acks (or basic.get without no-ack).
    delivered: Vec<MessageId>,
    dead: Vec<DeadLetter>,
    delete_self: bool,
}

/// Whether `enqueue` took the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Accepted,
    Rejected,
    /// The queue was deleted after routing.
    Gone,
}

fn level_count(cfg: &QueueConfig) -> usize {
    cfg.max_priority.map(|p| usize::from(p) + 1).unwrap_or(1)
}

impl State {
    fn level_of(&self, msg: &MessageRef) -> usize {
        usize::from(msg.priority()).min(self.levels.len() - 1)
    }

    fn push_back(&mut self, entry: Entry) {
        let l = self.level_of(&entry.msg);
        self.ready += 1;
        self.ready_bytes += entry.msg.body_len() as u64;
        self.levels[l].push_back(entry);
    }

    fn push_front(&mut self, entry: Entry) {
        let l = self.level_of(&entry.msg);
        self.ready += 1;
        self.ready_bytes += entry.msg.body_len() as u64;
        self.levels[l].push_front(entry);
    }

    fn top_level(&self) -> Option<usize> {
        if self.ready == 0 {
            return None;
        }
        self.levels.iter().rposition(|l| !l.is_empty())
    }

    fn pop_level(&mut self, level: usize) -> Option<Entry> {
        let e = self.levels[level].pop_front()?;
        self.ready -= 1;
        self.ready_bytes -= e.msg.body_len() as u64;
        Some(e)
    }

    fn pop_ready(&mut self) -> Option<Entry> {
        let l = self.top_level()?;
        self.pop_level(l)
    }

    /// A consumer on a queue without consumers (single active consumer):
    /// deliveries of earlier turns no longer hold up hand-overs.
    fn next_turn(&mut self) {
        self.turn = self.turn.wrapping_add(1).max(1);
        self.turn_unacked = 0;
    }

    /// An unacked delivery was settled (acked, requeued, rejected).
    fn settled(&mut self, u: &Unacked) {
        self.unacked_bytes -= u.msg.body_len() as u64;
        if u.turn != 0 && u.turn == self.turn {
            self.turn_unacked = self.turn_unacked.saturating_sub(1);
        }
    }

    fn over_limit(&self) -> bool {
        self.cfg.max_length.is_some_and(|m| self.ready as u64 > m)
            || self
                .cfg
                .max_length_bytes
                .is_some_and(|m| self.ready_bytes > m)
    }

    /// reject-publish's test: would one more message of `bytes` exceed a limit?
    fn would_overflow(&self, bytes: u64) -> bool {
        self.cfg.max_length.is_some_and(|m| self.ready as u64 >= m)
            || self
                .cfg
                .max_length_bytes
                .is_some_and(|m| self.ready_bytes + bytes > m)
    }

    /// Finds a consumer with room: the highest priority group first, in
    /// round-robin order within it. Consumers that refuse are `blocked` for
    /// the rest of this dispatch (`blocked` is allocated only once one refuses,
    /// keeping the publish path free of allocations). Returns (index, end of
    /// its priority group).
    fn reserve_consumer(&self, blocked: &mut Vec<bool>) -> Option<(usize, usize)> {
        if self.cfg.single_active_consumer {
            // Only the active consumer (the first) takes messages.
            return match self.consumers.first() {
                Some(c) if c.sink.try_reserve() => Some((0, 1)),
                _ => None,
            };
        }
        let n = self.consumers.len();
        let mut i = 0;
        while i < n {
            let p = self.consumers[i].priority;
            let mut end = i;
            while end < n && self.consumers[end].priority == p {
                end += 1;
            }
            for (j, c) in self.consumers.iter().enumerate().take(end).skip(i) {
                if !blocked.get(j).copied().unwrap_or(false) {
                    if c.sink.try_reserve() {
                        return Some((j, end));
                    }
                    if blocked.len() != n {
                        blocked.resize(n, false);
                    }
                    blocked[j] = true;
                }
            }
            i = end;
        }
        None
    }
}

impl Queue {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: Arc<str>,
        vhost: Arc<str>,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<ConnectionId>,
        arguments: FieldTable,
        cfg: QueueConfig,
        log: Arc<dyn MessageLog>,
        owner: Weak<Vhost>,
    ) -> Self {
        let levels = (0..level_count(&cfg)).map(|_| VecDeque::new()).collect();
        Self {
            name,
            vhost,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            log,
            owner,
            state: Mutex::new(State {
                cfg,
                levels,
                ready: 0,
                ready_bytes: 0,
                unacked: HashMap::new(),
                unacked_bytes: 0,
                consumers: Vec::new(),
                turn: 1,
                turn_unacked: 0,
                had_consumer: false,
                idle_since: None,
                deleted: false,
                cleared: false,
                published_total: 0,
                delivered_total: 0,
                acked_total: 0,
            }),
        }
    }

    /// `queue 'q' in vhost '/'` for error texts.
    pub fn describe(&self) -> String {
        args::rs("queue", &self.name, &self.vhost)
    }

    /// The settings in force (x-arguments over the matching policy).
    pub fn config(&self) -> QueueConfig {
        self.state.lock().cfg.clone()
    }

    /// Adds a consumer (403 access-refused if the queue has an exclusive consumer,
    /// or if this one asks exclusive while others exist, or asks exclusive on a
    /// single-active-consumer queue at all, as RabbitMQ), then dispatches.
    pub fn add_consumer(&self, consumer: ConsumerSpec) -> Result<(), AmqpError> {
        let now = crate::types::now_ms();
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            if st.deleted {
                return Err(args::not_found("queue", &self.name, &self.vhost));
            }
            let sac = st.cfg.single_active_consumer;
            if (sac && consumer.exclusive)
                || st.consumers.iter().any(|c| c.exclusive)
                || (consumer.exclusive && !st.consumers.is_empty())
            {
                return Err(AmqpError::channel(
                    0,
                    ReplyCode::AccessRefused,
                    format!("{} in exclusive use", self.describe()),
                ));
            }
            // With single active consumer the first stays active; a newcomer
            // waits behind those of its priority or higher.
            let skip = usize::from(sac && !st.consumers.is_empty());
            if sac && st.consumers.is_empty() {
                st.next_turn();
            }
            let pos = st.consumers[skip..]
                .iter()
                .position(|c| c.priority < consumer.priority)
                .map_or(st.consumers.len(), |i| i + skip);
            st.consumers.insert(
                pos,
                Consumer {
                    tag: consumer.tag,
                    connection: consumer.connection,
                    channel: consumer.channel,
                    exclusive: consumer.exclusive,
                    no_ack: consumer.no_ack,
                    priority: consumer.priority,
                    sink: consumer.sink,
                },
            );
            st.had_consumer = true;
            st.idle_since = None;
            self.dispatch_locked(&mut st, now, &mut fx);
        }
        self.finish(fx, now);
        Ok(())
    }

    /// Removes a consumer; its unacked messages stay with the channel, which
    /// requeues them itself. With single active consumer, removing the active
    /// one makes the next waiting one active; it gets the ready messages at
    /// once if no delivery of the turn is unsettled, else when they are.
    pub fn remove_consumer(&self, connection: ConnectionId, channel: u16, tag: &str) -> bool {
        let now = crate::types::now_ms();
        let mut fx = Effects::default();
        let found = {
            let mut st = self.state.lock();
            let pos = st
                .consumers
                .iter()
                .position(|c| c.connection == connection && c.channel == channel && &*c.tag == tag);
            if let Some(i) = pos {
                st.consumers.remove(i);
                st.idle_since = None;
                if self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted {
                    fx.delete_self = true;
                }
                // The next consumer takes over. Unsettled deliveries of the
                // turn (a channel close is about to requeue them) must reach
                // it before the newer ready messages: it waits for them.
                if i == 0 && st.cfg.single_active_consumer && st.turn_unacked == 0 {
                    self.dispatch_locked(&mut st, now, &mut fx);
                }
            }
            pos.is_some()
        };
        self.finish(fx, now);
        found
    }

    /// Delivers ready messages to consumers with room (round-robin among the
    /// highest consumer priority), until messages or room run out. Called after
    /// a publish, an ack, a qos change or when a connection's output drained.
    pub fn dispatch(&self, now_ms: u64) {
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            self.dispatch_locked(&mut st, now_ms, &mut fx);
        }
        self.finish(fx, now_ms);
    }

    /// basic.get. With `no_ack` the message leaves the queue at once; otherwise the
    /// channel tracks it and later calls `ack`, `requeue` or `reject`.
    pub fn get(&self, no_ack: bool, now_ms: u64) -> GetResult {
        let mut fx = Effects::default();
        let result = {
            let mut st = self.state.lock();
            if st.deleted {
                return GetResult::Empty;
            }
            st.idle_since = None;
            match self
                .next_live(&mut st, now_ms, &mut fx)
                .and_then(|l| st.pop_level(l))
            {
                None => GetResult::Empty,
                Some(e) => {
                    st.delivered_total += 1;
                    if no_ack {
                        self.leave(&e.msg, &mut fx);
                    } else {
                        self.note_delivered(&e, &mut fx);
                        st.unacked_bytes += e.msg.body_len() as u64;
                        st.unacked.insert(e.msg.id, Unacked::new(&e, 0));
                    }
                    GetResult::Message {
                        message: e.msg,
                        redelivered: e.redelivered,
                        remaining: st.ready as u32,
                    }
                }
            }
        };
        self.finish(fx, now_ms);
        result
    }

    /// Unacked deliveries were acked: they leave the queue for good. (Deliveries
    /// to no-ack consumers leave at dispatch; the channel never acks those.)
    pub fn ack(&self, ids: &[MessageId]) {
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            for id in ids {
                if let Some(u) = st.unacked.remove(id) {
                    st.settled(&u);
                    st.acked_total += 1;
                    self.leave(&u.msg, &mut fx);
                }
            }
        }
        self.finish(fx, 0);
    }

    /// Unacked messages come back (nack/reject with requeue, channel or
    /// connection closed, basic.recover): redelivered=true, ahead of newer ones.
    pub fn requeue(&self, messages: Vec<MessageRef>, now_ms: u64) {
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            // Front-pushing in reverse keeps the original order at the head.
            for m in messages.into_iter().rev() {
                let Some(u) = st.unacked.remove(&m.id) else {
                    continue;
                };
                st.settled(&u);
                st.push_front(Entry {
                    expires_at: u.expires_at(),
                    msg: u.msg,
                    redelivered: true,
                });
            }
            self.dispatch_locked(&mut st, now_ms, &mut fx);
        }
        self.finish(fx, now_ms);
    }

    /// nack/reject without requeue: dead-lettered (reason `rejected`) or dropped.
    pub fn reject(&self, messages: Vec<MessageRef>, now_ms: u64) {
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            for m in messages {
                if let Some(u) = st.unacked.remove(&m.id) {
                    st.settled(&u);
                    self.dead_letter_or_drop(&st, u.msg, Reason::Rejected, &mut fx);
                }
            }
        }
        self.finish(fx, now_ms);
    }

    /// Removes all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        let mut fx = Effects::default();
        let n = {
            let mut st = self.state.lock();
            let n = st.ready as u32;
            let levels: Vec<VecDeque<Entry>> = st.levels.iter_mut().map(std::mem::take).collect();
            st.ready = 0;
            st.ready_bytes = 0;
            for e in levels.into_iter().flatten() {
                self.leave(&e.msg, &mut fx);
            }
            n
        };
        self.finish(fx, 0);
        n
    }

    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            messages_ready: st.ready as u64,
            messages_unacked: st.unacked.len() as u64,
            message_bytes: st.ready_bytes + st.unacked_bytes,
            consumers: st.consumers.len() as u64,
            published_total: st.published_total,
            delivered_total: st.delivered_total,
            acked_total: st.acked_total,
        }
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    /// Whether its persistent messages go to the message log: durable and not
    /// exclusive (exclusive queues do not survive a restart).
    pub fn logs_messages(&self) -> bool {
        self.durable && self.exclusive_owner.is_none()
    }

    /// Whether the queue was deleted (a channel may still hold it).
    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    // ---- crate-internal: called by the vhost ----

    /// A routed message arrives: overflow, TTL 0, direct hand-over to a waiting
    /// consumer, or the back of the queue.
    pub(crate) fn enqueue(&self, msg: MessageRef, now_ms: u64) -> Admit {
        let mut fx = Effects::default();
        let admit = {
            let mut st = self.state.lock();
            self.enqueue_locked(&mut st, msg, now_ms, &mut fx)
        };
        self.finish(fx, now_ms);
        admit
    }

    fn enqueue_locked(
        &self,
        st: &mut State,
        msg: MessageRef,
        now_ms: u64,
        fx: &mut Effects,
    ) -> Admit {
        if st.deleted {
            self.leave(&msg, fx);
            return Admit::Gone;
        }
        let bytes = msg.body_len() as u64;
        if st.cfg.overflow != Overflow::DropHead && st.would_overflow(bytes) {
            if st.cfg.overflow == Overflow::RejectPublishDlx {
                self.dead_letter_or_drop(st, msg, Reason::MaxLen, fx);
            } else {
                self.leave(&msg, fx);
            }
            return Admit::Rejected;
        }
        st.published_total += 1;
        let ttl = match (st.cfg.message_ttl, msg.expiration_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let entry = Entry {
            msg,
            redelivered: false,
            expires_at: ttl.map(|t| now_ms.saturating_add(t)),
        };
        if st.ready == 0 && !st.consumers.is_empty() {
            let mut blocked = Vec::new();
            if let Some((j, end)) = st.reserve_consumer(&mut blocked) {
                self.deliver_to(st, j, end, entry, fx);
                return Admit::Accepted;
            }
        }
        if ttl == Some(0) {
            // TTL 0: only for a consumer that can take it right now.
            self.dead_letter_or_drop(st, entry.msg, Reason::Expired, fx);
            return Admit::Accepted;
        }
        let was_empty = st.ready == 0;
        st.push_back(entry);
        self.enforce_limits(st, fx);
        if !was_empty && !st.consumers.is_empty() {
            self.dispatch_locked(st, now_ms, fx);
        }
        Admit::Accepted
    }

    /// A recovered message goes back without logging or overflow checks.
    pub(crate) fn restore(&self, msg: MessageRef, redelivered: bool, now_ms: u64) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let ttl = match (st.cfg.message_ttl, msg.expiration_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        st.push_back(Entry {
            msg,
            redelivered,
            expires_at: ttl.map(|t| now_ms.saturating_add(t)),
        });
    }

    /// Redeclare (or passive declare): counts as use for x-expires.
    pub(crate) fn touch(&self) {
        self.state.lock().idle_since = None;
    }

    /// New settings after a policy change; limits apply at the next tick.
    pub(crate) fn set_config(&self, cfg: QueueConfig) {
        let mut st = self.state.lock();
        // x-max-priority and x-single-active-consumer come only from
        // arguments, so the levels and the consumer order stay.
        st.cfg = QueueConfig {
            max_priority: st.cfg.max_priority,
            single_active_consumer: st.cfg.single_active_consumer,
            ..cfg
        };
    }

    /// TTL expiry at the heads, limits, and the x-expires clock. True when the
    /// queue has been unused for its x-expires and should be deleted.
    pub(crate) fn tick(&self, now_ms: u64) -> bool {
        let mut fx = Effects::default();
        let expired = {
            let mut st = self.state.lock();
            if st.deleted {
                return false;
            }
            for l in 0..st.levels.len() {
                self.expire_level(&mut st, l, now_ms, &mut fx);
            }
            if st.cfg.overflow == Overflow::DropHead {
                self.enforce_limits(&mut st, &mut fx);
            }
            match st.cfg.expires {
                Some(exp) if st.consumers.is_empty() => {
                    let since = *st.idle_since.get_or_insert(now_ms);
                    now_ms.saturating_sub(since) >= exp
                }
                _ => {
                    st.idle_since = None;
                    false
                }
            }
        };
        self.finish(fx, now_ms);
        expired
    }

    /// The vhost removed the queue (under its topology lock): from now on it
    /// takes and delivers nothing, so its totals are final. Returns them
    /// (published, delivered) the first time, zeros after.
    pub(crate) fn retire(&self) -> (u64, u64) {
        let mut st = self.state.lock();
        if st.deleted {
            return (0, 0);
        }
        st.deleted = true;
        (st.published_total, st.delivered_total)
    }

    /// Marks the queue deleted: consumers are cancelled, messages dropped.
    /// Returns the number of ready messages it had.
    pub(crate) fn mark_deleted(&self) -> u32 {
        let n = {
            let mut st = self.state.lock();
            if st.cleared {
                return 0;
            }
            st.deleted = true;
            st.cleared = true;
            let n = st.ready as u32;
            for l in st.levels.iter_mut() {
                l.clear();
            }
            st.ready = 0;
            st.ready_bytes = 0;
            st.unacked.clear();
            st.unacked_bytes = 0;
            for c in std::mem::take(&mut st.consumers) {
                c.sink.cancelled(&c.tag);
            }
            n
        };
        if self.logs_messages() {
            self.log.remove_queue(&self.vhost, &self.name);
        }
        n
    }

    // ---- internals (queue lock held) ----

    fn dispatch_locked(&self, st: &mut State, now_ms: u64, fx: &mut Effects) {
        if st.consumers.is_empty() || st.deleted {
            return;
        }
        let mut blocked = Vec::new();
        while let Some(level) = self.next_live(st, now_ms, fx) {
            let Some((j, end)) = st.reserve_consumer(&mut blocked) else {
                break;
            };
            let Some(entry) = st.pop_level(level) else {
                break;
            };
            self.deliver_to(st, j, end, entry, fx);
            if let Some(b) = blocked.get_mut(j..end) {
                b.rotate_left(1);
            }
        }
    }

    /// Hands `entry` to consumer `j` (which reserved room) and moves it to the
    /// back of its priority group `..end`.
    fn deliver_to(&self, st: &mut State, j: usize, end: usize, entry: Entry, fx: &mut Effects) {
        st.delivered_total += 1;
        let c = &st.consumers[j];
        let (sink, tag, no_ack) = (c.sink.clone(), c.tag.clone(), c.no_ack);
        if no_ack {
            self.leave(&entry.msg, fx);
        } else {
            self.note_delivered(&entry, fx);
            st.unacked_bytes += entry.msg.body_len() as u64;
            // Only the active consumer gets messages with single active consumer.
            let turn = if st.cfg.single_active_consumer {
                st.turn_unacked += 1;
                st.turn
            } else {
                0
            };
            st.unacked.insert(entry.msg.id, Unacked::new(&entry, turn));
        }
        st.consumers[j..end].rotate_left(1);
        sink.deliver(Delivery {
            queue: self.name.clone(),
            consumer_tag: tag,
            message: entry.msg,
            redelivered: entry.redelivered,
        });
    }

    /// The level whose head is next to go, after expiring dead heads.
    fn next_live(&self, st: &mut State, now_ms: u64, fx: &mut Effects) -> Option<usize> {
        loop {
            let l = st.top_level()?;
            if self.expire_level(st, l, now_ms, fx) == 0 {
                return Some(l);
            }
        }
    }

    /// Expires messages at the head of one level; returns how many.
    fn expire_level(&self, st: &mut State, level: usize, now_ms: u64, fx: &mut Effects) -> usize {
        let mut n = 0;
        while st.levels[level]
            .front()
            .is_some_and(|e| e.expires_at.is_some_and(|t| t <= now_ms))
        {
            if let Some(e) = st.pop_level(level) {
                self.dead_letter_or_drop(st, e.msg, Reason::Expired, fx);
                n += 1;
            }
        }
        n
    }

    /// drop-head: the oldest messages go while a length limit is exceeded.
    fn enforce_limits(&self, st: &mut State, fx: &mut Effects) {
        if st.cfg.overflow != Overflow::DropHead {
            return;
        }
        while st.over_limit() {
            let Some(e) = st.pop_ready() else { break };
            self.dead_letter_or_drop(st, e.msg, Reason::MaxLen, fx);
        }
    }

    /// An unacked delivery: the log records the first one of a logged message
    /// (a requeued or recovered-as-redelivered entry is flagged already).
    fn note_delivered(&self, entry: &Entry, fx: &mut Effects) {
        if !entry.redelivered && self.logs_messages() && entry.msg.persistent() {
            fx.delivered.push(entry.msg.id);
        }
    }

    /// The message left this queue for good.
    fn leave(&self, msg: &MessageRef, fx: &mut Effects) {
        if self.logs_messages() && msg.persistent() {
            fx.removed.push(msg.id);
        }
    }

    fn dead_letter_or_drop(&self, st: &State, msg: MessageRef, reason: Reason, fx: &mut Effects) {
        self.leave(&msg, fx);
        if let Some(dlx) = &st.cfg.dead_letter_exchange {
            fx.dead.push(DeadLetter {
                message: msg,
                reason,
                exchange: dlx.clone(),
                routing_key: st.cfg.dead_letter_routing_key.clone(),
            });
        }
    }

    /// After unlocking: log deliveries and removals, dead-letter publishes,
    /// auto-delete.
    fn finish(&self, fx: Effects, now_ms: u64) {
        if !fx.delivered.is_empty() {
            self.log.delivered(&self.vhost, &self.name, &fx.delivered);
        }
        if !fx.removed.is_empty() {
            self.log.remove(&self.vhost, &self.name, &fx.removed);
        }
        if fx.dead.is_empty() && !fx.delete_self {
            return;
        }
        let Some(vhost) = self.owner.upgrade() else {
            return;
        };
        let now_ms = if now_ms == 0 {
            crate::types::now_ms()
        } else {
            now_ms
        };
        for dl in fx.dead {
            vhost.publish_dead_letter(&self.name, dl, now_ms);
        }
        if fx.delete_self {
            vhost.auto_delete_queue(self);
        }
    }
}
