//! Operations behind the admin API: jobs, tasks, nodes, frameworks, roles.

use super::util::now_ms;
use super::{Master, MasterError};
use crate::state::{ClusterState, Command};
use berth_api::cluster::{FrameworkView, JobView, NodeView, TaskView};
use berth_types::JobSpec;
use std::collections::BTreeMap;

impl Master {
    /// Confirms leadership before a read, so a deposed leader that has not
    /// noticed yet does not answer from stale state.
    async fn read_barrier(&self) -> Result<(), MasterError> {
        self.ctx()?;
        self.replica.ensure_linearizable().await?;
        Ok(())
    }

    fn notes(&self) -> BTreeMap<String, String> {
        self.placement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub async fn put_job(&self, spec: JobSpec) -> Result<JobView, MasterError> {
        self.ctx()?;
        spec.validate().map_err(MasterError::BadRequest)?;
        let name = spec.name.clone();
        let res = self
            .propose(Command::PutJob {
                spec,
                at_ms: now_ms(),
            })
            .await?;
        if let Some(e) = res.error {
            return Err(MasterError::Conflict(e));
        }
        tracing::info!(job = %name, "job submitted");
        self.job_now(&name)
    }

    pub async fn jobs(&self) -> Result<Vec<JobView>, MasterError> {
        self.read_barrier().await?;
        let notes = self.notes();
        let s = self.read_state();
        let by_job = s.tasks_by_job();
        Ok(s.jobs
            .iter()
            .map(|(name, job)| {
                let tasks = by_job.get(name.as_str()).map_or(&[][..], |v| v.as_slice());
                ClusterState::job_view(job, tasks, notes.get(name).cloned())
            })
            .collect())
    }

    pub async fn job(&self, name: &str) -> Result<JobView, MasterError> {
        self.read_barrier().await?;
        self.job_now(name)
    }

    fn job_now(&self, name: &str) -> Result<JobView, MasterError> {
        let note = self.notes().get(name).cloned();
        let s = self.read_state();
        let job = s
            .jobs
            .get(name)
            .ok_or_else(|| MasterError::NotFound(format!("job {name} not found")))?;
        let tasks: Vec<_> = s.tasks.values().filter(|t| t.job() == Some(name)).collect();
        Ok(ClusterState::job_view(job, &tasks, note))
    }

    pub async fn stop_job(&self, name: &str) -> Result<JobView, MasterError> {
        self.ctx()?;
        let res = self
            .propose(Command::StopJob {
                name: name.to_string(),
                at_ms: now_ms(),
            })
            .await?;
        if let Some(e) = res.error {
            return Err(MasterError::refused(e, MasterError::Conflict));
        }
        tracing::info!(job = %name, "job stopped");
        self.job_now(name)
    }

    /// Tasks, all or those of one job, ordered by id.
    pub async fn tasks(&self, job: Option<&str>) -> Result<Vec<TaskView>, MasterError> {
        self.read_barrier().await?;
        let s = self.read_state();
        if let Some(j) = job {
            if !s.jobs.contains_key(j) {
                return Err(MasterError::NotFound(format!("job {j} not found")));
            }
        }
        Ok(s.tasks
            .values()
            .filter(|t| job.is_none() || t.job() == job)
            .map(ClusterState::task_view)
            .collect())
    }

    pub async fn nodes(&self) -> Result<Vec<NodeView>, MasterError> {
        self.read_barrier().await?;
        let seen = self.last_seen_ms();
        let s = self.read_state();
        Ok(s.nodes
            .values()
            .map(|n| s.node_view(n, seen.get(&n.id).copied()))
            .collect())
    }

    fn node_now(&self, id: &str) -> Result<NodeView, MasterError> {
        let seen = self.last_seen_ms().get(id).copied();
        let s = self.read_state();
        let n = s
            .nodes
            .get(id)
            .ok_or_else(|| MasterError::NotFound(format!("node {id} not found")))?;
        Ok(s.node_view(n, seen))
    }

    /// Maintenance: no more offers on the node, and its tasks are killed so
    /// their frameworks move them.
    pub async fn drain_node(&self, id: &str) -> Result<NodeView, MasterError> {
        let ctx = self.ctx()?;
        let res = self
            .propose(Command::DrainNode {
                node_id: id.to_string(),
                at_ms: now_ms(),
            })
            .await?;
        if let Some(e) = res.error {
            return Err(MasterError::refused(e, MasterError::Conflict));
        }
        ctx.fws().rescind_agent(id);
        tracing::info!(node = %id, "node draining");
        self.node_now(id)
    }

    pub async fn activate_node(&self, id: &str) -> Result<NodeView, MasterError> {
        self.ctx()?;
        let res = self
            .propose(Command::ActivateNode {
                node_id: id.to_string(),
                at_ms: now_ms(),
            })
            .await?;
        if let Some(e) = res.error {
            return Err(MasterError::refused(e, MasterError::Conflict));
        }
        tracing::info!(node = %id, "node active");
        self.trigger_allocation();
        self.node_now(id)
    }

    pub async fn frameworks(&self) -> Result<Vec<FrameworkView>, MasterError> {
        self.read_barrier().await?;
        let connected: std::collections::HashSet<String> = match self.leader_ctx() {
            Some(ctx) => ctx.fws().subs.keys().cloned().collect(),
            None => Default::default(),
        };
        let s = self.read_state();
        let usage = s.framework_usage();
        let counts = s.live_tasks_per_framework();
        Ok(s.frameworks
            .values()
            .map(|f| s.framework_view(f, connected.contains(&f.id), &usage, &counts))
            .collect())
    }

    pub async fn set_role_weight(&self, role: &str, weight: f64) -> Result<(), MasterError> {
        self.ctx()?;
        if role != "*" && !berth_types::valid_name(role) {
            return Err(MasterError::BadRequest(format!(
                "role {role:?}: not a valid role name"
            )));
        }
        let res = self
            .propose(Command::SetRoleWeight {
                role: role.to_string(),
                weight,
            })
            .await?;
        if let Some(e) = res.error {
            return Err(MasterError::BadRequest(e));
        }
        self.trigger_allocation();
        Ok(())
    }
}
