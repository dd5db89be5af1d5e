//! The management HTTP API (RabbitMQ's `/api/...` shapes, HTTP basic auth with
//! users tagged administrator/management/monitoring) and Prometheus `/metrics`.
use std::sync::Arc;
use std::time::Duration;

use crate::admin::Rates;
use crate::Broker;

pub mod api;
mod messages;
pub mod metrics;

/// What every handler sees: the broker, the rate samples and the metrics registry.
#[derive(Clone)]
pub struct Mgmt {
    pub broker: Arc<Broker>,
    pub rates: Arc<Rates>,
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

impl Mgmt {
    pub fn new(broker: Arc<Broker>) -> Self {
        let metrics = Arc::new(metrics::registry(broker.clone()));
        Self {
            broker,
            rates: Arc::new(Rates::new()),
            metrics,
        }
    }
}

/// The whole router: `/api/...` and `/metrics`.
pub fn router(state: Mgmt) -> axum::Router {
    api::routes()
        .route("/metrics", axum::routing::get(metrics::handler))
        .with_state(state)
}

/// Serves the management API on `listener` until `shutdown` turns true. Also
/// samples message rates once a second while it runs.
pub async fn serve(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let state = Mgmt::new(broker);
    let sampler = {
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        // Sampling locks every queue briefly: keep it off the async workers.
                        let s = state.clone();
                        let _ = tokio::task::spawn_blocking(move || s.rates.sample(&s.broker)).await;
                    }
                    _ = async { let _ = shutdown.wait_for(|s| *s).await; } => break,
                }
            }
        })
    };
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await;
    sampler.abort();
    result.map_err(|e| anyhow::anyhow!("management API: {e}"))
}

#[cfg(test)]
mod tests;
