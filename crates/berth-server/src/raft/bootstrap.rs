//! Forming a new cluster or joining a running one.
//!
//! A server that already has Raft state (a restart) does nothing here: it
//! never initializes twice. Otherwise, every half second until it belongs
//! to a cluster, it asks the `join` addresses for `GET /raft/info`:
//!
//! - a peer already in a cluster → ask it to add this server
//!   (`POST /v1/cluster/join`; it forwards to the leader);
//! - `bootstrap_expect == 1` → initialize alone;
//! - `bootstrap_expect` servers (itself included) answer, none in a
//!   cluster → the one with the smallest id initializes with all of them
//!   as voters; the others wait to be contacted by its first election.

use super::config::RaftConfig;
use super::http::RaftInfo;
use super::network::PeerClient;
use super::Raft;
use berth_api::cluster::{JoinRequest, MemberView};
use openraft::BasicNode;
use std::collections::BTreeMap;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(500);
const INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// The join blocks on the leader until this server has caught up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);

pub(super) async fn run(raft: Raft, id: u64, cfg: RaftConfig, client: PeerClient) {
    let mut last_note = String::new();
    loop {
        match raft.is_initialized().await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => return, // raft stopped
        }
        match step(&raft, id, &cfg, &client).await {
            Ok(Some(done)) => {
                tracing::info!(id, "{done}");
                return;
            }
            Ok(None) => {}
            Err(note) => {
                // Say it once per change, not every poll.
                if note != last_note {
                    tracing::warn!(id, "raft bootstrap: {note}");
                    last_note = note;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// One round; `Ok(Some(what))` when this server is in (or entering) a
/// cluster.
async fn step(
    raft: &Raft,
    id: u64,
    cfg: &RaftConfig,
    client: &PeerClient,
) -> Result<Option<String>, String> {
    let mut peers: Vec<(String, RaftInfo)> = Vec::new();
    let mut missing = Vec::new();
    for addr in cfg.join.iter().filter(|a| **a != cfg.advertise) {
        match client
            .get_json::<RaftInfo>(addr, "/raft/info", INFO_TIMEOUT)
            .await
        {
            Ok(info) if info.id == id => {}
            Ok(info) => peers.push((addr.clone(), info)),
            Err(e) => missing.push(e.to_string()),
        }
    }

    if let Some((addr, _)) = peers.iter().find(|(_, i)| i.initialized) {
        let req = JoinRequest {
            id,
            address: cfg.advertise.clone(),
        };
        let members: Vec<MemberView> = client
            .post_json(addr, "/v1/cluster/join", &req, JOIN_TIMEOUT)
            .await
            .map_err(|e| format!("join through {addr}: {e}"))?;
        return Ok(Some(format!(
            "joined the cluster through {addr} ({} members)",
            members.len()
        )));
    }

    let mut nodes: BTreeMap<u64, BasicNode> = peers
        .iter()
        .map(|(_, i)| (i.id, BasicNode::new(&i.address)))
        .collect();
    nodes.insert(id, BasicNode::new(&cfg.advertise));

    if cfg.bootstrap_expect == 1 {
        return initialize(raft, nodes.into_iter().filter(|(n, _)| *n == id).collect()).await;
    }
    if nodes.len() < cfg.bootstrap_expect {
        return Err(format!(
            "{} of {} servers answer; waiting ({})",
            nodes.len(),
            cfg.bootstrap_expect,
            missing.join("; ")
        ));
    }
    if nodes.keys().next() == Some(&id) {
        return initialize(raft, nodes).await;
    }
    Err(format!(
        "{} servers found, waiting for the one with the smallest id to form the cluster",
        nodes.len()
    ))
}

async fn initialize(
    raft: &Raft,
    nodes: BTreeMap<u64, BasicNode>,
) -> Result<Option<String>, String> {
    let what = format!(
        "initialized a cluster of {}",
        nodes
            .iter()
            .map(|(i, n)| format!("{i}@{}", n.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match raft.initialize(nodes).await {
        Ok(()) => Ok(Some(what)),
        // Someone contacted us meanwhile: we are in a cluster anyway.
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => Ok(Some("already part of a cluster".into())),
        Err(e) => Err(format!("initialize: {e}")),
    }
}
