//! How a server takes part in the Raft group.

use super::RaftError;
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// Holds `raft.redb` (log, vote), `snapshot.bin` and `node-id`.
    pub data_dir: PathBuf,
    /// Raft node id; by default derived from `advertise` ([`node_id_for`]).
    pub id: Option<u64>,
    /// `host:port` other servers and clients use to reach this server.
    pub advertise: String,
    /// How many servers form a new cluster: 1, 3 or 5.
    pub bootstrap_expect: usize,
    /// Addresses (`host:port`) of other servers, to form or join a cluster.
    pub join: Vec<String>,
    /// Sent as `Authorization: Bearer TOKEN` on every request to a peer.
    pub token: Option<String>,
    /// This server's certificate (from the cluster CA of `token`): with
    /// it, peers are called over HTTPS presenting it, as the peers' Raft
    /// routes require; without it, over plain HTTP.
    pub identity: Option<berth_tls::Identity>,
    pub heartbeat_ms: u64,
    /// Election timeout range (min, max) in milliseconds.
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
}

impl RaftConfig {
    /// A config with the defaults: a single-server cluster.
    pub fn new(data_dir: impl Into<PathBuf>, advertise: impl Into<String>) -> Self {
        Self {
            data_dir: data_dir.into(),
            id: None,
            advertise: advertise.into(),
            bootstrap_expect: 1,
            join: Vec::new(),
            token: None,
            identity: None,
            heartbeat_ms: 200,
            election_timeout_ms: (1000, 2000),
            snapshot_every: 10_000,
        }
    }

    pub fn validate(&self) -> Result<(), RaftError> {
        let bad = |m: String| Err(RaftError::Config(m));
        if self.advertise.is_empty() || !self.advertise.contains(':') {
            return bad(format!("advertise {:?} must be host:port", self.advertise));
        }
        if ![1, 3, 5].contains(&self.bootstrap_expect) {
            return bad(format!(
                "bootstrap_expect is {}, must be 1, 3 or 5",
                self.bootstrap_expect
            ));
        }
        if self.id == Some(0) {
            return bad("id must not be 0".into());
        }
        let (min, max) = self.election_timeout_ms;
        if min >= max {
            return bad(format!(
                "election timeout min {min} ms must be below max {max} ms"
            ));
        }
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= min {
            return bad(format!(
                "heartbeat {} ms must be above 0 and below the election timeout {min} ms",
                self.heartbeat_ms
            ));
        }
        if self.snapshot_every == 0 {
            return bad("snapshot_every must be above 0".into());
        }
        if self.identity.is_some() && self.token.is_none() {
            return bad("a server certificate needs the cluster token it was issued under".into());
        }
        Ok(())
    }

    /// The configured id, or the one derived from `advertise`.
    pub fn node_id(&self) -> u64 {
        self.id.unwrap_or_else(|| node_id_for(&self.advertise))
    }
}

/// A stable node id from an address: the first 8 bytes of its sha256,
/// masked to 63 bits (so it survives JSON tools that use i64), never 0.
pub fn node_id_for(advertise: &str) -> u64 {
    let digest = Sha256::digest(advertise.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    let id = u64::from_be_bytes(b) & (u64::MAX >> 1);
    if id == 0 {
        1
    } else {
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_nonzero() {
        let a = node_id_for("127.0.0.1:7000");
        assert_eq!(a, node_id_for("127.0.0.1:7000"));
        assert_ne!(a, node_id_for("127.0.0.1:7001"));
        assert!(a > 0 && a < (1 << 63));
    }

    #[test]
    fn validate_explains() {
        let mut c = RaftConfig::new("/tmp/x", "127.0.0.1:1");
        assert!(c.validate().is_ok());
        c.bootstrap_expect = 2;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("bootstrap_expect"));
        c.bootstrap_expect = 3;
        c.heartbeat_ms = 5000;
        assert!(c.validate().unwrap_err().to_string().contains("heartbeat"));
        c.heartbeat_ms = 100;
        c.advertise = "nohost".into();
        assert!(c.validate().unwrap_err().to_string().contains("nohost"));
    }
}
