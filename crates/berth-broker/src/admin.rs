//! Read models for listings: `berth broker queues|exchanges|...`, the management
//! API and metrics share these.
use std::collections::HashMap;

use parking_lot::Mutex;
use serde::Serialize;

use crate::definitions::{PermissionDef, PolicyDef, UserDef};
use crate::model::{BindingInfo, ExchangeInfo};
use crate::server::registry::{ChannelInfo, ConnectionInfo};
use crate::Broker;

/// One queue row.
#[derive(Debug, Clone, Serialize)]
pub struct QueueInfo {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub exclusive: bool,
    pub arguments: crate::definitions::JsonMap,
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub message_bytes: u64,
    pub consumers: u64,
    /// Monotonic counts since the queue was declared (or the broker started).
    pub published_total: u64,
    pub delivered_total: u64,
    /// Per second, over the last few seconds.
    pub publish_rate: f64,
    pub deliver_rate: f64,
}

/// The overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub version: String,
    pub uptime_ms: u64,
    pub connections: u64,
    pub channels: u64,
    pub consumers: u64,
    pub queues: u64,
    pub exchanges: u64,
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    pub memory_used: u64,
    pub memory_limit: u64,
    pub disk_free: u64,
    pub disk_free_limit: u64,
    pub alarms: Vec<String>,
}

/// An exchange row with its vhost (the model's row does not carry it).
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeRow {
    pub vhost: String,
    #[serde(flatten)]
    pub exchange: ExchangeInfo,
}

/// A binding row with its vhost.
#[derive(Debug, Clone, Serialize)]
pub struct BindingRow {
    pub vhost: String,
    #[serde(flatten)]
    pub binding: BindingInfo,
}

/// A vhost row with its message totals.
#[derive(Debug, Clone, Serialize)]
pub struct VhostInfo {
    pub name: String,
    pub queues: u64,
    pub messages: u64,
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
}

/// Publish and deliver rates, computed from the last two samples of the
/// queues' monotonic counters. The management server samples once a second.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Mutex<(Option<Sample>, Option<Sample>)>,
}

#[derive(Debug, Clone, Default)]
struct Sample {
    at_ms: u64,
    /// (vhost, queue) -> (published_total, delivered_total)
    queues: HashMap<(String, String), (u64, u64)>,
}

impl Rates {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the counters of every queue now.
    pub fn sample(&self, broker: &Broker) {
        self.record(broker, crate::types::now_ms());
    }

    fn record(&self, broker: &Broker, now_ms: u64) {
        let mut queues = HashMap::new();
        for vhost in broker.vhosts() {
            for q in vhost.queues() {
                let s = q.stats();
                queues.insert(
                    (q.vhost.to_string(), q.name.to_string()),
                    (s.published_total, s.delivered_total),
                );
            }
        }
        let mut samples = self.samples.lock();
        let last = samples.1.take();
        *samples = (
            last,
            Some(Sample {
                at_ms: now_ms,
                queues,
            }),
        );
    }

    /// Messages per second (published, delivered) into/out of one queue.
    pub fn queue(&self, vhost: &str, queue: &str) -> (f64, f64) {
        let samples = self.samples.lock();
        let (Some(a), Some(b)) = (&samples.0, &samples.1) else {
            return (0.0, 0.0);
        };
        let key = (vhost.to_string(), queue.to_string());
        match (a.queues.get(&key), b.queues.get(&key)) {
            (Some(x), Some(y)) => per_second(*x, *y, a.at_ms, b.at_ms),
            _ => (0.0, 0.0),
        }
    }

    /// Broker-wide (published, delivered) per second: the sum over queues
    /// present in both samples.
    pub fn totals(&self) -> (f64, f64) {
        let samples = self.samples.lock();
        let (Some(a), Some(b)) = (&samples.0, &samples.1) else {
            return (0.0, 0.0);
        };
        let mut sum = (0.0, 0.0);
        for (key, y) in &b.queues {
            if let Some(x) = a.queues.get(key) {
                let (p, d) = per_second(*x, *y, a.at_ms, b.at_ms);
                sum.0 += p;
                sum.1 += d;
            }
        }
        sum
    }
}

fn per_second(x: (u64, u64), y: (u64, u64), t0: u64, t1: u64) -> (f64, f64) {
    if t1 <= t0 {
        return (0.0, 0.0);
    }
    let secs = (t1 - t0) as f64 / 1000.0;
    (
        y.0.saturating_sub(x.0) as f64 / secs,
        y.1.saturating_sub(x.1) as f64 / secs,
    )
}

/// Records a rate sample (the management server calls this every second).
pub fn sample(broker: &Broker, rates: &Rates) {
    rates.sample(broker);
}

/// Queues of one vhost (or all), without rates.
pub fn queues(broker: &Broker, vhost: Option<&str>) -> Vec<QueueInfo> {
    queues_with_rates(broker, vhost, None)
}

/// Queues of one vhost (or all), with rates from `rates` when given.
pub fn queues_with_rates(
    broker: &Broker,
    vhost: Option<&str>,
    rates: Option<&Rates>,
) -> Vec<QueueInfo> {
    let mut out = Vec::new();
    for v in selected_vhosts(broker, vhost) {
        for q in v.queues() {
            out.push(queue_info(&q, rates));
        }
    }
    out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    out
}

/// One queue's row.
pub fn queue_info(q: &crate::model::Queue, rates: Option<&Rates>) -> QueueInfo {
    let s = q.stats();
    let (publish_rate, deliver_rate) = rates
        .map(|r| r.queue(&q.vhost, &q.name))
        .unwrap_or((0.0, 0.0));
    QueueInfo {
        name: q.name.to_string(),
        vhost: q.vhost.to_string(),
        durable: q.durable,
        auto_delete: q.auto_delete,
        exclusive: q.exclusive_owner.is_some(),
        arguments: crate::definitions::field_table_to_json(&q.arguments),
        messages: s.messages_ready + s.messages_unacked,
        messages_ready: s.messages_ready,
        messages_unacknowledged: s.messages_unacked,
        message_bytes: s.message_bytes,
        consumers: s.consumers,
        published_total: s.published_total,
        delivered_total: s.delivered_total,
        publish_rate,
        deliver_rate,
    }
}

/// Vhosts named `vhost` (none if it does not exist) or all.
fn selected_vhosts(
    broker: &Broker,
    vhost: Option<&str>,
) -> Vec<std::sync::Arc<crate::model::Vhost>> {
    match vhost {
        Some(name) => broker.vhost(name).into_iter().collect(),
        None => broker.vhosts(),
    }
}

pub fn exchanges(broker: &Broker, vhost: Option<&str>) -> Vec<ExchangeRow> {
    let mut out = Vec::new();
    for v in selected_vhosts(broker, vhost) {
        for e in v.exchanges() {
            out.push(ExchangeRow {
                vhost: v.name.to_string(),
                exchange: e,
            });
        }
    }
    out.sort_by(|a, b| (&a.vhost, &a.exchange.name).cmp(&(&b.vhost, &b.exchange.name)));
    out
}

pub fn bindings(broker: &Broker, vhost: Option<&str>) -> Vec<BindingRow> {
    let mut out = Vec::new();
    for v in selected_vhosts(broker, vhost) {
        for b in v.bindings() {
            out.push(BindingRow {
                vhost: v.name.to_string(),
                binding: b,
            });
        }
    }
    out
}

pub fn connections(broker: &Broker, vhost: Option<&str>) -> Vec<ConnectionInfo> {
    let mut out: Vec<ConnectionInfo> = broker
        .registry
        .connections()
        .into_iter()
        .filter(|c| vhost.is_none_or(|v| c.vhost == v))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn channels(broker: &Broker, vhost: Option<&str>) -> Vec<ChannelInfo> {
    let mut out: Vec<ChannelInfo> = broker
        .registry
        .channels()
        .into_iter()
        .filter(|c| vhost.is_none_or(|v| c.vhost == v))
        .collect();
    out.sort_by(|a, b| (&a.connection, a.number).cmp(&(&b.connection, b.number)));
    out
}

pub fn users(broker: &Broker) -> Vec<UserDef> {
    let mut out = broker.users.list();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

pub fn vhosts(broker: &Broker) -> Vec<VhostInfo> {
    broker
        .vhosts()
        .into_iter()
        .map(|v| {
            let mut info = VhostInfo {
                name: v.name.to_string(),
                queues: 0,
                messages: 0,
                messages_ready: 0,
                messages_unacknowledged: 0,
            };
            for q in v.queues() {
                let s = q.stats();
                info.queues += 1;
                info.messages_ready += s.messages_ready;
                info.messages_unacknowledged += s.messages_unacked;
            }
            info.messages = info.messages_ready + info.messages_unacknowledged;
            info
        })
        .collect()
}

pub fn permissions(broker: &Broker, vhost: Option<&str>) -> Vec<PermissionDef> {
    let mut out: Vec<PermissionDef> = broker
        .users
        .permissions()
        .into_iter()
        .filter(|p| vhost.is_none_or(|v| p.vhost == v))
        .collect();
    out.sort_by(|a, b| (&a.vhost, &a.user).cmp(&(&b.vhost, &b.user)));
    out
}

pub fn policies(broker: &Broker, vhost: Option<&str>) -> Vec<PolicyDef> {
    let mut out = Vec::new();
    for v in selected_vhosts(broker, vhost) {
        out.extend(v.policies());
    }
    out.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    out
}

pub fn overview(broker: &Broker) -> Overview {
    let (connections, channels, consumers) = broker.registry.totals();
    let (memory_used, memory_limit, disk_free, disk_free_limit) = broker.flow.readings();
    let mut o = Overview {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_ms: crate::types::now_ms().saturating_sub(broker.started_at_ms),
        connections,
        channels,
        consumers,
        queues: 0,
        exchanges: 0,
        messages: 0,
        messages_ready: 0,
        messages_unacknowledged: 0,
        memory_used,
        memory_limit,
        disk_free,
        disk_free_limit,
        alarms: broker.flow.alarm().into_iter().map(String::from).collect(),
    };
    for v in broker.vhosts() {
        o.exchanges += v.exchanges().len() as u64;
        for q in v.queues() {
            let s = q.stats();
            o.queues += 1;
            o.messages_ready += s.messages_ready;
            o.messages_unacknowledged += s.messages_unacked;
        }
    }
    o.messages = o.messages_ready + o.messages_unacknowledged;
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_two_samples() {
        assert_eq!(per_second((10, 5), (30, 15), 1_000, 3_000), (10.0, 5.0));
        // Counters that went backwards (queue re-created) give 0, not a huge number.
        assert_eq!(per_second((30, 15), (10, 5), 1_000, 2_000), (0.0, 0.0));
        assert_eq!(per_second((0, 0), (10, 5), 1_000, 1_000), (0.0, 0.0));
    }

    #[test]
    fn rates_follow_publishes() {
        let broker = Broker::in_memory();
        let vhost = broker.vhost("/").unwrap();
        let decl = crate::model::QueueDecl {
            name: "r".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        };
        vhost.declare_queue(decl, 1).unwrap();
        let rates = Rates::new();
        rates.record(&broker, 10_000);
        for _ in 0..20 {
            let m = crate::types::Message {
                id: broker.log.next_id(),
                exchange: String::new(),
                routing_key: "r".into(),
                properties: Default::default(),
                body: bytes::Bytes::from_static(b"x"),
            };
            vhost.publish("", m, 10_000).unwrap();
        }
        rates.record(&broker, 12_000);
        assert_eq!(rates.queue("/", "r"), (10.0, 0.0));
        assert_eq!(rates.totals(), (10.0, 0.0));
        let q = queues_with_rates(&broker, Some("/"), Some(&rates));
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].messages, q[0].messages_ready, q[0].published_total),
            (20, 20, 20)
        );
        assert_eq!(q[0].publish_rate, 10.0);
        let o = overview(&broker);
        assert_eq!((o.queues, o.messages), (1, 20));
        assert!(o.exchanges >= 6);
        assert_eq!(broker.message_totals(), (20, 0));
        assert!(queues(&broker, Some("nope")).is_empty());
    }

    #[test]
    fn message_totals_survive_queue_and_vhost_deletion() {
        let broker = Broker::in_memory();
        let v = broker.add_vhost("other").unwrap();
        let decl = |name: &str| crate::model::QueueDecl {
            name: name.into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: Default::default(),
        };
        let root = broker.vhost("/").unwrap();
        root.declare_queue(decl("a"), 1).unwrap();
        v.declare_queue(decl("b"), 1).unwrap();
        let msg = |rk: &str| crate::types::Message {
            id: broker.log.next_id(),
            exchange: String::new(),
            routing_key: rk.into(),
            properties: Default::default(),
            body: bytes::Bytes::from_static(b"x"),
        };
        for _ in 0..3 {
            root.publish("", msg("a"), 0).unwrap();
            v.publish("", msg("b"), 0).unwrap();
        }
        v.queue_for("b", 1).unwrap().get(true, 0);
        assert_eq!(broker.message_totals(), (6, 1));
        root.delete_queue("a", false, false, 1).unwrap();
        assert_eq!(broker.message_totals(), (6, 1), "queue deleted");
        broker.delete_vhost("other").unwrap();
        assert_eq!(broker.message_totals(), (6, 1), "vhost deleted");
        // A vhost of the same name starts afresh, on top.
        let v = broker.add_vhost("other").unwrap();
        v.declare_queue(decl("b"), 1).unwrap();
        v.publish("", msg("b"), 0).unwrap();
        assert_eq!(broker.message_totals(), (7, 1));
        // The Prometheus counters read the same totals.
        let text =
            crate::mgmt::metrics::render(&crate::mgmt::metrics::registry(broker.clone())).unwrap();
        assert!(
            text.contains("berth_broker_messages_published_total 7\n"),
            "{text}"
        );
        assert!(text.contains("berth_broker_messages_delivered_total 1\n"));
    }

    #[test]
    fn rates_empty_before_two_samples() {
        let r = Rates::new();
        assert_eq!(r.queue("/", "q"), (0.0, 0.0));
        assert_eq!(r.totals(), (0.0, 0.0));
    }
}
