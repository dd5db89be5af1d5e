//! The AMQP protocol layer: accepting connections (plain and TLS), the
//! connection and channel state machines, consumers, confirms, transactions
//! and flow control.
//!
//! A connection is a sync state object ([`connection::Connection`]) driven by a
//! thin tokio task: bytes in, bytes out, wake-ups from queues. The fuzz target
//! `amqp_methods` drives the same object without sockets.
use std::sync::Arc;

use crate::Broker;

pub mod channel;
pub mod connection;
pub mod flow;
pub mod net;
pub mod registry;

/// Accepts connections until `shutdown` turns true, then closes them with
/// 320 connection-forced.
pub async fn serve(
    broker: Arc<Broker>,
    plain: Option<tokio::net::TcpListener>,
    tls: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let _ = (broker, plain, tls, shutdown);
    todo!("server helper")
}
