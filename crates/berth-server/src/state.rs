//! The replicated cluster state and the commands that change it.
//!
//! Every server applies the same committed [`Command`]s in the same order
//! to a [`ClusterState`], so `apply` is deterministic: no clock, no
//! randomness, no id generation. Times, ids and update uuids arrive inside
//! the command, made by the leader before it proposes it.
//!
//! [`Command`] is append-only: variants and fields are never removed or
//! renamed, new fields carry `#[serde(default)]`, and every log entry is
//! stored with [`COMMAND_VERSION`] so an old server refuses a log it
//! cannot read instead of misapplying it.

use berth_api::cluster::{FrameworkInfo, TaskInfo, TaskStatus};
use berth_types::{Attributes, JobSpec, NodeState, Resources, TaskState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// Version of the command encoding written with every log entry.
pub const COMMAND_VERSION: u32 = 1;

/// Terminal tasks kept for `task ls`; older ones are forgotten in the order
/// they ended, so state stays bounded however many tasks a cluster runs.
pub const TERMINAL_TASKS_KEPT: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub total: Resources,
    pub attributes: Attributes,
    pub state: NodeState,
    /// Sum of the resources of the node's non-terminal tasks.
    pub used: Resources,
    /// Log index of the last change to what this node should run; agents
    /// long-poll on it.
    pub version: u64,
    pub registered_ms: u64,
}

impl Node {
    pub fn free(&self) -> Resources {
        self.total.saturating_sub(&self.used)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Framework {
    pub id: String,
    pub info: FrameworkInfo,
    pub connected: bool,
    /// When it disconnected; its tasks are killed once
    /// `failover_timeout_secs` has passed (the leader proposes that).
    pub disconnected_ms: Option<u64>,
    pub registered_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub info: TaskInfo,
    pub framework_id: String,
    pub role: String,
    pub state: TaskState,
    pub message: Option<String>,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub kill_requested: bool,
    pub launched_ms: u64,
    pub updated_ms: u64,
}

impl Task {
    pub fn job(&self) -> Option<&str> {
        self.info.labels.get("job").map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    pub submitted_ms: u64,
    pub stopped: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: BTreeMap<String, Node>,
    pub frameworks: BTreeMap<String, Framework>,
    pub tasks: BTreeMap<String, Task>,
    pub jobs: BTreeMap<String, Job>,
    pub role_weights: BTreeMap<String, f64>,
    /// Non-terminal task ids per node.
    pub node_tasks: BTreeMap<String, BTreeSet<String>>,
    /// Terminal task ids in the order they ended (bounded).
    pub terminal: VecDeque<String>,
    pub last_applied: u64,
}

/// A change to the cluster state. Append-only: see the module comment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Registers a node, or re-registers a known one (after an agent
    /// restart or a LOST period). `running` lists the tasks the agent still
    /// runs; known non-terminal tasks it does not list are marked LOST.
    RegisterNode {
        node_id: String,
        hostname: String,
        address: String,
        resources: Resources,
        attributes: Attributes,
        running: Vec<String>,
        at_ms: u64,
        /// Prefix for the uuids of updates this command generates.
        uuid_prefix: String,
    },
    /// The node stopped heartbeating: its non-terminal tasks become LOST.
    NodeLost {
        node_id: String,
        at_ms: u64,
        uuid_prefix: String,
    },
    /// Maintenance: no new offers, and its tasks are killed (reason
    /// `drained`) so their frameworks relaunch them elsewhere.
    DrainNode {
        node_id: String,
        at_ms: u64,
    },
    /// Back from maintenance.
    ActivateNode {
        node_id: String,
        at_ms: u64,
    },
    SubscribeFramework {
        framework_id: String,
        info: FrameworkInfo,
        at_ms: u64,
    },
    DisconnectFramework {
        framework_id: String,
        at_ms: u64,
    },
    /// TEARDOWN or failover timeout: kill its tasks and forget it.
    RemoveFramework {
        framework_id: String,
        at_ms: u64,
    },
    /// ACCEPT with LAUNCH operations. Tasks that do not fit their node
    /// (resources, state) are refused with a LOST update instead.
    LaunchTasks {
        framework_id: String,
        tasks: Vec<TaskInfo>,
        at_ms: u64,
        uuid_prefix: String,
    },
    /// Status updates from agents (already carrying their uuids).
    UpdateTasks {
        updates: Vec<TaskStatus>,
    },
    KillTasks {
        task_ids: Vec<String>,
        reason: String,
        at_ms: u64,
    },
    PutJob {
        spec: JobSpec,
        at_ms: u64,
    },
    StopJob {
        name: String,
        at_ms: u64,
    },
    SetRoleWeight {
        role: String,
        weight: f64,
    },
}

/// What applying a command produced, returned to the proposer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Set when the command was refused (nothing changed).
    pub error: Option<String>,
    /// Status updates to forward to frameworks: (framework id, status).
    pub updates: Vec<(String, TaskStatus)>,
    /// Update uuids now committed (acknowledgements for agents).
    pub acknowledged: Vec<String>,
}

impl CommandResult {
    fn refused(msg: impl Into<String>) -> Self {
        Self {
            error: Some(msg.into()),
            ..Self::default()
        }
    }
}

impl ClusterState {
    /// Applies one committed command at log `index`.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> CommandResult {
        self.last_applied = index;
        match cmd {
            Command::RegisterNode {
                node_id,
                hostname,
                address,
                resources,
                attributes,
                running,
                at_ms,
                uuid_prefix,
            } => {
                let mut res = CommandResult::default();
                let running: BTreeSet<&String> = running.iter().collect();
                let known: Vec<String> = self
                    .node_tasks
                    .get(node_id)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                let mut n = 0;
                for task_id in known {
                    // Tasks still STAGING may simply not have started yet.
                    let staging = self
                        .tasks
                        .get(&task_id)
                        .is_some_and(|t| t.state == TaskState::Staging);
                    if !running.contains(&task_id) && !staging {
                        n += 1;
                        let uuid = format!("{uuid_prefix}-{n}");
                        if let Some(u) = self.terminate(
                            &task_id,
                            TaskState::Lost,
                            "agent_restarted",
                            "task not found on the agent after it re-registered",
                            *at_ms,
                            uuid,
                        ) {
                            res.updates.push(u);
                        }
                    }
                }
                let prev = self.nodes.get(node_id);
                let used = prev.map(|p| p.used).unwrap_or_default();
                let registered_ms = prev.map(|p| p.registered_ms).unwrap_or(*at_ms);
                let state = match prev.map(|p| p.state) {
                    Some(NodeState::Draining) => NodeState::Draining,
                    _ => NodeState::Active,
                };
                self.nodes.insert(
                    node_id.clone(),
                    Node {
                        id: node_id.clone(),
                        hostname: hostname.clone(),
                        address: address.clone(),
                        total: *resources,
                        attributes: attributes.clone(),
                        state,
                        used,
                        version: index,
                        registered_ms,
                    },
                );
                res
            }
            Command::NodeLost {
                node_id,
                at_ms,
                uuid_prefix,
            } => {
                let Some(node) = self.nodes.get_mut(node_id) else {
                    return CommandResult::refused(format!("node {node_id} not found"));
                };
                node.state = NodeState::Lost;
                node.version = index;
                let mut res = CommandResult::default();
                let ids: Vec<String> = self
                    .node_tasks
                    .get(node_id)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for (n, task_id) in ids.into_iter().enumerate() {
                    if let Some(u) = self.terminate(
                        &task_id,
                        TaskState::Lost,
                        "agent_lost",
                        &format!("node {node_id} stopped heartbeating"),
                        *at_ms,
                        format!("{uuid_prefix}-{n}"),
                    ) {
                        res.updates.push(u);
                    }
                }
                res
            }
            Command::DrainNode { node_id, at_ms } => {
                let Some(node) = self.nodes.get_mut(node_id) else {
                    return CommandResult::refused(format!("node {node_id} not found"));
                };
                node.state = NodeState::Draining;
                node.version = index;
                let ids: Vec<String> = self
                    .node_tasks
                    .get(node_id)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default();
                for id in ids {
                    if let Some(t) = self.tasks.get_mut(&id) {
                        t.kill_requested = true;
                        t.reason = Some("drained".into());
                        t.updated_ms = *at_ms;
                    }
                }
                CommandResult::default()
            }
            Command::ActivateNode { node_id, .. } => {
                let Some(node) = self.nodes.get_mut(node_id) else {
                    return CommandResult::refused(format!("node {node_id} not found"));
                };
                if node.state == NodeState::Draining {
                    node.state = NodeState::Active;
                }
                node.version = index;
                CommandResult::default()
            }
            Command::SubscribeFramework {
                framework_id,
                info,
                at_ms,
            } => {
                let registered_ms = self
                    .frameworks
                    .get(framework_id)
                    .map(|f| f.registered_ms)
                    .unwrap_or(*at_ms);
                let mut info = info.clone();
                info.id = Some(framework_id.clone());
                self.frameworks.insert(
                    framework_id.clone(),
                    Framework {
                        id: framework_id.clone(),
                        info,
                        connected: true,
                        disconnected_ms: None,
                        registered_ms,
                    },
                );
                CommandResult::default()
            }
            Command::DisconnectFramework {
                framework_id,
                at_ms,
            } => {
                if let Some(f) = self.frameworks.get_mut(framework_id) {
                    f.connected = false;
                    f.disconnected_ms = Some(*at_ms);
                }
                CommandResult::default()
            }
            Command::RemoveFramework {
                framework_id,
                at_ms,
            } => {
                if self.frameworks.remove(framework_id).is_none() {
                    return CommandResult::refused(format!("framework {framework_id} not found"));
                }
                let ids: Vec<String> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| &t.framework_id == framework_id && !t.state.is_terminal())
                    .map(|(id, _)| id.clone())
                    .collect();
                self.request_kill(index, &ids, "framework_removed", *at_ms);
                CommandResult::default()
            }
            Command::LaunchTasks {
                framework_id,
                tasks,
                at_ms,
                uuid_prefix,
            } => {
                let Some(fw) = self.frameworks.get(framework_id) else {
                    return CommandResult::refused(format!("framework {framework_id} not found"));
                };
                let role = fw.info.role.clone();
                let mut res = CommandResult::default();
                for (n, info) in tasks.iter().enumerate() {
                    let refuse = |why: String| -> (String, TaskStatus) {
                        (
                            framework_id.clone(),
                            TaskStatus {
                                task_id: info.task_id.clone(),
                                agent_id: info.agent_id.clone(),
                                state: TaskState::Lost,
                                message: Some(why),
                                reason: Some("launch_failed".into()),
                                exit_code: None,
                                uuid: format!("{uuid_prefix}-{n}"),
                                timestamp_ms: *at_ms,
                            },
                        )
                    };
                    if self.tasks.contains_key(&info.task_id) {
                        res.updates
                            .push(refuse(format!("task id {} already used", info.task_id)));
                        continue;
                    }
                    let Some(node) = self.nodes.get_mut(&info.agent_id) else {
                        res.updates
                            .push(refuse(format!("node {} not found", info.agent_id)));
                        continue;
                    };
                    if node.state != NodeState::Active {
                        res.updates
                            .push(refuse(format!("node {} is {}", info.agent_id, node.state)));
                        continue;
                    }
                    if !node.free().contains(&info.resources) {
                        res.updates.push(refuse(format!(
                            "node {} has {} free, task needs {}",
                            info.agent_id,
                            node.free(),
                            info.resources
                        )));
                        continue;
                    }
                    node.used = node.used.add(&info.resources);
                    node.version = index;
                    self.node_tasks
                        .entry(info.agent_id.clone())
                        .or_default()
                        .insert(info.task_id.clone());
                    self.tasks.insert(
                        info.task_id.clone(),
                        Task {
                            info: info.clone(),
                            framework_id: framework_id.clone(),
                            role: role.clone(),
                            state: TaskState::Staging,
                            message: None,
                            reason: None,
                            exit_code: None,
                            kill_requested: false,
                            launched_ms: *at_ms,
                            updated_ms: *at_ms,
                        },
                    );
                }
                res
            }
            Command::UpdateTasks { updates } => {
                let mut res = CommandResult::default();
                for u in updates {
                    res.acknowledged.push(u.uuid.clone());
                    let Some(task) = self.tasks.get(&u.task_id) else {
                        continue;
                    };
                    // A terminal state is final; a late or repeated update
                    // must not resurrect the task.
                    if task.state.is_terminal() || task.info.agent_id != u.agent_id {
                        continue;
                    }
                    let fw = task.framework_id.clone();
                    if u.state.is_terminal() {
                        let reason = match (&task.reason, u.state) {
                            // Keep why we asked for the kill (drained, ...).
                            (Some(r), TaskState::Killed) if task.kill_requested => r.clone(),
                            _ => u.reason.clone().unwrap_or_default(),
                        };
                        let mut status = u.clone();
                        if !reason.is_empty() {
                            status.reason = Some(reason.clone());
                        }
                        self.finish(&u.task_id, &status);
                        res.updates.push((fw, status));
                    } else {
                        let t = self.tasks.get_mut(&u.task_id).expect("checked above");
                        if t.state == u.state {
                            continue;
                        }
                        t.state = u.state;
                        t.message = u.message.clone();
                        t.updated_ms = u.timestamp_ms;
                        res.updates.push((fw, u.clone()));
                    }
                }
                res
            }
            Command::KillTasks {
                task_ids,
                reason,
                at_ms,
            } => {
                let unknown: Vec<&String> = task_ids
                    .iter()
                    .filter(|id| !self.tasks.contains_key(*id))
                    .collect();
                if let [one] = unknown.as_slice() {
                    if task_ids.len() == 1 {
                        return CommandResult::refused(format!("task {one} not found"));
                    }
                }
                self.request_kill(index, task_ids, reason, *at_ms);
                CommandResult::default()
            }
            Command::PutJob { spec, at_ms } => {
                if let Some(j) = self.jobs.get(&spec.name) {
                    let live = self
                        .tasks
                        .values()
                        .any(|t| t.job() == Some(&spec.name) && !t.state.is_terminal());
                    if !j.stopped && live {
                        return CommandResult::refused(format!(
                            "job {} already exists and is running; stop it first",
                            spec.name
                        ));
                    }
                    // Re-running a finished or stopped job forgets its old tasks.
                    let old: Vec<String> = self
                        .tasks
                        .iter()
                        .filter(|(_, t)| t.job() == Some(&spec.name))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in old {
                        if self.tasks.get(&id).is_some_and(|t| t.state.is_terminal()) {
                            self.tasks.remove(&id);
                            self.terminal.retain(|x| x != &id);
                        }
                    }
                }
                self.jobs.insert(
                    spec.name.clone(),
                    Job {
                        spec: spec.clone(),
                        submitted_ms: *at_ms,
                        stopped: false,
                    },
                );
                CommandResult::default()
            }
            Command::StopJob { name, at_ms } => {
                let Some(job) = self.jobs.get_mut(name) else {
                    return CommandResult::refused(format!("job {name} not found"));
                };
                job.stopped = true;
                let ids: Vec<String> = self
                    .tasks
                    .iter()
                    .filter(|(_, t)| t.job() == Some(name.as_str()) && !t.state.is_terminal())
                    .map(|(id, _)| id.clone())
                    .collect();
                self.request_kill(index, &ids, "killed_by_user", *at_ms);
                CommandResult::default()
            }
            Command::SetRoleWeight { role, weight } => {
                if !(weight.is_finite() && *weight > 0.0) {
                    return CommandResult::refused(format!(
                        "weight {weight} for role {role}: must be more than 0"
                    ));
                }
                self.role_weights.insert(role.clone(), *weight);
                CommandResult::default()
            }
        }
    }

    fn request_kill(&mut self, index: u64, ids: &[String], reason: &str, at_ms: u64) {
        for id in ids {
            let Some(t) = self.tasks.get_mut(id) else {
                continue;
            };
            if t.state.is_terminal() || t.kill_requested {
                continue;
            }
            t.kill_requested = true;
            t.reason = Some(reason.to_string());
            t.updated_ms = at_ms;
            if let Some(node) = self.nodes.get_mut(&t.info.agent_id) {
                node.version = index;
            }
        }
    }

    /// Moves a task to a terminal state decided by the servers (LOST) and
    /// returns the update for its framework.
    fn terminate(
        &mut self,
        task_id: &str,
        state: TaskState,
        reason: &str,
        message: &str,
        at_ms: u64,
        uuid: String,
    ) -> Option<(String, TaskStatus)> {
        let t = self.tasks.get(task_id)?;
        if t.state.is_terminal() {
            return None;
        }
        let status = TaskStatus {
            task_id: task_id.to_string(),
            agent_id: t.info.agent_id.clone(),
            state,
            message: Some(message.to_string()),
            reason: Some(reason.to_string()),
            exit_code: None,
            uuid,
            timestamp_ms: at_ms,
        };
        let fw = t.framework_id.clone();
        self.finish(task_id, &status);
        Some((fw, status))
    }

    /// Records a terminal status: frees the node's resources and bounds the
    /// number of terminal tasks kept.
    fn finish(&mut self, task_id: &str, status: &TaskStatus) {
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        t.state = status.state;
        t.message = status.message.clone();
        t.reason = status.reason.clone();
        t.exit_code = status.exit_code;
        t.updated_ms = status.timestamp_ms;
        let (agent, res) = (t.info.agent_id.clone(), t.info.resources);
        if let Some(node) = self.nodes.get_mut(&agent) {
            node.used = node.used.saturating_sub(&res);
            node.version = self.last_applied;
        }
        if let Some(set) = self.node_tasks.get_mut(&agent) {
            set.remove(task_id);
        }
        self.terminal.push_back(task_id.to_string());
        while self.terminal.len() > TERMINAL_TASKS_KEPT {
            if let Some(old) = self.terminal.pop_front() {
                self.tasks.remove(&old);
            }
        }
    }

    /// The non-terminal tasks assigned to a node, for its agent.
    pub fn node_assignments(&self, node_id: &str) -> Vec<&Task> {
        self.node_tasks
            .get(node_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.tasks.get(id))
            .collect()
    }

    /// Resources held by each framework's non-terminal tasks.
    pub fn framework_usage(&self) -> BTreeMap<String, Resources> {
        // Every allocation round reads this over 100,000 live tasks: sum by
        // borrowed id and clone each framework id once, not once a task.
        let mut sums: HashMap<&str, Resources> = HashMap::new();
        for set in self.node_tasks.values() {
            for id in set {
                if let Some(t) = self.tasks.get(id) {
                    let e = sums.entry(t.framework_id.as_str()).or_default();
                    *e = e.add(&t.info.resources);
                }
            }
        }
        sums.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }
}

/// A log entry's payload as stored: the command with its encoding version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionedCommand {
    pub version: u32,
    pub command: Command,
}

impl From<Command> for VersionedCommand {
    fn from(command: Command) -> Self {
        Self {
            version: COMMAND_VERSION,
            command,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_types::TaskKind;

    fn node(id: &str) -> Command {
        Command::RegisterNode {
            node_id: id.into(),
            hostname: format!("{id}.local"),
            address: String::new(),
            resources: Resources::new(4.0, 4096, 1000),
            attributes: Attributes::new(),
            running: vec![],
            at_ms: 1,
            uuid_prefix: "r".into(),
        }
    }

    fn fw(id: &str) -> Command {
        Command::SubscribeFramework {
            framework_id: id.into(),
            info: FrameworkInfo {
                name: id.into(),
                role: "*".into(),
                id: None,
                failover_timeout_secs: 0.0,
            },
            at_ms: 1,
        }
    }

    fn task(id: &str, agent: &str, cpus: f64) -> TaskInfo {
        TaskInfo {
            task_id: id.into(),
            name: id.into(),
            agent_id: agent.into(),
            resources: Resources::new(cpus, 100, 0),
            kind: TaskKind::Command {
                shell: "true".into(),
            },
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
        }
    }

    fn launch(tasks: Vec<TaskInfo>) -> Command {
        Command::LaunchTasks {
            framework_id: "f".into(),
            tasks,
            at_ms: 2,
            uuid_prefix: "l".into(),
        }
    }

    fn status(id: &str, agent: &str, state: TaskState, uuid: &str) -> TaskStatus {
        TaskStatus {
            task_id: id.into(),
            agent_id: agent.into(),
            state,
            message: None,
            reason: None,
            exit_code: None,
            uuid: uuid.into(),
            timestamp_ms: 3,
        }
    }

    fn setup() -> ClusterState {
        let mut s = ClusterState::default();
        s.apply(1, &node("n1"));
        s.apply(2, &fw("f"));
        s
    }

    #[test]
    fn launch_accounts_and_refuses_overcommit() {
        let mut s = setup();
        let r = s.apply(3, &launch(vec![task("a", "n1", 3.0), task("b", "n1", 2.0)]));
        assert_eq!(r.updates.len(), 1, "b does not fit");
        assert_eq!(r.updates[0].1.state, TaskState::Lost);
        assert!(r.updates[0].1.message.as_deref().unwrap().contains("free"));
        assert_eq!(s.nodes["n1"].used, Resources::new(3.0, 100, 0));
        assert_eq!(s.node_assignments("n1").len(), 1);
        assert_eq!(s.nodes["n1"].version, 3);
    }

    #[test]
    fn terminal_updates_free_resources_and_are_final() {
        let mut s = setup();
        s.apply(3, &launch(vec![task("a", "n1", 1.0)]));
        let r = s.apply(
            4,
            &Command::UpdateTasks {
                updates: vec![
                    status("a", "n1", TaskState::Running, "u1"),
                    status("a", "n1", TaskState::Finished, "u2"),
                    status("a", "n1", TaskState::Running, "u3"),
                ],
            },
        );
        assert_eq!(r.acknowledged, vec!["u1", "u2", "u3"]);
        assert_eq!(r.updates.len(), 2);
        assert_eq!(s.tasks["a"].state, TaskState::Finished);
        assert_eq!(s.nodes["n1"].used, Resources::ZERO);
        assert!(s.node_assignments("n1").is_empty());
    }

    #[test]
    fn lost_node_loses_its_tasks() {
        let mut s = setup();
        s.apply(3, &launch(vec![task("a", "n1", 1.0), task("b", "n1", 1.0)]));
        let r = s.apply(
            4,
            &Command::NodeLost {
                node_id: "n1".into(),
                at_ms: 9,
                uuid_prefix: "x".into(),
            },
        );
        assert_eq!(r.updates.len(), 2);
        assert!(r
            .updates
            .iter()
            .all(|(f, u)| f == "f" && u.state == TaskState::Lost));
        assert_eq!(s.nodes["n1"].state, NodeState::Lost);
        // A launch on a lost node is refused.
        let r = s.apply(5, &launch(vec![task("c", "n1", 1.0)]));
        assert_eq!(r.updates.len(), 1);
        // Re-registering makes it active again with nothing assigned.
        s.apply(6, &node("n1"));
        assert_eq!(s.nodes["n1"].state, NodeState::Active);
        assert_eq!(s.nodes["n1"].used, Resources::ZERO);
    }

    #[test]
    fn reregister_recovers_running_tasks() {
        let mut s = setup();
        s.apply(3, &launch(vec![task("a", "n1", 1.0), task("b", "n1", 1.0)]));
        s.apply(
            4,
            &Command::UpdateTasks {
                updates: vec![
                    status("a", "n1", TaskState::Running, "u1"),
                    status("b", "n1", TaskState::Running, "u2"),
                ],
            },
        );
        let Command::RegisterNode { .. } = node("n1") else {
            unreachable!()
        };
        let mut again = node("n1");
        if let Command::RegisterNode { running, .. } = &mut again {
            running.push("a".into());
        }
        let r = s.apply(5, &again);
        assert_eq!(r.updates.len(), 1);
        assert_eq!(r.updates[0].1.task_id, "b");
        assert_eq!(s.tasks["a"].state, TaskState::Running);
        assert_eq!(s.nodes["n1"].used, Resources::new(1.0, 100, 0));
    }

    #[test]
    fn drain_requests_kills_with_reason() {
        let mut s = setup();
        s.apply(3, &launch(vec![task("a", "n1", 1.0)]));
        s.apply(
            4,
            &Command::DrainNode {
                node_id: "n1".into(),
                at_ms: 5,
            },
        );
        assert!(s.tasks["a"].kill_requested);
        let r = s.apply(
            5,
            &Command::UpdateTasks {
                updates: vec![status("a", "n1", TaskState::Killed, "k")],
            },
        );
        assert_eq!(r.updates[0].1.reason.as_deref(), Some("drained"));
        assert_eq!(s.nodes["n1"].state, NodeState::Draining);
    }

    #[test]
    fn apply_is_deterministic_and_roundtrips() {
        let cmds = [
            node("n1"),
            fw("f"),
            launch(vec![task("a", "n1", 1.0)]),
            Command::KillTasks {
                task_ids: vec!["a".into()],
                reason: "killed_by_user".into(),
                at_ms: 4,
            },
        ];
        let (mut a, mut b) = (ClusterState::default(), ClusterState::default());
        for (i, c) in cmds.iter().enumerate() {
            let text = serde_json::to_string(&VersionedCommand::from(c.clone())).unwrap();
            let back: VersionedCommand = serde_json::from_str(&text).unwrap();
            assert_eq!(
                a.apply(i as u64 + 1, c),
                b.apply(i as u64 + 1, &back.command)
            );
        }
        assert_eq!(a, b);
        let snap = serde_json::to_vec(&a).unwrap();
        assert_eq!(serde_json::from_slice::<ClusterState>(&snap).unwrap(), a);
    }

    #[test]
    fn terminal_tasks_are_bounded() {
        let mut s = setup();
        let mut idx = 3;
        for i in 0..(TERMINAL_TASKS_KEPT + 10) {
            let id = format!("t{i}");
            s.apply(idx, &launch(vec![task(&id, "n1", 0.001)]));
            s.apply(
                idx + 1,
                &Command::UpdateTasks {
                    updates: vec![status(&id, "n1", TaskState::Finished, "u")],
                },
            );
            idx += 2;
        }
        assert_eq!(s.tasks.len(), TERMINAL_TASKS_KEPT);
        assert!(!s.tasks.contains_key("t0"));
    }
}
