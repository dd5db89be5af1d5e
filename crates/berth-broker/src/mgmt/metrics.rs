//! Prometheus metrics. Values are read from the broker on each scrape (a custom
//! collector), so there is no second copy of the counters to keep in step.
use std::fmt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Mgmt;
use crate::Broker;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry holding the broker's collector.
pub fn registry(broker: Arc<Broker>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(BrokerCollector(broker)));
    r
}

/// The metrics as OpenMetrics text.
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// GET /metrics (no authentication, like RabbitMQ's prometheus plugin).
pub async fn handler(State(state): State<Mgmt>) -> Response {
    let registry = state.metrics.clone();
    // Collecting walks every queue: keep it off the async workers.
    match tokio::task::spawn_blocking(move || render(&registry)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        _ => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response(),
    }
}

struct BrokerCollector(Arc<Broker>);

impl fmt::Debug for BrokerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BrokerCollector")
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let m = enc.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// `name` without `_total`: the encoder appends it to counters.
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

impl Collector for BrokerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let b = &self.0;
        let (connections, channels, consumers) = b.registry.totals();
        gauge(
            &mut enc,
            "berth_broker_connections",
            "Open AMQP connections",
            connections,
        )?;
        gauge(
            &mut enc,
            "berth_broker_channels",
            "Open AMQP channels",
            channels,
        )?;
        gauge(
            &mut enc,
            "berth_broker_consumers",
            "Consumers on all queues",
            consumers,
        )?;

        let queues = crate::admin::queues(b, None);
        gauge(
            &mut enc,
            "berth_broker_queues",
            "Queues in all vhosts",
            queues.len() as u64,
        )?;
        {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "berth_broker_queue_messages_ready",
                "Messages ready to be delivered, per queue",
                None,
                g.metric_type(),
            )?;
            for q in &queues {
                let labels = [("vhost", q.vhost.as_str()), ("queue", q.name.as_str())];
                let v = i64::try_from(q.messages_ready).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "berth_broker_queue_messages_unacked",
                "Messages delivered and not yet acknowledged, per queue",
                None,
                g.metric_type(),
            )?;
            for q in &queues {
                let labels = [("vhost", q.vhost.as_str()), ("queue", q.name.as_str())];
                let v = i64::try_from(q.messages_unacknowledged).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
            }
        }
        // Not the sum over `queues`: deleted queues must keep counting.
        let (published, delivered) = b.message_totals();
        counter(
            &mut enc,
            "berth_broker_messages_published",
            "Messages that entered queues (one per queue routed to)",
            published,
        )?;
        counter(
            &mut enc,
            "berth_broker_messages_delivered",
            "Messages delivered to consumers or fetched with basic.get",
            delivered,
        )?;

        let (rss, mem_limit, disk_free, _disk_limit) = b.flow.readings();
        gauge(
            &mut enc,
            "berth_broker_process_resident_memory_bytes",
            "Resident memory of the broker",
            rss,
        )?;
        gauge(
            &mut enc,
            "berth_broker_memory_limit_bytes",
            "Memory high watermark: publishers are blocked above it",
            mem_limit,
        )?;
        gauge(
            &mut enc,
            "berth_broker_disk_free_bytes",
            "Free bytes on the data directory's filesystem",
            disk_free,
        )?;
        gauge(
            &mut enc,
            "berth_broker_message_store_failed",
            "1 after a message store I/O error: persistent publishes are nacked until restart",
            u64::from(b.log.failed()),
        )?;
        {
            let alarm = b.flow.alarm();
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "berth_broker_alarm",
                "1 while a resource alarm blocks publishers",
                None,
                g.metric_type(),
            )?;
            for resource in ["memory", "disk"] {
                let v = i64::from(alarm == Some(resource));
                ConstGauge::new(v).encode(m.encode_family(&[("resource", resource)])?)?;
            }
        }
        Ok(())
    }
}
