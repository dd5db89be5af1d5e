//! Admin views computed from the replicated state (read-only helpers on
//! [`ClusterState`]).

use crate::state::{ClusterState, Framework, Job, Node, Task};
use berth_api::cluster::{FrameworkView, JobView, NodeView, TaskView};
use berth_types::{Resources, TaskState};
use std::collections::{BTreeMap, BTreeSet, HashMap};

impl ClusterState {
    pub fn node_view(&self, n: &Node, last_seen_ms_ago: Option<u64>) -> NodeView {
        NodeView {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            address: n.address.clone(),
            state: n.state,
            total: n.total,
            used: n.used,
            free: n.free(),
            attributes: n.attributes.clone(),
            tasks: self.node_tasks.get(&n.id).map_or(0, |s| s.len() as u64),
            last_seen_ms_ago,
        }
    }

    pub fn task_view(t: &Task) -> TaskView {
        TaskView {
            id: t.info.task_id.clone(),
            name: t.info.name.clone(),
            job: t.job().map(str::to_string),
            framework_id: t.framework_id.clone(),
            role: t.role.clone(),
            node: t.info.agent_id.clone(),
            state: t.state,
            resources: t.info.resources,
            message: t.message.clone(),
            reason: t.reason.clone(),
            exit_code: t.exit_code,
            updated_ms: t.updated_ms,
        }
    }

    /// Tasks grouped by their `job` label.
    pub fn tasks_by_job(&self) -> HashMap<&str, Vec<&Task>> {
        let mut out: HashMap<&str, Vec<&Task>> = HashMap::new();
        for t in self.tasks.values() {
            if let Some(j) = t.job() {
                out.entry(j).or_default().push(t);
            }
        }
        out
    }

    pub fn job_view(job: &Job, tasks: &[&Task], placement: Option<String>) -> JobView {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for t in tasks {
            *counts.entry(t.state.as_str().to_string()).or_default() += 1;
        }
        JobView {
            spec: job.spec.clone(),
            status: job_status(job, tasks).to_string(),
            tasks: counts,
            placement,
        }
    }

    /// `connected` comes from the leader's live subscriptions.
    pub fn framework_view(
        &self,
        f: &Framework,
        connected: bool,
        usage: &BTreeMap<String, Resources>,
        task_counts: &HashMap<&str, u64>,
    ) -> FrameworkView {
        FrameworkView {
            id: f.id.clone(),
            name: f.info.name.clone(),
            role: f.info.role.clone(),
            connected,
            tasks: task_counts.get(f.id.as_str()).copied().unwrap_or(0),
            used: usage.get(&f.id).copied().unwrap_or_default(),
            failover_timeout_secs: f.info.failover_timeout_secs,
        }
    }

    /// Non-terminal tasks per framework.
    pub fn live_tasks_per_framework(&self) -> HashMap<&str, u64> {
        let mut out: HashMap<&str, u64> = HashMap::new();
        for set in self.node_tasks.values() {
            for id in set {
                if let Some(t) = self.tasks.get(id) {
                    *out.entry(t.framework_id.as_str()).or_default() += 1;
                }
            }
        }
        out
    }
}

/// `stopped`, `finished` (every instance has a FINISHED task), `running`
/// (some task not terminal), `failed` (an instance failed more than
/// `max_retries` times) or `pending`.
fn job_status(job: &Job, tasks: &[&Task]) -> &'static str {
    if job.stopped {
        return "stopped";
    }
    let instance = |t: &Task| {
        t.info
            .labels
            .get("instance")
            .cloned()
            .unwrap_or_else(|| t.info.task_id.clone())
    };
    let finished: BTreeSet<String> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Finished)
        .map(|t| instance(t))
        .collect();
    if finished.len() as u64 >= u64::from(job.spec.instances) {
        return "finished";
    }
    if tasks.iter().any(|t| !t.state.is_terminal()) {
        return "running";
    }
    let mut failures: HashMap<String, u32> = HashMap::new();
    for t in tasks.iter().filter(|t| t.state == TaskState::Failed) {
        *failures.entry(instance(t)).or_default() += 1;
    }
    if failures
        .iter()
        .any(|(i, n)| *n > job.spec.max_retries && !finished.contains(i))
    {
        return "failed";
    }
    "pending"
}
