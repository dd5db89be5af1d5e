//! Raft replication of the cluster state with openraft, its log in redb.
//!
//! - [`log_store`]: the Raft log, vote and commit pointer in one redb file,
//!   fsynced on every append so an acknowledged write survives `kill -9`.
//! - [`state_machine`]: the in-memory [`ClusterState`](crate::state::ClusterState)
//!   plus snapshots written atomically next to the log; a restart loads the
//!   latest snapshot and openraft replays the log after it.
//! - [`network`]: HTTP/1.1 JSON between servers, with timeouts so a dead peer
//!   never stalls replication.
//! - [`http`]: the routes peers and operators call (`/raft/*`,
//!   `/v1/cluster/join`, `/v1/cluster/leave`).
//! - [`replica`]: [`RaftReplica`], the [`Replica`](crate::replica::Replica)
//!   the rest of the server uses, and cluster formation ([`bootstrap`]).

mod bootstrap;
mod config;
mod http;
mod log_store;
mod network;
mod replica;
mod state_machine;

#[cfg(test)]
mod tests;

use crate::state::{CommandResult, VersionedCommand};
use std::io::Cursor;

pub use config::{node_id_for, RaftConfig};
pub use http::{LeaveRequest, RaftInfo};
pub use replica::RaftReplica;

openraft::declare_raft_types!(
    /// openraft's types for berth: log entries carry [`VersionedCommand`]s
    /// and apply to [`CommandResult`]s; nodes are known by their API address.
    pub TypeConfig:
        D = VersionedCommand,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("invalid raft config: {0}")]
    Config(String),
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("node id file {path}: {message}")]
    NodeId { path: String, message: String },
    #[error("raft log {path}: {message}")]
    Log { path: String, message: String },
    #[error("snapshot {path}: {message}")]
    Snapshot { path: String, message: String },
    #[error("cannot start raft node {id}: {message}")]
    Start { id: u64, message: String },
}
