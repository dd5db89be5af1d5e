use super::*;
use berth_types::parse_attributes;

fn r(s: &str) -> Resources {
    Resources::parse(s).expect("test resources")
}

fn offer(host: &str, attrs: &str, resources: &str) -> OfferSlot {
    OfferSlot {
        offer_id: format!("o-{host}"),
        agent_id: format!("a-{host}"),
        hostname: host.into(),
        attributes: parse_attributes(attrs).expect("test attributes"),
        resources: r(resources),
    }
}

fn placed(host: &str, attrs: &str) -> Placed {
    Placed {
        hostname: host.into(),
        attributes: parse_attributes(attrs).expect("test attributes"),
    }
}

fn equal(a: &str, v: &str) -> Constraint {
    Constraint::Equal {
        attribute: a.into(),
        value: v.into(),
    }
}

fn unique(a: &str) -> Constraint {
    Constraint::Unique {
        attribute: a.into(),
    }
}

fn spread(a: &str) -> Constraint {
    Constraint::Spread {
        attribute: a.into(),
    }
}

fn req<'a>(
    per: &str,
    constraints: &'a [Constraint],
    existing: &'a [Placed],
    count: u32,
) -> PlacementRequest<'a> {
    PlacementRequest {
        per_task: r(per),
        constraints,
        existing,
        count,
    }
}

/// Tasks per value of `attr` after placing.
fn by_value(offers: &[OfferSlot], out: &[(usize, u32)], attr: &str) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for &(i, n) in out {
        let o = &offers[i];
        let v = attribute(&o.hostname, &o.attributes, attr).unwrap_or("-");
        *m.entry(v.to_string()).or_default() += n;
    }
    m
}

#[test]
fn resources_only_fill_offers_in_order() {
    let offers = [
        offer("h1", "", "cpus:1.5;mem:1024"),
        offer("h2", "", "cpus:0.2;mem:4096"),
        offer("h3", "", "cpus:4;mem:1024"),
    ];
    let out = place(&offers, &req("cpus:0.5;mem:256", &[], &[], 5));
    assert_eq!(out, vec![(0, 3), (2, 2)]);
    let out = place(&offers, &req("cpus:0.5;mem:256", &[], &[], 100));
    assert_eq!(out, vec![(0, 3), (2, 4)]);
    assert!(place(&offers, &req("cpus:0.5;mem:256", &[], &[], 0)).is_empty());
    assert!(place(&offers, &req("cpus:8", &[], &[], 3)).is_empty());
    assert!(place(&[], &req("cpus:1", &[], &[], 3)).is_empty());
}

#[test]
fn equal_filters_by_value_and_missing_is_unmet() {
    let offers = [
        offer("h1", "rack:1-2", "cpus:4;mem:4096"),
        offer("h2", "", "cpus:4;mem:4096"),
        offer("h3", "rack:1-1", "cpus:4;mem:4096"),
    ];
    let c = [equal("rack", "1-1")];
    assert_eq!(place(&offers, &req("cpus:1", &c, &[], 2)), vec![(2, 2)]);
    let c = [equal("hostname", "h2")];
    assert_eq!(place(&offers, &req("cpus:1", &c, &[], 9)), vec![(1, 4)]);
    let c = [equal("rack", "9-9")];
    assert!(place(&offers, &req("cpus:1", &c, &[], 2)).is_empty());
}

#[test]
fn unique_counts_existing_and_placed() {
    let offers = [
        offer("h1", "rack:a", "cpus:4;mem:4096"),
        offer("h2", "rack:a", "cpus:4;mem:4096"),
        // A second offer from h2 must not get a second task.
        offer("h2", "rack:a", "cpus:4;mem:4096"),
        offer("h3", "rack:b", "cpus:4;mem:4096"),
        offer("h4", "", "cpus:4;mem:4096"),
    ];
    let existing = [placed("h1", "rack:a")];
    let c = [unique("hostname")];
    assert_eq!(
        place(&offers, &req("cpus:1", &c, &existing, 10)),
        vec![(1, 1), (3, 1), (4, 1)]
    );
    // Unique rack: h4 lacks the attribute and is not used; rack a is taken.
    let c = [unique("rack")];
    assert_eq!(
        place(&offers, &req("cpus:1", &c, &existing, 10)),
        vec![(3, 1)]
    );
    let existing = [placed("h1", "rack:a"), placed("h3", "rack:b")];
    assert!(place(&offers, &req("cpus:1", &c, &existing, 10)).is_empty());
}

#[test]
fn spread_evens_out_counting_existing() {
    let offers = [
        offer("h1", "rack:r1", "cpus:10;mem:10240"),
        offer("h2", "rack:r2", "cpus:10;mem:10240"),
        offer("h3", "rack:r3", "cpus:10;mem:10240"),
        offer("h4", "", "cpus:10;mem:10240"),
    ];
    let existing = [placed("x", "rack:r1"), placed("y", "rack:r1")];
    let c = [spread("rack")];
    let out = place(&offers, &req("cpus:1", &c, &existing, 4));
    assert_eq!(out, vec![(1, 2), (2, 2)]);
    // Seven: four bring r2 and r3 level with r1 (2/2/2), then one each
    // in value order (3/3/3).
    let out = place(&offers, &req("cpus:1", &c, &existing, 7));
    let m = by_value(&offers, &out, "rack");
    assert_eq!(
        m,
        [("r1", 1), ("r2", 3), ("r3", 3)]
            .map(|(k, v)| (k.to_string(), v))
            .into()
    );
    // Six: after 2/2/2 the ties go by value: r1 then r2.
    let out = place(&offers, &req("cpus:1", &c, &existing, 6));
    let m = by_value(&offers, &out, "rack");
    assert_eq!(
        m,
        [("r1", 1), ("r2", 3), ("r3", 2)]
            .map(|(k, v)| (k.to_string(), v))
            .into()
    );
    // A full value is skipped instead of blocking the rest.
    let offers = [
        offer("h1", "rack:r1", "cpus:1;mem:10240"),
        offer("h2", "rack:r2", "cpus:10;mem:10240"),
    ];
    let out = place(&offers, &req("cpus:1", &c, &[], 5));
    assert_eq!(out, vec![(0, 1), (1, 4)]);
}

#[test]
fn spread_over_hostname_with_several_offers_per_value() {
    let offers = [
        offer("h2", "", "cpus:1;mem:1024"),
        offer("h1", "", "cpus:2;mem:1024"),
        offer("h2", "", "cpus:2;mem:1024"),
    ];
    let c = [spread("hostname")];
    let out = place(&offers, &req("cpus:1", &c, &[], 4));
    // h1 and h2 alternate, h1 first; h2 uses its first offer, then the next.
    assert_eq!(out, vec![(0, 1), (1, 2), (2, 1)]);
}

fn node(host: &str, attrs: &str, free: &str) -> NodeFit {
    NodeFit {
        hostname: host.into(),
        attributes: parse_attributes(attrs).expect("test attributes"),
        free: r(free),
        active: true,
    }
}

/// A spread job offered only one of two idle nodes places one task there
/// and holds the rest for the other, instead of putting all on the first.
#[test]
fn place_holding_waits_for_values_without_offers() {
    let c = [spread("hostname")];
    let nodes = [
        node("h1", "", "cpus:8;mem:8192"),
        node("h2", "", "cpus:8;mem:8192"),
    ];
    let rq = req("cpus:1", &c, &[], 4);
    let elsewhere = spread_values(&nodes, &rq);
    assert_eq!(elsewhere, ["h1", "h2"].map(String::from).into());
    let offers = [offer("h1", "", "cpus:8;mem:8192")];
    assert_eq!(place(&offers, &rq), vec![(0, 4)]);
    assert_eq!(place_holding(&offers, &rq, &elsewhere), vec![(0, 1)]);
    // Then h2 is offered, with one task of the job on h1: h2 takes one to
    // be level, then h1 (first by value) is next and has no offer: the
    // rest wait.
    let existing = [placed("h1", "")];
    let rq = req("cpus:1", &c, &existing, 3);
    let offers = [offer("h2", "", "cpus:8;mem:8192")];
    assert_eq!(place_holding(&offers, &rq, &elsewhere), vec![(0, 1)]);
    // Both offered: 2 and 2, as `place` does.
    let rq = req("cpus:1", &c, &[], 4);
    let offers = [
        offer("h1", "", "cpus:8;mem:8192"),
        offer("h2", "", "cpus:8;mem:8192"),
    ];
    assert_eq!(
        place_holding(&offers, &rq, &elsewhere),
        vec![(0, 2), (1, 2)]
    );
    // A value with no room on its node does not hold anything back.
    let full = [
        node("h1", "", "cpus:8;mem:8192"),
        node("h2", "", "cpus:0.5;mem:8192"),
    ];
    let elsewhere = spread_values(&full, &rq);
    assert_eq!(elsewhere, ["h1"].map(String::from).into());
    let offers = [offer("h1", "", "cpus:8;mem:8192")];
    assert_eq!(place_holding(&offers, &rq, &elsewhere), vec![(0, 4)]);
    // No spread: the same as `place`.
    let rq = req("cpus:1", &[], &[], 4);
    assert!(spread_values(&nodes, &rq).is_empty());
    assert_eq!(place_holding(&offers, &rq, &elsewhere), place(&offers, &rq));
}

/// Nodes that fail an `equal`, have a `unique` value in use, lack the
/// attribute or are not active add no value to hold for.
#[test]
fn spread_values_honour_the_other_constraints() {
    let c = [spread("rack"), equal("zone", "z1"), unique("hostname")];
    let mut down = node("h5", "rack:r5;zone:z1", "cpus:4");
    down.active = false;
    let nodes = [
        node("h1", "rack:r1;zone:z1", "cpus:4"),
        node("h2", "rack:r2;zone:z2", "cpus:4"),
        node("h3", "rack:r3;zone:z1", "cpus:4"),
        node("h4", "zone:z1", "cpus:4"),
        down,
    ];
    let existing = [placed("h3", "rack:r3;zone:z1")];
    let rq = req("cpus:1", &c, &existing, 2);
    assert_eq!(spread_values(&nodes, &rq), ["r1"].map(String::from).into());
}

#[test]
fn combinations() {
    let offers = [
        offer("h1", "rack:r1;os:linux", "cpus:4;mem:4096"),
        offer("h2", "rack:r1;os:linux", "cpus:4;mem:4096"),
        offer("h3", "rack:r2;os:linux", "cpus:4;mem:4096"),
        offer("h4", "rack:r2;os:bsd", "cpus:4;mem:4096"),
        offer("h5", "rack:r3;os:linux", "cpus:0.5;mem:4096"),
    ];
    // Equal + unique hostname + spread rack.
    let c = [equal("os", "linux"), unique("hostname"), spread("rack")];
    let out = place(&offers, &req("cpus:1", &c, &[], 10));
    assert_eq!(out, vec![(0, 1), (1, 1), (2, 1)]);
    // Spread rack + unique hostname, count smaller than hosts: r1 then r2.
    let c = [spread("rack"), unique("hostname")];
    let out = place(&offers, &req("cpus:1", &c, &[], 2));
    assert_eq!(out, vec![(0, 1), (2, 1)]);
    // Two spreads: rack first, then os.
    let c = [spread("rack"), spread("os")];
    let existing = [placed("h1", "rack:r1;os:linux")];
    let out = place(&offers, &req("cpus:1", &c, &existing, 3));
    let racks = by_value(&offers, &out, "rack");
    assert_eq!(racks.get("r2"), Some(&2));
    assert_eq!(racks.get("r1"), Some(&1));
    let oses = by_value(&offers, &out, "os");
    // In r2 the first task goes to bsd (linux already has one task).
    assert!(oses.get("bsd").is_some_and(|&n| n >= 1), "{out:?}");
}

/// splitmix64 for deterministic random cases.
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
}

fn random_offers(rng: &mut Rng) -> Vec<OfferSlot> {
    (0..rng.below(10))
        .map(|_| {
            let host = format!("h{}", rng.below(6));
            let mut attrs = format!("zone:z{}", rng.below(2));
            if rng.below(5) > 0 {
                attrs.push_str(&format!(";rack:r{}", rng.below(3)));
            }
            offer(
                &host,
                &attrs,
                &format!(
                    "cpus:{};mem:{}",
                    rng.below(8) as f64 * 0.5,
                    256 * rng.below(16)
                ),
            )
        })
        .collect()
}

fn random_constraints(rng: &mut Rng) -> Vec<Constraint> {
    let attrs = ["hostname", "rack", "zone"];
    (0..rng.below(3))
        .map(|_| {
            let a = attrs[rng.below(3) as usize];
            match rng.below(3) {
                0 => equal(a, &format!("{}{}", &a[..1], rng.below(3))),
                1 => unique(a),
                _ => spread(a),
            }
        })
        .collect()
}

/// Resources, count and constraints hold over many random cases, and the
/// batched single-spread path agrees with the one-task-at-a-time path.
#[test]
fn random_placements_honour_everything() {
    let mut rng = Rng(11);
    for case in 0..3000 {
        let offers = random_offers(&mut rng);
        let constraints = random_constraints(&mut rng);
        let existing: Vec<Placed> = (0..rng.below(4))
            .map(|_| {
                let mut attrs = format!("zone:z{}", rng.below(2));
                if rng.below(2) == 0 {
                    attrs.push_str(&format!(";rack:r{}", rng.below(3)));
                }
                placed(&format!("h{}", rng.below(6)), &attrs)
            })
            .collect();
        let count = rng.below(12) as u32;
        let rq = req("cpus:0.5;mem:256", &constraints, &existing, count);
        let out = place(&offers, &rq);
        let ctx =
            format!("case {case}: {offers:#?} {constraints:?} {existing:?} {count} -> {out:?}");

        let total: u32 = out.iter().map(|p| p.1).sum();
        assert!(total <= count, "{ctx}");
        let mut seen = BTreeSet::new();
        for &(i, n) in &out {
            assert!(seen.insert(i) && n > 0, "{ctx}");
            let o = &offers[i];
            let need = res::scale(&res::vec3(&rq.per_task), u64::from(n));
            assert!(res::fits(&res::vec3(&o.resources), &need), "{ctx}");
            for c in &constraints {
                let v = attribute(&o.hostname, &o.attributes, c.attribute());
                match c {
                    Constraint::Equal { value, .. } => assert_eq!(v, Some(value.as_str()), "{ctx}"),
                    _ => assert!(v.is_some(), "{ctx}"),
                }
            }
        }
        for c in &constraints {
            if let Constraint::Unique { attribute: a } = c {
                let mut values: Vec<&str> = existing
                    .iter()
                    .filter_map(|p| attribute(&p.hostname, &p.attributes, a))
                    .collect();
                let before: BTreeSet<&str> = values.iter().copied().collect();
                for &(i, n) in &out {
                    assert_eq!(n, 1, "{ctx}");
                    let o = &offers[i];
                    let v = attribute(&o.hostname, &o.attributes, a).unwrap_or("-");
                    assert!(!before.contains(v), "{ctx}");
                    values.push(v);
                }
                let after: BTreeSet<&str> = values.iter().copied().collect();
                assert_eq!(after.len(), before.len() + out.len(), "{ctx}");
            }
        }

        let spreads: Vec<&str> = constraints
            .iter()
            .filter_map(|c| match c {
                Constraint::Spread { attribute } => Some(attribute.as_str()),
                _ => None,
            })
            .collect();
        if spreads.len() == 1 {
            let mut slow = plan(&offers, &rq, &spreads);
            slow.spread_many();
            assert_eq!(finish(slow), out, "batched spread differs: {ctx}");
        }
    }
}

#[test]
fn spread_many_tasks_is_fast() {
    let offers: Vec<OfferSlot> = (0..2000)
        .map(|i| {
            offer(
                &format!("h{i:04}"),
                &format!("rack:r{}", i % 40),
                "cpus:64;mem:65536",
            )
        })
        .collect();
    let c = [spread("rack")];
    let start = std::time::Instant::now();
    let out = place(&offers, &req("cpus:0.25;mem:128", &c, &[], 200_000));
    let took = start.elapsed();
    eprintln!("place: 200000 tasks spread over 40 racks / 2000 offers in {took:?}");
    assert_eq!(out.iter().map(|p| p.1).sum::<u32>(), 200_000);
    let m = by_value(&offers, &out, "rack");
    assert!(m.values().all(|&n| n == 5000), "{m:?}");
}

#[test]
fn explain_names_failures_and_counts() {
    let node = |host: &str, attrs: &str, free: &str, active: bool| NodeFit {
        hostname: host.into(),
        attributes: parse_attributes(attrs).expect("attrs"),
        free: r(free),
        active,
    };
    let c = [equal("rack", "1-1"), unique("hostname")];
    let existing = [placed("h5", "rack:1-1")];
    let rq = req("cpus:1;mem:1024", &c, &existing, 2);

    assert_eq!(explain(&[], &rq, 2), "2 instances pending: no active nodes");
    assert_eq!(
        explain(&[node("h1", "", "cpus:8;mem:8192", false)], &rq, 1),
        "1 instance pending: no active nodes (1 node not active)"
    );

    let nodes = [
        node("h1", "rack:1-1", "cpus:0.5;mem:512", true),
        node("h2", "rack:1-1", "cpus:4;mem:512", true),
        node("h3", "rack:1-2", "cpus:4;mem:512", true),
        node("h4", "", "cpus:4;mem:8192", true),
        node("h5", "rack:1-1", "cpus:4;mem:8192", true),
        node("h6", "rack:1-1", "cpus:4;mem:8192", false),
    ];
    assert_eq!(
        explain(&nodes, &rq, 2),
        "2 instances pending: mem short on 3 nodes, cpus short on 1 node; \
         rack==1-1 unmet on 2 nodes; unique hostname: value in use on 1 node; \
         0 of 5 active nodes fit (1 node not active)"
    );

    let only_h5 = [node("h5", "rack:1-1", "cpus:4;mem:8192", true)];
    assert_eq!(
        explain(&only_h5, &rq, 1),
        "1 instance pending: unique hostname exhausted (1 value in use); 0 of 1 active node fit"
    );

    let c = [spread("zone"), unique("rack")];
    let rq = req("cpus:1", &c, &[], 3);
    let nodes = [
        node("h1", "zone:a", "cpus:2", true),
        node("h2", "rack:x", "cpus:2", true),
    ];
    assert_eq!(
        explain(&nodes, &rq, 3),
        "3 instances pending: spread over zone: zone missing on 1 node; \
         unique rack: rack missing on 1 node; 0 of 2 active nodes fit"
    );

    let rq = req("cpus:1", &[], &[], 3);
    assert_eq!(
        explain(&nodes, &rq, 3),
        "3 instances pending: all 2 active nodes fit; waiting for offers"
    );
}
