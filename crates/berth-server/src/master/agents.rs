//! The agent side: registration, the sync long-poll, liveness.
//!
//! Thousands of agents long-poll at once, so a sync does not wake on every
//! applied entry: one dispatcher task looks, after each apply, at which
//! nodes changed (a node's `version` is the log index of its last change,
//! so the changed ones are exactly those above the last index looked at)
//! and wakes only their waiters through a per-node watch channel.

use super::leader::LeaderCtx;
use super::util::{now_ms, random_id, valid_client_id};
use super::{Master, MasterError};
use crate::state::Command;
use berth_api::cluster::{
    AgentSyncRequest, AgentSyncResponse, Event, RegisterAgentRequest, RegisterAgentResponse,
};
use berth_types::NodeState;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest a sync waits for a change.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(5);

/// Per-node change notification for long-polling syncs.
#[derive(Default)]
pub(crate) struct NodeWatch {
    senders: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl NodeWatch {
    fn subscribe(&self, node_id: &str) -> watch::Receiver<u64> {
        let mut map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn notify(&self, changed: &[(String, u64)]) {
        let map = self.senders.lock().unwrap_or_else(|p| p.into_inner());
        for (id, version) in changed {
            if let Some(tx) = map.get(id) {
                tx.send_replace(*version);
            }
        }
    }
}

/// Wakes the waiters of nodes changed by each applied entry.
pub(crate) async fn dispatch_versions(m: Arc<Master>) {
    let mut applied = m.replica.watch_applied();
    let mut seen = m.read_state().last_applied;
    loop {
        tokio::select! {
            _ = m.stop.cancelled() => return,
            r = applied.changed() => if r.is_err() { return },
        }
        let changed: Vec<(String, u64)> = {
            let s = m.read_state();
            let out = s
                .nodes
                .values()
                .filter(|n| n.version > seen)
                .map(|n| (n.id.clone(), n.version))
                .collect();
            seen = s.last_applied;
            out
        };
        if !changed.is_empty() {
            m.nodes.notify(&changed);
        }
    }
}

impl Master {
    /// `POST /v1/agents/register`.
    pub async fn register_agent(
        &self,
        req: RegisterAgentRequest,
    ) -> Result<RegisterAgentResponse, MasterError> {
        let ctx = self.ctx()?;
        if req.hostname.trim().is_empty() {
            return Err(MasterError::BadRequest("hostname is empty".into()));
        }
        let r = &req.resources;
        if !r.cpus.is_finite() || r.cpus < 0.0 {
            return Err(MasterError::BadRequest(format!(
                "resources {r}: cpus must be 0 or more"
            )));
        }
        let node_id = match &req.agent_id {
            Some(id) if !valid_client_id(id) => {
                return Err(MasterError::BadRequest(format!(
                    "agent id {id:?}: use 1 to 128 letters, digits, '-', '_', '.' or ':'"
                )))
            }
            Some(id) => id.clone(),
            None => random_id("a"),
        };
        let known = self.read_state().nodes.contains_key(&node_id);
        let running: Vec<String> = req.running.iter().map(|t| t.task_id.clone()).collect();
        let res = self
            .propose(Command::RegisterNode {
                node_id: node_id.clone(),
                hostname: req.hostname.clone(),
                address: req.address.clone(),
                resources: req.resources,
                attributes: req.attributes.clone(),
                running,
                at_ms: now_ms(),
                uuid_prefix: random_id("r"),
            })
            .await?;
        if let Some(e) = res.error {
            return Err(MasterError::BadRequest(e));
        }
        // The recovered tasks may have moved on (STAGING -> RUNNING) while
        // the agent was away.
        let mut updates = req.running;
        for u in &mut updates {
            u.agent_id = node_id.clone();
        }
        if !updates.is_empty() {
            self.propose(Command::UpdateTasks { updates }).await?;
        }
        ctx.touch(&node_id);
        if known {
            // Its resources may have changed: offers made on the old ones
            // must not be used.
            ctx.fws().rescind_agent(&node_id);
        }
        tracing::info!(node = %node_id, hostname = %req.hostname, resources = %req.resources, "agent registered");
        self.trigger_allocation();
        Ok(RegisterAgentResponse {
            agent_id: node_id,
            heartbeat_interval_ms: self.cfg.heartbeat_interval.as_millis() as u64,
            agent_timeout_ms: self.cfg.agent_timeout.as_millis() as u64,
        })
    }

    /// `POST /v1/agents/sync`: records the heartbeat, commits the status
    /// updates (answering at once with their acknowledgements), otherwise
    /// waits until the node's assignment changes or `wait_ms` passes.
    pub async fn sync_agent(
        &self,
        req: AgentSyncRequest,
    ) -> Result<AgentSyncResponse, MasterError> {
        let ctx = self.ctx()?;
        let id = req.agent_id.as_str();
        let known = |m: &Master| match m.read_state().nodes.get(id) {
            Some(n) if n.state != NodeState::Lost => Some(n.version),
            _ => None,
        };
        if known(self).is_none() {
            return Ok(reregister());
        }
        // Subscribe before reading the version the wait compares with, so
        // a change in between is not missed.
        let rx = self.nodes.subscribe(id);
        let Some(version) = known(self) else {
            return Ok(reregister());
        };
        ctx.touch(id);
        if !req.updates.is_empty() {
            let acknowledged: Vec<String> = req.updates.iter().map(|u| u.uuid.clone()).collect();
            let res = self
                .propose(Command::UpdateTasks {
                    updates: req.updates,
                })
                .await?;
            if let Some(e) = res.error {
                return Err(MasterError::BadRequest(e));
            }
            self.trigger_allocation();
            let mut resp = self.assignments(id);
            resp.acknowledged = acknowledged;
            return Ok(resp);
        }
        if version == req.known_version && req.wait_ms > 0 {
            let wait = Duration::from_millis(req.wait_ms)
                .min(MAX_WAIT)
                .min(self.cfg.agent_timeout / 2);
            self.wait_for_change(&ctx, id, req.known_version, rx, wait)
                .await;
            ctx.touch(id);
        }
        Ok(self.assignments(id))
    }

    async fn wait_for_change(
        &self,
        ctx: &LeaderCtx,
        id: &str,
        known: u64,
        mut rx: watch::Receiver<u64>,
        wait: Duration,
    ) {
        let changed = async {
            loop {
                if rx.changed().await.is_err() {
                    return;
                }
                let v = self.read_state().nodes.get(id).map(|n| n.version);
                if v != Some(known) {
                    return;
                }
            }
        };
        tokio::select! {
            _ = ctx.cancel.cancelled() => {}
            _ = tokio::time::timeout(wait, changed) => {}
        }
    }

    /// The sync answer for a node: what it should run and kill.
    fn assignments(&self, id: &str) -> AgentSyncResponse {
        let s = self.read_state();
        let Some(node) = s.nodes.get(id) else {
            return reregister();
        };
        if node.state == NodeState::Lost {
            return reregister();
        }
        let mut tasks = Vec::new();
        let mut kill = Vec::new();
        for t in s.node_assignments(id) {
            if t.kill_requested {
                kill.push(t.info.task_id.clone());
            }
            tasks.push(t.info.clone());
        }
        AgentSyncResponse {
            version: node.version,
            tasks,
            kill,
            acknowledged: Vec::new(),
            reregister: false,
        }
    }

    /// Marks LOST the agents silent for longer than the agent timeout.
    pub(crate) async fn check_agents(&self, ctx: &LeaderCtx) {
        let timeout = self.cfg.agent_timeout;
        let now = Instant::now();
        // Every node that can be lost is in this map: all of them were put
        // there when this server became leader, or when they registered.
        let mut stale: Vec<String> = {
            let mut seen = ctx.agents();
            let ids: Vec<String> = seen
                .iter()
                .filter(|(_, last)| now.duration_since(**last) >= timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &ids {
                seen.remove(id);
            }
            ids
        };
        if !stale.is_empty() {
            let s = self.read_state();
            stale.retain(|id| s.nodes.get(id).is_some_and(|n| n.state != NodeState::Lost));
        }
        if stale.is_empty() {
            return;
        }
        let at_ms = now_ms();
        let proposals = stale.iter().map(|id| {
            tracing::warn!(node = %id, timeout_ms = timeout.as_millis() as u64, "agent stopped syncing; marking it lost");
            self.propose(Command::NodeLost {
                node_id: id.clone(),
                at_ms,
                uuid_prefix: random_id("l"),
            })
        });
        let results = futures_util::future::join_all(proposals).await;
        let mut f = ctx.fws();
        for (id, r) in stale.iter().zip(results) {
            match r {
                Ok(_) => {
                    f.rescind_agent(id);
                    let fw_ids: Vec<String> = f.subs.keys().cloned().collect();
                    for fw in fw_ids {
                        f.send(
                            &fw,
                            Event::Failure {
                                agent_id: id.clone(),
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "proposing node lost");
                    // Try again on a later tick.
                    ctx.agents()
                        .insert(id.clone(), now.checked_sub(timeout).unwrap_or(now));
                }
            }
        }
    }

    /// Milliseconds since each node was last heard from (leader memory).
    pub(crate) fn last_seen_ms(&self) -> HashMap<String, u64> {
        let Some(ctx) = self.leader_ctx() else {
            return HashMap::new();
        };
        let now = Instant::now();
        let seen = ctx.agents();
        seen.iter()
            .map(|(id, t)| (id.clone(), now.duration_since(*t).as_millis() as u64))
            .collect()
    }
}

fn reregister() -> AgentSyncResponse {
    AgentSyncResponse {
        version: 0,
        tasks: Vec::new(),
        kill: Vec::new(),
        acknowledged: Vec::new(),
        reregister: true,
    }
}
