use super::*;
use crate::allocator::{AgentSnapshot, Demand, FrameworkSnapshot};
use std::time::Instant;

fn r(s: &str) -> Resources {
    Resources::parse(s).expect("test resources")
}

fn agent(id: &str, total: &str) -> AgentSnapshot {
    AgentSnapshot {
        id: id.into(),
        hostname: format!("{id}.example"),
        attributes: Default::default(),
        total: r(total),
        free: r(total),
    }
}

fn fw(id: &str, role: &str, demand: Option<(&str, Option<u64>)>) -> FrameworkSnapshot {
    FrameworkSnapshot {
        id: id.into(),
        role: role.into(),
        suppressed: false,
        demand: demand.map(|(per, count)| Demand {
            per_task: r(per),
            count,
        }),
        filters: BTreeMap::new(),
        allocated: Resources::ZERO,
    }
}

fn snap(agents: Vec<AgentSnapshot>, frameworks: Vec<FrameworkSnapshot>) -> Snapshot {
    Snapshot {
        agents,
        frameworks,
        role_weights: BTreeMap::new(),
        now_ms: 0,
    }
}

fn run(s: &Snapshot) -> Vec<Allocation> {
    Drf::new().allocate(s)
}

/// Sum of everything `framework` received.
fn got(allocs: &[Allocation], framework: &str) -> Resources {
    allocs
        .iter()
        .filter(|a| a.framework_id == framework)
        .fold(Resources::ZERO, |acc, a| acc.add(&a.resources))
}

/// Tasks `framework` received, checking every allocation is whole tasks.
fn tasks(allocs: &[Allocation], framework: &str, per: &str) -> u64 {
    let per = res::vec3(&r(per));
    allocs
        .iter()
        .filter(|a| a.framework_id == framework)
        .map(|a| {
            let v = res::vec3(&a.resources);
            let n = res::fit_count(&v, &per);
            assert_eq!(res::scale(&per, n), v, "{a:?} is not whole tasks");
            n
        })
        .sum()
}

fn on(allocs: &[Allocation], framework: &str, agent: &str) -> Option<Resources> {
    allocs
        .iter()
        .find(|a| a.framework_id == framework && a.agent_id == agent)
        .map(|a| a.resources)
}

#[test]
fn dominant_share_is_the_largest_fraction() {
    let total = r("cpus:9;mem:18432");
    assert_eq!(
        dominant_share(&r("cpus:3;mem:12288"), &total),
        12288.0 / 18432.0
    );
    assert_eq!(dominant_share(&r("cpus:6;mem:2048"), &total), 6.0 / 9.0);
    assert_eq!(dominant_share(&Resources::ZERO, &total), 0.0);
    // No disk in the cluster: disk is ignored instead of dividing by zero.
    assert_eq!(dominant_share(&r("cpus:1;disk:5"), &total), 1.0 / 9.0);
    assert_eq!(dominant_share(&r("cpus:1"), &Resources::ZERO), 0.0);
}

/// (a) The DRF paper's running example (Ghodsi et al., NSDI 2011, §4):
/// <9 CPUs, 18 GB>, A's tasks <1 CPU, 4 GB>, B's <3 CPUs, 1 GB> -> A runs
/// three tasks, B two; both end with a dominant share of 2/3.
#[test]
fn drf_paper_example() {
    let s = snap(
        vec![agent("n1", "cpus:9;mem:18432")],
        vec![
            fw("fa", "a", Some(("cpus:1;mem:4096", None))),
            fw("fb", "b", Some(("cpus:3;mem:1024", None))),
        ],
    );
    let out = run(&s);
    assert_eq!(got(&out, "fa"), r("cpus:3;mem:12288"));
    assert_eq!(got(&out, "fb"), r("cpus:6;mem:2048"));
    assert_eq!(out.len(), 2);
}

/// (b) A second example, constructed and checked by hand (the paper's other
/// worked examples were not available to check against): three roles on
/// <6 CPUs, 6 GiB>.
///   a: <1 CPU, 512 MiB>   dominant cpus, 1/6 per task
///   b: <0.5 CPU, 2 GiB>   dominant mem,  1/3 per task
///   c: <1 CPU, 1 GiB>     1/6 of both
/// Progressive filling (ties by role name): a, b, c, a, c, a. Left over is
/// <0.5 CPU, 512 MiB>, in which nobody's next task fits.
#[test]
fn three_roles_by_hand() {
    let s = snap(
        vec![agent("n1", "cpus:6;mem:6144")],
        vec![
            fw("fa", "a", Some(("cpus:1;mem:512", None))),
            fw("fb", "b", Some(("cpus:0.5;mem:2048", None))),
            fw("fc", "c", Some(("cpus:1;mem:1024", None))),
        ],
    );
    let out = run(&s);
    assert_eq!(tasks(&out, "fa", "cpus:1;mem:512"), 3);
    assert_eq!(tasks(&out, "fb", "cpus:0.5;mem:2048"), 1);
    assert_eq!(tasks(&out, "fc", "cpus:1;mem:1024"), 2);
}

/// Also by hand: 100 CPUs and 10000 MiB, A <2 CPUs, 300 MiB> (memory
/// dominant, 3% a task), B <6 CPUs, 100 MiB> (CPU dominant, 6% a task).
/// Equal shares need A to run twice B's tasks; CPUs run out at A=20, B=10.
#[test]
fn cpu_bound_by_hand() {
    let s = snap(
        vec![agent("n1", "cpus:100;mem:10000")],
        vec![
            fw("fa", "a", Some(("cpus:2;mem:300", None))),
            fw("fb", "b", Some(("cpus:6;mem:100", None))),
        ],
    );
    let out = run(&s);
    assert_eq!(tasks(&out, "fa", "cpus:2;mem:300"), 20);
    assert_eq!(tasks(&out, "fb", "cpus:6;mem:100"), 10);
}

/// Two agents: allocations are merged per (framework, agent) and no agent
/// is overcommitted even though the cluster total would allow more.
#[test]
fn two_agents_by_hand() {
    let s = snap(
        vec![
            agent("n1", "cpus:4;mem:4096"),
            agent("n2", "cpus:4;mem:4096"),
        ],
        vec![
            fw("fa", "a", Some(("cpus:2;mem:1024", None))),
            fw("fb", "b", Some(("cpus:1;mem:2048", None))),
        ],
    );
    let out = run(&s);
    let want = [
        ("fa", "n1", "cpus:2;mem:1024"),
        ("fa", "n2", "cpus:2;mem:1024"),
        ("fb", "n1", "cpus:1;mem:2048"),
        ("fb", "n2", "cpus:1;mem:2048"),
    ];
    let got: Vec<(&str, &str, Resources)> = out
        .iter()
        .map(|a| (a.framework_id.as_str(), a.agent_id.as_str(), a.resources))
        .collect();
    let want: Vec<(&str, &str, Resources)> = want.iter().map(|&(f, a, x)| (f, a, r(x))).collect();
    assert_eq!(got, want);
}

/// Phase 1 spreads a framework's tasks over the agents, most free first,
/// instead of packing one agent: 4 tasks on 2 idle agents are 2 and 2 (a
/// spread job then sees offers from both), and 100,000 small tasks on
/// 5,000 identical agents are 20 on each.
#[test]
fn demands_spread_over_agents() {
    let s = snap(
        vec![
            agent("n1", "cpus:8;mem:8192"),
            agent("n2", "cpus:8;mem:8192"),
        ],
        vec![fw("f", "a", Some(("cpus:0.5;mem:64", Some(4))))],
    );
    let out = run(&s);
    assert_eq!(on(&out, "f", "n1"), Some(r("cpus:1;mem:128")));
    assert_eq!(on(&out, "f", "n2"), Some(r("cpus:1;mem:128")));

    let agents: Vec<AgentSnapshot> = (0..5000)
        .map(|i| agent(&format!("a{i:04}"), "cpus:24;mem:65536"))
        .collect();
    let s = snap(
        agents,
        vec![fw("f", "a", Some(("cpus:0.01;mem:1", Some(100_000))))],
    );
    let out = run(&s);
    assert_eq!(out.len(), 5000);
    assert!(out.iter().all(|a| a.resources == r("cpus:0.2;mem:20")));
}

/// Water-filling: the most free agent takes tasks until it is level with
/// the next, then they alternate (ties by id).
#[test]
fn demands_fill_the_most_free_agent_first() {
    let mut busy = agent("n1", "cpus:8;mem:8192");
    busy.free = r("cpus:2;mem:8192");
    let s = snap(
        vec![busy, agent("n2", "cpus:8;mem:8192")],
        vec![fw("f", "a", Some(("cpus:1;mem:1", Some(8))))],
    );
    let out = run(&s);
    // n2 6 -> level with n1 at 2 free each, then n1, n2 alternate: 7/1.
    assert_eq!(on(&out, "f", "n2"), Some(r("cpus:7;mem:7")));
    assert_eq!(on(&out, "f", "n1"), Some(r("cpus:1;mem:1")));
    assert_eq!(
        Drf {
            one_task_steps: true
        }
        .allocate(&s),
        out
    );
}

/// (c) Weights: role a weighs 2, b 1, identical demands -> a's dominant
/// share is twice b's, up to one task.
#[test]
fn weights_scale_shares() {
    let mut s = snap(
        vec![agent("n1", "cpus:30;mem:30720")],
        vec![
            fw("fa", "a", Some(("cpus:1;mem:1024", None))),
            fw("fb", "b", Some(("cpus:1;mem:1024", None))),
        ],
    );
    s.role_weights.insert("a".into(), 2.0);
    let out = run(&s);
    let total = r("cpus:30;mem:30720");
    let sa = dominant_share(&got(&out, "fa"), &total);
    let sb = dominant_share(&got(&out, "fb"), &total);
    let one_task = 1.0 / 30.0;
    assert!(
        (sa - 2.0 * sb).abs() <= 2.0 * one_task + 1e-9,
        "a {sa} b {sb}"
    );
    assert_eq!(
        tasks(&out, "fa", "cpus:1;mem:1024") + tasks(&out, "fb", "cpus:1;mem:1024"),
        30
    );
    assert_eq!(tasks(&out, "fa", "cpus:1;mem:1024"), 20);

    // Bad weights fall back to 1.0: equal split.
    s.role_weights.insert("a".into(), 0.0);
    s.role_weights.insert("b".into(), f64::NAN);
    let out = run(&s);
    assert_eq!(tasks(&out, "fa", "cpus:1;mem:1024"), 15);
    assert_eq!(tasks(&out, "fb", "cpus:1;mem:1024"), 15);
}

/// Roles come first: a role with two frameworks gets the same as a role
/// with one, and splits it between them.
#[test]
fn hierarchical_roles_then_frameworks() {
    let s = snap(
        vec![agent("n1", "cpus:30;mem:30720")],
        vec![
            fw("a1", "a", Some(("cpus:1;mem:1024", None))),
            fw("a2", "a", Some(("cpus:1;mem:1024", None))),
            fw("b1", "b", Some(("cpus:1;mem:1024", None))),
        ],
    );
    let out = run(&s);
    let per = "cpus:1;mem:1024";
    let (a1, a2, b1) = (
        tasks(&out, "a1", per),
        tasks(&out, "a2", per),
        tasks(&out, "b1", per),
    );
    assert_eq!(a1 + a2, 15);
    assert_eq!(b1, 15);
    assert!(a1.abs_diff(a2) <= 1, "{a1} {a2}");
}

/// What a framework already holds counts against it, and counts bound it.
#[test]
fn existing_allocation_and_counts() {
    let mut holder = fw("fa", "a", Some(("cpus:1;mem:1024", None)));
    holder.allocated = r("cpus:10;mem:10240");
    let mut s = snap(
        vec![agent("n1", "cpus:30;mem:30720")],
        vec![holder, fw("fb", "b", Some(("cpus:1;mem:1024", None)))],
    );
    // Cluster total is 30 (allocated is already out of `free`): a holds 10,
    // so of the 30 free b gets 20 and a 10 -> 20 each in the end.
    let out = run(&s);
    assert_eq!(tasks(&out, "fa", "cpus:1;mem:1024"), 10);
    assert_eq!(tasks(&out, "fb", "cpus:1;mem:1024"), 20);

    s.frameworks[1].demand.as_mut().expect("demand").count = Some(3);
    let out = run(&s);
    assert_eq!(tasks(&out, "fb", "cpus:1;mem:1024"), 3);
    assert_eq!(tasks(&out, "fa", "cpus:1;mem:1024"), 27);

    s.frameworks[1].demand.as_mut().expect("demand").count = Some(0);
    let out = run(&s);
    assert_eq!(got(&out, "fb"), Resources::ZERO);
}

/// (d) Refuse filters hold while now_ms < until; meanwhile another
/// framework gets the agent.
#[test]
fn refuse_filters_expire() {
    for with_demand in [false, true] {
        let demand = with_demand.then_some(("cpus:1;mem:1024", None));
        let mut f1 = fw("f1", "r", demand);
        f1.filters.insert("n1".into(), 1000);
        let mut s = snap(
            vec![agent("n1", "cpus:4;mem:4096")],
            vec![f1, fw("f2", "r", demand)],
        );
        s.now_ms = 999;
        let out = run(&s);
        assert_eq!(on(&out, "f1", "n1"), None, "demand {with_demand}");
        assert_eq!(
            on(&out, "f2", "n1"),
            Some(r("cpus:4;mem:4096")),
            "demand {with_demand}"
        );

        s.now_ms = 1000;
        let out = run(&s);
        assert!(on(&out, "f1", "n1").is_some(), "demand {with_demand}");
    }
    let mut f = fw("f", "r", None);
    f.filters.insert("n1".into(), 10);
    assert!(f.refuses("n1", 9));
    assert!(!f.refuses("n1", 10));
    assert!(!f.refuses("n2", 0));
}

/// (e) Suppressed frameworks get nothing, in either phase.
#[test]
fn suppressed_get_nothing() {
    let mut a = fw("fa", "a", Some(("cpus:1;mem:1024", None)));
    a.suppressed = true;
    let mut b = fw("fb", "b", None);
    b.suppressed = true;
    let s = snap(
        vec![agent("n1", "cpus:4;mem:4096")],
        vec![a.clone(), b.clone()],
    );
    assert!(run(&s).is_empty());

    let s = snap(
        vec![agent("n1", "cpus:4;mem:4096")],
        vec![a, b, fw("fc", "c", None)],
    );
    let out = run(&s);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].framework_id, "fc");
}

/// (f) Phase 2 offers each agent whole, lowest share first, updating shares
/// as it goes; phase 1 goes before it.
#[test]
fn whole_offers_lowest_share_first() {
    let mut rich = fw("f1", "r", None);
    rich.allocated = r("cpus:4;mem:4096");
    let mut n1 = agent("n1", "cpus:8;mem:8192");
    n1.free = r("cpus:4;mem:4096");
    let s = snap(
        vec![
            agent("n3", "cpus:8;mem:8192"),
            n1,
            agent("n2", "cpus:8;mem:8192"),
        ],
        vec![rich, fw("f2", "r", None)],
    );
    let out = run(&s);
    // n1 (first by id) -> f2 (share 0); then f1 and f2 both hold 4/24 of
    // the cpus: tie by id -> n2 to f1; then f2 is lower -> n3 to f2.
    let got: Vec<(&str, &str)> = out
        .iter()
        .map(|a| (a.framework_id.as_str(), a.agent_id.as_str()))
        .collect();
    assert_eq!(got, vec![("f1", "n2"), ("f2", "n1"), ("f2", "n3")]);
    assert_eq!(on(&out, "f2", "n1"), Some(r("cpus:4;mem:4096")));

    // A demand framework fills first; what is left goes whole.
    let s = snap(
        vec![agent("n1", "cpus:4;mem:4096")],
        vec![
            fw("d", "a", Some(("cpus:1;mem:1024", Some(1)))),
            fw("w", "b", None),
        ],
    );
    let out = run(&s);
    assert_eq!(on(&out, "d", "n1"), Some(r("cpus:1;mem:1024")));
    assert_eq!(on(&out, "w", "n1"), Some(r("cpus:3;mem:3072")));
}

#[test]
fn empty_and_degenerate_snapshots() {
    assert!(run(&Snapshot::default()).is_empty());
    // Zero-sized tasks get nothing rather than looping forever.
    let s = snap(
        vec![agent("n1", "cpus:4;mem:4096")],
        vec![fw("z", "a", Some(("", None)))],
    );
    assert!(run(&s).is_empty());
    // Tasks larger than any agent: nothing, and the agent goes whole to a
    // framework without demand.
    let s = snap(
        vec![agent("n1", "cpus:4;mem:4096")],
        vec![fw("big", "a", Some(("cpus:5", None))), fw("w", "b", None)],
    );
    let out = run(&s);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].framework_id, "w");
    assert_eq!(Drf::new().name(), "drf");
}

/// splitmix64: a tiny deterministic PRNG so the property test needs no
/// dependency and always checks the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn random_snapshot(rng: &mut Rng) -> Snapshot {
    let mut agents = Vec::new();
    for i in 0..1 + rng.below(8) {
        let total = Resources::new(
            (1 + rng.below(32)) as f64 * 0.5,
            256 * (1 + rng.below(64)),
            if rng.chance(30) {
                1024 * rng.below(8)
            } else {
                0
            },
        );
        let used = Resources::new(
            rng.below(1 + (total.cpus * 10.0) as u64) as f64 * 0.1,
            rng.below(total.mem + 1),
            rng.below(total.disk + 1),
        );
        agents.push(AgentSnapshot {
            id: format!("a{i}"),
            hostname: format!("h{i}"),
            attributes: Default::default(),
            total,
            free: total.saturating_sub(&used),
        });
    }
    let mut frameworks = Vec::new();
    for i in 0..1 + rng.below(6) {
        let demand = rng.chance(70).then(|| Demand {
            per_task: Resources::new(
                rng.below(8) as f64 * 0.25 + if rng.chance(50) { 0.1 } else { 0.0 },
                64 * rng.below(40),
                if rng.chance(20) { 512 } else { 0 },
            ),
            count: rng.chance(50).then(|| rng.below(20)),
        });
        let mut filters = BTreeMap::new();
        for a in &agents {
            if rng.chance(20) {
                filters.insert(a.id.clone(), rng.below(200));
            }
        }
        frameworks.push(FrameworkSnapshot {
            id: format!("f{i}"),
            role: format!("r{}", rng.below(3)),
            suppressed: rng.chance(15),
            demand,
            filters,
            allocated: Resources::new(rng.below(8) as f64, 512 * rng.below(8), 0),
        });
    }
    let mut role_weights = BTreeMap::new();
    if rng.chance(50) {
        role_weights.insert("r0".into(), (1 + rng.below(4)) as f64);
    }
    Snapshot {
        agents,
        frameworks,
        role_weights,
        now_ms: rng.below(200),
    }
}

/// (g) Over many random snapshots: no agent is overcommitted, suppressed
/// and refusing frameworks get nothing, demands get whole tasks within
/// their count, nobody with demand left could still fit a task somewhere,
/// leftovers exist only where every whole-offer framework refuses, batching
/// gives exactly what one task at a time gives, and input order does not
/// matter.
#[test]
fn random_snapshots_keep_invariants() {
    let mut rng = Rng(7);
    for case in 0..3000 {
        let s = random_snapshot(&mut rng);
        let out = run(&s);
        let ctx = format!("case {case}: {s:#?}\n-> {out:#?}");

        let mut left: BTreeMap<&str, Vec3> = s
            .agents
            .iter()
            .map(|a| (a.id.as_str(), res::vec3(&a.free)))
            .collect();
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for a in &out {
            let f = s
                .frameworks
                .iter()
                .find(|f| f.id == a.framework_id)
                .expect("known framework");
            assert!(!f.suppressed, "{ctx}");
            assert!(!f.refuses(&a.agent_id, s.now_ms), "{ctx}");
            let l = left.get_mut(a.agent_id.as_str()).expect("known agent");
            let v = res::vec3(&a.resources);
            assert!(res::fits(l, &v), "overcommitted {}: {ctx}", a.agent_id);
            *l = res::sub(l, &v);
            if let Some(d) = &f.demand {
                let per = res::vec3(&d.per_task);
                let n = res::fit_count(&v, &per);
                assert_eq!(res::scale(&per, n), v, "not whole tasks: {ctx}");
                *counts.entry(f.id.as_str()).or_default() += n;
            }
        }
        for f in &s.frameworks {
            let Some(d) = &f.demand else { continue };
            let n = counts.get(f.id.as_str()).copied().unwrap_or(0);
            if let Some(c) = d.count {
                assert!(n <= c, "{ctx}");
            }
            let per = res::vec3(&d.per_task);
            let wants_more = d.count.is_none_or(|c| n < c);
            if !f.suppressed && wants_more && !res::is_zero(&per) {
                for (id, l) in &left {
                    assert!(
                        f.refuses(id, s.now_ms) || !res::fits(l, &per),
                        "{} could still fit on {id}: {ctx}",
                        f.id
                    );
                }
            }
        }
        for (id, l) in &left {
            if !res::is_zero(l) {
                assert!(
                    s.frameworks
                        .iter()
                        .filter(|f| f.demand.is_none() && !f.suppressed)
                        .all(|f| f.refuses(id, s.now_ms)),
                    "{id} left unoffered: {ctx}"
                );
            }
        }

        let reference = Drf {
            one_task_steps: true,
        }
        .allocate(&s);
        assert_eq!(
            reference, out,
            "batched differs from one task at a time: {ctx}"
        );

        let mut shuffled = s.clone();
        shuffled.agents.reverse();
        shuffled.frameworks.reverse();
        assert_eq!(run(&shuffled), out, "{ctx}");
    }
}

/// A cluster the size the server must handle: 5,000 agents, 200
/// frameworks in 20 roles, one demand of 100,000 tasks and ~100,000 more
/// tasks of demand spread over the others.
fn big_snapshot() -> Snapshot {
    let agents = (0..5000)
        .map(|i| {
            let total =
                Resources::new((32 + (i % 4) * 8) as f64, 65536 + (i % 3) as u64 * 32768, 0);
            AgentSnapshot {
                id: format!("agent-{i:05}"),
                hostname: format!("host-{i:05}"),
                attributes: Default::default(),
                total,
                free: total,
            }
        })
        .collect();
    let mut frameworks = vec![fw(
        "fw-big",
        "batch",
        Some(("cpus:0.5;mem:512", Some(100_000))),
    )];
    for i in 0..199u64 {
        let per = Resources::new((1 + i % 4) as f64 * 0.25, 256 * (1 + i % 8), 0);
        let mut f = fw(&format!("fw-{i:03}"), &format!("r{}", i % 20), None);
        if i % 40 != 0 {
            f.demand = Some(Demand {
                per_task: per,
                count: Some(500 + i * 3),
            });
        }
        frameworks.push(f);
    }
    snap(agents, frameworks)
}

fn timed(s: &Snapshot) -> (Vec<Allocation>, std::time::Duration) {
    let start = Instant::now();
    let out = run(s);
    (out, start.elapsed())
}

/// Scale sanity; prints the times (`cargo test --release -p berth-sched
/// scale -- --nocapture`). The target is well under 100 ms in release; the
/// assertion is looser so a busy machine does not fail it, but still
/// catches anything quadratic.
#[test]
fn scale_100k_tasks_5000_agents() {
    let mut s = big_snapshot();
    let (out, took) = timed(&s);
    let big = tasks(&out, "fw-big", "cpus:0.5;mem:512");
    let all: u64 = s
        .frameworks
        .iter()
        .filter_map(|f| {
            f.demand
                .as_ref()
                .map(|d| tasks(&out, &f.id, &d.per_task.to_string()))
        })
        .sum();
    eprintln!(
        "drf: {} agents, {} frameworks, {all} tasks ({big} for fw-big) -> {} allocations in {took:?}",
        s.agents.len(),
        s.frameworks.len(),
        out.len()
    );
    assert_eq!(big, 100_000);
    if !cfg!(debug_assertions) {
        assert!(took.as_millis() < 500, "took {took:?}");
    }

    // The 100,000-task demand against a handful of competitors.
    s.frameworks.truncate(6);
    let (out, took) = timed(&s);
    eprintln!(
        "drf: {} agents, {} frameworks, fw-big {} tasks -> {} allocations in {took:?}",
        s.agents.len(),
        s.frameworks.len(),
        tasks(&out, "fw-big", "cpus:0.5;mem:512"),
        out.len()
    );
    if !cfg!(debug_assertions) {
        assert!(took.as_millis() < 500, "took {took:?}");
    }
}
