//! Leader-only memory and the loops that run while this server leads.

use super::util::now_ms;
use super::Master;
use berth_api::cluster::{Event, TaskStatus};
use berth_sched::Demand;
use berth_types::{NodeState, Resources};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Period of the housekeeping tick (offer expiry, agent liveness,
/// framework failover).
const TICK: Duration = Duration::from_millis(100);
/// Most unacknowledged updates kept per framework.
pub(crate) const MAX_UNACKED: usize = 200_000;

/// What this server knows only while it leads.
pub(crate) struct LeaderCtx {
    pub term: u64,
    /// Cancelled when leadership ends; every leader loop, subscription and
    /// long-poll watches it.
    pub cancel: CancellationToken,
    /// node id -> last time its agent was heard from.
    pub agents: Mutex<HashMap<String, Instant>>,
    pub fws: Mutex<Frameworks>,
}

impl LeaderCtx {
    pub fn fws(&self) -> MutexGuard<'_, Frameworks> {
        self.fws.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn agents(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn touch(&self, node_id: &str) {
        let now = Instant::now();
        let mut a = self.agents();
        match a.get_mut(node_id) {
            Some(t) => *t = now,
            None => {
                a.insert(node_id.to_string(), now);
            }
        }
    }
}

/// Scheduler-side memory: live subscriptions, per-framework allocator
/// inputs, outstanding offers and launches in flight.
#[derive(Default)]
pub(crate) struct Frameworks {
    pub subs: HashMap<String, Subscription>,
    pub mem: HashMap<String, FwMem>,
    pub offers: HashMap<String, OfferRec>,
    /// Resources of launches proposed but not applied yet, per agent and
    /// per framework, so the allocator does not offer them again meanwhile.
    pub inflight_agent: HashMap<String, Resources>,
    pub inflight_fw: HashMap<String, Resources>,
}

pub(crate) struct Subscription {
    pub stream_id: String,
    pub tx: mpsc::Sender<Event>,
    /// Cancelled when the subscription ends for any reason.
    pub cancel: CancellationToken,
}

#[derive(Default)]
pub(crate) struct FwMem {
    pub role: String,
    pub failover_ms: u64,
    pub demand: Option<Demand>,
    /// agent id -> refuse offers from it until (ms since epoch).
    pub filters: BTreeMap<String, u64>,
    pub suppressed: bool,
    /// task id -> latest update sent and not acknowledged.
    pub unacked: HashMap<String, TaskStatus>,
    /// Set while disconnected: when the framework is removed unless it
    /// resubscribes.
    pub remove_at_ms: Option<u64>,
}

pub(crate) struct OfferRec {
    pub framework_id: String,
    pub agent_id: String,
    pub resources: Resources,
    pub expires: Instant,
}

impl Frameworks {
    /// Sends an event on a framework's stream if it has one. A stream whose
    /// queue is full is closed (its framework is too slow; it resubscribes
    /// and reconciles), which ends the subscription.
    pub fn send(&mut self, framework_id: &str, event: Event) -> bool {
        let Some(sub) = self.subs.get(framework_id) else {
            return false;
        };
        match sub.tx.try_send(event) {
            Ok(()) => true,
            Err(e) => {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    tracing::warn!(
                        framework = framework_id,
                        "event queue full; closing the subscription"
                    );
                }
                if let Some(sub) = self.subs.remove(framework_id) {
                    sub.cancel.cancel();
                }
                false
            }
        }
    }

    /// Removes the framework's outstanding offers, sending RESCIND if
    /// `rescind`. Returns how many were removed.
    pub fn drop_offers_of(&mut self, framework_id: &str, rescind: bool) -> usize {
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.framework_id == framework_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.offers.remove(id);
            if rescind {
                self.send(
                    framework_id,
                    Event::Rescind {
                        offer_id: id.clone(),
                    },
                );
            }
        }
        ids.len()
    }

    /// Rescinds the offers whose ids are given.
    pub fn rescind(&mut self, offer_ids: &[String]) {
        for id in offer_ids {
            if let Some(o) = self.offers.remove(id) {
                self.send(
                    &o.framework_id,
                    Event::Rescind {
                        offer_id: id.clone(),
                    },
                );
            }
        }
    }

    /// Rescinds every offer on one agent.
    pub fn rescind_agent(&mut self, agent_id: &str) {
        let ids: Vec<String> = self
            .offers
            .iter()
            .filter(|(_, o)| o.agent_id == agent_id)
            .map(|(id, _)| id.clone())
            .collect();
        self.rescind(&ids);
    }

    pub fn reserve(&mut self, framework_id: &str, per_agent: &BTreeMap<String, Resources>) {
        for (agent, r) in per_agent {
            let e = self.inflight_agent.entry(agent.clone()).or_default();
            *e = e.add(r);
            let f = self
                .inflight_fw
                .entry(framework_id.to_string())
                .or_default();
            *f = f.add(r);
        }
    }

    pub fn unreserve(&mut self, framework_id: &str, per_agent: &BTreeMap<String, Resources>) {
        for (agent, r) in per_agent {
            if let Some(e) = self.inflight_agent.get_mut(agent) {
                *e = e.saturating_sub(r);
                if e.is_zero() {
                    self.inflight_agent.remove(agent);
                }
            }
            if let Some(f) = self.inflight_fw.get_mut(framework_id) {
                *f = f.saturating_sub(r);
                if f.is_zero() {
                    self.inflight_fw.remove(framework_id);
                }
            }
        }
    }
}

/// Follows leadership: starts the leader loops when this server becomes
/// leader (or a new term starts) and stops them when it stops being one.
pub(crate) async fn leadership_loop(m: Arc<Master>) {
    let mut rx = m.replica.watch_leader();
    loop {
        let info = rx.borrow_and_update().clone();
        if info.is_self {
            let current = m.leader_ctx().map(|c| c.term);
            if current != Some(info.term) {
                step_down(&m);
                become_leader(&m, info.term).await;
            }
        } else {
            step_down(&m);
        }
        tokio::select! {
            _ = m.stop.cancelled() => break,
            r = rx.changed() => if r.is_err() { break },
        }
    }
    step_down(&m);
}

/// Drops the leader context: cancels every leader loop, closes every
/// subscription stream and wakes every long-poll.
pub(crate) fn step_down(m: &Master) {
    let ctx = m.leader.write().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(ctx) = ctx {
        tracing::info!(
            term = ctx.term,
            "leading no more; stopping the leader loops"
        );
        ctx.cancel.cancel();
        let mut f = ctx.fws();
        for (_, sub) in f.subs.drain() {
            sub.cancel.cancel();
        }
        f.offers.clear();
    }
}

async fn become_leader(m: &Arc<Master>, term: u64) {
    // Read only state that a quorum agrees on: the previous leader may have
    // committed entries this server has not applied yet.
    loop {
        if m.stop.is_cancelled() || !m.replica.leader().is_self {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(5), m.replica.ensure_linearizable()).await {
            Ok(Ok(())) => break,
            Ok(Err(e)) => tracing::warn!(error = %e, "confirming leadership"),
            Err(_) => tracing::warn!("confirming leadership timed out"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let now = Instant::now();
    let now_ms = now_ms();
    let ctx = {
        let s = m.read_state();
        // Every known agent gets a full timeout to reach the new leader.
        let agents: HashMap<String, Instant> = s
            .nodes
            .values()
            .filter(|n| n.state != NodeState::Lost)
            .map(|n| (n.id.clone(), now))
            .collect();
        let mut fws = Frameworks::default();
        for f in s.frameworks.values() {
            let failover_ms = super::util::secs_to_ms(f.info.failover_timeout_secs);
            // Frameworks connected to the previous leader get at least an
            // agent timeout to reconnect here.
            let remove_at = match f.disconnected_ms {
                Some(at) if !f.connected => at.saturating_add(failover_ms),
                _ => now_ms.saturating_add(failover_ms.max(m.cfg.agent_timeout.as_millis() as u64)),
            };
            fws.mem.insert(
                f.id.clone(),
                FwMem {
                    role: f.info.role.clone(),
                    failover_ms,
                    remove_at_ms: Some(remove_at),
                    ..FwMem::default()
                },
            );
        }
        Arc::new(LeaderCtx {
            term,
            cancel: m.stop.child_token(),
            agents: Mutex::new(agents),
            fws: Mutex::new(fws),
        })
    };
    tracing::info!(term, "became leader; starting the leader loops");
    *m.leader.write().unwrap_or_else(|p| p.into_inner()) = Some(ctx.clone());
    tokio::spawn(tick_loop(m.clone(), ctx.clone()));
    tokio::spawn(super::allocation::allocation_loop(m.clone(), ctx));
}

async fn tick_loop(m: Arc<Master>, ctx: Arc<LeaderCtx>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        expire_offers(&m, &ctx);
        m.check_agents(&ctx).await;
        m.remove_failed_over(&ctx).await;
    }
}

/// Rescinds offers that timed out or whose node is no longer active.
fn expire_offers(m: &Master, ctx: &LeaderCtx) {
    let now = Instant::now();
    let mut f = ctx.fws();
    if f.offers.is_empty() {
        return;
    }
    let s = m.read_state();
    let stale: Vec<String> = f
        .offers
        .iter()
        .filter(|(_, o)| {
            o.expires <= now
                || s.nodes
                    .get(&o.agent_id)
                    .is_none_or(|n| n.state != NodeState::Active)
        })
        .map(|(id, _)| id.clone())
        .collect();
    drop(s);
    if !stale.is_empty() {
        tracing::debug!(offers = stale.len(), "rescinding expired offers");
        f.rescind(&stale);
        drop(f);
        m.trigger_allocation();
    }
}
