//! berth's AMQP 0-9-1 message broker (RabbitMQ's role).
//!
//! Codemap:
//! - [`types`]: messages, the consumer sink and the logs the model writes to.
//! - [`model`]: vhosts, exchanges, routing, queues (TTL, length limits, DLX,
//!   priorities), consumers and dispatch. Synchronous; no sockets.
//! - [`store`]: persistent messages (segment files, group commit) and the
//!   metadata log (durable exchanges, queues, bindings, users...).
//! - [`auth`]: users, password hashes, permissions.
//! - [`definitions`]: the JSON definitions file (RabbitMQ's format), import/export.
//! - [`server`]: AMQP connections and channels, confirms, transactions, flow control, TLS.
//! - [`mgmt`]: management HTTP API and Prometheus metrics.
//! - [`broker`]: the whole broker: opening, recovery, running.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod config;
pub mod definitions;
pub mod mgmt;
pub mod model;
pub mod server;
pub mod store;
pub mod types;

pub use broker::Broker;
pub use config::BrokerConfig;
