//! Broker settings (command-line flags of `berth broker`).
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Plain AMQP listener; `None` disables it.
    pub listen: Option<SocketAddr>,
    /// AMQPS listener with `cert` and `key` (PEM).
    pub tls_listen: Option<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Messages and metadata; `None`: nothing persists (tests, benchmarks of the transient path).
    pub data_dir: Option<PathBuf>,
    /// Management HTTP API and /metrics; `None` disables it.
    pub management: Option<SocketAddr>,
    /// RSS above this blocks publishers (RabbitMQ: 0.4 of RAM).
    pub memory_high_watermark: u64,
    /// Free disk below this blocks publishers (RabbitMQ: 50 MB).
    pub disk_free_limit: u64,
    pub frame_max: u32,
    pub channel_max: u16,
    /// Seconds proposed in connection.tune.
    pub heartbeat: u16,
    pub max_message_size: u64,
    /// Created with full permissions on `/` when the data dir is new (RabbitMQ's guest/guest,
    /// loopback only).
    pub default_user: (String, String),
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 5672))),
            tls_listen: None,
            cert: None,
            key: None,
            data_dir: None,
            management: None,
            memory_high_watermark: total_memory() * 2 / 5,
            disk_free_limit: 50_000_000,
            frame_max: berth_amqp::codec::DEFAULT_FRAME_MAX,
            channel_max: 2047,
            heartbeat: 60,
            max_message_size: 128 << 20,
            default_user: ("guest".to_string(), "guest".to_string()),
        }
    }
}

/// Physical memory from /proc/meminfo (1 GiB if unreadable).
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(1 << 30)
}
