//! The allocation cycle: snapshot the free resources and the frameworks
//! that want them, let the allocator (DRF) decide, send the offers.

use super::leader::{LeaderCtx, OfferRec};
use super::util::{now_ms, random_id};
use super::Master;
use berth_api::cluster::{Event, Offer};
use berth_sched::{AgentSnapshot, Demand, FrameworkSnapshot, Snapshot};
use berth_types::{NodeState, Resources};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shortest pause between two rounds, so a burst of triggers (thousands of
/// tasks ending per second) costs a few rounds, not thousands.
const MIN_GAP: Duration = Duration::from_millis(5);

pub(crate) async fn allocation_loop(m: Arc<Master>, ctx: Arc<LeaderCtx>) {
    let period = m.cfg.allocation_interval.max(Duration::from_millis(1));
    let gap = (period / 4).max(MIN_GAP).min(period);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tick.tick() => {}
            _ = m.alloc_trigger.notified() => {}
        }
        m.allocate_once(&ctx);
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(gap) => {}
        }
    }
}

/// Leader memory copied out for one round.
struct Held {
    per_agent: HashMap<String, Resources>,
    per_fw: HashMap<String, Resources>,
    frameworks: Vec<FwInput>,
}

struct FwInput {
    id: String,
    role: String,
    demand: Option<Demand>,
    filters: BTreeMap<String, u64>,
}

impl Master {
    /// One allocation round. Returns the number of offers made.
    pub(crate) fn allocate_once(&self, ctx: &LeaderCtx) -> usize {
        let now_ms = now_ms();
        let Some(held) = self.held(ctx, now_ms) else {
            return 0;
        };
        let snapshot = {
            let s = self.read_state();
            let agents: Vec<AgentSnapshot> = s
                .nodes
                .values()
                .filter(|n| n.state == NodeState::Active)
                .filter_map(|n| {
                    let free = match held.per_agent.get(&n.id) {
                        Some(h) => n.free().saturating_sub(h),
                        None => n.free(),
                    };
                    (!free.is_zero()).then(|| AgentSnapshot {
                        id: n.id.clone(),
                        hostname: n.hostname.clone(),
                        attributes: n.attributes.clone(),
                        total: n.total,
                        free,
                    })
                })
                .collect();
            if agents.is_empty() {
                return 0;
            }
            let usage = s.framework_usage();
            let frameworks = held
                .frameworks
                .into_iter()
                .map(|f| {
                    let mut allocated = usage.get(&f.id).copied().unwrap_or_default();
                    if let Some(h) = held.per_fw.get(&f.id) {
                        allocated = allocated.add(h);
                    }
                    FrameworkSnapshot {
                        id: f.id,
                        role: f.role,
                        suppressed: false,
                        demand: f.demand,
                        filters: f.filters,
                        allocated,
                    }
                })
                .collect();
            Snapshot {
                agents,
                frameworks,
                role_weights: s.role_weights.clone(),
                now_ms,
            }
        };
        let allocations = self
            .allocator
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .allocate(&snapshot);
        if allocations.is_empty() {
            return 0;
        }
        let agents: HashMap<&str, &AgentSnapshot> =
            snapshot.agents.iter().map(|a| (a.id.as_str(), a)).collect();
        let mut by_fw: BTreeMap<String, Vec<Offer>> = BTreeMap::new();
        for a in allocations {
            if a.resources.is_zero() {
                continue;
            }
            let Some(agent) = agents.get(a.agent_id.as_str()) else {
                continue;
            };
            by_fw
                .entry(a.framework_id.clone())
                .or_default()
                .push(Offer {
                    id: random_id("o"),
                    framework_id: a.framework_id,
                    agent_id: a.agent_id,
                    hostname: agent.hostname.clone(),
                    resources: a.resources,
                    attributes: agent.attributes.clone(),
                });
        }
        let expires = Instant::now() + self.cfg.offer_timeout;
        let mut made = 0;
        let mut f = ctx.fws();
        for (fw, offers) in by_fw {
            // The framework may have gone while the allocator ran.
            if !f.subs.contains_key(&fw) {
                continue;
            }
            for o in &offers {
                f.offers.insert(
                    o.id.clone(),
                    OfferRec {
                        framework_id: fw.clone(),
                        agent_id: o.agent_id.clone(),
                        resources: o.resources,
                        expires,
                    },
                );
            }
            let ids: Vec<String> = offers.iter().map(|o| o.id.clone()).collect();
            let n = offers.len();
            if f.send(&fw, Event::Offers { offers }) {
                made += n;
            } else {
                for id in ids {
                    f.offers.remove(&id);
                }
            }
        }
        if made > 0 {
            tracing::debug!(offers = made, "allocation round");
        }
        made
    }

    /// Copies what the round needs from leader memory; `None` when no
    /// framework wants offers.
    fn held(&self, ctx: &LeaderCtx, now_ms: u64) -> Option<Held> {
        let mut f = ctx.fws();
        let mut per_agent: HashMap<String, Resources> = f.inflight_agent.clone();
        let mut per_fw: HashMap<String, Resources> = f.inflight_fw.clone();
        // Offers outstanding per framework and agent, to discount demands.
        let mut offered: HashMap<&str, Vec<Resources>> = HashMap::new();
        for o in f.offers.values() {
            let a = per_agent.entry(o.agent_id.clone()).or_default();
            *a = a.add(&o.resources);
            let w = per_fw.entry(o.framework_id.clone()).or_default();
            *w = w.add(&o.resources);
            offered
                .entry(o.framework_id.as_str())
                .or_default()
                .push(o.resources);
        }
        let ids: Vec<String> = f.subs.keys().cloned().collect();
        let mut frameworks = Vec::new();
        let mut pruned: Vec<(String, BTreeMap<String, u64>)> = Vec::new();
        for id in ids {
            let Some(m) = f.mem.get(&id) else { continue };
            if m.suppressed {
                continue;
            }
            let mut demand = m.demand.clone();
            if let Some(d) = &mut demand {
                if let Some(count) = d.count {
                    // Tasks the outstanding offers already make room for.
                    let covered: u64 = offered
                        .get(id.as_str())
                        .map(|rs| rs.iter().map(|r| tasks_fitting(r, &d.per_task)).sum())
                        .unwrap_or(0);
                    if covered >= count {
                        continue;
                    }
                    d.count = Some(count - covered);
                }
            }
            let filters: BTreeMap<String, u64> = m
                .filters
                .iter()
                .filter(|(_, until)| **until > now_ms)
                .map(|(a, u)| (a.clone(), *u))
                .collect();
            if filters.len() != m.filters.len() {
                pruned.push((id.clone(), filters.clone()));
            }
            frameworks.push(FwInput {
                id,
                role: m.role.clone(),
                demand,
                filters,
            });
        }
        drop(offered);
        for (id, filters) in pruned {
            if let Some(m) = f.mem.get_mut(&id) {
                m.filters = filters;
            }
        }
        if frameworks.is_empty() {
            return None;
        }
        Some(Held {
            per_agent,
            per_fw,
            frameworks,
        })
    }
}

/// How many tasks of `per_task` fit in `r`.
fn tasks_fitting(r: &Resources, per_task: &Resources) -> u64 {
    let mut n = u64::MAX;
    if per_task.cpus > 0.0 {
        n = n.min((r.cpus / per_task.cpus + 1e-9).floor() as u64);
    }
    if let Some(k) = r.mem.checked_div(per_task.mem) {
        n = n.min(k);
    }
    if let Some(k) = r.disk.checked_div(per_task.disk) {
        n = n.min(k);
    }
    if n == u64::MAX {
        0
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitting() {
        let per = Resources::new(0.5, 100, 0);
        assert_eq!(tasks_fitting(&Resources::new(2.0, 1000, 0), &per), 4);
        assert_eq!(tasks_fitting(&Resources::new(2.0, 250, 0), &per), 2);
        assert_eq!(tasks_fitting(&Resources::new(0.3, 1000, 0), &per), 0);
        assert_eq!(
            tasks_fitting(&Resources::new(1.5, 1000, 0), &Resources::new(0.1, 0, 0)),
            15
        );
        assert_eq!(tasks_fitting(&Resources::ZERO, &Resources::ZERO), 0);
    }
}
