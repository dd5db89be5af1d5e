//! Simulated agents: they register and sync like real ones, accept tasks
//! and report them RUNNING (and KILLED when killed) without running
//! anything. Many share one process, one client and one connection pool,
//! for placement benchmarks (thousands of agents, 100,000 tasks).
//!
//! With a token they also share one certificate: the process enrols once as
//! [`SIM_AGENT_WILDCARD`], which the servers accept for every `sim-*` agent,
//! so thousands of agents cost one enrolment, not thousands.

use crate::agent::{
    agent_cert, backoff, cluster_client, is_fatal, is_fatal_sync, load_identity, save_identity,
    status, Identity, MAX_UPDATES_PER_SYNC,
};
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::reconcile::{self, LocalState};
use crate::resources::{detect_resources, hostname};
use crate::sink::{KillReason, TaskEvent};
use berth_api::cluster::{
    AgentSyncRequest, AgentSyncResponse, RegisterAgentRequest, RegisterAgentResponse, TaskStatus,
};
use berth_api::cluster_client::{ClusterClient, SIM_AGENT_WILDCARD};
use berth_types::cluster::{Attributes, Resources, TaskState};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Registrations in flight at once, so thousands of agents starting
/// together do not all time out against a busy leader.
const REGISTER_CONCURRENCY: usize = 64;

#[derive(Debug, Clone)]
struct SimSpec {
    agent_id: Option<String>,
    hostname: String,
    resources: Resources,
    attributes: Attributes,
    wait_ms: u64,
    /// Where a single simulated agent keeps its id (`run` with simulate).
    identity_path: Option<PathBuf>,
}

/// Runs `count` simulated agents (ids and host names `sim-0` .. `sim-N-1`,
/// or `sim-HOST-0` .. with `--hostname HOST`)
/// until `shutdown` resolves, or until the servers refuse them.
pub async fn run_simulated(
    cfg: AgentConfig,
    count: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    cfg.validate()?;
    tokio::pin!(shutdown);
    let cert = match cfg.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => tokio::select! {
            _ = &mut shutdown => return Ok(()),
            c = crate::enrol::ensure_cert(&cfg, token, None, Some(SIM_AGENT_WILDCARD)) => Some(c?),
        },
        None => None,
    };
    let client = cluster_client(&cfg, cert.as_ref())?;
    let resources = cfg
        .resources
        .unwrap_or_else(|| detect_resources(&cfg.data_dir));
    let gate = Arc::new(Semaphore::new(REGISTER_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    // Several simulating processes may share a cluster: --hostname tells
    // their agents apart (sim-HOST-N), else they are sim-N.
    let prefix = match cfg.hostname.as_deref() {
        Some(h) if !h.is_empty() => format!("sim-{h}-"),
        _ => "sim-".to_string(),
    };
    for i in 0..count {
        let spec = SimSpec {
            agent_id: Some(format!("{prefix}{i}")),
            hostname: format!("{prefix}{i}"),
            resources,
            attributes: cfg.attributes.clone(),
            wait_ms: cfg.wait_ms,
            identity_path: None,
        };
        set.spawn(sim_agent(client.clone(), spec, gate.clone()));
    }
    tracing::info!(count, resources = %resources, "simulated agents started");
    let first_failure = async {
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Err(e)) => return Err(e),
                Ok(Ok(())) => {}
                Err(e) if e.is_panic() => {
                    return Err(AgentError::Config(format!(
                        "a simulated agent panicked: {e}"
                    )))
                }
                Err(_) => {}
            }
        }
        Ok(())
    };
    tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = first_failure => r,
    }
}

/// `run` with `simulate: true`: one simulated agent with the configured
/// identity.
pub(crate) async fn run_one(
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| AgentError::io("creating", &cfg.data_dir, e))?;
    tokio::pin!(shutdown);
    let identity_path = cfg.data_dir.join("agent.json");
    let mut identity = load_identity(&identity_path)?;
    // One simulated agent enrols like a real one, under its own id.
    let cert = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        c = agent_cert(&cfg, &mut identity, &identity_path) => c?,
    };
    let spec = SimSpec {
        agent_id: identity.agent_id,
        hostname: cfg.hostname.clone().unwrap_or_else(hostname),
        resources: cfg
            .resources
            .unwrap_or_else(|| detect_resources(&cfg.data_dir)),
        attributes: cfg.attributes.clone(),
        wait_ms: cfg.wait_ms,
        identity_path: Some(identity_path),
    };
    let client = cluster_client(&cfg, cert.as_ref())?;
    tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = sim_agent(client, spec, Arc::new(Semaphore::new(1))) => r,
    }
}

/// What one simulated agent does with a sync response: the same plan as a
/// real agent, applied to a map instead of processes.
fn apply(
    agent_id: &str,
    resp: &AgentSyncResponse,
    local: &mut HashMap<String, LocalState>,
    queue: &mut Vec<TaskStatus>,
) {
    let pending: HashSet<String> = queue.iter().map(|u| u.task_id.clone()).collect();
    let plan = reconcile::plan(&resp.tasks, &resp.kill, local, &pending);
    for t in plan.launch {
        queue.push(status(
            agent_id,
            &TaskEvent::new(&t.task_id, TaskState::Running),
        ));
        local.insert(t.task_id, LocalState::Running);
    }
    for (id, reason) in plan.kill {
        let ev =
            TaskEvent::new(&id, TaskState::Killed).with_reason(reason.as_str(), reason.message());
        queue.push(status(agent_id, &ev));
        local.insert(id, LocalState::Terminal);
    }
    for id in plan.report_killed {
        let ev = TaskEvent::new(&id, TaskState::Killed).with_reason(
            KillReason::KilledByUser.as_str(),
            "killed before it was launched",
        );
        queue.push(status(agent_id, &ev));
        local.insert(id, LocalState::Terminal);
    }
    for id in plan.forget {
        local.remove(&id);
    }
}

async fn sim_agent(
    client: ClusterClient,
    spec: SimSpec,
    gate: Arc<Semaphore>,
) -> Result<(), AgentError> {
    let mut agent_id = spec.agent_id.clone();
    let mut local: HashMap<String, LocalState> = HashMap::new();
    let mut queue: Vec<TaskStatus> = Vec::new();
    loop {
        let registered = {
            let _permit = gate.acquire().await;
            let mut failures = 0u32;
            loop {
                let id = agent_id.clone().unwrap_or_default();
                let running = local
                    .iter()
                    .filter(|(_, s)| s.is_active())
                    .map(|(t, _)| status(&id, &TaskEvent::new(t, TaskState::Running)))
                    .collect();
                let req = RegisterAgentRequest {
                    agent_id: agent_id.clone(),
                    hostname: spec.hostname.clone(),
                    address: String::new(),
                    resources: spec.resources,
                    attributes: spec.attributes.clone(),
                    running,
                };
                match client
                    .post_json::<_, RegisterAgentResponse>("/v1/agents/register", &req)
                    .await
                {
                    Ok(r) => break r,
                    Err(e) if is_fatal(&e) => return Err(e.into()),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(agent = %spec.hostname, error = %e, "simulated agent registration failed; retrying");
                        tokio::time::sleep(backoff(failures)).await;
                    }
                }
            }
        };
        if agent_id.as_deref() != Some(registered.agent_id.as_str()) {
            if let Some(path) = &spec.identity_path {
                save_identity(
                    path,
                    &Identity {
                        agent_id: Some(registered.agent_id.clone()),
                    },
                )?;
            }
        }
        let id = registered.agent_id.clone();
        agent_id = Some(id.clone());
        tracing::debug!(agent_id = %id, "simulated agent registered");
        let wait_ms = spec.wait_ms.min(registered.heartbeat_interval_ms.max(100));
        let mut known_version = 0u64;
        let mut failures = 0u32;
        loop {
            let updates: Vec<TaskStatus> =
                queue.iter().take(MAX_UPDATES_PER_SYNC).cloned().collect();
            let req = AgentSyncRequest {
                agent_id: id.clone(),
                wait_ms: if updates.is_empty() { wait_ms } else { 0 },
                updates,
                known_version,
            };
            match client
                .post_json::<_, AgentSyncResponse>("/v1/agents/sync", &req)
                .await
            {
                Ok(resp) => {
                    failures = 0;
                    if !resp.acknowledged.is_empty() {
                        let acked: HashSet<&str> =
                            resp.acknowledged.iter().map(String::as_str).collect();
                        queue.retain(|u| !acked.contains(u.uuid.as_str()));
                    }
                    if resp.reregister {
                        break;
                    }
                    known_version = resp.version;
                    apply(&id, &resp, &mut local, &mut queue);
                }
                Err(e) if e.status() == Some(404) => break,
                Err(e) if is_fatal_sync(&e) => return Err(e.into()),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(agent = %spec.hostname, error = %e, "simulated agent sync failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::cluster::TaskInfo;
    use berth_types::cluster::TaskKind;

    fn task(id: &str) -> TaskInfo {
        TaskInfo {
            task_id: id.into(),
            name: id.into(),
            agent_id: "sim-0".into(),
            resources: Resources::new(1.0, 10, 0),
            kind: TaskKind::Command { shell: "x".into() },
            env: Default::default(),
            labels: Default::default(),
        }
    }

    fn resp(tasks: &[&str], kill: &[&str]) -> AgentSyncResponse {
        AgentSyncResponse {
            version: 1,
            tasks: tasks.iter().map(|t| task(t)).collect(),
            kill: kill.iter().map(|s| s.to_string()).collect(),
            acknowledged: vec![],
            reregister: false,
        }
    }

    #[test]
    fn simulated_agent_runs_and_kills_without_processes() {
        let mut local = HashMap::new();
        let mut queue = Vec::new();
        apply("sim-0", &resp(&["a", "b"], &[]), &mut local, &mut queue);
        let states: Vec<(&str, TaskState)> = queue
            .iter()
            .map(|u| (u.task_id.as_str(), u.state))
            .collect();
        assert_eq!(
            states,
            [("a", TaskState::Running), ("b", TaskState::Running)]
        );
        // The same response again changes nothing.
        apply("sim-0", &resp(&["a", "b"], &[]), &mut local, &mut queue);
        assert_eq!(queue.len(), 2);
        apply("sim-0", &resp(&["a", "b"], &["a"]), &mut local, &mut queue);
        assert_eq!(queue[2].state, TaskState::Killed);
        assert_eq!(queue[2].reason.as_deref(), Some("killed_by_user"));
        // b disappears from the desired set: orphan, killed.
        apply("sim-0", &resp(&["a"], &[]), &mut local, &mut queue);
        assert_eq!(queue[3].task_id, "b");
        assert_eq!(queue[3].reason.as_deref(), Some("orphaned"));
        assert!(queue.iter().all(|u| u.agent_id == "sim-0"));
    }
}
