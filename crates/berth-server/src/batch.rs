//! Runs the built-in batch framework on the leader: one instance per role
//! that has jobs (so DRF shares roles fairly), each subscribed in-process
//! through the same scheduler API an external framework uses.

use crate::master::Master;
use crate::server::Builtin;
use crate::state::ClusterState;
use berth_frameworks::{batch_framework_id, run_batch, ClusterView, JobEntry, KnownTask};
use berth_sched::placement::NodeFit;
use berth_types::NodeState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the supervisor looks for roles that need an instance.
const ROLE_SCAN: Duration = Duration::from_millis(250);

/// The built-in batch framework, for `ServerConfig::with_builtin`.
pub fn builtin() -> Builtin {
    Arc::new(|m: Arc<Master>| Box::pin(supervise(m)))
}

/// The replicated state as the batch framework reads it.
struct StateView(Arc<RwLock<ClusterState>>);

impl ClusterView for StateView {
    fn jobs(&self) -> Vec<JobEntry> {
        let s = self.0.read().unwrap_or_else(|e| e.into_inner());
        s.jobs
            .values()
            .map(|j| JobEntry {
                spec: j.spec.clone(),
                stopped: j.stopped,
                submitted_ms: j.submitted_ms,
            })
            .collect()
    }

    fn nodes(&self) -> Vec<NodeFit> {
        let s = self.0.read().unwrap_or_else(|e| e.into_inner());
        s.nodes
            .values()
            .map(|n| NodeFit {
                hostname: n.hostname.clone(),
                attributes: n.attributes.clone(),
                free: n.free(),
                active: n.state == NodeState::Active,
            })
            .collect()
    }

    fn tasks(&self) -> Vec<KnownTask> {
        let s = self.0.read().unwrap_or_else(|e| e.into_inner());
        s.tasks
            .values()
            .filter(|t| {
                t.framework_id
                    .starts_with(berth_frameworks::BATCH_FRAMEWORK_ID)
            })
            .map(|t| KnownTask {
                task_id: t.info.task_id.clone(),
                agent_id: t.info.agent_id.clone(),
                hostname: s
                    .nodes
                    .get(&t.info.agent_id)
                    .map(|n| n.hostname.clone())
                    .unwrap_or_default(),
                state: t.state,
                reason: t.reason.clone(),
                launched_ms: t.launched_ms,
            })
            .collect()
    }
}

/// The role of a batch framework instance, from its framework id.
fn batch_role(framework_id: &str) -> Option<&str> {
    if framework_id == berth_frameworks::BATCH_FRAMEWORK_ID {
        return Some("*");
    }
    framework_id
        .strip_prefix(berth_frameworks::BATCH_FRAMEWORK_ID)
        .and_then(|r| r.strip_prefix('-'))
}

/// Roles that need a batch instance: `*` always, and every role with a job
/// that is not stopped or still has live tasks. Roles in `running` already
/// have one (instances are never stopped for lack of work).
///
/// Finding live tasks means a walk over every live task (100,000 under
/// load) under the state lock, which every replicated write waits for; it
/// is done only when a registered batch framework's role has no instance
/// and no other reason for one.
fn wanted_roles(state: &ClusterState, running: &BTreeSet<&str>) -> BTreeSet<String> {
    let mut roles = BTreeSet::from(["*".to_string()]);
    for j in state.jobs.values() {
        if !j.stopped {
            roles.insert(j.spec.role.clone());
        }
    }
    let unknown: BTreeSet<&str> = state
        .frameworks
        .keys()
        .filter_map(|id| batch_role(id))
        .filter(|r| !roles.contains(*r) && !running.contains(r))
        .collect();
    if unknown.is_empty() {
        return roles;
    }
    for t in state.node_tasks.values().flatten() {
        if let Some(t) = state.tasks.get(t) {
            if let Some(role) = batch_role(&t.framework_id).filter(|r| unknown.contains(r)) {
                roles.insert(role.to_string());
            }
        }
    }
    roles
}

async fn supervise(m: Arc<Master>) {
    let mut leader = m.watch_leader();
    loop {
        // Only the leader runs frameworks; wait for this server to lead.
        if leader.wait_for(|l| l.is_self).await.is_err() {
            return;
        }
        let stop = CancellationToken::new();
        let mut running: BTreeMap<String, JoinHandle<()>> = BTreeMap::new();
        let state = m.replica().state();
        let view: Arc<dyn ClusterView> = Arc::new(StateView(state.clone()));
        while leader.borrow().is_self {
            running.retain(|_, h| !h.is_finished());
            let roles = {
                let s = state.read().unwrap_or_else(|e| e.into_inner());
                let have: BTreeSet<&str> = running.keys().map(String::as_str).collect();
                wanted_roles(&s, &have)
            };
            for role in roles {
                if running.contains_key(&role) || !m.is_leading() {
                    continue;
                }
                tracing::info!(role = %role, framework = %batch_framework_id(&role), "starting batch framework");
                let lf = m.connect_local();
                let (view, notes, stop) = (view.clone(), m.placement_notes(), stop.clone());
                let r = role.clone();
                running.insert(
                    role,
                    tokio::spawn(async move {
                        run_batch(&r, lf.calls, lf.events, view, notes, stop.cancelled_owned())
                            .await
                    }),
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(ROLE_SCAN) => {}
                r = leader.changed() => if r.is_err() { break },
            }
        }
        stop.cancel();
        for (_, h) in running {
            let _ = h.await;
        }
    }
}
