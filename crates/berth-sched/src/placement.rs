//! Where the batch framework puts a job's instances among the offers it
//! holds, and why instances it cannot place stay pending.
//!
//! Constraint semantics (the pseudo-attribute `hostname` is the node's host
//! name):
//! - `Equal`: only nodes whose attribute has the value; a node without the
//!   attribute does not qualify.
//! - `Unique`: at most one task of the job per attribute value, counting the
//!   job's live tasks and the tasks placed in this call; nodes without the
//!   attribute are not used.
//! - `Spread`: each next task goes to the attribute value with the fewest
//!   tasks so far (live + placed here), ties by value, among the values
//!   that have an offer able to take it; nodes without the attribute are not
//!   used. With several spreads the first constraint decides first.
//!   [`place_holding`] also counts values that have room on some node but
//!   no offer in hand, and stops rather than place a task on a value that
//!   is not the least loaded of those.
//!
//! Within the chosen value, offers are used in the order given, as many
//! tasks per offer as fit (one when a `Unique` applies).

use crate::res;
use berth_types::{Attributes, Constraint, Resources};
use std::collections::{BTreeMap, BTreeSet};

/// The attribute name that means the node's host name.
pub const HOSTNAME: &str = "hostname";

/// One offer the framework holds.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferSlot {
    pub offer_id: String,
    pub agent_id: String,
    pub hostname: String,
    pub attributes: Attributes,
    pub resources: Resources,
}

/// where the job's live tasks already are: one entry per live task (agent's hostname + attributes)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub hostname: String,
    pub attributes: Attributes,
}

/// What to place: `count` more tasks of `per_task` each.
#[derive(Debug, Clone, Copy)]
pub struct PlacementRequest<'a> {
    pub per_task: Resources,
    pub constraints: &'a [Constraint],
    pub existing: &'a [Placed],
    pub count: u32,
}

/// A node as [`explain`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFit {
    pub hostname: String,
    pub attributes: Attributes,
    pub free: Resources,
    pub active: bool,
}

/// The value of attribute `name` on a node, with `hostname` meaning the
/// node's host name.
pub fn attribute<'a>(hostname: &'a str, attributes: &'a Attributes, name: &str) -> Option<&'a str> {
    if name == HOSTNAME {
        Some(hostname)
    } else {
        attributes.get(name).map(String::as_str)
    }
}

/// An offer that passed the resource and `Equal` checks.
struct Cand<'a> {
    index: usize,
    /// Tasks that still fit, capped at the request's count.
    room: u64,
    /// Values of the spread attributes, in constraint order.
    spread: Vec<&'a str>,
    /// Values of the unique attributes, in constraint order.
    unique: Vec<&'a str>,
}

/// Mutable state of one `place` call.
struct Plan<'a> {
    cands: Vec<Cand<'a>>,
    /// Per unique constraint: values already holding a task.
    used: Vec<BTreeSet<&'a str>>,
    /// Per spread constraint: tasks per value.
    counts: Vec<BTreeMap<&'a str, u64>>,
    left: u64,
    placed: BTreeMap<usize, u64>,
}

impl<'a> Plan<'a> {
    fn unique_ok(&self, c: usize) -> bool {
        self.cands[c]
            .unique
            .iter()
            .zip(&self.used)
            .all(|(v, used)| !used.contains(v))
    }

    fn usable(&self, c: usize) -> bool {
        self.cands[c].room > 0 && self.unique_ok(c)
    }

    fn count(&self, spread: usize, value: &str) -> u64 {
        self.counts[spread].get(value).copied().unwrap_or(0)
    }

    fn put(&mut self, c: usize, k: u64) {
        let cand = &mut self.cands[c];
        cand.room -= k;
        self.left -= k;
        *self.placed.entry(cand.index).or_default() += k;
        for (used, v) in self.used.iter_mut().zip(&cand.unique) {
            used.insert(v);
        }
        for (counts, v) in self.counts.iter_mut().zip(&cand.spread) {
            *counts.entry(v).or_default() += k;
        }
    }

    /// How many tasks candidate `c` takes at once when chosen.
    fn take(&self, c: usize) -> u64 {
        if self.used.is_empty() {
            self.cands[c].room.min(self.left)
        } else {
            1
        }
    }

    /// No spread: offers in order.
    fn fill_in_order(&mut self) {
        for c in 0..self.cands.len() {
            if self.left == 0 {
                break;
            }
            if self.usable(c) {
                let k = self.take(c);
                self.put(c, k);
            }
        }
    }

    /// One spread: a priority set of (tasks, value), and batches of tasks
    /// for as long as the value stays the least loaded. Values in
    /// `elsewhere` compete too; when one of them is the least loaded and no
    /// offer of it can take a task, placing stops there.
    fn spread_one(&mut self, elsewhere: Option<&'a BTreeSet<String>>) {
        let mut groups: BTreeMap<&'a str, (Vec<usize>, usize)> = BTreeMap::new();
        for (c, cand) in self.cands.iter().enumerate() {
            groups.entry(cand.spread[0]).or_default().0.push(c);
        }
        for v in elsewhere.into_iter().flatten() {
            groups.entry(v.as_str()).or_default();
        }
        let mut queue: BTreeSet<(u64, &'a str)> =
            groups.keys().map(|&v| (self.count(0, v), v)).collect();
        while self.left > 0 {
            let Some(&(n, v)) = queue.first() else { break };
            let Some((members, cursor)) = groups.get_mut(v) else {
                queue.remove(&(n, v));
                continue;
            };
            while members.get(*cursor).is_some_and(|&c| !self.usable(c)) {
                *cursor += 1;
            }
            let Some(&c) = members.get(*cursor) else {
                if elsewhere.is_some_and(|e| e.contains(v)) {
                    // The next task belongs on `v`, which has room but no
                    // offer here: hold the rest back.
                    break;
                }
                queue.remove(&(n, v));
                continue;
            };
            let mut k = self.take(c);
            if let Some(&(n2, v2)) = queue.iter().nth(1) {
                // Tasks one-by-one filling would put here before the next
                // value becomes the least loaded.
                let lead = if v < v2 { n2 - n + 1 } else { n2 - n };
                k = k.min(lead.max(1));
            }
            queue.remove(&(n, v));
            self.put(c, k);
            queue.insert((self.count(0, v), v));
        }
    }

    /// Several spreads: counts are shared between groups, so each step
    /// compares every live group. O(tasks x groups); rare in practice.
    fn spread_many(&mut self) {
        let mut groups: BTreeMap<Vec<&'a str>, Vec<usize>> = BTreeMap::new();
        for (c, cand) in self.cands.iter().enumerate() {
            groups.entry(cand.spread.clone()).or_default().push(c);
        }
        let mut groups: Vec<(Vec<&'a str>, Vec<usize>, usize)> =
            groups.into_iter().map(|(k, m)| (k, m, 0)).collect();
        while self.left > 0 && !groups.is_empty() {
            let mut best = 0;
            for g in 1..groups.len() {
                if self.less_loaded(&groups[g].0, &groups[best].0) {
                    best = g;
                }
            }
            let (_, members, cursor) = &mut groups[best];
            while members.get(*cursor).is_some_and(|&c| !self.usable(c)) {
                *cursor += 1;
            }
            match members.get(*cursor) {
                Some(&c) => self.put(c, 1),
                None => {
                    groups.remove(best);
                }
            }
        }
    }

    fn less_loaded(&self, a: &[&str], b: &[&str]) -> bool {
        for (s, (va, vb)) in a.iter().zip(b).enumerate() {
            let ka = (self.count(s, va), *va);
            let kb = (self.count(s, vb), *vb);
            if ka != kb {
                return ka < kb;
            }
        }
        false
    }
}

/// returns (offer index, number of tasks) pairs, total <= count, honouring resources and constraints
///
/// Pairs are in offer order, one per offer used.
pub fn place(offers: &[OfferSlot], req: &PlacementRequest) -> Vec<(usize, u32)> {
    place_inner(offers, req, None)
}

/// [`place`] for a job whose offers may not cover every node that could
/// take its tasks: with one `Spread` constraint, the values in `elsewhere`
/// (see [`spread_values`]) compete with the offered ones, and when the
/// least loaded value has no offer able to take the next task, the rest of
/// the tasks are not placed, rather than piled onto values that already
/// have more. Without a spread, or with several, this is [`place`].
pub fn place_holding<'a>(
    offers: &'a [OfferSlot],
    req: &PlacementRequest<'a>,
    elsewhere: &'a BTreeSet<String>,
) -> Vec<(usize, u32)> {
    place_inner(offers, req, Some(elsewhere))
}

fn place_inner<'a>(
    offers: &'a [OfferSlot],
    req: &PlacementRequest<'a>,
    elsewhere: Option<&'a BTreeSet<String>>,
) -> Vec<(usize, u32)> {
    let spreads: Vec<&str> = req
        .constraints
        .iter()
        .filter_map(|c| match c {
            Constraint::Spread { attribute } => Some(attribute.as_str()),
            _ => None,
        })
        .collect();
    let mut plan = plan(offers, req, &spreads);
    match spreads.len() {
        0 => plan.fill_in_order(),
        1 => plan.spread_one(elsewhere),
        _ => plan.spread_many(),
    }
    finish(plan)
}

/// The values of the job's first `Spread` attribute on the active nodes
/// that could take one more of its tasks now, by a node snapshot: free
/// resources for a task, every `Equal` met, no `Unique` value in use by the
/// job's live tasks, and every spread and unique attribute present. Empty
/// when the job has no spread. For [`place_holding`].
pub fn spread_values(nodes: &[NodeFit], req: &PlacementRequest) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Some(first) = req.constraints.iter().find_map(|c| match c {
        Constraint::Spread { attribute } => Some(attribute.as_str()),
        _ => None,
    }) else {
        return out;
    };
    let used: Vec<BTreeSet<&str>> = req
        .constraints
        .iter()
        .map(|c| match c {
            Constraint::Unique { attribute: a } => req
                .existing
                .iter()
                .filter_map(|p| attribute(&p.hostname, &p.attributes, a))
                .collect(),
            _ => BTreeSet::new(),
        })
        .collect();
    'nodes: for n in nodes.iter().filter(|n| n.active) {
        if !n.free.contains(&req.per_task) {
            continue;
        }
        for (c, used) in req.constraints.iter().zip(&used) {
            let v = attribute(&n.hostname, &n.attributes, c.attribute());
            let ok = match (c, v) {
                (_, None) => false,
                (Constraint::Equal { value, .. }, Some(v)) => v == value,
                (Constraint::Unique { .. }, Some(v)) => !used.contains(v),
                (Constraint::Spread { .. }, Some(_)) => true,
            };
            if !ok {
                continue 'nodes;
            }
        }
        if let Some(v) = attribute(&n.hostname, &n.attributes, first) {
            out.insert(v.to_string());
        }
    }
    out
}

fn plan<'a>(offers: &'a [OfferSlot], req: &PlacementRequest<'a>, spreads: &[&str]) -> Plan<'a> {
    let want = u64::from(req.count);
    let per = res::vec3(&req.per_task);
    let uniques: Vec<&str> = req
        .constraints
        .iter()
        .filter_map(|c| match c {
            Constraint::Unique { attribute } => Some(attribute.as_str()),
            _ => None,
        })
        .collect();
    let mut cands = Vec::new();
    'offers: for (index, o) in offers.iter().enumerate() {
        let room = res::fit_count(&res::vec3(&o.resources), &per).min(want);
        if room == 0 {
            continue;
        }
        for c in req.constraints {
            if let Constraint::Equal {
                attribute: a,
                value,
            } = c
            {
                if attribute(&o.hostname, &o.attributes, a) != Some(value.as_str()) {
                    continue 'offers;
                }
            }
        }
        let values = |names: &[&str]| -> Option<Vec<&'a str>> {
            names
                .iter()
                .map(|a| attribute(&o.hostname, &o.attributes, a))
                .collect()
        };
        let (Some(spread), Some(unique)) = (values(spreads), values(&uniques)) else {
            continue;
        };
        cands.push(Cand {
            index,
            room,
            spread,
            unique,
        });
    }
    let used = uniques
        .iter()
        .map(|a| {
            req.existing
                .iter()
                .filter_map(|p| attribute(&p.hostname, &p.attributes, a))
                .collect()
        })
        .collect();
    let counts = spreads
        .iter()
        .map(|a| {
            let mut m: BTreeMap<&str, u64> = BTreeMap::new();
            for p in req.existing {
                if let Some(v) = attribute(&p.hostname, &p.attributes, a) {
                    *m.entry(v).or_default() += 1;
                }
            }
            m
        })
        .collect();
    Plan {
        cands,
        used,
        counts,
        left: want,
        placed: BTreeMap::new(),
    }
}

fn finish(plan: Plan) -> Vec<(usize, u32)> {
    plan.placed
        .into_iter()
        .filter(|&(_, n)| n > 0)
        .map(|(i, n)| (i, u32::try_from(n).unwrap_or(u32::MAX)))
        .collect()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One line saying why `pending` instances cannot be placed, e.g.
/// "2 instances pending: mem short on 3 nodes, cpus short on 1 node; rack==1-1 unmet on 2 nodes; unique hostname exhausted" (exact wording your choice, but it must name each failing resource or constraint and how many nodes it failed on, and say "no active nodes" when there are none)
///
/// Each active node is checked on its own: for free resources against one
/// task, for `Equal` values, for a value a `Unique` has not used yet
/// (counting the job's live tasks) and for the attributes `Unique` and
/// `Spread` need. The line ends with how many active nodes could take an
/// instance now; when that is all of them the instances wait for offers.
pub fn explain(nodes: &[NodeFit], req: &PlacementRequest, pending: u32) -> String {
    let head = format!(
        "{} pending",
        plural(pending as usize, "instance", "instances")
    );
    let inactive = nodes.iter().filter(|n| !n.active).count();
    let inactive_note = if inactive > 0 {
        format!(" ({} not active)", plural(inactive, "node", "nodes"))
    } else {
        String::new()
    };
    let active: Vec<&NodeFit> = nodes.iter().filter(|n| n.active).collect();
    if active.is_empty() {
        return format!("{head}: no active nodes{inactive_note}");
    }

    let used: Vec<BTreeSet<&str>> = req
        .constraints
        .iter()
        .map(|c| match c {
            Constraint::Unique { attribute: a } => req
                .existing
                .iter()
                .filter_map(|p| attribute(&p.hostname, &p.attributes, a))
                .collect(),
            _ => BTreeSet::new(),
        })
        .collect();
    let mut short: BTreeMap<&str, usize> = BTreeMap::new();
    // Per constraint: nodes failing its value test, nodes lacking the
    // attribute, nodes where a Unique value is still free.
    let mut unmet = vec![0usize; req.constraints.len()];
    let mut missing = vec![0usize; req.constraints.len()];
    let mut open = vec![0usize; req.constraints.len()];
    let mut fit = 0usize;
    for n in &active {
        let mut ok = true;
        for r in n.free.shortfall(&req.per_task) {
            *short.entry(r).or_default() += 1;
            ok = false;
        }
        for (i, c) in req.constraints.iter().enumerate() {
            let v = attribute(&n.hostname, &n.attributes, c.attribute());
            match (c, v) {
                (Constraint::Equal { value, .. }, Some(v)) if v == value => {}
                (Constraint::Equal { .. }, _) => {
                    unmet[i] += 1;
                    ok = false;
                }
                (_, None) => {
                    missing[i] += 1;
                    ok = false;
                }
                (Constraint::Unique { .. }, Some(v)) if used[i].contains(v) => {
                    unmet[i] += 1;
                    ok = false;
                }
                (Constraint::Unique { .. }, Some(_)) => open[i] += 1,
                (Constraint::Spread { .. }, Some(_)) => {}
            }
        }
        if ok {
            fit += 1;
        }
    }

    let mut parts = Vec::new();
    let mut shorts: Vec<(&str, usize)> = short.into_iter().collect();
    shorts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if !shorts.is_empty() {
        parts.push(
            shorts
                .iter()
                .map(|(r, k)| format!("{r} short on {}", plural(*k, "node", "nodes")))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    for (i, c) in req.constraints.iter().enumerate() {
        let a = c.attribute();
        if missing[i] > 0 {
            parts.push(format!(
                "{c}: {a} missing on {}",
                plural(missing[i], "node", "nodes")
            ));
        }
        match c {
            Constraint::Equal { .. } if unmet[i] > 0 => {
                parts.push(format!(
                    "{c} unmet on {}",
                    plural(unmet[i], "node", "nodes")
                ));
            }
            Constraint::Unique { .. } if unmet[i] > 0 && open[i] == 0 => {
                parts.push(format!(
                    "{c} exhausted ({} in use)",
                    plural(used[i].len(), "value", "values")
                ));
            }
            Constraint::Unique { .. } if unmet[i] > 0 => {
                parts.push(format!(
                    "{c}: value in use on {}",
                    plural(unmet[i], "node", "nodes")
                ));
            }
            _ => {}
        }
    }
    let summary = if fit == active.len() {
        format!(
            "all {} fit; waiting for offers",
            plural(active.len(), "active node", "active nodes")
        )
    } else {
        format!(
            "{fit} of {} fit",
            plural(active.len(), "active node", "active nodes")
        )
    };
    parts.push(summary);
    format!("{head}: {}{inactive_note}", parts.join("; "))
}

#[cfg(test)]
mod tests;
