//! The management HTTP API (RabbitMQ's `/api/...` shapes, HTTP basic auth with
//! users tagged administrator/management/monitoring) and Prometheus `/metrics`.
use std::sync::Arc;

use crate::Broker;

pub mod api;
pub mod metrics;

/// Serves the management API on `listener` until `shutdown` turns true.
pub async fn serve(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let _ = (broker, listener, shutdown);
    todo!("mgmt helper")
}
