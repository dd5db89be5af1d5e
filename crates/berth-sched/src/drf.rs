//! Hierarchical Dominant Resource Fairness (Ghodsi et al., NSDI 2011) as the
//! Mesos master's allocator applies it: pick the role with the lowest
//! weighted dominant share, then the framework with the lowest dominant
//! share inside that role.
//!
//! A round has two phases:
//! 1. Frameworks that declared a [`Demand`](crate::Demand) are served by
//!    progressive filling, one task's worth at a time in principle. To stay
//!    fast with 100,000-task demands, the lowest framework receives in one
//!    step every task it would have received one by one before its (or its
//!    role's) share passes the next lowest, or before its agent stops being
//!    the one it would pick.
//! 2. Every agent with something left is offered whole to the lowest-share
//!    framework without a demand that does not filter it (Mesos's classic
//!    behaviour).
//!
//! Agent choice in phase 1: each task goes to the agent with the most free
//! of the framework's dominant resource (ties by id) among those it does
//! not refuse and where a task still fits. A framework's tasks are thus
//! spread over the agents (water-filling) instead of packed onto one: a
//! job's instances land on many nodes, so spread and unique constraints see
//! offers from many agents, and each agent starts a few tasks rather than
//! one agent starting thousands. Each framework keeps a max-heap of its
//! candidate agents keyed by their free amount as of its own last grant
//! there; what other frameworks take meanwhile is not re-sorted (that would
//! cost a push per stale entry per step when 200 frameworks share 5,000
//! agents), so with one framework the spread is exact and with several it
//! is close. Either way each step costs O(log agents).

use crate::allocator::{Allocation, Allocator, Snapshot};
use crate::res::{self, Vec3};
use berth_types::Resources;
use std::cmp::Ordering;
use std::collections::binary_heap::PeekMut;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

/// The default allocator: hierarchical DRF over roles and frameworks.
#[derive(Debug, Clone, Default)]
pub struct Drf {
    /// Hand out one task per step instead of batches; the reference the
    /// tests hold the batched path to.
    one_task_steps: bool,
}

impl Drf {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Allocator for Drf {
    fn name(&self) -> &'static str {
        "drf"
    }

    fn allocate(&mut self, snap: &Snapshot) -> Vec<Allocation> {
        let mut round = Round::new(snap);
        round.progressive_fill(self.one_task_steps);
        round.whole_offers();
        round.finish()
    }
}

/// The largest fraction of `total` that `alloc` holds of any one resource;
/// resources the cluster has none of are ignored.
pub fn dominant_share(alloc: &Resources, total: &Resources) -> f64 {
    res::share(&res::vec3(alloc), &res::vec3(total))
}

/// A share usable as an ordered key; shares are finite and non-negative.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Sort key of a role or framework: share, then rank (position by id/name),
/// so ties break by id.
type Key = (Share, usize);

struct AgentState<'a> {
    id: &'a str,
    free: Vec3,
}

struct FwState<'a> {
    id: &'a str,
    role: usize,
    alloc: Vec3,
    suppressed: bool,
    /// Per-task resources in phase 1; `None` = wants whole offers.
    per_task: Option<Vec3>,
    /// Tasks still wanted; `None` = unbounded.
    remaining: Option<u64>,
    /// Agent ranks refused at `now_ms`, sorted.
    refused: Vec<usize>,
    /// Dominant resource of `per_task` (index into `Vec3`).
    dim: usize,
    /// Candidate agents as [`Packing`] entries of (free of `dim` when
    /// pushed, rank): the top is the most free, ties by id. Built when the
    /// framework first needs an agent; `None` before that.
    heap: Option<BinaryHeap<u64>>,
    /// Phase 1 grants as (agent rank, tasks), in grant order; an agent may
    /// appear several times, [`Round::finish`] merges them.
    tasks: Vec<(usize, u64)>,
    /// Phase 2 grants as (agent rank, resources).
    whole: Vec<(usize, Vec3)>,
}

impl FwState<'_> {
    fn refuses(&self, agent: usize) -> bool {
        self.refused.binary_search(&agent).is_ok()
    }
}

struct RoleState {
    weight: f64,
    alloc: Vec3,
    /// Frameworks of this role competing in the current phase.
    active: BTreeSet<Key>,
}

/// A heap entry as one `u64`: the key in the high bits, the inverted rank
/// in the low ones, so that integer order is (key, then lower rank first).
/// Half the size of a `(u64, Reverse<usize>)` tuple: the heaps of 200
/// frameworks over 5,000 agents stay in cache. Keys saturate at what the
/// high bits hold (over 10^12 with a million agents), consistently for
/// every comparison.
#[derive(Debug, Clone, Copy)]
struct Packing {
    bits: u32,
    mask: u64,
}

impl Packing {
    fn new(agents: usize) -> Self {
        let bits = (usize::BITS - agents.saturating_sub(1).leading_zeros()).max(1);
        Packing {
            bits,
            mask: (1u64 << bits) - 1,
        }
    }

    fn key(&self, key: u64) -> u64 {
        key.min(u64::MAX >> self.bits)
    }

    fn pack(&self, key: u64, rank: usize) -> u64 {
        (self.key(key) << self.bits) | (self.mask - rank as u64)
    }

    fn unpack(&self, e: u64) -> (u64, usize) {
        (e >> self.bits, (self.mask - (e & self.mask)) as usize)
    }
}

struct Round<'a> {
    total: Vec3,
    packing: Packing,
    agents: Vec<AgentState<'a>>,
    fws: Vec<FwState<'a>>,
    roles: Vec<RoleState>,
}

impl<'a> Round<'a> {
    fn new(snap: &'a Snapshot) -> Self {
        // Everything is indexed by rank in id order so that index order is
        // id order and the result does not depend on input order.
        let mut agent_order: Vec<usize> = (0..snap.agents.len()).collect();
        agent_order.sort_by(|&x, &y| snap.agents[x].id.cmp(&snap.agents[y].id).then(x.cmp(&y)));
        let mut total = [0u64; 3];
        let mut agent_rank: BTreeMap<&str, usize> = BTreeMap::new();
        let mut agents = Vec::with_capacity(agent_order.len());
        for (rank, &i) in agent_order.iter().enumerate() {
            let a = &snap.agents[i];
            total = res::add(&total, &res::vec3(&a.total));
            agent_rank.entry(a.id.as_str()).or_insert(rank);
            agents.push(AgentState {
                id: &a.id,
                free: res::vec3(&a.free),
            });
        }

        let role_names: BTreeSet<&str> = snap.frameworks.iter().map(|f| f.role.as_str()).collect();
        let role_rank: BTreeMap<&str, usize> = role_names
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, i))
            .collect();
        let mut roles: Vec<RoleState> = role_names
            .iter()
            .map(|&n| RoleState {
                weight: snap
                    .role_weights
                    .get(n)
                    .copied()
                    .filter(|w| w.is_finite() && *w > 0.0)
                    .unwrap_or(1.0),
                alloc: [0; 3],
                active: BTreeSet::new(),
            })
            .collect();

        let mut fw_order: Vec<usize> = (0..snap.frameworks.len()).collect();
        fw_order.sort_by(|&x, &y| {
            snap.frameworks[x]
                .id
                .cmp(&snap.frameworks[y].id)
                .then(x.cmp(&y))
        });
        let mut fws = Vec::with_capacity(fw_order.len());
        for &i in &fw_order {
            let f = &snap.frameworks[i];
            let role = role_rank.get(f.role.as_str()).copied().unwrap_or(0);
            let alloc = res::vec3(&f.allocated);
            if let Some(r) = roles.get_mut(role) {
                r.alloc = res::add(&r.alloc, &alloc);
            }
            let mut refused: Vec<usize> = f
                .filters
                .iter()
                .filter(|(_, &until)| snap.now_ms < until)
                .filter_map(|(id, _)| agent_rank.get(id.as_str()).copied())
                .collect();
            refused.sort_unstable();
            refused.dedup();
            let per_task = f.demand.as_ref().map(|d| res::vec3(&d.per_task));
            fws.push(FwState {
                id: &f.id,
                role,
                alloc,
                suppressed: f.suppressed,
                dim: per_task.map_or(0, |p| dominant_dim(&p, &total)),
                per_task,
                remaining: f.demand.as_ref().and_then(|d| d.count),
                refused,
                heap: None,
                tasks: Vec::new(),
                whole: Vec::new(),
            });
        }
        Round {
            total,
            packing: Packing::new(agents.len()),
            agents,
            fws,
            roles,
        }
    }

    fn fw_key(&self, f: usize) -> Key {
        (Share(res::share(&self.fws[f].alloc, &self.total)), f)
    }

    fn role_key(&self, r: usize) -> Key {
        let role = &self.roles[r];
        (Share(res::share(&role.alloc, &self.total) / role.weight), r)
    }

    /// Phase 1: progressive filling for frameworks with a demand.
    fn progressive_fill(&mut self, one_task_steps: bool) {
        for f in 0..self.fws.len() {
            let fw = &self.fws[f];
            let wants = match (fw.per_task, fw.remaining) {
                _ if fw.suppressed => false,
                (None, _) => false,
                // A zero-sized task would "fit" forever; it gets nothing.
                (Some(p), _) if res::is_zero(&p) => false,
                (Some(_), Some(0)) => false,
                (Some(_), _) => true,
            };
            if wants {
                let key = self.fw_key(f);
                self.roles[self.fws[f].role].active.insert(key);
            }
        }
        let mut role_set: BTreeSet<Key> = (0..self.roles.len())
            .filter(|&r| !self.roles[r].active.is_empty())
            .map(|r| self.role_key(r))
            .collect();
        if role_set.is_empty() {
            return;
        }

        while let Some(&rk) = role_set.first() {
            let r = rk.1;
            let Some(&fk) = self.roles[r].active.first() else {
                role_set.remove(&rk);
                continue;
            };
            let f = fk.1;
            let Some(per) = self.fws[f].per_task else {
                self.roles[r].active.remove(&fk);
                continue;
            };
            let Some((a, level)) = self.next_agent(f) else {
                // Nothing fits anywhere for it this round; it drops out.
                self.roles[r].active.remove(&fk);
                if self.roles[r].active.is_empty() {
                    role_set.remove(&rk);
                }
                continue;
            };
            let mut cap = res::fit_count(&self.agents[a].free, &per);
            if let Some(left) = self.fws[f].remaining {
                cap = cap.min(left);
            }
            let next_role = role_set.iter().nth(1).copied();
            let next_fw = self.roles[r].active.iter().nth(1).copied();
            let role = &self.roles[r];
            let k_role = batch(
                &role.alloc,
                &per,
                &self.total,
                role.weight,
                cap,
                r,
                next_role,
            );
            let k_fw = batch(&self.fws[f].alloc, &per, &self.total, 1.0, cap, f, next_fw);
            let k = if one_task_steps {
                1
            } else {
                k_role.min(k_fw).min(level).max(1)
            };

            let grant = res::scale(&per, k);
            self.agents[a].free = res::sub(&self.agents[a].free, &grant);
            self.regrant(f, a);
            let fw = &mut self.fws[f];
            fw.alloc = res::add(&fw.alloc, &grant);
            if let Some(left) = fw.remaining.as_mut() {
                *left = left.saturating_sub(k);
            }
            match fw.tasks.last_mut() {
                Some((last, n)) if *last == a => *n += k,
                _ => fw.tasks.push((a, k)),
            }
            let done = fw.remaining == Some(0);
            let role = &mut self.roles[r];
            role.alloc = res::add(&role.alloc, &grant);
            role.active.remove(&fk);
            role_set.remove(&rk);
            if !done {
                let key = self.fw_key(f);
                self.roles[r].active.insert(key);
            }
            if !self.roles[r].active.is_empty() {
                role_set.insert(self.role_key(r));
            }
        }
    }

    /// The agent framework `f` gives its next task to, left at the top of
    /// its heap for [`Round::regrant`], and how many tasks in a row
    /// one-at-a-time filling would give that agent before another becomes
    /// the most free.
    fn next_agent(&mut self, f: usize) -> Option<(usize, u64)> {
        let fw = &mut self.fws[f];
        let per = fw.per_task?;
        let d = fw.dim;
        let agents = &self.agents;
        let p = self.packing;
        let heap = fw.heap.get_or_insert_with(|| {
            // O(agents) heapify, once per framework per round.
            let refused = &fw.refused;
            agents
                .iter()
                .enumerate()
                .filter(|(a, s)| refused.binary_search(a).is_err() && res::fits(&s.free, &per))
                .map(|(a, s)| p.pack(s.free[d], a))
                .collect::<Vec<_>>()
                .into()
        });
        while let Some(&top) = heap.peek() {
            let (_, a) = p.unpack(top);
            let free = &agents[a].free;
            if !res::fits(free, &per) {
                // Free only shrinks during a round: it never fits again.
                heap.pop();
                continue;
            }
            // Its key may be stale (another framework took from it since it
            // was pushed); re-sorting would cost a push per stale entry per
            // step when many frameworks share the agents. The run below is
            // computed the way one-at-a-time steps would compare keys, so
            // batching still gives exactly what single steps give. The
            // runner-up is a child of the root.
            let level = match heap.as_slice().iter().skip(1).take(2).max() {
                None => u64::MAX,
                Some(&e) => {
                    let (next, b) = p.unpack(e);
                    run_length(p.key(free[d]), next, per[d], a < b)
                }
            };
            return Some((a, level));
        }
        None
    }

    /// Re-keys agent `a`, the top of framework `f`'s heap, after a grant
    /// there: one sift instead of a pop and a push.
    fn regrant(&mut self, f: usize, a: usize) {
        let fw = &mut self.fws[f];
        let (Some(per), Some(heap)) = (fw.per_task, fw.heap.as_mut()) else {
            return;
        };
        let free = &self.agents[a].free;
        let p = self.packing;
        if let Some(mut top) = heap.peek_mut() {
            if p.unpack(*top).1 != a {
                return;
            }
            if res::fits(free, &per) {
                *top = p.pack(free[fw.dim], a);
            } else {
                PeekMut::pop(top);
            }
        }
    }

    /// Phase 2: whole agents to frameworks without a demand.
    fn whole_offers(&mut self) {
        for role in &mut self.roles {
            role.active.clear();
        }
        for f in 0..self.fws.len() {
            if !self.fws[f].suppressed && self.fws[f].per_task.is_none() {
                let key = self.fw_key(f);
                self.roles[self.fws[f].role].active.insert(key);
            }
        }
        let mut role_set: BTreeSet<Key> = (0..self.roles.len())
            .filter(|&r| !self.roles[r].active.is_empty())
            .map(|r| self.role_key(r))
            .collect();
        if role_set.is_empty() {
            return;
        }
        for a in 0..self.agents.len() {
            let free = self.agents[a].free;
            if res::is_zero(&free) {
                continue;
            }
            let chosen = role_set.iter().find_map(|&rk| {
                self.roles[rk.1]
                    .active
                    .iter()
                    .find(|&&(_, f)| !self.fws[f].refuses(a))
                    .map(|&fk| (rk, fk))
            });
            let Some((rk, fk)) = chosen else { continue };
            let (r, f) = (rk.1, fk.1);
            self.agents[a].free = [0; 3];
            let fw = &mut self.fws[f];
            fw.alloc = res::add(&fw.alloc, &free);
            fw.whole.push((a, free));
            let role = &mut self.roles[r];
            role.alloc = res::add(&role.alloc, &free);
            role.active.remove(&fk);
            role_set.remove(&rk);
            let key = self.fw_key(f);
            self.roles[r].active.insert(key);
            role_set.insert(self.role_key(r));
        }
    }

    /// One allocation per (framework, agent), in framework id then agent id
    /// order.
    fn finish(self) -> Vec<Allocation> {
        let mut out = Vec::new();
        for fw in &self.fws {
            // Phase 1 and phase 2 serve different frameworks and each lists
            // an agent at most once, so there is nothing to merge.
            let mut grants: Vec<(usize, Vec3)> = match fw.per_task {
                Some(per) => {
                    let mut per_agent: BTreeMap<usize, u64> = BTreeMap::new();
                    for &(a, n) in &fw.tasks {
                        *per_agent.entry(a).or_default() += n;
                    }
                    per_agent
                        .into_iter()
                        .map(|(a, n)| (a, res::scale(&per, n)))
                        .collect()
                }
                None => fw.whole.clone(),
            };
            grants.sort_unstable_by_key(|g| g.0);
            for (a, r) in grants {
                if !res::is_zero(&r) {
                    out.push(Allocation {
                        framework_id: fw.id.to_string(),
                        agent_id: self.agents[a].id.to_string(),
                        resources: res::resources(&r),
                    });
                }
            }
        }
        out
    }
}

/// The resource in which one task is the largest fraction of the cluster.
fn dominant_dim(per: &Vec3, total: &Vec3) -> usize {
    let mut best = (0usize, -1.0f64);
    for (d, (&p, &t)) in per.iter().zip(total).enumerate() {
        if t > 0 && p > 0 {
            let s = p as f64 / t as f64;
            if s > best.1 {
                best = (d, s);
            }
        }
    }
    best.0
}

/// How many tasks in a row an agent with `free` of the framework's dominant
/// resource receives before an agent with `next` becomes the most free,
/// each task taking `per`; `first` = it wins ties (lower id). At least 1
/// when it is the most free now.
fn run_length(free: u64, next: u64, per: u64, first: bool) -> u64 {
    if per == 0 {
        // The dominant resource is not consumed: it stays the most free.
        return u64::MAX;
    }
    let Some(gap) = free.checked_sub(next) else {
        return 1;
    };
    // It wins before task t (t = 0, 1, ...) while free - t*per > next, or
    // == next when it wins ties.
    if first {
        gap / per + 1
    } else {
        gap.div_ceil(per).max(1)
    }
}

/// How many tasks (1..=cap) the entity keyed `(share(base), me)` receives in
/// a row under one-task-at-a-time progressive filling: it keeps winning
/// while its key, before each task, stays below `next`.
fn batch(
    base: &Vec3,
    per: &Vec3,
    total: &Vec3,
    weight: f64,
    cap: u64,
    me: usize,
    next: Option<Key>,
) -> u64 {
    let Some(next) = next else { return cap };
    if cap <= 1 {
        return cap;
    }
    let wins = |t: u64| {
        let held = res::add(base, &res::scale(per, t));
        (Share(res::share(&held, total) / weight), me) < next
    };
    // wins(t) is monotone (shares only grow with t); find the last t in
    // [0, cap-1] that still wins. wins(0) holds because we are the lowest.
    // Gallop first: with many near-equal competitors the answer is usually
    // t = 0, and one evaluation settles it.
    if !wins(0) {
        return 1;
    }
    let (mut lo, mut step) = (0u64, 1u64);
    let mut hi = loop {
        let probe = lo.saturating_add(step).min(cap - 1);
        if !wins(probe) {
            break probe - 1;
        }
        if probe == cap - 1 {
            return cap;
        }
        lo = probe;
        step = step.saturating_mul(2);
    };
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if wins(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo + 1
}

#[cfg(test)]
mod tests;
