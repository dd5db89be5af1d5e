//! Live connections and channels, for listings, the management API and
//! closing a connection by name.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::shared::ConnShared;

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
    /// "starting", "running", "blocking" (alarm on, not published since), "blocked", "closing"
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
pub struct Registry {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            next_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
        }
    }
}

impl Registry {
    /// A fresh connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register(&self, conn: Arc<ConnShared>) {
        self.conns.lock().insert(conn.id, conn);
    }

    pub fn unregister(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.conns.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<Arc<ConnShared>> {
        let mut v: Vec<_> = self.conns.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.snapshot()
            .into_iter()
            .map(|c| {
                let meta = c.meta.lock().clone();
                ConnectionInfo {
                    name: c.name.clone(),
                    id: c.id,
                    peer: c.peer.clone(),
                    user: meta.user,
                    vhost: meta.vhost,
                    tls: c.tls,
                    channels: c.channels.lock().len() as u32,
                    state: meta.state.to_string(),
                    frame_max: meta.frame_max,
                    heartbeat: meta.heartbeat,
                    recv_bytes: c.recv_bytes.load(Ordering::Relaxed),
                    send_bytes: c.send_bytes.load(Ordering::Relaxed),
                    connected_at_ms: c.connected_at_ms,
                    client_properties: meta.client_properties,
                }
            })
            .collect()
    }

    pub fn channels(&self) -> Vec<ChannelInfo> {
        let mut out = Vec::new();
        for c in self.snapshot() {
            let (user, vhost) = {
                let m = c.meta.lock();
                (m.user.clone(), m.vhost.clone())
            };
            for ch in c.channels.lock().iter() {
                let global = ch.prefetch_global.load(Ordering::Relaxed);
                let prefetch = if global > 0 {
                    global
                } else {
                    ch.prefetch_consumer.load(Ordering::Relaxed)
                };
                out.push(ChannelInfo {
                    connection: c.name.clone(),
                    number: ch.number,
                    user: user.clone(),
                    vhost: vhost.clone(),
                    consumers: ch.consumers.load(Ordering::Relaxed),
                    unacked: ch.unacked.load(Ordering::Relaxed),
                    prefetch: prefetch.min(u16::MAX as u32) as u16,
                    confirm: ch.confirm.load(Ordering::Relaxed),
                    transactional: ch.tx.load(Ordering::Relaxed),
                });
            }
        }
        out
    }

    /// Closes a connection by name with 320 connection-forced and `reason`; false if unknown.
    pub fn close(&self, name: &str, reason: &str) -> bool {
        let found = self.conns.lock().values().find(|c| c.name == name).cloned();
        match found {
            Some(c) => {
                c.force_close(reason);
                true
            }
            None => false,
        }
    }

    /// Asks every connection to close with 320 (broker shutdown).
    pub fn close_all(&self, reason: &str) {
        for c in self.snapshot() {
            c.force_close(reason);
        }
    }

    /// Totals for the overview: (connections, channels, consumers).
    pub fn totals(&self) -> (u64, u64, u64) {
        let (mut chans, mut consumers) = (0u64, 0u64);
        let snap = self.snapshot();
        for c in &snap {
            let chs = c.channels.lock();
            chans += chs.len() as u64;
            consumers += chs
                .iter()
                .map(|ch| ch.consumers.load(Ordering::Relaxed) as u64)
                .sum::<u64>();
        }
        (snap.len() as u64, chans, consumers)
    }
}
