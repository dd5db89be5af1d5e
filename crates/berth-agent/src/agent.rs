//! The agent's main loop: register, then sync (status updates, heartbeat,
//! long poll for the desired task set) and reconcile, for ever.

use crate::command::{CommandConfig, CommandExecutor};
use crate::config::AgentConfig;
use crate::container::ContainerExecutor;
use crate::core::Core;
use crate::enrol::AgentCert;
use crate::error::AgentError;
use crate::reconcile::{self, LocalState};
use crate::resources::{detect_resources, hostname};
use crate::sink::{KillReason, RecoveredState, StatusSink, TaskEvent};
use crate::updates::UpdateQueue;
use crate::util::{fnv64, new_uuid, now_ms, write_atomic_sync};
use berth_api::cluster::{
    AgentSyncRequest, AgentSyncResponse, RegisterAgentRequest, RegisterAgentResponse, TaskInfo,
    TaskStatus,
};
use berth_api::cluster_client::ClusterClient;
use berth_engine::engine::EngineConfig;
use berth_engine::Engine;
use berth_types::cluster::{Attributes, Resources, TaskKind, TaskState};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Updates sent in one sync at most; the rest follow in the next.
pub const MAX_UPDATES_PER_SYNC: usize = 1000;
/// Sandboxes of ended tasks kept for inspection.
pub const KEEP_SANDBOXES: usize = 100;

/// `DATA/agent.json`: the id the servers gave this agent.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Identity {
    #[serde(default)]
    pub agent_id: Option<String>,
}

pub(crate) fn load_identity(path: &Path) -> Result<Identity, AgentError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AgentError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Identity::default()),
        Err(e) => Err(AgentError::io("reading", path, e)),
    }
}

pub(crate) fn save_identity(path: &Path, id: &Identity) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(id).map_err(|e| AgentError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    write_atomic_sync(path, &bytes).map_err(|e| AgentError::io("writing", path, e))
}

/// A client whose attempts outlast the long poll: with a token, mutual
/// TLS presenting `cert` (see [`ClusterClient::for_cluster`]).
pub(crate) fn cluster_client(
    cfg: &AgentConfig,
    cert: Option<&AgentCert>,
) -> Result<ClusterClient, AgentError> {
    let wait = Duration::from_millis(cfg.wait_ms);
    Ok(ClusterClient::for_cluster(
        cfg.servers.clone(),
        cfg.token.clone(),
        cert.map(|c| &c.identity),
    )?
    .with_attempt_timeout(wait + Duration::from_secs(5))
    .with_deadline((wait + Duration::from_secs(10)).max(Duration::from_secs(10))))
}

/// Backoff after `failures` failed calls in a row: 0.5 s doubling to 5 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << failures.min(4).saturating_sub(1)))
        .min(Duration::from_secs(5))
}

/// Registration errors no retry can fix: the servers refuse this agent
/// (token, certificate, TLS) or its registration.
pub(crate) fn is_fatal(e: &berth_api::cluster_client::ClusterClientError) -> bool {
    e.is_auth_failure() || e.status() == Some(400)
}

/// Sync errors no retry can fix: a bad token or certificate. (A 400 on a
/// sync is retried: the agent should not stop running its tasks over one
/// bad request.)
pub(crate) fn is_fatal_sync(e: &berth_api::cluster_client::ClusterClientError) -> bool {
    e.is_auth_failure()
}

/// With a token: this agent's certificate (see [`crate::enrol`]), enrolling
/// under the id in `agent.json` when there is none, and `agent.json`
/// updated to the id the certificate names.
pub(crate) async fn agent_cert(
    cfg: &AgentConfig,
    identity: &mut Identity,
    identity_path: &Path,
) -> Result<Option<AgentCert>, AgentError> {
    let Some(token) = cfg.token.as_deref().filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let cert_path = cfg.data_dir.join(berth_tls::IDENTITY_FILE);
    let cert =
        crate::enrol::ensure_cert(cfg, token, Some(&cert_path), identity.agent_id.as_deref())
            .await?;
    if identity.agent_id.as_deref() != Some(cert.agent_id.as_str()) {
        identity.agent_id = Some(cert.agent_id.clone());
        save_identity(identity_path, identity)?;
    }
    Ok(Some(cert))
}

pub(crate) fn status(agent_id: &str, ev: &TaskEvent) -> TaskStatus {
    TaskStatus {
        task_id: ev.task_id.clone(),
        agent_id: agent_id.to_string(),
        state: ev.state,
        message: ev.message.clone(),
        reason: ev.reason.clone(),
        exit_code: ev.exit_code,
        uuid: new_uuid(),
        timestamp_ms: now_ms(),
    }
}

/// Who this agent says it is when it registers.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub hostname: String,
    pub address: String,
    pub resources: Resources,
    pub attributes: Attributes,
}

/// The command executor and, when an engine is available, the container one.
pub(crate) struct Executors {
    pub command: CommandExecutor,
    pub container: Result<ContainerExecutor, String>,
    pub sink: Arc<Core>,
    /// One sandbox collection at a time.
    pub gc_lock: tokio::sync::Mutex<()>,
}

impl Executors {
    pub fn launch(&self, task: TaskInfo) {
        match &task.kind {
            TaskKind::Command { .. } => self.command.launch(task),
            TaskKind::Container { .. } => match &self.container {
                Ok(c) => c.launch(task),
                Err(why) => self.sink.report(
                    TaskEvent::new(&task.task_id, TaskState::Failed).with_reason(
                        "launch_failed",
                        AgentError::NoEngine(why.clone()).to_string(),
                    ),
                ),
            },
        }
    }

    pub fn kill(&self, task_id: &str, reason: KillReason) -> bool {
        self.command.kill(task_id, reason)
            || self
                .container
                .as_ref()
                .is_ok_and(|c| c.kill(task_id, reason))
    }

    /// Deletes the sandboxes (and containers) of the oldest ended tasks
    /// beyond [`KEEP_SANDBOXES`].
    pub async fn gc(&self, tasks_dir: &Path) {
        let Ok(_one) = self.gc_lock.try_lock() else {
            return; // one is running; the next terminal task triggers another
        };
        let mut containers = Vec::new();
        let n = crate::sandbox::gc(tasks_dir, KEEP_SANDBOXES, |rec| {
            if let Some(name) = &rec.container {
                containers.push(name.clone());
            }
        });
        if let Ok(c) = &self.container {
            for name in containers {
                c.remove_container(&name).await;
            }
        }
        if n > 0 {
            tracing::info!(removed = n, "removed sandboxes of old tasks");
        }
    }
}

/// Opens the engine under DATA/engine as the node daemon does (the bridge
/// included); container tasks are unavailable if that fails.
async fn open_engine(data_dir: &Path) -> Result<Arc<Engine>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the berth binary: {e}"))?;
    Engine::open(EngineConfig::with_defaults(data_dir.join("engine"), exe))
        .await
        .map_err(|e| {
            format!(
                "opening the engine under {}: {e}",
                data_dir.join("engine").display()
            )
        })
}

/// Runs the agent until `shutdown` resolves. Tasks keep running when it
/// returns; the next start re-adopts them.
pub async fn run(
    cfg: AgentConfig,
    engine: Option<Arc<Engine>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    cfg.validate()?;
    if cfg.simulate {
        return crate::sim::run_one(cfg, shutdown).await;
    }
    let engine = match engine {
        Some(e) => Ok(e),
        None => open_engine(&cfg.data_dir).await,
    };
    run_with_engine(cfg, engine, shutdown).await
}

/// `run` with the engine already decided: `Err(why)` runs command tasks
/// only and fails container tasks with `why` (tests use it to stay off
/// the host's network).
#[doc(hidden)]
pub async fn run_with_engine(
    cfg: AgentConfig,
    engine: Result<Arc<Engine>, String>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    cfg.validate()?;
    tokio::pin!(shutdown);
    let data_dir = cfg.data_dir.clone();
    let tasks_dir = data_dir.join("tasks");
    std::fs::create_dir_all(&tasks_dir).map_err(|e| AgentError::io("creating", &tasks_dir, e))?;
    let identity_path = data_dir.join("agent.json");
    let mut identity = load_identity(&identity_path)?;
    // Before anything else: a wrong token must stop the agent at once, and
    // the container executor needs the finished client.
    let cert = tokio::select! {
        _ = &mut shutdown => return Ok(()),
        c = agent_cert(&cfg, &mut identity, &identity_path) => c?,
    };
    let queue = UpdateQueue::open(data_dir.join("updates.json"))?;
    let core = Arc::new(Core::new(
        identity.agent_id.clone().unwrap_or_default(),
        queue,
    ));
    let client = cluster_client(&cfg, cert.as_ref())?;

    if let Err(why) = &engine {
        tracing::warn!(error = %why, "container tasks are unavailable; command tasks still run");
    }
    let exe =
        std::env::current_exe().map_err(|e| AgentError::io("finding", "/proc/self/exe", e))?;
    let cgroup_parent = format!(
        "berth-agent/{:08x}",
        fnv64(data_dir.to_string_lossy().as_bytes()) as u32
    );
    let sink: Arc<dyn StatusSink> = core.clone();
    let executors = Arc::new(Executors {
        command: CommandExecutor::new(
            CommandConfig::new(tasks_dir.clone(), exe, cgroup_parent),
            sink.clone(),
        ),
        container: engine
            .map(|e| ContainerExecutor::new(e, client.clone(), tasks_dir.clone(), sink)),
        sink: core.clone(),
        gc_lock: tokio::sync::Mutex::new(()),
    });

    // Recovery: what still runs is reported at registration; what ended
    // while the agent was away is reported now (queued).
    let mut recovered = executors.command.recover();
    if let Ok(c) = &executors.container {
        recovered.extend(c.recover());
    }
    let queued_terminal = core.snapshot().1;
    for r in recovered {
        let (local, state) = match r.state {
            RecoveredState::Running => (LocalState::Running, TaskState::Running),
            RecoveredState::Ended(s) => (LocalState::Terminal, s),
            RecoveredState::Reported(s) => {
                // Acknowledged long ago: only worth remembering while its
                // update waits.
                if !queued_terminal.contains(&r.task.task_id) {
                    continue;
                }
                (LocalState::Terminal, s)
            }
        };
        if local == LocalState::Running {
            tracing::info!(task = %r.task.task_id, "recovered running task");
        }
        core.track(r.task, local, state);
    }

    let registration = Registration {
        hostname: cfg.hostname.clone().unwrap_or_else(hostname),
        address: cfg.listen.map(|a| a.to_string()).unwrap_or_default(),
        resources: cfg.resources.unwrap_or_else(|| detect_resources(&data_dir)),
        attributes: cfg.attributes.clone(),
    };
    let listener = match cfg.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Listen { addr, source })?,
        ),
        None => None,
    };
    tracing::info!(
        data_dir = %data_dir.display(),
        servers = %cfg.servers.join(","),
        hostname = %registration.hostname,
        resources = %registration.resources,
        agent_id = ?identity.agent_id,
        "berth agent starting"
    );
    let http = async {
        match listener {
            Some(l) => crate::http::serve(l, cfg.token.clone(), core.clone()).await,
            None => std::future::pending().await,
        }
    };
    let sync = sync_loop(
        &cfg,
        &client,
        &core,
        &executors,
        &registration,
        &identity_path,
    );
    tokio::select! {
        _ = &mut shutdown => {
            tracing::info!("agent shutting down; tasks keep running and are re-adopted at the next start");
            Ok(())
        }
        r = sync => r,
        r = http => r,
    }
}

async fn register(
    client: &ClusterClient,
    core: &Core,
    reg: &Registration,
    identity_path: &Path,
) -> Result<RegisterAgentResponse, AgentError> {
    let mut failures = 0u32;
    loop {
        let agent_id = core.agent_id();
        let running: Vec<TaskStatus> = core
            .tasks()
            .into_iter()
            .filter(|(_, t)| t.local.is_active() || t.local == LocalState::Killing)
            .map(|(id, t)| {
                let state = if t.state == TaskState::Starting || t.state == TaskState::Staging {
                    TaskState::Starting
                } else {
                    TaskState::Running
                };
                status(&agent_id, &TaskEvent::new(&id, state))
            })
            .collect();
        let req = RegisterAgentRequest {
            agent_id: (!agent_id.is_empty()).then(|| agent_id.clone()),
            hostname: reg.hostname.clone(),
            address: reg.address.clone(),
            resources: reg.resources,
            attributes: reg.attributes.clone(),
            running,
        };
        match client
            .post_json::<_, RegisterAgentResponse>("/v1/agents/register", &req)
            .await
        {
            Ok(resp) => {
                if resp.agent_id != agent_id {
                    save_identity(
                        identity_path,
                        &Identity {
                            agent_id: Some(resp.agent_id.clone()),
                        },
                    )?;
                    core.set_agent_id(&resp.agent_id);
                }
                tracing::info!(
                    agent_id = %resp.agent_id,
                    recovered = req.running.len(),
                    heartbeat_interval_ms = resp.heartbeat_interval_ms,
                    "registered"
                );
                return Ok(resp);
            }
            Err(e) if is_fatal(&e) => return Err(e.into()),
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "registration failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

async fn sync_loop(
    cfg: &AgentConfig,
    client: &ClusterClient,
    core: &Arc<Core>,
    executors: &Arc<Executors>,
    reg: &Registration,
    identity_path: &Path,
) -> Result<(), AgentError> {
    loop {
        let registered = register(client, core, reg, identity_path).await?;
        let wait_ms = cfg.wait_ms.min(registered.heartbeat_interval_ms.max(100));
        let mut known_version = 0u64;
        let mut failures = 0u32;
        loop {
            let (agent_id, updates) = core.pending(MAX_UPDATES_PER_SYNC);
            // With updates to send the servers answer at once; otherwise
            // wait for changes, but send new updates as soon as they come.
            let long_poll = updates.is_empty();
            let req = AgentSyncRequest {
                agent_id,
                updates,
                known_version,
                wait_ms: if long_poll { wait_ms } else { 0 },
            };
            let notified = core.notify.notified();
            let call = client.post_json::<_, AgentSyncResponse>("/v1/agents/sync", &req);
            let result = if long_poll {
                tokio::select! {
                    r = call => Some(r),
                    _ = notified => None,
                }
            } else {
                Some(call.await)
            };
            let Some(result) = result else { continue };
            match result {
                Ok(resp) => {
                    failures = 0;
                    core.acknowledge(&resp.acknowledged);
                    if resp.reregister {
                        tracing::info!("the servers asked this agent to register again");
                        break;
                    }
                    known_version = resp.version;
                    apply(core, executors, &resp);
                    if core.take_terminal_count() > 0 {
                        let ex = executors.clone();
                        let dir = tasks_dir(&cfg.data_dir);
                        tokio::spawn(async move { ex.gc(&dir).await });
                    }
                }
                Err(e) if e.status() == Some(404) => {
                    tracing::warn!(error = %e, "the servers do not know this agent; registering again");
                    break;
                }
                Err(e) if is_fatal_sync(&e) => return Err(e.into()),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, attempt = failures, pending = core.pending_count(), "sync failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
        }
    }
}

fn apply(core: &Core, executors: &Executors, resp: &AgentSyncResponse) {
    let (local, pending) = core.snapshot();
    let plan = reconcile::plan(&resp.tasks, &resp.kill, &local, &pending);
    for task in plan.launch {
        tracing::info!(task = %task.task_id, name = %task.name, resources = %task.resources, "launching task");
        core.track(task.clone(), LocalState::Launching, TaskState::Staging);
        executors.launch(task);
    }
    for (id, reason) in plan.kill {
        if executors.kill(&id, reason) {
            core.mark_killing(&id);
        } else {
            tracing::debug!(task = %id, "kill of a task that is already ending");
        }
    }
    for id in plan.report_killed {
        core.report(TaskEvent::new(&id, TaskState::Killed).with_reason(
            KillReason::KilledByUser.as_str(),
            "killed before it was launched",
        ));
    }
    if !plan.forget.is_empty() {
        core.forget(&plan.forget);
    }
}

/// Where the agent keeps its state (for tools and tests).
pub fn tasks_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.json");
        assert!(load_identity(&p).unwrap().agent_id.is_none());
        save_identity(
            &p,
            &Identity {
                agent_id: Some("a-1".into()),
            },
        )
        .unwrap();
        assert_eq!(load_identity(&p).unwrap().agent_id.as_deref(), Some("a-1"));
        std::fs::write(&p, "garbage").unwrap();
        assert!(load_identity(&p)
            .unwrap_err()
            .to_string()
            .contains("agent.json"));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_millis(1000));
        assert_eq!(backoff(3), Duration::from_millis(2000));
        assert_eq!(backoff(10), Duration::from_secs(4));
    }
}
