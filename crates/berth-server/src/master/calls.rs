//! The scheduler calls other than SUBSCRIBE.

use super::leader::LeaderCtx;
use super::util::{now_ms, random_id, secs_to_ms, valid_client_id};
use super::{Master, MasterError};
use crate::state::Command;
use berth_api::cluster::{Call, Event, Filters, Operation, ReconcileTask, TaskInfo, TaskStatus};
use berth_sched::Demand;
use berth_types::{Resources, TaskState};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The tasks of an ACCEPT that passed the checks, reserved and waiting to
/// be written.
pub(crate) struct Launch {
    framework_id: String,
    tasks: Vec<TaskInfo>,
    /// Resources per agent, reserved until the write is applied.
    used: BTreeMap<String, Resources>,
    at_ms: u64,
}

/// Mesos's default refusal after DECLINE without filters.
const DEFAULT_REFUSE_SECS: f64 = 5.0;

/// The call's type as spelled on the wire.
pub fn call_name(call: &Call) -> &'static str {
    match call {
        Call::Subscribe { .. } => "SUBSCRIBE",
        Call::Accept { .. } => "ACCEPT",
        Call::Decline { .. } => "DECLINE",
        Call::Request { .. } => "REQUEST",
        Call::Revive {} => "REVIVE",
        Call::Suppress {} => "SUPPRESS",
        Call::Kill { .. } => "KILL",
        Call::Acknowledge { .. } => "ACKNOWLEDGE",
        Call::Reconcile { .. } => "RECONCILE",
        Call::Teardown {} => "TEARDOWN",
    }
}

impl Master {
    /// Handles a call of a subscribed framework; `stream_id` must be that of
    /// its live subscription.
    pub async fn handle_call(
        &self,
        framework_id: &str,
        stream_id: &str,
        call: Call,
    ) -> Result<(), MasterError> {
        let ctx = self.ctx()?;
        if let Call::Subscribe { .. } = call {
            return Err(MasterError::BadRequest(
                "SUBSCRIBE opens a new stream; it is not a call on an existing one".into(),
            ));
        }
        self.check_stream(&ctx, framework_id, stream_id)?;
        match call {
            Call::Subscribe { .. } => Ok(()),
            Call::Accept {
                offer_ids,
                operations,
                filters,
            } => {
                self.accept(&ctx, framework_id, offer_ids, operations, filters)
                    .await
            }
            Call::Decline { offer_ids, filters } => {
                self.decline(&ctx, framework_id, &offer_ids, filters);
                Ok(())
            }
            Call::Request { resources, count } => {
                if resources.is_zero() || !resources.cpus.is_finite() || resources.cpus < 0.0 {
                    return Err(MasterError::BadRequest(format!(
                        "REQUEST resources {resources}: give some cpus, mem or disk"
                    )));
                }
                if let Some(m) = ctx.fws().mem.get_mut(framework_id) {
                    m.demand = match count {
                        Some(0) => None,
                        _ => Some(Demand {
                            per_task: resources,
                            count,
                        }),
                    };
                }
                self.trigger_allocation();
                Ok(())
            }
            Call::Revive {} => {
                if let Some(m) = ctx.fws().mem.get_mut(framework_id) {
                    m.filters.clear();
                    m.suppressed = false;
                }
                self.trigger_allocation();
                Ok(())
            }
            Call::Suppress {} => {
                if let Some(m) = ctx.fws().mem.get_mut(framework_id) {
                    m.suppressed = true;
                }
                Ok(())
            }
            Call::Kill { task_id, .. } => self.kill(&ctx, framework_id, &task_id).await,
            Call::Acknowledge { task_id, uuid, .. } => {
                let mut f = ctx.fws();
                if let Some(m) = f.mem.get_mut(framework_id) {
                    if m.unacked.get(&task_id).is_some_and(|s| s.uuid == uuid) {
                        m.unacked.remove(&task_id);
                    }
                }
                Ok(())
            }
            Call::Reconcile { tasks } => {
                self.reconcile(&ctx, framework_id, &tasks);
                Ok(())
            }
            Call::Teardown {} => self.teardown(&ctx, framework_id).await,
        }
    }

    async fn accept(
        &self,
        ctx: &LeaderCtx,
        framework_id: &str,
        offer_ids: Vec<String>,
        operations: Vec<Operation>,
        filters: Option<Filters>,
    ) -> Result<(), MasterError> {
        match self.accept_now(ctx, framework_id, offer_ids, operations, filters) {
            Some(launch) => self.launch(ctx, launch).await,
            None => {
                // What was not used goes back to the pool.
                self.trigger_allocation();
                Ok(())
            }
        }
    }

    /// ACCEPT in two parts, for a caller that lets later calls proceed
    /// while the launch is written: this part, done at once, checks the
    /// stream, takes the offers, sets the filters, answers refused tasks
    /// LOST and reserves the resources of the rest; [`Master::launch`]
    /// writes them. `None` when nothing is left to launch.
    pub(crate) fn accept_begin(
        &self,
        framework_id: &str,
        stream_id: &str,
        offer_ids: Vec<String>,
        operations: Vec<Operation>,
        filters: Option<Filters>,
    ) -> Result<Option<(Arc<LeaderCtx>, Launch)>, MasterError> {
        let ctx = self.ctx()?;
        self.check_stream(&ctx, framework_id, stream_id)?;
        match self.accept_now(&ctx, framework_id, offer_ids, operations, filters) {
            Some(launch) => Ok(Some((ctx, launch))),
            None => {
                self.trigger_allocation();
                Ok(None)
            }
        }
    }

    fn accept_now(
        &self,
        ctx: &LeaderCtx,
        framework_id: &str,
        offer_ids: Vec<String>,
        operations: Vec<Operation>,
        filters: Option<Filters>,
    ) -> Option<Launch> {
        let at_ms = now_ms();
        // Take the offers: from here on their resources are this call's.
        let mut available: BTreeMap<String, Resources> = BTreeMap::new();
        let mut invalid: Vec<String> = Vec::new();
        {
            let mut f = ctx.fws();
            for id in &offer_ids {
                match f.offers.get(id) {
                    Some(o) if o.framework_id == framework_id => {
                        if let Some(o) = f.offers.remove(id) {
                            let e = available.entry(o.agent_id).or_default();
                            *e = e.add(&o.resources);
                        }
                    }
                    Some(_) => invalid.push(format!("offer {id} belongs to another framework")),
                    None => invalid.push(format!(
                        "offer {id} not found (rescinded, expired or already used)"
                    )),
                }
            }
        }
        let single_agent = (available.len() == 1)
            .then(|| available.keys().next().cloned())
            .flatten();
        let mut launch: Vec<TaskInfo> = Vec::new();
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        let mut refused: Vec<(String, TaskStatus)> = Vec::new();
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for Operation::Launch { task_infos } in operations {
            for mut t in task_infos {
                if t.agent_id.is_empty() {
                    if let Some(a) = &single_agent {
                        t.agent_id = a.clone();
                    }
                }
                let why = if !valid_client_id(&t.task_id) {
                    Some(format!(
                        "task id {:?}: use 1 to 128 letters, digits, '-', '_', '.' or ':'",
                        t.task_id
                    ))
                } else if !ids.insert(t.task_id.clone()) {
                    Some(format!("task id {} given twice in one ACCEPT", t.task_id))
                } else if !t.resources.cpus.is_finite() || t.resources.cpus < 0.0 {
                    Some(format!(
                        "task {}: invalid resources {}",
                        t.task_id, t.resources
                    ))
                } else {
                    match available.get_mut(&t.agent_id) {
                        None if !invalid.is_empty() => Some(format!(
                            "task {} was launched with invalid offers: {}",
                            t.task_id,
                            invalid.join("; ")
                        )),
                        None => Some(format!(
                            "task {}: agent {:?} is not the agent of any accepted offer",
                            t.task_id, t.agent_id
                        )),
                        Some(left) if !left.contains(&t.resources) => Some(format!(
                            "task {} needs {} but the offers on agent {} have {} left",
                            t.task_id, t.resources, t.agent_id, left
                        )),
                        Some(left) => {
                            *left = left.saturating_sub(&t.resources);
                            let u = used.entry(t.agent_id.clone()).or_default();
                            *u = u.add(&t.resources);
                            None
                        }
                    }
                };
                match why {
                    Some(message) => refused.push((
                        framework_id.to_string(),
                        TaskStatus {
                            task_id: t.task_id.clone(),
                            agent_id: t.agent_id.clone(),
                            state: TaskState::Lost,
                            message: Some(message),
                            reason: Some("launch_failed".into()),
                            exit_code: None,
                            uuid: random_id("u"),
                            timestamp_ms: at_ms,
                        },
                    )),
                    None => launch.push(t),
                }
            }
        }
        if let Some(filters) = filters {
            let until = at_ms.saturating_add(secs_to_ms(filters.refuse_seconds));
            if let Some(m) = ctx.fws().mem.get_mut(framework_id) {
                for agent in available.keys() {
                    if until > at_ms {
                        m.filters.insert(agent.clone(), until);
                    }
                }
            }
        }
        if !refused.is_empty() {
            self.forward_updates(refused);
        }
        if launch.is_empty() {
            return None;
        }
        ctx.fws().reserve(framework_id, &used);
        Some(Launch {
            framework_id: framework_id.to_string(),
            tasks: launch,
            used,
            at_ms,
        })
    }

    /// Writes the tasks of an accepted launch and releases their
    /// reservation (they are then counted as the node's used resources).
    pub(crate) async fn launch(&self, ctx: &LeaderCtx, l: Launch) -> Result<(), MasterError> {
        let started = std::time::Instant::now();
        let n = l.tasks.len();
        let r = self
            .propose(Command::LaunchTasks {
                framework_id: l.framework_id.clone(),
                tasks: l.tasks,
                at_ms: l.at_ms,
                uuid_prefix: random_id("u"),
            })
            .await;
        ctx.fws().unreserve(&l.framework_id, &l.used);
        tracing::debug!(framework = %l.framework_id, tasks = n, took_ms = started.elapsed().as_millis() as u64, "launch committed");
        // What was not used goes back to the pool.
        self.trigger_allocation();
        match r {
            Ok(res) => match res.error {
                Some(e) => Err(MasterError::BadRequest(e)),
                None => Ok(()),
            },
            Err(e) => Err(e),
        }
    }

    fn decline(
        &self,
        ctx: &LeaderCtx,
        framework_id: &str,
        offer_ids: &[String],
        filters: Option<Filters>,
    ) {
        let refuse = filters.map_or(DEFAULT_REFUSE_SECS, |f| f.refuse_seconds);
        let until = now_ms().saturating_add(secs_to_ms(refuse));
        let mut f = ctx.fws();
        let mut agents = Vec::new();
        for id in offer_ids {
            if f.offers
                .get(id)
                .is_some_and(|o| o.framework_id == framework_id)
            {
                if let Some(o) = f.offers.remove(id) {
                    agents.push(o.agent_id);
                }
            }
        }
        if let Some(m) = f.mem.get_mut(framework_id) {
            if secs_to_ms(refuse) > 0 {
                for a in agents {
                    m.filters.insert(a, until);
                }
            }
        }
        drop(f);
        self.trigger_allocation();
    }

    async fn kill(
        &self,
        ctx: &LeaderCtx,
        framework_id: &str,
        task_id: &str,
    ) -> Result<(), MasterError> {
        let known = {
            let s = self.read_state();
            s.tasks
                .get(task_id)
                .filter(|t| t.framework_id == framework_id)
                .map(|t| (t.state.is_terminal(), status_of(t)))
        };
        match known {
            None => {
                // As Mesos does: a kill of an unknown task answers LOST.
                let status = TaskStatus {
                    task_id: task_id.to_string(),
                    agent_id: String::new(),
                    state: TaskState::Lost,
                    message: Some(format!("task {task_id} not found")),
                    reason: Some("reconciliation".into()),
                    exit_code: None,
                    uuid: random_id("k"),
                    timestamp_ms: now_ms(),
                };
                self.send_event(ctx, framework_id, Event::Update { status });
                Ok(())
            }
            Some((true, mut status)) => {
                status.uuid = random_id("k");
                self.send_event(ctx, framework_id, Event::Update { status });
                Ok(())
            }
            Some((false, _)) => {
                let res = self
                    .propose(Command::KillTasks {
                        task_ids: vec![task_id.to_string()],
                        reason: "killed_by_framework".into(),
                        at_ms: now_ms(),
                    })
                    .await?;
                match res.error {
                    Some(e) => Err(MasterError::refused(e, MasterError::BadRequest)),
                    None => Ok(()),
                }
            }
        }
    }

    fn reconcile(&self, ctx: &LeaderCtx, framework_id: &str, tasks: &[ReconcileTask]) {
        let now = now_ms();
        let statuses: Vec<TaskStatus> = {
            let s = self.read_state();
            if tasks.is_empty() {
                s.tasks
                    .values()
                    .filter(|t| t.framework_id == framework_id && !t.state.is_terminal())
                    .map(status_of)
                    .collect()
            } else {
                tasks
                    .iter()
                    .map(|r| match s.tasks.get(&r.task_id) {
                        Some(t) if t.framework_id == framework_id => status_of(t),
                        _ => TaskStatus {
                            task_id: r.task_id.clone(),
                            agent_id: r.agent_id.clone().unwrap_or_default(),
                            state: TaskState::Lost,
                            message: Some(format!("task {} is unknown", r.task_id)),
                            reason: Some("reconciliation".into()),
                            exit_code: None,
                            uuid: String::new(),
                            timestamp_ms: now,
                        },
                    })
                    .collect()
            }
        };
        let mut f = ctx.fws();
        for mut status in statuses {
            status.uuid = random_id("rc");
            f.send(framework_id, Event::Update { status });
        }
    }

    async fn teardown(&self, ctx: &LeaderCtx, framework_id: &str) -> Result<(), MasterError> {
        let res = self
            .propose(Command::RemoveFramework {
                framework_id: framework_id.to_string(),
                at_ms: now_ms(),
            })
            .await?;
        {
            let mut f = ctx.fws();
            f.drop_offers_of(framework_id, false);
            f.mem.remove(framework_id);
            if let Some(sub) = f.subs.remove(framework_id) {
                sub.cancel.cancel();
            }
        }
        tracing::info!(framework = %framework_id, "framework torn down");
        self.trigger_allocation();
        match res.error {
            Some(e) => Err(MasterError::refused(e, MasterError::BadRequest)),
            None => Ok(()),
        }
    }
}

/// The current status of a task, as RECONCILE reports it.
fn status_of(t: &crate::state::Task) -> TaskStatus {
    TaskStatus {
        task_id: t.info.task_id.clone(),
        agent_id: t.info.agent_id.clone(),
        state: t.state,
        message: t.message.clone(),
        reason: t.reason.clone(),
        exit_code: t.exit_code,
        uuid: String::new(),
        timestamp_ms: t.updated_ms,
    }
}
