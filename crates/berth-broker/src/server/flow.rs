//! Memory and disk alarms: publishers are blocked (connection.blocked) while
//! the broker's memory is above the high watermark or free disk is below the limit.
use std::sync::atomic::{AtomicU64, Ordering};

/// The broker-wide alarm state.
pub struct Flow {
    memory_limit: u64,
    disk_free_limit: u64,
    rss: AtomicU64,
    disk_free: AtomicU64,
    alarm: tokio::sync::watch::Sender<Option<&'static str>>,
}

impl Flow {
    /// `memory_limit` bytes of RSS; `disk_free_limit` bytes free on the data dir's filesystem.
    pub fn new(memory_limit: u64, disk_free_limit: u64) -> Self {
        Self {
            memory_limit,
            disk_free_limit,
            rss: AtomicU64::new(0),
            disk_free: AtomicU64::new(u64::MAX),
            alarm: tokio::sync::watch::Sender::new(None),
        }
    }

    /// Whether publishing is currently blocked, and why ("memory", "disk").
    pub fn alarm(&self) -> Option<&'static str> {
        *self.alarm.borrow()
    }

    /// Wakes whenever the alarm changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<&'static str>> {
        self.alarm.subscribe()
    }

    /// Re-measures memory (process RSS) and disk; called periodically by the broker.
    pub fn measure(&self, data_dir: &std::path::Path) {
        if let Some(rss) = resident_bytes() {
            self.rss.store(rss, Ordering::Relaxed);
        }
        if let Ok(st) = nix::sys::statvfs::statvfs(data_dir) {
            // The casts matter on 32-bit targets.
            #[allow(clippy::unnecessary_cast)]
            let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
            self.disk_free.store(free, Ordering::Relaxed);
        }
        self.update();
    }

    /// Sets readings directly (tests; brokers without a data dir).
    pub fn set_readings(&self, rss: u64, disk_free: u64) {
        self.rss.store(rss, Ordering::Relaxed);
        self.disk_free.store(disk_free, Ordering::Relaxed);
        self.update();
    }

    fn update(&self) {
        let rss = self.rss.load(Ordering::Relaxed);
        let disk = self.disk_free.load(Ordering::Relaxed);
        let now = if self.memory_limit > 0 && rss > self.memory_limit {
            Some("memory")
        } else if disk < self.disk_free_limit {
            Some("disk")
        } else {
            None
        };
        self.alarm.send_if_modified(|cur| {
            if *cur != now {
                if let Some(what) = now {
                    tracing::warn!(
                        alarm = what,
                        rss,
                        disk_free = disk,
                        "resource alarm set: publishers blocked"
                    );
                } else {
                    tracing::info!("resource alarm cleared");
                }
                *cur = now;
                true
            } else {
                false
            }
        });
    }

    /// Last measurement, for metrics: (rss bytes, memory limit, disk free, disk limit).
    pub fn readings(&self) -> (u64, u64, u64, u64) {
        (
            self.rss.load(Ordering::Relaxed),
            self.memory_limit,
            self.disk_free.load(Ordering::Relaxed),
            self.disk_free_limit,
        )
    }
}

/// The text of connection.blocked for an alarm.
pub fn blocked_reason(alarm: &str) -> &'static str {
    match alarm {
        "disk" => "low on disk",
        _ => "low on memory",
    }
}

/// Resident set size: VmRSS of /proc/self/status, in kB, so no page-size lookup
/// (sysconf) is needed as it would be for /proc/self/statm's page counts.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarm_follows_readings() {
        let f = Flow::new(1000, 100);
        let mut rx = f.subscribe();
        assert_eq!(f.alarm(), None);
        f.set_readings(2000, 1000);
        assert_eq!(f.alarm(), Some("memory"));
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        f.set_readings(10, 50);
        assert_eq!(f.alarm(), Some("disk"));
        f.set_readings(10, 500);
        assert_eq!(f.alarm(), None);
        assert_eq!(f.readings(), (10, 1000, 500, 100));
    }

    #[test]
    fn measure_reads_proc() {
        let f = Flow::new(u64::MAX, 0);
        f.measure(std::path::Path::new("/"));
        let (rss, _, disk, _) = f.readings();
        assert!(rss > 0);
        assert!(disk > 0 && disk < u64::MAX);
        assert_eq!(f.alarm(), None);
    }
}
