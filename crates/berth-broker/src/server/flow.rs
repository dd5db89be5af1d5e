//! Memory and disk alarms: publishers are blocked (connection.blocked) while
//! the broker's memory is above the high watermark or free disk is below the limit.

/// The broker-wide alarm state.
pub struct Flow {}

impl Flow {
    /// `memory_limit` bytes of RSS; `disk_free_limit` bytes free on the data dir's filesystem.
    pub fn new(memory_limit: u64, disk_free_limit: u64) -> Self {
        let _ = (memory_limit, disk_free_limit);
        todo!("server helper")
    }

    /// Whether publishing is currently blocked, and why ("memory", "disk").
    pub fn alarm(&self) -> Option<&'static str> {
        todo!("server helper")
    }

    /// Wakes whenever the alarm changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<&'static str>> {
        todo!("server helper")
    }

    /// Re-measures memory (process RSS) and disk; called periodically by the broker.
    pub fn measure(&self, data_dir: &std::path::Path) {
        let _ = data_dir;
        todo!("server helper")
    }

    /// Last measurement, for metrics: (rss bytes, memory limit, disk free, disk limit).
    pub fn readings(&self) -> (u64, u64, u64, u64) {
        todo!("server helper")
    }
}
