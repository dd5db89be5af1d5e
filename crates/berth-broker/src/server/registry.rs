//! Live connections and channels, for listings, the management API and
//! closing a connection by name.

/// A connection as listed by `berth broker connections` and `/api/connections`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionInfo {
    /// RabbitMQ's style: "127.0.0.1:50000 -> 127.0.0.1:5672".
    pub name: String,
    pub id: u64,
    pub peer: String,
    pub user: String,
    pub vhost: String,
    pub tls: bool,
    pub channels: u32,
    /// "starting", "running", "blocked", "closing"
    pub state: String,
    pub frame_max: u32,
    pub heartbeat: u16,
    pub recv_bytes: u64,
    pub send_bytes: u64,
    pub connected_at_ms: u64,
    pub client_properties: crate::definitions::JsonMap,
}

/// A channel as listed by `/api/channels`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelInfo {
    pub connection: String,
    pub number: u16,
    pub user: String,
    pub vhost: String,
    pub consumers: u32,
    pub unacked: u32,
    pub prefetch: u16,
    pub confirm: bool,
    pub transactional: bool,
}

/// The registry.
pub struct Registry {}

impl Default for Registry {
    fn default() -> Self {
        todo!("server helper")
    }
}

impl Registry {
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        todo!("server helper")
    }

    pub fn channels(&self) -> Vec<ChannelInfo> {
        todo!("server helper")
    }

    /// Closes a connection by name with 320 connection-forced and `reason`; false if unknown.
    pub fn close(&self, name: &str, reason: &str) -> bool {
        let _ = (name, reason);
        todo!("server helper")
    }

    /// Totals for the overview: (connections, channels, consumers).
    pub fn totals(&self) -> (u64, u64, u64) {
        todo!("server helper")
    }
}
