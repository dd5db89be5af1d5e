//! The AMQP protocol layer: accepting connections (plain and TLS), the
//! connection and channel state machines, consumers, confirms, transactions
//! and flow control.
//!
//! A connection is a sync state object ([`connection::Connection`]) driven by a
//! thin tokio task: bytes in, bytes out, wake-ups from queues. The fuzz target
//! `amqp_methods` drives the same object without sockets.
use std::sync::Arc;
use std::time::Duration;

use crate::Broker;

pub mod channel;
pub mod connection;
pub mod flow;
pub mod net;
pub mod registry;
pub mod shared;
mod wire;

#[cfg(test)]
mod tests;

/// How long shutdown waits for connections to finish their close handshake.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` turns true, then closes them with
/// 320 connection-forced.
pub async fn serve(
    broker: Arc<Broker>,
    plain: Option<tokio::net::TcpListener>,
    tls: Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut loops = tokio::task::JoinSet::new();
    if let Some(l) = plain {
        loops.spawn(net::accept_loop(broker.clone(), l, None, shutdown.clone()));
    }
    if let Some((l, acceptor)) = tls {
        loops.spawn(net::accept_loop(
            broker.clone(),
            l,
            Some(acceptor),
            shutdown.clone(),
        ));
    }
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    loops.abort_all();
    broker.registry.close_all("broker shutdown");
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !broker.registry.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
