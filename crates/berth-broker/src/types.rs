//! Types shared by the model, the store and the protocol layer.
use std::sync::Arc;

use berth_amqp::{AMQPValue, BasicProperties};
use bytes::Bytes;

/// Unique across the broker's lifetime (the store persists the high-water mark).
pub type MessageId = u64;

/// Identifies a client connection for exclusive queues and consumers.
pub type ConnectionId = u64;

/// A published message. Immutable once routed; shared by every queue it entered.
#[derive(Debug)]
pub struct Message {
    pub id: MessageId,
    pub exchange: String,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Bytes,
}

pub type MessageRef = Arc<Message>;

impl Message {
    /// delivery-mode 2.
    pub fn persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }

    /// Priority property (0 when absent).
    pub fn priority(&self) -> u8 {
        self.properties.priority().unwrap_or(0)
    }

    /// The per-message TTL from the expiration property, in milliseconds. `None`
    /// when absent or not a non-negative integer (RabbitMQ rejects those at publish).
    pub fn expiration_ms(&self) -> Option<u64> {
        self.properties
            .expiration()
            .as_ref()
            .and_then(|e| e.as_str().parse().ok())
    }

    /// A header value, if the message has headers.
    pub fn header(&self, key: &str) -> Option<&AMQPValue> {
        self.properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(key))
    }

    /// Bytes counted against x-max-length-bytes and memory (body only, like RabbitMQ).
    pub fn body_len(&self) -> usize {
        self.body.len()
    }
}

/// One message handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue: Arc<str>,
    pub consumer_tag: Arc<str>,
    pub message: MessageRef,
    pub redelivered: bool,
}

/// Where a queue sends deliveries: a consumer on some channel. Implemented by the
/// protocol layer. Calls must not block and must not call back into the queue
/// (the queue's lock is held).
pub trait ConsumerSink: Send + Sync {
    /// Reserves room for one delivery (prefetch window, connection output
    /// buffer). `false`: skip this consumer until the queue is dispatched again.
    fn try_reserve(&self) -> bool;
    /// Hands over a delivery after a successful `try_reserve`.
    fn deliver(&self, delivery: Delivery);
    /// The queue was deleted: the channel sends basic.cancel to the client.
    fn cancelled(&self, consumer_tag: &str);
}

/// The store's sequence number of a write; durable once the store's synced
/// watermark reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteTicket(pub u64);

/// Where persistent messages of durable queues go. Implemented by [`crate::store::Store`];
/// [`MemoryLog`] keeps nothing (transient brokers, tests, fuzzing).
pub trait MessageLog: Send + Sync {
    /// A fresh message id.
    fn next_id(&self) -> MessageId;
    /// Records a persistent message entering these durable queues of `vhost`.
    fn publish(&self, vhost: &str, queues: &[&str], message: &Message) -> WriteTicket;
    /// The message left the queue for good (acked, expired, dropped, dead-lettered).
    fn remove(&self, vhost: &str, queue: &str, ids: &[MessageId]);
    /// The queue was deleted or purged: all its messages are gone.
    fn remove_queue(&self, vhost: &str, queue: &str);
    /// The messages were handed to a consumer that acks (or basic.get without
    /// no-ack) for the first time: after a restart they come back with
    /// redelivered=true, as in RabbitMQ. Does not wait for the disk.
    fn delivered(&self, vhost: &str, queue: &str, ids: &[MessageId]);
    /// The highest ticket that is on disk (fsynced).
    fn synced(&self) -> tokio::sync::watch::Receiver<u64>;
    /// An I/O error stopped the log until restart. The synced watermark is
    /// then final (read this first, then the watermark): tickets above it
    /// will never be durable, so their publisher confirms are nacks. The
    /// watch is poked once when this turns true.
    fn failed(&self) -> bool {
        false
    }
}

/// A log that keeps nothing; every ticket is immediately "durable".
#[derive(Debug)]
pub struct MemoryLog {
    next: std::sync::atomic::AtomicU64,
    synced: tokio::sync::watch::Sender<u64>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self {
            next: std::sync::atomic::AtomicU64::new(1),
            synced: tokio::sync::watch::Sender::new(u64::MAX),
        }
    }
}

impl MessageLog for MemoryLog {
    fn next_id(&self) -> MessageId {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
    fn publish(&self, _vhost: &str, _queues: &[&str], _message: &Message) -> WriteTicket {
        WriteTicket(0)
    }
    fn remove(&self, _vhost: &str, _queue: &str, _ids: &[MessageId]) {}
    fn remove_queue(&self, _vhost: &str, _queue: &str) {}
    fn delivered(&self, _vhost: &str, _queue: &str, _ids: &[MessageId]) {}
    fn synced(&self) -> tokio::sync::watch::Receiver<u64> {
        self.synced.subscribe()
    }
}

/// A change to durable metadata, appended to the metadata log before it is
/// acknowledged to the client.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MetaOp {
    PutVhost(crate::definitions::VhostDef),
    DeleteVhost { name: String },
    PutUser(crate::definitions::UserDef),
    DeleteUser { name: String },
    PutPermission(crate::definitions::PermissionDef),
    DeletePermission { user: String, vhost: String },
    PutPolicy(crate::definitions::PolicyDef),
    DeletePolicy { vhost: String, name: String },
    PutExchange(crate::definitions::ExchangeDef),
    DeleteExchange { vhost: String, name: String },
    PutQueue(crate::definitions::QueueDef),
    DeleteQueue { vhost: String, name: String },
    PutBinding(crate::definitions::BindingDef),
    DeleteBinding(crate::definitions::BindingDef),
}

/// Where durable metadata changes go. Implemented by [`crate::store::MetaStore`].
pub trait MetaLog: Send + Sync {
    /// Appends and fsyncs one change.
    fn append(&self, op: &MetaOp) -> std::io::Result<()>;
}

/// A metadata log that keeps nothing.
#[derive(Debug, Default)]
pub struct MemoryMeta;

impl MetaLog for MemoryMeta {
    fn append(&self, _op: &MetaOp) -> std::io::Result<()> {
        Ok(())
    }
}

/// Milliseconds since the Unix epoch (the model takes time as an argument so tests can pass any).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
