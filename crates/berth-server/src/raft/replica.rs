//! [`RaftReplica`]: the [`Replica`] the server runs on in production.

use super::bootstrap;
use super::config::RaftConfig;
use super::log_store::LogStore;
use super::network::{NetworkFactory, PeerClient};
use super::state_machine::{Shared, StateMachineStore};
use super::{Raft, RaftError};
use crate::replica::{BoxFuture, LeaderInfo, Replica, ReplicaError};
use crate::state::{ClusterState, Command, CommandResult, VersionedCommand};
use berth_api::cluster::{JoinRequest, MemberView};
use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, RaftError as OrError,
};
use openraft::{BasicNode, ChangeMembers, RaftMetrics, ServerState, SnapshotPolicy};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

type Metrics = RaftMetrics<u64, BasicNode>;

pub struct RaftReplica {
    id: u64,
    advertise: String,
    pub(super) raft: Raft,
    pub(super) client: PeerClient,
    shared: Arc<Shared>,
    leader_tx: Arc<watch::Sender<LeaderInfo>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// How long a write or read barrier may wait before it is reported
    /// unconfirmed (a leader cut off from its quorum never hears back).
    pub(super) op_timeout: Duration,
    /// How long a join may take (the new server must catch up first).
    pub(super) join_timeout: Duration,
}

impl RaftReplica {
    /// Opens the log and the latest snapshot in `cfg.data_dir`, starts
    /// Raft, and starts forming or joining the cluster in the background
    /// (peers must be able to reach [`RaftReplica::routes`] for that, so
    /// this returns before the cluster exists).
    pub async fn start(cfg: RaftConfig) -> Result<Arc<RaftReplica>, RaftError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|source| RaftError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source,
        })?;
        let id = resolve_id(&cfg)?;
        let log_path = cfg.data_dir.join("raft.redb");
        let dir = cfg.data_dir.clone();
        let (log, sm) = tokio::task::spawn_blocking(move || -> Result<_, RaftError> {
            Ok((LogStore::open(&log_path)?, StateMachineStore::open(&dir)?))
        })
        .await
        .map_err(|e| RaftError::Start {
            id,
            message: e.to_string(),
        })??;
        let shared = sm.shared();

        let (emin, emax) = cfg.election_timeout_ms;
        let config = openraft::Config {
            cluster_name: "berth".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: emin,
            election_timeout_max: emax,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            // Keep some log behind a snapshot so a briefly lagging
            // follower catches up from the log rather than a snapshot.
            max_in_snapshot_log_to_keep: (cfg.snapshot_every / 2).min(1000),
            // Chunks are raw bytes (see network.rs); each one, and the
            // install at the end, may take a while on a large state.
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftError::Config(e.to_string()))?;
        let client = PeerClient::for_config(&cfg)?;
        let network = NetworkFactory {
            id,
            client: client.clone(),
        };
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| RaftError::Start {
                id,
                message: e.to_string(),
            })?;
        tracing::info!(id, advertise = %cfg.advertise, dir = %cfg.data_dir.display(), "raft started");

        let leader_tx = Arc::new(watch::channel(LeaderInfo::default()).0);
        let watcher = tokio::spawn(watch_metrics(raft.clone(), id, leader_tx.clone()));
        let boot = tokio::spawn(bootstrap::run(
            raft.clone(),
            id,
            cfg.clone(),
            client.clone(),
        ));
        let op_timeout = Duration::from_millis(emax.saturating_mul(5)).max(Duration::from_secs(5));
        Ok(Arc::new(RaftReplica {
            id,
            advertise: cfg.advertise.clone(),
            raft,
            client,
            shared,
            leader_tx,
            tasks: Mutex::new(vec![watcher, boot]),
            op_timeout,
            join_timeout: Duration::from_secs(120),
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// The underlying openraft handle (metrics, manual snapshots).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops Raft and the background tasks; the data dir can then be
    /// opened again.
    pub async fn shutdown(&self) {
        self.abort_tasks();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(id = self.id, error = %e, "raft shutdown");
        }
        self.leader_tx.send_replace(LeaderInfo::default());
    }

    fn abort_tasks(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
    }

    pub(super) fn metrics(&self) -> Metrics {
        self.raft.metrics().borrow().clone()
    }

    /// The address of `id` in the current membership.
    fn address_of(&self, m: &Metrics, id: u64) -> Option<String> {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    fn not_leader(&self, f: &ForwardToLeader<u64, BasicNode>) -> ReplicaError {
        let leader_address = f.leader_node.as_ref().map(|n| n.addr.clone()).or_else(|| {
            let m = self.metrics();
            f.leader_id.and_then(|l| self.address_of(&m, l))
        });
        ReplicaError::NotLeader { leader_address }
    }

    fn write_error(&self, e: OrError<u64, ClientWriteError<u64, BasicNode>>) -> ReplicaError {
        match e {
            OrError::APIError(ClientWriteError::ForwardToLeader(f)) => self.not_leader(&f),
            OrError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                ReplicaError::Other(c.to_string())
            }
            OrError::Fatal(f) => fatal(f),
        }
    }

    async fn propose(&self, vc: VersionedCommand) -> Result<CommandResult, ReplicaError> {
        match tokio::time::timeout(self.op_timeout, self.raft.client_write(vc)).await {
            Err(_) => Err(ReplicaError::Unconfirmed(format!(
                "no commit within {} ms",
                self.op_timeout.as_millis()
            ))),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(e)) => Err(self.write_error(e)),
        }
    }

    /// Proposes every command before waiting for any, so they share
    /// appends and replication rounds, and keep their order in the log.
    async fn propose_many(&self, cmds: Vec<Command>) -> Result<Vec<CommandResult>, ReplicaError> {
        let mut rxs = Vec::with_capacity(cmds.len());
        for c in cmds {
            let rx = self
                .raft
                .client_write_ff(VersionedCommand::from(c))
                .await
                .map_err(fatal)?;
            rxs.push(rx);
        }
        let deadline = tokio::time::Instant::now() + self.op_timeout;
        let mut out = Vec::with_capacity(rxs.len());
        for rx in rxs {
            match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => {
                    return Err(ReplicaError::Unconfirmed(format!(
                        "no commit within {} ms",
                        self.op_timeout.as_millis()
                    )))
                }
                Ok(Err(_)) => {
                    return Err(ReplicaError::Unconfirmed(
                        "raft dropped the write (leadership lost or shutting down)".into(),
                    ))
                }
                Ok(Ok(Ok(resp))) => out.push(resp.data),
                Ok(Ok(Err(e))) => return Err(self.write_error(OrError::APIError(e))),
            }
        }
        Ok(out)
    }

    /// Adds a server as a voter: first as a learner (waiting until it has
    /// caught up), then into the voters. Must run on the leader.
    pub(super) async fn add_voter(&self, req: &JoinRequest) -> Result<(), ReplicaError> {
        let leader = self.leader_tx.borrow().clone();
        if !leader.is_self {
            return Err(ReplicaError::NotLeader {
                leader_address: leader.leader_address,
            });
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == req.id);
        let same_addr = membership
            .get_node(&req.id)
            .is_some_and(|n| n.addr == req.address);
        if is_voter && same_addr {
            return Ok(());
        }
        if is_voter {
            return Err(ReplicaError::Other(format!(
                "server {} is already a voter with another address",
                req.id
            )));
        }
        tracing::info!(id = req.id, address = %req.address, "adding server as learner");
        let node = BasicNode::new(&req.address);
        tokio::time::timeout(self.join_timeout, self.raft.add_learner(req.id, node, true))
            .await
            .map_err(|_| ReplicaError::Unconfirmed(format!("server {} did not catch up", req.id)))?
            .map_err(|e| self.write_error(e))?;
        tracing::info!(id = req.id, "promoting learner to voter");
        let ids = BTreeSet::from([req.id]);
        tokio::time::timeout(
            self.op_timeout,
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false),
        )
        .await
        .map_err(|_| ReplicaError::Unconfirmed("membership change not committed".into()))?
        .map_err(|e| self.write_error(e))?;
        Ok(())
    }

    /// Removes a server (voter or learner) from the cluster. Must run on the
    /// leader; removing the leader itself makes it step down once the new
    /// membership is committed.
    pub(super) async fn remove(&self, id: u64) -> Result<bool, ReplicaError> {
        let leader = self.leader_tx.borrow().clone();
        if !leader.is_self {
            return Err(ReplicaError::NotLeader {
                leader_address: leader.leader_address,
            });
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.get_node(&id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Ok(false);
        };
        tracing::info!(id, "removing server from the cluster");
        tokio::time::timeout(self.op_timeout, self.raft.change_membership(change, false))
            .await
            .map_err(|_| ReplicaError::Unconfirmed("membership change not committed".into()))?
            .map_err(|e| self.write_error(e))?;
        Ok(true)
    }

    fn member_views(&self) -> Vec<MemberView> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let own_last = m.last_log_index.unwrap_or(0);
        membership
            .nodes()
            .map(|(id, node)| {
                let role = if *id == self.id {
                    role_name(m.state)
                } else if m.current_leader == Some(*id) {
                    "leader"
                } else if voters.contains(id) {
                    "follower"
                } else {
                    "learner"
                };
                let last_log_index = if *id == self.id {
                    own_last
                } else {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(id).cloned().flatten())
                        .map(|l| l.index)
                        .unwrap_or(own_last)
                };
                MemberView {
                    id: *id,
                    address: node.addr.clone(),
                    role: role.to_string(),
                    term: m.current_term,
                    last_log_index,
                    voter: voters.contains(id),
                }
            })
            .collect()
    }

    /// The snapshot's last log index, if a snapshot exists (for tests).
    pub fn snapshot_index(&self) -> Option<u64> {
        self.shared.snapshot_log_id().map(|l| l.index)
    }
}

impl Drop for RaftReplica {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

fn role_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner | ServerState::Shutdown => "learner",
    }
}

fn fatal(f: Fatal<u64>) -> ReplicaError {
    match f {
        // Raised when a write's reply channel is dropped while the core
        // runs on (e.g. leadership moved): the outcome is unknown.
        Fatal::Stopped => ReplicaError::Unconfirmed("raft stopped or leadership lost".into()),
        other => ReplicaError::Other(format!("raft failed: {other}")),
    }
}

/// The node id: the one recorded in `data_dir/node-id` by the first start
/// (so a changed `advertise` keeps the identity), else the configured or
/// derived one, which is then recorded.
fn resolve_id(cfg: &RaftConfig) -> Result<u64, RaftError> {
    let path = cfg.data_dir.join("node-id");
    let err = |message: String| RaftError::NodeId {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let stored: u64 = s
                .trim()
                .parse()
                .map_err(|_| err(format!("{:?} is not a node id", s.trim())))?;
            if let Some(want) = cfg.id {
                if want != stored {
                    return Err(err(format!(
                        "data dir belongs to node {stored}, config says {want}"
                    )));
                }
            }
            Ok(stored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = cfg.node_id();
            write_id(&path, id).map_err(|e| err(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_id(path: &Path, id: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{id}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn leader_info(m: &Metrics, id: u64) -> LeaderInfo {
    let leader_address = m.current_leader.and_then(|l| {
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.addr.clone())
    });
    LeaderInfo {
        is_self: m.state == ServerState::Leader && m.current_leader == Some(id),
        leader_id: m.current_leader,
        leader_address,
        term: m.current_term,
    }
}

/// Mirrors openraft's metrics into the [`LeaderInfo`] watch.
async fn watch_metrics(raft: Raft, id: u64, tx: Arc<watch::Sender<LeaderInfo>>) {
    let mut rx = raft.metrics();
    loop {
        let info = leader_info(&rx.borrow_and_update(), id);
        tx.send_if_modified(|cur| {
            if *cur != info {
                tracing::info!(id, leader = ?info.leader_id, term = info.term, is_self = info.is_self, "raft leader changed");
                *cur = info;
                true
            } else {
                false
            }
        });
        if rx.changed().await.is_err() {
            break;
        }
    }
}

impl Replica for RaftReplica {
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<CommandResult, ReplicaError>> {
        Box::pin(self.propose(VersionedCommand::from(cmd)))
    }

    fn write_many(
        &self,
        cmds: Vec<Command>,
    ) -> BoxFuture<'_, Result<Vec<CommandResult>, ReplicaError>> {
        Box::pin(self.propose_many(cmds))
    }

    fn state(&self) -> Arc<RwLock<ClusterState>> {
        self.shared.state.clone()
    }

    fn leader(&self) -> LeaderInfo {
        self.leader_tx.borrow().clone()
    }

    fn watch_leader(&self) -> watch::Receiver<LeaderInfo> {
        self.leader_tx.subscribe()
    }

    fn watch_applied(&self) -> watch::Receiver<u64> {
        self.shared.applied_tx.subscribe()
    }

    fn ensure_linearizable(&self) -> BoxFuture<'_, Result<(), ReplicaError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.op_timeout, self.raft.ensure_linearizable()).await {
                Err(_) => Err(ReplicaError::Unconfirmed(format!(
                    "leadership not confirmed within {} ms",
                    self.op_timeout.as_millis()
                ))),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(OrError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(self.not_leader(&f))
                }
                Ok(Err(OrError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                    Err(ReplicaError::Unconfirmed(q.to_string()))
                }
                Ok(Err(OrError::Fatal(f))) => Err(fatal(f)),
            }
        })
    }

    fn members(&self) -> BoxFuture<'_, Result<Vec<MemberView>, ReplicaError>> {
        Box::pin(async move { Ok(self.member_views()) })
    }
}
