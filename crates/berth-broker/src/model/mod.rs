//! The message model: vhosts holding exchanges, bindings and queues; routing;
//! queues with their arguments and policies; consumers and dispatch. Synchronous
//! and socket-free: the protocol layer calls in, and queues call out only through
//! [`crate::types::ConsumerSink`], [`crate::types::MessageLog`] and [`crate::types::MetaLog`].
//!
//! Lock order: vhost topology lock, then one queue's lock, then (leaf) sink
//! internals. A queue never takes the topology lock while holding its own lock
//! (dead-lettering collects messages and routes them after unlocking).

pub mod args;
pub mod deadletter;
pub mod exchange;
pub mod policy;
pub mod queue;
pub mod vhost;

pub use args::{Overflow, QueueConfig};
pub use deadletter::Reason;
pub use exchange::{ExchangeDecl, ExchangeKind};
pub use policy::Policy;
pub use queue::{ConsumerSpec, GetResult, Queue, QueueDecl, QueueStats};
pub use vhost::{BindingInfo, ExchangeInfo, PublishOutcome, Vhost};

#[cfg(test)]
mod tests;
