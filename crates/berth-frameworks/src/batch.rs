//! The batch framework's logic, free of I/O: events and job snapshots in,
//! scheduler calls out. [`crate::run_batch`] connects it to the server.
//!
//! Each job that is not stopped wants `instances` instances. An instance is
//! done when one of its tasks FINISHED. A FAILED task is launched again up
//! to `max_retries` times; LOST tasks, and tasks KILLED because their node
//! went away (`drained`, `agent_lost`, `agent_restarted`), are always
//! launched again; any other KILLED (a user stop) ends the instance.
//!
//! Nothing here reads a clock (`now_ms` is passed in) or draws random
//! numbers (task id suffixes come from an injected [`IdGen`]), so tests
//! script events and times exactly.

use crate::taskid::{clean_suffix, BatchTaskId};
use crate::{batch_framework_id, JobEntry, KnownTask};
use berth_api::cluster::{
    Call, CallEnvelope, Event, Filters, FrameworkInfo, Offer, Operation, ReconcileTask, TaskInfo,
    TaskStatus,
};
use berth_sched::placement::{
    explain, place, place_holding, spread_values, NodeFit, OfferSlot, Placed, PlacementRequest,
};
use berth_types::{Attributes, Constraint, JobSpec, Resources, TaskState};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

/// Makes the random part of task ids.
pub type IdGen = Box<dyn FnMut() -> String + Send>;

/// How long the batch framework's tasks survive without a connected
/// instance of it (a week, so that a cluster without a leader for a while
/// does not lose its jobs).
pub const FAILOVER_TIMEOUT_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// Filter on the agents of accepted offers: short, so the rest of an agent
/// comes back soon for the next job.
pub const ACCEPT_REFUSE_SECONDS: f64 = 0.1;
/// Filter on declined offers.
pub const DECLINE_REFUSE_SECONDS: f64 = 1.0;
/// After SUBSCRIBED, offers are declined this long so that the answers to
/// reconciliation arrive first and running instances are not launched twice.
pub const RECONCILE_GRACE_MS: u64 = 1_000;
/// A launched task with no update for this long is asked about again
/// (explicit reconciliation), in case its launch was dropped.
pub const RECONCILE_AFTER_MS: u64 = 30_000;
/// A KILL with no terminal update after this long is sent again.
pub const KILL_RESEND_MS: u64 = 30_000;
/// Pending instances that saw no offers for this long get a placement note.
pub const NOTE_AFTER_MS: u64 = 2_000;
/// Most tasks launched by one ACCEPT. One ACCEPT is one replicated write,
/// so the offers of a round go out in a few large calls rather than one
/// call (and one write) per agent; the bound keeps each log entry a few MB.
pub const MAX_TASKS_PER_ACCEPT: usize = 10_000;
/// How long a spread job may hold back instances for attribute values that
/// have room on some node but no offer yet; after that it places on the
/// values it is offered, so a node never offered cannot stall it.
pub const SPREAD_HOLD_MS: u64 = 5_000;

/// KILLED reasons meaning the task was moved off its node, not stopped.
const RELAUNCH_REASONS: &[&str] = &["drained", "agent_lost", "agent_restarted"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Finished,
    /// Killed for a reason other than its node going away.
    Killed,
}

#[derive(Debug, Default)]
struct Instance {
    next_attempt: u32,
    failures: u32,
    outcome: Option<Outcome>,
    /// Non-terminal tasks of this instance (normally at most one).
    live: BTreeSet<String>,
}

impl Instance {
    fn is_pending(&self, max_retries: u32) -> bool {
        self.outcome.is_none() && self.live.is_empty() && self.failures <= max_retries
    }
}

#[derive(Debug, Default)]
struct JobState {
    /// The job as last seen in the cluster's state; `None` while only its
    /// tasks are known (an update before the first job snapshot).
    entry: Option<JobEntry>,
    instances: BTreeMap<u32, Instance>,
    /// Tasks whose terminal update was applied: a terminal state is final,
    /// and a resent update must not count a failure twice.
    ended: BTreeSet<String>,
    /// Some pending instances found no place in the last offers.
    unplaced: bool,
    /// Since when some instances have been pending.
    pending_since_ms: Option<u64>,
    /// `pending()` as last computed; `None` after anything that may change
    /// it. Status updates of tasks already known live (the bulk of the
    /// events: STAGING -> RUNNING) leave it, so each event costs O(1)
    /// instead of a walk over every instance.
    pending_cache: Cell<Option<u32>>,
    /// Whether one more task fits on some active node, with the node
    /// snapshot generation it was judged on.
    fits: Cell<Option<(u64, bool)>>,
    /// The placement note with what it was computed from (unplaced, node
    /// snapshot generation), so unchanged inputs do not recompute it.
    note: Option<((bool, u64), String)>,
    /// Since when a spread placement holds instances back for values that
    /// were not offered.
    held_since_ms: Option<u64>,
}

impl JobState {
    fn invalidate(&self) {
        self.pending_cache.set(None);
    }

    fn pending(&self) -> u32 {
        if let Some(n) = self.pending_cache.get() {
            return n;
        }
        let n = self.count_pending();
        self.pending_cache.set(Some(n));
        n
    }

    fn count_pending(&self) -> u32 {
        match &self.entry {
            Some(e) if !e.stopped => {
                let busy = self
                    .instances
                    .range(..e.spec.instances)
                    .filter(|(_, i)| !i.is_pending(e.spec.max_retries))
                    .count();
                e.spec
                    .instances
                    .saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX))
            }
            _ => 0,
        }
    }

    fn pending_indices(&self) -> impl Iterator<Item = u32> + '_ {
        let (count, retries) = match &self.entry {
            Some(e) if !e.stopped => (e.spec.instances, e.spec.max_retries),
            _ => (0, 0),
        };
        (0..count).filter(move |i| {
            self.instances
                .get(i)
                .is_none_or(|inst| inst.is_pending(retries))
        })
    }
}

#[derive(Debug)]
struct LiveTask {
    job: String,
    instance: u32,
    agent_id: String,
    /// When it was launched or last reported.
    heard_ms: u64,
    /// A status arrived for it since this instance of the framework
    /// launched it.
    confirmed: bool,
    reconcile_sent_ms: Option<u64>,
    kill_sent_ms: Option<u64>,
}

/// The batch framework's state machine.
pub struct Batch {
    ids: IdGen,
    /// Only jobs of this role are this instance's.
    role: String,
    framework_id: String,
    subscribed_ms: Option<u64>,
    /// Offers wait for reconciliation only when tasks were believed live at
    /// subscription: with none, nothing can be launched twice, and waiting
    /// would let frameworks subscribed a moment earlier take more than
    /// their DRF share of a new agent.
    reconcile_grace: bool,
    /// `restore` seeded the tasks from the replicated state.
    restored: bool,
    /// `on_jobs` was called: until then the framework cannot tell what is
    /// pending and neither launches nor changes its demand.
    jobs_known: bool,
    jobs: BTreeMap<String, JobState>,
    tasks: BTreeMap<String, LiveTask>,
    /// Agent id to host name, learnt from offers and restored tasks.
    agents: BTreeMap<String, String>,
    /// Host name to attributes, learnt from offers and nodes.
    hosts: BTreeMap<String, Attributes>,
    nodes: Vec<NodeFit>,
    /// Bumped with every node snapshot; cached judgements made on an older
    /// one are stale.
    nodes_gen: u64,
    last_offers_ms: Option<u64>,
    /// Whether offers are suppressed; unknown after each SUBSCRIBED, so
    /// the first demand decision is always sent.
    suppressed: Option<bool>,
    last_request: Option<(Resources, u64)>,
    notes: BTreeMap<String, String>,
}

impl Batch {
    /// The instance for the default role `*`.
    pub fn new(ids: IdGen) -> Self {
        Self::for_role("*", ids)
    }

    /// The instance that runs the jobs of `role`.
    pub fn for_role(role: &str, ids: IdGen) -> Self {
        Batch {
            ids,
            role: role.to_string(),
            framework_id: batch_framework_id(role),
            subscribed_ms: None,
            reconcile_grace: true,
            restored: false,
            jobs_known: false,
            jobs: BTreeMap::new(),
            tasks: BTreeMap::new(),
            agents: BTreeMap::new(),
            hosts: BTreeMap::new(),
            nodes: Vec::new(),
            nodes_gen: 0,
            last_offers_ms: None,
            suppressed: None,
            last_request: None,
            notes: BTreeMap::new(),
        }
    }

    /// The batch framework's registration: a fixed id, so that a new
    /// leader's instance takes over the tasks of the previous one.
    pub fn framework_info(&self) -> FrameworkInfo {
        FrameworkInfo {
            name: if self.role == "*" {
                "batch".to_string()
            } else {
                format!("batch-{}", self.role)
            },
            role: self.role.clone(),
            id: Some(batch_framework_id(&self.role)),
            failover_timeout_secs: FAILOVER_TIMEOUT_SECS,
        }
    }

    /// SUBSCRIBE with [`Batch::framework_info`].
    pub fn subscribe_call(&self) -> CallEnvelope {
        CallEnvelope {
            framework_id: Some(batch_framework_id(&self.role)),
            call: Call::Subscribe {
                framework_info: self.framework_info(),
            },
        }
    }

    /// Whether a job belongs to this instance.
    pub fn owns(&self, spec: &JobSpec) -> bool {
        spec.role == self.role
    }

    /// Seeds the state from the tasks the cluster remembers (terminal ones
    /// included), before subscribing: which instances already finished,
    /// how often each failed, where the running ones are.
    pub fn restore(&mut self, jobs: &[JobEntry], mut tasks: Vec<KnownTask>, now_ms: u64) {
        self.restored = true;
        let jobs: Vec<&JobEntry> = jobs.iter().filter(|e| self.owns(&e.spec)).collect();
        for e in &jobs {
            let js = self.jobs.entry(e.spec.name.clone()).or_default();
            js.entry = Some((*e).clone());
            js.invalidate();
        }
        // Tasks of other roles' jobs belong to other instances.
        tasks.retain(|t| {
            BatchTaskId::parse(&t.task_id)
                .is_some_and(|id| jobs.iter().any(|e| e.spec.name == id.job))
        });
        // Attempts in order, so the last word on an instance is its newest task.
        tasks.sort_by_key(|t| {
            (
                BatchTaskId::parse(&t.task_id).map(|id| id.attempt),
                t.launched_ms,
            )
        });
        for t in tasks {
            let Some(id) = BatchTaskId::parse(&t.task_id) else {
                continue;
            };
            let submitted = self
                .jobs
                .get(&id.job)
                .and_then(|j| j.entry.as_ref())
                .map(|e| e.submitted_ms);
            // An ended task from an earlier job of the same name says
            // nothing about this one.
            if t.state.is_terminal() && submitted.is_some_and(|s| t.launched_ms < s) {
                continue;
            }
            if !t.agent_id.is_empty() && !t.hostname.is_empty() {
                self.agents.insert(t.agent_id.clone(), t.hostname.clone());
            }
            self.apply_status(
                &id,
                &t.task_id,
                &t.agent_id,
                t.state,
                t.reason.as_deref(),
                now_ms,
            );
        }
    }

    /// Handles one event of the subscription; returns the calls to send.
    pub fn on_event(&mut self, ev: Event, now_ms: u64) -> Vec<CallEnvelope> {
        let mut out = Vec::new();
        match ev {
            Event::Subscribed { framework_id, .. } => {
                self.framework_id = framework_id;
                self.subscribed_ms = Some(now_ms);
                // Without restored state any task may exist: wait.
                self.reconcile_grace = !self.restored || !self.tasks.is_empty();
                // Do not assume what the server kept of an earlier
                // subscription: state the demand afresh.
                self.suppressed = None;
                self.last_request = None;
                out.push(self.call(Call::Reconcile { tasks: Vec::new() }));
                // Implicit reconciliation reports only live tasks; ask about
                // the ones believed live by name so that those that ended
                // meanwhile are reported too.
                let known: Vec<ReconcileTask> = self
                    .tasks
                    .iter()
                    .map(|(id, t)| ReconcileTask {
                        task_id: id.clone(),
                        agent_id: non_empty(&t.agent_id),
                    })
                    .collect();
                if !known.is_empty() {
                    for t in self.tasks.values_mut() {
                        t.reconcile_sent_ms = Some(now_ms);
                    }
                    out.push(self.call(Call::Reconcile { tasks: known }));
                }
            }
            Event::Offers { offers } => out.extend(self.on_offers(offers, now_ms)),
            Event::Update { status } => out.extend(self.on_update(status, now_ms)),
            Event::Rescind { offer_id } => {
                // Offers are answered as soon as they arrive; none is held.
                tracing::debug!(offer_id = %offer_id, "offer rescinded");
            }
            Event::Failure { agent_id } => {
                // Its tasks arrive as LOST updates; nothing to do here.
                tracing::debug!(agent_id = %agent_id, "agent failure");
            }
            Event::Error { message } => {
                tracing::warn!(framework_id = %self.framework_id, error = %message, "scheduler error event");
            }
            Event::Heartbeat {} => {}
        }
        out.extend(self.demand_calls());
        self.refresh_notes(now_ms);
        out
    }

    /// Takes a fresh snapshot of the jobs and nodes; returns KILLs for
    /// tasks of stopped jobs, reconciliation of silent launches and demand
    /// changes.
    pub fn on_jobs(
        &mut self,
        jobs: Vec<JobEntry>,
        nodes: &[NodeFit],
        now_ms: u64,
    ) -> Vec<CallEnvelope> {
        let jobs: Vec<JobEntry> = jobs.into_iter().filter(|e| self.owns(&e.spec)).collect();
        self.jobs_known = true;
        self.nodes = nodes.to_vec();
        self.nodes_gen += 1;
        for n in nodes {
            if self.hosts.get(&n.hostname) != Some(&n.attributes) {
                self.hosts.insert(n.hostname.clone(), n.attributes.clone());
            }
        }
        let listed: BTreeSet<String> = jobs.iter().map(|e| e.spec.name.clone()).collect();
        for e in jobs {
            let js = self.jobs.entry(e.spec.name.clone()).or_default();
            if js.entry.as_ref() == Some(&e) {
                continue;
            }
            js.invalidate();
            if js
                .entry
                .as_ref()
                .is_some_and(|old| old.submitted_ms != e.submitted_ms)
            {
                // Submitted again under the same name: a new job.
                for inst in js.instances.values_mut() {
                    inst.outcome = None;
                    inst.failures = 0;
                }
                js.ended.clear();
                js.unplaced = false;
                js.pending_since_ms = None;
            }
            js.entry = Some(e);
        }
        for (name, js) in self.jobs.iter_mut() {
            if !listed.contains(name) && js.entry.is_some() {
                js.entry = None;
                js.invalidate();
            }
        }
        // Forget removed jobs once nothing of theirs runs.
        self.jobs.retain(|_, js| {
            js.entry.is_some() || js.instances.values().any(|i| !i.live.is_empty())
        });

        let mut out = Vec::new();
        if self.subscribed_ms.is_none() {
            self.refresh_notes(now_ms);
            return out;
        }
        out.extend(self.kill_calls(now_ms));
        out.extend(self.reconcile_calls(now_ms));
        out.extend(self.demand_calls());
        self.refresh_notes(now_ms);
        out
    }

    /// Why instances are pending, by job name; jobs with nothing pending
    /// have no note.
    pub fn placement_notes(&self) -> BTreeMap<String, String> {
        self.notes.clone()
    }

    /// Instances of `job` waiting for a launch.
    pub fn pending(&self, job: &str) -> u32 {
        self.jobs.get(job).map_or(0, JobState::pending)
    }

    /// Ids of the tasks believed to be running (not terminal).
    pub fn live_tasks(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    fn call(&self, call: Call) -> CallEnvelope {
        CallEnvelope {
            framework_id: Some(self.framework_id.clone()),
            call,
        }
    }

    fn on_update(&mut self, st: TaskStatus, now_ms: u64) -> Vec<CallEnvelope> {
        let mut out = Vec::new();
        if !st.uuid.is_empty() {
            out.push(self.call(Call::Acknowledge {
                agent_id: st.agent_id.clone(),
                task_id: st.task_id.clone(),
                uuid: st.uuid.clone(),
            }));
        }
        match BatchTaskId::parse(&st.task_id) {
            Some(id) => self.apply_status(
                &id,
                &st.task_id,
                &st.agent_id,
                st.state,
                st.reason.as_deref(),
                now_ms,
            ),
            None => {
                tracing::warn!(task_id = %st.task_id, "update for a task id the batch framework did not make")
            }
        }
        out
    }

    fn apply_status(
        &mut self,
        id: &BatchTaskId,
        task_id: &str,
        agent_id: &str,
        state: TaskState,
        reason: Option<&str>,
        now_ms: u64,
    ) {
        let js = self.jobs.entry(id.job.clone()).or_default();
        if js.ended.contains(task_id) {
            return;
        }
        let inst = js.instances.entry(id.instance).or_default();
        inst.next_attempt = inst.next_attempt.max(id.attempt.saturating_add(1));
        if !state.is_terminal() {
            if !inst.live.contains(task_id) {
                inst.live.insert(task_id.to_string());
                js.pending_cache.set(None);
            }
            let t = self
                .tasks
                .entry(task_id.to_string())
                .or_insert_with(|| LiveTask {
                    job: id.job.clone(),
                    instance: id.instance,
                    agent_id: String::new(),
                    heard_ms: now_ms,
                    confirmed: true,
                    reconcile_sent_ms: None,
                    kill_sent_ms: None,
                });
            t.heard_ms = now_ms;
            t.confirmed = true;
            if !agent_id.is_empty() {
                t.agent_id = agent_id.to_string();
            }
            return;
        }
        inst.live.remove(task_id);
        self.tasks.remove(task_id);
        js.ended.insert(task_id.to_string());
        js.pending_cache.set(None);
        match state {
            TaskState::Finished => inst.outcome = Some(Outcome::Finished),
            TaskState::Failed => inst.failures = inst.failures.saturating_add(1),
            TaskState::Killed if !reason.is_some_and(|r| RELAUNCH_REASONS.contains(&r)) => {
                inst.outcome.get_or_insert(Outcome::Killed);
            }
            // LOST, and KILLED off a node that went away: launched again.
            _ => {}
        }
    }

    /// Jobs in the order they are served: oldest submitted first.
    fn job_order(&self) -> Vec<String> {
        let mut v: Vec<(u64, &String)> = self
            .jobs
            .iter()
            .filter_map(|(name, js)| js.entry.as_ref().map(|e| (e.submitted_ms, name)))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n.clone()).collect()
    }

    /// Where the job's live tasks are, for its placement constraints; empty
    /// when it has no `unique` or `spread` (only they count live tasks), so
    /// a job of 25,000 plain instances does not walk them at every offer.
    fn existing(&self, js: &JobState) -> Vec<Placed> {
        let counts_live = js.entry.as_ref().is_some_and(|e| {
            e.spec
                .constraints
                .iter()
                .any(|c| !matches!(c, Constraint::Equal { .. }))
        });
        if !counts_live {
            return Vec::new();
        }
        js.instances
            .values()
            .flat_map(|i| i.live.iter())
            .filter_map(|tid| self.tasks.get(tid))
            .filter_map(|t| self.agents.get(&t.agent_id))
            .map(|host| Placed {
                hostname: host.clone(),
                attributes: self.hosts.get(host).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// [`Batch::fits_some_node`], judged once per node snapshot.
    fn fits_cached(&self, js: &JobState, spec: &JobSpec) -> bool {
        if let Some((generation, fits)) = js.fits.get() {
            if generation == self.nodes_gen {
                return fits;
            }
        }
        let fits = self.fits_some_node(js, spec);
        js.fits.set(Some((self.nodes_gen, fits)));
        fits
    }

    /// Whether one more task of the job fits on some active node, by the
    /// last node snapshot; true when there is none to judge by.
    fn fits_some_node(&self, js: &JobState, spec: &JobSpec) -> bool {
        if self.nodes.is_empty() {
            return true;
        }
        let slots: Vec<OfferSlot> = self
            .nodes
            .iter()
            .filter(|n| n.active)
            .map(|n| OfferSlot {
                offer_id: String::new(),
                agent_id: String::new(),
                hostname: n.hostname.clone(),
                attributes: n.attributes.clone(),
                resources: n.free,
            })
            .collect();
        let existing = self.existing(js);
        let req = PlacementRequest {
            per_task: spec.resources(),
            constraints: &spec.constraints,
            existing: &existing,
            count: 1,
        };
        !place(&slots, &req).is_empty()
    }

    fn on_offers(&mut self, offers: Vec<Offer>, now_ms: u64) -> Vec<CallEnvelope> {
        self.last_offers_ms = Some(now_ms);
        for o in &offers {
            self.agents.insert(o.agent_id.clone(), o.hostname.clone());
            self.hosts.insert(o.hostname.clone(), o.attributes.clone());
        }
        let all: Vec<String> = offers.iter().map(|o| o.id.clone()).collect();
        let Some(subscribed) = self.subscribed_ms else {
            return vec![self.decline(all, DECLINE_REFUSE_SECONDS)];
        };
        let grace_left = if self.reconcile_grace {
            (subscribed + RECONCILE_GRACE_MS).saturating_sub(now_ms)
        } else {
            0
        };
        if !self.jobs_known || grace_left > 0 {
            let refuse = (grace_left as f64 / 1000.0).max(ACCEPT_REFUSE_SECONDS);
            return vec![self.decline(all, refuse)];
        }

        let mut slots: Vec<OfferSlot> = offers
            .iter()
            .map(|o| OfferSlot {
                offer_id: o.id.clone(),
                agent_id: o.agent_id.clone(),
                hostname: o.hostname.clone(),
                attributes: o.attributes.clone(),
                resources: o.resources,
            })
            .collect();
        let mut launches: Vec<Vec<TaskInfo>> = vec![Vec::new(); offers.len()];
        for name in self.job_order() {
            let Some(js) = self.jobs.get(&name) else {
                continue;
            };
            let pending = js.pending();
            let Some(entry) = js.entry.as_ref().filter(|_| pending > 0) else {
                if let Some(js) = self.jobs.get_mut(&name) {
                    js.unplaced = false;
                }
                continue;
            };
            let spec = entry.spec.clone();
            let per_task = spec.resources();
            let existing = self.existing(js);
            let req = PlacementRequest {
                per_task,
                constraints: &spec.constraints,
                existing: &existing,
                count: pending,
            };
            // A spread job holds instances back for values a node has room
            // for but no offer brought, for a while: placing them on the
            // offered values instead would pile them up there.
            let holding = spec
                .constraints
                .iter()
                .any(|c| matches!(c, Constraint::Spread { .. }))
                && !self.nodes.is_empty()
                && js
                    .held_since_ms
                    .is_none_or(|t| now_ms.saturating_sub(t) < SPREAD_HOLD_MS);
            let plan = if holding {
                let elsewhere = spread_values(&self.nodes, &req);
                place_holding(&slots, &req, &elsewhere)
            } else {
                place(&slots, &req)
            };
            let planned: u32 = plan.iter().map(|(_, n)| *n).fold(0, u32::saturating_add);
            let mut free = js.pending_indices().take(planned.min(pending) as usize);
            // (offer index, instance) pairs, checked against what the offer holds.
            let mut chosen: Vec<(usize, u32)> = Vec::new();
            for (oi, n) in plan {
                let Some(slot) = slots.get_mut(oi) else {
                    continue;
                };
                for _ in 0..n {
                    if !slot.resources.contains(&per_task) {
                        break;
                    }
                    let Some(i) = free.next() else {
                        break;
                    };
                    slot.resources = slot.resources.saturating_sub(&per_task);
                    chosen.push((oi, i));
                }
            }
            drop(free);
            let placed = u32::try_from(chosen.len()).unwrap_or(u32::MAX);
            for (oi, instance) in chosen {
                let info = self.new_task(&spec, instance, &offers[oi].agent_id, now_ms);
                launches[oi].push(info);
            }
            if let Some(js) = self.jobs.get_mut(&name) {
                js.unplaced = placed < pending;
                if placed >= pending {
                    js.held_since_ms = None;
                } else if holding {
                    js.held_since_ms.get_or_insert(now_ms);
                }
            }
        }

        // Every used offer goes in as few ACCEPTs as the size bound allows
        // (an ACCEPT may take offers of many agents): each ACCEPT is one
        // replicated write, so one per agent would make a round of 5,000
        // offers 5,000 writes.
        let mut out = Vec::new();
        let mut unused = Vec::new();
        let mut used: Vec<String> = Vec::new();
        let mut tasks: Vec<TaskInfo> = Vec::new();
        for (o, launch) in offers.iter().zip(launches) {
            if launch.is_empty() {
                unused.push(o.id.clone());
                continue;
            }
            used.push(o.id.clone());
            tasks.extend(launch);
            if tasks.len() >= MAX_TASKS_PER_ACCEPT {
                out.push(self.accept(std::mem::take(&mut used), std::mem::take(&mut tasks)));
            }
        }
        if !used.is_empty() {
            out.push(self.accept(used, tasks));
        }
        if !unused.is_empty() {
            out.push(self.decline(unused, DECLINE_REFUSE_SECONDS));
        }
        out
    }

    fn accept(&self, offer_ids: Vec<String>, task_infos: Vec<TaskInfo>) -> CallEnvelope {
        tracing::info!(
            offers = offer_ids.len(),
            tasks = task_infos.len(),
            "launching batch tasks"
        );
        self.call(Call::Accept {
            offer_ids,
            operations: vec![Operation::Launch { task_infos }],
            filters: Some(Filters {
                refuse_seconds: ACCEPT_REFUSE_SECONDS,
            }),
        })
    }

    fn decline(&self, offer_ids: Vec<String>, refuse_seconds: f64) -> CallEnvelope {
        self.call(Call::Decline {
            offer_ids,
            filters: Some(Filters { refuse_seconds }),
        })
    }

    /// Records a launch of `instance` on `agent_id` and describes the task.
    fn new_task(&mut self, spec: &JobSpec, instance: u32, agent_id: &str, now_ms: u64) -> TaskInfo {
        let suffix = clean_suffix(&(self.ids)());
        let js = self.jobs.entry(spec.name.clone()).or_default();
        js.invalidate();
        let inst = js.instances.entry(instance).or_default();
        let id = BatchTaskId {
            job: spec.name.clone(),
            instance,
            attempt: inst.next_attempt,
            suffix,
        };
        inst.next_attempt = inst.next_attempt.saturating_add(1);
        let task_id = id.to_string();
        inst.live.insert(task_id.clone());
        self.tasks.insert(
            task_id.clone(),
            LiveTask {
                job: spec.name.clone(),
                instance,
                agent_id: agent_id.to_string(),
                heard_ms: now_ms,
                confirmed: false,
                reconcile_sent_ms: None,
                kill_sent_ms: None,
            },
        );
        let labels = BTreeMap::from([
            ("job".to_string(), spec.name.clone()),
            ("instance".to_string(), instance.to_string()),
        ]);
        TaskInfo {
            task_id,
            name: id.name(),
            agent_id: agent_id.to_string(),
            resources: spec.resources(),
            kind: spec.kind(),
            env: spec.env.clone(),
            labels,
        }
    }

    /// KILLs for live tasks of stopped jobs and for extra tasks of
    /// instances that already finished; resent while they stay live.
    fn kill_calls(&mut self, now_ms: u64) -> Vec<CallEnvelope> {
        let mut kills = Vec::new();
        for (tid, t) in self.tasks.iter_mut() {
            let Some(js) = self.jobs.get(&t.job) else {
                continue;
            };
            let stopped = js.entry.as_ref().is_some_and(|e| e.stopped);
            let finished = js
                .instances
                .get(&t.instance)
                .is_some_and(|i| i.outcome == Some(Outcome::Finished));
            if !(stopped || finished) {
                continue;
            }
            if t.kill_sent_ms
                .is_some_and(|at| now_ms.saturating_sub(at) < KILL_RESEND_MS)
            {
                continue;
            }
            t.kill_sent_ms = Some(now_ms);
            kills.push((tid.clone(), non_empty(&t.agent_id)));
        }
        kills
            .into_iter()
            .map(|(task_id, agent_id)| self.call(Call::Kill { task_id, agent_id }))
            .collect()
    }

    /// Explicit reconciliation of launches that were never heard of again
    /// (the ACCEPT may have been lost with a leader change).
    fn reconcile_calls(&mut self, now_ms: u64) -> Vec<CallEnvelope> {
        let mut ask = Vec::new();
        for (tid, t) in self.tasks.iter_mut() {
            let silent = !t.confirmed && now_ms.saturating_sub(t.heard_ms) >= RECONCILE_AFTER_MS;
            let due = t
                .reconcile_sent_ms
                .is_none_or(|at| now_ms.saturating_sub(at) >= RECONCILE_AFTER_MS);
            if silent && due {
                t.reconcile_sent_ms = Some(now_ms);
                ask.push(ReconcileTask {
                    task_id: tid.clone(),
                    agent_id: non_empty(&t.agent_id),
                });
            }
        }
        if ask.is_empty() {
            Vec::new()
        } else {
            vec![self.call(Call::Reconcile { tasks: ask })]
        }
    }

    /// REQUEST (re-sent when it changes), REVIVE when something becomes
    /// pending, SUPPRESS when nothing is.
    ///
    /// The REQUEST names the task size of the oldest job with pending
    /// instances, and counts the pending instances of every job of that
    /// size: jobs submitted back to back are then offered for together in
    /// one allocation round, instead of one job per round trip. Jobs of
    /// other sizes are asked for once those are placed.
    ///
    /// A request for tasks no node can hold would get no offers at all
    /// (the allocator offers requesting frameworks only task-sized
    /// slices), and younger jobs would wait behind it; so the oldest job
    /// that fits on some node now sets the size (and only jobs that fit
    /// are counted), and the oldest of all only when none fits.
    fn demand_calls(&mut self) -> Vec<CallEnvelope> {
        if self.subscribed_ms.is_none() || !self.jobs_known {
            return Vec::new();
        }
        let order: Vec<(&JobState, &JobEntry, u32)> = self
            .job_order()
            .iter()
            .filter_map(|name| self.jobs.get(name))
            .filter_map(|js| {
                let pending = js.pending();
                js.entry
                    .as_ref()
                    .filter(|_| pending > 0)
                    .map(|e| (js, e, pending))
            })
            .collect();
        let fitting = order
            .iter()
            .find(|(js, e, _)| self.fits_cached(js, &e.spec))
            .map(|(_, e, _)| e.spec.resources());
        let oldest = order.first().map(|(_, e, _)| e.spec.resources());
        let want = fitting.or(oldest).map(|size| {
            let count: u64 = order
                .iter()
                .filter(|(_, e, _)| e.spec.resources() == size)
                .filter(|(js, e, _)| fitting.is_none() || self.fits_cached(js, &e.spec))
                .map(|(_, _, pending)| u64::from(*pending))
                .sum();
            (size, count)
        });
        let mut out = Vec::new();
        match want {
            None => {
                if self.suppressed != Some(true) {
                    self.suppressed = Some(true);
                    self.last_request = None;
                    out.push(self.call(Call::Suppress {}));
                }
            }
            Some((resources, count)) => {
                if self.last_request != Some((resources, count)) {
                    self.last_request = Some((resources, count));
                    out.push(self.call(Call::Request {
                        resources,
                        count: Some(count),
                    }));
                }
                if self.suppressed != Some(false) {
                    self.suppressed = Some(false);
                    out.push(self.call(Call::Revive {}));
                }
            }
        }
        out
    }

    fn refresh_notes(&mut self, now_ms: u64) {
        let mut notes = BTreeMap::new();
        for name in self.job_order() {
            let Some(js) = self.jobs.get(&name) else {
                continue;
            };
            let pending = js.pending();
            if pending == 0 {
                if let Some(js) = self.jobs.get_mut(&name) {
                    js.pending_since_ms = None;
                    js.unplaced = false;
                }
                continue;
            }
            let since = js.pending_since_ms.unwrap_or(now_ms);
            let quiet_from = since.max(self.last_offers_ms.unwrap_or(0));
            let show = js.unplaced || now_ms.saturating_sub(quiet_from) >= NOTE_AFTER_MS;
            // explain() walks every node: once per node snapshot (or when
            // offers start or stop fitting), not at each of the thousands
            // of updates a second that change the pending count; the count
            // in the note may thus lag by one snapshot.
            let key = (js.unplaced, self.nodes_gen);
            let mut computed = None;
            let note = if !show {
                // Not judged yet: keep what was said before.
                self.notes.get(&name).cloned()
            } else if let Some((_, note)) = js.note.as_ref().filter(|(k, _)| *k == key) {
                Some(note.clone())
            } else {
                computed = js.entry.as_ref().map(|e| {
                    let existing = self.existing(js);
                    let req = PlacementRequest {
                        per_task: e.spec.resources(),
                        constraints: &e.spec.constraints,
                        existing: &existing,
                        count: pending,
                    };
                    explain(&self.nodes, &req, pending)
                });
                computed.clone()
            };
            if let Some(note) = note {
                notes.insert(name.clone(), note);
            }
            if let Some(js) = self.jobs.get_mut(&name) {
                js.pending_since_ms = Some(since);
                if let Some(note) = computed {
                    js.note = Some((key, note));
                }
            }
        }
        self.notes = notes;
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests;
