//! A virtual host: its exchanges, queues, bindings and policies; routing.
use std::sync::Arc;

use berth_amqp::{AmqpError, FieldTable};

use super::exchange::ExchangeDecl;
use super::queue::{Queue, QueueDecl};
use crate::definitions::PolicyDef;
use crate::types::{ConnectionId, Message, MessageLog, MetaLog, WriteTicket};

/// What happened to a published message.
#[derive(Debug, Default)]
pub struct PublishOutcome {
    /// Entered at least one queue. False + mandatory: the channel sends basic.return 312 NO_ROUTE.
    pub routed: bool,
    /// A queue with x-overflow reject-publish refused it: in confirm mode the channel nacks.
    pub rejected: bool,
    /// Persistent and routed to durable queues: confirm once the store has synced this.
    pub ticket: Option<WriteTicket>,
    /// Queues it entered (for rates and tracing).
    pub queues: u32,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExchangeInfo {
    pub name: String,
    pub kind: &'static str,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: crate::definitions::JsonMap,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BindingInfo {
    pub source: String,
    pub destination: String,
    /// "queue" or "exchange"
    pub destination_type: &'static str,
    pub routing_key: String,
    pub arguments: crate::definitions::JsonMap,
}

/// A virtual host. Created with the default exchanges (`""`, `amq.direct`,
/// `amq.fanout`, `amq.topic`, `amq.headers`, `amq.match`).
pub struct Vhost {
    pub name: Arc<str>,
}

impl Vhost {
    pub fn new(name: &str, log: Arc<dyn MessageLog>, meta: Arc<dyn MetaLog>) -> Arc<Self> {
        let _ = (name, log, meta);
        todo!("model helper")
    }

    /// exchange.declare. Errors as RabbitMQ: 406 on inequivalent redeclare, 404 passive
    /// missing, 403 for `amq.` names, 503 unknown type. Durable ones go to the meta log.
    pub fn declare_exchange(&self, decl: ExchangeDecl) -> Result<(), AmqpError> {
        let _ = decl;
        todo!("model helper")
    }

    /// exchange.delete (406 if if_unused and bound, 403 for the default exchanges).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), AmqpError> {
        let _ = (name, if_unused);
        todo!("model helper")
    }

    /// queue.declare: returns the queue, its message count and consumer count.
    /// `owner` is the declaring connection (exclusive queues; 405 resource-locked
    /// for other connections).
    pub fn declare_queue(&self, decl: QueueDecl, owner: ConnectionId) -> Result<(Arc<Queue>, u32, u32), AmqpError> {
        let _ = (decl, owner);
        todo!("model helper")
    }

    /// queue.delete: returns the number of messages deleted; consumers get
    /// `cancelled`. 406 for if_unused/if_empty, 404 missing, 405 exclusive.
    pub fn delete_queue(&self, name: &str, if_unused: bool, if_empty: bool, owner: ConnectionId) -> Result<u32, AmqpError> {
        let _ = (name, if_unused, if_empty, owner);
        todo!("model helper")
    }

    /// queue.purge.
    pub fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u32, AmqpError> {
        let _ = (name, owner);
        todo!("model helper")
    }

    /// A queue usable by `owner` (404 missing, 405 exclusive to another connection).
    pub fn queue_for(&self, name: &str, owner: ConnectionId) -> Result<Arc<Queue>, AmqpError> {
        let _ = (name, owner);
        todo!("model helper")
    }

    pub fn bind_queue(&self, queue: &str, exchange: &str, routing_key: &str, arguments: &FieldTable, owner: ConnectionId) -> Result<(), AmqpError> {
        let _ = (queue, exchange, routing_key, arguments, owner);
        todo!("model helper")
    }

    pub fn unbind_queue(&self, queue: &str, exchange: &str, routing_key: &str, arguments: &FieldTable, owner: ConnectionId) -> Result<(), AmqpError> {
        let _ = (queue, exchange, routing_key, arguments, owner);
        todo!("model helper")
    }

    pub fn bind_exchange(&self, destination: &str, source: &str, routing_key: &str, arguments: &FieldTable) -> Result<(), AmqpError> {
        let _ = (destination, source, routing_key, arguments);
        todo!("model helper")
    }

    pub fn unbind_exchange(&self, destination: &str, source: &str, routing_key: &str, arguments: &FieldTable) -> Result<(), AmqpError> {
        let _ = (destination, source, routing_key, arguments);
        todo!("model helper")
    }

    /// Routes and enqueues (exchange-to-exchange bindings, alternate exchanges,
    /// queue overflow, persistence to the message log for durable queues).
    /// 404 if the exchange does not exist, 403 if it is internal.
    pub fn publish(&self, exchange: &str, message: Message, now_ms: u64) -> Result<PublishOutcome, AmqpError> {
        let _ = (exchange, message, now_ms);
        todo!("model helper")
    }

    /// Puts a recovered persistent message back into a durable queue at startup
    /// (no routing, no logging).
    pub fn restore_message(&self, queue: &str, message: Message, now_ms: u64) {
        let _ = (queue, message, now_ms);
        todo!("model helper")
    }

    /// The connection closed: its exclusive queues are deleted.
    pub fn connection_closed(&self, connection: ConnectionId) {
        let _ = connection;
        todo!("model helper")
    }

    /// Periodic work: message TTL expiry (dead-lettering `expired`), x-expires of unused queues.
    pub fn tick(&self, now_ms: u64) {
        let _ = now_ms;
        todo!("model helper")
    }

    pub fn put_policy(&self, policy: PolicyDef) -> Result<(), AmqpError> {
        let _ = policy;
        todo!("model helper")
    }

    pub fn delete_policy(&self, name: &str) -> Result<(), AmqpError> {
        let _ = name;
        todo!("model helper")
    }

    pub fn policies(&self) -> Vec<PolicyDef> {
        todo!("model helper")
    }

    pub fn queues(&self) -> Vec<Arc<Queue>> {
        todo!("model helper")
    }

    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        todo!("model helper")
    }

    pub fn bindings(&self) -> Vec<BindingInfo> {
        todo!("model helper")
    }
}
