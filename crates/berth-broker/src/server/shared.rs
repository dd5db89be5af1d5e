//! State shared between a connection's task and the queues that deliver to it:
//! the mailbox, output credit, channel and consumer credit counters, and the
//! live information the registry lists. Everything here is a leaf in the lock
//! order (queues call in while holding their own lock).
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::model::Queue;
use crate::types::{ConnectionId, ConsumerSink, Delivery};

/// Pending output (mailbox + encoded, not yet written) above which consumers
/// get no more deliveries and the connection stops reading input.
pub const OUTPUT_BUDGET: usize = 1 << 20;
/// Fixed per-delivery estimate of frame overhead, on top of the body.
const DELIVERY_OVERHEAD: usize = 128;

/// What queues leave for a connection.
pub(crate) enum Event {
    Deliver(Arc<ConsumerShared>, Delivery),
    Cancelled(Arc<ConsumerShared>),
}

/// Registry-visible facts about a connection that change rarely.
#[derive(Debug, Clone, Default)]
pub struct ConnMeta {
    pub user: String,
    pub vhost: String,
    pub state: &'static str,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub client_properties: crate::definitions::JsonMap,
}

/// One connection as seen from outside its task.
pub struct ConnShared {
    pub id: ConnectionId,
    /// "peer -> local", RabbitMQ's connection name.
    pub name: String,
    pub peer: String,
    pub tls: bool,
    pub connected_at_ms: u64,
    pub meta: Mutex<ConnMeta>,
    pub recv_bytes: AtomicU64,
    pub send_bytes: AtomicU64,
    pub(crate) mailbox: Mutex<VecDeque<Event>>,
    /// Wakes the connection task: mailbox items, forced close.
    pub notify: tokio::sync::Notify,
    /// Output bytes owed to the socket: estimates of mailbox deliveries plus
    /// encoded bytes not yet written.
    pub(crate) pending: AtomicUsize,
    /// A consumer was refused for lack of output credit: dispatch again once drained.
    pub(crate) starved: AtomicBool,
    pub(crate) closed: AtomicBool,
    /// Set by [`crate::server::registry::Registry::close`]: close with 320 and this text.
    pub(crate) forced: Mutex<Option<String>>,
    pub(crate) channels: Mutex<Vec<Arc<ChannelShared>>>,
}

impl ConnShared {
    pub(crate) fn new(id: ConnectionId, name: String, peer: String, tls: bool) -> Self {
        Self {
            id,
            name,
            peer,
            tls,
            connected_at_ms: crate::types::now_ms(),
            meta: Mutex::new(ConnMeta {
                state: "starting",
                ..Default::default()
            }),
            recv_bytes: AtomicU64::new(0),
            send_bytes: AtomicU64::new(0),
            mailbox: Mutex::new(VecDeque::new()),
            notify: tokio::sync::Notify::new(),
            pending: AtomicUsize::new(0),
            starved: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            forced: Mutex::new(None),
            channels: Mutex::new(Vec::new()),
        }
    }

    /// Asks the connection to close with 320 connection-forced.
    pub fn force_close(&self, reason: &str) {
        *self.forced.lock() = Some(reason.to_string());
        self.notify.notify_one();
    }

    pub fn pending_output(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn push(&self, ev: Event) {
        let was_empty = {
            let mut mb = self.mailbox.lock();
            let e = mb.is_empty();
            mb.push_back(ev);
            e
        };
        // One wake per batch: the task drains everything it finds.
        if was_empty {
            self.notify.notify_one();
        }
    }
}

/// A channel's counters, shared with its consumers' sinks and the registry.
pub struct ChannelShared {
    pub number: u16,
    pub flow_active: AtomicBool,
    pub closed: AtomicBool,
    /// basic.qos global=true (0: unlimited).
    pub prefetch_global: AtomicU32,
    /// basic.qos global=false: applies to consumers created afterwards.
    pub prefetch_consumer: AtomicU32,
    /// Unacked consumer deliveries (not basic.get ones), for the global prefetch.
    pub unacked: AtomicU32,
    pub consumers: AtomicU32,
    pub confirm: AtomicBool,
    pub tx: AtomicBool,
}

impl ChannelShared {
    pub(crate) fn new(number: u16) -> Self {
        Self {
            number,
            flow_active: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            prefetch_global: AtomicU32::new(0),
            prefetch_consumer: AtomicU32::new(0),
            unacked: AtomicU32::new(0),
            consumers: AtomicU32::new(0),
            confirm: AtomicBool::new(false),
            tx: AtomicBool::new(false),
        }
    }
}

/// One consumer: its credit and where its deliveries go.
pub struct ConsumerShared {
    pub tag: Arc<str>,
    pub queue: Arc<Queue>,
    pub no_ack: bool,
    /// Per-consumer prefetch (0: unlimited), fixed when consuming starts.
    pub prefetch: u32,
    pub unacked: AtomicU32,
    pub cancelled: AtomicBool,
    pub channel: Arc<ChannelShared>,
    pub conn: Arc<ConnShared>,
}

impl ConsumerShared {
    /// Gives back the credit of `n` acked/requeued deliveries.
    pub(crate) fn release(&self, n: u32) {
        let _ = self
            .unacked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        let _ = self
            .channel
            .unacked
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }
}

/// The [`ConsumerSink`] handed to a queue.
pub struct Sink(pub Arc<ConsumerShared>);

fn delivery_estimate(d: &Delivery) -> usize {
    d.message.body.len() + DELIVERY_OVERHEAD
}

impl ConsumerSink for Sink {
    fn try_reserve(&self) -> bool {
        let c = &*self.0;
        if c.conn.closed.load(Ordering::Relaxed)
            || c.channel.closed.load(Ordering::Relaxed)
            || c.cancelled.load(Ordering::Relaxed)
            || !c.channel.flow_active.load(Ordering::Relaxed)
        {
            return false;
        }
        if c.conn.pending.load(Ordering::SeqCst) >= OUTPUT_BUDGET {
            // Flag first, then look again: either we see the connection's
            // write, or it sees our flag and dispatches again (no lost wake-up).
            c.conn.starved.store(true, Ordering::SeqCst);
            if c.conn.pending.load(Ordering::SeqCst) >= OUTPUT_BUDGET {
                return false;
            }
        }
        if c.no_ack {
            return true;
        }
        if c.prefetch > 0 && c.unacked.load(Ordering::Relaxed) >= c.prefetch {
            return false;
        }
        let global = c.channel.prefetch_global.load(Ordering::Relaxed);
        let before = c.channel.unacked.fetch_add(1, Ordering::Relaxed);
        if global > 0 && before >= global {
            c.channel.unacked.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        c.unacked.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn deliver(&self, delivery: Delivery) {
        let c = &self.0;
        c.conn
            .pending
            .fetch_add(delivery_estimate(&delivery), Ordering::Relaxed);
        c.conn.push(Event::Deliver(c.clone(), delivery));
    }

    fn cancelled(&self, _consumer_tag: &str) {
        self.0.conn.push(Event::Cancelled(self.0.clone()));
    }
}

pub(crate) fn estimate(d: &Delivery) -> usize {
    delivery_estimate(d)
}
