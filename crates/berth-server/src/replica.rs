//! The seam between the replicated log and the rest of the server.
//!
//! The master (offers, APIs, leader loops) only needs: propose a command
//! and get its apply result, read the applied state, know who leads, and
//! wake up when something was applied. [`Replica`] says exactly that, so the
//! master is tested against [`MemoryReplica`] (a one-node log that applies
//! at once) and runs in production on the Raft implementation in
//! `crate::raft`.

use crate::state::{ClusterState, Command, CommandResult};
use berth_api::cluster::MemberView;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who leads the cluster, as this server knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderInfo {
    /// This server is the leader (and may serve leader-only work).
    pub is_self: bool,
    pub leader_id: Option<u64>,
    /// The leader's API address (`host:port`), for redirects.
    pub leader_address: Option<String>,
    pub term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// Not the leader; the caller redirects to `leader_address` if known.
    #[error("not the leader")]
    NotLeader { leader_address: Option<String> },
    /// The write may or may not have been committed (leadership lost
    /// mid-way, timeout); the caller retries idempotently or reports it.
    #[error("write not confirmed: {0}")]
    Unconfirmed(String),
    #[error("{0}")]
    Other(String),
}

pub trait Replica: Send + Sync + 'static {
    /// Proposes `cmd`; resolves once it is committed and applied here.
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<CommandResult, ReplicaError>>;
    /// Proposes several commands at once (one log entry each, one round).
    fn write_many(
        &self,
        cmds: Vec<Command>,
    ) -> BoxFuture<'_, Result<Vec<CommandResult>, ReplicaError>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(cmds.len());
            for c in cmds {
                out.push(self.write(c).await?);
            }
            Ok(out)
        })
    }
    /// The applied state. Hold the read lock briefly.
    fn state(&self) -> Arc<RwLock<ClusterState>>;
    fn leader(&self) -> LeaderInfo;
    /// Changes of leadership (the master starts and stops its leader loops).
    fn watch_leader(&self) -> watch::Receiver<LeaderInfo>;
    /// The last applied log index, bumped after every apply.
    fn watch_applied(&self) -> watch::Receiver<u64>;
    /// Confirms leadership with a quorum before a linearizable read.
    fn ensure_linearizable(&self) -> BoxFuture<'_, Result<(), ReplicaError>>;
    fn members(&self) -> BoxFuture<'_, Result<Vec<MemberView>, ReplicaError>>;
}

/// A single-node, in-memory log for tests of everything above Raft.
pub struct MemoryReplica {
    state: Arc<RwLock<ClusterState>>,
    index: Mutex<u64>,
    leader_tx: watch::Sender<LeaderInfo>,
    applied_tx: watch::Sender<u64>,
    address: String,
}

impl MemoryReplica {
    pub fn new(address: &str) -> Arc<Self> {
        let leader = LeaderInfo {
            is_self: true,
            leader_id: Some(1),
            leader_address: Some(address.to_string()),
            term: 1,
        };
        Arc::new(Self {
            state: Arc::new(RwLock::new(ClusterState::default())),
            index: Mutex::new(0),
            leader_tx: watch::channel(leader).0,
            applied_tx: watch::channel(0).0,
            address: address.to_string(),
        })
    }

    /// Simulates losing or gaining leadership.
    pub fn set_leader(&self, info: LeaderInfo) {
        self.leader_tx.send_replace(info);
    }
}

impl Replica for MemoryReplica {
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<CommandResult, ReplicaError>> {
        Box::pin(async move {
            let leader = self.leader_tx.borrow().clone();
            if !leader.is_self {
                return Err(ReplicaError::NotLeader {
                    leader_address: leader.leader_address,
                });
            }
            let idx = {
                let mut i = self
                    .index
                    .lock()
                    .map_err(|e| ReplicaError::Other(e.to_string()))?;
                *i += 1;
                *i
            };
            let res = self
                .state
                .write()
                .map_err(|e| ReplicaError::Other(e.to_string()))?
                .apply(idx, &cmd);
            self.applied_tx.send_replace(idx);
            Ok(res)
        })
    }

    fn state(&self) -> Arc<RwLock<ClusterState>> {
        self.state.clone()
    }

    fn leader(&self) -> LeaderInfo {
        self.leader_tx.borrow().clone()
    }

    fn watch_leader(&self) -> watch::Receiver<LeaderInfo> {
        self.leader_tx.subscribe()
    }

    fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    fn ensure_linearizable(&self) -> BoxFuture<'_, Result<(), ReplicaError>> {
        Box::pin(async { Ok(()) })
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<MemberView>, ReplicaError>> {
        Box::pin(async move {
            Ok(vec![MemberView {
                id: 1,
                address: self.address.clone(),
                role: "leader".into(),
                term: 1,
                last_log_index: *self.applied_tx.borrow(),
                voter: true,
            }])
        })
    }
}
