//! A queue: ready messages (with priorities), consumers and their dispatch,
//! TTLs, length limits with overflow, dead-lettering.
use std::sync::Arc;

use berth_amqp::{AmqpError, FieldTable};

use crate::types::{ConnectionId, ConsumerSink, MessageId, MessageRef};

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
    Message { message: MessageRef, redelivered: bool, remaining: u32 },
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
}

impl Queue {
    /// Adds a consumer (403 access-refused if the queue has an exclusive consumer,
    /// or if this one asks exclusive while others exist), then dispatches.
    pub fn add_consumer(&self, consumer: ConsumerSpec) -> Result<(), AmqpError> {
        let _ = consumer;
        todo!("model helper")
    }

    /// Removes a consumer; its unacked messages stay with the channel, which
    /// requeues them itself.
    pub fn remove_consumer(&self, connection: ConnectionId, channel: u16, tag: &str) -> bool {
        let _ = (connection, channel, tag);
        todo!("model helper")
    }

    /// Delivers ready messages to consumers with room (round-robin among the
    /// highest consumer priority), until messages or room run out. Called after
    /// a publish, an ack, a qos change or when a connection's output drained.
    pub fn dispatch(&self, now_ms: u64) {
        let _ = now_ms;
        todo!("model helper")
    }

    /// basic.get. With `no_ack` the message leaves the queue at once; otherwise the
    /// channel tracks it and later calls `ack`, `requeue` or `reject`.
    pub fn get(&self, no_ack: bool, now_ms: u64) -> GetResult {
        let _ = (no_ack, now_ms);
        todo!("model helper")
    }

    /// Unacked deliveries were acked: they leave the queue for good. (Deliveries
    /// to no-ack consumers leave at dispatch; the channel never acks those.)
    pub fn ack(&self, ids: &[MessageId]) {
        let _ = ids;
        todo!("model helper")
    }

    /// Unacked messages come back (nack/reject with requeue, channel or
    /// connection closed, basic.recover): redelivered=true, ahead of newer ones.
    pub fn requeue(&self, messages: Vec<MessageRef>, now_ms: u64) {
        let _ = (messages, now_ms);
        todo!("model helper")
    }

    /// nack/reject without requeue: dead-lettered (reason `rejected`) or dropped.
    pub fn reject(&self, messages: Vec<MessageRef>, now_ms: u64) {
        let _ = (messages, now_ms);
        todo!("model helper")
    }

    /// Removes all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        todo!("model helper")
    }

    pub fn stats(&self) -> QueueStats {
        todo!("model helper")
    }

    pub fn message_count(&self) -> u32 {
        todo!("model helper")
    }

    pub fn consumer_count(&self) -> u32 {
        todo!("model helper")
    }
}
