//! What the allocator sees and what it hands back. The server builds a
//! [`Snapshot`] from its replicated state, calls [`Allocator::allocate`] and
//! turns each [`Allocation`] into an offer.

use berth_types::{Attributes, Resources};
use std::collections::BTreeMap;

/// One agent as the allocator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSnapshot {
    pub id: String,
    pub hostname: String,
    pub attributes: Attributes,
    pub total: Resources,
    /// free = total - running tasks - outstanding offers
    pub free: Resources,
}

/// What a framework asked for with the REQUEST call: identical tasks of
/// `per_task` each, `count` of them (`None` = as many as fit).
#[derive(Debug, Clone, PartialEq)]
pub struct Demand {
    pub per_task: Resources,
    pub count: Option<u64>,
}

/// One registered framework as the allocator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkSnapshot {
    pub id: String,
    pub role: String,
    pub suppressed: bool,
    /// declared via the REQUEST call; None = wants whole offers (Mesos default)
    pub demand: Option<Demand>,
    /// agent_id -> refuse-until (ms); agents filtered while now_ms < until
    pub filters: BTreeMap<String, u64>,
    /// resources this framework already holds (running tasks + outstanding offers)
    pub allocated: Resources,
}

impl FrameworkSnapshot {
    /// Whether this framework refuses offers from `agent_id` at `now_ms`.
    pub fn refuses(&self, agent_id: &str, now_ms: u64) -> bool {
        self.filters
            .get(agent_id)
            .is_some_and(|&until| now_ms < until)
    }
}

/// Everything one allocation round depends on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub agents: Vec<AgentSnapshot>,
    pub frameworks: Vec<FrameworkSnapshot>,
    /// role -> weight; a missing, zero, negative or non-finite weight is 1.0
    pub role_weights: BTreeMap<String, f64>,
    pub now_ms: u64,
}

/// Resources of one agent to offer to one framework.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub framework_id: String,
    pub agent_id: String,
    pub resources: Resources,
}

/// An allocation policy. Implementations must be deterministic: the same
/// snapshot yields the same allocations, in the same order.
pub trait Allocator: Send {
    fn name(&self) -> &'static str;
    fn allocate(&mut self, snap: &Snapshot) -> Vec<Allocation>;
}
