//! Read models for listings: `berth broker queues|exchanges|...`, the management
//! API and metrics share these.
use serde::Serialize;

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

pub fn queues(broker: &crate::Broker, vhost: Option<&str>) -> Vec<QueueInfo> {
    let _ = (broker, vhost);
    todo!("mgmt helper")
}

pub fn overview(broker: &crate::Broker) -> Overview {
    let _ = broker;
    todo!("mgmt helper")
}
